"""Throughput and latency between pods, measured with real tools: iperf3 and ping.

    from lab_kit import perf
    perf.throughput(c, "client", "remote")     # iperf3 server in remote's netns, client in ours
    perf.latency(c, "client", "remote")        # ping -c 20 -i 0.01
    cmp = perf.compare_backends(("host-gw", "vxlan", "bgp"), seconds=2)
    cmp                                        # a table in a notebook
    cmp.chart()                                # two bar charts: Gbit/s and RTT per path

`compare_backends` builds one small cluster per CNI backend (1 control-plane + 2 workers), puts
two pods on one worker and one on the other, measures pod → pod on the same node and across
nodes, and removes every cluster again, even after an error.

All numbers are whatever this machine's kernel does with veth pairs, bridges, routes and VXLAN
devices in software: there is no wire, so "throughput" is really CPU work per byte. The ratios
between the paths are what carries over to a real cluster.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab_kit import backends as cni_backends
from lab_kit import config, kernel, naming
from lab_kit.errors import LabError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lab_kit.cluster import Cluster, Table

Progress = Callable[[str], None]

IPERF3_PORT = 5201  # iperf3's default; moved up when the destination already uses it
LABELS = {"same-node": "same node", "host-gw": "host-gw", "vxlan": "VXLAN", "bgp": "BGP"}
# what each path costs, for the chart's title
EXPLAIN = {
    "same-node": "same node: just the bridge",
    "host-gw": "host-gw: a plain route",
    "bgp": "BGP: a plain route, learnt by BIRD",
    "host-gw+bgp": "host-gw/BGP: a plain route",
    "vxlan": "VXLAN pays encapsulation and a {mtu}-byte MTU",
}
COLOURS = {"same-node": "#8c959f", "host-gw": "#0969da", "vxlan": "#bf3989", "bgp": "#1a7f37"}
PERF_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.45"
PERF_PORT = 8080  # the pods' agnhost port: used to check that traffic flows before measuring


# --- results -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Throughput:
    """One iperf3 run: bits per second as the client sent them and as the server received them."""

    src: str
    dst: str
    ip: str
    port: int
    protocol: str
    seconds: float  # measured duration (the receiver's)
    sent_bps: float
    received_bps: float
    retransmits: int | None = None  # TCP only
    lost_percent: float | None = None  # UDP only
    jitter_ms: float | None = None  # UDP only

    @property
    def gbps(self) -> float:
        """Received Gbit/s: what made it across."""
        return self.received_bps / 1e9

    def __str__(self) -> str:
        extra = (f", {self.retransmits} retransmits" if self.retransmits is not None else
                 f", {self.lost_percent:.2g}% lost, jitter {self.jitter_ms:.3f} ms"
                 if self.lost_percent is not None and self.jitter_ms is not None else "")
        return (f"iperf3 {self.protocol} {self.src} -> {self.dst} ({self.ip}:{self.port}): "
                f"{self.gbps:.2f} Gbit/s received, {self.sent_bps / 1e9:.2f} Gbit/s sent"
                f"{extra} in {self.seconds:.1f} s")

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(str(self))}</pre>"

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "ip": self.ip, "port": self.port,
                "protocol": self.protocol, "seconds": self.seconds, "sent_bps": self.sent_bps,
                "received_bps": self.received_bps, "retransmits": self.retransmits,
                "lost_percent": self.lost_percent, "jitter_ms": self.jitter_ms}


@dataclass(frozen=True)
class Latency:
    """One ping run: round-trip times in milliseconds (None when no reply came back)."""

    src: str
    dst: str
    ip: str
    transmitted: int
    received: int
    loss_percent: float
    min_ms: float | None = None
    avg_ms: float | None = None
    max_ms: float | None = None
    mdev_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.received > 0

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        head = (f"ping {self.src} -> {self.dst} ({self.ip}): {self.received}/{self.transmitted} "
                f"replies ({self.loss_percent:g}% loss)")
        if self.avg_ms is None:
            return head
        return (f"{head}, rtt min/avg/max/mdev = {self.min_ms:.3f}/{self.avg_ms:.3f}/"
                f"{self.max_ms:.3f}/{self.mdev_ms:.3f} ms")

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(str(self))}</pre>"

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "ip": self.ip,
                "transmitted": self.transmitted, "received": self.received,
                "loss_percent": self.loss_percent, "min_ms": self.min_ms, "avg_ms": self.avg_ms,
                "max_ms": self.max_ms, "mdev_ms": self.mdev_ms}


# --- parsing (pure) --------------------------------------------------------------------------

def parse_iperf3(text: str) -> dict[str, Any]:
    """The figures of an `iperf3 -c … -J` report (TCP or UDP).

    Returns `sent_bps`, `received_bps`, `seconds`, and `retransmits` (TCP) or `lost_percent`
    and `jitter_ms` (UDP). Raises LabError with iperf3's own message when the run failed.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise LabError(f"iperf3 printed no JSON report: {text.strip()[:200]!r}") from None
    if not isinstance(doc, dict):
        raise LabError("iperf3's report is not a JSON object")
    if doc.get("error"):
        raise LabError(f"iperf3: {doc['error']}")
    end = doc.get("end") or {}
    sent, received = end.get("sum_sent"), end.get("sum_received")
    udp = (doc.get("start", {}).get("test_start", {}).get("protocol") == "UDP"
           or (sent is None and "sum" in end))
    if udp:
        total = end.get("sum") or {}
        sent = sent or total
        received = received or total
    if not sent or not received:
        raise LabError("iperf3's report has no end totals (sum_sent / sum_received): the test "
                       "did not finish")
    out: dict[str, Any] = {
        "sent_bps": float(sent["bits_per_second"]),
        "received_bps": float(received["bits_per_second"]),
        "seconds": float(received.get("seconds") or sent.get("seconds") or 0.0),
        "retransmits": None, "lost_percent": None, "jitter_ms": None,
    }
    if udp:
        total = end.get("sum") or received
        out["lost_percent"] = float(total.get("lost_percent", 0.0))
        out["jitter_ms"] = float(total.get("jitter_ms", 0.0))
    else:
        out["retransmits"] = int(sent.get("retransmits", 0))
    return out


