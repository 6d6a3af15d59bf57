"""Lab 05 (BGP like Calico): the pure parts of its checks, and that its files agree (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lab_kit import config, model
from lab_kit.cluster import _next_node
from lab_kit.labs import bgp, whole_number

LABS = Path(__file__).resolve().parents[2] / "labs"

# as birdc prints it, trailing blanks included
SHOW_PROTOCOLS = "\n".join([
    "BIRD 2.0.12 ready.",
    "Name       Proto      Table      State  Since         Info",
    "device1    Device     ---        up     20:52:01.815  ",
    "kernel1    Kernel     master4    up     20:52:01.815  ",
    "pod_cidr   Static     master4    up     20:52:01.815  ",
    "Mesh_172_18_0_2 BGP        ---        up     20:52:02.657  Established   ",
    "Mesh_172_18_0_3 BGP        ---        start  20:52:02.746  Active        "
    "Received: Administrative shutdown",
    "Mesh_172_18_0_5 BGP        ---        down   20:52:02.746  ",
    "",
])


def test_parse_protocols() -> None:
    rows = bgp.parse_protocols(SHOW_PROTOCOLS)
    assert [r["name"] for r in rows] == ["device1", "kernel1", "pod_cidr", "Mesh_172_18_0_2",
                                         "Mesh_172_18_0_3", "Mesh_172_18_0_5"]
    assert rows[3] == {"name": "Mesh_172_18_0_2", "proto": "BGP", "table": "---", "state": "up",
                       "since": "20:52:02.657", "info": "Established"}
    assert rows[4]["info"] == "Active        Received: Administrative shutdown"
    assert rows[5]["info"] == ""
    assert bgp.parse_protocols("BIRD 2.0.12 ready.\n") == []


def test_sessions_states() -> None:
    rows = [r for r in bgp.parse_protocols(SHOW_PROTOCOLS) if r["proto"] == "BGP"]
    up, active, down = (bgp.Session("n", r["name"], r["state"], r["since"], r["info"])
                        for r in rows)
    assert up.established and not up.disabled and up.peer_ip == "172.18.0.2"
    assert not active.established and not active.disabled and active.bgp_state == "Active"
    assert down.disabled and not down.established and down.peer_ip == "172.18.0.5"


@pytest.mark.parametrize(("name", "ip"), [("Mesh_172_18_0_4", "172.18.0.4"),
                                          ("Node_10_0_0_1", "10.0.0.1"),
                                          ("kernel1", None), ("Mesh_x", None)])
def test_peer_ip_of(name: str, ip: str | None) -> None:
    assert bgp.peer_ip_of(name) == ip


def test_big_cluster_sessions() -> None:
    assert bgp.big_cluster_sessions(100) == 100 * 99 // 2
    assert bgp.big_cluster_sessions(100, 2) == 98 * 2 + 1
    assert bgp.big_cluster_sessions(4, 1) == 3  # the lab's route-reflector cluster
    assert bgp.big_cluster_sessions(3) == 3


@pytest.mark.parametrize(("raw", "value"), [(3, 3), ("3", 3), (" 4,950 ", 4950), (197.0, 197),
                                            ("1e2", 100), (2.5, None), ("three", None),
                                            (None, None)])
def test_answers_as_whole_numbers(raw, value) -> None:
    assert whole_number(raw) == value


def test_the_lab_knows_its_cluster_file() -> None:
    on_disk = config.load_config(LABS / "clusters" / "bgp.yaml")
    assert on_disk.name == bgp.LAB.cluster_name == "bgp" and on_disk.cni == "bgp"
    assert [(n.name, n.ip, n.pod_cidr) for n in on_disk.nodes] == [
        (n.name, n.ip, n.pod_cidr) for n in bgp.ORIGINAL.nodes]
    assert bgp.REMOVE in bgp.ORIGINAL_NODES


def test_manifests_pin_the_lab_nodes() -> None:
    new = _next_node(bgp.ORIGINAL, "worker", {})  # what c.add_node() makes first
    pinned = {}
    for name in ("bgp-web.yaml", "bgp-web-new.yaml"):
        for obj, _src in model.load_manifests(LABS / "manifests" / name):
            pinned[obj.name] = obj.node_name
    assert pinned == {"web-1": "bgp-worker", "web-2": "bgp-worker2", "web-3": new.name}
    assert new.name == "bgp-worker3"


def test_route_reflector_cluster_file() -> None:
    rr = config.load_config(LABS / "clusters" / "bgp-rr.yaml")
    assert rr.bgp_peering == "route-reflector" and rr.cni == "bgp"
    assert [n.role for n in rr.nodes] == ["control-plane", "worker", "worker", "worker"]
    assert not rr.name.startswith("bgp-") and rr.name != "bgp"  # never swept with the lab's
    assert yaml.safe_load((LABS / "clusters" / "bgp-rr.yaml").read_text())["name"] == rr.name
