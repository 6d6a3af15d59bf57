"""NetworkPolicy's pure layers: validation, the engine's truth tables, the rules, their agreement.

The scenario is the upstream e2e suite's (test/e2e/network/netpol): namespaces x, y, z labelled
ns=<name>, pods a, b, c in each labelled pod=<name>, each with the named ports serve-80-tcp,
serve-81-tcp, serve-80-udp and serve-81-udp. The pods sit on two made-up nodes, w1 (10.244.1.x)
and w2 (10.244.2.x). Nothing here needs root or a kernel.

Expected matrices are written as grids: one row per source pod (x/a … z/c), one column per
destination in the same order, in groups of three per namespace; `1` = allowed, `.` = blocked.
A pod talking to itself is always allowed (the diagonal), unlike upstream's e2e suite, which
ignores loopback altogether.
"""

from __future__ import annotations

import functools
import ipaddress
import random
import re
import shlex
import textwrap
from typing import Any

import pytest

from lab_kit import netpol
from lab_kit.errors import ConfigError
from lab_kit.model import load_manifests
from lab_kit.netpol import (
    Engine,
    Match,
    NodeRules,
    PodRef,
    node_rules,
    parse_policy,
    render_iptables,
    render_iptables_removal,
    render_nft,
    render_nft_removal,
)

NSS = ("x", "y", "z")
NAMES = ("a", "b", "c")
KEYS = [f"{n}/{p}" for n in NSS for p in NAMES]
NAMED = (("serve-80-tcp", "TCP", 80), ("serve-81-tcp", "TCP", 81),
         ("serve-80-udp", "UDP", 80), ("serve-81-udp", "UDP", 81))
NAMESPACES = {n: {"ns": n} for n in NSS}  # kubernetes.io/metadata.name is the engine's to add


def make_pod(ns: str, name: str, idx: int, labels: dict[str, str] | None = None,
             ports: tuple[tuple[str, str, int], ...] = NAMED, iface: str | None = None,
             node: str | None = None) -> PodRef:
    """Pod number `idx`: even ones on w1 (10.244.1.<10+idx>), odd ones on w2 (10.244.2.…)."""
    on_w1 = idx % 2 == 0
    return PodRef(ns, name, f"10.244.{1 if on_w1 else 2}.{10 + idx}",
                  {"pod": name} if labels is None else labels, ports,
                  node or ("w1" if on_w1 else "w2"),
                  f"veth{idx:08x}" if iface is None else iface)


PODS = [make_pod(n, p, i) for i, (n, p) in enumerate((n, p) for n in NSS for p in NAMES)]
BY_KEY = {p.key: p for p in PODS}
IP = {p.key: p.ip for p in PODS}


def np_doc(name: str, spec: str, ns: str = "x") -> str:
    """One NetworkPolicy manifest with `spec` (YAML, flow style welcome) under `spec:`."""
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n"
            f"  name: {name}\n  namespace: {ns}\nspec:\n{body}\n---\n")


def load(text: str) -> list[netpol.NetworkPolicy]:
    objs = [o for o, _ in load_manifests(text)] if text.strip() else []
    assert all(isinstance(o, netpol.NetworkPolicy) for o in objs)
    return objs


def engine(text: str = "", pods: list[PodRef] | None = None,
           namespaces: dict[str, dict[str, str]] | None = None) -> Engine:
    return Engine(load(text), PODS if pods is None else pods,
                  NAMESPACES if namespaces is None else namespaces)


def grid(text: str) -> dict[str, dict[str, bool]]:
    rows: dict[str, dict[str, bool]] = {}
    for line in textwrap.dedent(text).strip().splitlines():
        key, *cells = line.split()
        bits = "".join(cells)
        assert len(bits) == len(KEYS) and set(bits) <= {"1", "."}, line
        rows[key] = {k: b == "1" for k, b in zip(KEYS, bits, strict=True)}
    assert list(rows) == KEYS
    return rows


def diff(got: dict[str, dict[str, bool]], want: dict[str, dict[str, bool]]) -> list[str]:
    return [f"{a} -> {b}: engine {'allows' if got[a][b] else 'blocks'}"
            for a in KEYS for b in KEYS if got[a][b] != want[a][b]]


def assert_matrix(eng: Engine, want: dict[str, dict[str, bool]], port: int, proto: str) -> None:
    got = eng.matrix(KEYS, port, proto)
    assert list(got) == KEYS and all(list(row) == KEYS for row in got.values())
    bad = diff(got, want)
    assert not bad, f"{port}/{proto}:\n" + "\n".join(bad)


# --- 1. parsing and validation ---------------------------------------------------------------

def bad(spec: str, field: str, *mentions: str) -> Any:
    return pytest.param(spec, field, mentions, id=field.replace("spec.", "") + ":" + (
        mentions[0] if mentions else ""))


INVALID = [
    bad("podSelector: {matchExpressions: [{key: pod, operator: Has, values: [a]}]}",
        "spec.podSelector.matchExpressions[0].operator", "'Has'", "In, NotIn"),
    bad("podSelector: {}\ningress: [{from: [{podSelector: {matchLabels: {pod: a}}},"
        " {podSelector: {matchExpressions: [{key: pod, operator: in, values: [a]}]}}]}]",
        "spec.ingress[0].from[1].podSelector.matchExpressions[0].operator", "'in'"),
    bad("podSelector: {}\negress: [{to: [{namespaceSelector: "
        "{matchExpressions: [{key: ns, operator: Equals, values: [y]}]}}]}]",
        "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].operator", "'Equals'"),
    bad("podSelector: {matchExpressions: [{key: pod, operator: In}]}",
        "spec.podSelector.matchExpressions[0].values", "'In'"),
    bad("podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: []}]}",
        "spec.podSelector.matchExpressions[0].values", "'NotIn'"),
    bad("podSelector: {matchExpressions: [{key: pod, operator: Exists, values: [a]}]}",
        "spec.podSelector.matchExpressions[0].values", "'Exists'"),
    bad("podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist, values: [a]}]}",
        "spec.podSelector.matchExpressions[0].values", "'DoesNotExist'"),
    bad("podSelector: {matchLabels: {'bad key!': a}}", "spec.podSelector.matchLabels",
        "'bad key!'"),
    bad("podSelector: {matchLabels: {Example.com/pod: a}}", "spec.podSelector.matchLabels",
        "'Example.com/pod'"),
    bad("podSelector: {matchLabels: {pod: 'has space'}}", "spec.podSelector.matchLabels.pod",
        "'has space'"),
    bad(f"podSelector: {{matchLabels: {{pod: {'v' * 64}}}}}", "spec.podSelector.matchLabels.pod",
        "v" * 64),
    bad("podSelector: {matchExpressions: [{key: '-pod', operator: Exists}]}",
        "spec.podSelector.matchExpressions[0].key", "'-pod'"),
    bad("podSelector: {matchExpressions: [{key: pod, operator: In, values: ['a b']}]}",
        "spec.podSelector.matchExpressions[0].values[0]", "'a b'"),
    bad("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]",
        "spec.ingress[0].from[0].ipBlock.cidr", "10.0.0.0/33"),
    bad("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 300.1.0.0/8}}]}]",
        "spec.ingress[0].from[0].ipBlock.cidr", "300.1.0.0/8"),
    bad("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.1}}]}]",
        "spec.ingress[0].from[0].ipBlock.cidr", "10.0.0.1"),
    bad("podSelector: {}\negress: [{to: [{podSelector: {}},"
        " {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 11.0.0.0/16]}}]}]",
        "spec.egress[0].to[1].ipBlock.except[1]", "11.0.0.0/16", "strict subset"),
    bad("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/8,"
        " except: [10.0.0.0/8]}}]}]",
        "spec.ingress[0].from[0].ipBlock.except[0]", "10.0.0.0/8", "strict subset"),
    bad("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/16,"
        " except: [10.0.0.0/8]}}]}]",
        "spec.ingress[0].from[0].ipBlock.except[0]", "10.0.0.0/8"),
    bad("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/8,"
        " except: [10.1.0.0/33]}}]}]",
        "spec.ingress[0].from[0].ipBlock.except[0]", "10.1.0.0/33"),
    bad("podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/8},"
        " podSelector: {}}]}]", "spec.ingress[0].from[0]", "ipBlock"),
    bad("podSelector: {}\ningress: [{from: [{podSelector: {}}, {}]}]", "spec.ingress[0].from[1]",
        "peer"),
    bad("podSelector: {}\ningress: [{ports: [{port: 0}]}]", "spec.ingress[0].ports[0].port", "0 ",
        "65535"),
    bad("podSelector: {}\negress: [{ports: [{port: 80}, {port: 70000}]}]",
        "spec.egress[0].ports[1].port", "70000"),
    bad("podSelector: {}\ningress: [{ports: [{port: 81, endPort: 80}]}]",
        "spec.ingress[0].ports[0].endPort", "80", "`port` (81)"),
    bad("podSelector: {}\ningress: [{ports: [{port: 80, endPort: 70000}]}]",
        "spec.ingress[0].ports[0].endPort", "70000"),
    bad("podSelector: {}\ningress: [{ports: [{port: serve-80-tcp, endPort: 81}]}]",
        "spec.ingress[0].ports[0].endPort", "non-numeric"),
    bad("podSelector: {}\ningress: [{ports: [{protocol: TCP, endPort: 81}]}]",
        "spec.ingress[0].ports[0].endPort", "not specified"),
    bad("podSelector: {}\ningress: [{ports: [{protocol: ICMP, port: 80}]}]",
        "spec.ingress[0].ports[0].protocol", "'ICMP'", "TCP, UDP, SCTP"),
    bad("podSelector: {}\ningress: [{ports: [{protocol: tcp, port: 80}]}]",
        "spec.ingress[0].ports[0].protocol", "'tcp'"),
    bad("podSelector: {}\ningress: [{ports: [{port: Serve_80}]}]",
        "spec.ingress[0].ports[0].port", "'Serve_80'"),
    bad("podSelector: {}\ningress: [{ports: [{port: serve-80-tcp-and-more}]}]",
        "spec.ingress[0].ports[0].port", "'serve-80-tcp-and-more'"),
    bad("podSelector: {}\ningress: [{ports: [{port: '80'}]}]",
        "spec.ingress[0].ports[0].port", "'80'"),
    bad("podSelector: {}\ningress: [{ports: [{port: -serve}]}]",
        "spec.ingress[0].ports[0].port", "'-serve'"),
    bad("podSelector: {}\ningress: [{ports: [{port: '8080'}]}]",
        "spec.ingress[0].ports[0].port", "'8080'"),
    bad("podSelector: {}\npolicyTypes: [Both]", "spec.policyTypes[0]", "'Both'"),
    bad("podSelector: {}\npolicyTypes: [Ingress, ingress]", "spec.policyTypes[1]", "'ingress'"),
    bad("podSelector: {}\npolicyTypes: [Ingress, Egress, Ingress]", "spec.policyTypes",
        "more than two"),
]


