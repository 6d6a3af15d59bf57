"""Diagram, text table and veth matching from hand-made snapshots (no root, no kernel)."""

from __future__ import annotations

import shutil

import pytest

from lab_kit import observe, viz
from lab_kit.observe import Link, NetnsView, Route, Snapshot, match_veth_pairs

C = "c"
UNDERLAY = "lk-c-underlay"
EXTERNAL = "lk-c-external"
W1, W2 = "lk-c-worker", "lk-c-worker2"
POD_A, POD_B, POD_C = "lk-c.default.web-a", "lk-c.default.web-b", "lk-c.default.web-c"
HANDMADE = "lk-c.default.byhand"


def lo() -> Link:
    return Link(1, "lo", "loopback", "UNKNOWN", addresses=("127.0.0.1/8",))


def veth(ifindex: int, name: str, peer: int, nsid: int | None = 0, master: str | None = None,
         addresses: tuple[str, ...] = (), state: str = "UP", admin_up: bool = True) -> Link:
    return Link(ifindex, name, "veth", state, f"aa:bb:cc:dd:ee:{ifindex:02x}", 1500, master,
                peer, addresses, nsid, admin_up)


def bridge(ifindex: int, name: str, addresses: tuple[str, ...] = ()) -> Link:
    return Link(ifindex, name, "bridge", "UP", None, 1500, None, None, addresses)


def pod_view(name: str, owner: str, peer: int, ip: str, gw: str, in_state: bool = True,
             state: str = "UP") -> NetnsView:
    return NetnsView(
        name, "pod", owner,
        (lo(), veth(2, "eth0", peer, 0, addresses=(f"{ip}/24",), state=state)),
        (Route("default", gw, "eth0"),
         Route(ip.rsplit(".", 1)[0] + ".0/24", None, "eth0", "kernel", "link", ip)),
        ((0, W1 if gw.startswith("10.244.1.") else W2),), in_state)


def node_routes(me: int) -> tuple[Route, ...]:
    routes = []
    for other, ip in ((1, "172.18.0.3"), (2, "172.18.0.4")):
        if other == me:
            routes.append(Route(f"10.244.{me}.0/24", None, "cni0", "kernel", "link",
                                f"10.244.{me}.1"))
        else:
            routes.append(Route(f"10.244.{other}.0/24", ip, "eth0"))
    routes.append(Route("172.18.0.0/16", None, "eth0", "kernel", "link",
                        f"172.18.0.{me + 2}"))
    return tuple(routes)


def views() -> list[NetnsView]:
    """2 nodes, 3 pods from the state, 1 pod made by hand, the underlay and the external host.

    Ifindexes collide across namespaces as they do in a real kernel: every pod's eth0 is 2,
    worker's and worker2's first veth are both 4.
    """
    underlay = NetnsView(UNDERLAY, "underlay", "underlay", (
        lo(),
        veth(2, "s1-eth1", 2, 0, master="s1"),
        veth(3, "s1-eth2", 2, 1, master="s1"),
        veth(4, "s1-eth3", 2, 2, master="s1"),
        bridge(5, "s1"),
    ), (), ((0, W1), (1, W2), (2, EXTERNAL)))
    w1 = NetnsView(W1, "node", "c-worker", (
        lo(),
        veth(2, "eth0", 2, 0, addresses=("172.18.0.3/16",)),
        bridge(3, "cni0", ("10.244.1.1/24",)),
        veth(4, "veth1111aaaa", 2, 1, master="cni0"),
        # administratively DOWN: the pod's end then has no carrier
        veth(5, "veth2222bbbb", 2, 2, master="cni0", state="DOWN", admin_up=False),
    ), node_routes(1), ((0, UNDERLAY), (1, POD_A), (2, POD_B)))
    w2 = NetnsView(W2, "node", "c-worker2", (
        lo(),
        veth(2, "eth0", 3, 0, addresses=("172.18.0.4/16",)),
        bridge(3, "cni0", ("10.244.2.1/24",)),
        veth(4, "veth3333cccc", 2, 1, master="cni0"),
        veth(5, "veth4444dddd", 2, 2, master="cni0"),
    ), node_routes(2), ((0, UNDERLAY), (1, POD_C), (2, HANDMADE)))
    external = NetnsView(EXTERNAL, "external", "external", (
        lo(), veth(2, "eth0", 4, 0, addresses=("172.18.0.100/16",)),
    ), (Route("172.18.0.0/16", None, "eth0", "kernel", "link", "172.18.0.100"),),
        ((0, UNDERLAY),))
    return [
        underlay, external, w1, w2,
        pod_view(POD_A, "default/web-a", 4, "10.244.1.2", "10.244.1.1"),
        pod_view(POD_B, "default/web-b", 5, "10.244.1.3", "10.244.1.1",
                 state="LOWERLAYERDOWN"),
        pod_view(POD_C, "default/web-c", 4, "10.244.2.2", "10.244.2.1"),
        pod_view(HANDMADE, "default/byhand", 5, "10.244.2.99", "10.244.2.1", in_state=False),
    ]


