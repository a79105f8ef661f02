//! The node's uplink: pods reach the outside masqueraded to the node address,
//! `egress deny` stops that per project, and from outside only what a NodePort
//! DNAT brings in reaches a pod.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use moat_e2e::cni::{attach, drop_log_conf, dual_stack_conf, Node};
use moat_e2e::netns::Netns;
use moat_e2e::probe::{reach, serve, Proto, PORT};

const WHOAMI: u16 = 8080;

/// An outside host on a veth "uplink" of the node: 192.0.2.2 / 2001:db8::2.
fn outside(node: &Node) -> Netns {
    let ext = Netns::new("ext");
    node.ns.ip(&[
        "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", &ext.name,
    ]);
    for (ns, dev, v4, v6) in [
        (&node.ns, "uplink", "192.0.2.1/24", "2001:db8::1/64"),
        (&ext, "eth0", "192.0.2.2/24", "2001:db8::2/64"),
    ] {
        ns.ip(&["addr", "add", v4, "dev", dev]);
        ns.ip(&["addr", "add", v6, "dev", dev, "nodad"]);
        ns.ip(&["link", "set", dev, "up"]);
    }
    // A fresh veth drops packets until the kernel's link watcher activates its
    // queue (up to a second): wait for it so the first SYN of a test is not lost.
    for addr in ["192.0.2.2", "2001:db8::2"] {
        let ip = addr.parse().unwrap();
        assert!(
            (0..5).any(|_| node.ns.ping(ip)),
            "uplink to {addr} never came up"
        );
    }
    // Only for the direct-access check: the outside knows where pods live.
    ext.ip(&["route", "add", "10.77.0.0/24", "via", "192.0.2.1"]);
    whoami_server(&ext);
    ext
}

/// Answers each connection with the peer address it saw, then closes.
fn whoami_server(ns: &Netns) {
    let listener = ns.run(|| TcpListener::bind(("::", WHOAMI)).expect("bind whoami"));
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let peer = conn.peer_addr().map(|p| canonical(p.ip()));
            if let Ok(peer) = peer {
                let _ = writeln!(conn, "{peer}");
            }
        }
    });
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The source address the outside host saw, or None if no connection.
fn seen_from(ns: &Netns, dst: &str) -> Option<IpAddr> {
    let addr = SocketAddr::new(dst.parse().unwrap(), WHOAMI);
    ns.run(|| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(400)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(400))).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        text.trim().parse().ok()
    })
}

#[test]
fn egress_is_masqueraded_and_egress_deny_is_per_project() {
    let node = Node::new(drop_log_conf(3));
    let follower = &mut node.follow_drops();
    let ext = outside(&node);
    let pods = attach(&node, &["a", "b"]);
    for (dst, node_addr) in [("192.0.2.2", "192.0.2.1"), ("2001:db8::2", "2001:db8::1")] {
        for pod in &pods {
            assert_eq!(
                seen_from(&pod.ns, dst),
                Some(node_addr.parse().unwrap()),
                "a pod reaches {dst} as the node"
            );
        }
    }
    node.cli(&["project", "egress", "deny", "a"]).ok();
    for dst in ["192.0.2.2", "2001:db8::2"] {
        assert_eq!(
            seen_from(&pods[0].ns, dst),
            None,
            "a is denied egress to {dst}"
        );
        assert!(
            seen_from(&pods[1].ns, dst).is_some(),
            "b keeps egress to {dst}"
        );
    }
    assert!(
        reach(&pods[0].ns, Node::node_ip(false), Proto::Icmp),
        "egress deny does not cut the node"
    );
    let drops = node.cli(&["drops"]).ok().stdout;
    let denied = drops.lines().skip_while(|l| *l != "EGRESS DENIED").nth(2);
    let row: Vec<&str> = denied.unwrap_or_default().split_whitespace().collect();
    assert!(
        row.first() == Some(&"a") && row[1].parse::<u32>().unwrap() >= 2,
        "a's denied egress counted:\n{drops}"
    );
    let logged = follower.lines_within(Duration::from_millis(500));
    for dst in ["192.0.2.2:8080", "[2001:db8::2]:8080"] {
        let denied = format!(" -> - {dst} tcp");
        assert!(
            logged
                .iter()
                .any(|l| l.contains("egress-denied a ") && l.ends_with(&denied)),
            "no egress-denied line for a -> {dst}:\n{}",
            logged.join("\n")
        );
    }
    node.cli(&["project", "egress", "allow", "a"]).ok();
    assert!(
        seen_from(&pods[0].ns, "192.0.2.2").is_some(),
        "allowed again"
    );
    drop(ext);
}

#[test]
fn from_outside_only_nodeport_dnat_reaches_a_pod() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let ext = outside(&node);
    let pods = attach(&node, &["a"]);
    serve(&pods[0].ns);
    let pod_ip = pods[0].ip(false);
    // A NodePort as kube-proxy would program it, in a table of its own.
    let rules = format!(
        "table ip nodeport-test {{ chain pre {{ type nat hook prerouting priority dstnat; \
         ip daddr 192.0.2.1 tcp dport 30080 dnat to {pod_ip}:{PORT}; }}; }}"
    );
    node.nft_script(&rules);

    let echo = |dst: SocketAddr| {
        ext.run(|| {
            let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_millis(400)) else {
                return false;
            };
            s.set_read_timeout(Some(Duration::from_millis(400)))
                .unwrap();
            let mut buf = [0u8; 4];
            s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
        })
    };
    assert!(
        echo("192.0.2.1:30080".parse().unwrap()),
        "NodePort reaches the pod"
    );
    assert!(
        !echo(SocketAddr::new(pod_ip, PORT)),
        "direct access from outside is dropped"
    );
}