@pytest.mark.parametrize(("spec", "field", "mentions"), INVALID)
def test_invalid_policy_names_the_field(spec: str, field: str, mentions: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as ei:
        load_manifests(np_doc("p", spec))
    err = ei.value
    assert err.field == field, str(err)
    assert err.obj == "NetworkPolicy/x/p"
    assert err.file == "<string>"
    text = str(err)
    assert f"field `{field}`" in text
    for m in mentions:
        assert m in text, f"{m!r} not in {text!r}"


def test_missing_pod_selector_is_rejected() -> None:
    # the Kubernetes schema catches it first (field `spec`), the parser on its own names the field
    with pytest.raises(ConfigError) as ei:
        load_manifests(np_doc("p", "ingress: [{}]"))
    assert ei.value.field == "spec" and "'podSelector'" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        parse_policy("x", "p", {}, {"ingress": [{}]})
    assert ei.value.field == "spec.podSelector"
    assert "podSelector: {}" in str(ei.value)  # the fix shows how to select every pod


def test_schema_rejects_misspelt_fields() -> None:
    # a typo must not silently turn `from` into "from everywhere"
    with pytest.raises(ConfigError) as ei:
        load_manifests(np_doc("p", "podSelector: {}\ningress: [{form: [{podSelector: {}}]}]"))
    assert ei.value.field == "spec.ingress[0]" and "'form'" in str(ei.value)


def test_first_bad_document_stops_the_whole_input() -> None:
    text = np_doc("ok", "podSelector: {}") + np_doc("bad", "podSelector: {}\npolicyTypes: [X]")
    with pytest.raises(ConfigError) as ei:
        load_manifests(text)
    assert ei.value.obj == "NetworkPolicy/x/bad"


@pytest.mark.parametrize("spec", [
    "podSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.1/8}}]}]",  # host bits: accepted
    "podSelector: {}\ningress: [{from: [{ipBlock: {cidr: '2001:db8::/64',"
    " except: ['2001:db8::/96']}}]}]",
    "podSelector: {}\ningress: [{ports: [{port: 80, endPort: 80}]}]",
    "podSelector: {}\ningress: [{ports: [{port: 1}, {port: 65535}, {port: a}]}]",
    "podSelector: {}\ningress: [{ports: [{port: serve-80-tcp, protocol: SCTP}]}]",
    "podSelector: {matchLabels: {example.com/pod: A_b.c}}",
    f"podSelector: {{matchLabels: {{pod: {'v' * 63}, k: ''}}}}",
    "podSelector: {}\npolicyTypes: [Egress, Ingress]",
    "podSelector: {}\npolicyTypes: [Ingress, Ingress]",  # duplicates pass upstream's check too
])
def test_valid_edge_cases_are_accepted(spec: str) -> None:
    (pol,) = load(np_doc("p", spec))
    assert pol.key == "x/p"


def test_port_name_with_consecutive_hyphens_is_rejected() -> None:
    with pytest.raises(ConfigError) as ei:
        load_manifests(np_doc("p", "podSelector: {}\ningress: [{ports: [{port: serve--80}]}]"))
    assert ei.value.field == "spec.ingress[0].ports[0].port"


def test_label_key_with_empty_prefix_is_rejected() -> None:
    with pytest.raises(ConfigError) as ei:
        load_manifests(np_doc("p", "podSelector: {matchLabels: {/pod: a}}"))
    assert ei.value.field == "spec.podSelector.matchLabels"


def test_empty_protocol_string_is_rejected() -> None:
    with pytest.raises(ConfigError) as ei:
        load_manifests(np_doc("p", "podSelector: {}\n"
                                   "ingress: [{ports: [{protocol: '', port: 80}]}]"))
    assert ei.value.field == "spec.ingress[0].ports[0].protocol"


def test_parsed_objects() -> None:
    (pol,) = load(np_doc("p", """
        podSelector: {matchLabels: {pod: a}, matchExpressions: [{key: tier, operator: In,
                      values: [web, api]}, {key: debug, operator: DoesNotExist}]}
        ingress:
        - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {}},
                 {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.2.0/24, 10.1.3.0/24, 10.9.0.0/16]}}]
          ports: [{port: 80, endPort: 90}, {protocol: UDP}, {port: serve-80-tcp}]
        """))
    assert pol.pod_selector.match_labels == (("pod", "a"),)
    assert [(r.key, r.operator, r.values) for r in pol.pod_selector.match_expressions] == [
        ("tier", "In", ("web", "api")), ("debug", "DoesNotExist", ())]
    assert str(pol.pod_selector) == "!debug,pod=a,tier in (api,web)"  # kubectl's order
    assert str(netpol.LabelSelector()) == "<none>"
    (rule,) = pol.ingress
    both, block = rule.peers
    assert both.namespace_selector.match_labels == (("ns", "y"),)
    assert both.pod_selector is not None and both.pod_selector.empty and both.ip_block is None
    # adjacent excepts are merged; the IPBlock is otherwise as written
    assert block.ip_block == netpol.IPBlock("10.0.0.0/8", ("10.1.2.0/23", "10.9.0.0/16"))
    assert block.ip_block.contains("10.1.1.255") and not block.ip_block.contains("10.1.3.7")
    assert not block.ip_block.contains("11.0.0.1")
    assert rule.ports == (netpol.PolicyPort("TCP", 80, 90), netpol.PolicyPort("UDP"),
                          netpol.PolicyPort("TCP", "serve-80-tcp"))
    assert pol.egress == ()


# --- 2. defaulting --------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "types"), [
    ("podSelector: {}", ("Ingress",)),
    ("podSelector: {}\ningress: [{}]", ("Ingress",)),
    ("podSelector: {}\negress: []", ("Ingress",)),  # an empty list is no egress rule
    ("podSelector: {}\negress: [{}]", ("Ingress", "Egress")),
    ("podSelector: {}\ningress: [{}]\negress: [{to: [{podSelector: {}}]}]", ("Ingress", "Egress")),
    ("podSelector: {}\npolicyTypes: [Egress]", ("Egress",)),
    ("podSelector: {}\npolicyTypes: [Egress]\ningress: [{}]", ("Egress",)),
    ("podSelector: {}\npolicyTypes: [Egress, Ingress]", ("Egress", "Ingress")),
])
def test_policy_types_default_as_upstream(spec: str, types: tuple[str, ...]) -> None:
    (pol,) = load(np_doc("p", spec))
    assert pol.policy_types == types
    assert pol.spec["policyTypes"] == list(types)  # stored defaulted, as the API server does
    back = netpol.policy_from_json(netpol.policy_to_json(pol))
    assert back == pol


def test_egress_only_policy_leaves_ingress_open() -> None:
    eng = engine(np_doc("p", "podSelector: {}\npolicyTypes: [Egress]"))
    xa = BY_KEY["x/a"]
    assert [p.name for p in eng.selecting(xa, "Egress")] == ["p"]
    assert eng.selecting(xa, "Ingress") == []
    assert eng.allowed(BY_KEY["y/a"], xa, 80)
    assert not eng.allowed(xa, BY_KEY["y/a"], 80)


def test_protocol_defaults_to_tcp() -> None:
    (pol,) = load(np_doc("p", "podSelector: {}\ningress: [{ports: [{port: 80}, {}]}]"))
    assert [p.protocol for p in pol.ingress[0].ports] == ["TCP", "TCP"]
    eng = Engine([pol], PODS, NAMESPACES)
    assert eng.allowed(BY_KEY["y/a"], BY_KEY["x/a"], 80, "TCP")
    assert eng.allowed(BY_KEY["y/a"], BY_KEY["x/a"], 81, "TCP")  # {} = every TCP port
    assert not eng.allowed(BY_KEY["y/a"], BY_KEY["x/a"], 80, "UDP")


# --- 3. the engine's truth tables ------------------------------------------------------------

ALL = grid("""
    x/a 111 111 111
    x/b 111 111 111
    x/c 111 111 111
    y/a 111 111 111
    y/b 111 111 111
    y/c 111 111 111
    z/a 111 111 111
    z/b 111 111 111
    z/c 111 111 111
""")
DENY_INGRESS_X = grid("""
    x/a 1.. 111 111
    x/b .1. 111 111
    x/c ..1 111 111
    y/a ... 111 111
    y/b ... 111 111
    y/c ... 111 111
    z/a ... 111 111
    z/b ... 111 111
    z/c ... 111 111
""")
DENY_EGRESS_X = grid("""
    x/a 1.. ... ...
    x/b .1. ... ...
    x/c ..1 ... ...
    y/a 111 111 111
    y/b 111 111 111
    y/c 111 111 111
    z/a 111 111 111
    z/b 111 111 111
    z/c 111 111 111
""")
DENY_ALL_X = grid("""
    x/a 1.. ... ...
    x/b .1. ... ...
    x/c ..1 ... ...
    y/a ... 111 111
    y/b ... 111 111
    y/c ... 111 111
    z/a ... 111 111
    z/b ... 111 111
    z/c ... 111 111
""")
XA_ONLY_FROM_XB = grid("""
    x/a 111 111 111
    x/b 111 111 111
    x/c .11 111 111
    y/a .11 111 111
    y/b .11 111 111
    y/c .11 111 111
    z/a .11 111 111
    z/b .11 111 111
    z/c .11 111 111
""")
XA_ONLY_FROM_NS_Y = grid("""
    x/a 111 111 111
    x/b .11 111 111
    x/c .11 111 111
    y/a 111 111 111
    y/b 111 111 111
    y/c 111 111 111
    z/a .11 111 111
    z/b .11 111 111
    z/c .11 111 111
""")
XA_ISOLATED = grid("""
    x/a 111 111 111
    x/b .11 111 111
    x/c .11 111 111
    y/a .11 111 111
    y/b .11 111 111
    y/c .11 111 111
    z/a .11 111 111
    z/b .11 111 111
    z/c .11 111 111
""")
XA_ONLY_FROM_YA = grid("""
    x/a 111 111 111
    x/b .11 111 111
    x/c .11 111 111
    y/a 111 111 111
    y/b .11 111 111
    y/c .11 111 111
    z/a .11 111 111
    z/b .11 111 111
    z/c .11 111 111
""")
XA_ONLY_FROM_X = grid("""
    x/a 111 111 111
    x/b 111 111 111
    x/c 111 111 111
    y/a .11 111 111
    y/b .11 111 111
    y/c .11 111 111
    z/a .11 111 111
    z/b .11 111 111
    z/c .11 111 111
""")

