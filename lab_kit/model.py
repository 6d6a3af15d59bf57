"""Desired state: Kubernetes objects parsed from real manifests into frozen dataclasses.

`load_manifests` turns YAML (a file, a string, or already-parsed dicts) into objects after
checking each against the Kubernetes OpenAPI schema (kubernetes-validate) and lab_kit's own rules.
Every error names the file, the object (`Kind/namespace/name`) and the field path.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from lab_kit import gateway as gw
from lab_kit import masq, naming
from lab_kit.errors import ConfigError
from lab_kit.ingress import Ingress, Secret, parse_ingress, parse_secret
from lab_kit.netpol import NetworkPolicy, parse_policy

KUBE_VERSION = "1.33"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
ADDON_NAMESPACES = ("kube-system",)  # the cluster's own pods (CoreDNS): left out of listings
SUPPORTED_KINDS = {("v1", "Pod"), ("v1", "Namespace"), ("apps/v1", "Deployment"),
                   ("v1", "Service"), ("networking.k8s.io/v1", "NetworkPolicy"),
                   ("networking.k8s.io/v1", "Ingress"), ("networking.k8s.io/v1", "IngressClass"),
                   ("v1", "Secret"), ("v1", "ConfigMap"), (gw.API_VERSION, "GatewayClass"),
                   (gw.API_VERSION, "Gateway"), (gw.API_VERSION, "HTTPRoute"),
                   (gw.BETA_API_VERSION, "ReferenceGrant")}
INGRESS_CONTROLLER_IMAGES = ("registry.k8s.io/ingress-nginx/controller",)
# NGINX Gateway Fabric's control plane, before and after its move to ghcr.io/nginx
GATEWAY_CONTROLLER_IMAGES = ("ghcr.io/nginxinc/nginx-gateway-fabric",
                             "ghcr.io/nginx/nginx-gateway-fabric")
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
_CONTROLLER_NAME_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[-._~a-zA-Z0-9/]+$")
NODE_PORT_RANGE = (30000, 32767)  # the API server's default --service-node-port-range
MAX_AFFINITY_SECONDS = 86400
DEFAULT_AFFINITY_SECONDS = 10800


@dataclass(frozen=True)
class ContainerPort:
    port: int
    protocol: str = "TCP"
    name: str | None = None


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    ports: tuple[ContainerPort, ...] = ()
    args: tuple[str, ...] = ()


DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
MAX_DNS_NAMESERVERS = 3  # validation.MaxDNSNameservers
MAX_DNS_SEARCHES = 32  # with ExpandedDNSConfig (GA in 1.28)
MAX_DNS_SEARCH_CHARS = 2048
COREDNS_IMAGES = ("registry.k8s.io/coredns/coredns", "coredns/coredns", "k8s.gcr.io/coredns")


@dataclass(frozen=True)
class DNSConfig:
    """A pod's `spec.dnsConfig`: merged into (or, for dnsPolicy None, making up) resolv.conf."""
    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[tuple[str, str | None], ...] = ()  # (name, value or None)


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    containers: tuple[Container, ...]
    labels: dict[str, str] = field(default_factory=dict)
    node_name: str | None = None
    owner: str | None = None  # "Deployment/<name>" when a controller made it
    hostname: str | None = None  # spec.hostname / spec.subdomain: DNS names behind a
    subdomain: str | None = None  # headless Service of the subdomain's name
    dns_policy: str = "ClusterFirst"
    dns_config: DNSConfig | None = None

    @property
    def program(self) -> str:
        """What runs in the pod: `coredns` (lab_kit's cluster DNS server) for a CoreDNS image,
        otherwise the agnhost-like test server on the pod's ports."""
        for c in self.containers:
            image = c.image.split("@")[0].rsplit(":", 1)[0]
            if image in COREDNS_IMAGES:
                return "coredns"
            if image in INGRESS_CONTROLLER_IMAGES:
                return "ingress-nginx"
            if image in GATEWAY_CONTROLLER_IMAGES:
                return "nginx-gateway"
        return "agnhost"

    def arg(self, flag: str) -> str | None:
        """The value of `--flag=value` in the first container's args, if given."""
        for a in self.containers[0].args if self.containers else ():
            if a.startswith(f"--{flag}="):
                return a.split("=", 1)[1]
        return None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def serve_ports(self) -> tuple[list[int], list[int]]:
        """(TCP ports, UDP ports) the pod's agnhost-like server listens on."""
        if self.program != "agnhost":
            return [], []
        tcp: list[int] = []
        udp: list[int] = []
        for c in self.containers:
            for p in c.ports:
                (udp if p.protocol == "UDP" else tcp).append(p.port)
            extra_tcp, extra_udp = _netexec_ports(c.args)
            tcp += [p for p in extra_tcp if p not in tcp]
            udp += [p for p in extra_udp if p not in udp]
        return sorted(set(tcp)), sorted(set(udp))

    def spec_dict(self) -> dict[str, Any]:
        """The fields that make up the pod spec (labels excluded: they may change)."""
        return {"containers": [
            {"name": c.name, "image": c.image, "args": list(c.args),
             "ports": [[p.port, p.protocol, p.name] for p in c.ports]}
            for c in self.containers], "nodeName": self.node_name,
            **_dns_fields(self)}


