"""kube-proxy at scale: rule-sync time and new-connection latency against the number of Services.

    from lab_kit import proxyscale
    proxyscale.prepare(c)                      # 3 backend pods + a client pod
    results = proxyscale.measure([ipt, nft])   # 10 … 5,000 Services, both modes
    results                                    # a table in a notebook
    results.chart()                            # sync time and connect latency against N

Every Service of the measurement selects the same three backend pods (a Deployment with 3
replicas), so N Services have 3·N endpoints and need only 3 pods. For each size, `measure`:

1. grows the cluster to N Services (`apply` of the missing ones, as `kubectl apply` would);
2. times one **full sync**: the endpoint controller, then kube-proxy on every node in parallel
   (read the current rules, render, load them in one transaction), then the load balancer's
   routes. This is the code path every `apply` runs (`Cluster.sync_services`);
3. counts the rules kube-proxy has on the client's node, from the live kernel
   (`iptables-save`, `nft -j list table ip kube-proxy`);
4. opens fresh TCP connections from the client pod to the LAST Service's ClusterIP and times
   each handshake. Only a connection's first packet walks kube-proxy's NAT rules: in iptables
   mode `KUBE-SERVICES` is a list tried one rule after another (the last Service's rule is the
   N-th); in nftables mode one lookup in the `service-ips` verdict map finds it.

`LAB_KIT_SCALE_MAX` caps the largest size (the tests set it to 500): :func:`scale_sizes` drops
every size above it.
"""

from __future__ import annotations

import contextlib
import gc
import html
import json
import math
import os
import re
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lab_kit import kernel, kubeproxy, naming
from lab_kit.errors import LabError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lab_kit.cluster import Cluster, Table

Progress = Callable[[str], None]

SIZES: tuple[int, ...] = (10, 50, 100, 500, 1000, 2000, 5000)
MAX_ENV = "LAB_KIT_SCALE_MAX"
NAMESPACE = "default"
SERVICE_PREFIX = "svc-"
BACKEND = "backend"  # the Deployment every Service selects
BACKEND_LABELS = {"app": "scale-backend"}
BACKEND_REPLICAS = 3
CLIENT = "client"  # the pod the connections start from
SERVICE_PORT = 80
TARGET_PORT = 8080
IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.45"
CONNECTIONS = 200  # fresh TCP connections per size and mode
WARMUP = 20  # connections before those (ARP, caches), not counted
SYNC_TIMEOUT_S = 900.0  # a full sync of thousands of Services can take minutes
MODES = ("iptables", "nftables")
COLOURS = {"iptables": "#cf222e", "nftables": "#0969da"}
LABELS = {"iptables": "iptables mode", "nftables": "nftables mode"}
# the executables of a node's sync: reading what is there, loading the new rules
READ_CMDS = {"iptables", "iptables-save", "nft-list"}
LOAD_CMDS = {"iptables-restore", "nft-load"}


def _quiet(_: str) -> None:
    pass


# --- sizes and manifests (pure) ------------------------------------------------------------------

def scale_max(environ: dict[str, str] | None = None) -> int | None:
    """The cap `LAB_KIT_SCALE_MAX` sets on the number of Services (None: no cap).

    Raises LabError when it is set to something other than a positive whole number.
    """
    raw = (os.environ if environ is None else environ).get(MAX_ENV, "").strip()
    if not raw:
        return None
    try:
        cap = int(raw.replace(",", "").replace("_", ""))
    except ValueError:
        cap = 0
    if cap < 1:
        raise LabError(f"{MAX_ENV}={raw!r} is not a positive whole number — unset it, or set "
                       f"it to the largest number of Services to measure, e.g. {MAX_ENV}=500")
    return cap


def scale_sizes(wanted: Sequence[int] = SIZES, cap: int | None = None,
          environ: dict[str, str] | None = None) -> tuple[int, ...]:
    """`wanted`, sorted, without duplicates, and without the sizes above the cap.

    The cap is `cap`, or else `LAB_KIT_SCALE_MAX` from the environment. A cap between two sizes
    becomes the largest size itself, so the curve always reaches it.
    """
    limit = cap if cap is not None else scale_max(environ)
    out = sorted({int(n) for n in wanted if int(n) > 0})
    if limit is not None:
        if out and limit < out[-1] and limit not in out:
            out.append(limit)
        out = sorted(n for n in out if n <= limit)
    return tuple(out)


