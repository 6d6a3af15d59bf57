"""Checks of `labs/04-vxlan-overlay.ipynb`: the VXLAN overlay, as Flannel builds it.

The lab's cluster `vxlan` (labs/clusters/vxlan.yaml) has one pod on each node
(labs/manifests/overlay-pods.yaml): `web-a` on vxlan-worker, `web-b` on vxlan-worker2, `web-c` on
vxlan-control-plane. The notebook, in order:

- reads `flannel.1` and the three entries Flannel programs per remote node (route, permanent
  neighbour entry, FDB entry) and draws how the kernel chains them (:func:`overlay_path`);
- captures packets on the underlay; exercise `capture-reply`: the learner captures web-b's
  answer to web-c on a node's eth0 and reads its outer source IP, UDP destination port and VNI
  (check `reply-headers` recomputes them from a fresh capture);
- recreates the same cluster from labs/clusters/vxlan-mtu.yaml, whose pods get MTU 1500 over
  flannel.1's 1450, measures what breaks (DF pings, PMTU discovery, and with ICMP
  "fragmentation needed" filtered on every node, a PMTU black hole); exercise `fix-mtu`: the
  learner gives the pods the right MTU (checks `pod-mtu` and `no-black-hole`, which installs
  the ICMP filter itself when it is missing and measures a large transfer);
- breaks one overlay entry (:func:`break_overlay`); exercise `repair-overlay`: the learner finds
  and restores it (checks `overlay-entries`, against what Flannel would program, from
  :func:`lab_kit.backends.vxlan_peer_entries`, and `cross-node`, real probes both ways).

Every check reads the live kernel (`ip -j`, `bridge -j fdb`, tcpdump, real TCP connections).
"""

from __future__ import annotations

import html
import itertools
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab_kit import backends, kernel, naming
from lab_kit.checks import Context, Lab, Verdict, failed, passed
from lab_kit.config import UNDERLAY_MTU, VXLAN_OVERHEAD
from lab_kit.errors import LabError
from lab_kit.labs import best_route, node_ips, norm_answer, route_text, underlay_ip

if TYPE_CHECKING:
    import graphviz

    from lab_kit.capture import Capture
    from lab_kit.cluster import Cluster

__all__ = ["LAB", "ICMP_FILTER", "OverlayPath", "Step", "break_overlay", "overlay_path"]

LAB = Lab("04-vxlan-overlay", "The VXLAN overlay (Flannel)", "vxlan")

CP, W1, W2 = "vxlan-control-plane", "vxlan-worker", "vxlan-worker2"
SHELLS = {CP: "NODE_C", W1: "NODE_A", W2: "NODE_B"}  # the notebook's names for c.node(...)
PODS = {"web-a": W1, "web-b": W2, "web-c": CP}
PORT = 8080
APPLY = 'c.apply("manifests/overlay-pods.yaml")'
DEV = backends.VXLAN_DEV
# exercise capture-reply: web-c asks, web-b answers; the learner reads the answer's outer headers
ASKER, ANSWERER = "web-c", "web-b"
# exercise repair-overlay: on BROKEN_NODE the FDB entry for BROKEN_PEER's VTEP is deleted
BROKEN_NODE, BROKEN_PEER = W2, W1
# the firewall rule of the MTU part: drop ICMP "fragmentation needed" the node sends
ICMP_FILTER = ("-p", "icmp", "--icmp-type", "fragmentation-needed", "-j", "DROP")
BIG = 20000  # bytes of the large /echo transfer (both the request and the answer carry them)
BIG_TIMEOUT = 2.0

OVERHEAD = ("VXLAN puts 50 bytes in front of every pod packet that crosses nodes (outer IPv4 20 "
            "+ UDP 8 + VXLAN 8 + the inner Ethernet header 14), and the result must still fit the "
            "underlay's 1500: a pod may send at most 1500 - 50 = 1450 bytes. That is why "
            "flannel.1 has MTU 1450 and why Flannel hands FLANNEL_MTU=1450 to the CNI plugin for "
            "the pods.")
RECREATE = ('c = Cluster.up("clusters/vxlan.yaml", replace=True), then ' + APPLY)


# --- reading the live kernel ---------------------------------------------------------------------

def live_routes(netns: str) -> list[dict[str, Any]]:
    """Every route of the node's main table (`ip -j route show`)."""
    return Context.ip_json(netns, "route", "show")


def live_neighbours(netns: str) -> list[dict[str, Any]]:
    return Context.ip_json(netns, "neigh", "show", "dev", DEV)


def live_fdb(netns: str) -> list[dict[str, Any]]:
    return kernel.Runner().json(["bridge", "-j", "fdb", "show", "dev", DEV], netns)


def live_vxlan(netns: str) -> dict[str, Any] | None:
    """`ip -j -d addr show flannel.1`: the link, its vxlan attributes and addresses."""
    links = Context.ip_json(netns, "-d", "addr", "show", "dev", DEV)
    return links[0] if links else None


