#!/usr/bin/env python3
"""A CNI plugin in Python: the reference solution of lab 06 ("write a CNI plugin").

It does the job of the reference `bridge` plugin with `isGateway: true`, in a few steps a learner
can follow: ask the IPAM plugin (`host-local`) for an address, make sure the node's bridge exists
and carries the pods' gateway address, cable the pod to the bridge with a veth pair, configure the
pod's end, and report what it made. DEL undoes it and releases the address; CHECK verifies it.

The runtime runs it in the *node's* network namespace, with the CNI_* variables in the
environment and the network config on stdin (CNI spec 1.0):

    {"cniVersion": "1.0.0", "name": "cbr0", "type": "...", "bridge": "cni0", "isGateway": true,
     "mtu": 1500, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.2.0/24"}]],
                           "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "..."}}

Standard library only; the kernel work is done by `ip` (iproute2). The file is written in the
notebook's four parts (the `# === part: <name> ===` lines): the notebook's reference solution
copies each part into the learner's `my-cni.d/`, and the broken plugins next to this file import
it and break one rule each.
"""

# === part: protocol ===
# Part 1: the protocol. How a runtime talks to a plugin: CNI_COMMAND and friends in the
# environment, the network config on stdin, a result or an error on stdout, the exit code.
import json
import os
import subprocess
import sys

CNI_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
ERR_ENV, ERR_DECODE, ERR_CONFIG, ERR_VERSION = 4, 6, 7, 1  # codes from the spec's table
ERR_CHECK = 100  # 100 and up are the plugin's own
ERR_INTERNAL = 999  # what the reference library uses for "something failed"


class CniError(Exception):
    """An error the runtime understands. main() prints it as the spec's error JSON."""

    def __init__(self, code, msg, details=""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def run(*argv, netns=None):
    """Run a command and return its stdout; `netns` (a path such as CNI_NETNS) runs it there.

    `nsenter --net=PATH` enters a namespace given by its path; `ip -n` would want a name.
    """
    if netns:
        argv = ("nsenter", f"--net={netns}", "--", *argv)
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if p.returncode != 0:
        raise CniError(ERR_INTERNAL, f"`{' '.join(map(str, argv))}` failed", p.stderr.strip())
    return p.stdout


def link(name, netns=None):
    """`ip -j addr show dev NAME` as a dict, or None when there is no such link."""
    try:
        out = run("ip", "-j", "addr", "show", "dev", name, netns=netns)
    except CniError:
        return None
    links = json.loads(out or "[]")
    return links[0] if links else None


def addresses(ln):
    """The IPv4 addresses of a link from link(), as "10.244.2.5/24" strings."""
    return [f"{a['local']}/{a['prefixlen']}" for a in (ln or {}).get("addr_info", [])
            if a.get("family") == "inet"]


# the spec's table: what each command cannot do without (VERSION needs nothing)
REQUIRED_ENV = {
    "ADD": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
    "DEL": ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
    "CHECK": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
}


def main():
    command = os.environ.get("CNI_COMMAND", "")
    version = CNI_VERSION  # errors carry the config's cniVersion once it is known
    try:
        raw = sys.stdin.read()
        if command == "VERSION":
            try:
                asked = json.loads(raw).get("cniVersion", CNI_VERSION)
            except (ValueError, AttributeError):
                asked = CNI_VERSION
            print(json.dumps({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS}))
            return 0
        if command not in REQUIRED_ENV:
            raise CniError(ERR_ENV, f"unknown CNI_COMMAND: {command or '(empty)'}",
                           "use ADD, DEL, CHECK or VERSION")
        missing = [v for v in REQUIRED_ENV[command] if not os.environ.get(v)]
        if missing:
            raise CniError(ERR_ENV, f"required env variables {missing} missing")
        try:
            conf = json.loads(raw)
        except ValueError as e:
            raise CniError(ERR_DECODE, "the network config on stdin is not JSON", str(e)) from None
        if not isinstance(conf, dict):
            raise CniError(ERR_DECODE, "the network config on stdin is not a JSON object")
        version = conf.get("cniVersion") or CNI_VERSION
        if version not in SUPPORTED_VERSIONS:
            raise CniError(ERR_VERSION, f"cniVersion {version} is not supported",
                           f"supported: {', '.join(SUPPORTED_VERSIONS)}")
        if not conf.get("name"):
            raise CniError(ERR_CONFIG, "the network config has no name")
        if command == "ADD":
            print(json.dumps(cmd_add(conf)))
        elif command == "DEL":
            cmd_del(conf)
        else:
            cmd_check(conf)
        return 0
    except CniError as e:
        print(json.dumps({"cniVersion": version, "code": e.code, "msg": e.msg,
                          "details": e.details}))
        return 1


# === part: add ===
# Part 2: ADD. IPAM first, then the bridge, the veth pair, the pod's side, and the result.
import hashlib  # noqa: E402  (each part imports what it needs)


def ipam(command, conf):
    """Delegate to the IPAM plugin named in conf["ipam"]["type"] (host-local).

    The spec's delegation: find the executable in CNI_PATH, run it with the same environment
    (CNI_COMMAND and all) and the same, complete network config on stdin. On ADD it prints an
    IPAM result: {"ips": [{"address", "gateway"}], "routes": [...]}, without interfaces.
    """
    name = (conf.get("ipam") or {}).get("type")
    if not name:
        raise CniError(ERR_CONFIG, "the network config has no ipam.type")
    dirs = [d for d in os.environ.get("CNI_PATH", "").split(":") if d]
    exe = next((os.path.join(d, name) for d in dirs if os.access(os.path.join(d, name), os.X_OK)),
               None)
    if exe is None:
        raise CniError(ERR_CONFIG, f"IPAM plugin {name} not found in CNI_PATH {dirs}")
    p = subprocess.run([exe], input=json.dumps(conf), capture_output=True, text=True,
                       env=dict(os.environ, CNI_COMMAND=command))
    if p.returncode != 0:  # pass its error on: its code, its message
        try:
            err = json.loads(p.stdout)
        except ValueError:
            err = None
        if not isinstance(err, dict):
            err = {"msg": f"{command} failed", "details": p.stderr.strip()}
        raise CniError(err.get("code", ERR_INTERNAL), f"{name}: {err.get('msg')}",
                       err.get("details", ""))
    return json.loads(p.stdout) if command == "ADD" else None


def host_veth(container_id, ifname):
    """The node's end of the pod's veth: `veth` + 8 hex digits derived from the attachment.

    Derived, not random: DEL can find it again without looking into the pod.
    """
    return "veth" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:8]


