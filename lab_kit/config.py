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
CNI_BACKENDS = ("host-gw",)
PROXY_MODES = ("iptables",)
ROLES = ("control-plane", "worker")

# kind fields lab_kit accepts and ignores (they configure container images, kubeadm, mounts…)
_IGNORED_TOP = {"featureGates", "runtimeConfig", "kubeadmConfigPatches",
                "kubeadmConfigPatchesJSON6902", "containerdConfigPatches",
                "containerdConfigPatchesJSON6902"}
_IGNORED_NODE = {"image", "extraMounts", "extraPortMappings", "kubeadmConfigPatches",
                 "kubeadmConfigPatchesJSON6902"}
_IGNORED_NET = {"ipFamily", "apiServerAddress", "apiServerPort", "disableDefaultCNI",
                "dnsSearch"}


@dataclass(frozen=True)
class NodeConfig:
    name: str
    role: str
    ip: str  # underlay address (no prefix length)
    pod_cidr: str  # this node's /24 of the pod subnet
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    nodes: tuple[NodeConfig, ...]
    pod_subnet: str = DEFAULT_POD_SUBNET
    service_subnet: str = DEFAULT_SERVICE_SUBNET
    cni: str = "host-gw"
    cni_plugin: str = "bridge"  # the main plugin's executable name (CNI `type`)
    kube_proxy_mode: str = "iptables"
    source: str | None = None  # file it came from, for error messages

    @property
    def external_ip(self) -> str:
        return EXTERNAL_IP

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Back to kind's format (plus the lab's own `networking` keys)."""
        return {
            "kind": "Cluster",
            "apiVersion": KIND_API_VERSION,
            "name": self.name,
            "nodes": [{"role": n.role, **({"labels": n.labels} if n.labels else {})}
                      for n in self.nodes],
            "networking": {
                "podSubnet": self.pod_subnet,
                "serviceSubnet": self.service_subnet,
                "cni": self.cni,
                "cniPlugin": self.cni_plugin,
                "kubeProxyMode": self.kube_proxy_mode,
            },
        }


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


def parse_config(doc: Any, source: str | None = None, name: str | None = None) -> ClusterConfig:
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
    for i, n in enumerate(raw_nodes):
        if not isinstance(n, dict):
            _fail("each node must be a mapping", source, f"nodes[{i}]")
        for key in n:
            if key not in {"role", "labels"} | _IGNORED_NODE:
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
    net_known = {"podSubnet", "serviceSubnet", "cni", "cniPlugin", "kubeProxyMode"} | _IGNORED_NET
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
    capacity = 2 ** (24 - pod_subnet.prefixlen)
    if capacity < len(roles):
        _fail(f"podSubnet {pod_subnet} holds {capacity} node /24s but the cluster has "
              f"{len(roles)} nodes", source, "networking.podSubnet",
              "use a larger podSubnet or fewer nodes")
    cni = net.get("cni", "host-gw")
    if cni not in CNI_BACKENDS:
        _fail(f"unknown CNI backend {cni!r}; this version supports: {', '.join(CNI_BACKENDS)}",
              source, "networking.cni")
    plugin = net.get("cniPlugin", "bridge")
    if not isinstance(plugin, str) or not plugin:
        _fail("cniPlugin must be a plugin executable name or path", source,
              "networking.cniPlugin")
    mode = net.get("kubeProxyMode", "iptables")
    if mode not in PROXY_MODES:
        _fail(f"kubeProxyMode {mode!r} is not supported; use one of {', '.join(PROXY_MODES)}",
              source, "networking.kubeProxyMode")

    names = naming.node_names(cname, roles)
    subnets = pod_subnet.subnets(new_prefix=24)
    nodes = []
    for i, (nm, role, lab) in enumerate(zip(names, roles, labels, strict=True)):
        nodes.append(NodeConfig(name=nm, role=role, ip=f"172.18.0.{i + 2}",
                                pod_cidr=str(next(subnets)), labels=lab))
    return ClusterConfig(name=cname, nodes=tuple(nodes), pod_subnet=str(pod_subnet),
                         service_subnet=str(svc_subnet), cni=cni, cni_plugin=plugin,
                         kube_proxy_mode=mode, source=source)


def _subnet(value: Any, source: str | None, fld: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError as e:
        _fail(f"{value!r} is not a valid CIDR: {e}", source, fld, "write it like 10.244.0.0/16")
    if net.version != 4:
        _fail("only IPv4 is supported in this version", source, fld)
    return net  # type: ignore[return-value]