_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_LOSS = re.compile(r"([\d.]+)% packet loss")
_PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def parse_ping(text: str) -> dict[str, Any]:
    """The summary of `ping -q` (iputils): counts, loss and min/avg/max/mdev in ms."""
    counts = _PING_COUNTS.search(text)
    if counts is None:
        raise LabError(f"ping printed no statistics: {text.strip()[:200]!r}")
    tx, rx = int(counts.group(1)), int(counts.group(2))
    loss = _PING_LOSS.search(text)
    out: dict[str, Any] = {
        "transmitted": tx, "received": rx,
        "loss_percent": float(loss.group(1)) if loss else (100.0 * (tx - rx) / tx if tx else 0.0),
        "min_ms": None, "avg_ms": None, "max_ms": None, "mdev_ms": None,
    }
    rtt = _PING_RTT.search(text)
    if rtt is not None:
        out.update(zip(("min_ms", "avg_ms", "max_ms", "mdev_ms"),
                       (float(g) for g in rtt.groups()), strict=True))
    return out


def parse_proc_net_sockets(text: str, listening_only: bool = True) -> list[tuple[int, int]]:
    """(local port, socket inode) of each socket in a /proc/net/{tcp,tcp6,udp,udp6} table.

    With `listening_only`, TCP sockets in LISTEN state only (UDP tables have no such state:
    pass False for them).
    """
    out = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10 or ":" not in cols[1]:
            continue
        if listening_only and cols[3] != "0A":  # TCP_LISTEN
            continue
        out.append((int(cols[1].rsplit(":", 1)[1], 16), int(cols[9])))
    return out


def parse_proc_net_ports(text: str, listening_only: bool = True) -> set[int]:
    """Local ports in a /proc/net/{tcp,tcp6,udp,udp6} table (TCP: LISTEN sockets only)."""
    return {port for port, _ in parse_proc_net_sockets(text, listening_only)}


# --- measuring -------------------------------------------------------------------------------

def _busy_ports(netns: str) -> set[int]:
    """TCP ports listening and UDP ports bound in `netns`, read from /proc without a fork."""
    ports: set[int] = set()
    with kernel.in_netns(netns):  # /proc/thread-self/net shows this thread's netns
        for table, listening in (("tcp", True), ("tcp6", True), ("udp", False),
                                 ("udp6", False)):
            with contextlib.suppress(OSError):
                ports |= parse_proc_net_ports(
                    Path(f"/proc/thread-self/net/{table}").read_text(), listening)
    return ports


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    out.add(int(link[8:-1]))
    return out


