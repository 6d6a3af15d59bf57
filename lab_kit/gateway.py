"""Gateway API (gateway.networking.k8s.io/v1): GatewayClass, Gateway and HTTPRoute, parsed and
validated.

Parsing only: a manifest -> a frozen object, accepted or refused the way the API server does
with the Gateway API CRDs installed (their OpenAPI schema and CEL rules, v1.2 standard
channel). What a controller makes of the objects (attachment, status, the nginx config) lives
in gateway_nginx.py. The first problem found raises `ConfigError` naming the field path, e.g.
`spec.rules[0].matches[1].path.value`.

Defaults, as the CRDs apply them:
- a listener's `allowedRoutes` is `{namespaces: {from: Same}}`;
- an HTTPRoute rule without `matches` has one match, `{path: {type: PathPrefix, value: /}}`;
  a match without `path` has that path; a path, header or query match without `type` is
  `PathPrefix` / `Exact`;
- a parentRef's group and kind are `gateway.networking.k8s.io` / `Gateway`, its namespace the
  route's; a backendRef's group is "" (core), its kind `Service`, its weight 1, its namespace
  the route's;
- a route without `rules` has one rule, `{matches: [{path: {type: PathPrefix, value: /}}]}`
  (and no backends); an explicit `rules: []` stays empty;
- a listener's tls `mode` is `Terminate`, a certificateRef's group "" and kind `Secret`, a route
  kind's group `gateway.networking.k8s.io`; a redirect's `statusCode` is 302.

An explicit `matches: []` is not defaulted by the API server (defaults fill absent fields only),
but the spec reads an empty list as "match every request", so the parsed rule has the default
match all the same. The CEL rules see the list as written, though: with `matches: []` a
ReplacePrefixMatch redirect or rewrite is refused (it needs exactly one PathPrefix match), and
the 128-match total counts 0 for the rule.

Rules worth knowing, as the CRDs have them:

- Listeners: 1 to 64, names unique; port, protocol and hostname together unique; `tls` only for
  HTTPS and TLS (HTTPS only with `mode: Terminate`); `mode: Terminate` needs certificateRefs
  (or options); no hostname on TCP or UDP. The protocol only has to match the CRD's pattern:
  whether a controller supports it is the controller's business (a listener condition).
- Hostnames are precise (`shop.example.com`) or a wildcard first label (`*.example.com`); a
  redirect's or a rewrite's hostname is precise.
- An Exact or PathPrefix path starts with `/` and has no `//`, `/./`, `/../`, `%2f`, `#`, no
  `/.` or `/..` at the end, and only URL path characters. A RegularExpression path is any text.
- A filter's `type` names the one sub-field it carries (`type: URLRewrite` -> `urlRewrite`).
  In one filter list each of RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect and
  URLRewrite appears at most once, and never a redirect and a rewrite together. A rule with a
  RequestRedirect has no backendRefs; a ReplacePrefixMatch needs exactly one PathPrefix match.
- A backendRef to a Service names its port: there is no default port.
- Refs of one route to the same parent all set `sectionName`, each a different one.

Where a CEL rule sits on a list or an enclosing object, upstream reports the enclosing path
(`spec.listeners`); lab_kit names the item or field at fault (`spec.listeners[1].name`), with
upstream's message. Every field unknown to the v1.2 standard-channel schema is refused, as
kubectl's strict field validation does (`strict decoding error: unknown field ...`).

Where lab_kit is stricter than the API server, on purpose:

- `spec.addresses` is refused: lab_kit gives a Gateway the load-balancer IP of its controller's
  Service; nothing else can be requested.
- A hostname that is an IPv4 address is refused: the spec says "IPs are not allowed", but the
  CRD's pattern lets a dotted quad through.
- Header names repeated with another spelling (`X-Env` and `x-env`) are refused in a match and
  in a header modifier's set/add/remove: the schema refuses exact repeats only, and the spec
  says a controller ignores the later equivalent entry, which would silently drop a line.
- `allowedRoutes.namespaces.from: Selector` needs a `selector`, and selectors are checked as
  Kubernetes label selectors (the CRD checks only that key and operator are strings).
- A rule's `name` (experimental channel in v1.2) is accepted, checked as a SectionName and
  unique within the route, as the experimental CRD has it.
- The ReplacePrefixMatch rule for backendRef filters applies to every backendRef; upstream's
  `exists_one` skips it when two backendRefs both carry such a filter.

Accepted, checked against the schema, and otherwise ignored: a GatewayClass's `parametersRef`,
a Gateway's `infrastructure`, a listener's tls `options`, a rule's `timeouts`, RequestMirror
and ExtensionRef filters (kept by type alone: lab_kit's controller declines them).
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lab_kit import naming
from lab_kit.errors import ConfigError
from lab_kit.fields import FieldParser
from lab_kit.ingress import _is_ip, _lowercase_fix, _subdomain_problem, _wildcard_problem
from lab_kit.netpol import _LABEL_NAME_RE, _LABEL_VALUE_RE, OPERATORS, LabelSelector, Requirement

GROUP = "gateway.networking.k8s.io"
API_VERSION = f"{GROUP}/v1"

PROTOCOLS = ("HTTP", "HTTPS", "TLS", "TCP", "UDP")
PATH_MATCH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
HEADER_MATCH_TYPES = ("Exact", "RegularExpression")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror",
                "RequestRedirect", "URLRewrite", "ExtensionRef")


# --- GatewayClass -----------------------------------------------------------------------------

@dataclass(frozen=True)
class GatewayClass:
    name: str
    controller_name: str  # e.g. gateway.nginx.org/nginx-gateway-controller
    description: str | None
    labels: dict[str, str]
    spec: dict[str, Any]  # as given (for `get -o yaml`)

    @property
    def key(self) -> str:  # cluster-scoped
        return self.name


# --- Gateway ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SecretRef:
    """A listener's certificateRef (group "" and kind Secret are the only kind supported)."""
    group: str
    kind: str
    name: str
    namespace: str | None  # None: the Gateway's namespace


@dataclass(frozen=True)
class RouteKind:
    group: str  # default gateway.networking.k8s.io
    kind: str


@dataclass(frozen=True)
class Listener:
    name: str  # the section name routes attach to
    hostname: str | None  # None: every host; "*.example.com" matches one or more labels
    port: int
    protocol: str  # one of PROTOCOLS
    tls_mode: str | None  # Terminate or Passthrough (HTTPS/TLS only; default Terminate)
    certificate_refs: tuple[SecretRef, ...]
    allowed_from: str  # All, Same or Selector (default Same)
    allowed_selector: LabelSelector | None  # with `Selector`
    allowed_kinds: tuple[RouteKind, ...]  # empty: the protocol's default kinds


@dataclass(frozen=True)
class Gateway:
    namespace: str
    name: str
    gateway_class: str
    listeners: tuple[Listener, ...]
    labels: dict[str, str]
    spec: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# --- HTTPRoute --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParentRef:
    group: str
    kind: str
    namespace: str  # defaulted to the route's
    name: str
    section_name: str | None
    port: int | None


@dataclass(frozen=True)
class PathMatch:
    type: str  # Exact, PathPrefix or RegularExpression
    value: str


@dataclass(frozen=True)
class ValueMatch:
    """A header or query-parameter match."""
    type: str  # Exact or RegularExpression
    name: str  # as given (header names compare case-insensitively)
    value: str


@dataclass(frozen=True)
class RouteMatch:
    path: PathMatch
    headers: tuple[ValueMatch, ...]
    query_params: tuple[ValueMatch, ...]
    method: str | None


@dataclass(frozen=True)
class HeaderModifier:
    set: tuple[tuple[str, str], ...]  # (name, value)
    add: tuple[tuple[str, str], ...]
    remove: tuple[str, ...]


@dataclass(frozen=True)
class PathModifier:
    type: str  # ReplaceFullPath or ReplacePrefixMatch
    value: str


@dataclass(frozen=True)
class Redirect:
    scheme: str | None  # http or https
    hostname: str | None
    path: PathModifier | None
    port: int | None
    status_code: int  # 301 or 302 (default 302)


@dataclass(frozen=True)
class Rewrite:
    hostname: str | None
    path: PathModifier | None


@dataclass(frozen=True)
class Filter:
    type: str  # one of FILTER_TYPES; only the matching field below is set
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: Redirect | None = None
    url_rewrite: Rewrite | None = None


