# Reference solutions for labs/09-iptables-vs-nftables.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; names such as `c`, `c_nft`
# (the two clusters), `IPT`, `NFT` (the client's node in each), `LAST`, `LAST_IP`, `LAST_IP_NFT`
# and `HAND_IP` come from the notebook's earlier cells.
# ruff: noqa: E402, F811, F821

# %% exercise: rules-per-service
import json

saved = IPT.sh("iptables-save")
ipt_rules_per_service = sum(1 for line in saved.splitlines()
                            if line.startswith("-A ") and f"default/{LAST}:" in line)
table = json.loads(NFT.sh("nft -j list table ip kube-proxy"))["nftables"]
nft_rules_per_service = sum(1 for item in table
                            if "rule" in item and f"-default/{LAST}/" in item["rule"]["chain"])
print(ipt_rules_per_service, nft_rules_per_service)

# %% exercise: first-packet
listing = IPT.sh("iptables -t nat -L KUBE-SERVICES -n --line-numbers")
ipt_position = next(int(line.split()[0]) for line in listing.splitlines()
                    if f"default/{LAST}:" in line)
services_map = NFT.sh("nft list map ip kube-proxy service-ips")
element = next(e for e in services_map.replace("\n", " ").split(",")
               if f"{LAST_IP_NFT} . tcp . 80 :" in e)
nft_verdict = element.split(" : ", 1)[1].strip(" }\t")
print(ipt_position, nft_verdict)

# %% exercise: grows
grows_with_n = "iptables"
why = ("iptables tries the rules of KUBE-SERVICES one after another, so the last Service's rule "
       "is the N-th; nftables does one lookup in the service-ips map whatever N is")

# %% exercise: hand-element
chain = nft_verdict.removeprefix("goto ").strip()
NFT.sh(f"nft add element ip kube-proxy service-ips '{{ {HAND_IP} . tcp . 80 : goto {chain} }}'")
print(c_nft.probe("client", HAND_IP, 80))
