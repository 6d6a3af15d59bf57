"""Cluster DNS on a real kernel: the spec's query -> answer table over UDP and TCP, resolvers in
pods (dig, nslookup, getent) with their resolv.conf, a fuzz burst, changes answered within 1 s,
and a teardown that leaves no server and no resolv.conf.

One cluster for the module: namespaces x, y, z with pods a, b, c each (as upstream's
NetworkPolicy e2e model and ../shared/reference/dns_spec.md), one ClusterIP Service
`s-<ns>-<pod>` per pod, and headless, ExternalName and unnamed-port Services around them. Every
query goes from a pod to 10.96.0.10, through kube-proxy's DNAT, to a coredns pod.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import egress_path
import pytest

from lab_kit import clusterdns, config, kernel, naming
from lab_kit.cluster import Cluster, dns_server_pids
from lab_kit.pytest_plugin import processes_with, unique_name

pytestmark = pytest.mark.root

IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.45"
NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
BIG = 36  # endpoints of `hl-big`: 36 A records do not fit in 512 bytes
ZONE = "cluster.local"


def _pod(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    labels = {"pod": name, **({"tier": "all"} if ns == "y" else {})}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": IMAGE,
                                     "ports": [{"containerPort": 80, "name": "serve-80-tcp"},
                                               {"containerPort": 81, "name": "serve-81-tcp"}]}],
                     **spec}}


def _svc(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def _manifests() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": ns}} for ns in NAMESPACES]
    for ns in NAMESPACES:
        for p in PODS:
            extra = {"hostname": "a", "subdomain": "hl"} if (ns, p) == ("x", "a") else {}
            out.append(_pod(ns, p, **extra))
            out.append(_svc(ns, f"s-{ns}-{p}", {"selector": {"pod": p}, "ports": [
                {"name": "service-port-tcp-80", "port": 80, "targetPort": 80},
                {"name": "service-port-tcp-81", "port": 81, "targetPort": 81}]}))
    http = [{"name": "http", "port": 80, "targetPort": 80}]
    out += [
        _svc("x", "hl", {"clusterIP": "None", "selector": {"pod": "a"}, "ports": http}),
        _svc("y", "hl-all", {"clusterIP": "None", "selector": {"tier": "all"}, "ports": http}),
        _svc("x", "hl-none", {"clusterIP": "None", "selector": {"pod": "nobody"},
                              "ports": http}),
        _svc("x", "ext", {"type": "ExternalName", "externalName": "www.example.com"}),
        _svc("x", "unnamed", {"selector": {"pod": "a"}, "ports": [{"port": 80}]}),
        _svc("z", "hl-big", {"clusterIP": "None", "selector": {"app": "big"}, "ports": http}),
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "big", "namespace": "z"},
         "spec": {"replicas": BIG, "selector": {"matchLabels": {"app": "big"}},
                  "template": {"metadata": {"labels": {"app": "big"}},
                               "spec": {"containers": [{"name": "c", "image": IMAGE,
                                                        "ports": [{"containerPort": 80}]}]}}}},
    ]
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    conf = dataclasses.replace(config.default_config(unique_name("d"), workers=2),
                               cluster_dns=True)
    c = Cluster.up(conf, root=tmp_path_factory.mktemp("dns_state"))
    try:
        c.apply(_manifests())
        yield c
    finally:
        c.down()


# --- queries from inside a pod ------------------------------------------------------------------

QUERY_SCRIPT = r"""
import json, sys, time
import dns.message, dns.query, dns.rcode, dns.flags, dns.rdatatype
out = []
for case in json.load(sys.stdin):
    q = dns.message.make_query(case["name"], case["type"])
    send = dns.query.tcp if case["proto"] == "tcp" else dns.query.udp
    try:
        r = send(q, case["server"], timeout=3)
    except Exception as e:
        out.append({"error": repr(e)})
        continue
    out.append({
        "rcode": dns.rcode.to_text(r.rcode()),
        "flags": dns.flags.to_text(r.flags).split(),
        "answer": [[rs.name.to_text(), dns.rdatatype.to_text(rs.rdtype), rs.ttl, rd.to_text()]
                   for rs in r.answer for rd in rs],
        "authority": [dns.rdatatype.to_text(rs.rdtype) for rs in r.authority],
        "additional": [rd.to_text() for rs in r.additional for rd in rs],
    })