def service_name(i: int) -> str:
    """The name of the i-th Service (from 0): `svc-00000`, `svc-00001`, …

    Zero-padded, so the order kube-proxy sorts Services in (`namespace/name`) is the order they
    were created in: the last one created is the last in `KUBE-SERVICES`.
    """
    return f"{SERVICE_PREFIX}{i:05d}"


def service_index(name: str) -> int | None:
    """`svc-00042` -> 42; None for a name this module does not make."""
    m = re.fullmatch(rf"{SERVICE_PREFIX}(\d{{5}})", name)
    return int(m.group(1)) if m else None


def manifests(start: int, stop: int | None = None) -> list[dict[str, Any]]:
    """Service manifests (as dicts for `Cluster.apply`) number `start` … `stop - 1`.

    With one argument: the first `start` Services. Each is a ClusterIP Service, TCP port 80 →
    the backends' port `http` (8080), selecting the backend Deployment's pods.
    """
    lo, hi = (0, start) if stop is None else (start, stop)
    return [{"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": service_name(i), "namespace": NAMESPACE},
             "spec": {"selector": dict(BACKEND_LABELS),
                      "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http",
                                 "protocol": "TCP"}]}}
            for i in range(lo, hi)]


def workload(node: str | None = None) -> list[dict[str, Any]]:
    """The pods every Service's endpoints point at, and the client: a Deployment `backend` with
    3 replicas serving HTTP on 8080, and a Pod `client`, all on node `node` when it is given.

    On one node, every connection stays on that node's bridge whatever backend kube-proxy
    picks, so the connections differ only in the rules their first packet walks.
    """
    container = {"name": "agnhost", "image": IMAGE,
                 "args": ["netexec", f"--http-port={TARGET_PORT}"],
                 "ports": [{"name": "http", "containerPort": TARGET_PORT, "protocol": "TCP"}]}
    pod_spec: dict[str, Any] = {"containers": [container]}
    if node is not None:
        pod_spec["nodeName"] = node
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": BACKEND, "namespace": NAMESPACE},
         "spec": {"replicas": BACKEND_REPLICAS, "selector": {"matchLabels": dict(BACKEND_LABELS)},
                  "template": {"metadata": {"labels": dict(BACKEND_LABELS)}, "spec": pod_spec}}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": CLIENT, "namespace": NAMESPACE, "labels": {"app": CLIENT}},
         "spec": dict(pod_spec)},
    ]


# --- reading the live kernel ---------------------------------------------------------------------

@dataclass(frozen=True)
class RuleCount:
    """What kube-proxy has programmed on one node, read from the live kernel.

    `rules`: every rule of the mode on the node: the `-A` lines of `iptables-save` (all
    tables), or the rules of table `ip kube-proxy`. `dispatch`: the entries the first packet of
    a new connection is matched against to find its Service: the rules of the nat table's
    `KUBE-SERVICES` chain (tried in order), or the elements of the `service-ips` verdict map
    (one hash lookup).
    """
    mode: str
    node: str
    rules: int
    dispatch: int
    chains: int  # chains (iptables: in every table) / chains of table ip kube-proxy


def parse_iptables_counts(saved: str) -> tuple[int, int, int]:
    """(rules, rules of nat KUBE-SERVICES, chains) in `iptables-save` output."""
    rules = dispatch = chains = 0
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            chains += 1
        elif line.startswith("-A "):
            rules += 1
            if table == "nat" and line.split(None, 2)[1] == "KUBE-SERVICES":
                dispatch += 1
    return rules, dispatch, chains


