"""Cluster DNS: the Kubernetes DNS-based service discovery spec as pure functions.

Three parts, none with side effects:
- `snapshot(state, generation, dns_ip)`: the objects the DNS server watches (Services,
  EndpointSlices, Pods), as the JSON the cluster writes to the state dir on every change: the
  lab's "API server watch".
- `Records.from_snapshot(...)` + `Records.respond(...)`: the record forms of the spec (schema
  1.1.0) built from those objects, and the answer to one query: records, NXDOMAIN or NODATA
  with the zone's SOA, or None for "not ours, forward it upstream".
- `resolv_conf(pod, ...)`: what kubelet writes as a pod's /etc/resolv.conf for its dnsPolicy and
  dnsConfig.

The wire format is dnspython's; the server (`lab_kit.dnsserver`) only moves packets.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from lab_kit import model

ZONE = "cluster.local"
SCHEMA_VERSION = "1.1.0"
DEFAULT_TTL = 30  # kubeadm's (and kind's) Corefile: `kubernetes cluster.local … { ttl 30 }`
DEFAULT_NDOTS = 5  # kubelet's defaultDNSOptions
SRV_PRIORITY = 0
SRV_WEIGHT = 100


def dns_service_ip(service_subnet: str) -> str:
    """The cluster DNS address: the subnet's 10th address, as kubeadm picks (10.96.0.10)."""
    return str(ipaddress.ip_network(service_subnet)[10])


def reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer + "."


def dashed(ip: str) -> str:
    return ip.replace(".", "-").replace(":", "-")


# --- what the server watches -------------------------------------------------------------------

def snapshot(state: dict[str, Any], generation: int, dns_ip: str, zone: str = ZONE,
             pods_mode: str = "insecure", ttl: int = DEFAULT_TTL) -> dict[str, Any]:
    """The objects cluster DNS answers from, as plain JSON (stored specs, slices, pod IPs)."""
    pods = []
    for p in state.get("pods", {}).values():
        spec = p["spec"]
        pods.append({"namespace": spec["namespace"], "name": spec["name"], "ip": p["ip"],
                     "hostname": spec.get("hostname"), "subdomain": spec.get("subdomain")})
    return {"generation": generation, "zone": zone, "dnsIP": dns_ip, "pods_mode": pods_mode,
            "ttl": ttl,
            "services": [s["spec"] for _, s in sorted(state.get("services", {}).items())],
            "endpointslices": [s for _, s in sorted(state.get("endpointslices", {}).items())],
            "pods": sorted(pods, key=lambda p: (p["namespace"], p["name"]))}


# --- the records -------------------------------------------------------------------------------