ALLOW_XA_FROM_NS_Y_81 = np_doc("allow-81", """
    podSelector: {matchLabels: {pod: a}}
    ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}],
               ports: [{port: 81, protocol: TCP}]}]
""")
EXCEPT_XB = np_doc("cidr-except", f"""
    podSelector: {{matchLabels: {{pod: a}}}}
    policyTypes: [Egress]
    egress: [{{to: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{IP['x/b']}/32]}}}}]}}]
""")


def case(name: str, policies: str, *checks: tuple[int, str, dict[str, dict[str, bool]]],
         namespaces: dict[str, dict[str, str]] | None = None,
         pods: list[PodRef] | None = None) -> Any:
    return pytest.param(policies, checks, namespaces, pods, id=name)


TCP80, TCP81, UDP80, UDP81 = (80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP")

CASES = [
    case("default-deny-ingress",
         np_doc("deny", "podSelector: {}\npolicyTypes: [Ingress]"),
         (*TCP80, DENY_INGRESS_X), (*UDP81, DENY_INGRESS_X)),
    case("ingress-empty-list-denies",
         np_doc("deny", "podSelector: {}\ningress: []"),
         (*TCP80, DENY_INGRESS_X), (*TCP81, DENY_INGRESS_X)),
    case("ingress-one-empty-rule-allows-all",
         np_doc("allow", "podSelector: {}\ningress: [{}]"),
         (*TCP80, ALL), (*UDP81, ALL)),
    case("ingress-rule-with-empty-lists-allows-all",
         np_doc("allow", "podSelector: {}\ningress: [{from: [], ports: []}]"),
         (*TCP81, ALL)),
    case("default-deny-all",
         np_doc("deny-all", "podSelector: {}\npolicyTypes: [Ingress, Egress]"),
         (*TCP80, DENY_ALL_X), (*UDP80, DENY_ALL_X)),
    case("default-deny-egress",
         np_doc("deny-egress", "podSelector: {}\npolicyTypes: [Egress]"),
         (*TCP80, DENY_EGRESS_X), (*UDP81, DENY_EGRESS_X)),
    case("deny-egress-one-pod",
         np_doc("deny-egress-a", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]"),
         (*TCP80, grid("""
             x/a 1.. ... ...
             x/b 111 111 111
             x/c 111 111 111
             y/a 111 111 111
             y/b 111 111 111
             y/c 111 111 111
             z/a 111 111 111
             z/b 111 111 111
             z/c 111 111 111
         """))),
    case("podselector-matchlabels",
         np_doc("x-a-allows-x-b", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
         """), (*TCP80, XA_ONLY_FROM_XB)),
    case("podselector-matchexpressions-in",
         np_doc("x-a-allows-x-b", """
             podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]}
             ingress: [{from: [{podSelector: {matchExpressions:
                                [{key: pod, operator: In, values: [b]}]}}]}]
         """), (*TCP80, XA_ONLY_FROM_XB)),
    case("podselector-matchexpressions-notin",
         np_doc("x-a-allows-not-a-c", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [{podSelector: {matchExpressions:
                                [{key: pod, operator: NotIn, values: [a, c]}]}}]}]
         """), (*TCP80, XA_ONLY_FROM_XB)),
    case("namespaceselector-matchlabels",
         np_doc("allow-ns-y", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
         """), (*TCP80, XA_ONLY_FROM_NS_Y)),
    case("namespaceselector-default-label-matchlabels",
         np_doc("allow-ns-y", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [{namespaceSelector:
                                {matchLabels: {kubernetes.io/metadata.name: y}}}]}]
         """), (*TCP80, XA_ONLY_FROM_NS_Y)),
    case("namespaceselector-matchexpressions-in",
         np_doc("allow-ns-y", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [{namespaceSelector: {matchExpressions:
                 [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]}}]}]
         """), (*TCP80, XA_ONLY_FROM_NS_Y)),
    case("peers-or-namespace-notin-or-pod",
         np_doc("ns-not-x-or-pod-b", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [
                 {namespaceSelector: {matchExpressions:
                     [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}},
                 {podSelector: {matchLabels: {pod: b}}}]}]
         """), (*TCP80, grid("""
             x/a 111 111 111
             x/b 111 111 111
             x/c .11 111 111
             y/a 111 111 111
             y/b 111 111 111
             y/c 111 111 111
             z/a 111 111 111
             z/b 111 111 111
             z/c 111 111 111
         """))),
    case("peer-and-namespace-and-pod",
         np_doc("ns-not-x-and-pod-b", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [
                 {namespaceSelector: {matchExpressions:
                     [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]},
                  podSelector: {matchLabels: {pod: b}}}]}]
         """), (*TCP80, grid("""
             x/a 111 111 111
             x/b .11 111 111
             x/c .11 111 111
             y/a .11 111 111
             y/b 111 111 111
             y/c .11 111 111
             z/a .11 111 111
             z/b 111 111 111
             z/c .11 111 111
         """))),
    case("peer-and-multiple-values",
         np_doc("ns-not-x-pod-b-c", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [
                 {namespaceSelector: {matchExpressions:
                     [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]},
                  podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]}]
         """), (*TCP80, grid("""
             x/a 111 111 111
             x/b .11 111 111
             x/c .11 111 111
             y/a .11 111 111
             y/b 111 111 111
             y/c 111 111 111
             z/a .11 111 111
             z/b 111 111 111
             z/c 111 111 111
         """))),
    case("peers-or-two-podselectors",
         np_doc("pod-b-or-c", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [{podSelector: {matchLabels: {pod: b}}},
                               {podSelector: {matchLabels: {pod: c}}}]}]
         """), (*TCP80, XA_ONLY_FROM_X)),
    case("peer-and-ns-y-pod-a",
         np_doc("y-a-only", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}},
                                podSelector: {matchLabels: {pod: a}}}]}]
         """), (*TCP80, XA_ONLY_FROM_YA), (*UDP80, XA_ONLY_FROM_YA)),
    case("numeric-port-81",
         ALLOW_XA_FROM_NS_Y_81,
         (*TCP81, XA_ONLY_FROM_NS_Y), (*TCP80, XA_ISOLATED), (*UDP81, XA_ISOLATED)),
    case("stacked-policies-union",
         ALLOW_XA_FROM_NS_Y_81 + np_doc("allow-80", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}],
                        ports: [{port: 80, protocol: TCP}]}]
         """), (*TCP81, XA_ONLY_FROM_NS_Y), (*TCP80, XA_ONLY_FROM_NS_Y), (*UDP80, XA_ISOLATED)),
    case("named-port-ingress",
         np_doc("allow-81-named", "podSelector: {}\ningress: [{ports: [{port: serve-81-tcp}]}]"),
         (*TCP81, ALL), (*TCP80, DENY_INGRESS_X), (*UDP81, DENY_INGRESS_X)),
    case("named-port-ingress-from-namespace",
         np_doc("allow-80-named-from-y", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}],
                        ports: [{port: serve-80-tcp, protocol: TCP}]}]
         """), (*TCP80, XA_ONLY_FROM_NS_Y), (*TCP81, XA_ISOLATED)),
    case("named-port-udp",
         np_doc("allow-81-udp-named", """
             podSelector: {}
             ingress: [{ports: [{port: serve-81-udp, protocol: UDP}]}]
         """), (*UDP81, ALL), (*UDP80, DENY_INGRESS_X), (*TCP81, DENY_INGRESS_X)),
    case("named-port-wrong-protocol-matches-nothing",
         np_doc("udp-named-tcp-port", """
             podSelector: {}
             ingress: [{ports: [{port: serve-80-tcp, protocol: UDP},
                                {port: serve-80-udp}]}]
         """), (*TCP80, DENY_INGRESS_X), (*UDP80, DENY_INGRESS_X)),
    case("named-port-egress",
         np_doc("allow-egress-80-named", "podSelector: {}\npolicyTypes: [Egress]\n"
                "egress: [{ports: [{port: serve-80-tcp}]}]"),
         (*TCP80, ALL), (*TCP81, DENY_EGRESS_X), (*UDP80, DENY_EGRESS_X)),
    case("ingress-and-egress-together",
         np_doc("both", """
             podSelector: {matchLabels: {pod: a}}
             policyTypes: [Egress, Ingress]
             ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
             egress: [{ports: [{port: 80}]}]
         """), (*TCP80, XA_ONLY_FROM_XB), (*TCP81, grid("""
             x/a 1.. ... ...
             x/b 111 111 111
             x/c .11 111 111
             y/a .11 111 111
             y/b .11 111 111
             y/c .11 111 111
             z/a .11 111 111
             z/b .11 111 111
             z/c .11 111 111
         """))),
    case("egress-denied-even-if-server-allows",
         np_doc("x-a-to-y-a", """
             podSelector: {matchLabels: {pod: a}}
             policyTypes: [Egress]
             egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}},
                             podSelector: {matchLabels: {pod: a}}}]}]
         """) + "".join(np_doc(f"from-x-a-on-y-{p}", f"""
             podSelector: {{matchLabels: {{pod: {p}}}}}
             ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: x}}}},
                                 podSelector: {{matchLabels: {{pod: a}}}}}}]}}]
         """, ns="y") for p in "ab"), (*TCP80, grid("""
             x/a 1.. 1.. ...
             x/b 111 ..1 111
             x/c 111 ..1 111
             y/a 111 1.1 111
             y/b 111 .11 111
             y/c 111 ..1 111
             z/a 111 ..1 111
             z/b 111 ..1 111
             z/c 111 ..1 111
         """))),
    case("protocol-only-port",
         np_doc("tcp-any-port", "podSelector: {matchLabels: {pod: a}}\n"
                "ingress: [{ports: [{protocol: TCP}]}]"),
         (*TCP80, ALL), (*TCP81, ALL), (*UDP80, XA_ISOLATED)),
    case("allow-all-ingress-takes-precedence",
         np_doc("port-80", "podSelector: {}\ningress: [{ports: [{port: 80}]}]")
         + np_doc("allow-all", "podSelector: {}\ningress: [{}]"),
         (*TCP81, ALL), (*UDP80, ALL)),
    case("allow-all-egress-takes-precedence",
         np_doc("port-80", "podSelector: {}\npolicyTypes: [Egress]\n"
                "egress: [{ports: [{port: 80}]}]")
         + np_doc("allow-all", "podSelector: {}\npolicyTypes: [Egress]\negress: [{}]"),
         (*TCP81, ALL)),
    case("only-port-80-egress",
         np_doc("port-80", "podSelector: {}\npolicyTypes: [Egress]\n"
                "egress: [{ports: [{port: 80}]}]"),
         (*TCP80, ALL), (*TCP81, DENY_EGRESS_X)),
    case("ipblock-egress-to-one-pod",
         np_doc("cidr", f"""
             podSelector: {{matchLabels: {{pod: a}}}}
             policyTypes: [Egress]
             egress: [{{to: [{{ipBlock: {{cidr: {IP['y/b']}/32}}}}]}}]
         """), (*TCP80, grid("""
             x/a 1.. .1. ...
             x/b 111 111 111
             x/c 111 111 111
             y/a 111 111 111
             y/b 111 111 111
             y/c 111 111 111
             z/a 111 111 111
             z/b 111 111 111
             z/c 111 111 111
         """))),
    case("ipblock-except-egress",
         EXCEPT_XB, (*TCP80, grid("""
             x/a 1.1 111 111
             x/b 111 111 111
             x/c 111 111 111
             y/a 111 111 111
             y/b 111 111 111
             y/c 111 111 111
             z/a 111 111 111
             z/b 111 111 111
             z/c 111 111 111
         """))),
    case("ipblock-except-overlap-second-policy-allows",
         EXCEPT_XB + np_doc("cidr-xb", f"""
             podSelector: {{matchLabels: {{pod: a}}}}
             policyTypes: [Egress]
             egress: [{{to: [{{ipBlock: {{cidr: {IP['x/b']}/32}}}}]}}]
         """), (*TCP80, ALL)),
    case("ipblock-except-ingress-node-cidr",
         np_doc("from-w2-but-not-z-b", f"""
             podSelector: {{matchLabels: {{pod: a}}}}
             ingress: [{{from: [{{ipBlock: {{cidr: 10.244.2.0/24, except: [{IP['z/b']}/32]}}}}]}}]
         """), (*TCP80, grid("""
             x/a 111 111 111
             x/b 111 111 111
             x/c .11 111 111
             y/a 111 111 111
             y/b .11 111 111
             y/c 111 111 111
             z/a .11 111 111
             z/b .11 111 111
             z/c .11 111 111
         """))),
    case("ingress-and-egress-independent",
         np_doc("allow-egress-a", "podSelector: {matchLabels: {pod: a}}\n"
                  "policyTypes: [Egress]\negress: [{}]")
         + np_doc("deny-ingress-a", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]"),
         (*TCP80, XA_ISOLATED)),
    case("sctp-rule-does-not-allow-tcp",
         np_doc("deny", "podSelector: {}\npolicyTypes: [Ingress]")
         + np_doc("sctp-81", "podSelector: {matchLabels: {pod: a}}\n"
                  "ingress: [{ports: [{port: 81, protocol: SCTP}]}]"),
         (*TCP81, DENY_INGRESS_X), (81, "SCTP", grid("""
             x/a 1.. 111 111
             x/b 11. 111 111
             x/c 1.1 111 111
             y/a 1.. 111 111
             y/b 1.. 111 111
             y/c 1.. 111 111
             z/a 1.. 111 111
             z/b 1.. 111 111
             z/c 1.. 111 111
         """))),
    case("sctp-only-policy-still-isolates",
         np_doc("sctp-80", "podSelector: {matchLabels: {pod: a}}\n"
                "ingress: [{ports: [{port: 80, protocol: SCTP}]}]"),
         (*TCP81, XA_ISOLATED), (*TCP80, XA_ISOLATED), (80, "SCTP", ALL)),
    case("udp-only-policy-blocks-tcp",
         np_doc("udp-81", "podSelector: {matchLabels: {pod: a}}\n"
                "ingress: [{ports: [{port: 81, protocol: UDP}]}]"),
         (*TCP81, XA_ISOLATED), (*UDP81, ALL), (*UDP80, XA_ISOLATED)),
    case("egress-namespace-notin-default-label",
         np_doc("not-y", """
             podSelector: {matchLabels: {pod: a}}
             policyTypes: [Egress]
             egress: [{to: [{namespaceSelector: {matchExpressions:
                 [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]}}]}]
         """), (*TCP80, grid("""
             x/a 111 ... 111
             x/b 111 111 111
             x/c 111 111 111
             y/a 111 111 111
             y/b 111 111 111
             y/c 111 111 111
             z/a 111 111 111
             z/b 111 111 111
             z/c 111 111 111
         """))),
    case("peer-podselector-empty-means-same-namespace",
         np_doc("same-ns", "podSelector: {}\ningress: [{from: [{podSelector: {}}]}]"),
         (*TCP80, grid("""
             x/a 111 111 111
             x/b 111 111 111
             x/c 111 111 111
             y/a ... 111 111
             y/b ... 111 111
             y/c ... 111 111
             z/a ... 111 111
             z/b ... 111 111
             z/c ... 111 111
         """))),
    case("peer-namespaceselector-empty-means-all-namespaces",
         np_doc("deny", "podSelector: {}\ningress: []")
         + np_doc("all-ns", "podSelector: {matchLabels: {pod: a}}\n"
                  "ingress: [{from: [{namespaceSelector: {}}]}]"),
         (*TCP80, grid("""
             x/a 1.. 111 111
             x/b 11. 111 111
             x/c 1.1 111 111
             y/a 1.. 111 111
             y/b 1.. 111 111
             y/c 1.. 111 111
             z/a 1.. 111 111
             z/b 1.. 111 111
             z/c 1.. 111 111
         """))),
    case("peer-empty-namespaceselector-and-pod",
         np_doc("b-anywhere", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]
         """), (*TCP80, grid("""
             x/a 111 111 111
             x/b 111 111 111
             x/c .11 111 111
             y/a .11 111 111
             y/b 111 111 111
             y/c .11 111 111
             z/a .11 111 111
             z/b 111 111 111
             z/c .11 111 111
         """))),
    case("policy-in-other-namespace-selects-only-its-own",
         np_doc("deny-a", "podSelector: {matchLabels: {pod: a}}\ningress: []", ns="y"),
         (*TCP80, grid("""
             x/a 111 .11 111
             x/b 111 .11 111
             x/c 111 .11 111
             y/a 111 111 111
             y/b 111 .11 111
             y/c 111 .11 111
             z/a 111 .11 111
             z/b 111 .11 111
             z/c 111 .11 111
         """))),
    case("endport-range",
         np_doc("range-79-80", "podSelector: {}\ningress: [{ports: [{port: 79, endPort: 80}]}]"),
         (*TCP80, ALL), (*TCP81, DENY_INGRESS_X), (*UDP80, DENY_INGRESS_X)),
    case("endport-range-to-top",
         np_doc("range-81-up", "podSelector: {}\npolicyTypes: [Egress]\n"
                "egress: [{ports: [{port: 81, endPort: 65535, protocol: UDP}]}]"),
         (*UDP81, ALL), (*UDP80, DENY_EGRESS_X), (*TCP81, DENY_EGRESS_X)),
    case("policytypes-egress-ignores-ingress-rules",
         np_doc("egress-only", """
             podSelector: {}
             policyTypes: [Egress]
             ingress: [{from: [{podSelector: {matchLabels: {pod: nobody}}}]}]
             egress: [{}]
         """), (*TCP80, ALL)),
    case("policytypes-defaulted-with-egress-rules",
         np_doc("a-both", """
             podSelector: {matchLabels: {pod: a}}
             egress: [{to: [{podSelector: {}}]}]
         """), (*TCP80, grid("""
             x/a 111 ... ...
             x/b .11 111 111
             x/c .11 111 111
             y/a .11 111 111
             y/b .11 111 111
             y/c .11 111 111
             z/a .11 111 111
             z/b .11 111 111
             z/c .11 111 111
         """))),
    case("namespace-expressions-notin-exists-doesnotexist",
         np_doc("team-not-red", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [{namespaceSelector: {matchExpressions:
                 [{key: team, operator: NotIn, values: [red]}]}}],
                        ports: [{port: 80}]}]
         """) + np_doc("team-exists", """
             podSelector: {matchLabels: {pod: b}}
             ingress: [{from: [{namespaceSelector: {matchExpressions:
                 [{key: team, operator: Exists}]}}]}]
         """) + np_doc("no-team", """
             podSelector: {matchLabels: {pod: c}}
             ingress: [{from: [{namespaceSelector: {matchExpressions:
                 [{key: team, operator: DoesNotExist}]}}]}]
         """), (*TCP80, grid("""
             x/a 1.1 111 111
             x/b 111 111 111
             x/c 1.1 111 111
             y/a .1. 111 111
             y/b .1. 111 111
             y/c .1. 111 111
             z/a 11. 111 111
             z/b 11. 111 111
             z/c 11. 111 111
         """)), namespaces={"x": {"ns": "x"}, "y": {"ns": "y", "team": "red"},
                            "z": {"ns": "z", "team": "blue"}}),
    case("pod-expression-notin-matches-pods-without-the-key",
         np_doc("not-db", """
             podSelector: {matchLabels: {pod: a}}
             ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions:
                 [{key: tier, operator: NotIn, values: [db]}]}}]}]
         """) + np_doc("no-tier", """
             podSelector: {matchLabels: {pod: b}}
             ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions:
                 [{key: tier, operator: DoesNotExist}]}}]}]
         """), (*TCP80, grid("""
             x/a 111 111 111
             x/b 111 111 111
             x/c 111 111 111
             y/a 111 111 111
             y/b 111 111 111
             y/c ..1 111 111
             z/a 111 111 111
             z/b 111 111 111
             z/c 111 111 111
         """)), pods=[make_pod(p.namespace, p.name, i, labels={"pod": p.name, "tier": "db"})
                      if p.key == "y/c" else p for i, p in enumerate(PODS)]),
]


