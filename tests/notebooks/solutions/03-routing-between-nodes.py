# Reference solutions for labs/03-routing-between-nodes.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; names such as `W1`, `W2`
# (the workers' shells), `A`, `B` (the pods), `W1_IP`, `W1_CIDR`, `W2_IP` and `W2_CIDR` come from
# the notebook's earlier cells.
# ruff: noqa: E402, F811, F821

# %% exercise: route-there
W1.sh(f"ip route add {W2_CIDR} via {W2_IP} dev eth0")

# %% exercise: route-back
W2.sh(f"ip route add {W1_CIDR} via {W1_IP} dev eth0")

# %% exercise: next-hop
import json

route = json.loads(W1.sh(f"ip -j route get {B.ip} from {A.ip} iif cni0"))[0]
next_hop = route["gateway"]
wire_src, wire_dst = A.ip, B.ip  # host-gw rewrites nothing: the pods' own addresses
print(next_hop, wire_src, wire_dst)

# %% exercise: on-link
kernel_error = W1.sh("ip route add 10.244.7.0/24 via 192.168.7.3 dev eth0", check=False)
print(kernel_error)
vxlan_answer = "it encapsulates the pod's packet in a UDP (VXLAN) packet between the node IPs"
