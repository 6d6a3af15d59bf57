"""Checks of `labs/01-pod-netns.ipynb`: a pod built by hand on node `podns-worker`.

The learner plays container runtime and CNI plugin: a named netns (`POD`), a veth pair
(`veth-byhand` on the node, `eth0` in the pod), addresses, a default route, and two processes
sharing the pod's loopback. Every check reads the live kernel and, where it can, sends real
packets.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from lab_kit import kernel, naming
from lab_kit.checks import CheckFn, Context, Lab, Verdict, failed, passed
from lab_kit.labs import (
    default_gateway,
    has_no_carrier,
    ipv4_of,
    is_netns,
    is_up,
    kind,
    links_by_name,
    peer_netns,
    pings,
    state_words,
    veth_peer_in,
)

LAB = Lab("01-pod-netns", "A pod is a network namespace", "podns")

NODE_NAME = "podns-worker"
POD_NAME = "byhand"
HOST_VETH = "veth-byhand"
PORT = 9000


@dataclass(frozen=True)
class Plan:
    """What the exercises ask for, derived from the node's pod CIDR (not from the kernel)."""
    node_ns: str
    pod_ns: str
    pod_ip: str  # .10 of the node's pod CIDR
    gateway: str  # .1: the node's end of the veth
    prefix: int

    def on_node(self, command: str) -> str:
        """A hint the learner can paste into a cell: the command run through the node's shell."""
        return f'NODE.sh("{command}")'

    def in_pod(self, command: str) -> str:
        return self.on_node(f"ip -n {self.pod_ns} {command}")


def plan(ctx: Context) -> Plan:
    node = ctx.cluster.config.node(NODE_NAME)
    net = ipaddress.ip_network(node.pod_cidr)
    return Plan(node_ns=naming.node_netns(NODE_NAME), pod_ns=ctx.cluster.netns_name(POD_NAME),
                pod_ip=str(net[10]), gateway=str(net[1]), prefix=net.prefixlen)


def _need_netns(p: Plan) -> Verdict:
    return failed(f"the pod's network namespace `{p.pod_ns}` does not exist yet",
                  hint="do the first exercise: " + p.on_node(f"ip netns add {p.pod_ns}"),
                  expected=p.pod_ns, actual="missing")


def _pod_check(name: str, title: str) -> Callable[[Callable[[Context, Plan], Verdict]], CheckFn]:
    """Register a check of the pod built in the later exercises: it is called with the plan,
    and only once the pod's netns (the first exercise) exists; before, it fails saying so."""
    def deco(fn: Callable[[Context, Plan], Verdict]) -> CheckFn:
        @LAB.check(name, title)
        @functools.wraps(fn)
        def check(ctx: Context) -> Verdict:
            p = plan(ctx)
            return fn(ctx, p) if is_netns(ctx, p.pod_ns) else _need_netns(p)
        return check
    return deco


def _route_get(ctx: Context, netns: str, ip: str) -> str:
    """How `netns` would send to `ip` (`ip route get`), for actual: lines."""
    rows = ctx.ip_json(netns, "route", "get", ip)
    if not rows:
        return f"`ip route get {ip}`: no route (Network is unreachable)"
    r = rows[0]
    via = f" via {r['gateway']}" if r.get("gateway") else ""
    return f"`ip route get {ip}`: {ip}{via} dev {r.get('dev', '?')}"


