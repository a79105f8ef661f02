//! Verb orchestration against fakes: rollback, idempotence, GC selection, firewall calls.

use serde_json::json;

use super::{dispatch, Ctx};
use crate::firewall::fake::FakeFirewall;
use crate::ipam::fake::FakeStore;
use crate::ipam::IpStore;
use crate::netlink::fake::FakeWiring;
use crate::spec::{CniError, Code, Invocation, NetConf};

#[derive(Default)]
pub(super) struct World {
    store: FakeStore,
    wiring: FakeWiring,
    pub(super) fw: FakeFirewall,
    dirs: Dirs,
}

/// Data directories the verbs wrote to (lock, policy, chains), removed on drop.
#[derive(Default)]
struct Dirs(Vec<std::path::PathBuf>);

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl World {
    pub(super) fn run(
        &mut self,
        conf: &NetConf,
        inv: &Invocation,
    ) -> Result<Option<serde_json::Value>, CniError> {
        self.dirs.0.push(conf.data_dir.clone());
        dispatch(&mut Ctx {
            conf,
            inv,
            store: &mut self.store,
            wiring: &mut self.wiring,
            firewall: &mut self.fw,
        })
    }
}

/// A state directory of its own per call: tests run in parallel threads and
/// files such as the tenant-chain record must not leak between them.
pub(super) fn conf(extra: serde_json::Value) -> NetConf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("moat-cmd-test-{}-{n}", std::process::id()));
    let mut c = json!({"cniVersion": "1.1.0", "name": "n", "type": "moat", "dataDir": dir, "runDir": dir,
        "ipam": {"ranges": [[{"subnet": "10.0.0.0/29"}]]}});
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    NetConf::parse(c.to_string().as_bytes(), "moat").unwrap()
}

pub(super) fn inv(cmd: &str, cid: &str) -> Invocation {
    let env = [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", cid),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=team-a"),
    ];
    Invocation::from_env(|k| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    })
    .unwrap()
}

/// `conf` for a GC that keeps only the attachments of `keep` (on eth0), and
/// the GC invocation.
fn gc_of(conf: &NetConf, keep: &[&str]) -> (NetConf, Invocation) {
    let valid = keep
        .iter()
        .map(|c| crate::spec::AttachmentRef {
            container_id: (*c).into(),
            ifname: "eth0".into(),
        })
        .collect();
    let gc = Invocation::from_env(|k| (k == "CNI_COMMAND").then(|| "GC".to_string())).unwrap();
    (
        NetConf {
            valid_attachments: Some(valid),
            ..conf.clone()
        },
        gc,
    )
}