@dataclass
class Records:
    """Every record the spec asks for, by lower-case absolute name."""
    zone: str
    ttl: int
    pods_mode: str  # CoreDNS `pods insecure|verified|disabled`; kubeadm's Corefile: insecure
    generation: int
    a: dict[str, list[str]] = field(default_factory=dict)
    # by `_port._proto.<service>` and, for every port at once, by the Service's own name
    srv: dict[str, list[tuple[int, int, int, str]]] = field(default_factory=dict)
    ptr: dict[str, list[str]] = field(default_factory=dict)
    cname: dict[str, str] = field(default_factory=dict)
    txt: dict[str, list[str]] = field(default_factory=dict)
    ns: dict[str, list[str]] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)  # every name that exists, empty ones included
    pod_ips: dict[str, set[str]] = field(default_factory=dict)  # namespace -> pod IPs

    @property
    def origin(self) -> str:
        return self.zone + "."

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any]) -> Records:
        zone = snap.get("zone", ZONE).rstrip(".").lower()
        r = cls(zone=zone, ttl=int(snap.get("ttl", DEFAULT_TTL)),
                pods_mode=snap.get("pods_mode", "insecure"),
                generation=int(snap.get("generation", 0)))
        apex = r.origin
        r.txt[f"dns-version.{apex}"] = [SCHEMA_VERSION]
        r.ns[apex] = [f"ns.dns.{apex}"]
        if snap.get("dnsIP"):
            r.a[f"ns.dns.{apex}"] = [snap["dnsIP"]]
        slices: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for s in snap.get("endpointslices", []):
            meta = s["metadata"]
            slices.setdefault((meta["namespace"],
                               meta["labels"]["kubernetes.io/service-name"]), []).append(s)
        endpoint_ptr: dict[str, list[str]] = {}
        for svc in snap.get("services", []):
            ns, name = svc["namespace"], svc["name"]
            fqdn = f"{name}.{ns}.svc.{apex}".lower()
            named = [p for p in svc.get("ports", []) if p.get("name")]
            if svc.get("type") == "ExternalName":
                if svc.get("externalName"):
                    r.cname[fqdn] = svc["externalName"].rstrip(".").lower() + "."
                continue
            ip = svc.get("clusterIP")
            if ip and ip != "None":  # a ClusterIP Service: one name, its ClusterIP
                r.a.setdefault(fqdn, []).append(ip)
                r.ptr.setdefault(reverse_name(ip), []).append(fqdn)
                for p in named:
                    r._add_srv(_srv_name(p, fqdn), fqdn, (SRV_PRIORITY, SRV_WEIGHT, p["port"],
                                                          fqdn))
                continue
            # headless: one A per ready endpoint, a name per endpoint, SRV per endpoint x port
            for s in slices.get((ns, name), []):
                ports = [p for p in s.get("ports") or [] if p.get("name") and p.get("port")]
                for ep in s.get("endpoints") or []:
                    if not (ep.get("conditions") or {}).get("ready", True):
                        continue
                    for addr in ep.get("addresses") or []:
                        host = (ep.get("hostname") or dashed(addr)).lower()
                        host_fqdn = f"{host}.{fqdn}"
                        _add_unique(r.a, fqdn, addr)
                        _add_unique(r.a, host_fqdn, addr)
                        _add_unique(endpoint_ptr, reverse_name(addr), host_fqdn)
                        for p in ports:
                            r._add_srv(_srv_name(p, fqdn), fqdn,
                                       (SRV_PRIORITY, SRV_WEIGHT, p["port"], host_fqdn))
        for rev, targets in endpoint_ptr.items():
            r.ptr.setdefault(rev, []).extend(t for t in targets if t not in r.ptr.get(rev, []))
        for p in snap.get("pods", []):
            r.pod_ips.setdefault(p["namespace"], set()).add(p["ip"])
            rev = reverse_name(p["ip"])
            if rev not in r.ptr:  # a pod behind no headless Service: its pod record
                r.ptr[rev] = [f"{dashed(p['ip'])}.{p['namespace']}.pod.{apex}"]
        for table in (r.a, r.srv, r.cname, r.txt, r.ns):
            for n in table:
                r._add_name(n)
        r.names.add(f"svc.{apex}")
        r.names.add(f"pod.{apex}")
        return r

    def _add_srv(self, name: str, service: str, record: tuple[int, int, int, str]) -> None:
        self.srv.setdefault(name, []).append(record)
        self.srv.setdefault(service, []).append(record)  # SRV at the Service name: every port

    def _add_name(self, name: str) -> None:
        """A name and every ancestor down to the zone apex exist (empty non-terminals)."""
        labels = name.split(".")
        for i in range(len(labels)):
            suffix = ".".join(labels[i:])
            if suffix == self.origin or not suffix.endswith(self.origin):
                break
            self.names.add(suffix)
        self.names.add(self.origin)

    # -- answering -------------------------------------------------------------------------

    def authoritative_for(self, qname: str) -> bool:
        """Names in the cluster zone; reverse names only when a Service or pod has that IP."""
        q = qname.lower()
        return q == self.origin or q.endswith("." + self.origin) or q in self.ptr

    def _pod_record(self, q: str) -> list[str] | None:
        m = _POD_RE.match(q[: -len(self.origin) - 1] if q.endswith("." + self.origin) else "")
        if m is None or self.pods_mode == "disabled":
            return None
        try:
            ip = str(ipaddress.IPv4Address(".".join(m.group(1, 2, 3, 4))))
        except ValueError:
            return None
        if self.pods_mode == "verified" and ip not in self.pod_ips.get(m.group(5), set()):
            return None
        return [ip]

    def lookup(self, qname: str, qtype: int) -> tuple[int, list[dns.rrset.RRset], list[str]]:
        """(rcode, answer RRsets, names to add A records for in Additional) for one question
        in this zone. The answer owner name keeps the question's spelling (case)."""
        q = qname.lower()
        ans: list[dns.rrset.RRset] = []
        extra: list[str] = []

        def rr(rtype: int, values: Iterable[str]) -> None:
            ans.append(_rrset(qname, self.ttl, rtype, tuple(values)))

        target = self.cname.get(q)
        if target is not None:  # an ExternalName Service: a CNAME whatever the type asked
            rr(dns.rdatatype.CNAME, [target])
            return dns.rcode.NOERROR, ans, []
        pod_ip = self._pod_record(q)
        a = self.a.get(q) or pod_ip or []
        if qtype in (dns.rdatatype.A, dns.rdatatype.ANY) and a:
            rr(dns.rdatatype.A, a)
        if qtype in (dns.rdatatype.SRV, dns.rdatatype.ANY):
            srv = self.srv.get(q)
            if srv:
                rr(dns.rdatatype.SRV, [f"{p} {w} {port} {t}" for p, w, port, t in srv])
                extra = list(dict.fromkeys(t for *_, t in srv))
        if qtype in (dns.rdatatype.PTR, dns.rdatatype.ANY) and q in self.ptr:
            rr(dns.rdatatype.PTR, self.ptr[q])
        if qtype in (dns.rdatatype.TXT, dns.rdatatype.ANY) and q in self.txt:
            rr(dns.rdatatype.TXT, [f'"{t}"' for t in self.txt[q]])
        if qtype in (dns.rdatatype.NS, dns.rdatatype.ANY) and q in self.ns:
            rr(dns.rdatatype.NS, self.ns[q])
            extra = list(self.ns[q])
        if qtype in (dns.rdatatype.SOA, dns.rdatatype.ANY) and q == self.origin:
            ans.append(self.soa(qname))
        if ans:
            return dns.rcode.NOERROR, ans, extra
        exists = (q in self.names or q in self.ptr or pod_ip is not None)
        return (dns.rcode.NOERROR if exists else dns.rcode.NXDOMAIN), [], []

    def soa(self, owner: str | None = None) -> dns.rrset.RRset:
        apex = self.origin
        text = (f"ns.dns.{apex} hostmaster.{apex} {self.generation} 7200 1800 86400 "
                f"{self.ttl}")
        return _rrset(owner or apex, self.ttl, dns.rdatatype.SOA, (text,))

    def respond(self, query: dns.message.Message,
                chase: Callable[[str, int], list[dns.rrset.RRset]] | None = None
                ) -> dns.message.Message | None:
        """The response to a parsed query, or None when the name is not ours (forward it).

        `chase(name, qtype)` resolves a CNAME target outside the zone (an ExternalName
        Service's), so the answer carries the target's records as the spec's example shows.
        """
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.RA  # names outside the zone are resolved for the client
        if query.opcode() != dns.opcode.QUERY:
            resp.set_rcode(dns.rcode.NOTIMP)
            return resp
        if len(query.question) != 1:
            resp.set_rcode(dns.rcode.FORMERR)
            return resp
        question = query.question[0]
        qname = question.name.to_text()
        if not self.authoritative_for(qname):
            return None
        if question.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY):
            resp.set_rcode(dns.rcode.REFUSED)  # a CHAOS question about the cluster zone
            return resp
        rcode, ans, extra = self.lookup(qname, question.rdtype)
        resp.flags |= dns.flags.AA
        resp.set_rcode(rcode)
        resp.answer.extend(ans)
        for name in extra:
            _, more, _ = self.lookup(name, dns.rdatatype.A)
            resp.additional.extend(more)
        if ans and ans[0].rdtype == dns.rdatatype.CNAME and question.rdtype != dns.rdatatype.CNAME:
            target = ans[0][0].target.to_text()
            if self.authoritative_for(target):
                _, more, _ = self.lookup(target, question.rdtype)
                resp.answer.extend(more)
            elif chase is not None:
                resp.answer.extend(chase(target, question.rdtype))
        if not ans:  # NXDOMAIN or NODATA: the SOA tells resolvers how long to cache that
            resp.authority.append(self.soa())
        return resp


