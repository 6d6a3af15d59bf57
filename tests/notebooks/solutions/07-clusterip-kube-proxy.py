# Reference solutions for labs/07-clusterip-kube-proxy.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; names such as `c`, `NODE`
# (the client's node), `CLIENT`, `VIP`, `WEB` (web's pod names), `ME` (WEB[0]) and `API_VIP`
# come from the notebook's earlier cells.
# ruff: noqa: E402, F811, F821

# %% exercise: chain-names
import base64
import hashlib


def chain_hash(text):
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


svc_chain = "KUBE-SVC-" + chain_hash("default/web:http" + "tcp")
first = c.pod(WEB[0])
sep_chain = "KUBE-SEP-" + chain_hash("default/web:http" + "tcp" + f"{first.ip}:8080")
print(svc_chain, sep_chain)
print(NODE.sh(f"iptables-save -t nat | grep -e '{svc_chain}' -e '{sep_chain}'"))

# %% exercise: which-endpoint
flow = next(f for f in c.conntrack(src="client", dst=VIP) if f.sport == 40000)
endpoint_ip = flow.reply_src  # the reply comes FROM the endpoint the SYN was DNATed to
endpoint_pod = next(p.name for p in c.pods() if p.ip == endpoint_ip)
print(flow.dnat, endpoint_pod)

# %% exercise: scale
import yaml

with open("manifests/clusterip-web.yaml") as f:
    docs = list(yaml.safe_load_all(f))
deployment = next(d for d in docs if d["kind"] == "Deployment")
deployment["spec"]["replicas"] = 4
c.apply([deployment])

# %% exercise: spread
counts = {}
for _ in range(200):
    r = c.probe("client", VIP, 80)
    counts[r.reply] = counts.get(r.reply, 0) + 1
p_first = 1 / 4  # 4 endpoints: rule 1 takes 1/4, rule 2 1/3 of the rest, rule 3 1/2, rule 4 all
print(counts)

# %% exercise: fix-api
import yaml

with open("manifests/clusterip-api.yaml") as f:
    docs = list(yaml.safe_load_all(f))
service = next(d for d in docs if d["kind"] == "Service")
service["spec"]["ports"][0]["targetPort"] = "api"  # the name the api containers give 9376
c.apply([service])
print(c.probe("client", API_VIP, 80))

# %% exercise: hairpin
seen_as = None
for _ in range(100):
    r = c.probe(ME.name, VIP, 80, path="/clientip")
    source = r.reply.rsplit(":", 1)[0]
    if r.ok and source != ME.ip:  # it landed on ME itself, and was masqueraded
        seen_as = source
        break
print(seen_as)
