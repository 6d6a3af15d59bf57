"""Checks of `labs/03-routing-between-nodes.ipynb`: routing between nodes, Flannel's host-gw.

Pod `pod-a` runs on `hostgw-worker`, pod `pod-b` on `hostgw-worker2`. The notebook deletes the
host-gw routes between the two workers, and the learner puts them back by hand: on each worker,
`<other worker's pod /24> via <other worker's underlay IP> dev eth0`. Then the learner answers
what the packet looks like on the underlay (next hop, source and destination IP) and finds out
why host-gw needs every node on one L2 segment (the kernel refuses a next hop that is not
on-link).

Every check reads the live kernel: node and pod addresses (`ip -j addr`), routing tables
(`ip -j route`), the kernel's own decision (`ip -j route get`), neighbour entries, and real TCP
connections between the pods. Node and pod *names* come from the cluster; their addresses and
pod CIDRs (the network of each node's `cni0` address) are read from the kernel.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lab_kit import kernel, naming
from lab_kit.checks import Context, Lab, Verdict, failed, passed
from lab_kit.labs import (
    best_route,
    ip_of,
    ipv4_of,
    is_netns,
    links_by_name,
    node_ips,
    norm_answer,
    route_get,
    route_text,
)

if TYPE_CHECKING:
    pass

LAB = Lab("03-routing-between-nodes", "Routing between nodes (host-gw)", "hostgw")

WORKER, WORKER2 = "hostgw-worker", "hostgw-worker2"
SHELLS = {WORKER: "W1", WORKER2: "W2"}  # the notebook's names for c.node(...)
PODS = {WORKER: "pod-a", WORKER2: "pod-b"}
PORT = 8080
UNDERLAY = "eth0"
BRIDGE = "cni0"
APPLY = 'c.apply("manifests/cross-node-pods.yaml")'
# the kernel's words for a next hop that is not on-link: iproute2 with extended acks prints the
# first, older kernels or iproute2 the second
OFF_LINK_ERRORS = ("invalid gateway", "network is unreachable")
ENCAP_WORDS = re.compile(r"encap|tunnel|wrap|envelop|outer|overlay|udp|vxlan header|"
                         r"inside (another|an?|a new) (\w+ )?(packet|datagram|frame|header)")


@dataclass(frozen=True)
class NodeView:
    """One worker and its pod, as the live kernel has them."""
    name: str
    netns: str
    ip: str | None  # eth0's address on the underlay
    cidr: str | None  # the node's pod CIDR: the network of cni0's address
    gateway: str | None  # cni0's address (the pods' default gateway)
    pod: str
    pod_netns: str
    pod_ip: str | None
    routes: list[dict[str, Any]]  # the node's main table (`ip -j route show`), read once

    def on(self, command: str) -> str:
        """A hint the learner can paste: the command run through the notebook's node shell."""
        return f'{SHELLS[self.name]}.sh("{command}")'


def view(ctx: Context, node: str) -> NodeView:
    cluster = ctx.cluster.name  # attach first: a check on a stopped cluster says so
    ns = naming.node_netns(node)
    links = links_by_name(ctx, ns)
    cni0 = ctx.ipv4s(links.get(BRIDGE))
    cidr = str(ipaddress.ip_interface(cni0[0]).network) if cni0 else None
    pod = PODS[node]
    pod_ns = naming.pod_netns(cluster, "default", pod)
    pod_ip = ipv4_of(ctx, pod_ns, "eth0") if is_netns(ctx, pod_ns) else None
    return NodeView(node, ns, ip_of(links.get(UNDERLAY)), cidr, ip_of(links.get(BRIDGE)), pod,
                    pod_ns, pod_ip, ctx.routes(ns))


def _missing(a: NodeView, b: NodeView) -> Verdict | None:
    for v in (a, b):
        if v.pod_ip is None:
            return failed(f"pod {v.pod} is not running on {v.name}",
                          hint=f"run the notebook's setup cells: they apply the pods ({APPLY})",
                          expected=f"{v.pod} with an address on eth0", actual="missing")
        if v.ip is None or v.cidr is None:
            return failed(f"node {v.name} has no {UNDERLAY} or {BRIDGE} address",
                          hint="re-create the cluster: run the notebook from its first cell",
                          expected=f"{UNDERLAY} and {BRIDGE} with addresses", actual="missing")
    return None


