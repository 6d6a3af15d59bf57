"""What the control plane derives for Services, as pure functions over the stored state.

- **Allocation** (the API server's job): a ClusterIP from the service subnet, NodePorts from
  30000-32767, and — standing in for a load-balancer controller such as MetalLB — an external
  IP from the lab's pool for `type: LoadBalancer`.
- **The EndpointSlice controller**: from each Service's selector and the pods that are ready,
  slices of endpoints (pod IP, node, target port resolved per pod for named ports).
- **kube-proxy's view**: per node, a :class:`lab_kit.kubeproxy.ProxyInput` built from Services
  and slices only (kube-proxy never looks at pods).
- **The load balancer's view**: which nodes each load-balancer IP is routed to.

Nothing here touches the kernel; :mod:`lab_kit.cluster` stores the results and
:mod:`lab_kit.kubeproxy` renders them.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Any

from lab_kit import kubeproxy, model, naming
from lab_kit.config import ClusterConfig
from lab_kit.errors import ConfigError

LB_POOL = ("172.18.255.200", "172.18.255.250")  # like MetalLB's pool in its kind guide
MAX_ENDPOINTS_PER_SLICE = 100  # the EndpointSlice controller's default
MANAGED_BY = "endpointslice-controller.k8s.io"


def _h(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def static_band(net: ipaddress.IPv4Network) -> int:
    """Size of the low band kept for requested ClusterIPs (KEP-3070): min(max(16, n/16), 256)."""
    return min(max(16, net.num_addresses // 16), 256)


def lb_pool() -> list[str]:
    lo, hi = (ipaddress.IPv4Address(a) for a in LB_POOL)
    return [str(ipaddress.IPv4Address(i)) for i in range(int(lo), int(hi) + 1)]


def allocate(svc: model.Service, stored: dict[str, dict[str, Any]], conf: ClusterConfig,
             src: model.Source, pending: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """The stored form of `svc` with clusterIP, nodePorts and load-balancer IP filled in.

    `stored` holds every Service already in the cluster (the old version of `svc` keeps what
    it had, as the API server keeps a Service's ClusterIP and NodePorts on update); `pending`
    are Services allocated earlier in the same apply. Raises ConfigError like the API server.
    """
    obj = f"Service/{svc.key}"

    def fail(msg: str, fld: str, fix: str | None = None) -> ConfigError:
        return ConfigError(msg, file=src.file, obj=obj, field=fld, fix=fix)

    old = stored.get(svc.key)
    old_spec = old["spec"] if old else None
    others = [s["spec"] for k, s in stored.items() if k != svc.key] + [
        p for p in pending if f"{p['namespace']}/{p['name']}" != svc.key]
    spec = model.service_to_json(svc)

    # -- ClusterIP
    net = ipaddress.IPv4Network(conf.service_subnet)
    taken = {o["clusterIP"] for o in others if o.get("clusterIP") not in (None, "None")}
    want = svc.cluster_ip
    if svc.type == "ExternalName":
        ip = None
    elif old_spec is not None and old_spec.get("clusterIP") is not None and old["spec"][
            "type"] != "ExternalName":
        if want is not None and want != old_spec["clusterIP"]:
            raise fail(f"field is immutable (it is {old_spec['clusterIP']})", "spec.clusterIP",
                       "delete the Service and create it again to change its ClusterIP")
        ip = old_spec["clusterIP"]
    elif want == "None":
        ip = "None"
    elif want is not None:
        addr = ipaddress.IPv4Address(want)
        if addr not in net or addr in (net.network_address, net.broadcast_address):
            raise fail(f"failed to allocate IP {want}: the provided IP ({want}) is not in the "
                       f"valid range. The range of valid IPs is {net}", "spec.clusterIPs")
        if want in taken:
            raise fail(f"failed to allocate IP {want}: provided IP is already allocated",
                       "spec.clusterIPs", "pick another address or leave clusterIP out")
        ip = want
    else:
        ip = _pick_ip(net, taken, svc.key)
        if ip is None:
            raise fail(f"the service subnet {net} has no free address", "spec.clusterIP")
    spec["clusterIP"] = ip

    # -- NodePorts
    used = {p["nodePort"] for o in others for p in o["ports"] if p.get("nodePort")}
    old_ports = {(p["name"], p["protocol"]): p.get("nodePort")
                 for p in (old_spec["ports"] if old_spec else [])}
    mine: set[int] = set()
    for i, p in enumerate(spec["ports"]):
        if svc.type not in ("NodePort", "LoadBalancer"):
            p["nodePort"] = None
            continue
        np = p["nodePort"] or old_ports.get((p["name"], p["protocol"]))
        if p["nodePort"] is not None and (np in used or np in mine):
            raise fail(f"provided port {np} is already allocated", f"spec.ports[{i}].nodePort",
                       "pick another nodePort or leave it out to get a free one")
        if np is None or np in used or np in mine:
            np = _pick_port(used | mine, f"{svc.key}:{p['name']}/{p['protocol']}")
            if np is None:
                raise fail("no free NodePort left in 30000-32767", f"spec.ports[{i}].nodePort")
        p["nodePort"] = np
        mine.add(np)

    # -- load-balancer IP (the lab's MetalLB-like controller)
    status_ip = None
    if svc.type == "LoadBalancer":
        lb_taken = {o.get("lbIP") for o in others} - {None}
        had = old_spec.get("lbIP") if old_spec else None
        pool = lb_pool()
        if svc.load_balancer_ip is not None:
            if svc.load_balancer_ip not in pool:
                raise fail(f"{svc.load_balancer_ip} is not in the lab's load-balancer pool "
                           f"{LB_POOL[0]}-{LB_POOL[1]}", "spec.loadBalancerIP")
            if svc.load_balancer_ip in lb_taken:
                raise fail(f"{svc.load_balancer_ip} is already assigned to another Service",
                           "spec.loadBalancerIP")
            status_ip = svc.load_balancer_ip
        elif had and had not in lb_taken:
            status_ip = had
        else:
            # an exhausted pool leaves the Service <pending>, as MetalLB does
            status_ip = next((a for a in pool if a not in lb_taken), None)
    spec["lbIP"] = status_ip
    return spec


def _pick_ip(net: ipaddress.IPv4Network, taken: set[str], key: str) -> str | None:
    """A free address from the upper (dynamic) band, starting at a spot the name picks."""
    lo = int(net.network_address) + static_band(net)
    hi = int(net.broadcast_address) - 1
    span = hi - lo + 1
    start = _h(key) % span
    for k in range(span):
        cand = str(ipaddress.IPv4Address(lo + (start + k) % span))
        if cand not in taken:
            return cand
    for i in range(int(net.network_address) + 2, lo):  # then the static band (.1 is kept)
        cand = str(ipaddress.IPv4Address(i))
        if cand not in taken:
            return cand
    return None


def _pick_port(used: set[int], key: str) -> int | None:
    lo, hi = model.NODE_PORT_RANGE
    span = hi - lo + 1
    start = _h(key) % span
    for k in range(span):
        cand = lo + (start + k) % span
        if cand not in used:
            return cand
    return None


# --- the EndpointSlice controller -------------------------------------------------------------

def _resolve(port: dict[str, Any], pod: model.Pod) -> int | None:
    """A Service port's targetPort on one pod: a number, or a named container port."""
    target = port["targetPort"] if port["targetPort"] is not None else port["port"]
    if isinstance(target, int):
        return target
    for c in pod.containers:
        for cp in c.ports:
            if cp.name == target and cp.protocol == port["protocol"]:
                return cp.port
    return None


def endpoint_slices(services: dict[str, dict[str, Any]], pods: dict[str, dict[str, Any]],
                    exclude: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Every managed EndpointSlice, keyed `namespace/name`, in the discovery.k8s.io/v1 shape.

    Pods in `exclude` are treated as terminating and left out (they are about to be deleted:
    their endpoints go first, so no new connection is sent to them).
    """
    gone = set(exclude)
    by_ns: dict[str, list[tuple[model.Pod, dict[str, Any]]]] = {}
    for key, p in sorted(pods.items()):
        if key in gone:
            continue
        spec = model.pod_from_json(p["spec"])
        by_ns.setdefault(spec.namespace, []).append((spec, p))
    out: dict[str, dict[str, Any]] = {}
    for key, stored in sorted(services.items()):
        spec = stored["spec"]
        if spec["type"] == "ExternalName" or spec.get("selector") is None:
            continue
        sel = spec["selector"]
        groups: dict[tuple[tuple[str, str, int], ...], list[dict[str, Any]]] = {}
        for pod, p in by_ns.get(spec["namespace"], []):
            if not sel or any(pod.labels.get(k) != v for k, v in sel.items()):
                continue  # an empty selector selects nothing for a Service (as upstream)
            resolved = []
            for port in spec["ports"]:
                num = _resolve(port, pod)
                if num is not None:
                    resolved.append((port["name"], port["protocol"], num))
            if spec["ports"] and not resolved:
                continue
            ep: dict[str, Any] = {"addresses": [p["ip"]]}
            if pod.hostname and pod.subdomain == spec["name"]:
                ep["hostname"] = pod.hostname  # the EndpointSlice controller's rule: DNS names it
            groups.setdefault(tuple(resolved), []).append({
                **ep,
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": p["node"],
                "targetRef": {"kind": "Pod", "namespace": pod.namespace, "name": pod.name,
                              "uid": p.get("uid", "")}})
        if not groups:
            groups[tuple((pt["name"], pt["protocol"], None) for pt in spec["ports"])] = []
        for ports, eps in sorted(groups.items(), key=lambda g: str(g[0])):
            chunks = [eps[i:i + MAX_ENDPOINTS_PER_SLICE]
                      for i in range(0, len(eps), MAX_ENDPOINTS_PER_SLICE)] or [[]]
            for n, chunk in enumerate(chunks):
                name = f"{spec['name']}-{naming.safe_encode(f'{key}/{ports}/{n}', 5)}"
                out[f"{spec['namespace']}/{name}"] = {
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": name, "namespace": spec["namespace"],
                                 "labels": {"kubernetes.io/service-name": spec["name"],
                                            "endpointslice.kubernetes.io/managed-by":
                                                MANAGED_BY}},
                    "addressType": "IPv4",
                    "endpoints": chunk,
                    "ports": [{"name": nm, "protocol": pr, "port": num}
                              for nm, pr, num in ports]}
    return out


def slices_of(slices: dict[str, dict[str, Any]], namespace: str, name: str
              ) -> list[dict[str, Any]]:
    return [s for s in slices.values() if s["metadata"]["namespace"] == namespace
            and s["metadata"]["labels"]["kubernetes.io/service-name"] == name]


# --- kube-proxy's and the load balancer's views ------------------------------------------------

def service_ports(services: dict[str, dict[str, Any]], slices: dict[str, dict[str, Any]]
                  ) -> list[kubeproxy.ServicePort]:
    """Every (Service, port) as kube-proxy sees it, endpoints from the slices."""
    by_svc: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in slices.values():
        meta = s["metadata"]
        by_svc.setdefault((meta["namespace"], meta["labels"]["kubernetes.io/service-name"]),
                          []).append(s)
    out: list[kubeproxy.ServicePort] = []
    for _key, stored in sorted(services.items()):
        spec = stored["spec"]
        vip = spec.get("clusterIP")
        if vip in (None, "None"):
            continue
        for port in spec["ports"]:
            eps = []
            for s in by_svc.get((spec["namespace"], spec["name"]), []):
                num = next((p["port"] for p in s["ports"] if p["name"] == port["name"]
                            and p["protocol"] == port["protocol"]), None)
                if num is None:
                    continue
                eps += [kubeproxy.Endpoint(ip=e["addresses"][0], port=num, node=e.get("nodeName"),
                                           ready=e["conditions"]["ready"]) for e in s["endpoints"]]
            out.append(kubeproxy.ServicePort(
                namespace=spec["namespace"], name=spec["name"], port_name=port["name"],
                protocol=port["protocol"], port=port["port"], cluster_ip=vip,
                node_port=port.get("nodePort"),
                lb_ips=(spec["lbIP"],) if spec.get("lbIP") else (),
                affinity_seconds=spec["affinitySeconds"]
                if spec["sessionAffinity"] == "ClientIP" else None,
                external_local=spec.get("externalTrafficPolicy") == "Local",
                internal_local=spec.get("internalTrafficPolicy") == "Local",
                endpoints=tuple(sorted(eps, key=lambda e: (ipaddress.IPv4Address(e.ip),
                                                           e.port)))))
    return out


def proxy_input(conf: ClusterConfig, node: str, ports: list[kubeproxy.ServicePort]
                ) -> kubeproxy.ProxyInput:
    return kubeproxy.ProxyInput(node=node, node_ips=(conf.node(node).ip,),
                                cluster_cidr=conf.pod_subnet, service_cidr=conf.service_subnet,
                                services=tuple(ports))


def lb_routes(conf: ClusterConfig, ports: list[kubeproxy.ServicePort]) -> dict[str, list[str]]:
    """Load-balancer IP -> underlay IPs of the nodes the outside routes it to.

    Like MetalLB in BGP mode (or a cloud load balancer with health checks): every node for
    `externalTrafficPolicy: Cluster`; only nodes with a ready local endpoint for `Local`, so
    the outside never sends a connection to a node that would drop it.
    """
    out: dict[str, set[str]] = {}
    for sp in ports:
        for ip in sp.lb_ips:
            if sp.external_local:
                nodes = {e.node for e in sp.endpoints if e.ready and e.node}
                hops = {n.ip for n in conf.nodes if n.name in nodes}
            else:
                hops = {n.ip for n in conf.nodes} if any(e.ready for e in sp.endpoints) else set()
            out.setdefault(ip, set()).update(hops)
    return {ip: sorted(h, key=ipaddress.IPv4Address) for ip, h in out.items()}


# --- kubectl-style views -------------------------------------------------------------------

def service_object(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored Service as `kubectl get svc NAME -o yaml` shows it (spec with the allocated
    clusterIP and nodePorts, status with the load balancer's ingress IP)."""
    s = stored["spec"]
    spec: dict[str, Any] = {"type": s["type"]}
    if s.get("selector") is not None:
        spec["selector"] = s["selector"]
    if s["type"] == "ExternalName":
        spec["externalName"] = s["externalName"]
    else:
        spec["clusterIP"] = s["clusterIP"]
        spec["clusterIPs"] = [s["clusterIP"]]
        spec["ipFamilies"] = ["IPv4"]
        spec["ipFamilyPolicy"] = "SingleStack"
        spec["sessionAffinity"] = s["sessionAffinity"]
        if s["sessionAffinity"] == "ClientIP":
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds":
                                                          s["affinitySeconds"]}}
        spec["internalTrafficPolicy"] = s["internalTrafficPolicy"]
        if s.get("externalTrafficPolicy"):
            spec["externalTrafficPolicy"] = s["externalTrafficPolicy"]
    ports = []
    for p in s["ports"]:
        d: dict[str, Any] = {"port": p["port"], "protocol": p["protocol"],
                             "targetPort": p["targetPort"] if p["targetPort"] is not None
                             else p["port"]}
        if p["name"]:
            d["name"] = p["name"]
        if p.get("nodePort"):
            d["nodePort"] = p["nodePort"]
        ports.append(d)
    if ports:
        spec["ports"] = ports
    status: dict[str, Any] = {"loadBalancer": {}}
    if s.get("lbIP"):
        status["loadBalancer"] = {"ingress": [{"ip": s["lbIP"], "ipMode": "VIP"}]}
    meta: dict[str, Any] = {"name": s["name"], "namespace": s["namespace"]}
    if s.get("labels"):
        meta["labels"] = s["labels"]
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec,
            "status": status}


def service_row(stored: dict[str, Any]) -> list[str]:
    """NAME, TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S) as kubectl prints them."""
    s = stored["spec"]
    if s["type"] == "ExternalName":
        ext = s["externalName"]
    elif s["type"] == "LoadBalancer":
        ext = s.get("lbIP") or "<pending>"
    else:
        ext = "<none>"
    ports = ",".join(f"{p['port']}" + (f":{p['nodePort']}" if p.get("nodePort") else "")
                     + f"/{p['protocol']}" for p in s["ports"]) or "<none>"
    return [s["name"], s["type"], s.get("clusterIP") or "<none>", ext, ports]


def slice_row(sl: dict[str, Any]) -> list[str]:
    """NAME, ADDRESSTYPE, PORTS, ENDPOINTS as kubectl prints them (3 addresses, then a count)."""
    ports = ",".join(str(p["port"]) for p in sl["ports"] if p.get("port")) or "<unset>"
    addrs = [a for e in sl["endpoints"] for a in e["addresses"]]
    shown = ",".join(addrs[:3]) or "<unset>"
    if len(addrs) > 3:
        shown += f" + {len(addrs) - 3} more..."
    return [sl["metadata"]["name"], sl["addressType"], ports, shown]