def _listening(pid: int, port: int, netns_inode: int | None) -> bool:
    """Process `pid` is in the netns and has its own TCP socket listening on `port`.

    /proc/<pid>/net lists every socket of the netns (the pod's test server too), so the
    listening socket must also be one of the process's file descriptors.
    """
    try:  # until nsenter has switched, /proc/<pid>/net shows the caller's netns
        if os.stat(f"/proc/{pid}/ns/net").st_ino != netns_inode:
            return False
    except OSError:
        return False
    found = set()
    for table in ("tcp", "tcp6"):  # iperf3 listens on :: (both families) when it can
        with contextlib.suppress(OSError):
            found |= {inode for p, inode in parse_proc_net_sockets(
                Path(f"/proc/{pid}/net/{table}").read_text()) if p == port}
    return bool(found and found & _socket_inodes(pid))


def _pick_port(cluster: Cluster, dst: str, netns: str) -> int:
    taken = _busy_ports(netns)
    with contextlib.suppress(LabError):
        taken |= set(cluster.pod(dst).info.ports)  # the ports its manifest declares
    port = IPERF3_PORT
    while port in taken:
        port += 1
    return port


def throughput(cluster: Cluster, src_pod: str, dst_pod: str, *, seconds: float = 2.0,
               protocol: str = "TCP", port: int | None = None,
               timeout: float = 10.0) -> Throughput:
    """Run iperf3 from `src_pod` to `dst_pod` (pods, nodes or `external`) and return the rates.

    A one-off iperf3 server (`iperf3 -s -1`) starts in the destination's netns; once it
    listens, `iperf3 -c <dst ip> -t <seconds> -J` runs in the source's netns. iperf3 counts
    whole seconds, so `seconds` is rounded up (at least 1). The server is gone when this
    returns, also after an error. `protocol="UDP"` sends as fast as it can (`-u -b 0`).
    The port is 5201 unless the destination already uses it (its pod ports, or any socket in
    its netns). Both commands are written to the cluster's journal.
    """
    proto = protocol.upper()
    if proto not in ("TCP", "UDP"):
        raise LabError(f"protocol {protocol!r}: use TCP or UDP")
    src_label, src_ns, _ = cluster.endpoint(src_pod)
    dst_label, dst_ns, dst_ip = cluster.endpoint(dst_pod)
    secs = max(1, math.ceil(seconds))
    if port is None:
        port = _pick_port(cluster, dst_pod, dst_ns)
    elif port in _busy_ports(dst_ns):
        raise LabError(f"port {port} is already in use in `{dst_label}`; leave `port` out to "
                       f"pick a free one")
    server = ["iperf3", "-s", "-1", "-p", str(port)]
    cluster.runner.note(server, dst_ns, source="lab_kit")
    # nsenter execs iperf3 (no fork for a network namespace): the pid is the server's own
    proc = subprocess.Popen(kernel.in_netns_argv(server, dst_ns),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, close_fds=True)
    finished = False
    try:
        deadline = time.monotonic() + timeout
        inode = kernel.netns_inode(dst_ns)
        while not _listening(proc.pid, port, inode):
            if proc.poll() is not None:
                out = proc.communicate()[0]
                raise LabError(f"the iperf3 server in `{dst_label}` exited before listening on "
                               f"port {port}: {out.strip()[-300:] or '(no output)'}")
            if time.monotonic() > deadline:
                raise LabError(f"the iperf3 server in `{dst_label}` did not listen on port "
                               f"{port} within {timeout:g} s")
            time.sleep(0.005)
        client = ["iperf3", "-c", dst_ip, "-p", str(port), "-t", str(secs), "-J",
                  "--connect-timeout", str(int(timeout * 1000))]
        if proto == "UDP":
            client += ["-u", "-b", "0"]
        done = cluster.runner.run(client, src_ns, check=False, timeout=secs + timeout + 5)
        try:
            figures = parse_iperf3(done.stdout)
        except LabError as e:
            detail = done.stderr.strip() if not done.stdout.strip() else ""
            raise LabError(f"iperf3 {proto} from `{src_label}` to `{dst_label}` ({dst_ip}:{port}) "
                           f"failed: {e}{': ' + detail if detail else ''} — check that "
                           f"`{src_label}` reaches {dst_ip} (Cluster.probe, ping)") from None
        finished = True
    finally:
        _stop(proc, grace=2.0 if finished else 0.0)
    return Throughput(src_label, dst_label, dst_ip, port, proto, **figures)


