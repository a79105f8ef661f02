#!/usr/bin/env python3
"""CNI ADD/DEL latency of moat against the reference ptp + host-local.

Run by bench/cni-latency.sh, which owns every namespace and directory this
uses and removes them on exit. Not meant to be run by hand.

Each plugin lives in its own test-made "node" netns. Before spawning a plugin,
this process enters that netns with setns(2) and then execs the plugin binary
directly, exactly as a runtime does: CNI_* in the environment, the network
configuration on stdin, the result on stdout. The measured interval is from
just before fork/exec of the plugin binary to its exit with its output read;
no shell or `ip netns exec` wrapper is inside it. The same interval for
/bin/true is printed as the exec floor.
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def ip_batch(lines):
    if not lines:
        return
    subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n",
                   text=True, check=True)


class PluginError(Exception):
    pass


class Plugin:
    """One CNI plugin under test, in its own node netns."""

    def __init__(self, label, binary, cni_path, conf, node_netns, pod_prefix):
        self.label = label
        self.binary = binary
        self.cni_path = cni_path
        self.conf = conf
        self.node_netns = node_netns
        self.pod_prefix = pod_prefix
        self.attached = {}  # container id -> (netns path, prevResult)
        self.netns_made = []

    def make_pod_netns(self, names):
        ip_batch([f"netns add {self.pod_prefix}{n}" for n in names])
        self.netns_made += [f"{self.pod_prefix}{n}" for n in names]
        return [f"/run/netns/{self.pod_prefix}{n}" for n in names]

    def _exec(self, command, cid, netns, conf, pod_index):
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": self.cni_path,
            "CNI_ARGS": (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench-p{pod_index % 100};"
                         f"K8S_POD_NAME=pod-{pod_index};K8S_POD_INFRA_CONTAINER_ID={cid}"),
        }
        data = json.dumps(conf).encode()
        t0 = time.perf_counter_ns()
        proc = subprocess.Popen([self.binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, close_fds=True)
        out, err = proc.communicate(data)
        t1 = time.perf_counter_ns()
        if proc.returncode != 0:
            raise PluginError(f"{self.label} {command} {cid} (netns {netns}) exited "
                              f"{proc.returncode}\nstdout: {out.decode(errors='replace')}\n"
                              f"stderr: {err.decode(errors='replace')[-2000:]}")
        return t1 - t0, out

    def add(self, cid, netns, pod_index):
        """Timed ADD; the calling thread must be in the node netns."""
        ns, out = self._exec("ADD", cid, netns, self.conf, pod_index)
        try:
            result = json.loads(out)
        except ValueError as e:
            raise PluginError(f"{self.label} ADD printed no JSON result: {out[:300]!r}") from e
        if not result.get("ips"):
            raise PluginError(f"{self.label} ADD result has no ips: {out[:300]!r}")
        self.attached[cid] = (netns, result, pod_index)
        return ns

    def delete(self, cid):
        netns, prev, pod_index = self.attached.pop(cid)
        conf = dict(self.conf, prevResult=prev)  # what libcni sends on DEL
        ns, _ = self._exec("DEL", cid, netns, conf, pod_index)
        return ns


def new_cid():
    return uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex chars, like a runtime's id


def median_ms(values):
    return statistics.median(values) / 1e6 if values else float("nan")


def exec_floor(samples):
    times = []
    for _ in range(samples):
        t0 = time.perf_counter_ns()
        p = subprocess.Popen(["/bin/true"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={}, close_fds=True)
        p.communicate(b"{}")
        times.append(time.perf_counter_ns() - t0)
    return times


def timed(argv):
    t0 = time.perf_counter_ns()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter_ns() - t0


def veth_delete_floor(samples, node_netns):
    """What the kernel alone takes to delete a veth pair (every DEL deletes
    one): `ip link del` minus an `ip` run that makes one netlink round trip."""
    enter_netns(node_netns)
    dels, base = [], []
    for i in range(samples):
        subprocess.run(["ip", "link", "add", "vfloor0", "type", "veth", "peer", "name", "vfloor1"],
                       check=True, capture_output=True)
        dels.append(timed(["ip", "link", "del", "vfloor0"]))
        base.append(timed(["ip", "link", "show", "dev", "lo"]))
    return median_ms(dels) - median_ms(base)


def add_del_cycles(plugins, netns_by_plugin, samples, base_index):
    """samples x (ADD then DEL) per plugin, plugin order alternating per round."""
    res = {p.label: {"add": [], "del": []} for p in plugins}
    for i in range(samples):
        order = plugins if i % 2 == 0 else list(reversed(plugins))
        for p in order:
            enter_netns(p.node_netns)
            cid = new_cid()
            pods = netns_by_plugin[p.label]
            res[p.label]["add"].append(p.add(cid, pods[i % len(pods)], base_index + i))
            res[p.label]["del"].append(p.delete(cid))
    return res


def concurrent_adds(p, netns_list, base_index):
    """len(netns_list) ADDs started together; returns (wall ns, [per-ADD ns])."""
    enter_netns(p.node_netns)  # threads created below inherit it
    n = len(netns_list)
    barrier = threading.Barrier(n)
    per_add = [0] * n
    starts = [0] * n
    ends = [0] * n
    errors = []

    def worker(k):
        barrier.wait()
        starts[k] = time.perf_counter_ns()
        try:
            per_add[k] = p.add(new_cid(), netns_list[k], base_index + k)
        except Exception as e:  # reported below
            errors.append(e)
        ends[k] = time.perf_counter_ns()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    addrs = set()
    for _, prev, _ in p.attached.values():
        for ip in prev["ips"]:
            addrs.add(ip["address"])
    if len(addrs) < n:
        raise PluginError(f"{p.label}: {n} concurrent ADDs handed out only {len(addrs)} distinct addresses")
    return max(ends) - min(starts), per_add


def delete_all(p, workers=4):
    enter_netns(p.node_netns)
    cids = list(p.attached)
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(p.delete, cids))


def check_moat_table(p, table, projects):
    """The isolation table must exist in moat's node netns and hold every
    attached pod, spread over `projects` tenant chains: proof that moat ran with
    isolation on, in the node netns (the shell wrapper checks the root netns)."""
    enter_netns(p.node_netns)
    out = subprocess.run(["nft", "-j", "list", "table", "inet", table], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise PluginError(f"moat: no table inet {table} in its node netns: {out.stderr.strip()}")
    objs = json.loads(out.stdout)["nftables"]
    chains = {o["chain"]["name"] for o in objs if "chain" in o}
    tenants = {c for c in chains if c.startswith("tenant-bench-p")}
    pods4 = next((o["set"].get("elem", []) for o in objs
                  if "set" in o and o["set"]["name"] == "pods4"), [])
    want = {a["address"].split("/")[0] for _, prev, _ in p.attached.values() for a in prev["ips"]}
    if not want.issubset(set(pods4)):
        raise PluginError(f"moat: {len(want - set(pods4))} attached pod addresses missing "
                          f"from set pods4 ({len(pods4)} elements)")
    if len(tenants) < projects:
        raise PluginError(f"moat: {len(tenants)} tenant chains in the table, expected {projects}")
    return len(pods4), len(tenants), sum(1 for o in objs if "rule" in o)


def fill(p, netns_list, base_index, workers=4):
    enter_netns(p.node_netns)
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda k: p.add(new_cid(), netns_list[k], base_index + k),
                    range(len(netns_list))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--run-dir", required=True, help="moat's runDir (a tmpfs, as its default /run/cni/moat is on a systemd node)")
    ap.add_argument("--tag", required=True, help="unique netns name prefix, e.g. moatbench-1234-")
    ap.add_argument("--moat", help="moat binary (omit to measure the reference only)")
    ap.add_argument("--moat-node", help="/run/netns/<node netns for moat>")
    ap.add_argument("--moat0-node", help="/run/netns/<node netns for a second moat that stays empty>")
    ap.add_argument("--ref-dir", default="/usr/lib/cni")
    ap.add_argument("--ref-node", required=True)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the concurrent-ADD burst")
    ap.add_argument("--json", help="also write the raw medians here")
    a = ap.parse_args()

    def moat_conf(name, subnet):
        return {
            "cniVersion": "1.0.0", "name": name, "type": "moat", "mtu": 1500,
            "dataDir": f"{a.tmp}/{name}-data", "runDir": a.run_dir, "logFile": f"{a.tmp}/{name}.log",
            "logLevel": "info", "ipam": {"ranges": [[{"subnet": f"{subnet}/21"}]]},
            "isolation": {"enabled": True, "table": "moat", "globalProjects": ["kube-system"],
                          "defaultProject": "default", "clusterCIDRs": [f"{subnet}/16"],
                          "masquerade": True, "logDrops": False},
        }

    plugins = []
    empty = None  # a second moat node that never gets the 1000 pods
    if a.moat:
        plugins.append(Plugin("moat", a.moat, os.path.dirname(a.moat),
                              moat_conf("moatbench", "10.250.0.0"), a.moat_node, f"{a.tag}m-"))
        empty = Plugin("moat0", a.moat, os.path.dirname(a.moat),
                       moat_conf("moatbench0", "10.252.0.0"), a.moat0_node, f"{a.tag}z-")
    plugins.append(Plugin("ref", f"{a.ref_dir}/ptp", a.ref_dir, {
        "cniVersion": "1.0.0", "name": "refbench", "type": "ptp", "mtu": 1500, "ipMasq": False,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.251.0.0/21"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": f"{a.tmp}/ref-ipam"},
    }, a.ref_node, f"{a.tag}r-"))

    say = lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True)
    S, P, C = a.samples, a.pods, a.concurrency
    say(f"creating pod netns: {len(plugins)} x ({S} sample + {C} burst + {P} fill)")
    nets = {}
    for p in plugins:
        nets[p.label] = {
            "sample": p.make_pod_netns([f"s{i}" for i in range(S)]),
            "burst": p.make_pod_netns([f"b{i}" for i in range(C)]),
            "fill": p.make_pod_netns([f"f{i}" for i in range(P)]),
        }
    samples = {p.label: nets[p.label]["sample"] for p in plugins}
    if empty:
        samples[empty.label] = empty.make_pod_netns([f"s{i}" for i in range(S)])

    say("warm-up")
    add_del_cycles(plugins, samples, min(3, S), 900050)
    if empty:
        # its projects' chains exist before the comparison, as the loaded node's do
        say(f"the empty moat node: {S} ADD/DEL to know the same projects")
        add_del_cycles([empty], samples, S, 0)
    floor = exec_floor(S)
    veth_del = veth_delete_floor(S, plugins[0].node_netns)

    # Sample i is a pod of project bench-p{i % 100}. moat makes a project's
    # tenant chain and group element at its first pod on the node and keeps
    # them: the first pass measures that ADD, the second the ADD of a pod of
    # a project the node already knows, as every loaded sample is.
    say(f"ADD/DEL with 0 pods attached, each a new project's first pod: {S} rounds")
    first = add_del_cycles(plugins, samples, S, 0)
    say(f"ADD/DEL with 0 pods attached: {S} rounds")
    at0 = add_del_cycles(plugins, samples, S, 0)

    say(f"{C} concurrent ADDs x {a.rounds} rounds")
    burst = {p.label: {"wall": [], "per": []} for p in plugins}
    for r in range(a.rounds):
        for p in (plugins if r % 2 == 0 else list(reversed(plugins))):
            wall, per = concurrent_adds(p, nets[p.label]["burst"], 10000)
            burst[p.label]["wall"].append(wall)
            burst[p.label]["per"] += per
            delete_all(p)

    for p in plugins:
        say(f"attaching {P} pods through {p.label}")
        t0 = time.monotonic()
        fill(p, nets[p.label]["fill"], 20000)
        say(f"  {p.label}: {len(p.attached)} attached in {time.monotonic() - t0:.1f}s")
        if p.label == "moat":
            n_el, n_ten, n_rules = check_moat_table(p, "moat", min(100, P))
            say(f"  moat table inet moat (node netns): {n_el} addresses in pods4, "
                f"{n_ten} tenant chains, {n_rules} rules")

    # The empty moat node takes turns with the loaded ones in the same rounds:
    # whatever the machine is doing meanwhile (the kernel still settling the
    # fill's 2000 new links, a neighbour's work) weighs on both alike.
    # Three times the rounds: the ratio of two close medians needs them.
    say(f"ADD/DEL with {P} pods attached, and on the empty moat node, interleaved: {3 * S} rounds")
    at_n = add_del_cycles(plugins + ([empty] if empty else []), samples, 3 * S, 0)

    # -- report --------------------------------------------------------------
    med = {}
    for p in plugins:
        l = p.label
        med[l] = {
            "add_first": median_ms(first[l]["add"]),
            "add0": median_ms(at0[l]["add"]), "del0": median_ms(at0[l]["del"]),
            "addN": median_ms(at_n[l]["add"]), "delN": median_ms(at_n[l]["del"]),
            "burst_wall": median_ms(burst[l]["wall"]), "burst_per": median_ms(burst[l]["per"]),
        }
    fl = median_ms(floor)
    has_moat = "moat" in med
    ref = med["ref"]
    rows = [
        ("ADD, 0 pods, new project", "add_first"),
        ("ADD, 0 pods attached", "add0"),
        ("DEL, 0 pods attached", "del0"),
        (f"ADD, {P} pods attached", "addN"),
        (f"DEL, {P} pods attached", "delN"),
        (f"{C} concurrent ADDs: wall", "burst_wall"),
        (f"{C} concurrent ADDs: per-ADD", "burst_per"),
    ]
    print()
    print(f"CNI latency, medians in ms ({S} samples per cell, {3 * S} with {P} pods; {a.rounds} bursts of {C}; "
          f"exec floor /bin/true = {fl:.2f} ms;\n  the kernel's veth-pair delete alone = "
          f"{veth_del:.2f} ms, {veth_del / med['ref']['del0']:.2f} x ref DEL)")
    print(f"{'':34}{'moat':>10}{'ptp+host-local':>16}{'moat/ref':>10}")
    for title, key in rows:
        m = med["moat"][key] if has_moat else float("nan")
        r = ref[key]
        print(f"{title:34}{m:>10.2f}{r:>16.2f}{m / r:>10.2f}")
    print(f"{'ADD@' + str(P) + ' / ADD@0 (in turn)':34}"
          f"{(med['moat']['addN'] / med['moat']['add0']) if has_moat else float('nan'):>10.2f}"
          f"{ref['addN'] / ref['add0']:>16.2f}")
    if has_moat:
        add_empty = median_ms(at_n["moat0"]["add"])
        same = med["moat"]["addN"] / add_empty
        print(f"{'ADD, 0 pods, same rounds as ' + str(P):34}{add_empty:>10.2f}")
        print(f"{'ADD@' + str(P) + ' / ADD@0 (same rounds)':34}{same:>10.2f}")
        med["moat"]["add0_same_rounds"] = add_empty
    print()
    if has_moat:
        m = med["moat"]
        goals = [
            ("moat ADD <= 0.33 x ref ADD (0 pods)", m["add0"] / ref["add0"], 0.33),
            (f"moat ADD@{P} <= 1.1 x moat ADD@0 (same rounds)", same, 1.10),
            ("moat DEL <= 0.8 x ref DEL (0 pods)", m["del0"] / ref["del0"], 0.80),
        ]
        print("goals")
        for text, value, limit in goals:
            print(f"  {text:48} {value:6.2f}  {'met' if value <= limit else 'MISSED'}")
    else:
        print("moat not measured (reference only)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"samples": S, "pods": P, "concurrency": C, "exec_floor_ms": fl, "veth_delete_ms": veth_del,
                       "medians_ms": med}, f, indent=2)


if __name__ == "__main__":
    try:
        main()
    except PluginError as e:
        print(f"[bench] FAIL: {e}", file=sys.stderr)
        sys.exit(1)
