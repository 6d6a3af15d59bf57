# Reference solutions for labs/11-network-policies.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; names such as `c` and
# `apply_and_probe` come from the notebook's earlier cells.
# ruff: noqa: E402, F811, F821

# %% exercise: default-deny
DENY_X = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: x
spec:
  podSelector: {}          # every pod of namespace x
  policyTypes: [Ingress]   # isolated for ingress, and no ingress rule: nothing gets in
"""
apply_and_probe(c, DENY_X)

# %% exercise: frontend-api
SHOP_POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: api-from-frontend
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: api}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: frontend}
    ports:
    - port: http
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-from-api
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: db}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: api}
"""
apply_and_probe(c, SHOP_POLICIES)

# %% exercise: egress-dns
FRONTEND_EGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: frontend-egress
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: frontend}
  policyTypes: [Egress]
  egress:
  - to:                    # one peer: pods labelled k8s-app=kube-dns AND in kube-system
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: kube-system}
      podSelector:
        matchLabels: {k8s-app: kube-dns}
    ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
  - to:
    - podSelector:
        matchLabels: {app: api}
    ports:
    - port: http
"""
apply_and_probe(c, FRONTEND_EGRESS)
print(FRONTEND.sh("dig +short api.shop.svc.cluster.local; curl -s http://api.shop/hostname"))

# %% exercise: namespace-isolation
ISOLATE_Y = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: same-namespace-only
  namespace: y
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {}      # every pod of this policy's namespace, y
"""
apply_and_probe(c, ISOLATE_Y)

# %% exercise: ipblock-external
PAYMENTS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: frontend-to-payments
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: frontend}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock:
        cidr: 172.18.0.100/32
    ports:
    - {port: 8080, protocol: TCP}
"""
c.apply(PAYMENTS)
print(c.probe("shop/frontend", "172.18.0.100", 8080))
