"""The command line's argument handling (no cluster needed)."""

from __future__ import annotations

import pytest

from lab_kit import cli


def parse(argv: list[str]):
    return cli.parse_args(argv)


@pytest.mark.parametrize("argv", [
    ["capture", "lab-worker", "-i", "eth0", "udp", "port", "8472"],
    ["capture", "lab-worker", "udp", "port", "8472", "-i", "eth0"],
])
def test_capture_filter_words_anywhere(argv: list[str]) -> None:
    args = parse(argv)
    assert args.where == "lab-worker" and args.interface == "eth0"
    assert " ".join(args.filter) == "udp port 8472"


def test_capture_probe_and_layers() -> None:
    args = parse(["capture", "external", "--probe", "a", "b:8080", "--layers", "0", "-c", "5"])
    assert args.probe == ["a", "b:8080"] and args.layers == 0 and args.count == 5


def test_node_and_birdc_verbs() -> None:
    args = parse(["node", "add", "--role", "worker", "--label", "zone=a"])
    assert (args.action, args.role, args.label) == ("add", "worker", ["zone=a"])
    args = parse(["node", "remove", "lab-worker2"])
    assert (args.action, args.node) == ("remove", "lab-worker2")
    args = parse(["birdc", "lab-worker", "show", "route"])
    assert args.node == "lab-worker" and args.command == ["show", "route"]