@pytest.mark.parametrize(("policies", "checks", "namespaces", "pods"), CASES)
def test_truth_table(policies: str, checks: tuple[tuple[int, str, Any], ...],
                     namespaces: dict[str, dict[str, str]] | None,
                     pods: list[PodRef] | None) -> None:
    eng = engine(policies, pods=pods, namespaces=namespaces)
    for port, proto, want in checks:
        assert_matrix(eng, want, port, proto)


def test_verdict_reasons() -> None:
    eng = engine(np_doc("deny", "podSelector: {}\ningress: []")
                 + np_doc("allow-b", "podSelector: {matchLabels: {pod: a}}\n"
                          "ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]},"
                          " {from: [{podSelector: {matchLabels: {pod: b}}}]}]")
                 + np_doc("deny-egress", "podSelector: {}\npolicyTypes: [Egress]", ns="z"))
    xa, xb, xc, ya, za = (BY_KEY[k] for k in ("x/a", "x/b", "x/c", "y/a", "z/a"))
    v = eng.verdict(xb, xa, 80)
    assert v and v.reason == ("x/b is not isolated for egress; "
                              "ingress of x/a allowed by x/allow-b ingress rule 1")
    v = eng.verdict(ya, xb, 80)
    assert not v and v.reason == "x/b is isolated for ingress by x/deny and no rule allows it"
    v = eng.verdict(ya, xa, 80)
    assert not v and v.reason == ("x/a is isolated for ingress by x/allow-b, x/deny and no rule "
                                  "allows it")
    v = eng.verdict(za, ya, 80)
    assert not v and v.reason == "z/a is isolated for egress by z/deny-egress and no rule allows it"
    v = eng.verdict(xc, xc, 80)
    assert v and "itself" in v.reason
    assert eng.verdict(xc, xa, 80).reason.endswith("x/allow-b ingress rule 0")
    assert bool(eng.verdict(xa, ya, 80)) and not bool(eng.verdict(ya, xa, 80))
    # each side's part, as the lab's hints word it (they were parsed out of `reason` before)
    v = eng.verdict(xb, xa, 80)
    assert v.egress == "x/b is not isolated for egress"
    assert v.ingress.startswith("ingress of x/a") and v.side("ingress") == v.ingress
    v = eng.verdict(ya, xb, 80)  # blocked at the server: the reason is its side alone
    assert v.ingress == v.reason and "egress" not in v.reason
    assert v.egress == "y/a is not isolated for egress"
    v = eng.verdict(za, ya, 80)  # blocked at the client: the server's side is not asked
    assert v.egress == v.reason and v.ingress == ""


