"""Cluster DNS as pure functions: record forms, NXDOMAIN vs NODATA, resolv.conf per dnsPolicy,
and the server's packet handling (truncation, FORMERR) without sockets."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from lab_kit import clusterdns, dnsserver, model
from lab_kit.errors import ConfigError


def _snapshot(**over):
    snap = {
        "generation": 7, "zone": "cluster.local", "dnsIP": "10.96.0.10", "ttl": 30,
        "pods_mode": "insecure",
        "services": [
            {"namespace": "default", "name": "web", "type": "ClusterIP",
             "clusterIP": "10.96.100.1",
             "ports": [{"name": "http", "protocol": "TCP", "port": 80},
                       {"name": "dns", "protocol": "UDP", "port": 53}]},
            {"namespace": "default", "name": "plain", "type": "ClusterIP",
             "clusterIP": "10.96.100.2", "ports": [{"name": "", "protocol": "TCP", "port": 80}]},
            {"namespace": "default", "name": "hl", "type": "ClusterIP", "clusterIP": "None",
             "ports": [{"name": "http", "protocol": "TCP", "port": 80}]},
            {"namespace": "default", "name": "empty", "type": "ClusterIP", "clusterIP": "None",
             "ports": []},
            {"namespace": "default", "name": "ext", "type": "ExternalName",
             "externalName": "www.example.com", "ports": []},
        ],
        "endpointslices": [{
            "metadata": {"namespace": "default", "name": "hl-x",
                         "labels": {"kubernetes.io/service-name": "hl"}},
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.244.1.2"], "hostname": "a", "conditions": {"ready": True}},
                {"addresses": ["10.244.1.3"], "conditions": {"ready": True}},
                {"addresses": ["10.244.1.4"], "conditions": {"ready": False}}]}],
        "pods": [{"namespace": "default", "name": "a", "ip": "10.244.1.2"},
                 {"namespace": "default", "name": "b", "ip": "10.244.1.3"},
                 {"namespace": "x", "name": "lone", "ip": "10.244.2.9"}],
    }
    snap.update(over)
    return snap


@pytest.fixture(scope="module")
def records():
    return clusterdns.Records.from_snapshot(_snapshot())


def ask(records, name, qtype="A"):
    q = dns.message.make_query(name, qtype)
    return records.respond(q)


def answers(resp):
    return sorted(rd.to_text() for rs in resp.answer for rd in rs)


def test_clusterip_service_a_and_case_insensitive(records):
    for name in ("web.default.svc.cluster.local.", "WEB.Default.SVC.cluster.LOCAL."):
        r = ask(records, name)
        assert r.rcode() == dns.rcode.NOERROR and answers(r) == ["10.96.100.1"]
        assert r.flags & dns.flags.AA and r.answer[0].ttl == 30
        assert r.answer[0].name.to_text() == name  # the question's spelling is kept


def test_aaaa_for_ipv4_service_is_nodata_with_soa(records):
    r = ask(records, "web.default.svc.cluster.local.", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.SOA
    assert r.authority[0][0].minimum == 30 and r.authority[0][0].serial == 7


def test_srv_named_ports_only_with_additional_a(records):
    r = ask(records, "_http._tcp.web.default.svc.cluster.local.", "SRV")
    assert answers(r) == ["0 100 80 web.default.svc.cluster.local."]
    assert [rd.to_text() for rs in r.additional for rd in rs] == ["10.96.100.1"]
    assert ask(records, "_dns._udp.web.default.svc.cluster.local.", "SRV").answer
    assert ask(records, "_http._udp.web.default.svc.cluster.local.",
               "SRV").rcode() == dns.rcode.NXDOMAIN
    # an unnamed port has no SRV record
    r = ask(records, "plain.default.svc.cluster.local.", "SRV")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    # SRV at the Service name: every named port
    assert len(answers(ask(records, "web.default.svc.cluster.local.", "SRV"))) == 2


def test_ptr_for_service_endpoint_and_pod(records):
    assert answers(ask(records, "1.100.96.10.in-addr.arpa.", "PTR")) == [
        "web.default.svc.cluster.local."]
    assert answers(ask(records, "2.1.244.10.in-addr.arpa.", "PTR")) == [
        "a.hl.default.svc.cluster.local."]
    assert answers(ask(records, "3.1.244.10.in-addr.arpa.", "PTR")) == [
        "10-244-1-3.hl.default.svc.cluster.local."]
    assert answers(ask(records, "9.2.244.10.in-addr.arpa.", "PTR")) == [
        "10-244-2-9.x.pod.cluster.local."]
    # an address the cluster does not know is not ours: forwarded
    assert ask(records, "1.0.0.192.in-addr.arpa.", "PTR") is None


def test_headless_ready_endpoints_hostnames_and_srv(records):
    assert answers(ask(records, "hl.default.svc.cluster.local.")) == ["10.244.1.2", "10.244.1.3"]
    assert answers(ask(records, "a.hl.default.svc.cluster.local.")) == ["10.244.1.2"]
    assert answers(ask(records, "10-244-1-3.hl.default.svc.cluster.local.")) == ["10.244.1.3"]
    # not ready: no record
    assert ask(records, "10-244-1-4.hl.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    assert answers(ask(records, "_http._tcp.hl.default.svc.cluster.local.", "SRV")) == [
        "0 100 8080 10-244-1-3.hl.default.svc.cluster.local.",
        "0 100 8080 a.hl.default.svc.cluster.local."]
    # a headless Service without ready endpoints: NXDOMAIN
    assert ask(records, "empty.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN


def test_external_name_is_a_cname_whatever_the_type(records):
    for qtype in ("A", "AAAA", "CNAME"):
        r = ask(records, "ext.default.svc.cluster.local.", qtype)
        assert [(rs.rdtype, rs[0].to_text()) for rs in r.answer] == [
            (dns.rdatatype.CNAME, "www.example.com.")]


def test_chase_adds_the_targets_records(records):
    import dns.rrset
    q = dns.message.make_query("ext.default.svc.cluster.local.", "A")
    seen = []

    def chase(name, rdtype):
        seen.append((name, rdtype))
        return [dns.rrset.from_text(name, 60, "IN", "A", "172.18.0.100")]
    r = records.respond(q, chase=chase)
    assert seen == [("www.example.com.", dns.rdatatype.A)]
    assert [rs.rdtype for rs in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]


def test_nxdomain_vs_nodata_and_empty_non_terminals(records):
    assert ask(records, "nope.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    assert ask(records, "www.example.com.default.svc.cluster.local.").rcode() == \
        dns.rcode.NXDOMAIN
    for name in ("default.svc.cluster.local.", "svc.cluster.local.", "cluster.local."):
        r = ask(records, name)
        assert r.rcode() == dns.rcode.NOERROR and not r.answer, name
        assert r.authority and r.authority[0].rdtype == dns.rdatatype.SOA
    r = ask(records, "nope.default.svc.cluster.local.")
    assert r.authority[0].rdtype == dns.rdatatype.SOA
    # an unknown type on an existing name: NODATA
    r = ask(records, "web.default.svc.cluster.local.", "TYPE65280")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer


def test_schema_version_soa_ns(records):
    assert answers(ask(records, "dns-version.cluster.local.", "TXT")) == ['"1.1.0"']
    assert answers(ask(records, "cluster.local.", "NS")) == ["ns.dns.cluster.local."]
    assert answers(ask(records, "ns.dns.cluster.local.")) == ["10.96.0.10"]
    assert ask(records, "cluster.local.", "SOA").answer[0].rdtype == dns.rdatatype.SOA


@pytest.mark.parametrize("mode,expect", [("insecure", ["10.244.9.9"]), ("verified", []),
                                         ("disabled", [])])
def test_pod_records_modes(mode, expect):
    r = clusterdns.Records.from_snapshot(_snapshot(pods_mode=mode))
    resp = ask(r, "10-244-9-9.default.pod.cluster.local.")
    assert answers(resp) == expect
    assert resp.rcode() == (dns.rcode.NOERROR if expect else dns.rcode.NXDOMAIN)
    known = ask(r, "10-244-1-2.default.pod.cluster.local.")
    assert answers(known) == ([] if mode == "disabled" else ["10.244.1.2"])
    # verified checks the namespace too
    if mode == "verified":
        assert not ask(r, "10-244-1-2.x.pod.cluster.local.").answer


def test_names_outside_the_zone_are_forwarded(records):
    assert ask(records, "www.example.com.") is None
    assert ask(records, "local.") is None


def test_opcode_and_question_count():
    r = clusterdns.Records.from_snapshot(_snapshot())
    q = dns.message.make_query("web.default.svc.cluster.local.", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    assert r.respond(q).rcode() == dns.rcode.NOTIMP
    q = dns.message.make_query("web.default.svc.cluster.local.", "A")
    q.question = []
    assert r.respond(q).rcode() == dns.rcode.FORMERR


# --- the server's packet path, without sockets -----------------------------------------------

def _server(tmp_path, snap):
    import json
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(snap))
    s = dnsserver.Server(path, upstream=None)
    assert s.load()
    return s


def _ask_server(server, wire, proto="udp"):
    out = []
    server.answer(wire, proto, out.append)
    return out


def test_udp_truncation_then_full_answer_over_tcp(tmp_path):
    eps = [{"addresses": [f"10.244.1.{i}"], "conditions": {"ready": True}}
           for i in range(2, 80)]
    snap = _snapshot(endpointslices=[{
        "metadata": {"namespace": "default", "name": "hl-x",
                     "labels": {"kubernetes.io/service-name": "hl"}},
        "ports": [{"name": "http", "protocol": "TCP", "port": 80}], "endpoints": eps}])
    s = _server(tmp_path, snap)
    q = dns.message.make_query("hl.default.svc.cluster.local.", "A")
    (udp,) = _ask_server(s, q.to_wire())
    r = dns.message.from_wire(udp)
    assert len(udp) <= 512 and r.flags & dns.flags.TC and not r.answer
    (tcp,) = _ask_server(s, q.to_wire(), "tcp")
    r = dns.message.from_wire(tcp)
    assert not r.flags & dns.flags.TC and len(answers(r)) == 78
    # EDNS with a large buffer: the whole answer fits over UDP
    q = dns.message.make_query("hl.default.svc.cluster.local.", "A", use_edns=0, payload=4096)
    (udp,) = _ask_server(s, q.to_wire())
    assert len(answers(dns.message.from_wire(udp))) == 78


def test_cache_reuses_answer_with_new_id_and_counts(tmp_path):
    s = _server(tmp_path, _snapshot())
    q1 = dns.message.make_query("web.default.svc.cluster.local.", "A")
    q2 = dns.message.make_query("web.default.svc.cluster.local.", "A")
    q2.id = (q1.id + 1) % 65536
    a1 = dns.message.from_wire(_ask_server(s, q1.to_wire())[0])
    a2 = dns.message.from_wire(_ask_server(s, q2.to_wire())[0])
    assert (a1.id, a2.id) == (q1.id, q2.id) and answers(a1) == answers(a2)
    assert s.metrics.cache_hits == 1
    text = s.metrics.text()
    assert 'labkit_dns_queries_total{type="A",rcode="NOERROR"} 2' in text
    assert 'proto="udp",family="1",type="A"} 2' in text


def test_malformed_packets_get_formerr_or_are_dropped(tmp_path):
    s = _server(tmp_path, _snapshot())
    assert _ask_server(s, b"") == [] and _ask_server(s, b"\x12\x34\x01") == []
    (resp,) = _ask_server(s, b"\x12\x34\x01\x00\x00\x05" + b"\x00" * 6 + b"garbage")
    r = dns.message.from_wire(resp)
    assert r.id == 0x1234 and r.rcode() == dns.rcode.FORMERR and r.flags & dns.flags.QR
    # a response sent to the server is never answered (no loops)
    q = dns.message.make_query("web.default.svc.cluster.local.", "A")
    q.flags |= dns.flags.QR
    assert _ask_server(s, q.to_wire()) == []


def test_forward_without_upstream_is_servfail(tmp_path):
    s = _server(tmp_path, _snapshot())
    q = dns.message.make_query("www.example.com.", "A")
    out = []
    s.answer(q.to_wire(), "udp", out.append)
    s.pool.shutdown(wait=True)
    assert dns.message.from_wire(out[0]).rcode() == dns.rcode.SERVFAIL


def test_snapshot_reload_clears_cache(tmp_path):
    import json
    s = _server(tmp_path, _snapshot())
    q = dns.message.make_query("new.default.svc.cluster.local.", "A")
    assert dns.message.from_wire(_ask_server(s, q.to_wire())[0]).rcode() == dns.rcode.NXDOMAIN
    snap = _snapshot(generation=8)
    snap["services"].append({"namespace": "default", "name": "new", "type": "ClusterIP",
                             "clusterIP": "10.96.100.9", "ports": []})
    import os
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(snap))
    os.utime(path, ns=(1, 10**18))  # a different mtime even within one clock tick
    assert s.load()
    assert answers(dns.message.from_wire(_ask_server(s, q.to_wire())[0])) == ["10.96.100.9"]


# --- resolv.conf (kubelet) ----------------------------------------------------------------------

NODE = clusterdns.node_resolv_conf("172.18.0.100")


def _pod(**kw):
    return model.Pod(namespace="x", name="p", containers=(), **kw)


def test_resolv_cluster_first():
    conf = clusterdns.resolv_conf(_pod(), "10.96.0.10", NODE)
    assert conf.text() == ("nameserver 10.96.0.10\n"
                           "search x.svc.cluster.local svc.cluster.local cluster.local\n"
                           "options ndots:5\n")


def test_resolv_default_and_none():
    assert clusterdns.resolv_conf(_pod(dns_policy="Default"), "10.96.0.10",
                                  NODE).text() == "nameserver 172.18.0.100\n"
    cfg = model.DNSConfig(nameservers=("1.2.3.4",), searches=("corp.example",),
                          options=(("ndots", "2"), ("edns0", None)))
    conf = clusterdns.resolv_conf(_pod(dns_policy="None", dns_config=cfg), "10.96.0.10", NODE)
    assert conf.text() == ("nameserver 1.2.3.4\nsearch corp.example\n"
                           "options ndots:2 edns0\n")


def test_resolv_dns_config_merges():
    cfg = model.DNSConfig(nameservers=("10.96.0.10", "1.1.1.1", "8.8.8.8", "9.9.9.9"),
                          searches=("svc.cluster.local", "corp.example"),
                          options=(("ndots", "1"), ("timeout", "2")))
    conf = clusterdns.resolv_conf(_pod(dns_config=cfg), "10.96.0.10", NODE)
    assert conf.nameservers == ("10.96.0.10", "1.1.1.1", "8.8.8.8")  # deduplicated, at most 3
    assert conf.searches == ("x.svc.cluster.local", "svc.cluster.local", "cluster.local",
                             "corp.example")
    assert conf.options == ("ndots:1", "timeout:2")  # the pod's option wins


def test_parse_resolv_conf_round_trip():
    text = "# c\nnameserver 10.96.0.10\nsearch a b\noptions ndots:5 edns0\n"
    conf = clusterdns.parse_resolv_conf(text)
    assert conf == clusterdns.ResolvConf(("10.96.0.10",), ("a", "b"), ("ndots:5", "edns0"))


# --- the pod spec's DNS fields -------------------------------------------------------------------

def _load(spec):
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "agnhost"}], **spec}}
    return model.load_manifests([doc])[0][0]


@pytest.mark.parametrize("spec,field", [
    ({"dnsPolicy": "ClusterFirstPlease"}, "spec.dnsPolicy"),
    ({"dnsPolicy": "None"}, "spec.dnsConfig"),
    ({"dnsPolicy": "None", "dnsConfig": {"searches": ["a"]}}, "spec.dnsConfig.nameservers"),
    ({"dnsConfig": {"nameservers": ["10.0.0.300"]}}, "spec.dnsConfig.nameservers[0]"),
    ({"dnsConfig": {"nameservers": ["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"]}},
     "spec.dnsConfig.nameservers"),
    ({"dnsConfig": {"searches": ["Bad_Domain"]}}, "spec.dnsConfig.searches[0]"),
    ({"hostname": "Not_A_Label"}, "spec.hostname"),
    ({"subdomain": "-x"}, "spec.subdomain"),
])
def test_bad_dns_fields_name_the_field(spec, field):
    with pytest.raises(ConfigError) as e:
        _load(spec)
    assert e.value.field == field


def test_dns_fields_round_trip_and_coredns_program():
    p = _load({"hostname": "a", "subdomain": "hl", "dnsPolicy": "None",
               "dnsConfig": {"nameservers": ["10.96.0.10"], "options": [{"name": "ndots",
                                                                          "value": "2"}]}})
    assert model.pod_from_json(model.pod_to_json(p)) == p
    assert p.program == "agnhost"
    dep = clusterdns.coredns_manifests("10.96.0.10", "n1")[0]
    tmpl = model.load_manifests([dep])[0][0].template
    assert tmpl.program == "coredns" and tmpl.serve_ports() == ([], [])
    assert tmpl.dns_policy == "Default"


def test_resolv_search_list_is_trimmed_to_kubelets_limits():
    cfg = model.DNSConfig(searches=tuple(f"d{i}.example" for i in range(40)))
    conf = clusterdns.resolv_conf(_pod(dns_config=cfg), "10.96.0.10", NODE)
    assert len(conf.searches) == model.MAX_DNS_SEARCHES
    assert conf.searches[:3] == ("x.svc.cluster.local", "svc.cluster.local", "cluster.local")


def test_an_answer_spoilt_by_a_bug_is_servfail_and_not_cached(tmp_path, monkeypatch):
    s = _server(tmp_path, _snapshot())
    q = dns.message.make_query("web.default.svc.cluster.local.", "A")
    monkeypatch.setattr(s.records, "respond", lambda *a, **k: 1 / 0)
    resp = dns.message.from_wire(_ask_server(s, q.to_wire())[0])
    assert resp.rcode() == dns.rcode.SERVFAIL and s.cache["udp"] == {}
    monkeypatch.undo()
    assert answers(dns.message.from_wire(_ask_server(s, q.to_wire())[0])) == ["10.96.100.1"]


def test_udp_forward_resends_a_query_that_got_no_answer():
    """One lost datagram upstream is not a SERVFAIL: the query goes again after a second."""
    import socket
    import threading

    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    upstream.settimeout(5)
    seen = []

    def serve() -> None:
        for _ in range(2):
            data, peer = upstream.recvfrom(512)
            seen.append(data)
            if len(seen) == 2:  # the first copy is "lost"
                upstream.sendto(data[:2] + b"answer", peer)

    t = threading.Thread(target=serve)
    t.start()
    try:
        wire = dnsserver._exchange("127.0.0.1", b"\x12\x34query", "udp",
                                   port=upstream.getsockname()[1])
    finally:
        t.join()
        upstream.close()
    assert wire == b"\x12\x34answer"
    assert seen == [b"\x12\x34query"] * 2
