"""How pods on different nodes reach each other: the three CNI backends.

Each backend is a pure renderer (config -> the routes, devices, neighbour and FDB entries, or
bird.conf a node should have) plus a reconciler that reads the node's live kernel state and
changes only what differs, so adding or removing a node converges every other node.

- **host-gw** (Flannel's host-gw): a route per remote node's pod CIDR via that node's underlay IP.
- **vxlan** (Flannel's default): a `flannel.1` VXLAN device per node (VNI 1, UDP 8472,
  `nolearning`, MTU 1450, the node's pod network address as a /32); per remote node an onlink
  route via `flannel.1`, a permanent neighbour entry and an FDB entry pointing at its IP.
- **bgp** (Calico's approach without encapsulation): a BIRD 2 daemon per node announces the
  node's pod CIDR to its peers (a full node-to-node mesh, or route reflectors on the
  control-plane nodes); BIRD installs what it learns into the kernel as `proto bird`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lab_kit import naming
from lab_kit.config import VXLAN_MTU, ClusterConfig, NodeConfig
from lab_kit.errors import LabError

if TYPE_CHECKING:
    from lab_kit.kernel import Runner

VXLAN_DEV = "flannel.1"  # flannel.<VNI>
VXLAN_VNI = 1
VXLAN_PORT = 8472  # the Linux kernel's VXLAN default, which Flannel keeps (IANA's is 4789)
BGP_AS = 64512  # Calico's default AS number
RTPROT_BIRD = "bird"  # iproute2's name for route protocol 12


# --- pure renderers ----------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Route:
    dst: str
    via: str
    dev: str
    onlink: bool = False

    def command(self, verb: str = "replace") -> str:
        """The `ip route` line (for `ip -batch`)."""
        return f"route {verb} {self.dst} via {self.via} dev {self.dev}" + (
            " onlink" if self.onlink else "")


@dataclass(frozen=True, order=True)
class Neighbour:
    ip: str
    mac: str
    dev: str = VXLAN_DEV


@dataclass(frozen=True, order=True)
class FdbEntry:
    mac: str
    dst: str
    dev: str = VXLAN_DEV


def vtep_mac(node: NodeConfig) -> str:
    """The MAC of a node's `flannel.1`.

    Flannel picks a random MAC and publishes it in the node annotation
    `flannel.alpha.coreos.com/backend-data`; the lab derives a stable one from the node's IP
    (locally administered, unicast) so every node can compute every other node's.
    """
    h = hashlib.sha256(f"vtep:{node.ip}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0E, *h[:5]))


def vtep_ip(node: NodeConfig) -> str:
    """The /32 address of `flannel.1`: the network address of the node's pod CIDR."""
    return str(ipaddress.ip_network(node.pod_cidr).network_address)


def peers(conf: ClusterConfig, node: NodeConfig) -> list[NodeConfig]:
    return [o for o in conf.nodes if o.name != node.name]


def hostgw_routes(conf: ClusterConfig, node: NodeConfig) -> list[Route]:
    return sorted(Route(o.pod_cidr, o.ip, "eth0") for o in peers(conf, node))


def vxlan_device_commands(node: NodeConfig) -> list[str]:
    """`ip -batch` lines creating `flannel.1` on `node` (as flanneld's vxlan backend does)."""
    return [
        f"link add {VXLAN_DEV} type vxlan id {VXLAN_VNI} local {node.ip} dev eth0 "
        f"dstport {VXLAN_PORT} nolearning",
        f"link set {VXLAN_DEV} address {vtep_mac(node)} mtu {VXLAN_MTU}",
        f"addr add {vtep_ip(node)}/32 dev {VXLAN_DEV}",
        f"link set {VXLAN_DEV} up",
    ]


