"""Ingress (networking.k8s.io/v1) and Secret (v1): the objects, parsed and validated.

Parsing only: a manifest -> a frozen `Ingress` or `Secret`, accepted or refused the way the API
server does (`ValidateIngressSpec` / `ValidateIngressCreate` in pkg/apis/networking/validation,
`ValidateSecret` in pkg/apis/core/validation). What a controller makes of the objects lives
elsewhere. The first problem found raises `ConfigError` naming the field path, e.g.
`spec.rules[1].http.paths[0].backend.service.port.number`, in the order upstream checks them.

Rules worth knowing, as upstream has them:

- A spec needs `defaultBackend` or `rules` (or both). A rule without `http` is allowed; an
  `http` without paths is not.
- `pathType` has no default in v1. `Exact` and `Prefix` paths start with `/` and may not contain
  `//`, `/./`, `/../` or an encoded slash, nor end in `/.` or `/..`. An `ImplementationSpecific`
  path may be empty (controllers read it as `/`); otherwise it starts with `/` too.
- A backend is a Service (name: a DNS-1035 label; port: exactly one of `number` and `name`) or
  a `resource` reference, never both; lab_kit has no controller for `resource` backends.
- A rule's `host` is a DNS subdomain, never an IP address; a wildcard is allowed only as the whole
  first label (`*.example.com`). `tls[].hosts` follow the same syntax (upstream does not refuse an
  IP address there).
- `ingressClassName` and the deprecated `kubernetes.io/ingress.class` annotation must agree when
  both are set. The class used is the field's, else the annotation's.
- A Secret's `stringData` (plain text) is merged over `data` (base64). Keys are config-map keys;
  the values together may hold at most 1 MiB. `kubernetes.io/tls` needs `tls.crt` and `tls.key`,
  but the API server never reads the PEM inside: a bad certificate is the controller's problem.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lab_kit import naming
from lab_kit.errors import ConfigError
from lab_kit.fields import FieldParser, config_key_problem

PATH_TYPES = ("Exact", "Prefix", "ImplementationSpecific")
INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
SECRET_TYPE_TLS = "kubernetes.io/tls"
MAX_SECRET_SIZE = 1024 * 1024  # core.MaxSecretSize: the sum of the values' lengths

_INVALID_PATH_SEQUENCES = ("//", "/./", "/../", "%2f", "%2F")
_INVALID_PATH_SUFFIXES = ("/..", "/.")
_DNS1035_LABEL_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_WILDCARD_SUBDOMAIN_RE = re.compile(r"\*\." + naming.DNS_SUBDOMAIN_RE.pattern.strip("^$"))
_IPV4_SLOPPY_RE = re.compile(r"\d{1,3}(\.\d{1,3}){3}")  # ParseIPSloppy takes leading zeros

# upstream's messages (k8s.io/apimachinery/pkg/util/validation)
_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                  "characters, '-' or '.', and must start and end with an alphanumeric character "
                  "(e.g. 'example.com')")
_WILDCARD_MSG = ("a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS "
                 "subdomain, which must consist of lower case alphanumeric characters, '-' or '.' "
                 "and end with an alphanumeric character (e.g. '*.example.com')")
_DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with an alphabetic character, and end with an alphanumeric character "
                "(e.g. 'my-name' or 'abc-123')")
_PORT_RANGE_MSG = "must be between 1 and 65535, inclusive"


# --- the objects ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServiceBackend:
    """A Service and one of its ports, by number or by name (exactly one is set)."""
    service: str
    port_number: int | None = None
    port_name: str | None = None

    @property
    def port(self) -> int | str:
        return self.port_number if self.port_number is not None else str(self.port_name)

    def describe(self) -> str:
        return f"{self.service}:{self.port}"


@dataclass(frozen=True)
class HTTPPath:
    path: str  # as given; "" only with ImplementationSpecific (controllers read it as "/")
    path_type: str
    backend: ServiceBackend


@dataclass(frozen=True)
class IngressRule:
    host: str | None  # None: every host; "*.example.com" matches exactly one more label
    paths: tuple[HTTPPath, ...]


@dataclass(frozen=True)
class IngressTLS:
    hosts: tuple[str, ...]
    secret_name: str | None


@dataclass(frozen=True)
class Ingress:
    namespace: str
    name: str
    ingress_class: str | None  # spec.ingressClassName, else the legacy annotation, else None
    default_backend: ServiceBackend | None
    tls: tuple[IngressTLS, ...]
    rules: tuple[IngressRule, ...]
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]  # as given (for `get -o yaml`)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def backends(self) -> list[ServiceBackend]:
        """The default backend, then every path's backend, in order, each once."""
        out: dict[ServiceBackend, None] = {}
        if self.default_backend is not None:
            out[self.default_backend] = None
        for rule in self.rules:
            for p in rule.paths:
                out.setdefault(p.backend, None)
        return list(out)


