"""Desired state: Kubernetes objects parsed from real manifests into frozen dataclasses.

`load_manifests` turns YAML (a file, a string, or already-parsed dicts) into objects after
checking each against the Kubernetes OpenAPI schema (kubernetes-validate) and lab_kit's own rules.
Every error names the file, the object (`Kind/namespace/name`) and the field path.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from lab_kit import naming
from lab_kit.errors import ConfigError

KUBE_VERSION = "1.33"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
SUPPORTED_KINDS = {("v1", "Pod"), ("v1", "Namespace"), ("apps/v1", "Deployment")}


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


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    containers: tuple[Container, ...]
    labels: dict[str, str] = field(default_factory=dict)
    node_name: str | None = None
    owner: str | None = None  # "Deployment/<name>" when a controller made it

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def serve_ports(self) -> tuple[list[int], list[int]]:
        """(TCP ports, UDP ports) the pod's agnhost-like server listens on."""
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
            for c in self.containers], "nodeName": self.node_name}


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


Object = Pod | Deployment | Namespace


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
    return Pod(namespace=ns, name=name, containers=tuple(containers), labels=labels,
               node_name=spec.get("nodeName"))


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
    ns = meta.get("namespace") or "default"
    if not naming.DNS_SUBDOMAIN_RE.match(name) or len(name) > 63:
        raise ConfigError(f"{name!r} is not a valid name (lowercase letters, digits, '-' and "
                          "'.', at most 63 characters in lab_kit)", file=src.file, obj=obj,
                          field="metadata.name")
    if kind == "Pod":
        return _pod_from_spec(ns, name, _labels(meta), doc["spec"], src, obj, "spec.")
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
                                      for x in c.ports]} for c in p.containers]}


def pod_from_json(d: dict[str, Any]) -> Pod:
    return Pod(namespace=d["namespace"], name=d["name"], labels=dict(d.get("labels") or {}),
               node_name=d.get("nodeName"), owner=d.get("owner"),
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
