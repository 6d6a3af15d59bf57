#!/usr/bin/env python3
"""Bring-up of 3 nodes x 10 pods with each CNI backend, side by side (one run each).

For each of host-gw, vxlan and bgp: from nothing (before `Cluster.up`) through `apply` of 30
pods (10 pinned to each node) until every pod answers an HTTP probe from a pod on another node.
For bgp, `Cluster.up` returns only once every node has every other node's pod CIDR from BIRD
(`proto bird` in its kernel table), so the figure counts BGP convergence. Target: <= 2 s each.

Also printed: the ratio of each backend to host-gw (the one with the least to set up), the
time BGP took to converge, and the time for a node to join (routes/entries/BGP sessions on
every other node) and to leave.

Run as root from the repository root:

    sudo .venv/bin/python benchmarks/bench_backends.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_up import make_config, make_pods, probe_all, unique_name  # noqa: E402

from lab_kit import config, kernel, naming  # noqa: E402
from lab_kit.cluster import Cluster  # noqa: E402

TARGET_S = 2.0


def run(cni: str, root: str) -> dict:
    name = unique_name(cni.replace("-", "")[:4])
    conf = make_config(name, 3, cni)
    docs = make_pods(conf, 10)
    out: dict = {"cni": cni}
    notes: list[str] = []
    c = None
    try:
        t0 = time.perf_counter()
        c = Cluster.up(conf, root=root, progress=notes.append)
        t1 = time.perf_counter()
        c.apply(docs)
        t2 = time.perf_counter()
        pr = probe_all(c, deadline_s=30.0)
        t3 = time.perf_counter()
        out.update(up=t1 - t0, apply=t2 - t1, probe=t3 - t2, total=t3 - t0, ok=pr["ok"],
                   answered=f"{pr['answered']}/{pr['pods']}")
        conv = [n for n in notes if n.startswith("BGP converged in ")]
        if cni == "bgp" and not conv:
            raise SystemExit(f"Cluster.up no longer reports BGP convergence: {notes}")
        out["bgp"] = conv[0].split()[-2] + " s" if conv else "-"
        t4 = time.perf_counter()
        new = c.add_node()  # returns once every node has the new node's routes (BGP included)
        out["join"] = time.perf_counter() - t4
        t5 = time.perf_counter()
        c.remove_node(new.name)
        out["leave"] = time.perf_counter() - t5
    finally:
        if c is not None:
            t6 = time.perf_counter()
            c.down()
            out["down"] = time.perf_counter() - t6
    out["left"] = [n for n in kernel.list_netns() if naming.owns_netns(name, n)]
    return out


def main() -> int:
    root = tempfile.mkdtemp(prefix="lab_kit-bench-")
    rows = []
    for cni in config.CNI_BACKENDS:
        print(f"[{cni}] 3 nodes x 10 pods …", flush=True)
        rows.append(run(cni, root))
    base = next(r for r in rows if r["cni"] == "host-gw")["total"]
    head = (f"{'backend':<8} {'up':>6} {'apply':>6} {'probes':>7} {'total':>7} {'vs host-gw':>10}"
            f" {'BGP conv':>9} {'join':>6} {'leave':>6} {'down':>6} {'target':>7}")
    print("\n" + head)
    for r in rows:
        ok = r["ok"] and r["total"] <= TARGET_S and not r["left"]
        print(f"{r['cni']:<8} {r['up']:>5.2f}s {r['apply']:>5.2f}s {r['probe']:>6.2f}s "
              f"{r['total']:>6.2f}s {r['total'] / base:>9.2f}x {r['bgp']:>9} {r['join']:>5.2f}s "
              f"{r['leave']:>5.2f}s {r['down']:>5.2f}s {'PASS' if ok else 'MISS':>7}")
        if not r["ok"]:
            print(f"  not every pod answered: {r['answered']}")
        if r["left"]:
            print(f"  left behind: {r['left']}")
    print(f"\ntarget: every backend <= {TARGET_S:g} s from nothing to 30 pods answering")
    return 0


if __name__ == "__main__":
    sys.exit(main())