@dataclass(frozen=True)
class BackendRef:
    group: str  # "" for core
    kind: str  # Service
    name: str
    namespace: str  # defaulted to the route's
    port: int | None
    weight: int  # default 1
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class RouteRule:
    name: str | None
    matches: tuple[RouteMatch, ...]  # never empty after defaulting
    filters: tuple[Filter, ...]
    backend_refs: tuple[BackendRef, ...]


@dataclass(frozen=True)
class HTTPRoute:
    namespace: str
    name: str
    parent_refs: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[RouteRule, ...]
    labels: dict[str, str]
    spec: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# --- parsing and validation (the CRDs' schema and CEL rules) ----------------------------------

# The CRDs' patterns as written upstream (shown in messages), and as Python applies them: the API
# server searches with Go's regexp, whose `$` matches only at the very end of the text.
_DOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
CONTROLLER_NAME_PATTERN = rf"^{_DOMAIN}\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$"
SECTION_NAME_PATTERN = rf"^{_DOMAIN}$"
PRECISE_HOSTNAME_PATTERN = rf"^{_DOMAIN}$"
PROTOCOL_PATTERN = rf"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|{_DOMAIN}\/[A-Za-z0-9]+$"
GROUP_PATTERN = rf"^$|^{_DOMAIN}$"
KIND_PATTERN = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$"
PATH_CHARS_PATTERN = r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$"
DURATION_PATTERN = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"
_INFRA_KEY_PATTERN = (rf"^({_DOMAIN}/)?([A-Za-z0-9][-A-Za-z0-9_.]{{0,61}})?[A-Za-z0-9]$")


def _go_re(pattern: str) -> re.Pattern[str]:
    """`pattern` compiled to search as Go does: `$` (at the end or before `|`) is `\\Z`."""
    body = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
    return re.compile(body.replace("$|", r"\Z|"))


_CONTROLLER_NAME_RE = _go_re(CONTROLLER_NAME_PATTERN)
_SECTION_NAME_RE = _go_re(SECTION_NAME_PATTERN)
_PROTOCOL_RE = _go_re(PROTOCOL_PATTERN)
_GROUP_RE = _go_re(GROUP_PATTERN)
_KIND_RE = _go_re(KIND_PATTERN)
_NAMESPACE_RE = _go_re(NAMESPACE_PATTERN)
_HEADER_NAME_RE = _go_re(HEADER_NAME_PATTERN)
_PATH_CHARS_RE = _go_re(PATH_CHARS_PATTERN)
_DURATION_RE = _go_re(DURATION_PATTERN)
_INFRA_KEY_RE = _go_re(_INFRA_KEY_PATTERN)
_INFRA_LABEL_VALUE_RE = _go_re(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

_PATH_SEQUENCES = ("//", "/./", "/../", "%2f", "%2F", "#")  # refused in Exact and PathPrefix
_PATH_SUFFIXES = ("/..", "/.")
_EXACT_OR_PREFIX = "when type one of ['Exact', 'PathPrefix']"
_FILTER_FIELDS = {"RequestHeaderModifier": "requestHeaderModifier",
                  "ResponseHeaderModifier": "responseHeaderModifier",
                  "RequestMirror": "requestMirror", "RequestRedirect": "requestRedirect",
                  "URLRewrite": "urlRewrite", "ExtensionRef": "extensionRef"}
_FILTER_EXAMPLES = {
    "RequestHeaderModifier": "`requestHeaderModifier: {set: [{name: X-Env, value: lab}]}`",
    "ResponseHeaderModifier": "`responseHeaderModifier: {remove: [Server]}`",
    "RequestMirror": "`requestMirror: {backendRef: {name: shadow, port: 80}}`",
    "RequestRedirect": "`requestRedirect: {scheme: https, statusCode: 301}`",
    "URLRewrite": "`urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}`",
    "ExtensionRef": "`extensionRef: {group: example.com, kind: MyFilter, name: my-filter}`",
}
_ONCE_PER_LIST = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect",
                  "URLRewrite")
_NO_TLS_PROTOCOLS = ("HTTP", "TCP", "UDP")
_NO_HOSTNAME_PROTOCOLS = ("TCP", "UDP")
MAX_ROUTE_MATCHES = 128  # across all the rules of one route
_INGRESS_PATH_TYPES = {  # an Ingress habit, and what Gateway API calls it
    "Prefix": "Gateway API calls it 'PathPrefix' (Ingress's 'Prefix')",
    "ImplementationSpecific": "Gateway API has no ImplementationSpecific: use 'PathPrefix', "
                              "or 'RegularExpression' for a pattern"}
_SPLIT_ROUTE = ", or split the route in two (both can attach to the same Gateway)"
_DEFAULT_MATCH = RouteMatch(PathMatch("PathPrefix", "/"), (), (), None)
_HEADER_NAME_FIX = "a header name is one HTTP token: letters, digits and !#$%&'*+-.^_`|~"


def _json_type(v: Any) -> str:
    """The JSON type the API server names for `v`."""
    for t, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                    (list, "array"), (dict, "object")):
        if isinstance(v, t):
            return name
    return "null" if v is None else type(v).__name__


def _duration_ms(s: str) -> int:
    """A Gateway API Duration (GEP-2257, already matched against DURATION_PATTERN) in ms."""
    unit = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
    return sum(int(n) * unit[u] for n, u in re.findall(r"(\d+)(ms|h|m|s)", s))


