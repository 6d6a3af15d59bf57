"""Bad input gets a ConfigError naming file, object and field, and changes nothing."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab_kit import kernel, model, naming
from lab_kit.cluster import POD_CAPACITY_PER_NODE, Cluster
from lab_kit.errors import ConfigError
from lab_kit.pytest_plugin import unique_name

pytestmark = pytest.mark.root

DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
              "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                       "template": {"metadata": {"labels": {"app": "web"}},
                                    "spec": {"containers": [{
                                        "name": "agnhost", "image": "agnhost",
                                        "args": ["netexec", "--http-port=8080"]}]}}}}


def pod(name: str, node: str | None = None, port: int = 8080, ns: str | None = None
        ) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "agnhost", "image": "agnhost",
                                            "ports": [{"containerPort": port}]}]}
    if node:
        spec["nodeName"] = node
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def snapshot(c: Cluster) -> dict[str, Any]:
    """What a bad apply must not change: netns, stored state, journal, every node's links
    and kube-proxy rules."""
    links, rules = {}, {}
    for n in c.nodes():
        out = subprocess.run(["ip", "-n", n.netns, "-j", "link"], capture_output=True,
                             text=True, check=True).stdout
        links[n.name] = json.loads(out)
        saved = subprocess.run(["ip", "netns", "exec", n.netns, "iptables-save"],
                               capture_output=True, text=True, check=True).stdout
        rules[n.name] = [ln for ln in saved.splitlines() if not ln.startswith("#")]  # no dates
    return {"netns": sorted(n for n in kernel.list_netns() if naming.owns_netns(c.name, n)),
            "state": c.store.state_file.read_text(),
            "journal": c.store.journal_file.read_text(),
            "links": links, "rules": rules}


@pytest.fixture
def busy(lab_cluster_factory) -> Cluster:
    """A cluster with a Deployment (one pod per worker) and a bare Pod."""
    c = lab_cluster_factory()
    c.apply([DEPLOYMENT, pod("solo")])
    return c


def write(tmp_path: Path, docs: list[dict[str, Any]] | str) -> Path:
    f = tmp_path / "bad.yaml"
    f.write_text(docs if isinstance(docs, str) else yaml.safe_dump_all(docs))
    return f


def deployment_pod_name() -> str:
    d = model.load_manifests(DEPLOYMENT)[0][0]
    return d.pod(0).name


def big_pinned_deployment(c: Cluster) -> list[dict[str, Any]]:
    # 254 pods, all pinned to the control plane (which has none yet), in a single apply
    d = json.loads(json.dumps(DEPLOYMENT))
    d["metadata"]["name"] = "big"
    d["spec"]["replicas"] = POD_CAPACITY_PER_NODE + 1
    d["spec"]["selector"]["matchLabels"] = {"app": "big"}
    d["spec"]["template"]["metadata"]["labels"] = {"app": "big"}
    d["spec"]["template"]["spec"]["nodeName"] = f"{c.name}-control-plane"
    return [d]


def schema_failure(c: Cluster) -> list[dict[str, Any]]:
    d = json.loads(json.dumps(DEPLOYMENT))
    d["metadata"]["name"] = "web2"
    d["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "http"}]
    return [pod("fine"), d]


# (id, manifests for the cluster, object, field, fragment of the reason)
CASES: list[tuple[str, Callable[[Cluster], Any], str | Callable[[Cluster], str], str | None,
                  str]] = [
    ("invalid-yaml", lambda c: "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [oops\n",
     "", None, "line 5"),
    ("schema", schema_failure, "Deployment/web2",
     "spec.template.spec.containers[0].ports[0].containerPort", "schema"),
    ("unsupported-kind", lambda c: [{"apiVersion": "v1", "kind": "ServiceAccount",
                                     "metadata": {"name": "s"}}],
     "ServiceAccount/s", "kind", "not supported"),
    ("service-port-out-of-range", lambda c: [pod("fine"), {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"selector": {"app": "x"}, "ports": [{"port": 80, "targetPort": 70000}]}}],
     "Service/s", "spec.ports[0].targetPort", "1-65535"),
    ("service-duplicate-nodeport-in-one-apply", lambda c: [pod("fine"), *[{
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": n},
        "spec": {"type": "NodePort", "selector": {"app": "x"},
                 "ports": [{"port": 80, "nodePort": 30099}]}} for n in ("s1", "s2")]],
     "Service/default/s2", "spec.ports[0].nodePort", "already allocated"),
    ("duplicate-in-one-file", lambda c: [pod("twin"), pod("other"), pod("twin", port=9)],
     "Pod/default/twin", "metadata.name", "twice"),
    ("name-of-a-deployment-pod", lambda c: [pod("fresh"), pod(deployment_pod_name())],
     lambda c: f"Pod/default/{deployment_pod_name()}", "metadata.name", "Deployment/web"),
    ("exhausted-pod-cidr", big_pinned_deployment, "Deployment/default/big",
     "spec.template.spec.nodeName", "exhausted"),
    ("unknown-node", lambda c: [pod("fresh"), pod("lost", node=f"{c.name}-worker9")],
     "Pod/default/lost", "spec.nodeName", "does not exist"),
    ("missing-namespace", lambda c: [pod("fresh"), pod("lost", ns="ghost")],
     "Pod/ghost/lost", "metadata.namespace", "not found"),
    ("pod-spec-change", lambda c: [pod("fresh"), pod("solo", port=9090)],
     "Pod/default/solo", "spec", "immutable"),
]


@pytest.mark.parametrize(("make", "obj", "fld", "fragment"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_apply_names_file_object_field_and_changes_nothing(
        busy: Cluster, tmp_path: Path, make, obj, fld, fragment) -> None:
    f = write(tmp_path, make(busy))
    before = snapshot(busy)
    with pytest.raises(ConfigError) as ei:
        busy.apply(f)
    e = ei.value
    obj = obj(busy) if callable(obj) else obj
    assert e.file == str(f)
    assert fragment in e.reason
    assert (e.obj or "") == obj
    assert e.field == fld
    text = str(e)
    assert str(f) in text
    if obj:
        assert f"`{obj}`" in text
    if fld:
        assert f"field `{fld}`" in text
    assert snapshot(busy) == before
    # and the cluster still works afterwards
    assert busy.apply([pod("after")]) == ["pod/after created"]
    r = busy.probe(busy.pod("after").node, "after", 8080)
    assert r.ok and r.reply == "after"


def test_bad_delete_changes_nothing(busy: Cluster, tmp_path: Path) -> None:
    f = write(tmp_path, "kind: Pod\napiVersion: v1\nmetadata: {name: solo\n")
    before = snapshot(busy)
    with pytest.raises(ConfigError) as ei:
        busy.delete(f)
    assert ei.value.file == str(f)
    assert snapshot(busy) == before


def test_bad_cluster_config_creates_nothing(state_dir: Path, tmp_path: Path) -> None:
    name = unique_name()
    f = tmp_path / "cluster.yaml"
    f.write_text(f"kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nname: {name}\n"
                 "networking:\n  podSubnet: 10.244.0.0/23\n")
    with pytest.raises(ConfigError) as ei:
        Cluster.up(f, root=state_dir)
    e = ei.value
    assert (e.file, e.obj, e.field) == (str(f), "Cluster", "networking.podSubnet")
    assert f"{f}, `Cluster`, field `networking.podSubnet`" in str(e)
    assert [n for n in kernel.list_netns() if naming.owns_netns(name, n)] == []
    assert list(state_dir.iterdir()) == []


def test_up_refuses_an_existing_cluster_and_changes_nothing(busy: Cluster) -> None:
    before = snapshot(busy)
    with pytest.raises(Exception, match="already exists"):
        Cluster.up(name=busy.name, root=busy.root)
    assert snapshot(busy) == before


# --- backends and plugins: refused before anything is built --------------------------------

def _up_error(state_dir: Path, tmp_path: Path, body: str) -> tuple[ConfigError, str, Path]:
    name = unique_name()
    f = tmp_path / "cluster.yaml"
    f.write_text(f"kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nname: {name}\n{body}")
    with pytest.raises(ConfigError) as ei:
        Cluster.up(f, root=state_dir)
    assert [n for n in kernel.list_netns() if naming.owns_netns(name, n)] == []
    assert list(state_dir.iterdir()) == []
    return ei.value, name, f


@pytest.mark.parametrize(("body", "fld", "fragment"), [
    ("networking: {cni: weave}\n", "networking.cni", "unknown CNI backend 'weave'"),
    ("networking: {cni: host-gw, cniPlugin: no-such-plugin}\n", "networking.cniPlugin",
     "not found"),
    ("nodes:\n- role: control-plane\n- role: worker\n  cniPlugin: /nonexistent/my-cni\n",
     "nodes[1].cniPlugin", "not found"),
    ("nodes:\n- role: control-plane\n- role: worker\n  podCIDR: 10.99.0.0/24\n",
     "nodes[1].podCIDR", "does not fit"),
], ids=["unknown-backend", "missing-plugin", "missing-node-plugin", "pod-cidr-outside"])
def test_bad_backend_or_plugin_builds_nothing(state_dir: Path, tmp_path: Path, body: str,
                                              fld: str, fragment: str) -> None:
    e, _, f = _up_error(state_dir, tmp_path, body)
    assert (e.file, e.obj, e.field) == (str(f), "Cluster", fld)
    assert fragment in str(e)


def test_plugin_that_is_not_executable_builds_nothing(state_dir: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "my-cni"
    plugin.write_text("#!/bin/sh\nexit 0\n")
    plugin.chmod(0o644)
    e, _, _ = _up_error(state_dir, tmp_path, f"networking: {{cniPlugin: {plugin}}}\n")
    assert e.field == "networking.cniPlugin"
    assert "not executable" in str(e) and "chmod +x" in str(e)


def test_bad_node_operations_change_nothing(busy: Cluster) -> None:
    before = snapshot(busy)
    with pytest.raises(Exception, match="no node `nope`"):
        busy.remove_node("nope")
    with pytest.raises(ConfigError, match="role 'boss'"):
        busy.add_node(role="boss")
    with pytest.raises(Exception, match="last control-plane"):
        busy.remove_node(f"{busy.name}-control-plane")
    with pytest.raises(Exception, match="BIRD runs only"):
        busy.birdc(f"{busy.name}-worker")
    assert snapshot(busy) == before