def test_selecting_and_matrix_subset() -> None:
    eng = engine(np_doc("b", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]")
                 + np_doc("a", "podSelector: {}\npolicyTypes: [Ingress, Egress]")
                 + np_doc("c", "podSelector: {matchLabels: {pod: b}}\negress: [{}]"))
    assert [p.name for p in eng.selecting(BY_KEY["x/a"], "Ingress")] == ["a", "b"]
    assert [p.name for p in eng.selecting(BY_KEY["x/a"], "Egress")] == ["a"]
    assert [p.name for p in eng.selecting(BY_KEY["x/b"], "Egress")] == ["a", "c"]
    assert eng.selecting(BY_KEY["y/a"], "Ingress") == []
    m = eng.matrix(["y/a", "x/b", "x/a"], 80)
    assert list(m) == ["y/a", "x/b", "x/a"] and list(m["x/b"]) == ["y/a", "x/b", "x/a"]
    assert m == {"y/a": {"y/a": True, "x/b": False, "x/a": False},
                 "x/b": {"y/a": True, "x/b": True, "x/a": False},
                 "x/a": {"y/a": False, "x/b": False, "x/a": True}}


def test_namespace_label_added_and_unknown_namespace() -> None:
    # the engine adds kubernetes.io/metadata.name, also for a namespace it has no labels for
    pods = [*PODS, make_pod("w", "a", 9, node="w1")]
    eng = engine(np_doc("from-w", """
        podSelector: {matchLabels: {pod: a}}
        ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: w}}},
                          {namespaceSelector: {matchLabels: {ns: z}}}]}]
    """), pods=pods)
    assert eng.namespaces["x"] == {"ns": "x", "kubernetes.io/metadata.name": "x"}
    assert eng.allowed(pods[-1], BY_KEY["x/a"], 80)
    assert eng.allowed(BY_KEY["z/c"], BY_KEY["x/a"], 80)
    assert not eng.allowed(BY_KEY["y/c"], BY_KEY["x/a"], 80)
    # a label on the namespace object cannot fake another namespace's name
    eng = engine(np_doc("from-w", """
        podSelector: {matchLabels: {pod: a}}
        ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: w}}}]}]
    """), namespaces={**NAMESPACES, "y": {"kubernetes.io/metadata.name": "w"}})
    assert eng.namespaces["y"]["kubernetes.io/metadata.name"] == "y"
    assert not eng.allowed(BY_KEY["y/a"], BY_KEY["x/a"], 80)


def test_targets_outside_the_cluster() -> None:
    eng = engine(np_doc("internet-only", """
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]
        egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]},
                 {to: [{podSelector: {}}], ports: [{port: serve-80-tcp}]}]
    """) + np_doc("from-lan", """
        podSelector: {matchLabels: {pod: b}}
        ingress: [{from: [{ipBlock: {cidr: 192.168.0.0/16}}], ports: [{port: 80}]}]
    """))
    xa, xb, xc = BY_KEY["x/a"], BY_KEY["x/b"], BY_KEY["x/c"]
    v = eng.verdict(xa, "8.8.8.8", 53, "UDP")
    assert v and v.reason == ("egress of x/a allowed by x/internet-only egress rule 0; "
                              "the destination is not a pod")
    assert not eng.allowed(xa, "10.1.2.3", 80)  # in the except
    assert not eng.allowed(xa, BY_KEY["y/a"], 80)  # a pod IP is in the except as well
    assert eng.allowed(xa, xc, 80) and not eng.allowed(xa, xc, 81)  # the named-port rule
    assert eng.allowed(xc, "10.1.2.3", 80)  # x/c is not isolated
    # a pod's IP given as a string is that pod
    assert eng.verdict(IP["x/a"], IP["y/a"], 80) == eng.verdict(xa, BY_KEY["y/a"], 80)
    assert eng.verdict("192.168.3.4", xb, 80).reason == (
        "the source is not a pod; ingress of x/b allowed by x/from-lan ingress rule 0")
    assert not eng.allowed("192.168.3.4", xb, 81)
    assert not eng.allowed("172.16.0.1", xb, 80)
    assert not eng.allowed(xa, xb, 80)  # x/a's egress allows x/b:80, x/b's ingress does not
    assert eng.allowed("172.16.0.1", xa, 80)


def test_named_port_outside_the_cluster_never_matches() -> None:
    eng = engine(np_doc("named", """
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Egress]
        egress: [{ports: [{port: serve-80-tcp}]}]
    """))
    assert eng.allowed(BY_KEY["x/a"], BY_KEY["z/c"], 80)
    assert not eng.allowed(BY_KEY["x/a"], "8.8.8.8", 80)


def test_named_ports_resolve_per_destination_pod() -> None:
    pods = [make_pod("x", "a", 0, ports=(("web", "TCP", 8080),)),
            make_pod("x", "b", 1, ports=(("web", "TCP", 9090), ("web", "UDP", 53))),
            make_pod("x", "c", 2, ports=()),
            make_pod("y", "a", 3)]
    eng = engine(np_doc("web", "podSelector: {}\ningress: [{ports: [{port: web}]}]"), pods=pods)
    xa, xb, xc, ya = pods
    assert eng.allowed(ya, xa, 8080) and not eng.allowed(ya, xa, 9090)
    assert eng.allowed(ya, xb, 9090) and not eng.allowed(ya, xb, 8080)
    assert not eng.allowed(ya, xb, 53, "UDP")  # the rule's protocol is TCP
    assert not any(eng.allowed(ya, xc, port) for port in (80, 8080, 9090))


# --- 4. rendering ----------------------------------------------------------------------------

BUILTIN_TARGETS = {"ACCEPT", "DROP", "RETURN", "MARK"}
RESTORE_LINE = re.compile(r"^(\*filter|COMMIT|:\S+ - \[0:0\]|-[AIDX] \S+.*)$")


def check_restore(text: str) -> dict[str, list[str]]:
    """Structural checks of iptables-restore input; returns {chain: [its -A lines]}."""
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT" and lines.count("COMMIT") == 1
    declared = [ln[1:].split()[0] for ln in lines if ln.startswith(":")]
    assert len(declared) == len(set(declared))
    assert all(c.startswith("cali-") and len(c) <= 28 for c in declared), declared
    rules: dict[str, list[str]] = {c: [] for c in declared}
    for ln in lines[1:-1]:
        assert RESTORE_LINE.match(ln), ln
        if ln.startswith(":"):
            continue
        tok = shlex.split(ln)  # balanced quotes
        op, chain = tok[0], tok[1]
        if op == "-X":
            assert len(tok) == 2 and chain.startswith("cali-")
            continue
        if op in ("-I", "-D"):
            assert chain == "FORWARD"
        else:
            assert chain in rules, f"rule for an undeclared chain: {ln}"
            rules[chain].append(ln)
        target = tok[tok.index("-j") + 1]
        assert target in BUILTIN_TARGETS or target in rules, f"jump to undeclared {target}: {ln}"
        assert tok.count("-j") == 1
    return rules