def vxlan_info(link: dict[str, Any] | None) -> dict[str, Any]:
    return ((link or {}).get("linkinfo") or {}).get("info_data") or {}


def _mtu(netns: str, ifname: str) -> int | None:
    links = Context.ip_json(netns, "link", "show", "dev", ifname)
    return int(links[0]["mtu"]) if links and "mtu" in links[0] else None


def neigh_text(n: dict[str, Any]) -> str:
    words = [n.get("dst", "?")]
    if n.get("lladdr"):
        words += ["lladdr", n["lladdr"]]
    return " ".join(words + list(n.get("state", [])))


def fdb_text(e: dict[str, Any]) -> str:
    words = [e.get("mac", "?")]
    if e.get("dst"):
        words += ["dst", e["dst"]]
    return " ".join(words + list(e.get("flags", [])) + ([e["state"]] if e.get("state") else []))


# --- the chain the kernel follows: route -> neighbour -> FDB -> UDP ------------------------------

@dataclass(frozen=True)
class Step:
    """One lookup on the way of a packet from a pod to a pod on another node."""

    node: str
    table: str  # "route", "neighbour", "FDB", "VXLAN", …
    command: str  # what shows it
    entry: str  # the live entry, as the command prints it ("" when there is none)
    meaning: str  # what the kernel does with it
    ok: bool


@dataclass(repr=False)
class OverlayPath:
    """How the kernel gets a packet from pod `src` to pod `dst`, read from the live tables.

    In a notebook it draws itself (Graphviz); `print()` gives the same as text. A missing or
    wrong entry is marked and the chain stops there, as the packet does.
    """

    src: str
    dst: str
    src_ip: str
    dst_ip: str
    steps: list[Step] = field(default_factory=list)
    underlay: str = ""  # the outer headers between the two nodes, once known

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def __repr__(self) -> str:
        state = "complete" if self.ok else "broken"
        return f"<OverlayPath {self.src} -> {self.dst}: {len(self.steps)} steps, {state}>"

    def __str__(self) -> str:
        head = f"{self.src} ({self.src_ip}) -> {self.dst} ({self.dst_ip})"
        lines = [head]
        for i, s in enumerate(self.steps, start=1):
            mark = "ok " if s.ok else "XX "
            lines.append(f"{mark}{i}. {s.table} on {s.node}  [{s.command}]")
            lines.append(f"      {s.entry or '(no entry)'}")
            lines.append(f"      -> {s.meaning}")
        if not self.ok:
            lines.append("the packet stops here")
        return "\n".join(lines)

    def digraph(self) -> graphviz.Digraph:
        """Top to bottom: the pod, then each node's lookups in a box of that node, the underlay
        hop between the nodes labelled with the outer headers, then the destination pod."""
        import graphviz

        g = graphviz.Digraph("overlay_path", graph_attr={
            "rankdir": "TB", "fontname": "Helvetica", "nodesep": "0.2", "ranksep": "0.25",
            "label": f"{self.src} ({self.src_ip}) → {self.dst} ({self.dst_ip}), read from the "
                     "live kernel", "labelloc": "t", "fontsize": "11"},
            node_attr={"shape": "plain", "fontname": "Helvetica"},
            edge_attr={"fontname": "Helvetica", "fontsize": "9"})
        e = html.escape

        def pod(gid: str, name: str, ip: str) -> None:
            g.node(gid, f'<<TABLE BORDER="1" CELLBORDER="0" BGCOLOR="#e8f0fe" CELLPADDING="4">'
                        f"<TR><TD><B>{e(name)}</B> <FONT POINT-SIZE=\"9\">{e(ip)}</FONT></TD>"
                        "</TR></TABLE>>")

        pod("src", self.src, self.src_ip)
        shown: list[tuple[int, Step]] = []
        for i, s in enumerate(self.steps, start=1):
            shown.append((i, s))
            if not s.ok:
                break
        groups: list[tuple[str, list[tuple[int, Step]]]] = []
        for i, s in shown:
            if not groups or groups[-1][0] != s.node:
                groups.append((s.node, []))
            groups[-1][1].append((i, s))
        prev, prev_node = "src", None
        for k, (node, items) in enumerate(groups):
            with g.subgraph(name=f"cluster_{k}", graph_attr={
                    "label": f"node {node}", "style": "rounded", "color": "#8c959f",
                    "bgcolor": "#f6f8fa", "fontsize": "10", "labeljust": "l"}) as sub:
                for i, s in items:
                    colour, bg = ("#1a7f37", "#f0fff4") if s.ok else ("#cf222e", "#ffebe9")
                    entry = e(s.entry) if s.entry else "<I>(no entry)</I>"
                    meaning = "<BR ALIGN=\"LEFT\"/>".join(
                        e(t) for t in textwrap.wrap(s.meaning, 64)) + "<BR ALIGN=\"LEFT\"/>"
                    sub.node(f"s{i}", (
                        f'<<TABLE BORDER="2" COLOR="{colour}" CELLBORDER="0" BGCOLOR="{bg}" '
                        f'CELLPADDING="2"><TR><TD ALIGN="LEFT"><B>{i} · {e(s.table)}</B>  '
                        f'<FONT POINT-SIZE="8" COLOR="#57606a">{e(s.command)}</FONT></TD></TR>'
                        f'<TR><TD ALIGN="LEFT"><FONT FACE="Courier" POINT-SIZE="9">{entry}'
                        f"</FONT></TD></TR>"
                        f'<TR><TD ALIGN="LEFT" BALIGN="LEFT"><FONT POINT-SIZE="9">{meaning}'
                        "</FONT></TD></TR></TABLE>>"))
                    label = self.underlay if prev_node is not None and prev_node != node else ""
                    g.edge(prev, f"s{i}", label=label, penwidth="2" if label else "1",
                           color="#bc4c00" if label else "black")
                    prev, prev_node = f"s{i}", node
        if self.ok:
            pod("dst", self.dst, self.dst_ip)
            g.edge(prev, "dst")
        return g

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        try:
            return self.digraph()._repr_mimebundle_(include, exclude)
        except Exception:  # no Graphviz: the text is still the whole story
            return {"text/plain": str(self)}


