"""ConfigMaps, and the one lab_kit acts on: `kube-system/ip-masq-agent`, the configuration of
the ip-masq-agent (kubernetes-sigs/ip-masq-agent), which decides which pod traffic leaving a
node is masqueraded (SNATed to the node's address).

The agent keeps one iptables chain per node, `IP-MASQ-AGENT` in the nat table, jumped to from
`POSTROUTING` for every packet not bound for a local address. Its rules, in order:

- unless `masqLinkLocal: true`, `169.254.0.0/16` returns (link-local is never masqueraded);
- each of `nonMasqueradeCIDRs` returns: traffic to these ranges keeps the pod's address;
- the last rule masquerades everything else.

The config is YAML (or JSON) under the ConfigMap's key `config`, as the agent's DaemonSet
mounts it. The agent's own default without a ConfigMap is the RFC 1918 ranges, which would
cover the lab's data-centre network (172.18.0.0/16) too; lab_kit's default is kind's instead:
only the cluster's pod subnet is exempt, so pods reach the `external` host masqueraded. A
ConfigMap's list *replaces* the default, as with the real agent: leave the pod subnet out and
pod-to-pod traffic between nodes is masqueraded too.

Bad input (a CIDR that does not parse, an unknown key, a value of the wrong type) is refused at
`apply` with the object and field named; the real agent would log the error and keep its last
good config, and in a lab a silent no-op teaches nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from lab_kit.fields import FieldParser, config_key_problem

NAMESPACE = "kube-system"
NAME = "ip-masq-agent"
CONFIG_KEY = "config"
CHAIN = "IP-MASQ-AGENT"
LINK_LOCAL = "169.254.0.0/16"
MAX_SIZE = 1024 * 1024  # a ConfigMap's data, like a Secret's, is at most 1 MiB
JUMP_COMMENT = ("ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination "
                "traffic to our custom IP-MASQ-AGENT chain")
RETURN_COMMENT = "ip-masq-agent: local traffic is not subject to MASQUERADE"
MASQ_COMMENT = "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)"
KEYS = ("nonMasqueradeCIDRs", "masqLinkLocal", "masqLinkLocalIPv6", "resyncInterval")
_DURATION_RE = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


@dataclass(frozen=True)
class ConfigMap:
    namespace: str
    name: str
    data: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class MasqConfig:
    """ip-masq-agent's settings (only IPv4 is acted on: the lab is IPv4)."""

    non_masquerade_cidrs: tuple[str, ...]
    masq_link_local: bool = False
    resync_interval: str = "60s"

    def exempt(self) -> list[str]:
        """The destinations that return early, in the chain's order."""
        out = [] if self.masq_link_local else [LINK_LOCAL]
        return out + [c for c in self.non_masquerade_cidrs if ":" not in c]


def parse_configmap(namespace: str, name: str, labels: Mapping[str, str],
                    doc: Mapping[str, Any], *, file: str = "<object>") -> ConfigMap:
    """A v1 ConfigMap from its manifest, with the API server's checks on `data`. (Whether
    kube-system/ip-masq-agent holds a config the agent takes is checked when it is applied,
    `parse_masq_config`: `delete -f` needs only its name.)"""
    p = FieldParser(file, f"ConfigMap/{namespace}/{name}")
    if doc.get("binaryData"):
        raise p.fail("binaryData is not supported by lab_kit", "binaryData",
                     "put text under `data`")
    data: dict[str, str] = {}
    total = 0
    for k, v in p.mapping(doc.get("data"), "data").items():
        k = str(k)
        problem = config_key_problem(k)
        if problem:
            raise p.fail(f"Invalid value: {k!r}: {problem}", f"data[{k}]",
                         "a key is a file name when the ConfigMap is mounted: letters, digits, "
                         "'-', '_' and '.'")
        if v is None:
            v = ""
        if not isinstance(v, str):
            raise p.fail(f"{v!r} must be a string, not {type(v).__name__}", f"data[{k}]",
                         "put the value in quotes, or write it as a block (`key: |`)")
        data[k] = v
        total += len(v.encode())
    if total > MAX_SIZE:
        raise p.fail(f"Too long: must have at most {MAX_SIZE} bytes", "data",
                     f"the values add up to {total} bytes")
    return ConfigMap(namespace, name, data, dict(labels))


