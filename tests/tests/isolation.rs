//! Tenant isolation with the built binary: truth tables before and after live
//! policy changes, anti-spoofing, DNAT, drop counters, table loss and repair.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use moat_e2e::cni::{attach, drop_log_conf, dual_stack_conf, Call, Node, Pod};
use moat_e2e::probe::{echo_on, reach, serve, tcp_connect, udp_from, Proto, Sink, PORT};
use moat_e2e::truth::{mismatches, probe_all, render, Endpoint, Expect};

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// a, b, c with two pods each, one global (kube-system) pod, the node.
fn cluster() -> (Node, Vec<Pod>) {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let pods = attach(&node, &["a", "a", "b", "b", "c", "c", "kube-system"]);
    for p in &pods {
        serve(&p.ns);
    }
    serve(&node.ns);
    (node, pods)
}

fn endpoints<'a>(node: &'a Node, pods: &'a [Pod]) -> Vec<Endpoint<'a>> {
    let names = ["a1", "a2", "b1", "b2", "c1", "c2", "dns"];
    let mut eps: Vec<Endpoint> = names
        .iter()
        .zip(pods)
        .map(|(n, p)| Endpoint::pod(n, p))
        .collect();
    eps.push(Endpoint::node(node));
    eps
}

fn assert_table(eps: &[Endpoint], expect: &Expect, label: &str) {
    let cells = probe_all(eps, expect);
    let bad = mismatches(eps, &cells);
    assert!(
        bad.is_empty(),
        "{label}:\n{}\n{}",
        render(eps, &cells),
        bad.join("\n")
    );
}

#[test]
fn truth_table_then_live_join_and_isolate_cuts_open_connections() {
    let (node, pods) = cluster();
    let eps = endpoints(&node, &pods);
    let mut expect = Expect {
        global: set(&["kube-system"]),
        groups: vec![],
    };
    assert_table(&eps, &expect, "default isolation");

    node.cli(&["project", "join", "a", "b"]).ok();
    expect.groups = vec![set(&["a", "b"])];
    assert_table(&eps, &expect, "after join a b");

    let mut conn4 =
        tcp_connect(&pods[0].ns, pods[2].ip(false)).expect("a1 → b1 connects while joined");
    let mut conn6 = tcp_connect(&pods[0].ns, pods[2].ip(true)).expect("a1 → b1 connects over IPv6");
    assert!(echo_on(&mut conn4) && echo_on(&mut conn6));

    node.cli(&["project", "isolate", "a"]).ok();
    expect.groups = vec![];
    assert!(
        !echo_on(&mut conn4),
        "the open IPv4 connection must stop passing packets"
    );
    assert!(
        !echo_on(&mut conn6),
        "the open IPv6 connection must stop passing packets"
    );
    assert_table(&eps, &expect, "after isolate a");

    node.cli(&["project", "global", "c"]).ok();
    expect.global.insert("c".into());
    assert_table(&eps, &expect, "after global c");
    let policy = node.cli(&["policy"]).ok().stdout;
    assert!(policy.contains("global: c, kube-system"), "{policy}");
}

#[test]
fn drops_are_counted_per_project_pair() {
    // With rate-limited logging on: the kernel must take that ruleset too.
    let mut conf = dual_stack_conf("1.1.0");
    conf["isolation"]["logDrops"] = true.into();
    let node = Node::new(conf);
    let pods = attach(&node, &["a", "b", "a"]);
    serve(&pods[1].ns);
    serve(&pods[2].ns);
    for _ in 0..3 {
        assert!(!reach(&pods[0].ns, pods[1].ip(false), Proto::Udp));
    }
    assert!(reach(&pods[0].ns, pods[2].ip(false), Proto::Udp));
    let drops = node.cli(&["drops"]).ok().stdout;
    let line = drops
        .lines()
        .find(|l| l.starts_with("a "))
        .unwrap_or_else(|| panic!("no a → b line:\n{drops}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], "b", "{drops}");
    assert!(cols[2].parse::<u64>().unwrap() >= 3, "{drops}");
    assert!(
        !drops
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["a", "a"])),
        "{drops}"
    );
    let listed = node.cli(&["pods"]).ok().stdout;
    assert_eq!(listed.lines().count(), 4, "{listed}");
}

/// Cross-tenant datagrams sent in a burst, far more than the log's rate.
const BURST: usize = 60;

