"""The planner: stored state + manifests -> Plan, pure (no kernel, no state dir)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest

from lab_kit import config, model
from lab_kit.cluster import POD_CAPACITY_PER_NODE, Plan, _plan_apply, _plan_delete
from lab_kit.errors import ConfigError

CONF = config.default_config("lab")  # lab-control-plane, lab-worker, lab-worker2
CP, W1, W2 = (n.name for n in CONF.nodes)


def new_state() -> dict[str, Any]:
    """What Cluster.up stores before any apply."""
    return {"namespaces": {n: {"labels": {"kubernetes.io/metadata.name": n}}
                           for n in model.SYSTEM_NAMESPACES},
            "deployments": {}, "pods": {}}


def commit(state: dict[str, Any], plan: Plan) -> None:
    """Apply a plan's changes to the state dict the way Cluster._execute does (minus the kernel)."""
    state["namespaces"].update(plan.namespaces)
    for k in plan.delete_namespaces:
        state["namespaces"].pop(k)
    state["deployments"].update(plan.deployments)
    for k in plan.delete_deployments:
        state["deployments"].pop(k)
    for k, labels in plan.relabel.items():
        state["pods"][k]["spec"]["labels"] = labels
    for k in plan.delete_pods:
        state["pods"].pop(k)
    for pod, node in plan.create_pods:
        state["pods"][pod.key] = {"spec": model.pod_to_json(pod), "node": node,
                                  "netns": f"lk-lab.{pod.namespace}.{pod.name}"}
    state.update(json.loads(json.dumps(state)))  # stored as JSON, read back as JSON


def objects(docs: Any) -> list[tuple[model.Object, model.Source]]:
    """Parsed manifests; a list of already-parsed (object, source) pairs passes through."""
    if isinstance(docs, list) and docs and isinstance(docs[0], tuple):
        return docs
    return model.load_manifests(docs)


def many_pods(n: int, node: str | None = None, prefix: str = "p"
              ) -> list[tuple[model.Object, model.Source]]:
    """`n` pods without validating each document (the schema check costs ~20 ms a document)."""
    ((tpl, src),) = model.load_manifests(pod("tpl", node=node))
    return [(replace(tpl, name=f"{prefix}{i}"), src) for i in range(n)]


def apply(state: dict[str, Any], docs: Any, conf: config.ClusterConfig = CONF) -> Plan:
    plan = _plan_apply(state, conf, objects(docs))
    commit(state, plan)
    return plan


def pod(name: str, ns: str | None = None, node: str | None = None,
        labels: dict[str, str] | None = None, port: int = 8080) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    if labels:
        meta["labels"] = labels
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "agnhost",
                                            "ports": [{"containerPort": port}]}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def deploy(name: str = "web", replicas: int = 3, ns: str | None = None,
           node: str | None = None, port: int = 8080) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "agnhost",
                                            "args": ["netexec", f"--http-port={port}"]}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}}


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, **({"labels": labels} if labels else {})}}


def nodes_of(state: dict[str, Any]) -> dict[str, str]:
    return {k: p["node"] for k, p in state["pods"].items()}


def plan_error(state: dict[str, Any], docs: Any, conf: config.ClusterConfig = CONF
               ) -> ConfigError:
    objs = objects(docs)
    before = copy.deepcopy(state)
    with pytest.raises(ConfigError) as ei:
        _plan_apply(state, conf, objs)
    assert state == before  # planning never mutates the state it reads
    return ei.value


# --- placement -----------------------------------------------------------------------------

def test_pods_go_round_robin_over_workers_only() -> None:
    plan = _plan_apply(new_state(), CONF, model.load_manifests(
        [pod(f"p{i}") for i in range(5)]))
    assert [n for _, n in plan.create_pods] == [W1, W2, W1, W2, W1]
    assert plan.messages == [f"pod/p{i} created" for i in range(5)]