@functools.lru_cache(maxsize=16384)
def _rrset(owner: str, ttl: int, rtype: int, values: tuple[str, ...]) -> dns.rrset.RRset:
    """One RRset, built once: parsing the record text and hashing every rdata (its names to
    wire format) cost more than the rest of an uncached answer. Never modified once made."""
    return dns.rrset.from_text_list(owner, ttl, dns.rdataclass.IN, rtype, list(values))


_POD_RE = re.compile(r"^(\d{1,3})-(\d{1,3})-(\d{1,3})-(\d{1,3})\.([a-z0-9-]+)\.pod$")


def _srv_name(port: dict[str, Any], fqdn: str) -> str:
    return f"_{port['name']}._{port['protocol'].lower()}.{fqdn}".lower()


def _add_unique(table: dict[str, list[str]], key: str, value: str) -> None:
    values = table.setdefault(key, [])
    if value not in values:
        values.append(value)


# --- a pod's resolv.conf (kubelet's GetPodDNS) ------------------------------------------------

@dataclass(frozen=True)
class ResolvConf:
    nameservers: tuple[str, ...]
    searches: tuple[str, ...]
    options: tuple[str, ...]

    def text(self) -> str:
        lines = [f"nameserver {s}" for s in self.nameservers]
        if self.searches:
            lines.append("search " + " ".join(self.searches))
        if self.options:
            lines.append("options " + " ".join(self.options))
        return "\n".join(lines) + "\n"


