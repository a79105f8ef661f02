//! The isolation truth table: every ordered pair of endpoints, every protocol
//! and family, probed with real packets and compared with the expected verdict.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use crate::cni::{Node, Pod};
use crate::netns::Netns;
use crate::probe::{reach, Proto, PROTOS};

/// A probe source or target: a pod or the node itself.
pub struct Endpoint<'a> {
    pub name: String,
    pub project: Option<String>,
    pub ns: &'a Netns,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

impl<'a> Endpoint<'a> {
    pub fn pod(name: &str, pod: &'a Pod) -> Self {
        Self {
            name: name.into(),
            project: Some(pod.project.clone()),
            ns: &pod.ns,
            v4: pod.ip(false),
            v6: pod.ip(true),
        }
    }

    pub fn node(node: &'a Node) -> Self {
        Self {
            name: "node".into(),
            project: None,
            ns: &node.ns,
            v4: Node::node_ip(false),
            v6: Node::node_ip(true),
        }
    }
}

/// The operator's intent, independent of nftables: who may reach whom.
pub struct Expect {
    pub global: BTreeSet<String>,
    /// Groups of joined projects.
    pub groups: Vec<BTreeSet<String>>,
}

impl Expect {
    fn tenant<'p>(&'p self, p: &'p str) -> &'p str {
        self.groups
            .iter()
            .find(|g| g.contains(p))
            .and_then(|g| g.first())
            .map_or(p, String::as_str)
    }

    pub fn allowed(&self, a: &Endpoint, b: &Endpoint) -> bool {
        match (&a.project, &b.project) {
            (None, _) | (_, None) => true,
            (Some(x), Some(y)) => {
                self.global.contains(x)
                    || self.global.contains(y)
                    || self.tenant(x) == self.tenant(y)
            }
        }
    }
}

/// One probe's outcome.
pub struct Cell {
    pub from: usize,
    pub to: usize,
    pub proto: Proto,
    pub v6: bool,
    pub expected: bool,
    pub got: bool,
}

/// Probe every ordered pair (in parallel) and return all cells.
pub fn probe_all(eps: &[Endpoint], expect: &Expect) -> Vec<Cell> {
    let mut jobs = Vec::new();
    for (i, a) in eps.iter().enumerate() {
        for (j, b) in eps.iter().enumerate() {
            if i == j {
                continue;
            }
            for proto in PROTOS {
                for v6 in [false, true] {
                    jobs.push((i, j, proto, v6, expect.allowed(a, b)));
                }
            }
        }
    }
    let mut cells = Vec::new();
    for chunk in jobs.chunks(24) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&(i, j, proto, v6, expected)| {
                    s.spawn(move || {
                        let to = if v6 { eps[j].v6 } else { eps[j].v4 };
                        Cell {
                            from: i,
                            to: j,
                            proto,
                            v6,
                            expected,
                            got: reach(eps[i].ns, to, proto),
                        }
                    })
                })
                .collect();
            cells.extend(handles.into_iter().map(|h| h.join().expect("probe thread")));
        });
    }
    cells
}

/// A who-reaches-whom grid: one mark per pair, `✓` when every protocol and
/// family got through, `·` when none did; `!` marks a cell that differs from
/// the expectation.
pub fn render(eps: &[Endpoint], cells: &[Cell]) -> String {
    let mut out = String::new();
    let w = eps.iter().map(|e| e.name.len()).max().unwrap_or(4).max(6);
    let _ = write!(out, "{:>w$} │", "from\\to");
    for e in eps {
        let _ = write!(out, " {:^w$}", e.name);
    }
    out.push('\n');
    for (i, a) in eps.iter().enumerate() {
        let _ = write!(out, "{:>w$} │", a.name);
        for j in 0..eps.len() {
            let these: Vec<&Cell> = cells.iter().filter(|c| c.from == i && c.to == j).collect();
            let mark = if these.is_empty() {
                "—".to_string()
            } else if these.iter().any(|c| c.got != c.expected) {
                "!".to_string()
            } else if these.iter().all(|c| c.got) {
                "✓".to_string()
            } else if these.iter().all(|c| !c.got) {
                "·".to_string()
            } else {
                "~".to_string()
            };
            let _ = write!(out, " {mark:^w$}");
        }
        let _ = writeln!(out, "   ({})", a.project.as_deref().unwrap_or("node"));
    }
    out
}

/// Cells that differ from the expectation, described.
pub fn mismatches(eps: &[Endpoint], cells: &[Cell]) -> Vec<String> {
    cells
        .iter()
        .filter(|c| c.got != c.expected)
        .map(|c| {
            format!(
                "{} → {} {:?}/IPv{}: expected {}, got {}",
                eps[c.from].name,
                eps[c.to].name,
                c.proto,
                if c.v6 { 6 } else { 4 },
                if c.expected { "pass" } else { "drop" },
                if c.got { "pass" } else { "drop" }
            )
        })
        .collect()
}
