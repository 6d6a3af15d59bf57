"""`lab-kit probe --matrix`, `get networkpolicies` and `delete -f` on a real cluster: the x/y/z
scenario, policies applied and removed through the command line, the matrix measured by real
connections and parsed from its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab_kit.cluster import Cluster

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
PODS = [f"{ns}/{p}" for ns in "xyz" for p in "abc"]

POLICIES = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-no-egress
  namespace: y
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes: [Egress]
"""


def denied(src: str, dst: str) -> bool:
    """What POLICIES block: ingress into x, egress out of y/a (a pod still reaches itself)."""
    return src != dst and (dst.startswith("x/") or src == "y/a")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster.up(REPO / "labs/clusters/netpol.yaml", name="npc",
                   root=tmp_path_factory.mktemp("npc_state"))
    try:
        c.apply(REPO / "labs/manifests/netpol-xyz.yaml")
        yield c
    finally:
        c.down()


def cli(c: Cluster, *argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LAB_KIT_STATE_DIR=str(c.root))
    done = subprocess.run([sys.executable, "-m", "lab_kit.cli", *argv, "--name", c.name],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def matrix(c: Cluster, *extra: str) -> dict[str, dict[str, bool]]:
    out = cli(c, "probe", "--matrix", "--port", "80", "--protocol", "TCP", "-o", "json",
              *extra).stdout
    m = json.loads(out)
    assert list(m) == PODS and all(list(row) == PODS for row in m.values())  # 9 × 9, in order
    assert all(type(v) is bool for row in m.values() for v in row.values())
    return m


def test_policies_through_the_cli(cluster: Cluster, tmp_path: Path) -> None:
    assert matrix(cluster) == {a: dict.fromkeys(PODS, True) for a in PODS}

    f = tmp_path / "policies.yaml"
    f.write_text(POLICIES)
    out = cli(cluster, "apply", "-f", str(f)).stdout.splitlines()
    assert out == ["networkpolicy.networking.k8s.io/default-deny-ingress created",
                   "networkpolicy.networking.k8s.io/a-no-egress created"]

    m = matrix(cluster)
    assert {(a, b) for a in PODS for b in PODS if not m[a][b]} == {
        (a, b) for a in PODS for b in PODS if denied(a, b)}

    # the measurement itself (no interpreter start-up): all 81 pairs in ≤ 2 s
    t0 = time.perf_counter()
    direct = cluster.probe_matrix(port=80, protocol="TCP")
    seconds = time.perf_counter() - t0
    assert direct == m
    assert seconds <= 2.0, f"9×9 probe matrix took {seconds:.2f} s"

    # the table agrees with the engine; --expected exits 0 when it does
    done = cli(cluster, "probe", "--matrix", "--expected", "-n", "x,y")
    lines = done.stdout.splitlines()
    assert lines[0] == "TCP/80  x/a x/b x/c | y/a y/b y/c"
    assert lines[1] == "x/a      .   X   X  |  .   .   ."
    assert lines[5] == "y/a      X   X   X  |  .   X   X"
    assert "36 pairs: 19 connected, 17 blocked; all as the policy engine expects" in done.stdout
    wide = cli(cluster, "probe", "--matrix", "-n", "y", "--protocol", "UDP", "--port", "81",
               "-o", "wide").stdout
    assert "y/a -> y/b: blocked (y/a is isolated for egress by y/a-no-egress" in wide

    # the pair form is unchanged
    assert cli(cluster, "probe", "z/a", "z/b:80").stdout.startswith("OK ")
    assert cli(cluster, "probe", "z/a", "x/b:80", "--timeout", "0.3", ok=False).returncode == 1

    rows = [ln.split() for ln in cli(cluster, "get", "netpol", "-A").stdout.splitlines()]
    assert rows[0] == ["NAMESPACE", "NAME", "POD-SELECTOR", "AGE"]
    assert [r[:3] for r in rows[1:]] == [["x", "default-deny-ingress", "<none>"],
                                         ["y", "a-no-egress", "pod=a"]]
    assert all(r[3].endswith("s") for r in rows[1:])
    assert cli(cluster, "get", "networkpolicies", "-n", "y").stdout.split()[:5] == [
        "NAME", "POD-SELECTOR", "AGE", "a-no-egress", "pod=a"]

    out = cli(cluster, "delete", "-f", str(f)).stdout.splitlines()
    assert out == ['networkpolicy.networking.k8s.io "default-deny-ingress" deleted',
                   'networkpolicy.networking.k8s.io "a-no-egress" deleted']
    assert cli(cluster, "get", "netpol", "-A").stdout == ""
    assert matrix(cluster) == {a: dict.fromkeys(PODS, True) for a in PODS}