#[test]
fn drops_are_logged_to_an_nflog_group_at_a_limited_rate() {
    let node = Node::new(drop_log_conf(9));
    // Started first: it must learn the pods attached after it.
    let follower = &mut node.follow_drops();
    let second = node.cli(&["drops", "--follow", "--count", "1"]);
    assert!(
        !second.success && second.stderr.contains("another listener"),
        "{second:?}"
    );
    let pods = attach(&node, &["a", "b", "a"]);
    let (a1, b1, a2) = (&pods[0], &pods[1], &pods[2]);

    let started = Instant::now();
    for _ in 0..BURST {
        assert!(udp_from(&a1.ns, a1.ip(false), b1.ip(false), PORT + 3));
    }
    let burst_took = started.elapsed();
    // b1's address, sent from a1: the line must name a1's project, not b's.
    let forged = format!("{}/128", b1.ip(true));
    a1.ns.ip(&["addr", "add", &forged, "dev", "eth0", "nodad"]);
    assert!(udp_from(&a1.ns, b1.ip(true), a2.ip(true), PORT + 3));

    let lines = follower.lines_within(Duration::from_millis(1500));
    let text = lines.join("\n");
    let cross: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" cross-tenant "))
        .collect();
    let want = format!(" a {}:", a1.ip(false));
    let to = format!(" -> b {}:{} udp", b1.ip(false), PORT + 3);
    assert!(!cross.is_empty(), "no cross-tenant drop logged:\n{text}");
    assert!(
        cross.iter().all(|l| l.contains(&want) && l.ends_with(&to)),
        "{text}"
    );
    // nft's limit lets a burst of 5 through, then 10 a second.
    let allowed = 5 + (10.0 * burst_took.as_secs_f64()).ceil() as usize;
    assert!(
        cross.len() <= allowed && cross.len() < BURST,
        "{} of {BURST} logged in {burst_took:?}, at most {allowed} allowed:\n{text}",
        cross.len()
    );
    let spoof = format!(" spoofed       a [{}]:", b1.ip(true));
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&spoof) && l.contains(" -> a [")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" cross-tenant ") || l.contains(" spoofed ")),
        "{text}"
    );

    // Every one of them was dropped and counted, logged or not.
    let drops = node.cli(&["drops"]).ok().stdout;
    let counted = drops
        .lines()
        .find(|l| l.starts_with("a ") && l.split_whitespace().nth(1) == Some("b"))
        .and_then(|l| l.split_whitespace().nth(2)?.parse::<usize>().ok());
    assert!(counted >= Some(BURST), "{drops}");
}

/// Table-wide settings live in the rules: turned on in the network config,
/// logging reaches the running table at the next ADD.
#[test]
fn logging_turned_on_in_the_config_applies_at_the_next_add() {
    let mut node = Node::new(dual_stack_conf("1.1.0"));
    let pods = attach(&node, &["a", "b"]);
    node.conf["isolation"]["logGroup"] = 6.into();
    let follower = &mut node.follow_drops();
    assert!(udp_from(
        &pods[0].ns,
        pods[0].ip(false),
        pods[1].ip(false),
        PORT + 4
    ));
    assert!(
        follower.lines_within(Duration::from_millis(300)).is_empty(),
        "the table was built without logging"
    );
    attach(&node, &["c"]);
    assert!(udp_from(
        &pods[0].ns,
        pods[0].ip(false),
        pods[1].ip(false),
        PORT + 4
    ));
    let lines = follower.lines_within(Duration::from_millis(1000));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cross-tenant  a ") && l.contains(" -> b ")),
        "{lines:?}"
    );
}

#[test]
fn following_drops_needs_a_log_group() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let out = node.cli(&["drops", "--follow"]);
    assert!(!out.success);
    assert!(out.stderr.contains("isolation.logGroup"), "{out:?}");
}