print(json.dumps(out))
"""


def in_pod(c: Cluster, pod: str, script: str, stdin: str = "", timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
    netns = c.pod(pod).netns
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script],
                          input=stdin, capture_output=True, text=True, timeout=timeout)


def query_all(c: Cluster, pod: str, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = in_pod(c, pod, QUERY_SCRIPT, json.dumps(cases))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    name: str  # may hold {clusterIP:ns/svc} / {podIP:ns/pod} / {rev:...} placeholders
    type: str
    rcode: str = "NOERROR"
    answer: tuple[str, ...] | None = None  # "TYPE rdata" strings, order ignored; None: not checked
    aa: bool = True  # answered by the cluster zone (False: forwarded to the upstream)
    udp_tc: bool = False  # too big for UDP: TC over UDP, the full answer over TCP


def ip_of(c: Cluster, ref: str) -> str:
    kind, key = ref.split(":", 1)
    ns, name = key.split("/")
    if kind == "clusterIP":
        return c.service(name, ns)["spec"]["clusterIP"]
    return c.pod(name, ns).ip


def fill(c: Cluster, text: str) -> str:
    while "{" in text:
        start = text.index("{")
        end = text.index("}", start)
        ref = text[start + 1:end]
        if ref.startswith("rev:"):
            value = clusterdns.reverse_name(ip_of(c, ref[4:]))[:-1]
        elif ref.startswith("dashed:"):
            value = clusterdns.dashed(ip_of(c, ref[7:]))
        else:
            value = ip_of(c, ref)
        text = text[:start] + value + text[end + 1:]
    return text


SVC = f"svc.{ZONE}."
CASES = [
    Case("schema-version", f"dns-version.{ZONE}.", "TXT", answer=('TXT "1.1.0"',)),
    Case("clusterip-a", f"s-x-a.x.{SVC}", "A", answer=("A {clusterIP:x/s-x-a}",)),
    Case("case-insensitive", f"S-X-A.X.SVC.{ZONE.upper()}.", "A",
         answer=("A {clusterIP:x/s-x-a}",)),
    Case("other-namespace", f"s-z-c.z.{SVC}", "A", answer=("A {clusterIP:z/s-z-c}",)),
    Case("srv-named-port-80", f"_service-port-tcp-80._tcp.s-x-a.x.{SVC}", "SRV",
         answer=(f"SRV 0 100 80 s-x-a.x.{SVC}",)),
    Case("srv-named-port-81", f"_service-port-tcp-81._tcp.s-y-b.y.{SVC}", "SRV",
         answer=(f"SRV 0 100 81 s-y-b.y.{SVC}",)),
    Case("srv-wrong-protocol", f"_service-port-tcp-80._udp.s-x-a.x.{SVC}", "SRV",
         rcode="NXDOMAIN", answer=()),
    Case("srv-of-service-name", f"s-x-a.x.{SVC}", "SRV",
         answer=(f"SRV 0 100 80 s-x-a.x.{SVC}", f"SRV 0 100 81 s-x-a.x.{SVC}")),
    Case("srv-unnamed-port", f"_http._tcp.unnamed.x.{SVC}", "SRV", rcode="NXDOMAIN",
         answer=()),
    Case("ptr-clusterip", "{rev:clusterIP:x/s-x-a}.", "PTR", answer=(f"PTR s-x-a.x.{SVC}",)),
    Case("ptr-kube-dns", "10.0.96.10.in-addr.arpa.", "PTR",
         answer=(f"PTR kube-dns.kube-system.{SVC}",)),
    Case("headless-one", f"hl.x.{SVC}", "A", answer=("A {podIP:x/a}",)),
    Case("headless-all-ready", f"hl-all.y.{SVC}", "A",
         answer=("A {podIP:y/a}", "A {podIP:y/b}", "A {podIP:y/c}")),
    Case("headless-none-ready", f"hl-none.x.{SVC}", "A", rcode="NXDOMAIN", answer=()),
    Case("hostname-subdomain", f"a.hl.x.{SVC}", "A", answer=("A {podIP:x/a}",)),
    Case("headless-srv-per-endpoint", f"_http._tcp.hl-all.y.{SVC}", "SRV",
         answer=tuple(f"SRV 0 100 80 {{dashed:podIP:y/{p}}}.hl-all.y.{SVC}" for p in PODS)),
    Case("ptr-headless-hostname", "{rev:podIP:x/a}.", "PTR", answer=(f"PTR a.hl.x.{SVC}",)),
    Case("ptr-headless-dashed", "{rev:podIP:y/b}.", "PTR",
         answer=(f"PTR {{dashed:podIP:y/b}}.hl-all.y.{SVC}",)),
    Case("endpoint-dashed-name", f"{{dashed:podIP:y/c}}.hl-all.y.{SVC}", "A",
         answer=("A {podIP:y/c}",)),
    Case("external-name-cname", f"ext.x.{SVC}", "A",
         answer=("CNAME www.example.com.", f"A {config.EXTERNAL_IP}")),
    Case("pod-record", f"10-244-1-10.x.pod.{ZONE}.", "A", answer=("A 10.244.1.10",)),
    Case("ptr-plain-pod", "{rev:podIP:z/b}.", "PTR",
         answer=(f"PTR {{dashed:podIP:z/b}}.z.pod.{ZONE}.",)),
    Case("nxdomain-with-soa", f"nonexistent.x.{SVC}", "A", rcode="NXDOMAIN", answer=()),
    Case("nodata-aaaa", f"s-x-a.x.{SVC}", "AAAA", answer=()),
    Case("nodata-mx", f"s-x-a.x.{SVC}", "MX", answer=()),
    Case("nodata-unknown-type", f"s-x-a.x.{SVC}", "TYPE65280", answer=()),
    Case("nodata-empty-non-terminal", f"x.{SVC}", "A", answer=()),
    Case("search-suffix-miss", f"www.example.com.x.{SVC}", "A", rcode="NXDOMAIN", answer=()),
    Case("zone-ns", f"{ZONE}.", "NS", answer=(f"NS ns.dns.{ZONE}.",)),
    Case("forwarded-upstream", "www.example.com.", "A", answer=(f"A {config.EXTERNAL_IP}",),
         aa=False),
    Case("forwarded-nxdomain", "nosuch.example.com.", "A", rcode="NXDOMAIN", aa=False),
    Case("truncated-then-tcp", f"hl-big.z.{SVC}", "A", udp_tc=True),
]


@pytest.fixture(scope="module")
def results(cluster: Cluster) -> dict[tuple[str, str], dict[str, Any]]:
    """Every case over UDP and TCP, asked once from pod x/b (through 10.96.0.10)."""
    asks = []
    for case in CASES:
        for proto in ("udp", "tcp"):
            asks.append({"id": case.id, "proto": proto, "name": fill(cluster, case.name),
                         "type": case.type, "server": cluster.dns_ip})
    got = query_all(cluster, "x/b", asks)
    # the forwarded cases leave the cluster: asked again with patience (see egress_path.py)
    outside = [i for i, a in enumerate(asks) if a["id"] in FORWARDED and not _answered(got[i])]
    if outside:
        again = egress_path.until(
            lambda: query_all(cluster, "x/b", [asks[i] for i in outside]),
            lambda rs: all(_answered(r) for r in rs), "forwarded queries from x/b",
            cluster.name, sorted({p.node for p in cluster.dns_pods()}))
        for i, r in zip(outside, again, strict=True):
            got[i] = r
    return {(a["id"], a["proto"]): r for a, r in zip(asks, got, strict=True)}


FORWARDED = {"external-name-cname", "forwarded-upstream", "forwarded-nxdomain"}


def _answered(r: dict[str, Any]) -> bool:
    """A forwarded answer that came back from upstream (not a timeout or SERVFAIL; for the
    ExternalName case, the CNAME's target resolved too)."""
    return "error" not in r and r["rcode"] != "SERVFAIL" and (
        r["rcode"] != "NOERROR" or any(t == "A" for _, t, _, _ in r["answer"]))


def test_the_table_has_at_least_25_cases() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_query_answer_table(cluster: Cluster, results: dict[tuple[str, str], dict[str, Any]],
                            case: Case, proto: str) -> None:
    r = results[(case.id, proto)]
    assert "error" not in r, r
    assert r["rcode"] == case.rcode, r
    got = sorted(f"{t} {rd}" for _name, t, _ttl, rd in r["answer"])
    if case.udp_tc:
        if proto == "udp":
            assert "TC" in r["flags"] and got == [], r
        else:
            assert "TC" not in r["flags"] and len(got) == BIG, r
        return
    if case.answer is not None:
        want = sorted(fill(cluster, a) for a in case.answer)
        assert got == want, r
    if case.aa:
        assert "AA" in r["flags"], r
        zone_ttls = [ttl for name, t, ttl, _ in r["answer"] if name.endswith(f"{ZONE}.")
                     or name.endswith(".arpa.")]
        assert all(ttl == clusterdns.DEFAULT_TTL for ttl in zone_ttls), r
        if not r["answer"]:  # NXDOMAIN and NODATA carry the zone's SOA
            assert r["authority"] == ["SOA"], r
    else:  # dnsmasq's answer, relayed: its hosts-file TTL (--local-ttl, 0) rather than ours
        assert all(ttl == 0 for *_, ttl, _rd in r["answer"]), r


def test_srv_answer_carries_the_target_address(results: dict[tuple[str, str], dict[str, Any]],
                                               cluster: Cluster) -> None:
    r = results[("srv-named-port-80", "udp")]
    assert r["additional"] == [cluster.service("s-x-a", "x")["spec"]["clusterIP"]]


# --- resolvers inside pods ------------------------------------------------------------------------

def test_resolv_conf_of_a_cluster_first_pod(cluster: Cluster) -> None:
    text = cluster.pod("x/a").sh("cat /etc/resolv.conf")
    assert text == (f"nameserver {cluster.dns_ip}\n"
                    "search x.svc.cluster.local svc.cluster.local cluster.local\n"
                    "options ndots:5\n")
    assert Path("/etc/netns", cluster.pod("x/a").netns, "resolv.conf").read_text() == text


def test_short_names_follow_the_search_path(cluster: Cluster) -> None:
    pod = cluster.pod("x/a")
    x_ip = cluster.service("s-x-a", "x")["spec"]["clusterIP"]
    y_ip = cluster.service("s-y-a", "y")["spec"]["clusterIP"]
    assert pod.sh("getent hosts s-x-a").split() == [x_ip, f"s-x-a.x.svc.{ZONE}"]
    assert pod.sh("getent hosts s-y-a.y").split() == [y_ip, f"s-y-a.y.svc.{ZONE}"]
    missing = pod.sh("getent hosts s-y-a", check=False)
    assert y_ip not in missing  # s-y-a.x.svc…, s-y-a.svc…, s-y-a.cluster.local: all NXDOMAIN
    out = pod.sh("nslookup s-x-a")
    assert f"Name:\ts-x-a.x.svc.{ZONE}" in out and f"Address: {x_ip}" in out
    assert "recursion not available" not in out
    assert pod.sh("dig +short +search s-y-a.y").split() == [y_ip]
    assert pod.sh(f"dig +short SRV _service-port-tcp-81._tcp.s-y-a.y.svc.{ZONE}").split() == [
        "0", "100", "81", f"s-y-a.y.svc.{ZONE}."]
    assert _getent_external(cluster, pod, "www.example.com").split() == [
        config.EXTERNAL_IP, "www.example.com"]
    # a Service is reachable by name: agnhost answers with the pod's name
    assert pod.sh("curl -s --max-time 3 http://s-y-b.y/hostname") == "b"


def _getent_external(cluster: Cluster, pod: Any, name: str) -> str:
    """`getent hosts NAME` in a pod whose lookup leaves the cluster (to the external dnsmasq,
    directly or forwarded), with patience for the outside path (see egress_path.py)."""
    return egress_path.until(lambda: pod.sh(f"getent hosts {name}", check=False),
                             lambda out: out.split()[:1] == [config.EXTERNAL_IP],
                             f"getent hosts {name} in {pod.name} ({pod.ip} on {pod.node})",
                             cluster.name, [pod.node])


def test_dns_policy_and_dns_config(cluster: Cluster) -> None:
    pods = [
        _pod("z", "p-default", dnsPolicy="Default"),
        _pod("z", "p-none", dnsPolicy="None",
             dnsConfig={"nameservers": [cluster.dns_ip], "searches": ["x.svc.cluster.local"],
                        "options": [{"name": "ndots", "value": "1"}]}),
        _pod("z", "p-merged", dnsConfig={"nameservers": ["10.96.0.10", "172.18.0.100"],
                                         "searches": ["corp.example"],
                                         "options": [{"name": "ndots", "value": "2"},
                                                     {"name": "edns0"}]}),
    ]
    for p in pods:
        p["metadata"]["labels"] = {"pod": p["metadata"]["name"]}
    cluster.apply(pods)
    try:
        d = cluster.pod("z/p-default")
        assert d.sh("cat /etc/resolv.conf") == f"nameserver {config.EXTERNAL_IP}\n"
        assert d.sh("getent hosts s-z-a", check=False).strip() == ""  # no cluster names
        assert _getent_external(cluster, d, "example.com").split()[0] == config.EXTERNAL_IP
        n = cluster.pod("z/p-none")
        assert n.sh("cat /etc/resolv.conf") == (f"nameserver {cluster.dns_ip}\n"
                                                "search x.svc.cluster.local\noptions ndots:1\n")
        assert n.sh("getent hosts s-x-a").split()[1] == f"s-x-a.x.svc.{ZONE}"
        m = cluster.pod("z/p-merged")
        assert m.sh("cat /etc/resolv.conf") == (
            f"nameserver {cluster.dns_ip}\nnameserver {config.EXTERNAL_IP}\n"
            "search z.svc.cluster.local svc.cluster.local cluster.local corp.example\n"
            "options ndots:2 edns0\n")
    finally:
        cluster.delete(pods)
    for p in pods:
        assert not Path("/etc/netns", naming.pod_netns(cluster.name, "z",
                                                       p["metadata"]["name"])).exists()


# --- changes, metrics, robustness -----------------------------------------------------------------

POLL_SCRIPT = r"""
import sys, time
import dns.message, dns.query, dns.rcode
name, want, server = sys.argv[1], sys.argv[2], sys.argv[3]
deadline = time.time() + 5
while time.time() < deadline:
    r = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=1)
    ips = sorted(rd.to_text() for rs in r.answer for rd in rs)
    if (want == "NXDOMAIN" and r.rcode() == dns.rcode.NXDOMAIN) or ips == [want]:
        print(time.time())
        sys.exit(0)
    time.sleep(0.02)
sys.exit(1)
"""


def _answered_after(cluster: Cluster, name: str, want: str, t0: float) -> float:
    netns = cluster.pod("x/b").netns
    done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", POLL_SCRIPT,
                           name, want, cluster.dns_ip], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, f"{name} never answered {want}: {done.stderr}"
    return float(done.stdout) - t0


