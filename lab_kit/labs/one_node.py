"""Checks of `labs/02-pods-on-one-node.ipynb`: many pods on one node share a bridge.

Part A, by hand on `bridge-worker`: bridge `br0` with the pods' gateway address, pods `a` and `b`
each on a veth whose node end is a port of br0, a ping across the bridge, and the MAC address pod
a learned for pod b. Part B, on `bridge-worker2`: the same built by the real CNI `bridge` plugin
(`cni0`, `veth<8 hex>`), and which veth belongs to which pod.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from lab_kit import naming
from lab_kit.checks import CheckFn, Context, Lab, Verdict, failed, passed
from lab_kit.labs import (
    are_peers,
    default_gateway,
    ip_of,
    ipv4_of,
    is_netns,
    is_up,
    kind,
    links_by_name,
    norm_answer,
    peer_netns,
    pings,
    state_words,
    veth_peer_in,
)

LAB = Lab("02-pods-on-one-node", "Pods on one node: the bridge", "bridge")

NODE_A = "bridge-worker"  # part A, by hand
NODE_B = "bridge-worker2"  # part B, the CNI plugin
BRIDGE = "br0"
CNI_BRIDGE = "cni0"
CNI_PODS = ("web-a", "web-b")
CNI_PORT = 8080
APPLY = 'c.apply("manifests/two-pods.yaml")'


@dataclass(frozen=True)
class HandPod:
    name: str  # `a`, `b`
    netns: str
    veth: str  # the node's end: veth-a, veth-b
    ip: str


@dataclass(frozen=True)
class Plan:
    node_ns: str
    gateway: str
    prefix: int
    pods: tuple[HandPod, ...]

    @staticmethod
    def on_node(command: str) -> str:
        return f'NODE.sh("{command}")'


def plan(ctx: Context) -> Plan:
    node = ctx.cluster.config.node(NODE_A)
    net = ipaddress.ip_network(node.pod_cidr)
    pods = tuple(HandPod(name, ctx.cluster.netns_name(name), f"veth-{name}", str(net[10 + i]))
                 for i, name in enumerate("ab"))
    return Plan(naming.node_netns(NODE_A), str(net[1]), net.prefixlen, pods)


# --- part A: by hand ----------------------------------------------------------------------------

@LAB.check("bridge", "br0 is a bridge, up, with the pods' gateway address")
def check_bridge(ctx: Context) -> Verdict:
    p = plan(ctx)
    want = f"{p.gateway}/{p.prefix}"
    br = ctx.link(p.node_ns, BRIDGE)
    if br is None:
        others = [ln["ifname"] for ln in ctx.links(p.node_ns) if kind(ln) == "bridge"]
        extra = f" (there is a bridge called {others[0]}: the lab looks for br0)" if others else ""
        return failed(f"node `{NODE_A}` has no link called br0{extra}",
                      hint="create it: " + p.on_node(f"ip link add {BRIDGE} type bridge"),
                      expected="br0 (kind bridge)", actual=", ".join(others) or "no bridge")
    if kind(br) != "bridge":
        return failed(f"br0 is a `{kind(br) or 'plain'}` device, not a bridge",
                      hint=f"delete it ({p.on_node(f'ip link del {BRIDGE}')}) and run "
                           + p.on_node(f"ip link add {BRIDGE} type bridge"),
                      expected="kind bridge", actual=kind(br) or "(none)")
    have = ctx.ipv4s(br)
    if want not in have:
        return failed(f"br0 does not have {want}, the gateway address of the pods",
                      hint=p.on_node(f"ip addr add {want} dev {BRIDGE}")
                      + (f" (and remove {', '.join(have)} with `ip addr del`)" if have else ""),
                      expected=want, actual=", ".join(have) or "no IPv4 address")
    if not is_up(br):
        return failed("br0 is DOWN", hint=p.on_node(f"ip link set {BRIDGE} up"),
                      expected="br0 UP", actual=state_words(br))
    return passed(f"br0 is a bridge, UP, with {want}: the node's address on the pods' segment")


def _port_problem(ctx: Context, p: Plan, pod: HandPod) -> Verdict | None:
    """What is wrong with pod `pod`'s cable into br0, or None."""
    if not is_netns(ctx, pod.netns):
        return failed(f"pod {pod.name}'s network namespace `{pod.netns}` does not exist",
                      hint="create it: " + p.on_node(f"ip netns add {pod.netns}"),
                      expected=pod.netns, actual="missing")
    create = p.on_node(f"ip link add {pod.veth} type veth peer name eth0 netns {pod.netns}")
    eth0 = ctx.link(pod.netns, "eth0")
    if eth0 is None or kind(eth0) != "veth":
        return failed(f"pod {pod.name} has no veth called eth0",
                      hint=f"create the pair: {create}", expected="eth0 (veth) in the pod",
                      actual=state_words(eth0))
    host = ctx.link(p.node_ns, pod.veth)
    if host is None:
        peer = veth_peer_in(ctx, pod.netns, eth0, p.node_ns)
        if peer is not None:
            return failed(f"pod {pod.name}'s eth0 is wired to `{peer['ifname']}` on the node",
                          hint="the lab looks for it by name: " + p.on_node(
                              f"ip link set {peer['ifname']} name {pod.veth}"),
                          expected=pod.veth, actual=peer["ifname"])
        return failed(f"there is no {pod.veth} on node `{NODE_A}`",
                      hint=f"delete the pod's eth0 (`ip -n {pod.netns} link del eth0`) and run "
                           f"{create}", expected=pod.veth, actual="missing")
    if not are_peers(ctx, pod.netns, eth0, p.node_ns, host):
        return failed(f"{pod.veth} and eth0 in pod {pod.name} are not two ends of one pair",
                      hint=f"delete both (`ip link del {pod.veth}`, `ip -n {pod.netns} link del "
                           f"eth0`) and run {create}",
                      expected=f"{pod.veth} <-> eth0@{pod.netns}",
                      actual=f"{pod.veth} peers with {peer_netns(ctx, p.node_ns, host)}")
    if host.get("master") != BRIDGE:
        return failed(f"{pod.veth} is not a port of br0",
                      hint="plug it into the bridge: "
                           + p.on_node(f"ip link set {pod.veth} master {BRIDGE}"),
                      expected=f"{pod.veth} master br0",
                      actual=f"master {host.get('master') or '(none)'}")
    if not is_up(host):
        return failed(f"{pod.veth} is DOWN", hint=p.on_node(f"ip link set {pod.veth} up"),
                      expected=f"{pod.veth} UP", actual=state_words(host))
    return None