def nft_items(listing: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The objects of one kind (`rule`, `chain`, `map`, …) in `nft -j list …` output."""
    return [item[kind] for item in listing.get("nftables", []) if kind in item]


def parse_nft_counts(listing: dict[str, Any]) -> tuple[int, int, int]:
    """(rules, elements of map service-ips, chains) in `nft -j list table ip kube-proxy`."""
    maps = {m.get("name"): m for m in nft_items(listing, "map")}
    elements = maps.get("service-ips", {}).get("elem", [])
    return len(nft_items(listing, "rule")), len(elements), len(nft_items(listing, "chain"))


@dataclass(frozen=True)
class DispatchRule:
    """One rule of the nat table's `KUBE-SERVICES` chain, as `iptables-save` prints it."""
    position: int  # 1-based, as `iptables -t nat -L KUBE-SERVICES --line-numbers` numbers it
    service: str  # `namespace/name` of the Service it dispatches ('' for another rule)
    cluster_ip: str  # its `-d` address without /32 ('' for none)
    port: int | None  # its `--dport`
    target: str  # its `-j` (KUBE-SVC-…, KUBE-NODEPORTS)
    comment: str


def _spn_service(spn: str) -> str:
    """`default/svc-00001:http` -> `default/svc-00001` (a service port name's Service)."""
    return spn.split(":", 1)[0] if "/" in spn else ""


def _rules(saved: str) -> list[kubeproxy.IptRule]:
    return [r for chains in kubeproxy.parse_iptables_rules(saved).values()
            for rules in chains.values() for r in rules]


def kube_services(saved: str) -> list[DispatchRule]:
    """The rules of nat `KUBE-SERVICES` in `iptables-save` output, in the order the kernel
    tries them."""
    rules = kubeproxy.parse_iptables_rules(saved).get("nat", {}).get("KUBE-SERVICES", [])
    return [DispatchRule(i, _spn_service(r.comment.split(" ", 1)[0])
                         if r.comment.endswith(" cluster IP") else "",
                         (r.opt("-d") or "").split("/")[0], r.dport, r.target or "", r.comment)
            for i, r in enumerate(rules, 1)]


def iptables_rules_by_service(saved: str) -> dict[str, int]:
    """How many rules (`-A` lines, every table) exist for each Service (`namespace/name`):
    kube-proxy's comment on each rule starts with the service port name."""
    out: dict[str, int] = {}
    for r in _rules(saved):
        service = _spn_service(r.comment.split(" ", 1)[0])
        if service:
            out[service] = out.get(service, 0) + 1
    return out


def iptables_endpoints_by_service(saved: str) -> dict[str, int]:
    """How many endpoint chains (`KUBE-SEP-…` with a DNAT rule) each Service has."""
    seps: dict[str, set[str]] = {}
    for r in _rules(saved):
        if r.chain.startswith("KUBE-SEP-") and r.target == "DNAT":
            service = _spn_service(r.comment.split(" ", 1)[0])
            if service:
                seps.setdefault(service, set()).add(r.chain)
    return {k: len(v) for k, v in seps.items()}


@dataclass(frozen=True)
class MapElement:
    """One element of an nftables verdict map keyed `ip . proto . port` (`service-ips`)."""
    ip: str
    proto: str
    port: int | None
    verdict: str  # goto, jump, drop, …
    target: str  # the chain of a goto/jump ('' for none)

    def text(self) -> str:
        key = f"{self.ip} . {self.proto} . {self.port}"
        return f"{key} : {self.verdict}" + (f" {self.target}" if self.target else "")


def map_elements(listing: dict[str, Any], name: str = "service-ips") -> list[MapElement]:
    """The elements of verdict map `name` in `nft -j list …` output (a table or the map)."""
    out: list[MapElement] = []
    for m in nft_items(listing, "map"):
        if m.get("name") != name:
            continue
        for elem in m.get("elem", []):
            if not isinstance(elem, list) or len(elem) != 2:
                continue
            key, verdict = elem
            parts = key.get("concat", []) if isinstance(key, dict) else [key]
            ip, proto, port = (list(parts) + ["", "", None])[:3]
            kind = next(iter(verdict), "") if isinstance(verdict, dict) else str(verdict)
            body = verdict.get(kind) if isinstance(verdict, dict) else None
            target = body.get("target", "") if isinstance(body, dict) else ""
            out.append(MapElement(str(ip), str(proto), int(port) if isinstance(port, int)
                                  else None, kind, target))
    return out


NFT_CHAIN_RE = re.compile(r"^(?P<kind>service|local|external|endpoint)-[A-Z2-7]{8}-"
                          r"(?P<ns>[^/]+)/(?P<svc>[^/]+)/")


def chain_service(chain: str) -> tuple[str, str] | None:
    """(kind, `namespace/name`) of an nftables-mode per-service chain, e.g.
    `service-YCMZ66QZ-default/svc-00000/tcp/http` -> ('service', 'default/svc-00000')."""
    m = NFT_CHAIN_RE.match(chain)
    return (m["kind"], f"{m['ns']}/{m['svc']}") if m else None


def nft_rules_by_service(listing: dict[str, Any]) -> dict[str, int]:
    """How many rules each Service's own chains (service-…, endpoint-…, …) hold."""
    out: dict[str, int] = {}
    for rule in nft_items(listing, "rule"):
        owner = chain_service(str(rule.get("chain", "")))
        if owner:
            out[owner[1]] = out.get(owner[1], 0) + 1
    return out


def nft_endpoints_by_service(listing: dict[str, Any]) -> dict[str, int]:
    """How many `endpoint-…` chains each Service has."""
    out: dict[str, int] = {}
    for chain in nft_items(listing, "chain"):
        owner = chain_service(str(chain.get("name", "")))
        if owner and owner[0] == "endpoint":
            out[owner[1]] = out.get(owner[1], 0) + 1
    return out


def read_iptables(netns: str) -> str:
    """`iptables-save` in `netns` (every table), read without journaling."""
    return kernel.Runner().run(["iptables-save"], netns, record=False,
                               timeout=SYNC_TIMEOUT_S).stdout


def read_nft(netns: str) -> dict[str, Any]:
    """`nft -j list table ip kube-proxy` in `netns`, parsed ({} when there is no such table)."""
    done = kernel.Runner().run(["nft", "-j", "list", "table", "ip", "kube-proxy"], netns,
                               check=False, record=False, timeout=SYNC_TIMEOUT_S)
    if done.rc != 0 or not done.stdout.strip():
        return {}
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        return {}


def count_rules(mode: str, node: str) -> RuleCount:
    """Count what kube-proxy programmed on node `node` (a node name) in `mode`, live."""
    netns = naming.node_netns(node)
    if mode == "iptables":
        rules, dispatch, chains = parse_iptables_counts(read_iptables(netns))
    elif mode == "nftables":
        rules, dispatch, chains = parse_nft_counts(read_nft(netns))
    else:
        raise LabError(f"kube-proxy mode {mode!r}: use one of {', '.join(MODES)}")
    return RuleCount(mode, node, rules, dispatch, chains)


# --- new-connection latency ----------------------------------------------------------------------

@dataclass(frozen=True)
class Latency:
    """Handshake times of fresh TCP connections to one destination, in microseconds."""
    target: str  # "ip:port"
    samples_us: tuple[float, ...]  # sorted

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples_us) if self.samples_us else math.nan

    @property
    def p99_us(self) -> float:
        return percentile(self.samples_us, 99)

    def __str__(self) -> str:
        return (f"{len(self.samples_us)} connections to {self.target}: median "
                f"{self.median_us:.0f} µs, p99 {self.p99_us:.0f} µs")