#[test]
fn failed_add_rolls_back_addresses_links_and_firewall() {
    let conf = conf(json!({}));
    let mut w = World {
        wiring: FakeWiring {
            fail_attach: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let err = w.run(&conf, &inv("ADD", "c1")).unwrap_err();
    assert_eq!(err.code, Code::Kernel);
    assert!(
        w.store.records.is_empty() && w.store.ips.is_empty(),
        "addresses released"
    );
    assert!(w.wiring.links.is_empty(), "veth removed");
    let whats: Vec<_> = w.fw.applied.iter().map(|(w, _)| *w).collect();
    // A fresh node builds its whole table with the first ADD.
    assert_eq!(
        whats,
        ["rebuild", "pod delete"],
        "pod filtered before wiring, removed on rollback"
    );
}

/// A refused ADD touches no veth: not the one of the attachment it was
/// refused for, and it makes none of its own.
#[test]
fn refused_adds_leave_only_live_veths() {
    let conf = conf(json!({}));
    let mut w = World::default();
    w.run(&conf, &inv("ADD", "c1")).unwrap();
    let err = w.run(&conf, &inv("ADD", "c1")).unwrap_err();
    assert_eq!(err.code, Code::AlreadyAttached);
    assert_eq!(w.wiring.links.len(), 1, "c1's veth kept");
    for cid in ["c2", "c3", "c4", "c5"] {
        w.run(&conf, &inv("ADD", cid)).unwrap();
    }
    let err = w.run(&conf, &inv("ADD", "c6")).unwrap_err();
    assert_eq!(err.code, Code::Exhausted);
    assert_eq!(w.wiring.links.len(), 5, "no veth for the exhausted ADD");
}

#[test]
fn add_programs_the_pod_before_wiring_it() {
    let conf = conf(json!({}));
    let mut w = World::default();
    w.run(&conf, &inv("ADD", "c1")).unwrap();
    let (_, batch) = &w.fw.applied[0];
    let text = batch.to_string();
    assert!(
        text.contains("tenant-team-a") && text.contains("10.0.0.2"),
        "{text}"
    );
}

#[test]
fn add_keys_the_fast_path_by_the_wired_veth_and_del_removes_it() {
    let conf = conf(json!({}));
    let mut w = World::default();
    w.run(&conf, &inv("ADD", "c1")).unwrap();
    let kinds: Vec<_> = w.fw.applied.iter().map(|(what, _)| *what).collect();
    assert_eq!(
        kinds,
        ["rebuild", "pod wired"],
        "the first ADD builds the table"
    );
    let wired = w.fw.applied[1].1.to_string();
    assert!(wired.contains(r#"{"concat":[101,"10.0.0.2"]}"#), "{wired}");
    let record = w.store.records.values().next().unwrap();
    assert_eq!((record.host_ifindex, record.complete), (Some(101), true));
    w.run(&conf, &inv("DEL", "c1")).unwrap();
    let (what, del) = w.fw.applied.last().unwrap();
    assert_eq!(*what, "pod delete");
    assert!(
        del.to_string().contains(r#"{"concat":[101,"10.0.0.2"]}"#),
        "{del}"
    );
}

/// Settings that shape the rules (here: logging turned on in the conflist)
/// reach a running table at the next ADD, by a rebuild; unchanged ones do not
/// cost one.
#[test]
fn a_changed_table_setting_rebuilds_at_the_next_add() {
    let plain = conf(json!({}));
    let logged = NetConf {
        isolation: crate::spec::IsolationConf {
            log_group: Some(4),
            ..plain.isolation.clone()
        },
        ..plain.clone()
    };
    let mut w = World::default();
    w.run(&plain, &inv("ADD", "c1")).unwrap();
    w.run(&plain, &inv("ADD", "c2")).unwrap();
    w.run(&logged, &inv("ADD", "c3")).unwrap();
    w.run(&logged, &inv("ADD", "c4")).unwrap();
    let kinds: Vec<_> = w.fw.applied.iter().map(|(what, _)| *what).collect();
    assert_eq!(
        kinds,
        [
            "rebuild",
            "pod wired",
            "pod add",
            "pod wired",
            "rebuild",
            "pod wired",
            "pod add",
            "pod wired"
        ]
    );
    let rebuilt = w.fw.applied[4].1.to_string();
    assert!(rebuilt.contains(r#""group":4"#), "{rebuilt}");
}

/// Pod ranges that only the runtime passes (`ipRanges`) are the cluster for
/// the rules; a GC, which gets none, must rebuild with the same ones, not
/// with an empty cluster (that would masquerade traffic to other nodes' pods
/// as the node's), and the next ADD must find the table as it expects it.
#[test]
fn a_gc_without_ranges_keeps_the_cluster_ranges_an_add_had() {
    let add_conf = conf(json!({"ipam": {},
        "runtimeConfig": {"ipRanges": [[{"subnet": "10.0.0.0/29"}]]}}));
    let (gc_conf, gc) = gc_of(&add_conf, &["c1"]);
    let gc_conf = NetConf {
        ranges: vec![],
        ..gc_conf
    };
    let mut w = World::default();
    w.run(&add_conf, &inv("ADD", "c1")).unwrap();
    w.run(&gc_conf, &gc).unwrap();
    let (what, rebuilt) = w.fw.applied.last().unwrap();
    assert_eq!(*what, "rebuild");
    let cluster = r#"{"prefix":{"addr":"10.0.0.0","len":29}}"#;
    assert!(rebuilt.to_string().contains(cluster), "{rebuilt}");
    w.run(&add_conf, &inv("ADD", "c2")).unwrap();
    let kinds: Vec<_> = w.fw.applied.iter().map(|(what, _)| *what).collect();
    assert_eq!(kinds[kinds.len() - 2..], ["pod add", "pod wired"]);
}

#[test]
fn isolation_can_be_disabled() {
    let conf = conf(json!({"isolation": {"enabled": false}}));
    let mut w = World::default();
    w.run(&conf, &inv("ADD", "c1")).unwrap();
    assert!(w.fw.applied.is_empty());
}

/// Turned off on a node that has a table, isolation takes the table out at
/// the next ADD (not a half-working filter that knows only the old pods);
/// turned on again, the next ADD rebuilds it with every pod, those attached
/// while it was off included.
#[test]
fn isolation_turned_off_removes_the_table_and_back_on_rebuilds_it() {
    let on = conf(json!({}));
    let off = NetConf {
        isolation: crate::spec::IsolationConf {
            enabled: false,
            ..on.isolation.clone()
        },
        ..on.clone()
    };
    let mut w = World::default();
    w.run(&on, &inv("ADD", "c1")).unwrap();
    w.run(&off, &inv("ADD", "c2")).unwrap();
    w.run(&off, &inv("DEL", "c1")).unwrap();
    w.run(&on, &inv("ADD", "c3")).unwrap();
    assert_eq!(
        kinds(&w),
        ["rebuild", "pod wired", "retire", "rebuild", "pod wired"]
    );
    let retire = w.fw.applied[2].1.to_string();
    assert_eq!(
        retire,
        r#"{"nftables":[{"delete":{"table":{"family":"inet","name":"moat"}}}]}"#
    );
    let podif = w.fw.applied[3].1["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|c| c.pointer("/add/set").filter(|s| s["name"] == "podif"))
        .unwrap()["elem"]
        .clone();
    assert_eq!(podif.as_array().unwrap().len(), 2, "c2 and c3: {podif}");
}

#[test]
fn del_is_idempotent_and_gc_keeps_only_listed() {
    let base = conf(json!({}));
    let mut w = World::default();
    for cid in ["a", "b", "c"] {
        w.run(&base, &inv("ADD", cid)).unwrap();
    }
    for _ in 0..2 {
        w.run(&base, &inv("DEL", "a")).unwrap();
    }
    let (gc_conf, gc) = gc_of(&base, &["b"]);
    w.run(&gc_conf, &gc).unwrap();
    let left: Vec<_> = w
        .store
        .records
        .keys()
        .map(|k| k.container_id.clone())
        .collect();
    assert_eq!(left, vec!["b".to_string()]);
    assert_eq!(w.wiring.links.len(), 1);
    assert_eq!(w.store.ips.len(), 1);
    assert_eq!(
        w.fw.applied.last().unwrap().0,
        "rebuild",
        "GC remakes the table"
    );
}

/// Another moat network's table with our conntrack-mark bits: the first ADD,
/// which builds our table, is refused as a configuration error before any
/// wiring, and leaves nothing behind.
#[test]
fn a_neighbour_table_with_our_mark_bits_refuses_the_build() {
    let conf = conf(json!({}));
    let mut w = World::default();
    let epoch = json!({"match": {"left": {"ct": {"key": "mark"}}, "op": "==",
        "right": {"prefix": {"addr": 4096, "len": 20}}}});
    w.fw.others.insert(
        "moat-other".into(),
        json!({"nftables": [
            {"chain": {"family": "inet", "table": "moat-other", "name": "antispoof"}},
            {"set": {"family": "inet", "table": "moat-other", "name": "podsrc4"}},
            {"rule": {"family": "inet", "table": "moat-other", "chain": "epoch", "expr": [epoch, {"accept": null}]}},
        ]}),
    );
    let err = w.run(&conf, &inv("ADD", "c1")).unwrap_err();
    assert_eq!(err.code, Code::InvalidConfig);
    assert!(err.details.contains("table inet moat-other"), "{err:?}");
    assert!(w.fw.applied.is_empty(), "no table built");
    assert!(w.store.records.is_empty() && w.store.ips.is_empty());
    assert!(w.wiring.links.is_empty());
    // With bits of its own it builds.
    let own = NetConf {
        isolation: crate::spec::IsolationConf {
            flow_mark_mask: 0x0000_0f00,
            ..conf.isolation.clone()
        },
        ..conf.clone()
    };
    w.run(&own, &inv("ADD", "c1")).unwrap();
    assert_eq!(w.fw.applied[0].0, "rebuild");
}

fn kinds(w: &World) -> Vec<&'static str> {
    w.fw.applied.iter().map(|(what, _)| *what).collect()
}

/// A DEL whose table change failed (here: the policy file cannot be read)
/// has freed the pod's addresses while its elements are still in the table:
/// the next ADD, which may hand one of them to another project's pod,
/// rebuilds first instead of trusting the layout.
#[test]
fn a_failed_removal_makes_the_next_add_rebuild() {
    let conf = conf(json!({}));
    let mut w = World::default();
    w.run(&conf, &inv("ADD", "c1")).unwrap();
    std::fs::write(conf.policy_path(), "{not json").unwrap();
    let err = w.run(&conf, &inv("DEL", "c1")).unwrap_err();
    assert_eq!(err.code, Code::InvalidConfig);
    std::fs::remove_file(conf.policy_path()).unwrap();
    w.run(&conf, &inv("DEL", "c1")).unwrap();
    w.run(&conf, &inv("ADD", "c2")).unwrap();
    assert_eq!(kinds(&w), ["rebuild", "pod wired", "rebuild", "pod wired"]);
}

/// A rebuild that failed (here: a GC's) leaves the layout saying "not
/// built", so the next change rebuilds rather than changing a table it no
/// longer describes (the rebuild had already pruned groups in the layout).
#[test]
fn a_failed_rebuild_is_not_taken_for_built() {
    let base = conf(json!({}));
    let mut w = World::default();
    w.run(&base, &inv("ADD", "c1")).unwrap();
    w.fw.failing = vec!["rebuild"];
    let (gc_conf, gc) = gc_of(&base, &["c1"]);
    assert!(w.run(&gc_conf, &gc).is_err());
    w.fw.failing.clear();
    w.run(&base, &inv("ADD", "c2")).unwrap();
    assert_eq!(kinds(&w), ["rebuild", "pod wired", "rebuild", "pod wired"]);
}

/// The policy can change without `moat project …`: a file put in place
/// ahead of `moat reconcile`, or `globalProjects` in the conflist while no
/// file exists. The next ADD rebuilds for it; an unchanged policy does not.
#[test]
fn a_policy_changed_behind_the_cli_rebuilds_at_the_next_add() {
    let base = conf(json!({}));
    let mut w = World::default();
    w.run(&base, &inv("ADD", "c1")).unwrap();
    let no_dns = NetConf {
        isolation: crate::spec::IsolationConf {
            global_projects: Default::default(),
            ..base.isolation.clone()
        },
        ..base.clone()
    };
    w.run(&no_dns, &inv("ADD", "c2")).unwrap();
    w.run(&no_dns, &inv("ADD", "c3")).unwrap();
    let team_a = crate::policy::Project::new("team-a").unwrap();
    let file = crate::policy::Policy::with_global([team_a]);
    super::isolation::save_policy(&no_dns, &file).unwrap();
    w.run(&no_dns, &inv("ADD", "c4")).unwrap();
    let (before, after) = (w.fw.applied[2].1.to_string(), w.fw.applied[6].1.to_string());
    assert_eq!(
        kinds(&w),
        [
            "rebuild",
            "pod wired",
            "rebuild",
            "pod wired",
            "pod add",
            "pod wired",
            "rebuild",
            "pod wired"
        ]
    );
    assert!(before.contains("tenant-team-a"), "a tenant before");
    assert!(!after.contains("tenant-team-a"), "global after: {after}");
}

/// `nft flush table` keeps the chains and sets (every address is still
/// found) but no rule: STATUS says 51 as for a missing table, CHECK fails,
/// and a rebuild makes it whole again.
#[test]
fn a_flushed_table_is_reported_like_a_missing_one() {
    let conf = conf(json!({}));
    let mut w = World::default();
    w.run(&conf, &inv("ADD", "c1")).unwrap();
    w.run(&conf, &inv("STATUS", "")).unwrap();
    w.fw.rules.clear();
    let err = w.run(&conf, &inv("STATUS", "")).unwrap_err();
    assert_eq!(err.code, Code::NotAvailableLimited);
    assert!(
        err.msg.contains("has empty chains (antispoof, "),
        "{}",
        err.msg
    );
    let (gc_conf, gc) = gc_of(&conf, &["c1"]);
    w.run(&gc_conf, &gc).unwrap();
    w.run(&conf, &inv("STATUS", "")).unwrap();
}

/// A DEL that ran while the ADD wired the pod (outside the lock) freed its
/// addresses: the ADD's last step must not write the record back (the
/// addresses would then belong to two pods) but fail, for the runtime to
/// try again.
#[test]
fn an_add_whose_attachment_was_deleted_meanwhile_fails() {
    let conf = conf(json!({}));
    let inv = inv("ADD", "c1");
    let mut w = World::default();
    w.dirs.0.push(conf.data_dir.clone());
    let mut ctx = Ctx {
        conf: &conf,
        inv: &inv,
        store: &mut w.store,
        wiring: &mut w.wiring,
        firewall: &mut w.fw,
    };
    let record = super::add::reserve(&mut ctx).unwrap();
    ctx.store.remove(&record.key).unwrap();
    let err = super::add::finish(&mut ctx, &record, 7).unwrap_err();
    assert_eq!(err.code, Code::TryAgainLater);
    assert!(w.store.records.is_empty() && w.store.ips.is_empty());
}

/// A peer (a pod of another node) in this node's own pod range cannot be
/// one: a stale entry would put a local pod's address in its tenant's set.
/// It is neither applied nor kept.
#[test]
fn peers_in_the_nodes_own_range_are_ignored() {
    use crate::policy::peers::Peer;
    let conf = conf(json!({}));
    let mut w = World::default();
    w.run(&conf, &inv("ADD", "c1")).unwrap();
    let peer = |ip: &str, project: &str| Peer {
        ip: ip.parse().unwrap(),
        project: crate::policy::Project::new(project).unwrap(),
    };
    let synced = [peer("10.0.0.5", "team-b"), peer("10.9.0.7", "team-b")];
    super::isolation::peers_changed(&conf, &w.store, &mut w.fw, &synced).unwrap();
    assert_eq!(
        super::isolation::load_peers(&conf).unwrap(),
        [peer("10.9.0.7", "team-b")]
    );
    let (what, batch) = w.fw.applied.last().unwrap();
    assert_eq!(*what, "peers sync");
    let batch = batch.to_string();
    assert!(
        batch.contains("10.9.0.7") && !batch.contains("10.0.0.5"),
        "{batch}"
    );
}
