//! The network half of the demo: one node, pods of several projects, the
//! truth table before and after live policy changes, then a clean teardown.

use std::io::Write;
use std::time::Duration;

use anyhow::{ensure, Result};
use moat_e2e::cni::{attach, drop_log_conf, Node, Pod, Running};
use moat_e2e::probe::{echo_on, serve, tcp_connect};
use moat_e2e::truth::{mismatches, probe_all, render, Endpoint, Expect};

/// NFLOG group of the node's drop log (groups are per network namespace).
const LOG_GROUP: u16 = 7;

const PODS: [(&str, &str); 6] = [
    ("shop1", "shop"),
    ("shop2", "shop"),
    ("blog1", "blog"),
    ("blog2", "blog"),
    ("ci1", "ci"),
    ("dns", "kube-system"),
];

pub fn run(out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "== Network: one node (a netns), pods as netns, wired by the `moat` CNI binary =="
    )?;
    let (node, follower) = node_logging_drops();
    let projects: Vec<&str> = PODS.iter().map(|(_, p)| *p).collect();
    let pods = attach(&node, &projects);
    for p in &pods {
        serve(&p.ns);
    }
    serve(&node.ns);
    writeln!(out, "\n$ moat pods\n{}", node.cli(&["pods"]).ok().stdout)?;
    let eps = endpoints(&node, &pods);
    let mut expect = Expect {
        global: ["kube-system".to_string()].into(),
        groups: vec![],
    };

    let mut wrong = table(
        out,
        &eps,
        &expect,
        "Default: every project is its own tenant; kube-system is global",
    )?;
    writeln!(out, "$ moat project join shop blog")?;
    node.cli(&["project", "join", "shop", "blog"]).ok();
    expect.groups = vec![["shop".to_string(), "blog".to_string()].into()];
    wrong += table(
        out,
        &eps,
        &expect,
        "After a live join: shop and blog are one tenant",
    )?;

    let mut conn = tcp_connect(&pods[0].ns, pods[2].ip(false));
    let open = conn.as_mut().is_some_and(echo_on);
    writeln!(
        out,
        "shop1 → blog1: TCP connection opened while joined, echo {}",
        verdict(open)
    )?;
    writeln!(out, "$ moat project isolate shop")?;
    node.cli(&["project", "isolate", "shop"]).ok();
    expect.groups = vec![];
    let still = conn.as_mut().is_some_and(echo_on);
    writeln!(
        out,
        "shop1 → blog1: the same open connection after isolate, echo {}",
        verdict(still)
    )?;
    ensure!(open && !still, "the open connection was not cut by isolate");
    wrong += table(
        out,
        &eps,
        &expect,
        "After a live isolate: back to the default",
    )?;

    drops(out, &node, follower)?;
    teardown(out, &node, pods)?;
    ensure!(wrong == 0, "{wrong} probes differed from the policy");
    Ok(())
}

/// The node, with `moat drops --follow` running from its start.
fn node_logging_drops() -> (Node, Running) {
    let node = Node::new(drop_log_conf(LOG_GROUP));
    let follower = node.follow_drops();
    (node, follower)
}

/// The drop counters, then the first lines the follower printed.
fn drops(out: &mut dyn Write, node: &Node, follower: Running) -> Result<()> {
    writeln!(
        out,
        "$ moat drops   (dropped packets: per project pair, forged sources, denied egress)"
    )?;
    writeln!(out, "{}", node.cli(&["drops"]).ok().stdout)?;
    let logged = follower.lines_within(Duration::from_millis(300));
    drop(follower);
    writeln!(
        out,
        "$ moat drops --follow   (running since the start; each drop logged, at most 10/s per rule)"
    )?;
    for line in logged.iter().take(6) {
        writeln!(out, "{line}")?;
    }
    writeln!(out, "… {} lines in all\n", logged.len())?;
    ensure!(
        logged.iter().any(|l| l.contains(" cross-tenant ")),
        "no drop was logged"
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "passes"
    } else {
        "is dropped"
    }
}

fn endpoints<'a>(node: &'a Node, pods: &'a [Pod]) -> Vec<Endpoint<'a>> {
    let mut eps: Vec<Endpoint> = PODS
        .iter()
        .zip(pods)
        .map(|((n, _), p)| Endpoint::pod(n, p))
        .collect();
    eps.push(Endpoint::node(node));
    eps
}

/// Probe, print, and count the probes that disagree with the operator's intent.
fn table(out: &mut dyn Write, eps: &[Endpoint], expect: &Expect, title: &str) -> Result<usize> {
    let cells = probe_all(eps, expect);
    let bad = mismatches(eps, &cells);
    writeln!(out, "\n-- {title} --")?;
    writeln!(
        out,
        "(✓ = TCP, UDP and ICMP pass over IPv4 and IPv6; · = all dropped; ! = differs from policy)"
    )?;
    write!(out, "{}", render(eps, &cells))?;
    let passed = cells.iter().filter(|c| c.got).count();
    writeln!(
        out,
        "{} probes: {passed} passed, {} dropped, {} wrong\n",
        cells.len(),
        cells.len() - passed,
        bad.len()
    )?;
    for line in &bad {
        writeln!(out, "  WRONG: {line}")?;
    }
    Ok(bad.len())
}

fn teardown(out: &mut dyn Write, node: &Node, pods: Vec<Pod>) -> Result<()> {
    for pod in &pods {
        node.del(pod).ok();
    }
    drop(pods);
    let links = node.moat_links();
    let reserved = node.reserved();
    writeln!(
        out,
        "Teardown: DEL for every pod → {} host veths and {} reserved addresses left",
        links.len(),
        reserved.len()
    )?;
    ensure!(
        links.is_empty() && reserved.is_empty(),
        "teardown left {links:?} {reserved:?}"
    );
    Ok(())
}
