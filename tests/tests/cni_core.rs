//! The built `moat` binary driven like a runtime, in test-made namespaces.

use std::collections::HashSet;
use std::time::Duration;

use moat_e2e::cni::{attach, dual_stack_conf, Call, Node, Pod};
use serde_json::json;

fn connected(a: &Pod, b: &Pod, node: &Node) {
    for v6 in [false, true] {
        assert!(
            a.ns.ping(b.ip(v6)),
            "pod → pod over IPv{}",
            if v6 { 6 } else { 4 }
        );
        assert!(
            node.ns.ping(a.ip(v6)),
            "node → pod over IPv{}",
            if v6 { 6 } else { 4 }
        );
        assert!(
            a.ns.ping(Node::node_ip(v6)),
            "pod → node over IPv{}",
            if v6 { 6 } else { 4 }
        );
    }
}

#[test]
fn add_check_del_in_every_version() {
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let node = Node::new(dual_stack_conf(version));
        let pods = attach(&node, &["team-a", "team-a"]);
        connected(&pods[0], &pods[1], &node);
        let third = Pod::new("x");
        let added = node.add(&third).ok();
        assert!(
            !added.stderr.contains("could not sync the link state"),
            "the veth ends' link state is read (and so settled) before ADD returns: {}",
            added.stderr
        );
        let result = added.json();
        assert_eq!(
            result["cniVersion"], version,
            "answers in the asked version"
        );
        assert_eq!(
            result["ips"][0]["interface"], 1,
            "ips point at the pod interface"
        );
        assert_eq!(result["interfaces"][1]["name"], "eth0");
        assert!(result["interfaces"][1]["sandbox"].is_string());
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version == "0.4.0"
        );
        for pod in &pods {
            let mut conf = node.conf.clone();
            conf["prevResult"] = pod.result.clone();
            node.call_with(&pod.call("CHECK"), &conf).ok();
            node.del(pod).ok();
            node.del(pod).ok();
        }
        assert_eq!(
            node.moat_links().len(),
            1,
            "only the third pod's veth is left"
        );
    }
}

#[test]
fn del_after_netns_gone_and_with_empty_netns() {
    let node = Node::new(dual_stack_conf("1.0.0"));
    let pods = attach(&node, &["a", "a"]);
    let mut gone = pods.into_iter();
    let (p1, p2) = (gone.next().unwrap(), gone.next().unwrap());
    let call1 = p1.call("DEL");
    drop(p1); // netns deleted by the "runtime" first
    node.call(&call1).ok();
    let mut empty = p2.call("DEL");
    empty.netns = None; // ctr and the second CRI DEL send no netns
    node.call(&empty).ok();
    node.call(&empty).ok();
    assert!(node.moat_links().is_empty(), "{:?}", node.moat_links());
    assert!(node.reserved().is_empty(), "{:?}", node.reserved());
}

/// DEL may leave the kernel's freeing of the veth pair to a detached child,
/// but what anyone can observe must be final the moment it returns.
#[test]
fn del_unlists_both_veth_ends_before_it_returns_in_either_cleanup_mode() {
    for mode in ["background", "wait"] {
        let mut conf = dual_stack_conf("1.1.0");
        conf["kernelCleanup"] = json!(mode);
        let node = Node::new(conf);
        let mut pods = attach(&node, &["a", "a"]);
        let mut host_links = node.moat_links();
        host_links.sort();
        node.del(&pods[0]).ok();
        if mode == "wait" {
            let id = [pods[0].container_id.clone()];
            assert!(
                processes_with_env("CNI_CONTAINERID", &id).is_empty(),
                "wait: DEL leaves no process behind"
            );
        }
        assert_eq!(node.moat_links().len(), 1, "{mode}: host end gone");
        let pod_eth0 = pods[0]
            .ns
            .exec("ip")
            .args(["link", "show", "eth0"])
            .output();
        assert!(!pod_eth0.unwrap().status.success(), "{mode}: pod end gone");
        let lock = std::fs::File::open(node.state_dir().join("lock")).unwrap();
        let free = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock);
        assert!(free.is_ok(), "{mode}: no child holds the state lock");
        drop(free);
        // The same attachment, in the same netns, comes back at once.
        let out = node.add(&pods[0]).ok();
        pods[0].set_result(&out.json());
        connected(&pods[0], &pods[1], &node);
        let mut again = node.moat_links();
        again.sort();
        assert_eq!(again, host_links, "{mode}: same host names again");
        for pod in &pods {
            node.del(pod).ok();
        }
        assert!(node.moat_links().is_empty(), "{mode}");
        assert!(node.reserved().is_empty(), "{mode}");
        // The children that finish the delete and release the nf_tables
        // socket end on their own.
        let ids: Vec<String> = pods.iter().map(|p| p.container_id.clone()).collect();
        wait_until(
            || processes_with_env("CNI_CONTAINERID", &ids).is_empty(),
            "no moat process of these pods left",
        );
    }
}