def test_new_and_deleted_service_answered_within_1s(cluster: Cluster) -> None:
    svc = _svc("x", "fresh", {"selector": {"pod": "a"}, "ports": [{"port": 80}]})
    name = f"fresh.x.svc.{ZONE}."
    # from the start of `apply`: the API call, the kube-proxy sync and the servers' reload
    t0 = time.time()
    cluster.apply([svc])
    took = _answered_after(cluster, name, cluster.service("fresh", "x")["spec"]["clusterIP"],
                           t0)
    assert took <= 1.0, f"new Service answered after {took:.2f} s"
    t0 = time.time()
    cluster.delete([svc])
    took = _answered_after(cluster, name, "NXDOMAIN", t0)
    assert took <= 1.0, f"deleted Service still answered {took:.2f} s later"


def test_metrics_count_queries_by_type_and_result(cluster: Cluster) -> None:
    def counter(text: str, qtype: str, rcode: str) -> int:
        line = f'labkit_dns_queries_total{{type="{qtype}",rcode="{rcode}"}} '
        return sum(int(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(line))

    pods = [p.name for p in cluster.dns_pods()]
    before = [cluster.dns_metrics(p) for p in pods]
    asks = [{"proto": "udp", "name": f"nope{i}.x.svc.{ZONE}.", "type": "TXT",
             "server": cluster.dns_ip} for i in range(6)]
    query_all(cluster, "x/b", asks)
    after = [cluster.dns_metrics(p) for p in pods]
    grew = sum(counter(a, "TXT", "NXDOMAIN") - counter(b, "TXT", "NXDOMAIN")
               for a, b in zip(after, before, strict=True))
    assert grew == 6  # spread over both replicas by the Service
    assert "# TYPE coredns_dns_requests_total counter" in after[0]


FUZZ_SCRIPT = r"""
import os, random, socket, struct, sys
rng = random.Random(int(sys.argv[2]))
server = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def header(qd=1, flags=0x0100):
    return struct.pack("!HHHHHH", rng.randrange(65536), flags, qd, 0, 0, 0)
crafted = [
    b"", b"\x00", header()[:11], header(qd=0), header(qd=5) + b"\x03abc\x00\x00\x01\x00\x01",
    header() + b"\xc0\x0c\x00\x01\x00\x01",  # a compression pointer to itself
    header() + b"\x3f" + b"a" * 10,  # a label longer than the packet
    header() + b"\x03www\x07example\x03com\x00\x00",  # question cut short
    header(flags=0x7800) + b"\x03www\x00\x00\x01\x00\x01",  # opcode 15
    header(flags=0x8100) + b"\x03www\x00\x00\x01\x00\x01",  # a response, not a query
    header() + b"\x01x\x00\xff\x00\x00\x01",  # unknown type 65280
    header() + b"\x01x\x00\x00\x01\x00\x03",  # class CH
    header() + b"\x00" + b"\x00\x29" * 40,  # garbage after the root name
]
for pkt in crafted:
    u.sendto(pkt, (server, 53))
for _ in range(3000):
    u.sendto(os.urandom(rng.randrange(0, 700)), (server, 53))
for junk in (b"\xff\xff" + os.urandom(100), b"\x00\x00", b"\x00\x10abc",
             b"\x00\x0c" + header(qd=9), os.urandom(3000)):
    t = socket.create_connection((server, 53), timeout=3)
    t.sendall(junk)
    t.close()
print("sent")
"""


def _server_pids(cluster: Cluster) -> dict[str, list[int]]:
    out = {}
    for p in cluster.dns_pods():
        inode = kernel.netns_inode(p.netns)
        out[p.name] = dns_server_pids(inode) if inode else []
    return out


def test_fuzz_never_crashes_the_server(cluster: Cluster) -> None:
    pids = _server_pids(cluster)
    assert all(pids.values()), pids
    targets = [p.ip for p in cluster.dns_pods()] + [cluster.dns_ip]
    for seed, ip in enumerate(targets):
        done = subprocess.run(["ip", "netns", "exec", cluster.pod("x/c").netns, sys.executable,
                               "-c", FUZZ_SCRIPT, ip, str(seed)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert _server_pids(cluster) == pids  # the same processes: nothing crashed or restarted
    for p in cluster.dns_pods():  # and each still answers both transports
        got = query_all(cluster, "x/c", [
            {"proto": proto, "name": f"s-x-a.x.svc.{ZONE}.", "type": "A", "server": p.ip}
            for proto in ("udp", "tcp")])
        assert [r["answer"][0][3] for r in got] == [
            cluster.service("s-x-a", "x")["spec"]["clusterIP"]] * 2
    logs = "".join((cluster._dns_dir / f"{p.name}.log").read_text()
                   for p in cluster.dns_pods())
    assert "Traceback" not in logs and "[ERROR]" not in logs  # no crash, no answer spoilt


# --- teardown -------------------------------------------------------------------------------------

def test_cli_prints_each_replicas_counters(cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from lab_kit import cli
    monkeypatch.setenv("LAB_KIT_STATE_DIR", str(cluster.root))
    assert cli.main(["dns", "metrics", "--name", cluster.name]) == 0
    out = capsys.readouterr().out
    assert out.count("# kube-system/coredns-") == 2
    assert out.count("# TYPE labkit_dns_queries_total counter") == 2


def test_teardown_stops_the_servers_and_removes_resolv_conf(lab_cluster_factory) -> None:
    conf = dataclasses.replace(config.default_config(unique_name("d"), workers=1),
                               cluster_dns=True)
    c = lab_cluster_factory(conf)
    c.apply([_pod("default", "client")])
    state = str(c.store.dir)
    servers = [pid for pid in processes_with("lab_kit.dnsserver")
               if state in Path(f"/proc/{pid}/cmdline").read_text()]
    upstream = [pid for pid in processes_with("dnsmasq") if state in
                Path(f"/proc/{pid}/cmdline").read_text()]
    files = [Path("/etc/netns", p["netns"], "resolv.conf") for p in c.state["pods"].values()]
    files += [Path("/etc/netns", naming.node_netns(n.name), "resolv.conf") for n in c.nodes()]
    assert len(servers) == 2 and len(upstream) == 1 and all(f.is_file() for f in files)
    assert c.pod("client").sh("getent hosts kube-dns.kube-system").split()[0] == c.dns_ip
    c.down()
    alive = [pid for pid in servers + upstream if Path(f"/proc/{pid}").exists()
             and Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"]
    assert alive == []
    assert [f for f in files if f.exists() or f.parent.exists()] == []