@dataclass(frozen=True)
class Secret:
    namespace: str
    name: str
    type: str  # "Opaque" when the manifest gives none
    data: dict[str, bytes]  # decoded, stringData merged in
    labels: dict[str, str]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# --- shared checks ----------------------------------------------------------------------------

def _is_ip(s: str) -> bool:
    """Whether upstream's ParseIPSloppy would take `s` (it also takes IPv4 with leading zeros)."""
    if _IPV4_SLOPPY_RE.fullmatch(s):
        return all(int(part) <= 255 for part in s.split("."))
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return "%" not in s  # Go's parser has no IPv6 zones


def _subdomain_problem(s: str) -> str | None:
    """IsDNS1123Subdomain's first complaint about `s`, or None."""
    if len(s) > 253:
        return "must be no more than 253 characters"
    if not naming.DNS_SUBDOMAIN_RE.fullmatch(s):
        return _SUBDOMAIN_MSG
    return None


def _wildcard_problem(s: str) -> str | None:
    """IsWildcardDNS1123Subdomain's first complaint about `s`, or None."""
    if len(s) > 253:
        return "must be no more than 253 characters"
    if not _WILDCARD_SUBDOMAIN_RE.fullmatch(s):
        return _WILDCARD_MSG
    return None


def _port_name_problem(s: str) -> str | None:
    """IsValidPortName's first complaint about `s`, or None."""
    if len(s) > 15:
        return "must be no more than 15 characters"
    if not re.fullmatch(r"[-a-z0-9]+", s):
        return "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
    if not re.search(r"[a-z]", s):
        return "must contain at least one letter (a-z)"
    if "--" in s:
        return "must not contain consecutive hyphens"
    if s.startswith("-") or s.endswith("-"):
        return "must not begin or end with a hyphen"
    return None


def _lowercase_fix(s: str, ok: bool) -> str | None:
    return f"write it in lowercase: {s.lower()!r}" if ok and s != s.lower() else None