#[test]
fn forged_source_addresses_are_dropped() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let pods = attach(&node, &["a", "a", "b", "kube-system"]);
    let (a1, a2, b1, dns) = (&pods[0], &pods[1], &pods[2], &pods[3]);
    let sink = Sink::open(&a2.ns, PORT + 1);
    // The node is checked too: packets for it take the input path.
    let on_node = Sink::open(&node.ns, PORT + 2);
    for v6 in [false, true] {
        assert!(udp_from(&a1.ns, a1.ip(v6), a2.ip(v6), PORT + 1));
        assert!(
            sink.received(),
            "control: a1's own address reaches a2 (IPv{})",
            if v6 { 6 } else { 4 }
        );
        assert!(udp_from(&a1.ns, a1.ip(v6), Node::node_ip(v6), PORT + 2));
        assert!(on_node.received(), "control: a1 reaches the node");
        for victim in [b1, dns] {
            let forged = victim.ip(v6);
            let len = if v6 { "128" } else { "32" };
            let addr = format!("{forged}/{len}");
            let mut args = vec!["addr", "add", &addr, "dev", "eth0"];
            if v6 {
                args.push("nodad");
            }
            a1.ns.ip(&args);
            assert!(udp_from(&a1.ns, forged, a2.ip(v6), PORT + 1));
            assert!(!sink.received(), "a1 forging {forged} must be dropped");
            assert!(udp_from(&a1.ns, forged, Node::node_ip(v6), PORT + 2));
            assert!(!on_node.received(), "a1 forging {forged} to the node");
            a1.ns.ip(&["addr", "del", &addr, "dev", "eth0"]);
        }
    }
    // Counted by the veth they came in on: the sender's project, not the
    // owner of the address it forged.
    let drops = node.cli(&["drops"]).ok().stdout;
    let forged: Vec<Vec<&str>> = drops
        .lines()
        .skip_while(|l| !l.starts_with("FORGED SOURCES"))
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    for v6 in [false, true] {
        for victim in [b1, dns] {
            let ip = victim.ip(v6).to_string();
            assert!(
                forged
                    .iter()
                    .any(|r| r[0] == "a" && r[2] == ip && r[3].parse::<u32>().unwrap() >= 2),
                "{ip} forged by a, to a2 and to the node:\n{drops}"
            );
        }
    }
}

/// nftables runs every table's base chains at a hook: an accept ends only
/// its own chain, a drop ends the packet. An admin's or kube-proxy's accept,
/// before or after our chain, must not let cross-tenant traffic through.
#[test]
fn an_accept_in_another_table_does_not_undo_our_drop() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let pods = attach(&node, &["a", "b", "a"]);
    for p in &pods {
        serve(&p.ns);
    }
    node.nft_script(
        "table inet admin-test { \
           chain early { type filter hook forward priority -100; policy accept; accept; }; \
           chain late { type filter hook forward priority 100; policy accept; accept; }; }; \
         table ip kubeproxy-filter-test { \
           chain kpforward { type filter hook forward priority filter; ct state established,related accept; accept; }; }",
    );
    for v6 in [false, true] {
        for proto in [Proto::Tcp, Proto::Udp, Proto::Icmp] {
            assert!(
                !reach(&pods[0].ns, pods[1].ip(v6), proto),
                "a → b {proto:?} v6={v6}"
            );
            assert!(
                reach(&pods[0].ns, pods[2].ip(v6), proto),
                "a → a {proto:?} v6={v6}"
            );
        }
    }
}

#[test]
fn service_dnat_to_another_project_is_dropped_and_to_the_same_passes() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let pods = attach(&node, &["a", "a", "b"]);
    serve(&pods[1].ns);
    serve(&pods[2].ns);
    // Stand-in for kube-proxy, in a table of its own in the node netns.
    let rules = format!(
        "table ip kubeproxy-test {{ chain pre {{ type nat hook prerouting priority dstnat; \
         ip daddr 10.96.0.10 tcp dport 80 dnat to {b}:{PORT}; ip daddr 10.96.0.11 tcp dport 80 dnat to {a}:{PORT}; \
         ip daddr 10.96.0.12 tcp dport 80 dnat to {self_}:{PORT}; }}; \
         chain post {{ type nat hook postrouting priority srcnat; ip saddr {self_} ip daddr {self_} masquerade; }}; }}",
        b = pods[2].ip(false),
        a = pods[1].ip(false),
        self_ = pods[0].ip(false),
    );
    node.nft_script(&rules);
    let via = |vip: &str| {
        pods[0].ns.run(|| {
            std::net::TcpStream::connect_timeout(
                &format!("{vip}:80").parse().unwrap(),
                std::time::Duration::from_millis(400),
            )
            .map(|mut s| echo_on(&mut s))
            .unwrap_or(false)
        })
    };
    assert!(!via("10.96.0.10"), "service backed by project b");
    assert!(via("10.96.0.11"), "service backed by project a");
    serve(&pods[0].ns);
    // kube-proxy masquerades hairpin traffic (a pod reaching itself through its
    // service); the stand-in does the same, and our table must let it pass.
    assert!(via("10.96.0.12"), "hairpin: a1 reaches its own service");
}

