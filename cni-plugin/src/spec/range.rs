//! Address ranges in host-local's range-set shape: `[[{"subnet": …}, …], …]`.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::Value;

use super::conf::get_ci;
use super::error::{CniError, Code};

/// One contiguous pool inside a subnet; `start..=end` are the usable addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    /// Reserved, never handed to a pod (the subnet's first host unless set).
    pub gateway: IpAddr,
}

/// Ranges of one family; a pod gets one address from each set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
}

impl RangeSet {
    pub fn is_ipv6(&self) -> bool {
        self.ranges.first().is_some_and(|r| r.subnet.is_ipv6())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }
}

impl Range {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (s, e, x) = (to_u128(self.start), to_u128(self.end), to_u128(ip));
        self.subnet.is_ipv4() == ip.is_ipv4() && s <= x && x <= e && ip != self.gateway
    }

    /// Number of addresses a pod could get from this range.
    pub fn size(&self) -> u128 {
        let span = to_u128(self.end) - to_u128(self.start) + 1;
        span - u128::from(self.contains_raw(self.gateway))
    }

    fn contains_raw(&self, ip: IpAddr) -> bool {
        let x = to_u128(ip);
        to_u128(self.start) <= x && x <= to_u128(self.end)
    }
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(v.into())
    } else {
        IpAddr::V4((v as u32).into())
    }
}

fn invalid(msg: String) -> CniError {
    CniError::new(Code::InvalidConfig, msg)
}

pub fn parse_range_sets(v: &Value) -> Result<Vec<RangeSet>, CniError> {
    let sets = v
        .as_array()
        .ok_or_else(|| invalid("ranges must be a list of range sets".into()))?;
    let mut out = Vec::new();
    for set in sets {
        let items = set
            .as_array()
            .ok_or_else(|| invalid("a range set must be a list".into()))?;
        let ranges = items
            .iter()
            .map(parse_range)
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = ranges.first() else {
            return Err(invalid("empty range set".into()));
        };
        if ranges
            .iter()
            .any(|r| r.subnet.is_ipv6() != first.subnet.is_ipv6())
        {
            return Err(invalid("a range set mixes IPv4 and IPv6".into()));
        }
        out.push(RangeSet { ranges });
    }
    if out.is_empty() {
        return Err(invalid("no range sets".into()));
    }
    if out.iter().filter(|s| !s.is_ipv6()).count() > 1
        || out.iter().filter(|s| s.is_ipv6()).count() > 1
    {
        return Err(invalid("at most one IPv4 and one IPv6 range set".into()));
    }
    Ok(out)
}

fn field_ip(obj: &Value, key: &str) -> Result<Option<IpAddr>, CniError> {
    match get_ci(obj, key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| invalid(format!("{key} {s:?} is not an address"))),
    }
}

fn parse_range(obj: &Value) -> Result<Range, CniError> {
    let subnet_s = get_ci(obj, "subnet")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("range without subnet".into()))?;
    let subnet: IpNetwork = subnet_s
        .parse()
        .map_err(|_| invalid(format!("subnet {subnet_s:?} is invalid")))?;
    let v6 = subnet.is_ipv6();
    let max_prefix = if v6 { 126 } else { 30 };
    if subnet.prefix() > max_prefix {
        return Err(invalid(format!("subnet {subnet} is too small")));
    }
    let net = to_u128(subnet.network());
    let last = net + (1u128 << (if v6 { 128 } else { 32 } - u32::from(subnet.prefix()))) - 1;
    // Network address (and the IPv6 subnet-router anycast) and IPv4 broadcast are never usable.
    let (lo, hi) = (net + 1, if v6 { last } else { last - 1 });
    let gateway = field_ip(obj, "gateway")?.unwrap_or_else(|| from_u128(lo, v6));
    let start = field_ip(obj, "rangeStart")?.unwrap_or_else(|| from_u128(lo, v6));
    let end = field_ip(obj, "rangeEnd")?.unwrap_or_else(|| from_u128(hi, v6));
    for (name, ip) in [
        ("gateway", gateway),
        ("rangeStart", start),
        ("rangeEnd", end),
    ] {
        let x = to_u128(ip);
        if ip.is_ipv6() != v6 || x < net || x > last {
            return Err(invalid(format!("{name} {ip} is outside subnet {subnet}")));
        }
    }
    let (s, e) = (to_u128(start).max(lo), to_u128(end).min(hi));
    if s > e {
        return Err(invalid(format!(
            "rangeStart {start} is after rangeEnd {end}"
        )));
    }
    Ok(Range {
        subnet: IpNetwork::new(subnet.network(), subnet.prefix()).expect("normalised subnet"),
        start: from_u128(s, v6),
        end: from_u128(e, v6),
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_reserve_network_gateway_broadcast() {
        let s = parse_range_sets(&json!([[{"subnet": "10.0.0.0/29"}]])).unwrap();
        let r = &s[0].ranges[0];
        assert_eq!(r.start.to_string(), "10.0.0.1");
        assert_eq!(r.end.to_string(), "10.0.0.6");
        assert_eq!(r.gateway.to_string(), "10.0.0.1");
        assert_eq!(r.size(), 5);
        assert!(!r.contains("10.0.0.1".parse().unwrap()));
        assert!(!r.contains("10.0.0.7".parse().unwrap()));
    }

    #[test]
    fn ipv6_and_explicit_bounds() {
        let s = parse_range_sets(
            &json!([[{"subnet": "fd00::/120", "rangeStart": "fd00::10", "rangeEnd": "fd00::20"}]]),
        )
        .unwrap();
        assert!(s[0].is_ipv6());
        assert_eq!(s[0].ranges[0].size(), 17);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            json!([[{"subnet": "10.0.0.0/31"}]]),
            json!([[{"subnet": "banana"}]]),
            json!([[{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]]),
            json!([[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]),
            json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}]]),
            json!([]),
        ] {
            assert_eq!(
                parse_range_sets(&bad).unwrap_err().code,
                Code::InvalidConfig,
                "{bad}"
            );
        }
    }
}