def parse_resolv_conf(text: str) -> ResolvConf:
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            searches = words[1:]  # the last search/domain line wins, as in glibc
        elif words[0] == "options":
            options += words[1:]
    return ResolvConf(tuple(servers), tuple(searches), tuple(options))


def resolv_conf(pod: model.Pod, cluster_dns: str, node: ResolvConf, zone: str = ZONE
                ) -> ResolvConf:
    """The resolv.conf kubelet gives `pod`: dnsPolicy picks the base, dnsConfig merges in.

    ClusterFirst (and ClusterFirstWithHostNet): the cluster DNS, the namespace's search path and
    `ndots:5`, followed by the node's search domains. Default: the node's resolv.conf. None:
    nothing but dnsConfig. dnsConfig appends nameservers and searches (duplicates dropped) and
    merges options by name, the pod's winning; at most 3 nameservers survive.
    """
    if pod.dns_policy in ("ClusterFirst", "ClusterFirstWithHostNet"):
        servers = [cluster_dns]
        searches = [f"{pod.namespace}.svc.{zone}", f"svc.{zone}", zone, *node.searches]
        options = [f"ndots:{DEFAULT_NDOTS}"]
    elif pod.dns_policy == "Default":
        servers, searches, options = list(node.nameservers), list(node.searches), \
            list(node.options)
    else:  # None
        servers, searches, options = [], [], []
    cfg = pod.dns_config
    if cfg is not None:
        servers += cfg.nameservers
        searches += cfg.searches
        merged: dict[str, str] = {}
        for o in options:
            merged[o.split(":", 1)[0]] = o
        for name, value in cfg.options:
            merged[name] = name if value is None else f"{name}:{value}"
        options = list(merged.values())
    servers = list(dict.fromkeys(servers))[: model.MAX_DNS_NAMESERVERS]
    kept: list[str] = []
    for dom in dict.fromkeys(s.rstrip(".") for s in searches):
        # kubelet drops a domain over 253 characters, then trims the list to its limits
        if len(dom) > 253 or len(kept) == model.MAX_DNS_SEARCHES or len(
                " ".join([*kept, dom])) > model.MAX_DNS_SEARCH_CHARS:
            continue
        kept.append(dom)
    return ResolvConf(tuple(servers), tuple(kept), tuple(options))


# --- the add-on: what kubeadm (and kind) deploy -------------------------------------------------

COREDNS_IMAGE = "registry.k8s.io/coredns/coredns:v1.11.3"
COREDNS_REPLICAS = 2  # kubeadm's and kind's default


def coredns_manifests(dns_ip: str, node: str) -> list[dict[str, Any]]:
    """The `coredns` Deployment and the `kube-dns` Service, as kubeadm's manifests name them.

    Both replicas are pinned to `node` (the control-plane), where kind's tolerations put them;
    the pod runs with dnsPolicy Default, so its own resolv.conf is the node's and it forwards
    there (`forward . /etc/resolv.conf`).
    """
    labels = {"k8s-app": "kube-dns"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
        "spec": {"replicas": COREDNS_REPLICAS, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "nodeName": node, "dnsPolicy": "Default",
                     "containers": [{"name": "coredns", "image": COREDNS_IMAGE,
                                     "args": ["-conf", "/etc/coredns/Corefile"],
                                     "ports": [
                                         {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                         {"name": "dns-tcp", "containerPort": 53,
                                          "protocol": "TCP"},
                                         {"name": "metrics", "containerPort": 9153,
                                          "protocol": "TCP"}]}]}}}}
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {**labels, "kubernetes.io/name": "CoreDNS"}},
        "spec": {"clusterIP": dns_ip, "selector": labels, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}}
    return [deployment, service]


def node_resolv_conf(upstream: str) -> ResolvConf:
    """The nodes' own resolv.conf (kubelet's --resolv-conf): the data centre's resolver."""
    return ResolvConf(nameservers=(upstream,), searches=(), options=())


INTERNET_NAMES = ("example.com", "www.example.com", "api.example.com", "internet.lab")


def internet_hosts(ip: str) -> str:
    """The hosts file dnsmasq on the `external` host serves: the lab's "internet" names."""
    return f"{ip} {' '.join(INTERNET_NAMES)}\n"
