//! How the nftables table is built and kept: a constant rule count, tenant
//! chains and interface groups made in-process as a rebuild would make them,
//! policy changes in place, and projects without pods pruned.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use etherparse::PacketBuilder;
use moat_e2e::cni::{attach, drop_log_conf, dual_stack_conf, Node, Pod};
use moat_e2e::probe::{reach, serve, Proto, Sink, PORT};
use serde_json::json;

#[test]
fn rule_count_does_not_grow_with_pods() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let _first = attach(&node, &["a", "b", "kube-system"]);
    let rules = |n: &Node| moat_cni_rule_count(&n.nft_table().expect("table"));
    let before = rules(&node);
    let _more = attach(
        &node,
        &["a", "b", "kube-system", "a", "b", "a", "b", "a", "b", "a"],
    );
    assert_eq!(rules(&node), before, "rules must not grow with pods");
    node.cli(&["reconcile"]).ok();
    assert_eq!(rules(&node), before, "a rebuild makes the same rules");
}

/// A project's first pod makes its tenant chain in-process (netlink, no `nft`
/// and no rebuild); what it makes must be what a full rebuild makes.
#[test]
fn a_new_projects_chain_matches_what_a_rebuild_makes() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let _first = attach(&node, &["a"]);
    let before = node.table_handle();
    assert!(before.is_u64(), "{before}");
    let mut pod = Pod::new("newcomer");
    let out = node.add(&pod).ok();
    pod.set_result(&out.json());
    assert_eq!(
        node.table_handle(),
        before,
        "the new chain came without a rebuild"
    );
    // A global project's first pod maps its group to accept, in-process too.
    let _dns = attach(&node, &["kube-system"]);
    assert_eq!(
        node.table_handle(),
        before,
        "no rebuild for a global project"
    );
    let tenant = |n: &Node| {
        let listing = n.nft_table().expect("table");
        let objs = listing["nftables"].as_array().unwrap().clone();
        let mut rules: Vec<String> = objs
            .iter()
            .filter_map(|o| o.get("rule"))
            .filter(|r| r["chain"] == "tenant-newcomer")
            .map(|r| r["expr"].to_string())
            .collect();
        rules.sort();
        let sets: Vec<String> = objs
            .iter()
            .filter_map(|o| o.get("set"))
            .filter(|s| s["name"].as_str().unwrap().starts_with("tenant-newcomer-"))
            .map(|s| format!("{} {} {}", s["name"], s["type"], s["elem"]))
            .collect();
        (rules, sets)
    };
    let made = tenant(&node);
    assert_eq!(made.0.len(), 2, "one rule per family: {made:?}");
    assert_eq!(made.1.len(), 2, "one set per family: {made:?}");
    assert!(made
        .1
        .iter()
        .any(|s| s.contains(&pod.ip(false).to_string())));
    node.cli(&["reconcile"]).ok();
    assert_ne!(node.table_handle(), before, "reconcile rebuilt the table");
    assert_eq!(tenant(&node), made, "a rebuild makes the same chain");
    node.del(&pod).ok();
}

fn moat_cni_rule_count(listing: &serde_json::Value) -> usize {
    listing["nftables"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|o| o.get("rule").is_some()).count())
}

