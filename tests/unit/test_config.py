"""Cluster config in kind's format: defaults, node naming, subnets, and every error path."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from lab_kit import config
from lab_kit.config import (
    ClusterConfig,
    default_config,
    load_config,
    parse_config,
    parse_config_text,
)
from lab_kit.errors import ConfigError, LabError

HEAD = "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n"


def parse(body: str, **kw) -> ClusterConfig:
    return parse_config_text(HEAD + body, source="cfg.yaml", **kw)


def error_of(text: str, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        parse_config_text(text, source="cfg.yaml", **kw)
    return ei.value


# --- defaults and naming -------------------------------------------------------------------

def test_default_config_is_one_control_plane_and_two_workers() -> None:
    c = default_config("lab")
    assert c.name == "lab"
    assert [(n.name, n.role) for n in c.nodes] == [
        ("lab-control-plane", "control-plane"), ("lab-worker", "worker"),
        ("lab-worker2", "worker")]
    assert c.pod_subnet == "10.244.0.0/16"
    assert c.service_subnet == "10.96.0.0/16"
    assert c.cni == "vxlan"  # Flannel's default backend
    assert c.pod_mtu == 1450
    assert c.cni_plugin == "bridge"
    assert c.kube_proxy_mode == "iptables"


def test_minimal_document_gets_kinds_default_nodes() -> None:
    c = parse_config_text(HEAD, source="cfg.yaml")
    assert c.name == "lab"
    assert [n.name for n in c.nodes] == ["lab-control-plane", "lab-worker", "lab-worker2"]
    assert c.source == "cfg.yaml"


def test_each_node_gets_its_own_slash24_and_underlay_ip() -> None:
    c = default_config("lab")
    assert [n.pod_cidr for n in c.nodes] == ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
    assert [n.ip for n in c.nodes] == ["172.18.0.2", "172.18.0.3", "172.18.0.4"]
    underlay = ipaddress.ip_network(config.UNDERLAY_SUBNET)
    pods = ipaddress.ip_network(c.pod_subnet)
    for n in c.nodes:
        assert ipaddress.ip_address(n.ip) in underlay
        assert ipaddress.ip_network(n.pod_cidr).subnet_of(pods)
    assert c.external_ip == "172.18.0.100"
    assert c.external_ip not in {n.ip for n in c.nodes}


def test_node_names_follow_kind_with_several_of_each_role() -> None:
    c = parse("name: dev\nnodes:\n- role: control-plane\n- role: control-plane\n"
              "- role: worker\n- role: worker\n- role: worker\n")
    assert [n.name for n in c.nodes] == ["dev-control-plane", "dev-control-plane2",
                                         "dev-worker", "dev-worker2", "dev-worker3"]


def test_name_argument_overrides_the_file() -> None:
    c = parse("name: fromfile\n", name="override")
    assert c.name == "override"
    assert c.nodes[0].name == "override-control-plane"


def test_custom_pod_subnet_is_split_per_node() -> None:
    c = parse("networking:\n  podSubnet: 10.100.0.0/22\n  serviceSubnet: 10.200.0.0/16\n")
    assert [n.pod_cidr for n in c.nodes] == ["10.100.0.0/24", "10.100.1.0/24", "10.100.2.0/24"]
    assert c.service_subnet == "10.200.0.0/16"


def test_role_defaults_to_control_plane_like_kind() -> None:
    c = parse("nodes:\n- {}\n- role: worker\n")
    assert [n.role for n in c.nodes] == ["control-plane", "worker"]


def test_kind_fields_the_lab_ignores_are_accepted() -> None:
    c = parse("featureGates: {Foo: true}\nnodes:\n- role: control-plane\n"
              "  image: kindest/node:v1.33.0\n  extraPortMappings: []\n- role: worker\n"
              "  labels: {tier: web}\nnetworking:\n  disableDefaultCNI: true\n"
              "  ipFamily: ipv4\n")
    assert c.nodes[1].labels == {"tier": "web"}


def test_to_dict_round_trips() -> None:
    c = parse("name: rt\nnodes:\n- role: control-plane\n- role: worker\n  labels: {a: b}\n"
              "networking: {podSubnet: 10.50.0.0/16}\n")
    again = config.parse_config(c.to_dict(), source="cfg.yaml")
    assert again == c


def test_node_lookup() -> None:
    c = default_config("lab")
    assert c.node("lab-worker2").pod_cidr == "10.244.2.0/24"
    with pytest.raises(KeyError):
        c.node("lab-worker9")


def test_load_config_reads_a_file_and_names_it(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(HEAD + "name: fromdisk\n")
    c = load_config(p)
    assert c.name == "fromdisk"
    assert c.source == str(p)


def test_load_config_missing_file_names_it(tmp_path: Path) -> None:
    p = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.file == str(p)
    assert str(p) in str(ei.value)


def test_config_error_is_a_lab_error() -> None:
    assert issubclass(ConfigError, LabError)


# --- error paths: each names the file and the field ------------------------------------------

BAD = [
    # (id, yaml text (after HEAD unless it starts with "!"), field, fragment of the message)
    ("wrong-kind", "!kind: Clusterr\napiVersion: kind.x-k8s.io/v1alpha4\n", "kind", "Clusterr"),
    ("wrong-apiVersion", "!kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha3\n", "apiVersion",
     "v1alpha3"),
    ("unknown-top-field", "nodez: []\n", "nodez", "unknown field 'nodez'"),
    ("unknown-node-field", "nodes:\n- role: worker\n  rol: x\n", "nodes[0].rol",
     "unknown field 'rol'"),
    ("unknown-networking-field", "networking: {podCIDR: 10.1.0.0/16}\n", "networking.podCIDR",
     "unknown field"),
    ("bad-role", "nodes:\n- role: control-plane\n- role: master\n", "nodes[1].role", "master"),
    ("no-control-plane", "nodes:\n- role: worker\n- role: worker\n", "nodes",
     "control-plane"),
    ("empty-nodes", "nodes: []\n", "nodes", "non-empty"),
    ("node-not-mapping", "nodes:\n- worker\n", "nodes[0]", "mapping"),
    ("bad-labels", "nodes:\n- role: control-plane\n  labels: {a: 1}\n", "nodes[0].labels",
     "strings"),
    ("bad-cidr", "networking: {podSubnet: 10.244.0.0/33}\n", "networking.podSubnet",
     "not a valid CIDR"),
    ("host-bits", "networking: {podSubnet: 10.244.0.1/16}\n", "networking.podSubnet",
     "not a valid CIDR"),
    ("not-a-cidr", "networking: {serviceSubnet: banana}\n", "networking.serviceSubnet",
     "banana"),
    ("ipv6", "networking: {podSubnet: 'fd00::/64'}\n", "networking.podSubnet", "IPv4"),
    ("pod-overlaps-service", "networking: {podSubnet: 10.0.0.0/8}\n",
     "networking.serviceSubnet", "overlaps"),
    ("service-overlaps-pods", "networking: {serviceSubnet: 10.244.128.0/17}\n",
     "networking.serviceSubnet", "overlaps"),
    ("pods-overlap-underlay", "networking: {podSubnet: 172.18.0.0/16}\n",
     "networking.podSubnet", "underlay"),
    ("pods-smaller-than-24", "networking: {podSubnet: 10.244.0.0/25}\n",
     "networking.podSubnet", "/24"),
    ("pods-too-small-for-nodes", "networking: {podSubnet: 10.244.0.0/23}\n",
     "networking.podSubnet", "holds 2 node /24s but the cluster has 3 nodes"),
    ("unknown-cni", "networking: {cni: flannel}\n", "networking.cni", "flannel"),
    ("bad-cni-plugin", "networking: {cniPlugin: ''}\n", "networking.cniPlugin", "CNI plugin"),
    ("bad-node-cni-plugin", "nodes: [{role: control-plane, cniPlugin: 7}]\n",
     "nodes[0].cniPlugin", "CNI plugin"),
    ("node-cidr-outside", "nodes: [{role: control-plane, podCIDR: 10.9.0.0/24}]\n",
     "nodes[0].podCIDR", "does not fit"),
    ("node-cidr-bad", "nodes: [{role: control-plane, podCIDR: 10.244.1.0/33}]\n",
     "nodes[0].podCIDR", "not a valid CIDR"),
    ("node-cidr-too-small", "nodes: [{role: control-plane, podCIDR: 10.244.1.0/30}]\n",
     "nodes[0].podCIDR", "/28"),
    ("node-cidrs-overlap", "nodes: [{role: control-plane, podCIDR: 10.244.0.0/23},"
     " {role: worker, podCIDR: 10.244.1.0/24}]\n", "nodes[1].podCIDR", "overlaps"),
    ("stored-keys-refused", "nodes: [{role: control-plane, ip: 172.18.0.9}]\n",
     "nodes[0].ip", "unknown field"),
    ("mtu-too-small", "networking: {mtu: 100}\n", "networking.mtu", "576"),
    ("mtu-not-int", "networking: {mtu: big}\n", "networking.mtu", "whole number"),
    ("bgp-peering", "networking: {bgpPeering: ibgp}\n", "networking.bgpPeering", "ibgp"),
    ("unknown-proxy-mode", "networking: {kubeProxyMode: ipvs}\n",
     "networking.kubeProxyMode", "ipvs"),
    ("upper-case-name", "name: Lab\n", "name", "'Lab'"),
    ("name-with-dash", "name: my-lab\n", "name", "lowercase"),
    ("name-starts-with-digit", "name: 1lab\n", "name", "starting with a letter"),
    ("name-too-long", "name: abcdefghijklmnopq\n", "name", "1-16"),
    ("networking-not-mapping", "networking: [a]\n", "networking", "mapping"),
]


@pytest.mark.parametrize(("text", "fld", "fragment"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_config_names_file_and_field(text: str, fld: str, fragment: str) -> None:
    full = text[1:] if text.startswith("!") else HEAD + text
    e = error_of(full)
    assert e.file == "cfg.yaml"
    assert e.field == fld
    assert e.obj == "Cluster"
    assert fragment in e.reason
    # the rendered message carries all of it, for a learner reading a traceback
    assert str(e).startswith("cfg.yaml, `Cluster`, field `" + fld + "`: ")


def test_too_many_nodes() -> None:
    nodes = "nodes:\n- role: control-plane\n" + "- role: worker\n" * config.MAX_NODES
    e = error_of(HEAD + nodes)
    assert e.field == "nodes"
    assert str(config.MAX_NODES) in e.reason


def test_max_nodes_fit_the_underlay() -> None:
    nodes = "nodes:\n- role: control-plane\n" + "- role: worker\n" * (config.MAX_NODES - 1)
    c = parse(nodes)
    ips = [n.ip for n in c.nodes]
    assert len(set(ips)) == config.MAX_NODES
    assert config.EXTERNAL_IP not in ips


def test_invalid_yaml_gives_line_number() -> None:
    e = error_of(HEAD + "nodes:\n- role: worker\n  labels: {a: b\n")
    assert e.file == "cfg.yaml"
    assert "invalid YAML" in e.reason
    assert "line 6" in e.reason  # the flow mapping is still open at the end of line 5
    assert "cfg.yaml" in str(e)


def test_invalid_yaml_bad_indent_line() -> None:
    e = error_of(HEAD + "nodes:\n  - role: worker\n   - role: worker\n")
    assert "line 5" in e.reason


def test_two_documents_rejected() -> None:
    e = error_of(HEAD + "---\n" + HEAD)
    assert e.file == "cfg.yaml"
    assert "found 2" in e.reason


def test_empty_file_rejected() -> None:
    e = error_of("")
    assert "found 0" in e.reason


def test_document_not_a_mapping() -> None:
    e = error_of("- a\n- b\n")
    assert "mapping" in e.reason


def test_name_argument_is_validated_too() -> None:
    e = error_of(HEAD, name="Bad_Name")
    assert e.field == "name"


# --- backends, MTU, per-node keys ----------------------------------------------------------

@pytest.mark.parametrize(("cni", "mtu"), [("vxlan", 1450), ("host-gw", 1500), ("bgp", 1500)])
def test_backend_sets_pod_mtu(cni: str, mtu: int) -> None:
    c = parse_config_text(HEAD + f"networking: {{cni: {cni}}}\n")
    assert c.cni == cni and c.pod_mtu == mtu and c.backend_mtu == mtu


def test_mtu_override_and_peering() -> None:
    c = parse_config_text(HEAD + "networking: {mtu: 1500, bgpPeering: route-reflector}\n")
    assert c.cni == "vxlan" and c.pod_mtu == 1500 and c.backend_mtu == 1450
    assert c.bgp_peering == "route-reflector"


def test_node_pod_cidr_and_plugin() -> None:
    c = parse_config_text(HEAD + "nodes:\n- role: control-plane\n  podCIDR: 10.244.0.0/24\n"
                          "- role: worker\n  podCIDR: 10.244.7.0/25\n  cniPlugin: /opt/my\n"
                          "- role: worker\n")
    assert [n.pod_cidr for n in c.nodes] == ["10.244.0.0/24", "10.244.7.0/25", "10.244.1.0/24"]
    assert c.nodes[1].pod_capacity == 125
    assert c.plugin_for(c.nodes[1]) == "/opt/my" and c.plugin_for(c.nodes[2]) == "bridge"


def test_stored_round_trip_keeps_node_identity() -> None:
    c = parse_config_text(HEAD + "networking: {mtu: 1400, cni: bgp}\n")
    d = c.to_dict(stored=True)
    # a node removed from the middle: the others keep their names, IPs and CIDRs
    del d["nodes"][1]
    back = parse_config(d, stored=True)
    assert [(n.name, n.ip, n.pod_cidr) for n in back.nodes] == [
        (c.nodes[0].name, c.nodes[0].ip, c.nodes[0].pod_cidr),
        (c.nodes[2].name, c.nodes[2].ip, c.nodes[2].pod_cidr)]
    assert back.mtu == 1400 and back.cni == "bgp"
    assert parse_config(c.to_dict(), source=c.source) == c  # the user-facing form too


def test_cluster_dns_is_an_opt_in_add_on() -> None:
    assert config.default_config().cluster_dns is False
    c = parse_config_text(HEAD + "networking:\n  clusterDNS: true\n", source="cfg.yaml")
    assert c.cluster_dns and c.to_dict()["networking"]["clusterDNS"] is True
    assert config.parse_config(c.to_dict(), source="cfg.yaml").cluster_dns
    e = error_of(HEAD + "networking:\n  clusterDNS: yes-please\n")
    assert e.field == "networking.clusterDNS"