def check_nft(text: str) -> dict[str, list[str]]:
    """Structural checks of an `nft -f` script; returns {chain: [its lines]}."""
    lines = text.splitlines()
    assert lines[:3] == ["table ip calico {}", "delete table ip calico", "table ip calico {"]
    assert lines[-1] == "}" and text.endswith("\n")
    assert text.count("{") == text.count("}")
    chains: dict[str, list[str]] = {}
    current = None
    for ln in lines[3:-1]:
        if m := re.fullmatch(r"  chain (\S+) \{", ln):
            assert m[1] not in chains and len(m[1]) <= 28
            current = chains.setdefault(m[1], [])
        elif ln == "  }":
            current = None
        else:
            assert current is not None and ln.startswith("    "), ln
            current.append(ln.strip())
    for body in chains.values():
        for ln in body:
            for target in re.findall(r"\bjump (\S+)", ln):
                assert target in chains, ln
    return chains


def scenario_engine() -> Engine:
    return engine(
        np_doc("deny", "podSelector: {}\npolicyTypes: [Ingress, Egress]")
        + np_doc("web", """
            podSelector: {matchLabels: {pod: a}}
            ingress: [{from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24,
                                                                     10.244.1.14/32]}}],
                       ports: [{port: serve-80-tcp}, {port: 81, endPort: 82, protocol: UDP}]}]
        """)
        + np_doc("eg", """
            podSelector: {matchLabels: {pod: b}}
            policyTypes: [Egress]
            egress: [{to: [{podSelector: {matchLabels: {pod: a}}}],
                      ports: [{port: serve-81-tcp}]},
                     {to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}]
        """, ns="y"))


def test_node_rules_cover_only_local_isolated_pods() -> None:
    eng = scenario_engine()
    for node in ("w1", "w2"):
        r = node_rules(eng, node)
        local = {p.key for p in PODS if p.node == node}
        assert {pc.pod for pc in r.pod_chains} <= local
        want = sorted((d, k) for k in local for d in ("Ingress", "Egress")
                      if eng.selecting(BY_KEY[k], d))
        assert sorted((pc.direction, pc.pod) for pc in r.pod_chains) == want
        for pc in r.pod_chains:
            pod = BY_KEY[pc.pod]
            assert pc.ip == pod.ip
            assert pc.name == netpol.pod_chain(pc.direction, pod)
            assert pc.name == ("cali-tw-" if pc.direction == "Ingress" else "cali-fw-") + pod.iface
            assert pc.policies == tuple(netpol.policy_chain(pc.direction, p)
                                        for p in eng.selecting(pod, pc.direction))
        names = {c.name for c in r.policy_chains}
        assert names == {n for pc in r.pod_chains for n in pc.policies}
        assert all(len(c) <= 28 for c in r.chains) and len(r.chains) == len(set(r.chains))
        text = render_iptables(r)
        rules = check_restore(text)
        dispatched = re.findall(r"^-A cali-(?:from|to)-wl-dispatch -[sd] (\S+)/32", text, re.M)
        assert sorted(dispatched) == sorted(pc.ip for pc in r.pod_chains)
        assert set(rules) == set(r.chains)
    # x/a (w1) is isolated both ways; x/b lives on w2 and has no chain on w1
    w1 = render_iptables(node_rules(eng, "w1"))
    assert "-A cali-to-wl-dispatch -d 10.244.1.10/32" in w1
    assert "-A cali-from-wl-dispatch -s 10.244.1.10/32" in w1
    assert f"-d {IP['x/b']}/32 " not in w1 and f"-s {IP['x/b']}/32 " not in w1


def test_no_policy_selects_a_node_pod() -> None:
    eng = engine(np_doc("deny", "podSelector: {matchLabels: {pod: a}}\ningress: []"))
    r = node_rules(eng, "w2")  # x/a lives on w1
    assert r == NodeRules("w2")
    assert r.chains == ["cali-FORWARD", "cali-from-wl-dispatch", "cali-to-wl-dispatch"]
    rules = check_restore(render_iptables(r))
    assert rules["cali-FORWARD"][-2:] == ["-A cali-FORWARD -j cali-from-wl-dispatch",
                                          "-A cali-FORWARD -j cali-to-wl-dispatch"]
    assert rules["cali-from-wl-dispatch"] == rules["cali-to-wl-dispatch"] == []


@pytest.mark.parametrize(("forward", "deleted", "inserted"), [
    ("absent", False, True), ("present", True, True), ("first", False, False)])
def test_forward_jump(forward: str, deleted: bool, inserted: bool) -> None:
    text = render_iptables(node_rules(scenario_engine(), "w1"), forward=forward)
    check_restore(text)
    jump = '-m comment --comment "cali:NetworkPolicy" -j cali-FORWARD'
    lines = text.splitlines()
    assert (f"-D FORWARD {jump}" in lines) is deleted
    assert (f"-I FORWARD 1 {jump}" in lines) is inserted
    if deleted:
        assert lines.index(f"-D FORWARD {jump}") < lines.index(f"-I FORWARD 1 {jump}")
    assert not any(ln.startswith("-A FORWARD") for ln in lines)


def test_stale_chains_are_deleted() -> None:
    r = node_rules(scenario_engine(), "w1")
    existing = [*r.chains, "cali-tw-vethgone", "cali-pi-old", "KUBE-FORWARD", "DOCKER"]
    text = render_iptables(r, existing)
    check_restore(text)
    assert [ln for ln in text.splitlines() if ln.startswith("-X")] == [
        "-X cali-pi-old", "-X cali-tw-vethgone"]
    assert text.splitlines()[-1] == "COMMIT"


def test_stale_chains_are_flushed_before_delete() -> None:
    r = node_rules(scenario_engine(), "w1")
    lines = render_iptables(r, [*r.chains, "cali-pi-old"]).splitlines()
    assert ":cali-pi-old - [0:0]" in lines
    assert lines.index(":cali-pi-old - [0:0]") < lines.index("-X cali-pi-old")


def test_pod_chain_names_fit_iptables() -> None:
    long = make_pod("a-very-long-namespace-name", "a-very-long-pod-name", 0, iface="")
    name = netpol.pod_chain("Ingress", long)
    assert re.fullmatch(r"cali-tw-p[bcdfghjklmnpqrstvwxz2456789]{11}", name)
    assert name == netpol.pod_chain("Ingress", long)  # stable
    assert netpol.pod_chain("Egress", long) == "cali-fw-" + name[8:]
    assert netpol.pod_chain("Ingress", make_pod("x", "a", 0, iface="veth0123456789ab")) == \
        "cali-tw-veth0123456789ab"
    pol = load(np_doc("p" * 63, "podSelector: {}", ns="n" * 63))[0]
    for d in ("Ingress", "Egress"):
        c = netpol.policy_chain(d, pol)
        assert len(c) <= 28 and len(netpol.except_chain(c, 99)) <= 28


def test_named_ports_resolved_per_destination_pod_in_rules() -> None:
    pods = [make_pod("x", "a", 0, ports=(("web", "TCP", 8080),)),
            make_pod("x", "b", 2, ports=(("web", "TCP", 9090),)),
            make_pod("x", "c", 4, ports=()),
            make_pod("y", "a", 1, ports=(("web", "TCP", 7070), ("web", "UDP", 53)))]
    eng = engine(np_doc("in", "podSelector: {}\ningress: [{ports: [{port: web}]}]")
                 + np_doc("out", """
                     podSelector: {matchLabels: {pod: c}}
                     policyTypes: [Egress]
                     egress: [{to: [{namespaceSelector: {}}], ports: [{port: web, protocol: UDP}]},
                              {to: [{ipBlock: {cidr: 10.244.2.0/24}}], ports: [{port: web}]}]
                 """), pods=pods)
    r = node_rules(eng, "w1")
    pin = next(c for c in r.policy_chains if c.policy == "x/in")
    assert [(m.peer, m.local, m.protocol, m.ports) for m in pin.matches] == [
        (None, "10.244.1.10/32", "TCP", (8080, 8080)),
        (None, "10.244.1.12/32", "TCP", (9090, 9090))]  # x/c has no port named web
    pout = next(c for c in r.policy_chains if c.policy == "x/out")
    assert [(m.peer, m.local, m.protocol, m.ports) for m in pout.matches] == [
        ("10.244.2.11/32", None, "UDP", (53, 53)),  # only y/a has web/UDP
        ("10.244.2.11/32", None, "TCP", (7070, 7070))]  # only y/a is in 10.244.2.0/24
    text = render_iptables(r)
    check_restore(text)
    assert (f"-A {pin.name} -d 10.244.1.10/32 -p tcp -m tcp --dport 8080 -m comment --comment "
            '"x/in ingress rule 0 (web of x/a)" -j MARK --set-xmark 0x10000/0x10000') in text
    assert f"-A {pout.name} -d 10.244.2.11/32 -p udp -m udp --dport 53 " in text
    nft = check_nft(render_nft(r))
    assert nft[pin.name][1].startswith("ip daddr 10.244.1.12/32 meta l4proto tcp th dport 9090 "
                                       "meta mark set mark or 0x10000")


