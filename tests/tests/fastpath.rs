//! The verified-connection fast path: connections the tenant rules accepted
//! are marked and pass at one compare, until a change that can take a
//! permission away sends every connection back to the rules. The case that
//! would break isolation without it: a pod's address goes, on DEL, to a pod
//! of another project, and a connection to the old pod is still open.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use serde_json::{json, Value};

use moat_e2e::cni::{attach, Node, Pod};
use moat_e2e::netns::run_ok;
use moat_e2e::probe::{echo_on, serve, tcp_connect, Sink, PORT, TIMEOUT};

/// Three addresses: after A, D and B, the next pod gets B's address back.
fn tight_conf() -> Value {
    json!({
        "cniVersion": "1.1.0", "name": "moat-test", "type": "moat",
        "ipam": {"ranges": [[{"subnet": "10.78.0.0/24",
                              "rangeStart": "10.78.0.10", "rangeEnd": "10.78.0.12"}]]},
    })
}

/// A table of the test's own, in the node netns, counting forwarded packets
/// of connections that carry a mark in the fast path's bits.
fn count_marked(node: &Node) -> impl Fn() -> u64 + '_ {
    let nft = |args: &str| {
        run_ok(node.ns.exec("nft").args(args.split(' ')));
    };
    nft("add table inet moattest");
    nft("add chain inet moattest counted { type filter hook forward priority 10 ; }");
    nft("add rule inet moattest counted ct mark and 0xfffff000 != 0 counter");
    move || {
        let out = run_ok(
            node.ns
                .exec("nft")
                .args(["-j", "list", "chain", "inet", "moattest", "counted"]),
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.pointer("/rule/expr"))
            .flat_map(|e| e.as_array().unwrap().iter())
            .filter_map(|e| e.pointer("/counter/packets"))
            .map(|p| p.as_u64().unwrap())
            .sum()
    }
}

/// One UDP round trip on a socket kept open (one conntrack entry).
fn udp_echo(s: &UdpSocket, to: IpAddr) -> bool {
    let mut buf = [0u8; 8];
    s.send_to(b"ping", SocketAddr::new(to, PORT)).is_ok() && s.recv_from(&mut buf).is_ok()
}

#[test]
fn an_open_connection_to_a_deleted_pod_does_not_reach_the_next_owner_of_its_address() {
    let node = Node::new(tight_conf());
    let pods = attach(&node, &["a", "a", "a"]);
    let (a, d, b) = (&pods[0], &pods[1], &pods[2]);
    serve(&d.ns);
    serve(&b.ns);
    let marked = count_marked(&node);
    let udp =
        a.ns.run(|| UdpSocket::bind((a.ip(false), 40000)).expect("bind"));
    udp.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert!(udp_echo(&udp, b.ip(false)) && udp_echo(&udp, b.ip(false)));
    let mut tcp = tcp_connect(&a.ns, d.ip(false)).expect("a → d");
    assert!(echo_on(&mut tcp));
    assert!(marked() > 0, "same-tenant connections pass marked");
    let (epoch, handle) = (node.epoch(), node.table_handle());

    node.del(b).ok();
    let moved = node.epoch();
    assert_ne!(moved, epoch, "a DEL moves the epoch");
    assert_eq!(node.table_handle(), handle, "in the DEL's own transaction");
    let mut c = Pod::new("c");
    let out = node.add(&c).ok();
    c.set_result(&out.json());
    assert_eq!(c.ip(false), b.ip(false), "c got b's address");
    assert_eq!(node.epoch(), moved, "an ADD takes no permission away");

    let sink = Sink::open(&c.ns, PORT);
    let _ = udp.send_to(b"stale", SocketAddr::new(c.ip(false), PORT));
    assert!(
        !sink.received(),
        "the old connection must not reach project c"
    );
    let drops = node.cli(&["drops"]).ok().stdout;
    assert!(
        drops
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["a", "c"])),
        "counted as a → c: {drops}"
    );
    assert!(
        echo_on(&mut tcp),
        "a connection the rules still allow survives the new epoch"
    );
    // The epoch rule the DEL wrote in-process reads back as a rebuild's
    // (written by nft itself) but for the epoch, which a rebuild moves too.
    let in_process = epoch_rule(&node);
    node.cli(&["reconcile"]).ok();
    let rebuilt = epoch_rule(&node);
    assert_ne!(in_process.1, rebuilt.1);
    assert_eq!(in_process.0, rebuilt.0);
    node.del(&c).ok();
}

