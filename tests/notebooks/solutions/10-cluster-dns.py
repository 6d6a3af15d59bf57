# Reference solutions for labs/10-cluster-dns.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; names such as `c`, `CLIENT`
# (the client pod's shell), `DNS_IP` and `dns_queries` come from the notebook's earlier cells.
# ruff: noqa: E402, F811, F821

# %% exercise: search-path
print(CLIENT.sh("cat /etc/resolv.conf"))
for name in ["api", "api.backend"]:  # `api` alone is tried in default's domains only
    print(name, "->", CLIENT.sh(f"getent hosts {name} || echo '(nothing)'").strip())
api_name = "api.backend"
for domain in ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]:
    print(f"{api_name}.{domain}:", CLIENT.sh(f"dig +short {api_name}.{domain}").strip() or "-")
api_search = "svc.cluster.local"  # the first domain whose answer is api's ClusterIP

# %% exercise: headless
db_service = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
    "spec": {"clusterIP": "None", "selector": {"app": "db"},
             "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres",
                        "protocol": "TCP"}]}}
c.apply([db_service])

# %% exercise: count-queries
def queries(command):
    cap = c.capture(CLIENT, interface="eth0", filter="udp port 53",
                    during=lambda: CLIENT.sh(command))
    return [row for row in dns_queries(cap) if row[3] == "query"]


queries_relative = len(queries("getent hosts www.example.com"))
queries_absolute = len(queries("getent hosts www.example.com."))
print(queries_relative, queries_absolute)

# %% exercise: ndots
import yaml

with open("manifests/dns-apps.yaml") as f:
    client_pod = next(d for d in yaml.safe_load_all(f) if d["kind"] == "Pod")
client_pod["metadata"]["name"] = "client-ndots"
client_pod["spec"]["dnsConfig"] = {"options": [{"name": "ndots", "value": "1"}]}
c.apply([client_pod])
print(c.pod("client-ndots").sh("cat /etc/resolv.conf"))

# %% exercise: fix-dns
import yaml

with open("manifests/dns-checkout.yaml") as f:
    deployment = next(d for d in yaml.safe_load_all(f) if d["kind"] == "Deployment")
template = deployment["spec"]["template"]["spec"]
del template["dnsPolicy"], template["dnsConfig"]  # ClusterFirst: kubelet writes it right
c.apply([deployment])
CHECKOUT = c.pod(next(p.name for p in c.pods("shop") if p.owner == "Deployment/checkout"),
                 "shop")
print(CHECKOUT.sh("cat /etc/resolv.conf; curl -s http://web.default/hostname"))
