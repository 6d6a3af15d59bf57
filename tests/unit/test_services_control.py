"""The control-plane side of Services, without a kernel: validation as the API server does it,
ClusterIP/NodePort/load-balancer allocation, the EndpointSlice controller, kube-proxy's and
the load balancer's views, kubectl-style rows, and the conntrack/trace parsers."""

from __future__ import annotations

from typing import Any

import pytest

from lab_kit import config, model, services, svcdebug
from lab_kit.errors import ConfigError

SRC = model.Source("t.yaml", 0)
CONF = config.default_config("t", workers=2)


def svc_doc(name: str = "web", **spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"selector": {"app": "web"},
                         "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    s.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": s}


def parse(doc: dict[str, Any]) -> model.Service:
    [(o, _)] = model.load_manifests([doc])
    assert isinstance(o, model.Service)
    return o


def error(doc: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        model.load_manifests([doc])
    return e.value


@pytest.mark.parametrize(("spec", "field", "words"), [
    ({"ports": [{"port": 70000}]}, "spec.ports[0].port", "1-65535"),
    ({"type": "NodePort", "ports": [{"port": 80, "nodePort": 29999}]},
     "spec.ports[0].nodePort", "30000-32767"),
    ({"ports": [{"port": 80, "nodePort": 30001}]}, "spec.ports[0].nodePort", "ClusterIP"),
    ({"externalTrafficPolicy": "Local"}, "spec.externalTrafficPolicy", "externally-accessible"),
    ({"type": "NodePort", "clusterIP": "None"}, "spec.clusterIP", "headless"),
    ({"ports": [{"port": 80}, {"port": 81}]}, "spec.ports[0].name", "needs a name"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}, "spec.ports[1].port",
     "duplicate port"),
    ({"ports": [{"port": 80, "targetPort": "Not_A_Name"}]}, "spec.ports[0].targetPort",
     "port name"),
    ({"sessionAffinity": "ClientIP",
      "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 90000}}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "1-86400"),
    ({"type": "ExternalName"}, "spec.externalName", "required"),
    ({"clusterIP": "10.96.0.300"}, "spec.clusterIP", "not a valid IPv4"),
    ({"ports": [{"port": 53, "protocol": "SCTP"}]}, "spec.ports[0].protocol", "TCP or UDP"),
])
def test_invalid_services_name_the_field(spec, field, words):
    e = error(svc_doc(**spec))
    assert e.field == field and words in str(e), str(e)
    assert "`Service/web`" in str(e)


def test_defaults_like_the_api_server():
    s = parse(svc_doc(type="NodePort"))
    assert s.external_traffic_policy == "Cluster" and s.internal_traffic_policy == "Cluster"
    assert s.session_affinity == "None" and s.affinity_seconds == 10800
    assert s.ports[0].target == "http"
    assert parse(svc_doc(ports=[{"port": 80}])).ports[0].target == 80


def allocate(doc: dict[str, Any], stored: dict[str, Any] | None = None) -> dict[str, Any]:
    return services.allocate(parse(doc), stored or {}, CONF, SRC)


def store(*specs: dict[str, Any]) -> dict[str, Any]:
    return {f"{s['namespace']}/{s['name']}": {"spec": s} for s in specs}


def test_cluster_ip_allocation():
    a = allocate(svc_doc())
    ip = a["clusterIP"]
    assert ip.startswith("10.96.") and not ip.startswith("10.96.0.")  # above the static band
    b = allocate(svc_doc("other"), store(a))
    assert b["clusterIP"] != ip
    assert allocate(svc_doc("dns", clusterIP="10.96.0.10"))["clusterIP"] == "10.96.0.10"
    assert allocate(svc_doc("h", clusterIP="None"))["clusterIP"] == "None"


def test_cluster_ip_errors_are_the_api_servers():
    with pytest.raises(ConfigError) as e:
        allocate(svc_doc(clusterIP="10.200.0.1"))
    assert "is not in the valid range. The range of valid IPs is 10.96.0.0/16" in str(e.value)
    taken = allocate(svc_doc("a", clusterIP="10.96.0.20"))
    with pytest.raises(ConfigError) as e:
        allocate(svc_doc("b", clusterIP="10.96.0.20"), store(taken))
    assert "provided IP is already allocated" in str(e.value) and e.value.field == \
        "spec.clusterIPs"
    old = allocate(svc_doc())
    with pytest.raises(ConfigError) as e:
        allocate(svc_doc(clusterIP="10.96.0.99"), store(old))
    assert "immutable" in str(e.value)
    assert allocate(svc_doc(), store(old))["clusterIP"] == old["clusterIP"]  # kept on update


def test_node_ports():
    a = allocate(svc_doc(type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))
    assert a["ports"][0]["nodePort"] == 30080
    with pytest.raises(ConfigError) as e:
        allocate(svc_doc("b", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]),
                 store(a))
    assert "provided port 30080 is already allocated" in str(e.value)
    assert e.value.field == "spec.ports[0].nodePort"
    auto = allocate(svc_doc("c", type="NodePort"), store(a))
    port = auto["ports"][0]["nodePort"]
    assert 30000 <= port <= 32767 and port != 30080
    # an update keeps the allocated port; going back to ClusterIP releases it
    assert allocate(svc_doc("c", type="NodePort"), store(auto))["ports"][0]["nodePort"] == port
    assert allocate(svc_doc("c"), store(auto))["ports"][0]["nodePort"] is None


def test_load_balancer_ips_come_from_the_pool_and_can_run_out():
    pool = services.lb_pool()
    a = allocate(svc_doc("a", type="LoadBalancer"))
    assert a["lbIP"] == pool[0]
    b = allocate(svc_doc("b", type="LoadBalancer"), store(a))
    assert b["lbIP"] == pool[1]
    with pytest.raises(ConfigError) as e:
        allocate(svc_doc("c", type="LoadBalancer", loadBalancerIP="192.0.2.1"))
    assert "not in the lab's load-balancer pool" in str(e.value)
    full = store(*[dict(a, name=f"x{i}", lbIP=ip) for i, ip in enumerate(pool)])
    assert allocate(svc_doc("late", type="LoadBalancer"), full)["lbIP"] is None
    row = services.service_row({"spec": allocate(svc_doc("late", type="LoadBalancer"), full)})
    assert row[3] == "<pending>"


def pod_state(name: str, ip: str, node: str, labels: dict[str, str], port: int = 8080,
              port_name: str = "http") -> dict[str, Any]:
    p = model.Pod("default", name, (model.Container("c", "img", (model.ContainerPort(
        port, "TCP", port_name),)),), labels)
    return {"spec": model.pod_to_json(p), "ip": ip, "node": node, "uid": name}


def test_endpoint_slices_follow_selector_and_named_ports():
    svcs = store(allocate(svc_doc()), allocate(svc_doc("empty", selector={})),
                 allocate({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
                           "spec": {"type": "ExternalName", "externalName": "example.com"}}))
    pods = {"default/a": pod_state("a", "10.244.1.2", "w1", {"app": "web"}),
            "default/b": pod_state("b", "10.244.2.2", "w2", {"app": "web"}, port=9090),
            "default/c": pod_state("c", "10.244.2.3", "w2", {"app": "db"})}
    slices = services.endpoint_slices(svcs, pods)
    web = services.slices_of(slices, "default", "web")
    assert sorted((s["ports"][0]["port"], [e["addresses"][0] for e in s["endpoints"]])
                  for s in web) == [(8080, ["10.244.1.2"]), (9090, ["10.244.2.2"])]
    assert all(s["metadata"]["labels"]["kubernetes.io/service-name"] == "web" for s in web)
    assert [s["endpoints"] for s in services.slices_of(slices, "default", "empty")] == [[]]
    assert services.slices_of(slices, "default", "ext") == []
    # a pod about to be deleted is left out first
    gone = services.endpoint_slices(svcs, pods, exclude=["default/b"])
    assert len(services.slices_of(gone, "default", "web")) == 1
    ports = services.service_ports(svcs, slices)
    web_port = next(sp for sp in ports if sp.name == "web")
    assert {(e.ip, e.port, e.node) for e in web_port.endpoints} == {
        ("10.244.1.2", 8080, "w1"), ("10.244.2.2", 9090, "w2")}


def test_load_balancer_routes_follow_traffic_policy():
    lb = dict(allocate(svc_doc(type="LoadBalancer")))
    local = dict(allocate(svc_doc("loc", type="LoadBalancer", externalTrafficPolicy="Local"),
                          store(lb)))
    svcs = store(lb, local)
    pods = {"default/a": pod_state("a", "10.244.1.2", CONF.nodes[1].name, {"app": "web"})}
    routes = services.lb_routes(CONF, services.service_ports(
        svcs, services.endpoint_slices(svcs, pods)))
    assert routes[lb["lbIP"]] == [n.ip for n in CONF.nodes]
    assert routes[local["lbIP"]] == [CONF.nodes[1].ip]
    no_pods = services.lb_routes(CONF, services.service_ports(
        svcs, services.endpoint_slices(svcs, {})))
    assert no_pods == {lb["lbIP"]: [], local["lbIP"]: []}


def test_kubectl_rows_and_yaml():
    np = allocate(svc_doc(type="NodePort", ports=[{"port": 80, "targetPort": 8080,
                                                   "nodePort": 30080}]))
    row = services.service_row({"spec": np})
    assert row[:2] == ["web", "NodePort"] and row[3:] == ["<none>", "80:30080/TCP"]
    obj = services.service_object({"spec": np})
    assert obj["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 8080,
                                     "nodePort": 30080}]
    assert obj["spec"]["externalTrafficPolicy"] == "Cluster"
    sl = {"metadata": {"name": "web-abcde"}, "addressType": "IPv4",
          "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
          "endpoints": [{"addresses": [f"10.244.1.{i}"]} for i in range(2, 7)]}
    assert services.slice_row(sl) == ["web-abcde", "IPv4", "8080",
                                      "10.244.1.2,10.244.1.3,10.244.1.4 + 2 more..."]


