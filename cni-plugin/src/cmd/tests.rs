//! Verb orchestration against fakes: rollback, idempotence, GC selection.

use serde_json::json;

use super::{dispatch, Ctx};
use crate::ipam::fake::FakeStore;
use crate::netlink::fake::FakeWiring;
use crate::spec::{Code, Invocation, NetConf};

fn conf(extra: serde_json::Value) -> NetConf {
    let dir = std::env::temp_dir().join(format!(
        "moat-cmd-test-{}-{}",
        std::process::id(),
        extra.to_string().len()
    ));
    let mut c = json!({"cniVersion": "1.1.0", "name": "n", "type": "moat", "dataDir": dir,
        "ipam": {"ranges": [[{"subnet": "10.0.0.0/29"}]]}});
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    NetConf::parse(c.to_string().as_bytes(), "moat").unwrap()
}

fn inv(cmd: &str, cid: &str) -> Invocation {
    let env = [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", cid),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/proc/self/ns/net"),
    ];
    Invocation::from_env(|k| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    })
    .unwrap()
}

#[test]
fn failed_add_rolls_back_addresses_and_links() {
    let conf = conf(json!({}));
    let (mut store, mut wiring) = (
        FakeStore::default(),
        FakeWiring {
            fail_attach: true,
            ..Default::default()
        },
    );
    let inv = inv("ADD", "c1");
    let err = dispatch(&mut Ctx {
        conf: &conf,
        inv: &inv,
        store: &mut store,
        wiring: &mut wiring,
    })
    .unwrap_err();
    assert_eq!(err.code, Code::Kernel);
    assert!(
        store.records.is_empty() && store.ips.is_empty(),
        "addresses released"
    );
    assert!(wiring.links.is_empty(), "veth removed");
}

#[test]
fn del_is_idempotent_and_gc_keeps_only_listed() {
    let (mut store, mut wiring) = (FakeStore::default(), FakeWiring::default());
    let base = conf(json!({}));
    for cid in ["a", "b", "c"] {
        let inv = inv("ADD", cid);
        dispatch(&mut Ctx {
            conf: &base,
            inv: &inv,
            store: &mut store,
            wiring: &mut wiring,
        })
        .unwrap();
    }
    for _ in 0..2 {
        let inv = inv("DEL", "a");
        dispatch(&mut Ctx {
            conf: &base,
            inv: &inv,
            store: &mut store,
            wiring: &mut wiring,
        })
        .unwrap();
    }
    let gc_conf =
        conf(json!({"cni.dev/valid-attachments": [{"containerID": "b", "ifname": "eth0"}]}));
    let gc = Invocation::from_env(|k| (k == "CNI_COMMAND").then(|| "GC".to_string())).unwrap();
    dispatch(&mut Ctx {
        conf: &gc_conf,
        inv: &gc,
        store: &mut store,
        wiring: &mut wiring,
    })
    .unwrap();
    let left: Vec<_> = store
        .records
        .keys()
        .map(|k| k.container_id.clone())
        .collect();
    assert_eq!(left, vec!["b".to_string()]);
    assert_eq!(wiring.links.len(), 1);
    assert_eq!(store.ips.len(), 1);
}