class _Parser(FieldParser):
    # --- the OpenAPI schema: types, required fields, lengths, ranges, enums, patterns ---------

    def type_error(self, v: Any, fld: str, want: str, fix: str) -> ConfigError:
        t = _json_type(v)
        return self.fail(f'Invalid value: "{t}": {fld} in body must be of type {want}: "{t}"',
                         fld, fix)

    def struct(self, v: Any, fld: str, fields: tuple[str, ...], what: str) -> dict[str, Any]:
        """`v` as an object holding only `fields` ({} when absent or null)."""
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self.type_error(v, fld, "object", f"write {what} as a mapping of its fields "
                                  f"({', '.join(fields)})")
        for k in v:
            if k not in fields:
                near = difflib.get_close_matches(str(k), fields, n=1)
                fix = (f"did you mean `{near[0]}`?" if near else
                       f"{what} has the fields " + ", ".join(f"`{f}`" for f in fields))
                raise self.fail(f'strict decoding error: unknown field "{fld}.{k}"',
                                f"{fld}.{k}", fix)
        return v

    def items(self, d: Mapping[str, Any], key: str, fld: str, *, max_items: int | None,
              min_items: int = 0, example: str = "", split: str = "") -> list[Any]:
        """`d[key]` as a list ([] when absent or null), within the item counts."""
        f, v = f"{fld}.{key}", d.get(key)
        if v is None:
            v = []
        if not isinstance(v, list):
            raise self.type_error(v, f, "array", f"write `{key}` as a list, one `- ` per item")
        if len(v) < min_items:
            raise self.fail(f"Invalid value: {len(v)}: {f} in body should have at least "
                            f"{min_items} items", f, f"add at least one item{example}")
        if max_items is not None and len(v) > max_items:
            raise self.fail(f"Too many: {len(v)}: must have at most {max_items} items", f,
                            f"drop {len(v) - max_items} of them{split}")
        return v

    def string(self, v: Any, fld: str) -> str:
        if not isinstance(v, str):
            raise self.type_error(v, fld, "string", "put the value in quotes")
        return v

    def text(self, d: Mapping[str, Any], key: str, fld: str, *, required: str | None = None,
             min_len: int = 0, max_len: int | None = None) -> str | None:
        """`d[key]`: a string (None when absent or null; `required` is then the fix)."""
        f, v = f"{fld}.{key}", d.get(key)
        if v is None:
            if required is not None:
                raise self.fail("Required value", f, required)
            return None
        s = self.string(v, f)
        if len(s) < min_len:
            raise self.fail(f"Invalid value: {s!r}: {f} in body should be at least {min_len} "
                            "chars long", f, required or f"give a value, or leave `{key}` out")
        if max_len is not None and len(s) > max_len:
            raise self.fail(f"Too long: may not be more than {max_len} characters", f,
                            f"shorten it ({len(s)} characters) to {max_len} at most")
        return s

    def string_map(self, d: Mapping[str, Any], key: str, fld: str, *, max_items: int,
                   max_value: int) -> dict[str, str]:
        """`d[key]`: a map of strings ({} when absent or null)."""
        f, m = f"{fld}.{key}", d.get(key)
        if m is None:
            return {}
        if not isinstance(m, dict):
            raise self.type_error(m, f, "object", f"write `{key}` as `key: value` lines")
        if len(m) > max_items:
            raise self.fail(f"Too many: {len(m)}: must have at most {max_items} items", f,
                            f"keep at most {max_items} entries")
        for k, v in m.items():
            v = self.string(v, f"{f}[{k}]")
            if len(v) > max_value:
                raise self.fail(f"Too long: may not be more than {max_value} characters",
                                f"{f}[{k}]", f"shorten it ({len(v)} characters)")
        return {str(k): v for k, v in m.items()}

    def pattern(self, s: str, fld: str, rx: re.Pattern[str], shown: str,
                fix: str | None) -> None:
        if not rx.search(s):
            raise self.fail(f"Invalid value: {s!r}: {fld} in body should match '{shown}'", fld,
                            fix)

    def integer(self, d: Mapping[str, Any], key: str, fld: str, *, lo: int, hi: int,
                required: str | None = None) -> int | None:
        f, v = f"{fld}.{key}", d.get(key)
        if v is None:
            if required is not None:
                raise self.fail("Required value", f, required)
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            fix = (f"write `{key}: {v.strip()}`, without quotes"
                   if isinstance(v, str) and v.strip().isdigit() else
                   f"give a whole number from {lo} to {hi}")
            raise self.type_error(v, f, "integer", fix)
        if v < lo:
            raise self.fail(f"Invalid value: {v}: {f} in body should be greater than or equal "
                            f"to {lo}", f, f"give a number from {lo} to {hi}")
        if v > hi:
            raise self.fail(f"Invalid value: {v}: {f} in body should be less than or equal "
                            f"to {hi}", f, f"give a number from {lo} to {hi}")
        return v

    def enum(self, d: Mapping[str, Any], key: str, fld: str, values: tuple[str, ...], *,
             default: str | None = None, required: str | None = None,
             aliases: Mapping[str, str] | None = None) -> str | None:
        f, v = f"{fld}.{key}", d.get(key)
        if v is None:
            if required is not None:
                raise self.fail("Required value", f, required)
            return default
        if v not in values:
            near = [x for x in values if isinstance(v, str) and x.lower() == v.lower()]
            alias = (aliases or {}).get(v) if isinstance(v, str) else None
            raise self.fail(f"Unsupported value: {v!r}: supported values: "
                            + ", ".join(f'"{x}"' for x in values), f,
                            f"did you mean {near[0]!r}? (the value is case-sensitive)" if near
                            else alias or "use one of " + ", ".join(values))
        return str(v)

    # --- names, references, hostnames ---------------------------------------------------------

    def section_name(self, d: Mapping[str, Any], key: str, fld: str, *,
                     required: str | None = None) -> str | None:
        """A SectionName (a listener's or a rule's name, a parentRef's sectionName)."""
        s = self.text(d, key, fld, required=required, min_len=1, max_len=253)
        if s is not None:
            self.pattern(s, f"{fld}.{key}", _SECTION_NAME_RE, SECTION_NAME_PATTERN,
                         _lowercase_fix(s, bool(_SECTION_NAME_RE.search(s.lower())))
                         or "lowercase letters, digits, '-' and '.', starting and ending with a "
                         "letter or digit (e.g. 'https-shop')")
        return s

    def group(self, d: Mapping[str, Any], fld: str, default: str) -> str:
        g = self.text(d, "group", fld, max_len=253)
        if g is None:
            return default
        self.pattern(g, f"{fld}.group", _GROUP_RE, GROUP_PATTERN,
                     f"an API group is a DNS subdomain (e.g. {GROUP!r}), or \"\" for the core "
                     "group (Services, Secrets)")
        return g

    def kind(self, d: Mapping[str, Any], fld: str, default: str | None, *,
             required: str | None = None) -> str:
        k = self.text(d, "kind", fld, required=required, min_len=1, max_len=63)
        if k is None:
            assert default is not None
            return default
        self.pattern(k, f"{fld}.kind", _KIND_RE, KIND_PATTERN,
                     "a kind is a CamelCase type name such as 'Service' or 'HTTPRoute'")
        return k

    def ref_name(self, d: Mapping[str, Any], fld: str, what: str) -> str:
        name = self.text(d, "name", fld, required=f"name {what}", min_len=1, max_len=253)
        assert name is not None
        return name

    def namespace(self, d: Mapping[str, Any], fld: str) -> str | None:
        ns = self.text(d, "namespace", fld, min_len=1, max_len=63)
        if ns is not None:
            self.pattern(ns, f"{fld}.namespace", _NAMESPACE_RE, NAMESPACE_PATTERN,
                         _lowercase_fix(ns, bool(_NAMESPACE_RE.search(ns.lower())))
                         or "a namespace name is a DNS label: lowercase letters, digits and '-'")
        return ns

    def hostname(self, v: Any, fld: str, *, wildcard: bool) -> str:
        """A Hostname (`wildcard`: `*.example.com` allowed) or a PreciseHostname."""
        h = self.string(v, fld)
        if not h:
            raise self.fail(f"Invalid value: '': {fld} in body should be at least 1 chars long",
                            fld, "give a DNS name, or leave the field out")
        if _is_ip(h):
            raise self.fail(f"Invalid value: {h!r}: must be a DNS name, not an IP address "
                            "(IPs are not allowed)", fld,
                            "Gateway API matches the request's host name: give a DNS name, "
                            "or leave the hostname out to match every host")
        if "*" in h and not wildcard:
            raise self.fail(f"Invalid value: {h!r}: {fld} in body should match "
                            f"'{PRECISE_HOSTNAME_PATTERN}'", fld,
                            "a wildcard is not allowed here: give one precise host name "
                            "(e.g. 'www.example.com')")
        if "*" in h:
            problem = _wildcard_problem(h)
            fix = _lowercase_fix(h, _wildcard_problem(h.lower()) is None) or (
                "a wildcard may only be the whole first label, as in '*.example.com'; it "
                "matches one or more labels")
        else:
            problem = _subdomain_problem(h)
            fix = _lowercase_fix(h, _subdomain_problem(h.lower()) is None) or (
                "a host name carries no port: drop the ':…' part" if ":" in h else
                "lowercase letters, digits, '-' and '.' (e.g. 'shop.example.com')")
        if problem:
            raise self.fail(f"Invalid value: {h!r}: {problem}", fld, fix)
        return h

    def header_name(self, d: Mapping[str, Any], fld: str, what: str = "header") -> str:
        """A header's (or a query parameter's) name: an HTTP token."""
        name = self.text(d, "name", fld, required=f"name the {what} (e.g. `name: "
                         f"{'X-Env' if what == 'header' else 'debug'}`)", min_len=1, max_len=256)
        assert name is not None
        fix = (f"a {what} name carries no ':' or '=' and no value: put the value under `value`"
               if ":" in name or "=" in name else
               f"{what} names have no spaces: join the words with '-' or '_'"
               if " " in name else _HEADER_NAME_FIX.replace("a header", f"a {what}"))
        self.pattern(name, f"{fld}.name", _HEADER_NAME_RE, HEADER_NAME_PATTERN, fix)
        return name

    def unique_header(self, seen: dict[str, tuple[int, str]], name: str, j: int, fld: str,
                      listed: str) -> None:
        """Header names repeat case-insensitively ("X-Env" is "x-env")."""
        first = seen.setdefault(name.lower(), (j, name))
        if first[0] != j:
            same = ("" if first[1] == name else
                    f" (header names are case-insensitive: {first[1]!r} is the same header)")
            raise self.fail(f"Duplicate value: {name!r}{same}", fld,
                            f"{listed}[{first[0]}] already names this header: keep one entry")

    # --- GatewayClass and Gateway --------------------------------------------------------------

    def parameters_ref(self, v: Any, fld: str, *, namespaced: bool) -> None:
        """A parametersRef: checked, then ignored (lab_kit's controller takes no parameters)."""
        fields = ("group", "kind", "name") + (("namespace",) if namespaced else ())
        d = self.struct(v, fld, fields, "a parametersRef")
        if d.get("group") is None:
            raise self.fail("Required value", f"{fld}.group",
                            "give the parameters object's API group (\"\" for a ConfigMap)")
        self.group(d, fld, "")
        self.kind(d, fld, None, required="give the parameters object's kind (e.g. ConfigMap)")
        self.ref_name(d, fld, "the parameters object")
        if namespaced:
            self.namespace(d, fld)

    def label_key(self, k: str, fld: str) -> None:
        prefix, slash, name = k.rpartition("/")
        if not _LABEL_NAME_RE.match(name) or (
                slash and (len(prefix) > 253 or not naming.DNS_SUBDOMAIN_RE.match(prefix))):
            raise self.fail(f"Invalid value: {k!r}: a label key is an optional DNS-subdomain "
                            "prefix and '/', then a name of at most 63 characters: "
                            "alphanumerics, '-', '_' or '.', starting and ending with an "
                            "alphanumeric", fld, "e.g. 'team' or 'example.com/team'")

    def label_value(self, v: str, fld: str) -> None:
        if not _LABEL_VALUE_RE.match(v):
            raise self.fail(f"Invalid value: {v!r}: a label value is empty or at most 63 "
                            "characters: alphanumerics, '-', '_' or '.', starting and ending "
                            "with an alphanumeric", fld, "e.g. 'shop' or 'v1.2'")

    def label_selector(self, v: Any, fld: str) -> LabelSelector:
        """A metav1.LabelSelector, checked as Kubernetes checks label selectors."""
        d = self.struct(v, fld, ("matchLabels", "matchExpressions"), "a label selector")
        labels: dict[str, str] = {}
        ml = d.get("matchLabels")
        if ml is not None and not isinstance(ml, dict):
            raise self.type_error(ml, f"{fld}.matchLabels", "object",
                                  "write `matchLabels` as `key: value` lines")
        for k, val in (ml or {}).items():
            k = str(k)
            self.label_key(k, f"{fld}.matchLabels")
            val = self.string(val, f"{fld}.matchLabels[{k}]")
            self.label_value(val, f"{fld}.matchLabels[{k}]")
            labels[k] = val
        exprs = []
        for i, e in enumerate(self.items(d, "matchExpressions", fld, max_items=None)):
            ef = f"{fld}.matchExpressions[{i}]"
            e = self.struct(e, ef, ("key", "operator", "values"), "a selector requirement")
            key = self.text(e, "key", ef, required="name the label key the requirement tests")
            assert key is not None
            self.label_key(key, f"{ef}.key")
            op = self.text(e, "operator", ef, required="use one of " + ", ".join(OPERATORS))
            if op not in OPERATORS:
                raise self.fail(f"Unsupported value: {op!r}: supported values: "
                                + ", ".join(f'"{o}"' for o in OPERATORS), f"{ef}.operator",
                                "use one of " + ", ".join(OPERATORS) + " (case-sensitive)")
            vals = [self.string(x, f"{ef}.values[{j}]")
                    for j, x in enumerate(self.items(e, "values", ef, max_items=None))]
            if op in ("In", "NotIn") and not vals:
                raise self.fail("Required value: must be specified when `operator` is 'In' or "
                                "'NotIn'", f"{ef}.values", "list the label values to test for")
            if op in ("Exists", "DoesNotExist") and vals:
                raise self.fail("Forbidden: may not be specified when `operator` is 'Exists' "
                                "or 'DoesNotExist'", f"{ef}.values",
                                f"drop `values`: {op} tests the key alone")
            for j, x in enumerate(vals):
                self.label_value(x, f"{ef}.values[{j}]")
            exprs.append(Requirement(key, op, tuple(vals)))
        return LabelSelector(tuple(sorted(labels.items())), tuple(exprs))

    def route_kind(self, v: Any, fld: str) -> RouteKind:
        d = self.struct(v, fld, ("group", "kind"), "a route kind")
        group = self.group(d, fld, GROUP)
        kind = self.kind(d, fld, None, required="name the route kind (e.g. `kind: HTTPRoute`)")
        return RouteKind(group, kind)

    def allowed_routes(self, v: Any, fld: str
                       ) -> tuple[str, LabelSelector | None, tuple[RouteKind, ...]]:
        d = self.struct(v, fld, ("namespaces", "kinds"), "allowedRoutes")
        nf = f"{fld}.namespaces"
        ns = self.struct(d.get("namespaces"), nf, ("from", "selector"), "allowedRoutes.namespaces")
        frm = self.enum(ns, "from", nf, ("All", "Selector", "Same"), default="Same")
        assert frm is not None
        selector = (None if ns.get("selector") is None
                    else self.label_selector(ns["selector"], f"{nf}.selector"))
        if frm == "Selector" and selector is None:
            raise self.fail("Required value: selector must be specified when `from` is "
                            "Selector", f"{nf}.selector",
                            "add `selector: {matchLabels: {shared-gateway-access: \"true\"}}` "
                            "(the labels of the namespaces allowed), or use `from: All`")
        kinds = tuple(self.route_kind(k, f"{fld}.kinds[{i}]")
                      for i, k in enumerate(self.items(d, "kinds", fld, max_items=8)))
        return frm, selector if frm == "Selector" else None, kinds

    def certificate_ref(self, v: Any, fld: str) -> SecretRef:
        d = self.struct(v, fld, ("group", "kind", "name", "namespace"), "a certificateRef")
        return SecretRef(group=self.group(d, fld, ""), kind=self.kind(d, fld, "Secret"),
                         name=self.ref_name(d, fld, "the kubernetes.io/tls Secret"),
                         namespace=self.namespace(d, fld))

    def tls(self, v: Any, fld: str) -> tuple[str, tuple[SecretRef, ...], int]:
        """A listener's tls: (mode, certificateRefs, the number of options)."""
        d = self.struct(v, fld, ("mode", "certificateRefs", "options"), "a listener's tls")
        mode = self.enum(d, "mode", fld, ("Terminate", "Passthrough"), default="Terminate")
        assert mode is not None
        refs = tuple(self.certificate_ref(r, f"{fld}.certificateRefs[{i}]")
                     for i, r in enumerate(self.items(d, "certificateRefs", fld, max_items=64)))
        options = self.string_map(d, "options", fld, max_items=16, max_value=4096)
        return mode, refs, len(options)

    def listener(self, v: Any, fld: str) -> tuple[Listener, bool, int]:
        """One listener, its schema only: (the listener, whether `tls` is given, #options)."""
        d = self.struct(v, fld, ("name", "hostname", "port", "protocol", "tls", "allowedRoutes"),
                        "a listener")
        name = self.section_name(d, "name", fld, required="name the listener (e.g. `name: "
                                 "http`): routes attach to it by `sectionName`")
        assert name is not None
        hostname = (None if d.get("hostname") is None
                    else self.hostname(d["hostname"], f"{fld}.hostname", wildcard=True))
        port = self.integer(d, "port", fld, lo=1, hi=65535,
                            required="give the port the Gateway listens on (e.g. `port: 80`)")
        assert port is not None
        protocol = self.text(d, "protocol", fld, required="give one of " + ", ".join(PROTOCOLS),
                             min_len=1, max_len=255)
        assert protocol is not None
        near = [x for x in PROTOCOLS if x.lower() == protocol.lower()]
        self.pattern(protocol, f"{fld}.protocol", _PROTOCOL_RE, PROTOCOL_PATTERN,
                     f"did you mean {near[0]!r}?" if near else
                     "use one of " + ", ".join(PROTOCOLS) + ", or a domain-prefixed protocol "
                     "('example.com/proto')")
        tls_given = d.get("tls") is not None
        mode, refs, n_options = (self.tls(d["tls"], f"{fld}.tls") if tls_given
                                 else (None, (), 0))
        allowed_from, selector, kinds = self.allowed_routes(d.get("allowedRoutes"),
                                                            f"{fld}.allowedRoutes")
        return (Listener(name=name, hostname=hostname, port=port, protocol=protocol,
                         tls_mode=mode, certificate_refs=refs, allowed_from=allowed_from,
                         allowed_selector=selector, allowed_kinds=kinds),
                tls_given, n_options)

    def listener_rules(self, parsed: list[tuple[Listener, bool, int]]) -> None:
        """The CEL rules across the listeners (and the tls object's), first problem first."""
        for i, (ln, tls_given, _) in enumerate(parsed):
            if ln.protocol in _NO_TLS_PROTOCOLS and tls_given:
                raise self.fail("tls must not be specified for protocols ['HTTP', 'TCP', "
                                "'UDP']", f"spec.listeners[{i}].tls",
                                f"drop `tls` from this {ln.protocol} listener, or make it "
                                "`protocol: HTTPS` (TLS ends at the Gateway) or `protocol: TLS`")
        for i, (ln, tls_given, _) in enumerate(parsed):
            if ln.protocol == "HTTPS" and tls_given and ln.tls_mode != "Terminate":
                raise self.fail("tls mode must be Terminate for protocol HTTPS",
                                f"spec.listeners[{i}].tls.mode",
                                "an HTTPS listener decrypts the traffic itself: use `mode: "
                                "Terminate`, or `protocol: TLS` to pass TLS through untouched")
        for i, (ln, tls_given, n_options) in enumerate(parsed):
            if (tls_given and ln.tls_mode == "Terminate" and not ln.certificate_refs
                    and not n_options):
                raise self.fail("certificateRefs or options must be specified when mode is "
                                "Terminate", f"spec.listeners[{i}].tls.certificateRefs",
                                "add `certificateRefs: [{name: <a kubernetes.io/tls Secret>}]`"
                                " (`kubectl create secret tls NAME --cert=FILE --key=FILE`)")
        for i, (ln, _, _) in enumerate(parsed):
            if ln.protocol in _NO_HOSTNAME_PROTOCOLS and ln.hostname is not None:
                raise self.fail("hostname must not be specified for protocols ['TCP', 'UDP']",
                                f"spec.listeners[{i}].hostname",
                                f"{ln.protocol} carries no host name to match: drop `hostname`")
        names: dict[str, int] = {}
        for i, (ln, _, _) in enumerate(parsed):
            first = names.setdefault(ln.name, i)
            if first != i:
                raise self.fail("Listener name must be unique within the Gateway",
                                f"spec.listeners[{i}].name",
                                f"listeners[{first}] is already named {ln.name!r}: give each "
                                "listener its own name")
        combos: dict[tuple[int, str, str | None], int] = {}
        for i, (ln, _, _) in enumerate(parsed):
            first = combos.setdefault((ln.port, ln.protocol, ln.hostname), i)
            if first != i:
                raise self.fail("Combination of port, protocol and hostname must be unique for "
                                "each listener", f"spec.listeners[{i}]",
                                f"listeners[{first}] already serves {ln.protocol} on port "
                                f"{ln.port} for {ln.hostname or 'every host'}: give this one "
                                "another hostname or port, or drop it")

    def infrastructure(self, v: Any, fld: str) -> None:
        """spec.infrastructure: checked, then ignored (lab_kit provisions nothing per Gateway)."""
        d = self.struct(v, fld, ("labels", "annotations", "parametersRef"), "infrastructure")
        for key, max_value in (("labels", 63), ("annotations", 4096)):
            m = self.string_map(d, key, fld, max_items=8, max_value=max_value)
            for k, val in m.items():
                if not _INFRA_KEY_RE.search(k):
                    raise self.fail(f"{key[:-1].capitalize()} keys must be in the form of an "
                                    "optional DNS subdomain prefix followed by a required name "
                                    "segment of up to 63 characters.", f"{fld}.{key}[{k}]",
                                    "e.g. 'team' or 'example.com/team'")
                if key == "labels" and not _INFRA_LABEL_VALUE_RE.search(val):
                    raise self.fail(f"Invalid value: {val!r}: a label value must be empty or "
                                    "alphanumerics, '-', '_' or '.', starting and ending with "
                                    "an alphanumeric", f"{fld}.{key}[{k}]", "e.g. 'shop'")
        if d.get("parametersRef") is not None:
            self.parameters_ref(d["parametersRef"], f"{fld}.parametersRef", namespaced=False)

    # --- HTTPRoute -----------------------------------------------------------------------------

    def parent_ref(self, v: Any, fld: str, route_ns: str) -> ParentRef:
        d = self.struct(v, fld, ("group", "kind", "namespace", "name", "sectionName", "port"),
                        "a parentRef")
        group = self.group(d, fld, GROUP)
        kind = self.kind(d, fld, "Gateway")
        ns = self.namespace(d, fld)
        name = self.ref_name(d, fld, "the Gateway the route attaches to")
        section = self.section_name(d, "sectionName", fld)
        port = self.integer(d, "port", fld, lo=1, hi=65535)
        return ParentRef(group=group, kind=kind, namespace=ns or route_ns, name=name,
                         section_name=section, port=port)

    def parent_rules(self, refs: list[ParentRef], given: list[dict[str, Any]]) -> None:
        """The CEL rules on parentRefs. They compare namespaces as written, not defaulted."""
        def parent(i: int) -> tuple[str, str, str, str]:
            r = refs[i]
            return r.group, r.kind, r.name, given[i].get("namespace") or ""

        for j in range(len(refs)):
            for i in range(j):
                if parent(i) == parent(j) and ((refs[i].section_name is None)
                                               != (refs[j].section_name is None)):
                    raise self.fail("sectionName must be specified when parentRefs includes 2 "
                                    "or more references to the same parent",
                                    f"spec.parentRefs[{j}].sectionName",
                                    f"parentRefs[{i}] names the same {refs[j].kind}: give both "
                                    "a `sectionName` (a listener each), or keep one of them")
        for j in range(len(refs)):
            for i in range(j):
                if parent(i) == parent(j) and refs[i].section_name == refs[j].section_name:
                    where = "" if refs[j].section_name is None else ".sectionName"
                    raise self.fail("sectionName must be unique when parentRefs includes 2 or "
                                    "more references to the same parent",
                                    f"spec.parentRefs[{j}]{where}",
                                    f"parentRefs[{i}] already attaches to this "
                                    f"{'listener' if where else refs[j].kind}: drop one")

    def path_match(self, v: Any, fld: str) -> PathMatch:
        d = self.struct(v, fld, ("type", "value"), "a path match")
        typ = self.enum(d, "type", fld, PATH_MATCH_TYPES, default="PathPrefix",
                        aliases=_INGRESS_PATH_TYPES)
        value = self.text(d, "value", fld, max_len=1024)
        assert typ is not None
        value = "/" if value is None else value
        vf = f"{fld}.value"
        if typ in ("Exact", "PathPrefix"):
            if not value.startswith("/"):
                raise self.fail(f"Invalid value: {value!r}: value must be an absolute path and "
                                f"start with '/' {_EXACT_OR_PREFIX}", vf,
                                f"write {'/' + value!r}")
            for seq in _PATH_SEQUENCES:
                if seq in value:
                    fix = ("an encoded '/' is not allowed: write the path as the client sends "
                           "it, decoded" if seq.lower() == "%2f" else
                           "a fragment ('#…') never reaches the server: drop it" if seq == "#"
                           else f"{typ} paths are matched as written: give the normalised path")
                    raise self.fail(f"Invalid value: {value!r}: must not contain '{seq}' "
                                    f"{_EXACT_OR_PREFIX}", vf, fix)
            for suffix in _PATH_SUFFIXES:
                if value.endswith(suffix):
                    raise self.fail(f"Invalid value: {value!r}: must not end with '{suffix}' "
                                    f"{_EXACT_OR_PREFIX}", vf,
                                    f"{typ} paths are matched as written: give the normalised "
                                    "path")
            if not _PATH_CHARS_RE.search(value):
                raise self.fail(f"Invalid value: {value!r}: must only contain valid characters "
                                f"(matching {PATH_CHARS_PATTERN}) for types ['Exact', "
                                "'PathPrefix']", vf,
                                "percent-encode other characters (a space is '%20'), or use "
                                "`type: RegularExpression`")
        return PathMatch(typ, value)

    def value_match(self, v: Any, fld: str, *, what: str, max_value: int) -> ValueMatch:
        d = self.struct(v, fld, ("type", "name", "value"), f"a {what} match")
        typ = self.enum(d, "type", fld, HEADER_MATCH_TYPES, default="Exact")
        name = self.header_name(d, fld, what)
        value = self.text(d, "value", fld, required="give the value to match", min_len=1,
                          max_len=max_value)
        assert typ is not None and value is not None
        return ValueMatch(typ, name, value)

    def route_match(self, v: Any, fld: str) -> RouteMatch:
        d = self.struct(v, fld, ("path", "headers", "queryParams", "method"), "a match")
        path = (_DEFAULT_MATCH.path if d.get("path") is None
                else self.path_match(d["path"], f"{fld}.path"))
        headers: list[ValueMatch] = []
        seen: dict[str, tuple[int, str]] = {}
        for j, h in enumerate(self.items(d, "headers", fld, max_items=16)):
            headers.append(self.value_match(h, f"{fld}.headers[{j}]", what="header",
                                            max_value=4096))
            self.unique_header(seen, headers[-1].name, j, f"{fld}.headers[{j}].name", "headers")
        params: list[ValueMatch] = []
        names: dict[str, int] = {}
        for j, q in enumerate(self.items(d, "queryParams", fld, max_items=16)):
            params.append(self.value_match(q, f"{fld}.queryParams[{j}]",
                                           what="query parameter", max_value=1024))
            first = names.setdefault(params[-1].name, j)
            if first != j:
                raise self.fail(f"Duplicate value: {params[-1].name!r}",
                                f"{fld}.queryParams[{j}].name",
                                f"queryParams[{first}] already matches this parameter (names "
                                "are case-sensitive): keep one entry")
        method = self.enum(d, "method", fld, METHODS)
        return RouteMatch(path, tuple(headers), tuple(params), method)

    def header_modifier(self, v: Any, fld: str) -> HeaderModifier:
        d = self.struct(v, fld, ("set", "add", "remove"), "a header modifier")
        lists: dict[str, tuple[tuple[str, str], ...]] = {}
        for key in ("set", "add"):
            out: list[tuple[str, str]] = []
            seen: dict[str, tuple[int, str]] = {}
            for j, h in enumerate(self.items(d, key, fld, max_items=16)):
                hf = f"{fld}.{key}[{j}]"
                h = self.struct(h, hf, ("name", "value"), "a header")
                name = self.header_name(h, hf)
                value = self.text(h, "value", hf, required="give the header's value",
                                  min_len=1, max_len=4096)
                assert value is not None
                self.unique_header(seen, name, j, f"{hf}.name", key)
                out.append((name, value))
            lists[key] = tuple(out)
        remove: list[str] = []
        seen = {}
        for j, name in enumerate(self.items(d, "remove", fld, max_items=16)):
            remove.append(self.string(name, f"{fld}.remove[{j}]"))
            self.unique_header(seen, remove[-1], j, f"{fld}.remove[{j}]", "remove")
        return HeaderModifier(lists["set"], lists["add"], tuple(remove))

    def path_modifier(self, v: Any, fld: str) -> PathModifier:
        d = self.struct(v, fld, ("type", "replaceFullPath", "replacePrefixMatch"),
                        "a path modifier")
        kinds = ("ReplaceFullPath", "ReplacePrefixMatch")
        typ = self.enum(d, "type", fld, kinds, required="use `type: ReplaceFullPath` (the whole "
                        "path) or `type: ReplacePrefixMatch` (the matched prefix)")
        values = {k: self.text(d, k[0].lower() + k[1:], fld, max_len=1024) for k in kinds}
        assert typ is not None
        own = typ[0].lower() + typ[1:]
        if values[typ] is None:
            other = [k[0].lower() + k[1:] for k in kinds if k != typ and values[k] is not None]
            raise self.fail(f"{own} must be specified when type is set to '{typ}'",
                            f"{fld}.{own}", f"add `{own}: /new`"
                            + (f" (the value goes under `{own}`, not `{other[0]}`)"
                               if other else ""))
        for k in kinds:
            field = k[0].lower() + k[1:]
            if k != typ and values[k] is not None:
                raise self.fail(f"type must be '{k}' when {field} is set", f"{fld}.{field}",
                                f"with `type: {typ}` give only `{own}`: drop `{field}`")
        value = values[typ]
        assert value is not None
        return PathModifier(typ, value)

    def redirect(self, v: Any, fld: str) -> Redirect:
        d = self.struct(v, fld, ("scheme", "hostname", "path", "port", "statusCode"),
                        "a requestRedirect")
        scheme = self.enum(d, "scheme", fld, ("http", "https"))
        hostname = (None if d.get("hostname") is None
                    else self.hostname(d["hostname"], f"{fld}.hostname", wildcard=False))
        path = None if d.get("path") is None else self.path_modifier(d["path"], f"{fld}.path")
        port = self.integer(d, "port", fld, lo=1, hi=65535)
        status = d.get("statusCode")
        if status is None:
            status = 302
        elif isinstance(status, bool) or not isinstance(status, int):
            raise self.type_error(status, f"{fld}.statusCode", "integer",
                                  "write `statusCode: 301` or `statusCode: 302`, unquoted")
        elif status not in (301, 302):
            raise self.fail(f'Unsupported value: {status}: supported values: "301", "302"',
                            f"{fld}.statusCode", "use 301 (moved permanently) or 302 (found, "
                            "the default); the standard channel has no other codes")
        return Redirect(scheme, hostname, path, port, status)

    def rewrite(self, v: Any, fld: str) -> Rewrite:
        d = self.struct(v, fld, ("hostname", "path"), "a urlRewrite")
        hostname = (None if d.get("hostname") is None
                    else self.hostname(d["hostname"], f"{fld}.hostname", wildcard=False))
        path = None if d.get("path") is None else self.path_modifier(d["path"], f"{fld}.path")
        return Rewrite(hostname, path)

    def object_ref(self, v: Any, fld: str) -> None:
        """An extensionRef (group, kind and name, all required): checked, then dropped."""
        d = self.struct(v, fld, ("group", "kind", "name"), "an extensionRef")
        if d.get("group") is None:
            raise self.fail("Required value", f"{fld}.group",
                            "give the extension's API group (e.g. `group: example.com`)")
        self.group(d, fld, "")
        self.kind(d, fld, None, required="give the extension resource's kind")
        self.ref_name(d, fld, "the extension resource")

    def mirror(self, v: Any, fld: str) -> None:
        """A requestMirror: its backendRef is checked, then dropped."""
        d = self.struct(v, fld, ("backendRef",), "a requestMirror")
        bf = f"{fld}.backendRef"
        if d.get("backendRef") is None:
            raise self.fail("Required value", bf, "add `backendRef: {name: shadow, port: 80}`: "
                            "the Service that gets a copy of each request")
        b = self.struct(d["backendRef"], bf, ("group", "kind", "name", "namespace", "port"),
                        "a backendRef")
        group, kind = self.group(b, bf, ""), self.kind(b, bf, "Service")
        self.ref_name(b, bf, "the Service")
        self.namespace(b, bf)
        port = self.integer(b, "port", bf, lo=1, hi=65535)
        if group == "" and kind == "Service" and port is None:
            raise self.fail("Must have port for Service reference", f"{bf}.port",
                            "add the Service's port (e.g. `port: 80`)")

    def filter(self, v: Any, fld: str) -> Filter:
        d = self.struct(v, fld, ("type", *_FILTER_FIELDS.values()), "a filter")
        typ = self.enum(d, "type", fld, FILTER_TYPES,
                        required="give the filter's type, one of " + ", ".join(FILTER_TYPES))
        assert typ is not None
        own = _FILTER_FIELDS[typ]
        if d.get(own) is None:
            raise self.fail(f"filter.{own} must be specified for {typ} filter.type",
                            f"{fld}.{own}", f"add {_FILTER_EXAMPLES[typ]}")
        for t, f in _FILTER_FIELDS.items():
            if t != typ and d.get(f) is not None:
                raise self.fail(f"filter.{f} must be nil if the filter.type is not {t}",
                                f"{fld}.{f}", f"a {typ} filter carries only `{own}`: drop "
                                f"`{f}`, or give it a filter of its own with `type: {t}`")
        sub = f"{fld}.{own}"
        if typ == "RequestHeaderModifier":
            return Filter(typ, request_header_modifier=self.header_modifier(d[own], sub))
        if typ == "ResponseHeaderModifier":
            return Filter(typ, response_header_modifier=self.header_modifier(d[own], sub))
        if typ == "RequestRedirect":
            return Filter(typ, request_redirect=self.redirect(d[own], sub))
        if typ == "URLRewrite":
            return Filter(typ, url_rewrite=self.rewrite(d[own], sub))
        if typ == "RequestMirror":
            self.mirror(d[own], sub)
        else:
            self.object_ref(d[own], sub)
        return Filter(typ)  # kept by type alone: lab_kit's controller declines these

    def filters(self, d: Mapping[str, Any], fld: str) -> tuple[Filter, ...]:
        """A filter list, then its CEL rules."""
        out = tuple(self.filter(f, f"{fld}.filters[{k}]")
                    for k, f in enumerate(self.items(d, "filters", fld, max_items=16)))
        where: dict[str, list[int]] = {}
        for k, f in enumerate(out):
            where.setdefault(f.type, []).append(k)
        if "RequestRedirect" in where and "URLRewrite" in where:
            k = max(where["RequestRedirect"][0], where["URLRewrite"][0])
            raise self.fail("May specify either httpRouteFilterRequestRedirect or "
                            "httpRouteFilterRequestRewrite, but not both", f"{fld}.filters[{k}]",
                            "a redirect answers the client, a rewrite changes the request the "
                            "backend gets: keep one (a redirect goes in a rule of its own)")
        for t in _ONCE_PER_LIST:
            if len(where.get(t, ())) > 1:
                first, k = where[t][0], where[t][1]
                raise self.fail(f"{t} filter cannot be repeated", f"{fld}.filters[{k}]",
                                f"merge it into filters[{first}]")
        return out

    def backend_ref(self, v: Any, fld: str, route_ns: str) -> BackendRef:
        d = self.struct(v, fld, ("group", "kind", "name", "namespace", "port", "weight",
                                 "filters"), "a backendRef")
        group, kind = self.group(d, fld, ""), self.kind(d, fld, "Service")
        name = self.ref_name(d, fld, "the Service that gets the traffic")
        ns = self.namespace(d, fld)
        port = self.integer(d, "port", fld, lo=1, hi=65535)
        weight = self.integer(d, "weight", fld, lo=0, hi=1_000_000)
        if group == "" and kind == "Service" and port is None:
            raise self.fail("Must have port for Service reference", f"{fld}.port",
                            "add the Service's port (e.g. `port: 80`): a backendRef has no "
                            "default port")
        return BackendRef(group=group, kind=kind, name=name, namespace=ns or route_ns,
                          port=port, weight=1 if weight is None else weight,
                          filters=self.filters(d, fld))

    def timeouts(self, v: Any, fld: str) -> None:
        """A rule's timeouts: checked, then ignored (the dataclasses carry none)."""
        d = self.struct(v, fld, ("request", "backendRequest"), "timeouts")
        ms: dict[str, int] = {}
        for key in ("request", "backendRequest"):
            s = self.text(d, key, fld)
            if s is not None:
                self.pattern(s, f"{fld}.{key}", _DURATION_RE, DURATION_PATTERN,
                             "write a Gateway API duration: whole numbers with h, m, s or ms, "
                             "e.g. '10s' or '1m30s' (no decimals, no spaces)")
                ms[key] = _duration_ms(s)
        if ms.get("request") and ms.get("backendRequest", 0) > ms["request"]:
            raise self.fail("backendRequest timeout cannot be longer than request timeout",
                            f"{fld}.backendRequest",
                            "the request timeout covers the whole request, retries included: "
                            "make backendRequest shorter, or raise request")

    def rule(self, v: Any, fld: str, route_ns: str) -> tuple[RouteRule, int]:
        """One rule, and its match count as the CEL rules see it (a missing `matches` is one
        default match, an explicit `[]` none)."""
        d = self.struct(v, fld, ("name", "matches", "filters", "backendRefs", "timeouts"),
                        "a rule")
        name = self.section_name(d, "name", fld)
        matches = tuple(self.route_match(m, f"{fld}.matches[{k}]")
                        for k, m in enumerate(self.items(d, "matches", fld, max_items=64,
                                                         split=_SPLIT_ROUTE)))
        if d.get("matches") is None:  # the CRD's default (an explicit [] stays empty)
            matches = (_DEFAULT_MATCH,)
        n_matches = len(matches)
        filters = self.filters(d, fld)
        backends = tuple(self.backend_ref(b, f"{fld}.backendRefs[{j}]", route_ns)
                         for j, b in enumerate(self.items(d, "backendRefs", fld,
                                                          max_items=16)))
        if d.get("timeouts") is not None:
            self.timeouts(d["timeouts"], f"{fld}.timeouts")
        if backends and any(f.type == "RequestRedirect" for f in filters):
            raise self.fail("RequestRedirect filter must not be used together with backendRefs",
                            fld, "a redirect answers the client itself and forwards nothing: "
                            "drop `backendRefs`, or move the redirect to a rule of its own")
        if not (n_matches == 1 and matches[0].path.type == "PathPrefix"):
            for lead, fs in [("", filters)] + [("Within backendRefs, ", b.filters)
                                               for b in backends]:
                for f in fs:
                    mod = f.request_redirect or f.url_rewrite
                    if mod is not None and mod.path and mod.path.type == "ReplacePrefixMatch":
                        # upstream's four messages, capitals as written
                        when = "When" if not lead or f.type == "URLRewrite" else "when"
                        raise self.fail(
                            f"{lead}{when} using {f.type} filter with path.replacePrefixMatch, "
                            "exactly one PathPrefix match must be specified", f"{fld}.matches",
                            "ReplacePrefixMatch replaces the prefix the rule matched: give the "
                            "rule exactly one match, `path: {type: PathPrefix, value: /old}` "
                            f"(it has {n_matches} match{'es' if n_matches != 1 else ''}"
                            + (f", of type {matches[0].path.type}" if n_matches == 1 else "")
                            + ")")
        return RouteRule(name, matches or (_DEFAULT_MATCH,), filters, backends), n_matches


