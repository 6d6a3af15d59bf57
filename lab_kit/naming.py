"""Deterministic names for everything the lab creates.

Inside a node's netns the lab uses upstream names (`cni0`, `eth0`, `veth…`): the whole netns is
the lab's. Names that live in the host's global space (netns names under /run/netns) carry the
`lk-` prefix plus the cluster name, so `down` can find them even after a crash:

- node       `lk-<node>`            e.g. `lk-lab-worker` (node names start with the cluster name)
- external   `lk-<cluster>-external`
- underlay   `lk-<cluster>-underlay`      (holds the Mininet LinuxBridge `s1`)
- pod        `lk-<cluster>.<namespace>.<pod>`  (namespaces have no dots: it splits cleanly)
"""

from __future__ import annotations

import hashlib
import re

PREFIX = "lk-"
CLUSTER_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")
# RFC 1123 label (namespaces, node names) and subdomain (pod names), as Kubernetes validates them
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# a port name (IsValidPortName, RFC 6335 service names): at most 15 characters, a letter, no "--"
IANA_SVC_NAME_RE = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
# Kubernetes' "safe" alphabet for generated names (no vowels, no 0/1/3 lookalikes)
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def node_names(cluster: str, roles: list[str]) -> list[str]:
    """Node names the way kind makes them: `<c>-control-plane`, `<c>-worker`, `<c>-worker2`, …"""
    names: list[str] = []
    counts: dict[str, int] = {}
    for role in roles:
        counts[role] = counts.get(role, 0) + 1
        n = counts[role]
        names.append(f"{cluster}-{role}" + ("" if n == 1 else str(n)))
    return names


def node_netns(node: str) -> str:
    return f"{PREFIX}{node}"


def external_netns(cluster: str) -> str:
    return f"{PREFIX}{cluster}-external"


def underlay_netns(cluster: str) -> str:
    return f"{PREFIX}{cluster}-underlay"


def pod_netns(cluster: str, namespace: str, pod: str) -> str:
    return f"{PREFIX}{cluster}.{namespace}.{pod}"


def cluster_netns_prefixes(cluster: str) -> tuple[str, str]:
    """Every netns of cluster `cluster` starts with one of these."""
    return (f"{PREFIX}{cluster}-", f"{PREFIX}{cluster}.")


def owns_netns(cluster: str, netns: str) -> bool:
    return netns.startswith(cluster_netns_prefixes(cluster))


def cluster_of_netns(netns: str) -> str | None:
    """The cluster name a lab netns belongs to, or None if it is not the lab's."""
    m = re.match(r"^lk-([a-z][a-z0-9]{0,15})[-.]", netns)
    return m.group(1) if m else None


def safe_encode(data: str, length: int) -> str:
    """A stable string over Kubernetes' safe alphabet, like pod-template-hash and pod suffixes."""
    digest = hashlib.sha256(data.encode()).digest()
    n = int.from_bytes(digest, "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, len(SAFE_ALPHABET))
        out.append(SAFE_ALPHABET[r])
    return "".join(out)


def container_id(namespace: str, pod: str, uid: str) -> str:
    """A 64-hex container (sandbox) id, as a runtime would pass in CNI_CONTAINERID."""
    return hashlib.sha256(f"{namespace}/{pod}/{uid}".encode()).hexdigest()