/// Pids whose environment sets `key` to one of `values`.
fn processes_with_env(key: &str, values: &[String]) -> Vec<u32> {
    let wanted: Vec<String> = values.iter().map(|v| format!("{key}={v}")).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|kv| wanted.iter().any(|w| kv == w.as_bytes()))
            })
        })
        .collect()
}

#[test]
fn gc_releases_everything_not_listed() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let pods = attach(&node, &["a", "a", "a"]);
    let mut conf = node.conf.clone();
    conf["cni.dev/valid-attachments"] =
        json!([{"containerID": pods[0].container_id, "ifname": "eth0"}]);
    node.call_with(
        &Call {
            command: "GC",
            ..Call::default()
        },
        &conf,
    )
    .ok();
    assert_eq!(node.moat_links().len(), 1);
    assert_eq!(
        node.reserved().len(),
        2,
        "one pod keeps its v4 and v6 address"
    );
    assert!(
        pods[0].ns.ping(Node::node_ip(false)),
        "the listed pod still works"
    );
    // Without the list, GC refuses rather than wiping everything.
    let mut bare = node.conf.clone();
    bare["cniVersion"] = json!("1.1.0");
    assert_eq!(
        node.call_with(
            &Call {
                command: "GC",
                ..Call::default()
            },
            &bare
        )
        .code(),
        7
    );
}

#[test]
fn check_fails_after_the_pod_address_is_deleted() {
    let node = Node::new(dual_stack_conf("1.0.0"));
    let pod = Pod::new("a");
    let result = node.add(&pod).ok().json();
    let mut conf = node.conf.clone();
    conf["prevResult"] = result.clone();
    node.call_with(&pod.call("CHECK"), &conf).ok();
    let addr = result["ips"][0]["address"].as_str().unwrap();
    pod.ns.ip(&["addr", "del", addr, "dev", "eth0"]);
    let out = node.call_with(&pod.call("CHECK"), &conf);
    assert_eq!(out.code(), 103, "{out:?}");
    assert!(out.json()["msg"]
        .as_str()
        .unwrap()
        .contains(addr.split('/').next().unwrap()));
}

#[test]
fn thirty_two_parallel_adds_get_distinct_addresses() {
    let node = Node::new(dual_stack_conf("1.0.0"));
    let pods: Vec<Pod> = (0..32).map(|_| Pod::new("p")).collect();
    let children: Vec<_> = pods
        .iter()
        .map(|p| node.spawn(&p.call("ADD"), &node.conf))
        .collect();
    let mut seen = HashSet::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for ip in v["ips"].as_array().unwrap() {
            assert!(
                seen.insert(ip["address"].as_str().unwrap().to_string()),
                "duplicate {ip}"
            );
        }
    }
    assert_eq!(seen.len(), 64);
    assert_eq!(node.moat_links().len(), 32);
}

#[test]
fn sigkill_in_the_middle_of_add_leaves_nothing_after_del_or_gc() {
    let node = Node::new(dual_stack_conf("1.1.0"));
    let state = node.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    for cleanup in ["DEL", "GC"] {
        let pod = Pod::new("a");
        // Hold the network lock: ADD reserves and wires, then blocks before
        // it can mark the attachment complete. Kill it there.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state.join("lock"))
            .unwrap();
        let mut child = {
            let first = node.spawn(&pod.call("ADD"), &node.conf);
            std::thread::sleep(Duration::from_millis(50));
            first
        };
        let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
        wait_until(|| node.moat_links().len() == 1, "ADD wired the veth");
        child.kill().unwrap();
        child.wait().unwrap();
        drop(held);
        assert_eq!(node.moat_links().len(), 1, "a half-done attachment exists");
        let mut conf = node.conf.clone();
        conf["cni.dev/valid-attachments"] = json!([]);
        let call = if cleanup == "DEL" {
            pod.call("DEL")
        } else {
            Call {
                command: "GC",
                ..Call::default()
            }
        };
        node.call_with(&call, &conf).ok();
        assert!(
            node.moat_links().is_empty(),
            "{cleanup} left {:?}",
            node.moat_links()
        );
        assert!(
            node.reserved().is_empty(),
            "{cleanup} left {:?}",
            node.reserved()
        );
    }
}

