"""Checks of `labs/05-bgp-like-calico.ipynb`: BGP routing like Calico.

Every node of the `bgp` cluster runs a BIRD 2 daemon, as calico-node does: it announces the
node's pod /24 to every other node (a full node-to-node mesh, sessions `Mesh_<peer ip>`) and
installs what its peers announce into the kernel as `proto bird` routes.

The exercises, and the checks grading them from live `birdc` output, kernel routes and real
connections:

- join a node (`mesh`: every node routes every other node's pod CIDR via that node, every
  session Established; `new-pod`: a pod on the new node answers pods on the other nodes);
- find the BGP session the lab disabled and enable it again (`repaired`);
- remove `bgp-worker2` (`withdrawn`: its routes and sessions are gone from every other node);
- count BGP sessions in this cluster, in a full mesh of 100 nodes, and with route reflectors
  (`sessions`).

The notebook also uses the helpers here: `bgp_sessions` (every node's BGP sessions as one
table), `wait_for_bgp`, `session_timeline` (when a node's sessions came up, from BIRD's own
clock) and `break_a_session` (the setup of the second exercise).
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lab_kit import backends, config, naming
from lab_kit.checks import Context, Lab, Verdict, failed, passed
from lab_kit.errors import LabError
from lab_kit.labs import (
    ipv4_of,
    is_netns,
    route_net,
    route_text,
    whole_number_answer,
)

if TYPE_CHECKING:
    from lab_kit.cluster import Cluster, Table

LAB = Lab("05-bgp-like-calico", "BGP routing like Calico", "bgp")

# labs/clusters/bgp.yaml, as the lab's code sees it (tests/unit/test_lab_bgp_unit.py keeps them
# equal)
ORIGINAL = config.parse_config({
    "kind": "Cluster", "apiVersion": config.KIND_API_VERSION, "name": "bgp",
    "nodes": [{"role": "control-plane"}, {"role": "worker"}, {"role": "worker"}],
    "networking": {"cni": "bgp"}})
ORIGINAL_NODES = tuple(n.name for n in ORIGINAL.nodes)
REMOVE = "bgp-worker2"  # exercise 3 removes this node
WEB_PORT = 8080
JOIN = "NEW = c.add_node(progress=print)"
APPLY_WEB = 'c.apply("manifests/bgp-web.yaml")'
APPLY_NEW = 'c.apply("manifests/bgp-web-new.yaml")'
SETTLE = 15.0  # s a check waits for sessions that are still connecting (BIRD retries each 1 s)
BIG = 100  # the cluster size of the `sessions` question
BIG_REFLECTORS = 2


# --- reading BIRD ------------------------------------------------------------------------------

def parse_protocols(text: str) -> list[dict[str, str]]:
    """The rows of `birdc show protocols`: name, proto, table, state, since, info.

    `state` is BIRD's protocol state (`up`, `down` when disabled, `start` while connecting);
    for a BGP protocol `info` starts with the BGP state (`Established`, `Active`, `Connect`…)
    and may go on with the last error (`Received: Administrative shutdown`).
    """
    rows: list[dict[str, str]] = []
    header = False
    for line in text.splitlines():
        cols = line.split(None, 5)
        if cols[:2] == ["Name", "Proto"]:
            header = True
            continue
        if not header or len(cols) < 5:
            continue
        rows.append({"name": cols[0], "proto": cols[1], "table": cols[2], "state": cols[3],
                     "since": cols[4], "info": cols[5].strip() if len(cols) > 5 else ""})
    return rows


def peer_ip_of(session: str) -> str | None:
    """`Mesh_172_18_0_4` (Calico's mesh name) or `Node_172_18_0_4` -> `172.18.0.4`."""
    _, _, rest = session.partition("_")
    try:
        return str(ipaddress.ip_address(rest.replace("_", ".")))
    except ValueError:
        return None


@dataclass(frozen=True)
class Session:
    """One BGP session as one node's BIRD sees it (`birdc show protocols`)."""

    node: str
    name: str
    state: str
    since: str
    info: str

    @property
    def peer_ip(self) -> str | None:
        return peer_ip_of(self.name)

    @property
    def bgp_state(self) -> str:
        return self.info.split()[0] if self.info else ""

    @property
    def established(self) -> bool:
        return self.state == "up" and self.bgp_state == "Established"

    @property
    def disabled(self) -> bool:
        """`birdc disable` (or `disabled;` in bird.conf): BIRD does not even try."""
        return self.state == "down"

    def words(self) -> str:
        return f"{self.state} {self.info}".strip()


def _protocols(cluster: Cluster, node: config.NodeConfig) -> list[dict[str, str]]:
    """`birdc show protocols` on `node` (not journaled), parsed. Raises LabError if BIRD is
    silent."""
    return parse_protocols(backends.birdc(cluster.runner, node, cluster.bird_paths(node.name),
                                          "show", "protocols", record=False))


def _sessions(node: str, rows: list[dict[str, str]]) -> list[Session]:
    return [Session(node, r["name"], r["state"], r["since"], r["info"])
            for r in rows if r["proto"] == "BGP"]


def read_sessions(cluster: Cluster, node: config.NodeConfig) -> list[Session]:
    """The BGP sessions of `node`'s BIRD (not journaled). Raises LabError if BIRD is silent."""
    return _sessions(node.name, _protocols(cluster, node))


def _node_name_by_ip(cluster: Cluster) -> dict[str, str]:
    return {n.ip: n.name for n in cluster.config.nodes}


def bgp_sessions(cluster: Cluster) -> Table:
    """Every node's BGP sessions in one table (`birdc show protocols` on each node)."""
    from lab_kit.cluster import Table

    names = _node_name_by_ip(cluster)
    rows: list[list[Any]] = []
    for n in cluster.config.nodes:
        try:
            sessions = read_sessions(cluster, n)
        except LabError:
            rows.append([n.name, "-", "-", "BIRD does not answer", "", ""])
            continue
        for s in sessions:
            peer = names.get(s.peer_ip or "", s.peer_ip or "?")
            rows.append([n.name, s.name, peer, s.state, s.since, s.info])
    return Table(["NODE", "SESSION", "PEER", "STATE", "SINCE", "INFO"], rows)


def _converged(cluster: Cluster) -> list[str]:
    """What is not converged yet: sessions not Established, routes not installed."""
    conf = cluster.config
    stuck = []
    for n in conf.nodes:
        try:
            stuck += [f"{n.name}: {s.name} {s.words()}" for s in read_sessions(cluster, n)
                      if not s.established]
        except LabError:
            stuck.append(f"{n.name}: BIRD does not answer")
            continue
        if not backends.bird_routes_installed(cluster.runner, conf, n):
            stuck.append(f"{n.name}: routes to the other nodes' pods not all installed")
    return stuck


def wait_for_bgp(cluster: Cluster, timeout: float = SETTLE) -> float:
    """Wait until every session is Established and every node has every other node's pod
    route; returns the seconds waited. Raises LabError naming what is stuck after `timeout`."""
    t0 = time.monotonic()
    while True:
        stuck = _converged(cluster)
        if not stuck:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise LabError(f"BGP has not converged after {timeout:g} s: " + "; ".join(stuck))
        time.sleep(0.1)


def _clock(since: str) -> float | None:
    """Seconds of the day of a `show protocols` Since value like `20:50:32.688`."""
    for fmt in ("%H:%M:%S.%f", "%H:%M:%S"):
        try:
            t = datetime.strptime(since, fmt)
        except ValueError:
            continue
        return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6
    return None


def session_timeline(cluster: Cluster, node: str) -> str:
    """When `node`'s BIRD started and when each of its sessions came up, at both ends.

    Read from `birdc show protocols`: a protocol's Since column is the time of its last state
    change, so for an Established session it is the moment the session came up.
    """
    conf = cluster.config
    me = conf.node(node)
    rows = _protocols(cluster, me)
    start = next((r["since"] for r in rows if r["proto"] == "Device"), None)
    t0 = _clock(start or "")
    lines = [f"BIRD on {node} started at {start}; its sessions came up (at both ends):"]
    names = _node_name_by_ip(cluster)
    last = 0.0
    for s in _sessions(node, rows):
        peer = names.get(s.peer_ip or "", s.peer_ip or "?")
        far = None
        if s.peer_ip in names:
            far = next((x for x in read_sessions(cluster, conf.node(peer))
                        if x.peer_ip == me.ip), None)
        ends = [s] + ([far] if far else [])
        times = [_clock(x.since) for x in ends if x.established]
        if t0 is None or len(times) != len(ends) or None in times:
            lines.append(f"  {s.name} ({peer}): {s.words()} since {s.since}")
            continue
        up = max(t for t in times if t is not None) - t0
        up += 86400 if up < -1 else 0  # across midnight
        last = max(last, up)
        lines.append(f"  {s.name:<17} to {peer:<20} Established +{up:.2f} s")
    if len(lines) > 1 and t0 is not None:
        lines.append(f"the last of {node}'s sessions was up {last:.2f} s after its BIRD started")
    return "\n".join(lines)


def break_a_session(cluster: Cluster) -> None:
    """The setup of exercise 2: disable one BGP session on one node (`birdc disable`).

    The session between `bgp-worker` and the newest other node is disabled at the newest
    node's end; BIRD closes it with a Cease, and both ends withdraw each other's routes.
    """
    conf = cluster.config
    names = [n.name for n in conf.nodes]
    near = "bgp-worker" if "bgp-worker" in names else names[0]
    far = next(n for n in reversed(conf.nodes) if n.name != near)
    session = backends.bgp_protocol_name(conf.node(near),
                                         conf.bgp_peering == "route-reflector")
    cluster.birdc(far.name, f"disable {session}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        have = {r["dst"] for n in (conf.node(near), far) for r in backends.live_routes(
            cluster.runner, naming.node_netns(n.name), conf.pod_subnet)}
        if not have & {conf.node(near).pod_cidr, far.pod_cidr}:
            break
        time.sleep(0.05)
    print("One BGP session of this cluster has just been disabled at one end, as "
          "`birdc disable <session>` does. Some pods can no longer reach each other.")


