# Reference solutions for labs/04-vxlan-overlay.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; names such as `c`,
# `NODES`, `NODE_A`, `NODE_B`, `NODE_C`, `POD_A`, `POD_B`, `POD_C` and `Cluster` come from the
# notebook's earlier cells.
# ruff: noqa: E402, F811, F821

# %% exercise: capture-reply
# web-b's answer travels from vxlan-worker2 to vxlan-control-plane: both nodes' eth0 see it
# wrapped; flannel.1, cni0 and the pods see it unwrapped.
cap_reply = c.capture("vxlan-control-plane", interface="eth0", filter="udp port 8472",
                      during=lambda: c.probe("web-c", "web-b"))
answer = next(p for p in cap_reply if p.layer("IPv4", -1)["src"] == POD_B.ip)
print(cap_reply.layers(cap_reply.index(answer)))
outer_src = answer.layer("IPv4")["src"]  # the first IPv4 header is the outer one
udp_dport = answer.layer("UDP")["dport"]
vni = answer.layer("VXLAN")["vni"]
print(outer_src, udp_dport, vni)

# %% exercise: fix-mtu
# clusters/vxlan.yaml has no `mtu`: the pods get the backend's 1500 - 50 = 1450, as Flannel's
# CNI plugin passes FLANNEL_MTU to the bridge plugin.
c = Cluster.up("clusters/vxlan.yaml", replace=True, progress=print)
print(c.apply("manifests/overlay-pods.yaml"))
NODE_A, NODE_B, NODE_C = (c.node(n) for n in NODES)
POD_A, POD_B, POD_C = (c.pod(p) for p in ("web-a", "web-b", "web-c"))
print(POD_A.sh("ip link show eth0 | head -1"))

# %% exercise: repair-overlay
# Compare every node's live entries on flannel.1 with what Flannel would program, and restore
# what differs, in Flannel's order: neighbours and FDB entries first, routes last (flanneld
# does the same when it resyncs).
import json

from lab_kit.backends import vxlan_peer_entries


def live(shell, command):
    return json.loads(shell.sh(command) or "[]")


for shell in (NODE_A, NODE_B, NODE_C):
    routes, neighbours, fdb = vxlan_peer_entries(c.config, c.config.node(shell.name))
    have_neigh = {n["dst"]: n for n in live(shell, "ip -j neigh show dev flannel.1")}
    have_fdb = {e["mac"]: e.get("dst") for e in live(shell, "bridge -j fdb show dev flannel.1")}
    have_routes = {r["dst"]: r.get("gateway") for r in
                   live(shell, "ip -j route show dev flannel.1")}
    for n in neighbours:
        got = have_neigh.get(n.ip, {})
        if got.get("lladdr") != n.mac or "PERMANENT" not in got.get("state", []):
            print(f"{shell.name}: neighbour {n.ip} -> {n.mac} is missing; restoring it")
            shell.sh(f"ip neigh replace {n.ip} lladdr {n.mac} dev flannel.1 nud permanent")
    for f in fdb:
        if have_fdb.get(f.mac) != f.dst:
            print(f"{shell.name}: FDB {f.mac} -> {f.dst} is missing; restoring it")
            shell.sh(f"bridge fdb replace {f.mac} dev flannel.1 dst {f.dst} self permanent")
    for r in routes:
        if have_routes.get(r.dst) != r.via:
            print(f"{shell.name}: route {r.dst} via {r.via} is missing; restoring it")
            shell.sh(f"ip route replace {r.dst} via {r.via} dev flannel.1 onlink")
print(c.probe("web-a", "web-b"), c.probe("web-b", "web-a"), sep="\n")