@LAB.check("netns", "The pod's network namespace exists")
def check_netns(ctx: Context) -> Verdict:
    p = plan(ctx)
    if is_netns(ctx, p.pod_ns):
        return passed(f"`{p.pod_ns}` is a network namespace (`ip netns list` shows it)")
    if ctx.netns_exists(p.pod_ns):
        return failed(f"/run/netns/{p.pod_ns} is there, but it is an empty file, not a network "
                      "namespace (a half-finished `ip netns add`)",
                      hint=f"remove it and add it again: {p.on_node(f'ip netns del {p.pod_ns}')}"
                           f", then {p.on_node(f'ip netns add {p.pod_ns}')}",
                      expected="a network namespace", actual="an empty placeholder file")
    near = [n for n in kernel.list_netns() if POD_NAME in n]
    if near:
        return failed(f"no netns `{p.pod_ns}`, but there is `{near[0]}`",
                      hint=f"the name matters (it is how the lab finds the pod): remove it with "
                           f"`ip netns del {near[0]}` and use the variable POD: "
                           'NODE.sh(f"ip netns add {POD}")',
                      expected=p.pod_ns, actual=", ".join(near))
    return _need_netns(p)


@_pod_check("veth", "A veth pair joins the pod's eth0 to veth-byhand on the node")
def check_veth(ctx: Context, p: Plan) -> Verdict:
    create = p.on_node(f"ip link add {HOST_VETH} type veth peer name eth0 netns {p.pod_ns}")
    pod_links = links_by_name(ctx, p.pod_ns)
    eth0 = pod_links.get("eth0")
    host = ctx.link(p.node_ns, HOST_VETH)
    if eth0 is None:
        others = [n for n in pod_links if n != "lo"]
        if others:
            hint = (f"the pod's end must be called eth0: "
                    f"{p.in_pod(f'link set {others[0]} name eth0')}")
        elif host is not None and kind(host) == "veth" and peer_netns(ctx, p.node_ns, host) is None:
            hint = (f"{HOST_VETH} exists but its other end is still in the node: move it into the "
                    f"pod as eth0 (`ip link set PEER netns {p.pod_ns} name eth0`), or delete "
                    f"{HOST_VETH} and run {create}")
        else:
            hint = f"create the pair in one command: {create}"
        return failed("the pod has no eth0", hint=hint, expected="eth0 (a veth) inside the pod",
                      actual="links in the pod: " + ", ".join(["lo", *others]))
    if kind(eth0) != "veth":
        return failed(f"eth0 in the pod is a `{kind(eth0) or 'plain'}` device, not a veth",
                      hint=f"delete it ({p.in_pod('link del eth0')}) and run {create}",
                      expected="kind veth", actual=kind(eth0) or "(none)")
    peer = veth_peer_in(ctx, p.pod_ns, eth0, p.node_ns)
    if peer is None:
        where = peer_netns(ctx, p.pod_ns, eth0) or "a namespace without a name (the host's own?)"
        return failed(f"eth0's other end is not in node `{NODE_NAME}` but in {where}",
                      hint=f"delete the pair ({p.in_pod('link del eth0')}) and create it from "
                           f"the node's shell: {create}",
                      expected=f"the peer in {p.node_ns}", actual=where)
    if peer["ifname"] != HOST_VETH:
        return failed(f"eth0's other end on the node is called `{peer['ifname']}`",
                      hint="the lab looks for it by name: "
                           + p.on_node(f"ip link set {peer['ifname']} name {HOST_VETH}"),
                      expected=HOST_VETH, actual=peer["ifname"])
    return passed(f"eth0@if{eth0['link_index']} in the pod and {HOST_VETH}@if{peer['link_index']}"
                  f" on {NODE_NAME} are the two ends of one veth pair")