# --- what the checks look for --------------------------------------------------------------------

def _nodes(ctx: Context) -> list[config.NodeConfig]:
    return list(ctx.cluster.config.nodes)


def _birdc_hint(node: str, command: str = "show protocols") -> str:
    return f'c.birdc("{node}", "{command}")'


def _restart_bird_hint(ctx: Context, node: str) -> str:
    p = ctx.cluster.bird_paths(node)
    return (f"start it again: c.node(\"{node}\").sh(\"bird -c {p.conf} -s {p.socket} "
            f"-P {p.pid}\")")


def _session_problem(ctx: Context, nodes: list[config.NodeConfig]
                     ) -> tuple[Verdict | None, bool]:
    """(what is wrong with the BGP sessions, whether waiting may fix it) — (None, False): fine.

    Disabled sessions are reported first: the far end of a disabled session is merely trying
    to connect, and enabling it there does nothing.
    """
    conf = ctx.cluster.config
    rr = conf.bgp_peering == "route-reflector"
    names = {n.ip: n.name for n in nodes}
    waiting: list[Session] = []
    for n in nodes:
        if not is_netns(ctx, naming.node_netns(n.name)):
            return failed(f"node {n.name} has no network namespace",
                          hint="the cluster is broken: run the first cell again",
                          expected=naming.node_netns(n.name), actual="missing"), False
        try:
            sessions = read_sessions(ctx.cluster, n)
        except LabError:
            return failed(f"BIRD does not answer on {n.name}",
                          hint=_restart_bird_hint(ctx, n.name),
                          expected=f"BIRD listening on {ctx.cluster.bird_paths(n.name).socket}",
                          actual="no answer"), False
        have = {s.name: s for s in sessions}
        want = {backends.bgp_protocol_name(o, rr): o for o, _ in backends.bgp_peers(conf, n)}
        for name, o in want.items():
            if name not in have:
                return failed(f"{n.name}'s BIRD has no session {name} to {o.name}",
                              hint=f"its bird.conf ({ctx.cluster.bird_paths(n.name).conf}) "
                                   f"should have `protocol bgp {name}`; after editing it, "
                                   f"load it with {_birdc_hint(n.name, 'configure')}",
                              expected=name, actual=", ".join(have) or "no BGP sessions"), False
        for name, s in have.items():
            if name not in want:
                return failed(f"{n.name} still has a session {name} to {s.peer_ip}, which is "
                              "not a node of the cluster",
                              hint="c.remove_node(...) stops the node's BIRD and reconciles "
                                   "every other node (`birdc configure` with the peer gone)",
                              expected="no such session", actual=f"{name}: {s.words()}"), False
            if s.disabled:
                peer = names.get(s.peer_ip or "", s.peer_ip)
                return failed(f"on {n.name}, BGP session {name} (to {peer}) is disabled",
                              hint=f"enable it at this end: {_birdc_hint(n.name, f'enable {name}')}"
                                   f" — {peer}'s end shows `start Active`: it keeps trying, but "
                                   f"{n.name} refuses",
                              expected="up Established", actual=s.words()), False
            if not s.established:
                waiting.append(s)
    if waiting:
        s = waiting[0]
        peer = names.get(s.peer_ip or "", s.peer_ip)
        return failed(f"on {s.node}, BGP session {s.name} (to {peer}) is not Established",
                      hint=f"look at both ends: {_birdc_hint(s.node)} and "
                           f"{_birdc_hint(str(peer))}; a session that is `down` at one end "
                           "was disabled there (`enable` it at that end)",
                      expected="up Established", actual=s.words()), True
    return None, False


