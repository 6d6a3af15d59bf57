"""Checks of `labs/10-cluster-dns.ipynb`: names for Services and pods, and what they cost.

The lab's cluster `dns` (labs/clusters/dns.yaml: a control plane and two workers, VXLAN,
kube-proxy in iptables mode) turns on the cluster DNS add-on (`clusterDNS: true`): two
`coredns` pods in kube-system on dns-control-plane behind the Service `kube-dns` (10.96.0.10),
forwarding names outside `cluster.local` to dnsmasq on the `external` host.
`labs/manifests/dns-apps.yaml` makes a Deployment and Service `web` and a pod `client` (on
dns-worker2) in `default`, and a Deployment and Service `api` in namespace `backend`. In
order, the learner:

1. finds the shortest name under which `client` reaches backend's `api`, and the search domain
   that completes it (`search-path`); the check resolves the answer inside `client` with the C
   library (`getent`), as an app would, tries the shorter names, and asks cluster DNS for the
   answer + each search domain of the client's own resolv.conf;
2. writes a headless Service `db` for the two StatefulSet-like pods of
   `labs/manifests/dns-db.yaml` (`hostname` db-0/db-1, `subdomain: db`) with a port named
   `postgres` (`headless`); the check digs from `client`: the A records of the Service name
   (every db pod, by the address on its eth0), each pod's own name, and the SRV records;
3. counts the DNS queries `getent hosts www.example.com` sends, with and without the trailing
   dot (`count-queries`); the check captures the client's queries itself (tcpdump in the pod)
   while it runs both lookups, and compares;
4. makes a pod `client-ndots` whose dnsConfig lowers `ndots` (`ndots`); the check reads the
   pod's /etc/resolv.conf as its processes see it, captures its lookup of www.example.com and of
   the short name `web`, and resolves `web` there;
5. repairs `checkout` in namespace `shop` (labs/manifests/dns-checkout.yaml: dnsPolicy None,
   a nameserver nobody serves, a search list without `svc.cluster.local`) (`fix-dns`); the check
   reads its resolv.conf, digs its nameserver, resolves `web.default` and `api.example.com`
   with getent and fetches `http://web.default/hostname` with curl, all inside the pod.

Every check runs its probes inside the pods' network namespaces with `ip netns exec`, which
binds the pod's own /etc/resolv.conf, so what the check sees is what the pod's apps see. Only
names come from the cluster (pods, Services and the ClusterIPs the "API server" allocated):
addresses, resolver settings, answers and packets are read from the kernel and the wire.

`dns_path(c)` draws the path of one pod's query from the live state; `dns_queries(cap)` lists
the DNS packets of a capture; `dns_counters(c)` sums the coredns pods' Prometheus counters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lab_kit import clusterdns, kernel, naming
from lab_kit.checks import Context, Lab, Verdict, failed, passed
from lab_kit.labs import ipv4_of, is_netns, norm_answer, underlay_ip, whole_number_answer

if TYPE_CHECKING:
    import graphviz

    from lab_kit.capture import Capture
    from lab_kit.cluster import Cluster, Table

__all__ = ["LAB", "DigResult", "counter_changes", "dig", "dns_counters", "dns_path", "dns_queries",
           "getent", "lookup_queries", "resolv_conf_of"]

LAB = Lab("10-cluster-dns", "Cluster DNS: names for Services and pods", "dns")

NAMESPACE = "default"
ZONE = clusterdns.ZONE
CLIENT = "client"
WEB = "web"
API, API_NS = "api", "backend"
DB, DB_PODS, DB_PORT_NAME, DB_PORT = "db", ("db-0", "db-1"), "postgres", 5432
NDOTS_POD = "client-ndots"
SHOP, CHECKOUT = "shop", "checkout"
EXTERNAL_NAME = "www.example.com"  # served by dnsmasq on the external host
PAYMENT_NAME = "api.example.com"  # the name checkout's app calls outside the cluster
APPS_MANIFEST = "manifests/dns-apps.yaml"
DB_MANIFEST = "manifests/dns-db.yaml"
CHECKOUT_MANIFEST = "manifests/dns-checkout.yaml"
LOOKUP_TIMEOUT = 4.0  # seconds a getent may take: glibc waits 5 s per silent server


# --- evidence: resolv.conf, dig and getent inside a pod -------------------------------------------

def _in_pod(netns: str, argv: list[str], timeout: float = 10) -> kernel.Completed:
    """argv under `ip netns exec`, which also binds the pod's /etc/netns/<netns>/resolv.conf over
    /etc/resolv.conf: the pod's view, unlike nsenter. Not journaled: a check's own probe."""
    return kernel.Runner().run(["ip", "netns", "exec", netns, *argv], None, check=False,
                               record=False, timeout=timeout)


def resolv_conf_of(netns: str) -> clusterdns.ResolvConf | None:
    """The /etc/resolv.conf a pod's processes read (None: the pod has none, or is gone)."""
    r = _in_pod(netns, ["cat", "/etc/resolv.conf"])
    return clusterdns.parse_resolv_conf(r.stdout) if r.rc == 0 else None


def ndots_of(conf: clusterdns.ResolvConf) -> int:
    """The `ndots` the C library uses with `conf` (1 when no option sets it; the last wins)."""
    n = 1
    for o in conf.options:
        if o.startswith("ndots:") and o[6:].isdigit():
            n = min(int(o[6:]), 15)  # glibc caps it at 15
    return n


