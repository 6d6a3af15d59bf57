"""`lab-kit`: a thin command line over :mod:`lab_kit.cluster`, with kubectl/kind verbs.

    lab-kit up -f labs/clusters/default.yaml
    lab-kit apply -f labs/manifests/web.yaml
    lab-kit get pods -o wide
    lab-kit exec web-… -- ip route
    lab-kit probe web-a web-b:8080
    lab-kit probe --matrix --port 80 --protocol TCP -o json   # every pod pair, real probes
    lab-kit get netpol -A
    lab-kit node add            # join a worker; `lab-kit node remove NAME` takes one away
    lab-kit birdc lab-worker show route
    lab-kit capture lab-worker2 -i eth0 udp port 8472 --probe web-a web-b:8080
    lab-kit get svc,endpointslices
    lab-kit walk client 10.96.12.34:80     # the chains one packet passes, with counters
    lab-kit conntrack --dst 10.96.12.34    # the NAT mapping of each flow
    lab-kit down
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from lab_kit.errors import LabError


def _cluster_name(args: argparse.Namespace) -> str:
    if getattr(args, "name", None):
        return args.name
    env = os.environ.get("LAB_KIT_CLUSTER")
    if env:
        return env
    from lab_kit.cluster import Cluster
    running = Cluster.list()
    if len(running) == 1:
        return running[0]
    if len(running) > 1:
        raise LabError(f"several clusters are running ({', '.join(running)}): pick one with "
                       "--name or LAB_KIT_CLUSTER")
    from lab_kit.config import DEFAULT_NAME
    return DEFAULT_NAME


def _attach(args: argparse.Namespace):
    from lab_kit.cluster import Cluster
    return Cluster.attach(_cluster_name(args))


def _say(msg: str) -> None:
    print(f"• {msg}", file=sys.stderr, flush=True)


def cmd_doctor(args: argparse.Namespace) -> int:
    from lab_kit import doctor
    items = doctor.run_checks()
    print(doctor.main_text(items))
    return 0 if all(i.ok for i in items) else 1


def cmd_up(args: argparse.Namespace) -> int:
    import dataclasses

    from lab_kit import config
    from lab_kit.cluster import Cluster
    cfg = args.file
    if args.cluster_dns:
        conf = (config.load_config(args.file, name=args.name) if args.file
                else config.default_config(args.name or config.DEFAULT_NAME))
        cfg = dataclasses.replace(conf, cluster_dns=True)
    c = Cluster.up(cfg, name=args.name, replace=args.replace, progress=_say)
    print(c.get_nodes())
    return 0


def cmd_dns(args: argparse.Namespace) -> int:
    c = _attach(args)
    pods = [args.pod] if args.pod else [p.name for p in c.dns_pods()]
    if not pods:
        raise LabError("this cluster has no cluster DNS: create it with `lab-kit up "
                       "--cluster-dns` (or networking.clusterDNS: true in its config)")
    for name in pods:
        print(f"# kube-system/{name}")
        print(c.dns_metrics(name), end="")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from lab_kit.cluster import Cluster, sweep_all
    from lab_kit.kernel import Runner
    if args.all:
        import shutil

        from lab_kit.state import state_root
        gone = sweep_all(Runner())
        for name in Cluster.list():
            shutil.rmtree(state_root() / name, ignore_errors=True)
            gone = sorted(set(gone) | {name})
        print(f"removed: {', '.join(gone) or 'nothing (no lab cluster was running)'}")
        return 0
    name = _cluster_name(args)
    Cluster(name).down(progress=_say)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    c = _attach(args)
    for f in args.file:
        for line in c.apply(f, progress=_say):
            print(line)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    c = _attach(args)
    if args.file:
        for f in args.file:
            for line in c.delete(f, progress=_say):
                print(line)
    elif args.kind in ("pod", "pods", "po") and args.names:
        for n in args.names:
            for line in c.delete(pod=n, namespace=args.namespace or "default"):
                print(line)
    elif args.kind in ("svc", "service", "services") and args.names:
        ns = args.namespace or "default"
        for line in c.delete([{"apiVersion": "v1", "kind": "Service",
                               "metadata": {"name": n, "namespace": ns},
                               "spec": {"ports": [{"port": 1}]}} for n in args.names],
                             progress=_say):
            print(line)
    else:
        raise LabError("say what to delete: `delete -f FILE`, `delete pod NAME` or "
                       "`delete svc NAME`")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    c = _attach(args)
    out: list[Any] = []
    for kind in args.kind.split(","):
        if kind in ("pods", "pod", "po"):
            ns = None if args.all_namespaces else (args.namespace or "default")
            table = c.get_pods(ns, include_system=args.all_namespaces)
            if args.output in ("json", "yaml"):
                out += [p.__dict__ for p in table.pods]
            else:
                print(table)
        elif kind in ("nodes", "node", "no"):
            if args.output in ("json", "yaml"):
                out += [n.__dict__ for n in c.nodes()]
            else:
                print(c.get_nodes())
        elif kind in ("services", "service", "svc", "endpointslices", "endpointslice"):
            ns = None if args.all_namespaces else (args.namespace or "default")
            svc = kind.startswith(("service", "svc"))
            if args.names and svc:
                objs = [c.service(n, namespace=ns) for n in args.names]
                if args.output in ("json", "yaml"):
                    out += objs
                else:
                    print(c.get_services(ns).only([o["metadata"]["name"] for o in objs]))
            elif args.output in ("json", "yaml"):
                if svc:
                    out += [c.service(k) for k in sorted(c.state.get("services", {}))
                            if ns is None or k.startswith(ns + "/")]
                else:
                    out += [v for k, v in sorted(c.state.get("endpointslices", {}).items())
                            if ns is None or k.startswith(ns + "/")]
            else:
                print(c.get_services(ns) if svc else c.get_endpointslices(ns))
        elif kind in ("networkpolicies", "networkpolicy", "netpol"):
            ns = None if args.all_namespaces else (args.namespace or "default")
            stored = _stored_policies(c, ns, args.names)
            if args.output in ("json", "yaml"):
                out += [_policy_object(v) for v in stored]
            elif stored:
                print(_policy_table(stored, ns))
            else:
                print("No resources found" + (f" in {ns} namespace." if ns else "."),
                      file=sys.stderr)
        elif kind in ("ingresses", "ingress", "ing"):
            ns = None if args.all_namespaces else (args.namespace or "default")
            keys = [k for k in sorted(c.state.get("ingresses") or {})
                    if ns is None or k.split("/", 1)[0] == ns]
            if args.names:
                keys = [f"{ns or 'default'}/{n}" for n in args.names]
            objs = [c.get_ingress(k) for k in keys]
            if args.output in ("json", "yaml"):
                out += objs
            elif objs:
                print(_ingress_table(objs, [c.state["ingresses"][k]["created"] for k in keys],
                                     ns))
            else:
                print("No resources found" + (f" in {ns} namespace." if ns else "."),
                      file=sys.stderr)
        elif kind in ("ingressclasses", "ingressclass"):
            stored = sorted((c.state.get("ingressclasses") or {}).values(),
                            key=lambda v: v["spec"]["name"])
            from lab_kit.cluster import Table
            print(Table(["NAME", "CONTROLLER", "PARAMETERS", "AGE"], [
                [v["spec"]["name"] + (" (default)" if v["spec"]["default"] else ""),
                 v["spec"]["controller"], "<none>", human_duration(time.time() - v["created"])]
                for v in stored]))
        elif kind in _GATEWAY_KINDS:
            from lab_kit.cluster import GATEWAY_KINDS
            gkind = _GATEWAY_KINDS[kind]
            what = GATEWAY_KINDS[gkind][0]
            ns = None if args.all_namespaces or gkind == "GatewayClass" else (
                args.namespace or "default")
            keys = [k for k in sorted(c.state.get(what) or {})
                    if ns is None or k.split("/", 1)[0] == ns]
            if args.names:
                keys = [n if gkind == "GatewayClass" else f"{ns or 'default'}/{n}"
                        for n in args.names]
            objs = [c.get_gateway_object(gkind, k) for k in keys]
            if args.output in ("json", "yaml"):
                out += objs
            elif objs:
                print(_gateway_table(gkind, objs, [c.state[what][k]["created"] for k in keys],
                                     ns is None and gkind != "GatewayClass"))
            else:
                print("No resources found" + (f" in {ns} namespace." if ns else "."),
                      file=sys.stderr)
        else:
            raise LabError(f"cannot get {kind!r} yet: try pods, nodes, svc, endpointslices, "
                           "networkpolicies, ingress, ingressclass, gatewayclass, gateway or "
                           "httproute")
    if args.output == "json":
        print(json.dumps(out, indent=2, default=list))
    elif args.output == "yaml":
        import yaml
        # through JSON: PodInfo's tuples become lists, which safe_dump can write
        print(yaml.safe_dump_all(json.loads(json.dumps(out, default=list)), sort_keys=False),
              end="")
    return 0


def _stored_policies(c, namespace: str | None, names: list[str]) -> list[dict[str, Any]]:
    """The stored NetworkPolicies of `namespace` (None: every one), only `names` if given."""
    items = sorted((c.state.get("networkpolicies") or {}).items())
    found = [v for k, v in items if namespace is None or k.split("/", 1)[0] == namespace]
    if names:
        have = {v["spec"]["name"] for v in found}
        for n in names:
            if n not in have:
                where = f" in namespace {namespace}" if namespace else ""
                raise LabError(f'networkpolicies.networking.k8s.io "{n}" not found{where}')
        found = [v for v in found if v["spec"]["name"] in names]
    return found


def _policy_object(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored NetworkPolicy as `kubectl get netpol -o yaml` shows it."""
    from lab_kit import model
    return model.stored_object("networking.k8s.io/v1", "NetworkPolicy", stored)


