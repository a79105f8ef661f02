//! Two nodes (two node namespaces joined by a link, each with its own pod
//! ranges and `moat` state): once each knows the other's pods (`moat peers
//! sync`, what the node agent does from the Kubernetes API), projects are
//! isolated across nodes exactly as on one node.

use moat_e2e::cni::{attach, Node, Pod};
use moat_e2e::probe::{reach, serve, Proto};
use serde_json::json;

fn conf(v4: &str, v6: &str) -> serde_json::Value {
    json!({
        "cniVersion": "1.1.0", "name": "moat-test", "type": "moat",
        "ipam": {"ranges": [[{"subnet": v4}], [{"subnet": v6}]]},
        "isolation": {"globalProjects": ["kube-system"], "clusterCIDRs": ["10.76.0.0/14", "fd00::/8"]},
    })
}

/// Link the nodes and route each one's pod ranges to the other.
fn link(n1: &Node, n2: &Node) {
    n1.ns.ip(&[
        "link",
        "add",
        "fabric",
        "type",
        "veth",
        "peer",
        "name",
        "fabric",
        "netns",
        &n2.ns.name,
    ]);
    for (node, me, other, v4, v6) in [
        (n1, "1", "2", "10.78.0.0/24", "fd78::/64"),
        (n2, "2", "1", "10.77.0.0/24", "fd77::/64"),
    ] {
        node.ns.ip(&[
            "addr",
            "add",
            &format!("192.168.77.{me}/24"),
            "dev",
            "fabric",
        ]);
        node.ns.ip(&[
            "addr",
            "add",
            &format!("fd99::{me}/64"),
            "dev",
            "fabric",
            "nodad",
        ]);
        node.ns.ip(&["link", "set", "fabric", "up"]);
        node.ns
            .ip(&["route", "add", v4, "via", &format!("192.168.77.{other}")]);
        node.ns
            .ip(&["route", "add", v6, "via", &format!("fd99::{other}")]);
    }
    // A fresh veth drops packets until its queue is activated, and the first
    // packet to an unresolved neighbour can be lost: warm both, both ways.
    for (node, other) in [(n1, "2"), (n2, "1")] {
        for addr in [format!("192.168.77.{other}"), format!("fd99::{other}")] {
            let ip = addr.parse().unwrap();
            assert!(
                (0..5).any(|_| node.ns.ping(ip)),
                "fabric to {addr} never came up"
            );
        }
    }
}

fn sync(node: &Node, remote: &[Pod]) {
    let peers: Vec<_> = remote
        .iter()
        .flat_map(|p| {
            p.ips
                .iter()
                .map(|ip| json!({"ip": ip, "project": p.project}))
        })
        .collect();
    let file = node.data_dir.join("peers-input.json");
    std::fs::write(&file, serde_json::to_vec(&peers).unwrap()).unwrap();
    let out = node.cli(&["peers", "sync", file.to_str().unwrap()]).ok();
    assert!(
        out.stdout
            .contains(&format!("{} peers synced", peers.len())),
        "{out:?}"
    );
}

fn both(from: &Pod, to: &Pod) -> bool {
    [false, true]
        .iter()
        .all(|&v6| reach(&from.ns, to.ip(v6), Proto::Tcp))
}

fn neither(from: &Pod, to: &Pod) -> bool {
    [false, true]
        .iter()
        .all(|&v6| !reach(&from.ns, to.ip(v6), Proto::Tcp))
}

#[test]
fn projects_are_isolated_across_nodes_once_peers_are_synced() {
    let n1 = Node::new(conf("10.77.0.0/24", "fd77::/64"));
    let n2 = Node::new(conf("10.78.0.0/24", "fd78::/64"));
    let on1 = attach(&n1, &["a", "b", "kube-system"]);
    let on2 = attach(&n2, &["a", "b"]);
    link(&n1, &n2);
    for p in on1.iter().chain(&on2) {
        serve(&p.ns);
    }
    let (a1, b1, dns) = (&on1[0], &on1[1], &on1[2]);
    let (a2, b2) = (&on2[0], &on2[1]);
    assert!(
        neither(a2, a1),
        "a pod of another node is unknown until synced"
    );

    sync(&n1, &on2);
    sync(&n2, &on1);
    let listed = n1.cli(&["peers", "list"]).ok().stdout;
    assert_eq!(listed.lines().count(), 1 + 4, "{listed}");
    assert!(both(a1, a2) && both(a2, a1), "same project across nodes");
    assert!(
        neither(a1, b2) && neither(b2, a1),
        "other project across nodes"
    );
    assert!(neither(a2, b1), "other project, the other way");
    assert!(both(b2, dns) && both(dns, b2), "global across nodes");

    let drops = n1.cli(&["drops"]).ok().stdout;
    let counted = drops
        .lines()
        .any(|l| l.split_whitespace().take(2).eq(["b", "a"]));
    assert!(counted, "n1 counts b (on n2) → a drops:\n{drops}");

    for node in [&n1, &n2] {
        node.cli(&["project", "join", "a", "b"]).ok();
    }
    assert!(both(a1, b2) && both(b2, a1), "joined across nodes");
    // A pod that leaves n2 stops being a peer of n1 at the next sync, and
    // one that comes back is known again: in place, without a rebuild (which
    // would reset the drop counters).
    let (before, epoch) = (n1.table_handle(), n1.epoch());
    sync(&n1, &on2[..1]);
    assert_ne!(n1.epoch(), epoch, "a departed peer moves the epoch");
    assert!(neither(b2, a1), "b2 is no longer known to n1");
    assert!(both(a2, a1));
    sync(&n1, &on2);
    assert!(both(b2, a1), "b2 is known again");
    assert_eq!(n1.table_handle(), before, "peers synced in place");
}