def percentile(values: Sequence[float], pct: float) -> float:
    """The `pct`-th percentile (nearest rank) of `values`; NaN for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


_LINGER_RST = struct.pack("ii", 1, 0)  # close() sends a RST: no TIME_WAIT left in the pod


def connect_once(netns: str, ip: str, port: int, timeout: float = 2.0) -> float:
    """Seconds one fresh TCP connection from `netns` to `ip:port` takes to be established
    (connect(): from the SYN sent to the SYN-ACK received). Closed with a RST right away.

    Every connection is new (a new source port), so its first packet goes through the NAT
    rules, as every new connection's does.
    """
    s = kernel.socket_in(netns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        t0 = time.perf_counter()
        s.connect((ip, port))
        return time.perf_counter() - t0
    except OSError as e:
        raise LabError(f"a new TCP connection from `{netns}` to {ip}:{port} failed: "
                       f"{e.strerror or e} — is the Service there and are its pods running? "
                       "(c.get_services(), c.get_pods())") from None
    finally:
        s.close()


Target = tuple[str, str, int]  # (netns, ip, port)


def latencies(targets: dict[str, Target], count: int = CONNECTIONS, rounds: int = 10,
              warmup: int = WARMUP) -> dict[str, Latency]:
    """Time `count` fresh connections to each target, interleaved: `rounds` rounds in which
    each target gets `count / rounds` connections in turn, after `warmup` uncounted ones each.

    Interleaving spreads whatever else the machine does over every target alike, so the
    targets can be compared with each other even on a busy machine.
    """
    per_round = max(1, math.ceil(count / max(1, rounds)))
    samples: dict[str, list[float]] = {key: [] for key in targets}
    was_enabled = gc.isenabled()
    gc.disable()  # a garbage collection in the middle of a handshake is not the kernel's time
    try:
        for netns, ip, port in targets.values():
            for _ in range(warmup):
                connect_once(netns, ip, port)
        while any(len(v) < count for v in samples.values()):
            for key, (netns, ip, port) in targets.items():
                for _ in range(min(per_round, count - len(samples[key]))):
                    samples[key].append(connect_once(netns, ip, port) * 1e6)
    finally:
        if was_enabled:
            gc.enable()
    return {key: Latency(f"{ip}:{port}", tuple(sorted(samples[key])))
            for key, (_netns, ip, port) in targets.items()}


def connect_latency(netns: str, ip: str, port: int, count: int = CONNECTIONS,
                    warmup: int = WARMUP) -> Latency:
    """Time `count` fresh TCP connections from `netns` to `ip:port` (after `warmup` more)."""
    return latencies({"t": (netns, ip, port)}, count, rounds=1, warmup=warmup)["t"]


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return vals[3] + vals[4], sum(vals)  # idle + iowait, total


def settle(timeout: float = 3.0, min_idle: float = 0.85, window: float = 0.2) -> float:
    """Wait (at most `timeout` seconds) until the CPUs are mostly idle; returns the seconds
    waited. After a big sync the kernel frees the old rules in the background, and that work
    would otherwise land in the next measurement."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        i0, a0 = _cpu_times()
        time.sleep(window)
        i1, a1 = _cpu_times()
        if (i1 - i0) / max(1, a1 - a0) >= min_idle:
            break
    return time.monotonic() - t0