def _stop(proc: subprocess.Popen[str], grace: float) -> None:
    """The one-off server exits after its client; kill it if not (and always reap it).

    After a completed test it gets `grace` seconds to exit on its own; after a failure (no
    client ever came) it is killed at once.
    """
    if grace > 0:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=grace)
    if proc.poll() is None:
        proc.kill()
    if proc.stdout is not None and not proc.stdout.closed:
        proc.communicate()  # drain the pipe and reap it: no zombie either
    else:
        proc.wait()


def latency(cluster: Cluster, src_pod: str, dst_pod: str, *, count: int = 20,
            interval: float = 0.01, check: bool = True) -> Latency:
    """Ping `dst_pod` from `src_pod` (`ping -n -q -c count -i interval`) and return the RTTs.

    With `check` (the default) a run with no reply at all raises LabError.
    """
    if count < 1:
        raise LabError(f"count must be at least 1, not {count}")
    src_label, src_ns, _ = cluster.endpoint(src_pod)
    dst_label, _, dst_ip = cluster.endpoint(dst_pod)
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", f"{interval:g}", "-W", "1", dst_ip]
    done = cluster.runner.run(argv, src_ns, check=False, timeout=count * interval + 10)
    if done.rc not in (0, 1):  # 1: no reply; anything else: ping itself failed
        raise LabError(f"`{' '.join(argv)}` in `{src_label}` failed: "
                       f"{(done.stderr or done.stdout).strip() or f'exit {done.rc}'}")
    result = Latency(src_label, dst_label, dst_ip, **parse_ping(done.stdout))
    if check and not result.ok:
        raise LabError(f"no ping reply from `{dst_label}` ({dst_ip}) to `{src_label}`: "
                       f"{result.transmitted} sent, 0 received — look at the routes on both "
                       "nodes (`ip route`) and probe the pod (Cluster.probe)")
    return result


# --- readiness ---------------------------------------------------------------------------------

def wait_for_pod_routes(cluster: Cluster, nodes: Sequence[str] | None = None, *,
                        timeout: float = 30.0) -> float:
    """Wait until each of `nodes` (default: all) has a route to every other node's pod CIDR.

    Polls `ip -j route show` in each node's netns. With host-gw and VXLAN the routes are there
    from the start; with BGP they appear once BIRD has learnt them from its peers. Returns the
    seconds waited; raises LabError naming the missing routes after `timeout`.
    """
    conf = cluster.config
    names = list(nodes) if nodes is not None else [n.name for n in conf.nodes]
    known = {n.name for n in conf.nodes}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise LabError(f"no node {', '.join(map(repr, unknown))} in cluster `{cluster.name}`; "
                       f"nodes: {', '.join(sorted(known))}")
    t0 = time.monotonic()
    while True:
        missing = []
        for name in names:
            have = {r.get("dst") for r in cni_backends.live_routes(
                cluster.runner, naming.node_netns(name), conf.pod_subnet)}
            missing += [f"{name} → {o.name} ({o.pod_cidr})" for o in conf.nodes
                        if o.name != name and o.pod_cidr not in have]
        if not missing:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise LabError(f"cluster `{cluster.name}` ({conf.cni}): after {timeout:g} s these "
                           f"nodes still have no route to the other node's pod CIDR: "
                           f"{', '.join(missing)} — look at `ip route` on them"
                           + (" and at `birdc show protocols`" if conf.cni == "bgp" else ""))
        time.sleep(0.05)


def wait_for_traffic(cluster: Cluster, src_pod: str, dst_pod: str, port: int = PERF_PORT, *,
                     timeout: float = 10.0) -> float:
    """Probe `dst_pod` from `src_pod` until a real connection succeeds; returns seconds waited."""
    t0 = time.monotonic()
    while True:
        result = cluster.probe(src_pod, dst_pod, port, timeout=1.0)
        if result.ok:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise LabError(f"no connection from `{src_pod}` to `{dst_pod}` within {timeout:g} s "
                           f"({result.error}) — the backend does not carry pod traffic yet")
        time.sleep(0.1)