def test_deployment_replicas_spread_over_workers() -> None:
    st = new_state()
    apply(st, deploy("web", 6))
    placed = list(nodes_of(st).values())
    assert placed.count(W1) == 3 and placed.count(W2) == 3
    assert CP not in placed


def test_placement_counts_pods_already_there() -> None:
    st = new_state()
    apply(st, [pod("a", node=W1), pod("b", node=W1)])
    plan = apply(st, [pod(f"n{i}") for i in range(4)])
    assert [n for _, n in plan.create_pods] == [W2, W2, W1, W2]


def test_control_plane_is_used_when_there_are_no_workers() -> None:
    conf = config.parse_config({"kind": "Cluster", "apiVersion": config.KIND_API_VERSION,
                                "name": "solo", "nodes": [{"role": "control-plane"}]})
    plan = _plan_apply(new_state(), conf, model.load_manifests([pod("a"), pod("b")]))
    assert [n for _, n in plan.create_pods] == ["solo-control-plane"] * 2


def test_node_name_pins_even_to_the_control_plane() -> None:
    plan = _plan_apply(new_state(), CONF, model.load_manifests(
        [pod("a", node=CP), pod("b", node=W2), pod("c", node=W2)]))
    assert [n for _, n in plan.create_pods] == [CP, W2, W2]


def test_deployment_template_node_name_pins_every_replica() -> None:
    plan = _plan_apply(new_state(), CONF, model.load_manifests(deploy("web", 3, node=W2)))
    assert [n for _, n in plan.create_pods] == [W2] * 3


def test_unknown_node_names_spec_node_name() -> None:
    e = plan_error(new_state(), [pod("a", node="lab-worker9")])
    assert e.field == "spec.nodeName"
    assert e.obj == "Pod/default/a"
    assert e.file == "<objects>"
    assert "lab-worker9" in e.reason and W1 in e.reason


def test_unknown_node_in_a_deployment_template() -> None:
    e = plan_error(new_state(), deploy("web", 2, node="nope"))
    assert e.field == "spec.template.spec.nodeName"
    assert e.obj == "Deployment/default/web"


def test_missing_namespace_names_metadata_namespace() -> None:
    e = plan_error(new_state(), [pod("a", ns="shop")])
    assert e.field == "metadata.namespace"
    assert e.obj == "Pod/shop/a"
    assert "shop" in e.reason


def test_namespace_in_the_same_input_in_any_order() -> None:
    st = new_state()
    plan = apply(st, [pod("a", ns="shop"), namespace("shop")])
    assert plan.messages == ["namespace/shop created", "pod/a created"]
    assert "shop/a" in st["pods"]
    assert st["namespaces"]["shop"]["labels"] == {"kubernetes.io/metadata.name": "shop"}


# --- capacity --------------------------------------------------------------------------------

def test_capacity_is_a_slash24_minus_network_broadcast_and_gateway() -> None:
    assert POD_CAPACITY_PER_NODE == 253


def test_exhausted_pod_cidr_of_a_pinned_node() -> None:
    st = new_state()
    apply(st, many_pods(POD_CAPACITY_PER_NODE, node=W1))
    e = plan_error(st, [pod("one-more", node=W1)])
    assert e.obj == "Pod/default/one-more"
    assert e.field == "spec.nodeName"
    assert "10.244.1.0/24" in e.reason and "exhausted" in e.reason
    # the other worker still has room
    plan = _plan_apply(st, CONF, model.load_manifests(pod("elsewhere")))
    assert plan.create_pods[0][1] == W2


def test_exhausted_in_one_input_fails_the_whole_input() -> None:
    e = plan_error(new_state(), many_pods(POD_CAPACITY_PER_NODE + 1, node=W2))
    assert e.obj == f"Pod/default/p{POD_CAPACITY_PER_NODE}"