@dataclass(frozen=True)
class DigResult:
    """One question asked with dig inside a pod, and what came back."""
    name: str
    rtype: str
    server: str  # the server dig asked ("" when none answered and none was named)
    status: str  # NOERROR, NXDOMAIN, SERVFAIL, …; "TIMEOUT" when no server answered
    records: tuple[tuple[str, str, str], ...]  # (owner, type, data) of the answer section
    error: str = ""

    def values(self, rtype: str | None = None) -> list[str]:
        """The answer's data of one type (the question's type by default)."""
        want = (rtype or self.rtype).upper()
        return [data for _, t, data in self.records if t == want]

    @property
    def answered(self) -> bool:
        return self.status != "TIMEOUT"

    def text(self) -> str:
        """`NXDOMAIN`, `NOERROR, no records`, or the records."""
        if not self.answered:
            return f"no answer ({self.error or 'timed out'})"
        vals = self.values()
        if vals:
            return ", ".join(vals)
        return self.status if self.status != "NOERROR" else "NOERROR, no records"


_STATUS_RE = re.compile(r"status: ([A-Z]+)")
_SERVER_RE = re.compile(r"^;; SERVER: ([^#\s]+)", re.MULTILINE)


def dig(netns: str, name: str, rtype: str = "A", server: str | None = None,
        timeout: int = 1) -> DigResult:
    """`dig NAME RTYPE` inside a pod, with the pod's nameserver (or `server`); two tries of
    `timeout` seconds per nameserver, so a silent server costs two seconds, not fifteen, and
    one datagram lost on a busy machine is not taken for a silent server."""
    argv = ["dig", "+tries=2", f"+time={timeout}", "+noall", "+comments", "+answer", "+stats",
            name, rtype]
    if server:
        argv.insert(1, f"@{server}")
    r = _in_pod(netns, argv, timeout=5 + 8 * timeout)
    m = _STATUS_RE.search(r.stdout)
    if m is None and not any("refused" in t for t in (r.stdout, r.stderr)):
        # silent twice: ask once more, from a new process and so a new source port, before
        # calling the server silent (in full test-suite runs an exchange with the external
        # host's dnsmasq has, rarely, gone unanswered for both of dig's tries)
        r = _in_pod(netns, argv, timeout=5 + 8 * timeout)
        m = _STATUS_RE.search(r.stdout)
    srv = _SERVER_RE.search(r.stdout)
    if m is None:
        err = "; ".join(ln.strip(" ;") for ln in (r.stdout + r.stderr).splitlines()
                       if "error" in ln or "timed out" in ln or "reached" in ln)
        return DigResult(name, rtype.upper(), server or "", "TIMEOUT", (), err or "no answer")
    records = []
    for line in r.stdout.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        words = line.split(None, 4)
        if len(words) == 5:
            records.append((words[0], words[3].upper(), words[4].strip()))
    return DigResult(name, rtype.upper(), srv.group(1) if srv else (server or ""), m.group(1),
                     tuple(records))


def getent(netns: str, name: str, timeout: float = LOOKUP_TIMEOUT) -> list[str]:
    """The IPv4 addresses the pod's C library resolves `name` to (`getent ahostsv4`): the
    search list, ndots and nameservers of its resolv.conf applied, as for any app. [] when
    nothing resolves within `timeout` seconds."""
    r = _in_pod(netns, ["timeout", str(timeout), "getent", "ahostsv4", name],
                timeout=timeout + 5)
    if r.rc == 124:  # silent until the timeout (not an answer): ask once more, as `dig` does
        r = _in_pod(netns, ["timeout", str(timeout), "getent", "ahostsv4", name],
                    timeout=timeout + 5)
    out: list[str] = []
    for line in r.stdout.splitlines():
        words = line.split()
        if words and words[0] not in out:
            out.append(words[0])
    return out


def expansions(name: str, conf: clusterdns.ResolvConf) -> list[str]:
    """The names the C library asks for, in order, when an app looks up `name` (res_search)."""
    if name.endswith("."):
        return [name]
    absolute = name + "."
    searched = [f"{name}.{d.rstrip('.')}." for d in conf.searches]
    if name.count(".") >= ndots_of(conf):
        return [absolute, *searched]
    return [*searched, absolute]


# --- evidence: the queries on the wire ------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """One DNS query a pod sent, as captured on its eth0."""
    qtype: str
    qname: str
    server: str
    qid: int

    def __str__(self) -> str:
        return f"{self.qtype} {self.qname}"


def lookup_queries(c: Cluster, netns: str, label: str, command: list[str],
                   source: str = "lab_kit") -> tuple[list[Query], Capture]:
    """The DNS queries a pod sends while `command` runs in it: real tcpdump on the pod's eth0
    (`udp port 53`), the query packets only. A retransmission (same ID and question) counts
    once."""
    from lab_kit.cluster import PodShell

    shell = next((PodShell(c, p) for p in c.pods() if p.netns == netns), None)
    where = shell if shell is not None else label
    cap = c.capture(where, interface="eth0", filter="udp port 53", source=source,
                    during=lambda: _in_pod(netns, command, timeout=20))
    seen: set[tuple[int, str, str]] = set()
    out = []
    for p in cap:
        d, ip = p.layer("DNS"), p.layer("IPv4")
        if d is None or d["response"]:
            continue
        key = (d["id"], d["qtype"], d["qname"])
        if key in seen:
            continue
        seen.add(key)
        out.append(Query(d["qtype"], d["qname"], ip["dst"] if ip else "", d["id"]))
    return out, cap