def overlay_path(c: Cluster, src: str, dst: str) -> OverlayPath:
    """Follow a packet from pod `src` to pod `dst` (on another node) through the live tables:
    the route on src's node, the neighbour entry of its gateway on flannel.1, the FDB entry of
    that MAC, the encapsulation, the node that owns the outer destination IP and its flannel.1,
    then that node's route to the pod."""
    a, b = c.pod(src), c.pod(dst)
    if a.node == b.node:
        raise LabError(f"{a.name} and {b.name} are both on {a.node}: their packets never leave "
                       "the node (cni0 switches them); pick pods on two different nodes")
    path = OverlayPath(a.info.key.split("/", 1)[1], b.info.key.split("/", 1)[1], a.ip, b.ip)
    node_ns = naming.node_netns(a.node)
    add = path.steps.append

    route = best_route(live_routes(node_ns), b.ip)
    if route is None:
        add(Step(a.node, "route", "ip route", "", f"no route to {b.ip}: the node answers "
                 "'network unreachable'", False))
        return path
    if route.get("dev") != DEV or not route.get("gateway"):
        add(Step(a.node, "route", "ip route", route_text(route),
                 f"{b.ip} does not go through {DEV}: not the overlay", False))
        return path
    gw = route["gateway"]
    add(Step(a.node, "route", "ip route", route_text(route),
             f"out of {DEV}, next hop {gw} (the remote node's VTEP address); onlink: no "
             "subnet needed to reach it", True))

    neigh = next((n for n in live_neighbours(node_ns) if n.get("dst") == gw), None)
    if neigh is None or not neigh.get("lladdr") or \
            {"FAILED", "INCOMPLETE"} & set(neigh.get("state", [])):
        add(Step(a.node, "neighbour", f"ip neigh show dev {DEV}", neigh_text(neigh) if neigh
                 else "", f"no MAC for {gw}: the kernel ARPs on {DEV}, where nobody answers "
                 "(nolearning, no flood entry); the packet is dropped", False))
        return path
    mac = neigh["lladdr"].lower()
    add(Step(a.node, "neighbour", f"ip neigh show dev {DEV}", neigh_text(neigh),
             f"inner frame: destination MAC {mac} (the remote flannel.1)", True))

    fdb = [e for e in live_fdb(node_ns) if e.get("mac", "").lower() == mac and e.get("dst")]
    if not fdb:
        add(Step(a.node, "FDB", f"bridge fdb show dev {DEV}", "",
                 f"no FDB entry for {mac}: {DEV} does not know which node to send it to and "
                 "drops it (its TX dropped counter grows)", False))
        return path
    remote_ip = fdb[0]["dst"]
    add(Step(a.node, "FDB", f"bridge fdb show dev {DEV}", fdb_text(fdb[0]),
             f"the frame goes to the node at {remote_ip}", True))

    dev = live_vxlan(node_ns)
    info = vxlan_info(dev)
    local = info.get("local", "?")
    add(Step(a.node, "VXLAN", f"ip -d link show {DEV}",
             f"vxlan id {info.get('id', '?')} local {local} dev {info.get('link', '?')} "
             f"dstport {info.get('port', '?')}",
             f"wrapped: outer IPv4 {local} → {remote_ip}, UDP → port {info.get('port', '?')}, "
             f"VXLAN VNI {info.get('id', '?')}; out of eth0 onto the underlay", True))

    path.underlay = (f"  UDP {local} → {remote_ip}:{info.get('port', '?')}, "
                     f"VNI {info.get('id', '?')}  ")
    owner = next((n for n in c.nodes() if underlay_ip(n.netns) == remote_ip), None)
    if owner is None:
        add(Step("underlay", "eth0", "ip addr show eth0", "",
                 f"no node has {remote_ip}: the packet goes nowhere", False))
        return path
    rdev = live_vxlan(owner.netns)
    rinfo = vxlan_info(rdev)
    rmac = (rdev or {}).get("address", "").lower()
    entry = (f"{DEV} link/ether {rmac} vxlan id {rinfo.get('id', '?')} dstport "
             f"{rinfo.get('port', '?')}") if rdev else ""
    if rdev is None or rinfo.get("id") != info.get("id") or \
            rinfo.get("port") != info.get("port"):
        add(Step(owner.name, "VXLAN", f"ip -d link show {DEV}", entry,
                 "no flannel.1 with the same VNI and port: the UDP packet is dropped", False))
        return path
    if rmac != mac:
        add(Step(owner.name, "VXLAN", f"ip -d link show {DEV}", entry,
                 f"unwrapped, but the inner frame is for {mac}, not this device's MAC: dropped",
                 False))
        return path
    add(Step(owner.name, "VXLAN", f"ip -d link show {DEV}", entry,
             "unwrapped: the inner frame is for this device, the inner packet is routed", True))

    rroute = best_route(live_routes(owner.netns), b.ip)
    ok = owner.name == b.node and rroute is not None and rroute.get("dev") == "cni0"
    add(Step(owner.name, "route", "ip route", route_text(rroute) if rroute else "",
             f"delivered through cni0 to {path.dst}" if ok else
             f"{b.ip} is not on this node's cni0", ok))
    return path


