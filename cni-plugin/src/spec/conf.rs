//! Network configuration from stdin, parsed into typed values once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use super::error::{CniError, Code};
use super::range::{parse_range_sets, RangeSet};
use super::version::Version;
use crate::linger::Cleanup;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/moat";
pub const DEFAULT_RUN_DIR: &str = "/run/cni/moat";
pub const DEFAULT_MTU: u32 = 1500;

/// One (container id, ifname) pair from `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct AttachmentRef {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// 20 bits: a million epochs before one comes round again.
pub const DEFAULT_FLOW_MARK_MASK: u32 = 0xffff_f000;

/// Tenant isolation settings (the `isolation` object).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IsolationConf {
    pub enabled: bool,
    /// Our nftables table (family inet); nothing else is ever touched.
    pub table: String,
    /// Projects that reach and are reachable by every pod when the policy file names none.
    pub global_projects: BTreeSet<String>,
    /// Project of pods whose runtime sends no namespace (podman, ctr).
    pub default_project: String,
    /// Pod and service ranges of the whole cluster: no masquerade towards them.
    #[serde(rename = "clusterCIDRs")]
    pub cluster_cidrs: Vec<IpNetwork>,
    pub masquerade: bool,
    /// Log dropped packets (rate-limited) to the kernel log.
    pub log_drops: bool,
    /// Log them to this NFLOG group instead (`moat drops --follow`, ulogd);
    /// implies `logDrops`.
    pub log_group: Option<u16>,
    /// Policy file; defaults to `<dataDir>/<network>/policy.json`. May be a mounted ConfigMap.
    pub policy_file: Option<PathBuf>,
    /// Bits of the conntrack mark that hold the table's epoch: a connection
    /// the tenant rules accepted carries it, and its later packets pass at
    /// one compare until any change that removes a permission (DEL, peers,
    /// policy) moves the epoch and sends every connection back to the rules.
    /// Contiguous bits; 0 turns the fast path off. The default leaves the low
    /// 12 bits to others (service meshes mark connections there).
    pub flow_mark_mask: u32,
}

impl Default for IsolationConf {
    fn default() -> Self {
        Self {
            enabled: true,
            table: "moat".into(),
            global_projects: BTreeSet::from(["kube-system".to_string()]),
            default_project: "default".into(),
            cluster_cidrs: Vec::new(),
            masquerade: true,
            log_drops: false,
            log_group: None,
            policy_file: None,
            flow_mark_mask: DEFAULT_FLOW_MARK_MASK,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(rename = "type", default)]
    plugin_type: String,
    mtu: Option<u32>,
    data_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    log_file: Option<PathBuf>,
    log_level: Option<String>,
    #[serde(default)]
    ipam: Value,
    dns: Option<Value>,
    #[serde(default)]
    runtime_config: Value,
    prev_result: Option<Value>,
    #[serde(default)]
    args: Value,
    #[serde(default)]
    isolation: Option<IsolationConf>,
    #[serde(default)]
    kernel_cleanup: Cleanup,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<AttachmentRef>>,
}

/// The parsed configuration of one invocation.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub mtu: u32,
    /// What must survive a reboot: the operator's policy.
    pub data_dir: PathBuf,
    /// What describes the kernel's state and dies with it at a reboot:
    /// attachments, reservations, the tenant chain list, peers, the lock.
    pub run_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    pub log_level: String,
    /// Range sets in effect: `runtimeConfig.ipRanges` when present, else `ipam.ranges`.
    pub ranges: Vec<RangeSet>,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    pub args_cni: BTreeMap<String, Value>,
    pub isolation: IsolationConf,
    /// Whether detached children carry the kernel's clean-up waits.
    pub kernel_cleanup: Cleanup,
    pub valid_attachments: Option<BTreeSet<AttachmentRef>>,
}

