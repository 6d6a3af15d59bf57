"""NetworkPolicy on a real kernel: the policy engine's truth table against real probes.

One cluster per proxy mode for the whole module (labs/clusters/netpol.yaml: a control-plane and
two workers, VXLAN, cluster DNS), with the upstream e2e suite's model applied once
(labs/manifests/netpol-xyz.yaml: namespaces x, y, z, pods a, b, c in each, TCP and UDP on 80 and
81). In iptables mode the policy rules go into each node's filter table; in nftables mode into a
table `ip calico`.

Each scenario below is a set of policies written as YAML, in the spirit of the upstream suite
(test/e2e/network/netpol/network_policy.go). The test applies it, asks the engine for the
expected 9x9 table (`Cluster.policy_engine().matrix`) and measures the same table with real
connections (`Cluster.probe_matrix`) for TCP and UDP on ports 80 and 81, the four tables at
once: all 81 pairs must agree. Then it deletes the policies, and every pair must connect again.
A disagreement is probed once more before the test fails (as the upstream suite retries; `-s`
shows each retry), and the failure prints the whole measured matrix with the pairs that differ
marked and the engine's reason for each. All 48 scenarios run in iptables mode, 15 in nftables
mode.

The other tests cover what a table cannot: rules that follow label, namespace and pod changes,
replies and connections that were established before a policy, invalid policies that change
nothing, a clean removal, the FORWARD jump staying first when kube-proxy syncs, and the time a
9x9 probe takes.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab_kit import config, kernel
from lab_kit.cluster import Cluster
from lab_kit.errors import ConfigError
from lab_kit.reachability import Matrix, Reachability

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "labs" / "clusters" / "netpol.yaml"
XYZ = REPO / "labs" / "manifests" / "netpol-xyz.yaml"
MODES = ("iptables", "nftables")
NAMES = {"iptables": "npi", "nftables": "npn"}
TCP = (("TCP", 80), ("TCP", 81))
ALL = (("TCP", 80), ("TCP", 81), ("UDP", 80), ("UDP", 81))
Combo = tuple[str, int]


# --- the scenarios ----------------------------------------------------------------------------
# `IP(ns/pod)` in a scenario is replaced by that pod's address when the scenario is applied.
# Pods land on the two workers: the first worker's pod CIDR is 10.244.1.0/24, the second's
# 10.244.2.0/24 (which pod is where is read from the cluster, never assumed).

@dataclasses.dataclass(frozen=True)
class Scenario:
    id: str
    yaml: str
    blocks_all: bool = False  # every pair but a pod to itself is blocked, on purpose
    xfail: str | None = None  # a known engine/kernel disagreement, for the core to fix


def _sc(id: str, text: str, **kw: Any) -> Scenario:
    return Scenario(id, text.strip() + "\n", **kw)


HEAD = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"

SCENARIOS = [
    # --- default deny -------------------------------------------------------------------------
    _sc("deny-ingress", HEAD + """
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""),
    _sc("deny-egress", HEAD + """
metadata: {name: deny-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
"""),
    _sc("deny-all", HEAD + """
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"""),
    _sc("deny-all-everywhere", "\n---\n".join(HEAD + f"""
metadata: {{name: deny-all, namespace: {ns}}}
spec:
  podSelector: {{}}
  policyTypes: [Ingress, Egress]
""" for ns in "xyz"), blocks_all=True),
    # --- allow-all next to a deny: the union wins ---------------------------------------------
    _sc("allow-all-ingress-precedence", HEAD + """
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
""" + HEAD + """
metadata: {name: allow-all-to-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - {}
"""),
    _sc("allow-all-egress-precedence", HEAD + """
metadata: {name: deny-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
---
""" + HEAD + """
metadata: {name: allow-all-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress:
  - {}
"""),
    # --- podSelector peers --------------------------------------------------------------------
    _sc("pod-selector-same-namespace", HEAD + """
metadata: {name: x-a-allows-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
"""),
    _sc("pod-selector-match-expressions", HEAD + """
metadata: {name: x-a-allows-not-a-b, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]}
  ingress:
  - from:
    - podSelector:
        matchExpressions: [{key: pod, operator: NotIn, values: [a, b]}]
"""),
    _sc("pod-selector-any-namespace", HEAD + """
metadata: {name: allow-c-pods-anywhere, namespace: y}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchLabels: {pod: c}}
"""),
    # --- namespaceSelector peers --------------------------------------------------------------
    _sc("namespace-selector-match-labels", HEAD + """
metadata: {name: allow-ns-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
"""),
    _sc("namespace-selector-match-expressions", HEAD + """
metadata: {name: allow-ns-not-x, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: NotIn, values: [x]}]
"""),
    _sc("namespace-selector-does-not-exist", HEAD + """
metadata: {name: allow-unlabelled-ns, namespace: z}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: DoesNotExist}]
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: Exists}]
      podSelector:
        matchExpressions: [{key: pod, operator: In, values: [b]}]
"""),
    _sc("metadata-name-match-labels", HEAD + """
metadata: {name: allow-ns-y-by-name, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
"""),
    _sc("metadata-name-match-expressions-and-pod", HEAD + """
metadata: {name: allow-a-of-y-z, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - {key: kubernetes.io/metadata.name, operator: In, values: [y, z]}
      podSelector: {matchLabels: {pod: a}}
"""),
    # --- AND vs OR ----------------------------------------------------------------------------
    _sc("and-namespace-and-pod", HEAD + """
metadata: {name: allow-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
"""),
    _sc("or-namespace-or-pod", HEAD + """
metadata: {name: allow-y-or-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}
"""),
    _sc("and-several-values", HEAD + """
metadata: {name: allow-ab-of-yz, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: In, values: [y, z]}]
      podSelector:
        matchExpressions: [{key: pod, operator: In, values: [a, b]}]
"""),
    _sc("egress-and-namespace-and-pod", HEAD + """
metadata: {name: to-z-a-only, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: z}}
      podSelector: {matchLabels: {pod: a}}
"""),
    # --- ports --------------------------------------------------------------------------------
    _sc("numeric-port", HEAD + """
metadata: {name: allow-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 81}]
"""),
    _sc("numeric-port-udp-only", HEAD + """
metadata: {name: allow-udp-80, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{protocol: UDP, port: 80}]
"""),
    _sc("named-port-ingress-tcp", HEAD + """
metadata: {name: allow-y-on-serve-80-tcp, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    ports: [{port: serve-80-tcp}]
"""),
    _sc("named-port-ingress-udp", HEAD + """
metadata: {name: allow-serve-81-udp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - ports: [{protocol: UDP, port: serve-81-udp}]
"""),
    _sc("named-port-wrong-protocol", HEAD + """
metadata: {name: udp-named-like-tcp, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{protocol: UDP, port: serve-80-tcp}, {port: serve-81-tcp}]
"""),
    _sc("named-port-egress-tcp", HEAD + """
metadata: {name: out-on-serve-81-tcp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: serve-81-tcp}]
"""),
    _sc("named-port-egress-udp", HEAD + """
metadata: {name: out-udp-80-to-z, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: z}}
    ports: [{protocol: UDP, port: serve-80-udp}]
  - to:
    - podSelector: {}
"""),
    _sc("end-port-80-81", HEAD + """
metadata: {name: allow-y-80-81, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    ports: [{port: 80, endPort: 81}]
"""),
    _sc("end-port-81-90", HEAD + """
metadata: {name: allow-81-90, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 81, endPort: 90}]
"""),
    _sc("end-port-egress-udp", HEAD + """
metadata: {name: out-udp-75-80, namespace: z}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{protocol: UDP, port: 75, endPort: 80}]
"""),
    _sc("protocol-only-udp", HEAD + """
metadata: {name: allow-any-udp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{protocol: UDP}]
"""),
    _sc("protocol-only-tcp-egress", HEAD + """
metadata: {name: out-any-tcp, namespace: y}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Egress]
  egress:
  - ports: [{protocol: TCP}]
"""),
    _sc("empty-from-with-ports", HEAD + """
metadata: {name: anyone-on-udp-81, namespace: z}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from: []
    ports: [{protocol: UDP, port: 81}]
"""),
    _sc("sctp-only-isolates", HEAD + """
metadata: {name: allow-sctp-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - ports: [{protocol: SCTP, port: 80}]
"""),
    # --- ipBlock ------------------------------------------------------------------------------
    _sc("ip-block-except-node-cidr", HEAD + """
metadata: {name: not-from-worker2, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24]}
"""),
    _sc("ip-block-except-pod-ip", HEAD + """
metadata: {name: worker-but-y-b, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.244.1.0/24, except: ["IP(y/b)/32"]}
"""),
    _sc("ip-block-two-excepts-and-ports", HEAD + """
metadata: {name: pods-but-x-a-x-b, namespace: z}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.244.0.0/16, except: ["IP(x/a)/32", "IP(x/b)/32"]}
    ports: [{port: 80}, {protocol: UDP, port: 81}]
"""),
    _sc("egress-ip-block", HEAD + """
metadata: {name: out-to-worker2, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.244.2.0/24}
"""),
    _sc("egress-ip-block-except", HEAD + """
metadata: {name: out-but-worker, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.0/24]}
"""),
    _sc("ip-block-overlap-union", HEAD + """
metadata: {name: worker2-but-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.244.2.0/24, except: ["IP(x/b)/32"]}
---
""" + HEAD + """
metadata: {name: x-b-after-all, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: "IP(x/b)/32"}
"""),
    _sc("ip-block-or-namespace-per-port", HEAD + """
metadata: {name: worker-on-80-z-on-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.244.1.0/24}
    ports: [{port: 80}]
  - from:
    - namespaceSelector: {matchLabels: {ns: z}}
    ports: [{port: 81}, {protocol: UDP, port: 81}]
"""),
    # --- several policies, directions, namespaces ---------------------------------------------
    _sc("union-of-policies", HEAD + """
metadata: {name: from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
---
""" + HEAD + """
metadata: {name: from-z-on-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: z}}
    ports: [{port: 81}]
"""),
    _sc("egress-only", HEAD + """
metadata: {name: out-to-x, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: x}}
"""),
    _sc("ingress-and-egress-together", HEAD + """
metadata: {name: both, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: y}}
    ports: [{port: 80}, {protocol: UDP, port: 81}]
"""),
    _sc("policy-types-defaulted", HEAD + """
metadata: {name: egress-rules-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: z}}
"""),
    _sc("client-egress-deny-beats-server-allow", HEAD + """
metadata: {name: allow-all-in, namespace: z}
spec:
  podSelector: {}
  ingress:
  - {}
---
""" + HEAD + """
metadata: {name: a-may-not-leave, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
"""),
    _sc("ingress-and-egress-independent", HEAD + """
metadata: {name: a-no-ingress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
---
""" + HEAD + """
metadata: {name: b-no-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
"""),
    _sc("several-namespaces", HEAD + """
metadata: {name: deny-ingress, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
""" + HEAD + """
metadata: {name: deny-egress, namespace: z}
spec:
  podSelector: {}
  policyTypes: [Egress]
---
""" + HEAD + """
metadata: {name: a-from-y-or-z, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}]}
"""),
    _sc("policy-selecting-nothing", HEAD + """
metadata: {name: deny-nobody, namespace: x}
spec:
  podSelector: {matchLabels: {pod: nobody}}
  policyTypes: [Ingress, Egress]
---
""" + HEAD + """
metadata: {name: c-from-x, namespace: z}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: x}}
"""),
    _sc("egress-dns-only-with-ingress", HEAD + """
metadata: {name: dns-out-y-in, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
"""),
]