# --- exercise repair-overlay: the setup ----------------------------------------------------------

def break_overlay(c: Cluster) -> None:
    """Delete one overlay entry on one node, the way a crashed agent or a stray command would.

    The command is in the cluster's journal (`c.journal()`), like every other change.
    """
    conf = c.config
    peer = conf.node(BROKEN_PEER)
    c.runner.run(["bridge", "fdb", "del", backends.vtep_mac(peer), "dev", DEV, "self"],
                 naming.node_netns(BROKEN_NODE), check=False)


# --- helpers of the checks -----------------------------------------------------------------------

def overhead_hint(ctx: Context) -> str:
    """Why pods need 1450 over VXLAN, and how to get there from where this cluster is."""
    conf = ctx.cluster.config
    if conf.mtu is not None and conf.mtu > conf.backend_mtu:
        how = (f"Here the cluster config forces `mtu: {conf.mtu}` on the pods' CNI config: "
               "recreate the cluster from clusters/vxlan.yaml (no `mtu` key, so the pods get the "
               f"backend's {conf.backend_mtu}) and apply the pods again: {RECREATE}")
    else:
        how = ("The cluster config gives pods the right MTU, so a pod's MTU was raised by hand: "
               f"set it back (ip -n <pod netns> link set eth0 mtu {conf.backend_mtu}) or "
               f"recreate the cluster: {RECREATE}")
    return f"{OVERHEAD} {how}"


def _pods(ctx: Context) -> dict[str, Any]:
    """The lab's pods that exist (name -> PodInfo), read from the cluster, and whose netns is
    really there."""
    out = {}
    for p in ctx.cluster.pods():
        if p.namespace == "default" and ctx.netns_exists(p.netns):
            out[p.name] = p
    return out


def _need_pods(ctx: Context, names: tuple[str, ...]) -> tuple[dict[str, Any], Verdict | None]:
    pods = _pods(ctx)
    missing = [n for n in names if n not in pods]
    if missing:
        return pods, failed(f"pod {missing[0]} does not exist",
                            hint=f"apply the lab's pods: `{APPLY}` (after recreating the "
                                 "cluster, the pods have to be applied again)",
                            expected=", ".join(names), actual=", ".join(sorted(pods)) or "none")
    return pods, None


def _capture_of(value: Any) -> Capture | None:
    """The learner's capture: a Capture, or the path of a pcap (from the CLI)."""
    if value is None:
        return None
    if hasattr(value, "packets") and hasattr(value, "filter"):
        return value
    text = norm_answer(value)
    if text and Path(text).expanduser().is_file():
        from lab_kit.capture import Capture
        return Capture.load(Path(text).expanduser())
    return None


def _reply_packets(cap: Any, answerer_ip: str, asker_ip: str, level: int | None = None
                   ) -> list[Any]:
    out = []
    for p in cap:
        for ly in p.all("IPv4"):
            if ly.quoted or (level is not None and ly.level != level):
                continue
            if ly["src"] == answerer_ip and ly["dst"] == asker_ip:
                out.append(p)
                break
    return out


def _as_int(value: Any) -> int | None:
    text = norm_answer(value)
    try:
        return int(text)
    except ValueError:
        return None


# --- exercise capture-reply ----------------------------------------------------------------------

@LAB.check("reply-headers", "You captured web-b's answer to web-c on the underlay and read its "
           "outer headers")