CONNTRACK = """\
tcp      6 117 TIME_WAIT src=10.244.2.3 dst=10.96.236.188 sport=44144 dport=80 \
src=10.244.1.2 dst=10.244.2.3 sport=8080 dport=44144 [ASSURED] mark=0 use=1
tcp      6 86397 ESTABLISHED src=172.18.0.100 dst=172.18.0.2 sport=44342 dport=30080 \
src=10.244.2.2 dst=10.244.0.0 sport=8080 dport=36384 [ASSURED] mark=0 use=1
udp      17 28 src=10.244.2.3 dst=10.244.2.1 sport=5353 dport=53 [UNREPLIED] \
src=10.244.2.1 dst=10.244.2.3 sport=53 dport=5353 mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.
"""


def test_conntrack_parse_shows_dnat_and_snat():
    flows = svcdebug.parse_conntrack(CONNTRACK, "n1")
    assert len(flows) == 3
    assert flows[0].dnat == "10.96.236.188:80 -> 10.244.1.2:8080" and flows[0].snat is None
    assert flows[1].state == "ESTABLISHED"
    assert flows[1].snat == "172.18.0.100:44342 -> 10.244.0.0:36384"
    assert flows[2].dnat is None and flows[2].snat is None and flows[2].state == "UNREPLIED"