def dns_queries(cap: Capture) -> Table:
    """The DNS packets of a capture as a table: who asked whom, which name and type, and the
    answer (rcode and records)."""
    from lab_kit.cluster import Table

    rows = []
    t0 = cap[0].time if len(cap) else 0.0
    for i, p in enumerate(cap):
        d, ip = p.layer("DNS"), p.layer("IPv4")
        if d is None:
            continue
        src = f"{ip['src']}" if ip else "?"
        dst = f"{ip['dst']}" if ip else "?"
        answer = ""
        if d["response"]:
            answer = d["rcode"] + (f" → {', '.join(d['answers'])}" if d["answers"] else "")
        rows.append([i, f"{(p.time - t0) * 1000:.1f} ms", f"{src} → {dst}",
                     "answer" if d["response"] else "query", d["qtype"], d["qname"], answer])
    return Table(["#", "TIME", "FROM → TO", "KIND", "TYPE", "NAME", "ANSWER"], rows)


# --- the cluster's objects, with addresses from the kernel ----------------------------------------

@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    node: str
    netns: str
    ip: str | None  # eth0's address, from the kernel
    owner: str | None


def pod_views(ctx: Context, namespace: str | None = None) -> list[PodView]:
    out = []
    for p in ctx.cluster.pods(namespace):
        ip = ipv4_of(ctx, p.netns, "eth0") if is_netns(ctx, p.netns) else None
        out.append(PodView(p.namespace, p.name, p.node, p.netns, ip, p.owner))
    return out


def _pod(ctx: Context, name: str, namespace: str = NAMESPACE) -> PodView | None:
    """One pod, with the address on its eth0 (None: not running, or no address)."""
    p = next((p for p in ctx.cluster.pods(namespace) if p.name == name), None)
    if p is None or not is_netns(ctx, p.netns):
        return None
    ip = ipv4_of(ctx, p.netns, "eth0")
    return PodView(p.namespace, p.name, p.node, p.netns, ip, p.owner) if ip else None