def check_reply_headers(ctx: Context) -> Verdict:
    pods, missing = _need_pods(ctx, (ASKER, ANSWERER))
    if missing:
        return missing
    asker, answerer = pods[ASKER], pods[ANSWERER]
    how = (f'cap_reply = c.capture(<a node>, interface=<which one?>, filter="udp port 8472", '
           f'during=lambda: c.probe("{ASKER}", "{ANSWERER}"))')
    cap = _capture_of(ctx.get("cap_reply"))
    if cap is None:
        return failed("`cap_reply` holds no capture",
                      hint=f"capture while web-c asks web-b: {how}. Which node's eth0 sees the "
                           "answer go by?", expected="a Capture", actual=repr(ctx.get("cap_reply")))
    mine = _reply_packets(cap, answerer.ip, asker.ip)
    if not mine:
        return failed(f"your capture has no packet from {ANSWERER} ({answerer.ip}) to {ASKER} "
                      f"({asker.ip})",
                      hint=f"capture *during* the probe ({how}); a filter such as 'udp port 8472' "
                           "keeps only VXLAN packets", expected=f"{answerer.ip} → {asker.ip}",
                      actual=f"{len(cap)} packets, none of them that answer")
    wrapped = [p for p in mine if p.encapsulated and any(
        ly.level == 1 and ly["src"] == answerer.ip for ly in p.all("IPv4"))]
    if not wrapped:
        where = cap.where or "?"
        return failed(f"your capture (in {where} on {cap.interface or '?'}) shows the answer "
                      "without its VXLAN wrapping: it was taken after decapsulation (or before "
                      "encapsulation)",
                      hint="flannel.1, cni0 and the pods see plain packets; only the underlay "
                           f"carries the outer headers: capture on eth0 of {answerer.node} or "
                           f"{asker.node}", expected="outer IPv4 / UDP / VXLAN / inner packet",
                      actual=mine[0].summary()[:120])
    truth = _fresh_reply(ctx, asker, answerer)
    if isinstance(truth, Verdict):
        return truth
    t_src, t_port, t_vni = truth
    outer_src = norm_answer(ctx.get("outer_src"))
    udp_dport, vni = _as_int(ctx.get("udp_dport")), _as_int(ctx.get("vni"))
    if not outer_src or udp_dport is None or vni is None:
        empty = [k for k, v in (("outer_src", outer_src), ("udp_dport", udp_dport),
                                ("vni", vni)) if not v and v != 0]
        return failed(f"{', '.join(empty)} not answered (a number for udp_dport and vni)",
                      hint="print(cap_reply.layers(i)) for a packet of the answer: the first "
                           "IPv4 header is the outer one, then UDP and VXLAN",
                      expected="outer_src, udp_dport and vni", actual=f"outer_src={outer_src!r}, "
                      f"udp_dport={ctx.get('udp_dport')!r}, vni={ctx.get('vni')!r}")
    nodes = node_ips(ctx.cluster)
    if outer_src != t_src:
        if outer_src == answerer.ip:
            why = f"{outer_src} is web-b's own address: the inner source, inside the tunnel"
        elif outer_src == asker.ip:
            why = f"{outer_src} is web-c's address: the inner destination"
        elif nodes.get(outer_src) == asker.node:
            why = (f"{outer_src} is {asker.node}, web-c's node: the outer *destination* of the "
                   "answer (or the source of the question)")
        elif outer_src in nodes:
            why = f"{outer_src} is {nodes[outer_src]}, which this answer never crosses"
        else:
            why = f"{outer_src} is neither a pod nor a node on this answer's way"
        return failed(why, hint="the outer source of a VXLAN packet is the `local` address of "
                                "the sending node's flannel.1: the node the answering pod runs "
                                "on; read the first IPv4 header of an answer packet",
                      expected="the outer IPv4 source of web-b's answer", actual=outer_src)
    if udp_dport != t_port:
        sports = {ly["sport"] for p in wrapped for ly in p.all("UDP") if ly.level == 0}
        why = (f"{udp_dport} is the outer UDP *source* port: the sender picks it from a hash "
               "of the inner flow, so it changes from connection to connection"
               if udp_dport in sports else f"{udp_dport} is not the outer UDP destination port")
        return failed(why, hint="the destination port says 'this is VXLAN' to the receiving "
                                f"node; `ip -d link show {DEV}` shows it as dstport",
                      expected="the outer UDP destination port", actual=udp_dport)
    if vni != t_vni:
        return failed(f"{vni} is not the VNI of the answer",
                      hint=f"the VXLAN header's VNI (tcpdump: 'instance'); `ip -d link show "
                           f"{DEV}` shows it as `vxlan id`", expected="the VXLAN VNI",
                      actual=vni)
    return passed(f"web-b's answer left {nodes.get(t_src, t_src)} as UDP {t_src} → port "
                  f"{t_port}, VXLAN VNI {t_vni} (measured again just now, on the underlay)")