def test_unpinned_pods_never_spill_onto_the_control_plane() -> None:
    st = new_state()
    apply(st, deploy("big", 2 * POD_CAPACITY_PER_NODE))
    assert set(nodes_of(st).values()) == {W1, W2}
    e = plan_error(st, pod("straw"))
    assert "exhausted" in e.reason
    assert e.field is None  # not pinned: no field of the pod is to blame


def test_scale_down_frees_capacity_in_the_same_apply() -> None:
    st = new_state()
    apply(st, deploy("web", 2 * POD_CAPACITY_PER_NODE))
    plan = apply(st, [deploy("web", 2 * POD_CAPACITY_PER_NODE - 2), pod("a"), pod("b")])
    assert len(plan.delete_pods) == 2
    assert sorted(n for _, n in plan.create_pods) == [W1, W2]


# --- updates ---------------------------------------------------------------------------------

def test_apply_twice_is_unchanged() -> None:
    st = new_state()
    docs = [namespace("shop", {"team": "a"}), pod("a", ns="shop"), deploy("web", 2, ns="shop")]
    first = apply(st, docs)
    assert first.messages == ["namespace/shop created", "pod/a created",
                              "deployment.apps/web created"]
    snapshot = copy.deepcopy(st)
    second = _plan_apply(st, CONF, model.load_manifests(docs))
    assert second.messages == ["namespace/shop unchanged", "pod/a unchanged",
                               "deployment.apps/web unchanged"]
    assert second.create_pods == [] and second.delete_pods == [] and second.relabel == {}
    assert st == snapshot


def test_pod_label_change_is_a_relabel() -> None:
    st = new_state()
    apply(st, pod("a", labels={"v": "1"}))
    plan = apply(st, pod("a", labels={"v": "2"}))
    assert plan.relabel == {"default/a": {"v": "2"}}
    assert plan.messages == ["pod/a configured"]
    assert plan.create_pods == [] and plan.delete_pods == []


def test_pod_spec_change_is_an_error() -> None:
    st = new_state()
    apply(st, pod("a", port=8080))
    e = plan_error(st, pod("a", port=9090))
    assert e.field == "spec"
    assert e.obj == "Pod/default/a"
    assert "immutable" in e.reason


def test_node_name_change_is_a_spec_change() -> None:
    st = new_state()
    apply(st, pod("a", node=W1))
    assert plan_error(st, pod("a", node=W2)).field == "spec"


def test_namespace_label_change_is_configured() -> None:
    st = new_state()
    apply(st, namespace("shop", {"a": "1"}))
    plan = apply(st, namespace("shop", {"a": "2"}))
    assert plan.messages == ["namespace/shop configured"]


# --- deployments -----------------------------------------------------------------------------

def test_scale_down_deletes_the_extra_pods_and_keeps_the_rest() -> None:
    st = new_state()
    apply(st, deploy("web", 6))
    d = model.load_manifests(deploy("web", 6))[0][0]
    plan = apply(st, deploy("web", 2))
    assert plan.create_pods == []
    assert sorted(plan.delete_pods) == sorted(d.pod(i).key for i in range(2, 6))
    assert sorted(st["pods"]) == sorted(d.pod(i).key for i in range(2))
    assert plan.messages == ["deployment.apps/web configured"]
    assert st["deployments"]["default/web"]["replicas"] == 2


def test_scale_up_adds_pods_and_keeps_the_existing_ones() -> None:
    st = new_state()
    apply(st, deploy("web", 2))
    kept = dict(nodes_of(st))
    plan = apply(st, deploy("web", 4))
    assert plan.delete_pods == []
    assert len(plan.create_pods) == 2
    d = model.load_manifests(deploy("web", 4))[0][0]
    assert sorted(st["pods"]) == sorted(d.pod(i).key for i in range(4))
    assert {k: v for k, v in nodes_of(st).items() if k in kept} == kept
    # the two new pods went one to each worker (each had one already)
    assert sorted(n for _, n in plan.create_pods) == [W1, W2]


