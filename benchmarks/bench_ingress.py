#!/usr/bin/env python3
"""Ingress: requests per second and p99 latency through ingress-nginx vs straight to a pod.

One cluster (1 control plane, 2 workers, VXLAN, kube-proxy iptables): the ingress-nginx
controller (labs/manifests/ingress-nginx.yaml, behind its LoadBalancer Service) and a `web`
Deployment of 2 agnhost-like pods behind a Service, routed by an Ingress for `web.example.com`.
wrk (Debian's) runs on the control-plane node (it routes to pod IPs and to the LB IP, whose
kube-proxy rules it has too), in four runs of the same length, connections and threads:

  direct     http://<pod IP>:8080/hostname      one web pod, no proxy
  ingress    http://<LB IP>/hostname            kube-proxy -> the controller pod's nginx ->
             (Host: web.example.com)            a web pod (both, round robin)
  ingress    the same during a reload storm     a new Ingress applied and deleted in a loop, so
  +reloads                                      nginx reloads gracefully all along
  +reloads,  the same with Connection: close    a new connection per request

On a graceful reload nginx finishes every request it has read, but closes idle keep-alive
connections: a request the client sends on one at that moment fails (wrk does not retry, as
browsers and HTTP libraries do for idempotent requests). The last run shows the requests
themselves are not failed.

Printed: requests/s, p50/p99 latency, socket errors and non-2xx answers for each, and the
ratios ingress/direct (throughput and p99). The test server answers in Python, so it is the
bottleneck of `direct`; the ratio says what the extra hop costs on this machine, not what
nginx can do. A measurement, not a test: exit 0 unless something broke. Run as root from the
repository root (35 s on this machine):

    sudo .venv/bin/python benchmarks/bench_ingress.py [--seconds 8] [--connections 32]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab_kit import config, naming  # noqa: E402
from lab_kit.cluster import Cluster  # noqa: E402

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.45"


def backend() -> list[dict]:
    labels = {"app": "web"}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
         "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                      "name": "c", "image": AGNHOST, "args": ["netexec", "--http-port=8080"],
                      "ports": [{"name": "http", "containerPort": 8080}]}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": labels, "ports": [{"name": "http", "port": 80,
                                                 "targetPort": "http"}]}}]


def ingress(name: str, host: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name},
            "spec": {"rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(c: Cluster, url: str, seconds: int, conns: int, *headers: str) -> dict:
    node = next(n.name for n in c.nodes() if n.role == "control-plane")
    argv = ["nsenter", f"--net=/run/netns/{naming.node_netns(node)}", "wrk", "-t2",
            f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout

    def lat(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": lat("50"), "p99": lat("99"),
            "errors": sum(int(x) for x in errs.groups()) if errs else 0,
            "non2xx": int(non2xx.group(1)) if non2xx else 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    conf = config.default_config("benching", workers=2)
    t0 = time.monotonic()
    c = Cluster.up(conf, progress=lambda m: print(f"  {m}", flush=True))
    try:
        c.apply(REPO / "labs" / "manifests" / "ingress-nginx.yaml")
        c.apply(backend() + [ingress("web", "web.example.com")])
        pod = c.pods()[0]
        lb = c.ingress_status("web")["address"]
        print(f"cluster ready in {time.monotonic() - t0:.1f} s; controller at {lb}; "
              f"direct target {pod.name} {pod.ip}:8080")
        rows = {}
        rows["direct"] = wrk(c, f"http://{pod.ip}:8080/hostname", args.seconds,
                             args.connections)
        host = "Host: web.example.com"
        rows["ingress"] = wrk(c, f"http://{lb}/hostname", args.seconds, args.connections, host)
        stop = threading.Event()
        reloads = [0]

        def storm() -> None:
            while not stop.is_set():
                extra = ingress("storm", "storm.example.com")
                c.apply([extra])
                c.delete([extra])
                reloads[0] += 2
        t = threading.Thread(target=storm)
        t.start()
        try:
            rows["ingress+reloads"] = wrk(c, f"http://{lb}/hostname", args.seconds,
                                          args.connections, host)
            rows["+reloads, close"] = wrk(c, f"http://{lb}/hostname", args.seconds,
                                          args.connections, host, "Connection: close")
        finally:
            stop.set()
            t.join()
        print(f"\nwrk -t2 -c{args.connections} -d{args.seconds}s from the control-plane node "
              f"({reloads[0]} reloads during the last two runs)")
        print(f"{'path':<18}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'non-2xx':>9}")
        for name, r in rows.items():
            print(f"{name:<18}{r['rps']:>10.0f}{r['p50']:>10.2f}{r['p99']:>10.2f}"
                  f"{r['errors']:>8}{r['non2xx']:>9}")
        d, i = rows["direct"], rows["ingress"]
        print(f"\nratio ingress/direct: throughput {i['rps'] / d['rps']:.2f}x, "
              f"p99 latency {i['p99'] / d['p99']:.2f}x")
        for name in ("ingress+reloads", "+reloads, close"):
            r = rows[name]
            print(f"{name}: throughput {r['rps'] / i['rps']:.2f}x of ingress, "
                  f"{r['errors'] + r['non2xx']} failed requests")
        return 0
    finally:
        c.down()


if __name__ == "__main__":
    sys.exit(main())