SCENARIOS_BY_ID = {s.id: s for s in SCENARIOS}

# the nftables mode runs these (every kind of match: selectors, named ports, ranges, except)
NFT_SCENARIOS = ("deny-ingress", "deny-all-everywhere", "and-namespace-and-pod",
                 "or-namespace-or-pod", "named-port-ingress-udp", "named-port-egress-tcp",
                 "end-port-81-90", "protocol-only-udp", "sctp-only-isolates",
                 "ip-block-except-node-cidr", "ip-block-two-excepts-and-ports",
                 "egress-ip-block-except", "ip-block-overlap-union", "several-namespaces",
                 "egress-dns-only-with-ingress")


def _cases(mode: str) -> list[Any]:
    return [pytest.param(s, id=s.id, marks=[pytest.mark.xfail(reason=s.xfail, strict=True)]
                         if s.xfail else [])
            for s in SCENARIOS if mode == "iptables" or s.id in NFT_SCENARIOS]


# --- fixtures and helpers ---------------------------------------------------------------------

@pytest.fixture(scope="module", params=MODES)
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    mode = request.param
    conf = dataclasses.replace(config.load_config(CLUSTER, name=NAMES[mode]),
                               kube_proxy_mode=mode)
    c = Cluster.up(conf, root=tmp_path_factory.mktemp(f"netpol_{mode}"))
    try:
        c.apply(XYZ)
        yield c
    finally:
        c.down()