def test_unknown_arguments_are_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["status", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_up_cluster_dns_and_dns_metrics_parse() -> None:
    from lab_kit import cli
    args = cli.parse_args(["up", "--cluster-dns"])
    assert args.cluster_dns and args.file is None
    args = cli.parse_args(["dns", "metrics", "--pod", "coredns-x"])
    assert (args.what, args.pod) == ("metrics", "coredns-x")


# --- probe --matrix and get networkpolicies (a stand-in cluster, no kernel) --------------------

def test_probe_pair_form_is_unchanged() -> None:
    args = parse(["probe", "web-a", "web-b:8080", "--protocol", "UDP", "-o", "json"])
    assert (args.source, args.to, args.protocol, args.output) == ("web-a", "web-b:8080",
                                                                    "UDP", "json")
    assert not args.matrix and args.port is None and args.timeout == 1.0


def test_probe_matrix_parse() -> None:
    args = parse(["probe", "--matrix", "--port", "81", "--protocol", "UDP", "-o", "wide",
                  "-n", "x", "--namespace", "y,z", "--expected"])
    assert args.matrix and args.expected and args.source is None and args.to is None
    assert (args.port, args.protocol, args.output) == (81, "UDP", "wide")
    assert args.namespace == ["x", "y,z"]


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_probe_port_must_be_a_port(port: str, capsys) -> None:
    with pytest.raises(SystemExit):
        parse(["probe", "--matrix", "--port", port])
    assert "is not a port" in capsys.readouterr().err


class _Pod:
    def __init__(self, key: str) -> None:
        self.key = key
        self.namespace = key.split("/")[0]


class _FakeCluster:
    """What `probe --matrix` and `get netpol` use of a Cluster."""

    def __init__(self, measured, expected=None, policies=None) -> None:
        self.measured, self.expected = measured, expected
        self.state = {"networkpolicies": policies or {}}
        self.calls: list[dict] = []

    def pods(self, namespace=None, *, include_system=False):
        keys = list(self.measured) + (["kube-system/coredns-0"] if include_system else [])
        return [_Pod(k) for k in keys]

    def reachability(self, port, protocol, pods=None, timeout=1.0, expected=True):
        from lab_kit.netpol import Verdict
        from lab_kit.reachability import Reachability
        self.calls.append({"port": port, "protocol": protocol, "pods": pods,
                           "expected": expected})
        m = {a: {b: self.measured.get(a, {}).get(b, True) for b in pods} for a in pods}
        exp = None
        if expected:
            src = self.expected or self.measured
            exp = {a: {b: src.get(a, {}).get(b, True) for b in pods} for a in pods}
        return Reachability(m, exp, port, protocol, 0.5,
                            {(a, b): Verdict((exp or m)[a][b], f"because {a}>{b}")
                             for a in pods for b in pods})


def _matrix(deny_into: str = "x") -> dict:
    pods = [f"{ns}/{p}" for ns in "xy" for p in "ab"]
    return {a: {b: a == b or not b.startswith(deny_into + "/") for b in pods} for a in pods}


def _run(monkeypatch, fake, argv):
    monkeypatch.setattr(cli, "_attach", lambda args: fake)
    return cli.main(argv)


def test_probe_matrix_json_is_the_measured_matrix_only(monkeypatch, capsys) -> None:
    import json
    fake = _FakeCluster(_matrix())
    rc = _run(monkeypatch, fake, ["probe", "--matrix", "--port", "80", "--protocol", "tcp",
                                  "-o", "json"])
    out = capsys.readouterr().out
    assert rc == 0 and json.loads(out) == _matrix()
    assert out.startswith('{"x/a": {"x/a": true, "x/b": false, ')
    assert fake.calls == [{"port": 80, "protocol": "TCP", "pods": list(_matrix()),
                           "expected": False}]  # kube-system left out


def test_probe_matrix_table_compares_with_the_engine(monkeypatch, capsys) -> None:
    expected = _matrix()
    expected["y/a"]["x/b"] = True
    fake = _FakeCluster(_matrix(), expected)
    assert _run(monkeypatch, fake, ["probe", "--matrix"]) == 0  # a mismatch alone: still 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "TCP/80  x/a x/b | y/a y/b"
    assert "[X]" in out and "y/a -> x/b: blocked, expected connected (because y/a>x/b)" in out
    assert fake.calls[0]["expected"] is True


def test_probe_matrix_expected_sets_the_exit_status(monkeypatch, capsys) -> None:
    agree = _FakeCluster(_matrix())
    assert _run(monkeypatch, agree, ["probe", "--matrix", "--expected", "-o", "json"]) == 0
    expected = _matrix()
    expected["y/a"]["x/b"] = True
    differ = _FakeCluster(_matrix(), expected)
    capsys.readouterr()
    assert _run(monkeypatch, differ, ["probe", "--matrix", "--expected", "-o", "json"]) == 1
    got = capsys.readouterr()
    assert '"y/a": {"x/a": false, "x/b": false' in got.out  # still the measured matrix
    assert "y/a -> x/b: blocked, expected connected" in got.err
    assert _run(monkeypatch, differ, ["probe", "--matrix", "--expected"]) == 1


def test_probe_matrix_wide_gives_the_reason_of_each_blocked_pair(monkeypatch, capsys) -> None:
    assert _run(monkeypatch, _FakeCluster(_matrix()), ["probe", "--matrix", "-o", "wide"]) == 0
    out = capsys.readouterr().out
    assert "  y/b -> x/a: blocked (because y/b>x/a)" in out
    assert out.count(": blocked (because") == 6  # 4 pods into 2 of x, less x/a, x/b to itself


def test_probe_matrix_namespaces(monkeypatch, capsys) -> None:
    fake = _FakeCluster(_matrix())
    assert _run(monkeypatch, fake, ["probe", "--matrix", "-n", "y", "-o", "json"]) == 0
    assert fake.calls[-1]["pods"] == ["y/a", "y/b"]
    assert _run(monkeypatch, fake, ["probe", "--matrix", "-n", "x,kube-system"]) == 0
    assert fake.calls[-1]["pods"] == ["x/a", "x/b", "kube-system/coredns-0"]
    assert _run(monkeypatch, fake, ["probe", "--matrix", "-n", "nope"]) == 1
    assert "no pods in namespace nope; namespaces with pods: kube-system, x, y" in (
        capsys.readouterr().err)


def test_probe_matrix_refuses_mixed_forms(monkeypatch, capsys) -> None:
    fake = _FakeCluster(_matrix())
    assert _run(monkeypatch, fake, ["probe", "--matrix", "x/a", "x/b"]) == 1
    assert "drop SRC/DST" in capsys.readouterr().err
    assert _run(monkeypatch, fake, ["probe", "x/a"]) == 1
    assert "lab-kit probe --matrix" in capsys.readouterr().err
    assert _run(monkeypatch, fake, ["probe", "x/a", "x/b", "--expected"]) == 1
    assert "go with --matrix" in capsys.readouterr().err


def _policy(ns: str, name: str, selector: dict, age: float) -> tuple[str, dict]:
    import time
    spec = {"podSelector": selector, "policyTypes": ["Ingress"]}
    return f"{ns}/{name}", {"spec": {"namespace": ns, "name": name, "labels": {},
                                     "spec": spec}, "created": time.time() - age}


def test_get_networkpolicies_like_kubectl(monkeypatch, capsys) -> None:
    pols = dict([_policy("x", "deny-all", {}, 30.4),
                 _policy("y", "allow-a", {"matchLabels": {"pod": "a"}}, 200),
                 _policy("default", "web", {"matchExpressions": [
                     {"key": "app", "operator": "In", "values": ["api", "web"]}]}, 4000)])
    fake = _FakeCluster(_matrix(), policies=pols)
    for kind in ("networkpolicies", "netpol", "networkpolicy"):
        assert _run(monkeypatch, fake, ["get", kind, "-A"]) == 0
        assert capsys.readouterr().out.splitlines() == [
            "NAMESPACE   NAME       POD-SELECTOR       AGE",
            "default     web        app in (api,web)   66m",
            "x           deny-all   <none>             30s",
            "y           allow-a    pod=a              3m20s"]
    assert _run(monkeypatch, fake, ["get", "netpol", "-n", "x"]) == 0
    assert capsys.readouterr().out.splitlines() == ["NAME       POD-SELECTOR   AGE",
                                                    "deny-all   <none>         30s"]
    assert _run(monkeypatch, fake, ["get", "netpol", "-n", "z"]) == 0
    assert capsys.readouterr().err.strip() == "No resources found in z namespace."
    assert _run(monkeypatch, fake, ["get", "netpol", "nope", "-n", "x"]) == 1
    assert '"nope" not found in namespace x' in capsys.readouterr().err


def test_get_networkpolicies_yaml(monkeypatch, capsys) -> None:
    import yaml
    fake = _FakeCluster(_matrix(), policies=dict([_policy("x", "deny-all", {}, 5)]))
    assert _run(monkeypatch, fake, ["get", "netpol", "deny-all", "-n", "x", "-o", "yaml"]) == 0
    obj = yaml.safe_load(capsys.readouterr().out)
    assert obj["apiVersion"] == "networking.k8s.io/v1" and obj["kind"] == "NetworkPolicy"
    assert obj["metadata"]["name"] == "deny-all" and obj["metadata"]["namespace"] == "x"
    assert obj["metadata"]["creationTimestamp"].endswith("Z")
    assert obj["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


@pytest.mark.parametrize(("seconds", "age"), [
    (-5, "<invalid>"), (-0.5, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (125, "2m5s"),
    (600, "10m"), (3 * 3600 - 1, "179m"), (3 * 3600, "3h"), (5 * 3600 + 120, "5h2m"),
    (8 * 3600, "8h"), (47 * 3600, "47h"), (50 * 3600, "2d2h"), (10 * 86400, "10d"),
    (800 * 86400, "2y70d"), (9 * 365 * 86400, "9y")])
def test_age_is_kubectls(seconds: float, age: str) -> None:
    assert cli.human_duration(seconds) == age