def _ports_problem(ctx: Context, p: Plan) -> Verdict | None:
    """What is wrong with the cable into br0 of pod a, else of pod b, or None."""
    for pod in p.pods:
        problem = _port_problem(ctx, p, pod)
        if problem is not None:
            return problem
    return None


@LAB.check("ports", "veth-a and veth-b are ports of br0, wired to eth0 in pods a and b")
def check_ports(ctx: Context) -> Verdict:
    problem = _ports_problem(ctx, plan(ctx))
    if problem is not None:
        return problem
    return passed("veth-a and veth-b are UP ports of br0; their other ends are eth0 in pods a "
                  "and b")


def _pods_check(name: str, title: str) -> Callable[[Callable[[Context, Plan], Verdict]], CheckFn]:
    """Register a check of the hand-made pods a and b: it is called with the plan, and only once
    both pods' netns exist; before, it fails naming the first one missing."""
    def deco(fn: Callable[[Context, Plan], Verdict]) -> CheckFn:
        @LAB.check(name, title)
        @functools.wraps(fn)
        def check(ctx: Context) -> Verdict:
            p = plan(ctx)
            for pod in p.pods:
                if not is_netns(ctx, pod.netns):
                    return failed(f"pod {pod.name} does not exist yet",
                                  hint="do the pods exercise first (LAB.run(\"ports\") guides "
                                       "you)", expected=pod.netns, actual="missing")
            return fn(ctx, p)
        return check
    return deco