@pytest.fixture
def lab(cluster: Cluster) -> Iterator[Cluster]:
    """The module's cluster; after the test every policy is deleted, a pod the test added is
    deleted and the x/y/z model is applied again (labels a test changed)."""
    yield cluster
    _delete_all_policies(cluster)
    for p in cluster.pods():
        if p.key not in BASELINE:
            cluster.delete(pod=p.name, namespace=p.namespace)
    cluster.apply(XYZ)


BASELINE = {f"{ns}/{pod}" for ns in "xyz" for pod in "abc"}


def _delete_all_policies(c: Cluster) -> None:
    docs = [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": p.name, "namespace": p.namespace}, "spec": p.spec}
            for p in c.networkpolicies()]
    if docs:
        c.delete(docs)


def _fill(c: Cluster, text: str) -> str:
    ips = {p.key: p.ip for p in c.pods()}
    return re.sub(r"IP\(([a-z0-9-]+/[a-z0-9-]+)\)", lambda m: ips[m.group(1)], text)


def _keys(c: Cluster) -> list[str]:
    return [p.key for p in c.pods()]


def _expected(c: Cluster, combos: tuple[Combo, ...]) -> dict[Combo, Matrix]:
    engine = c.policy_engine()
    keys = _keys(c)
    return {(proto, port): engine.matrix(keys, port, proto) for proto, port in combos}