/// Killing ADD at arbitrary moments: whatever it got to, DEL cleans it up.
#[test]
fn sigkill_at_random_points_then_del() {
    let node = Node::new(dual_stack_conf("1.0.0"));
    for delay_ms in [0u64, 1, 2, 3, 5, 8, 13] {
        let pod = Pod::new("a");
        let mut child = node.spawn(&pod.call("ADD"), &node.conf);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        node.del(&pod).ok();
        assert!(
            node.moat_links().is_empty(),
            "after kill at {delay_ms}ms: {:?}",
            node.moat_links()
        );
        assert!(
            node.reserved().is_empty(),
            "after kill at {delay_ms}ms: {:?}",
            node.reserved()
        );
    }
}

fn wait_until(f: impl Fn() -> bool, what: &str) {
    for _ in 0..200 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting: {what}");
}

#[test]
fn bad_input_gets_the_spec_codes() {
    let node = Node::new(dual_stack_conf("1.0.0"));
    let mut pod = Pod::new("a");
    let mut c = node.command(&pod.call("ADD"));
    c.env_remove("CNI_COMMAND");
    let out = node_output(c, &node.conf.to_string());
    assert_eq!(code_of(&out), 4, "missing CNI_COMMAND");
    assert_eq!(
        code_of(&node_output(node.command(&pod.call("ADD")), "{not json")),
        6
    );
    let mut v = node.conf.clone();
    v["cniVersion"] = json!("0.3.1");
    assert_eq!(
        node.call_with(&pod.call("ADD"), &v).code(),
        1,
        "unsupported version"
    );
    let mut r = node.conf.clone();
    r["ipam"]["ranges"] = json!([[{"subnet": "10.0.0.0/40"}]]);
    assert_eq!(
        node.call_with(&pod.call("ADD"), &r).code(),
        7,
        "invalid range"
    );
    let mut missing = pod.call("ADD");
    missing.netns = None;
    assert_eq!(node.call(&missing).code(), 4, "ADD without CNI_NETNS");
    let first = node.add(&pod).ok();
    pod.set_result(&first.json());
    assert_eq!(node.add(&pod).code(), 101, "second ADD without DEL");
    // The refused ADD left the first one's veth, addresses and routes alone.
    let mut check = node.conf.clone();
    check["prevResult"] = pod.result.clone();
    node.call_with(&pod.call("CHECK"), &check).ok();
    let version = node
        .call(&Call {
            command: "VERSION",
            ..Call::default()
        })
        .ok()
        .json();
    assert_eq!(
        version["supportedVersions"],
        json!(["0.4.0", "1.0.0", "1.1.0"])
    );
}

fn node_output(mut c: std::process::Command, stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn code_of(out: &std::process::Output) -> u64 {
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("error JSON on stdout");
    v["code"].as_u64().unwrap()
}

#[test]
fn status_reports_exhaustion_and_ipv6_only_works() {
    let mut conf = dual_stack_conf("1.1.0");
    conf["ipam"]["ranges"] = json!([[{"subnet": "fd78::/126"}]]);
    let node = Node::new(conf);
    let status = Call {
        command: "STATUS",
        ..Call::default()
    };
    node.call(&status).ok();
    let pods = attach(&node, &["a", "a"]);
    assert!(pods[0].ns.ping(pods[1].ip(true)));
    assert_eq!(pods[0].ips.len(), 1);
    assert_eq!(
        node.call(&status).code(),
        50,
        "the /126 has two usable addresses"
    );
    assert_eq!(node.add(&Pod::new("a")).code(), 102);
}