def _spec(p: _Parser, spec: Any, fields: tuple[str, ...], what: str) -> dict[str, Any]:
    if spec is None:
        raise p.fail("Required value", "spec", f"give {what} a `spec`")
    return p.struct(spec, "spec", fields, f"{what}'s spec")


# --- GatewayClass -----------------------------------------------------------------------------

def parse_gateway_class(name: str, labels: Mapping[str, str], spec: Any, *,
                        file: str = "<object>") -> GatewayClass:
    """A GatewayClass from its `spec`, validated as the API server does with the CRD."""
    p = _Parser(file, f"GatewayClass/{name}")
    d = _spec(p, spec, ("controllerName", "description", "parametersRef"), "a GatewayClass")
    ctrl = p.text(d, "controllerName", "spec", min_len=1, max_len=253,
                  required="name the controller that manages the class, e.g. "
                  "`controllerName: gateway.nginx.org/nginx-gateway-controller`")
    assert ctrl is not None
    p.pattern(ctrl, "spec.controllerName", _CONTROLLER_NAME_RE, CONTROLLER_NAME_PATTERN,
              _lowercase_fix(ctrl, bool(_CONTROLLER_NAME_RE.search(ctrl.lower())))
              or "a controller name is a domain, '/', then a path, e.g. "
              "'gateway.nginx.org/nginx-gateway-controller'")
    description = p.text(d, "description", "spec", max_len=64)
    if d.get("parametersRef") is not None:
        p.parameters_ref(d["parametersRef"], "spec.parametersRef", namespaced=True)
    return GatewayClass(name=name, controller_name=ctrl, description=description,
                        labels=dict(labels), spec=copy.deepcopy(spec))