STATE_PODS = {POD_A: W1, POD_B: W1, POD_C: W2}


def make_snapshot(vs: list[NetnsView] | None = None) -> Snapshot:
    vs = vs if vs is not None else views()
    m = match_veth_pairs({v.name: v.links for v in vs}, {v.name: v.nsid_map() for v in vs},
                         STATE_PODS)
    return Snapshot(C, vs, m.pairs, m.dangling, m.ambiguous, dict(STATE_PODS))


# --- matching ------------------------------------------------------------------------------------

def test_pairs_from_the_synthetic_cluster_are_exact() -> None:
    snap = make_snapshot()
    assert snap.dangling == [] and snap.ambiguous == []
    assert snap.peer(POD_A, "eth0") == (W1, "veth1111aaaa")
    assert snap.peer(POD_B, "eth0") == (W1, "veth2222bbbb")
    assert snap.peer(POD_C, "eth0") == (W2, "veth3333cccc")
    assert snap.peer(HANDMADE, "eth0") == (W2, "veth4444dddd")
    assert snap.peer(W2, "eth0") == (UNDERLAY, "s1-eth2")
    assert snap.peer(EXTERNAL, "eth0") == (UNDERLAY, "s1-eth3")
    assert len(snap.pairs) == 7
    assert snap.pod_node(HANDMADE) == W2


def _pods_on_two_nodes() -> dict[str, list[Link]]:
    # the classic collision: both pods' eth0 are ifindex 2 -> peer 4, both nodes' veth are 4 -> 2
    return {
        "n1": [veth(4, "vethA", 2, 1, master="cni0")],
        "n2": [veth(4, "vethB", 2, 1, master="cni0")],
        "p1": [veth(2, "eth0", 4, 0)],
        "p2": [veth(2, "eth0", 4, 0)],
    }


def test_ambiguous_without_hints() -> None:
    m = match_veth_pairs(_pods_on_two_nodes())
    assert m.pairs == []
    assert m.ambiguous == [("n1", "vethA"), ("n2", "vethB"), ("p1", "eth0"), ("p2", "eth0")]
    assert m.dangling == []


def test_ambiguity_broken_by_the_stored_state() -> None:
    m = match_veth_pairs(_pods_on_two_nodes(), prefer={"p1": "n2"})
    # p1 is on n2 by the state; that leaves n1 as the only candidate for p2
    assert m.pairs == [(("n1", "vethA"), ("p2", "eth0")), (("n2", "vethB"), ("p1", "eth0"))]
    assert m.ambiguous == [] and m.dangling == []


def test_ambiguity_broken_by_netns_ids() -> None:
    nsids = {"n1": {1: "p2"}, "p1": {0: "n2"}}
    m = match_veth_pairs(_pods_on_two_nodes(), nsids=nsids, prefer={"p1": "n1", "p2": "n2"})
    # the kernel's netns ids win over a stale state
    assert m.pairs == [(("n1", "vethA"), ("p2", "eth0")), (("n2", "vethB"), ("p1", "eth0"))]


def test_dangling_and_non_mutual_ends() -> None:
    links = {
        "n1": [veth(4, "vethA", 2, 1), veth(5, "vethGone", 9, 1)],
        "p1": [veth(2, "eth0", 4, 0)],
        # points at n1's vethA (4) but vethA points back at 2, not 3: not a pair
        "p2": [veth(3, "eth0", 4, 0)],
    }
    m = match_veth_pairs(links)
    assert m.pairs == [(("n1", "vethA"), ("p1", "eth0"))]
    assert m.dangling == [("n1", "vethGone"), ("p2", "eth0")]
    assert m.ambiguous == []