@dataclass(frozen=True)
class Deployment:
    namespace: str
    name: str
    replicas: int
    selector: dict[str, str]
    template: Pod  # namespace/name of the template are placeholders
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def template_hash(self) -> str:
        blob = json.dumps([self.template.spec_dict(), self.template.labels], sort_keys=True)
        return naming.safe_encode(blob, 10)

    def pod(self, index: int) -> Pod:
        """The `index`-th replica: `<deploy>-<pod-template-hash>-<5 chars>` like a ReplicaSet."""
        h = self.template_hash
        suffix = naming.safe_encode(f"{self.key}/{h}/{index}", 5)
        labels = dict(self.template.labels)
        labels["pod-template-hash"] = h
        return replace(self.template, namespace=self.namespace, name=f"{self.name}-{h}-{suffix}",
                       labels=labels, owner=f"Deployment/{self.name}")


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class ServicePortSpec:
    port: int
    protocol: str = "TCP"
    name: str = ""
    target_port: int | str | None = None  # None: same as `port`; a str is a named port
    node_port: int | None = None  # requested (or, once stored, allocated)

    @property
    def target(self) -> int | str:
        return self.port if self.target_port is None else self.target_port


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"  # ClusterIP, NodePort, LoadBalancer, ExternalName
    ports: tuple[ServicePortSpec, ...] = ()
    selector: dict[str, str] | None = None  # None: no selector (no managed EndpointSlices)
    cluster_ip: str | None = None  # requested; "None" for headless
    session_affinity: str = "None"
    affinity_seconds: int = DEFAULT_AFFINITY_SECONDS
    external_traffic_policy: str | None = None  # Cluster/Local; only for NodePort/LB
    internal_traffic_policy: str = "Cluster"
    external_name: str | None = None
    load_balancer_ip: str | None = None  # the deprecated spec.loadBalancerIP: ask for one
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"

    @property
    def external(self) -> bool:
        return self.type in ("NodePort", "LoadBalancer")


@dataclass(frozen=True)
class IngressClass:
    """networking.k8s.io/v1 IngressClass (cluster-scoped): which controller serves a class."""
    name: str
    controller: str
    default: bool = False  # the ingressclass.kubernetes.io/is-default-class annotation
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str = ""

    @property
    def key(self) -> str:
        return self.name


Object = (Pod | Deployment | Namespace | Service | NetworkPolicy | Ingress | Secret | IngressClass
          | gw.GatewayClass | gw.Gateway | gw.HTTPRoute | gw.ReferenceGrant | masq.ConfigMap)


@dataclass(frozen=True)
class Source:
    """Where an object came from, for error messages."""
    file: str
    index: int  # document number in the file


def _netexec_ports(args: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """Ports named by agnhost-style args: `netexec --http-port=8080 --udp-port=8081`."""
    if not args or args[0] != "netexec":
        return [], []
    tcp: list[int] = []
    udp: list[int] = []
    for a in args[1:]:
        for flag, bucket in (("--http-port=", tcp), ("--udp-port=", udp)):
            if a.startswith(flag) and a[len(flag):].isdigit():
                bucket.append(int(a[len(flag):]))
    return tcp, udp


def _obj_name(doc: dict[str, Any]) -> str:
    kind = doc.get("kind", "?")
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{kind}/{ns}/{name}" if ns and kind != "Namespace" else f"{kind}/{name}"


def read_documents(source: str | Path | list[dict[str, Any]] | dict[str, Any],
                   ) -> list[tuple[dict[str, Any], Source]]:
    """YAML file path, YAML text, or dicts -> list of (doc, Source). `kind: List` is flattened."""
    if isinstance(source, dict):
        raw: list[Any] = [source]
        fname = "<object>"
    elif isinstance(source, list):
        raw = list(source)
        fname = "<objects>"
    else:
        text: str
        s = str(source)
        if isinstance(source, Path) or ("\n" not in s and (s.endswith((".yaml", ".yml", ".json"))
                                                           or Path(s).exists())):
            fname = s
            try:
                text = Path(s).read_text()
            except OSError as e:
                raise ConfigError(f"cannot read manifest: {e.strerror}", file=fname,
                                  fix="check the path") from None
        else:
            fname, text = "<string>", s
        try:
            raw = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ConfigError(f"invalid YAML{where}: {getattr(e, 'problem', e)}", file=fname,
                              fix="fix the YAML syntax; `---` separates documents") from None
    out: list[tuple[dict[str, Any], Source]] = []
    for i, d in enumerate(raw):
        if d is None:
            continue
        if not isinstance(d, dict):
            raise ConfigError("a manifest document must be a mapping with apiVersion and kind",
                              file=fname, obj=f"document {i + 1}")
        if d.get("kind") == "List":
            for item in d.get("items") or []:
                out.append((item, Source(fname, i)))
        else:
            out.append((d, Source(fname, i)))
    return out


def _import_validator_libs() -> Any:
    """Import kubernetes_validate without jsonschema's optional `rfc3987_syntax`.

    That module builds a grammar at import time (~1 s) and is only used by format checkers,
    which Kubernetes schema validation does not use.
    """
    import sys
    if "kubernetes_validate.utils" in sys.modules:
        return sys.modules["kubernetes_validate.utils"]
    blocked = "rfc3987_syntax" not in sys.modules
    if blocked:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]
    try:
        import kubernetes_validate.utils
    finally:
        if blocked:
            del sys.modules["rfc3987_syntax"]
    return kubernetes_validate.utils