def _own_route_problem(v: NodeView) -> Verdict | None:
    """A node's route to its own pods must stay the connected route on cni0."""
    own = [r for r in v.routes if r.get("dst") == v.cidr]
    if any(r.get("dev") == BRIDGE and not r.get("gateway") for r in own):
        return None
    restore = v.on(f"ip route replace {v.cidr} dev {BRIDGE} proto kernel scope link "
                   f"src {v.gateway}")
    have = ", ".join(route_text(r) for r in own) or "no route"
    return failed(f"{v.name}'s route to its OWN pods ({v.cidr}) is `{have}`, not the connected "
                  f"route on {BRIDGE}: a route meant for the other node ended up on the wrong "
                  "node, and `ip route replace` overwrote the kernel's route",
                  hint=f"restore it with {restore}; a node needs host-gw routes only to the "
                       "OTHER nodes' pod CIDRs",
                  expected=f"{v.cidr} dev {BRIDGE} proto kernel", actual=have)


def _route_problem(ctx: Context, src: NodeView, dst: NodeView, nodes: dict[str, str],
                   back: bool = False) -> Verdict | None:
    """What is wrong with `src`'s route to `dst`'s pods, or None (host-gw's route is there)."""
    assert src.cidr and dst.cidr and dst.ip and dst.pod_ip
    want = f"{dst.cidr} via {dst.ip} dev {UNDERLAY}"
    fix = src.on(f"ip route replace {want}")
    exact = next((r for r in src.routes if r.get("dst") == dst.cidr), None)
    if exact is None:
        other = best_route(src.routes, dst.pod_ip)
        if other is not None and other.get("dst") not in ("default",):
            return failed(f"{src.name} has no route for the whole of {dst.name}'s pod CIDR "
                          f"{dst.cidr}; {dst.pod}'s {dst.pod_ip} is matched by "
                          f"`{route_text(other)}` instead",
                          hint=f"host-gw adds ONE route per node, for its whole /24: delete "
                               f"yours ({src.on('ip route del ' + route_text(other))}) and run "
                               f"{src.on('ip route add ' + want)}",
                          expected=want, actual=route_text(other))
        if back:
            return failed(f"{src.name} has no route back to {dst.name}'s pods ({dst.cidr}): "
                          f"{src.pod}'s replies to {dst.pod} ({dst.pod_ip}) die there "
                          "(ICMP network unreachable), so no connection completes",
                          hint="return traffic needs its own route, on the OTHER node: "
                               + src.on(f"ip route add {want}"),
                          expected=want, actual="no route")
        tail = (f", and no default route either: `ip route get {dst.pod_ip}` there says "
                "`Network is unreachable`" if other is None else
                f": only `{route_text(other)}` matches {dst.pod_ip}")
        return failed(f"{src.name} has no route to {dst.name}'s pods ({dst.cidr}){tail}",
                      hint=f"add host-gw's route on {src.name}: " + src.on(f"ip route add {want}"),
                      expected=want, actual="no route")
    gw, dev = exact.get("gateway"), exact.get("dev")
    have = route_text(exact)
    if gw == dst.ip and dev == UNDERLAY:
        return None
    if gw is None:
        why = (f"without a `via`, the kernel treats every pod IP of {dst.cidr} as a neighbour on "
               f"{dev} and ARPs for it; nobody there owns pod IPs")
    elif gw == src.ip:
        why = f"{gw} is {src.name}'s OWN address: the next hop must be the node that has the pods"
    elif gw in nodes:
        why = (f"{gw} is {nodes[gw]}, not {dst.name}: that node happens to forward the packets "
               "(it has its own route), a detour through a third node that breaks when it goes "
               f"away. host-gw sends them straight to the node that owns {dst.cidr}")
    elif gw == dst.pod_ip or ipaddress.ip_address(gw) in ipaddress.ip_network(dst.cidr):
        why = (f"{gw} is inside {dst.cidr}, {dst.name}'s pod range: the next hop is the node's "
               f"underlay address ({dst.ip}), which the pod range sits behind")
    elif dev != UNDERLAY:
        why = (f"the route leaves through {dev}; between nodes, packets cross the underlay, "
               f"{UNDERLAY}")
    else:
        neigh = ctx.ip_json(src.netns, "neigh", "show", gw, "dev", UNDERLAY)
        state = "/".join(neigh[0].get("state", [])) if neigh else "no entry yet"
        why = (f"no node has {gw}: {src.name}'s ARP request for it goes unanswered "
               f"(its neighbour entry: {state})")
    return failed(f"{src.name}'s route to {dst.name}'s pods is `{have}`: {why}",
                  hint=f"point it at {dst.name}'s underlay address: {fix}",
                  expected=want, actual=have)


