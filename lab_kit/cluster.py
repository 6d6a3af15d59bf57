"""A cluster made of real kernel objects, and the Python API that mirrors the CLI.

    c = Cluster.up("labs/clusters/default.yaml")   # nodes = Mininet hosts, named netns
    c.apply("labs/manifests/web.yaml")             # pods = netns wired by the real CNI plugins
    c.get_pods()                                   # like `kubectl get pods -o wide`
    c.probe("web-…", "web-…", 8080)                # a real TCP connection between pods
    c.down()                                       # everything gone, host untouched

Every process (the CLI, a notebook, a restarted kernel) sees the same cluster through its state
dir and named network namespaces; `Cluster.attach(name)` re-attaches.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import hashlib
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab_kit import (
    agnhost,
    backends,
    clusterdns,
    cni,
    config,
    gateway_nginx,
    ingress,
    ingress_nginx,
    kernel,
    kubeproxy,
    masq,
    model,
    naming,
    netpol,
    pki,
    services,
)
from lab_kit import gateway as gw
from lab_kit.errors import ConfigError, LabError, NotRunningError
from lab_kit.kernel import Journal, Runner
from lab_kit.reachability import Reachability
from lab_kit.state import Store, list_clusters, state_root

SOCKET_ROOT = Path("/run/lab_kit-sock")
POD_CAPACITY_PER_NODE = 253  # a /24 minus network, broadcast and the cni0 gateway (.1)
Progress = Callable[[str], None]


# objects stored as {"spec", "created"} under a state key: (state key, kubectl's resource name)
STORED_KINDS: dict[type, tuple[str, str]] = {
    ingress.Ingress: ("ingresses", "ingress.networking.k8s.io"),
    ingress.Secret: ("secrets", "secret"),
    masq.ConfigMap: ("configmaps", "configmap"),
    model.IngressClass: ("ingressclasses", "ingressclass.networking.k8s.io"),
    gw.GatewayClass: ("gatewayclasses", "gatewayclass.gateway.networking.k8s.io"),
    gw.Gateway: ("gateways", "gateway.gateway.networking.k8s.io"),
    gw.HTTPRoute: ("httproutes", "httproute.gateway.networking.k8s.io"),
    gw.ReferenceGrant: ("referencegrants", "referencegrant.gateway.networking.k8s.io"),
}
INGRESS_KINDS = tuple(what for what, _ in STORED_KINDS.values())
# Gateway API kind -> (its state key, its section of state["gatewayStatus"])
GATEWAY_KINDS = {"GatewayClass": ("gatewayclasses", "classes"),
                 "Gateway": ("gateways", "gateways"), "HTTPRoute": ("httproutes", "routes")}
# every node's own resolv.conf (kubelet's --resolv-conf): dnsmasq on the `external` host
NODE_RESOLV = clusterdns.node_resolv_conf(config.EXTERNAL_IP)


def _quiet(_: str) -> None:
    pass


# --- views returned to callers -----------------------------------------------------------

@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    node: str
    ip: str
    netns: str
    labels: dict[str, str]
    ports: tuple[int, ...]
    owner: str | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    role: str
    ip: str
    pod_cidr: str
    netns: str


@dataclass(frozen=True)
class ProbeResult:
    src: str
    dst: str
    ip: str
    port: int
    protocol: str
    ok: bool
    reply: str = ""
    error: str = ""
    ms: float = 0.0

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        target = f"{self.dst} ({self.ip}:{self.port}/{self.protocol})"
        if self.ok:
            return f"OK   {self.src} -> {target}: {self.reply!r} in {self.ms:.1f} ms"
        return f"FAIL {self.src} -> {target}: {self.error}"

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.ok else "#cf222e"
        import html
        return f'<pre style="color:{colour}">{html.escape(str(self))}</pre>'

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "ip": self.ip, "port": self.port,
                "protocol": self.protocol, "ok": self.ok, "reply": self.reply,
                "error": self.error, "ms": round(self.ms, 3)}


class Table(list):
    """Rows with a kubectl-like text form and an HTML form for notebooks."""

    def __init__(self, headers: list[str], rows: Iterable[list[Any]]) -> None:
        super().__init__(rows)
        self.headers = headers

    def __str__(self) -> str:
        cols = [self.headers] + [[str(c) for c in r] for r in self]
        widths = [max(len(r[i]) for r in cols) for i in range(len(self.headers))]
        return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                         for r in cols)

    def _repr_html_(self) -> str:
        import html
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                       for r in self)
        return f"<table><tr>{head}</tr>{body}</table>"

    def only(self, names: list[str]) -> Table:
        """The rows whose NAME column is one of `names`."""
        col = self.headers.index("NAME")
        return Table(self.headers, [r for r in self if r[col] in names])


class Shell:
    """A node, the external host or a pod: somewhere to run commands."""

    def __init__(self, cluster: Cluster, name: str, netns: str, ip: str) -> None:
        self.cluster = cluster
        self.name = name
        self.netns = netns
        self.ip = ip

    def sh(self, command: str, check: bool = True, timeout: float = 60) -> str:
        """Run a shell command inside this netns.

        Returns stdout. Raises CommandError on a non-zero exit when `check` is true; with
        `check=False` whatever the command wrote to stderr is appended instead.
        """
        argv, netns = self._wrap(command)
        done = self.cluster.runner.run(argv, netns, check=check, timeout=timeout, source="you")
        return done.stdout + (done.stderr if not check else "")

    def _wrap(self, command: str) -> tuple[list[str], str | None]:
        # `ip netns exec` also binds /etc/netns/<netns>/* (a pod's resolv.conf) over /etc
        return ["ip", "netns", "exec", self.netns, "bash", "-c", command], None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} netns={self.netns} ip={self.ip}>"


class Node(Shell):
    def _wrap(self, command: str) -> tuple[list[str], str | None]:
        # the network namespace only (`nsenter --net`): unlike `ip netns exec` this keeps the
        # host's mount namespace, so an `ip netns add` on the node is visible to every shell,
        # as on a real node
        return ["bash", "-c", command], self.netns


class ExternalHost(Node):
    """The `external` host: like a node, but its commands see its own resolv.conf (its
    dnsmasq, which also answers the Ingress hosts), as a machine outside the cluster would."""

    def _wrap(self, command: str) -> tuple[list[str], str | None]:
        return Shell._wrap(self, command)


class PodShell(Shell):
    def __init__(self, cluster: Cluster, info: PodInfo) -> None:
        super().__init__(cluster, info.key, info.netns, info.ip)
        self.info = info
        self.node = info.node


# --- the cluster -----------------------------------------------------------------------------

class Cluster:
    def __init__(self, name: str, root: Path | None = None) -> None:
        self.name = name
        self.root = state_root(root)
        self.store = Store(self.root, name)
        self.runner = Runner(Journal(self.store.journal_file))
        self._state: dict[str, Any] | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._config: tuple[tuple[float, int], config.ClusterConfig] | None = None

    # life cycle --------------------------------------------------------------------------

    @classmethod
    def up(cls, cfg: str | Path | config.ClusterConfig | None = None, *, name: str | None = None,
           root: str | Path | None = None, progress: Progress | None = None,
           replace: bool = False) -> Cluster:
        """Create a cluster from a kind-format config (file path, config object, or defaults)."""
        if cfg is None:
            conf = config.default_config(name or config.DEFAULT_NAME)
        elif isinstance(cfg, config.ClusterConfig):
            conf = cfg
        else:
            conf = config.load_config(cfg, name=name)
        self = cls(conf.name, Path(root) if root else None)
        say = progress or _quiet
        _preflight(conf)  # every plugin and daemon the config names exists, before any change
        if self.store.exists():
            if not replace:
                raise LabError(f"cluster `{conf.name}` already exists — use it with "
                               f"Cluster.attach({conf.name!r}), or remove it first with "
                               f"`lab-kit down --name {conf.name}`")
            self.down(progress=say)
        leftovers = [n for n in kernel.list_netns() if naming.owns_netns(conf.name, n)]
        if leftovers:  # a crashed run: everything with our prefix is ours to remove
            say(f"removing {len(leftovers)} leftover namespaces of `{conf.name}`")
            sweep(conf.name, self.runner)
        t0 = time.monotonic()
        with self.store.lock():
            state = {"version": 1, "status": "creating", "config": conf.to_dict(stored=True),
                     "source": conf.source, "created": time.time(),
                     "namespaces": {n: {"labels": {"kubernetes.io/metadata.name": n}}
                                    for n in model.SYSTEM_NAMESPACES},
                     "deployments": {}, "pods": {}, "services": {}, "endpointslices": {}}
            self.store.save(state)  # before any kernel change: `down` can always find us
            self._state = state
            try:
                say(f"creating cluster `{conf.name}`: {len(conf.nodes)} nodes + external host")
                _build_underlay(self.runner, conf)
                say("underlay up (Mininet LinuxBridge s1); configuring nodes")

                def underlay_ready() -> None:
                    self._wait_links_up([naming.underlay_netns(conf.name)])
                    self._wait_links_up([naming.node_netns(n.name) for n in conf.nodes] + [
                        naming.external_netns(conf.name)], only="eth0")
                # BIRD's first connection to a peer must not go out before the underlay
                # forwards (a lost SYN costs a retry a second later); the other backends
                # configure the nodes meanwhile
                if conf.cni == "bgp":
                    underlay_ready()
                with ThreadPoolExecutor(max_workers=min(8, len(conf.nodes))) as ex:
                    list(ex.map(lambda n: self._setup_node(conf, n), conf.nodes))
                if conf.cni != "bgp":
                    underlay_ready()
                self._start_upstream_dns(conf)
                self._sync_services(state)  # kube-proxy's base chains on every node
                if conf.cni == "bgp":
                    say("waiting for BGP: every node learns every other node's pod CIDR")
                    waited = backends.wait_bgp(self.runner, conf)
                    say(f"BGP converged in {waited:.2f} s")
                state["status"] = "running"
                self.store.save(state)
            except BaseException:
                say("bring-up failed; removing everything it made")
                self._teardown()
                raise
        try:
            if conf.cluster_dns:
                self._deploy_dns(conf, say)
        except BaseException:
            say("bring-up failed; removing everything it made")
            self.down()
            raise
        say(f"cluster `{conf.name}` ready in {time.monotonic() - t0:.2f} s")
        return self

    @classmethod
    def attach(cls, name: str = config.DEFAULT_NAME, root: str | Path | None = None) -> Cluster:
        """Re-attach to a running cluster (after a kernel restart, from another process)."""
        self = cls(name, Path(root) if root else None)
        if not self.store.exists():
            running = list_clusters(self.root)
            hint = f"running: {', '.join(running)}" if running else "no cluster is running"
            raise NotRunningError(f"no cluster named `{name}` ({hint}) — create one with "
                                  "`lab-kit up` or Cluster.up()")
        return self

    @classmethod
    def list(cls, root: str | Path | None = None) -> list[str]:
        return list_clusters(state_root(root))

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def down(self, progress: Progress | None = None) -> None:
        """Remove every namespace, link, process, mount and file of this cluster."""
        say = progress or _quiet
        t0 = time.monotonic()
        with self.store.lock():
            self._teardown()
        say(f"cluster `{self.name}` removed in {time.monotonic() - t0:.2f} s")

    def _teardown(self) -> None:
        sweep(self.name, self.runner)
        shutil.rmtree(self.store.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.root.rmdir()  # the state root too, once no cluster is left in it
        self._state = None

    # state -------------------------------------------------------------------------------

    @property
    def state(self) -> dict[str, Any]:
        """The stored state, re-read whenever another process (the CLI, say) changed it."""
        try:
            st = self.store.state_file.stat()
        except FileNotFoundError:
            raise NotRunningError(f"cluster `{self.name}` is not running — "
                                  "`lab-kit up` creates it") from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._state is None or stamp != self._stamp:
            self._state = self.store.load()
            self._stamp = stamp
        return self._state

    def _reload(self) -> dict[str, Any]:
        self._state = None
        return self.state

    @property
    def config(self) -> config.ClusterConfig:
        """The cluster's config; only its node list changes while the cluster lives."""
        state = self.state
        key = (state["created"], state.get("configGeneration", 0))
        if self._config is None or self._config[0] != key:
            self._config = (key, config.parse_config(state["config"], source=state.get("source"),
                                                     stored=True))
        return self._config[1]

    def _set_config(self, state: dict[str, Any], conf: config.ClusterConfig) -> None:
        """Record a changed node list (the only part of the config that can change)."""
        state["config"] = conf.to_dict(stored=True)
        state["configGeneration"] = state.get("configGeneration", 0) + 1
        self.store.save(state)

    # nodes -------------------------------------------------------------------------------

    def _setup_node(self, conf: config.ClusterConfig, n: config.NodeConfig) -> None:
        ns = naming.node_netns(n.name)
        # bridged pod-to-pod frames must pass iptables, or a reply from a Service backend on
        # the same bridge skips the conntrack that un-DNATs it
        self.runner.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
                         "net.ipv4.conf.all.forwarding=1",
                         "net.bridge.bridge-nf-call-iptables=1"], ns)
        self._setup_backend(conf, n)
        self._setup_masquerade(ns, masq.masq_config_from_state(
            (self._state or {}).get("configmaps") or {}, conf.pod_subnet))
        etc = Path("/etc/netns") / ns  # kubelet's --resolv-conf: the node's own resolver
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(NODE_RESOLV.text())
        data_dir = self.store.dir / "cni" / n.name
        cni.write_conflist(data_dir / "10-cbr0.conflist", self._conflist(conf, n))
        self._start_agnhost(n.name)

    def _masq_config(self, state: dict[str, Any] | None = None) -> masq.MasqConfig:
        """ip-masq-agent's config in force: the ConfigMap kube-system/ip-masq-agent's, else
        kind's default (only the pod subnet keeps the pod's address)."""
        state = self.state if state is None else state
        return masq.masq_config_from_state(state.get("configmaps") or {},
                                           self.config.pod_subnet)

    def _setup_masquerade(self, ns: str, cfg: masq.MasqConfig) -> None:
        """Pod traffic leaving the cluster is masqueraded to the node's address by
        ip-masq-agent's rules (see masq.py); the chain is rewritten whole, and the jump from
        POSTROUTING added when missing. (Without masquerading the `external` host has no route
        back to a pod IP: cluster DNS could not forward.)"""
        post = self.runner.run(["iptables", "-t", "nat", "-S", "POSTROUTING"], ns,
                               check=False, record=False)
        with_jump = f"-j {masq.CHAIN}" not in post.stdout
        # one file per node: the nodes are synced in parallel
        path = self.store.dir / "ip-masq-agent" / f"{ns}.iptables"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(masq.restore_lines(cfg, with_jump)))
        self.runner.run(["iptables-restore", "--noflush", str(path)], ns, source="ip-masq-agent")

    def _sync_masquerade(self, state: dict[str, Any]) -> None:
        """ip-masq-agent on every node, after its ConfigMap changed."""
        cfg = self._masq_config(state)
        _parallel(self.config.nodes,
                  lambda n: self._setup_masquerade(naming.node_netns(n.name), cfg))

    def _ensure_masquerade(self, ns: str, cfg: masq.MasqConfig) -> None:
        """Re-create the ip-masq-agent rules when they no longer read back whole (the real
        agent re-syncs them every minute). CI caught a node whose IP-MASQ-AGENT chain
        iptables could no longer list ("is incompatible, use 'nft'"), with pod flows to the
        outside leaving un-masqueraded; the rules are checked after every kube-proxy sync."""
        chain = self.runner.run(["iptables", "-t", "nat", "-S", masq.CHAIN], ns,
                                check=False, record=False)
        post = self.runner.run(["iptables", "-t", "nat", "-S", "POSTROUTING"], ns,
                               check=False, record=False)
        if chain.rc == 0 and masq.is_whole(chain.stdout, cfg) and post.rc == 0 and \
                post.stdout.count(f"-j {masq.CHAIN}") == 1:
            return
        print(f"[ip-masq-agent] {ns}: rules damaged ({(chain.stderr or post.stderr).strip()}); "
              "re-creating them", file=sys.stderr)
        listed = self.runner.run(["nft", "-a", "list", "chain", "ip", "nat", "POSTROUTING"], ns,
                                 check=False, record=False).stdout
        for line in listed.splitlines():
            if masq.CHAIN in line and "# handle " in line:
                handle = line.rsplit("# handle ", 1)[1].strip()
                self.runner.run(["nft", "delete", "rule", "ip", "nat", "POSTROUTING", "handle",
                                 handle], ns, check=False, source="ip-masq-agent")
        self.runner.run(["nft", "flush", "chain", "ip", "nat", masq.CHAIN], ns, check=False,
                        source="ip-masq-agent")
        self.runner.run(["nft", "delete", "chain", "ip", "nat", masq.CHAIN], ns,
                        check=False, source="ip-masq-agent")
        self._setup_masquerade(ns, cfg)

    def _setup_backend(self, conf: config.ClusterConfig, n: config.NodeConfig) -> None:
        """Create the node's backend plumbing, or reconcile it with the current node list."""
        if conf.cni == "host-gw":
            backends.setup_hostgw(self.runner, conf, n)
        elif conf.cni == "vxlan":
            backends.setup_vxlan(self.runner, conf, n)
        elif conf.cni == "bgp":
            paths = self.bird_paths(n.name, conf)
            changed = backends.write_bird_conf(conf, n, paths)
            if not paths.socket.exists():
                backends.start_bird(self.runner, n, paths)
            elif changed:
                backends.reconfigure_bird(self.runner, n, paths)

    def bird_paths(self, node: str, conf: config.ClusterConfig | None = None
                   ) -> backends.BirdPaths:
        """Where node `node`'s bird.conf, control socket, pid file and log are."""
        conf = conf or self.config
        return backends.bird_paths(self.store.dir, self._socket_dir, conf.node(node))

    def birdc(self, node: str, command: str = "show protocols") -> str:
        """`birdc show protocols` (or any other birdc command) on a node of a BGP cluster."""
        conf = self.config
        if conf.cni != "bgp":
            raise LabError(f"cluster `{self.name}` uses the {conf.cni} backend; BIRD runs only "
                           "with `networking.cni: bgp`")
        n = conf.node(self.node(node).name)
        return backends.birdc(self.runner, n, self.bird_paths(n.name, conf), *command.split())

    def _conflist(self, conf: config.ClusterConfig, n: config.NodeConfig) -> dict[str, Any]:
        data_dir = self.store.dir / "cni" / n.name / "ipam"
        return cni.render_bridge_conflist(n.pod_cidr, str(data_dir), mtu=conf.pod_mtu,
                                          plugin=conf.plugin_for(n))

    def _cni_paths(self) -> list[str]:
        return cni.cni_path()

    def _start_agnhost(self, node: str) -> None:
        d = self.store.dir / "agnhost"
        d.mkdir(parents=True, exist_ok=True)
        ctl = self._control_socket(node)
        argv = [sys.executable, "-m", "lab_kit.agnhost", "--control", str(ctl)]
        self.runner.note(["start", "agnhost", "on", node, *argv], naming.node_netns(node),
                         source="lab_kit")
        _daemon(kernel.in_netns_argv(["setsid", "-f", *argv], naming.node_netns(node)),
                d / f"{node}.log")
        deadline = time.monotonic() + 10
        while True:
            try:
                agnhost.request(str(ctl), {"op": "ping"}, timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise LabError(f"the test server on node `{node}` did not start; see "
                                   f"{d / (node + '.log')}") from None
                time.sleep(0.01)

    @property
    def _socket_dir(self) -> Path:
        """Unix socket paths are limited to 107 bytes, and state dirs can be deep (pytest's
        tmp dirs): control sockets live in a short per-cluster dir under /run instead."""
        digest = hashlib.sha256(str(self.store.dir.resolve()).encode()).hexdigest()[:12]
        return SOCKET_ROOT / f"{self.name}-{digest}"

    def _control_socket(self, node: str) -> Path:
        path = self._control_socket_path(self.config, self.config.node(node))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _control_socket_path(self, conf: config.ClusterConfig, n: config.NodeConfig) -> Path:
        # by underlay IP, not by position: stable as nodes come and go
        return self._socket_dir / f"n{n.ip.rsplit('.', 1)[1]}.sock"

    def _sync_agnhost(self, node: str) -> None:
        pods = []
        for key, p in self.state["pods"].items():
            if p["node"] != node:
                continue
            spec = model.pod_from_json(p["spec"])
            tcp, udp = spec.serve_ports()
            pods.append({"key": key, "netns": p["netns"], "hostname": spec.name, "tcp": tcp,
                         "udp": udp})
        ctl = str(self._control_socket(node))
        try:
            resp = agnhost.request(ctl, {"op": "sync", "pods": pods})
        except OSError:
            self._start_agnhost(node)  # it died (or was killed): start again and resync
            resp = agnhost.request(ctl, {"op": "sync", "pods": pods})
        if not resp.get("ok"):
            errs = "; ".join(f"{k}: {v}" for k, v in resp.get("errors", {}).items())
            raise LabError(f"the test server on node `{node}` could not serve: {errs}")

    # cluster DNS -------------------------------------------------------------------------

    @property
    def _dns_dir(self) -> Path:
        return self.store.dir / "dns"

    @property
    def dns_ip(self) -> str:
        """The `kube-dns` Service's ClusterIP (10.96.0.10 in the default service subnet)."""
        return clusterdns.dns_service_ip(self.config.service_subnet)

    def _start_upstream_dns(self, conf: config.ClusterConfig) -> None:
        """dnsmasq on the `external` host: the data centre's resolver, serving the lab's
        "internet" names from a hosts file and NXDOMAIN for every other name."""
        d = self._dns_dir
        d.mkdir(parents=True, exist_ok=True)
        hosts = d / "internet.hosts"
        hosts.write_text(clusterdns.internet_hosts(config.EXTERNAL_IP))
        argv = ["dnsmasq", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                f"--addn-hosts={hosts}", "--local=/#/", f"--listen-address={config.EXTERNAL_IP}",
                "--bind-interfaces", "--user=root", f"--pid-file={d / 'dnsmasq.pid'}",
                f"--log-facility={d / 'dnsmasq.log'}"]  # start-up and errors; no query log
        ext = naming.external_netns(conf.name)
        self.runner.run(argv, ext, source="lab_kit")
        etc = Path("/etc/netns") / ext  # the external host resolves with its own dnsmasq
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(NODE_RESOLV.text())

    def _deploy_dns(self, conf: config.ClusterConfig, say: Progress) -> None:
        """kubeadm's CoreDNS add-on: Deployment `coredns` and Service `kube-dns`."""
        node = next((n.name for n in conf.nodes if n.role == "control-plane"),
                    conf.nodes[0].name)
        self.apply(clusterdns.coredns_manifests(self.dns_ip, node))
        self.wait_dns()
        say(f"cluster DNS: coredns x{clusterdns.COREDNS_REPLICAS} in kube-system behind "
            f"Service kube-dns {self.dns_ip}")

    def wait_dns(self, timeout: float = 15.0) -> None:
        """Wait until every coredns pod answers from the latest objects; LabError naming the
        pod that does not."""
        behind = self._dns_behind(timeout)
        if behind and self._start_programs(behind):  # a server that never started, or died
            behind = self._dns_behind(timeout)
        if behind:
            p = behind[0]
            raise LabError(f"cluster DNS pod {p['spec']['namespace']}/{p['spec']['name']} does "
                           f"not answer on {p['ip']}:53; see "
                           f"{self._dns_dir / (p['spec']['name'] + '.log')}")

    def wait_dns_synced(self, timeout: float = 3.0) -> bool:
        """Wait until every coredns pod answers from the latest objects (a server re-reads the
        snapshot within 0.1 s); False if one is still behind after `timeout` seconds."""
        return not self._dns_behind(timeout)

    def _dns_behind(self, timeout: float) -> list[dict[str, Any]]:
        """The coredns pods whose SOA serial is still below the last snapshot's generation
        after `timeout` seconds (`dig` from each pod's node to its IP)."""
        want = self._dns_generation()
        deadline = time.monotonic() + timeout
        pods = self._dns_pods()
        for i, p in enumerate(pods):
            while True:
                out = self.runner.run(["dig", "+short", "+tries=1", "+time=1", f"@{p['ip']}",
                                       "SOA", clusterdns.ZONE], naming.node_netns(p["node"]),
                                      check=False, record=False).stdout.split()
                if len(out) >= 3 and out[2].isdigit() and int(out[2]) >= want:
                    break
                if time.monotonic() > deadline:
                    return pods[i:]
                time.sleep(0.02)
        return []

    def dns_pods(self) -> list[PodInfo]:
        """The cluster DNS pods (those running a CoreDNS image), in any namespace."""
        return [_pod_info(p) for p in self._dns_pods()]

    def _dns_pods(self, state: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        pods = (state or self.state)["pods"].values()
        return [p for p in pods if model.pod_from_json(p["spec"]).program == "coredns"]

    def _publish_dns(self, state: dict[str, Any], exclude: Iterable[str] = ()) -> None:
        """Write the objects cluster DNS answers from (its "watch"; the servers re-read the
        file within 0.1 s). Pods in `exclude` are terminating and already gone from it."""
        gone = set(exclude)
        view = dict(state, pods={k: v for k, v in state["pods"].items() if k not in gone})
        d = self._dns_dir
        d.mkdir(parents=True, exist_ok=True)
        # the generation is the zone's SOA serial: a server that answers it has loaded this
        # snapshot. Kept beside the snapshot, not in the state file, which a failed apply
        # must leave exactly as it was.
        generation = self._dns_generation() + 1
        snap = clusterdns.snapshot(view, generation, self.dns_ip)
        tmp = d / "cluster.json.tmp"
        tmp.write_text(json.dumps(snap))
        os.replace(tmp, d / "cluster.json")
        (d / "generation").write_text(f"{generation}\n")

    def _dns_generation(self) -> int:
        try:
            return int((self._dns_dir / "generation").read_text())
        except (OSError, ValueError):
            return 0

    def _start_programs(self, dns_pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Start the server of every coredns pod that has none running (a kubelet restarting
        a container); returns the pods started."""
        started = []
        for p in dns_pods:
            inode = kernel.netns_inode(p["netns"])
            if inode is None or dns_server_pids(inode):
                continue
            name = p["spec"]["name"]
            d = self._dns_dir
            d.mkdir(parents=True, exist_ok=True)
            argv = [sys.executable, "-m", "lab_kit.dnsserver",
                    "--snapshot", str(d / "cluster.json")]
            self.runner.note(["start", "coredns", "in", name, *argv], p["netns"],
                             source="lab_kit")
            # `ip netns exec` (not nsenter): the server sees the pod's /etc/resolv.conf,
            # which names the upstream it forwards to
            _daemon(["ip", "netns", "exec", p["netns"], "setsid", "-f", *argv],
                    d / f"{name}.log")
            started.append(p)
        return started

    def dns_metrics(self, pod: str | None = None) -> str:
        """The Prometheus text of one coredns pod (the first, by default), from :9153/metrics."""
        pods = self._dns_pods()
        if pod is not None:
            pods = [p for p in pods if p["spec"]["name"] == pod or
                    f"{p['spec']['namespace']}/{p['spec']['name']}" == pod]
        if not pods:
            raise LabError("no coredns pod" + (f" named {pod!r}" if pod else "") +
                           " — `lab-kit get pods -n kube-system` lists them")
        p = pods[0]
        return self.runner.run(["curl", "-s", "--max-time", "2", f"http://{p['ip']}:9153/metrics"],
                               naming.node_netns(p["node"]), record=False).stdout

    def _write_pod_resolv(self, pod: model.Pod, net: str) -> None:
        """kubelet's resolv.conf for the pod, where `ip netns exec` binds it over /etc."""
        conf = clusterdns.resolv_conf(pod, self.dns_ip, NODE_RESOLV)
        etc = Path("/etc/netns") / net
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(conf.text())

    def add_node(self, role: str = "worker", labels: dict[str, str] | None = None,
                 progress: Progress | None = None) -> NodeInfo:
        """Join a new node (kind-style name, next free underlay IP and pod /24).

        Its netns is wired to the underlay switch `s1` with a veth, as Mininet's addLink does;
        then every other node's backend is reconciled with the new node list (routes, VXLAN
        FDB/neighbour entries, or BGP peers).
        """
        say = progress or _quiet
        if role not in config.ROLES:
            raise ConfigError(f"role {role!r} is not one of {', '.join(config.ROLES)}",
                              obj="Node", field="role")
        with self.store.lock():
            state = self._reload()
            old = self.config
            new_node = _next_node(old, role, dict(labels or {}))
            conf = _with_nodes(old, (*old.nodes, new_node))
            say(f"adding node {new_node.name} ({new_node.ip}, pods {new_node.pod_cidr})")
            self._set_config(state, conf)
            try:
                self._join_underlay(new_node)
                self._wait_links_up([naming.node_netns(new_node.name),
                                     naming.underlay_netns(self.name)])
                self._setup_node(conf, new_node)
                self._reconcile_nodes(conf, [n for n in conf.nodes if n is not new_node], say)
                self._sync_services(state)
                self.store.save(state)
            except BaseException:
                say(f"adding {new_node.name} failed; removing it again")
                self._drop_node(new_node, old)
                self._set_config(state, old)
                self._reconcile_nodes(old, list(old.nodes), say, best_effort=True)
                raise
        return self._node_info(new_node)

    def remove_node(self, name: str, progress: Progress | None = None) -> list[str]:
        """Delete a node: its pods go (a Deployment's are re-created on other nodes), its
        daemons stop (BIRD withdraws its routes), its netns is deleted, and every other node
        forgets it. Returns kubectl-style messages."""
        say = progress or _quiet
        with self.store.lock():
            state = self._reload()
            old = self.config
            try:
                gone = old.node(name)
            except KeyError:
                raise LabError(f"no node `{name}` in cluster `{self.name}`; nodes: "
                               f"{', '.join(n.name for n in old.nodes)}") from None
            rest = tuple(n for n in old.nodes if n.name != name)
            if not any(n.role == "control-plane" for n in rest):
                raise LabError(f"`{name}` is the cluster's last control-plane node; a cluster "
                               "needs one — remove a worker, or `lab-kit down` the cluster")
            conf = _with_nodes(old, rest)
            messages = []
            evicted = sorted(k for k, p in state["pods"].items() if p["node"] == name)
            if evicted:
                say(f"deleting the {len(evicted)} pods on {name}")
                self._execute(Plan(delete_pods=evicted), say)
                messages += [f'pod "{k.split("/", 1)[1]}" deleted' for k in evicted]
            # SIGTERM to everything on the node: BIRD closes its sessions with a Cease, so its
            # peers withdraw its routes at once
            self._drop_node(gone, old)
            state = self.state
            self._set_config(state, conf)
            messages.append(f'node "{name}" deleted')
            say(f"node {name} removed; reconciling {len(rest)} nodes")
            self._reconcile_nodes(conf, list(rest), say)
            self._sync_services(state)
            # a Deployment keeps its replica count: its pods that were on the node come back
            deployments = [model.deployment_from_json(d) for d in state["deployments"].values()]
            if deployments and evicted:
                objs = [(d, model.Source("<stored Deployments>", 0)) for d in deployments]
                plan = _plan_apply(state, conf, objs)
                if plan.create_pods:
                    say(f"re-creating {len(plan.create_pods)} Deployment pods elsewhere")
                    self._execute(plan, say)
                    messages += [f"pod/{p.name} created on {n}" for p, n in plan.create_pods]
        return messages

    def _node_info(self, n: config.NodeConfig) -> NodeInfo:
        return NodeInfo(n.name, n.role, n.ip, n.pod_cidr, naming.node_netns(n.name))

    def _join_underlay(self, n: config.NodeConfig) -> None:
        """A new host on the underlay switch: what Mininet's addHost + addLink build."""
        ns, under = naming.node_netns(n.name), naming.underlay_netns(self.name)
        ports = [ln.get("ifname", "") for ln in self.runner.json(
            ["ip", "-j", "link", "show", "master", "s1"], under)]
        nums = [int(p.rsplit("eth", 1)[1]) for p in ports if p.startswith("s1-eth")
                and p.rsplit("eth", 1)[1].isdigit()]
        port = f"s1-eth{max(nums, default=0) + 1}"
        self.runner.run(["ip", "netns", "add", ns])
        self.runner.batch([f"link add {port} type veth peer name eth0 netns {ns}",
                           f"link set {port} master s1", f"link set {port} up"], under)
        self.runner.batch([f"addr add {n.ip}/16 dev eth0", "link set lo up",
                           "link set eth0 up"], ns)
        _tune_underlay_arp(self.runner, ns)

    def _drop_node(self, n: config.NodeConfig, conf: config.ClusterConfig) -> None:
        ns = naming.node_netns(n.name)
        kill_netns_processes([ns])  # the test server, BIRD, anything a learner started
        if kernel.netns_exists(ns):
            # deleting the netns deletes its eth0, and with it the veth's end on s1
            self.runner.run(["ip", "netns", "del", ns])
        shutil.rmtree(self.store.dir / "cni" / n.name, ignore_errors=True)
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        with contextlib.suppress(OSError):
            self._control_socket_path(conf, n).unlink()

    def _reconcile_nodes(self, conf: config.ClusterConfig, nodes: list[config.NodeConfig],
                         say: Progress, best_effort: bool = False) -> None:
        def one(n: config.NodeConfig) -> None:
            try:
                self._setup_backend(conf, n)
            except LabError:
                if not best_effort:
                    raise
        _parallel(nodes, one)
        if conf.cni == "bgp" and not best_effort:
            waited = backends.wait_bgp(self.runner, conf)
            say(f"BGP converged in {waited:.2f} s")

    def nodes(self) -> list[NodeInfo]:
        conf = self.config
        return [self._node_info(n) for n in conf.nodes]

    def node(self, name: str) -> Node:
        for n in self.nodes():
            if n.name == name:
                return Node(self, n.name, n.netns, n.ip)
        if name == "external":
            return self.external
        raise LabError(f"no node `{name}` in cluster `{self.name}`; nodes: "
                       f"{', '.join(n.name for n in self.nodes())}")

    @property
    def external(self) -> Node:
        return ExternalHost(self, "external", naming.external_netns(self.name),
                            config.EXTERNAL_IP)

    # pods --------------------------------------------------------------------------------

    def get_pods(self, namespace: str | None = None, *, include_system: bool = False) -> Table:
        rows = self.pods(namespace, include_system=include_system)
        t = Table(["NAMESPACE", "NAME", "READY", "STATUS", "IP", "NODE"],
                  [[p.namespace, p.name, "1/1", "Running", p.ip, p.node] for p in rows])
        t.pods = rows  # type: ignore[attr-defined]
        return t

    def get_nodes(self) -> Table:
        return Table(["NAME", "STATUS", "ROLES", "INTERNAL-IP", "POD-CIDR", "NETNS"],
                     [[n.name, "Ready", n.role, n.ip, n.pod_cidr, n.netns]
                      for n in self.nodes()])

    def get_services(self, namespace: str | None = "default") -> Table:
        """`kubectl get svc` (namespace None: every namespace)."""
        rows = [services.service_row(v) for k, v in sorted(self.state["services"].items())
                if namespace is None or k.split("/", 1)[0] == namespace]
        if namespace is None:
            keys = [k.split("/", 1)[0] for k in sorted(self.state["services"])]
            rows = [[ns, *r] for ns, r in zip(keys, rows, strict=True)]
        return Table((["NAMESPACE"] if namespace is None else [])
                     + ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"], rows)

    def get_endpointslices(self, namespace: str | None = "default") -> Table:
        """`kubectl get endpointslices`."""
        items = sorted(self.state.get("endpointslices", {}).items())
        rows = [([k.split("/", 1)[0]] if namespace is None else []) + services.slice_row(v)
                for k, v in items if namespace is None or k.split("/", 1)[0] == namespace]
        return Table((["NAMESPACE"] if namespace is None else [])
                     + ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS"], rows)

    def service(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        """A Service as `kubectl get svc NAME -o yaml` shows it (`name` or `ns/name`)."""
        if "/" in name and namespace is None:
            namespace, name = name.split("/", 1)
        key = f"{namespace or 'default'}/{name}"
        stored = self.state.get("services", {}).get(key)
        if stored is None:
            have = ", ".join(sorted(self.state.get("services", {}))) or "none"
            raise LabError(f"no Service `{key}`; Services: {have}")
        return services.service_object(stored)

    def endpointslices(self, service: str, namespace: str | None = None
                       ) -> list[dict[str, Any]]:
        """The EndpointSlices of one Service (label kubernetes.io/service-name)."""
        if "/" in service and namespace is None:
            namespace, service = service.split("/", 1)
        return services.slices_of(self.state.get("endpointslices", {}),
                                  namespace or "default", service)

    def _pod_infos(self) -> list[PodInfo]:
        return [_pod_info(p) for _key, p in sorted(self.state["pods"].items())]

    def pods(self, namespace: str | None = None, *, include_system: bool = False
             ) -> list[PodInfo]:
        """The pods of `namespace`; None: every namespace but kube-system (the cluster's own
        CoreDNS pods), unless `include_system` (`kubectl get pods -A`)."""
        return [p for p in self._pod_infos() if p.namespace == namespace or (
            namespace is None and (include_system or p.namespace not in model.ADDON_NAMESPACES))]

    def pod(self, name: str, namespace: str | None = None) -> PodShell:
        """A pod by name (`web-1`, `default/web-1`); a unique prefix also works."""
        if "/" in name and namespace is None:
            namespace, name = name.split("/", 1)
        ns = namespace or "default"
        stored = self.state["pods"].get(f"{ns}/{name}")
        if stored is not None:  # the common case, without building every PodInfo
            return PodShell(self, _pod_info(stored))
        infos = [p for p in self._pod_infos() if p.namespace == ns]
        exact = [p for p in infos if p.name == name]
        found = exact or [p for p in infos if p.name.startswith(name)]
        if len(found) == 1:
            return PodShell(self, found[0])
        names = ", ".join(p.name for p in infos) or "none"
        if not found:
            raise LabError(f"no pod `{name}` in namespace `{ns}`; pods there: {names}")
        raise LabError(f"`{name}` matches several pods in `{ns}`: {names}; give the full name")

    def apply(self, source: str | Path | list[dict[str, Any]] | dict[str, Any],
              progress: Progress | None = None) -> list[str]:
        """`kubectl apply -f`: create or update objects; returns kubectl-style lines."""
        objs = model.load_manifests(source)  # validates everything first
        with self.store.lock():
            state = self._reload()
            plan = _plan_apply(state, self.config, objs)
            self._execute(plan, progress or _quiet)
        return plan.messages

    def delete(self, source: str | Path | list[dict[str, Any]] | dict[str, Any] | None = None,
               *, pod: str | None = None, namespace: str = "default",
               progress: Progress | None = None) -> list[str]:
        """`kubectl delete -f` (or one pod by name)."""
        with self.store.lock():
            state = self._reload()
            if pod is not None:
                key = pod if "/" in pod else f"{namespace}/{pod}"
                if key not in state["pods"]:
                    raise LabError(f"pod `{key}` not found")
                plan = Plan(delete_pods=[key], messages=[f'pod "{key.split("/", 1)[1]}" deleted'])
            else:
                if source is None:
                    raise LabError("delete needs a manifest or a pod name")
                objs = model.load_manifests(source)
                plan = _plan_delete(state, objs)
            self._execute(plan, progress or _quiet)
        return plan.messages

    def _execute(self, plan: Plan, say: Progress) -> None:
        state = self.state
        state.setdefault("services", {})
        state.setdefault("endpointslices", {})
        state.setdefault("networkpolicies", {})
        for what in INGRESS_KINDS:
            state.setdefault(what, {})
        backup = {k: copy.deepcopy(state[k]) for k in ("namespaces", "deployments", "services",
                                                       "endpointslices", "networkpolicies",
                                                       *INGRESS_KINDS)}
        backup_labels = {k: state["pods"][k]["spec"]["labels"] for k in plan.relabel}
        had_services = bool(state["services"])
        had_policies = bool(state["networkpolicies"])
        state["namespaces"].update(plan.namespaces)
        for key in plan.delete_namespaces:
            state["namespaces"].pop(key, None)
        state["deployments"].update(plan.deployments)
        for key in plan.delete_deployments:
            state["deployments"].pop(key, None)
        state["services"].update(plan.services)
        for key in plan.delete_services:
            state["services"].pop(key, None)
        for key, labels in plan.relabel.items():
            state["pods"][key]["spec"]["labels"] = labels
        state["networkpolicies"].update(plan.policies)
        for key in plan.delete_policies:
            state["networkpolicies"].pop(key, None)
        for what, entries in plan.objects.items():
            state[what].update(entries)
        for what, keys in plan.delete_objects.items():
            for key in keys:
                state[what].pop(key, None)
        sync = had_services or bool(state["services"])
        policies = had_policies or bool(state["networkpolicies"])

        def restore_objects() -> None:  # the objects of a failed apply are not recorded
            state.update(backup)
            for key, labels in backup_labels.items():
                if key in state["pods"]:
                    state["pods"][key]["spec"]["labels"] = labels

        if sync and plan.delete_pods:
            # endpoints of pods about to go are removed from every node's rules first, so no
            # new connection is sent to a pod that is being deleted
            try:
                self._sync_services(state, exclude=plan.delete_pods)
                self._sync_ingress(state, exclude=plan.delete_pods)
            except BaseException:
                restore_objects()
                with contextlib.suppress(LabError, OSError):
                    self._sync_services(state)
                raise
        # deletions first: they free IPs and ports
        by_node: dict[str, list[str]] = {}
        for key in plan.delete_pods:
            by_node.setdefault(state["pods"][key]["node"], []).append(key)
        if by_node:
            say(f"deleting {len(plan.delete_pods)} pods")
        gone = [key for keys in by_node.values() for key in keys]
        removed = {key: state["pods"].pop(key) for key in gone}
        for node in by_node:
            self._sync_agnhost(node)  # close the pods' sockets before their netns goes
        _parallel(by_node.items(), lambda item: self._remove_pods(item[0], [removed[k] for k in
                                                                           item[1]]))
        # creations, one thread per node
        creates: dict[str, list[model.Pod]] = {}
        for pod, node in plan.create_pods:
            creates.setdefault(node, []).append(pod)
        if creates:
            say(f"creating {len(plan.create_pods)} pods on {len(creates)} nodes")
        made: dict[str, dict[str, Any]] = {}
        try:
            # every node's outcome is collected before any failure is raised, so the pods
            # other nodes made are known and can be rolled back too
            outcomes = _parallel(creates.items(), lambda item: _settle(self._create_pods, *item))
            for result, _ in outcomes:
                made.update(result or {})
            for _, error in outcomes:
                if error is not None:
                    raise error
            state["pods"].update(made)
            _warn_neighbour_limit(len(state["pods"]))
            for node in {p["node"] for p in state["pods"].values()} | set(creates):
                self._sync_agnhost(node)  # also restarts a server that died since last time
            # a plan that only deleted pods was synced in full before the deletions
            deletions_only = not (creates or plan.services or plan.delete_services
                                  or plan.relabel)
            # a plan that changes only NetworkPolicies leaves Services, endpoints and DNS
            # records as they were: kube-proxy and cluster DNS have nothing to do
            policies_only = bool(plan.policies or plan.delete_policies) and deletions_only \
                and not plan.delete_pods
            if sync and not (plan.delete_pods and deletions_only) and not policies_only:
                if plan.services or plan.delete_services:
                    say("kube-proxy: syncing Service rules on every node")
                self._sync_services(state)  # publishes the objects to cluster DNS too
            elif not sync and not policies_only:
                self._publish_dns(state)  # no Service to sync, but pods have DNS records
            if policies:
                if plan.policies or plan.delete_policies:
                    say("network policy: syncing filter rules on every node")
                self._sync_policies(state)
            if not policies_only:
                self._sync_ingress(state)
            if "configmaps" in plan.objects or "configmaps" in plan.delete_objects:
                say("ip-masq-agent: syncing masquerade rules on every node")
                self._sync_masquerade(state)
            dns_pods = self._dns_pods(state)
            if self._start_programs(dns_pods):
                self.wait_dns()
            elif dns_pods and not policies_only:
                # every coredns replica answers from this apply's objects before it returns
                self.wait_dns_synced()
        except BaseException:
            # roll back this apply's pods so nothing is half-built
            for key in made:
                state["pods"].pop(key, None)
            restore_objects()
            _parallel(creates.keys(), lambda node: self._remove_pods(
                node, [p for p in made.values() if p["node"] == node], best_effort=True))
            for node in creates:
                with contextlib.suppress(LabError, OSError):
                    self._sync_agnhost(node)
            if sync:
                with contextlib.suppress(LabError, OSError):
                    self._sync_services(state)  # the rules of the state before this apply
            if policies:
                with contextlib.suppress(LabError, OSError):
                    self._sync_policies(state)
            with contextlib.suppress(LabError, OSError):
                self._sync_ingress(state)
            if "configmaps" in plan.objects or "configmaps" in plan.delete_objects:
                with contextlib.suppress(LabError, OSError):
                    self._sync_masquerade(state)
            with contextlib.suppress(OSError):
                self._publish_dns(state)  # also when that sync failed half-way
            raise
        finally:
            self.store.save(state)

    def sync_services(self) -> None:
        """One full kube-proxy sync of every node now (what every `apply` ends with): repairs
        rules changed by hand, and is what lab 09 and the benchmark time."""
        with self.store.lock():
            state = self._reload()
            self._sync_services(state)
            self.store.save(state)

    def _sync_services(self, state: dict[str, Any], exclude: Iterable[str] = ()) -> None:
        """The endpoint controller, then kube-proxy on every node, then the load balancer.

        EndpointSlices are derived from Services and pods (pods in `exclude` are treated as
        terminating); every node gets one full, atomic kube-proxy sync; UDP conntrack entries
        to endpoints that went away are deleted; the external side's routes to load-balancer
        IPs are reconciled. Records the new slices in `state` (the caller saves it).
        """
        conf = self.config
        state.setdefault("services", {})
        old_ports = services.service_ports(state["services"],
                                           state.get("endpointslices") or {})
        slices = services.endpoint_slices(state["services"], state["pods"], exclude)
        ports = services.service_ports(state["services"], slices)
        now = {(sp.spn, sp.protocol, e) for sp in ports for e in sp.endpoints}
        stale = [(sp, e) for sp in old_ports if sp.protocol == "UDP" for e in sp.endpoints
                 if (sp.spn, sp.protocol, e) not in now]
        rules_dir = self.store.dir / "kube-proxy"
        masq_cfg = self._masq_config(state)

        def one(n: config.NodeConfig) -> None:
            ns = naming.node_netns(n.name)
            kubeproxy.sync_node(self.runner, conf.kube_proxy_mode,
                                services.proxy_input(conf, n.name, ports), ns, rules_dir)
            self._ensure_masquerade(ns, masq_cfg)
            if stale:
                kubeproxy.flush_udp_conntrack(self.runner, ns, stale)
        _parallel(conf.nodes, one)
        self._reconcile_lb_routes(services.lb_routes(conf, ports))
        state["endpointslices"] = slices
        self._publish_dns(state, exclude)

    def policy_engine(self, state: dict[str, Any] | None = None) -> netpol.Engine:
        """The NetworkPolicy engine over the stored objects: what *should* be allowed."""
        state = state if state is not None else self.state
        pods = [_pod_ref(p) for p in state["pods"].values()]
        policies = [netpol.policy_from_json(p["spec"])
                    for p in (state.get("networkpolicies") or {}).values()]
        namespaces = {n: v.get("labels") or {} for n, v in state["namespaces"].items()}
        return netpol.Engine(policies, pods, namespaces)

    def networkpolicies(self, namespace: str | None = None) -> list[netpol.NetworkPolicy]:
        return [netpol.policy_from_json(p["spec"])
                for k, p in sorted((self.state.get("networkpolicies") or {}).items())
                if namespace is None or k.split("/", 1)[0] == namespace]

    def _sync_policies(self, state: dict[str, Any]) -> None:
        """The NetworkPolicy controller: every node gets the filter rules of its own pods,
        in one atomic load each (all removed when no policy is left)."""
        conf = self.config
        engine = self.policy_engine(state)
        rules_dir = self.store.dir / "network-policy"

        def one(n: config.NodeConfig) -> None:
            rules = netpol.node_rules(engine, n.name) if engine.policies else None
            netpol.sync_node(self.runner, conf.kube_proxy_mode, rules,
                             naming.node_netns(n.name), rules_dir)
        _parallel(conf.nodes, one)

    # ingress -----------------------------------------------------------------------------

    def _ingress_controllers(self, state: dict[str, Any] | None = None
                             ) -> list[dict[str, Any]]:
        pods = (state or self.state)["pods"]
        return [p for _, p in sorted(pods.items())
                if model.pod_from_json(p["spec"]).program == "ingress-nginx"]

    def lab_ca(self) -> pki.LabCA:
        """The cluster's certificate authority (made on first use): it issues the certificates
        of TLS Secrets, and clients on the `external` host trust it (`curl --cacert`)."""
        return pki.LabCA.load_or_create(self.store.dir / "pki", name=self.name)

    def ingresses(self, namespace: str | None = None) -> list[ingress.Ingress]:
        """The stored Ingress objects (of `namespace`, or all), oldest first."""
        return [i for i in _stored_ingresses(self.state)
                if namespace is None or i.namespace == namespace]

    def ingress_status(self, name: str, namespace: str = "default") -> dict[str, Any]:
        """What the controller reported for one Ingress: `address` (the controller's
        load-balancer IP), `events` (Warning/Normal, reason, message), `routes` it won."""
        key = f"{namespace}/{name}" if "/" not in name else name
        if key not in (self.state.get("ingresses") or {}):
            raise LabError(f'ingresses.networking.k8s.io "{key}" not found')
        st = (self.state.get("ingressStatus") or {}).get(key, {})
        return {"address": st.get("address"), "events": st.get("events", []),
                "routes": [r for r in self.ingress_routes() if r["ingress"] == key]}

    def get_ingress(self, name: str, namespace: str = "default") -> dict[str, Any]:
        """One Ingress as `kubectl get ingress NAME -o yaml` shows it, with the status the
        controller published (its load-balancer address)."""
        key = name if "/" in name else f"{namespace}/{name}"
        stored = (self.state.get("ingresses") or {}).get(key)
        if stored is None:
            raise LabError(f'ingresses.networking.k8s.io "{key.split("/", 1)[1]}" not found '
                           f"in namespace {key.split('/', 1)[0]}")
        addr = ((self.state.get("ingressStatus") or {}).get(key) or {}).get("address")
        return {**model.stored_object("networking.k8s.io/v1", "Ingress", stored),
                "status": {"loadBalancer": {"ingress": [{"ip": addr}]} if addr else {}}}

    def get_gateway_object(self, kind: str, name: str, namespace: str = "default"
                           ) -> dict[str, Any]:
        """A GatewayClass, Gateway or HTTPRoute as `kubectl get KIND NAME -o yaml` shows it, with
        the status the controller wrote (conditions, addresses, listeners, parents)."""
        what, section = GATEWAY_KINDS[kind]
        key = name if kind == "GatewayClass" or "/" in name else f"{namespace}/{name}"
        stored = (self.state.get(what) or {}).get(key)
        if stored is None:
            where = "" if kind == "GatewayClass" else f" in namespace {key.split('/', 1)[0]}"
            raise LabError(f'{what}.{gw.GROUP} "{key.rsplit("/", 1)[-1]}" not found{where}')
        if kind == "GatewayClass":
            d = stored["spec"]
            obj = {"apiVersion": gw.API_VERSION, "kind": kind,
                   "metadata": {"name": d["name"], **({"labels": d["labels"]}
                                                     if d.get("labels") else {})},
                   "spec": d["spec"]}
        else:
            obj = model.stored_object(gw.API_VERSION, kind, stored)
        st = (self.state.get("gatewayStatus") or {}).get(section, {}).get(key)
        if st is None:  # no controller has taken it (yet): upstream's initial status
            pending = [{"type": t, "status": "Unknown", "reason": "Pending",
                        "message": "Waiting for controller"}
                       for t in (("Accepted",) if kind == "GatewayClass" else
                                 ("Accepted", "Programmed"))]
            st = {"parents": []} if kind == "HTTPRoute" else {"conditions": pending}
        obj["status"] = copy.deepcopy(st)
        return obj

    def gateway_routes(self) -> list[dict[str, Any]]:
        """The Gateway API controller's routing table: gateway, listener, hostname, path, match
        conditions, action (backends with their share, a redirect, or an error), route."""
        return list(self.state.get("gatewayRoutes") or [])

    def ingress_routes(self) -> list[dict[str, Any]]:
        """The controllers' routing table: host, path, backend, endpoints, TLS, status."""
        return list(self.state.get("ingressRoutes") or [])

    def _sync_ingress(self, state: dict[str, Any], exclude: Iterable[str] = ()) -> None:
        """The ingress-nginx controller: render each controller pod's nginx config from the
        Ingresses of its class, check it with `nginx -t`, and (re)load it gracefully; then
        publish the Ingress hosts to the external host's DNS (like external-dns). Pods in
        `exclude` are about to go (the caller's EndpointSlices already leave them out)."""
        gone = set(exclude)
        ctrls = [p for p in self._ingress_controllers(state) if
                 f"{p['spec']['namespace']}/{p['spec']['name']}" not in gone]
        routes: list[dict[str, Any]] = []
        status: dict[str, dict[str, Any]] = {}
        hosts: dict[str, str] = {}
        if ctrls:
            secrets = {k: ingress.secret_from_json(v["spec"])
                       for k, v in (state.get("secrets") or {}).items()}
            classes = {k: model.ingress_class_from_json(v["spec"])
                       for k, v in (state.get("ingressclasses") or {}).items()}
            all_ings = _stored_ingresses(state)
        for p in ctrls:
            cls = model.pod_from_json(p["spec"]).arg("ingress-class") or "nginx"
            ic = classes.get(cls)
            ings = [i for i in all_ings if ic is not None and i.ingress_class == cls
                    and ic.controller == ingress_nginx.CONTROLLER]
            address = self._controller_address(state, p)
            rendered = self._configure_controller(p, ings, state["services"],
                                                  state.get("endpointslices") or {}, secrets)
            routes += [dataclasses.asdict(r) for r in rendered.routes]
            for i in ings:
                st = status.setdefault(i.key, {"address": address, "events": []})
                st["events"] += [dataclasses.asdict(e) for e in rendered.events.get(i.key, [])]
                if address:
                    for r in i.rules:
                        if r.host and not r.host.startswith("*."):
                            hosts.setdefault(r.host, address)
        state["ingressRoutes"] = routes
        state["ingressStatus"] = status
        for h, ip in self._sync_gateway(state, gone).items():
            hosts.setdefault(h, ip)
        self._publish_ingress_hosts(hosts)  # unchanged (the usual case): nothing is written

    def _sync_gateway(self, state: dict[str, Any], gone: set[str]) -> dict[str, str]:
        """The Gateway API controller (NGINX Gateway Fabric's role): render each controller
        pod's nginx config from the Gateways of its classes and their HTTPRoutes, load it as
        the Ingress controller does, and write every object's status. Returns the routes'
        hostnames -> the controller's load-balancer IP, for the external host's DNS."""
        ctrls = [p for _, p in sorted(state["pods"].items())
                 if model.pod_from_json(p["spec"]).program == "nginx-gateway"
                 and f"{p['spec']['namespace']}/{p['spec']['name']}" not in gone]
        old = state.get("gatewayStatus") or {}
        status: dict[str, dict[str, Any]] = {"classes": {}, "gateways": {}, "routes": {}}
        table: list[dict[str, Any]] = []
        hosts: dict[str, str] = {}
        stored = {what: state.get(what) or {} for what in ("gatewayclasses", "gateways",
                                                            "httproutes")}
        if ctrls and (stored["gateways"] or stored["gatewayclasses"]):
            classes = [gw.gateway_class_from_json(v["spec"])
                       for v in stored["gatewayclasses"].values()]
            gateways = [(gw.gateway_from_json(v["spec"]), v["created"])
                        for v in stored["gateways"].values()]
            routes = [(gw.httproute_from_json(v["spec"]), v["created"])
                      for v in stored["httproutes"].values()]
            secrets = {k: ingress.secret_from_json(v["spec"])
                       for k, v in (state.get("secrets") or {}).items()}
            namespaces = {n: v.get("labels") or {} for n, v in state["namespaces"].items()}
            grants = [gw.reference_grant_from_json(v["spec"])
                      for v in (state.get("referencegrants") or {}).values()]
            p = ctrls[0]  # one data plane serves every Gateway of the class (NGF 1.x's layout)
            address = self._controller_address(state, p)
            d = self._controller_dir(p)
            res = gateway_nginx.render(classes, gateways, routes, state["services"],
                                       state.get("endpointslices") or {}, secrets, namespaces,
                                       address=address, prefix=d, check_cert=pki.check_tls_pair,
                                       grants=grants)
            err = self._load_nginx(p, d, res.conf, res.checksum, res.files)
            if err:
                for st in res.gateways.values():
                    st["conditions"] = [c for c in st["conditions"] if c["type"] != "Programmed"]
                    st["conditions"].append(gateway_nginx.cond(
                        "Programmed", False, "Invalid", f"nginx refused the config: {err}; the "
                        "last good config stays in force"))
            status = {"classes": res.classes, "gateways": res.gateways, "routes": res.routes}
            table = [dataclasses.asdict(r) for r in res.table]
            if address:
                for route, _ in routes:
                    st = res.routes.get(route.key) or {}
                    if any(c["type"] == "Accepted" and c["status"] == "True"
                           for par in st.get("parents", []) for c in par["conditions"]):
                        for h in route.hostnames:
                            if not h.startswith("*."):
                                hosts.setdefault(h, address)
        _stamp_conditions(status, old)
        state["gatewayStatus"] = status
        state["gatewayRoutes"] = table
        return hosts

    def _controller_address(self, state: dict[str, Any], pod: dict[str, Any]) -> str | None:
        """The address ingress-nginx publishes in Ingress status (its --publish-service): the
        load-balancer IP of a LoadBalancer Service selecting the controller pod."""
        spec = model.pod_from_json(pod["spec"])
        for v in sorted((state.get("services") or {}).values(),
                        key=lambda v: v["spec"]["name"]):
            s = v["spec"]
            sel = s.get("selector") or {}
            if s["namespace"] == spec.namespace and s["type"] == "LoadBalancer" and sel and \
                    all(spec.labels.get(k) == val for k, val in sel.items()) and s.get("lbIP"):
                return str(s["lbIP"])
        return None

    def _configure_controller(self, pod: dict[str, Any], ings: list[ingress.Ingress],
                              svcs: dict[str, Any], slices: dict[str, Any],
                              secrets: dict[str, ingress.Secret]) -> ingress_nginx.Rendered:
        """Render the Ingresses of one controller pod and load the config; a config nginx
        refuses is never loaded, and each Ingress gets a RELOAD event saying why."""
        d = self._controller_dir(pod)
        rendered = ingress_nginx.render(ings, svcs, slices, secrets, prefix=d,
                                        check_cert=pki.check_tls_pair)
        err = self._load_nginx(pod, d, rendered.conf, rendered.checksum, rendered.files)
        if err:
            for i in ings:
                rendered.warn(i.key, "RELOAD", f"Error reloading NGINX: {err}; the last good "
                              "config stays in force")
        return rendered

    def _controller_prefix(self, pod: dict[str, Any]) -> Path:
        """A controller pod's nginx prefix: `<state>/<program>/<namespace>.<name>`."""
        spec = pod["spec"]
        program = model.pod_from_json(spec).program
        return self.store.dir / program / f"{spec['namespace']}.{spec['name']}"

    def nginx_conf_file(self, pod: str) -> Path | None:
        """The nginx.conf the Ingress or Gateway controller pod `pod` (`namespace/name`) has
        loaded; None when there is no such pod or it has loaded none yet."""
        stored = self.state["pods"].get(pod)
        if stored is None:
            return None
        path = self._controller_prefix(stored) / "nginx.conf"
        return path if path.is_file() else None

    def _controller_dir(self, pod: dict[str, Any]) -> Path:
        """A controller pod's nginx prefix, with its certs/ (the fake certificate made once)
        and tmp/."""
        d = self._controller_prefix(pod)
        for sub in ("certs", "tmp"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        fake = d / "certs" / f"{ingress_nginx.FAKE_CERT}.pem"
        if not fake.exists():
            crt, key = pki.fake_certificate()
            pki.write_file(fake, crt + key, 0o600)
        return d

    def _load_nginx(self, pod: dict[str, Any], d: Path, text: str, checksum: str,
                    files: dict[str, bytes]) -> str | None:
        """Check a config with `nginx -t`, then start nginx or reload it, and wait until its
        workers answer from the new config. None when loaded (or unchanged); nginx's complaint
        when it refused the config (the last good one stays in force)."""
        netns = pod["netns"]
        conf = d / "nginx.conf"  # nginx_conf_file() reads it
        running = self._nginx_pid(d, netns)
        # the checksum covers the certificates too: the same text is the same config
        if running and conf.exists() and conf.read_text() == text:
            return None  # nothing changed: no reload (ingress-nginx skips it too)
        for n, c in files.items():
            pki.write_file(d / "certs" / n, c, 0o600)
        candidate = d / "nginx.conf.new"
        candidate.write_text(text)
        source = model.pod_from_json(pod["spec"]).program
        test = self.runner.run(["nginx", "-t", "-q", "-p", str(d), "-c", str(candidate)], netns,
                               check=False, source=source)
        if test.rc != 0:
            return (test.stderr or test.stdout).strip()
        os.replace(candidate, conf)
        if running:
            old_workers = _children(running)
            self.runner.note(["kill", "-HUP", str(running)], netns, source=source)
            os.kill(running, signal.SIGHUP)  # nginx's graceful reload
        else:
            old_workers = []
            self.runner.run(["nginx", "-p", str(d), "-c", str(conf)], netns, source=source)
        self._wait_config(netns, checksum, old_workers)
        return None

    def _nginx_pid(self, d: Path, netns: str) -> int | None:
        """The nginx master of a controller pod, if it is running."""
        try:
            pid = int((d / "nginx.pid").read_text())
            alive = os.stat(f"/proc/{pid}/ns/net").st_ino == kernel.netns_inode(netns)
        except (OSError, ValueError):
            return None
        return pid if alive else None

    def _wait_config(self, netns: str, checksum: str, old_workers: list[int],
                     timeout: float = 5.0) -> None:
        """Until only workers running the config `checksum` take new connections. On a reload the
        master starts new workers, then tells the old ones to shut down gracefully: each
        closes its listening sockets (its title becomes "worker process is shutting down")
        and finishes the requests it holds. Until then an old worker may still accept."""
        url = f"http://127.0.0.1:{ingress_nginx.STATUS_PORT}/checksum"
        deadline = time.monotonic() + timeout
        got = ""
        while time.monotonic() < deadline:
            got = self.runner.run(["curl", "-s", "--max-time", "1", url], netns, check=False,
                                  record=False).stdout.strip()
            if got == checksum and not [p for p in old_workers if _accepting(p)]:
                return
            time.sleep(0.02)
        raise LabError(f"the ingress controller in `{netns}` did not load config {checksum} within "
                       f"{timeout:.0f} s (it answers {got or 'nothing'}); see its error.log")

    def _publish_ingress_hosts(self, hosts: dict[str, str]) -> None:
        """Ingress hosts -> the controller's load-balancer IP in the external host's DNS
        (dnsmasq re-reads its hosts file on SIGHUP)."""
        path = self._dns_dir / "internet.hosts"
        text = clusterdns.internet_hosts(config.EXTERNAL_IP) + "".join(
            f"{ip} {h}\n" for h, ip in sorted(hosts.items()))
        if path.exists() and path.read_text() == text:
            return
        path.write_text(text)
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((self._dns_dir / "dnsmasq.pid").read_text()), signal.SIGHUP)

    def _reconcile_lb_routes(self, want: dict[str, list[str]]) -> None:
        """Routes on the `external` host to each load-balancer IP via the nodes announcing it
        (one next hop per node: the kernel spreads flows over them, ECMP)."""
        ext = naming.external_netns(self.name)
        pool = {ipaddress.IPv4Address(a) for a in services.lb_pool()}
        have: dict[str, list[str]] = {}
        for r in self.runner.json(["ip", "-j", "route", "show"], ext):
            dst = r.get("dst", "")
            try:
                if ipaddress.IPv4Address(dst) not in pool:
                    continue
            except ValueError:
                continue
            hops = [h["gateway"] for h in r.get("nexthops", [])] or [r.get("gateway")]
            have[dst] = sorted((h for h in hops if h), key=ipaddress.IPv4Address)
        cmds = [f"route del {dst}/32" for dst in have if not want.get(dst)]
        for ip, hops in want.items():
            if hops and have.get(ip) != hops:
                via = " ".join(f"nexthop via {h}" for h in hops) if len(hops) > 1 \
                    else f"via {hops[0]}"
                cmds.append(f"route replace {ip}/32 {via}")
        if cmds:
            self.runner.batch(cmds, ext, source="load-balancer")

    def _create_pods(self, node: str, pods: list[model.Pod]) -> dict[str, dict[str, Any]]:
        conf = self.config
        nconf = conf.node(node)
        node_ns = naming.node_netns(node)
        paths = self._cni_paths()
        conflist = self._conflist(conf, nconf)
        out: dict[str, dict[str, Any]] = {}
        nets = [naming.pod_netns(self.name, p.namespace, p.name) for p in pods]
        self.runner.batch([f"netns add {n}" for n in nets], None)
        try:
            for pod, net in zip(pods, nets, strict=True):
                self._write_pod_resolv(pod, net)
                uid = str(uuid.uuid4())
                cid = naming.container_id(pod.namespace, pod.name, uid)
                att = cni.Attachment(container_id=cid, netns=net)
                cni.add(self.runner, node_ns, cni.LOOPBACK_CONF, cni.Attachment(cid, net, "lo"),
                        paths)
                result = cni.add(self.runner, node_ns, conflist, att, paths)
                try:
                    ip = cni.result_ipv4(result)
                except LabError:  # ADD "succeeded" without an address: undo it, per the spec
                    with contextlib.suppress(LabError):
                        cni.delete(self.runner, node_ns, conflist, att, paths, result)
                    raise
                out[pod.key] = {"spec": model.pod_to_json(pod), "node": node, "ip": ip,
                                "netns": net, "uid": uid, "containerID": cid,
                                "cniResult": result, "created": time.time()}
        except BaseException:
            self._remove_pods(node, list(out.values()), best_effort=True)
            leftover = [n for n in nets if n not in {p["netns"] for p in out.values()}]
            self.runner.batch([f"netns del {n}" for n in leftover if kernel.netns_exists(n)],
                              None, check=False)
            for n in leftover:
                shutil.rmtree(Path("/etc/netns") / n, ignore_errors=True)
            raise
        return out

    def _wait_links_up(self, netns: list[str], only: str | None = None,
                       timeout: float = 3.0) -> None:
        """Wait until every link set up in `netns` is operationally up (has carrier).

        Right after the underlay is built, the first node's port on `s1` (both veth ends have
        ifindex 2) was seen NO-CARRIER, and the node unreachable, for up to 0.7 s; a first
        connection then waited for a retransmission. The lab waits instead, so a cluster that
        is "up" forwards. (Every link waited for has its far end up, so NO-CARRIER on it only
        means "not yet".)
        """
        deadline = time.monotonic() + timeout
        pending = list(netns)
        while pending and time.monotonic() < deadline:
            still = []
            for ns in pending:
                links = self.runner.json(["ip", "-j", "link", "show"] + (
                    ["dev", only] if only else []), ns)
                if any("UP" in ln.get("flags", []) and ln.get("operstate") not in
                       ("UP", "UNKNOWN") for ln in links):
                    still.append(ns)
            pending = still
            if pending:
                time.sleep(0.02)

    def _remove_pods(self, node: str, pods: list[dict[str, Any]], best_effort: bool = False
                     ) -> None:
        conf = self.config
        conflist = self._conflist(conf, conf.node(node))
        node_ns = naming.node_netns(node)
        paths = self._cni_paths()
        for p in pods:
            att = cni.Attachment(p["containerID"], p["netns"])
            try:
                cni.delete(self.runner, node_ns, conflist, att, paths,
                           prev_result=p.get("cniResult"))
            except LabError:
                if not best_effort:
                    raise
        kill_netns_processes([p["netns"] for p in pods])
        self.runner.batch([f"netns del {p['netns']}" for p in pods
                           if kernel.netns_exists(p["netns"])], None, check=not best_effort)
        for p in pods:
            shutil.rmtree(Path("/etc/netns") / p["netns"], ignore_errors=True)

    # traffic -----------------------------------------------------------------------------

    def endpoint(self, ref: str | Shell) -> tuple[str, str, str]:
        """(label, netns, ip) of a pod (`name`, `ns/name`, a unique prefix), a node, `external`,
        or a Node/PodShell object (`c.node(…)`, `c.pod(…)`)."""
        if isinstance(ref, Shell):
            label = ref.info.key if isinstance(ref, PodShell) else ref.name
            return label, ref.netns, ref.ip
        if ref == "external":
            e = self.external
            return "external", e.netns, e.ip
        nodes = self.nodes()
        for n in nodes:
            if n.name == ref:
                return n.name, n.netns, n.ip
        try:
            p = self.pod(ref)
        except LabError as e:
            if "matches several" in str(e):
                raise
            pods = ", ".join(p.key for p in self.pods()) or "none"
            raise LabError(f"no node, pod or `external` of that name in cluster `{self.name}`; "
                           f"nodes: {', '.join(n.name for n in nodes)}; pods: {pods}") from None
        return p.info.key, p.netns, p.ip

    def probe(self, src: str, dst: str, port: int | None = None, protocol: str = "TCP",
              path: str = "/hostname", timeout: float = 1.0) -> ProbeResult:
        """Open a real connection from `src` to `dst` (pod, node, `external`, or an IP).

        TCP: an HTTP GET of `path`; UDP: the agnhost `hostname` command.
        """
        src_label, src_ns, _ = self.endpoint(src)
        try:
            ipaddress.ip_address(dst)
            dst_label, ip = dst, dst
        except ValueError:
            dst_label, _, ip = self.endpoint(dst)
        protocol = protocol.upper()
        if port is None:
            port = self._default_port(dst, protocol)
        return probe_socket(src_label, src_ns, dst_label, ip, port, protocol, path, timeout)

    def probe_matrix(self, pods: Iterable[str] | None = None, port: int = 80,
                     protocol: str = "TCP", timeout: float = 1.0) -> dict[str, dict[str, bool]]:
        """Reachability from every pod to every pod (`ns/name` keys; default: every pod outside
        kube-system) on `port`/`protocol`, measured with real connections, all at once:
        `{from: {to: connected}}` like the upstream e2e suite's truth table."""
        infos = {p.key: p for p in self.pods(include_system=True)}
        keys = list(pods) if pods is not None else [p.key for p in self.pods()]
        for k in keys:
            if k not in infos:
                raise LabError(f"pod `{k}` not found; pods: {', '.join(infos) or 'none'}")
        jobs = [(infos[a].netns, infos[b].ip, port) for a in keys for b in keys]
        results = probe_many(jobs, protocol.upper(), timeout)
        it = iter(results)
        return {a: {b: next(it) for b in keys} for a in keys}

    def reachability(self, port: int = 80, protocol: str = "TCP",
                     pods: Iterable[str] | None = None, timeout: float = 1.0,
                     expected: bool = True) -> Reachability:
        """The measured matrix (`probe_matrix`) beside the policy engine's expectation: shown as
        a coloured grid in a notebook, as the e2e suite's text table in a terminal."""
        t0 = time.perf_counter()
        measured = self.probe_matrix(pods, port, protocol, timeout)
        seconds = time.perf_counter() - t0
        if not expected:
            return Reachability(measured, None, port, protocol.upper(), seconds)
        engine = self.policy_engine()
        by_key = {p.key: p for p in engine.pods}
        verdicts = {(a, b): engine.verdict(by_key[a], by_key[b], port, protocol.upper())
                    for a in measured for b in measured}
        exp = {a: {b: verdicts[(a, b)].allowed for b in measured} for a in measured}
        return Reachability(measured, exp, port, protocol.upper(), seconds, verdicts)

    def _default_port(self, dst: str, protocol: str) -> int:
        try:
            spec = model.pod_from_json(self.state["pods"][self.pod(dst).info.key]["spec"])
        except LabError:
            return 80
        tcp, udp = spec.serve_ports()
        ports = udp if protocol == "UDP" else tcp
        if not ports:
            raise LabError(f"pod `{dst}` serves no {protocol} port; give one explicitly")
        return ports[0]

    # views -------------------------------------------------------------------------------

    def journal(self, netns: str | None = None, last: int | None = None) -> JournalView:
        entries = self.runner.journal.entries()
        if netns:
            entries = [e for e in entries if e.netns == netns]
        if last:
            entries = entries[-last:]
        return JournalView(entries)

    def capture(self, where: str | Shell, *, interface: str = "any", filter: str = "",
                count: int | None = None, seconds: float | None = 2.0,
                during: Callable[[], Any] | None = None, settle: float = 0.3,
                snaplen: int | None = None, source: str = "you"
                ):  # -> lab_kit.capture.Capture
        """tcpdump in a node's, pod's or the external host's netns, decoded layer by layer.

            cap = c.capture("lab-worker2", interface="eth0", filter="udp port 8472",
                            during=lambda: c.probe("web-a", "web-b"))
            cap            # in a notebook: a table of packets, outer and inner headers
            cap.layers(0)  # one packet, header by header, with each header's size

        `source` is who the journal says ran tcpdump (a lab's check passes its own).
        """
        from lab_kit import capture
        return capture.capture(self, where, interface=interface, filter=filter, count=count,
                               seconds=seconds, during=during, settle=settle, snaplen=snaplen,
                               source=source)

    def conntrack(self, node: str | None = None, *, src: str | None = None,
                  dst: str | None = None, port: int | None = None,
                  protocol: str | None = None, nat_only: bool = True):  # -> FlowTable
        """Conntrack entries with their NAT mapping (one node, or every node):

            c.conntrack(dst=c.service("web")["spec"]["clusterIP"])
        """
        from lab_kit import svcdebug
        return svcdebug.conntrack(self, node, src=src, dst=dst, port=port, protocol=protocol,
                                  nat_only=nat_only)

    def packet_walk(self, src: str, dst: str, port: int, protocol: str = "TCP"):  # -> Walk
        """Send one new connection and list the chains and rules its first packet passed on
        each node (the kernel's nftrace), with each rule's live counter."""
        from lab_kit import svcdebug
        walk, _result = svcdebug.packet_walk(self, src, dst, port, protocol)
        return walk

    def diagram(self, show_routes: bool = True):  # -> graphviz.Digraph
        from lab_kit import observe, viz
        return viz.cluster_diagram(observe.snapshot(self), show_routes=show_routes)

    def status(self) -> dict[str, Any]:
        st = self.state
        nets = [n for n in kernel.list_netns() if naming.owns_netns(self.name, n)]
        return {"name": self.name, "status": st["status"], "nodes": len(self.nodes()),
                "pods": len(st["pods"]), "netns": len(nets), "stateDir": str(self.store.dir),
                "cni": st["config"]["networking"]["cni"]}

    def netns_name(self, pod: str, namespace: str = "default") -> str:
        """The netns name a pod called `pod` gets (for building one by hand in the labs)."""
        return naming.pod_netns(self.name, namespace, pod)


def _with_nodes(conf: config.ClusterConfig, nodes: tuple[config.NodeConfig, ...]
                ) -> config.ClusterConfig:
    return dataclasses.replace(conf, nodes=nodes)


def _next_node(conf: config.ClusterConfig, role: str, labels: dict[str, str]
               ) -> config.NodeConfig:
    """A new node as kind would name it, with the lowest free underlay IP and pod /24."""
    names = {n.name for n in conf.nodes}
    i = 1
    while (name := f"{conf.name}-{role}" + ("" if i == 1 else str(i))) in names:
        i += 1
    used_ips = {n.ip for n in conf.nodes}
    ip = next((f"172.18.0.{k}" for k in range(2, config.MAX_NODES + 2)
               if f"172.18.0.{k}" not in used_ips), None)
    if ip is None:
        raise LabError(f"cluster `{conf.name}` already has {config.MAX_NODES} nodes, the most "
                       "the lab's underlay addressing allows")
    used = [ipaddress.ip_network(n.pod_cidr) for n in conf.nodes]
    cidr = next((s for s in ipaddress.ip_network(conf.pod_subnet).subnets(new_prefix=24)
                 if not any(s.overlaps(u) for u in used)), None)
    if cidr is None:
        raise LabError(f"the podSubnet {conf.pod_subnet} has no free /24 for another node")
    return config.NodeConfig(name=name, role=role, ip=ip, pod_cidr=str(cidr), labels=labels)


def _preflight(conf: config.ClusterConfig) -> None:
    """Fail before any kernel change if a plugin or daemon the config needs is missing."""
    paths = cni.cni_path()
    plugins = [("networking.cniPlugin", conf.cni_plugin)]
    plugins += [(f"nodes[{i}].cniPlugin", n.cni_plugin) for i, n in enumerate(conf.nodes)
                if n.cni_plugin]
    for fld, name in plugins + [(None, "host-local"), (None, "loopback")]:
        try:
            cni.find_plugin(name, paths)
        except LabError as e:
            raise ConfigError(str(e), file=conf.source, obj="Cluster", field=fld,
                              fix=None if fld else "run scripts/setup.sh") from None
    if shutil.which("dnsmasq") is None:
        raise ConfigError("the `external` host's DNS server needs dnsmasq, which is not "
                          "installed", file=conf.source, obj="Cluster",
                          fix="run scripts/setup.sh (it installs Debian's dnsmasq-base)")
    if conf.cni == "bgp" and (shutil.which("bird") is None or shutil.which("birdc") is None):
        raise ConfigError("the bgp backend needs BIRD 2 (bird and birdc), which is not "
                          "installed", file=conf.source, obj="Cluster", field="networking.cni",
                          fix="run scripts/setup.sh (it installs Debian's bird2)")


def _pod_ref(p: dict[str, Any]) -> netpol.PodRef:
    """A stored pod as the policy engine sees it (named ports, host-side veth)."""
    spec = p["spec"]
    ports = tuple((x["name"], x["protocol"], x["port"]) for c in spec["containers"]
                  for x in c.get("ports") or () if x.get("name"))
    iface = next((i["name"] for i in (p.get("cniResult") or {}).get("interfaces", [])
                  if not i.get("sandbox") and i.get("name", "").startswith("veth")), "")
    return netpol.PodRef(spec["namespace"], spec["name"], p["ip"], dict(spec.get("labels") or {}),
                         ports, p["node"], iface)


def _pod_info(p: dict[str, Any]) -> PodInfo:
    spec = model.pod_from_json(p["spec"])
    tcp, udp = spec.serve_ports()
    return PodInfo(spec.namespace, spec.name, p["node"], p["ip"], p["netns"], spec.labels,
                   tuple(dict.fromkeys(tcp + udp)), spec.owner)


class JournalView(list):
    def __str__(self) -> str:
        return "\n".join(e.command() for e in self)

    def _repr_html_(self) -> str:
        import html
        rows = "".join(
            f"<tr><td>{html.escape(e.source)}</td><td>{html.escape(e.netns or '(root)')}</td>"
            f"<td><code>{html.escape(e.command())}</code></td><td>{e.rc}</td></tr>" for e in self)
        return ("<table><tr><th>by</th><th>netns</th><th>command</th><th>rc</th></tr>"
                f"{rows}</table>")


# --- planning (pure: state + objects -> what to change) ---------------------------------------

@dataclass
class Plan:
    namespaces: dict[str, Any] = field(default_factory=dict)
    delete_namespaces: list[str] = field(default_factory=list)
    deployments: dict[str, Any] = field(default_factory=dict)
    delete_deployments: list[str] = field(default_factory=list)
    create_pods: list[tuple[model.Pod, str]] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    relabel: dict[str, dict[str, str]] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)
    delete_services: list[str] = field(default_factory=list)
    policies: dict[str, Any] = field(default_factory=dict)
    delete_policies: list[str] = field(default_factory=list)
    # Ingresses, IngressClasses and Secrets: state key -> {object key: stored entry}
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    delete_objects: dict[str, list[str]] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


def _schedulable(conf: config.ClusterConfig) -> list[str]:
    workers = [n.name for n in conf.nodes if n.role == "worker"]
    # kind taints control-plane nodes NoSchedule unless the cluster has no workers
    return workers or [n.name for n in conf.nodes]


def _plan_apply(state: dict[str, Any], conf: config.ClusterConfig,
                objs: list[tuple[model.Object, model.Source]]) -> Plan:
    plan = Plan()
    namespaces = set(state["namespaces"])
    for o, _ in objs:
        if isinstance(o, model.Namespace):
            old = state["namespaces"].get(o.name)
            plan.namespaces[o.name] = {"labels": o.labels}
            namespaces.add(o.name)
            verb = "created" if old is None else (
                "unchanged" if old.get("labels") == o.labels else "configured")
            plan.messages.append(f"namespace/{o.name} {verb}")
    load = {n.name: 0 for n in conf.nodes}
    for p in state["pods"].values():
        load[p["node"]] = load.get(p["node"], 0) + 1
    pending: set[str] = set()  # pod keys this apply creates

    def place(pod: model.Pod, src: model.Source, obj: str, fld: str) -> None:
        if pod.node_name is not None:
            if pod.node_name not in load:
                raise ConfigError(f"node {pod.node_name!r} does not exist; nodes: "
                                  f"{', '.join(load)}", file=src.file, obj=obj, field=fld)
            node = pod.node_name
        else:
            cands = _schedulable(conf)
            node = min(cands, key=lambda n: (load[n], cands.index(n)))
        if load[node] >= conf.node(node).pod_capacity:
            raise ConfigError(f"node {node!r} has no free pod IP: its pod CIDR "
                              f"{conf.node(node).pod_cidr} is exhausted "
                              f"({conf.node(node).pod_capacity} pods)", file=src.file, obj=obj,
                              field=fld if pod.node_name else None,
                              fix="delete pods or add nodes to the cluster config")
        load[node] += 1
        plan.create_pods.append((pod, node))
        pending.add(pod.key)

    for o, src in objs:
        if isinstance(o, model.Namespace):
            continue
        if isinstance(o, model.IngressClass):  # cluster-scoped
            _plan_object(plan, state, o, model.ingress_class_to_json(o))
            continue
        if isinstance(o, gw.GatewayClass):  # cluster-scoped
            _plan_object(plan, state, o, gw.gateway_class_to_json(o))
            continue
        obj = f"{type(o).__name__}/{o.namespace}/{o.name}"
        if o.namespace not in namespaces:
            raise ConfigError(f'namespace "{o.namespace}" not found', file=src.file, obj=obj,
                              field="metadata.namespace",
                              fix="create it first (kind: Namespace), e.g. in the same file")
        if isinstance(o, model.Pod):
            old = state["pods"].get(o.key)
            if old is None:
                if o.key in pending:
                    raise ConfigError(f"pod {o.key!r} is already created by a Deployment in "
                                      "this input", file=src.file, obj=obj,
                                      field="metadata.name")
                place(o, src, obj, "spec.nodeName")
                plan.messages.append(f"pod/{o.name} created")
                continue
            old_pod = model.pod_from_json(old["spec"])
            if old_pod.owner and old_pod.owner != o.owner:
                raise ConfigError(f"pod {o.key!r} already exists, owned by {old_pod.owner}",
                                  file=src.file, obj=obj, field="metadata.name",
                                  fix="pick another name")
            if old_pod.spec_dict() != o.spec_dict():
                raise ConfigError("pod updates may not change fields other than labels "
                                  "(spec is immutable)", file=src.file, obj=obj, field="spec",
                                  fix="delete the pod and apply it again")
            if old_pod.labels != o.labels:
                plan.relabel[o.key] = o.labels
                plan.messages.append(f"pod/{o.name} configured")
            else:
                plan.messages.append(f"pod/{o.name} unchanged")
        elif isinstance(o, model.Service):
            stored = state.get("services") or {}
            spec = services.allocate(o, stored, conf, src,
                                     [v["spec"] for v in plan.services.values()])
            old = stored.get(o.key)
            plan.services[o.key] = {"spec": spec,
                                    "created": old["created"] if old else time.time()}
            verb = "created" if old is None else (
                "unchanged" if old["spec"] == spec else "configured")
            plan.messages.append(f"service/{o.name} {verb}")
        elif isinstance(o, netpol.NetworkPolicy):
            stored = state.get("networkpolicies") or {}
            old = stored.get(o.key)
            spec = netpol.policy_to_json(o)
            plan.policies[o.key] = {"spec": spec,
                                    "created": old["created"] if old else time.time()}
            verb = "created" if old is None else (
                "unchanged" if old["spec"] == spec else "configured")
            plan.messages.append(f"networkpolicy.networking.k8s.io/{o.name} {verb}")
        elif isinstance(o, ingress.Ingress):
            ing = o
            if ing.ingress_class is None:  # the DefaultIngressClass admission plugin
                default = _default_ingress_class(state, plan)
                if default is not None:
                    ing = dataclasses.replace(
                        ing, ingress_class=default, spec={**ing.spec, "ingressClassName": default})
            _plan_object(plan, state, o, ingress.ingress_to_json(ing))
        elif isinstance(o, ingress.Secret):
            _plan_object(plan, state, o, ingress.secret_to_json(o))
        elif isinstance(o, masq.ConfigMap):
            if o.key == f"{masq.NAMESPACE}/{masq.NAME}":
                masq.parse_masq_config(o, file=src.file)  # refused before anything changes
            _plan_object(plan, state, o, masq.configmap_to_json(o))
        elif isinstance(o, gw.Gateway):
            _plan_object(plan, state, o, gw.gateway_to_json(o))
        elif isinstance(o, gw.HTTPRoute):
            _plan_object(plan, state, o, gw.httproute_to_json(o))
        elif isinstance(o, gw.ReferenceGrant):
            _plan_object(plan, state, o, gw.reference_grant_to_json(o))
        elif isinstance(o, model.Deployment):
            old = state["deployments"].get(o.key)
            plan.deployments[o.key] = model.deployment_to_json(o)
            want = {o.pod(i).key: o.pod(i) for i in range(o.replicas)}
            have = {k for k, p in state["pods"].items()
                    if p["spec"].get("owner") == f"Deployment/{o.name}"
                    and p["spec"]["namespace"] == o.namespace}
            for key in sorted(have - set(want)):
                plan.delete_pods.append(key)
                load[state["pods"][key]["node"]] -= 1
            for key, pod in want.items():
                if key in have:
                    continue
                other = state["pods"].get(key)
                if other is not None or key in pending:
                    raise ConfigError(f"pod name {key!r} is already taken", file=src.file,
                                      obj=obj, field="metadata.name")
                place(pod, src, obj, "spec.template.spec.nodeName")
            verb = "created" if old is None else (
                "unchanged" if old == plan.deployments[o.key] else "configured")
            plan.messages.append(f"deployment.apps/{o.name} {verb}")
    return plan


def _plan_object(plan: Plan, state: dict[str, Any], o: model.Object, spec: dict[str, Any]
                 ) -> None:
    """Record one Ingress, IngressClass or Secret of an apply (its first creation time kept:
    the oldest Ingress wins a conflict)."""
    what, resource = STORED_KINDS[type(o)]
    old = (state.get(what) or {}).get(o.key)
    plan.objects.setdefault(what, {})[o.key] = {
        "spec": spec, "created": old["created"] if old else time.time()}
    verb = "created" if old is None else ("unchanged" if old["spec"] == spec else "configured")
    plan.messages.append(f"{resource}/{o.name} {verb}")


def _default_ingress_class(state: dict[str, Any], plan: Plan) -> str | None:
    """The IngressClass marked default (in the state or this same apply), if exactly one."""
    classes = {**(state.get("ingressclasses") or {}), **plan.objects.get("ingressclasses", {})}
    defaults = sorted(k for k, v in classes.items() if v["spec"]["default"])
    return defaults[0] if len(defaults) == 1 else None


def _plan_delete(state: dict[str, Any], objs: list[tuple[model.Object, model.Source]]) -> Plan:
    plan = Plan()
    for o, src in objs:
        if isinstance(o, model.Pod):
            if o.key in state["pods"]:
                plan.delete_pods.append(o.key)
                plan.messages.append(f'pod "{o.name}" deleted')
            else:
                plan.messages.append(f'pod "{o.name}" not found')
        elif isinstance(o, model.Deployment):
            if o.key in state["deployments"]:
                plan.delete_deployments.append(o.key)
                plan.delete_pods += [k for k, p in state["pods"].items()
                                     if p["spec"].get("owner") == f"Deployment/{o.name}"
                                     and p["spec"]["namespace"] == o.namespace]
                plan.messages.append(f'deployment.apps "{o.name}" deleted')
            else:
                plan.messages.append(f'deployment.apps "{o.name}" not found')
        elif isinstance(o, model.Service):
            if o.key in (state.get("services") or {}):
                plan.delete_services.append(o.key)
                plan.messages.append(f'service "{o.name}" deleted')
            else:
                plan.messages.append(f'service "{o.name}" not found')
        elif isinstance(o, netpol.NetworkPolicy):
            if o.key in (state.get("networkpolicies") or {}):
                plan.delete_policies.append(o.key)
                plan.messages.append(f'networkpolicy.networking.k8s.io "{o.name}" deleted')
            else:
                plan.messages.append(f'networkpolicy.networking.k8s.io "{o.name}" not found')
        elif type(o) in STORED_KINDS:
            what, kind = STORED_KINDS[type(o)]
            if o.key in (state.get(what) or {}):
                plan.delete_objects.setdefault(what, []).append(o.key)
                plan.messages.append(f'{kind} "{o.name}" deleted')
            else:
                plan.messages.append(f'{kind} "{o.name}" not found')
        elif isinstance(o, model.Namespace):
            if o.name in model.SYSTEM_NAMESPACES:
                raise ConfigError(f"namespace {o.name!r} is a system namespace and cannot be "
                                  "deleted", file=src.file, obj=f"Namespace/{o.name}",
                                  field="metadata.name")
            if o.name in state["namespaces"]:
                plan.delete_namespaces.append(o.name)
                plan.delete_deployments += [k for k in state["deployments"]
                                            if k.startswith(o.name + "/")]
                plan.delete_pods += [k for k in state["pods"] if k.startswith(o.name + "/")]
                plan.delete_services += [k for k in state.get("services") or {}
                                         if k.startswith(o.name + "/")]
                plan.delete_policies += [k for k in state.get("networkpolicies") or {}
                                         if k.startswith(o.name + "/")]
                for what in ("ingresses", "secrets", "configmaps", "gateways", "httproutes",
                             "referencegrants"):
                    plan.delete_objects.setdefault(what, []).extend(
                        k for k in state.get(what) or {} if k.startswith(o.name + "/"))
                plan.messages.append(f'namespace "{o.name}" deleted')
    plan.delete_pods = sorted(set(plan.delete_pods))
    return plan


def _stamp_conditions(new: Any, old: Any, now: str | None = None) -> None:
    """Give every condition in `new` a lastTransitionTime: the old one where the same condition
    (by its place in the status) kept its status, else now."""
    import datetime
    now = now or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(new, dict):
        if "conditions" in new and isinstance(new["conditions"], list):
            was = {c["type"]: c for c in old.get("conditions", [])} \
                if isinstance(old, dict) else {}
            for c in new["conditions"]:
                prev = was.get(c["type"])
                c["lastTransitionTime"] = prev["lastTransitionTime"] if prev and \
                    prev["status"] == c["status"] and "lastTransitionTime" in prev else now
        for k, v in new.items():
            if k != "conditions":
                _stamp_conditions(v, old.get(k) if isinstance(old, dict) else None, now)
    elif isinstance(new, list):
        olds = old if isinstance(old, list) else []
        for i, v in enumerate(new):
            _stamp_conditions(v, olds[i] if i < len(olds) else None, now)


def _stored_ingresses(state: dict[str, Any]) -> list[ingress.Ingress]:
    """The stored Ingresses, oldest first (the oldest wins a host+path conflict)."""
    stored = sorted((state.get("ingresses") or {}).values(),
                    key=lambda v: (v["created"], v["spec"]["namespace"], v["spec"]["name"]))
    return [ingress.ingress_from_json(v["spec"]) for v in stored]


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (an nginx master's workers)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(") ", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _accepting(pid: int) -> bool:
    """An nginx worker that may still accept connections: alive, and not yet "shutting
    down" (nginx sets that title right before it closes its listening sockets)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"worker process" in title and b"shutting down" not in title


def _warn_neighbour_limit(pods: int) -> None:
    limit = kernel.neighbour_limit()
    if limit is not None and 2 * pods > limit:
        import warnings
        warnings.warn(
            f"{pods} pods need about {2 * pods} ARP entries, more than this kernel keeps "
            f"(net.ipv4.neigh.default.gc_thresh3 = {limit}, shared by every namespace): "
            "connections will time out while entries are evicted. lab_kit leaves that host "
            "setting alone; raise it yourself (e.g. sysctl -w "
            "net.ipv4.neigh.default.gc_thresh3=16384) or use fewer pods.",
            RuntimeWarning, stacklevel=4)


def _settle(fn: Callable[..., Any], *args: Any) -> tuple[Any, BaseException | None]:
    """(result, None) or (None, the exception): for collecting every thread's outcome."""
    try:
        return fn(*args), None
    except BaseException as e:  # re-raised by the caller after all threads are done
        return None, e


def dns_server_pids(inode: int) -> list[int]:
    """The cluster DNS server processes in the netns `inode`. Only servers count: any other
    process there (a `lab-kit exec` in the pod, a probe) is not the pod's program."""
    out = []
    for pid in kernel.pids_in_netns({inode}):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"lab_kit.dnsserver" in cmd:
            out.append(pid)
    return sorted(out)


def _parallel(items: Iterable[Any], fn: Callable[[Any], Any]) -> list[Any]:
    items = list(items)
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as ex:
        return list(ex.map(fn, items))


# --- the underlay (Mininet) ------------------------------------------------------------------

def _build_underlay(runner: Runner, conf: config.ClusterConfig) -> None:
    """Nodes and the external host as Mininet hosts on a Mininet LinuxBridge `s1`.

    The switch runs in its own netns (`inNamespace=True`), so the lab adds nothing to the host's
    root namespace. Each Mininet host's netns is then given a name (`ip netns attach`), which
    keeps it alive after this process and Mininet's shells exit.
    """
    from mininet.log import setLogLevel
    from mininet.net import Mininet
    from mininet.nodelib import LinuxBridge

    setLogLevel("error")  # Mininet warns about br_netfilter; the underlay bridge is in its own ns
    # Mininet.init() would raise the *host's* sysctls (TCP buffers, ARP cache, pty.max) and
    # rlimits; the lab's few hosts need none of it, and the host must stay untouched.
    Mininet.inited = True
    net = Mininet(controller=None, build=False, autoSetMacs=False, ipBase=config.UNDERLAY_SUBNET,
                  waitConnected=False)
    hosts = []
    try:
        sw = net.addSwitch("s1", cls=LinuxBridge, inNamespace=True, dpid="1")
        runner.note(["mininet", "addSwitch", "s1", "cls=LinuxBridge", "inNamespace=True"])
        members = [(n.name, n.ip, naming.node_netns(n.name)) for n in conf.nodes]
        members.append(("external", config.EXTERNAL_IP, naming.external_netns(conf.name)))
        for i, (name, ip, _ns) in enumerate(members):
            h = net.addHost(name if name != "external" else f"{conf.name}-external",
                            ip=f"{ip}/16")
            net.addLink(h, sw, intfName1="eth0", intfName2=f"s1-eth{i + 1}")
            runner.note(["mininet", "addHost", h.name, f"ip={ip}/16"])
            runner.note(["mininet", "addLink", f"{h.name}:eth0", f"s1:s1-eth{i + 1}"])
            hosts.append(h)
        net.build()
        net.start()
        runner.note(["mininet", "start"])
        for h, (_name, _ip, ns) in zip(hosts, members, strict=True):
            runner.run(["ip", "netns", "attach", ns, str(h.pid)])
        runner.run(["ip", "netns", "attach", naming.underlay_netns(conf.name), str(sw.pid)])
        # Mininet sometimes leaves a host's eth0 down for a while; bring every end up now
        for _name, _ip, ns in members:
            runner.run(["ip", "link", "set", "eth0", "up"], ns)
            _tune_underlay_arp(runner, ns)
    finally:
        # Mininet's shells are no longer needed: the named netns keep the namespaces alive.
        # terminate() is Mininet's own undo (SIGHUP the shell, close its pty, wait for it).
        for node in [*net.hosts, *net.switches]:
            if node.shell is not None:
                with contextlib.suppress(Exception):
                    node.terminate()
                with contextlib.suppress(Exception):
                    node.stdout.close()  # the pty's master end, which terminate() leaves open


def _tune_underlay_arp(runner: Runner, netns: str) -> None:
    """Retry an unanswered ARP on the underlay after 0.1 s instead of 1 s.

    On a freshly built underlay the very first ARP request between two hosts is sometimes
    lost; the packet waiting for the answer (a pod's SYN, say) then waits for the kernel's
    ARP retry. This is a per-namespace setting of the node's eth0; the host is untouched.
    """
    runner.run(["sysctl", "-q", "-w", "net.ipv4.neigh.eth0.retrans_time_ms=100"], netns)


# --- probing ---------------------------------------------------------------------------------

def probe_socket(src_label: str, src_ns: str | None, dst_label: str, ip: str, port: int,
                 protocol: str, path: str, timeout: float, sport: int = 0) -> ProbeResult:
    """One real connection (TCP: an HTTP GET; UDP: agnhost's `hostname`), from source port
    `sport` when given (0: the kernel picks one)."""
    t0 = time.perf_counter()
    base = {"src": src_label, "dst": dst_label, "ip": ip, "port": port, "protocol": protocol}
    try:
        if protocol == "UDP":
            s = kernel.socket_in(src_ns, socket.AF_INET, socket.SOCK_DGRAM)
            with s:
                s.settimeout(timeout)
                if sport:
                    s.bind(("0.0.0.0", sport))
                s.connect((ip, port))
                s.send(b"hostname")
                reply = s.recv(65535).decode(errors="replace")
        elif protocol == "TCP":
            s = kernel.socket_in(src_ns, socket.AF_INET, socket.SOCK_STREAM)
            with s:
                s.settimeout(timeout)
                if sport:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("0.0.0.0", sport))
                s.connect((ip, port))
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            status = head.split(b" ", 2)[1:2]
            reply = body.decode(errors="replace")
            if not status or not status[0].startswith(b"2"):
                return ProbeResult(**base, ok=False, error=f"HTTP {head[:40]!r}",
                                   ms=(time.perf_counter() - t0) * 1000)
        else:
            raise LabError(f"protocol {protocol!r}: use TCP or UDP")
    except TimeoutError:
        return ProbeResult(**base, ok=False, error=f"timed out after {timeout:g} s",
                           ms=(time.perf_counter() - t0) * 1000)
    except OSError as e:
        return ProbeResult(**base, ok=False, error=e.strerror or str(e),
                           ms=(time.perf_counter() - t0) * 1000)
    return ProbeResult(**base, ok=True, reply=reply, ms=(time.perf_counter() - t0) * 1000)


_udp_sport = [random.randrange(20000, 60000)]


def _bind_fresh_port(s: socket.socket) -> None:
    """Bind a UDP probe to a source port this process has not used lately (a rotating counter
    from a random start). The kernel's ephemeral pick may reuse a recent port, and then the
    probe matches the conntrack entry of an earlier, allowed flow (UDP entries live 30 s) and
    passes as ESTABLISHED, although a policy now blocks new flows."""
    for _ in range(20):
        _udp_sport[0] = 20000 + (_udp_sport[0] + 1 - 20000) % 40000
        try:
            s.bind(("0.0.0.0", _udp_sport[0]))
            return
        except OSError:
            continue


def probe_many(jobs: list[tuple[str | None, str, int]], protocol: str,
               timeout: float = 1.0) -> list[bool]:
    """Many real connections at once, from one thread: each job is (source netns, destination
    IP, port). TCP: connect, `GET /hostname`, an HTTP 2xx reply; UDP: agnhost's `hostname`, any
    reply. A connection still unanswered after `timeout` seconds counts as blocked (a policy
    drops packets, so a blocked one never answers)."""
    import selectors
    if protocol not in ("TCP", "UDP"):
        raise LabError(f"protocol {protocol!r}: use TCP or UDP")
    kind = socket.SOCK_DGRAM if protocol == "UDP" else socket.SOCK_STREAM
    socks: list[socket.socket | None] = [None] * len(jobs)
    by_ns: dict[str | None, list[int]] = {}
    for i, (ns, _, _) in enumerate(jobs):
        by_ns.setdefault(ns, []).append(i)
    for ns, idx in by_ns.items():  # one setns per source, not per socket
        ctx = kernel.in_netns(ns) if ns else contextlib.nullcontext()
        with ctx:
            for i in idx:
                socks[i] = socket.socket(socket.AF_INET, kind | socket.SOCK_NONBLOCK)
    ok = [False] * len(jobs)
    buf: dict[int, bytes] = {}
    sel = selectors.DefaultSelector()
    try:
        for i, (_, ip, port) in enumerate(jobs):
            s = socks[i]
            assert s is not None
            if protocol == "UDP":
                try:
                    _bind_fresh_port(s)
                    s.connect((ip, port))
                    s.send(b"hostname")
                except OSError:
                    continue
                sel.register(s, selectors.EVENT_READ, i)
            else:
                if s.connect_ex((ip, port)) not in (0, errno.EINPROGRESS):
                    continue
                sel.register(s, selectors.EVENT_WRITE, i)
        deadline = time.monotonic() + timeout
        while sel.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                s, i = key.fileobj, key.data
                assert isinstance(s, socket.socket)
                try:
                    if protocol == "UDP":
                        ok[i] = bool(s.recv(65535))
                        sel.unregister(s)
                    elif key.events == selectors.EVENT_WRITE:
                        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                            sel.unregister(s)
                            continue
                        s.send(f"GET /hostname HTTP/1.0\r\nHost: {jobs[i][1]}\r\n\r\n"
                               .encode())
                        sel.modify(s, selectors.EVENT_READ, i)
                        buf[i] = b""
                    else:
                        chunk = s.recv(65536)
                        buf[i] += chunk
                        if not chunk:
                            status = buf[i].split(b" ", 2)[1:2]
                            ok[i] = bool(status) and status[0].startswith(b"2")
                            sel.unregister(s)
                except OSError:
                    sel.unregister(s)
    finally:
        sel.close()
        for s in socks:
            if s is not None:
                s.close()
    return ok


# --- teardown --------------------------------------------------------------------------------

def _daemon(argv: list[str], log: Path) -> None:
    """Start a lab server (`argv` ends in `setsid -f python -m lab_kit.…`) with lab_kit on its
    path. `setsid -f` forks: the server is a daemon re-parented to init, not a child of this
    (possibly long-lived notebook) process that would linger as a zombie after `down`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log, "ab") as out:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                       close_fds=True, check=True, timeout=10)


def kill_netns_processes(netns: list[str]) -> None:
    inodes = {i for i in (kernel.netns_inode(n) for n in netns) if i is not None}
    if not inodes:
        return
    pids = kernel.pids_in_netns(inodes)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 1.0
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if pids:
                time.sleep(0.01)
        if not pids:
            return


def _alive(pid: int) -> bool:
    """`pid` runs (a zombie does not). A process that exits between `open` and `read` makes
    the read fail with ESRCH (ProcessLookupError): gone too."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def sweep(cluster: str, runner: Runner) -> None:
    """Remove every kernel object of `cluster`, found by name, whatever the state file says.

    Processes in the cluster's namespaces (test servers, daemons, a learner's `socat`) are
    killed, the namespaces deleted (which deletes every link in them), and per-netns config
    dirs under /etc/netns removed. Works after a crash or a SIGKILL of the creating process.
    """
    nets = [n for n in kernel.list_netns() if naming.owns_netns(cluster, n)]
    kill_netns_processes(nets)
    # pods first, then nodes, then the underlay: no veth peer is left dangling in between
    order = sorted(nets, key=lambda n: (0 if "." in n else 1 if not n.endswith("-underlay")
                                        else 2, n))
    runner.batch([f"netns del {n}" for n in order], None, check=False, force=True)
    for n in order:
        if kernel.netns_exists(n):  # e.g. `ip -batch` stopped at a failing line
            runner.run(["ip", "netns", "del", n], check=False)
        etc = Path("/etc/netns") / n
        if etc.is_dir():
            shutil.rmtree(etc, ignore_errors=True)
    for d in SOCKET_ROOT.glob(f"{cluster}-*"):  # control sockets of crashed test servers
        shutil.rmtree(d, ignore_errors=True)
    with contextlib.suppress(OSError):
        SOCKET_ROOT.rmdir()  # only if no other cluster has sockets


def sweep_all(runner: Runner) -> list[str]:
    """Remove every lab cluster on this machine (`lab-kit down --all`)."""
    clusters = {c for c in (naming.cluster_of_netns(n) for n in kernel.list_netns()) if c}
    for c in sorted(clusters):
        sweep(c, runner)
    return sorted(clusters)
