#!/usr/bin/env python3
"""Bring-up, scale and teardown figures for lab_kit (one run each; a measurement, not a test).

Figures (targets from the issue):

  small   3 nodes x 10 pods, from nothing (before `Cluster.up`) through `apply` until every pod
          answers an HTTP `/hostname` probe from a pod on another node: <= 1.5 s.
          Printed next to the *floor*: a bare function that makes the same namespaces, bridges
          and veths with plain `ip -batch` and no lab logic; the ratio lab/floor is how much the
          lab's own work (Mininet, CNI plugins, test servers, state) costs on top of the kernel.
  down    `Cluster.down()` of the 3 x 10 cluster: <= 2 s.
  large   10 nodes x 100 pods per node (1,000 pods), until every pod answers: <= 60 s, and the
          lab's processes (this Python process + every process in one of the cluster's network
          namespaces) use <= 2 GiB RSS in total. PSS is printed too (RSS counts shared pages
          once per process).

Run as root from the repository root:

    sudo make bench
    sudo .venv/bin/python benchmarks/bench_up.py [--skip-large] [--breakdown]

`--breakdown` wraps a few lab_kit internals with timers (no lab code is changed) and prints where
the time goes per phase. The exit code is 0 even when a target is missed (MISS is printed).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_t_import = time.perf_counter()
from lab_kit import cluster as cluster_mod  # noqa: E402
from lab_kit import cni, config, kernel, model, naming  # noqa: E402
from lab_kit.cluster import Cluster  # noqa: E402

IMPORT_S = time.perf_counter() - _t_import

GiB = 1024**3
MiB = 1024**2
TARGET_SMALL_S = 1.5
TARGET_DOWN_S = 2.0
TARGET_LARGE_S = 60.0
TARGET_LARGE_RSS = 2 * GiB
PORT = 8080

_used_names: list[str] = []


def say(msg: str) -> None:
    print(msg, flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def unique_name(prefix: str) -> str:
    """A cluster name unique to this run (1-16 of [a-z0-9], starting with a letter)."""
    alphabet = string.ascii_lowercase + string.digits
    name = prefix + "".join(secrets.choice(alphabet) for _ in range(6))
    _used_names.append(name)
    return name


# --- cluster config and manifests ---

def make_config(name: str, nodes: int, cni: str = config.DEFAULT_CNI) -> config.ClusterConfig:
    return config.parse_config({
        "kind": "Cluster", "apiVersion": config.KIND_API_VERSION, "name": name,
        "nodes": [{"role": "control-plane"}] + [{"role": "worker"}] * (nodes - 1),
        "networking": {"cni": cni},
    })


def make_pods(conf: config.ClusterConfig, per_node: int) -> list[dict]:
    """`per_node` Pods pinned (spec.nodeName) to every node, each serving TCP 8080."""
    docs = []
    for k, n in enumerate(conf.nodes):
        for i in range(per_node):
            docs.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"p{k:02d}-{i:03d}", "labels": {"app": "bench"}},
                "spec": {"nodeName": n.name, "containers": [{
                    "name": "agnhost", "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                    "args": ["netexec", f"--http-port={PORT}"],
                    "ports": [{"containerPort": PORT, "protocol": "TCP"}]}]},
            })
    return docs


# --- probing ---

def cross_node_pairs(pods: list) -> list[tuple]:
    """(source, destination) for every pod as destination: the source is a pod on another
    node, taken round-robin over the other nodes and their pods."""
    by_node: dict[str, list] = defaultdict(list)
    for p in pods:
        by_node[p.node].append(p)
    nodes = sorted(by_node)
    pairs = []
    for i, p in enumerate(pods):
        others = [n for n in nodes if n != p.node] or [p.node]
        srcs = by_node[others[i % len(others)]]
        pairs.append((srcs[i % len(srcs)], p))
    return pairs


def probe_all(c: Cluster, deadline_s: float = 30.0, workers: int = 16) -> dict:
    """Probe every pod once over HTTP /hostname from a pod on another node (retrying failures
    until `deadline_s`). Returns counts; `ok` is true when every pod answered with its name."""
    pairs = [(src.key, dst.key, dst.name) for src, dst in cross_node_pairs(c.pods())]

    def one(pair):
        src, dst, want = pair
        r = c.probe(src, dst, PORT)
        return pair, (r.ok and r.reply == want), r

    pending = pairs
    attempts = 0
    last_errors: list[str] = []
    end = time.monotonic() + deadline_s
    with ThreadPoolExecutor(max_workers=workers) as ex:
        while pending:
            attempts += len(pending)
            results = list(ex.map(one, pending))
            pending = [pair for pair, good, _r in results if not good]
            last_errors = [str(r) for _pair, good, r in results if not good][:3]
            if not pending or time.monotonic() > end:
                break
            time.sleep(0.05)
    return {"pods": len(pairs), "answered": len(pairs) - len(pending), "attempts": attempts,
            "ok": not pending and len(pairs) > 0, "errors": last_errors}


def raw_probes(c: Cluster, workers: int = 16) -> dict:
    """Every pod probed from a pod on another node with `probe_socket` directly (no name
    lookups): what the connections alone cost."""
    pairs = cross_node_pairs(c.pods())
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        res = list(ex.map(lambda sp: cluster_mod.probe_socket(
            sp[0].key, sp[0].netns, sp[1].key, sp[1].ip, PORT, "TCP", "/hostname", 1.0), pairs))
    return {"pods": len(pairs), "ok": sum(1 for r in res if r.ok),
            "s": time.perf_counter() - t0}


# --- memory ---

def _proc_kib(pid: int, file: str, key: str) -> int | None:
    """The `key:` line of /proc/PID/FILE in KiB (status, smaps_rollup), or None."""
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def lab_pids(name: str) -> list[int]:
    nets = [n for n in kernel.list_netns() if naming.owns_netns(name, n)]
    inodes = {i for i in (kernel.netns_inode(n) for n in nets) if i is not None}
    return kernel.pids_in_netns(inodes)


def lab_memory(name: str) -> dict:
    """RSS/PSS/peak RSS of this process plus every process in the cluster's namespaces."""
    others = lab_pids(name)
    rows = []
    for pid in [os.getpid(), *others]:
        try:
            comm = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
        except OSError:
            comm = "?"
        rows.append({"pid": pid, "cmd": comm.strip(),
                     "rss": (_proc_kib(pid, "status", "VmRSS") or 0) * 1024,
                     "hwm": (_proc_kib(pid, "status", "VmHWM") or 0) * 1024,
                     "pss": (_proc_kib(pid, "smaps_rollup", "Pss") or 0) * 1024})
    return {"procs": rows, "rss": sum(r["rss"] for r in rows),
            "pss": sum(r["pss"] for r in rows), "hwm": sum(r["hwm"] for r in rows),
            "self_rss": rows[0]["rss"], "self_hwm": rows[0]["hwm"],
            "pss_available": _proc_kib(os.getpid(), "smaps_rollup", "Pss") is not None}