def vxlan_peer_entries(conf: ClusterConfig, node: NodeConfig
                       ) -> tuple[list[Route], list[Neighbour], list[FdbEntry]]:
    """Per remote node: route via its VTEP IP (onlink), its VTEP's ARP entry, its FDB entry."""
    routes, neigh, fdb = [], [], []
    for o in peers(conf, node):
        routes.append(Route(o.pod_cidr, vtep_ip(o), VXLAN_DEV, onlink=True))
        neigh.append(Neighbour(vtep_ip(o), vtep_mac(o)))
        fdb.append(FdbEntry(vtep_mac(o), o.ip))
    return sorted(routes), sorted(neigh), sorted(fdb)


def bgp_peers(conf: ClusterConfig, node: NodeConfig) -> list[tuple[NodeConfig, bool]]:
    """(peer, peer_is_my_rr_client) for `node`.

    node-mesh: every node peers with every other node (Calico's default node-to-node mesh).
    route-reflector: control-plane nodes are the reflectors; each worker peers only with them,
    reflectors peer with each other and with every worker (as their route-reflector clients).
    """
    others = peers(conf, node)
    if conf.bgp_peering == "node-mesh":
        return [(o, False) for o in others]
    if node.role == "control-plane":
        return [(o, o.role != "control-plane") for o in others]
    return [(o, False) for o in others if o.role == "control-plane"]


def bgp_protocol_name(peer: NodeConfig, reflector: bool) -> str:
    # Calico names mesh sessions Mesh_<ip with underscores>, explicit peers Node_<ip>
    prefix = "Node" if reflector else "Mesh"
    return f"{prefix}_{peer.ip.replace('.', '_')}"


def render_bird_conf(conf: ClusterConfig, node: NodeConfig, log_file: str | None = None) -> str:
    """bird.conf for `node`: the shape of Calico's confd-generated config, without IPIP."""
    rr = conf.bgp_peering == "route-reflector"
    lines = [
        f"# BIRD 2 configuration of node {node.name}, rendered by lab_kit",
        "# (the layout of Calico's calico-node: mesh/peer sessions, pod routes only)",
        f"router id {node.ip};",
    ]
    if log_file:
        lines.append(f'log "{log_file}" all;')
    lines += [
        "",
        "# announce pod routes only, never the underlay or anything else",
        "filter calico_export_to_bgp_peers {",
        f"  if net ~ [ {conf.pod_subnet}+ ] then accept;",
        "  reject;",
        "}",
        "",
        "# install what peers announce; this node's own pod CIDR is already on cni0",
        "filter calico_kernel_programming {",
        '  if proto = "pod_cidr" then reject;',
        "  accept;",
        "}",
        "",
        "protocol device {",
        "  scan time 10;",
        "}",
        "",
        "protocol kernel {",
        "  ipv4 {",
        "    import none;",
        "    export filter calico_kernel_programming;",
        "  };",
        "  merge paths on;  # ECMP when two peers announce the same prefix",
        "  scan time 10;",
        "}",
        "",
        "# this node's pod CIDR, announced as a whole block (Calico installs a blackhole route",
        "# for each local IPAM block and announces it the same way)",
        "protocol static pod_cidr {",
        "  ipv4;",
        f"  route {node.pod_cidr} blackhole;",
        "}",
        "",
        "template bgp bgp_template {",
        f"  local {node.ip} as {BGP_AS};",
        "  direct;  # iBGP is multihop by default; the nodes share one L2 underlay",
        "  ipv4 {",
        "    import all;",
        "    export filter calico_export_to_bgp_peers;",
        "    gateway direct;  # peers share the underlay: the next hop is the announcing node",
        "  };",
        "  connect delay time 0;  # lab: connect at once (Calico waits 2 s)",
        "  connect retry time 1;",
        "  error wait time 1, 10;",
        "  debug { states, events };",
        "}",
    ]
    for peer, client in bgp_peers(conf, node):
        lines += [
            "",
            f"protocol bgp {bgp_protocol_name(peer, rr)} from bgp_template {{",
            f"  neighbor {peer.ip} as {BGP_AS};",
        ]
        if client:
            lines += ["  rr client;", f"  rr cluster id {node.ip};"]
        lines.append("}")
    return "\n".join(lines) + "\n"