/// With the table damaged by `nft` (the script), STATUS says 51 with
/// `status_says` in its message and CHECK fails while `from` reaches `to`
/// unprotected; `moat reconcile` makes STATUS and CHECK pass and `to`
/// unreachable again.
fn damaged_then_reconciled(node: &Node, nft: &str, status_says: &str, from: &Pod, to: &Pod) {
    let status = Call {
        command: "STATUS",
        ..Call::default()
    };
    node.call(&status).ok();
    node.nft_script(nft);
    let out = node.call(&status);
    assert_eq!(out.code(), 51, "{}", out.stdout);
    assert!(out.stdout.contains(status_says), "{}", out.stdout);
    let mut conf = node.conf.clone();
    conf["prevResult"] = from.result.clone();
    assert_eq!(node.call_with(&from.call("CHECK"), &conf).code(), 103);
    assert!(reach(&from.ns, to.ip(false), Proto::Tcp), "unprotected");
    node.cli(&["reconcile"]).ok();
    node.call(&status).ok();
    node.call_with(&from.call("CHECK"), &conf).ok();
    assert!(!reach(&from.ns, to.ip(false), Proto::Tcp));
    assert!(!reach(&from.ns, to.ip(true), Proto::Icmp));
}

#[test]
fn lost_table_reports_51_fails_check_and_reconcile_repairs_it() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let pods = attach(&node, &["a", "a", "b"]);
    serve(&pods[1].ns);
    serve(&pods[2].ns);
    let lost = "delete table inet moat";
    damaged_then_reconciled(&node, lost, "is missing", &pods[0], &pods[2]);
    assert!(reach(&pods[0].ns, pods[1].ip(false), Proto::Tcp));
    // The next ADD also repairs it.
    node.nft_script(lost);
    let extra = attach(&node, &["c"]);
    assert!(!reach(&pods[0].ns, pods[2].ip(true), Proto::Tcp));
    assert!(!reach(&extra[0].ns, pods[1].ip(false), Proto::Icmp));
}

/// `nft flush table` leaves the chains and sets (every address still
/// found) without a rule: reported and repaired as a lost table.
#[test]
fn flushed_table_reports_51_fails_check_and_reconcile_repairs_it() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let pods = attach(&node, &["a", "b"]);
    serve(&pods[1].ns);
    let flush = "flush table inet moat";
    damaged_then_reconciled(&node, flush, "empty chains", &pods[0], &pods[1]);
}

fn set_elements(listing: &serde_json::Value, name: &str) -> BTreeSet<String> {
    let sets = listing["nftables"].as_array().unwrap().iter();
    let set = sets
        .filter_map(|o| o.get("set"))
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no set {name}"));
    let elems = set["elem"].as_array().cloned().unwrap_or_default();
    elems
        .iter()
        .map(|e| e.as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn concurrent_adds_dels_and_policy_changes_lose_nothing() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let doomed = attach(&node, &["a", "b", "a", "b"]);
    let mut pods: Vec<Pod> = ["a", "b"]
        .iter()
        .cycle()
        .take(12)
        .map(|p| Pod::new(p))
        .collect();
    std::thread::scope(|s| {
        let adds: Vec<_> = pods
            .iter()
            .map(|p| node.spawn(&p.call("ADD"), &node.conf))
            .collect();
        let dels: Vec<_> = doomed
            .iter()
            .map(|p| node.spawn(&p.call("DEL"), &node.conf))
            .collect();
        for i in 0..8 {
            let node = &node;
            s.spawn(move || {
                let args: &[&str] = if i % 2 == 0 {
                    &["project", "join", "a", "b"]
                } else {
                    &["project", "isolate", "a"]
                };
                node.cli(args).ok();
            });
        }
        for (child, pod) in adds.into_iter().zip(pods.iter_mut()) {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            pod.set_result(&serde_json::from_slice(&out.stdout).unwrap());
        }
        for child in dels {
            assert!(child.wait_with_output().unwrap().status.success());
        }
    });
    let table = node.nft_table().expect("table");
    let want: BTreeSet<String> = pods.iter().map(|p| p.ip(false).to_string()).collect();
    assert_eq!(
        set_elements(&table, "pods4"),
        want,
        "every ADD and no DEL'd pod is in the set"
    );
    let want6: BTreeSet<String> = pods.iter().map(|p| p.ip(true).to_string()).collect();
    assert_eq!(set_elements(&table, "pods6"), want6);
    for p in &pods[..2] {
        serve(&p.ns);
    }
    node.cli(&["project", "join", "a", "b"]).ok();
    assert!(
        reach(&pods[3].ns, pods[0].ip(false), Proto::Tcp),
        "b → a once joined"
    );
    node.cli(&["project", "isolate", "a"]).ok();
    assert!(
        !reach(&pods[3].ns, pods[0].ip(false), Proto::Tcp),
        "b ↛ a once isolated"
    );
    assert!(reach(&pods[2].ns, pods[0].ip(true), Proto::Tcp), "a → a");
}