# --- the cluster side: workload, growing, a timed full sync ---------------------------------------

def mode_of(cluster: Cluster) -> str:
    """The cluster's kube-proxy mode (`networking.kubeProxyMode`)."""
    return cluster.config.kube_proxy_mode


def client_node(cluster: Cluster) -> str:
    """The node the client pod runs on: where its connections' first packets are NATed."""
    return cluster.pod(CLIENT).node


def services_now(cluster: Cluster) -> int:
    """How many of this module's Services (`svc-NNNNN`) the cluster has."""
    return sum(1 for key in cluster.state.get("services", {})
               if service_index(key.split("/", 1)[1]) is not None)


def last_service(cluster: Cluster) -> str:
    """The name of the cluster's last Service of this module (the last in KUBE-SERVICES)."""
    idx = [i for key in cluster.state.get("services", {})
           if (i := service_index(key.split("/", 1)[1])) is not None]
    if not idx:
        raise LabError(f"cluster `{cluster.name}` has no `{SERVICE_PREFIX}…` Service yet — "
                       "proxyscale.grow(c, N) creates them")
    return service_name(max(idx))


def cluster_ip(cluster: Cluster, name: str) -> str:
    """A Service's ClusterIP (what a client's DNS lookup would return)."""
    return str(cluster.service(name)["spec"]["clusterIP"])


class TimedRunner(kernel.Runner):
    """A cluster's runner with the same journal, a longer timeout, and a stopwatch.

    A full sync of thousands of Services can take longer than the default 60 s a command is
    allowed; each command's duration is recorded as (what, netns, seconds), where `what` is
    the executable (`nft` is split into `nft-list` and `nft-load`).
    """

    def __init__(self, inner: kernel.Runner, timeout: float = SYNC_TIMEOUT_S) -> None:
        super().__init__(inner.journal, inner.source)
        self.min_timeout = timeout
        self.durations: list[tuple[str, str | None, float]] = []
        self._lock = threading.Lock()

    def run(self, argv: Sequence[str], netns: str | None = None, *, timeout: float = 60,
            **kw: Any) -> kernel.Completed:
        t0 = time.perf_counter()
        try:
            return super().run(argv, netns, timeout=max(timeout, self.min_timeout), **kw)
        finally:
            what = str(argv[0])
            if what == "nft":
                what = "nft-load" if "-f" in argv else "nft-list"
            with self._lock:
                self.durations.append((what, netns, time.perf_counter() - t0))

    def per_node(self, kinds: set[str]) -> list[float]:
        """Seconds per node netns spent in commands of `kinds` (one value per node)."""
        out: dict[str, float] = {}
        with self._lock:
            for what, netns, dt in self.durations:
                if what in kinds and netns is not None:
                    out[netns] = out.get(netns, 0.0) + dt
        return list(out.values())


