//! Reading the drop meters: packets dropped, per kind and key.

use std::net::IpAddr;

use serde_json::Value;

use crate::policy::droplog::DropKind;

/// One meter element: what was dropped, between whom, how many packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropCount {
    pub kind: DropKind,
    /// The source address (for a forged one, the address it carried).
    pub src: IpAddr,
    /// The destination, for meters keyed by it.
    pub dst: Option<IpAddr>,
    /// The veth it came in on, for meters keyed by it (forged sources).
    pub link: Option<String>,
    pub packets: u64,
}

/// Elements of a meter listing look like
/// `{"elem": {"val": {"concat": [a, b]}, "counter": {"packets": n, …}}}`:
/// (source, destination), or (veth, source) for forged sources.
pub fn parse_meter(listing: &Value, kind: DropKind) -> Vec<DropCount> {
    let sets = listing["nftables"].as_array().into_iter().flatten();
    sets.filter_map(|o| o.get("meter").or_else(|| o.get("set")))
        .filter_map(|s| s.get("elem").and_then(Value::as_array))
        .flatten()
        .filter_map(|e| {
            let elem = e.get("elem")?;
            let pair = elem.pointer("/val/concat")?.as_array()?;
            let (first, second) = (pair.first()?.as_str()?, pair.get(1)?.as_str()?);
            let packets = elem.pointer("/counter/packets")?.as_u64()?;
            Some(match kind {
                DropKind::Spoofed => DropCount {
                    kind,
                    src: second.parse().ok()?,
                    dst: None,
                    link: Some(first.to_string()),
                    packets,
                },
                _ => DropCount {
                    kind,
                    src: first.parse().ok()?,
                    dst: Some(second.parse().ok()?),
                    link: None,
                    packets,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(meter: &str, a: &str, b: &str) -> Value {
        serde_json::from_str(&format!(
            r#"{{"nftables":[{{"metainfo":{{}}}},{{"meter":{{"name":"{meter}","elem":[
              {{"elem":{{"val":{{"concat":["{a}","{b}"]}},"counter":{{"packets":3,"bytes":180}}}}}}]}}}}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn parses_address_pairs() {
        let d = parse_meter(
            &listing("drops4", "10.0.0.2", "10.0.0.3"),
            DropKind::CrossTenant,
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].packets, 3);
        assert_eq!(d[0].dst, Some("10.0.0.3".parse().unwrap()));
        assert_eq!(d[0].link, None);
    }

    #[test]
    fn parses_forged_sources_by_veth() {
        let d = parse_meter(
            &listing("spoofs6", "moat0123", "fd00::9"),
            DropKind::Spoofed,
        );
        assert_eq!(d[0].link.as_deref(), Some("moat0123"));
        assert_eq!(d[0].src.to_string(), "fd00::9");
        assert_eq!(d[0].dst, None);
        assert!(parse_meter(
            &listing("drops4", "moat0123", "10.0.0.3"),
            DropKind::CrossTenant
        )
        .is_empty());
    }
}