# --- quiet machine between phases ---

def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return vals[3] + vals[4], sum(vals)  # idle + iowait, total


def settle(min_idle: float = 0.85, window: float = 0.25, timeout: float = 20.0) -> float:
    """Wait until the CPUs are mostly idle (the kernel destroys deleted namespaces in the
    background, and that work would otherwise land in the next phase's timing). Returns the
    seconds waited."""
    t0 = time.monotonic()
    while True:
        i0, a0 = _cpu_times()
        time.sleep(window)
        i1, a1 = _cpu_times()
        idle = (i1 - i0) / max(1, a1 - a0)
        if idle >= min_idle or time.monotonic() - t0 > timeout:
            return time.monotonic() - t0


# --- the floor: same namespaces and veths with plain `ip`, no lab logic ---

def _ip_batch(lines: list[str], netns: str | None = None) -> subprocess.Popen:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    p.stdin.write("\n".join(lines) + "\n")
    p.stdin.close()
    return p


def _wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        err = p.stderr.read()
        if p.wait() != 0:
            raise RuntimeError(f"{' '.join(p.args)} failed: {err.strip()}")


def floor_build(tag: str, nodes: int, per_node: int) -> list[str]:
    """What the lab makes for `nodes` x `per_node`, as bare `ip` commands: a netns per node, pod,
    the external host and the underlay switch; bridge s1 in the underlay with a veth to every
    node (eth0); a `cni0` bridge per node with a veth per pod (eth0 in the pod); addresses,
    links up, pod default routes and host-gw routes. One `ip -batch` in the root netns, then one
    `ip -n NS -batch` per namespace, all in parallel. Returns the netns names."""
    under = f"{tag}-underlay"
    node_ns = [f"{tag}-n{k}" for k in range(nodes)]
    ext = f"{tag}-external"
    pods = {k: [f"{tag}.p{k}-{i}" for i in range(per_node)] for k in range(nodes)}
    all_ns = [under, *node_ns, ext, *(p for k in pods for p in pods[k])]
    root = [f"netns add {n}" for n in all_ns]
    root.append(f"link add s1 netns {under} type bridge")
    for k, n in enumerate([*node_ns, ext]):
        root.append(f"link add eth0 netns {n} type veth peer name s1-eth{k + 1} netns {under}")
    for k, n in enumerate(node_ns):
        root.append(f"link add cni0 netns {n} type bridge")
        for i, p in enumerate(pods[k]):
            root.append(f"link add veth{i} netns {n} type veth peer name eth0 netns {p}")
    _wait([_ip_batch(root)])

    procs = []
    ul = ["link set s1 up"]
    for k in range(nodes + 1):
        ul += [f"link set s1-eth{k + 1} master s1", f"link set s1-eth{k + 1} up"]
    procs.append(_ip_batch(ul, under))
    procs.append(_ip_batch(["link set lo up", "addr add 172.18.0.100/16 dev eth0",
                            "link set eth0 up"], ext))
    for k, n in enumerate(node_ns):
        lines = ["link set lo up", f"addr add 172.18.0.{k + 2}/16 dev eth0", "link set eth0 up",
                 f"addr add 10.244.{k}.1/24 dev cni0", "link set cni0 up"]
        for i in range(per_node):
            lines += [f"link set veth{i} master cni0", f"link set veth{i} up"]
        lines += [f"route add 10.244.{o}.0/24 via 172.18.0.{o + 2} dev eth0"
                  for o in range(nodes) if o != k]
        procs.append(_ip_batch(lines, n))
    for k in range(nodes):
        for i, p in enumerate(pods[k]):
            procs.append(_ip_batch(["link set lo up", f"addr add 10.244.{k}.{i + 2}/24 dev eth0",
                                    "link set eth0 up",
                                    f"route add default via 10.244.{k}.1 dev eth0"], p))
    _wait(procs)
    return all_ns