def gateway_class_to_json(o: GatewayClass) -> dict[str, Any]:
    return {"name": o.name, "labels": dict(o.labels), "spec": copy.deepcopy(o.spec)}


def gateway_class_from_json(d: Mapping[str, Any]) -> GatewayClass:
    return parse_gateway_class(d["name"], d.get("labels") or {}, d["spec"], file="<state>")


# --- Gateway ----------------------------------------------------------------------------------

def parse_gateway(namespace: str, name: str, labels: Mapping[str, str], spec: Any, *,
                  file: str = "<object>") -> Gateway:
    """A Gateway from its `spec`, validated as the API server does with the CRD, and with
    lab_kit's one refusal: `spec.addresses`."""
    p = _Parser(file, f"Gateway/{namespace}/{name}")
    d = _spec(p, spec, ("gatewayClassName", "listeners", "addresses", "infrastructure"),
              "a Gateway")
    cls = p.text(d, "gatewayClassName", "spec", min_len=1, max_len=253,
                 required="name the GatewayClass (`kubectl get gatewayclass` lists them)")
    assert cls is not None
    if d.get("listeners") is None:
        raise p.fail("Required value", "spec.listeners",
                     "add a listener: `listeners: [{name: http, port: 80, protocol: HTTP}]`")
    given = p.items(d, "listeners", "spec", min_items=1, max_items=64,
                    example=": `{name: http, port: 80, protocol: HTTP}`",
                    split=", or split them across two Gateways")
    parsed = [p.listener(ln, f"spec.listeners[{i}]") for i, ln in enumerate(given)]
    p.listener_rules(parsed)
    addresses = d.get("addresses")
    if addresses is not None and addresses != []:
        raise p.fail("`addresses` cannot be requested in lab_kit: a Gateway gets the "
                     "load-balancer IP of its controller's Service", "spec.addresses",
                     "drop `addresses`; `kubectl get gateway` shows the address the Gateway "
                     "got (status.addresses)")
    if d.get("infrastructure") is not None:
        p.infrastructure(d["infrastructure"], "spec.infrastructure")
    return Gateway(namespace=namespace, name=name, gateway_class=cls,
                   listeners=tuple(ln for ln, _, _ in parsed), labels=dict(labels),
                   spec=copy.deepcopy(spec))