def _route_problem(ctx: Context, nodes: list[config.NodeConfig]) -> tuple[Verdict | None, bool]:
    """Every node has `<other's pod CIDR> via <other's IP> dev eth0 proto bird` for each other."""
    for n in nodes:
        routes = ctx.routes(naming.node_netns(n.name))
        for o in nodes:
            if o.name == n.name:
                continue
            want = f"{o.pod_cidr} via {o.ip} dev eth0 proto bird"
            r = next((r for r in routes if r.get("dst") == o.pod_cidr), None)
            if r is None:
                return failed(f"{n.name} has no route to {o.name}'s pods ({o.pod_cidr})",
                              hint=f"{_birdc_hint(n.name, 'show route')} lists what BIRD "
                                   "learned; BIRD puts a learned route into the kernel at once "
                                   f"(or on {_birdc_hint(n.name, 'reload out kernel1')})",
                              expected=want, actual="no route"), True
            if r.get("protocol") != backends.RTPROT_BIRD or r.get("gateway") != o.ip \
                    or r.get("dev") != "eth0":
                return failed(f"{n.name}'s route to {o.name}'s pods is not BIRD's",
                              hint=f"delete it (c.node(\"{n.name}\").sh(\"ip route del "
                                   f"{o.pod_cidr}\")) and let BIRD install its own: "
                                   f"{_birdc_hint(n.name, 'reload out kernel1')}",
                              expected=want, actual=route_text(r)), False
    return None, False


