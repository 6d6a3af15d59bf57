"""Pictures and tables of a cluster's LIVE state (a :class:`lab_kit.observe.Snapshot`).

Nothing here reads the config: every box is a netns, interface or route the kernel reported.

- :func:`cluster_diagram` -> a ``graphviz.Digraph`` (Jupyter shows it inline as SVG):
  the underlay switch ``s1`` on top, one box per node (``eth0``, the ``cni0`` bridge, its
  ``veth…`` ports and its pods), veth pairs as thick lines labelled with both ifindexes
  (``eth0@if7 ↔ veth…@if2``), bridge membership as dashed lines, DOWN links in red on grey,
  and each node's routing table with the host-gw routes to other nodes' pods marked.
- :func:`snapshot_table` -> the same facts as plain text, for a terminal.
"""

from __future__ import annotations

import html
import ipaddress
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from lab_kit.observe import End, Link, NetnsView, Route, Snapshot

if TYPE_CHECKING:  # imported when drawing, so the text table works without graphviz
    import graphviz

FONT = "Helvetica"
C_POD = "#e8f0fe"
C_NODE_BG = "#f6f8fa"
C_UNDERLAY_BG = "#fff8e6"
C_BRIDGE = "#dbeafe"
C_DOWN_FILL = "#e5e5e5"
C_DOWN = "#cf222e"
C_HOSTGW = "#0550ae"
C_WARN = "#bc4c00"
C_MUTED = "#57606a"
C_HANDMADE = "#8250df"


# --- helpers ---------------------------------------------------------------------------------

def _e(text: object) -> str:
    """Escape text for a Graphviz HTML-like label."""
    return html.escape(str(text), quote=True)


def _gid(*parts: str) -> str:
    """A graph node id; ':' would be read as a port separator, so it never appears."""
    return "/".join(parts).replace(":", "%3A")


def _port(ifname: str) -> str:
    return "p_" + re.sub(r"[^A-Za-z0-9_]", lambda m: f"_{ord(m.group()):x}_", ifname)