class _Parser(FieldParser):
    def string(self, v: Any, fld: str) -> str:
        if not isinstance(v, str):
            raise self.fail(f"{v!r} must be a string, not {type(v).__name__}", fld,
                            "put the value in quotes")
        return v

    def host(self, host: str, fld: str, *, refuse_ip: bool) -> None:
        """A rule's (refuse_ip) or a TLS entry's host: a DNS subdomain, maybe a wildcard."""
        if refuse_ip and _is_ip(host):
            raise self.fail(f"Invalid value: {host!r}: must be a DNS name, not an IP address",
                            fld, "an Ingress routes by the Host header: give a DNS name, or "
                            "leave `host` out to match every host")
        if "*" in host:
            problem = _wildcard_problem(host)
            fix = ("a wildcard may only be the whole first label, as in '*.example.com'; "
                   "it matches exactly one label")
            fix = _lowercase_fix(host, _wildcard_problem(host.lower()) is None) or fix
        else:
            problem = _subdomain_problem(host)
            fix = _lowercase_fix(host, _subdomain_problem(host.lower()) is None)
            if fix is None and ":" in host:
                fix = "a host carries no port: drop the ':…' part"
        if problem:
            raise self.fail(f"Invalid value: {host!r}: {problem}", fld, fix)

    def subdomain_name(self, v: str, fld: str) -> None:
        problem = _subdomain_problem(v)
        if problem:
            raise self.fail(f"Invalid value: {v!r}: {problem}", fld,
                            _lowercase_fix(v, _subdomain_problem(v.lower()) is None))

    def backend(self, d: Any, fld: str) -> ServiceBackend:
        """validateIngressBackend, plus lab_kit's refusal of `resource` backends."""
        d = self.mapping(d, fld)
        has_resource, has_service = d.get("resource") is not None, d.get("service") is not None
        if has_resource and has_service:
            raise self.fail("Invalid value: cannot set both resource and service backends", fld,
                            "keep `service` and drop `resource`")
        if has_resource:
            raise self.fail("`resource` backends are not supported in lab_kit: no controller "
                            "here serves a custom resource", f"{fld}.resource",
                            "point the backend at a Service: `service: {name: web, port: "
                            "{number: 80}}`")
        if not has_service:
            raise self.fail("Invalid value: resource or service backend is required", fld,
                            "add `service: {name: <service>, port: {number: <port>}}`")
        s = self.mapping(d["service"], f"{fld}.service")
        name = s.get("name")
        if name is None or name == "":
            raise self.fail("Required value: the backend's Service name", f"{fld}.service.name")
        name = self.string(name, f"{fld}.service.name")
        if len(name) > 63:
            raise self.fail(f"Invalid value: {name!r}: must be no more than 63 characters",
                            f"{fld}.service.name")
        if not _DNS1035_LABEL_RE.fullmatch(name):
            fix = _lowercase_fix(name, bool(_DNS1035_LABEL_RE.fullmatch(name.lower())))
            if fix is None and name[:1].isdigit():
                fix = "a Service name starts with a letter"
            raise self.fail(f"Invalid value: {name!r}: {_DNS1035_MSG}", f"{fld}.service.name",
                            fix)
        port = self.mapping(s.get("port"), f"{fld}.service.port")
        number, pname = port.get("number"), port.get("name")
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
            fix = ("write `number: 80`, not `number: \"80\"`"
                   if isinstance(number, str) and number.isdigit() else
                   "a named port goes under `name`" if isinstance(number, str) else None)
            raise self.fail(f"Invalid value: {number!r}: must be an integer port number",
                            f"{fld}.service.port.number", fix)
        if pname is not None:
            pname = self.string(pname, f"{fld}.service.port.name")
        # upstream reads 0 and "" as "not set"
        has_number, has_name = bool(number), bool(pname)
        if has_number and has_name:
            raise self.fail("Invalid value: cannot set both port name & port number", fld,
                            "keep one of `service.port.number` and `service.port.name`")
        if has_name:
            assert isinstance(pname, str)
            problem = _port_name_problem(pname)
            if problem:
                fix = ("a numeric port goes under `number`, unquoted"
                       if pname.isdigit() else None)
                raise self.fail(f"Invalid value: {pname!r}: {problem}",
                                f"{fld}.service.port.name", fix)
            return ServiceBackend(name, port_name=pname)
        if has_number:
            assert isinstance(number, int)
            if not 1 <= number <= 65535:
                raise self.fail(f"Invalid value: {number}: {_PORT_RANGE_MSG}",
                                f"{fld}.service.port.number")
            return ServiceBackend(name, port_number=number)
        raise self.fail("Required value: port name or number is required", fld,
                        "set `service.port.number` (1-65535) or `service.port.name` (a named "
                        "port of the Service)")

    def http_path(self, d: Any, fld: str) -> HTTPPath:
        """validateHTTPIngressPath."""
        d = self.mapping(d, fld)
        pt = d.get("pathType")
        if pt is None:
            raise self.fail("Required value: pathType must be specified", f"{fld}.pathType",
                            f"networking.k8s.io/v1 has no default: use one of "
                            f"{', '.join(PATH_TYPES)}")
        if pt not in PATH_TYPES:
            near = [t for t in PATH_TYPES if isinstance(pt, str) and t.lower() == pt.lower()]
            raise self.fail(f"Unsupported value: {pt!r}", f"{fld}.pathType",
                            f"did you mean {near[0]!r}? (the value is case-sensitive)" if near
                            else "supported values: " + ", ".join(f'"{t}"'
                                                                  for t in sorted(PATH_TYPES)))
        path = d.get("path")
        path = "" if path is None else self.string(path, f"{fld}.path")
        if pt in ("Exact", "Prefix"):
            if not path.startswith("/"):
                raise self.fail(f"Invalid value: {path!r}: must be an absolute path",
                                f"{fld}.path", f"write {'/' + path!r}")
            for seq in _INVALID_PATH_SEQUENCES:
                if seq in path:
                    fix = ("an encoded '/' is not allowed in an Exact or Prefix path"
                           if seq.lower() == "%2f" else
                           f"{pt} paths are matched as written: give the normalised path")
                    raise self.fail(f"Invalid value: {path!r}: must not contain '{seq}'",
                                    f"{fld}.path", fix)
            for suffix in _INVALID_PATH_SUFFIXES:
                if path.endswith(suffix):
                    raise self.fail(f"Invalid value: {path!r}: cannot end with '{suffix}'",
                                    f"{fld}.path",
                                    f"{pt} paths are matched as written: give the normalised path")
        elif path and not path.startswith("/"):
            raise self.fail(f"Invalid value: {path!r}: must be an absolute path", f"{fld}.path",
                            f"write {'/' + path!r}")
        return HTTPPath(path, pt, self.backend(d.get("backend"), f"{fld}.backend"))

    def rule(self, d: Any, fld: str) -> IngressRule:
        """validateIngressRules for one rule, then validateHTTPIngressRuleValue."""
        d = self.mapping(d, fld)
        host = d.get("host")
        host = None if host is None or host == "" else self.string(host, f"{fld}.host")
        if host is not None:
            self.host(host, f"{fld}.host", refuse_ip=True)
        if d.get("http") is None:  # a rule without http is allowed (and routes nothing)
            return IngressRule(host, ())
        http = self.mapping(d["http"], f"{fld}.http")
        paths = self.listing(http.get("paths"), f"{fld}.http.paths")
        if not paths:
            raise self.fail("Required value: an http rule needs at least one path",
                            f"{fld}.http.paths", "add `- {path: /, pathType: Prefix, "
                            "backend: {service: {name: web, port: {number: 80}}}}`")
        return IngressRule(host, tuple(self.http_path(p, f"{fld}.http.paths[{j}]")
                                       for j, p in enumerate(paths)))

    def tls(self, d: Any, fld: str) -> IngressTLS:
        """validateIngressTLS for one entry."""
        d = self.mapping(d, fld)
        hosts = []
        for j, h in enumerate(self.listing(d.get("hosts"), f"{fld}.hosts")):
            h = self.string(h, f"{fld}.hosts[{j}]")
            self.host(h, f"{fld}.hosts[{j}]", refuse_ip=False)
            hosts.append(h)
        secret = d.get("secretName")
        secret = None if secret is None or secret == "" else self.string(secret,
                                                                         f"{fld}.secretName")
        if secret is not None:
            self.subdomain_name(secret, f"{fld}.secretName")
        return IngressTLS(tuple(hosts), secret)