def _measure(c: Cluster, expected: dict[Combo, Matrix]) -> dict[Combo, Reachability]:
    """Every combination probed at once, one thread each (each probe_matrix is ~1 s when
    something is blocked, so four take ~1 s instead of ~4 s)."""
    keys = list(next(iter(expected.values())))

    def one(combo: Combo) -> Reachability:
        proto, port = combo
        t0 = time.perf_counter()
        got = c.probe_matrix(keys, port, proto)
        return Reachability(got, expected[combo], port, proto, time.perf_counter() - t0)

    with ThreadPoolExecutor(len(expected)) as ex:
        return dict(zip(expected, ex.map(one, expected), strict=True))


def _assert_measured(c: Cluster, expected: dict[Combo, Matrix], what: str) -> None:
    """The real probes give `expected` on every pair; a disagreement is probed once more
    (a lost UDP datagram, a reused source port) before it counts."""
    got = _measure(c, expected)
    bad = [k for k, r in got.items() if not r.agrees]
    if bad:
        first = {k: got[k] for k in bad}
        got.update(_measure(c, {k: expected[k] for k in bad}))
        bad = [k for k in bad if not got[k].agrees]
        # shown with -s (or -rP): how often the second probe was needed
        print(f"\nRETRY {what}: {'failed' if bad else 'passed'} on the second probe",
              *map(str, first.values()), sep="\n")
    if not bad:
        return
    engine = c.policy_engine()
    by_key = {p.key: p for p in engine.pods}
    parts = [f"{what}: the probes disagree with the expectation (twice)"]
    for k in bad:
        r = got[k]
        parts.append(str(r))
        for a, b, exp, m in r.mismatches():
            why = engine.verdict(by_key[a], by_key[b], r.port, r.protocol).reason
            parts.append(f"  {a} -> {b} {r.protocol}/{r.port}: expected "
                         f"{'connected' if exp else 'blocked'}, measured "
                         f"{'connected' if m else 'blocked'} (engine: {why})")
    raise AssertionError("\n".join(parts))