def _natural(text: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _small(text: str, colour: str = C_MUTED) -> str:
    return f'<FONT POINT-SIZE="8" COLOR="{colour}">{_e(text)}</FONT>'


def _shown(links: Iterable[Link]) -> list[Link]:
    return [ln for ln in links if ln.kind != "loopback"]


def _eth0_first(links: Iterable[Link]) -> list[Link]:
    """The links but lo, `eth0` first, then by name (a pod's or a host's table rows)."""
    return sorted(_shown(links), key=lambda ln: (ln.name != "eth0", _natural(ln.name)))


def _network(addr: str) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.ip_interface(addr).network  # type: ignore[return-value]
    except ValueError:
        return None


class _Model:
    """Facts derived from a snapshot that several parts of the picture need."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.peer: dict[End, End] = {}
        for a, b in snap.pairs:
            self.peer[a] = b
            self.peer[b] = a
        self.dangling = set(snap.dangling)
        self.ambiguous = set(snap.ambiguous)
        self.nodes = sorted(snap.by_role("node"), key=lambda v: _natural(v.owner))
        self.node_ip: dict[str, str] = {}  # node netns -> eth0 IP
        self.node_cidr: dict[str, ipaddress.IPv4Network] = {}  # node netns -> its cni0 network
        for v in self.nodes:
            eth0 = v.link("eth0")
            if eth0 is not None and eth0.ip:
                self.node_ip[v.name] = eth0.ip
            cni0 = v.link("cni0")
            net = None
            if cni0 is not None and cni0.addresses:
                net = _network(cni0.addresses[0])
            if net is None and v.name in snap.node_cidrs:  # no pod there yet: no cni0
                net = _network(snap.node_cidrs[v.name])
            if net is not None:
                self.node_cidr[v.name] = net
        self.node_of_ip = {ip: ns for ns, ip in self.node_ip.items()}  # eth0 IP -> node netns
        self.owner = {v.name: v.owner for v in snap.views}
        # pods: placed by their live veth pair, else by the stored state, else "detached"
        self.pods_on: dict[str, list[NetnsView]] = {v.name: [] for v in self.nodes}
        self.detached: list[NetnsView] = []
        self.live_node: dict[str, str | None] = {}  # pod netns -> node netns of its veth pair
        for v in sorted(snap.by_role("pod"), key=lambda v: _natural(v.owner)):
            live = self.live_node[v.name] = snap.pod_node(v.name)
            where = live or snap.state_pods.get(v.name)
            if where in self.pods_on:
                self.pods_on[where].append(v)
            else:
                self.detached.append(v)

    def peer_text(self, end: End) -> str:
        other = self.peer.get(end)
        if other is None:
            return ""
        return f"{self.owner.get(other[0], other[0])}:{other[1]}"


# --- the diagram ---------------------------------------------------------------------------------

def cluster_diagram(snap: Snapshot, show_routes: bool = True) -> graphviz.Digraph:
    """A Graphviz picture of the cluster as the kernel has it now."""
    import graphviz

    m = _Model(snap)
    g = graphviz.Digraph(name=f"cluster-{snap.cluster}", engine="dot")
    g.attr(rankdir="TB", newrank="true", compound="true", nodesep="0.25", ranksep="0.3",
           fontname=FONT, fontsize="10", labelloc="b", labeljust="l",
           label=_legend(snap))
    g.attr("node", fontname=FONT, fontsize="10", shape="box", style="rounded,filled",
           fillcolor="white", margin="0.08,0.04", height="0.3")
    g.attr("edge", fontname=FONT, fontsize="8", dir="none", color="#444444")

    for v in snap.by_role("underlay"):
        _draw_underlay(g, m, v)
    for v in m.nodes:
        _draw_node(g, m, v, show_routes)
    # outside the node boxes, after them: Mininet gives the external host the last s1 port
    for v in sorted(snap.by_role("external") + snap.by_role("other"), key=lambda v: v.name):
        _draw_host(g, m, v)
    if m.detached:
        with g.subgraph(name="cluster_detached") as sg:
            sg.attr(label="pods wired to no node", style="dashed", color=C_DOWN,
                    fontcolor=C_DOWN, labelloc="t", fontsize="9")
            for p in m.detached:
                _draw_pod(sg, m, p, show_routes)
    _draw_edges(g, m, snap)
    # line things up across the node boxes (newrank lets a rank span clusters): every node's
    # eth0 and the external host just under the switch, every pod on the bottom row
    tops = [_gid(v.name, "eth0") for v in m.nodes if v.link("eth0") is not None]
    tops += [_gid(v.name) for v in snap.by_role("external")]
    pods = [_gid(v.name) for v in snap.by_role("pod")]
    for row, ordered in ((tops, True), (pods, False)):
        if len(row) > 1:
            with g.subgraph() as sg:
                sg.attr(rank="same")
                for nid in row:
                    sg.node(nid)
                if ordered:  # left to right like the switch's ports: nodes, then external
                    for a, b in zip(row, row[1:], strict=False):
                        sg.edge(a, b, style="invis")
    return g


def _legend(snap: Snapshot) -> str:
    parts = [f"cluster {snap.cluster}: live kernel state",
             "thick line = veth pair (name@if<peer ifindex>)",
             "dashed = port of a bridge (master)",
             "red on grey = link DOWN"]
    if any(not v.in_state for v in snap.views if v.role == "pod"):
        parts.append("purple = pod made by hand (not in the cluster state)")
    if snap.dangling:
        parts.append(f"{len(snap.dangling)} veth end(s) with no peer in the cluster")
    if snap.ambiguous:
        parts.append(f"{len(snap.ambiguous)} veth end(s) whose peer is ambiguous")
    return "  ·  ".join(parts)


def _link_cell_text(m: _Model, v: NetnsView, ln: Link, with_peer: bool = False) -> str:
    rows = [f"<B>{_e(ln.name)}</B>"]
    if ln.addresses:
        rows.append(_e(", ".join(ln.addresses)))
    extra = []
    if ln.kind and ln.kind not in ("veth",):
        extra.append(ln.kind)
    extra.append(f"if{ln.ifindex}")
    if ln.kind == "veth" and ln.peer_ifindex is not None:
        extra.append(f"peer if{ln.peer_ifindex}")
    if ln.down:
        extra.append("DOWN" if ln.admin_up else "DOWN (admin)")
    end = (v.name, ln.name)
    if ln.kind == "veth":
        if end in m.dangling:
            extra.append("not in the cluster")
        elif end in m.ambiguous:
            extra.append("ambiguous")
        elif with_peer and end in m.peer:
            extra.append(f"↔ {m.peer_text(end)}")
    colour = C_DOWN if ln.down or end in m.dangling else C_MUTED
    rows.append(_small(" · ".join(extra), colour))
    return "<BR/>".join(rows)


def _draw_underlay(g: graphviz.Digraph, m: _Model, v: NetnsView) -> None:
    links = _shown(v.links)
    bridges = [ln for ln in links if ln.kind == "bridge"]
    bridge_names = {b.name for b in bridges}
    with g.subgraph(name="cluster_underlay") as sg:
        sg.attr(label=f'<<B>underlay</B> {_small(f"netns {v.name}")}>', style="rounded,filled",
                fillcolor=C_UNDERLAY_BG, color="#d4a72c", labelloc="t", fontsize="10")
        for br in bridges:
            ports = sorted((ln for ln in links if ln.master == br.name),
                           key=lambda ln: _natural(ln.name))
            cells = "".join(_port_cell(m, v, ln) for ln in ports) or "<TD>no ports</TD>"
            head_bg = C_DOWN_FILL if br.down else C_BRIDGE
            state = " DOWN" if br.down else ""
            title = (f'<B>{_e(br.name)}</B> {_small("Linux bridge · the data-centre switch")}'
                     f'{_small(state, C_DOWN) if state else ""}')
            label = (f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">'
                     f'<TR><TD COLSPAN="{max(1, len(ports))}" BGCOLOR="{head_bg}">{title}</TD>'
                     f"</TR><TR>{cells}</TR></TABLE>>")
            sg.node(_gid(v.name, br.name), label=label, shape="plain")
        for ln in links:
            if ln.kind != "bridge" and ln.master not in bridge_names:
                _iface_node(sg, m, v, ln)


def _port_cell(m: _Model, v: NetnsView, ln: Link) -> str:
    bg = C_DOWN_FILL if ln.down else "white"
    return (f'<TD PORT="{_port(ln.name)}" BGCOLOR="{bg}">'
            f"{_link_cell_text(m, v, ln)}</TD>")


def _iface_node(g: graphviz.Digraph, m: _Model, v: NetnsView, ln: Link) -> None:
    """One interface of a node (or of the underlay) as its own small box."""
    end = (v.name, ln.name)
    attrs = {"fillcolor": "white", "color": "#444444"}
    if ln.kind == "bridge":
        attrs.update(fillcolor=C_BRIDGE, shape="box", style="filled")
    elif ln.kind == "veth":
        attrs.update(shape="box", style="rounded,filled")
    if ln.down:
        attrs.update(fillcolor=C_DOWN_FILL, color=C_DOWN, fontcolor=C_DOWN)
    if end in m.dangling or end in m.ambiguous:
        attrs.update(color=C_DOWN, style=attrs.get("style", "rounded,filled") + ",dashed")
    g.node(_gid(v.name, ln.name), label=f"<{_link_cell_text(m, v, ln)}>", **attrs)


def _draw_node(g: graphviz.Digraph, m: _Model, v: NetnsView, show_routes: bool) -> None:
    ip = m.node_ip.get(v.name, "no eth0 address")
    rows = [f'<TR><TD ALIGN="LEFT"><B>node {_e(v.owner)}</B>  {_e(ip)}</TD></TR>',
            f'<TR><TD ALIGN="LEFT">{_small(f"netns {v.name}")}</TD></TR>']
    if v.error:
        rows.append(f'<TR><TD ALIGN="LEFT">{_small(f"could not read: {v.error[:80]}", C_DOWN)}'
                    "</TD></TR>")
    title = ('<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
             + "".join(rows) + "</TABLE>")
    links = _shown(v.links)
    pods = m.pods_on.get(v.name, [])
    order = {pod.name: i for i, pod in enumerate(pods)}

    def rank(ln: Link) -> tuple[int, int, list[object]]:
        if ln.name == "eth0":
            return (0, 0, [])
        if ln.kind == "bridge":
            return (1, 0, _natural(ln.name))
        if ln.kind == "veth":
            other = m.peer.get((v.name, ln.name))
            return (3, order.get(other[0], len(order)) if other else len(order),
                    _natural(ln.name))
        return (2, 0, _natural(ln.name))

    links.sort(key=rank)
    with g.subgraph(name=f"cluster_{v.owner}") as sg:
        sg.attr(label=f"<{title}>", style="rounded,filled", fillcolor=C_NODE_BG,
                color="#8c959f", labelloc="t", labeljust="l", fontsize="10")
        for ln in links:
            _iface_node(sg, m, v, ln)
        if show_routes:
            # the routing table as a box of its own, beside eth0 under the node's name: the
            # layout then steers the wires from the switch around it instead of across it
            rid = _gid(v.name, "#routes")
            sg.node(rid, label=f"<{_route_table(m, v)}>", shape="plain")
            if v.link("eth0") is not None:
                with sg.subgraph() as row:
                    row.attr(rank="same")
                    row.node(rid)
                    row.node(_gid(v.name, "eth0"))
        # eth0 above the bridges and other top-level links (a veth made by hand, flannel.1):
        # routing, not a wire, connects them, so the edge is invisible
        if v.link("eth0") is not None:
            for ln in links:
                if ln.name != "eth0" and ln.master is None:
                    sg.edge(_gid(v.name, "eth0"), _gid(v.name, ln.name), style="invis")
        for pod in pods:
            _draw_pod(sg, m, pod, show_routes)


def _route_note(m: _Model, v: NetnsView, r: Route) -> tuple[str, str]:
    """(note, colour) for a node's route: host-gw, VXLAN or BGP to another node's pods…"""
    net = _network(r.dst) if r.dst != "default" else None
    owner_of_dst = next((ns for ns, cidr in m.node_cidr.items() if net == cidr), None)
    if r.gateway and r.gateway in m.node_of_ip and r.dev == "eth0":
        via = m.node_of_ip[r.gateway]
        if owner_of_dst == via:
            how = "BGP (BIRD)" if r.proto == "bird" else "host-gw"
            return f"{how} → pods of {m.owner[via]}", C_HOSTGW
        if owner_of_dst is not None:
            return (f"⚠ {r.dst} is {m.owner[owner_of_dst]}'s, not {m.owner[via]}'s",
                    C_WARN)
        return f"via node {m.owner[via]}", C_HOSTGW
    if r.dev == "flannel.1" and owner_of_dst is not None and owner_of_dst != v.name:
        return f"VXLAN → pods of {m.owner[owner_of_dst]}", C_HOSTGW
    if owner_of_dst == v.name and r.gateway is None:
        return "this node's pods", C_MUTED
    if owner_of_dst is not None and r.gateway is None and r.dev not in (None, "eth0"):
        return f"pods of {m.owner[owner_of_dst]} via {r.dev}", C_HOSTGW
    return "", C_MUTED


def _route_table(m: _Model, v: NetnsView) -> str:
    if not v.routes:
        return _small("no routes", C_DOWN)
    rows = []
    for r in v.routes:
        where = []
        if r.type != "unicast":
            where.append(r.type)
        if r.gateway:
            where.append(f"via {r.gateway}")
        if r.dev:
            where.append(f"dev {r.dev}")
        note, colour = _route_note(m, v, r)
        dst = _e(r.dst)
        if colour == C_HOSTGW:
            dst = f"<B>{dst}</B>"
        rows.append(f'<TR><TD ALIGN="LEFT"><FONT COLOR="{colour}">{dst}</FONT></TD>'
                    f'<TD ALIGN="LEFT"><FONT COLOR="{colour}">→ {_e(" ".join(where))}</FONT>'
                    f'</TD><TD ALIGN="LEFT">{_small(note, colour) if note else ""}</TD></TR>')
    return ('<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
            f'<TR><TD ALIGN="LEFT" COLSPAN="3">{_small("routes (ip route)")}</TD></TR>'
            + "".join(rows) + "</TABLE>")


def _draw_pod(g: graphviz.Digraph, m: _Model, v: NetnsView, show_routes: bool) -> None:
    links = _eth0_first(v.links)
    head_bg = C_POD
    border = "#444444"
    notes = []
    if not v.in_state:
        border = C_HANDMADE
        notes.append(_small("made by hand: not in the cluster state", C_HANDMADE))
    if v.error:
        notes.append(_small(f"could not read: {v.error[:80]}", C_DOWN))
    if m.live_node.get(v.name) is None:
        border = C_DOWN
        notes.append(_small("not wired to any node (no veth pair)", C_DOWN))
    head = (f"<B>{_e(v.owner)}</B><BR/>{_small(f'netns {v.name}')}"
            + "".join(f"<BR/>{n}" for n in notes))
    if show_routes:
        default = next((r for r in v.routes if r.dst == "default"), None)
        text = f"default via {default.gateway}" if default and default.gateway else (
            "no default route")
        head += "<BR/>" + _small(text, C_MUTED if default else C_DOWN)
    # interfaces on top, where the wires from the node arrive
    rows = [f"<TR>{_port_cell(m, v, ln)}</TR>" for ln in links]
    if not links:
        rows.append(f'<TR><TD>{_small("no interfaces but lo", C_DOWN)}</TD></TR>')
    rows.append(f'<TR><TD BGCOLOR="{head_bg}">{head}</TD></TR>')
    label = (f'<<TABLE BORDER="0" COLOR="{border}" CELLBORDER="1" CELLSPACING="0" '
             f'CELLPADDING="3">{"".join(rows)}</TABLE>>')
    g.node(_gid(v.name), label=label, shape="plain")


def _draw_host(g: graphviz.Digraph, m: _Model, v: NetnsView) -> None:
    """The external host (or any other netns of the cluster) as one table, outside the nodes."""
    links = _eth0_first(v.links)
    what = "external host (the outside world)" if v.role == "external" else "other netns"
    head = f"<B>{_e(what)}</B><BR/>{_small(f'netns {v.name}')}"
    if v.error:
        head += "<BR/>" + _small(f"could not read: {v.error[:80]}", C_DOWN)
    rows = [f"<TR>{_port_cell(m, v, ln)}</TR>" for ln in links]
    rows.append(f'<TR><TD BGCOLOR="#eeeeee">{head}</TD></TR>')
    label = ('<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3">'
             f'{"".join(rows)}</TABLE>>')
    g.node(_gid(v.name), label=label, shape="plain")


def _endpoint(m: _Model, end: End) -> str:
    """The graph id (with port) an edge to `end` attaches to."""
    ns, ifname = end
    view = m.snap.view(ns)
    role = view.role if view else "other"
    if role in ("pod", "external", "other"):
        return f"{_gid(ns)}:{_port(ifname)}:n"
    if role == "underlay" and view is not None:
        ln = view.link(ifname)
        bridges = {b.name for b in view.links if b.kind == "bridge"}
        if ln is not None and ln.master in bridges:
            return f"{_gid(ns, ln.master)}:{_port(ifname)}:s"
    return _gid(ns, ifname)


def _draw_edges(g: graphviz.Digraph, m: _Model, snap: Snapshot) -> None:
    rank = {"underlay": 0, "node": 1, "external": 1, "other": 1, "pod": 2}
    for a, b in snap.pairs:
        va, vb = snap.view(a[0]), snap.view(b[0])
        la, lb = snap.link(a), snap.link(b)
        if va is None or vb is None or la is None or lb is None:
            continue
        if rank.get(va.role, 1) > rank.get(vb.role, 1):  # draw top-down: underlay -> pod
            a, b, va, vb, la, lb = b, a, vb, va, lb, la
        down = la.down or lb.down
        label = f"{lb.display()} ↔ {la.display()}"  # the lower (pod) end first: eth0@if7 ↔ …
        attrs = {"penwidth": "2.5", "color": C_DOWN if down else "#24292f",
                 "fontcolor": C_DOWN if down else C_MUTED, "tooltip": label}
        if va.role != "underlay":  # the switch's cells already say which port is which
            attrs["label"] = label
        g.edge(_endpoint(m, a), _endpoint(m, b), **attrs)
    # bridge membership inside nodes (the underlay's ports are cells of the switch)
    for v in snap.by_role("node"):
        names = {ln.name for ln in v.links}
        for ln in v.links:
            if ln.master in names:
                g.edge(_gid(v.name, ln.master), _gid(v.name, ln.name), style="dashed",
                       color=C_DOWN if ln.down else "#6e7781")


# --- plain text ----------------------------------------------------------------------------------

def snapshot_table(snap: Snapshot) -> str:
    """The snapshot as text: per netns its links (master, peer, addresses) and routes."""
    m = _Model(snap)
    out = [f"cluster {snap.cluster}: {len(snap.views)} namespaces, {len(snap.pairs)} veth pairs"
           + (f" (read in {snap.seconds * 1000:.0f} ms)" if snap.seconds else "")]
    rank = {"underlay": 0, "external": 1, "node": 2, "pod": 3, "other": 4}
    for v in sorted(snap.views, key=lambda v: (rank.get(v.role, 9), _natural(v.name))):
        if v.role == "pod":
            node = m.live_node.get(v.name)
            tag = (f"pod {v.owner}" + ("" if v.in_state else ", made by hand")
                   + (f", on {m.owner.get(node, node)}" if node else ", wired to no node"))
        elif v.role == "node":
            tag = f"node {v.owner}"
        else:
            tag = v.role
        out.append(f"\n== {v.name}  ({tag})")
        if v.error:
            out.append(f"   could not read: {v.error}")
            continue
        links = _shown(v.links)
        if not links:
            out.append("   (no interfaces but lo)")
        rows = []
        for ln in links:
            end = (v.name, ln.name)
            rel = []
            if ln.master:
                rel.append(f"master {ln.master}")
            if ln.kind == "veth":
                if end in m.peer:
                    other = m.peer[end]
                    rel.append(f"peer {other[0]}:{other[1]}")
                elif end in m.ambiguous:
                    rel.append(f"peer if{ln.peer_ifindex}: ambiguous")
                else:
                    rel.append(f"peer if{ln.peer_ifindex}: not found")
            rows.append([str(ln.ifindex), ln.display(), ln.kind or "-",
                         ln.state + ("" if ln.admin_up else " (admin down)"),
                         " ".join(ln.addresses) or "-", "  ".join(rel)])
        if rows:
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for r in rows:
                out.append("   " + "  ".join(c.ljust(w) for c, w in
                                             zip(r, widths, strict=True)).rstrip())
        if v.routes:
            out.append("   routes:")
            out.extend(f"     {r.text()}" for r in v.routes)
    if snap.dangling:
        out.append("\nveth ends with no peer in the cluster: "
                   + ", ".join(f"{ns}:{i}" for ns, i in snap.dangling))
    if snap.ambiguous:
        out.append("\nveth ends with an ambiguous peer: "
                   + ", ".join(f"{ns}:{i}" for ns, i in snap.ambiguous))
    return "\n".join(out)
