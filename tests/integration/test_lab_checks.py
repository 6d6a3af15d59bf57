"""Every lab's checks against the real kernel, without a notebook (root).

For each lab: on a fresh cluster every exercise check fails with a hint; then the reference
solutions (tests/notebooks/solutions/<lab>.py) run one exercise at a time, and the checks of that
exercise fail just before and pass just after. Further tests break one thing on purpose and
expect the hint to name it.

The names the notebooks define in their setup cells (`NODE`, `POD`, `A_IP`, …) are defined here
the same way, and the solution code is exec'd with them. The clusters use the labs' own names
(`welcome`, `podns`, `bridge`): a learner's cluster of the same name on this machine is replaced.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_driver import LabDriver, lab_notebooks

from lab_kit import config, kernel, naming
from lab_kit.cluster import Cluster, sweep
from lab_kit.labs import LABS

pytestmark = pytest.mark.root


ANSWERS = ("hello_ip", "b_mac", "web_a_veth")

# exercise -> the checks it makes pass, in notebook order
STEPS: dict[str, list[tuple[str, list[str]]]] = {
    "00-welcome": [("apply-hello", ["hello-runs"]), ("find-ip", ["hello-ip"])],
    "01-pod-netns": [("netns", ["netns"]), ("veth", ["veth"]),
                     ("address", ["address", "route", "ping"]), ("localhost", ["localhost"])],
    "02-pods-on-one-node": [("bridge", ["bridge"]), ("pods", ["ports", "addresses", "a-to-b"]),
                            ("arp", ["arp"]), ("cni", ["cni-pods"]),
                            ("which-veth", ["which-veth"])],
    "06-write-a-cni-plugin": [("protocol", ["version", "errors"]), ("add", ["add"]),
                              ("apply", ["pods"]), ("del", ["del"]),
                              ("check", ["check", "conformance"])],
}


def before_up(lab_id: str) -> None:
    """What the notebook's setup cell does before Cluster.up (keep in step with the notebook)."""
    if lab_id == "06-write-a-cni-plugin":
        from lab_kit.labs.cni_plugin import install_launcher, parts_dir
        conf = config.load_config("clusters/cniplugin.yaml")
        plugin = install_launcher(conf.node("cniplugin-worker2").cni_plugin)
        for part in parts_dir(plugin).glob("*.py"):  # no part written yet
            part.unlink()


def notebook_names(lab_id: str, c: Cluster) -> dict[str, Any]:
    """What the notebook's setup cells define (keep in step with labs/<lab>.ipynb)."""
    ns: dict[str, Any] = {"c": c}
    if lab_id == "01-pod-netns":
        worker = next(n for n in c.nodes() if n.name == "podns-worker")
        subnet = ipaddress.ip_network(worker.pod_cidr)
        ns.update(NODE=c.node(worker.name), NODE_IP=worker.ip, POD=c.netns_name("byhand"),
                  PREFIX=subnet.prefixlen, GATEWAY=str(subnet[1]), POD_IP=str(subnet[10]))
    elif lab_id == "02-pods-on-one-node":
        worker = next(n for n in c.nodes() if n.name == "bridge-worker")
        subnet = ipaddress.ip_network(worker.pod_cidr)
        ns.update(NODE=c.node(worker.name), PREFIX=subnet.prefixlen, GATEWAY=str(subnet[1]),
                  A=c.netns_name("a"), B=c.netns_name("b"), A_IP=str(subnet[10]),
                  B_IP=str(subnet[11]), NODE2=c.node("bridge-worker2"))
    elif lab_id == "06-write-a-cni-plugin":
        from lab_kit.labs.cni_plugin import parts_dir, pod_manifest
        plugin = Path(c.config.node("cniplugin-worker2").cni_plugin).expanduser()
        c.apply([pod_manifest("by-bridge", "cniplugin-worker")])
        ns.update(PLUGIN=plugin, PARTS=parts_dir(plugin), pod_manifest=pod_manifest,
                  NODE=c.node("cniplugin-worker"), NODE2=c.node("cniplugin-worker2"))
    return ns


class Driver(LabDriver):
    """One lab's cluster, the notebook's names, and its checks."""

    answer_names = ANSWERS

    def __init__(self, lab_id: str) -> None:
        self.lab_id = lab_id
        super().__init__()
        before_up(lab_id)
        self.ns = notebook_names(lab_id, Cluster.up(f"clusters/{self.lab.cluster_name}.yaml",
                                                    replace=True))

    def sh(self, command: str, node: str = "NODE") -> str:
        return self.ns[node].sh(command)