def test_except_uses_a_helper_chain_and_nft_sets() -> None:
    eng = scenario_engine()
    r = node_rules(eng, "w1")
    web = next(c for c in r.policy_chains if c.policy == "x/web")
    assert all(m.excepts == ("10.244.1.14/32", "10.244.2.0/24") for m in web.matches)
    rules = check_restore(render_iptables(r))
    for i in range(len(web.matches)):
        sub = netpol.except_chain(web.name, i)
        assert sub.startswith("cali-px-") and len(sub) <= 28
        assert rules[web.name][i].startswith(f"-A {web.name} -s 10.244.0.0/16 ")
        assert rules[web.name][i].endswith(f"-j {sub}")
        assert rules[sub] == [f"-A {sub} -s 10.244.1.14/32 -j RETURN",
                              f"-A {sub} -s 10.244.2.0/24 -j RETURN",
                              f"-A {sub} -j MARK --set-xmark 0x10000/0x10000"]
    nft = check_nft(render_nft(r))
    assert all(ln.startswith("ip saddr 10.244.0.0/16 ip saddr != { 10.244.1.14/32, "
                             "10.244.2.0/24 } ")
               for ln in nft[web.name])
    assert not any(c.startswith("cali-px-") for c in nft)
    # egress excepts match the destination
    r2 = node_rules(eng, "w1")
    eg = next(c for c in r2.policy_chains if c.policy == "y/eg")
    (i, m), = [(i, m) for i, m in enumerate(eg.matches) if m.excepts]
    assert (m.peer, m.excepts, m.protocol, m.ports) == ("0.0.0.0/0", ("10.0.0.0/8",), None, None)
    rules = check_restore(render_iptables(r2))
    sub = netpol.except_chain(eg.name, i)
    assert rules[sub][0] == f"-A {sub} -d 10.0.0.0/8 -j RETURN"
    assert "ip daddr 0.0.0.0/0 ip daddr != { 10.0.0.0/8 } meta mark set mark or 0x10000" in \
        render_nft(r2)


def test_pod_chain_layout() -> None:
    rules = check_restore(render_iptables(node_rules(scenario_engine(), "w1")))
    tw = rules["cali-tw-veth00000000"]  # x/a: x/deny, then x/web
    deny, web = (netpol.policy_chain("Ingress", p) for p in load(
        np_doc("deny", "podSelector: {}") + np_doc("web", "podSelector: {}")))
    assert tw == [
        "-A cali-tw-veth00000000 -j MARK --set-xmark 0x0/0x10000",
        f"-A cali-tw-veth00000000 -j {deny}",
        "-A cali-tw-veth00000000 -m mark --mark 0x10000/0x10000 -j RETURN",
        f"-A cali-tw-veth00000000 -j {web}",
        "-A cali-tw-veth00000000 -m mark --mark 0x10000/0x10000 -j RETURN",
        '-A cali-tw-veth00000000 -m comment --comment "x/a: no NetworkPolicy allows this '
        'ingress" -j DROP']
    assert rules["cali-FORWARD"][0] == (
        "-A cali-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "
        '"replies of allowed connections" -j ACCEPT')
    assert rules[deny] == []  # a policy without rules allows nothing


def test_nft_script() -> None:
    r = node_rules(scenario_engine(), "w1")
    text = render_nft(r)
    chains = check_nft(text)
    assert set(chains) == set(r.chains) - {c for c in r.chains if c.startswith("cali-px-")}
    assert chains["cali-FORWARD"] == [
        "type filter hook forward priority filter; policy accept;",
        'ct state established,related accept comment "replies of allowed connections"',
        "jump cali-from-wl-dispatch", "jump cali-to-wl-dispatch"]
    assert sum("hook" in ln for body in chains.values() for ln in body) == 1
    assert 'ip daddr 10.244.1.10 jump cali-tw-veth00000000 comment "x/a"' in \
        chains["cali-to-wl-dispatch"]
    assert 'ip saddr 10.244.1.10 jump cali-fw-veth00000000 comment "x/a"' in \
        chains["cali-from-wl-dispatch"]
    assert chains["cali-tw-veth00000000"][0] == "meta mark set mark and 0xfffeffff"
    assert chains["cali-tw-veth00000000"][-1].startswith("drop comment ")
    assert "th dport 81-82" in text and "meta l4proto udp" in text
    assert render_nft_removal() == "table ip calico {}\ndelete table ip calico\n"
    assert check_nft(render_nft(NodeRules("w9"))) == {
        "cali-FORWARD": chains["cali-FORWARD"], "cali-from-wl-dispatch": [],
        "cali-to-wl-dispatch": []}


def test_iptables_removal() -> None:
    existing = ["cali-FORWARD", "cali-tw-veth1", "cali-px-abc", "KUBE-FORWARD"]
    text = render_iptables_removal(existing)
    lines = text.splitlines()
    assert lines == [
        "*filter", ":cali-FORWARD - [0:0]", ":cali-px-abc - [0:0]", ":cali-tw-veth1 - [0:0]",
        '-D FORWARD -m comment --comment "cali:NetworkPolicy" -j cali-FORWARD',
        "-X cali-FORWARD", "-X cali-px-abc", "-X cali-tw-veth1", "COMMIT"]
    assert not any(ln.startswith("-D") for ln in
                   render_iptables_removal(existing, jump=False).splitlines())
    assert render_iptables_removal([], jump=False) == "*filter\nCOMMIT\n"


# --- 5. the rules agree with the engine ------------------------------------------------------

def _split(line: str) -> list[str]:
    """shlex.split for rendered rules, whose only quotes wrap comments (faster)."""
    return [t.strip('"') for t in re.findall(r'"[^"]*"|\S+', line)]


