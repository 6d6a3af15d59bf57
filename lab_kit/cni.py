"""Run CNI plugins the way a container runtime does (CNI spec 1.0).

The runtime executes the plugin named by `type`, found in CNI_PATH, with CNI_COMMAND,
CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_PATH in the environment and the network config
on stdin. For a conflist, ADD runs the plugins in order, each receiving the previous result as
`prevResult`; DEL runs them in reverse. Plugins run in the *node's* netns (the runtime's), and
create the pod's interface in CNI_NETNS.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_kit.errors import CommandError, LabError
from lab_kit.kernel import Runner, netns_path

CNI_VERSION = "1.0.0"
DEFAULT_PATHS = ("/usr/lib/cni", "/opt/cni/bin")


class CniError(LabError):
    """A CNI plugin returned an error (spec: code, msg, details)."""

    def __init__(self, plugin: str, command: str, code: int | None, msg: str, details: str = ""):
        self.plugin, self.command, self.code, self.msg, self.details = (
            plugin, command, code, msg, details)
        extra = f" ({details})" if details else ""
        super().__init__(f"CNI plugin `{plugin}` {command} failed with code {code}: {msg}{extra}")


@dataclass(frozen=True)
class Attachment:
    container_id: str
    netns: str  # the pod's netns name
    ifname: str = "eth0"


def cni_path(extra: list[str] | None = None) -> list[str]:
    paths = list(extra or [])
    paths += [p for p in DEFAULT_PATHS if os.path.isdir(p)]
    return paths


def find_plugin(ptype: str, paths: list[str]) -> str:
    """The executable for plugin `ptype`: a name looked up in `paths` (CNI_PATH), or a path.

    A path may start with `~` (the home directory of whoever runs the lab), so a cluster config
    can name a learner's own plugin, e.g. `~/lab_kit-work/my-cni`.
    """
    if "/" in ptype:
        candidates = [os.path.expanduser(ptype)]
    else:
        candidates = [os.path.join(d, ptype) for d in paths]
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    for c in candidates:
        if os.path.isdir(c):
            raise LabError(f"CNI plugin `{ptype}` at {c} is a directory, not an executable "
                           "file — name the plugin file itself")
        if os.path.exists(c):
            raise LabError(f"CNI plugin `{ptype}` at {c} is not executable — chmod +x it")
    if "/" in ptype:
        raise LabError(f"CNI plugin `{ptype}` not found: there is no file {candidates[0]} — "
                       "write the plugin there (and chmod +x it) or fix the path")
    raise LabError(f"CNI plugin `{ptype}` not found in {':'.join(paths) or '(empty CNI_PATH)'}"
                   " — install containernetworking-plugins or fix the plugin name")


def render_bridge_conflist(pod_cidr: str, data_dir: str, mtu: int = 1500,
                           plugin: str = "bridge") -> dict[str, Any]:
    """The node's network config: the reference `bridge` plugin with `host-local` IPAM.

    This is the config Flannel hands to the bridge plugin (cni0, hairpin on, the pod's default
    route via the bridge), with host-local allocating from the node's pod /24.
    """
    return {
        "cniVersion": CNI_VERSION,
        "name": "cbr0",
        "plugins": [{
            "type": plugin,
            "bridge": "cni0",
            "isGateway": True,
            "hairpinMode": True,
            "ipMasq": False,
            "mtu": mtu,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": pod_cidr}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": data_dir,
            },
        }],
    }


LOOPBACK_CONF: dict[str, Any] = {"cniVersion": CNI_VERSION, "name": "cni-loopback",
                                 "plugins": [{"type": "loopback"}]}


def request_config(plugin_conf: dict[str, Any], name: str,
                   prev_result: dict[str, Any] | None = None) -> dict[str, Any]:
    """What one plugin of a conflist gets on stdin: its own object, plus the network's
    `cniVersion` and `name` and, after the first ADD of a chain, CHECK and DEL, `prevResult`."""
    conf = dict(plugin_conf)
    conf["cniVersion"] = CNI_VERSION
    conf["name"] = name
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return conf


def invoke(runner: Runner, node_netns: str, plugin_conf: dict[str, Any], command: str,
           att: Attachment, *, name: str, paths: list[str],
           prev_result: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Execute one plugin for one attachment. Returns its result JSON (None for DEL)."""
    exe = find_plugin(plugin_conf["type"], paths)
    conf = request_config(plugin_conf, name, prev_result)
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": att.container_id,
           "CNI_NETNS": netns_path(att.netns), "CNI_IFNAME": att.ifname,
           "CNI_PATH": ":".join(paths)}
    try:
        done = runner.run([exe], node_netns, input=json.dumps(conf), env=env, timeout=30)
    except CommandError as e:
        raise _cni_error(plugin_conf["type"], command, e) from None
    if command in ("DEL", "CHECK"):
        return None
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        raise CniError(plugin_conf["type"], command, None,
                       f"result is not JSON: {done.stdout[:200]!r}") from None


def _cni_error(plugin: str, command: str, e: CommandError) -> CniError:
    for text in (e.stdout, e.stderr):
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(d, dict) and "msg" in d:
            return CniError(plugin, command, d.get("code"), d["msg"], d.get("details", ""))
    return CniError(plugin, command, None, (e.stderr or e.stdout).strip() or f"exit {e.rc}")


def add(runner: Runner, node_netns: str, conflist: dict[str, Any], att: Attachment,
        paths: list[str]) -> dict[str, Any]:
    """ADD through the chain. If any plugin fails, DEL runs for the whole chain (best effort)
    before the error is raised: the spec's runtime must DEL after every ADD, even a failed one,
    so a plugin that failed half-way can release its address and links."""
    result: dict[str, Any] | None = None
    try:
        for pconf in conflist["plugins"]:
            result = invoke(runner, node_netns, pconf, "ADD", att, name=conflist["name"],
                            paths=paths, prev_result=result)
    except CniError:
        with contextlib.suppress(LabError):
            delete(runner, node_netns, conflist, att, paths)
        raise
    assert result is not None
    return result


def delete(runner: Runner, node_netns: str, conflist: dict[str, Any], att: Attachment,
           paths: list[str], prev_result: dict[str, Any] | None = None) -> None:
    """DEL in reverse order; every plugin is tried even if one fails (best effort, per spec)."""
    first: CniError | None = None
    for pconf in reversed(conflist["plugins"]):
        try:
            invoke(runner, node_netns, pconf, "DEL", att, name=conflist["name"], paths=paths,
                   prev_result=prev_result)
        except CniError as e:
            first = first or e
    if first:
        raise first


def check(runner: Runner, node_netns: str, conflist: dict[str, Any], att: Attachment,
          paths: list[str], prev_result: dict[str, Any]) -> None:
    for pconf in conflist["plugins"]:
        invoke(runner, node_netns, pconf, "CHECK", att, name=conflist["name"], paths=paths,
               prev_result=prev_result)


def result_ipv4(result: dict[str, Any]) -> str:
    """The pod's IPv4 address (without prefix) from a CNI result."""
    for ip in result.get("ips", []):
        addr = ip.get("address", "")
        if ":" not in addr:
            return addr.split("/")[0]
    raise LabError(f"CNI result has no IPv4 address: {json.dumps(result)[:200]}")


def write_conflist(path: Path, conflist: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(conflist, indent=2) + "\n")
