"""Lab 05's checks (BGP routing like Calico) against the real kernel, without the notebook.

The cluster is the lab's own (`clusters/bgp.yaml`, name `bgp`) with the lab's pods; the names
the notebook's first cell defines (`c`, `time`, `bgp_sessions`, `wait_for_bgp`) are defined
here the same way, and the reference solutions (tests/notebooks/solutions/05-…py) are exec'd
with them. Each exercise's checks fail before its solution and pass after; further tests break
one thing on purpose and expect the hint to name the node, the session or the command.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_driver import LabDriver, explain, lab_state

from lab_kit.checks import Results
from lab_kit.cluster import Cluster
from lab_kit.labs import bgp

pytestmark = pytest.mark.root

LAB_ID = "05-bgp-like-calico"


class Lab05(LabDriver):
    """The lab's cluster with its pods, the names of the notebook's first cell, its checks."""

    lab_id = LAB_ID
    answer_names = ("sessions_now", "sessions_mesh_100", "sessions_rr_100")

    def __init__(self) -> None:
        super().__init__()
        c = Cluster.up(f"clusters/{bgp.LAB.cluster_name}.yaml", replace=True)
        c.apply("manifests/bgp-web.yaml")
        self.ns.update(c=c, time=time, bgp_sessions=bgp.bgp_sessions,
                       wait_for_bgp=bgp.wait_for_bgp, session_timeline=bgp.session_timeline,
                       break_a_session=bgp.break_a_session)

    def sh(self, node: str, command: str) -> str:
        return self.c.node(node).sh(command)


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab05]:
    with lab_state(LAB_ID, "lkbgp", tmp_path, monkeypatch):
        yield Lab05()


def test_each_exercise_fails_before_and_passes_after_its_solution(lab: Lab05) -> None:
    assert list(lab.solutions) == ["join", "repair", "remove", "count"]
    fresh = {r.name: r for r in lab.run()}
    assert set(fresh) == set(bgp.LAB.checks)
    for name in ("mesh", "new-pod", "withdrawn", "sessions"):
        r = fresh[name]
        assert not r.passed and r.hint.strip(), r.summary()
        assert "could not inspect" not in r.message, r.summary()
    assert "c.add_node(" in fresh["mesh"].hint and "c.add_node(" in fresh["new-pod"].hint
    # `repaired` judges the live sessions: a healthy cluster passes (the notebook breaks one)
    assert fresh["repaired"].passed, fresh["repaired"].summary()

    lab.solve("join")
    after = Results([lab.one("mesh"), lab.one("new-pod")])
    assert after.all_passed, explain(after)
    assert "bgp-worker3 joined: 4 nodes, 6 BGP sessions" in after[0].message

    bgp.break_a_session(lab.c)  # the notebook's setup of exercise 2
    r = lab.one("repaired")
    assert not r.passed, r.summary()
    assert "on bgp-worker3, BGP session Mesh_172_18_0_3 (to bgp-worker) is disabled" in r.message
    assert 'c.birdc("bgp-worker3", "enable Mesh_172_18_0_3")' in r.hint, r.summary()
    r = lab.one("new-pod")
    assert not r.passed and "web-1 (on bgp-worker) gets no answer from web-3" in r.message
    assert "10.244.3.0/24 via 172.18.0.5 dev eth0 proto bird" in r.hint, r.summary()
    lab.solve("repair")
    after = Results([lab.one("repaired"), lab.one("new-pod"), lab.one("mesh")])
    assert after.all_passed, explain(after)

    assert not lab.one("withdrawn").passed
    lab.solve("remove")
    r = lab.one("withdrawn")
    assert r.passed and "none of the 3 remaining nodes" in r.message, r.summary()

    assert not lab.one("sessions").passed
    lab.solve("count")
    assert lab.ns["sessions_now"] == 3
    final = lab.run()
    assert final.all_passed, explain(final)


def test_the_disabled_end_is_named_not_the_end_that_keeps_trying(lab: Lab05) -> None:
    lab.solve("join")
    # disabled on the last node; the control-plane's end (read first) is merely `start Active`
    lab.c.birdc("bgp-worker3", "disable Mesh_172_18_0_2")
    for check in ("mesh", "repaired"):
        r = lab.one(check)
        assert not r.passed
        assert "on bgp-worker3, BGP session Mesh_172_18_0_2 (to bgp-control-plane) is " \
               "disabled" in r.message, r.summary()
        assert 'c.birdc("bgp-worker3", "enable Mesh_172_18_0_2")' in r.hint
        assert r.actual == "down"
    # enabling the far end does nothing: it was never disabled
    assert "already enabled" in lab.c.birdc("bgp-control-plane", "enable Mesh_172_18_0_5")
    assert not lab.one("mesh").passed
    lab.c.birdc("bgp-worker3", "enable Mesh_172_18_0_2")
    assert lab.one("repaired").passed  # waits for the session to come back


def test_route_hints(lab: Lab05) -> None:
    lab.solve("join")
    # a learned route deleted from the kernel behind BIRD's back
    lab.sh("bgp-worker", "ip route del 10.244.2.0/24")
    r = lab.one("mesh")
    assert not r.passed and "bgp-worker has no route to bgp-worker2's pods (10.244.2.0/24)" \
        in r.message, r.summary()
    assert 'c.birdc("bgp-worker", "reload out kernel1")' in r.hint
    lab.c.birdc("bgp-worker", "reload out kernel1")
    assert lab.one("mesh").passed
    # a route made by hand instead of BIRD's
    lab.sh("bgp-worker", "ip route replace 10.244.2.0/24 via 172.18.0.2 dev eth0")
    r = lab.one("mesh")
    assert not r.passed and "route to bgp-worker2's pods is not BIRD's" in r.message
    assert r.expected == "10.244.2.0/24 via 172.18.0.4 dev eth0 proto bird"
    assert "via 172.18.0.2 dev eth0" in r.actual and "bird" not in r.actual, r.summary()
    assert "ip route del 10.244.2.0/24" in r.hint and "reload out kernel1" in r.hint
    lab.sh("bgp-worker", "ip route del 10.244.2.0/24")
    lab.c.birdc("bgp-worker", "reload out kernel1")
    assert lab.one("mesh").passed


def test_new_pod_hints(lab: Lab05) -> None:
    lab.c.add_node()
    r = lab.one("new-pod")
    assert not r.passed and r.message == "no pod runs on bgp-worker3", r.summary()
    assert 'c.apply("manifests/bgp-web-new.yaml")' in r.hint
    lab.c.add_node()  # bgp-worker4: a pod on any joined node will do
    lab.c.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-4"},
                  "spec": {"nodeName": "bgp-worker4", "containers": [{
                      "name": "agnhost", "image": "registry.k8s.io/e2e-test-images/agnhost:2.45",
                      "args": ["netexec", "--http-port=8080"],
                      "ports": [{"containerPort": 8080}]}]}}])
    r = lab.one("new-pod")
    assert r.passed and "web-4" in r.message, r.summary()
    assert lab.one("mesh").passed


def test_a_stale_session_to_the_removed_node(lab: Lab05) -> None:
    r = lab.one("withdrawn")
    assert r.message == "bgp-worker2 is still a node of the cluster"
    assert 'c.remove_node("bgp-worker2", progress=print)' in r.hint
    lab.solve("remove")
    assert lab.one("withdrawn").passed
    # bgp-worker's BIRD told by hand to peer with the gone node again
    conf = lab.c.bird_paths("bgp-worker").conf
    conf.write_text(conf.read_text() + "\nprotocol bgp Mesh_172_18_0_4 from bgp_template {\n"
                    "  neighbor 172.18.0.4 as 64512;\n}\n")
    lab.c.birdc("bgp-worker", "configure")
    r = lab.one("withdrawn")
    assert not r.passed and r.message == \
        "bgp-worker still has a BGP session Mesh_172_18_0_4 to bgp-worker2", r.summary()
    assert "c.remove_node" in r.hint
    r = lab.one("repaired")
    assert not r.passed and "which is not a node of the cluster" in r.message, r.summary()


def test_bird_not_running(lab: Lab05) -> None:
    paths = lab.c.bird_paths("bgp-worker")
    pid = paths.pid.read_text().strip()
    lab.sh("bgp-worker", f"kill {pid}")
    lab.sh("bgp-worker", f"timeout 5 bash -c 'while [ -e /proc/{pid} ]; do sleep 0.05; done'")
    r = lab.one("repaired")
    assert not r.passed and r.message == "BIRD does not answer on bgp-worker", r.summary()
    hint_cmd = r.hint.split('c.node("bgp-worker").sh("', 1)[1].rsplit('")', 1)[0]
    assert hint_cmd.startswith(f"bird -c {paths.conf} -s {paths.socket}")
    lab.sh("bgp-worker", hint_cmd)  # the hint's own command brings it back
    bgp.wait_for_bgp(lab.c)
    assert lab.one("repaired").passed


def test_session_count_answers(lab: Lab05) -> None:
    right = {"sessions_now": 3, "sessions_mesh_100": 4950, "sessions_rr_100": 197}
    assert lab.one("sessions", **right).passed
    cases = [
        ({"sessions_now": None}, "`sessions_now` is empty"),
        ({"sessions_now": 6}, "counts every session twice"),
        ({"sessions_now": "three"}, "is not a whole number"),
        ({"sessions_mesh_100": 9900}, "counts every session twice"),
        ({"sessions_mesh_100": 99}, "how many sessions ONE node has"),
        ({"sessions_mesh_100": 10000}, "no session with itself"),
        ({"sessions_rr_100": 196}, "also have a session with each other"),
        ({"sessions_rr_100": 98}, "peers with both reflectors"),
        ({"sessions_rr_100": 4950}, "that is the full mesh"),
    ]
    for wrong, words in cases:
        r = lab.one("sessions", **{**right, **wrong})
        assert not r.passed and words in r.message, (wrong, r.summary())
        assert r.hint
    assert lab.one("sessions", **{**right, "sessions_mesh_100": "4,950"}).passed
    lab.c.add_node()  # the truth is read from the live sessions
    assert not lab.one("sessions", **right).passed
    assert lab.one("sessions", **{**right, "sessions_now": 6}).passed


def test_helpers_read_the_live_daemons(lab: Lab05) -> None:
    table = bgp.bgp_sessions(lab.c)
    assert len(table) == 6 and {row[3] for row in table} == {"up"}
    assert ["bgp-worker", "Mesh_172_18_0_4", "bgp-worker2", "up"] in [r[:4] for r in table]
    text = bgp.session_timeline(lab.c, "bgp-worker")
    assert text.startswith("BIRD on bgp-worker started at ")
    assert "Mesh_172_18_0_2" in text and "to bgp-control-plane" in text
    assert "sessions was up" in text
