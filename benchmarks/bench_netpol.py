#!/usr/bin/env python3
"""NetworkPolicy at scale: 100 policies over 90 pods, and the 9x9x2-port probe run (one run).

One cluster of 4 nodes (1 control-plane, 3 workers, VXLAN, cluster DNS) per kube-proxy mode
(iptables, then nftables; the policy rules follow the mode), each with the same 90 pods: the
standard x/y/z scenario (labs/manifests/netpol-xyz.yaml, 9 pods) and 81 application pods in 9
namespaces (frontend, api, worker, db, cache; a monitoring namespace) labelled app/tier/team/
version, 30 pods per worker. Then, timed from the start of each `apply`/`delete`:

  100 policies    one manifest of 100 NetworkPolicies (seeded mix: default deny, frontend ->
                  api on named ports, namespaceSelector peers, ipBlock with except, egress to DNS,
                  endPort ranges, matchExpressions), 6 of them on x/y/z.
  edit 1 policy   one policy re-applied with another port.
  relabel 1 pod   one api pod's `app` label changed, so policies stop selecting it.
  delete 1 policy `delete` of one policy (frontend -> api in one namespace).
  delete the rest `delete` of the other 99 policies.

"Converged" is checked apart from what `apply` says, two ways: (1) probes: while the apply runs,
a thread keeps opening TCP connections for a few pod pairs whose verdict the change flips (the
policy engine picks them, same-node pairs preferred so each worker's rules are tested) plus
pairs that stay allowed; the figure is the start of the first round in which every pair had its
new verdict. (2) rule counts: after `apply` returns, every node's `cali-` rules are read from the
kernel (`iptables-save -t filter` / `nft list table ip calico`) until they equal what lab_kit's
renderer makes of the new objects. Both are timed from the start of the `apply`; "verified,
all nodes" is the later of the two.

Then, with the 100 policies in force: the x/y/z 9x9 matrix on TCP 80 and on TCP 81 through
`Cluster.reachability` (real connections, blocked ones wait for the 1 s timeout), compared
with the engine's table.

Targets (issue 6): converge on all nodes <= 3 s (also printed for the small changes); a 9x9
matrix <= 2 s. Ratios are measured / target (< 1 is within target). A measurement, not a test:
exit 0 even on MISS or on a step whose apply raised (FAIL; 1 only when something else broke).
Run as root from the repository root (about 25 s for both modes):

    sudo .venv/bin/python benchmarks/bench_netpol.py [--modes iptables,nftables] [--seed 6]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_up import settle  # noqa: E402

from lab_kit import cluster as cluster_mod  # noqa: E402
from lab_kit import config, kernel, kubeproxy, model, naming, netpol  # noqa: E402
from lab_kit.cluster import Cluster  # noqa: E402
from lab_kit.state import Store  # noqa: E402

NAME = "npb"
TARGET_CONVERGE_S = 3.0
TARGET_MATRIX_S = 2.0
POLICIES = 100
IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.53"
XYZ = ROOT / "labs" / "manifests" / "netpol-xyz.yaml"
XYZ_KEYS = [f"{ns}/{p}" for ns in "xyz" for p in "abc"]
POLL_TIMEOUT_S = 0.2  # a probe round: a connection not made by then counts as blocked
ROUND_EVERY_S = 0.05  # a new probe round starts this often (they overlap)
WAIT_S = 10.0  # how long a step's verification may take before it is reported as failed

NAMESPACES = [  # name, team, env
    ("storefront", "web", "prod"), ("checkout", "commerce", "prod"),
    ("payments", "payments", "prod"), ("identity", "platform", "prod"),
    ("catalog", "catalog", "prod"), ("search", "search", "staging"),
    ("orders", "commerce", "staging"), ("analytics", "data", "staging"),
    ("monitoring", "observability", "prod")]
_API = [(8080, "http"), (9090, "metrics")]
APP_PODS = [  # name, app, tier, ports (TCP, named)
    ("frontend-0", "frontend", "web", [(8080, "http")]),
    ("frontend-1", "frontend", "web", [(8080, "http")]),
    ("api-0", "api", "api", _API), ("api-1", "api", "api", _API), ("api-2", "api", "api", _API),
    ("worker-0", "worker", "backend", [(9000, "jobs"), (9090, "metrics")]),
    ("worker-1", "worker", "backend", [(9000, "jobs"), (9090, "metrics")]),
    ("db-0", "db", "data", [(5432, "postgres"), (9187, "metrics")]),
    ("cache-0", "cache", "data", [(6379, "redis")])]
MONITORING_PODS = [
    ("prometheus-0", "prometheus", "observability", [(9090, "http")]),
    ("prometheus-1", "prometheus", "observability", [(9090, "http")]),
    ("grafana-0", "grafana", "observability", [(3000, "http")]),
    ("grafana-1", "grafana", "observability", [(3000, "http")]),
    ("alertmanager-0", "alertmanager", "observability", [(9093, "http")]),
    ("alertmanager-1", "alertmanager", "observability", [(9093, "http")]),
    ("loki-0", "loki", "observability", [(3100, "http")]),
    ("loki-1", "loki", "observability", [(3100, "http")]),
    ("node-exporter-0", "node-exporter", "observability", [(9100, "metrics")])]
EDITED = "x/allow-a-from-y"  # the policy the "edit" step changes (named port 80 -> 81)
RELABELLED = "storefront/api-0"  # the pod the "relabel" step changes (app=api -> api-canary)
DELETED = "storefront/allow-frontend-to-api"  # the policy the "delete 1" step deletes


def say(msg: str) -> None:
    print(msg, flush=True)


# --- the workload and the policies ------------------------------------------------------------

def make_config(mode: str) -> config.ClusterConfig:
    return config.parse_config({
        "kind": "Cluster", "apiVersion": config.KIND_API_VERSION, "name": NAME,
        "nodes": [{"role": "control-plane"}] + [{"role": "worker"}] * 3,
        "networking": {"cni": "vxlan", "kubeProxyMode": mode, "clusterDNS": True}})


def app_manifests(rng: random.Random) -> list[dict[str, Any]]:
    """The 9 namespaces and their 81 pods (the x/y/z file brings the other 9)."""
    docs: list[dict[str, Any]] = []
    for ns, team, env in NAMESPACES:
        docs.append({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": ns, "labels": {"team": team, "env": env}}})
        for name, app, tier, ports in (MONITORING_PODS if ns == "monitoring" else APP_PODS):
            docs.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": {
                    "app": app, "tier": tier, "team": team, "version": rng.choice(["v1", "v2"])}},
                "spec": {"containers": [{
                    "name": app, "image": IMAGE,
                    "ports": [{"containerPort": p, "name": n, "protocol": "TCP"}
                              for p, n in ports]}]}})
    return docs


def _pol(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def _sel(**labels: str) -> dict[str, Any]:
    return {"matchLabels": dict(labels)}


def _expr(key: str, op: str, values: list[str] | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"key": key, "operator": op}
    if values is not None:
        r["values"] = values
    return {"matchExpressions": [r]}


DNS_PEER = {"namespaceSelector": _sel(**{"kubernetes.io/metadata.name": "kube-system"}),
            "podSelector": _sel(**{"k8s-app": "kube-dns"})}
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def xyz_policies(except_cidr: str) -> list[dict[str, Any]]:
    """6 policies on the x/y/z scenario, so its matrices mix allowed and blocked pairs."""
    return [
        _pol("x", "allow-a-from-y", {  # named port, namespaceSelector peer
            "podSelector": _sel(pod="a"),
            "ingress": [{"from": [{"namespaceSelector": _sel(ns="y")}],
                         "ports": [{"port": "serve-80-tcp"}]}]}),
        _pol("x", "allow-b-from-z-c", {  # namespaceSelector AND podSelector in one peer
            "podSelector": _sel(pod="b"),
            "ingress": [{"from": [{"namespaceSelector": _sel(ns="z"),
                                   "podSelector": _sel(pod="c")}],
                         "ports": [{"port": 80}, {"port": 81}]}]}),
        _pol("y", "default-deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]}),
        _pol("y", "allow-same-namespace-81", {
            "podSelector": {}, "ingress": [{"from": [{"podSelector": {}}],
                                            "ports": [{"port": 81}]}]}),
        _pol("z", "c-egress-pods-80-and-dns", {  # ipBlock with except, egress to DNS
            "podSelector": _sel(pod="c"), "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [except_cidr]}}],
                        "ports": [{"port": 80}]},
                       {"to": [DNS_PEER], "ports": DNS_PORTS}]}),
        _pol("z", "allow-ab-not-from-y", {  # matchExpressions, endPort range
            "podSelector": _expr("pod", "In", ["a", "b"]),
            "ingress": [{"from": [{"namespaceSelector": _expr("ns", "NotIn", ["y"])}],
                         "ports": [{"port": 80, "endPort": 81}]}]}),
    ]


def _templates(ns: str, team: str, rng: random.Random) -> dict[str, dict[str, Any]]:
    """Policies one application namespace may have, by name."""
    other = rng.choice([t for n, t, _ in NAMESPACES if n != ns and t != "observability"])
    return {
        "default-deny-ingress": {"podSelector": {}, "policyTypes": ["Ingress"]},
        "default-deny-egress": {"podSelector": {}, "policyTypes": ["Egress"]},
        "default-deny-all": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        "allow-dns-egress": {"podSelector": {}, "policyTypes": ["Egress"],
                             "egress": [{"to": [DNS_PEER], "ports": DNS_PORTS}]},
        "allow-frontend-to-api": {
            "podSelector": _sel(app="api"),
            "ingress": [{"from": [{"podSelector": _sel(app="frontend")}],
                         "ports": [{"port": "http"}]}]},
        "allow-api-to-db": {
            "podSelector": _sel(app="db"),
            "ingress": [{"from": [{"podSelector": _sel(app="api")}],
                         "ports": [{"port": 5432}]}]},
        "allow-to-cache": {
            "podSelector": _sel(app="cache"),
            "ingress": [{"from": [{"podSelector": _expr("app", "In", ["api", "worker"])}],
                         "ports": [{"port": "redis"}]}]},
        "allow-prometheus-scrape": {
            "podSelector": _expr("tier", "In", ["api", "backend", "data"]),
            "ingress": [{"from": [{"namespaceSelector": _sel(team="observability"),
                                   "podSelector": _sel(app="prometheus")}],
                         "ports": [{"port": "metrics"}]}]},
        "allow-web-from-outside": {
            "podSelector": _sel(tier="web"),
            "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                               "except": ["10.244.0.0/16", "169.254.0.0/16"]}}],
                         "ports": [{"port": 8080}]}]},
        "frontend-egress-to-api": {
            "podSelector": _sel(app="frontend"), "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": _sel(app="api")}], "ports": [{"port": "http"}]},
                       {"to": [DNS_PEER], "ports": DNS_PORTS}]},
        "api-egress-to-data": {
            "podSelector": _sel(app="api"), "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": _sel(app="db")}, {"podSelector": _sel(app="cache")}],
                        "ports": [{"port": 5432}, {"port": 6379}]}]},
        "allow-api-from-" + other: {
            "podSelector": _sel(app="api"),
            "ingress": [{"from": [{"namespaceSelector": _sel(team=other),
                                   "podSelector": _sel(tier="web")}],
                         "ports": [{"port": 8080}]}]},
        "allow-jobs-from-prod": {
            "podSelector": _sel(app="worker"),
            "ingress": [{"from": [{"namespaceSelector": _sel(env="prod")}],
                         "ports": [{"port": 9000, "endPort": 9100}]}]},
        "deny-db-egress": {"podSelector": _sel(app="db"), "policyTypes": ["Egress"],
                           "egress": []},
        "worker-egress-external": {
            "podSelector": _sel(app="worker"), "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"]}},
                               {"ipBlock": {"cidr": "192.0.2.0/24"}}],
                        "ports": [{"port": 443}]},
                       {"to": [DNS_PEER], "ports": DNS_PORTS}]},
        "allow-version-canary": {
            "podSelector": {"matchLabels": {"app": "api"},
                            "matchExpressions": [{"key": "version", "operator": "Exists"}]},
            "ingress": [{"from": [{"podSelector": _expr("team", "NotIn", ["data"])}],
                         "ports": [{"port": 9090}]}]},
    }


def policy_manifests(rng: random.Random, except_cidr: str, n: int = POLICIES
                     ) -> list[dict[str, Any]]:
    """`n` policies: the 6 on x/y/z, default deny ingress in every application namespace,
    frontend -> api in storefront (the relabel step needs it), the rest drawn at random."""
    docs = xyz_policies(except_cidr)
    pool: list[tuple[str, str, dict[str, Any]]] = []
    for ns, team, _ in NAMESPACES:
        for name, spec in _templates(ns, team, rng).items():
            if name == "default-deny-ingress" or (ns, name) == ("storefront",
                                                              "allow-frontend-to-api"):
                docs.append(_pol(ns, name, spec))
            else:
                pool.append((ns, name, spec))
    docs += [_pol(ns, name, spec) for ns, name, spec in rng.sample(pool, n - len(docs))]
    return docs


def describe(docs: list[dict[str, Any]]) -> str:
    """What the policy mix holds (counted from the manifests)."""
    text = [str(d["spec"]) for d in docs]
    has = {
        "ingress": sum("Ingress" in t or "'ingress'" in t for t in text),
        "egress": sum("Egress" in t or "'egress'" in t for t in text),
        "named ports": sum(any(f"'port': '{p}'" in t for p in
                               ("http", "redis", "metrics", "serve-80-tcp")) for t in text),
        "namespaceSelector": sum("namespaceSelector" in t for t in text),
        "ipBlock": sum("ipBlock" in t for t in text),
        "ipBlock+except": sum("except" in t for t in text),
        "matchExpressions": sum("matchExpressions" in t for t in text),
        "endPort": sum("endPort" in t for t in text),
        "to DNS": sum("kube-dns" in t for t in text),
    }
    return ", ".join(f"{k} {v}" for k, v in has.items())


@dataclass(frozen=True)
class Pair:
    src: netpol.PodRef
    dst: netpol.PodRef
    port: int
    want: bool  # the verdict after the change

    def __str__(self) -> str:
        return (f"{self.src.key} -> {self.dst.key}:{self.port} "
                f"{'allowed' if self.want else 'blocked'}")


def tcp_ports(p: netpol.PodRef) -> list[int]:
    return sorted({port for _, proto, port in p.ports if proto == "TCP"})


def pick_pairs(before: netpol.Engine, after: netpol.Engine, rng: random.Random,
               per_node: int = 2, budget: int = 30000) -> list[Pair]:
    """Pairs whose verdict the change flips (`per_node` per worker, same-node pairs first, so
    each pair tests one node's rules), plus per node one same-node pair allowed before and
    after (a control: a round in which it fails says nothing)."""
    pods = sorted((p for p in before.pods if p.namespace not in model.ADDON_NAMESPACES),
                  key=lambda p: p.key)
    nodes = sorted({p.node for p in pods})
    aft = {p.key: p for p in after.pods}
    cands = [(s, d, port) for s in pods for d in pods if s.key != d.key for port in tcp_ports(d)]
    rng.shuffle(cands)
    cands.sort(key=lambda c: c[0].node != c[1].node)  # stable: same-node first, shuffled
    changed: dict[str, list[Pair]] = {n: [] for n in nodes}
    control: dict[str, Pair] = {}
    for s, d, port in cands[:budget]:
        node = d.node if s.node != d.node else s.node
        if len(changed[node]) >= per_node and (node in control or s.node != d.node):
            continue
        was = before.allowed(s, d, port)
        now = after.allowed(aft[s.key], aft[d.key], port)
        if was != now and len(changed[node]) < per_node:
            changed[node].append(Pair(s, d, port, now))
        elif was and now and s.node == d.node and node not in control:
            control[node] = Pair(s, d, port, True)
        if all(len(v) >= per_node for v in changed.values()) and len(control) == len(nodes):
            break
    return [p for n in nodes for p in changed[n]] + [control[n] for n in nodes if n in control]


class Watcher:
    """Probes `pairs` in rounds, a new round every ROUND_EVERY_S (rounds overlap: one lasts up
    to POLL_TIMEOUT_S), until a round sees every pair with its new verdict."""

    def __init__(self, pairs: list[Pair], netns_of: dict[str, str]) -> None:
        self.pairs = pairs
        self.jobs = [(netns_of[p.src.key], p.dst.ip, p.port) for p in pairs]
        self.results: list[tuple[float, bool]] = []  # (round start from t0, all new verdicts)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def round(self) -> list[bool]:
        return cluster_mod.probe_many(self.jobs, "TCP", POLL_TIMEOUT_S)

    @property
    def rounds(self) -> int:
        return len(self.results)

    @property
    def hit(self) -> float | None:
        """Start of the first round in which every pair had its new verdict."""
        with self._lock:
            return min((t for t, ok in self.results if ok), default=None)

    @property
    def miss(self) -> float | None:
        """Start of the last round before `hit` that did not see every new verdict."""
        hit = self.hit
        with self._lock:
            return max((t for t, ok in self.results if not ok and (hit is None or t < hit)),
                       default=None)

    def start(self, t0: float) -> None:
        def one(ts: float) -> None:
            got = self.round()
            ok = all(g == p.want for p, g in zip(self.pairs, got, strict=True))
            with self._lock:
                self.results.append((ts - t0, ok))

        def loop() -> None:
            with ThreadPoolExecutor(int(POLL_TIMEOUT_S / ROUND_EVERY_S) + 2) as ex:
                while (not self._stop.is_set() and self.hit is None
                       and time.perf_counter() - t0 < WAIT_S):
                    ex.submit(one, time.perf_counter())
                    self._stop.wait(ROUND_EVERY_S)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            self._stop.set()
            self._thread.join()


# --- rule counts --------------------------------------------------------------------------------

def nft_rule_lines(text: str) -> int:
    """Rules in an nft table listing (or script): lines inside `chain … { }` other than the
    base chain's `type … hook …` line."""
    n, inside = 0, False
    for ln in text.splitlines():
        s = ln.strip()
        if s.startswith("chain "):
            inside = True
        elif s == "}":
            inside = False
        elif inside and s and not s.startswith("type "):
            n += 1
    return n


def expected_rules(engine: netpol.Engine, node: str, mode: str) -> int:
    """The `cali-` rules lab_kit's renderer makes for `node` (0 when no policy exists)."""
    if not engine.policies:
        return 0
    rules = netpol.node_rules(engine, node)
    if mode == "nftables":
        return nft_rule_lines(netpol.render_nft(rules))
    return sum(ln.startswith("-A cali-") for ln in netpol.render_iptables(rules).splitlines())


def kernel_rules(netns: str, mode: str) -> tuple[int, bool]:
    """(`cali-` rules in the node's kernel, the FORWARD hook is right): iptables: FORWARD's
    first rule jumps to cali-FORWARD, or with no rules no cali- chain is left; nftables: the
    table exists exactly when it has rules."""
    if mode == "nftables":
        p = subprocess.run(kernel.in_netns_argv(["nft", "list", "table", "ip", "calico"], netns),
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            return 0, True
        n = nft_rule_lines(p.stdout)
        return n, "hook forward" in p.stdout
    p = subprocess.run(kernel.in_netns_argv(["iptables-save", "-t", "filter"], netns),
                       capture_output=True, text=True, timeout=30, check=True)
    lines = p.stdout.splitlines()
    n = sum(ln.startswith("-A cali-") for ln in lines)
    fwd = [ln for ln in lines if ln.startswith("-A FORWARD")]
    chains = any(ln.startswith(":cali-") for ln in lines)
    hook = (bool(fwd) and fwd[0].endswith("-j cali-FORWARD")) if n else not chains
    return n, hook


# --- where the time goes --------------------------------------------------------------------

_tl = threading.local()


class Profile:
    """Seconds spent in some lab_kit functions and commands during one step (wrapped with
    timers for the step; no lab code is changed). Nested: `_sync_policies` holds
    `policy_engine`, `netpol.sync_node` (per node, in parallel) holds `node_rules`, the
    renderers and the policy commands."""

    WRAP: list[tuple[Any, str, str | None]] = [
        (model, "load_manifests", None), (cluster_mod, "_plan_apply", None),
        (Cluster, "_sync_services", None), (Cluster, "_sync_policies", None),
        (Cluster, "_sync_agnhost", None), (Cluster, "wait_dns_synced", None),
        (Cluster, "_publish_dns", None), (Cluster, "policy_engine", None),
        (Store, "save", None), (netpol, "node_rules", None),
        (netpol, "render_iptables", None), (netpol, "render_iptables_removal", None),
        (netpol, "render_nft", None), (netpol, "render_nft_removal", None),
        (netpol, "sync_node", "policy"), (kubeproxy, "sync_node", "kube-proxy")]

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.per_ns: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def add(self, what: str, dt: float, netns: str | None = None) -> None:
        with self._lock:
            self.calls[what] = self.calls.get(what, 0) + 1
            self.seconds[what] = self.seconds.get(what, 0.0) + dt
            if netns:
                self.per_ns[(what, netns)] = self.per_ns.get((what, netns), 0.0) + dt

    def get(self, what: str) -> float:
        return self.seconds.get(what, 0.0)

    def node_max(self, what: str) -> float:
        return max((v for (w, _), v in self.per_ns.items() if w == what), default=0.0)

    @contextlib.contextmanager
    def on(self, c: Cluster) -> Iterator[Profile]:
        saved = []
        for obj, attr, phase in self.WRAP:
            orig = getattr(obj, attr)
            saved.append((obj, attr, orig))
            setattr(obj, attr, self._wrap(orig, attr, phase))
        inner = c.runner
        c.runner = _ProfRunner(inner, self)
        try:
            yield self
        finally:
            c.runner = inner
            for obj, attr, orig in reversed(saved):
                setattr(obj, attr, orig)

    def _wrap(self, fn: Callable[..., Any], what: str, phase: str | None) -> Callable[..., Any]:
        label = f"{phase} sync_node" if phase else what

        def timed(*a: Any, **kw: Any) -> Any:
            prev = getattr(_tl, "phase", None)
            if phase:
                _tl.phase = phase
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                netns = a[3] if phase and len(a) > 3 else None
                self.add(label, time.perf_counter() - t0, netns)
                _tl.phase = prev
        return timed


class _ProfRunner(kernel.Runner):
    def __init__(self, inner: kernel.Runner, prof: Profile) -> None:
        super().__init__(inner.journal, inner.source)
        self.prof = prof

    def run(self, argv: Any, netns: str | None = None, **kw: Any) -> kernel.Completed:
        t0 = time.perf_counter()
        try:
            return super().run(argv, netns, **kw)
        finally:
            what = str(argv[0])
            if what == "nft":
                what = "nft -f" if "-f" in argv else "nft list"
            phase = getattr(_tl, "phase", None) or "other"
            self.prof.add(f"{phase}: {what}", time.perf_counter() - t0, netns)


# --- one step ---------------------------------------------------------------------------------

@dataclass
class Step:
    label: str
    mode: str
    short: str = ""  # column heading in the time table
    apply_s: float = 0.0
    probes_s: float | None = None  # first round that saw every new verdict (its start)
    probes_before_s: float | None = None  # the round before it (not all in force yet)
    rounds: int = 0
    pairs: list[Pair] = field(default_factory=list)
    counts_s: float | None = None  # rule counts equal the renderer's on every node
    counts: dict[str, tuple[int, int, bool]] = field(default_factory=dict)  # kernel, want, hook
    precheck: list[str] = field(default_factory=list)
    profile: Profile = field(default_factory=Profile)
    messages: int = 0
    error: str | None = None  # the action raised (the apply was rolled back)

    @property
    def verified_s(self) -> float | None:
        if self.error or self.counts_s is None or (self.pairs and self.probes_s is None):
            return None
        return max(self.counts_s, self.probes_s or 0.0)


def run_step(c: Cluster, label: str, short: str, action: Callable[[], list[str]],
             change: Callable[[netpol.Engine], netpol.Engine], rng: random.Random) -> Step:
    """Time `action` (an apply or delete) and verify it: `change` turns the engine over the
    cluster's objects now into the engine the action should lead to. A failing action is
    recorded in the step (`error`), and the cluster's own rollback leaves the old rules."""
    mode = c.config.kube_proxy_mode
    st = Step(label, mode, short)
    before = c.policy_engine()
    after = change(before)
    nodes = [n.name for n in c.nodes()]
    want = {n: expected_rules(after, n, mode) for n in nodes}
    st.pairs = pick_pairs(before, after, rng)
    w = Watcher(st.pairs, {p.key: p.netns for p in c.pods(include_system=True)})
    # before: every pair still has its old verdict (and its server answers)
    deadline = time.monotonic() + 5
    while True:
        got = w.round()
        old = [p for p, g in zip(st.pairs, got, strict=True)
               if g != before.allowed(p.src, p.dst, p.port)]
        if not old or time.monotonic() > deadline:
            st.precheck = [str(p) for p in old]
            break
        time.sleep(0.1)
    settle(timeout=10)
    with st.profile.on(c):
        t0 = time.perf_counter()
        w.start(t0)
        try:
            st.messages = len(action())
        except Exception as e:  # noqa: BLE001 - reported in the table; the next steps go on
            st.error = f"{type(e).__name__}: {e}".strip()
        st.apply_s = time.perf_counter() - t0
    if st.error:
        w.join(timeout=0)
        return st
    while time.perf_counter() - t0 < st.apply_s + WAIT_S:
        with ThreadPoolExecutor(len(nodes)) as ex:
            got_counts = dict(zip(nodes, ex.map(
                lambda n: kernel_rules(naming.node_netns(n), mode), nodes), strict=True))
        st.counts = {n: (got_counts[n][0], want[n], got_counts[n][1]) for n in nodes}
        if all(k == v and hook for k, v, hook in st.counts.values()):
            st.counts_s = time.perf_counter() - t0
            break
        time.sleep(0.05)
    w.join(timeout=max(0.0, t0 + st.apply_s + WAIT_S - time.perf_counter()))
    st.probes_s, st.probes_before_s, st.rounds = w.hit, w.miss, w.rounds
    # what the cluster itself now renders must be what was predicted
    real = c.policy_engine()
    for n in nodes:
        if expected_rules(real, n, mode) != want[n]:
            st.precheck.append(f"{n}: the cluster's objects render {expected_rules(real, n, mode)}"
                               f" rules, the prediction {want[n]}")
    return st


def engine_with(e: netpol.Engine, policies: list[netpol.NetworkPolicy] | None = None,
                relabel: dict[str, dict[str, str]] | None = None) -> netpol.Engine:
    pods = [dataclasses.replace(p, labels=relabel[p.key]) if relabel and p.key in relabel else p
            for p in e.pods]
    return netpol.Engine(e.policies if policies is None else policies, pods, e.namespaces)


def parse(docs: list[dict[str, Any]]) -> list[netpol.NetworkPolicy]:
    return [o for o, _ in model.load_manifests(docs) if isinstance(o, netpol.NetworkPolicy)]


# --- one cluster ------------------------------------------------------------------------------

@dataclass
class ModeResult:
    mode: str
    up_s: float = 0.0
    pods_s: float = 0.0
    pods_per_node: dict[str, int] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    baseline_s: float = 0.0  # 9x9 on port 80 with no policy
    matrices: list[Any] = field(default_factory=list)  # Reachability, ports 80 and 81
    matrix_wall: list[float] = field(default_factory=list)  # incl. the engine's table
    mix: str = ""
    chains: dict[str, tuple[int, int]] = field(default_factory=dict)  # pod, policy chains


def run_mode(mode: str, seed: int, root: Path) -> ModeResult:
    res = ModeResult(mode)
    rng = random.Random(seed)
    c: Cluster | None = None
    try:
        t0 = time.perf_counter()
        c = Cluster.up(make_config(mode), root=root, replace=True)
        res.up_s = time.perf_counter() - t0
        settle(timeout=10)
        t0 = time.perf_counter()
        c.apply(str(XYZ))
        apps = app_manifests(rng)
        c.apply(apps)
        res.pods_s = time.perf_counter() - t0
        pods = c.pods()
        for p in pods:
            res.pods_per_node[p.node] = res.pods_per_node.get(p.node, 0) + 1
        spread = ", ".join(f"{n} {k}" for n, k in sorted(res.pods_per_node.items()))
        say(f"[{mode}] cluster up in {res.up_s:.2f} s; {len(pods)} pods in "
            f"{res.pods_s:.2f} s ({spread})")
        by_key = {p.key: p for p in pods}
        except_node = by_key["z/b"].node
        except_cidr = next(n.pod_cidr for n in c.nodes() if n.name == except_node)
        docs = policy_manifests(rng, except_cidr)
        res.mix = describe(docs)
        policies = parse(docs)
        settle(timeout=10)
        res.baseline_s = c.reachability(80, "TCP", pods=XYZ_KEYS, timeout=1.0).seconds

        say(f"[{mode}] applying {len(docs)} policies …")
        res.steps.append(run_step(c, f"apply {len(docs)} policies", f"{len(docs)} policies",
                                  lambda: c.apply(docs), lambda e: engine_with(e, policies), rng))
        for n in (n.name for n in c.nodes()):
            r = netpol.node_rules(c.policy_engine(), n)
            res.chains[n] = (len(r.pod_chains), len(r.policy_chains))

        for port in (80, 81):
            settle(timeout=10)
            t0 = time.perf_counter()
            r = c.reachability(port, "TCP", pods=XYZ_KEYS, timeout=1.0)
            res.matrix_wall.append(time.perf_counter() - t0)
            res.matrices.append(r)

        say(f"[{mode}] editing {EDITED}, relabelling {RELABELLED}, deleting {DELETED}, "
            "then the others …")
        ns, name = EDITED.split("/")
        edited = next(d for d in docs if d["metadata"] == {"name": name, "namespace": ns})
        edited = {**edited, "spec": {**edited["spec"], "ingress": [
            {**edited["spec"]["ingress"][0], "ports": [{"port": "serve-81-tcp"}]}]}}
        res.steps.append(run_step(
            c, "edit 1 policy", "edit 1", lambda: c.apply([edited]),
            lambda e: engine_with(e, [p for p in e.policies if p.key != EDITED]
                                  + parse([edited])), rng))

        ns, name = RELABELLED.split("/")
        pod_doc = next(d for d in apps if d["kind"] == "Pod"
                       and d["metadata"]["name"] == name and d["metadata"]["namespace"] == ns)
        labels = {**pod_doc["metadata"]["labels"], "app": "api-canary"}
        pod_doc = {**pod_doc, "metadata": {**pod_doc["metadata"], "labels": labels}}
        res.steps.append(run_step(c, "relabel 1 pod", "relabel 1", lambda: c.apply([pod_doc]),
                                  lambda e: engine_with(e, relabel={RELABELLED: labels}), rng))

        ns, name = DELETED.split("/")
        gone = [d for d in docs if d["metadata"] == {"name": name, "namespace": ns}]
        res.steps.append(run_step(
            c, "delete 1 policy", "delete 1", lambda: c.delete(gone),
            lambda e: engine_with(e, [p for p in e.policies if p.key != DELETED]), rng))

        rest = [d for d in docs if d not in gone]
        res.steps.append(run_step(c, f"delete the other {len(rest)}",
                                  f"delete {len(rest)}", lambda: c.delete(rest),
                                  lambda e: engine_with(e, []), rng))
    finally:
        if c is not None:
            c.down()
    return res


# --- output -----------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt(s: float | None) -> str:
    return f"{s:.2f}" if s is not None else "—"


def report(res: ModeResult) -> bool:
    """Print one mode's table; True when every figure is within target."""
    all_ok = True
    say(f"\n== {res.mode} mode: 4 nodes (control-plane + 3 workers, VXLAN), "
        f"{sum(res.pods_per_node.values())} pods ==")
    say(f"policy mix: {res.mix}")
    say(f"{'step':<40} {'seconds':>8} {'target':>7} {'ratio':>6}  result")
    for st in res.steps:
        if st.error:
            all_ok = False
            say(f"{st.label + ': raised':<40} {st.apply_s:>8.2f} {TARGET_CONVERGE_S:>6.1f}s "
                f"{'—':>6}  FAIL  (an error, not a time: see below; rolled back)")
            continue
        rows = [(f"{st.label}: apply returned", st.apply_s),
                (f"{st.label}: verified, all nodes", st.verified_s)]
        for lab, s in rows:
            ok = s is not None and s <= TARGET_CONVERGE_S
            all_ok &= ok
            ratio = f"{s / TARGET_CONVERGE_S:.2f}" if s is not None else "—"
            say(f"{lab:<40} {fmt(s):>8} {TARGET_CONVERGE_S:>6.1f}s {ratio:>6}  {verdict(ok)}")
    say(f"{'9x9 TCP 80, no policy (baseline)':<40} {res.baseline_s:>8.2f} {'—':>7} {'—':>6}  —")
    for r in res.matrices:
        ok = r.seconds <= TARGET_MATRIX_S and r.agrees
        all_ok &= ok
        blocked = sum(not v for row in r.measured.values() for v in row.values())
        lab = f"9x9 TCP {r.port}, 100 policies"
        say(f"{lab:<40} {r.seconds:>8.2f} {TARGET_MATRIX_S:>6.1f}s "
            f"{r.seconds / TARGET_MATRIX_S:>6.2f}  {verdict(ok)}  ({blocked} of 81 blocked; "
            f"{'agrees with the engine' if r.agrees else f'{len(r.mismatches())} MISMATCHES'})")
    if len(res.matrices) == 2:
        tot = sum(r.seconds for r in res.matrices)
        say(f"{'9x9x2 ports, whole run':<40} {tot:>8.2f} {2 * TARGET_MATRIX_S:>6.1f}s "
            f"{tot / (2 * TARGET_MATRIX_S):>6.2f}  {verdict(tot <= 2 * TARGET_MATRIX_S)}  "
            f"(with the engine's tables: {sum(res.matrix_wall):.2f} s)")
    say("ratio = measured / target (below 1.00 is within target)")

    say("\nverification per step (seconds from the start of the apply/delete):")
    for st in res.steps:
        changed = [p for p in st.pairs if p is not None]
        if st.error:
            lines = st.error.splitlines()
            more = f" … ({len(lines) - 4} more lines)" if len(lines) > 4 else ""
            say(f"  {st.label}: FAILED after {st.apply_s:.2f} s: " + "\n      ".join(lines[:4])
                + more)
            continue
        say(f"  {st.label}: probes saw every new verdict in the round started at "
            f"{fmt(st.probes_s)} s (the round before, at {fmt(st.probes_before_s)} s, had not; "
            f"{st.rounds} rounds of {len(changed)} pairs, {POLL_TIMEOUT_S:g} s timeout); "
            f"rule counts equal on every node at {fmt(st.counts_s)} s")
        if st.precheck:
            say(f"    NOTE: {'; '.join(st.precheck)}")
    say("  pairs (new verdict) of the 100-policy step: "
        + "; ".join(str(p) for p in res.steps[0].pairs))

    say("\nrules per node after the 100 policies (kernel = lab_kit's renderer):")
    first = res.steps[0]
    say(f"  {'node':<22} {'pods':>5} {'pod chains':>10} {'policy chains':>13} "
        f"{'cali- rules':>11}")
    for n, (k, want, hook) in sorted(first.counts.items()):
        pc, pol = res.chains.get(n, (0, 0))
        node_short = n
        say(f"  {node_short:<22} {res.pods_per_node.get(n, 0):>5} {pc:>10} {pol:>13} "
            f"{k:>6} / {want:<5}{'' if hook else ' FORWARD hook wrong'}")

    say("\nwhere the time goes, in ms (wrapped with timers; 'thread' rows sum the nodes' "
        "parallel threads, so they can exceed the wall time):")
    load_cmd = "nft -f" if res.mode == "nftables" else "iptables-restore"
    read_cmds = ("policy: nft list", "policy: iptables")
    top = [("validate (model.load_manifests)", lambda p: p.get("load_manifests")),
           ("plan (_plan_apply)", lambda p: p.get("_plan_apply")),
           ("kube-proxy sync, all nodes (wall)", lambda p: p.get("_sync_services")),
           ("policy sync, all nodes (wall)", lambda p: p.get("_sync_policies")),
           ("agnhost sync (_sync_agnhost)", lambda p: p.get("_sync_agnhost")),
           ("cluster DNS wait (wait_dns_synced)", lambda p: p.get("wait_dns_synced")),
           ("state save (Store.save)", lambda p: p.get("save"))]
    inner = [
        ("  policy: engine (policy_engine)", lambda p: p.get("policy_engine")),
        ("  policy: node_rules (thread)", lambda p: p.get("node_rules")),
        ("  policy: render text (thread)", lambda p: sum(p.get(f) for f in (
            "render_iptables", "render_iptables_removal", "render_nft", "render_nft_removal"))),
        ("  policy: read chains/FORWARD (thread)", lambda p: sum(p.get(c) for c in read_cmds)),
        (f"  policy: {load_cmd} (thread)", lambda p: p.get(f"policy: {load_cmd}")),
        (f"  policy: {load_cmd}, slowest node", lambda p: p.node_max(f"policy: {load_cmd}")),
        ("  kube-proxy: DNS publish (in its sync)", lambda p: p.get("_publish_dns")),
        ("  kube-proxy: loads+reads (thread)", lambda p: sum(
            v for k, v in p.seconds.items() if k.startswith("kube-proxy: ")))]
    steps = res.steps
    say(f"  {'':<40}" + "".join(f" {st.short:>12}" for st in steps))
    say(f"  {'apply/delete, wall':<40}" + "".join(f" {st.apply_s * 1e3:>12.0f}" for st in steps))
    for lab, fn in top[:4] + inner + top[4:]:
        say(f"  {lab:<40}" + "".join(f" {fn(st.profile) * 1e3:>12.1f}" for st in steps))
    say(f"  {'rest (apply wall - the top-level rows)':<40}" + "".join(
        f" {(st.apply_s - sum(fn(st.profile) for _, fn in top)) * 1e3:>12.0f}" for st in steps))
    return all_ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="iptables,nftables",
                    help="kube-proxy modes to run, in order (default iptables,nftables)")
    ap.add_argument("--seed", type=int, default=6, help="seed of the policy mix (default 6)")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="lab_kit-bench-netpol-"))
    results: list[ModeResult] = []
    broke: str | None = None
    try:
        for mode in modes:
            settle(timeout=20)
            results.append(run_mode(mode, args.seed, root))
    except Exception as e:  # noqa: BLE001 - print what broke; the clusters are already down
        import traceback
        traceback.print_exc()
        broke = f"{type(e).__name__}: {e}"
    left = [ns for ns in kernel.list_netns() if naming.owns_netns(NAME, ns)]
    shutil.rmtree(root, ignore_errors=True)
    ok = True
    for res in results:
        ok &= report(res)
    if broke:
        say(f"\nBROKE: {broke}")
    say(f"\n{'every step within target' if ok and not broke else 'some step MISSED or FAILED'}; "
        f"whole run {time.perf_counter() - t_start:.0f} s"
        + (f"; LEFT BEHIND: {left}" if left else "; nothing left behind"))
    return 1 if broke else 0


if __name__ == "__main__":
    sys.exit(main())
