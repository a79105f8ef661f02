#!/usr/bin/env python3
"""Pod -> pod TCP throughput (iperf3) through moat against the reference ptp.

Run by bench/cni-throughput.sh, which owns every namespace and directory this
uses and removes them (and any process left in them) on exit. Not meant to be
run by hand.

Each plugin gets its own test-made node netns; pods are attached by executing
the plugin binaries exactly as cni-latency does (cni_latency.Plugin). moat runs
with isolation on and, before anything is measured, N pods spread over 100
projects (K8S_POD_NAMESPACE=bench-p<i % 100>) so its sets and tenant chains are
loaded. The two measured pods are in the same project (traffic allowed). Before
measuring, a probe to a pod of another project must be dropped: proof that
the filter is live on the measured path.

There are two references, both ptp + host-local with no filtering: ptp with
its own `ipMasq` on, the same features as moat here (egress masqueraded, so
the node runs connection tracking, as every node with kube-proxy does), and
ptp bare (no NAT: the node tracks no connection at all). The goal is judged
against the first, the cost of the filter alone; the second is printed too.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cni_latency as cl  # noqa: E402  (Plugin, enter_netns, fill, check_moat_table)
import tput_stats  # noqa: E402  (the goal's verdict with its interval)

PORT = 5201


def say(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def addr_of(plugin, netns):
    for _, (ns, prev, _) in plugin.attached.items():
        if ns == netns:
            return prev["ips"][0]["address"].split("/")[0]
    raise cl.PluginError(f"{plugin.label}: no attachment for {netns}")


def in_ns(netns, argv, **kw):
    return subprocess.run(["nsenter", f"--net={netns}", "--"] + argv, **kw)


def ping_ok(netns, dst):
    return in_ns(netns, ["ping", "-c", "1", "-W", "1", dst], capture_output=True).returncode == 0


def busy_ns():
    """CPU time spent busy so far, all CPUs (user through softirq, and steal:
    a vCPU the host took is not ours to count as idle)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) * 1_000_000_000 // hz


def iperf_round(client_ns, server_ip, seconds, streams, congestion):
    cc = ["-C", congestion] if congestion else []
    out = in_ns(client_ns, ["iperf3", "-c", server_ip, "-p", str(PORT), "-t", str(seconds),
                            "-P", str(streams), "-O", "1", "-J"] + cc,
                capture_output=True, text=True, timeout=seconds + 30)
    try:
        res = json.loads(out.stdout)
    except ValueError:
        raise cl.PluginError(f"iperf3 client printed no JSON (rc {out.returncode}): "
                             f"{out.stdout[-500:]} {out.stderr[-500:]}")
    if "error" in res:
        raise cl.PluginError(f"iperf3 to {server_ip} failed: {res['error']}")
    end = res["end"]
    return (end["sum_received"]["bits_per_second"] / 1e9, end["sum_sent"].get("retransmits", 0),
            end["sum_received"]["bytes"])