# --- comparing backends ----------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One measured path: pod → pod on one node, or across nodes over one backend."""

    key: str  # "same-node" or the backend name
    backend: str  # the backend of the cluster it was measured on
    mtu: int  # the pods' MTU on that cluster
    throughput: Throughput
    latency: Latency

    @property
    def label(self) -> str:
        return LABELS.get(self.key, self.key)

    @property
    def path(self) -> str:
        return "one node" if self.key == "same-node" else "two nodes"

    @property
    def gbps(self) -> float:
        return self.throughput.gbps

    @property
    def rtt_ms(self) -> float:
        return self.latency.avg_ms if self.latency.avg_ms is not None else math.nan

    @property
    def retransmits(self) -> int | None:
        return self.throughput.retransmits

    def cells(self) -> list[str]:
        mdev = self.latency.mdev_ms
        return [self.label, self.path, self.backend, str(self.mtu), f"{self.gbps:.2f}",
                f"{self.rtt_ms:.3f}", "-" if mdev is None else f"{mdev:.3f}",
                "-" if self.retransmits is None else str(self.retransmits)]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "path": self.path, "backend": self.backend,
                "mtu": self.mtu, "gbps": self.gbps, "rtt_ms": self.rtt_ms,
                "retransmits": self.retransmits, "throughput": self.throughput.to_dict(),
                "latency": self.latency.to_dict()}


HEADERS = ["PATH", "NODES", "CLUSTER CNI", "POD MTU", "Gbit/s", "RTT avg (ms)",
           "RTT mdev (ms)", "RETRANSMITS"]


@dataclass
class Comparison:
    """Rows of measured paths, as a text table, an HTML table and a chart."""

    rows: list[Row]
    seconds: float = 2.0  # iperf3 duration per path
    pings: int = 20
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # per backend, per step

    def table(self) -> Table:
        from lab_kit.cluster import Table
        return Table(HEADERS, [r.cells() for r in self.rows])

    def caption(self) -> str:
        return (f"pod → pod, iperf3 TCP for {max(1, math.ceil(self.seconds))} s per path; "
                f"ping x{self.pings}")

    def __str__(self) -> str:
        return f"{self.caption()}\n{self.table()}"

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(self.caption())}</p>{self.table()._repr_html_()}"

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "pings": self.pings, "timings": self.timings,
                "rows": [r.to_dict() for r in self.rows]}

    def explanation(self) -> str:
        """One line on why the paths differ, for the rows present."""
        keys = [r.key for r in self.rows]
        parts = []
        for key in ("same-node", "host-gw", "bgp", "vxlan"):
            if key in keys:
                mtu = next(r.mtu for r in self.rows if r.key == key)
                parts.append(EXPLAIN[key].format(mtu=mtu))
        if "host-gw" in keys and "bgp" in keys:  # the same datapath: say it once
            parts = [p for p in parts if not p.startswith(("host-gw", "BGP"))]
            parts.insert(1 if "same-node" in keys else 0, EXPLAIN["host-gw+bgp"])
        return "; ".join(parts)

    def chart(self) -> Figure:
        """Two bar charts side by side: throughput (Gbit/s) and average RTT (ms) per path.

        Works headless (no display, Agg); the figure is closed in pyplot so a notebook shows
        it once, as the cell's value.
        """
        import matplotlib.pyplot as plt

        labels = [r.label for r in self.rows]
        colours = [COLOURS.get(r.key, "#57606a") for r in self.rows]
        fig, (ax_tp, ax_rtt) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
        for ax, values, fmt, title, unit in (
            (ax_tp, [r.gbps for r in self.rows], "{:.1f}", "throughput (iperf3 TCP)",
             "Gbit/s"),
            (ax_rtt, [r.rtt_ms for r in self.rows], "{:.3f}", "round-trip time (ping, average)",
             "ms"),
        ):
            bars = ax.bar(labels, values, color=colours)
            ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=2)
            ax.set_title(title)
            ax.set_ylabel(unit)
            ax.margins(y=0.15)
            ax.spines[["top", "right"]].set_visible(False)
        fig.suptitle(self.explanation(), fontsize=10)
        plt.close(fig)
        return fig


def perf_config(name: str, backend: str) -> config.ClusterConfig:
    """Cluster `name`: 1 control-plane + 2 workers with CNI backend `backend`."""
    return config.parse_config({
        "kind": "Cluster", "apiVersion": config.KIND_API_VERSION, "name": name,
        "nodes": [{"role": "control-plane"}, {"role": "worker"}, {"role": "worker"}],
        "networking": {"cni": backend}})


def perf_pods(worker: str, worker2: str) -> list[dict[str, Any]]:
    """The three pods: `client` and `local` on `worker`, `remote` on `worker2` (spec.nodeName)."""
    def pod(name: str, node: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "perf", "role": name}},
                "spec": {"nodeName": node, "containers": [{
                    "name": "agnhost", "image": PERF_IMAGE,
                    "args": ["netexec", f"--http-port={PERF_PORT}"],
                    "ports": [{"containerPort": PERF_PORT}]}]}}
    return [pod("client", worker), pod("local", worker), pod("remote", worker2)]