def test_pair_inside_one_netns_and_never_with_itself() -> None:
    links = {"n1": [veth(7, "a", 8, None), veth(8, "b", 7, None), veth(9, "self", 9, None)],
             "n2": [veth(8, "x", 7, 0)]}  # a cross-netns end cannot take a local pair's place
    m = match_veth_pairs(links)
    assert m.pairs == [(("n1", "a"), ("n1", "b"))]
    assert m.dangling == [("n1", "self"), ("n2", "x")]


def test_non_veth_links_are_not_matched() -> None:
    links = {"n1": [bridge(4, "cni0"), Link(5, "flannel.1", "vxlan", "UNKNOWN")],
             "p1": [veth(2, "eth0", 4, 0)]}
    m = match_veth_pairs(links)
    assert m.pairs == [] and m.dangling == [("p1", "eth0")]


def test_classify_by_netns_name() -> None:
    nodes = ["c-control-plane", "c-worker"]
    assert observe.classify(C, "lk-c-worker", nodes) == ("node", "c-worker")
    assert observe.classify(C, "lk-c-external", nodes) == ("external", "external")
    assert observe.classify(C, "lk-c-underlay", nodes) == ("underlay", "underlay")
    assert observe.classify(C, "lk-c.kube-system.coredns-x", nodes) == (
        "pod", "kube-system/coredns-x")
    assert observe.classify(C, "lk-c.default.web.v2", nodes) == ("pod", "default/web.v2")
    assert observe.classify(C, "lk-c-mystery", nodes) == ("other", "lk-c-mystery")


# --- parsing `ip -j` -----------------------------------------------------------------------------

def test_parse_ip_json() -> None:
    addr = [
        {"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP", "LOWER_UP"], "mtu": 65536,
         "operstate": "UNKNOWN", "link_type": "loopback", "address": "00:00:00:00:00:00",
         "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
        {"ifindex": 4, "link_index": 2, "ifname": "veth1", "flags": ["BROADCAST"], "mtu": 1500,
         "master": "cni0", "operstate": "DOWN", "link_type": "ether", "address": "aa:aa",
         "link_netnsid": 1, "linkinfo": {"info_kind": "veth", "info_slave_kind": "bridge"},
         "addr_info": [{"family": "inet6", "local": "fe80::1", "prefixlen": 64}]},
        {"ifindex": 3, "ifname": "cni0", "flags": ["UP"], "mtu": 1500, "operstate": "UP",
         "linkinfo": {"info_kind": "bridge"},
         "addr_info": [{"family": "inet", "local": "10.244.1.1", "prefixlen": 24}]},
    ]
    links = observe.parse_ip_addr(addr)
    assert links[0].kind == "loopback" and links[0].addresses == ("127.0.0.1/8",)
    v = links[1]
    assert (v.kind, v.peer_ifindex, v.link_netnsid, v.master, v.addresses) == (
        "veth", 2, 1, "cni0", ())
    assert v.down and not v.admin_up and v.display() == "veth1@if2"
    assert links[2].peer_ifindex is None and links[2].ip == "10.244.1.1"
    routes = observe.parse_ip_route([
        {"type": "unicast", "dst": "default", "gateway": "10.244.1.1", "dev": "eth0",
         "protocol": "boot", "scope": "global", "flags": []},
        {"dst": "10.244.1.0/24", "dev": "cni0", "protocol": "kernel", "scope": "link",
         "prefsrc": "10.244.1.1", "flags": []},
        {"type": "blackhole", "dst": "10.244.9.0/24", "protocol": "bird", "flags": []},
    ])
    assert [r.text() for r in routes] == [
        "default via 10.244.1.1 dev eth0",
        "10.244.1.0/24 dev cni0 proto kernel scope link src 10.244.1.1",
        "blackhole 10.244.9.0/24 proto bird",
    ]
    assert observe.parse_ip_nsids([{"nsid": 1, "name": "b"}, {"nsid": 0, "name": "a"},
                                   {"nsid": 2}]) == ((0, "a"), (1, "b"))


