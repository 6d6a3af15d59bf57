#!/usr/bin/env python3
"""kube-proxy at scale: full rule-sync time and new-connection latency, iptables vs nftables mode.

Two clusters of 3 nodes (1 control-plane, 2 workers, host-gw), alike but for
`networking.kubeProxyMode`, each with a Deployment of 3 backend pods and a client pod on the
first worker. Every Service selects the 3 backends, so N Services have 3·N endpoints.

Figures (one run; a measurement, not a test):

  sync     1,000 Services x 3 endpoints: one full sync of all 3 nodes (the code path of every
           `apply`: endpoint controller, then on every node in parallel read the rules, render,
           load them in one transaction; then the load balancer's routes). Target: <= 2 s in
           each mode. Timed 3 times; the median is judged, min and max are printed.
  ratios   at 5,000 Services: iptables / nftables for the full sync time, and for the median
           time of a new TCP connection from the client pod to the LAST Service's ClusterIP
           (its rule is the 5,000th of KUBE-SERVICES in iptables mode; one map lookup in
           nftables mode).

Also printed per size and mode: the rules on the client's node, the read and load time per
node, the `apply` that grew the cluster (and how much of it was planning, i.e. validation and
ClusterIP allocation), and connection times to the first and the last Service.

Run as root from the repository root (about 10 minutes; `--max 1000` skips 5,000: ~1 minute):

    sudo .venv/bin/python benchmarks/bench_services.py [--max N] [--connections K]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_up import settle, unique_name  # noqa: E402

from lab_kit import cluster as cluster_mod  # noqa: E402
from lab_kit import config, kernel, naming, proxyscale  # noqa: E402
from lab_kit.cluster import Cluster  # noqa: E402

TARGET_SYNC_S = 2.0
TARGET_SERVICES = 1000
RATIO_SERVICES = 5000
SYNC_REPEATS = 3


def say(msg: str) -> None:
    print(msg, flush=True)


def make_config(name: str, mode: str) -> config.ClusterConfig:
    return config.parse_config({
        "kind": "Cluster", "apiVersion": config.KIND_API_VERSION, "name": name,
        "nodes": [{"role": "control-plane"}, {"role": "worker"}, {"role": "worker"}],
        "networking": {"cni": "host-gw", "kubeProxyMode": mode}})


class PlanTimer:
    """Seconds spent in `_plan_apply` (validation is before it; allocation inside it)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._orig = cluster_mod._plan_apply

    def __enter__(self) -> PlanTimer:
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return self._orig(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t0
        cluster_mod._plan_apply = timed
        return self

    def __exit__(self, *exc: object) -> None:
        cluster_mod._plan_apply = self._orig


def grow_both(clusters: list[Cluster], n: int) -> dict[str, tuple[float, float]]:
    """Grow every cluster to n Services; (apply seconds, planning seconds) per mode."""
    out = {}
    for c in clusters:
        settle(timeout=10)
        with PlanTimer() as plan:
            s = proxyscale.grow(c, n)
        out[proxyscale.mode_of(c)] = (s, plan.seconds)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max", type=int, default=RATIO_SERVICES,
                    help=f"largest number of Services (default {RATIO_SERVICES})")
    ap.add_argument("--connections", type=int, default=400,
                    help="new TCP connections per Service measured (default 400)")
    args = ap.parse_args()
    sizes = [n for n in (TARGET_SERVICES, RATIO_SERVICES) if n <= args.max] or [args.max]

    root = tempfile.mkdtemp(prefix="lab_kit-bench-")
    names = {"iptables": unique_name("bsi"), "nftables": unique_name("bsn")}
    clusters: list[Cluster] = []
    results = proxyscale.ScaleResults()
    grows: dict[tuple[str, int], tuple[float, float]] = {}
    repeats: dict[str, list[float]] = {}
    t_start = time.perf_counter()
    try:
        for mode, name in names.items():
            clusters.append(Cluster.up(make_config(name, mode), root=root))
        for c in clusters:
            proxyscale.prepare(c)
        for n in sizes:
            say(f"[{n:,} Services] growing both clusters …")
            for mode, g in grow_both(clusters, n).items():
                grows[(mode, n)] = g
            say(f"[{n:,} Services] full sync, rules, {args.connections} connections per "
                "Service …")
            part = proxyscale.measure(clusters, (n,), connections=args.connections,
                                      settle_s=10, progress=say)
            results.points += part.points
            if n == TARGET_SERVICES:
                for c in clusters:
                    mode = proxyscale.mode_of(c)
                    runs = [part.at(mode, n).sync.seconds]
                    for _ in range(SYNC_REPEATS - 1):
                        settle(timeout=10)
                        runs.append(proxyscale.full_sync(c).seconds)
                    repeats[mode] = runs
    finally:
        for c in clusters:
            c.down()
    left = [ns for ns in kernel.list_netns() for name in names.values()
            if naming.owns_netns(name, ns)]
    total = time.perf_counter() - t_start

    say("")
    head = (f"{'mode':<9} {'Services':>8} {'apply':>8} {'(plan)':>8} {'sync':>8} {'read/node':>10}"
            f" {'load/node':>10} {'rules':>8} {'first µs':>9} {'last µs':>8} {'last p99':>9}")
    say(head)
    for p in sorted(results.points, key=lambda p: (p.services, p.mode)):
        apply_s, plan_s = grows.get((p.mode, p.services), (0.0, 0.0))
        say(f"{p.mode:<9} {p.services:>8,} {apply_s:>7.2f}s {plan_s:>7.2f}s "
            f"{p.sync.seconds:>7.2f}s {p.sync.read_s:>9.2f}s {p.sync.load_s:>9.2f}s "
            f"{p.rules.rules:>8,} {p.first.median_us:>9.0f} {p.latency.median_us:>8.0f} "
            f"{p.latency.p99_us:>9.0f}")
    say("")
    if repeats:
        say(f"target: one full sync of {TARGET_SERVICES:,} Services x 3 endpoints on 3 nodes "
            f"<= {TARGET_SYNC_S:g} s, in each mode (median of {SYNC_REPEATS})")
        for mode, runs in repeats.items():
            med = statistics.median(runs)
            verdict = "PASS" if med <= TARGET_SYNC_S else "MISS"
            say(f"  {mode:<9} {med:.2f} s (min {min(runs):.2f}, max {max(runs):.2f})  {verdict}")
        r = results.ratios(TARGET_SERVICES)
        say(f"  iptables/nftables at {TARGET_SERVICES:,}: sync {r['sync']:.2f}x, new connection "
            f"to the last Service {r['connect']:.2f}x")
    if RATIO_SERVICES in sizes:
        r = results.ratios(RATIO_SERVICES)
        ipt, nft = (results.at(m, RATIO_SERVICES) for m in ("iptables", "nftables"))
        say(f"ratios at {RATIO_SERVICES:,} Services, iptables / nftables:")
        say(f"  full sync:                            {r['sync']:.2f}x  "
            f"({ipt.sync.seconds:.2f} s / {nft.sync.seconds:.2f} s)")
        say(f"  new connection to the last Service:   {r['connect']:.2f}x  "
            f"({ipt.latency.median_us:.0f} µs / {nft.latency.median_us:.0f} µs, median)")
        say(f"  last minus first Service:             iptables {round(ipt.walk_us):+d} µs, "
            f"nftables {round(nft.walk_us):+d} µs "
            f"({ipt.walk_us * 1000 / max(1, RATIO_SERVICES - 1):.0f} ns per KUBE-SERVICES rule)")
    else:
        say(f"(no ratios at {RATIO_SERVICES:,} Services: --max {args.max})")
    say(f"\nwhole run {total:.0f} s" + (f"; LEFT BEHIND: {left}" if left else
                                         "; nothing left behind"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