@_pods_check("addresses", "Pods a and b have their addresses and a default route via br0")
def check_addresses(ctx: Context, p: Plan) -> Verdict:
    node_ip = ipv4_of(ctx, p.node_ns, "eth0") or "?"
    for pod in p.pods:
        in_pod = f"ip -n {pod.netns} "
        links = links_by_name(ctx, pod.netns)
        eth0 = links.get("eth0")
        want = f"{pod.ip}/{p.prefix}"
        if want not in ctx.ipv4s(eth0):
            return failed(f"eth0 in pod {pod.name} does not have {want}",
                          hint=p.on_node(in_pod + f"addr add {want} dev eth0")
                          if eth0 else "create the veth pair first (see LAB.run(\"ports\"))",
                          expected=want, actual=", ".join(ctx.ipv4s(eth0)) or "none")
        for ifname in ("eth0", "lo"):
            ln = links.get(ifname)
            if not is_up(ln):
                return failed(f"{ifname} in pod {pod.name} is DOWN",
                              hint=p.on_node(in_pod + f"link set {ifname} up"),
                              expected=f"{ifname} UP", actual=state_words(ln))
        gw = default_gateway(ctx, pod.netns)
        if gw != p.gateway:
            return failed(f"pod {pod.name} has no default route via {p.gateway}",
                          hint=p.on_node(in_pod + f"route replace default via {p.gateway}"),
                          expected=f"default via {p.gateway}",
                          actual=f"default via {gw}" if gw else "no default route")
        if not pings(ctx, pod.netns, node_ip):
            return failed(f"pod {pod.name} cannot ping the node at {node_ip}",
                          hint="the way out is eth0 -> " + pod.veth + " -> br0 (the gateway): "
                               "LAB.run(\"bridge\") and LAB.run(\"ports\") show which part is "
                               "missing", expected=f"a reply from {node_ip}", actual="no reply")
    return passed(f"pods a and b have {p.pods[0].ip} and {p.pods[1].ip}, default via "
                  f"{p.gateway}, and both ping the node at {node_ip}")


@_pods_check("a-to-b", "Pod a pings pod b across the bridge")
def check_a_to_b(ctx: Context, p: Plan) -> Verdict:
    a, b = p.pods
    b_ip = ipv4_of(ctx, b.netns, "eth0")
    if b_ip is None:
        return failed("pod b's eth0 has no address to ping",
                      hint=p.on_node(f"ip -n {b.netns} addr add {b.ip}/{p.prefix} dev eth0"),
                      expected=f"{b.ip}/{p.prefix} on eth0 in pod b", actual="none")
    if pings(ctx, a.netns, b_ip):
        return passed(f"pod a ({ipv4_of(ctx, a.netns, 'eth0')}) pinged pod b ({b_ip}) through "
                      "br0: same subnet, so no router — the bridge switched the frames")
    problem = _ports_problem(ctx, p)
    if problem is None:
        br = ctx.link(p.node_ns, BRIDGE)
        hint = (p.on_node(f"ip link set {BRIDGE} up") if not is_up(br) else
                "LAB.run(\"addresses\") checks each pod's eth0, lo and route; compare "
                f"`ip -n {a.netns} route get {b_ip}`")
    else:
        hint = problem.message + ": " + problem.hint
    return failed(f"pod a gets no answer from pod b at {b_ip}", hint=hint,
                  expected=f"a reply from {b_ip}", actual="no reply")