@_pod_check("address", "eth0 has its address and is up; lo is up")
def check_address(ctx: Context, p: Plan) -> Verdict:
    pod_links = links_by_name(ctx, p.pod_ns)
    eth0 = pod_links.get("eth0")
    if eth0 is None:
        return failed("the pod has no eth0 to put an address on",
                      hint="do the veth exercise first (LAB.run(\"veth\") tells you what is "
                           "missing)", expected="eth0 in the pod", actual="no eth0")
    want = f"{p.pod_ip}/{p.prefix}"
    have = ctx.ipv4s(eth0)
    if want not in have:
        same = [a for a in have if a.split("/")[0] == p.pod_ip]
        if same:
            return failed(f"eth0 has {same[0]}: the right address with the wrong prefix length",
                          hint=f"the /{p.prefix} tells the kernel the whole subnet is reachable on "
                               "eth0 (that makes the connected route). Replace it: "
                               f"{p.in_pod(f'addr del {same[0]} dev eth0')}, then "
                               f"{p.in_pod(f'addr add {want} dev eth0')}",
                          expected=want, actual=same[0])
        if have:
            return failed(f"eth0 has {', '.join(have)}, not {want}",
                          hint=f"remove it ({p.in_pod(f'addr del {have[0]} dev eth0')}) and add "
                               f"the pod's address: {p.in_pod(f'addr add {want} dev eth0')}",
                          expected=want, actual=", ".join(have))
        return failed("eth0 in the pod has no IPv4 address",
                      hint=p.in_pod(f"addr add {want} dev eth0"), expected=want, actual="none")
    if not is_up(eth0):
        return failed("eth0 in the pod is DOWN",
                      hint=p.in_pod("link set eth0 up"), expected="eth0 UP",
                      actual=state_words(eth0))
    lo = pod_links.get("lo")
    if not is_up(lo):
        return failed("lo in the pod is DOWN: a new netns starts with its loopback down, so "
                      "even 127.0.0.1 does not work yet",
                      hint=p.in_pod("link set lo up"), expected="lo UP", actual=state_words(lo))
    note = (f" (eth0 shows NO-CARRIER until {HOST_VETH} on the node is up too)"
            if has_no_carrier(eth0) else "")
    return passed(f"eth0 has {want} and is UP; lo is UP{note}")


def _node_end_problem(ctx: Context, p: Plan) -> str | None:
    """What is wrong with the node's end of the pair, as a hint (None: nothing found)."""
    host = ctx.link(p.node_ns, HOST_VETH)
    if host is None:
        return f"there is no {HOST_VETH} on the node: do the veth exercise first"
    want = f"{p.gateway}/{p.prefix}"
    if want not in ctx.ipv4s(host):
        return (f"the node's end has no {want}: {p.on_node(f'ip addr add {want} dev {HOST_VETH}')}"
                f" — it is the pod's gateway, and it gives the node its route to the pod's subnet")
    if not is_up(host):
        return f"{HOST_VETH} on the node is DOWN: {p.on_node(f'ip link set {HOST_VETH} up')}"
    eth0 = ctx.link(p.pod_ns, "eth0")
    if not is_up(eth0) or f"{p.pod_ip}/{p.prefix}" not in ctx.ipv4s(eth0):
        return "the pod's side is not ready: LAB.run(\"address\") says what is missing"
    return None


@_pod_check("route", "The pod's default route goes via the node, and it works")
def check_route(ctx: Context, p: Plan) -> Verdict:
    routes = ctx.routes(p.pod_ns)
    shown = "; ".join(f"{r.get('dst')}" + (f" via {r['gateway']}" if r.get("gateway") else "")
                      + f" dev {r.get('dev', '?')}" for r in routes) or "(empty table)"
    gw = default_gateway(ctx, p.pod_ns)
    add = p.in_pod(f"route add default via {p.gateway}")
    if gw is None:
        if any(r.get("dst") == "default" for r in routes):
            return failed("the default route has no gateway (`default dev eth0`)",
                          hint="name the next hop: " + p.in_pod(
                              f"route replace default via {p.gateway}"),
                          expected=f"default via {p.gateway} dev eth0", actual=shown)
        hint = add if ctx.link(p.pod_ns, "eth0") else "do the veth and address exercises first"
        return failed("the pod has no default route", hint=hint,
                      expected=f"default via {p.gateway} dev eth0", actual=shown)
    if gw != p.gateway:
        return failed(f"the default route goes via {gw}; the pod's gateway is {p.gateway}, "
                      f"the node's end of the veth",
                      hint=p.in_pod(f"route replace default via {p.gateway}"),
                      expected=f"default via {p.gateway}", actual=f"default via {gw}")
    node_ip = ipv4_of(ctx, p.node_ns, "eth0") or "?"
    if not pings(ctx, p.pod_ns, node_ip):
        problem = _node_end_problem(ctx, p) or (
            f"try it yourself: NODE.sh(f\"ip netns exec {{POD}} ping -c 1 {node_ip}\") and "
            f"compare `ip -n {p.pod_ns} route get {node_ip}`")
        return failed(f"the route is in place, but a ping from the pod to the node's address "
                      f"{node_ip} gets no answer", hint=problem,
                      expected=f"a reply from {node_ip}",
                      actual="no reply; " + _route_get(ctx, p.pod_ns, node_ip))
    return passed(f"default via {gw}; the pod pings the node at {node_ip}, an address outside "
                  f"its own subnet that only the default route leads to")