def cmd_add(conf):
    netns, ifname = os.environ["CNI_NETNS"], os.environ["CNI_IFNAME"]
    bridge, mtu = conf.get("bridge", "cni0"), str(conf.get("mtu", 1500))
    if not os.path.exists(netns):
        raise CniError(ERR_INTERNAL, f"the network namespace {netns} does not exist")
    # The spec: an interface of that name already in the container is an error. Look before
    # taking an address, or the address would leak.
    if link(ifname, netns) is not None:
        raise CniError(ERR_INTERNAL, f"{ifname} already exists in {netns}")

    # 1. An address, from the IPAM plugin: host-local hands out the next free IP of the node's
    #    range and remembers it in its dataDir under the container ID.
    res = ipam("ADD", conf)
    ip4 = next(ip for ip in res["ips"] if ":" not in ip["address"])
    address, gateway = ip4["address"], ip4["gateway"]  # "10.244.2.5/24", "10.244.2.1"
    prefix = address.split("/")[1]
    veth = host_veth(os.environ["CNI_CONTAINERID"], ifname)
    try:
        # 2. The bridge in the node's netns: a virtual switch every pod on this node plugs into.
        #    Made by the first ADD; with isGateway it holds the gateway address, so the node is a
        #    host on the pods' segment and routes their traffic to everywhere else.
        if link(bridge) is None:
            run("ip", "link", "add", bridge, "mtu", mtu, "type", "bridge")
        if conf.get("isGateway") and f"{gateway}/{prefix}" not in addresses(link(bridge)):
            run("ip", "addr", "add", f"{gateway}/{prefix}", "dev", bridge)
        run("ip", "link", "set", bridge, "up")
        # 3. The cable: a veth pair. One end stays on the node (`veth…`), the other is created
        #    directly inside the pod's netns under the name the runtime asked for (CNI_IFNAME).
        run("ip", "link", "add", veth, "mtu", mtu, "type", "veth",
            "peer", "name", ifname, "mtu", mtu, "netns", netns)
        # 4. The node's end becomes a port of the bridge, and goes up.
        run("ip", "link", "set", veth, "master", bridge)
        run("ip", "link", "set", veth, "up")
        # 5. The pod's end: the address, up, and the routes IPAM asked for (the default route,
        #    via the gateway on the bridge).
        run("ip", "addr", "add", address, "dev", ifname, netns=netns)
        run("ip", "link", "set", ifname, "up", netns=netns)
        for r in res.get("routes", []):
            run("ip", "route", "add", r["dst"], "via", r.get("gw", gateway), "dev", ifname,
                netns=netns)
    except CniError:
        # undo what was made, and give the address back: a failed ADD leaves nothing behind
        if link(veth) is not None:
            run("ip", "link", "del", veth)  # one end of a veth takes the other along
        ipam("DEL", conf)
        raise

    # 6. The result: what was made. `interfaces` lists them (the pod's one with `sandbox`, the
    #    netns path); each `ips` entry points at its interface by index into that list.
    return {
        "cniVersion": conf["cniVersion"],
        "interfaces": [
            {"name": bridge, "mac": link(bridge)["address"]},
            {"name": veth, "mac": link(veth)["address"]},
            {"name": ifname, "mac": link(ifname, netns)["address"], "sandbox": netns},
        ],
        "ips": [{"address": address, "gateway": gateway, "interface": 2}],
        "routes": res.get("routes", []),
        "dns": res.get("dns", {}),
    }