/// The epoch rule without its epoch, and the epoch, checked against what
/// the marking rule sets.
fn epoch_rule(node: &Node) -> (Value, u64) {
    let mut rule: Value = serde_json::from_str(&node.epoch()).unwrap();
    // nft lists a mask of leading bits as a prefix: `ct mark 0x3000/20`.
    let right = &mut rule[0]["match"]["right"];
    let epoch = match right.get_mut("prefix") {
        Some(prefix) => prefix["addr"].take(),
        None => right.take(),
    };
    let epoch = epoch.as_u64().expect("a number");
    let listing = node.nft_table().expect("table").to_string();
    assert!(
        listing.contains(r#""|":[{"&":[{"ct":{"key":"mark"}},"#)
            && listing.contains(&format!("]}},{epoch}]}}")),
        "the marking rule sets epoch {epoch}: {listing}"
    );
    (rule, epoch)
}

/// The own-source elements of the fast rule, as nft lists them (an index
/// as its link's name while the link exists).
fn fast_sources(node: &Node) -> Vec<String> {
    let listing = node.nft_table().expect("table");
    listing["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("set"))
        .filter(|s| s["name"] == "podfast4")
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .map(|e| e["concat"].to_string())
        .collect()
}

/// Packets of verified connections through the fast rule: a counter put in
/// front of the epoch chain's compare, which only that rule jumps to.
fn count_fast(node: &Node) -> u64 {
    let out = run_ok(
        node.ns
            .exec("nft")
            .args(["-j", "list", "chain", "inet", "moat", "epoch"]),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.pointer("/nftables/2/rule/expr/0/counter/packets")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

#[test]
fn the_fast_rule_knows_a_pod_by_its_veths_index() {
    let node = Node::new(tight_conf());
    let pods = attach(&node, &["a", "a"]);
    let (a, b) = (&pods[0], &pods[1]);
    let veth = |p: &Pod| {
        p.result["interfaces"][0]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let wanted = |pods: &[&Pod]| -> Vec<String> {
        let mut v: Vec<String> = pods
            .iter()
            .map(|p| json!([veth(p), p.ip(false).to_string()]).to_string())
            .collect();
        v.sort();
        v
    };
    let mut listed = fast_sources(&node);
    listed.sort();
    assert_eq!(listed, wanted(&[a, b]), "keyed by each pod's host veth");
    node.cli(&["reconcile"]).ok();
    listed = fast_sources(&node);
    listed.sort();
    assert_eq!(listed, wanted(&[a, b]), "a rebuild keeps them");

    serve(&b.ns);
    let mut tcp = tcp_connect(&a.ns, b.ip(false)).expect("a → b");
    assert!(echo_on(&mut tcp));
    run_ok(
        node.ns
            .exec("nft")
            .args(["insert", "rule", "inet", "moat", "epoch", "counter"]),
    );
    for _ in 0..5 {
        assert!(echo_on(&mut tcp));
    }
    assert!(count_fast(&node) >= 10, "both ways through the fast rule");

    node.del(b).ok();
    assert_eq!(fast_sources(&node), wanted(&[a]), "DEL takes them out");
    node.del(a).ok();
}

#[test]
fn with_the_fast_path_off_tenants_accept_directly() {
    let mut conf = tight_conf();
    conf["isolation"] = json!({"flowMarkMask": 0});
    let node = Node::new(conf);
    let pods = attach(&node, &["a", "a", "b"]);
    serve(&pods[1].ns);
    let listing = node.nft_table().expect("table").to_string();
    assert!(!listing.contains("epoch") && !listing.contains("verified"));
    let mut tcp = tcp_connect(&pods[0].ns, pods[1].ip(false)).expect("a → a");
    assert!(echo_on(&mut tcp));
    assert!(tcp_connect(&pods[0].ns, pods[2].ip(false)).is_none());
}

/// A connection the rules closed (here by `isolate`) loses its epoch at its
/// first dropped packet, so it stays closed when the epoch counter comes
/// round to the epoch it was marked with. Two mark bits: three epochs.
#[test]
fn a_closed_connection_stays_closed_when_the_epoch_comes_round() {
    closed_flow_when_the_epoch_comes_round(true);
}

/// The same connection idle from the change that closed it until the
/// counter comes round, so no dropped packet cleared its mark: the marks
/// are swept of old epochs before the first one is current again.
#[test]
fn an_idle_closed_connection_stays_closed_when_the_epoch_comes_round() {
    closed_flow_when_the_epoch_comes_round(false);
}

fn closed_flow_when_the_epoch_comes_round(sends_meanwhile: bool) {
    let mut conf = tight_conf();
    conf["isolation"] = json!({"flowMarkMask": 0x3000});
    let node = Node::new(conf);
    node.cli(&["project", "join", "a", "b"]).ok();
    let pods = attach(&node, &["a", "b"]);
    let (a, b) = (&pods[0], &pods[1]);
    serve(&b.ns);
    let udp =
        a.ns.run(|| UdpSocket::bind((a.ip(false), 40001)).expect("bind"));
    udp.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert!(udp_echo(&udp, b.ip(false)), "joined: a → b");
    let marked_with = node.epoch();

    node.cli(&["project", "isolate", "a"]).ok();
    if sends_meanwhile {
        assert!(
            !udp_echo(&udp, b.ip(false)),
            "isolated: the open flow is cut"
        );
    }
    let mut moves = 1;
    while node.epoch() != marked_with {
        assert!(moves < 3, "two bits come round in three epochs");
        node.cli(&["reconcile"]).ok();
        moves += 1;
    }
    assert!(
        !udp_echo(&udp, b.ip(false)),
        "the epoch came round: the closed flow must stay closed"
    );
    let drops = node.cli(&["drops"]).ok().stdout;
    assert!(
        drops
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["a", "b"])),
        "counted as a → b: {drops}"
    );
}