# --- Ingress ----------------------------------------------------------------------------------

def parse_ingress(namespace: str, name: str, labels: Mapping[str, str],
                  annotations: Mapping[str, str], spec: Any, *,
                  file: str = "<object>") -> Ingress:
    """An Ingress from its `spec`, validated as the API server does on create."""
    p = _Parser(file, f"Ingress/{namespace}/{name}")
    if not isinstance(spec, dict):
        raise p.fail(f"must be a mapping, not {type(spec).__name__}", "spec",
                     "give `defaultBackend` and/or `rules`")
    rules_given = p.listing(spec.get("rules"), "spec.rules")
    if not rules_given and spec.get("defaultBackend") is None:
        raise p.fail("Invalid value: either `defaultBackend` or `rules` must be specified",
                     "spec", "add `rules` (host and path routing) or a `defaultBackend`")
    default = (None if spec.get("defaultBackend") is None
               else p.backend(spec["defaultBackend"], "spec.defaultBackend"))
    rules = tuple(p.rule(r, f"spec.rules[{i}]") for i, r in enumerate(rules_given))
    tls = tuple(p.tls(t, f"spec.tls[{i}]")
                for i, t in enumerate(p.listing(spec.get("tls"), "spec.tls")))
    cls = spec.get("ingressClassName")
    if cls is not None:
        cls = p.string(cls, "spec.ingressClassName")
        p.subdomain_name(cls, "spec.ingressClassName")
    legacy = annotations.get(INGRESS_CLASS_ANNOTATION)
    if legacy is not None and cls is not None and legacy != cls:
        raise p.fail(f"Invalid value: {legacy!r}: must match `ingressClassName` when both are "
                     "specified", f"metadata.annotations[{INGRESS_CLASS_ANNOTATION}]",
                     f"drop the deprecated annotation (`ingressClassName: {cls}` replaces it)")
    return Ingress(namespace=namespace, name=name,
                   ingress_class=cls if cls is not None else (legacy or None),
                   default_backend=default, tls=tls, rules=rules, labels=dict(labels),
                   annotations=dict(annotations), spec=copy.deepcopy(spec))