# --- reading the live kernel -----------------------------------------------------------------

def live_routes(runner: Runner, netns: str, pod_subnet: str) -> list[dict]:
    """Routes into the pod subnet, except the node's own (connected, on cni0) one."""
    sub = ipaddress.ip_network(pod_subnet)
    out = []
    for r in runner.json(["ip", "-j", "route", "show"], netns):
        dst = r.get("dst", "")
        if dst == "default" or r.get("protocol") == "kernel":
            continue
        try:
            net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32")
        except ValueError:
            continue
        if net.subnet_of(sub):
            out.append(r)
    return out


# --- applying ------------------------------------------------------------------------------

def reconcile_routes(runner: Runner, netns: str, conf: ClusterConfig, want: list[Route],
                     managed: Callable[[dict], bool]) -> None:
    """Make the node's pod routes exactly `want`; only routes `managed` says are ours go."""
    have = {r["dst"]: r for r in live_routes(runner, netns, conf.pod_subnet) if managed(r)}
    lines = []
    for dst, r in have.items():
        if dst not in {w.dst for w in want}:
            lines.append(f"route del {dst} via {r.get('gateway')} dev {r.get('dev')}")
    for w in want:
        r = have.get(w.dst)
        if r and r.get("gateway") == w.via and r.get("dev") == w.dev:
            continue
        lines.append(w.command("replace"))
    runner.batch(lines, netns)


def setup_hostgw(runner: Runner, conf: ClusterConfig, node: NodeConfig) -> None:
    reconcile_routes(runner, naming.node_netns(node.name), conf, hostgw_routes(conf, node),
                     lambda r: r.get("dev") == "eth0" and "gateway" in r)


def setup_vxlan(runner: Runner, conf: ClusterConfig, node: NodeConfig) -> None:
    ns = naming.node_netns(node.name)
    if not runner.json(["ip", "-j", "link", "show", "dev", VXLAN_DEV], ns):
        runner.batch(vxlan_device_commands(node), ns)
    reconcile_vxlan(runner, conf, node)


def reconcile_vxlan(runner: Runner, conf: ClusterConfig, node: NodeConfig) -> None:
    """Routes, neighbours and FDB entries on `flannel.1` for exactly the current peers.

    Flannel's order: neighbour and FDB first, the route last, so the kernel never has to ARP
    for a VTEP it cannot reach.
    """
    ns = naming.node_netns(node.name)
    routes, neigh, fdb = vxlan_peer_entries(conf, node)
    have_neigh = {n["dst"]: n for n in runner.json(
        ["ip", "-j", "neigh", "show", "dev", VXLAN_DEV], ns)}
    have_fdb = {e["mac"]: e["dst"] for e in runner.json(
        ["bridge", "-j", "fdb", "show", "dev", VXLAN_DEV], ns)
        if e.get("dst") and e.get("mac") != "00:00:00:00:00:00"}
    lines = [f"neigh replace {n.ip} lladdr {n.mac} dev {n.dev} nud permanent" for n in neigh
             if (have_neigh.get(n.ip) or {}).get("lladdr") != n.mac]
    runner.batch(lines, ns)
    fdb_lines = [f"fdb replace {f.mac} dev {f.dev} dst {f.dst} self permanent" for f in fdb
                 if have_fdb.get(f.mac) != f.dst]
    fdb_lines += [f"fdb del {mac} dev {VXLAN_DEV} self" for mac in have_fdb
                  if mac not in {f.mac for f in fdb}]
    if fdb_lines:  # `bridge -batch`: one exec for every entry, like `ip -batch`
        runner.run(["bridge", "-batch", "-"], ns, input="\n".join(fdb_lines) + "\n")
    reconcile_routes(runner, ns, conf, routes, lambda r: r.get("dev") == VXLAN_DEV)
    stale = [ip for ip in have_neigh if ip not in {n.ip for n in neigh}]
    runner.batch([f"neigh del {ip} dev {VXLAN_DEV}" for ip in stale], ns)