def _mesh_problem(ctx: Context, wait: float) -> Verdict | None:
    """Sessions, then routes; waits up to `wait` s while the only problems are transient."""
    deadline = time.monotonic() + wait
    while True:
        nodes = _nodes(ctx)
        problem, transient = _session_problem(ctx, nodes)
        if problem is None:
            problem, transient = _route_problem(ctx, nodes)
        if problem is None or not transient or time.monotonic() > deadline:
            return problem
        time.sleep(0.2)


def _new_nodes(ctx: Context) -> list[config.NodeConfig]:
    return [n for n in _nodes(ctx) if n.name not in ORIGINAL_NODES]


def _no_new_node() -> Verdict:
    return failed(f"the cluster has only the nodes of clusters/bgp.yaml "
                  f"({', '.join(ORIGINAL_NODES)}) — no node has joined yet",
                  hint=f"join one: {JOIN}", expected="a fourth node",
                  actual=f"{len(ORIGINAL_NODES)} nodes")


def _live_pods(ctx: Context) -> list[tuple[Any, str]]:
    """(PodInfo, its IP in the kernel) for every pod whose netns and address really exist."""
    out = []
    for p in ctx.cluster.pods():
        if is_netns(ctx, p.netns):
            ip = ipv4_of(ctx, p.netns, "eth0")
            if ip:
                out.append((p, ip))
    return out


