"""ConfigMaps and ip-masq-agent's config (kube-system/ip-masq-agent): parsing, refusals that
name the field, and the chain's rules."""

from __future__ import annotations

from typing import Any

import pytest

from lab_kit import masq, model
from lab_kit.errors import ConfigError


def configmap(config: str | None = None, name: str = "ip-masq-agent",
              namespace: str = "kube-system", **data: Any) -> dict[str, Any]:
    if config is not None:
        data["config"] = config
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": data}


def load(doc: dict[str, Any]) -> Any:
    [(obj, _src)] = model.load_manifests(doc)
    return obj


def refused(doc: dict[str, Any]) -> ConfigError:
    """The error of loading `doc`, or of applying it as ip-masq-agent's config (which the
    cluster checks before it changes anything)."""
    with pytest.raises(ConfigError) as e:
        cm = load(doc)
        if cm.key == "kube-system/ip-masq-agent":
            masq.parse_masq_config(cm)
    return e.value


def test_a_configmap_is_stored_with_its_data() -> None:
    cm = load(configmap(name="settings", namespace="shop", color="blue", empty=None))
    assert cm == masq.ConfigMap("shop", "settings", {"color": "blue", "empty": ""})
    assert masq.configmap_from_json(masq.configmap_to_json(cm)) == cm


def test_the_agents_config_is_read_from_yaml_and_json() -> None:
    cm = load(configmap("nonMasqueradeCIDRs:\n- 10.244.0.0/16\n- 172.18.0.102/32\n"
                        "masqLinkLocal: false\nresyncInterval: 60s\n"))
    cfg = masq.parse_masq_config(cm)
    assert cfg.non_masquerade_cidrs == ("10.244.0.0/16", "172.18.0.102/32")
    assert cfg.exempt() == ["169.254.0.0/16", "10.244.0.0/16", "172.18.0.102/32"]
    cm = load(configmap('{"nonMasqueradeCIDRs": ["10.0.0.0/8"], "masqLinkLocal": true}'))
    assert masq.parse_masq_config(cm).exempt() == ["10.0.0.0/8"]


def test_host_bits_are_taken_as_go_does_and_normalised() -> None:
    cm = load(configmap("nonMasqueradeCIDRs: [172.18.0.102/16]"))
    assert masq.parse_masq_config(cm).non_masquerade_cidrs == ("172.18.0.0/16",)


@pytest.mark.parametrize(("doc", "field", "words"), [
    (configmap("nonMasqueradeCIDRs: [10.244.0.0/33]"),
     "data[config].nonMasqueradeCIDRs[0]", "could not be parsed"),
    (configmap("nonMasqueradeCIDRs: [10.244.0.0/16, 172.18.0.102]"),
     "data[config].nonMasqueradeCIDRs[1]", "no prefix length"),
    (configmap("nonMasqueradeCIDRs: 10.244.0.0/16"),
     "data[config].nonMasqueradeCIDRs", "must be a list"),
    (configmap("nonMasqueradeCIDR: [10.244.0.0/16]"),
     "data[config].nonMasqueradeCIDR", "unknown key"),
    (configmap("masqLinkLocal: maybe"), "data[config].masqLinkLocal", "true or false"),
    (configmap("resyncInterval: 60"), "data[config].resyncInterval", "not a duration"),
    (configmap("nonMasqueradeCIDRs: [a\n"), "data[config]", "not YAML"),
    (configmap(None, cidrs="10.0.0.0/8"), "data", "key `config`"),
    (configmap(name="x", namespace="shop", **{"bad key": "v"}), "data[bad key]",
     "Invalid value"),
    (configmap(name="x", namespace="shop", n=5), "data", "string"),
])
def test_bad_input_is_refused_naming_the_field(doc: dict[str, Any], field: str,
                                               words: str) -> None:
    e = refused(doc)
    assert e.field is not None and e.field.startswith(field), (e.field, str(e))
    assert words in str(e), str(e)
    assert e.obj and e.obj.startswith("ConfigMap/")


def test_binary_data_is_refused() -> None:
    doc = configmap("nonMasqueradeCIDRs: []")
    doc["binaryData"] = {"k": "AAAA"}
    assert refused(doc).field == "binaryData"


def test_a_bare_configmap_loads_for_delete() -> None:
    cm = load({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "ip-masq-agent", "namespace": "kube-system"}})
    assert cm.data == {}


def test_other_configmaps_may_hold_anything() -> None:
    assert load(configmap(name="other", config="not: [yaml")).data == {"config": "not: [yaml"}


def test_rules_in_the_agents_order_and_the_jump_once() -> None:
    cfg = masq.MasqConfig(("10.244.0.0/16",))
    lines = masq.restore_lines(cfg, with_jump=True)
    body = [ln for ln in lines if ln.startswith("-A ")]
    assert body[0].startswith("-A POSTROUTING") and "--dst-type LOCAL -j IP-MASQ-AGENT" in body[0]
    assert "-d 169.254.0.0/16" in body[1] and "-d 10.244.0.0/16" in body[2]
    assert body[-1].endswith("-j MASQUERADE")
    assert not any("POSTROUTING" in ln for ln in masq.restore_lines(cfg, with_jump=False))


def test_default_is_kinds_only_the_pod_subnet() -> None:
    cfg = masq.masq_config_from_state({}, "10.244.0.0/16")
    assert cfg.exempt() == ["10.244.0.0/16"]


def test_is_whole_reads_back_iptables_s_output() -> None:
    cfg = masq.MasqConfig(("10.244.0.0/16",))
    listing = ("-N IP-MASQ-AGENT\n"
               '-A IP-MASQ-AGENT -d 169.254.0.0/16 -m comment --comment "x" -j RETURN\n'
               '-A IP-MASQ-AGENT -d 10.244.0.0/16 -m comment --comment "x" -j RETURN\n'
               '-A IP-MASQ-AGENT -m comment --comment "y" -j MASQUERADE\n')
    assert masq.is_whole(listing, cfg)
    assert not masq.is_whole(listing, masq.MasqConfig(("10.244.0.0/16", "172.18.0.9/32")))
    assert not masq.is_whole(listing.replace("-j MASQUERADE", "-j RETURN"), cfg)