def _service(ctx: Context, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
    from lab_kit.errors import LabError
    try:
        return ctx.cluster.service(name, namespace)
    except LabError:
        return None


def _cluster_ip(ctx: Context, name: str, namespace: str = NAMESPACE) -> str | None:
    svc = _service(ctx, name, namespace)
    ip = (svc or {}).get("spec", {}).get("clusterIP")
    return ip if ip not in (None, "None") else None


def _whose(ctx: Context, ip: str) -> str:
    """What has address `ip` in the cluster: a Service's ClusterIP, a pod, the external host."""
    for key, s in sorted(ctx.cluster.state.get("services", {}).items()):
        if s["spec"].get("clusterIP") == ip:
            return f"the ClusterIP of Service {key}"
    for p in pod_views(ctx):
        if p.ip == ip:
            return f"pod {p.namespace}/{p.name}"
    if ip == ctx.cluster.external.ip:
        return "the external host"
    return "nothing in the cluster"


def _client(ctx: Context) -> PodView | Verdict:
    """The notebook's setup is there: the client pod, with an address (or why not). Cluster
    DNS has every change already: `apply` returns once each coredns replica serves it."""
    client = _pod(ctx, CLIENT)
    if client is None:
        return failed(f"pod `{CLIENT}` is not running",
                      hint=f'run the notebook\'s setup cells: c.apply("{APPS_MANIFEST}")',
                      expected=f"pod {CLIENT} with an address", actual="missing")
    return client


def _in_zone(name: str) -> str:
    return f"{name}.{ZONE}"


# --- exercise 1: the search path ------------------------------------------------------------------

@LAB.check("search-path", "You found the shortest name of backend's api that works from client, "
                          "and the search domain that completes it")
def check_search_path(ctx: Context) -> Verdict:
    client = _client(ctx)
    if isinstance(client, Verdict):
        return client
    api_ip = _cluster_ip(ctx, API, API_NS)
    if api_ip is None:
        return failed(f"there is no Service `{API}` in namespace `{API_NS}`",
                      hint=f'run the notebook\'s setup cells: c.apply("{APPS_MANIFEST}")',
                      expected=f"Service {API_NS}/{API}", actual="none")
    conf = resolv_conf_of(client.netns)
    if conf is None or not conf.searches:
        return failed(f"{CLIENT}'s /etc/resolv.conf has no search list",
                      hint=f'the pod was changed: c.delete(pod="{CLIENT}") and '
                           f'c.apply("{APPS_MANIFEST}") bring it back',
                      expected="search default.svc.cluster.local …",
                      actual=conf.text() if conf else "(no resolv.conf)")
    look = (f'{CLIENT.upper()}.sh("getent hosts {API}") finds nothing. The search domains are '
            f'in {CLIENT.upper()}.sh("cat /etc/resolv.conf"), tried in order: which one can '
            f"complete a name that carries the Service's namespace?")
    name = norm_answer(ctx.get("api_name"))
    if not name:
        return failed("`api_name` is empty", hint=look,
                      expected="a name that resolves from client", actual="(empty)")
    if " " in name or "/" in name or ":" in name:
        return failed(f"`api_name` = {name!r} is not a DNS name",
                      hint="a name such as `web` or `web.default`, without scheme or port",
                      expected="a DNS name", actual=name)
    got = getent(client.netns, name)
    if api_ip not in got:
        if got:
            who = ", ".join(f"{ip} ({_whose(ctx, ip)})" for ip in got)
            return failed(f"from {CLIENT}, `{name}` resolves to {who}, not to {API_NS}/{API}'s "
                          f"ClusterIP {api_ip}", hint=look,
                          expected=api_ip, actual=", ".join(got))
        tried = expansions(name, conf)
        if name.endswith("."):
            why = (f"`{name}` ends with a dot: an absolute name, asked as it is, without the "
                   "search list, and nobody serves it")
        else:
            why = (f"from {CLIENT}, `{name}` does not resolve: its resolver asked for "
                   f"{', '.join(tried)}, and none of them exists")
        return failed(why, hint=look, expected=f"a name that resolves to {api_ip}",
                      actual="nothing")
    if name.endswith("."):
        return failed(f"`{name}` works, but it is absolute (the trailing dot): the search list "
                      "never completes it, so it is the longest form, not the shortest",
                      hint=look, expected="a shorter name", actual=name)
    labels = name.split(".")
    for k in range(1, len(labels)):
        shorter = ".".join(labels[:k])
        if api_ip in getent(client.netns, shorter):
            return failed(f"`{name}` works, but so does the shorter `{shorter}`: the search "
                          "list completes it", hint=look, expected="the shortest name",
                          actual=name)
    # which search domain completed it: ask cluster DNS for each, in the client's order
    completing = None
    for d in conf.searches:
        if api_ip in dig(client.netns, f"{name}.{d}.").values("A"):
            completing = d.rstrip(".")
            break
    domain_hint = (f"append each search domain of {CLIENT}'s /etc/resolv.conf to `{name}` and "
                   f'ask: {CLIENT.upper()}.sh("dig +short {name}.<domain>")')
    suffix = norm_answer(ctx.get("api_search")).rstrip(".").lower()
    if not suffix:
        return failed(f"`api_name` = `{name}` is right; `api_search` is empty",
                      hint=domain_hint, expected="one of the search domains", actual="(empty)")
    if completing is None:  # the absolute name answered (ndots changed by hand?)
        return failed(f"`{name}` resolved without any search domain ({name}. itself): "
                      f"{CLIENT}'s resolver settings were changed",
                      hint=f'c.delete(pod="{CLIENT}") and c.apply("{APPS_MANIFEST}")',
                      expected="a search domain completes it", actual=f"{name}.")
    searches = [d.rstrip(".").lower() for d in conf.searches]
    if suffix not in searches:
        extra = ""
        if suffix == f"{API_NS}.svc.{ZONE}":
            extra = (f": that would be the search list of a pod IN `{API_NS}`; the search list "
                     f"comes from the namespace of the pod that asks, `{NAMESPACE}`")
        return failed(f"`{suffix}` is not in {CLIENT}'s search list "
                      f"({' '.join(conf.searches)}){extra}", hint=domain_hint,
                      expected="one of " + ", ".join(searches), actual=suffix)
    if suffix != completing:
        r = dig(client.netns, f"{name}.{suffix}.")
        asked = r.server or "the pod's nameserver"
        return failed(f"{name}.{suffix} is {r.text()} (the check asked {asked}); the "
                      "resolver moves on to the next search domain",
                      hint=domain_hint, expected="the domain whose answer is api's ClusterIP",
                      actual=suffix)
    first = f"{name}.{conf.searches[0]}"
    return passed(f"from {CLIENT} (namespace {NAMESPACE}), `{name}` is tried as {first} "
                  f"(NXDOMAIN) first, then as {name}.{completing} → {api_ip}. A pod in "
                  f"`{API_NS}` reaches the same Service as plain `{API}`, since its first "
                  f"search domain is {API_NS}.svc.{ZONE}")


# --- exercise 2: a headless Service ---------------------------------------------------------------

def _srv_targets(r: DigResult) -> list[tuple[int, str]]:
    """(port, target) of each SRV record of a dig answer."""
    out = []
    for data in r.values("SRV"):
        words = data.split()
        if len(words) == 4 and words[2].isdigit():
            out.append((int(words[2]), words[3].lower()))
    return sorted(out)


@LAB.check("headless", "The headless Service db gives each db pod a name, and SRV records for "
                       "its port postgres")
def check_headless(ctx: Context) -> Verdict:
    client = _client(ctx)
    if isinstance(client, Verdict):
        return client
    pods = {n: _pod(ctx, n) for n in DB_PODS}
    absent = [n for n, p in pods.items() if p is None]
    if absent:
        return failed(f"pod {', '.join(absent)} is not running",
                      hint=f'run the cell that applies the db pods: c.apply("{DB_MANIFEST}")',
                      expected=", ".join(DB_PODS), actual="missing: " + ", ".join(absent))
    ips = {n: p.ip for n, p in pods.items() if p and p.ip}
    fqdn = f"{DB}.{NAMESPACE}.svc.{ZONE}"
    srv_name = f"_{DB_PORT_NAME}._tcp.{fqdn}"
    write = (f"write a Service `{DB}` with clusterIP: None, selector app: {DB} and one port "
             f"named `{DB_PORT_NAME}` ({DB_PORT}, targetPort {DB_PORT_NAME}), and "
             "c.apply([service])")
    svc = _service(ctx, DB)
    host0 = dig(client.netns, f"{DB_PODS[0]}.{fqdn}.")
    if svc is None:
        return failed(f"there is no Service `{DB}`: from {CLIENT}, {DB_PODS[0]}.{fqdn} is "
                      f"{host0.text()}. A pod's hostname.subdomain name exists only while a "
                      "headless Service named like the subdomain selects the pod",
                      hint=write, expected=f"Service {DB} (clusterIP: None)", actual="none")
    spec = svc["spec"]
    a = dig(client.netns, f"{fqdn}.")
    if spec.get("type") == "ExternalName":
        return failed(f"Service `{DB}` is an ExternalName Service: {fqdn} is a CNAME",
                      hint=f"delete it (c.delete([service])), then {write}",
                      expected="clusterIP: None", actual="type ExternalName")
    if spec.get("clusterIP") not in (None, "None"):
        return failed(f"Service `{DB}` has a ClusterIP, {spec['clusterIP']}: from {CLIENT}, "
                      f"{fqdn} answers that one address ({a.text()}), kube-proxy picks a pod "
                      f"per connection, and {DB_PODS[0]}.{fqdn} is {host0.text()}",
                      hint="a headless Service says clusterIP: None; a ClusterIP cannot be "
                           "changed, so c.delete([service]) first, then apply it with "
                           "clusterIP: None",
                      expected="clusterIP: None", actual=spec["clusterIP"])
    got = sorted(a.values("A"))
    want = sorted(ips.values())
    if got != want:
        if not got:
            why = (f"{fqdn} is {a.text()}: a headless Service's name has one A record per "
                   "READY endpoint, and this one has none")
            hint = (f"its selector must match the db pods' labels (app: {DB}); "
                    f'c.endpointslices("{DB}") shows what it selected')
        else:
            who = ", ".join(f"{ip} ({_whose(ctx, ip)})" for ip in got)
            why = f"{fqdn} answers {who}, not the db pods' addresses"
            hint = f"select the db pods, and only them: selector app: {DB}"
        return failed(why, hint=hint,
                      expected=", ".join(f"{ip} ({n})" for n, ip in sorted(ips.items())),
                      actual=", ".join(got) or a.text())
    for n, ip in sorted(ips.items()):
        r = dig(client.netns, f"{n}.{fqdn}.")
        if r.values("A") != [ip]:
            return failed(f"{n}.{fqdn} is {r.text()}, not {ip}",
                          hint=f"the pods' `subdomain` ({DB}) must be the Service's name, in "
                               "the same namespace", expected=ip, actual=r.text())
    srv = dig(client.netns, f"{srv_name}.", "SRV")
    want_srv = sorted((DB_PORT, f"{n}.{fqdn}.") for n in ips)
    got_srv = _srv_targets(srv)
    if got_srv != want_srv:
        names = [p.get("name") for p in spec.get("ports", [])]
        if not got_srv and not any(names):
            why = (f"{srv_name} is {srv.text()}: the Service's port has no name, and SRV "
                   "records exist only for named ports")
        elif not got_srv and DB_PORT_NAME not in names:
            why = (f"{srv_name} is {srv.text()}: SRV records are named after the port, "
                   f"_<port name>._<protocol>, and the Service's ports are named "
                   f"{', '.join(str(n) for n in names)}")
        else:
            why = (f"{srv_name} answers {', '.join(f'{p} {t}' for p, t in got_srv) or srv.text()}"
                   f": expected port {DB_PORT} at each db pod's own name")
        return failed(why, hint=write,
                      expected=", ".join(f"{p} {t}" for p, t in want_srv),
                      actual=", ".join(f"{p} {t}" for p, t in got_srv) or srv.text())
    return passed(f"{fqdn} → {', '.join(got)} (one A per pod, no ClusterIP); "
                  + "; ".join(f"{n}.{fqdn} → {ip}" for n, ip in sorted(ips.items()))
                  + f"; {srv_name} → " + ", ".join(f"{p} {t}" for p, t in got_srv))


# --- exercise 3: count the queries ----------------------------------------------------------------

def _count_hint(relative: bool) -> str:
    name = EXTERNAL_NAME if relative else EXTERNAL_NAME + "."
    return (f'cap = c.capture(CLIENT, interface="eth0", filter="udp port 53", during=lambda: '
            f'CLIENT.sh("getent hosts {name}")), then count the packets that go TO the '
            "nameserver (dns_queries(cap) lists them)")


def _judge_count(name: str, answer: int, queries: list[Query], relative: bool,
                 searches: int) -> Verdict | None:
    n = len(queries)
    if answer == n:
        return None
    families = {q.qtype for q in queries}
    per_family = n // max(1, len(families))
    if answer == 2 * n:
        why = "that counts the answers too: count only the queries, the packets sent TO port 53"
    elif len(families) > 1 and answer == per_family:
        kinds = " and ".join(sorted(families))
        why = (f"that is one address family: `getent hosts` asks for {kinds} records, each "
               "through the whole search list")
    elif relative and answer in (searches, searches + 1) and answer != n:
        why = ("count every question on the wire: each search domain is tried for each "
               "record type getent asks for")
    else:
        why = "not what a capture shows"
    return failed(f"`{name}` = {answer}: {why}", hint=_count_hint(relative),
                  expected="the number of queries the capture shows", actual=answer)


@LAB.check("count-queries", "You counted the DNS queries of one lookup of www.example.com, "
                            "with and without the trailing dot")
def check_count_queries(ctx: Context) -> Verdict:
    client = _client(ctx)
    if isinstance(client, Verdict):
        return client
    rel = whole_number_answer(ctx, "queries_relative", _count_hint(True))
    if isinstance(rel, Verdict):
        return rel
    ab = whole_number_answer(ctx, "queries_absolute", _count_hint(False))
    if isinstance(ab, Verdict):
        return ab
    conf = resolv_conf_of(client.netns)
    searches = len(conf.searches) if conf else 0
    c = ctx.cluster
    relative, _ = lookup_queries(c, client.netns, CLIENT, ["getent", "hosts", EXTERNAL_NAME])
    absolute, _ = lookup_queries(c, client.netns, CLIENT,
                                 ["getent", "hosts", EXTERNAL_NAME + "."])
    if not relative or not absolute:
        return failed(f"the check's own capture in {CLIENT} saw no DNS query",
                      hint="is the pod's resolv.conf intact? "
                           f'{CLIENT.upper()}.sh("cat /etc/resolv.conf")',
                      expected="queries to 10.96.0.10", actual="none")
    bad = (_judge_count("queries_relative", rel, relative, True, searches)
           or _judge_count("queries_absolute", ab, absolute, False, searches))
    if bad:
        return bad
    wasted = [q for q in relative if q.qname.rstrip(".") != EXTERNAL_NAME]
    return passed(f"`getent hosts {EXTERNAL_NAME}` sent {len(relative)} queries, "
                  f"{len(wasted)} of them for names that cannot exist "
                  f"({', '.join(sorted({q.qname for q in wasted}))}), before asking for "
                  f"{EXTERNAL_NAME}. itself; with the trailing dot, {len(absolute)}. The name "
                  f"has {EXTERNAL_NAME.count('.')} dots, fewer than ndots:"
                  f"{ndots_of(conf) if conf else '?'}, so the search list comes first")


# --- exercise 4: ndots ----------------------------------------------------------------------------

@LAB.check("ndots", f"Pod {NDOTS_POD} looks up external names in one query per record type, and "
                    "short names still work")
def check_ndots(ctx: Context) -> Verdict:
    client = _client(ctx)
    if isinstance(client, Verdict):
        return client
    dns_ip = ctx.cluster.dns_ip
    make = (f"apply a pod `{NDOTS_POD}` (the client pod's manifest with another name) whose "
            "spec adds dnsConfig: {options: [{name: ndots, value: \"1\"}]}, keeping the default "
            "dnsPolicy (ClusterFirst)")
    pod = _pod(ctx, NDOTS_POD)
    if pod is None:
        return failed(f"there is no pod `{NDOTS_POD}` in `{NAMESPACE}`", hint=make,
                      expected=f"pod {NDOTS_POD}", actual="none")
    conf = resolv_conf_of(pod.netns)
    if conf is None:
        return failed(f"{NDOTS_POD} has no /etc/resolv.conf", hint=make,
                      expected="a resolv.conf", actual="none")
    keep = ("keep dnsPolicy ClusterFirst (leave it out) and only add dnsConfig.options: the "
            "nameserver and search list stay the cluster's")
    if not conf.nameservers or conf.nameservers[0] != dns_ip:
        ns = conf.nameservers[0] if conf.nameservers else "none"
        return failed(f"{NDOTS_POD}'s resolv.conf says nameserver {ns}, not cluster DNS "
                      f"({dns_ip}, Service kube-system/kube-dns)", hint=keep,
                      expected=f"nameserver {dns_ip}", actual=f"nameserver {ns}")
    want_first = f"{NAMESPACE}.svc.{ZONE}"
    if not conf.searches or conf.searches[0].rstrip(".") != want_first:
        return failed(f"{NDOTS_POD}'s search list is `{' '.join(conf.searches) or '(none)'}`: "
                      f"short names such as `{WEB}` would not resolve any more", hint=keep,
                      expected=f"search {want_first} svc.{ZONE} {ZONE}",
                      actual=" ".join(conf.searches) or "(none)")
    n = ndots_of(conf)
    dots = EXTERNAL_NAME.count(".")
    if n > dots:
        return failed(f"{NDOTS_POD} has ndots:{n}: {EXTERNAL_NAME} has {dots} dots, fewer than "
                      f"{n}, so it still goes through the search list first",
                      hint=f"ndots:N means 'a name with at least N dots is tried as it is "
                           f"first': pick N so that {EXTERNAL_NAME} qualifies; {make}",
                      expected=f"ndots <= {dots}", actual=f"ndots:{n}")
    # getaddrinfo (getent ahosts) is what curl and most apps call: A and AAAA together
    lookup = ["getent", "ahosts", EXTERNAL_NAME]
    c = ctx.cluster
    ext, _ = lookup_queries(c, pod.netns, NDOTS_POD, lookup)
    extra = [q for q in ext if q.qname.rstrip(".") != EXTERNAL_NAME]
    if extra or not ext:
        return failed(f"`{' '.join(lookup)}` in {NDOTS_POD} sent "
                      f"{', '.join(map(str, ext)) or 'no query'}", hint=make,
                      expected=f"only queries for {EXTERNAL_NAME}.",
                      actual=f"{len(ext)} queries")
    short, _ = lookup_queries(c, pod.netns, NDOTS_POD, ["getent", "ahosts", WEB])
    if short and short[0].qname.rstrip(".") == WEB:
        return failed(f"ndots:{n}: in {NDOTS_POD}, even the short name `{WEB}` is asked as "
                      f"`{WEB}.` first (forwarded to the upstream resolver, NXDOMAIN), before "
                      "the search list", hint=f"ndots:0 treats every name as absolute; {make}",
                      expected=f"{WEB}.{want_first}. first", actual=str(short[0]))
    web_ip = _cluster_ip(ctx, WEB)
    got = getent(pod.netns, WEB)
    if web_ip is None or web_ip not in got:
        return failed(f"the short name `{WEB}` does not resolve in {NDOTS_POD} "
                      f"({', '.join(got) or 'nothing'})", hint=keep,
                      expected=f"{web_ip} (Service {WEB})", actual=", ".join(got) or "nothing")
    base, _ = lookup_queries(c, client.netns, CLIENT, lookup)
    return passed(f"{NDOTS_POD} has ndots:{n}: `{' '.join(lookup)}` (getaddrinfo, as curl and "
                  f"most apps resolve) sends {len(ext)} queries "
                  f"({', '.join(map(str, ext))}), {CLIENT} {len(base)}; `{WEB}` still resolves "
                  f"through the search list ({web_ip}). The price: a name with {n} "
                  f"dot{'s' if n != 1 else ''} or more, like `{WEB}.{NAMESPACE}`, is now asked "
                  "upstream as it is first")


# --- exercise 5: a pod whose DNS is broken --------------------------------------------------------

def _checkout_pods(ctx: Context) -> list[PodView]:
    return [p for p in pod_views(ctx, SHOP) if p.owner == f"Deployment/{CHECKOUT}" and p.ip]


def _nameserver_problem(ctx: Context, pod: PodView, conf: clusterdns.ResolvConf, fix: str
                        ) -> Verdict | None:
    dns_ip = ctx.cluster.dns_ip
    dns_pods = {p.ip for p in ctx.cluster.dns_pods()}
    servers = list(conf.nameservers)
    if not servers:
        return failed(f"{pod.name}'s /etc/resolv.conf has no nameserver", hint=fix,
                      expected=f"nameserver {dns_ip}", actual="none")
    first = servers[0]
    r = dig(pod.netns, f"{WEB}.{NAMESPACE}.svc.{ZONE}.")
    if not r.answered:
        return failed(f"in {pod.name}, nothing answers DNS: its resolv.conf names "
                      f"{', '.join(servers)}, and {first} is {_whose(ctx, first)}; dig says "
                      f"\"{r.error}\"",
                      hint=f'ask cluster DNS itself: CHECKOUT.sh("dig @{dns_ip} '
                           f'{WEB}.{NAMESPACE}.svc.{ZONE}") answers. {fix}',
                      expected=f"nameserver {dns_ip}",
                      actual=f"nameserver {first}")
    if first in dns_pods:
        return failed(f"{pod.name} asks coredns pod {first} directly: it answers today, but a "
                      "pod's address changes whenever the pod is replaced, and this skips the "
                      "other replica", hint=f"use the Service kube-dns, {dns_ip}; {fix}",
                      expected=f"nameserver {dns_ip}", actual=f"nameserver {first}")
    if first != dns_ip:
        return failed(f"{pod.name} asks {first} ({_whose(ctx, first)}), which answers "
                      f"{WEB}.{NAMESPACE}.svc.{ZONE} with {r.text()}: only cluster DNS knows "
                      f"the {ZONE} zone", hint=fix, expected=f"nameserver {dns_ip}",
                      actual=f"nameserver {first}")
    return None


@LAB.check("fix-dns", "The checkout app in namespace shop resolves web.default and "
                      "api.example.com, and reaches web")
def check_fix_dns(ctx: Context) -> Verdict:
    client = _client(ctx)
    if isinstance(client, Verdict):
        return client
    fix = (f"a pod's resolv.conf comes from its dnsPolicy and dnsConfig: fix them in the "
           f"Deployment's pod template (load {CHECKOUT_MANIFEST} with yaml.safe_load_all, edit "
           "spec.template.spec in Python, c.apply([deployment]); the pod is replaced)")
    pods = _checkout_pods(ctx)
    if not pods:
        return failed(f"no pod of Deployment `{CHECKOUT}` runs in namespace `{SHOP}`",
                      hint=f'the notebook applied {CHECKOUT_MANIFEST} first; {fix}',
                      expected=f"a {CHECKOUT} pod", actual="none")
    web_ip = _cluster_ip(ctx, WEB)
    web_pods = {p.name for p in ctx.cluster.pods(NAMESPACE) if p.owner == f"Deployment/{WEB}"}
    if web_ip is None:
        return failed(f"there is no Service `{WEB}` in `{NAMESPACE}`",
                      hint=f'c.apply("{APPS_MANIFEST}") makes it',
                      expected=f"Service {WEB}", actual="none")
    for pod in pods:
        conf = resolv_conf_of(pod.netns)
        if conf is None:
            return failed(f"{pod.name} has no /etc/resolv.conf", hint=fix,
                          expected="a resolv.conf", actual="none")
        bad = _nameserver_problem(ctx, pod, conf, fix)
        if bad:
            return bad
        got = getent(pod.netns, f"{WEB}.{NAMESPACE}")
        if web_ip not in got:
            tried = expansions(f"{WEB}.{NAMESPACE}", conf)
            return failed(f"{pod.name} now asks cluster DNS, but `{WEB}.{NAMESPACE}` still does "
                          f"not resolve there: its resolver tried {', '.join(tried)} (search "
                          f"list: {' '.join(conf.searches) or 'none'})",
                          hint=f"`{WEB}.{NAMESPACE}` needs the search domain svc.{ZONE}, which "
                               f"every ClusterFirst pod has; {fix}",
                          expected=f"{web_ip}", actual=", ".join(got) or "nothing")
        ext = getent(pod.netns, PAYMENT_NAME)
        if not ext:
            return failed(f"{pod.name} resolves cluster names, but not {PAYMENT_NAME}: "
                          "cluster DNS forwards names outside the cluster upstream, so "
                          "something else is wrong in the resolv.conf "
                          f"({conf.text().strip()!r})", hint=fix,
                          expected=f"an address for {PAYMENT_NAME}", actual="nothing")
        r = _in_pod(pod.netns, ["curl", "-s", "--max-time", "3",
                                f"http://{WEB}.{NAMESPACE}/hostname"])
        if r.rc != 0 or r.stdout.strip() not in web_pods:
            return failed(f"{pod.name} resolves `{WEB}.{NAMESPACE}` to {web_ip}, but `curl "
                          f"http://{WEB}.{NAMESPACE}/hostname` there failed (rc {r.rc}: "
                          f"{(r.stdout or r.stderr).strip()[:80]!r})",
                          hint=f"is Service {WEB} intact? c.probe(\"{CLIENT}\", \"{web_ip}\", 80)",
                          expected="a web pod's name", actual=r.stdout.strip()[:80] or r.rc)
    return passed(f"{', '.join(p.name for p in pods)} asks {ctx.cluster.dns_ip} (kube-dns): "
                  f"`{WEB}.{NAMESPACE}` → {web_ip} through the search domain svc.{ZONE}, "
                  f"{PAYMENT_NAME} → {', '.join(ext)} (forwarded upstream), and "
                  f"http://{WEB}.{NAMESPACE}/hostname answered {r.stdout.strip()}")


# --- views for the notebook -----------------------------------------------------------------------

def dns_counters(c: Cluster, names: Iterable[str] = ("coredns_dns_requests_total",
                                                     "coredns_dns_responses_total",
                                                     "coredns_forward_responses_total",
                                                     "coredns_cache_hits_total")
                 ) -> dict[str, float]:
    """The Prometheus counters of every coredns pod (`c.dns_metrics(pod)`, from :9153/metrics),
    summed over the pods: kube-proxy spreads the queries over both replicas. Keys are the
    series as Prometheus prints them, `name{labels}`; the `server` and `family` labels, the same
    on every series, are left out."""
    want = tuple(names)
    total: dict[str, float] = {}
    for p in c.dns_pods():
        for line in c.dns_metrics(p.name).splitlines():
            if not line or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric = series.split("{", 1)[0]
            if want and metric not in want:
                continue
            series = re.sub(r'(server|family)="[^"]*",?', "", series).replace(",}", "}")
            series = series.replace("{}", "")
            try:
                total[series] = total.get(series, 0.0) + float(value)
            except ValueError:
                continue
    return total


def counter_changes(before: dict[str, float], after: dict[str, float]) -> Table:
    """The counters that moved between two `dns_counters(c)` readings, as a table."""
    from lab_kit.cluster import Table

    rows = [[k, f"{after[k] - before.get(k, 0):g}", f"{after[k]:g}"] for k in sorted(after)
            if after[k] != before.get(k, 0)]
    return Table(["SERIES", "CHANGE", "NOW"], rows)


def dns_path(c: Cluster, pod: str = CLIENT, namespace: str = NAMESPACE) -> graphviz.Digraph:
    """The path of a pod's DNS query, from the live state: the pod's /etc/resolv.conf, the
    kube-proxy rules on its node that DNAT udp/53 to the kube-dns Service's endpoints (from that
    node's `iptables-save`), the coredns pods (addresses from their eth0), and the upstream
    nameserver in the coredns pods' own resolv.conf."""
    import graphviz as gv

    from lab_kit.labs.clusterip import read_tables
    from lab_kit.viz import C_BRIDGE, C_MUTED, C_NODE_BG, C_POD, FONT

    shell = c.pod(pod, namespace)
    conf = resolv_conf_of(shell.netns)
    g = gv.Digraph("dns-path", graph_attr={
        "rankdir": "LR", "fontname": FONT, "fontsize": "12", "labelloc": "t",
        "label": f"a DNS query from {shell.name}, read from the live cluster"},
        node_attr={"fontname": FONT, "fontsize": "10", "shape": "box",
                   "style": "rounded,filled", "fillcolor": C_NODE_BG},
        edge_attr={"fontname": FONT, "fontsize": "9"})
    conf_text = conf.text().strip().replace("\n", "\\l") + "\\l" if conf else "(none)"
    g.node("pod", f"pod {shell.name}\n{shell.ip} on {shell.node}\n\n/etc/resolv.conf:\\l"
           f"{conf_text}", fillcolor=C_POD)
    server = conf.nameservers[0] if conf and conf.nameservers else None
    tables = read_tables(naming.node_netns(shell.node))
    nat = tables.get("nat", {})
    dispatch = next((r for r in nat.get("KUBE-SERVICES", []) if server and r.dst == server
                     and r.dport == 53 and r.opt("-p") == "udp"), None)
    coredns = {p.ip: p for p in c.dns_pods()}
    if dispatch is None:
        g.node("nowhere", f"{server or 'no nameserver'}:53\nno kube-proxy rule on "
               f"{shell.node} matches it", fillcolor="#ffebe9")
        g.edge("pod", "nowhere", label="udp/53")
        return g
    svc = dispatch.target or "?"
    g.node("svc", f"{shell.node}: nat KUBE-SERVICES\n-d {server} -p udp --dport 53\n→ {svc}\n"
           f"“{dispatch.comment}”", fillcolor=C_BRIDGE)
    g.edge("pod", "svc", label=f"udp {shell.ip} → {server}:53\n(the address no interface has)")
    upstream = None
    for r in nat.get(svc, []):
        if not (r.target or "").startswith("KUBE-SEP-"):
            continue
        dnat = next((s.dnat for s in nat.get(r.target or "", []) if s.dnat), None)
        ip = dnat.rsplit(":", 1)[0] if dnat else None
        p = coredns.get(ip or "")
        pid = f"dns-{ip}"
        live = underlay_ip(p.netns) if p else None  # the address on its eth0
        label = (f"pod {p.name}\n{live or p.ip} on {p.node}\nanswers {ZONE}\n"
                 "from Services, EndpointSlices, pods") if p else f"{dnat}\n(no coredns pod)"
        g.node(pid, label, fillcolor=C_POD)
        prob = f"p = {r.probability:g}" if r.probability is not None else "the rest"
        g.edge("svc", pid, label=f"{r.target}\nDNAT → {dnat} ({prob})")
        if p is not None and upstream is None:
            pconf = resolv_conf_of(p.netns)
            upstream = pconf.nameservers[0] if pconf and pconf.nameservers else None
        if p is not None:
            g.edge(pid, "upstream", label="every other name\n(forward . /etc/resolv.conf)",
                   style="dashed", color=C_MUTED, fontcolor=C_MUTED)
    ext = c.external.ip
    g.node("upstream", f"{upstream or '?'}:53\n"
           + ("dnsmasq on the external host\n(the data centre's resolver)" if upstream == ext
              else "upstream resolver"), fillcolor="white")
    return g