def _agrees(c: Cluster, what: str, combos: tuple[Combo, ...] = ALL) -> dict[Combo, Matrix]:
    expected = _expected(c, combos)
    _assert_measured(c, expected, what)
    return expected


def _all_connected(c: Cluster, what: str, combos: tuple[Combo, ...] = ALL) -> None:
    keys = _keys(c)
    _assert_measured(c, {k: {a: dict.fromkeys(keys, True) for a in keys} for k in combos}, what)


def _xyz_doc(kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    for d in yaml.safe_load_all(XYZ.read_text()):
        if d and d["kind"] == kind and d["metadata"]["name"] == name and (
                namespace is None or d["metadata"].get("namespace") == namespace):
            return copy.deepcopy(d)
    raise LookupError(f"{kind} {namespace}/{name} is not in {XYZ.name}")


def _nodes(c: Cluster) -> list[str]:
    return [n.name for n in c.nodes()]


def _policy_rules(c: Cluster, node: str) -> str:
    """What the node's kernel holds of the policy rules."""
    n = c.node(node)
    if c.config.kube_proxy_mode == "nftables":
        return n.sh("nft list table ip calico", check=False)
    return "\n".join(ln for ln in n.sh("iptables-save -t filter").splitlines() if "cali" in ln)


def _firewall(c: Cluster, node: str) -> str:
    """The node's whole firewall as text, without timestamps and counters."""
    n = c.node(node)
    ipt = [re.sub(r" \[\d+:\d+\]$", "", ln) for ln in n.sh("iptables-save").splitlines()
           if not ln.startswith("#")]
    nft = re.sub(r"counter packets \d+ bytes \d+", "counter", n.sh("nft list ruleset"))
    return "\n".join(ipt) + "\n" + nft


def _offdiag(m: Matrix) -> list[bool]:
    return [v for a, row in m.items() for b, v in row.items() if a != b]


def _http_get(s: socket.socket, host: str) -> str:
    """One keep-alive HTTP/1.1 request on an open connection; the body of the answer."""
    s.sendall(f"GET /hostname HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the answer")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?i)content-length: *(\d+)", head)
    assert found, head
    length = int(found.group(1))
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed in the middle of the answer")
        body += chunk
    assert head.split(b" ")[1] == b"200", head
    return body.decode()


# --- the scenarios, measured ------------------------------------------------------------------

# the mode is an indirect parameter on its own, so pytest keeps each mode's tests together
# and builds each cluster once
@pytest.mark.parametrize("scenario", _cases("iptables"))
@pytest.mark.parametrize("cluster", ["iptables"], indirect=True)
def test_scenario_iptables(cluster: Cluster, scenario: Scenario) -> None:
    _run_scenario(cluster, scenario)


@pytest.mark.parametrize("scenario", _cases("nftables"))
@pytest.mark.parametrize("cluster", ["nftables"], indirect=True)
def test_scenario_nftables(cluster: Cluster, scenario: Scenario) -> None:
    _run_scenario(cluster, scenario)


def _run_scenario(c: Cluster, scenario: Scenario) -> None:
    text = _fill(c, scenario.yaml)
    created = c.apply(text)
    try:
        assert created and all(m.endswith(" created") for m in created), created
        expected = _expected(c, ALL)
        # the scenario itself must say something: some pair blocked, and some pair other than
        # a pod to itself still connected (unless blocking everything is the point)
        cells = [v for m in expected.values() for v in _offdiag(m)]
        assert not all(cells), f"scenario {scenario.id} blocks nothing"
        assert any(cells) != scenario.blocks_all, (
            f"scenario {scenario.id}: expected {'nothing' if scenario.blocks_all else 'some'} "
            "connected")
        _assert_measured(c, expected, f"scenario {scenario.id} ({c.config.kube_proxy_mode})")
    finally:
        deleted = c.delete(text)
    assert all(m.endswith(" deleted") for m in deleted), deleted
    assert c.networkpolicies() == []
    _all_connected(c, f"after deleting scenario {scenario.id}")