@functools.cache
def _in(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


def match_hits(m: Match, direction: str, src: str, dst: str, port: int, proto: str) -> bool:
    """One Match of the IR, read as the rendered rule means it."""
    peer = src if direction == "Ingress" else dst
    if m.peer is not None and not _in(peer, m.peer):
        return False
    if any(_in(peer, e) for e in m.excepts):
        return False
    if m.local is not None and not _in(dst, m.local):
        return False
    if m.protocol is not None and m.protocol != proto:
        return False
    if m.ports is not None:
        assert m.protocol is not None, "a port match needs a protocol"
        lo, hi = m.ports
        assert 1 <= lo <= hi <= 65535
        if not lo <= port <= hi:
            return False
    return True


class IRWalker:
    """Walks what each node's IR says about one packet: every node it is forwarded through
    (the source pod's, then the destination pod's) dispatches by address to the pod chains,
    and a pod chain passes when one Match of one of its policy chains hits."""

    def __init__(self, eng: Engine) -> None:
        self.node_of = {p.ip: p.node for p in eng.pods}
        self.rules = {n: node_rules(eng, n) for n in sorted(set(self.node_of.values()))}
        self._nodes: dict[tuple[str, str], list[str]] = {}

    def nodes(self, src: str, dst: str) -> list[str]:
        key = (src, dst)
        if key not in self._nodes:
            self._nodes[key] = list(dict.fromkeys(self.node_of[ip] for ip in key
                                                  if ip in self.node_of))
        return self._nodes[key]

    def allows(self, src: str, dst: str, port: int, proto: str) -> bool:
        if src == dst:
            return True  # never forwarded
        for n in self.nodes(src, dst):
            r = self.rules[n]
            chains = {c.name: c for c in r.policy_chains}
            for direction, ip in (("Egress", src), ("Ingress", dst)):
                for pc in r.pod_chains:
                    if pc.direction == direction and pc.ip == ip and not any(
                            match_hits(m, direction, src, dst, port, proto)
                            for name in pc.policies for m in chains[name].matches):
                        return False
        return True


class IptablesTracer:
    """A packet tracer over the rendered iptables-restore text (a NEW connection's first
    packet): FORWARD holds only our jump; a verdict of ACCEPT/DROP ends the node's walk."""

    def __init__(self, walker: IRWalker) -> None:
        self.walker = walker
        self.chains = {n: self._parse(render_iptables(r)) for n, r in walker.rules.items()}

    @staticmethod
    def _parse(text: str) -> dict[str, list[dict[str, Any]]]:
        chains: dict[str, list[dict[str, Any]]] = {"FORWARD": []}
        for ln in text.splitlines():
            if ln.startswith(":"):
                chains[ln[1:].split()[0]] = []
            if not ln.startswith(("-A ", "-I ")):
                continue
            tok = _split(ln)
            chain, rest = tok[1], tok[2:]
            if tok[0] == "-I":
                assert rest[0] == "1"
                rest = rest[1:]
            rule: dict[str, Any] = {}
            it = iter(rest)
            for opt in it:
                val = next(it)
                if opt == "-m":
                    assert val in ("tcp", "udp", "sctp", "comment", "conntrack", "mark"), val
                    if val in ("tcp", "udp", "sctp"):
                        assert rule.get("-p") == val, f"-m {val} needs -p {val}: {ln}"
                    continue
                assert opt in ("-s", "-d", "-p", "--dport", "--comment", "--ctstate", "--mark",
                               "-j", "--set-xmark"), f"tracer does not know {opt}: {ln}"
                assert opt not in rule
                rule[opt] = val
            if "--dport" in rule:
                lo, _, hi = rule["--dport"].partition(":")
                rule["--dport"] = (int(lo), int(hi or lo))
            for k in ("--mark", "--set-xmark"):
                if k in rule:
                    v, m = rule[k].split("/")
                    rule[k] = (int(v, 16), int(m, 16))
            chains[chain].append(rule)
        return chains

    def _run(self, chains: dict[str, list[dict[str, Any]]], name: str, pkt: dict[str, Any]
             ) -> str | None:
        for rule in chains[name]:
            if "-s" in rule and not _in(pkt["src"], rule["-s"]):
                continue
            if "-d" in rule and not _in(pkt["dst"], rule["-d"]):
                continue
            if "-p" in rule and rule["-p"] != pkt["proto"]:
                continue
            if "--dport" in rule and not rule["--dport"][0] <= pkt["port"] <= rule["--dport"][1]:
                continue
            if "--ctstate" in rule and "NEW" not in rule["--ctstate"].split(","):
                continue
            if "--mark" in rule and pkt["mark"] & rule["--mark"][1] != rule["--mark"][0]:
                continue
            target = rule["-j"]
            if target in ("ACCEPT", "DROP"):
                return target
            if target == "RETURN":
                return None
            if target == "MARK":
                v, m = rule["--set-xmark"]
                pkt["mark"] = (pkt["mark"] & ~m) ^ v
                continue
            verdict = self._run(chains, target, pkt)
            if verdict is not None:
                return verdict
        return None

    def allows(self, src: str, dst: str, port: int, proto: str) -> bool:
        if src == dst:
            return True
        for n in self.walker.nodes(src, dst):
            pkt = {"src": src, "dst": dst, "port": port, "proto": proto.lower(), "mark": 0}
            if self._run(self.chains[n], "FORWARD", pkt) == "DROP":
                return False
        return True


class NftTracer:
    """The same over the rendered nft script; each rule is compiled once into a list of
    (operation, arguments) steps."""

    def __init__(self, walker: IRWalker) -> None:
        self.walker = walker
        self.chains = {n: {name: [self._compile(ln) for ln in body
                                  if not ln.startswith("type filter hook")]
                           for name, body in check_nft(render_nft(r)).items()}
                       for n, r in walker.rules.items()}

    @staticmethod
    def _compile(ln: str) -> list[tuple[Any, ...]]:
        tok = _split(ln)
        if "comment" in tok:
            tok = tok[:tok.index("comment")]
        steps: list[tuple[Any, ...]] = []
        while tok:
            if tok[0] == "ip" and tok[1] in ("saddr", "daddr"):
                if tok[2] == "!=":
                    assert tok[3] == "{", ln
                    end = tok.index("}")
                    steps.append(("not-in", tok[1], [c.rstrip(",") for c in tok[4:end]]))
                    tok = tok[end + 1:]
                else:
                    steps.append(("in", tok[1], tok[2] if "/" in tok[2] else tok[2] + "/32"))
                    tok = tok[3:]
            elif tok[:2] == ["meta", "l4proto"]:
                steps.append(("proto", tok[2]))
                tok = tok[3:]
            elif tok[:2] == ["th", "dport"]:
                lo, _, hi = tok[2].partition("-")
                steps.append(("dport", int(lo), int(hi or lo)))
                tok = tok[3:]
            elif tok[:2] == ["ct", "state"]:
                steps.append(("ct", tok[2].split(",")))
                tok = tok[3:]
            elif tok[:5] == ["meta", "mark", "set", "mark", "or"]:
                steps.append(("or", int(tok[5], 16)))
                tok = tok[6:]
            elif tok[:5] == ["meta", "mark", "set", "mark", "and"]:
                steps.append(("and", int(tok[5], 16)))
                tok = tok[6:]
            elif tok[:3] == ["meta", "mark", "&"] and tok[4] == "==":
                steps.append(("mark", int(tok[3], 16), int(tok[5], 16)))
                tok = tok[6:]
            elif tok[0] in ("accept", "drop", "return"):
                steps.append(("verdict", tok[0]))
                tok = tok[1:]
            elif tok[0] == "jump":
                steps.append(("jump", tok[1]))
                tok = tok[2:]
            else:
                raise AssertionError(f"tracer does not know {tok[0]!r} in {ln!r}")
        return steps

    def _run(self, chains: dict[str, list[list[tuple[Any, ...]]]], name: str,
             pkt: dict[str, Any]) -> str | None:
        for steps in chains[name]:
            for step in steps:
                op = step[0]
                if op == "in" or op == "not-in":
                    ip = pkt["src"] if step[1] == "saddr" else pkt["dst"]
                    if op == "in" and not _in(ip, step[2]):
                        break
                    if op == "not-in" and any(_in(ip, c) for c in step[2]):
                        break
                elif op == "proto":
                    if step[1] != pkt["proto"]:
                        break
                elif op == "dport":
                    if not step[1] <= pkt["port"] <= step[2]:
                        break
                elif op == "ct":
                    if "new" not in step[1]:
                        break
                elif op == "mark":
                    if pkt["mark"] & step[1] != step[2]:
                        break
                elif op == "or":
                    pkt["mark"] |= step[1]
                elif op == "and":
                    pkt["mark"] &= step[1]
                elif op == "jump":
                    verdict = self._run(chains, step[1], pkt)
                    if verdict is not None:
                        return verdict
                elif step[1] == "return":
                    return None
                else:
                    return step[1]  # accept / drop
        return None

    def allows(self, src: str, dst: str, port: int, proto: str) -> bool:
        if src == dst:
            return True
        for n in self.walker.nodes(src, dst):
            pkt = {"src": src, "dst": dst, "port": port, "proto": proto.lower(), "mark": 0}
            if self._run(self.chains[n], "cali-FORWARD", pkt) == "drop":
                return False
        return True


def random_selector(rng: random.Random, kind: str) -> dict[str, Any]:
    keys = ["pod"] if kind == "pod" else ["ns", "kubernetes.io/metadata.name", "team"]
    values = list(NAMES) if kind == "pod" else [*NSS, "red"]
    r = rng.random()
    if r < 0.15:
        return {}
    key = rng.choice(keys) if rng.random() < 0.9 else "missing"
    if r < 0.5:
        return {"matchLabels": {key: rng.choice(values)}}
    op = rng.choice(netpol.OPERATORS)
    expr: dict[str, Any] = {"key": key, "operator": op}
    if op in ("In", "NotIn"):
        expr["values"] = rng.sample(values, rng.randint(1, 2))
    return {"matchExpressions": [expr]}


def random_ipblock(rng: random.Random) -> dict[str, Any]:
    pod = rng.choice(PODS).ip
    return rng.choice([
        {"cidr": f"{pod}/32"},
        {"cidr": "10.244.1.0/24", "except": [f"10.244.1.{rng.choice((10, 12, 14))}/32"]},
        {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]},
        {"cidr": "10.244.0.0/16", "except": [f"{pod}/32", "10.244.1.8/29"]},
        {"cidr": "0.0.0.0/0", "except": ["10.244.1.0/24", "192.168.0.0/24"]},
        {"cidr": "192.168.0.0/16"},
        {"cidr": "10.244.2.0/25"},
    ])


def random_peer(rng: random.Random) -> dict[str, Any]:
    r = rng.random()
    if r < 0.3:
        return {"podSelector": random_selector(rng, "pod")}
    if r < 0.55:
        return {"namespaceSelector": random_selector(rng, "ns")}
    if r < 0.8:
        return {"podSelector": random_selector(rng, "pod"),
                "namespaceSelector": random_selector(rng, "ns")}
    return {"ipBlock": random_ipblock(rng)}


# a named port `web` that differs from pod to pod (also between pods of one node), so a rule
# must resolve it per destination pod
WEB = {0: 80, 2: 81, 3: 81, 5: 80, 6: 80, 8: 81}  # x/a x/c y/a y/c z/a z/c; b pods: UDP only
RANDOM_PODS = [make_pod(p.namespace, p.name, i, ports=NAMED + (
    (("web", "TCP", WEB[i]), ("web", "UDP", 161 - WEB[i])) if i in WEB else (("web", "UDP", 80),)))
    for i, p in enumerate(PODS)]


def random_port(rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rng.random() < 0.6:
        out["protocol"] = rng.choice(("TCP", "TCP", "UDP", "UDP", "SCTP"))
    r = rng.random()
    if r < 0.25:
        out["port"] = rng.choice((80, 81, 82))
    elif r < 0.45:
        out["port"], out["endPort"] = rng.choice(((79, 80), (80, 81), (81, 1000), (1, 79)))
    elif r < 0.85:
        out["port"] = rng.choice([n for n, _, _ in NAMED] + ["web"] * 4 + ["nosuch"])
    return out


def random_rule(rng: random.Random, peers_key: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if rng.random() < 0.7:
        rule[peers_key] = [random_peer(rng) for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.7:
        rule["ports"] = [random_port(rng) for _ in range(rng.randint(0, 2))]
    return rule


def random_spec(rng: random.Random) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": random_selector(rng, "pod")}
    for key, peers_key in (("ingress", "from"), ("egress", "to")):
        if rng.random() < 0.7:
            spec[key] = [random_rule(rng, peers_key) for _ in range(rng.randint(0, 2))]
    types = rng.choice([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]])
    if types is not None:
        spec["policyTypes"] = types
    return spec


OUTSIDE = ("192.168.0.7", "192.168.5.5", "8.8.8.8")


def test_rules_agree_with_the_engine() -> None:
    """About 200 random policies in small sets: for every pod pair (and a few addresses outside
    the cluster) on 80/81 TCP/UDP, the engine's verdict equals what the IR allows, and what the
    rendered iptables and nft rules do to the packet."""
    rng = random.Random(6)
    namespaces = {**NAMESPACES, "z": {"ns": "z", "team": "red"}}
    queries = [(a.ip, b.ip) for a in RANDOM_PODS for b in RANDOM_PODS] + [
        pair for p in RANDOM_PODS for o in OUTSIDE for pair in ((p.ip, o), (o, p.ip))]
    total = traced = allowed = 0
    seen: set[str] = set()  # what the IR used, so the comparison cannot be vacuous
    for scenario in range(70):
        pols = [parse_policy(rng.choice(NSS), f"p{i}", {}, random_spec(rng))
                for i in range(rng.randint(1, 5))]
        total += len(pols)
        eng = Engine(pols, RANDOM_PODS, namespaces)
        walker = IRWalker(eng)
        tracers = [IptablesTracer(walker), NftTracer(walker)]
        for m in (m for r in walker.rules.values() for c in r.policy_chains for m in c.matches):
            seen.update(k for k, v in (("local", m.local), ("except", m.excepts),
                                       ("range", m.ports and m.ports[0] != m.ports[1]),
                                       ("any port", m.protocol and not m.ports),
                                       ("anywhere", m.peer is None)) if v)
        for src, dst in queries:
            for port in (80, 81):
                for proto in ("TCP", "UDP"):
                    want = eng.allowed(src, dst, port, proto)
                    allowed += want
                    got = walker.allows(src, dst, port, proto)
                    assert got == want, (scenario, src, dst, port, proto,
                                         eng.verdict(src, dst, port, proto), pols)
                    for t in tracers:
                        traced += 1
                        assert t.allows(src, dst, port, proto) == want, (
                            type(t).__name__, scenario, src, dst, port, proto, pols)
    assert 180 <= total <= 240 and traced == 70 * len(queries) * 4 * 2
    assert 0.3 < allowed / (70 * len(queries) * 4) < 0.9
    assert seen == {"local", "except", "range", "any port", "anywhere"}