@pytest.fixture
def driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Driver]]:
    state = Path(tempfile.mkdtemp(prefix="lkit"))  # short: unix socket paths live in here
    monkeypatch.setenv("LAB_KIT_STATE_DIR", str(state))
    monkeypatch.setenv("LAB_KIT_PROGRESS", str(tmp_path / "progress.json"))
    monkeypatch.setenv("HOME", str(tmp_path))  # lab 06's plugin: ~/lab_kit-work/my-cni
    monkeypatch.chdir(lab_notebooks.LABS_DIR)
    made: list[Driver] = []

    def make(lab_id: str) -> Driver:
        d = Driver(lab_id)
        made.append(d)
        return d

    yield make
    for d in made:
        d.c.down()
        sweep(d.lab.cluster_name, kernel.Runner())
    shutil.rmtree(state, ignore_errors=True)


# labs whose exercises need setup beyond this driver (a session broken on purpose, a fault
# injected by the notebook) have a test file of their own, test_lab_<name>.py
OWN_TESTS = {"03-routing-between-nodes": "test_lab_host_gw.py",
             "04-vxlan-overlay": "test_lab_vxlan.py",
             "05-bgp-like-calico": "test_lab_bgp.py",
             "07-clusterip-kube-proxy": "test_lab_clusterip.py",
             "08-nodeport-loadbalancer": "test_lab_external_traffic.py",
             "09-iptables-vs-nftables": "test_lab_proxy_scale.py",
             "10-cluster-dns": "test_lab_cluster_dns.py",
             "11-network-policies": "test_lab_network_policy.py",
             "12-ingress": "test_lab_ingress.py",
             "13-gateway-api": "test_lab_gateway_api.py",
             "14-egress-snat": "test_lab_egress.py"}


def test_every_lab_has_check_tests() -> None:
    here = Path(__file__).resolve().parent
    for lab_id in LABS:
        assert lab_id in STEPS or (here / OWN_TESTS.get(lab_id, "-")).is_file(), lab_id


@pytest.mark.parametrize("lab_id", [lab for lab in LABS if lab in STEPS])
def test_exercise_checks_fail_before_and_pass_after_the_solution(lab_id, driver):
    driver(lab_id).assert_each_exercise(STEPS[lab_id])


# --- specific hints: break one thing, expect the hint to name it ---------------------------------

def test_welcome_hints_name_the_mistake(driver):
    d = driver("00-welcome")
    r = d.one("hello-runs")
    assert "does not exist" in r.message and 'c.apply("manifests/hello.yaml")' in r.hint
    d.solve("apply-hello", "find-ip")
    ip = d.ns["hello_ip"]
    node = d.c.pods()[0].node
    node_ip = next(n.ip for n in d.c.nodes() if n.name == node)
    cases = {
        "": "`hello_ip` is empty",
        f"{ip}/24": "prefix length",
        node_ip: "underlay",
        "10.244.9.9": "not the address on eth0",
        "hello": "not an IPv4 address",
        "127.0.0.1": "loopback",
    }
    for answer, words in cases.items():
        r = d.one("hello-ip", hello_ip=answer)
        assert not r.passed and words in r.message, (answer, r.summary())
        assert r.hint
    gw = d.c.pod("hello").sh("ip -4 route show default").split()[2]
    assert "gateway" in d.one("hello-ip", hello_ip=gw).message
    assert d.one("hello-ip", hello_ip=f" {ip} ").passed