# --- the diagram ---------------------------------------------------------------------------------

def test_diagram_has_nodes_pods_bridges_and_the_underlay() -> None:
    src = viz.cluster_diagram(make_snapshot()).source
    assert 'subgraph "cluster_c-worker" {' in src
    assert 'subgraph "cluster_c-worker2" {' in src
    assert "subgraph cluster_underlay {" in src
    assert "<B>node c-worker</B>  172.18.0.3" in src
    assert "<B>node c-worker2</B>  172.18.0.4" in src
    # every pod, with its netns and its eth0 address
    for owner, netns, ip in (("default/web-a", POD_A, "10.244.1.2/24"),
                             ("default/web-b", POD_B, "10.244.1.3/24"),
                             ("default/web-c", POD_C, "10.244.2.2/24"),
                             ("default/byhand", HANDMADE, "10.244.2.99/24")):
        assert f'"{netns}" [label=<' in src
        assert f"<B>{owner}</B>" in src and f"netns {netns}" in src and ip in src
    # the bridge and its IP, the switch and its ports
    assert '"lk-c-worker/cni0" [label=<<B>cni0</B><BR/>10.244.1.1/24' in src
    assert '"lk-c-underlay/s1" [label=<' in src and 'PORT="p_s1_2d_eth2"' in src


def test_diagram_edges() -> None:
    src = viz.cluster_diagram(make_snapshot()).source
    # veth pair: thick, labelled with both ends' ifindexes, pod end first
    assert ('"lk-c-worker/veth1111aaaa" -> "lk-c.default.web-a":p_eth0:n '
            '[label="eth0@if4 ↔ veth1111aaaa@if2"') in src
    assert '"lk-c-worker2/veth4444dddd" -> "lk-c.default.byhand":p_eth0:n' in src
    line = next(ln for ln in src.splitlines() if "-> \"lk-c.default.web-c\"" in ln)
    assert "penwidth=2.5" in line
    # bridge membership: dashed
    line = next(ln for ln in src.splitlines()
                if '"lk-c-worker2/cni0" -> "lk-c-worker2/veth3333cccc"' in ln)
    assert "style=dashed" in line
    # node eth0 <-> a port of s1, and the external host outside the node boxes
    assert '"lk-c-underlay/s1":p_s1_2d_eth1:s -> "lk-c-worker/eth0"' in src
    assert '"lk-c-underlay/s1":p_s1_2d_eth3:s -> "lk-c-external":p_eth0:n' in src
    assert '"lk-c-external" [label=' in src
    for n in ("c-worker", "c-worker2"):
        body = src[src.index(f'subgraph "cluster_{n}" {{'):].split("\n\t}", 1)[0]
        assert "lk-c-external" not in body


def test_down_links_are_red_on_grey() -> None:
    src = viz.cluster_diagram(make_snapshot()).source
    line = next(ln for ln in src.splitlines() if ln.strip().startswith(
        '"lk-c-worker/veth2222bbbb" [label='))
    assert "DOWN (admin)" in line and 'color="#cf222e"' in line and "#e5e5e5" in line
    pair = next(ln for ln in src.splitlines() if '-> "lk-c.default.web-b"' in ln)
    assert 'color="#cf222e"' in pair
    up = next(ln for ln in src.splitlines() if '-> "lk-c.default.web-a"' in ln)
    assert "#cf222e" not in up


def test_routes_and_host_gw_marking() -> None:
    src = viz.cluster_diagram(make_snapshot()).source
    assert "routes (ip route)" in src
    assert "host-gw → pods of c-worker2" in src and "host-gw → pods of c-worker" in src
    assert "this node&#x27;s pods" in src
    assert "default via 10.244.1.1" in src  # each pod's default route
    bare = viz.cluster_diagram(make_snapshot(), show_routes=False).source
    assert "routes (ip route)" not in bare and "host-gw" not in bare
    assert "10.244.1.2/24" in bare


def test_wrong_host_gw_route_is_flagged() -> None:
    vs = views()
    w1 = vs[2]
    bad = tuple(Route(r.dst, "172.18.0.3", "eth0") if r.dst == "10.244.2.0/24" else r
                for r in w1.routes)  # points at itself: not where 10.244.2.0/24 lives
    vs[2] = NetnsView(w1.name, w1.role, w1.owner, w1.links, bad, w1.nsids)
    src = viz.cluster_diagram(make_snapshot(vs)).source
    assert "⚠ 10.244.2.0/24 is c-worker2&#x27;s, not c-worker&#x27;s" in src