# === part: del ===
# Part 3: DEL. Undo ADD, as far as anything is left, and never fail because it is already gone.

def cmd_del(conf):
    netns, ifname = os.environ.get("CNI_NETNS", ""), os.environ["CNI_IFNAME"]
    # 1. The pod's end, if the pod's netns is still there (it may be gone: best effort).
    if netns and os.path.exists(netns) and link(ifname, netns) is not None:
        run("ip", "link", "del", ifname, netns=netns)
    # 2. The node's end. Deleting either end of a veth deletes the pair, so this is usually
    #    gone by now; it is not when the runtime passed no netns.
    veth = host_veth(os.environ["CNI_CONTAINERID"], ifname)
    if link(veth) is not None:
        run("ip", "link", "del", veth)
    # 3. Give the address back: DEL is delegated to IPAM too, always. host-local forgets the
    #    container's reservation (and succeeds if it has none).
    ipam("DEL", conf)
    # The bridge stays: other pods on this node use it.


# === part: check ===
# Part 4: CHECK. Is everything the ADD result lists still there?

def cmd_check(conf):
    netns, ifname = os.environ["CNI_NETNS"], os.environ["CNI_IFNAME"]
    prev = conf.get("prevResult")
    if not prev:
        raise CniError(ERR_CONFIG, "CHECK needs prevResult, the result of ADD")
    ipam("CHECK", conf)  # the spec: CHECK is delegated too (host-local checks its reservation)
    ln = link(ifname, netns)
    if ln is None:
        raise CniError(ERR_CHECK, f"{ifname} is missing in {netns}")
    if "UP" not in ln.get("flags", []):
        raise CniError(ERR_CHECK, f"{ifname} in {netns} is down")
    have = addresses(ln)
    interfaces = prev.get("interfaces", [])
    for ip in prev.get("ips", []):
        i = ip.get("interface")
        if isinstance(i, int) and 0 <= i < len(interfaces) and interfaces[i].get("name") != ifname:
            continue  # an address of another interface
        if ":" not in ip["address"] and ip["address"] not in have:
            raise CniError(ERR_CHECK, f"{ip['address']} is missing on {ifname} in {netns}",
                           f"{ifname} has {', '.join(have) or 'no IPv4 address'}")
    for r in prev.get("routes", []):
        if not run("ip", "-4", "route", "show", "exact", r["dst"], netns=netns).strip():
            raise CniError(ERR_CHECK, f"the route to {r['dst']} is missing in {netns}")


# === end of parts ===

if __name__ == "__main__":
    sys.exit(main())