def _policy_table(stored: list[dict[str, Any]], namespace: str | None):
    """`kubectl get networkpolicies`: NAMESPACE (with -A), NAME, POD-SELECTOR, AGE."""
    from lab_kit import netpol
    from lab_kit.cluster import Table
    rows = []
    for v in stored:
        pol = netpol.policy_from_json(v["spec"])
        age = human_duration(time.time() - v["created"]) if v.get("created") else "<unknown>"
        rows.append(([pol.namespace] if namespace is None else [])
                    + [pol.name, str(pol.pod_selector), age])
    return Table((["NAMESPACE"] if namespace is None else [])
                 + ["NAME", "POD-SELECTOR", "AGE"], rows)


def _ingress_table(objs: list[dict[str, Any]], created: list[float], namespace: str | None):
    """`kubectl get ingress`: NAMESPACE (with -A), NAME, CLASS, HOSTS, ADDRESS, PORTS, AGE."""
    from lab_kit.cluster import Table
    rows = []
    for o, t in zip(objs, created, strict=True):
        spec = o["spec"]
        hosts = [r.get("host") or "*" for r in spec.get("rules") or []] or ["*"]
        addr = ",".join(i["ip"] for i in o["status"].get("loadBalancer", {}).get("ingress", []))
        ports = "80, 443" if spec.get("tls") else "80"
        age = human_duration(time.time() - t)
        rows.append(([o["metadata"]["namespace"]] if namespace is None else [])
                    + [o["metadata"]["name"], spec.get("ingressClassName") or "<none>",
                       ",".join(dict.fromkeys(hosts)), addr, ports, age])
    return Table((["NAMESPACE"] if namespace is None else [])
                 + ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"], rows)


_GATEWAY_KINDS = {  # kubectl's names and short names -> the kind
    **dict.fromkeys(("gatewayclasses", "gatewayclass", "gc"), "GatewayClass"),
    **dict.fromkeys(("gateways", "gateway", "gtw"), "Gateway"),
    **dict.fromkeys(("httproutes", "httproute"), "HTTPRoute"),
}


def _condition(obj: dict[str, Any], type_: str) -> str:
    return next((c["status"] for c in obj.get("status", {}).get("conditions", [])
                 if c["type"] == type_), "Unknown")


def _gateway_table(kind: str, objs: list[dict[str, Any]], created: list[float], all_ns: bool):
    """`kubectl get gatewayclass|gateway|httproute`, with the columns of the CRDs'
    additionalPrinterColumns."""
    from lab_kit.cluster import Table
    rows = []
    for o, t in zip(objs, created, strict=True):
        spec, age = o["spec"], human_duration(time.time() - t)
        if kind == "GatewayClass":
            row = [o["metadata"]["name"], spec["controllerName"], _condition(o, "Accepted"), age]
        elif kind == "Gateway":
            addr = ",".join(a["value"] for a in o["status"].get("addresses", []))
            row = [o["metadata"]["name"], spec["gatewayClassName"], addr,
                   _condition(o, "Programmed"), age]
        else:
            row = [o["metadata"]["name"], ",".join(spec.get("hostnames") or []) or "*", age]
        rows.append(([o["metadata"]["namespace"]] if all_ns else []) + row)
    head = {"GatewayClass": ["NAME", "CONTROLLER", "ACCEPTED", "AGE"],
            "Gateway": ["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"],
            "HTTPRoute": ["NAME", "HOSTNAMES", "AGE"]}[kind]
    return Table((["NAMESPACE"] if all_ns else []) + head, rows)


def human_duration(seconds: float) -> str:
    """kubectl's AGE (k8s.io/apimachinery duration.HumanDuration): 45s, 3m20s, 15m, 5h2m, 3d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d{h % 24}h" if h % 24 else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    if h < 24 * 365 * 8:
        dy = (h // 24) % 365
        return f"{h // 24 // 365}y{dy}d" if dy else f"{h // 24 // 365}y"
    return f"{h // 24 // 365}y"


def _target_netns(c, target: str) -> str:
    if target == "external":
        return c.external.netns
    for n in c.nodes():
        if n.name == target:
            return n.netns
    return c.pod(target).netns


def cmd_exec(args: argparse.Namespace) -> int:
    c = _attach(args)
    cmd = args.command
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise LabError("nothing to run: `lab-kit exec POD -- COMMAND…`")
    netns = _target_netns(c, args.target)
    c.runner.note(["ip", "netns", "exec", netns, *cmd], None, source="you")
    os.execvp("ip", ["ip", "netns", "exec", netns, *cmd])
    return 127  # not reached


def cmd_probe(args: argparse.Namespace) -> int:
    if args.matrix:
        return _probe_matrix(args)
    if args.source is None or args.to is None:
        raise LabError("probe what? `lab-kit probe SRC DST[:PORT]`, or every pod pair with "
                       "`lab-kit probe --matrix`")
    if args.expected or args.namespace:
        raise LabError("--expected and --namespace go with --matrix")
    c = _attach(args)
    dst, port = _split_port(args.to)
    if args.port is not None:
        if port is not None and port != args.port:
            raise LabError(f"two ports: {args.to!r} and --port {args.port}; give one")
        port = args.port
    r = c.probe(args.source, dst, port, protocol=args.protocol, path=args.path,
                timeout=args.timeout)
    print(json.dumps(r.to_dict()) if args.output == "json" else r)
    return 0 if r.ok else 1


def _probe_matrix(args: argparse.Namespace) -> int:
    """`probe --matrix`: every ordered pod pair, measured by real connections."""
    if args.source is not None:
        raise LabError("--matrix probes every pod pair: drop SRC/DST, or pick namespaces "
                       "with --namespace")
    c = _attach(args)
    wanted = [n for item in args.namespace or [] for n in item.split(",") if n]
    if wanted:
        infos = c.pods(include_system=True)
        missing = [n for n in wanted if not any(p.namespace == n for p in infos)]
        if missing:
            have = sorted({p.namespace for p in infos})
            raise LabError(f"no pods in namespace {', '.join(missing)}; namespaces with pods: "
                           f"{', '.join(have) or 'none'}")
        keys = [p.key for p in infos if p.namespace in wanted]
    else:
        keys = [p.key for p in c.pods()]
    if not keys:
        raise LabError("no pods to probe: apply some first, e.g. "
                       "`lab-kit apply -f labs/manifests/netpol-xyz.yaml`")
    port = 80 if args.port is None else args.port
    compare = args.expected or args.output != "json"
    r = c.reachability(port, args.protocol.upper(), pods=keys, timeout=args.timeout,
                       expected=compare)
    if args.output == "json":
        print(json.dumps(r.measured))
    else:
        print(r)
        if args.output == "wide":
            blocked = r.explain("blocked")
            if blocked:
                print("\nthe policy engine's reason for each blocked or differing pair:")
                print("\n".join("  " + ln for ln in blocked.splitlines()))
    if args.expected and not r.agrees:
        if args.output == "json":
            _say(f"{len(r.mismatches())} pairs differ from the policy engine's expectation:")
            for ln in r.explain("mismatches").splitlines():
                _say(ln)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from lab_kit.cluster import Cluster
    names = [args.name] if args.name else Cluster.list()
    if not names:
        print("no lab cluster is running — `lab-kit up` creates one")
        return 0
    for n in names:
        st = Cluster.attach(n).status()
        print(f"{st['name']}: {st['status']}, {st['nodes']} nodes, {st['pods']} pods, "
              f"{st['netns']} namespaces, cni {st['cni']}, state in {st['stateDir']}")
    return 0


def cmd_journal(args: argparse.Namespace) -> int:
    c = _attach(args)
    print(c.journal(netns=args.netns, last=args.last))
    return 0


def cmd_diagram(args: argparse.Namespace) -> int:
    c = _attach(args)
    dg = c.diagram()
    if args.output:
        fmt = args.output.rsplit(".", 1)[-1]
        with open(args.output, "wb") as f:
            f.write(dg.pipe(format=fmt))
        print(f"wrote {args.output}")
    else:
        print(dg.source)
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    c = _attach(args)
    if args.action == "add":
        labels = {}
        for item in args.label or []:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise LabError(f"--label {item!r}: write it as KEY=VALUE")
            labels[k] = v
        info = c.add_node(role=args.role, labels=labels, progress=_say)
        print(f"node/{info.name} created ({info.ip}, pod CIDR {info.pod_cidr})")
    else:
        if not args.node:
            raise LabError("which node? `lab-kit node remove NODE`")
        for line in c.remove_node(args.node, progress=_say):
            print(line)
    return 0


def cmd_birdc(args: argparse.Namespace) -> int:
    c = _attach(args)
    print(c.birdc(args.node, " ".join(args.command) or "show protocols"), end="")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    c = _attach(args)
    during = None
    if args.probe:
        src, dst = args.probe
        port = None
        if ":" in dst:
            dst, p = dst.rsplit(":", 1)
            if not p.isdigit():
                raise LabError(f"port {p!r} in {args.probe[1]!r} is not a number")
            port = int(p)

        def during():
            return c.probe(src, dst, port, protocol=args.protocol)
    seconds = args.seconds if args.seconds is not None else (2.0 if args.probe else None)
    if seconds is None and args.count is None:
        _say("capturing until Ctrl-C (or give -c N / --seconds S)")
    cap = c.capture(args.where, interface=args.interface, filter=" ".join(args.filter),
                    count=args.count, seconds=seconds, during=during)
    _say(f"$ {cap.shell_command}")
    _say(f"{len(cap)} packets in {cap.pcap}")
    if cap.result is not None:
        _say(str(cap.result))
    if args.write:
        _say(f"saved {cap.save(args.write)}")
    if args.output == "json":
        print(json.dumps(cap.to_dicts(), indent=1))
    elif args.tcpdump:
        print(cap.tcpdump_text(), end="")
    elif args.layers is not None:
        print(cap.layers(args.layers))
    else:
        print(cap.summary())
    return 0


def _split_port(to: str) -> tuple[str, int | None]:
    if ":" not in to:
        return to, None
    dst, p = to.rsplit(":", 1)
    if not p.isdigit():
        raise LabError(f"port {p!r} in {to!r} is not a number")
    return dst, int(p)


def cmd_conntrack(args: argparse.Namespace) -> int:
    c = _attach(args)
    flows = c.conntrack(args.node, src=args.src, dst=args.dst, port=args.port,
                        protocol=args.protocol, nat_only=not args.all)
    if args.output == "json":
        print(json.dumps([f.__dict__ | {"dnat": f.dnat, "snat": f.snat} for f in flows],
                         indent=1))
    else:
        print(flows)
    return 0


def cmd_walk(args: argparse.Namespace) -> int:
    from lab_kit import svcdebug
    c = _attach(args)
    dst, port = _split_port(args.to)
    if port is None:
        raise LabError(f"give the port: `lab-kit walk {args.source} {args.to}:PORT`")
    walk, result = svcdebug.packet_walk(c, args.source, dst, port, args.protocol)
    _say(str(result))
    print(walk)
    return 0 if walk else 1


def cmd_check(args: argparse.Namespace) -> int:
    from lab_kit.labs import get_lab
    try:
        lab = get_lab(args.lab)
    except KeyError as e:
        raise LabError(e.args[0]) from None
    answers = dict(a.split("=", 1) for a in args.answer or [])
    res = lab.run(args.check, **answers)
    print(res.summary())
    return 0 if res.all_passed else 1


PROBE_EPILOG = """\
with --matrix, every ordered pair of pods is probed with a real connection, all at once
(a connection unanswered after --timeout counts as blocked):

  table (default)  the upstream e2e suite's truth table: rows = from, columns = to,
                   `.` connected, `X` blocked. Each cell is compared with what the
                   NetworkPolicy engine expects from the objects alone; a pair whose
                   measurement differs is shown in brackets, [X] or [.], and listed
                   below the table with the engine's reason.
  wide             the table, then the engine's reason for every blocked pair.
  json             the measured matrix only: {"x/a": {"x/a": true, "x/b": false, ...}, ...}

exit status: SRC DST: 0 when the connection succeeds, 1 when it fails. --matrix: 0 once the
matrix is measured, whatever it shows; with --expected, 1 when the measured matrix differs
from the engine's expectation (for graders' scripts).

  lab-kit probe web-a web-b:8080
  lab-kit probe --matrix --port 80 --protocol TCP
  lab-kit probe --matrix -n x -n y --protocol UDP --port 81 -o json
  lab-kit probe --matrix --expected -o json > matrix.json || echo "policies not enforced"
