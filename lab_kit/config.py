"""Cluster config in kind's format (`kind: Cluster`, `apiVersion: kind.x-k8s.io/v1alpha4`).

Parsing is pure: YAML text in, a frozen :class:`ClusterConfig` out, or a :class:`ConfigError`
naming the file and field.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab_kit import naming
from lab_kit.errors import ConfigError

KIND_API_VERSION = "kind.x-k8s.io/v1alpha4"
DEFAULT_NAME = "lab"
DEFAULT_POD_SUBNET = "10.244.0.0/16"
DEFAULT_SERVICE_SUBNET = "10.96.0.0/16"
UNDERLAY_SUBNET = "172.18.0.0/16"  # kind's docker network
EXTERNAL_IP = "172.18.0.100"
MAX_NODES = 90  # node underlay IPs are 172.18.0.2 … .91; the external host is .100
CNI_BACKENDS = ("host-gw", "vxlan", "bgp")
DEFAULT_CNI = "vxlan"  # Flannel's default backend
BGP_PEERINGS = ("node-mesh", "route-reflector")
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IP 20 + UDP 8 + VXLAN 8
UNDERLAY_MTU = 1500
VXLAN_MTU = UNDERLAY_MTU - VXLAN_OVERHEAD  # flannel.1's, as Flannel derives it from eth0
PROXY_MODES = ("iptables", "nftables")
ROLES = ("control-plane", "worker")

# kind fields lab_kit accepts and ignores (they configure container images, kubeadm, mounts…)
_IGNORED_TOP = {"featureGates", "runtimeConfig", "kubeadmConfigPatches",
                "kubeadmConfigPatchesJSON6902", "containerdConfigPatches",
                "containerdConfigPatchesJSON6902"}
_IGNORED_NODE = {"image", "extraMounts", "extraPortMappings", "kubeadmConfigPatches",
                 "kubeadmConfigPatchesJSON6902"}
# lab_kit's own node keys (kind has no such fields): a node's pod CIDR (kube-controller-manager
# normally allocates it) and the CNI plugin executable wiring this node's pods
_LAB_NODE = {"podCIDR", "cniPlugin"}
# written into the stored state only, never accepted from a user's file
_STORED_NODE = {"name", "ip"}
_IGNORED_NET = {"ipFamily", "apiServerAddress", "apiServerPort", "disableDefaultCNI",
                "dnsSearch"}


@dataclass(frozen=True)
class NodeConfig:
    name: str
    role: str
    ip: str  # underlay address (no prefix length)
    pod_cidr: str  # this node's slice of the pod subnet (a /24 unless the config says otherwise)
    labels: dict[str, str] = field(default_factory=dict)
    cni_plugin: str | None = None  # overrides the cluster's `cniPlugin` on this node

    @property
    def pod_capacity(self) -> int:
        """Pod IPs host-local can hand out: the range minus network, broadcast, the gateway."""
        return ipaddress.ip_network(self.pod_cidr).num_addresses - 3


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    nodes: tuple[NodeConfig, ...]
    pod_subnet: str = DEFAULT_POD_SUBNET
    service_subnet: str = DEFAULT_SERVICE_SUBNET
    cni: str = DEFAULT_CNI
    cni_plugin: str = "bridge"  # the main plugin's executable name (CNI `type`)
    kube_proxy_mode: str = "iptables"
    mtu: int | None = None  # pods' MTU; None: the backend's (1450 over VXLAN, else 1500)
    bgp_peering: str = "node-mesh"
    cluster_dns: bool = False  # deploy the CoreDNS add-on (kube-dns at the subnet's .10)
    source: str | None = None  # file it came from, for error messages

    @property
    def pod_mtu(self) -> int:
        return self.mtu if self.mtu is not None else self.backend_mtu

    @property
    def backend_mtu(self) -> int:
        """What the backend would choose: the underlay MTU minus its encapsulation overhead."""
        return VXLAN_MTU if self.cni == "vxlan" else UNDERLAY_MTU

    def plugin_for(self, node: NodeConfig) -> str:
        return node.cni_plugin or self.cni_plugin

    @property
    def external_ip(self) -> str:
        return EXTERNAL_IP

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def to_dict(self, stored: bool = False) -> dict[str, Any]:
        """Back to kind's format (plus the lab's own keys).

        `stored=True` also writes each node's name and underlay IP, so a cluster whose nodes
        were added or removed keeps every node's identity (`parse_config(..., stored=True)`).
        """
        nodes = []
        for n in self.nodes:
            d: dict[str, Any] = {"role": n.role}
            if stored:
                d.update(name=n.name, ip=n.ip)
            if n.labels:
                d["labels"] = n.labels
            d["podCIDR"] = n.pod_cidr
            if n.cni_plugin:
                d["cniPlugin"] = n.cni_plugin
            nodes.append(d)
        net: dict[str, Any] = {
            "podSubnet": self.pod_subnet,
            "serviceSubnet": self.service_subnet,
            "cni": self.cni,
            "cniPlugin": self.cni_plugin,
            "kubeProxyMode": self.kube_proxy_mode,
            "bgpPeering": self.bgp_peering,
        }
        if self.mtu is not None:
            net["mtu"] = self.mtu
        if self.cluster_dns:
            net["clusterDNS"] = True
        return {"kind": "Cluster", "apiVersion": KIND_API_VERSION, "name": self.name,
                "nodes": nodes, "networking": net}


def default_config(name: str = DEFAULT_NAME, workers: int = 2) -> ClusterConfig:
    doc = {"kind": "Cluster", "apiVersion": KIND_API_VERSION, "name": name,
           "nodes": [{"role": "control-plane"}] + [{"role": "worker"}] * workers}
    return parse_config(doc)


def load_config(path: str | Path, name: str | None = None) -> ClusterConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the cluster config: {e.strerror}", file=str(p),
                          fix="check the path") from None
    return parse_config_text(text, source=str(p), name=name)


def parse_config_text(text: str, source: str = "<config>", name: str | None = None
                      ) -> ClusterConfig:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"invalid YAML{where}: {getattr(e, 'problem', e)}", file=source,
                          fix="fix the YAML syntax") from None
    if len(docs) != 1:
        raise ConfigError(f"expected one `kind: Cluster` document, found {len(docs)}",
                          file=source)
    return parse_config(docs[0], source=source, name=name)


def _fail(msg: str, source: str | None, fld: str | None = None, fix: str | None = None):
    raise ConfigError(msg, file=source, obj="Cluster", field=fld, fix=fix)


def parse_config(doc: Any, source: str | None = None, name: str | None = None,
                 stored: bool = False) -> ClusterConfig:
    if not isinstance(doc, dict):
        _fail("the cluster config must be a mapping", source)
    if doc.get("kind") != "Cluster":
        _fail(f"kind is {doc.get('kind')!r}, expected 'Cluster'", source, "kind")
    if doc.get("apiVersion") != KIND_API_VERSION:
        _fail(f"apiVersion is {doc.get('apiVersion')!r}, expected {KIND_API_VERSION!r}",
              source, "apiVersion")
    known = {"kind", "apiVersion", "name", "nodes", "networking"} | _IGNORED_TOP
    for key in doc:
        if key not in known:
            _fail(f"unknown field {key!r}", source, key,
                  "kind's Cluster fields are name, nodes, networking")
    cname = name or doc.get("name") or DEFAULT_NAME
    if not isinstance(cname, str) or not naming.CLUSTER_NAME_RE.match(cname):
        _fail(f"cluster name {cname!r} must be 1-16 lowercase letters or digits, starting "
              "with a letter (it prefixes every netns the lab makes)", source, "name")

    raw_nodes = doc.get("nodes")
    if raw_nodes is None:
        raw_nodes = [{"role": "control-plane"}, {"role": "worker"}, {"role": "worker"}]
    if not isinstance(raw_nodes, list) or not raw_nodes:
        _fail("nodes must be a non-empty list", source, "nodes")
    if len(raw_nodes) > MAX_NODES:
        _fail(f"{len(raw_nodes)} nodes is more than the lab supports ({MAX_NODES})", source,
              "nodes")
    roles: list[str] = []
    labels: list[dict[str, str]] = []
    node_keys = {"role", "labels"} | _IGNORED_NODE | _LAB_NODE | (_STORED_NODE if stored else set())
    for i, n in enumerate(raw_nodes):
        if not isinstance(n, dict):
            _fail("each node must be a mapping", source, f"nodes[{i}]")
        for key in n:
            if key not in node_keys:
                _fail(f"unknown field {key!r}", source, f"nodes[{i}].{key}")
        role = n.get("role", "control-plane")
        if role not in ROLES:
            _fail(f"role {role!r} is not one of {', '.join(ROLES)}", source, f"nodes[{i}].role")
        lab = n.get("labels") or {}
        if not isinstance(lab, dict) or not all(isinstance(v, str) for v in lab.values()):
            _fail("labels must map strings to strings", source, f"nodes[{i}].labels")
        roles.append(role)
        labels.append(dict(lab))
    if "control-plane" not in roles:
        _fail("a cluster needs at least one control-plane node", source, "nodes")

    net = doc.get("networking") or {}
    if not isinstance(net, dict):
        _fail("networking must be a mapping", source, "networking")
    net_known = ({"podSubnet", "serviceSubnet", "cni", "cniPlugin", "kubeProxyMode", "mtu",
                  "bgpPeering", "clusterDNS"} | _IGNORED_NET)
    for key in net:
        if key not in net_known:
            _fail(f"unknown field {key!r}", source, f"networking.{key}")
    pod_subnet = _subnet(net.get("podSubnet", DEFAULT_POD_SUBNET), source, "networking.podSubnet")
    svc_subnet = _subnet(net.get("serviceSubnet", DEFAULT_SERVICE_SUBNET), source,
                         "networking.serviceSubnet")
    if pod_subnet.overlaps(svc_subnet):
        _fail(f"podSubnet {pod_subnet} overlaps serviceSubnet {svc_subnet}", source,
              "networking.serviceSubnet")
    underlay = ipaddress.ip_network(UNDERLAY_SUBNET)
    for sub, fld in ((pod_subnet, "podSubnet"), (svc_subnet, "serviceSubnet")):
        if sub.overlaps(underlay):
            _fail(f"{sub} overlaps the underlay network {underlay}", source,
                  f"networking.{fld}", "pick a range outside 172.18.0.0/16")
    if pod_subnet.prefixlen > 24:
        _fail(f"podSubnet {pod_subnet} is smaller than one node's /24", source,
              "networking.podSubnet", "use a /24 or larger, e.g. 10.244.0.0/16")
    cni = net.get("cni", DEFAULT_CNI)
    if cni not in CNI_BACKENDS:
        _fail(f"unknown CNI backend {cni!r}; choose one of: {', '.join(CNI_BACKENDS)}",
              source, "networking.cni",
              "host-gw (routes via each node), vxlan (Flannel's overlay), bgp (Calico-style BIRD)")
    plugin = _plugin_name(net.get("cniPlugin", "bridge"), source, "networking.cniPlugin")
    mtu = net.get("mtu")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)
                            or not 576 <= mtu <= 9000):
        _fail(f"mtu {mtu!r} must be a whole number of bytes from 576 to 9000", source,
              "networking.mtu", "leave it out to get the backend's MTU (1450 over VXLAN)")
    peering = net.get("bgpPeering", "node-mesh")
    if peering not in BGP_PEERINGS:
        _fail(f"bgpPeering {peering!r} is not one of {', '.join(BGP_PEERINGS)}", source,
              "networking.bgpPeering")
    mode = net.get("kubeProxyMode", "iptables")
    if mode not in PROXY_MODES:
        _fail(f"kubeProxyMode {mode!r} is not supported; use one of {', '.join(PROXY_MODES)}",
              source, "networking.kubeProxyMode")

    cluster_dns = net.get("clusterDNS", False)
    if not isinstance(cluster_dns, bool):
        _fail(f"clusterDNS {cluster_dns!r} must be true or false", source,
              "networking.clusterDNS", "true deploys CoreDNS behind the kube-dns Service")

    names = naming.node_names(cname, roles)
    cidrs = _node_cidrs(raw_nodes, pod_subnet, source)
    nodes = []
    for i, (nm, role, lab) in enumerate(zip(names, roles, labels, strict=True)):
        raw = raw_nodes[i]
        node_plugin = None
        if "cniPlugin" in raw:
            node_plugin = _plugin_name(raw["cniPlugin"], source, f"nodes[{i}].cniPlugin")
        ip = f"172.18.0.{i + 2}"
        if stored:
            nm, ip = raw.get("name", nm), raw.get("ip", ip)
        nodes.append(NodeConfig(name=nm, role=role, ip=ip, pod_cidr=cidrs[i], labels=lab,
                                cni_plugin=node_plugin))
    return ClusterConfig(name=cname, nodes=tuple(nodes), pod_subnet=str(pod_subnet),
                         service_subnet=str(svc_subnet), cni=cni, cni_plugin=plugin,
                         kube_proxy_mode=mode, mtu=mtu, bgp_peering=peering,
                         cluster_dns=cluster_dns, source=source)


def _plugin_name(value: Any, source: str | None, fld: str) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail("a CNI plugin must be an executable name (looked up in CNI_PATH) or a path",
              source, fld, "e.g. bridge, or /root/my-cni/my-plugin")
    return value


def _node_cidrs(raw_nodes: list[dict[str, Any]], pod_subnet: ipaddress.IPv4Network,
                source: str | None) -> list[str]:
    """Each node's pod CIDR: the one it names (checked), else the next free /24."""
    fixed: dict[int, ipaddress.IPv4Network] = {}
    for i, raw in enumerate(raw_nodes):
        if "podCIDR" not in raw:
            continue
        fld = f"nodes[{i}].podCIDR"
        net = _subnet(raw["podCIDR"], source, fld)
        if not net.subnet_of(pod_subnet):
            _fail(f"pod CIDR {net} of node {i} does not fit in the cluster's podSubnet "
                  f"{pod_subnet}", source, fld, f"pick a range inside {pod_subnet}")
        if not 16 <= net.prefixlen <= 28:
            _fail(f"pod CIDR {net} must be between a /16 and a /28", source, fld)
        for j, other in fixed.items():
            if net.overlaps(other):
                _fail(f"pod CIDR {net} overlaps node {j}'s {other}", source, fld)
        fixed[i] = net
    free = (s for s in pod_subnet.subnets(new_prefix=24)
            if not any(s.overlaps(f) for f in fixed.values()))
    out = []
    for i in range(len(raw_nodes)):
        if i in fixed:
            out.append(str(fixed[i]))
            continue
        nxt = next(free, None)
        if nxt is None:
            _fail(f"podSubnet {pod_subnet} holds {2 ** (24 - pod_subnet.prefixlen)} node /24s "
                  f"but the cluster has {len(raw_nodes)} nodes: none is left for node {i}",
                  source, "networking.podSubnet", "use a larger podSubnet or fewer nodes")
        out.append(str(nxt))
    return out


def _subnet(value: Any, source: str | None, fld: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError as e:
        _fail(f"{value!r} is not a valid CIDR: {e}", source, fld, "write it like 10.244.0.0/16")
    if net.version != 4:
        _fail("only IPv4 is supported in this version", source, fld)
    return net  # type: ignore[return-value]
