"""HTTP backends for the Ingress and Gateway API tests: an agnhost Deployment with its Service,
and reading which Deployment answered (`who`, the labs' own)."""

from __future__ import annotations

from typing import Any

from lab_kit.labs.web import who  # noqa: F401  (the tests read answers with it)

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