@contextlib.contextmanager
def timed_runner(cluster: Cluster) -> Iterator[TimedRunner]:
    """Swap the cluster's runner for a :class:`TimedRunner` for the duration of the block."""
    inner = cluster.runner
    timed = TimedRunner(inner)
    cluster.runner = timed
    try:
        yield timed
    finally:
        cluster.runner = inner


def workload_node(cluster: Cluster) -> str:
    """Where the workload goes: the cluster's first worker (its only node if it has none)."""
    nodes = cluster.nodes()
    return next((n.name for n in nodes if n.role == "worker"), nodes[0].name)


def prepare(cluster: Cluster, progress: Progress | None = None, timeout: float = 10.0) -> None:
    """Apply the workload (backend Deployment + client pod, on the first worker) and wait until
    the client reaches every backend pod directly. A workload already there is left alone."""
    say = progress or _quiet
    if not any(p.name == CLIENT for p in cluster.pods(NAMESPACE)):
        for line in cluster.apply(workload(workload_node(cluster))):
            say(line)
    backends = [p for p in cluster.pods(NAMESPACE)
                if all(p.labels.get(k) == v for k, v in BACKEND_LABELS.items())]
    deadline = time.monotonic() + timeout
    for p in backends:
        while not (r := cluster.probe(CLIENT, p.key, TARGET_PORT, timeout=0.5)).ok:
            if time.monotonic() > deadline:
                raise LabError(f"the client pod cannot reach backend {p.key} ({p.ip}:"
                               f"{TARGET_PORT}): {r.error} — look at c.get_pods() and the "
                               "nodes' routes")
            time.sleep(0.05)


def grow(cluster: Cluster, n: int, progress: Progress | None = None) -> float:
    """Make the cluster have exactly `n` of this module's Services (`svc-00000` …), applying
    the missing ones (or deleting the extra ones) in one `apply`; returns its seconds."""
    say = progress or _quiet
    have = services_now(cluster)
    t0 = time.perf_counter()
    with timed_runner(cluster):
        if n > have:
            say(f"{cluster.name}: creating Services {have} … {n - 1}")
            cluster.apply(manifests(have, n))
        elif n < have:
            say(f"{cluster.name}: deleting Services {n} … {have - 1}")
            cluster.delete(manifests(n, have))
    return time.perf_counter() - t0


@dataclass(frozen=True)
class SyncTiming:
    """One full kube-proxy sync of every node, timed.

    `seconds` is the wall time of the whole sync; `read_s` and `load_s` are the mean per node
    of reading what the sync needs to know (chain names and the built-in chains' jumps) and of
    loading the new ones (`iptables-restore --noflush` / `nft -f`). The nodes sync in
    parallel; the rest of the time is rendering the rules text (Python) and waiting for a CPU.
    """
    seconds: float
    read_s: float
    load_s: float
    nodes: int


def full_sync(cluster: Cluster) -> SyncTiming:
    """Time one full sync of the cluster's Services on every node, the code path every `apply`
    runs: the endpoint controller, kube-proxy on every node in parallel (read, render, load in
    one transaction), then the load balancer's routes."""
    with timed_runner(cluster) as runner:
        t0 = time.perf_counter()
        cluster.sync_services()
        seconds = time.perf_counter() - t0
    reads, loads = runner.per_node(READ_CMDS), runner.per_node(LOAD_CMDS)
    return SyncTiming(seconds, statistics.fmean(reads) if reads else 0.0,
                      statistics.fmean(loads) if loads else 0.0, len(loads))