def parse_masq_config(cm: ConfigMap, *, file: str = "<object>") -> MasqConfig:
    """The agent's config under `data.config`, checked as the agent checks it (every CIDR must
    parse), plus unknown keys, which the agent would silently ignore."""
    p = FieldParser(file, f"ConfigMap/{cm.namespace}/{cm.name}")
    base = f"data[{CONFIG_KEY}]"
    if CONFIG_KEY not in cm.data:
        raise p.fail(f"the agent reads its config from the key `{CONFIG_KEY}`; this ConfigMap "
                     f"has {', '.join(sorted(cm.data)) or 'no keys'}", "data",
                     "data:\n  config: |\n    nonMasqueradeCIDRs:\n    - 10.244.0.0/16")
    try:
        doc = yaml.safe_load(cm.data[CONFIG_KEY])
    except yaml.YAMLError as e:
        raise p.fail(f"not YAML: {str(e).splitlines()[0]}", base,
                     "write `nonMasqueradeCIDRs:` then one `- CIDR` per line") from None
    doc = p.mapping(doc, base)
    for k in doc:
        if k not in KEYS:
            raise p.fail(f"unknown key {k!r} (the agent would ignore it silently)",
                         f"{base}.{k}", f"its keys are {', '.join(KEYS)} (mind the case)")
    cidrs = []
    for i, c in enumerate(p.listing(doc.get("nonMasqueradeCIDRs"),
                                    f"{base}.nonMasqueradeCIDRs")):
        fld = f"{base}.nonMasqueradeCIDRs[{i}]"
        if not isinstance(c, str):
            raise p.fail(f"{c!r} must be a string", fld, "a CIDR such as 10.244.0.0/16")
        if "/" not in c:
            raise p.fail(f"CIDR {c!r} could not be parsed: no prefix length", fld,
                         f"one address is {c}/32")
        try:
            net = ipaddress.ip_network(c, strict=False)
        except ValueError as e:
            raise p.fail(f"CIDR {c!r} could not be parsed ({e})", fld,
                         "an address and a prefix length, such as 10.244.0.0/16") from None
        cidrs.append(str(net))
    flags = {}
    for k in ("masqLinkLocal", "masqLinkLocalIPv6"):
        v = doc.get(k, False)
        if not isinstance(v, bool):
            raise p.fail(f"{v!r} must be true or false", f"{base}.{k}")
        flags[k] = v
    interval = doc.get("resyncInterval", "60s")
    if not isinstance(interval, str) or not _DURATION_RE.fullmatch(interval):
        raise p.fail(f"{interval!r} is not a duration", f"{base}.resyncInterval",
                     "a Go duration such as 60s or 1m30s")
    return MasqConfig(tuple(cidrs), flags["masqLinkLocal"], interval)


def default_config(pod_subnet: str) -> MasqConfig:
    """Without a ConfigMap: kind's rule, only the pod subnet is exempt (no link-local rule)."""
    return MasqConfig((pod_subnet,), masq_link_local=True)


def restore_lines(cfg: MasqConfig, with_jump: bool) -> list[str]:
    """An `iptables-restore --noflush` input that (re)writes the chain; the jump from
    POSTROUTING is added only `with_jump` (it must exist once)."""
    lines = ["*nat", f":{CHAIN} - [0:0]"]
    if with_jump:
        lines.append(f'-A POSTROUTING -m comment --comment "{JUMP_COMMENT}" '
                     f"-m addrtype ! --dst-type LOCAL -j {CHAIN}")
    lines += [f'-A {CHAIN} -d {c} -m comment --comment "{RETURN_COMMENT}" -j RETURN'
              for c in cfg.exempt()]
    lines += [f'-A {CHAIN} -m comment --comment "{MASQ_COMMENT}" -j MASQUERADE', "COMMIT", ""]
    return lines


def is_whole(chain_rules: str, cfg: MasqConfig) -> bool:
    """`iptables -t nat -S IP-MASQ-AGENT` shows exactly the rules `cfg` asks for."""
    got = [ln for ln in chain_rules.splitlines() if ln.startswith(f"-A {CHAIN} ")]
    want = [f"-d {c}" for c in cfg.exempt()]
    if len(got) != len(want) + 1 or "-j MASQUERADE" not in got[-1]:
        return False
    return all(w in g and "-j RETURN" in g for w, g in zip(want, got, strict=False))


def masq_config_from_state(configmaps: Mapping[str, Any], pod_subnet: str) -> MasqConfig:
    """The config in force: the stored kube-system/ip-masq-agent ConfigMap's, else the default."""
    entry = configmaps.get(f"{NAMESPACE}/{NAME}")
    if entry is None:
        return default_config(pod_subnet)
    return parse_masq_config(configmap_from_json(entry["spec"]), file="<state>")


def configmap_to_json(cm: ConfigMap) -> dict[str, Any]:
    return {"namespace": cm.namespace, "name": cm.name, "labels": dict(cm.labels),
            "data": dict(cm.data)}


def configmap_from_json(d: Mapping[str, Any]) -> ConfigMap:
    return ConfigMap(d["namespace"], d["name"], dict(d.get("data") or {}),
                     dict(d.get("labels") or {}))

