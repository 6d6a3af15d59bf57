# Reference solutions for labs/02-pods-on-one-node.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; names such as `NODE`,
# `NODE2`, `A`, `B`, `A_IP`, `B_IP`, `GATEWAY` and `PREFIX` come from the notebook's earlier cells.
# ruff: noqa: E402, F811, F821

# %% exercise: bridge
NODE.sh(f"""
set -e
ip link add br0 type bridge
ip addr add {GATEWAY}/{PREFIX} dev br0
ip link set br0 up
""")

# %% exercise: pods
for name, ns, ip in (("a", A, A_IP), ("b", B, B_IP)):
    NODE.sh(f"""
set -e
ip netns add {ns}
ip link add veth-{name} type veth peer name eth0 netns {ns}
ip link set veth-{name} master br0
ip link set veth-{name} up
ip -n {ns} addr add {ip}/{PREFIX} dev eth0
ip -n {ns} link set eth0 up
ip -n {ns} link set lo up
ip -n {ns} route add default via {GATEWAY}
""")

# %% exercise: arp
import json

neigh = json.loads(NODE.sh(f"ip -n {A} -j neigh show {B_IP}"))
b_mac = neigh[0]["lladdr"]
print(b_mac)

# %% exercise: cni
c.apply("manifests/two-pods.yaml")

# %% exercise: which-veth
import json

eth0 = json.loads(c.pod("web-a").sh("ip -j link show eth0"))[0]
links = json.loads(NODE2.sh("ip -j link show"))
web_a_veth = next(ln["ifname"] for ln in links if ln["ifindex"] == eth0["link_index"])
print(web_a_veth)