def _fresh_reply(ctx: Context, asker: Any, answerer: Any) -> tuple[str, int, int] | Verdict:
    """(outer source IP, UDP destination port, VNI) of web-b's answer, from a new capture on
    the asker's node's eth0."""
    c = ctx.cluster
    cap = c.capture(asker.node, interface="eth0", filter="udp", source="check",
                    during=lambda: c.probe(ASKER, ANSWERER, PORT, timeout=2))
    wrapped = [p for p in _reply_packets(cap, answerer.ip, asker.ip, level=1)
               if p.layer("VXLAN") is not None]
    if not wrapped:
        got = cap.result.error if cap.result is not None and not cap.result.ok else "no packets"
        return failed(f"the check could not see web-b answer web-c on the underlay: {got}",
                      hint=f'c.probe("{ASKER}", "{ANSWERER}") must work first; '
                           f'LAB.run("overlay-entries") and overlay_path(c, "{ANSWERER}", '
                           f'"{ASKER}") show which overlay entry is missing',
                      expected="an encapsulated answer", actual=got)
    p = wrapped[0]
    return p.layer("IPv4")["src"], int(p.layer("UDP")["dport"]), int(p.layer("VXLAN")["vni"])


# --- exercise fix-mtu ----------------------------------------------------------------------------

@LAB.check("pod-mtu", "Every pod's MTU leaves room for the VXLAN headers")
def check_pod_mtu(ctx: Context) -> Verdict:
    pods, missing = _need_pods(ctx, tuple(PODS))
    if missing:
        return missing
    lines = []
    for name, p in sorted(pods.items()):
        node_ns = naming.node_netns(p.node)
        dev_mtu, eth0_mtu = _mtu(node_ns, DEV), _mtu(node_ns, "eth0")
        if dev_mtu is None:
            return failed(f"node {p.node} has no {DEV}", hint=f"recreate the cluster: {RECREATE}",
                          expected=DEV, actual="missing")
        room = (eth0_mtu or UNDERLAY_MTU) - VXLAN_OVERHEAD
        if dev_mtu > room:
            return failed(f"{DEV} on {p.node} has MTU {dev_mtu}, but its packets grow by "
                          f"{VXLAN_OVERHEAD} bytes and eth0 carries {eth0_mtu}",
                          hint=f"{DEV} must leave 50 bytes for the VXLAN headers, as Flannel "
                               f"sets it: {SHELLS[p.node]}.sh(\"ip link set {DEV} mtu {room}\")",
                          expected=f"{DEV} mtu ≤ {room}", actual=f"mtu {dev_mtu}")
        pod_mtu = _mtu(p.netns, "eth0")
        if pod_mtu is None:
            return failed(f"pod {name} has no eth0", hint=f"delete and apply the pods: {APPLY}",
                          expected="eth0", actual="missing")
        if pod_mtu > dev_mtu:
            return failed(f"pod {name}'s eth0 has MTU {pod_mtu}, but its packets to other nodes "
                          f"leave {p.node} through {DEV}, MTU {dev_mtu}",
                          hint=overhead_hint(ctx), expected=f"pod MTU ≤ {dev_mtu}",
                          actual=f"{name}: eth0 mtu {pod_mtu}")
        lines.append(f"{name} {pod_mtu} ≤ {dev_mtu}")
    msg = f"pods' eth0 MTU vs their node's {DEV}: {', '.join(lines)}"
    conf = ctx.cluster.config
    if conf.pod_mtu > conf.backend_mtu:
        msg += (f" — but the cluster config still gives new pods MTU {conf.pod_mtu}: the next "
                "pod will have the same problem (fix the config, as Flannel's CNI config does)")
    return passed(msg)


def icmp_filter_present(netns: str) -> bool:
    r = kernel.Runner().run(["iptables", "-C", "OUTPUT", *ICMP_FILTER], netns, check=False,
                            record=False)
    return r.rc == 0


def _flush_pmtu(runner: kernel.Runner, pods: dict[str, Any]) -> None:
    """Forget every path MTU the pods learned (their route cache), so a measurement starts cold."""
    for p in pods.values():
        runner.run(["ip", "route", "flush", "cache"], p.netns, check=False, source="check")


def big_transfer(c: Cluster, src: str, dst: str, timeout: float = BIG_TIMEOUT) -> Any:
    """A real HTTP exchange of BIG bytes each way: agnhost echoes `msg` back."""
    return c.probe(src, dst, PORT, path="/echo?msg=" + "x" * BIG, timeout=timeout)


