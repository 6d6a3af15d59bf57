"""HTTP backends for the Ingress and Gateway API tests: an agnhost Deployment with its Service,
and reading which Deployment answered."""

from __future__ import annotations

from typing import Any

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.45"


def backend(name: str, replicas: int = 1, namespace: str = "default") -> list[dict[str, Any]]:
    """Deployment `name` (agnhost netexec on 8080, port `http`) and Service `name` (80 -> http)."""
    labels = {"app": name}
    meta = {"name": name, "namespace": namespace}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
         "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                      "name": "c", "image": AGNHOST, "args": ["netexec", "--http-port=8080"],
                      "ports": [{"name": "http", "containerPort": 8080}]}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"selector": labels, "ports": [{"name": "http", "port": 80,
                                                 "targetPort": "http"}]}}]


def who(body: str) -> str:
    """The Deployment a pod name belongs to (`web-5d8f...-x7k2p` -> `web`)."""
    return body.split("-")[0] if body.count("-") >= 2 else body