"""


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lab-kit", description="A Kubernetes networking lab "
                                 "built from real Linux kernel objects.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name: str, fn, help: str, cluster: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if cluster:
            p.add_argument("--name", help="cluster name (default: the only running one, "
                           "or $LAB_KIT_CLUSTER, or `lab`)")
        p.set_defaults(fn=fn)
        return p

    add("doctor", cmd_doctor, "check this machine has what the labs need", cluster=False)
    p = add("up", cmd_up, "create a cluster from a kind-format config")
    p.add_argument("-f", "--file", help="cluster config (kind: Cluster); default 1 "
                   "control-plane + 2 workers")
    p.add_argument("--replace", action="store_true", help="remove a cluster of the same name")
    p.add_argument("--cluster-dns", action="store_true", help="deploy CoreDNS behind kube-dns "
                   "10.96.0.10 (as networking.clusterDNS: true in the config)")
    p = add("down", cmd_down, "remove a cluster and everything it made")
    p.add_argument("--all", action="store_true", help="remove every lab cluster on this host")
    p = add("apply", cmd_apply, "create or update objects from manifests (like kubectl)")
    p.add_argument("-f", "--file", action="append", required=True, help="manifest file")
    p = add("delete", cmd_delete, "delete objects from manifests, or a pod by name")
    p.add_argument("-f", "--file", action="append")
    p.add_argument("kind", nargs="?", help="pod or svc")
    p.add_argument("names", nargs="*")
    p.add_argument("-n", "--namespace")
    p = add("get", cmd_get, "list pods or nodes (like kubectl get -o wide)")
    p.add_argument("kind", help="pods, nodes, svc, endpointslices, networkpolicies (netpol), "
                   "ingress (ing), ingressclass, gatewayclass (gc), gateway (gtw), httproute, "
                   "or several: svc,endpointslices")
    p.add_argument("names", nargs="*", help="only these objects (Services, NetworkPolicies, "
                   "Ingresses, Gateway API objects)")
    p.add_argument("-n", "--namespace")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=["wide", "json", "yaml"], default="wide")
    p = add("exec", cmd_exec, "run a command in a pod's, a node's or the external host's netns")
    p.add_argument("target", help="pod (name or ns/name), node name, or `external`")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS…]")
    p = add("probe", cmd_probe, "open a real connection FROM a pod/node TO pod[:port], or "
            "every ordered pod pair at once with --matrix")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = PROBE_EPILOG
    p.add_argument("source", nargs="?", help="pod, node or `external` (not with --matrix)")
    p.add_argument("to", nargs="?", help="pod, node, `external` or IP, with an optional :PORT")
    p.add_argument("--matrix", action="store_true", help="probe every ordered pod pair "
                   "(pods outside kube-system, or those of --namespace) at once")
    p.add_argument("--port", type=_port, help="destination port (default: the pod's first "
                   "port; 80 with --matrix)")
    p.add_argument("--protocol", default="TCP", choices=["TCP", "UDP", "tcp", "udp"])
    p.add_argument("-n", "--namespace", action="append", metavar="NS",
                   help="--matrix: only the pods of NS (repeat it, or NS1,NS2)")
    p.add_argument("--expected", action="store_true", help="--matrix: exit 1 when the "
                   "measured matrix differs from the policy engine's expectation")
    p.add_argument("--path", default="/hostname", help="HTTP path for TCP probes")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds before an unanswered "
                   "connection counts as blocked (default 1)")
    p.add_argument("-o", "--output", choices=["text", "json", "table", "wide"], default="text",
                   help="text (= table with --matrix), json, wide (--matrix: with reasons)")
    add("status", cmd_status, "show running clusters")
    p = add("journal", cmd_journal, "print every kernel command the lab ran, re-typeable")
    p.add_argument("--netns")
    p.add_argument("--last", type=int)
    p = add("diagram", cmd_diagram, "draw the cluster from live kernel state (Graphviz)")
    p.add_argument("-o", "--output", help="file.svg or file.png; default: DOT text")
    p = add("node", cmd_node, "add a node to a running cluster, or remove one")
    p.add_argument("action", choices=["add", "remove"])
    p.add_argument("node", nargs="?", help="the node to remove")
    p.add_argument("--role", default="worker", choices=["worker", "control-plane"])
    p.add_argument("--label", action="append", help="KEY=VALUE node label (add)")
    p = add("birdc", cmd_birdc, "ask a node's BIRD daemon (bgp backend), e.g. show route")
    p.add_argument("node")
    p.add_argument("command", nargs="*", help="birdc command; default: show protocols")
    p = add("conntrack", cmd_conntrack, "conntrack entries with their NAT mapping (DNAT to "
            "the endpoint, SNAT of the client)")
    p.add_argument("node", nargs="?", help="one node (default: every node)")
    p.add_argument("--src", help="original source: pod, node, `external` or IP")
    p.add_argument("--dst", help="original destination: a ClusterIP, node IP, LB IP, pod…")
    p.add_argument("--port", type=int, help="original destination port")
    p.add_argument("--protocol", choices=["TCP", "UDP", "tcp", "udp"])
    p.add_argument("--all", action="store_true", help="also flows without NAT")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p = add("walk", cmd_walk, "send one connection and list the chains and rules its first "
            "packet passes on each node (nftrace), with live counters")
    p.add_argument("source", help="pod, node or `external`")
    p.add_argument("to", help="DST:PORT, e.g. 10.96.12.34:80 or a node IP and NodePort")
    p.add_argument("--protocol", default="TCP", choices=["TCP", "UDP", "tcp", "udp"])
    p = add("capture", cmd_capture, "tcpdump in a node, pod or `external`, decoded layer by "
            "layer (VXLAN included)")
    p.add_argument("where", help="node, pod or `external`")
    p.add_argument("filter", nargs="*", help="BPF filter, as for tcpdump (e.g. udp port 8472)")
    p.add_argument("-i", "--interface", default="any", help="eth0 on a node shows the underlay")
    p.add_argument("-c", "--count", type=int, help="stop after N packets")
    p.add_argument("--seconds", type=float, help="stop after S seconds")
    p.add_argument("--probe", nargs=2, metavar=("SRC", "DST[:PORT]"),
                   help="open a connection while capturing")
    p.add_argument("--protocol", default="TCP", choices=["TCP", "UDP", "tcp", "udp"])
    p.add_argument("--layers", type=int, metavar="N", help="print packet N header by header")
    p.add_argument("--tcpdump", action="store_true", help="print tcpdump -nn -e -v's decoding")
    p.add_argument("-w", "--write", metavar="FILE", help="copy the pcap to FILE")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p = add("check", cmd_check, "run a lab's checks from the terminal", cluster=False)
    p.add_argument("lab")
    p.add_argument("check", nargs="?")
    p.add_argument("--answer", action="append", help="KEY=VALUE for checks that need one")
    p = add("dns", cmd_dns, "cluster DNS: the coredns pods' Prometheus counters")
    p.add_argument("what", choices=["metrics"])
    p.add_argument("--pod", help="one coredns pod (default: every one)")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra and args.cmd == "capture" and not any(e.startswith("-") for e in extra):
        args.filter += extra  # filter words after the options, as tcpdump allows
    elif extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.fn(args)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