def profile_rounds(a, plugins, measured):
    """One round per plugin with the whole system sampled: where the CPU goes
    (`perf report -i PROFILE/<plugin>.data --sort sym`)."""
    os.makedirs(a.profile, exist_ok=True)
    for p in plugins:
        client, server, _ = measured[p.label]
        rec = subprocess.Popen(["perf", "record", "-a", "-g", "-q", "-o",
                                f"{a.profile}/{p.label}.data"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            gbps, _, _ = iperf_round(client, addr_of(p, server), a.seconds, a.streams,
                                     a.congestion)
        finally:
            rec.send_signal(signal.SIGINT)
            rec.wait(60)
        say(f"profiled round {p.label:4}: {gbps:7.2f} Gbit/s -> {a.profile}/{p.label}.data")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--run-dir", required=True, help="moat's runDir (a tmpfs, as its default /run/cni/moat is on a systemd node)")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--moat", required=True)
    ap.add_argument("--moat-node", required=True)
    ap.add_argument("--ref-dir", default="/usr/lib/cni")
    ap.add_argument("--ref-node", required=True, help="node netns of ptp with ipMasq on")
    ap.add_argument("--bare-node", required=True, help="node netns of ptp with ipMasq off")
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--ref-pods", type=int, default=None,
                    help="background pods through the reference (default: same as --pods)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--congestion", default="cubic",
                    help="TCP congestion control of the client (empty: the node's default)")
    ap.add_argument("--json")
    ap.add_argument("--profile", help="after the rounds, one more round per plugin under "
                    "`perf record -a -g`, written to PROFILE/<plugin>.data")
    a = ap.parse_args()
    ref_pods = a.pods if a.ref_pods is None else a.ref_pods

    moat = cl.Plugin("moat", a.moat, os.path.dirname(a.moat), {
        "cniVersion": "1.0.0", "name": "moattput", "type": "moat", "mtu": 1500,
        "dataDir": f"{a.tmp}/moat-data", "runDir": a.run_dir, "logFile": f"{a.tmp}/moat.log", "logLevel": "info",
        "ipam": {"ranges": [[{"subnet": "10.252.0.0/21"}]]},
        "isolation": {"enabled": True, "table": "moat", "globalProjects": ["kube-system"],
                      "defaultProject": "default", "clusterCIDRs": ["10.252.0.0/16"],
                      "masquerade": True, "logDrops": False},
    }, a.moat_node, f"{a.tag}m-")
    def ptp(label, node, masq, subnet, prefix):
        return cl.Plugin(label, f"{a.ref_dir}/ptp", a.ref_dir, {
            "cniVersion": "1.0.0", "name": f"{label}tput", "type": "ptp", "mtu": 1500,
            "ipMasq": masq,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": f"{a.tmp}/{label}-ipam"},
        }, node, f"{a.tag}{prefix}-")

    ref = ptp("ref", a.ref_node, True, "10.253.0.0/21", "r")
    bare = ptp("bare", a.bare_node, False, "10.254.0.0/21", "b")
    plugins = (moat, ref, bare)

    # pod index -> project bench-p<index % 100>: 5 and 105 share bench-p5, 6 is bench-p6
    measured = {}
    for p, n_fill in ((moat, a.pods), (ref, ref_pods), (bare, ref_pods)):
        say(f"{p.label}: attaching {n_fill} background pods"
            + (" over 100 projects" if p is moat else ""))
        t0 = time.monotonic()
        fill_ns = p.make_pod_netns([f"f{i}" for i in range(n_fill)])
        cl.fill(p, fill_ns, 20000)
        client, server, other = p.make_pod_netns(["client", "server", "other"])
        cl.enter_netns(p.node_netns)
        for ns, idx in ((client, 5), (server, 105), (other, 6)):
            p.add(cl.new_cid(), ns, idx)
        measured[p.label] = (client, server, other)
        say(f"  {p.label}: {len(p.attached)} pods attached in {time.monotonic() - t0:.1f}s")
    n_el, n_ten, n_rules = cl.check_moat_table(moat, "moat", min(100, a.pods))
    say(f"  moat table inet moat (node netns): {n_el} addresses in pods4, {n_ten} tenant "
        f"chains, {n_rules} rules")

    servers = []
    try:
        for p in plugins:
            client, server, other = measured[p.label]
            srv_ip, other_ip = addr_of(p, server), addr_of(p, other)
            servers.append(subprocess.Popen(
                ["nsenter", f"--net={server}", "--", "iperf3", "-s", "-p", str(PORT)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            if not any(ping_ok(client, srv_ip) or time.sleep(0.2) for _ in range(25)):
                raise cl.PluginError(f"{p.label}: client pod cannot reach server pod {srv_ip}")
            other_reachable = ping_ok(client, other_ip)
            if p is moat and other_reachable:
                raise cl.PluginError("moat: a pod of another project answered: isolation is not "
                                     "in effect, the measurement would be meaningless")
            if p is not moat and not other_reachable:
                raise cl.PluginError(f"{p.label}: pod {other_ip} unreachable (ptp does not filter)")
            say(f"  {p.label}: client -> server {srv_ip} ok; other project {other_ip} "
                f"{'reachable' if other_reachable else 'dropped'}")
        time.sleep(0.5)  # iperf3 servers listening

        res = {p.label: [] for p in plugins}
        retr = {p.label: [] for p in plugins}
        cpu = {p.label: [] for p in plugins}
        for r in range(a.rounds):
            # each plugin goes first, second and last equally often
            for p in plugins[r % 3:] + plugins[:r % 3]:
                client, server, _ = measured[p.label]
                t0 = busy_ns()
                gbps, rt, nbytes = iperf_round(client, addr_of(p, server), a.seconds,
                                               a.streams, a.congestion)
                # CPU per byte over the whole run (iperf3 omits its first second
                # from the bytes, not from the CPU: the same for every plugin)
                ns_per_kb = (busy_ns() - t0) / (nbytes / 1024)
                res[p.label].append(gbps)
                retr[p.label].append(rt)
                cpu[p.label].append(ns_per_kb)
                say(f"round {r + 1}/{a.rounds} {p.label:4}: {gbps:7.2f} Gbit/s "
                    f"({rt} retransmits), {ns_per_kb:6.1f} ns CPU/KiB")
        if a.profile:
            profile_rounds(a, plugins, measured)
    finally:
        for s in servers:
            s.terminate()
        for s in servers:
            try:
                s.wait(5)
            except subprocess.TimeoutExpired:
                s.kill()

    med = {k: statistics.median(v) for k, v in res.items()}
    cost = {k: statistics.median(v) for k, v in cpu.items()}
    print()
    print(f"Pod -> pod TCP throughput, iperf3 {a.rounds} interleaved rounds x {a.seconds} s, "
          f"{a.streams} stream(s), MTU 1500")
    print(f"{'':20}{'pods':>6}{'median Gbit/s':>15}{'min':>9}{'max':>9}{'ns CPU/KiB':>12}"
          "  filtering")
    rows = ((moat, f"isolation on, {n_ten} tenants, masquerade"),
            (ref, "none; ipMasq (conntrack)"), (bare, "none; no NAT (no conntrack)"))
    names = {"moat": "moat", "ref": "ptp ipMasq (ref)", "bare": "ptp bare"}
    for p, what in rows:
        v = res[p.label]
        print(f"{names[p.label]:20}{len(p.attached):>6}{med[p.label]:>15.2f}{min(v):>9.2f}"
              f"{max(v):>9.2f}{cost[p.label]:>12.1f}  {what}")
    ratio, ratio_bare = med["moat"] / med["ref"], med["moat"] / med["bare"]
    print(f"moat / ptp ipMasq: {ratio:.3f}   (ratio of medians)")
    print(f"moat / ptp bare:   {ratio_bare:.3f}   (ptp ipMasq / ptp bare: "
          f"{med['ref'] / med['bare']:.3f}, the cost of connection tracking alone)")
    print(f"CPU per byte, moat / ptp ipMasq: {cost['moat'] / cost['ref']:.3f}, moat / ptp bare: "
          f"{cost['moat'] / cost['bare']:.3f} (medians)")
    # The same rounds paired: a slow minute of the machine hits both plugins
    # of a round, not one plugin's median. The verdict is the paired median's.
    paired = tput_stats.paired(res)
    print("\n".join(tput_stats.summary(paired)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rounds": a.rounds, "seconds": a.seconds, "streams": a.streams, "pods": a.pods,
                       "gbps": res, "retransmits": retr, "ns_cpu_per_kib": cpu, "ratio": ratio,
                       "ratio_bare": ratio_bare, "paired": paired}, f, indent=2)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    except cl.PluginError as e:
        print(f"[bench] FAIL: {e}", file=sys.stderr)
        sys.exit(1)