def floor_remove(all_ns: list[str]) -> None:
    subprocess.run(["ip", "-force", "-batch", "-"], check=False, capture_output=True, text=True,
                   input="".join(f"netns del {n}\n" for n in reversed(all_ns)))


def run_floor(nodes: int, per_node: int) -> dict:
    tag = "lkfloor" + secrets.token_hex(3)
    t0 = time.perf_counter()
    made: list[str] = []
    try:
        made = floor_build(tag, nodes, per_node)
        build = time.perf_counter() - t0
        # sanity (not timed): every namespace exists and a pod can reach its bridge
        missing = [n for n in made if not kernel.netns_exists(n)]
        ping = subprocess.run(["ip", "netns", "exec", f"{tag}.p0-0", "ping", "-c1", "-W1",
                               "10.244.0.1"], capture_output=True)
        sane = not missing and ping.returncode == 0
    finally:
        t1 = time.perf_counter()
        floor_remove(made or [n for n in kernel.list_netns() if n.startswith(tag)])
        remove = time.perf_counter() - t1
    left = [n for n in kernel.list_netns() if n.startswith(tag)]
    return {"build": build, "remove": remove, "netns": len(made), "sane": sane, "left": left}


# --- optional per-phase timers (wrap lab_kit internals; nothing in lab_kit changes) ---

