# Reference solutions for labs/14-egress-snat.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; names such as `c` and
# `internet_log` come from the notebook's earlier cells.
# ruff: noqa: E402, F811, F821

# %% exercise: seen-as
# the first word of the server's last log line: the client's address as the server saw it
SEEN_AS = internet_log(c, last=1).split()[0]

# %% exercise: non-masquerade
c.apply("""
apiVersion: v1
kind: ConfigMap
metadata:
  name: ip-masq-agent
  namespace: kube-system
data:
  config: |
    nonMasqueradeCIDRs:
    - 10.244.0.0/16
    - 172.18.0.130/32
    masqLinkLocal: false
""", progress=print)

# %% exercise: egress-gateway
gateway = c.node(EGRESS_NODE)
gateway.sh(f"ip addr replace {EGRESS_IP}/32 dev eth0")
for pod in c.pods():
    if pod.namespace != "billing":
        continue
    snat = f"-s {pod.ip}/32 -d {INTERNET} -j SNAT --to-source {EGRESS_IP}"
    gateway.sh(f"iptables -t nat -C POSTROUTING {snat} 2>/dev/null || "
               f"iptables -t nat -I POSTROUTING 1 {snat}")
    if pod.node == EGRESS_NODE:
        continue
    node = c.node(pod.node)
    node.sh(f"ip route replace {INTERNET} via {gateway.ip} dev eth0 table 100")
    node.sh(f"ip rule show from {pod.ip} to {INTERNET} | grep -q . || "
            f"ip rule add from {pod.ip} to {INTERNET} table 100")
    keep = f"-s {pod.ip}/32 -d {INTERNET} -j ACCEPT"
    node.sh(f"iptables -t nat -C POSTROUTING {keep} 2>/dev/null || "
            f"iptables -t nat -I POSTROUTING 1 {keep}")