# --- measuring -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """Everything measured for one cluster (one kube-proxy mode) at one number of Services.

    `latency`: new connections to the LAST Service (the last rule of KUBE-SERVICES in iptables
    mode); `first`: to the first Service, measured interleaved with it, for comparison.
    """
    mode: str
    cluster: str
    services: int
    sync: SyncTiming
    rules: RuleCount
    latency: Latency
    first: Latency
    grow_s: float = 0.0  # the apply that brought the cluster to this size (not charted)

    @property
    def walk_us(self) -> float:
        """Median extra time of a connection to the last Service over one to the first: the
        price of the rules the first packet tries before it finds its own."""
        return self.latency.median_us - self.first.median_us

    def cells(self) -> list[str]:
        return [LABELS.get(self.mode, self.mode), f"{self.services:,}", f"{self.rules.rules:,}",
                f"{self.rules.dispatch:,}", f"{self.sync.seconds:.2f}", f"{self.sync.read_s:.2f}",
                f"{self.sync.load_s:.2f}", f"{self.first.median_us:.0f}",
                f"{self.latency.median_us:.0f}", f"{self.latency.p99_us:.0f}"]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "cluster": self.cluster, "services": self.services,
                "sync_s": round(self.sync.seconds, 4), "read_s": round(self.sync.read_s, 4),
                "load_s": round(self.sync.load_s, 4), "nodes": self.sync.nodes,
                "rules": self.rules.rules, "dispatch": self.rules.dispatch,
                "chains": self.rules.chains, "node": self.rules.node,
                "target": self.latency.target, "connections": len(self.latency.samples_us),
                "connect_median_us": round(self.latency.median_us, 1),
                "connect_p99_us": round(self.latency.p99_us, 1),
                "first_target": self.first.target,
                "first_median_us": round(self.first.median_us, 1),
                "grow_s": round(self.grow_s, 3)}


HEADERS = ["MODE", "SERVICES", "RULES", "DISPATCH", "SYNC s", "READ s/node", "LOAD s/node",
           "FIRST µs", "LAST µs", "LAST p99 µs"]


@dataclass(repr=False)
class ScaleResults:
    """The measured points of every mode: a table, a chart, ratios."""

    points: list[Point] = field(default_factory=list)

    def modes(self) -> list[str]:
        return [m for m in MODES if any(p.mode == m for p in self.points)] + sorted(
            {p.mode for p in self.points} - set(MODES))

    def series(self, mode: str) -> list[Point]:
        return sorted((p for p in self.points if p.mode == mode), key=lambda p: p.services)

    def at(self, mode: str, services: int) -> Point:
        for p in self.points:
            if p.mode == mode and p.services == services:
                return p
        have = ", ".join(f"{p.mode}@{p.services}" for p in self.points) or "none"
        raise KeyError(f"no point for {mode} at {services} Services; measured: {have}")

    def largest_common(self) -> int | None:
        """The largest number of Services measured in every mode."""
        common = set.intersection(*({p.services for p in self.series(m)} for m in self.modes())) \
            if self.modes() else set()
        return max(common) if common else None

    def ratios(self, services: int | None = None, a: str = "iptables", b: str = "nftables"
               ) -> dict[str, float]:
        """`a`/`b` for sync time and median new-connection latency at `services` Services
        (default: the largest size measured in both)."""
        n = services if services is not None else self.largest_common()
        if n is None:
            raise KeyError("no size was measured in both modes")
        pa, pb = self.at(a, n), self.at(b, n)
        return {"services": n, "sync": pa.sync.seconds / pb.sync.seconds,
                "connect": pa.latency.median_us / pb.latency.median_us}

    def table(self) -> Table:
        from lab_kit.cluster import Table
        rows = [p.cells() for m in self.modes() for p in self.series(m)]
        return Table(HEADERS, rows)

    def caption(self) -> str:
        conns = "/".join(map(str, sorted({len(p.latency.samples_us) for p in self.points})))
        return ("RULES: kube-proxy's rules on the client's node. DISPATCH: what the first packet "
                "of a new connection is matched against to find its Service (iptables: the "
                "rules of nat KUBE-SERVICES, in order; nftables: the elements of the service-ips "
                "map, one lookup). SYNC: one full sync of every node (wall time); READ/LOAD: per "
                f"node, reading the old rules and loading the new ones. FIRST/LAST: {conns} "
                "fresh TCP connections to the first/last Service's ClusterIP, median "
                "handshake time.")

    def __str__(self) -> str:
        return f"{self.table()}\n{self.caption()}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return f"{self.table()._repr_html_()}<p><small>{html.escape(self.caption())}</small></p>"

    def to_dict(self) -> dict[str, Any]:
        return {"points": [p.to_dict() for p in self.points]}

    def chart(self) -> Figure:
        """Two panels against the number of Services (log scale), one colour per mode: the
        full sync's wall time, and the median new-connection time to the last Service (solid)
        and to the first (dashed).

        Works headless (Agg); the figure is closed in pyplot so a notebook shows it once.
        """
        import matplotlib.pyplot as plt

        fig, (ax_sync, ax_conn) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
        for mode in self.modes():
            pts = self.series(mode)
            xs = [p.services for p in pts]
            colour = COLOURS.get(mode, "#57606a")
            label = LABELS.get(mode, mode)
            ax_sync.plot(xs, [p.sync.seconds for p in pts], "o-", color=colour, label=label)
            ax_conn.plot(xs, [p.latency.median_us for p in pts], "o-", color=colour,
                         label=f"{label}: last Service")
            ax_conn.plot(xs, [p.first.median_us for p in pts], "--", color=colour, alpha=0.6,
                         label=f"{label}: first Service")
        ax_sync.set_title("full rule sync of every node (wall time)")
        ax_sync.set_ylabel("seconds")
        ax_sync.set_yscale("log")
        ax_conn.set_title("new TCP connection to a Service (median)")
        ax_conn.set_ylabel("µs from SYN to SYN-ACK")
        ax_conn.set_ylim(bottom=0)
        for ax in (ax_sync, ax_conn):
            ax.set_xscale("log")
            ax.set_xlabel("Services (3 endpoints each)")
            ax.grid(True, which="major", alpha=0.3)
            ax.spines[["top", "right"]].set_visible(False)
            ax.legend(fontsize=8, frameon=False)
        plt.close(fig)
        return fig


def first_service(cluster: Cluster) -> str:
    """The name of the cluster's first Service of this module (`svc-00000`)."""
    last_service(cluster)  # the same error when there is none
    return service_name(min(i for key in cluster.state.get("services", {})
                            if (i := service_index(key.split("/", 1)[1])) is not None))