@_pod_check("ping", "The node reaches the pod")
def check_ping(ctx: Context, p: Plan) -> Verdict:
    if pings(ctx, p.node_ns, p.pod_ip):
        return passed(f"{NODE_NAME} pings the pod at {p.pod_ip} "
                      f"({_route_get(ctx, p.node_ns, p.pod_ip)})")
    problem = _node_end_problem(ctx, p) or (
        f"look at {p.on_node(f'ip route get {p.pod_ip}')} and "
        f"{p.on_node(f'ping -c 1 {p.pod_ip}')}")
    return failed(f"{NODE_NAME} gets no answer from the pod at {p.pod_ip}", hint=problem,
                  expected=f"a reply from {p.pod_ip}",
                  actual="no reply; " + _route_get(ctx, p.node_ns, p.pod_ip))


def _find_server(p: Plan) -> str:
    """A command listing what listens on PORT in the node's netns (`ss` sees only its own)."""
    return p.on_node(f"ss -ltnp 'sport = :{PORT}'")


@_pod_check("localhost", "Two processes in the pod talk over localhost")
def check_localhost(ctx: Context, p: Plan) -> Verdict:
    in_pod = ctx.tcp_connects(p.pod_ns, "127.0.0.1", PORT)
    in_node = ctx.tcp_connects(p.node_ns, "127.0.0.1", PORT)
    start = (f'NODE.sh(f"ip netns exec {{POD}} setsid socat TCP-LISTEN:{PORT},bind=127.0.0.1,'
             "fork,reuseaddr SYSTEM:'echo hello from container A' >/dev/null 2>&1 &\")")
    if not in_pod:
        lo = ctx.link(p.pod_ns, "lo")
        if not is_up(lo):
            return failed("lo is DOWN in the pod, so 127.0.0.1 cannot work there",
                          hint=p.in_pod("link set lo up") + ", then start container A again",
                          expected="lo UP", actual=state_words(lo))
        if in_node:
            return failed(f"127.0.0.1:{PORT} answers in the node's netns, not in the pod's: "
                          "container A was started on the node",
                          hint="each netns has its own loopback; start the server inside the "
                               f"pod with `ip netns exec`: {start}, and stop the node's one "
                               f"(find its pid with {_find_server(p)}, then `kill PID`)",
                          expected=f"127.0.0.1:{PORT} open in the pod, closed on the node",
                          actual="open on the node, closed in the pod")
        return failed(f"nothing accepts connections on 127.0.0.1:{PORT} inside the pod",
                      hint=f"start container A: {start}",
                      expected=f"127.0.0.1:{PORT} open in the pod", actual="connection refused")
    if in_node:
        return failed(f"127.0.0.1:{PORT} answers in the pod, and ALSO in the node's netns",
                      hint="the node should see nothing on its own loopback: stop the extra "
                           f"server on the node (find its pid with {_find_server(p)}, then "
                           "`kill PID`)",
                      expected="closed on the node", actual="open on the node too")
    return passed(f"a second process in the pod reached 127.0.0.1:{PORT}; from the node the "
                  "same address is closed — each netns has its own loopback")