def _probe(src: Any, dst: Any, ip: str) -> tuple[bool, str]:
    from lab_kit.cluster import probe_socket

    r = probe_socket(src.key, src.netns, dst.key, ip, WEB_PORT, "TCP", "/hostname", 2.0)
    if r.ok and r.reply.strip() == dst.name:
        return True, r.reply.strip()
    return False, r.error if not r.ok else f"answered {r.reply.strip()!r}"


# --- exercise 1: join a node -------------------------------------------------------------------

@LAB.check("mesh", "A node joined: every node routes every other node's pods via BGP")
def check_mesh(ctx: Context) -> Verdict:
    new = _new_nodes(ctx)
    if not new:
        return _no_new_node()
    problem = _mesh_problem(ctx, wait=3.0)
    if problem is not None:
        return problem
    nodes = _nodes(ctx)
    sessions = len(nodes) * (len(nodes) - 1) // 2
    return passed(f"{', '.join(n.name for n in new)} joined: {len(nodes)} nodes, {sessions} BGP "
                  f"sessions all Established, and every node has a `proto bird` route to every "
                  f"other node's pod CIDR via that node's IP")


@LAB.check("new-pod", "A pod on the new node answers pods on the other nodes")
def check_new_pod(ctx: Context) -> Verdict:
    new = _new_nodes(ctx)
    if not new:
        return _no_new_node()
    names = {n.name for n in new}
    pods = _live_pods(ctx)
    targets = [(p, ip) for p, ip in pods if p.node in names]
    if not targets:
        where = new[0].name
        how = APPLY_NEW if where == "bgp-worker3" else \
            f"a pod with `spec.nodeName: {where}` (copy manifests/bgp-web-new.yaml)"
        return failed(f"no pod runs on {', '.join(sorted(names))}",
                      hint=f"put one there: {how}", expected=f"a pod on {where}",
                      actual="no pod")
    sources = [(p, ip) for p, ip in pods if p.node not in names]
    if not sources:
        return failed("no pod runs on the other nodes to connect from",
                      hint=f"start the lab's pods again: {APPLY_WEB}",
                      expected="pods on bgp-worker / bgp-worker2", actual="none")
    conf = ctx.cluster.config
    for dst, ip in targets:
        for src, _ in sources:
            ok, got = _probe(src, dst, ip)
            if not ok:
                there = conf.node(dst.node)
                return failed(f"{src.name} (on {src.node}) gets no answer from {dst.name} "
                              f"({ip}, on {dst.node}): {got}",
                              hint=f"{src.node} needs `{there.pod_cidr} via {there.ip} dev "
                                   f"eth0 proto bird`: compare c.node(\"{src.node}\").sh(\"ip "
                                   "route\") and LAB.run(\"mesh\")",
                              expected=f"HTTP 200 '{dst.name}' from {ip}:{WEB_PORT}",
                              actual=got)
    pairs = len(targets) * len(sources)
    return passed(f"{' and '.join(f'{p.name} ({ip}) on {p.node}' for p, ip in targets)} "
                  f"answered {pairs} connection{'s' * (pairs != 1)} from "
                  f"{', '.join(sorted({p.name for p, _ in sources}))} on the other nodes")


# --- exercise 2: a disabled session ------------------------------------------------------------

