"""The backends' pure renderers: what each node should have, from the config alone."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest

from lab_kit import backends, config
from lab_kit.backends import FdbEntry, Neighbour, Route

HEAD = "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nname: c\n"


def conf(net: str = "", nodes: str = "") -> config.ClusterConfig:
    return config.parse_config_text(HEAD + (f"networking: {{{net}}}\n" if net else "") + nodes)


def test_hostgw_route_per_remote_node() -> None:
    c = conf("cni: host-gw")
    cp, w1, w2 = c.nodes
    assert backends.hostgw_routes(c, w1) == [
        Route("10.244.0.0/24", cp.ip, "eth0"), Route("10.244.2.0/24", w2.ip, "eth0")]
    assert Route("10.244.2.0/24", "172.18.0.4", "eth0").command() == \
        "route replace 10.244.2.0/24 via 172.18.0.4 dev eth0"


def test_vtep_mac_is_stable_unicast_and_locally_administered() -> None:
    c = conf()
    macs = [backends.vtep_mac(n) for n in c.nodes]
    assert len(set(macs)) == 3
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01  # locally administered, unicast
    assert macs == [backends.vtep_mac(n) for n in conf().nodes]


def test_vxlan_device_is_flannels() -> None:
    c = conf()
    w1 = c.nodes[1]
    lines = backends.vxlan_device_commands(w1)
    assert lines[0] == ("link add flannel.1 type vxlan id 1 local 172.18.0.3 dev eth0 "
                        "dstport 8472 nolearning")
    assert f"address {backends.vtep_mac(w1)} mtu 1450" in lines[1]
    assert lines[2] == "addr add 10.244.1.0/32 dev flannel.1"  # the lease's network address


def test_vxlan_entries_per_remote_node() -> None:
    c = conf()
    cp, w1, w2 = c.nodes
    routes, neigh, fdb = backends.vxlan_peer_entries(c, w1)
    assert routes == [Route("10.244.0.0/24", "10.244.0.0", "flannel.1", onlink=True),
                      Route("10.244.2.0/24", "10.244.2.0", "flannel.1", onlink=True)]
    assert routes[0].command() == \
        "route replace 10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink"
    assert set(neigh) == {Neighbour("10.244.0.0", backends.vtep_mac(cp)),
                          Neighbour("10.244.2.0", backends.vtep_mac(w2))}
    assert set(fdb) == {FdbEntry(backends.vtep_mac(cp), cp.ip),
                        FdbEntry(backends.vtep_mac(w2), w2.ip)}


def test_node_mesh_peers_everyone() -> None:
    c = conf("cni: bgp", "nodes: [{role: control-plane}, {role: worker}, {role: worker},"
             " {role: worker}]\n")
    for n in c.nodes:
        assert [p.name for p, _ in backends.bgp_peers(c, n)] == \
            [o.name for o in c.nodes if o is not n]


def test_route_reflectors_are_the_control_plane() -> None:
    c = conf("cni: bgp, bgpPeering: route-reflector",
             "nodes: [{role: control-plane}, {role: worker}, {role: worker}]\n")
    cp, w1, w2 = c.nodes
    assert backends.bgp_peers(c, cp) == [(w1, True), (w2, True)]  # its clients
    assert backends.bgp_peers(c, w1) == [(cp, False)]  # workers only peer with the reflector


GOLDEN_WORKER = """\
router id 172.18.0.3;

# announce pod routes only, never the underlay or anything else
filter calico_export_to_bgp_peers {
  if net ~ [ 10.244.0.0/16+ ] then accept;
  reject;
}
"""


def test_bird_conf_mesh() -> None:
    c = conf("cni: bgp")
    text = backends.render_bird_conf(c, c.nodes[1])
    assert GOLDEN_WORKER in text
    assert "route 10.244.1.0/24 blackhole;" in text
    assert "local 172.18.0.3 as 64512;" in text
    assert "protocol bgp Mesh_172_18_0_2 from bgp_template {\n  neighbor 172.18.0.2 as 64512;" \
        in text
    assert "protocol bgp Mesh_172_18_0_4" in text
    assert "Mesh_172_18_0_3" not in text  # never a session to itself
    assert "rr client" not in text
    assert 'if proto = "pod_cidr" then reject;' in text  # own CIDR stays on cni0


def test_bird_conf_route_reflector() -> None:
    c = conf("cni: bgp, bgpPeering: route-reflector")
    rr = backends.render_bird_conf(c, c.nodes[0])
    assert rr.count("rr client;") == 2 and "rr cluster id 172.18.0.2;" in rr
    assert "protocol bgp Node_172_18_0_3" in rr
    client = backends.render_bird_conf(c, c.nodes[1])
    assert "protocol bgp Node_172_18_0_2" in client and "Node_172_18_0_4" not in client


@pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD is not installed")
@pytest.mark.parametrize("peering", config.BGP_PEERINGS)
def test_bird_accepts_the_rendered_conf(tmp_path, peering: str) -> None:
    c = conf(f"cni: bgp, bgpPeering: {peering}")
    for n in c.nodes:
        f = tmp_path / f"{n.name}.conf"
        f.write_text(backends.render_bird_conf(c, n, log_file=str(tmp_path / "log")))
        done = subprocess.run(["bird", "-p", "-c", str(f)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_bird_conf_follows_node_list() -> None:
    c = conf("cni: bgp")
    fewer = dataclasses.replace(c, nodes=c.nodes[:2])
    assert "Mesh_172_18_0_4" not in backends.render_bird_conf(fewer, fewer.nodes[1])


def test_bgp_without_bird_is_refused_before_anything_is_built(monkeypatch) -> None:
    from lab_kit import cluster
    from lab_kit.errors import ConfigError

    real = shutil.which
    monkeypatch.setattr(cluster.shutil, "which",
                        lambda name: None if name.startswith("bird") else real(name))
    monkeypatch.setattr(cluster.cni, "find_plugin", lambda name, paths: f"/x/{name}")
    with pytest.raises(ConfigError) as ei:
        cluster._preflight(conf("cni: bgp"))
    assert ei.value.field == "networking.cni" and "bird2" in str(ei.value)
    cluster._preflight(conf("cni: vxlan"))  # the other backends need no daemon