class Phases:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[tuple[object, str, object]] = []

    def add(self, key: str, dt: float) -> None:
        with self.lock:
            self.total[key] += dt
            self.calls[key] += 1

    def wrap(self, owner: object, attr: str, key) -> None:
        orig = getattr(owner, attr)
        phases = self

        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                phases.add(key(a, kw) if callable(key) else key, time.perf_counter() - t)

        self._undo.append((owner, attr, orig))
        setattr(owner, attr, wrapper)

    def install(self) -> None:
        self.wrap(cluster_mod, "_build_underlay", "up: Mininet underlay (_build_underlay)")
        self.wrap(Cluster, "_setup_node", "up: node setup (_setup_node, per node)")
        self.wrap(Cluster, "_start_agnhost", "up: start agnhost (per node)")
        self.wrap(model, "load_manifests", "apply: parse + validate manifests")
        first = [True]

        def schema_key(a, kw):
            if first[0]:
                first[0] = False
                return "apply: 1st _schema_check (+ import kubernetes_validate)"
            return "apply: _schema_check (other docs)"
        self.wrap(model, "_schema_check", schema_key)
        self.wrap(Cluster, "_create_pods", "apply: _create_pods (per node thread)")
        self.wrap(cni, "add", lambda a, kw: "apply: CNI ADD " + (
            "loopback" if a[2].get("name") == "cni-loopback" else "bridge+host-local"))
        self.wrap(Cluster, "_sync_agnhost", "apply: agnhost sync (per node)")
        self.wrap(cluster_mod.Store, "save", "state: Store.save")
        self.wrap(kernel.Journal, "add", "state: Journal.add")
        self.wrap(Cluster, "_pod_infos", "probe: Cluster._pod_infos (pod lookup)")
        self.wrap(cluster_mod, "probe_socket", "probe: probe_socket (the connection)")
        self.wrap(cluster_mod, "sweep", "down: sweep")

        def exec_key(a, kw):
            argv = list(a[1]) if len(a) > 1 else list(kw.get("argv", []))
            head = os.path.basename(argv[0]) if argv else "?"
            if head == "ip" and len(argv) > 1:
                head = "ip " + " ".join(x for x in argv[1:3] if x.startswith("-"))
            return f"exec: {head}"
        self.wrap(kernel.Runner, "run", exec_key)

    def uninstall(self) -> None:
        for owner, attr, orig in reversed(self._undo):
            setattr(owner, attr, orig)
        self._undo.clear()

    def clear(self) -> None:
        self.total.clear()
        self.calls.clear()

    def report(self, title: str) -> None:
        say(f"\n  per-phase time ({title}); thread-seconds, summed over parallel threads:")
        say(f"    {'phase':52} {'calls':>6} {'total s':>9} {'mean ms':>9}")
        for k in sorted(self.total, key=lambda k: -self.total[k]):
            n = self.calls[k]
            say(f"    {k:52} {n:6d} {self.total[k]:9.3f} {1000 * self.total[k] / n:9.2f}")
        self.total.clear()
        self.calls.clear()


# --- the measurements ---