@LAB.check("repaired", "Every BGP session is Established again and pods reach each other")
def check_repaired(ctx: Context) -> Verdict:
    problem = _mesh_problem(ctx, wait=SETTLE)
    if problem is not None:
        return problem
    pods = _live_pods(ctx)
    pairs = [(a, b, ip) for a, _ in pods for b, ip in pods if a.node != b.node]
    if not pairs:
        return failed("there are no pods on different nodes to connect",
                      hint=f"start the lab's pods again: {APPLY_WEB}",
                      expected="pods on two nodes", actual=f"{len(pods)} pods")
    for a, b, ip in pairs:
        ok, got = _probe(a, b, ip)
        if not ok:
            return failed(f"{a.name} (on {a.node}) gets no answer from {b.name} ({ip}, on "
                          f"{b.node}): {got}",
                          hint="the sessions and routes look right: compare `ip route get "
                               f"{ip}` on {a.node} (c.node(\"{a.node}\").sh(...)) with the route "
                               f"back on {b.node}",
                          expected=f"HTTP 200 '{b.name}'", actual=got)
    n = len(_nodes(ctx))
    return passed(f"all {n * (n - 1) // 2} sessions are Established, every node routes every "
                  f"other node's pods, and {len(pairs)} pod-to-pod connections across nodes "
                  "went through")


# --- exercise 3: remove a node, count sessions --------------------------------------------------

@LAB.check("withdrawn", f"{REMOVE} is gone, and so are its routes and sessions on every node")
def check_withdrawn(ctx: Context) -> Verdict:
    gone = ORIGINAL.node(REMOVE)
    nodes = _nodes(ctx)
    if any(n.name == REMOVE for n in nodes) or is_netns(ctx, naming.node_netns(REMOVE)):
        return failed(f"{REMOVE} is still a node of the cluster",
                      hint=f'remove it: c.remove_node("{REMOVE}", progress=print)',
                      expected=f"no node {REMOVE}", actual=f"{REMOVE} ({gone.ip}) is there")
    net = ipaddress.ip_network(gone.pod_cidr)
    rr = ctx.cluster.config.bgp_peering == "route-reflector"
    session = backends.bgp_protocol_name(gone, rr)
    for n in nodes:
        for r in ctx.routes(naming.node_netns(n.name)):
            dst = r.get("dst", "")
            hits = dst != "default" and (d := route_net(dst)) is not None and d.overlaps(net)
            if hits or r.get("gateway") == gone.ip:
                return failed(f"{n.name} still routes to {REMOVE}'s pods: `{route_text(r)}`",
                              hint=f"{REMOVE}'s BIRD must close its sessions (c.remove_node "
                                   "stops it, and it sends a Cease) so that its peers withdraw "
                                   f"what it announced; see {_birdc_hint(n.name, 'show route')}",
                              expected=f"no route to {gone.pod_cidr}", actual=route_text(r))
        try:
            sessions = read_sessions(ctx.cluster, n)
        except LabError:
            return failed(f"BIRD does not answer on {n.name}",
                          hint=_restart_bird_hint(ctx, n.name), expected="BIRD running",
                          actual="no answer")
        stale = next((s for s in sessions if s.name == session), None)
        if stale is not None:
            return failed(f"{n.name} still has a BGP session {session} to {REMOVE}",
                          hint="c.remove_node(...) reconciles every other node: their bird.conf "
                               "loses the peer and `birdc configure` drops the session",
                          expected=f"no session {session}", actual=stale.words())
    return passed(f"{REMOVE} ({gone.ip}) is gone; none of the {len(nodes)} remaining nodes has a "
                  f"route to {gone.pod_cidr} or a session {session} any more")


def _pairs(ctx: Context, nodes: list[config.NodeConfig]
           ) -> tuple[set[frozenset[str]], dict[str, int]]:
    """The sessions between nodes of the cluster, each once (the pair of node IPs), whatever
    their state, and how many each node's BIRD has."""
    ips = {n.ip for n in nodes}
    pairs: set[frozenset[str]] = set()
    per_node: dict[str, int] = {}
    for n in nodes:
        mine = [s for s in read_sessions(ctx.cluster, n) if s.peer_ip in ips]
        per_node[n.name] = len(mine)
        pairs |= {frozenset((n.ip, str(s.peer_ip))) for s in mine}
    return pairs, per_node