@LAB.check("no-black-hole", "A large transfer between pods works even where ICMP is filtered")
def check_no_black_hole(ctx: Context) -> Verdict:
    pods, missing = _need_pods(ctx, tuple(PODS))
    if missing:
        return missing
    c = ctx.cluster
    runner = c.runner  # the check's own kernel changes go into the journal, marked `check`
    added = []
    try:
        for n in c.nodes():
            if not icmp_filter_present(n.netns):
                runner.run(["iptables", "-I", "OUTPUT", *ICMP_FILTER], n.netns, source="check")
                added.append(n.netns)
        _flush_pmtu(runner, pods)
        results = []
        for a, b in itertools.combinations(sorted(pods), 2):
            if pods[a].node == pods[b].node:
                continue
            r = big_transfer(c, a, b)
            results.append((a, b, r))
            if not (r.ok and len(r.reply) == BIG):
                break  # the first failure is the verdict
    finally:
        for ns in added:
            runner.run(["iptables", "-D", "OUTPUT", *ICMP_FILTER], ns, check=False,
                       source="check")
    total = len(c.nodes())
    where = "every node" if len(added) == total else f"{len(added)} of {total} nodes"
    note = (f" (the check added the ICMP filter on {where} for the measurement, since real "
            "networks filter ICMP you do not control, and removed it again)" if added else "")
    if not results:
        return failed("no two pods on different nodes to measure between",
                      hint=f"apply the lab's pods: {APPLY}", expected="pods on two nodes",
                      actual="none")
    a, b, r = results[-1]
    if not (r.ok and len(r.reply) == BIG):
        got = r.error if not r.ok else f"{len(r.reply)} bytes back"
        return failed(f"{a} → {b}: a {BIG}-byte echo failed ({got}) with ICMP 'fragmentation "
                      f"needed' filtered on every node{note}", hint=overhead_hint(ctx),
                      expected=f"{BIG} bytes echoed", actual=got)
    times = ", ".join(f"{a}↔{b} {r.ms:.0f} ms" for a, b, r in results)
    return passed(f"{BIG} bytes each way with ICMP 'fragmentation needed' filtered on every node: "
                  f"{times}{note}")


# --- exercise repair-overlay ---------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    node: str
    message: str
    fix: str  # the command that fixes it, on that node
    expected: str
    actual: str


def overlay_problems(ctx: Context) -> list[Problem]:
    """Every difference between the live overlay entries and what Flannel would program."""
    conf = ctx.cluster.config
    out: list[Problem] = []
    for node in conf.nodes:
        ns = naming.node_netns(node.name)
        on = SHELLS.get(node.name, f'c.node("{node.name}")')

        def fix(cmd: str, _on: str = on) -> str:
            return f'{_on}.sh("{cmd}")'

        dev = live_vxlan(ns)
        info = vxlan_info(dev)
        if dev is None:
            out.append(Problem(node.name, f"node {node.name} has no {DEV}",
                               "recreate the cluster (Cluster.up(..., replace=True)) and apply "
                               "the pods again", DEV, "missing"))
            continue
        want_mac = backends.vtep_mac(node)
        if (info.get("id"), info.get("port"), info.get("local")) != \
                (backends.VXLAN_VNI, backends.VXLAN_PORT, node.ip) or \
                dev.get("address", "").lower() != want_mac:
            out.append(Problem(
                node.name, f"{DEV} on {node.name} is not the device Flannel made",
                "recreate the cluster (Cluster.up(..., replace=True)) and apply the pods again",
                f"vxlan id {backends.VXLAN_VNI} local {node.ip} dstport {backends.VXLAN_PORT}, "
                f"address {want_mac}",
                f"vxlan id {info.get('id')} local {info.get('local')} dstport "
                f"{info.get('port')}, address {dev.get('address')}"))
            continue
        if "UP" not in dev.get("flags", []):
            out.append(Problem(
                node.name, f"{DEV} on {node.name} is DOWN",
                fix(f"ip link set {DEV} up") + " — taking a link down also deletes its routes "
                "and neighbour entries: restore them afterwards",
                f"{DEV} UP", f"{DEV} <{','.join(dev.get('flags', []))}>"))
            continue
        routes, neighs, fdbs = backends.vxlan_peer_entries(conf, node)
        have_routes = {r.get("dst"): r for r in live_routes(ns)}
        have_neigh = {n.get("dst"): n for n in live_neighbours(ns)}
        have_fdb: dict[str, list[dict[str, Any]]] = {}
        for e in live_fdb(ns):
            have_fdb.setdefault(e.get("mac", "").lower(), []).append(e)
        for n in neighs:
            got = have_neigh.get(n.ip)
            cmd = fix(f"ip neigh replace {n.ip} lladdr {n.mac} dev {DEV} nud permanent")
            if got is None or not got.get("lladdr"):
                out.append(Problem(node.name, f"{node.name} has no MAC for VTEP {n.ip} on {DEV}",
                                   cmd, f"{n.ip} lladdr {n.mac} PERMANENT",
                                   neigh_text(got) if got else "no entry"))
            elif got["lladdr"].lower() != n.mac or "PERMANENT" not in got.get("state", []):
                out.append(Problem(node.name, f"{node.name}'s neighbour entry for VTEP {n.ip} is "
                                   "not Flannel's", cmd, f"{n.ip} lladdr {n.mac} PERMANENT",
                                   neigh_text(got)))
        want_ips = {n.ip for n in neighs}
        for ip, got in have_neigh.items():
            if ip not in want_ips and "PERMANENT" in got.get("state", []):
                out.append(Problem(node.name, f"{node.name} has a permanent neighbour entry for "
                                   f"{ip} on {DEV}, which is no node's VTEP",
                                   fix(f"ip neigh del {ip} dev {DEV}"), "no entry",
                                   neigh_text(got)))
        for f in fdbs:
            got = have_fdb.get(f.mac, [])
            cmd = fix(f"bridge fdb replace {f.mac} dev {DEV} dst {f.dst} self permanent")
            if not got:
                out.append(Problem(node.name, f"{node.name} has no FDB entry for {f.mac} on "
                                   f"{DEV} (the VTEP of {_node_of_ip(conf, f.dst)})", cmd,
                                   f"{f.mac} dst {f.dst} self permanent", "no entry"))
            elif [e.get("dst") for e in got] != [f.dst] or got[0].get("state") != "permanent":
                out.append(Problem(node.name, f"{node.name}'s FDB entry for {f.mac} is not "
                                   "Flannel's", cmd, f"{f.mac} dst {f.dst} self permanent",
                                   "; ".join(fdb_text(e) for e in got)))
        want_macs = {f.mac for f in fdbs}
        for mac, got in have_fdb.items():
            if mac not in want_macs:
                dsts = [e.get("dst") for e in got]
                what = ("a flood entry (all-zero MAC): Flannel programs none, every unknown "
                        "frame would be copied to " + ", ".join(map(str, dsts))
                        if mac == "00:00:00:00:00:00" else "no node's VTEP")
                out.append(Problem(node.name, f"{node.name} has an FDB entry for {mac}: {what}",
                                   "; ".join(fix(f"bridge fdb del {mac} dev {DEV} dst {d} self")
                                             for d in dsts), "no entry",
                                   "; ".join(fdb_text(e) for e in got)))
        for r in routes:
            got = have_routes.get(r.dst)
            cmd = fix(f"ip route replace {r.dst} via {r.via} dev {r.dev} onlink")
            want = f"{r.dst} via {r.via} dev {r.dev} onlink"
            if got is None:
                out.append(Problem(node.name, f"{node.name} has no route to {r.dst}", cmd, want,
                                   "no route"))
            elif (got.get("gateway"), got.get("dev")) != (r.via, r.dev) or \
                    "onlink" not in got.get("flags", []):
                out.append(Problem(node.name, f"{node.name}'s route to {r.dst} is not Flannel's",
                                   cmd, want, route_text(got)))
        want_dsts = {r.dst for r in routes}
        for dst, got in have_routes.items():
            if got.get("dev") == DEV and dst not in want_dsts:
                out.append(Problem(node.name, f"{node.name} has a route to {dst} through {DEV} "
                                   "that Flannel would not program",
                                   fix(f"ip route del {dst} dev {DEV}"), "no such route",
                                   route_text(got)))
    return out