def _probe(src: NodeView, dst: NodeView, tries: int = 2) -> tuple[bool, str]:
    """A real TCP connection (HTTP GET /hostname) from `src`'s pod to `dst`'s pod."""
    from lab_kit.cluster import probe_socket

    assert dst.pod_ip
    error = ""
    for _ in range(tries):
        r = probe_socket(src.pod, src.pod_netns, dst.pod, dst.pod_ip, PORT, "TCP", "/hostname",
                         1.5)
        if r.ok and r.reply.strip() == dst.pod:
            return True, f"{r.ms:.1f} ms"
        error = r.error or f"answered {r.reply!r}"
    return False, error


def _forwarding(v: NodeView) -> bool:
    r = kernel.Runner().run(["sysctl", "-n", "net.ipv4.ip_forward"], v.netns, check=False,
                            record=False)
    return r.stdout.strip() == "1"


# --- exercise 1: the routes, by hand ----------------------------------------------------------

@LAB.check("route-there", "hostgw-worker routes hostgw-worker2's pod CIDR via its underlay IP")
def check_route_there(ctx: Context) -> Verdict:
    a, b = view(ctx, WORKER), view(ctx, WORKER2)
    problem = (_missing(a, b) or _own_route_problem(a) or _own_route_problem(b)
               or _route_problem(ctx, a, b, node_ips(ctx.cluster)))
    if problem is not None:
        return problem
    got = route_get(ctx, a.netns, str(b.pod_ip), a.pod_ip, BRIDGE)
    return passed(f"{a.name} sends {b.pod}'s packets ({b.pod_ip}) to {b.ip} on {UNDERLAY} "
                  f"(`ip route get` → via {(got or {}).get('gateway')}); now watch what happens "
                  "to the replies")


@LAB.check("routes", "Both workers route each other's pods, and pod-a and pod-b talk both ways")
def check_routes(ctx: Context) -> Verdict:
    a, b = view(ctx, WORKER), view(ctx, WORKER2)
    missing = _missing(a, b)
    if missing is not None:
        return missing
    nodes = node_ips(ctx.cluster)
    for src, dst, back in ((a, b, False), (b, a, True)):
        problem = _own_route_problem(src) or _route_problem(ctx, src, dst, nodes, back)
        if problem is not None:
            return problem
    for v in (a, b):
        if not _forwarding(v):
            return failed(f"{v.name} does not forward packets (net.ipv4.ip_forward=0)",
                          hint=v.on("sysctl -w net.ipv4.ip_forward=1"),
                          expected="net.ipv4.ip_forward = 1", actual="0")
    times = []
    for src, dst in ((a, b), (b, a)):
        ok, detail = _probe(src, dst)
        if not ok:
            return failed(f"the routes look right, but {src.pod} ({src.pod_ip}) cannot open a "
                          f"TCP connection to {dst.pod} ({dst.pod_ip}:{PORT}): {detail}",
                          hint=f"follow the packet hop by hop with `ip route get`: in "
                               f"{src.pod}, on {src.name} (`ip route get {dst.pod_ip} from "
                               f"{src.pod_ip} iif {BRIDGE}`) and on {dst.name}; a capture on "
                               f"each node's {UNDERLAY} shows where it stops",
                          expected=f"HTTP 200 '{dst.pod}'", actual=detail)
        times.append(detail)
    return passed(f"{a.name}: {b.cidr} via {b.ip}; {b.name}: {a.cidr} via {a.ip}; real TCP "
                  f"connections {a.pod} → {b.pod} ({times[0]}) and {b.pod} → {a.pod} "
                  f"({times[1]}) both work")


