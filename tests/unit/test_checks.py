"""The check framework without root: results, their three renderings, Lab.run, progress."""

from __future__ import annotations

import json

import pytest

from lab_kit.checks import (
    CheckResult,
    Context,
    Lab,
    Results,
    Verdict,
    failed,
    load_progress,
    passed,
    record_progress,
)


@pytest.fixture(autouse=True)
def progress_file(tmp_path, monkeypatch):
    p = tmp_path / "progress.json"
    monkeypatch.setenv("LAB_KIT_PROGRESS", str(p))
    return p


def _fail() -> CheckResult:
    return CheckResult("veth", "A veth pair", False, "the pod has no eth0",
                       hint="run `ip link add veth-x type veth peer name eth0 netns POD`",
                       expected="eth0 <veth>", actual="lo only", points=2, lab="01-x")


def _pass() -> CheckResult:
    return CheckResult("netns", "The netns exists", True, "it is there", points=1, lab="01-x")


def make_lab() -> Lab:
    lab = Lab("99-test", "A test lab", "nocluster")

    @lab.check("ok", "Always passes", points=2)
    def _ok(ctx: Context) -> Verdict:
        return passed(f"answer is {ctx.get('answer')}")

    @lab.check("no", "Always fails")  # an exercise by default
    def _no(ctx: Context) -> Verdict:
        return failed("nothing there", hint="do the exercise", expected=1, actual=0)

    @lab.check("boom", "Raises")
    def _boom(ctx: Context) -> Verdict:
        raise RuntimeError("kaput")

    @lab.check("secret", "Hidden", hidden=True)
    def _secret(ctx: Context) -> Verdict:
        return passed("hidden one")

    return lab


# --- CheckResult -------------------------------------------------------------------------------

def test_summary_of_a_pass_is_one_line():
    s = _pass().summary()
    assert s.startswith("[PASS] The netns exists (1/1)")
    assert "it is there" in s
    assert "\n" not in s
    assert str(_pass()) == s


def test_summary_of_a_failure_has_expected_actual_and_hint():
    s = _fail().summary()
    lines = s.splitlines()
    assert lines[0].startswith("[FAIL] A veth pair (0/2)")
    assert "expected: eth0 <veth>" in s
    assert "actual:   lo only" in s
    assert "hint: run `ip link add" in s


def test_html_of_a_failure_shows_hint_expected_actual_escaped():
    h = _fail()._repr_html_()
    assert "the pod has no eth0" in h
    assert "expected: <code>eth0 &lt;veth&gt;</code>" in h
    assert "lo only" in h
    assert "run `ip link add veth-x type veth peer name eth0 netns POD`" in h
    assert "(0/2)" in h


def test_html_of_a_pass_hides_the_hint():
    r = CheckResult("n", "T", True, "fine", hint="never shown", expected="x", actual="y")
    h = r._repr_html_()
    assert "fine" in h and "never shown" not in h and "expected" not in h


def test_to_dict_has_every_field_for_a_gradebook():
    d = _fail().to_dict()
    assert set(d) == {"lab", "check", "title", "passed", "points", "score", "hidden", "message",
                      "hint", "expected", "actual"}
    assert d["score"] == 0 and d["points"] == 2 and d["passed"] is False
    assert d["lab"] == "01-x" and d["check"] == "veth"
    json.dumps(d)  # a gradebook stores it as JSON
    assert _pass().to_dict()["score"] == 1


def test_results_sum_scores_and_render():
    rs = Results([_pass(), _fail()])
    assert rs.score == 1 and rs.total == 3 and not rs.all_passed
    assert rs.summary().splitlines()[-1] == "score: 1/3"
    assert "Score: 1/3" in rs._repr_html_()
    assert [d["check"] for d in rs.to_dicts()] == ["netns", "veth"]
    assert Results([_pass()]).all_passed


def test_failed_turns_expected_and_actual_into_text():
    v = failed("m", expected=["a"], actual=3)
    assert (v.expected, v.actual) == ("['a']", "3")
    assert passed("ok") == Verdict(True, "ok")


# --- Lab.run -------------------------------------------------------------------------------------

def test_run_one_check_passes_answers():
    res = make_lab().run("ok", answer=42)
    assert len(res) == 1
    r = res[0]
    assert r.passed and r.message == "answer is 42" and r.score == 2 and r.lab == "99-test"


def test_an_exception_inside_a_check_becomes_a_failure_with_a_hint():
    (r,) = make_lab().run("boom")
    assert not r.passed
    assert "RuntimeError: kaput" in r.message
    assert r.hint


def test_unknown_check_names_the_checks():
    with pytest.raises(KeyError, match="ok, no, boom, secret"):
        make_lab().run("nope")


def test_hidden_checks_run_only_when_asked():
    lab = make_lab()
    assert [r.name for r in lab.run()] == ["ok", "no", "boom"]
    assert [r.name for r in lab.run(include_hidden=True)] == ["ok", "no", "boom", "secret"]
    assert lab.run("secret")[0].hidden  # by name, always


def test_progress_is_recorded(progress_file):
    make_lab().run(answer=1)
    data = json.loads(progress_file.read_text())
    assert set(data["99-test"]) == {"ok", "no", "boom"}
    assert data["99-test"]["ok"]["passed"] is True
    assert data["99-test"]["no"]["passed"] is False
    assert data["99-test"]["no"]["hint"] == "do the exercise"
    assert load_progress() == data


def test_progress_keeps_the_latest_result_and_other_labs(progress_file):
    lab = make_lab()
    record_progress([CheckResult("x", "X", True, "m", lab="other")])
    lab.run("no")
    lab.run("ok")
    data = load_progress(progress_file)
    assert set(data) == {"other", "99-test"}
    assert set(data["99-test"]) == {"no", "ok"}


def test_record_false_leaves_progress_alone(progress_file):
    make_lab().run(record=False)
    assert not progress_file.exists()


def test_a_broken_progress_file_does_not_break_checks(progress_file):
    progress_file.write_text("{not json")
    assert make_lab().run("ok")[0].passed
    assert load_progress()["99-test"]["ok"]["passed"]


def test_an_unwritable_progress_path_does_not_break_checks(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LAB_KIT_PROGRESS", str(blocker / "progress.json"))
    assert make_lab().run("ok")[0].passed


def test_exercise_flag_is_kept():
    lab = Lab("t", "t", "c")

    @lab.check("demo", "demo", exercise=False)
    def _demo(ctx: Context) -> Verdict:
        return passed("x")

    assert lab.checks["demo"].exercise is False
    assert make_lab().checks["no"].exercise is True  # the default


def test_the_labs_are_registered_and_their_checks_well_formed():
    from lab_kit.labs import LABS, get_lab

    for lab_id in LABS:
        lab = get_lab(lab_id)
        assert lab.lab_id == lab_id
        assert lab.checks
        assert any(c.exercise for c in lab.checks.values())
        for name, c in lab.checks.items():
            assert c.name == name and c.title and c.points > 0
    with pytest.raises(KeyError, match="00-welcome"):
        get_lab("nope")