def _node_of_ip(conf: Any, ip: str) -> str:
    return next((n.name for n in conf.nodes if n.ip == ip), ip)


@LAB.check("overlay-entries", "Every node has exactly the overlay entries Flannel programs")
def check_overlay_entries(ctx: Context) -> Verdict:
    problems = overlay_problems(ctx)
    if problems:
        p = problems[0]
        more = f" ({len(problems) - 1} more problem{'s' if len(problems) > 2 else ''} after " \
               "this one)" if len(problems) > 1 else ""
        return failed(p.message + more,
                      hint=f"on {p.node}: {p.fix}. Flannel programs, per remote node, a route "
                           f"via its VTEP address, a permanent neighbour entry (VTEP address → "
                           f"VTEP MAC) and an FDB entry (VTEP MAC → node IP); compare `ip route`, "
                           f"`ip neigh show dev {DEV}` and `bridge fdb show dev {DEV}` on every "
                           "node", expected=p.expected, actual=p.actual)
    n = len(ctx.cluster.config.nodes)
    return passed(f"on all {n} nodes: {n - 1} routes, {n - 1} permanent neighbour entries and "
                  f"{n - 1} FDB entries on {DEV}, exactly Flannel's")


@LAB.check("cross-node", "Pods on different nodes reach each other, both ways")
def check_cross_node(ctx: Context) -> Verdict:
    pods, missing = _need_pods(ctx, tuple(PODS))
    if missing:
        return missing
    c = ctx.cluster
    ok, bad = [], []
    for a in sorted(pods):
        for b in sorted(pods):
            if a == b or pods[a].node == pods[b].node:
                continue
            r = c.probe(a, b, PORT, timeout=1.0)
            if not r.ok or r.reply.strip() != b:
                r = c.probe(a, b, PORT, timeout=1.0)  # a first packet may meet a stale entry
            (ok if r.ok and r.reply.strip() == b else bad).append((a, b, r))
    if bad:
        a, b, r = bad[0]
        pairs = ", ".join(f"{x}→{y}" for x, y, _ in bad)
        return failed(f"{len(bad)} of {len(ok) + len(bad)} cross-node connections fail: {pairs}",
                      hint=f'follow the failing direction through the tables: overlay_path(c, '
                           f'"{a}", "{b}") and overlay_path(c, "{b}", "{a}") (the answer comes '
                           f'back the other way); LAB.run("overlay-entries") names what differs '
                           "from Flannel's entries",
                      expected="every pod reaches every pod on another node",
                      actual=f"{a} → {b}: {r.error or repr(r.reply[:40])}")
    slowest = max((r.ms for _, _, r in ok), default=0.0)
    return passed(f"all {len(ok)} cross-node connections answered (slowest {slowest:.1f} ms)")
