# Reference solutions for labs/12-ingress.ipynb.
# Each `# %% exercise: <id>` section replaces the notebook cell whose metadata says
# {"lab_kit": {"exercise": "<id>"}} when the tests run the notebook; names such as `c` come
# from the notebook's earlier cells.
# ruff: noqa: E402, F811, F821

# %% exercise: host-and-paths
SHOP_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: shop
  namespace: shop            # the Services it routes to are in shop
spec:
  ingressClassName: nginx    # served by ingress-nginx (also the default class here)
  rules:
  - host: shop.example.com
    http:
      paths:
      - path: /
        pathType: Prefix     # / and everything below it...
        backend:
          service:
            name: web
            port: {number: 80}   # the Service's port, not the pod's 8080
      - path: /api
        pathType: Prefix     # ...but /api and /api/... go to api (the longest match wins)
        backend:
          service:
            name: api
            port: {number: 80}
"""
c.apply(SHOP_INGRESS)
print(routing_table(c, [f"http://shop.example.com{p}" for p in
                        ["/hostname", "/cart/hostname", "/api/hostname", "/api/v1/hostname",
                         "/apix/hostname"]]))

# %% exercise: default-backend
CATCH_ALL = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: catch-all
  namespace: shop
spec:
  defaultBackend:            # no rules: this Ingress takes nginx's default server
    service:
      name: docs
      port: {number: 80}
"""
c.apply(CATCH_ALL)
print(routing_table(c, [f"http://{LB_IP}/hostname"]))

# %% exercise: tls
SECRET = c.lab_ca().tls_secret("shop-tls", namespace="shop", hosts=["shop.example.com"])
c.apply([SECRET])
SHOP_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: shop
  namespace: shop
spec:
  ingressClassName: nginx
  tls:
  - hosts: [shop.example.com]
    secretName: shop-tls     # in the Ingress's own namespace
  rules:
  - host: shop.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port: {number: 80}
      - path: /api
        pathType: Prefix
        backend:
          service:
            name: api
            port: {number: 80}
"""
c.apply(SHOP_INGRESS)

# %% exercise: conflict
WINNER = "api"   # shop/shop was created first; applying it again did not make it newer
