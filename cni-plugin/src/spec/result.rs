//! The ADD result, written in the version the configuration asked for.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

use super::error::{CniError, Code};
use super::version::Version;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// Netns path for interfaces inside the container; `None` on the host.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNetwork,
    pub gateway: IpAddr,
    /// Index into `interfaces`.
    pub interface: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub dst: IpNetwork,
    pub gw: IpAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteConfig>,
    pub dns: Option<Value>,
}

impl CniResult {
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                o.insert("mac".into(), json!(i.mac));
                // `mtu` on interfaces arrived with spec 1.1.0; older parsers reject unknown shapes.
                if version >= Version::V1_1_0 {
                    o.insert("mtu".into(), json!(i.mtu));
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = json!({
                    "address": ip.address.to_string(),
                    "gateway": ip.gateway.to_string(),
                    "interface": ip.interface,
                });
                if version == Version::V0_4_0 {
                    o["version"] = json!(if ip.address.is_ipv4() { "4" } else { "6" });
                }
                o
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| json!({"dst": r.dst.to_string(), "gw": r.gw.to_string()}))
            .collect();
        let mut out = json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
        });
        out["dns"] = self.dns.clone().unwrap_or_else(|| json!({}));
        out
    }
}

/// The addresses a previous result claims for the container interface.
pub fn prev_result_ips(prev: &Value) -> Result<Vec<IpNetwork>, CniError> {
    let ips = prev
        .get("ips")
        .and_then(Value::as_array)
        .ok_or_else(|| CniError::new(Code::Decode, "prevResult has no ips"))?;
    ips.iter()
        .map(|ip| {
            ip.get("address")
                .and_then(Value::as_str)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| CniError::new(Code::Decode, "prevResult ip without a valid address"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "moatabc".into(),
                    mac: "ee:ee:ee:ee:ee:ee".into(),
                    mtu: 1500,
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    mtu: 1500,
                    sandbox: Some("/run/netns/x".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.0.0.5/32".parse().unwrap(),
                    gateway: "169.254.1.1".parse().unwrap(),
                    interface: 1,
                },
                IpConfig {
                    address: "fd00::5/128".parse().unwrap(),
                    gateway: "fe80::1".parse().unwrap(),
                    interface: 1,
                },
            ],
            routes: vec![RouteConfig {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: "169.254.1.1".parse().unwrap(),
            }],
            dns: None,
        }
    }

    #[test]
    fn v040_has_ip_versions_and_no_mtu() {
        let v = sample().to_json(Version::V0_4_0);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn v1_points_ips_at_sandbox_interface() {
        let v = sample().to_json(Version::V1_0_0);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(v["interfaces"][1]["sandbox"], "/run/netns/x");
        assert_eq!(
            sample().to_json(Version::V1_1_0)["interfaces"][1]["mtu"],
            1500
        );
    }

    #[test]
    fn prev_result_round_trip() {
        let v = sample().to_json(Version::V1_0_0);
        let ips = prev_result_ips(&v).unwrap();
        assert_eq!(ips[0].to_string(), "10.0.0.5/32");
    }
}