@functools.lru_cache(maxsize=32)
def _validator(kind: str, api_version: str) -> Any:
    """One compiled validator per kind (kubernetes_validate re-reads 1.4 MB per document)."""
    import re

    kv = _import_validator_libs()
    import jsonschema
    from referencing import Registry, Resource

    version = [v for v in kv.all_versions() if kv.major_minor(v) <= KUBE_VERSION][-1]
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = kv.schema_contents(f"{schema_dir}/{kind.lower()}-{api}.json", KUBE_VERSION)
    defs = kv.schema_contents(f"{schema_dir}/_definitions.json", KUBE_VERSION)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _schema_check(doc: dict[str, Any], src: Source) -> None:
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if not kind or not api:
        raise ConfigError("every object needs `apiVersion` and `kind`", file=src.file,
                          obj=_obj_name(doc), field="kind" if not kind else "apiVersion")
    if (api, kind) not in SUPPORTED_KINDS:
        supported = ", ".join(f"{k} ({a})" for a, k in sorted(SUPPORTED_KINDS))
        raise ConfigError(f"{kind} ({api}) is not supported by this version of lab_kit",
                          file=src.file, obj=_obj_name(doc), field="kind",
                          fix=f"supported kinds: {supported}")
    if api in (gw.API_VERSION, gw.BETA_API_VERSION):
        # a CRD's kind: no built-in schema; gateway.py validates it
        if not isinstance(doc.get("metadata") or {}, dict):
            raise ConfigError("metadata must be a mapping", file=src.file, obj=_obj_name(doc),
                              field="metadata")
        return
    _import_validator_libs()  # before jsonschema, so its slow optional import is skipped
    import jsonschema

    try:
        error = jsonschema.exceptions.best_match(_validator(kind, api).iter_errors(doc))
    except Exception as e:  # a schema that cannot be loaded
        raise ConfigError(f"cannot validate against the Kubernetes schema: {e}", file=src.file,
                          obj=_obj_name(doc)) from None
    if error is not None:
        path = ".".join(_fmt_path(list(error.absolute_path)))
        raise ConfigError(f"fails the Kubernetes schema: {error.message}", file=src.file,
                          obj=_obj_name(doc), field=path or None,
                          fix="compare with `kubectl explain`")


def _fmt_path(parts: list[Any]) -> list[str]:
    out: list[str] = []
    for p in parts:
        if isinstance(p, int) and out:
            out[-1] += f"[{p}]"
        else:
            out.append(str(p))
    return out


def _labels(meta: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}