impl NetConf {
    /// Parse stdin. Accepts a single plugin config or a whole conflist (then the
    /// entry whose type is ours, with the list's name and version).
    pub fn parse(bytes: &[u8], plugin_type: &str) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(Code::Decode, "config is not valid JSON").with_details(e.to_string())
        })?;
        let value = select_plugin(value, plugin_type)?;
        let raw: RawConf = serde_json::from_value(value).map_err(|e| {
            CniError::new(Code::Decode, "config does not decode").with_details(e.to_string())
        })?;
        let version = Version::parse(&raw.cni_version)?;
        if !raw.plugin_type.is_empty() && raw.plugin_type != plugin_type {
            tracing::warn!(config_type = %raw.plugin_type, "config type differs from binary name");
        }
        if raw.name.is_empty() || raw.name.contains('/') || raw.name.starts_with('.') {
            return Err(CniError::new(
                Code::InvalidConfig,
                format!("network name {:?} is invalid", raw.name),
            ));
        }
        let ranges = effective_ranges(&raw.ipam, &raw.runtime_config)?;
        let mtu = raw.mtu.unwrap_or(DEFAULT_MTU);
        if !(576..=65535).contains(&mtu) {
            return Err(CniError::new(
                Code::InvalidConfig,
                format!("mtu {mtu} out of range 576..65535"),
            ));
        }
        let args_cni = raw
            .args
            .get("cni")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let isolation = raw.isolation.unwrap_or_default();
        validate_table_name(&isolation.table)?;
        validate_mark_mask(isolation.flow_mark_mask)?;
        Ok(Self {
            version,
            name: raw.name,
            mtu,
            data_dir: raw
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            run_dir: raw
                .run_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR)),
            log_file: raw.log_file,
            log_level: raw.log_level.unwrap_or_else(|| "info".into()),
            ranges,
            dns: raw.dns,
            prev_result: raw.prev_result,
            args_cni,
            isolation,
            kernel_cleanup: raw.kernel_cleanup,
            valid_attachments: raw.valid_attachments.map(|v| v.into_iter().collect()),
        })
    }

    /// Where this network's attachment state lives (IPAM records,
    /// reservations, tenant chains, peers) and its lock. On tmpfs by default:
    /// it must not outlive the veths and nft table it describes, and ADD and
    /// DEL then pay no filesystem journal (ext4 made a reservation cost
    /// 0.3 ms, more during write-back).
    pub fn state_dir(&self) -> PathBuf {
        self.run_dir.join(&self.name)
    }

    pub fn policy_path(&self) -> PathBuf {
        self.isolation
            .policy_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(&self.name).join("policy.json"))
    }

    /// ADD and STATUS need ranges, from the config or the ipRanges capability.
    pub fn require_ranges(&self) -> Result<(), CniError> {
        if self.ranges.is_empty() {
            return Err(CniError::new(
                Code::InvalidConfig,
                "no address ranges: set ipam.ranges or pass the ipRanges capability",
            ));
        }
        Ok(())
    }

    pub fn has_ipv6(&self) -> bool {
        self.ranges.iter().any(|r| r.is_ipv6())
    }
}

fn select_plugin(value: Value, plugin_type: &str) -> Result<Value, CniError> {
    let Some(plugins) = value.get("plugins").and_then(Value::as_array) else {
        return Ok(value);
    };
    let mut entry = plugins
        .iter()
        .find(|p| p.get("type").and_then(Value::as_str) == Some(plugin_type))
        .cloned()
        .ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                format!("conflist has no plugin of type {plugin_type:?}"),
            )
        })?;
    for key in ["name", "cniVersion"] {
        if let (Some(v), Some(obj)) = (value.get(key), entry.as_object_mut()) {
            obj.insert(key.to_string(), v.clone());
        }
    }
    Ok(entry)
}

/// Runtimes spell capability keys differently (containerd `IPRanges`, podman
/// `ipRanges`): match keys without regard to case.
pub fn get_ci<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn effective_ranges(ipam: &Value, runtime: &Value) -> Result<Vec<RangeSet>, CniError> {
    if let Some(rt) =
        get_ci(runtime, "ipRanges").filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    {
        return parse_range_sets(rt);
    }
    // No ranges is legal for the operator CLI; ADD and STATUS refuse it.
    match get_ci(ipam, "ranges") {
        Some(r) => parse_range_sets(r),
        None => Ok(Vec::new()),
    }
}

fn validate_table_name(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            Code::InvalidConfig,
            format!("isolation.table {name:?} is not a valid table name"),
        ))
    }
}