def ingress_to_json(i: Ingress) -> dict[str, Any]:
    return {"namespace": i.namespace, "name": i.name, "labels": dict(i.labels),
            "annotations": dict(i.annotations), "spec": copy.deepcopy(i.spec)}


def ingress_from_json(d: Mapping[str, Any]) -> Ingress:
    return parse_ingress(d["namespace"], d["name"], d.get("labels") or {},
                         d.get("annotations") or {}, d["spec"], file="<state>")


# --- Secret -----------------------------------------------------------------------------------

def _b64decode(s: str) -> bytes:
    """Go's base64.StdEncoding as encoding/json uses it: padded, CR and LF ignored."""
    raw = s.replace("\r", "").replace("\n", "").encode("ascii", "replace")
    if len(raw) % 4:
        raise ValueError("the length is not a multiple of 4: padding is missing or extra")
    return binascii.a2b_base64(raw, strict_mode=True)


def _check_secret_type(p: _Parser, typ: str, data: Mapping[str, bytes],
                       annotations: Mapping[str, Any]) -> None:
    """The per-type requirements of ValidateSecret."""
    def need(key: str, fix: str) -> ConfigError:
        return p.fail("Required value", f"data[{key}]", fix)

    if typ == SECRET_TYPE_TLS:
        for key in ("tls.crt", "tls.key"):
            if key not in data:
                raise need(key, "a kubernetes.io/tls Secret carries both `tls.crt` (PEM "
                           "certificate chain) and `tls.key` (PEM private key); `kubectl create "
                           "secret tls NAME --cert=FILE --key=FILE` makes one")
    elif typ == "kubernetes.io/service-account-token":
        if not annotations.get("kubernetes.io/service-account.name"):
            raise p.fail("Required value",
                         "metadata.annotations[kubernetes.io/service-account.name]",
                         "name the ServiceAccount the token is for")
    elif typ in ("kubernetes.io/dockercfg", "kubernetes.io/dockerconfigjson"):
        key = ".dockercfg" if typ.endswith("dockercfg") else ".dockerconfigjson"
        if key not in data:
            raise need(key, f"a {typ} Secret carries the registry credentials under `{key}`")
        try:
            ok = isinstance(json.loads(data[key]), dict)
        except ValueError:
            ok = False
        if not ok:
            raise p.fail("Invalid value: \"<secret contents redacted>\": not a JSON object",
                         f"data[{key}]")
    elif typ == "kubernetes.io/basic-auth":
        if "username" not in data and "password" not in data:
            raise need("username", "a basic-auth Secret has `username` and/or `password`")
    elif typ == "kubernetes.io/ssh-auth":
        if not data.get("ssh-privatekey"):
            raise need("ssh-privatekey", "an ssh-auth Secret carries `ssh-privatekey`")