def measure(clusters: Sequence[Cluster], sizes: Sequence[int] | None = None, *,
            connections: int = CONNECTIONS, settle_s: float = 2.0,
            progress: Progress | None = None) -> ScaleResults:
    """Measure every cluster (one per kube-proxy mode) at every size, smallest first.

    At each size: every cluster is grown to it, then fully synced (timed) and its rules
    counted, one cluster after the other so they never compete for the CPUs; then the
    connections to every cluster's first and last Service are timed, interleaved. `sizes`
    defaults to :func:`scale_sizes` (10 … 5,000, capped by `LAB_KIT_SCALE_MAX`). The workload
    is applied first where it is missing. Before each timing, it waits up to `settle_s` for
    the CPUs to be idle (:func:`settle`).
    """
    say = progress or _quiet
    todo = scale_sizes() if sizes is None else tuple(sorted(sizes))
    if not todo:
        raise LabError("no sizes to measure — give sizes like (10, 100, 1000)")
    out = ScaleResults()
    for c in clusters:
        prepare(c, say)
    for n in todo:
        done: list[tuple[Cluster, float, SyncTiming, RuleCount]] = []
        for c in clusters:
            grow_s = grow(c, n, say)
            settle(settle_s)
            sync = full_sync(c)
            done.append((c, grow_s, sync, count_rules(mode_of(c), client_node(c))))
        targets: dict[str, Target] = {}
        for c, *_ in done:
            netns = c.pod(CLIENT).netns
            targets[f"{c.name}/first"] = (netns, cluster_ip(c, first_service(c)), SERVICE_PORT)
            targets[f"{c.name}/last"] = (netns, cluster_ip(c, last_service(c)), SERVICE_PORT)
        settle(settle_s)
        lat = latencies(targets, connections)
        for c, grow_s, sync, rules in done:
            p = Point(mode_of(c), c.name, n, sync, rules, lat[f"{c.name}/last"],
                      lat[f"{c.name}/first"], grow_s)
            out.points.append(p)
            say(f"{c.name} ({p.mode}) {n:>5,} Services: sync {sync.seconds:.2f} s, "
                f"{rules.rules:,} rules; new connection to the first Service "
                f"{p.first.median_us:.0f} µs, to the last {p.latency.median_us:.0f} µs")
    return out
