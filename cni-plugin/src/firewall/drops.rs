//! Reading the drop meters: (source, destination) → packets.

use std::net::IpAddr;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropCount {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub packets: u64,
}

/// Elements of a meter listing look like
/// `{"elem": {"val": {"concat": [src, dst]}, "counter": {"packets": n, …}}}`.
pub fn parse_meter(listing: &Value) -> Vec<DropCount> {
    let sets = listing["nftables"].as_array().into_iter().flatten();
    sets.filter_map(|o| o.get("meter").or_else(|| o.get("set")))
        .filter_map(|s| s.get("elem").and_then(Value::as_array))
        .flatten()
        .filter_map(|e| {
            let elem = e.get("elem")?;
            let pair = elem.pointer("/val/concat")?.as_array()?;
            Some(DropCount {
                src: pair.first()?.as_str()?.parse().ok()?,
                dst: pair.get(1)?.as_str()?.parse().ok()?,
                packets: elem.pointer("/counter/packets")?.as_u64()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meter_elements() {
        let v: Value = serde_json::from_str(
            r#"{"nftables":[{"metainfo":{}},{"meter":{"name":"drops4","elem":[
              {"elem":{"val":{"concat":["10.0.0.2","10.0.0.3"]},"counter":{"packets":3,"bytes":180}}}]}}]}"#,
        )
        .unwrap();
        let d = parse_meter(&v);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].packets, 3);
        assert_eq!(d[0].dst.to_string(), "10.0.0.3");
    }
}