def cluster_name(prefix: str, backend: str) -> str:
    """`<prefix><backend without dashes>`, e.g. perfhostgw; checked like any cluster name."""
    name = prefix + backend.replace("-", "")
    if not naming.CLUSTER_NAME_RE.match(name):
        raise LabError(f"cluster name {name!r} (name_prefix {prefix!r} + {backend!r}) must be "
                       "1-16 lowercase letters or digits, starting with a letter — use a "
                       "shorter name_prefix")
    return name


def compare_backends(backends: Sequence[str] = ("host-gw", "vxlan", "bgp"), *,
                     seconds: float = 2.0, count: int = 20, interval: float = 0.01,
                     progress: Progress | None = print, name_prefix: str = "perf",
                     root: str | Path | None = None, same_node: bool = True,
                     ready_timeout: float = 60.0) -> Comparison:
    """Measure pod → pod throughput and latency on one node and across nodes per backend.

    For each backend a cluster `<name_prefix><backend>` (1 control-plane + 2 workers) is made,
    with pods `client` and `local` on the first worker and `remote` on the second. The
    same-node path (client → local) is measured once, on the first backend's cluster: it
    crosses only the node's bridge, whatever the backend. The cross-node path (client → remote)
    is measured on every backend, after the route to the other node's pod CIDR is installed
    and a connection has gone through. Each cluster is removed before the next is made, and
    also when anything fails. `progress` gets one line per step (None: quiet).
    """
    say = progress or (lambda _m: None)
    wanted = list(backends)
    if not wanted:
        raise LabError("compare_backends needs at least one backend: "
                       f"{', '.join(config.CNI_BACKENDS)}")
    for b in wanted:
        if b not in config.CNI_BACKENDS:
            raise LabError(f"unknown CNI backend {b!r}; choose from "
                           f"{', '.join(config.CNI_BACKENDS)}")
    if len(set(wanted)) != len(wanted):
        raise LabError(f"backend listed twice: {wanted}")
    names = {b: cluster_name(name_prefix, b) for b in wanted}  # every name checked up front
    from lab_kit.cluster import Cluster

    result = Comparison(rows=[], seconds=seconds, pings=count)
    for i, backend in enumerate(wanted):
        label = LABELS[backend]
        times: dict[str, float] = {}
        result.timings[backend] = times
        conf = perf_config(names[backend], backend)
        worker, worker2 = [n.name for n in conf.nodes if n.role == "worker"]
        say(f"[{label}] creating cluster `{conf.name}` (1 control-plane + 2 workers, "
            f"cni: {backend})")
        t0 = time.monotonic()
        c = Cluster.up(conf, root=root)
        try:
            times["up"] = time.monotonic() - t0
            t = time.monotonic()
            c.apply(perf_pods(worker, worker2))
            times["pods"] = time.monotonic() - t
            say(f"[{label}] cluster up in {times['up']:.2f} s; pods client + local on {worker}, "
                f"remote on {worker2} ({times['pods']:.2f} s)")
            t = time.monotonic()
            wait_for_pod_routes(c, [worker, worker2], timeout=ready_timeout)
            wait_for_traffic(c, "client", "remote", timeout=ready_timeout)
            times["ready"] = time.monotonic() - t
            say(f"[{label}] routes to the other node's pod CIDR installed, traffic flows "
                f"({times['ready']:.2f} s)")
            paths = [("cross node", backend, "remote")]
            if same_node and i == 0:
                paths.insert(0, ("same node", "same-node", "local"))
            t = time.monotonic()
            for path, key, dst in paths:
                lat = latency(c, "client", dst, count=count, interval=interval)
                say(f"[{label}] {path} client → {dst}: ping avg {lat.avg_ms:.3f} ms "
                    f"(mdev {lat.mdev_ms:.3f}, {lat.loss_percent:g}% loss)")
                tp = throughput(c, "client", dst, seconds=seconds)
                say(f"[{label}] {path} client → {dst}: iperf3 {tp.gbps:.2f} Gbit/s, "
                    f"{tp.retransmits} retransmits")
                result.rows.append(Row(key, backend, c.config.pod_mtu, tp, lat))
            times["measure"] = time.monotonic() - t
        finally:
            t = time.monotonic()
            c.down()
            times["down"] = time.monotonic() - t
            say(f"[{label}] cluster `{conf.name}` removed ({times['down']:.2f} s)")
    # same node first, then the backends in the order asked
    result.rows.sort(key=lambda r: r.key != "same-node")
    return result