@_pods_check("arp", "You found the MAC address pod a learned for pod b")
def check_arp(ctx: Context, p: Plan) -> Verdict:
    a, b = p.pods
    b_eth0 = ctx.link(b.netns, "eth0")
    b_ip = ip_of(b_eth0)
    if b_eth0 is None or b_ip is None:
        return failed("pod b has no eth0 with an address yet",
                      hint="finish the pods exercise first", expected="eth0 with an address",
                      actual=state_words(b_eth0))
    b_mac = b_eth0["address"].lower()
    look = ('NODE.sh(f"ip -n {A} neigh show")', 'NODE.sh("bridge fdb show br br0")')
    entry = next((n for n in ctx.ip_json(a.netns, "neigh", "show")
                  if n.get("dst") == b_ip and n.get("lladdr")), None)
    if entry is None:
        return failed(f"pod a has no neighbour entry for {b_ip}: it has not talked to b yet "
                      "(or the entry expired)",
                      hint="ping b from a first (NODE.sh(f\"ip netns exec {A} ping -c 1 "
                           f"{b_ip}\")), then look at {look[0]}",
                      expected=f"{b_ip} lladdr … in pod a's neighbour table", actual="no entry")
    if entry["lladdr"].lower() != b_mac:
        return failed(f"pod a's neighbour table maps {b_ip} to {entry['lladdr']}, which is not "
                      "pod b's eth0",
                      hint=f"flush it ({p.on_node(f'ip -n {a.netns} neigh flush all')}) and "
                           "ping again", expected=b_mac, actual=entry["lladdr"])
    answer = norm_answer(ctx.get("b_mac")).lower().replace("-", ":")
    if not answer:
        return failed("`b_mac` is empty",
                      hint=f"look at {look[0]}: the `lladdr` next to {b_ip}, then set "
                           'b_mac = "xx:xx:xx:xx:xx:xx"',
                      expected="a MAC address", actual="(nothing)")
    if answer == b_mac:
        return passed(f"{b_mac} is pod b's eth0, and pod a's neighbour table holds "
                      f"{b_ip} lladdr {b_mac} ({'/'.join(entry.get('state', []))})")
    who = {}
    a_eth0 = ctx.link(a.netns, "eth0")
    if a_eth0:
        who[a_eth0["address"].lower()] = "pod a's own eth0"
    for ln in ctx.links(p.node_ns):
        if ln.get("ifname") in (BRIDGE, a.veth, b.veth):
            who[ln["address"].lower()] = f"{ln['ifname']} on the node"
    if answer in who:
        extra = (": the node's end of b's cable; pod a learned the far end, eth0 inside "
                 "pod b" if who[answer].startswith(b.veth) else "")
        return failed(f"{answer} is {who[answer]}{extra}",
                      hint=f"in {look[0]} take the lladdr of {b_ip} (pod b), not another entry",
                      expected=f"the lladdr pod a has for {b_ip}", actual=f"{answer} "
                      f"({who[answer]})")
    return failed(f"{answer} is not the MAC pod a learned for {b_ip}",
                  hint=f"copy the lladdr next to {b_ip} from {look[0]}; {look[1]} shows the "
                       "same MAC learned on port veth-b",
                  expected=f"the lladdr pod a has for {b_ip}", actual=answer)


# --- part B: the CNI plugin ---------------------------------------------------------------------

@LAB.check("cni-pods", "The CNI plugin wired web-a and web-b on bridge-worker2")
def check_cni_pods(ctx: Context) -> Verdict:
    from lab_kit.cluster import probe_socket

    node_ns = naming.node_netns(NODE_B)
    ips: dict[str, str] = {}
    for name in CNI_PODS:
        ns = ctx.cluster.netns_name(name)
        if not is_netns(ctx, ns):
            return failed(f"pod {name} does not exist: no network namespace `{ns}`",
                          hint=f"apply the manifest: `{APPLY}`", expected=ns, actual="missing")
        eth0 = ctx.link(ns, "eth0")
        ip = ip_of(eth0)
        if eth0 is None or ip is None:
            return failed(f"pod {name} has no eth0 with an address",
                          hint=f"delete it (`c.delete(pod=\"{name}\")`) and apply again",
                          expected="eth0 with an address", actual=state_words(eth0))
        where = peer_netns(ctx, ns, eth0)
        if where != node_ns:
            return failed(f"pod {name} is wired to `{where}`, not to node {NODE_B}",
                          hint="manifests/two-pods.yaml pins both pods with "
                               f"`spec.nodeName: {NODE_B}`; delete the pods and apply that file",
                          expected=node_ns, actual=str(where))
        ips[name] = ip
    src, dst = CNI_PODS
    r = probe_socket(src, ctx.cluster.netns_name(src), dst, ips[dst], CNI_PORT, "TCP",
                     "/hostname", 2.0)
    if not r.ok or r.reply.strip() != dst:
        got = r.error if not r.ok else repr(r.reply)
        return failed(f"{src} could not fetch http://{ips[dst]}:{CNI_PORT}/hostname: {got}",
                      hint="compare c.get_pods() with what the kernel has; "
                           f"`c.probe(\"{src}\", \"{dst}\", {CNI_PORT})` shows the same probe",
                      expected=f"HTTP 200 with body '{dst}'", actual=got)
    return passed(f"{src} ({ips[src]}) fetched '{dst}' from http://{ips[dst]}:{CNI_PORT}; both "
                  f"pods hang off {CNI_BRIDGE} on {NODE_B}")