def lab_run(label: str, nodes: int, per_node: int, root: str, measure_memory: bool,
            phases: Phases | None) -> dict:
    name = unique_name("bs" if per_node * nodes <= 100 else "bl")
    conf = make_config(name, nodes)
    docs = make_pods(conf, per_node)
    out: dict = {"name": name, "nodes": nodes, "pods": nodes * per_node}
    say(f"\n[{label}] cluster `{name}`: {nodes} nodes x {per_node} pods")
    c = None
    agn_pids: list[int] = []
    try:
        t0 = time.perf_counter()
        c = Cluster.up(conf, name=name, root=root)
        t1 = time.perf_counter()
        c.apply(docs)
        t2 = time.perf_counter()
        pr = probe_all(c, deadline_s=30.0 if per_node * nodes <= 100 else 120.0)
        t3 = time.perf_counter()
        out.update(up=t1 - t0, apply=t2 - t1, probe=t3 - t2, total=t3 - t0, probes=pr)
        say(f"  up {out['up']:.2f} s, apply {out['apply']:.2f} s, probes {out['probe']:.2f} s "
            f"-> {out['total']:.2f} s; {pr['answered']}/{pr['pods']} pods answered "
            f"({pr['attempts']} probes)")
        for e in pr["errors"]:
            say(f"  probe error: {e}")
        if measure_memory:
            out["mem"] = lab_memory(name)
        agn_pids = lab_pids(name)
        if phases:
            phases.report(f"{label}: up + apply + probes")
            raw = raw_probes(c)
            say(f"  diagnostic: the same {raw['pods']} probes with the pod lookups bypassed "
                f"(probe_socket on netns/IP): {raw['s']:.2f} s, {raw['ok']} answered")
            phases.clear()
            if measure_memory:
                for r in out["mem"]["procs"]:
                    say(f"  pid {r['pid']:>7}  RSS {r['rss'] / MiB:6.1f} MiB  PSS "
                        f"{r['pss'] / MiB:6.1f} MiB  {r['cmd']}")
    finally:
        if c is not None:
            t4 = time.perf_counter()
            c.down()
            out["down"] = time.perf_counter() - t4
            say(f"  down {out['down']:.2f} s")
            if phases:
                phases.report(f"{label}: down")
    out["left_netns"] = [n for n in kernel.list_netns() if naming.owns_netns(name, n)]
    out["left_pids"] = [p for p in agn_pids if cluster_mod._alive(p)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-large", action="store_true", help="skip the 10 x 100 part")
    ap.add_argument("--breakdown", action="store_true",
                    help="time lab_kit's phases (wraps internals; adds a little overhead)")
    ap.add_argument("--large-nodes", type=int, default=10, help=argparse.SUPPRESS)
    ap.add_argument("--large-pods", type=int, default=100, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        say("bench_up needs root (it builds network namespaces): sudo make bench")
        return 2

    say(f"lab_kit bring-up benchmark — {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} CPUs, kernel {os.uname().release}, Python {sys.version.split()[0]}")
    say(f"(import lab_kit.cluster took {IMPORT_S:.2f} s before any timer started)")
    phases = Phases() if args.breakdown else None
    root = tempfile.mkdtemp(prefix="lk-bench-")
    rows: list[tuple[str, str, str, str]] = []
    runs: list[dict] = []
    try:
        say("\n[floor] same namespaces + veths (3 nodes x 10 pods) with bare `ip -batch`")
        say(f"  (waited {settle():.1f} s for an idle machine)")
        fl = run_floor(3, 10)
        say(f"  build {fl['build'] * 1000:.0f} ms, remove {fl['remove'] * 1000:.0f} ms, "
            f"{fl['netns']} netns, sanity {'ok' if fl['sane'] else 'FAILED'}")

        if phases:
            phases.install()
        say(f"  (waited {settle():.1f} s for an idle machine)")
        small = lab_run("small", 3, 10, root, measure_memory=True, phases=phases)
        runs.append(small)
        ok_small = small["probes"]["ok"] and small["total"] <= TARGET_SMALL_S
        ratio = small["total"] / fl["build"]
        say(f"  lab {small['total']:.2f} s vs floor {fl['build']:.3f} s: ratio {ratio:.1f}x; "
            f"target <= {TARGET_SMALL_S} s: {verdict(ok_small)}")
        ok_down = small["down"] <= TARGET_DOWN_S
        say(f"  down {small['down']:.2f} s vs floor remove {fl['remove']:.3f} s: ratio "
            f"{small['down'] / fl['remove']:.1f}x; target <= {TARGET_DOWN_S} s: "
            f"{verdict(ok_down)}")
        rows += [
            ("3x10 up -> all pods answer", f"{small['total']:.2f} s "
             f"(up {small['up']:.2f} + apply {small['apply']:.2f} + probes {small['probe']:.2f})",
             f"<= {TARGET_SMALL_S} s", verdict(ok_small)),
            ("3x10 floor (bare ip)", f"{fl['build']:.3f} s", "-", "-"),
            ("3x10 ratio lab/floor", f"{ratio:.1f}x", "-", "-"),
            ("3x10 down", f"{small['down']:.2f} s (floor remove {fl['remove']:.3f} s)",
             f"<= {TARGET_DOWN_S} s", verdict(ok_down)),
            ("3x10 memory (RSS / PSS)", f"{small['mem']['rss'] / MiB:.0f} MiB / "
             f"{small['mem']['pss'] / MiB:.0f} MiB", "-", "-"),
        ]

        if not args.skip_large:
            n, per = args.large_nodes, args.large_pods
            say(f"\n(waited {settle():.1f} s for an idle machine)")
            large = lab_run("large", n, per, root, measure_memory=True, phases=phases)
            runs.append(large)
            mem = large["mem"]
            ok_time = large["probes"]["ok"] and large["total"] <= TARGET_LARGE_S
            ok_mem = mem["rss"] <= TARGET_LARGE_RSS
            say(f"  {len(mem['procs'])} lab processes: RSS {mem['rss'] / MiB:.0f} MiB, PSS "
                f"{mem['pss'] / MiB:.0f} MiB{'' if mem['pss_available'] else ' (n/a)'}, "
                f"peak RSS (sum of VmHWM) {mem['hwm'] / MiB:.0f} MiB; this process RSS "
                f"{mem['self_rss'] / MiB:.0f} MiB (peak {mem['self_hwm'] / MiB:.0f} MiB)")
            say(f"  time target <= {TARGET_LARGE_S:.0f} s: {verdict(ok_time)}; memory target "
                f"<= 2 GiB RSS: {verdict(ok_mem)}")
            from lab_kit.kernel import neighbour_limit
            limit = neighbour_limit()
            if limit is not None and 2 * n * per > limit:
                say(f"  note: {n * per} pods need ~{2 * n * per} ARP entries but this kernel "
                    f"keeps {limit} (net.ipv4.neigh.default.gc_thresh3, host-wide; lab_kit "
                    "leaves it alone), so probes time out while entries are evicted")
            rows += [
                (f"{n}x{per} up -> all pods answer", f"{large['total']:.1f} s "
                 f"(up {large['up']:.1f} + apply {large['apply']:.1f} + probes "
                 f"{large['probe']:.1f})", f"<= {TARGET_LARGE_S:.0f} s", verdict(ok_time)),
                (f"{n}x{per} RSS of lab processes", f"{mem['rss'] / MiB:.0f} MiB "
                 f"({len(mem['procs'])} procs; PSS {mem['pss'] / MiB:.0f} MiB, peak "
                 f"{mem['hwm'] / MiB:.0f} MiB)", "<= 2048 MiB", verdict(ok_mem)),
                (f"{n}x{per} down", f"{large['down']:.2f} s", "-", "-"),
            ]
    finally:
        if phases:
            phases.uninstall()
        shutil.rmtree(root, ignore_errors=True)

    left = [n for n in kernel.list_netns()
            if any(naming.owns_netns(c, n) for c in _used_names) or n.startswith("lkfloor")]
    say("\n" + "=" * 100)
    say(f"{'figure':34} {'measured':44} {'target':12} result")
    say("-" * 100)
    for r in rows:
        say(f"{r[0]:34} {r[1]:44} {r[2]:12} {r[3]}")
    say("-" * 100)
    say(f"leftover lk- namespaces of this run's clusters ({', '.join(_used_names)}): "
        f"{len(left)}{' ' + ', '.join(left[:5]) if left else ''}")
    left_pids = [p for r in runs for p in r.get("left_pids", [])]
    say(f"leftover test-server processes after down: {len(left_pids)}"
        f"{' ' + ', '.join(map(str, left_pids)) if left_pids else ''}")
    misses = [r[0] for r in rows if r[3] == "MISS"]
    if misses:
        say(f"MISS: {'; '.join(misses)}")
    else:
        say("all targets met")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        with suppress(Exception):
            say("interrupted")
        sys.exit(130)