def gateway_to_json(o: Gateway) -> dict[str, Any]:
    return {"namespace": o.namespace, "name": o.name, "labels": dict(o.labels),
            "spec": copy.deepcopy(o.spec)}


def gateway_from_json(d: Mapping[str, Any]) -> Gateway:
    return parse_gateway(d["namespace"], d["name"], d.get("labels") or {}, d["spec"],
                         file="<state>")


# --- HTTPRoute --------------------------------------------------------------------------------

def parse_httproute(namespace: str, name: str, labels: Mapping[str, str], spec: Any, *,
                    file: str = "<object>") -> HTTPRoute:
    """An HTTPRoute from its `spec`, validated as the API server does with the CRD."""
    p = _Parser(file, f"HTTPRoute/{namespace}/{name}")
    d = _spec(p, spec, ("parentRefs", "hostnames", "rules"), "an HTTPRoute")
    given_refs = p.items(d, "parentRefs", "spec", max_items=32)
    refs = [p.parent_ref(r, f"spec.parentRefs[{i}]", namespace)
            for i, r in enumerate(given_refs)]
    p.parent_rules(refs, given_refs)
    hostnames = tuple(p.hostname(h, f"spec.hostnames[{i}]", wildcard=True)
                      for i, h in enumerate(p.items(d, "hostnames", "spec", max_items=16,
                                                    split=_SPLIT_ROUTE)))
    if d.get("rules") is None:  # the CRD's default: one rule matching every request
        rules: tuple[RouteRule, ...] = (RouteRule(None, (_DEFAULT_MATCH,), (), ()),)
    else:
        parsed = [p.rule(r, f"spec.rules[{i}]", namespace)
                  for i, r in enumerate(p.items(d, "rules", "spec", max_items=16,
                                                split=_SPLIT_ROUTE))]
        names: dict[str, int] = {}
        for i, (r, _) in enumerate(parsed):
            first = names.setdefault(r.name, i) if r.name is not None else i
            if first != i:
                raise p.fail("Rule name must be unique within the route",
                             f"spec.rules[{i}].name",
                             f"rules[{first}] is already named {r.name!r}: rename one")
        total = sum(n for _, n in parsed)
        if total > MAX_ROUTE_MATCHES:
            raise p.fail("While 16 rules and 64 matches per rule are allowed, the total number "
                         "of matches across all rules in a route must be less than 128",
                         "spec.rules", f"the rules have {total} matches: split the route in "
                         "two (both can attach to the same Gateway)")
        rules = tuple(r for r, _ in parsed)
    return HTTPRoute(namespace=namespace, name=name,
                     parent_refs=tuple(refs), hostnames=hostnames, rules=rules,
                     labels=dict(labels), spec=copy.deepcopy(spec))