def test_enough_scenarios() -> None:
    assert len(SCENARIOS) >= 30 and len({s.id for s in SCENARIOS}) == len(SCENARIOS)
    assert len(NFT_SCENARIOS) >= 10 and set(NFT_SCENARIOS) <= {s.id for s in SCENARIOS}


# --- reconciliation: the rules follow pods, labels and namespaces -----------------------------

def test_rules_follow_pod_labels(lab: Cluster) -> None:
    c = lab
    c.apply(HEAD + """
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
---
""" + HEAD + """
metadata: {name: quarantine, namespace: y}
spec:
  podSelector: {matchLabels: {role: quarantined}}
  policyTypes: [Egress]
""")
    xc, yc = _xyz_doc("Pod", "c", "x"), _xyz_doc("Pod", "c", "y")
    before = _agrees(c, "before the relabel", TCP)[("TCP", 80)]
    assert not before["x/c"]["x/a"] and before["y/c"]["x/b"]
    xc2, yc2 = copy.deepcopy(xc), copy.deepcopy(yc)
    xc2["metadata"]["labels"] = {"pod": "b"}  # now a peer of x/a's policy
    yc2["metadata"]["labels"] = {"pod": "c", "role": "quarantined"}  # now selected
    assert c.apply([xc2, yc2]) == ["pod/c configured", "pod/c configured"]
    after = _agrees(c, "after the relabel", TCP)[("TCP", 80)]
    assert after["x/c"]["x/a"] and not after["y/c"]["x/b"] and after["y/c"]["y/c"]
    # back again, with the policies still in force: y/c is no longer isolated
    assert c.apply([xc, yc]) == ["pod/c configured", "pod/c configured"]
    assert _agrees(c, "after the labels are restored", TCP)[("TCP", 80)] == before


def test_rules_follow_namespace_labels(lab: Cluster) -> None:
    c = lab
    c.apply(HEAD + """
metadata: {name: from-team-blue, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: blue}}
""")
    ns_y = _xyz_doc("Namespace", "y")
    before = _agrees(c, "before the namespace label", TCP)[("TCP", 81)]
    assert not any(before[f"y/{p}"][f"x/{q}"] for p in "abc" for q in "abc")
    blue = copy.deepcopy(ns_y)
    blue["metadata"]["labels"]["team"] = "blue"
    assert c.apply(blue) == ["namespace/y configured"]
    after = _agrees(c, "after labelling namespace y team=blue", TCP)[("TCP", 81)]
    assert all(after[f"y/{p}"][f"x/{q}"] for p in "abc" for q in "abc")
    assert not after["z/a"]["x/a"]
    assert c.apply(ns_y) == ["namespace/y configured"]
    assert _agrees(c, "after the namespace label is removed", TCP)[("TCP", 81)] == before


