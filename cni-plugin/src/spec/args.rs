//! CNI_ARGS (`K=V;K=V`) and the `args.cni` convention: where pod identity arrives.

use std::collections::BTreeMap;

use super::error::{CniError, Code};

/// Pod identity as kubelet/CRI, podman or ctr pass it; any of it may be absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub infra_container_id: Option<String>,
    pub uid: Option<String>,
}

const KNOWN: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

/// Parse CNI_ARGS. Unknown keys are an error unless `IgnoreUnknown` is true,
/// as the reference plugins do.
pub fn parse_cni_args(raw: &str) -> Result<PodArgs, CniError> {
    let mut pairs = BTreeMap::new();
    for part in raw.split(';').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            CniError::new(
                Code::InvalidEnv,
                format!("CNI_ARGS: {part:?} is not KEY=VALUE"),
            )
        })?;
        pairs.insert(k.trim().to_string(), v.trim().to_string());
    }
    let ignore_unknown = pairs
        .get("IgnoreUnknown")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"));
    if !ignore_unknown {
        if let Some(k) = pairs.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("CNI_ARGS: unknown key {k:?} (set IgnoreUnknown=1 to allow)"),
            ));
        }
    }
    let take = |k: &str| pairs.get(k).filter(|v| !v.is_empty()).cloned();
    Ok(PodArgs {
        namespace: take("K8S_POD_NAMESPACE"),
        name: take("K8S_POD_NAME"),
        infra_container_id: take("K8S_POD_INFRA_CONTAINER_ID"),
        uid: take("K8S_POD_UID"),
    })
}

impl PodArgs {
    /// Fill gaps from the config's `args.cni` map (podman and ctr users put
    /// the project there); CNI_ARGS wins where both are set.
    pub fn merge_args_cni(&mut self, cni: &BTreeMap<String, serde_json::Value>) {
        let get = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| cni.get(*k).and_then(|v| v.as_str()).map(str::to_string))
                .filter(|s| !s.is_empty())
        };
        if self.namespace.is_none() {
            self.namespace = get(&["K8S_POD_NAMESPACE", "project", "namespace"]);
        }
        if self.name.is_none() {
            self.name = get(&["K8S_POD_NAME", "podName"]);
        }
        if self.uid.is_none() {
            self.uid = get(&["K8S_POD_UID"]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_order_varies() {
        let a = parse_cni_args(
            "K8S_POD_UID=u1;IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc",
        )
        .unwrap();
        assert_eq!(a.namespace.as_deref(), Some("team-a"));
        assert_eq!(a.name.as_deref(), Some("web"));
        assert_eq!(a.uid.as_deref(), Some("u1"));
        assert_eq!(a.infra_container_id.as_deref(), Some("abc"));
    }

    #[test]
    fn podman_sends_only_name_and_ctr_none() {
        let a = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=box").unwrap();
        assert_eq!(a.name.as_deref(), Some("box"));
        assert!(a.namespace.is_none());
        assert_eq!(parse_cni_args("").unwrap(), PodArgs::default());
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        assert_eq!(
            parse_cni_args("FOO=bar").unwrap_err().code,
            Code::InvalidEnv
        );
        assert!(parse_cni_args("IgnoreUnknown=true;FOO=bar").is_ok());
        assert_eq!(
            parse_cni_args("novalue").unwrap_err().code,
            Code::InvalidEnv
        );
    }

    #[test]
    fn args_cni_fills_gaps_only() {
        let mut a = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=box").unwrap();
        let m: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(r#"{"project":"team-b","K8S_POD_NAME":"other"}"#).unwrap();
        a.merge_args_cni(&m);
        assert_eq!(a.namespace.as_deref(), Some("team-b"));
        assert_eq!(a.name.as_deref(), Some("box"));
    }
}