def httproute_to_json(o: HTTPRoute) -> dict[str, Any]:
    return {"namespace": o.namespace, "name": o.name, "labels": dict(o.labels),
            "spec": copy.deepcopy(o.spec)}


def httproute_from_json(d: Mapping[str, Any]) -> HTTPRoute:
    return parse_httproute(d["namespace"], d["name"], d.get("labels") or {}, d["spec"],
                           file="<state>")


# --- ReferenceGrant (gateway.networking.k8s.io/v1beta1) -----------------------------------------

BETA_API_VERSION = f"{GROUP}/v1beta1"


@dataclass(frozen=True)
class GrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True)
class GrantTo:
    group: str
    kind: str
    name: str | None  # None: every object of that kind in the grant's namespace


@dataclass(frozen=True)
class ReferenceGrant:
    """Lets objects of the `from` kinds in the `from` namespaces refer to objects of the `to`
    kinds in the grant's own namespace: the owner of the target opts in."""

    namespace: str
    name: str
    from_: tuple[GrantFrom, ...]
    to: tuple[GrantTo, ...]
    labels: dict[str, str]
    spec: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_reference_grant(namespace: str, name: str, labels: Mapping[str, str], spec: Any, *,
                          file: str = "<object>") -> ReferenceGrant:
    """A ReferenceGrant from its `spec`, validated as the API server does with the CRD."""
    p = _Parser(file, f"ReferenceGrant/{namespace}/{name}")
    d = _spec(p, spec, ("from", "to"), "a ReferenceGrant")
    froms = []
    for i, v in enumerate(p.items(d, "from", "spec", min_items=1, max_items=16,
                                  example=" (`- group: gateway.networking.k8s.io`, `kind: "
                                  "HTTPRoute`, `namespace: ...`)")):
        fld = f"spec.from[{i}]"
        e = p.struct(v, fld, ("group", "kind", "namespace"), "a `from` entry")
        if e.get("group") is None:
            raise p.fail("Required value", f"{fld}.group",
                         f'the group of the referring kind: "{GROUP}" for HTTPRoute or '
                         'Gateway')
        group = p.group(e, fld, "")
        kind = p.kind(e, fld, None, required="the referring kind, e.g. `kind: HTTPRoute`")
        ns = p.namespace(e, fld)
        if ns is None:
            raise p.fail("Required value", f"{fld}.namespace",
                         "the namespace the referring objects live in")
        froms.append(GrantFrom(group, kind, ns))
    tos = []
    for i, v in enumerate(p.items(d, "to", "spec", min_items=1, max_items=16,
                                  example=' (`- group: ""`, `kind: Service`)')):
        fld = f"spec.to[{i}]"
        e = p.struct(v, fld, ("group", "kind", "name"), "a `to` entry")
        if e.get("group") is None:
            raise p.fail("Required value", f"{fld}.group",
                         'the group of the target kind: "" (the core group) for Service or '
                         "Secret")
        group = p.group(e, fld, "")
        kind = p.kind(e, fld, None, required="the target kind, e.g. `kind: Service`")
        target = p.text(e, "name", fld, min_len=1, max_len=253)
        tos.append(GrantTo(group, kind, target))
    return ReferenceGrant(namespace, name, tuple(froms), tuple(tos), dict(labels),
                          copy.deepcopy(spec))


def reference_grant_to_json(o: ReferenceGrant) -> dict[str, Any]:
    return {"namespace": o.namespace, "name": o.name, "labels": dict(o.labels),
            "spec": copy.deepcopy(o.spec)}


def reference_grant_from_json(d: Mapping[str, Any]) -> ReferenceGrant:
    return parse_reference_grant(d["namespace"], d["name"], d.get("labels") or {}, d["spec"],
                                 file="<state>")


def permitted(grants: Iterable[ReferenceGrant], frm: tuple[str, str, str],
              to: tuple[str, str, str, str]) -> bool:
    """Whether an object of (group, kind, namespace) `frm` may refer to (group, kind,
    namespace, name) `to`: always within one namespace, across namespaces only when a
    ReferenceGrant in the target's namespace allows it."""
    fg, fk, fns = frm
    tg, tk, tns, tname = to
    if fns == tns:
        return True
    return any(g.namespace == tns
               and any((f.group, f.kind, f.namespace) == (fg, fk, fns) for f in g.from_)
               and any((t.group, t.kind) == (tg, tk) and t.name in (None, tname) for t in g.to)
               for g in grants)