def test_hand_made_and_unwired_pods_still_appear() -> None:
    vs = views()
    # a pod of the state whose veth was deleted (the kernel deletes both ends) and a hand-made
    # netns with nothing in it
    vs[6] = NetnsView(POD_C, "pod", "default/web-c", (lo(),), (), ())
    vs.append(NetnsView("lk-c.default.empty", "pod", "default/empty", (lo(),), (), (),
                        in_state=False))
    snap = make_snapshot(vs)
    assert snap.dangling == [(W2, "veth3333cccc")]
    src = viz.cluster_diagram(snap).source
    assert "made by hand: not in the cluster state" in src
    assert "not wired to any node (no veth pair)" in src
    assert "peer if2 · not in the cluster" in src
    assert "subgraph cluster_detached {" in src
    detached = src[src.index("subgraph cluster_detached {"):]
    assert '"lk-c.default.empty"' in detached.split("}", 1)[0]
    # web-c is in the state on worker2: drawn there, unwired
    w2 = src[src.index('subgraph "cluster_c-worker2" {'):]
    assert '"lk-c.default.web-c" [label=' in w2.split("\n\t}", 1)[0]


def test_names_are_escaped() -> None:
    vs = views()
    vs.append(NetnsView("lk-c-odd", "other", "lk-c-odd", (
        lo(), Link(7, 'x<y&"z', None, "UP", addresses=("192.0.2.1/24",))), (), ()))
    g = viz.cluster_diagram(make_snapshot(vs))
    assert "x&lt;y&amp;&quot;z" in g.source
    if shutil.which("dot"):
        assert b"<svg" in g.pipe(format="svg")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_renders_to_svg() -> None:
    svg = viz.cluster_diagram(make_snapshot()).pipe(format="svg").decode()
    assert "<svg" in svg and "10.244.2.99/24" in svg and "node c&#45;worker2" in svg


def test_snapshot_table() -> None:
    text = viz.snapshot_table(make_snapshot())
    assert text.startswith("cluster c: 8 namespaces, 7 veth pairs")
    assert "== lk-c.default.byhand  (pod default/byhand, made by hand, on c-worker2)" in text
    line = next(ln for ln in text.splitlines() if "veth1111aaaa" in ln)
    assert "master cni0" in line and f"peer {POD_A}:eth0" in line
    assert "10.244.1.2/24" in text and "172.18.0.100/16" in text
    assert "     10.244.2.0/24 via 172.18.0.4 dev eth0" in text
    assert "DOWN (admin down)" in text
    assert str(make_snapshot()) == text


def test_unreadable_netns_is_shown_not_fatal() -> None:
    vs = views()
    vs[6] = NetnsView(POD_C, "pod", "default/web-c", error="nsenter: permission denied")
    snap = make_snapshot(vs)
    assert "could not read: nsenter: permission denied" in viz.cluster_diagram(snap).source
    assert "   could not read: nsenter: permission denied" in viz.snapshot_table(snap)


def test_routes_to_a_node_without_pods_are_named_from_its_pod_cidr() -> None:
    import dataclasses
    vs = []
    for v in views():
        routes = tuple(dataclasses.replace(r, proto="bird") if r.gateway else r
                       for r in v.routes)
        if v.name == "lk-c-worker2":  # as if no pod ran there yet: no cni0
            v = dataclasses.replace(v, links=tuple(ln for ln in v.links if ln.name != "cni0"))
        vs.append(dataclasses.replace(v, routes=routes))
    snap = make_snapshot(vs)
    assert "BGP (BIRD) → pods of c-worker2" not in viz.cluster_diagram(snap).source
    snap = dataclasses.replace(snap, node_cidrs={"lk-c-worker": "10.244.1.0/24",
                                                 "lk-c-worker2": "10.244.2.0/24"})
    src = viz.cluster_diagram(snap).source
    assert "BGP (BIRD) → pods of c-worker2" in src and "BGP (BIRD) → pods of c-worker" in src
