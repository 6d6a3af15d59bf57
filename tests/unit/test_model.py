"""Manifests -> model objects: parsing, the Kubernetes schema, lab_kit's own rules, naming."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab_kit import model
from lab_kit.errors import ConfigError
from lab_kit.model import Deployment, Namespace, Pod, load_manifests

SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
POD_NAME_RE = re.compile(rf"^web-{SAFE}{{10}}-{SAFE}{{5}}$")


def pod_doc(name: str = "p", ns: str | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    spec.setdefault("containers", [{"name": "c", "image": "agnhost"}])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def deploy_doc(name: str = "web", replicas: int = 3, labels: dict[str, str] | None = None,
               selector: dict[str, str] | None = None, args: list[str] | None = None,
               ns: str | None = None) -> dict[str, Any]:
    labels = {"app": name} if labels is None else labels
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": replicas,
                     "selector": {"matchLabels": labels if selector is None else selector},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{
                                      "name": "agnhost", "image": "agnhost",
                                      "args": args or ["netexec", "--http-port=8080"]}]}}}}


def one(source: Any) -> Any:
    objs = load_manifests(source)
    assert len(objs) == 1
    return objs[0][0]


def error_of(source: Any) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load_manifests(source)
    return ei.value


# --- parsing -------------------------------------------------------------------------------

def test_pod_fields() -> None:
    p = one(pod_doc("web", ns="shop", nodeName="lab-worker", containers=[
        {"name": "c", "image": "agnhost", "args": ["netexec"],
         "ports": [{"containerPort": 8080, "name": "http"},
                   {"containerPort": 53, "protocol": "UDP"}]}]))
    assert isinstance(p, Pod)
    assert (p.namespace, p.name, p.key, p.node_name, p.owner) == (
        "shop", "web", "shop/web", "lab-worker", None)
    (c,) = p.containers
    assert c.ports == (model.ContainerPort(8080, "TCP", "http"),
                       model.ContainerPort(53, "UDP", None))
    assert c.args == ("netexec",)
    assert p.serve_ports() == ([8080], [53])


def test_pod_defaults_to_namespace_default() -> None:
    assert one(pod_doc("p")).namespace == "default"


def test_namespace_gets_metadata_name_label() -> None:
    ns = one({"apiVersion": "v1", "kind": "Namespace",
              "metadata": {"name": "shop", "labels": {"team": "a"}}})
    assert ns == Namespace("shop", {"team": "a", "kubernetes.io/metadata.name": "shop"})


def test_multi_document_yaml_and_list() -> None:
    text = yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        None,
        {"apiVersion": "v1", "kind": "List",
         "items": [pod_doc("a", ns="shop"), pod_doc("b", ns="shop")]},
        deploy_doc("web", ns="shop"),
    ])
    objs = load_manifests(text)
    assert [type(o).__name__ + "/" + o.key for o, _ in objs] == [
        "Namespace/shop", "Pod/shop/a", "Pod/shop/b", "Deployment/shop/web"]
    # items of a List carry the List's document number
    assert [s.index for _, s in objs] == [0, 2, 2, 3]
    assert {s.file for _, s in objs} == {"<string>"}


def test_file_source_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump(pod_doc("p")))
    ((p, src),) = load_manifests(f)
    assert src.file == str(f)
    ((_, src2),) = load_manifests(str(f))
    assert src2.file == str(f)


def test_missing_file_names_it(tmp_path: Path) -> None:
    e = error_of(tmp_path / "nope.yaml")
    assert e.file == str(tmp_path / "nope.yaml")


def test_dict_and_list_sources() -> None:
    assert one(pod_doc("p")).name == "p"
    assert [o.name for o, _ in load_manifests([pod_doc("a"), pod_doc("b")])] == ["a", "b"]


def test_deployment_fields() -> None:
    d = one(deploy_doc("web", replicas=4))
    assert isinstance(d, Deployment)
    assert (d.key, d.replicas, d.selector) == ("default/web", 4, {"app": "web"})
    assert d.template.labels == {"app": "web"}


def test_deployment_replicas_default_to_one() -> None:
    doc = deploy_doc()
    del doc["spec"]["replicas"]
    assert one(doc).replicas == 1


# --- deployment pod names ----------------------------------------------------------------------

def test_deployment_pod_names_look_like_a_replicaset() -> None:
    d = one(deploy_doc("web", replicas=6))
    pods = [d.pod(i) for i in range(6)]
    names = [p.name for p in pods]
    for n in names:
        assert POD_NAME_RE.match(n), n
    assert len(set(names)) == 6
    h = d.template_hash
    assert len(h) == 10
    assert {n.split("-")[1] for n in names} == {h}
    for p in pods:
        assert p.labels == {"app": "web", "pod-template-hash": h}
        assert p.owner == "Deployment/web"
        assert p.namespace == "default"


def test_deployment_pod_names_are_stable() -> None:
    a = one(deploy_doc("web", replicas=3))
    b = one(yaml.safe_dump(deploy_doc("web", replicas=5)))  # parsed again, from text
    assert [a.pod(i).name for i in range(3)] == [b.pod(i).name for i in range(3)]
    # golden values: a change here renames every learner's pods
    assert a.template_hash == model.naming.safe_encode(
        json.dumps([a.template.spec_dict(), a.template.labels], sort_keys=True), 10)


def test_template_change_changes_hash_but_replicas_do_not() -> None:
    base = one(deploy_doc("web", replicas=2)).template_hash
    assert one(deploy_doc("web", replicas=7)).template_hash == base
    assert one(deploy_doc("web", args=["netexec", "--http-port=9090"])).template_hash != base
    assert one(deploy_doc("web", labels={"app": "web", "v": "2"},
                          selector={"app": "web"})).template_hash != base


def test_same_template_other_deployment_other_names() -> None:
    a = one(deploy_doc("web", labels={"app": "x"}))
    b = one(deploy_doc("web", labels={"app": "x"}, ns="other"))
    assert a.template_hash == b.template_hash
    assert a.pod(0).name != b.pod(0).name  # the suffix hashes the deployment's key too


# --- agnhost args ------------------------------------------------------------------------------

def test_netexec_args_become_served_ports() -> None:
    p = one(pod_doc(containers=[{"name": "c", "image": "agnhost",
                                 "args": ["netexec", "--http-port=8080", "--udp-port=8081"]}]))
    assert p.serve_ports() == ([8080], [8081])


def test_netexec_ports_merge_with_declared_ports() -> None:
    p = one(pod_doc(containers=[
        {"name": "a", "image": "agnhost", "args": ["netexec", "--http-port=8080"],
         "ports": [{"containerPort": 8080}]},
        {"name": "b", "image": "agnhost", "args": ["netexec", "--http-port=9090",
                                                   "--udp-port=9090"],
         "ports": [{"containerPort": 7000, "protocol": "UDP"}]}]))
    assert p.serve_ports() == ([8080, 9090], [7000, 9090])


def test_args_of_other_commands_are_not_ports() -> None:
    p = one(pod_doc(containers=[{"name": "c", "image": "busybox",
                                 "args": ["serve", "--http-port=8080"]}]))
    assert p.serve_ports() == ([], [])
    p = one(pod_doc(containers=[{"name": "c", "image": "agnhost",
                                 "args": ["netexec", "--http-port=eighty"]}]))
    assert p.serve_ports() == ([], [])


# --- errors ------------------------------------------------------------------------------------

def test_schema_error_names_field_path() -> None:
    doc = pod_doc(containers=[{"name": "c", "image": "x",
                               "ports": [{"containerPort": "eighty"}]}])
    e = error_of(doc)
    assert e.field == "spec.containers[0].ports[0].containerPort"
    assert e.obj == "Pod/p"
    assert "schema" in e.reason
    assert "field `spec.containers[0].ports[0].containerPort`" in str(e)


def test_schema_error_inside_a_deployment_template() -> None:
    doc = deploy_doc()
    doc["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "x"}]
    e = error_of(doc)
    assert e.field == "spec.template.spec.containers[0].ports[0].containerPort"
    assert e.obj == "Deployment/web"


def test_schema_rejects_unknown_fields() -> None:
    doc = pod_doc(containers=[{"name": "c", "image": "x", "portz": []}])
    e = error_of(doc)
    assert e.field == "spec.containers[0]"
    assert "portz" in e.reason


def test_schema_requires_containers() -> None:
    doc = pod_doc()
    doc["spec"] = {}
    e = error_of(doc)
    assert e.field == "spec"
    assert "containers" in e.reason


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: v1\nkind: Pod\nmetadata:\n  name: [p\nspec: {}\n")
    e = error_of(f)
    assert e.file == str(f)
    assert "invalid YAML" in e.reason
    assert re.search(r"line \d+", e.reason)
    assert str(f) in str(e)


def test_invalid_yaml_line_number_is_the_offending_line() -> None:
    e = error_of("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n   bad: indent\n")
    assert "line 5" in e.reason


def test_unsupported_kind() -> None:
    e = error_of({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "s"}})
    assert e.field == "kind"
    assert e.obj == "ServiceAccount/s"
    assert "not supported" in e.reason
    assert "Pod (v1)" in (e.fix or "")


def test_wrong_api_version_for_kind() -> None:
    e = error_of({"apiVersion": "apps/v1", "kind": "Pod", "metadata": {"name": "p"}})
    assert e.field == "kind"


def test_missing_api_version() -> None:
    e = error_of({"kind": "Pod", "metadata": {"name": "p"}})
    assert e.field == "apiVersion"


def test_document_must_be_a_mapping() -> None:
    e = error_of("- a\n- b\n")
    assert e.obj == "document 1"


def test_missing_name() -> None:
    doc = pod_doc()
    doc["metadata"] = {}
    e = error_of(doc)
    assert e.field == "metadata.name"


@pytest.mark.parametrize("name", ["Web", "web_1", "-web", "a" * 64])
def test_invalid_pod_name(name: str) -> None:
    e = error_of(pod_doc(name))
    assert e.field == "metadata.name"


def test_invalid_namespace_name() -> None:
    e = error_of({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}})
    assert e.field == "metadata.name"
    assert e.obj == "Namespace/a.b"


def test_duplicate_names_in_one_input() -> None:
    text = yaml.safe_dump_all([pod_doc("a"), pod_doc("b"), pod_doc("a")])
    e = error_of(text)
    assert e.field == "metadata.name"
    assert e.obj == "Pod/default/a"
    assert "twice" in e.reason
    assert "document 1" in e.reason


def test_same_name_in_other_namespace_or_kind_is_fine() -> None:
    objs = load_manifests([pod_doc("a"), pod_doc("a", ns="other"), deploy_doc("a")])
    assert len(objs) == 3


def test_duplicate_port_in_two_containers() -> None:
    e = error_of(pod_doc(containers=[
        {"name": "one", "image": "x", "ports": [{"containerPort": 8080}]},
        {"name": "two", "image": "x", "ports": [{"containerPort": 9090},
                                                {"containerPort": 8080}]}]))
    assert e.field == "spec.containers[1].ports[1].containerPort"
    assert "'one'" in e.reason
    assert "share one network namespace" in e.reason


def test_same_port_tcp_and_udp_is_fine() -> None:
    p = one(pod_doc(containers=[
        {"name": "one", "image": "x", "ports": [{"containerPort": 53}]},
        {"name": "two", "image": "x", "ports": [{"containerPort": 53, "protocol": "UDP"}]}]))
    assert p.serve_ports() == ([53], [53])


def test_duplicate_container_name() -> None:
    e = error_of(pod_doc(containers=[{"name": "c", "image": "x"}, {"name": "c", "image": "y"}]))
    assert e.field == "spec.containers[1].name"


def test_port_out_of_range() -> None:
    e = error_of(pod_doc(containers=[{"name": "c", "image": "x",
                                      "ports": [{"containerPort": 70000}]}]))
    assert e.field == "spec.containers[0].ports[0].containerPort"


def test_sctp_is_not_supported() -> None:
    e = error_of(pod_doc(containers=[{"name": "c", "image": "x",
                                      "ports": [{"containerPort": 80, "protocol": "SCTP"}]}]))
    assert e.field == "spec.containers[0].ports[0].protocol"


def test_host_network_is_not_supported() -> None:
    e = error_of(pod_doc(hostNetwork=True))
    assert e.field == "spec.hostNetwork"


def test_deployment_selector_must_match_template() -> None:
    e = error_of(deploy_doc(labels={"app": "web"}, selector={"app": "api"}))
    assert e.field == "spec.template.metadata.labels"
    assert e.obj == "Deployment/web"
    assert "selector" in e.reason


def test_deployment_empty_selector() -> None:
    e = error_of(deploy_doc(selector={}))
    assert e.field == "spec.selector"


def test_deployment_match_expressions_not_supported() -> None:
    doc = deploy_doc()
    doc["spec"]["selector"]["matchExpressions"] = [
        {"key": "app", "operator": "In", "values": ["web"]}]
    e = error_of(doc)
    assert e.field == "spec.selector.matchExpressions"


def test_deployment_duplicate_port_names_template_field() -> None:
    doc = deploy_doc()
    doc["spec"]["template"]["spec"]["containers"].append(
        {"name": "b", "image": "x", "ports": [{"containerPort": 80}, {"containerPort": 80}]})
    e = error_of(doc)
    assert e.field == "spec.template.spec.containers[1].ports[1].containerPort"


def test_errors_come_before_any_object_is_returned() -> None:
    # the bad object is last: load_manifests must still raise (nothing half-accepted)
    with pytest.raises(ConfigError):
        load_manifests([pod_doc("a"), pod_doc("b", containers=[{"name": "c", "bogus": 1}])])


# --- serialisation -------------------------------------------------------------------------

def test_pod_json_round_trip() -> None:
    d = one(deploy_doc("web", args=["netexec", "--http-port=80", "--udp-port=81"]))
    p = d.pod(1)
    back = model.pod_from_json(json.loads(json.dumps(model.pod_to_json(p))))
    assert back == p
    assert back.serve_ports() == ([80], [81])


def test_deployment_json_round_trip() -> None:
    d = one(deploy_doc("web", replicas=3))
    back = model.deployment_from_json(json.loads(json.dumps(model.deployment_to_json(d))))
    assert back == d
    assert back.pod(2).name == d.pod(2).name


def test_schema_validator_is_built_once_per_kind() -> None:
    # re-reading the 1.4 MB schema definitions per document cost 10-20 ms each; the speed
    # itself is measured in benchmarks/, this proves the cache is what validates
    from lab_kit import model

    load_manifests([pod_doc("warm")])
    before = model._validator.cache_info()
    load_manifests([pod_doc(f"p{i}") for i in range(50)])
    after = model._validator.cache_info()
    assert after.misses == before.misses
    assert after.hits - before.hits == 50


def test_ingress_class_is_parsed_with_its_default_annotation() -> None:
    [(o, _)] = model.load_manifests([{
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "nginx", "annotations": {
            "ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": "k8s.io/ingress-nginx"}}])
    assert o == model.IngressClass("nginx", "k8s.io/ingress-nginx", default=True)


@pytest.mark.parametrize("controller,words", [(None, "Required value"),
                                               ("nginx", "domain-prefixed path")])
def test_ingress_class_controller_is_validated(controller: str | None, words: str) -> None:
    spec = {} if controller is None else {"controller": controller}
    e = error_of({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                  "metadata": {"name": "x"}, "spec": spec})
    assert e.field == "spec.controller" and words in e.reason


def test_controller_image_runs_ingress_nginx() -> None:
    manifest = Path(__file__).resolve().parents[2] / "labs/manifests/ingress-nginx.yaml"
    [(d, _)] = model.load_manifests(manifest)[2:3]
    assert d.template.program == "ingress-nginx"
    assert d.template.arg("ingress-class") == "nginx"