def test_rules_follow_a_recreated_pod(lab: Cluster) -> None:
    """A pod deleted and created again gets a new IP: the rules that named its old address
    (as a peer of x/a's ingress, and as the pod its own egress chain matches) follow it.
    (The pod is the test's own, x/w, so the module's pods keep their namespaces.)"""
    c = lab
    w = _xyz_doc("Pod", "b", "x")
    w["metadata"].update(name="w", labels={"pod": "w"})
    assert c.apply(w) == ["pod/w created"]
    c.apply(HEAD + """
metadata: {name: a-from-w, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: w}}
---
""" + HEAD + """
metadata: {name: w-to-a-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: w}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {pod: a}}
""")
    old = c.pod("x/w").ip
    addr = re.compile(rf"(?<![\d.]){re.escape(old)}(?![\d.])")
    assert any(addr.search(_policy_rules(c, n)) for n in _nodes(c))
    _agrees(c, "before x/w is deleted", TCP)
    assert c.delete(pod="w", namespace="x") == ['pod "w" deleted']
    assert "x/w" not in _keys(c)
    _agrees(c, "while x/w is gone", TCP)
    assert not any(addr.search(_policy_rules(c, n)) for n in _nodes(c))
    assert c.apply(w) == ["pod/w created"]
    new = c.pod("x/w").ip
    assert new != old
    got = _agrees(c, "after x/w is created again", ALL)
    assert got[("TCP", 80)]["x/w"]["x/a"] and not got[("TCP", 80)]["x/w"]["y/a"]
    assert not got[("TCP", 80)]["x/b"]["x/a"]
    for n in _nodes(c):
        assert not addr.search(_policy_rules(c, n)), f"{n} still names {old}"
    assert c.delete(pod="w", namespace="x") == ['pod "w" deleted']


def test_deleting_one_policy_of_several(lab: Cluster) -> None:
    """One policy of three deleted: its chains go (a stale chain must be flushed before it is
    deleted: iptables-nft refuses with EBUSY), the other two still hold."""
    c = lab
    text = SCENARIOS_BY_ID["several-namespaces"].yaml
    c.apply(text)
    _agrees(c, "three policies", TCP)
    first, rest = text.split("\n---\n", 1)
    assert c.delete(first) == ['networkpolicy.networking.k8s.io "deny-ingress" deleted']
    assert [p.key for p in c.networkpolicies()] == ["x/a-from-y-or-z", "z/deny-egress"]
    got = _agrees(c, "after one of three policies is deleted", TCP)[("TCP", 80)]
    assert got["x/a"]["y/a"] and not got["z/a"]["y/a"] and not got["x/b"]["x/a"]


# --- conntrack ---------------------------------------------------------------------------------