/// Epochs are counted in one run of bits: a mask with holes would need a
/// scatter of the counter that no operator expects.
/// One run of at least two bits, or 0 (off). With one bit the epoch could
/// never move: a connection once accepted would pass for good.
fn validate_mark_mask(mask: u32) -> Result<(), CniError> {
    let run = mask.checked_shr(mask.trailing_zeros()).unwrap_or(0);
    if mask == 0 || (run & run.wrapping_add(1) == 0 && mask.count_ones() >= 2) {
        return Ok(());
    }
    Err(CniError::new(
        Code::InvalidConfig,
        format!("isolation.flowMarkMask {mask:#010x} is not one run of two bits or more"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ConfigMap's conflist is what every node runs: it must parse once
    /// the install container has filled in the node's ranges.
    /// A `key: |` block of the deployed ConfigMap.
    fn configmap_block(key: &str) -> String {
        let yaml = include_str!("../../../deploy/manifests/10-cni-configmap.yaml");
        yaml.lines()
            .skip_while(|l| !l.contains(&format!("{key}: |")))
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// The ConfigMap's policy seeds every node and is applied on change: it
    /// must load (unknown keys are refused).
    #[test]
    fn the_deployed_policy_parses() {
        let policy: crate::policy::Policy =
            serde_json::from_str(&configmap_block("policy.json")).expect("the policy loads");
        assert!(policy.global.iter().any(|p| p.to_string() == "kube-system"));
    }

    #[test]
    fn the_deployed_conflist_parses() {
        let block = configmap_block("10-moat.conflist");
        let mut v: Value = serde_json::from_str(&block).expect("the conflist is JSON");
        v["plugins"][0]["ipam"]["ranges"] = serde_json::json!([[{"subnet": "10.244.1.0/24"}]]);
        let c = NetConf::parse(v.to_string().as_bytes(), "moat").unwrap();
        assert_eq!(c.isolation.log_group, Some(100));
        assert_eq!(c.isolation.cluster_cidrs.len(), 2);
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"net","type":"moat",
        "ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]}}"#;

    #[test]
    fn single_plugin_form() {
        let c = NetConf::parse(CONF.as_bytes(), "moat").unwrap();
        assert_eq!(c.version, Version::V1_0_0);
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.ranges.len(), 1);
        assert!(c.isolation.enabled);
    }

    #[test]
    fn conflist_form_injects_name_and_version() {
        let l = r#"{"cniVersion":"1.1.0","name":"list","plugins":[{"type":"other"},
            {"type":"moat","ipam":{"ranges":[[{"subnet":"10.2.0.0/16"}]]}}]}"#;
        let c = NetConf::parse(l.as_bytes(), "moat").unwrap();
        assert_eq!(c.name, "list");
        assert_eq!(c.version, Version::V1_1_0);
    }

    #[test]
    fn runtime_ip_ranges_override_in_either_spelling() {
        for key in ["ipRanges", "IPRanges"] {
            let conf = format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"moat","ipam":{{"ranges":[[{{"subnet":"10.1.0.0/24"}}]]}},
                "runtimeConfig":{{"{key}":[[{{"Subnet":"10.9.0.0/24"}}]]}}}}"#
            );
            let c = NetConf::parse(conf.as_bytes(), "moat").unwrap();
            assert_eq!(
                c.ranges[0].ranges[0].subnet.to_string(),
                "10.9.0.0/24",
                "{key}"
            );
        }
    }

    #[test]
    fn error_codes() {
        assert_eq!(
            NetConf::parse(b"{nope", "moat").unwrap_err().code,
            Code::Decode
        );
        let v = CONF.replace("1.0.0", "0.2.0");
        assert_eq!(
            NetConf::parse(v.as_bytes(), "moat").unwrap_err().code,
            Code::IncompatibleVersion
        );
        let r = CONF.replace("10.1.0.0/24", "10.1.0.0/33");
        assert_eq!(
            NetConf::parse(r.as_bytes(), "moat").unwrap_err().code,
            Code::InvalidConfig
        );
        let none = r#"{"cniVersion":"1.0.0","name":"n","type":"moat"}"#;
        let c = NetConf::parse(none.as_bytes(), "moat").unwrap();
        assert_eq!(c.require_ranges().unwrap_err().code, Code::InvalidConfig);
    }

    #[test]
    fn valid_attachments_parse() {
        let g = r#"{"cniVersion":"1.1.0","name":"n","type":"moat","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]},
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#;
        let c = NetConf::parse(g.as_bytes(), "moat").unwrap();
        assert_eq!(c.valid_attachments.unwrap().len(), 1);
    }

    #[test]
    fn flow_mark_mask_is_one_run_of_bits_or_off() {
        let with = |mask: u32| {
            let c = format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"moat","isolation":{{"flowMarkMask":{mask}}}}}"#
            );
            NetConf::parse(c.as_bytes(), "moat").map(|c| c.isolation.flow_mark_mask)
        };
        assert_eq!(with(0).unwrap(), 0);
        assert_eq!(with(0x00ff_0000).unwrap(), 0x00ff_0000);
        assert_eq!(with(u32::MAX).unwrap(), u32::MAX);
        assert_eq!(with(0x0f0f_0000).unwrap_err().code, Code::InvalidConfig);
        assert_eq!(
            with(0x0000_1000).unwrap_err().code,
            Code::InvalidConfig,
            "one bit"
        );
        assert_eq!(with(0x0000_3000).unwrap(), 0x3000);
        let default = NetConf::parse(CONF.as_bytes(), "moat").unwrap();
        assert_eq!(default.isolation.flow_mark_mask, DEFAULT_FLOW_MARK_MASK);
    }
}