def stored_object(api_version: str, kind: str, stored: dict[str, Any]) -> dict[str, Any]:
    """A stored namespaced object ({"spec": {namespace, name, labels, [annotations,] spec},
    "created": time}) as `kubectl get KIND NAME -o yaml` shows it, without status."""
    import datetime
    d = stored["spec"]
    meta: dict[str, Any] = {"name": d["name"], "namespace": d["namespace"]}
    for k in ("labels", "annotations"):
        if d.get(k):
            meta[k] = d[k]
    if stored.get("created"):
        meta["creationTimestamp"] = datetime.datetime.fromtimestamp(
            stored["created"], datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": d["spec"]}


def _annotations(meta: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}


def _ingress_class(name: str, meta: dict[str, Any], spec: dict[str, Any], src: Source
                   ) -> IngressClass:
    obj = f"IngressClass/{name}"
    if not naming.DNS_SUBDOMAIN_RE.match(name):
        raise ConfigError(f"{name!r} is not a valid name (a DNS subdomain)", file=src.file,
                          obj=obj, field="metadata.name")
    controller = spec.get("controller")
    if not controller:
        raise ConfigError("Required value: the controller that serves this class",
                          file=src.file, obj=obj, field="spec.controller",
                          fix="ingress-nginx's is `k8s.io/ingress-nginx`")
    if len(controller) > 250 or not _CONTROLLER_NAME_RE.match(controller):
        raise ConfigError(f"Invalid value: {controller!r}: must be a domain-prefixed path "
                          "(such as \"acme.io/foo\")", file=src.file, obj=obj,
                          field="spec.controller")
    default = _annotations(meta).get(DEFAULT_CLASS_ANNOTATION) == "true"
    return IngressClass(name=name, controller=controller, default=default,
                        labels=_labels(meta))


def ingress_class_to_json(c: IngressClass) -> dict[str, Any]:
    return {"name": c.name, "controller": c.controller, "default": c.default,
            "labels": c.labels}


def ingress_class_from_json(d: dict[str, Any]) -> IngressClass:
    return IngressClass(name=d["name"], controller=d["controller"], default=d["default"],
                        labels=dict(d.get("labels") or {}))


def _pod_from_spec(ns: str, name: str, labels: dict[str, str], spec: dict[str, Any],
                   src: Source, obj: str, prefix: str) -> Pod:
    containers: list[Container] = []
    seen_ports: dict[tuple[int, str], str] = {}
    seen_names: set[str] = set()
    for ci, c in enumerate(spec.get("containers") or []):
        cname = c["name"]
        if cname in seen_names:
            raise ConfigError(f"duplicate container name {cname!r}", file=src.file, obj=obj,
                              field=f"{prefix}containers[{ci}].name")
        seen_names.add(cname)
        ports = []
        for pi, p in enumerate(c.get("ports") or []):
            fld = f"{prefix}containers[{ci}].ports[{pi}]"
            port = int(p["containerPort"])
            proto = p.get("protocol", "TCP")
            if not 1 <= port <= 65535:
                raise ConfigError(f"containerPort {port} is outside 1-65535", file=src.file,
                                  obj=obj, field=f"{fld}.containerPort")
            if proto not in ("TCP", "UDP"):
                raise ConfigError(f"protocol {proto!r} is not supported (TCP or UDP)",
                                  file=src.file, obj=obj, field=f"{fld}.protocol")
            other = seen_ports.get((port, proto))
            if other is not None:
                raise ConfigError(
                    f"port {port}/{proto} is already used by container {other!r}: containers "
                    "of one pod share one network namespace, so two cannot bind the same port",
                    file=src.file, obj=obj, field=f"{fld}.containerPort")
            seen_ports[(port, proto)] = cname
            ports.append(ContainerPort(port=port, protocol=proto, name=p.get("name")))
        containers.append(Container(name=cname, image=c.get("image", ""), ports=tuple(ports),
                                    args=tuple(str(a) for a in (c.get("args") or []))))
    if spec.get("hostNetwork"):
        raise ConfigError("hostNetwork pods are not supported yet", file=src.file, obj=obj,
                          field=f"{prefix}hostNetwork")
    for fld in ("hostname", "subdomain"):
        v = spec.get(fld)
        if v is not None and (not naming.DNS_LABEL_RE.match(str(v)) or len(str(v)) > 63):
            raise ConfigError(f"{fld} {v!r} is not a valid DNS label (lowercase letters, digits "
                              "and '-', at most 63 characters)", file=src.file, obj=obj,
                              field=f"{prefix}{fld}")
    policy = spec.get("dnsPolicy", "ClusterFirst")
    if policy not in DNS_POLICIES:
        raise ConfigError(f"dnsPolicy {policy!r} is not one of {', '.join(DNS_POLICIES)}",
                          file=src.file, obj=obj, field=f"{prefix}dnsPolicy")
    dns_config = _dns_config(spec.get("dnsConfig"), policy, src, obj, f"{prefix}dnsConfig")
    return Pod(namespace=ns, name=name, containers=tuple(containers), labels=labels,
               node_name=spec.get("nodeName"), hostname=spec.get("hostname"),
               subdomain=spec.get("subdomain"), dns_policy=policy, dns_config=dns_config)


def _dns_config(d: dict[str, Any] | None, policy: str, src: Source, obj: str, prefix: str
                ) -> DNSConfig | None:
    """`spec.dnsConfig`, validated as the API server does (ValidatePodDNSConfig)."""
    def fail(msg: str, fld: str, fix: str | None = None) -> ConfigError:
        return ConfigError(msg, file=src.file, obj=obj, field=f"{prefix}{fld}", fix=fix)

    if d is None:
        if policy == "None":
            raise ConfigError("dnsPolicy None needs a dnsConfig with at least one nameserver",
                              file=src.file, obj=obj, field=prefix,
                              fix="add dnsConfig.nameservers, e.g. [10.96.0.10]")
        return None
    servers = [str(x) for x in d.get("nameservers") or []]
    if policy == "None" and not servers:
        raise fail("dnsPolicy None needs at least one nameserver", ".nameservers")
    if len(servers) > MAX_DNS_NAMESERVERS:
        raise fail(f"{len(servers)} nameservers: at most {MAX_DNS_NAMESERVERS} are allowed",
                   ".nameservers")
    for i, ip in enumerate(servers):
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise fail(f"{ip!r} is not an IP address", f".nameservers[{i}]") from None
    searches = [str(x) for x in d.get("searches") or []]
    if len(searches) > MAX_DNS_SEARCHES:
        raise fail(f"{len(searches)} search domains: at most {MAX_DNS_SEARCHES} are allowed",
                   ".searches")
    if len(" ".join(searches)) > MAX_DNS_SEARCH_CHARS:
        raise fail(f"the search list is longer than {MAX_DNS_SEARCH_CHARS} characters",
                   ".searches")
    for i, dom in enumerate(searches):
        if dom.endswith("."):
            dom = dom[:-1]
        if not naming.DNS_SUBDOMAIN_RE.match(dom) or len(dom) > 253:
            raise fail(f"search domain {searches[i]!r} is not a valid DNS subdomain",
                       f".searches[{i}]")
    options = []
    for i, o in enumerate(d.get("options") or []):
        if not isinstance(o, dict) or not o.get("name"):
            raise fail("an option needs a name", f".options[{i}].name",
                       fix="e.g. {name: ndots, value: \"2\"}")
        options.append((str(o["name"]), None if o.get("value") is None else str(o["value"])))
    return DNSConfig(nameservers=tuple(servers), searches=tuple(searches),
                     options=tuple(options))


def parse_object(doc: dict[str, Any], src: Source) -> Object:
    """One validated manifest document -> model object."""
    _schema_check(doc, src)
    kind = doc["kind"]
    meta = doc.get("metadata") or {}
    obj = _obj_name(doc)
    name = meta.get("name")
    if not name:
        raise ConfigError("metadata.name is required (generateName is not supported)",
                          file=src.file, obj=obj, field="metadata.name")
    if kind == "Namespace":
        if not naming.DNS_LABEL_RE.match(name) or len(name) > 63:
            raise ConfigError(f"{name!r} is not a valid namespace name (an RFC 1123 label)",
                              file=src.file, obj=obj, field="metadata.name")
        labels = _labels(meta)
        labels.setdefault("kubernetes.io/metadata.name", name)
        return Namespace(name=name, labels=labels)
    if kind == "IngressClass":
        return _ingress_class(name, meta, doc.get("spec") or {}, src)
    if kind == "GatewayClass":
        return gw.parse_gateway_class(name, _labels(meta), doc.get("spec"), file=src.file)
    ns = meta.get("namespace") or "default"
    if not naming.DNS_SUBDOMAIN_RE.match(name) or len(name) > 63:
        raise ConfigError(f"{name!r} is not a valid name (lowercase letters, digits, '-' and "
                          "'.', at most 63 characters in lab_kit)", file=src.file, obj=obj,
                          field="metadata.name")
    if kind == "Pod":
        return _pod_from_spec(ns, name, _labels(meta), doc["spec"], src, obj, "spec.")
    if kind == "Service":
        return _service(ns, name, _labels(meta), doc.get("spec") or {}, src, obj)
    if kind == "NetworkPolicy":
        return parse_policy(ns, name, _labels(meta), doc.get("spec"), file=src.file)
    if kind == "Ingress":
        return parse_ingress(ns, name, _labels(meta), _annotations(meta), doc.get("spec"),
                             file=src.file)
    if kind == "Secret":
        return parse_secret(ns, name, _labels(meta), doc, file=src.file)
    if kind == "ConfigMap":
        return masq.parse_configmap(ns, name, _labels(meta), doc, file=src.file)
    if kind == "Gateway":
        return gw.parse_gateway(ns, name, _labels(meta), doc.get("spec"), file=src.file)
    if kind == "HTTPRoute":
        return gw.parse_httproute(ns, name, _labels(meta), doc.get("spec"), file=src.file)
    if kind == "ReferenceGrant":
        return gw.parse_reference_grant(ns, name, _labels(meta), doc.get("spec"),
                                        file=src.file)
    # Deployment
    spec = doc["spec"]
    replicas = int(spec.get("replicas", 1))
    selector = spec.get("selector") or {}
    if selector.get("matchExpressions"):
        raise ConfigError("matchExpressions in a Deployment selector are not supported yet",
                          file=src.file, obj=obj, field="spec.selector.matchExpressions")
    match = {str(k): str(v) for k, v in (selector.get("matchLabels") or {}).items()}
    tmeta = spec["template"].get("metadata") or {}
    tlabels = _labels(tmeta)
    if not match:
        raise ConfigError("spec.selector.matchLabels must not be empty", file=src.file, obj=obj,
                          field="spec.selector")
    missing = {k: v for k, v in match.items() if tlabels.get(k) != v}
    if missing:
        raise ConfigError(f"`selector` does not match template `labels` ({missing} missing)",
                          file=src.file, obj=obj, field="spec.template.metadata.labels",
                          fix="the pod template must carry every label of the selector")
    template = _pod_from_spec(ns, "template", tlabels, spec["template"]["spec"], src, obj,
                              "spec.template.spec.")
    return Deployment(namespace=ns, name=name, replicas=replicas, selector=match,
                      template=template, labels=_labels(meta))




def _service(ns: str, name: str, labels: dict[str, str], spec: dict[str, Any], src: Source,
             obj: str) -> Service:
    """A v1 Service, with the API server's validation rules that matter for networking."""
    def fail(msg: str, fld: str, fix: str | None = None) -> ConfigError:
        return ConfigError(msg, file=src.file, obj=obj, field=fld, fix=fix)

    if not naming.DNS_LABEL_RE.match(name):
        raise fail(f"{name!r} is not a valid Service name (an RFC 1035 label: lowercase "
                   "letters, digits and '-', starting with a letter)", "metadata.name")
    stype = spec.get("type", "ClusterIP")
    if stype not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        raise fail(f"unsupported value {stype!r}", "spec.type",
                   "one of ClusterIP, NodePort, LoadBalancer, ExternalName")
    for unsupported in ("externalIPs", "loadBalancerSourceRanges", "healthCheckNodePort"):
        if spec.get(unsupported):
            raise fail(f"{unsupported} is not supported by this version of lab_kit",
                       f"spec.{unsupported}")
    if spec.get("ipFamilyPolicy") not in (None, "SingleStack") or any(
            f != "IPv4" for f in spec.get("ipFamilies") or []):
        raise fail("the lab's clusters are IPv4 single-stack", "spec.ipFamilyPolicy")
    cluster_ip = spec.get("clusterIP")
    ips = spec.get("clusterIPs")
    if ips:
        if len(ips) > 1:
            raise fail("the lab's clusters are IPv4 single-stack: give one clusterIP",
                       "spec.clusterIPs")
        if cluster_ip not in (None, "", ips[0]):
            raise fail("must match spec.clusterIP", "spec.clusterIPs[0]")
        cluster_ip = ips[0]
    cluster_ip = cluster_ip or None
    if stype == "ExternalName":
        ext = spec.get("externalName")
        if not ext:
            raise fail("required for type ExternalName", "spec.externalName")
        if not naming.DNS_SUBDOMAIN_RE.match(ext.rstrip(".").lower()):
            raise fail(f"{ext!r} is not a valid DNS name", "spec.externalName")
        if cluster_ip:
            raise fail("must be empty for type ExternalName", "spec.clusterIP")
    elif spec.get("externalName"):
        raise fail("may only be set for type ExternalName", "spec.externalName")
    if cluster_ip is not None and cluster_ip != "None":
        try:
            ipaddress.IPv4Address(cluster_ip)
        except ValueError:
            raise fail(f"{cluster_ip!r} is not a valid IPv4 address (or `None` for a "
                       "headless Service)", "spec.clusterIP") from None
    if cluster_ip == "None" and stype != "ClusterIP":
        raise fail(f"a headless Service (clusterIP: None) must be type ClusterIP, not {stype}",
                   "spec.clusterIP")
    raw_ports = spec.get("ports") or []
    if not raw_ports and stype != "ExternalName" and cluster_ip != "None":
        raise fail("a Service needs at least one port", "spec.ports")
    ports: list[ServicePortSpec] = []
    seen: dict[tuple[int, str], int] = {}
    names: dict[str, int] = {}
    for i, p in enumerate(raw_ports):
        fld = f"spec.ports[{i}]"
        port = p.get("port")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise fail(f"port {port!r} is outside 1-65535", f"{fld}.port")
        proto = p.get("protocol", "TCP")
        if proto not in ("TCP", "UDP"):
            raise fail(f"protocol {proto!r} is not supported (TCP or UDP)", f"{fld}.protocol")
        pname = p.get("name") or ""
        if len(raw_ports) > 1 and not pname:
            raise fail("every port needs a name when a Service has more than one",
                       f"{fld}.name")
        if pname and not naming.DNS_LABEL_RE.match(pname):
            raise fail(f"{pname!r} is not a valid port name (an RFC 1123 label)", f"{fld}.name")
        if pname in names:
            raise fail(f"duplicate port name {pname!r} (also ports[{names[pname]}])",
                       f"{fld}.name")
        names[pname] = i
        if (port, proto) in seen:
            raise fail(f"duplicate port {port}/{proto} (also ports[{seen[(port, proto)]}])",
                       f"{fld}.port")
        seen[(port, proto)] = i
        target = p.get("targetPort")
        if isinstance(target, int):
            if not 1 <= target <= 65535:
                raise fail(f"targetPort {target} is outside 1-65535", f"{fld}.targetPort")
        elif isinstance(target, str):
            if target.isdigit():
                target = int(target)
                if not 1 <= target <= 65535:
                    raise fail(f"targetPort {target} is outside 1-65535", f"{fld}.targetPort")
            elif not naming.IANA_SVC_NAME_RE.match(target):
                raise fail(f"{target!r} is not a valid port name (at most 15 lowercase "
                           "letters, digits and '-', with at least one letter)",
                           f"{fld}.targetPort")
        node_port = p.get("nodePort")
        if node_port is not None:
            if stype not in ("NodePort", "LoadBalancer"):
                raise fail(f"may not be used when `type` is {stype!r}", f"{fld}.nodePort",
                           "use type NodePort or LoadBalancer, or drop nodePort")
            lo, hi = NODE_PORT_RANGE
            if not isinstance(node_port, int) or not lo <= node_port <= hi:
                raise fail(f"provided port {node_port} is not in the valid range. The range "
                           f"of valid ports is {lo}-{hi}", f"{fld}.nodePort")
        ports.append(ServicePortSpec(port=port, protocol=proto, name=pname,
                                     target_port=target, node_port=node_port))
    affinity = spec.get("sessionAffinity", "None")
    if affinity not in ("None", "ClientIP"):
        raise fail(f"unsupported value {affinity!r}", "spec.sessionAffinity",
                   "None or ClientIP")
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get(
        "timeoutSeconds", DEFAULT_AFFINITY_SECONDS)
    if affinity == "ClientIP" and not (isinstance(timeout, int)
                                        and 0 < timeout <= MAX_AFFINITY_SECONDS):
        raise fail(f"must be in the range 1-{MAX_AFFINITY_SECONDS}",
                   "spec.sessionAffinityConfig.clientIP.timeoutSeconds")
    etp = spec.get("externalTrafficPolicy")
    if etp is not None:
        if etp not in ("Cluster", "Local"):
            raise fail(f"unsupported value {etp!r}", "spec.externalTrafficPolicy",
                       "Cluster or Local")
        if stype not in ("NodePort", "LoadBalancer"):
            raise fail("may only be set for externally-accessible services (type NodePort "
                       "or LoadBalancer)", "spec.externalTrafficPolicy")
    elif stype in ("NodePort", "LoadBalancer"):
        etp = "Cluster"
    itp = spec.get("internalTrafficPolicy", "Cluster")
    if itp not in ("Cluster", "Local"):
        raise fail(f"unsupported value {itp!r}", "spec.internalTrafficPolicy",
                   "Cluster or Local")
    lb_ip = spec.get("loadBalancerIP") or None
    if lb_ip is not None:
        if stype != "LoadBalancer":
            raise fail("may only be set for type LoadBalancer", "spec.loadBalancerIP")
        try:
            ipaddress.IPv4Address(lb_ip)
        except ValueError:
            raise fail(f"{lb_ip!r} is not a valid IPv4 address", "spec.loadBalancerIP"
                       ) from None
    selector = spec.get("selector")
    return Service(namespace=ns, name=name, type=stype, ports=tuple(ports),
                   selector=None if selector is None else {str(k): str(v)
                                                           for k, v in selector.items()},
                   cluster_ip=cluster_ip, session_affinity=affinity,
                   affinity_seconds=int(timeout), external_traffic_policy=etp,
                   internal_traffic_policy=itp,
                   external_name=spec.get("externalName") if stype == "ExternalName" else None,
                   load_balancer_ip=lb_ip, labels=labels)


def load_manifests(source: str | Path | list[dict[str, Any]] | dict[str, Any],
                   ) -> list[tuple[Object, Source]]:
    """Parse and validate every object; raise on the first bad one, before anything changes.

    Duplicates inside one input (same kind, namespace and name) are an error.
    """
    out: list[tuple[Object, Source]] = []
    seen: dict[tuple[str, str], Source] = {}
    for doc, src in read_documents(source):
        o = parse_object(doc, src)
        ident = (type(o).__name__, o.key)
        if ident in seen:
            raise ConfigError(f"{type(o).__name__} {o.key!r} appears twice in this input "
                              f"(first as document {seen[ident].index + 1})", file=src.file,
                              obj=f"{type(o).__name__}/{o.key}", field="metadata.name",
                              fix="give each object a unique name")
        seen[ident] = src
        out.append((o, src))
    return out


# --- (de)serialisation of the stored desired state ---------------------------------------

def pod_to_json(p: Pod) -> dict[str, Any]:
    return {"namespace": p.namespace, "name": p.name, "labels": p.labels,
            "nodeName": p.node_name, "owner": p.owner,
            "containers": [{"name": c.name, "image": c.image, "args": list(c.args),
                            "ports": [{"port": x.port, "protocol": x.protocol, "name": x.name}
                                      for x in c.ports]} for c in p.containers],
            **_dns_fields(p)}


def _dns_fields(p: Pod) -> dict[str, Any]:
    """The DNS part of a pod spec, stored only when set (older state files have none)."""
    out: dict[str, Any] = {}
    if p.hostname:
        out["hostname"] = p.hostname
    if p.subdomain:
        out["subdomain"] = p.subdomain
    if p.dns_policy != "ClusterFirst":
        out["dnsPolicy"] = p.dns_policy
    if p.dns_config is not None:
        out["dnsConfig"] = {"nameservers": list(p.dns_config.nameservers),
                            "searches": list(p.dns_config.searches),
                            "options": [{"name": n, **({} if v is None else {"value": v})}
                                        for n, v in p.dns_config.options]}
    return out


def _dns_config_from_json(d: dict[str, Any] | None) -> DNSConfig | None:
    if d is None:
        return None
    return DNSConfig(nameservers=tuple(d.get("nameservers") or ()),
                     searches=tuple(d.get("searches") or ()),
                     options=tuple((o["name"], o.get("value")) for o in d.get("options") or ()))


def pod_from_json(d: dict[str, Any]) -> Pod:
    return Pod(namespace=d["namespace"], name=d["name"], labels=dict(d.get("labels") or {}),
               node_name=d.get("nodeName"), owner=d.get("owner"),
               hostname=d.get("hostname"), subdomain=d.get("subdomain"),
               dns_policy=d.get("dnsPolicy", "ClusterFirst"),
               dns_config=_dns_config_from_json(d.get("dnsConfig")),
               containers=tuple(Container(name=c["name"], image=c.get("image", ""),
                                          args=tuple(c.get("args") or ()),
                                          ports=tuple(ContainerPort(x["port"], x["protocol"],
                                                                    x.get("name"))
                                                      for x in c.get("ports") or ()))
                                for c in d["containers"]))


def deployment_to_json(d: Deployment) -> dict[str, Any]:
    return {"namespace": d.namespace, "name": d.name, "replicas": d.replicas,
            "selector": d.selector, "labels": d.labels, "template": pod_to_json(d.template)}


def deployment_from_json(d: dict[str, Any]) -> Deployment:
    return Deployment(namespace=d["namespace"], name=d["name"], replicas=d["replicas"],
                      selector=dict(d["selector"]), labels=dict(d.get("labels") or {}),
                      template=pod_from_json(d["template"]))


def service_to_json(s: Service) -> dict[str, Any]:
    return {"namespace": s.namespace, "name": s.name, "type": s.type, "labels": s.labels,
            "selector": s.selector, "clusterIP": s.cluster_ip,
            "sessionAffinity": s.session_affinity, "affinitySeconds": s.affinity_seconds,
            "externalTrafficPolicy": s.external_traffic_policy,
            "internalTrafficPolicy": s.internal_traffic_policy,
            "externalName": s.external_name, "loadBalancerIP": s.load_balancer_ip,
            "ports": [{"name": p.name, "protocol": p.protocol, "port": p.port,
                       "targetPort": p.target_port, "nodePort": p.node_port}
                      for p in s.ports]}


def service_from_json(d: dict[str, Any]) -> Service:
    return Service(namespace=d["namespace"], name=d["name"], type=d["type"],
                   labels=dict(d.get("labels") or {}),
                   selector=None if d.get("selector") is None else dict(d["selector"]),
                   cluster_ip=d.get("clusterIP"), session_affinity=d["sessionAffinity"],
                   affinity_seconds=d["affinitySeconds"],
                   external_traffic_policy=d.get("externalTrafficPolicy"),
                   internal_traffic_policy=d["internalTrafficPolicy"],
                   external_name=d.get("externalName"), load_balancer_ip=d.get("loadBalancerIP"),
                   ports=tuple(ServicePortSpec(port=p["port"], protocol=p["protocol"],
                                               name=p["name"], target_port=p["targetPort"],
                                               node_port=p["nodePort"]) for p in d["ports"]))