/// A local pod's tenant comes from its host veth's interface group, one per
/// project, so an ADD adds no per-pod jump element; the group outlives its
/// project's pods, follows joins, and CHECK notices a veth moved out of it.
#[test]
fn local_pods_find_their_tenant_by_their_projects_interface_group() {
    const ACCEPT: &str = r#"{"accept":null}"#;
    let node = Node::new(dual_stack_conf("1.1.0"));
    let pods = attach(&node, &["a", "b", "a", "kube-system"]);
    let (ga, gb, gk) = (
        group(&node, &pods[0]),
        group(&node, &pods[1]),
        group(&node, &pods[3]),
    );
    assert_eq!(group(&node, &pods[2]), ga, "one group per project");
    assert_ne!(ga, gb);
    let listed = node.cli(&["pods"]).ok().stdout;
    let host_a = pods[0].result["interfaces"][0]["name"].as_str().unwrap();
    let line = listed.lines().find(|l| l.contains(host_a)).unwrap();
    assert!(
        line.split_whitespace().any(|w| w == ga.to_string()),
        "moat pods shows the group: {line}"
    );
    assert_eq!(
        group_map(&node),
        want(&[(ga, "tenant-a"), (gb, "tenant-b"), (gk, ACCEPT)]),
        "a global project's pods pass"
    );
    let listing = node.nft_table().unwrap();
    for per_address in ["tenant4", "tenant6"] {
        let m = listing["nftables"].as_array().unwrap().iter();
        let m = m
            .filter_map(|o| o.get("map"))
            .find(|m| m["name"] == per_address);
        assert!(
            m.unwrap().get("elem").is_none(),
            "{per_address}: no pod elements"
        );
    }
    // Policy changes go in place: the same table (a rebuild would make a new
    // one and reset the drop counters).
    let before = node.table_handle();
    let epoch = node.epoch();
    node.cli(&["project", "join", "a", "b"]).ok();
    assert_eq!(
        group_map(&node),
        want(&[(ga, "tenant-a"), (gb, "tenant-a"), (gk, ACCEPT)])
    );
    let joined = node.epoch();
    node.cli(&["project", "isolate", "b"]).ok();
    // Open connections meet the rules again after each change.
    assert!(epoch != joined && joined != node.epoch());
    assert_eq!(
        node.table_handle(),
        before,
        "join and isolate changed elements only"
    );
    for pod in [&pods[0], &pods[2]] {
        node.del(pod).ok();
    }
    let again = attach(&node, &["a"]);
    assert_eq!(group(&node, &again[0]), ga, "the project keeps its group");
    assert_eq!(
        group_map(&node),
        want(&[(ga, "tenant-a"), (gb, "tenant-b"), (gk, ACCEPT)])
    );
    check_notices_a_veth_moved_to(&node, &pods[1], ga);
    // A project whose pods have all left is pruned at the next rebuild:
    // group element and tenant chain (short-lived namespaces must not pile up).
    node.del(&pods[1]).ok();
    node.cli(&["reconcile"]).ok();
    assert_eq!(group_map(&node), want(&[(ga, "tenant-a"), (gk, ACCEPT)]));
    let listing = node.nft_table().unwrap();
    let chains = listing["nftables"].as_array().unwrap().iter();
    let mut chains = chains.filter_map(|o| o.pointer("/chain/name"));
    assert!(!chains.any(|c| c == "tenant-b"), "tenant-b pruned");
    let newcomer = attach(&node, &["c"]);
    let gc = group(&node, &newcomer[0]);
    assert!(
        ![ga, gk].contains(&gc),
        "a live project's number is never reused"
    );
}

/// The interface group of a pod's host veth.
fn group(node: &Node, pod: &Pod) -> u64 {
    let host = pod.result["interfaces"][0]["name"].as_str().unwrap();
    let out = node.ns.ip(&["-j", "link", "show", "dev", host]);
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    links[0]["group"]
        .as_str()
        .unwrap()
        .parse()
        .expect("a numbered group")
}

/// The group map's elements as `group:chain` (or `group:verdict`).
fn group_map(n: &Node) -> BTreeSet<String> {
    let listing = n.nft_table().expect("table");
    let maps = listing["nftables"].as_array().unwrap().iter();
    let m = maps
        .filter_map(|o| o.get("map"))
        .find(|m| m["name"] == "tenantgrp")
        .expect("group map");
    let elems = m["elem"].as_array().cloned().unwrap_or_default();
    elems
        .iter()
        .map(|e| match e[1]["jump"]["target"].as_str() {
            Some(chain) => format!("{}:{chain}", e[0]),
            None => format!("{}:{}", e[0], e[1]),
        })
        .collect()
}

fn want(pairs: &[(u64, &str)]) -> BTreeSet<String> {
    pairs.iter().map(|(g, c)| format!("{g}:{c}")).collect()
}

/// CHECK passes, then fails once the pod's veth is put in another project's group.
fn check_notices_a_veth_moved_to(node: &Node, pod: &Pod, other: u64) {
    let mut conf = node.conf.clone();
    conf["prevResult"] = pod.result.clone();
    node.call_with(&pod.call("CHECK"), &conf).ok();
    let host = pod.result["interfaces"][0]["name"].as_str().unwrap();
    node.ns
        .ip(&["link", "set", "dev", host, "group", &other.to_string()]);
    let out = node.call_with(&pod.call("CHECK"), &conf);
    assert_eq!(out.code(), 103, "{out:?}");
    assert!(
        out.json()["msg"].as_str().unwrap().contains("group"),
        "{out:?}"
    );
}

/// A full meter ends the rule it is in, verdict and all. A pod that forges
/// more sources than the spoof meter holds (65535) fills it: its forged
/// packets must still be dropped, by a rule the meter is not in.
#[test]
fn a_full_drop_meter_does_not_let_forged_packets_through() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let pods = attach(&node, &["a", "a"]);
    let sink = Sink::open(&pods[1].ns, PORT + 5);
    let IpAddr::V4(dst) = pods[1].ip(false) else {
        panic!("an IPv4 pod address")
    };
    let sent = pods[0].ns.run(|| send_forged(dst, PORT + 5, FLOOD));
    assert_eq!(sent, FLOOD);
    let out = node
        .ns
        .exec("nft")
        .args(["-j", "list", "meter", "inet", "moat", "spoofs4"])
        .output()
        .unwrap();
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let elements = listing["nftables"][1]["meter"]["elem"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(elements, 65535, "the flood filled the meter");
    assert!(
        !sink.received(),
        "a forged packet reached a2 once the meter was full"
    );
}