def parse_secret(namespace: str, name: str, labels: Mapping[str, str], doc: Mapping[str, Any],
                 *, file: str = "<object>") -> Secret:
    """A Secret from its whole manifest (`type`, `data`, `stringData`), as the API server takes
    it: `data` base64-decoded, `stringData` merged over it, then ValidateSecret's checks."""
    p = _Parser(file, f"Secret/{namespace}/{name}")
    typ = doc.get("type")
    typ = "Opaque" if typ is None or typ == "" else p.string(typ, "type")
    data: dict[str, bytes] = {}
    where: dict[str, str] = {}  # the field each key came from, for errors
    for k, v in p.mapping(doc.get("data"), "data").items():
        k = str(k)
        if v is None:
            data[k] = b""
        elif not isinstance(v, str):
            raise p.fail(f"must be a base64 string, not {type(v).__name__}", f"data[{k}]",
                         "base64-encode the value, or put plain text under `stringData`")
        else:
            try:
                data[k] = _b64decode(v)
            except (binascii.Error, ValueError) as e:
                raise p.fail(f"illegal base64 data ({e})", f"data[{k}]",
                             "base64-encode the value (`base64 -w0 FILE`), or put plain text "
                             "under `stringData`") from None
        where[k] = f"data[{k}]"
    for k, v in p.mapping(doc.get("stringData"), "stringData").items():
        k = str(k)
        if v is None:
            v = ""
        elif not isinstance(v, str):
            raise p.fail(f"{v!r} must be a string, not {type(v).__name__}", f"stringData[{k}]",
                         "put the value in quotes")
        data[k] = v.encode()  # stringData wins over data, as in the API server's conversion
        where[k] = f"stringData[{k}]"
    total = 0
    for k, v in data.items():
        problem = config_key_problem(k)
        if problem:
            raise p.fail(f"Invalid value: {k!r}: {problem}", where[k],
                         "a key is a file name when the Secret is mounted: letters, digits, "
                         "'-', '_' and '.'")
        total += len(v)
    if total > MAX_SECRET_SIZE:
        raise p.fail(f"Too long: must have at most {MAX_SECRET_SIZE} bytes", "data",
                     f"the values add up to {total} bytes; split the Secret")
    meta = doc.get("metadata")
    annotations = (meta.get("annotations") or {}) if isinstance(meta, dict) else {}
    _check_secret_type(p, typ, data, annotations)
    return Secret(namespace=namespace, name=name, type=typ, data=data, labels=dict(labels))


def secret_to_json(s: Secret) -> dict[str, Any]:
    return {"namespace": s.namespace, "name": s.name, "labels": dict(s.labels), "type": s.type,
            "data": {k: base64.b64encode(v).decode() for k, v in s.data.items()}}


def secret_from_json(d: Mapping[str, Any]) -> Secret:
    return parse_secret(d["namespace"], d["name"], d.get("labels") or {},
                        {"type": d.get("type"), "data": d.get("data") or {}}, file="<state>")
