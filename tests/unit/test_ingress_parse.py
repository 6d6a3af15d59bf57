"""Ingress and Secret parsing: what the API server accepts, what it refuses, and where it points.

Each refused case checks the exact field path the error names (lab_kit's notation of upstream's
`field.Path`) and a recognisable part of upstream's wording. Nothing here needs root.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from lab_kit.errors import ConfigError
from lab_kit.ingress import (
    INGRESS_CLASS_ANNOTATION,
    PATH_TYPES,
    HTTPPath,
    Ingress,
    IngressRule,
    IngressTLS,
    Secret,
    ServiceBackend,
    ingress_from_json,
    ingress_to_json,
    parse_ingress,
    parse_secret,
    secret_from_json,
    secret_to_json,
)


def svc(name: str = "web", number: int | None = 80, port_name: str | None = None
        ) -> dict[str, Any]:
    port: dict[str, Any] = {"name": port_name} if port_name is not None else {"number": number}
    return {"service": {"name": name, "port": port}}


def path(p: str = "/", pt: str = "Prefix", backend: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    return {"path": p, "pathType": pt, "backend": backend or svc()}


def one_rule(**path_kw: Any) -> dict[str, Any]:
    return {"rules": [{"host": "a.example.com", "http": {"paths": [path(**path_kw)]}}]}


FULL: dict[str, Any] = {
    "ingressClassName": "nginx",
    "defaultBackend": svc("fallback", 8080),
    "tls": [{"hosts": ["*.example.com", "shop.example.com"], "secretName": "wild-tls"},
            {"hosts": ["api.example.org"]}],
    "rules": [
        {"host": "shop.example.com", "http": {"paths": [
            path("/", "Prefix", svc("shop", port_name="http")),
            path("/cart", "Exact", svc("cart", 8080)),
        ]}},
        {"host": "*.example.com", "http": {"paths": [
            path("", "ImplementationSpecific", svc("shop", port_name="http")),
        ]}},
        {"http": {"paths": [path("/api", "Prefix", svc("api", 443))]}},
    ],
}


def parse(spec: Any, annotations: dict[str, str] | None = None) -> Ingress:
    return parse_ingress("shop", "front", {"app": "front"}, annotations or {}, spec,
                         file="ing.yaml")


def refused(spec: Any, annotations: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        parse(spec, annotations)
    assert ei.value.obj == "Ingress/shop/front" and ei.value.file == "ing.yaml"
    return ei.value


# --- a valid Ingress --------------------------------------------------------------------------

def test_full_ingress_parses_into_the_dataclasses() -> None:
    ing = parse(FULL)
    assert ing.key == "shop/front"
    assert ing.ingress_class == "nginx"
    assert ing.default_backend == ServiceBackend("fallback", port_number=8080)
    assert ing.tls == (IngressTLS(("*.example.com", "shop.example.com"), "wild-tls"),
                       IngressTLS(("api.example.org",), None))
    shop = ServiceBackend("shop", port_name="http")
    assert ing.rules == (
        IngressRule("shop.example.com", (HTTPPath("/", "Prefix", shop),
                                         HTTPPath("/cart", "Exact",
                                                  ServiceBackend("cart", 8080)))),
        IngressRule("*.example.com", (HTTPPath("", "ImplementationSpecific", shop),)),
        IngressRule(None, (HTTPPath("/api", "Prefix", ServiceBackend("api", 443)),)),
    )
    assert ing.labels == {"app": "front"} and ing.annotations == {}
    assert ing.spec == FULL and ing.spec is not FULL
    assert {p.path_type for r in ing.rules for p in r.paths} == set(PATH_TYPES)


def test_backends_are_in_order_and_deduplicated() -> None:
    assert [b.describe() for b in parse(FULL).backends()] == [
        "fallback:8080", "shop:http", "cart:8080", "api:443"]


def test_service_backend_port_and_describe() -> None:
    assert ServiceBackend("web", port_number=80).port == 80
    assert ServiceBackend("web", port_name="http").port == "http"
    assert ServiceBackend("web", port_number=80).describe() == "web:80"
    assert ServiceBackend("web", port_name="http").describe() == "web:http"


def test_round_trip_through_json() -> None:
    ing = parse(FULL, {INGRESS_CLASS_ANNOTATION: "nginx", "note": "x"})
    again = ingress_from_json(ingress_to_json(ing))
    assert again == ing
    assert again.backends() == ing.backends()


def test_default_backend_alone_is_enough() -> None:
    ing = parse({"defaultBackend": svc()})
    assert ing.rules == () and ing.tls == () and ing.ingress_class is None
    assert ing.backends() == [ServiceBackend("web", 80)]


def test_rule_without_http_is_allowed() -> None:
    ing = parse({"rules": [{"host": "a.example.com"}]})
    assert ing.rules == (IngressRule("a.example.com", ()),)


def test_legacy_annotation_gives_the_class() -> None:
    assert parse(one_rule(), {INGRESS_CLASS_ANNOTATION: "nginx"}).ingress_class == "nginx"


def test_annotation_equal_to_class_name_is_fine() -> None:
    spec = dict(one_rule(), ingressClassName="nginx")
    assert parse(spec, {INGRESS_CLASS_ANNOTATION: "nginx"}).ingress_class == "nginx"


@pytest.mark.parametrize("p", ["/", "/a/b/", "/a.b", "/a/..b", "/.well-known/x", "/a%2Bb"])
def test_good_prefix_paths(p: str) -> None:
    assert parse(one_rule(p=p)).rules[0].paths[0].path == p


@pytest.mark.parametrize("host", ["a.example.com", "*.example.com", "*.com", "localhost",
                                  "999.1.1.1"])
def test_good_hosts(host: str) -> None:
    spec = {"rules": [{"host": host, "http": {"paths": [path()]}}]}
    assert parse(spec).rules[0].host == host


# --- refused: the spec as a whole -------------------------------------------------------------

def test_spec_must_be_a_mapping() -> None:
    e = refused(["rules"])
    assert e.field == "spec" and "mapping" in e.reason


@pytest.mark.parametrize("spec", [{}, {"rules": []}, {"tls": [{"hosts": ["a.b"]}]}])
def test_needs_default_backend_or_rules(spec: dict[str, Any]) -> None:
    e = refused(spec)
    assert e.field == "spec"
    assert "either `defaultBackend` or `rules` must be specified" in e.reason


# --- refused: backends ------------------------------------------------------------------------

def test_resource_backend_is_not_supported() -> None:
    e = refused({"defaultBackend": {"resource": {"apiGroup": "k8s.example.com",
                                                 "kind": "StorageBucket", "name": "static"}}})
    assert e.field == "spec.defaultBackend.resource"
    assert "not supported in lab_kit" in e.reason and e.fix and "Service" in e.fix


def test_resource_and_service_together() -> None:
    e = refused(one_rule(backend=dict(svc(), resource={"kind": "X", "name": "y"})))
    assert e.field == "spec.rules[0].http.paths[0].backend"
    assert "cannot set both resource and service backends" in e.reason


def test_empty_backend() -> None:
    e = refused({"defaultBackend": {}})
    assert e.field == "spec.defaultBackend"
    assert "resource or service backend is required" in e.reason


def test_service_name_required() -> None:
    e = refused(one_rule(backend={"service": {"port": {"number": 80}}}))
    assert e.field == "spec.rules[0].http.paths[0].backend.service.name"
    assert e.reason.startswith("Required value")


@pytest.mark.parametrize("name", ["Web", "1web", "web-", "web.svc", "w" * 64])
def test_service_name_is_a_dns1035_label(name: str) -> None:
    e = refused(one_rule(backend=svc(name)))
    assert e.field == "spec.rules[0].http.paths[0].backend.service.name"
    assert repr(name) in e.reason
    assert "DNS-1035" in e.reason or "no more than 63" in e.reason


def test_service_name_uppercase_suggests_lowercase() -> None:
    e = refused(one_rule(backend=svc("Web")))
    assert e.fix and "'web'" in e.fix


@pytest.mark.parametrize("number", [65536, -1])
def test_port_number_range(number: int) -> None:
    spec = {"rules": [{"http": {"paths": [path()]}},
                      {"http": {"paths": [path(backend=svc(number=number))]}}]}
    e = refused(spec)
    assert e.field == "spec.rules[1].http.paths[0].backend.service.port.number"
    assert "must be between 1 and 65535, inclusive" in e.reason


def test_port_number_as_a_string() -> None:
    e = refused(one_rule(backend={"service": {"name": "web", "port": {"number": "80"}}}))
    assert e.field == "spec.rules[0].http.paths[0].backend.service.port.number"
    assert e.fix and "number: 80" in e.fix


@pytest.mark.parametrize("pname,msg", [
    ("http--alt", "consecutive hyphens"),
    ("8080", "at least one letter"),
    ("HTTP", "alpha-numeric"),
    ("a-very-long-port-name", "no more than 15"),
    ("-http", "begin or end with a hyphen"),
])
def test_port_name_is_an_iana_svc_name(pname: str, msg: str) -> None:
    e = refused({"defaultBackend": svc(port_name=pname)})
    assert e.field == "spec.defaultBackend.service.port.name"
    assert msg in e.reason


def test_port_name_and_number_together() -> None:
    e = refused({"defaultBackend": {"service": {"name": "web",
                                                "port": {"number": 80, "name": "http"}}}})
    assert e.field == "spec.defaultBackend"  # upstream reports it on the backend
    assert "cannot set both port name & port number" in e.reason


@pytest.mark.parametrize("port", [None, {}, {"number": 0}, {"name": ""}])
def test_port_required(port: Any) -> None:
    service: dict[str, Any] = {"name": "web"}
    if port is not None:
        service["port"] = port
    e = refused({"defaultBackend": {"service": service}})
    assert e.field == "spec.defaultBackend"
    assert "port name or number is required" in e.reason


# --- refused: hosts ---------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["10.0.0.1", "010.0.0.1", "::1", "2001:db8::1"])
def test_rule_host_is_not_an_ip(host: str) -> None:
    e = refused({"rules": [{"host": "ok.example.com"}, {"host": host}]})
    assert e.field == "spec.rules[1].host"
    assert "must be a DNS name, not an IP address" in e.reason


@pytest.mark.parametrize("host,msg", [
    ("Shop.example.com", "RFC 1123 subdomain"),
    ("shop.example.com:8080", "RFC 1123 subdomain"),
    ("-shop.example.com", "RFC 1123 subdomain"),
    ("a" * 254, "no more than 253"),
    ("*", "wildcard DNS-1123 subdomain"),
    ("*.*.example.com", "wildcard DNS-1123 subdomain"),
    ("foo.*.example.com", "wildcard DNS-1123 subdomain"),
    ("*shop.example.com", "wildcard DNS-1123 subdomain"),
])
def test_rule_host_syntax(host: str, msg: str) -> None:
    e = refused({"rules": [{"host": host, "http": {"paths": [path()]}}]})
    assert e.field == "spec.rules[0].host" and msg in e.reason


def test_rule_host_uppercase_suggests_lowercase() -> None:
    e = refused({"rules": [{"host": "Shop.Example.com"}]})
    assert e.fix and "'shop.example.com'" in e.fix


# --- refused: paths ---------------------------------------------------------------------------

def test_http_paths_must_not_be_empty() -> None:
    for http in ({}, {"paths": []}):
        e = refused({"rules": [{"host": "a.example.com", "http": http}]})
        assert e.field == "spec.rules[0].http.paths"
        assert e.reason.startswith("Required value")


def test_path_type_required() -> None:
    spec = one_rule()
    del spec["rules"][0]["http"]["paths"][0]["pathType"]
    e = refused(spec)
    assert e.field == "spec.rules[0].http.paths[0].pathType"
    assert "pathType must be specified" in e.reason


def test_path_type_unsupported() -> None:
    e = refused(one_rule(pt="prefix"))
    assert e.field == "spec.rules[0].http.paths[0].pathType"
    assert "Unsupported value: 'prefix'" in e.reason and e.fix and "'Prefix'" in e.fix
    e = refused(one_rule(pt="Regex"))
    assert e.fix and '"Exact", "ImplementationSpecific", "Prefix"' in e.fix


@pytest.mark.parametrize("pt", ["Exact", "Prefix"])
@pytest.mark.parametrize("p,msg", [
    ("", "must be an absolute path"),
    ("api", "must be an absolute path"),
    ("/a//b", "must not contain '//'"),
    ("/a/./b", "must not contain '/./'"),
    ("/a/../b", "must not contain '/../'"),
    ("/a%2fb", "must not contain '%2f'"),
    ("/a%2Fb", "must not contain '%2F'"),
    ("/a/..", "cannot end with '/..'"),
    ("/a/.", "cannot end with '/.'"),
])
def test_exact_and_prefix_path_rules(pt: str, p: str, msg: str) -> None:
    e = refused(one_rule(p=p, pt=pt))
    assert e.field == "spec.rules[0].http.paths[0].path" and msg in e.reason


def test_implementation_specific_path() -> None:
    ok = parse(one_rule(p="/a//b", pt="ImplementationSpecific"))  # not checked beyond "/"
    assert ok.rules[0].paths[0].path == "/a//b"
    e = refused(one_rule(p="api", pt="ImplementationSpecific"))
    assert e.field == "spec.rules[0].http.paths[0].path"
    assert "must be an absolute path" in e.reason and e.fix and "'/api'" in e.fix


# --- refused: tls and class -------------------------------------------------------------------

def test_tls_host_syntax() -> None:
    spec = dict(one_rule(), tls=[{"hosts": ["a.example.com"]},
                                 {"hosts": ["ok.example.com", "*.*.example.com"]}])
    e = refused(spec)
    assert e.field == "spec.tls[1].hosts[1]" and "wildcard DNS-1123 subdomain" in e.reason
    spec["tls"][1]["hosts"][1] = "Bad_Host"
    assert refused(spec).field == "spec.tls[1].hosts[1]"


def test_tls_secret_name_is_a_subdomain() -> None:
    e = refused(dict(one_rule(), tls=[{"hosts": ["a.example.com"], "secretName": "My_Cert"}]))
    assert e.field == "spec.tls[0].secretName" and "RFC 1123 subdomain" in e.reason


def test_ingress_class_name_is_a_subdomain() -> None:
    e = refused(dict(one_rule(), ingressClassName="Nginx Public"))
    assert e.field == "spec.ingressClassName" and "RFC 1123 subdomain" in e.reason


def test_annotation_must_match_class_name() -> None:
    e = refused(dict(one_rule(), ingressClassName="nginx"), {INGRESS_CLASS_ANNOTATION: "traefik"})
    assert e.field == f"metadata.annotations[{INGRESS_CLASS_ANNOTATION}]"
    assert "must match `ingressClassName` when both are specified" in e.reason
    assert "'traefik'" in e.reason


def test_first_error_in_upstream_order() -> None:
    spec = copy.deepcopy(FULL)
    spec["defaultBackend"] = svc("Bad")
    spec["rules"][0]["host"] = "10.0.0.1"
    assert refused(spec).field == "spec.defaultBackend.service.name"


def test_error_text_names_file_object_and_field() -> None:
    text = str(refused(one_rule(pt="Regex")))
    assert text.startswith("ing.yaml, `Ingress/shop/front`, field "
                           "`spec.rules[0].http.paths[0].pathType`: Unsupported value")


# --- Secret -----------------------------------------------------------------------------------

def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def secret(doc: dict[str, Any]) -> Secret:
    return parse_secret("shop", "cert", {"app": "front"}, doc, file="sec.yaml")


def secret_refused(doc: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        secret(doc)
    assert ei.value.obj == "Secret/shop/cert" and ei.value.file == "sec.yaml"
    return ei.value


def test_secret_opaque_by_default() -> None:
    s = secret({"data": {"a": b64(b"\x00\xff")}})
    assert s.type == "Opaque" and s.data == {"a": b"\x00\xff"} and s.key == "shop/cert"
    assert s.labels == {"app": "front"}
    assert secret({}).data == {}


def test_secret_string_data_merges_over_data() -> None:
    s = secret({"data": {"user": b64(b"old"), "keep": b64(b"k")},
                "stringData": {"user": "new", "extra": "é"}})
    assert s.data == {"user": b"new", "keep": b"k", "extra": "é".encode()}


def test_secret_base64_with_line_breaks_is_accepted() -> None:
    enc = b64(b"x" * 100)
    s = secret({"data": {"blob": enc[:40] + "\n" + enc[40:] + "\n"}})
    assert s.data["blob"] == b"x" * 100


@pytest.mark.parametrize("bad", ["not base64!", "YWJj=", "YWJjZA"])
def test_secret_bad_base64(bad: str) -> None:
    e = secret_refused({"type": "kubernetes.io/tls",
                        "data": {"tls.crt": bad, "tls.key": b64(b"k")}})
    assert e.field == "data[tls.crt]" and "base64" in e.reason
    assert e.fix and "stringData" in e.fix


@pytest.mark.parametrize("missing", ["tls.crt", "tls.key"])
def test_tls_secret_needs_both_keys(missing: str) -> None:
    data = {"tls.crt": b64(b"cert"), "tls.key": b64(b"key")}
    del data[missing]
    e = secret_refused({"type": "kubernetes.io/tls", "data": data})
    assert e.field == f"data[{missing}]" and e.reason == "Required value"


def test_tls_secret_pem_is_not_checked() -> None:
    s = secret({"type": "kubernetes.io/tls", "stringData": {"tls.crt": "junk", "tls.key": ""}})
    assert s.type == "kubernetes.io/tls" and s.data == {"tls.crt": b"junk", "tls.key": b""}


@pytest.mark.parametrize("key,msg", [
    ("a/b", "valid config key"),
    ("with space", "valid config key"),
    (".", "must not be '.'"),
    ("..", "must not be '..'"),
    ("..data", "must not start with '..'"),
    ("k" * 254, "no more than 253"),
])
def test_secret_key_names(key: str, msg: str) -> None:
    e = secret_refused({"data": {key: b64(b"v")}})
    assert e.field == f"data[{key}]" and msg in e.reason


def test_secret_key_name_in_string_data() -> None:
    e = secret_refused({"stringData": {"a/b": "v"}})
    assert e.field == "stringData[a/b]"


def test_secret_good_key_names() -> None:
    keys = ["tls.crt", ".hidden", "KEY_NAME", "key-name", "a..b"]
    assert sorted(secret({"stringData": dict.fromkeys(keys, "v")}).data) == sorted(keys)


def test_secret_size_limit() -> None:
    assert secret({"stringData": {"a": "x" * (1024 * 1024)}}).data["a"]
    e = secret_refused({"stringData": {"a": "x" * (1024 * 1024), "b": "y"}})
    assert e.field == "data" and "1048576 bytes" in e.reason


def test_secret_string_data_value_must_be_text() -> None:
    e = secret_refused({"stringData": {"port": 80}})
    assert e.field == "stringData[port]"


def test_other_secret_types() -> None:
    assert secret_refused({"type": "kubernetes.io/basic-auth"}).field == "data[username]"
    assert secret({"type": "kubernetes.io/basic-auth", "stringData": {"password": ""}})
    assert secret_refused({"type": "kubernetes.io/ssh-auth",
                           "stringData": {"ssh-privatekey": ""}}).field == "data[ssh-privatekey]"
    e = secret_refused({"type": "kubernetes.io/dockerconfigjson",
                        "stringData": {".dockerconfigjson": "[]"}})
    assert e.field == "data[.dockerconfigjson]"
    assert secret({"type": "example.com/custom"}).type == "example.com/custom"


def test_secret_round_trip_through_json() -> None:
    s = secret({"type": "kubernetes.io/tls",
                "data": {"tls.crt": b64(b"\x00cert"), "tls.key": b64(b"key")},
                "stringData": {"ca.crt": "ca"}})
    d = secret_to_json(s)
    assert d["data"]["tls.crt"] == b64(b"\x00cert") and d["type"] == "kubernetes.io/tls"
    assert secret_from_json(d) == s