@LAB.check("which-veth", "You found web-a's veth on the node")
def check_which_veth(ctx: Context) -> Verdict:
    node_ns = naming.node_netns(NODE_B)
    ns = ctx.cluster.netns_name("web-a")
    if not is_netns(ctx, ns):
        return failed("pod web-a does not exist yet",
                      hint=f"do the cni exercise first: `{APPLY}`", expected=ns,
                      actual="missing")
    eth0 = ctx.link(ns, "eth0")
    peer = veth_peer_in(ctx, ns, eth0, node_ns)
    if peer is None:
        return failed(f"web-a's eth0 has no peer on {NODE_B}",
                      hint="delete web-a (`c.delete(pod=\"web-a\")`) and apply the manifest again",
                      expected=f"a veth on {NODE_B}", actual="none")
    look = ('c.pod("web-a").sh("ip link show eth0")', 'NODE2.sh("ip -br link show type veth")')
    answer = norm_answer(ctx.get("web_a_veth"))
    if not answer:
        return failed("`web_a_veth` is empty",
                      hint=f"{look[0]} prints `eth0@ifN`: N is the index of its peer on the "
                           f"node. Find the link with index N in {look[1]} and set "
                           'web_a_veth = "veth…"',
                      expected="a veth name on the node", actual="(nothing)")
    if "@" in answer:
        name = answer.split("@")[0]
        return failed(f"`{answer}` includes the `@…` that `ip` appends (the peer's index)",
                      hint=f'drop it: web_a_veth = "{name}"', expected="just the name",
                      actual=answer)
    if answer == peer["ifname"]:
        return passed(f"{answer} (index {peer['ifindex']}) on {NODE_B} is the other end of "
                      f"web-a's eth0 (index {eth0['ifindex']}, eth0@if{peer['ifindex']})")
    if answer == "eth0":
        return failed("eth0 is the name inside the pod (and the node's own underlay link)",
                      hint=f"the node-side end has a generated name starting with veth: {look[1]}",
                      expected="veth…", actual=answer)
    if answer == CNI_BRIDGE:
        return failed("cni0 is the bridge every pod's veth is plugged into, not a veth",
                      hint=f"`bridge link show` on the node lists its ports; which is web-a's? "
                           f"{look[0]} gives the index", expected="veth…", actual=answer)
    web_b = ctx.cluster.netns_name("web-b")
    other = veth_peer_in(ctx, web_b, ctx.link(web_b, "eth0"), node_ns)
    if other is not None and answer == other["ifname"]:
        return failed(f"{answer} is web-b's veth",
                      hint=f"match the index: {look[0]} shows eth0@ifN; N is web-a's veth",
                      expected="web-a's veth", actual=f"{answer} (web-b)")
    names = [ln["ifname"] for ln in ctx.links(node_ns)]
    if answer not in names:
        return failed(f"there is no link called `{answer}` on {NODE_B}",
                      hint=f"copy the name from {look[1]}", expected="a veth on the node",
                      actual=answer)
    return failed(f"`{answer}` is on {NODE_B}, but its other end is not web-a's eth0",
                  hint=f"{look[0]} shows eth0@ifN; pick the veth whose index is N",
                  expected="web-a's veth", actual=answer)