def test_template_change_replaces_every_pod() -> None:
    st = new_state()
    apply(st, deploy("web", 3, port=8080))
    old = set(st["pods"])
    plan = apply(st, deploy("web", 3, port=9090))
    assert set(plan.delete_pods) == old
    assert len(plan.create_pods) == 3
    assert not old & set(st["pods"])


def test_scale_only_touches_its_own_deployment() -> None:
    st = new_state()
    apply(st, [namespace("other"), deploy("web", 2), deploy("web", 2, ns="other"),
               deploy("api", 2)])
    plan = apply(st, deploy("web", 0))
    assert len(plan.delete_pods) == 2
    assert all(k.startswith("default/web-") for k in plan.delete_pods)
    assert len(st["pods"]) == 4


def test_pod_named_like_an_existing_deployment_pod() -> None:
    st = new_state()
    apply(st, deploy("web", 1))
    (taken,) = st["pods"]
    e = plan_error(st, pod(taken.split("/")[1]))
    assert e.field == "metadata.name"
    assert "Deployment/web" in e.reason


@pytest.mark.parametrize("pod_first", [True, False])
def test_pod_named_like_a_deployment_pod_in_the_same_input(pod_first: bool) -> None:
    name = model.load_manifests(deploy("web", 1))[0][0].pod(0).name
    docs = [pod(name), deploy("web", 1)]
    e = plan_error(new_state(), docs if pod_first else docs[::-1])
    assert e.field == "metadata.name"
    assert name in e.reason


def test_deployment_whose_pod_was_deleted_is_repaired_by_apply() -> None:
    st = new_state()
    apply(st, deploy("web", 3))
    victim = sorted(st["pods"])[0]
    del st["pods"][victim]
    plan = apply(st, deploy("web", 3))
    assert [p.key for p, _ in plan.create_pods] == [victim]


# --- delete ----------------------------------------------------------------------------------

def test_plan_delete_pod_and_deployment() -> None:
    st = new_state()
    apply(st, [pod("a"), deploy("web", 3), deploy("api", 1)])
    plan = _plan_delete(st, model.load_manifests([pod("a"), pod("zz"), deploy("web"),
                                                  deploy("nope")]))
    assert plan.messages == ['pod "a" deleted', 'pod "zz" not found',
                             'deployment.apps "web" deleted',
                             'deployment.apps "nope" not found']
    assert plan.delete_deployments == ["default/web"]
    assert len(plan.delete_pods) == 4
    assert "default/a" in plan.delete_pods
    assert not any(k.startswith("default/api-") for k in plan.delete_pods)
    commit(st, plan)
    assert len(st["pods"]) == 1


def test_plan_delete_namespace_removes_its_contents() -> None:
    st = new_state()
    apply(st, [namespace("shop"), pod("a", ns="shop"), deploy("web", 2, ns="shop"),
               pod("b")])
    plan = _plan_delete(st, model.load_manifests(namespace("shop")))
    assert plan.delete_namespaces == ["shop"]
    assert plan.delete_deployments == ["shop/web"]
    assert len(plan.delete_pods) == 3 and "default/b" not in plan.delete_pods


def test_system_namespaces_cannot_be_deleted() -> None:
    with pytest.raises(ConfigError) as ei:
        _plan_delete(new_state(), model.load_manifests(namespace("kube-system")))
    assert ei.value.obj == "Namespace/kube-system"


def test_system_namespace_delete_error_names_file_and_field() -> None:
    with pytest.raises(ConfigError) as ei:
        _plan_delete(new_state(), model.load_manifests("apiVersion: v1\nkind: Namespace\n"
                                                       "metadata: {name: default}\n"))
    assert ei.value.file == "<string>"
    assert ei.value.field == "metadata.name"


def test_plan_delete_is_pure() -> None:
    st = new_state()
    apply(st, deploy("web", 2))
    before = copy.deepcopy(st)
    _plan_delete(st, model.load_manifests(deploy("web")))
    assert st == before