/// More forged sources than the meter's 65535.
const FLOOD: u32 = 66_000;

/// `n` UDP datagrams to `dst`, each from its own forged source (10.200/15),
/// through a raw socket that writes the IP header itself; returns how many
/// the kernel took.
fn send_forged(dst: Ipv4Addr, port: u16, n: u32) -> u32 {
    use nix::libc;
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut sent = 0;
    for i in 0..n {
        let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i);
        let mut packet = Vec::with_capacity(64);
        PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
            .udp(40000, port)
            .write(&mut packet, b"forged")
            .unwrap();
        // SAFETY: packet and to outlive the call; lengths are theirs.
        let r = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r == packet.len() as isize {
            sent += 1;
        }
    }
    sent
}

/// A second moat network in the same node netns (its own table, ranges and
/// state) shares the namespace's conntrack and NFLOG groups: its first ADD
/// is refused while its fast-path bits or log group are the first network's,
/// and goes through once they are its own, with both networks isolating.
#[test]
fn a_second_network_must_not_share_mark_bits_or_log_group() {
    let node = Node::new(drop_log_conf(47));
    let first = attach(&node, &["a", "a", "b"]);
    let mut second = node.conf.clone();
    second["name"] = "moat-second".into();
    second["isolation"]["table"] = "moat2".into();
    second["ipam"] = json!({"ranges": [[{"subnet": "10.78.0.0/24"}]]});
    second["dataDir"] = json!(node.data_dir.join("second"));
    second["runDir"] = json!(node.data_dir.join("second/run"));
    let mut pods = vec![Pod::new("a"), Pod::new("a"), Pod::new("b")];

    let refused = node.call_with(&pods[0].call("ADD"), &second);
    let msg = refused.json().to_string();
    assert_eq!(refused.code(), 7, "same bits, same group: {msg}");
    assert!(
        msg.contains("flowMarkMask 0xfffff000 overlaps 0xfffff000 of table inet moat "),
        "{msg}"
    );
    assert!(
        msg.contains("logGroup 47 is the group table inet moat "),
        "{msg}"
    );
    assert!(node.nft_table_named("moat2").is_none(), "nothing built");

    second["isolation"]["flowMarkMask"] = 0x0000_0f00.into();
    let refused = node.call_with(&pods[0].call("ADD"), &second);
    let msg = refused.json().to_string();
    assert_eq!(refused.code(), 7, "own bits, same group: {msg}");
    assert!(!msg.contains("flowMarkMask") && msg.contains("logGroup 47"));

    second["isolation"]["logGroup"] = 48.into();
    for pod in &mut pods {
        let out = node.call_with(&pod.call("ADD"), &second).ok();
        pod.set_result(&out.json());
    }
    for (from, to, allowed) in [
        (&pods[0], &pods[1], true),
        (&pods[0], &pods[2], false),
        (&first[0], &first[1], true),
        (&first[0], &first[2], false),
    ] {
        serve(&to.ns);
        for _ in 0..2 {
            // The second time over the fast path, each table's own bits.
            assert_eq!(reach(&from.ns, to.ip(false), Proto::Tcp), allowed);
        }
    }
    for pod in &pods {
        node.call_with(&pod.call("DEL"), &second).ok();
    }
}

/// `isolation.enabled: false` in the config takes the table out at the next
/// ADD (no half-working filter that knows only the older pods); turned on
/// again, the next ADD rebuilds it, pods attached while it was off included.
#[test]
fn isolation_turned_off_and_on_again_applies_at_the_next_add() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let pods = attach(&node, &["a", "b"]);
    serve(&pods[0].ns);
    serve(&pods[1].ns);
    let mut off = node.conf.clone();
    off["isolation"]["enabled"] = false.into();
    let mut c = Pod::new("c");
    let out = node.call_with(&c.call("ADD"), &off).ok();
    c.set_result(&out.json());
    assert!(node.nft_table().is_none(), "table taken out");
    assert!(
        reach(&pods[0].ns, pods[1].ip(false), Proto::Tcp),
        "a → b, off"
    );
    assert!(reach(&c.ns, pods[0].ip(true), Proto::Tcp), "c → a, off");

    attach(&node, &["d"]);
    assert!(node.nft_table().is_some(), "rebuilt");
    assert!(
        !reach(&pods[0].ns, pods[1].ip(false), Proto::Tcp),
        "a → b, on"
    );
    assert!(!reach(&c.ns, pods[0].ip(true), Proto::Tcp), "c → a, on");
    assert!(!reach(&pods[1].ns, c.ip(false), Proto::Icmp), "b → c, on");
}