# --- BGP: one BIRD per node ----------------------------------------------------------------

@dataclass(frozen=True)
class BirdPaths:
    conf: Path
    socket: Path
    pid: Path
    log: Path


def bird_paths(state_dir: Path, socket_dir: Path, node: NodeConfig) -> BirdPaths:
    d = state_dir / "bird"
    octet = node.ip.rsplit(".", 1)[1]
    return BirdPaths(conf=d / f"{node.name}.conf", socket=socket_dir / f"bird{octet}.ctl",
                     pid=d / f"{node.name}.pid", log=d / f"{node.name}.log")


def write_bird_conf(conf: ClusterConfig, node: NodeConfig, paths: BirdPaths) -> bool:
    """Write the node's bird.conf; True when it changed."""
    text = render_bird_conf(conf, node, log_file=str(paths.log))
    paths.conf.parent.mkdir(parents=True, exist_ok=True)
    if paths.conf.exists() and paths.conf.read_text() == text:
        return False
    paths.conf.write_text(text)
    return True


def start_bird(runner: Runner, node: NodeConfig, paths: BirdPaths) -> None:
    """Start BIRD in the node's netns; it forks into the background (a daemon of init)."""
    paths.socket.parent.mkdir(parents=True, exist_ok=True)
    runner.run(["bird", "-c", str(paths.conf), "-s", str(paths.socket), "-P", str(paths.pid)],
               naming.node_netns(node.name), timeout=10)


def birdc(runner: Runner, node: NodeConfig, paths: BirdPaths, *command: str,
          record: bool = True) -> str:
    """Run `birdc -s <socket> <command>` (e.g. `show protocols`) and return its output."""
    done = runner.run(["birdc", "-s", str(paths.socket), *command],
                      naming.node_netns(node.name), check=False, record=record, timeout=10)
    if done.rc != 0:
        raise LabError(f"birdc on node `{node.name}` failed: "
                       f"{(done.stderr or done.stdout).strip()} — is BIRD running there?")
    return done.stdout


def reconfigure_bird(runner: Runner, node: NodeConfig, paths: BirdPaths) -> None:
    out = birdc(runner, node, paths, "configure")
    if "Reconfigured" not in out and "Reconfiguration in progress" not in out \
            and "nothing to do" not in out.lower():
        raise LabError(f"BIRD on node `{node.name}` rejected its new config: {out.strip()}")


def bird_routes_installed(runner: Runner, conf: ClusterConfig, node: NodeConfig) -> bool:
    """Every other node's pod CIDR is in this node's kernel table as `proto bird`."""
    want = {o.pod_cidr for o in peers(conf, node)}
    have = {r["dst"] for r in live_routes(runner, naming.node_netns(node.name), conf.pod_subnet)
            if r.get("protocol") == RTPROT_BIRD}
    return want == have


def wait_bgp(runner: Runner, conf: ClusterConfig, nodes: list[NodeConfig] | None = None,
             timeout: float = 30.0) -> float:
    """Wait until every node has exactly its peers' routes from BIRD; returns seconds waited."""
    t0 = time.monotonic()
    pending = list(nodes if nodes is not None else conf.nodes)
    while pending:
        pending = [n for n in pending if not bird_routes_installed(runner, conf, n)]
        if not pending:
            break
        if time.monotonic() - t0 > timeout:
            raise LabError(f"BGP did not converge in {timeout:g} s: nodes "
                           f"{', '.join(n.name for n in pending)} lack routes — see "
                           "`birdc show protocols` on them")
        time.sleep(0.05)
    return time.monotonic() - t0