def test_replies_pass_and_established_connections_survive(lab: Cluster) -> None:
    """Ingress deny-all on x: its pods still connect out and get the replies (conntrack
    ESTABLISHED); a connection to x/a opened before the policy keeps working, a new one is
    dropped."""
    c = lab
    src, dst = c.pod("y/a"), c.pod("x/a")
    tcp = kernel.socket_in(src.netns, socket.AF_INET, socket.SOCK_STREAM)
    udp = kernel.socket_in(src.netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (tcp, udp):
            s.settimeout(2.0)
        tcp.connect((dst.ip, 80))
        assert _http_get(tcp, dst.ip) == "a"
        udp.connect((dst.ip, 80))
        udp.send(b"hostname")
        assert udp.recv(1024) == b"a"
        c.apply(HEAD + """
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
""")
        got = _agrees(c, "ingress deny-all in x", (("TCP", 80), ("UDP", 80)))
        for m in got.values():
            for a in ("x/a", "x/b", "x/c"):
                assert all(m[a][b] for b in m[a] if not b.startswith("x/")), m[a]
            assert not m["y/a"]["x/a"]
        # the flows opened before the policy are ESTABLISHED: their packets still pass
        assert _http_get(tcp, dst.ip) == "a"
        udp.send(b"hostname")
        assert udp.recv(1024) == b"a"
        assert not c.probe("y/a", "x/a", 80, timeout=1.0).ok  # a new connection does not
    finally:
        tcp.close()
        udp.close()


# --- invalid policies change nothing ----------------------------------------------------------

VALID = HEAD + """
metadata: {name: keep-me, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24]}
"""

INVALID = [
    ("bad-operator", """
metadata: {name: bad-operator, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector:
        matchExpressions: [{key: pod, operator: Equals, values: [b]}]
""", "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator"),
    ("bad-cidr", """
metadata: {name: keep-me, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.244.300.0/24}
""", "spec.ingress[0].from[0].ipBlock.cidr"),
    ("except-outside-the-block", """
metadata: {name: bad-except, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.244.1.0/24, except: [10.244.1.7/32, 10.244.2.0/24]}
""", "spec.egress[0].to[0].ipBlock.except[1]"),
    ("port-0", """
metadata: {name: port-zero, namespace: z}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 80}, {protocol: UDP, port: 0}]
""", "spec.ingress[0].ports[1].port"),
]


@pytest.mark.parametrize(("name", "text", "field"), INVALID, ids=[i[0] for i in INVALID])
def test_invalid_policy_changes_nothing(lab: Cluster, name: str, text: str, field: str
                                        ) -> None:
    c = lab
    c.apply(VALID)
    nodes = _nodes(c)
    before = {n: _firewall(c, n) for n in nodes}
    state = copy.deepcopy(c.state)
    policies = c.networkpolicies()
    # a valid policy in the same input is not applied either
    other = HEAD + "metadata: {name: innocent, namespace: y}\nspec:\n  podSelector: {}\n"
    with pytest.raises(ConfigError) as e:
        c.apply(other + "---\n" + HEAD + text.strip() + "\n")
    assert e.value.field == field, str(e.value)
    assert f"field `{field}`" in str(e.value)
    assert {n: _firewall(c, n) for n in nodes} == before
    assert c.state == state
    assert c.networkpolicies() == policies


# --- removal, the FORWARD jump, speed ---------------------------------------------------------

def test_deleting_every_policy_leaves_no_rules(lab: Cluster) -> None:
    c = lab
    text = _fill(c, SCENARIOS_BY_ID["ip-block-two-excepts-and-ports"].yaml + "---\n"
                 + SCENARIOS_BY_ID["several-namespaces"].yaml)
    c.apply(text)
    nft = c.config.kube_proxy_mode == "nftables"
    for n in _nodes(c):
        rules = _policy_rules(c, n)
        assert "cali-FORWARD" in rules, (n, rules)
        if not nft:
            assert "cali-px-" in rules or n.endswith("control-plane"), (n, rules)
    c.delete(text)
    for n in _nodes(c):
        node = c.node(n)
        assert "cali" not in node.sh("iptables-save"), n
        assert "calico" not in node.sh("nft list tables"), n
        assert "cali" not in node.sh("iptables -S FORWARD"), n
    _all_connected(c, "after every policy is deleted", TCP)


def test_forward_jump_stays_first_after_a_service(lab: Cluster) -> None:
    c = lab
    c.apply(SCENARIOS_BY_ID["pod-selector-same-namespace"].yaml)
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "late", "namespace": "x"},
           "spec": {"selector": {"pod": "a"}, "ports": [{"port": 80, "targetPort": 80}]}}
    c.apply(svc)
    try:
        for n in _nodes(c):
            forward = [ln for ln in c.node(n).sh("iptables -S FORWARD").splitlines()
                       if ln.startswith("-A ")]
            jumps = [ln for ln in forward if "cali-FORWARD" in ln]
            if c.config.kube_proxy_mode == "nftables":
                assert not jumps, (n, forward)
                chain = c.node(n).sh("nft list chain ip calico cali-FORWARD")
                assert "hook forward priority filter" in chain, (n, chain)
            else:
                assert forward[0].endswith("-j cali-FORWARD") and len(jumps) == 1, (n, forward)
                assert any("KUBE-FORWARD" in ln for ln in forward), (n, forward)
        _agrees(c, "after a Service was applied", TCP)
        vip = c.service("late", "x")["spec"]["clusterIP"]
        # the policy also holds through the Service: DNAT comes before the filter
        assert not c.probe("y/a", vip, 80, timeout=1.0).ok
        assert c.probe("x/b", vip, 80, timeout=1.0).ok
    finally:
        c.delete(svc)


def test_probe_matrix_9x9_within_2s(lab: Cluster) -> None:
    c = lab
    c.apply(SCENARIOS_BY_ID["deny-ingress"].yaml)
    t0 = time.perf_counter()
    m = c.probe_matrix(port=80)
    took = time.perf_counter() - t0
    assert len(m) == 9 and all(len(row) == 9 for row in m.values())
    assert not all(_offdiag(m)) and any(_offdiag(m))
    assert took < 2.0, f"a 9x9 probe_matrix took {took:.2f} s"