# --- exercise 2: what the packet looks like on the underlay -----------------------------------

def _ip_answer(value: Any) -> tuple[str, str | None]:
    """(the answer as text, a problem with it or None); a /prefix is dropped."""
    text = norm_answer(value)
    if not text:
        return text, "empty"
    try:
        return str(ipaddress.ip_interface(text).ip), None
    except ValueError:
        return text, "not an IPv4 address"


@LAB.check("next-hop", "You found hostgw-worker's next hop for pod-b and the IPs on the wire")
def check_next_hop(ctx: Context) -> Verdict:
    a, b = view(ctx, WORKER), view(ctx, WORKER2)
    missing = _missing(a, b)
    if missing is not None:
        return missing
    assert b.pod_ip and a.pod_ip
    nodes = node_ips(ctx.cluster)
    truth = route_get(ctx, a.netns, b.pod_ip, a.pod_ip, BRIDGE)
    if truth is None or not truth.get("gateway"):
        have = "no route" if truth is None else f"dev {truth.get('dev')} without a next hop"
        return failed(f"{a.name} has no next hop for {b.pod} ({b.pod_ip}) right now: {have}",
                      hint="finish exercise 1 first (LAB.run(\"routes\") says what is missing)",
                      expected=f"a route via {b.ip}", actual=have)
    hop = truth["gateway"]
    look = f'W1.sh("ip route get {b.pod_ip} from {a.pod_ip} iif {BRIDGE}")'
    names = {a.pod_ip: f"{a.pod}'s address", b.pod_ip: f"{b.pod}'s address",
             a.gateway: f"{BRIDGE} on {a.name}: {a.pod}'s default gateway, the FIRST hop",
             b.gateway: f"{BRIDGE} on {b.name}, {b.pod}'s gateway"}
    names.update({ip: f"node {n}'s underlay address" for ip, n in nodes.items()})
    answers = {"next_hop": hop, "wire_src": a.pod_ip, "wire_dst": b.pod_ip}
    for key, want in answers.items():
        got, problem = _ip_answer(ctx.get(key))
        if problem == "empty":
            hints = {"next_hop": f"ask the kernel on {a.name}: {look}; the next hop is the "
                                 "address after `via`",
                     "wire_src": "which source address does the packet leave pod-a with, and "
                                 "does any hop rewrite it?",
                     "wire_dst": "which destination address does pod-a put in the IP header?"}
            return failed(f"`{key}` is empty", hint=f"{hints[key]} (set {key} = \"…\")",
                          expected="an IPv4 address", actual="(nothing)")
        if problem:
            return failed(f"`{key}` = {got!r} is {problem}",
                          hint=f'write it like {key} = "{a.ip}"', expected="an IPv4 address",
                          actual=got)
        if got == want:
            continue
        who = names.get(got, "not an address of this cluster's nodes or pods")
        if key == "next_hop":
            if got == b.pod_ip:
                why = (f"{got} is where the packet is going, not the next hop: {a.name} cannot "
                       f"reach {b.pod} directly, it hands the packet to the node that can")
            else:
                why = f"{got} is {who}"
            return failed(f"`next_hop` = {got}: {why}",
                          hint=f"{look} prints `… via NEXT_HOP dev {UNDERLAY}`",
                          expected=f"the `via` of {a.name}'s route to {b.pod_ip}",
                          actual=f"{got} ({who})")
        other = "wire_dst" if key == "wire_src" else "wire_src"
        if got == answers[other]:
            role = "destination" if other == "wire_dst" else "source"
            return failed(f"`{key}` = {got}: that is {who}, the packet's {role}",
                          hint="source and destination are swapped: pod-a sends, pod-b receives",
                          expected=want, actual=got)
        if got in nodes:
            verb = "source" if key == "wire_src" else "destination"
            why = (f"{got} is {who}. Routing to a next hop does NOT rewrite the IP header: "
                   f"the next hop ({hop}) only decides the Ethernet destination MAC. The "
                   f"{verb} IP stays the pod's (no NAT, no encapsulation with host-gw)")
        else:
            why = f"{got} is {who}"
        return failed(f"`{key}` = {got}: {why}",
                      hint="the pods' addresses: c.get_pods(); the capture below shows the "
                           "IP header on the underlay",
                      expected=f"the {'source' if key == 'wire_src' else 'destination'} IP "
                               "in the packet on the underlay",
                      actual=f"{got} ({who})")
    mac = ctx.ip_json(a.netns, "neigh", "show", hop, "dev", UNDERLAY)
    mac_text = f" ({hop} is lladdr {mac[0]['lladdr']} in {a.name}'s neighbour table)" \
        if mac and mac[0].get("lladdr") else ""
    return passed(f"{a.name} hands the packet to {hop} ({nodes.get(hop, '?')}) on "
                  f"{UNDERLAY}{mac_text}; on the wire it still reads {a.pod_ip} → {b.pod_ip}: "
                  "the next hop only picks the destination MAC")