def test_pod_netns_hints_name_the_mistake(driver):
    d = driver("01-pod-netns")
    pod = d.ns["POD"]
    d.solve("netns")
    # the pod end under the wrong name
    d.sh(f"ip link add veth-byhand type veth peer name ceth0 netns {pod}")
    r = d.one("veth")
    assert "no eth0" in r.message and "name eth0" in r.hint, r.summary()
    d.sh(f"ip -n {pod} link set ceth0 name eth0")
    assert d.one("veth").passed
    # the address, but eth0 left down
    d.sh(f"ip -n {pod} addr add {d.ns['POD_IP']}/24 dev eth0")
    r = d.one("address")
    assert "DOWN" in r.message and f"ip -n {pod} link set eth0 up" in r.hint, r.summary()
    d.sh(f"ip -n {pod} link set eth0 up")
    r = d.one("address")
    assert "lo in the pod is DOWN" in r.message and "link set lo up" in r.hint, r.summary()
    d.sh(f"ip -n {pod} link set lo up")
    assert d.one("address").passed
    # node end without its address: the ping check says so
    d.sh("ip link set veth-byhand up")
    r = d.one("ping")
    assert "ip addr add 10.244.1.1/24 dev veth-byhand" in r.hint, r.summary()
    r = d.one("route")
    assert "no default route" in r.message and "route add default via 10.244.1.1" in r.hint
    d.sh("ip addr add 10.244.1.1/24 dev veth-byhand")
    d.sh(f"ip -n {pod} route add default via 10.244.1.1")
    assert d.run("route").all_passed and d.run("ping").all_passed
    # container A started on the node instead of in the pod
    d.sh("setsid socat TCP-LISTEN:9000,bind=127.0.0.1,fork,reuseaddr SYSTEM:'echo A' "
         ">/dev/null 2>&1 &")
    d.sh("timeout 5 bash -c 'until ss -ltnH | grep -q 127.0.0.1:9000; do sleep 0.05; done'")
    r = d.one("localhost")
    assert "node's netns, not in the pod's" in r.message and "ip netns exec" in r.hint
    d.solve("localhost")
    r = d.one("localhost")
    assert "ALSO in the node's netns" in r.message, r.summary()
    # the hint's way: `ss -ltnp` in the node's netns shows only the node's listener
    d.sh("kill $(ss -ltnpH 'sport = :9000' | grep -o 'pid=[0-9]*' | cut -d= -f2)")
    d.sh("timeout 5 bash -c 'while ss -ltnH | grep -q 127.0.0.1:9000; do sleep 0.05; done'")
    assert d.one("localhost").passed
    assert d.run().all_passed


def test_one_node_hints_name_the_mistake(driver):
    d = driver("02-pods-on-one-node")
    d.sh("ip link add br0 type bridge")
    r = d.one("bridge")
    assert "ip addr add 10.244.1.1/24 dev br0" in r.hint, r.summary()
    d.sh("ip addr add 10.244.1.1/24 dev br0")
    r = d.one("bridge")
    assert r.message == "br0 is DOWN" and "ip link set br0 up" in r.hint
    d.sh("ip link set br0 up")
    d.solve("pods")
    d.sh("ip link set veth-b nomaster")
    r = d.one("ports")
    assert "veth-b is not a port of br0" in r.message and "master br0" in r.hint, r.summary()
    r = d.one("a-to-b")
    assert not r.passed and "veth-b is not a port of br0" in r.hint, r.summary()
    d.sh("ip link set veth-b master br0")
    assert d.run("a-to-b").all_passed  # the ping fills a's neighbour table
    veth_b_mac = json.loads(d.sh("ip -j link show veth-b"))[0]["address"]
    r = d.one("arp", b_mac=veth_b_mac)
    assert "veth-b on the node" in r.message and "far end" in r.message, r.summary()
    d.solve("arp")
    assert d.one("arp", b_mac=d.ns["b_mac"].upper()).passed
    d.solve("cni")
    web_b_netns = d.c.pod("web-b").netns
    web_b_index = int(d.sh(f"ip -n {web_b_netns} -o link show eth0", "NODE2")
                      .split("@if")[1].split(":")[0])
    web_b_veth = d.sh(f"ip -o link show | grep '^{web_b_index}:'", "NODE2").split(":")[1]
    web_b_veth = web_b_veth.strip().split("@")[0]
    r = d.one("which-veth", web_a_veth=web_b_veth)
    assert "web-b's veth" in r.message, r.summary()
    d.solve("which-veth")
    r = d.one("which-veth", web_a_veth=d.ns["web_a_veth"] + "@if2")
    assert "@" in r.message and d.ns["web_a_veth"] in r.hint
    for wrong, words in (("cni0", "bridge"), ("eth0", "inside the pod"), ("vethzzz", "no link")):
        r = d.one("which-veth", web_a_veth=wrong)
        assert words in r.message, r.summary()
    assert d.run().all_passed


def test_checks_say_when_the_cluster_is_gone(driver):
    d = driver("01-pod-netns")
    d.c.down()
    (r,) = d.run("netns")
    assert not r.passed and "cluster" in r.hint, r.summary()


def test_leftover_names_are_gone_after_down(driver):
    d = driver("02-pods-on-one-node")
    d.solve("bridge", "pods")
    d.c.down()
    assert not [n for n in kernel.list_netns() if naming.owns_netns("bridge", n)]