TRACE = """\
trace id 8a12 ip lab_kit_trace pre packet: iif "cni0" ip saddr 10.244.2.3 ip daddr 10.96.0.5
trace id 8a12 ip lab_kit_trace pre rule ip saddr 10.244.2.3 meta nftrace set 1 (verdict continue)
trace id 8a12 ip nat PREROUTING rule  counter packets 0 bytes 0 jump KUBE-SERVICES \
(verdict jump KUBE-SERVICES)
trace id 8a12 ip nat KUBE-SEP-X rule meta l4proto tcp   counter packets 0 bytes 0 \
dnat to 10.244.1.2:8080 (verdict accept)
trace id fa03 ip nat POSTROUTING rule  counter packets 1 bytes 40 jump KUBE-POSTROUTING \
(verdict jump KUBE-POSTROUTING)
trace id fa03 ip nat POSTROUTING policy accept
trace id 0482 ip filter FORWARD rule  counter packets 0 bytes 0 jump KUBE-FORWARD \
(verdict jump KUBE-FORWARD)
"""


def test_trace_parse_keeps_the_first_packet_and_matches_counters():
    steps = svcdebug.parse_trace(TRACE, "n1")
    assert [(s.table, s.chain) for s in steps] == [
        ("nat", "PREROUTING"), ("nat", "KUBE-SEP-X"), ("nat", "POSTROUTING"),
        ("nat", "POSTROUTING")]
    assert steps[1].rule == "meta l4proto tcp dnat to 10.244.1.2:8080"
    assert steps[1].verdict == "accept" and steps[-1].verdict == "policy accept"
    listing = ("table ip nat {\n\tchain KUBE-SEP-X {\n\t\tmeta l4proto tcp   counter packets 7 "
               "bytes 420 dnat to 10.244.1.2:8080\n\t}\n}\n")
    assert svcdebug.parse_counters(listing)[("nat", "KUBE-SEP-X", steps[1].rule)] == (7, 420)
