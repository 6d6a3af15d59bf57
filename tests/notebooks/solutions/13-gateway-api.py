# Reference solutions for labs/13-gateway-api.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; names such as `c`,
# `conditions` and `measure_split` come from the notebook's earlier cells.
# ruff: noqa: E402, F811, F821

# %% exercise: gateway
GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: shared-gateway
  namespace: infra              # the cluster operator's namespace
spec:
  gatewayClassName: nginx       # served by the controller of GatewayClass nginx
  listeners:
  - name: http                  # the name routes may attach to (sectionName)
    protocol: HTTP
    port: 80
    hostname: "*.example.com"   # every name under example.com
    allowedRoutes:
      namespaces:
        from: Selector          # not Same (the default): the routes live in namespace store
        selector:
          matchLabels:
            shared-gateway-access: "true"
"""
print(c.apply(GATEWAY))
conditions(c, "Gateway", "shared-gateway", "infra")

# %% exercise: canary
STORE_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: store
  namespace: store
spec:
  parentRefs:
  - name: shared-gateway
    namespace: infra            # the Gateway is in another namespace than the route
  hostnames: [store.example.com]
  rules:
  - backendRefs:                # no matches: every path of store.example.com
    - name: store-v1
      port: 80
      weight: 90
    - name: store-v2
      port: 80
      weight: 10
"""
print(c.apply(STORE_ROUTE))
measure_split(c, "http://store.example.com/hostname")

# %% exercise: header-routing
STORE_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: store
  namespace: store
spec:
  parentRefs:
  - name: shared-gateway
    namespace: infra
  hostnames: [store.example.com]
  rules:
  - backendRefs:
    - name: store-v1
      port: 80
      weight: 90
    - name: store-v2
      port: 80
      weight: 10
  - matches:                    # one match: path / (the default) AND the header
    - headers:
      - name: X-Canary
        value: always
    backendRefs:
    - name: store-v2
      port: 80
"""
print(c.apply(STORE_ROUTE))
measure_split(c, "http://store.example.com/hostname", 100, headers={"X-Canary": "always"})

# %% exercise: fix-route
REASONS = ["NoMatchingParent", "BackendNotFound"]  # Accepted=False, ResolvedRefs=False
FIXED = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: store
spec:
  parentRefs:
  - name: shared-gateway
    namespace: infra
    sectionName: http           # the Gateway's listener is named http (there is no https)
  hostnames: [reviews.example.com]
  rules:
  - backendRefs:
    - name: reviews             # the Service is reviews, not review
      port: 80
"""
print(c.apply(FIXED))
conditions(c, "HTTPRoute", "reviews", "store")
