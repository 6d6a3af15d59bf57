"""`Cluster.diagram()` draws the LIVE kernel state: veth pairs, bridges, a veth deleted by hand."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from lab_kit import naming, observe, viz

pytestmark = pytest.mark.root


def pod(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": node,
                     "containers": [{"name": "web", "image": "registry.k8s.io/agnhost:2.52",
                                     "ports": [{"containerPort": 8080}]}]}}


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


def test_diagram(lab_cluster_factory: Any) -> None:
    c = lab_cluster_factory()
    w1, w2 = f"{c.name}-worker", f"{c.name}-worker2"
    placed = {"web-a": w1, "web-b": w1, "web-c": w2}
    c.apply([pod(name, node) for name, node in placed.items()])
    ips = {p.name: p.ip for p in c.pods()}

    # a pod a learner wires by hand (not in the state): its ifindexes collide with web-c's
    byhand = naming.pod_netns(c.name, "default", "byhand")
    ip("netns", "add", byhand)
    ip("-n", naming.node_netns(w2), "link", "add", "vethbyhand", "type", "veth", "peer", "name",
       "eth0", "netns", byhand)
    ip("-n", naming.node_netns(w2), "link", "set", "vethbyhand", "master", "cni0", "up")
    ip("-n", byhand, "addr", "add", "10.244.2.200/24", "dev", "eth0")
    ip("-n", byhand, "link", "set", "eth0", "up")

    snap = observe.snapshot(c)
    assert snap.ambiguous == [] and snap.dangling == []
    assert {v.role for v in snap.views} == {"node", "pod", "external", "underlay"}
    for name, node in [*placed.items(), ("byhand", w2)]:
        netns = naming.pod_netns(c.name, "default", name)
        view = snap.view(netns)
        assert view is not None and view.role == "pod" and view.owner == f"default/{name}"
        assert view.in_state == (name != "byhand")
        peer = snap.peer(netns, "eth0")
        assert peer is not None and peer[0] == naming.node_netns(node), (name, peer)
        veth = snap.link(peer)
        assert veth is not None and veth.kind == "veth" and veth.master == "cni0"
        assert snap.pod_node(netns) == naming.node_netns(node)
    for node in (f"{c.name}-control-plane", w1, w2):
        assert snap.peer(naming.node_netns(node), "eth0")[0] == naming.underlay_netns(c.name)

    src = viz.cluster_diagram(snap).source
    for name, addr in ips.items():
        assert addr in src, name
    assert "10.244.2.200/24" in src and "made by hand" in src
    assert "VXLAN → pods of" in src  # the default backend
    pair_edges = [ln for ln in c.diagram(show_routes=False).source.splitlines()
                  if "->" in ln and "penwidth=2.5" in ln]
    assert len(pair_edges) == len(snap.pairs)
    assert "veth pairs" in viz.snapshot_table(snap)

    # delete web-a's veth by hand: the kernel removes both ends; the state still has the pod
    veth_a = snap.peer(naming.pod_netns(c.name, "default", "web-a"), "eth0")
    assert veth_a is not None
    ip("-n", veth_a[0], "link", "del", veth_a[1])
    after = observe.snapshot(c)
    pod_a = naming.pod_netns(c.name, "default", "web-a")
    assert "web-a" in {p.name for p in c.pods()}  # the config still says it is there
    view = after.view(pod_a)
    assert view is not None and view.link("eth0") is None
    assert after.peer(pod_a, "eth0") is None and after.pod_node(pod_a) is None
    assert after.view(veth_a[0]).link(veth_a[1]) is None
    assert after.peer(naming.pod_netns(c.name, "default", "web-b"), "eth0") is not None
    assert len(after.pairs) == len(snap.pairs) - 1

    dg = viz.cluster_diagram(after)
    assert "not wired to any node" in dg.source and ips["web-a"] not in dg.source
    svg = dg.pipe(format="svg")
    assert b"<svg" in svg and b"default/web&#45;a" in svg  # SVG escapes "-"