def big_cluster_sessions(nodes: int = BIG, reflectors: int = 0) -> int:
    """Sessions (each counted once) in a cluster of `nodes`, computed the way the lab peers.

    reflectors=0: a full node-to-node mesh. Otherwise the first `reflectors` nodes are
    control-plane route reflectors (meshed among themselves), every other node their client.
    """
    roles = ["control-plane"] * max(reflectors, 1) + ["worker"] * (nodes - max(reflectors, 1))
    conf = config.ClusterConfig(
        name="big", bgp_peering="route-reflector" if reflectors else "node-mesh",
        nodes=tuple(config.NodeConfig(f"big-{i}", role, f"10.0.{i // 250}.{i % 250 + 1}",
                                      f"10.{100 + i // 250}.{i % 250}.0/24")
                    for i, role in enumerate(roles)), cni="bgp")
    return len({frozenset((n.name, p.name)) for n in conf.nodes
                for p, _ in backends.bgp_peers(conf, n)})


@LAB.check("sessions", "You counted BGP sessions: this cluster, a 100-node mesh, reflectors")
def check_sessions(ctx: Context) -> Verdict:
    nodes = _nodes(ctx)  # no cluster at all: Lab.run says so
    try:
        pairs, per_node = _pairs(ctx, nodes)
    except LabError as e:
        return failed(f"the lab cannot read every node's BGP sessions: {e}",
                      hint="LAB.run(\"mesh\") says which node's BIRD is in trouble",
                      expected="BIRD answering on every node", actual="no answer")
    now, count = len(pairs), len(per_node)
    mesh, rr = big_cluster_sessions(BIG), big_cluster_sessions(BIG, BIG_REFLECTORS)
    clients = BIG - BIG_REFLECTORS
    look = "bgp_sessions(c) lists every node's sessions"
    questions = [
        ("sessions_now", now, count,
         f"{look}: each session has one end on each of two nodes, so count each once"),
        ("sessions_mesh_100", mesh, BIG,
         f"in a full mesh every pair of the {BIG} nodes has one session: N·(N-1)/2"),
        ("sessions_rr_100", rr, BIG,
         f"each of the {clients} clients has a session to each of the {BIG_REFLECTORS} "
         "reflectors, and the reflectors peer with each other"),
    ]
    for name, truth, n, hint in questions:
        value = whole_number_answer(ctx, name, hint)
        if isinstance(value, Verdict):
            return value
        if value == truth:
            continue
        why = ""
        if value == 2 * truth:
            why = ": that counts every session twice, once at each end"
        elif name != "sessions_rr_100" and value == n - 1:
            why = ": that is how many sessions ONE node has"
        elif name == "sessions_rr_100" and value == rr - 1:
            why = ": the two reflectors also have a session with each other"
        elif name == "sessions_rr_100" and value == clients:
            why = ": each client peers with both reflectors, not one"
        elif name == "sessions_rr_100" and value == mesh:
            why = ": that is the full mesh; with reflectors clients only peer with them"
        elif name == "sessions_mesh_100" and value == n * n:
            why = ": a node has no session with itself"
        return failed(f"`{name}` = {value} is not right{why}", hint=hint,
                      expected="every session counted once", actual=value)
    return passed(f"this cluster: {count} nodes, {now} sessions ({count - 1} per node); a "
                  f"{BIG}-node full mesh needs {mesh}, with {BIG_REFLECTORS} route reflectors "
                  f"only {rr}")


__all__ = ["LAB", "Session", "bgp_sessions", "big_cluster_sessions", "break_a_session",
           "parse_protocols", "peer_ip_of", "read_sessions", "session_timeline", "wait_for_bgp"]