# --- exercise 3: why host-gw needs one L2 segment --------------------------------------------

_ROUTE_CMD = re.compile(r"\broute\s+(?:add|replace|append|change)\s+(?P<dst>\S+)"
                        r"(?P<rest>[^;&|\n]*)")
_VIA = re.compile(r"\bvia\s+(?:inet\s+)?(\d+\.\d+\.\d+\.\d+)")
_DEV = re.compile(r"\bdev\s+(\S+)")


@dataclass(frozen=True)
class Attempt:
    """The learner's last `ip route add … via …` on a node, from the cluster's journal."""
    node: str
    dst: str
    gateway: str
    dev: str | None
    rc: int


def _on_link_dev(ctx: Context, netns: str, gw: str) -> str | None:
    """The link on which `gw` is a direct neighbour of `netns` (`ip route get` names no
    gateway), or None when it is not on-link."""
    r = route_get(ctx, netns, gw)
    if r is None or r.get("gateway") or r.get("type", "unicast") != "unicast":
        return None
    return r.get("dev")


def _stray_routes(ctx: Context, nodes: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """(node, route) for routes on the workers whose next hop is no node."""
    out = []
    for node in (WORKER, WORKER2):
        for r in ctx.routes(naming.node_netns(node)):
            gw = r.get("gateway")
            if gw and gw not in nodes:
                out.append((node, r))
    return out


def _last_attempt(ctx: Context) -> Attempt | None:
    netns = {n.netns: n.name for n in ctx.cluster.nodes()}
    for e in reversed(ctx.cluster.journal()):
        if e.source != "you" or e.netns not in netns:
            continue
        for m in reversed(list(_ROUTE_CMD.finditer(" ".join(e.argv)))):
            via, dev = _VIA.search(m["rest"]), _DEV.search(m["rest"])
            if via:
                return Attempt(netns[e.netns], m["dst"], via[1], dev[1] if dev else None, e.rc)
    return None


@LAB.check("on-link", "You saw the kernel refuse a next hop that is not on-link, and know what "
                      "VXLAN does instead")
def check_on_link(ctx: Context) -> Verdict:
    nodes = node_ips(ctx.cluster)
    w1 = naming.node_netns(WORKER)
    for node, r in _stray_routes(ctx, nodes):
        gw = r["gateway"]
        shell = SHELLS[node]
        why = ("`onlink` tells the kernel to believe you, so it did not refuse; it ARPs for "
               f"{gw} on {r.get('dev')} and nobody answers" if "onlink" in r.get("flags", [])
               else f"{gw} is inside a subnet of {node}'s {r.get('dev')}, i.e. on-link, so the "
                    "kernel accepted it; no node has that address")
        return failed(f"{node} has a route `{route_text(r)}` whose next hop is no node: {why}",
                      hint=f'delete it ({shell}.sh("ip route del {r.get("dst")}")), then try a '
                           "next hop OUTSIDE the underlay's 172.18.0.0/16, without `onlink`",
                      expected="no route via an address that no node has",
                      actual=f"{route_text(r)} on {node}")
    said = norm_answer(ctx.get("kernel_error")).lower()
    attempt = _last_attempt(ctx)
    if not said:
        seen = ""
        if attempt and attempt.rc != 0:
            seen = (f" (your `ip route add {attempt.dst} via {attempt.gateway}` on "
                    f"{attempt.node} failed: store what it printed)")
        return failed("`kernel_error` is empty" + seen,
                      hint='kernel_error = W1.sh("ip route add 10.244.7.0/24 via 192.168.7.3 '
                           'dev eth0", check=False) stores what the kernel answers',
                      expected="the kernel's error message", actual="(nothing)")
    if "file exists" in said:
        return failed("the kernel said `File exists`: that destination already has a route, "
                      "so it never looked at your next hop",
                      hint="use a destination no route has yet, e.g. 10.244.7.0/24 (a node "
                           "that does not exist), with a next hop like 192.168.7.3",
                      expected="the error about the next hop", actual=said)
    if not any(w in said for w in OFF_LINK_ERRORS):
        return failed(f"`kernel_error` = {said!r} is not the kernel's answer to a next hop "
                      "that is not on-link",
                      hint='run W1.sh("ip route add 10.244.7.0/24 via 192.168.7.3 dev eth0", '
                           "check=False): 192.168.7.3 is outside every subnet of the node's "
                           "links; store what it prints",
                      expected="Error: Nexthop has invalid gateway.", actual=said)
    if attempt is not None and attempt.rc != 0:
        link = _on_link_dev(ctx, naming.node_netns(attempt.node), attempt.gateway)
        if link is not None:
            wrong_dev = f", but your command said `dev {attempt.dev}`" if attempt.dev and \
                attempt.dev != link else ""
            return failed(f"{attempt.gateway} IS on-link from {attempt.node}: a neighbour on "
                          f"its {link}{wrong_dev}. The exercise is about a next hop that is on "
                          "no link at all",
                          hint='try W1.sh("ip route add 10.244.7.0/24 via 192.168.7.3 dev eth0", '
                               "check=False): 192.168.7.3 is outside every subnet of the node",
                          expected="a next hop outside the node's subnets",
                          actual=f"{attempt.gateway} (on-link on {link})")
    answer = norm_answer(ctx.get("vxlan_answer")).lower()
    if not answer:
        return failed("`vxlan_answer` is empty",
                      hint="in a few words: what does Flannel's vxlan backend do with a pod's "
                           "packet so that it can cross a router between the nodes?",
                      expected="a short answer", actual="(nothing)")
    if not ENCAP_WORDS.search(answer):
        if re.search(r"\bnat\b|masquerad|snat|rewrit", answer):
            why = ("NAT rewrites the pod's addresses; VXLAN leaves the pod's packet untouched "
                   "and does something else with it")
        elif re.search(r"\bbgp\b|route|arp|gateway|next hop", answer):
            why = ("more routes or ARP entries do not help: a next hop behind a router can "
                   "never be reached by ARP")
        else:
            why = "that is not what the vxlan backend changes"
        return failed(f"`vxlan_answer` = {answer!r}: {why}",
                      hint="the underlay can route node IPs (172.18.0.x) but not pod IPs. How "
                           "can a packet between two pods travel in a packet between two nodes?",
                      expected="what vxlan does to the pod's packet", actual=answer)
    where = ""
    if attempt is not None and attempt.rc != 0:
        where = f" (you tried {attempt.gateway} on {attempt.node})"
    elif route_get(ctx, w1, "192.168.7.3") is None:
        where = " (192.168.7.3 is unreachable from hostgw-worker: no link, no route)"
    return passed("the kernel refuses a next hop it cannot reach by ARP on a link" + where +
                  "; VXLAN wraps the pod's packet in UDP between the node IPs, which any IP "
                  "network can route")
