"""engine.monitors: the reward-hacking monitors against hand-computed values."""
from __future__ import annotations

import math

import pytest

from engine import monitors as M


def test_repetition_share_of_repeated_ngrams():
    # bigrams of [1,2,1,2,1]: (1,2) (2,1) (1,2) (2,1) -> 4 n-grams, 2 distinct -> 2/4
    assert M.repetition([1, 2, 1, 2, 1], 2) == 0.5
    # one token five times, trigrams: 3 n-grams, 1 distinct -> 2/3
    assert M.repetition([7] * 5, 3) == pytest.approx(2 / 3)
    assert M.repetition([1, 2, 3, 4], 2) == 0.0        # all different
    assert M.repetition([1, 1], 3) == 0.0              # shorter than n: no n-grams
    assert M.repetition([], 1) == 0.0
    assert M.repetition([5, 5, 5, 5], 1) == 0.75       # unigrams: 4 tokens, 1 distinct
    with pytest.raises(ValueError, match="at least 1"):
        M.repetition([1, 2], 0)


def test_slope_relative_change_pearson():
    assert M.slope([1.0]) is None
    assert M.slope([0.0, 2.0]) == 2.0
    assert M.slope([1.0, 2.0, 4.0]) == pytest.approx(1.5)   # ((-1)(-4/3)+(1)(5/3))/2
    assert M.slope([3.0, 3.0, 3.0]) == 0.0
    assert M.relative_change(15.0, 10.0) == 0.5
    assert M.relative_change(5.0, 10.0) == -0.5
    assert M.relative_change(1.0, 0.0) is None
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x=[0,1,2,3], y=[0,1,0,1]: cov 1/... -> sum (x-1.5)(y-.5) = 0.75+(-.25)+(-.25)+.75 = 1
    # sxx = 5, syy = 1 -> 1/sqrt(5)
    assert M.pearson([0, 1, 2, 3], [0, 1, 0, 1]) == pytest.approx(1 / math.sqrt(5))
    assert M.pearson([1, 1, 1], [1, 2, 3]) is None
    assert M.diverging([0.9, 0.9, 0.1, 0.9], [0.1, 0.9, 0.1, 0.5], 0.5, 0.5) == [True, False, False, False]


def test_trips_direction():
    assert M.trips("kl_growth", 0.3, 0.25)
    assert not M.trips("kl_growth", 0.25, 0.25)
    assert M.trips("length_drift", -0.6, 0.5) and M.trips("length_drift", 0.6, 0.5)
    assert not M.trips("length_drift", -0.4, 0.5)
    assert not M.trips("repetition", None, 0.3) and not M.trips("repetition", 0.9, None)


def _tracker(trip_steps=1, clear_fraction=0.75, **th):
    thresholds = {"kl_growth": 0.25, "entropy_drop": 0.5, "length_drift": 0.5, "repetition": 0.3,
                  "divergence": 0.4}
    thresholds.update(th)
    return M.MonitorTracker(thresholds=thresholds, window=3, baseline_steps=2, ngram=2,
                            trip_steps=trip_steps, clear_fraction=clear_fraction)


def _step(t, kl, entropy, lengths, scores, responses, audits=None, commit=True):
    out = t.observe(kl=kl, entropy=entropy, lengths=lengths, scores=scores, responses=responses,
                    audits=audits)
    if commit:
        t.commit()
    return out


def test_tracker_baseline_trend_and_alerts_by_hand():
    t = _tracker()
    clean = [[1, 2, 3], [4, 5, 6]]
    # baseline steps: kl 0, 0.1; entropy 10, 10; length 10, 10; score 0.5, 0.5; audit 0.5, 0.5
    v, alerts, flags = _step(t, 0.0, 10.0, [10, 10], [0.4, 0.6], clean, [0.4, 0.6])
    assert v["kl_growth"] is None and v["entropy_drop"] is None and v["divergence"] is None
    assert v["audit_corr"] == pytest.approx(1.0) and v["audit_mean"] == pytest.approx(0.5)
    assert alerts == [] and flags == [[], []]
    _step(t, 0.1, 10.0, [10, 10], [0.4, 0.6], clean, [0.4, 0.6])
    assert t.started == [] and t.tripped == set()
    # step 3: kl 1.0 -> slope of [0, .1, 1] = (-1*0 + 0 + 1*1)/2 ... = ((0-.3667)(-1)+(1-.3667)(1))/2 = 0.5
    # entropy 4 -> drop (10-4)/10 = 0.6; lengths 16,14 -> 15 -> drift +0.5 (not > 0.5)
    # response [7,7,7] bigrams (7,7)(7,7): 1 of 2 repeated = 0.5; [1,2,3]: 0 -> mean 0.25
    # scores .9/.2 vs base .5; audits .1/.1 vs base .5 -> sample 0 diverges: 1/2 = 0.5
    v, alerts, flags = _step(t, 1.0, 4.0, [16, 14], [0.9, 0.2], [[7, 7, 7], [1, 2, 3]], [0.1, 0.1],
                             commit=False)
    assert v["kl_growth"] == pytest.approx(0.5)
    assert v["entropy_trend"] == pytest.approx(-3.0)
    assert v["entropy_drop"] == pytest.approx(0.6)
    assert v["length_drift"] == pytest.approx(0.5)
    assert v["repetition"] == pytest.approx(0.25)
    assert v["divergence"] == pytest.approx(0.5)
    assert flags == [["repetition", "divergence"], []]
    assert {a["monitor"]: (a["value"], a["threshold"], a["samples"]) for a in alerts} == {
        "kl_growth": (pytest.approx(0.5), 0.25, None), "entropy_drop": (pytest.approx(0.6), 0.5, None),
        "divergence": (pytest.approx(0.5), 0.4, 1)}
    t.rollback()                           # a retried step is not counted
    assert len(t.history) == 2 and t.tripped == set()
    _step(t, 1.0, 4.0, [16, 14], [0.9, 0.2], [[7, 7, 7], [1, 2, 3]], [0.1, 0.1])
    assert [a["monitor"] for a in t.started] == ["kl_growth", "entropy_drop", "divergence"]
    assert "kl_growth" in M.describe_alert(t.started[0], 3) and "0.500 > 0.25" in M.describe_alert(t.started[0], 3)
    # step 4: calm again -> every warning cleared
    _step(t, 0.1, 10.0, [10, 10], [0.5, 0.5], clean, [0.5, 0.5])  # KL slope of [.1, 1, .1] = 0
    assert t.started == [] and t.cleared == ["divergence", "entropy_drop", "kl_growth"]


def test_tracker_threshold_none_and_no_audit_and_restore():
    t = _tracker(repetition=None, kl_growth=None)
    for kl in (0.0, 5.0, 10.0):
        v, alerts, flags = _step(t, kl, None, [4], [1.0], [[3, 3, 3, 3]])
    assert v["kl_growth"] == pytest.approx(5.0) and v["repetition"] == pytest.approx(2 / 3)
    assert alerts == [] and flags == [[]]              # values recorded, no warning, no flag
    assert "divergence" not in v and "audit_mean" not in v and v["entropy_drop"] is None
    rows = [{"kl": 0.0, "entropy": 8.0, "response_len_mean": 4.0, "score_mean": 0.1, "audit_mean": 0.5},
            {"kl": 2.0, "entropy": 8.0, "response_len_mean": 4.0, "score_mean": 0.1, "audit_mean": 0.5,
             "alerts": [{"monitor": "kl_growth"}]}]
    r = _tracker()
    r.restore(rows)
    assert r.tripped == {"kl_growth"} and len(r.history) == 2
    v, alerts, _ = _step(r, 4.0, 2.0, [4], [0.1], [[1, 2]], [0.5])
    assert v["kl_growth"] == pytest.approx(2.0) and v["entropy_drop"] == pytest.approx(0.75)
    assert r.started == [a for a in alerts if a["monitor"] == "entropy_drop"]   # kl_growth was on already


def test_step_ranges_and_alert_summary():
    assert M.step_ranges([5, 7, 11, 12, 13]) == "5, 7, 11–13"
    assert M.step_ranges([]) == "" and M.step_ranges([3, 3]) == "3"
    rows = [{"step": 1, "alerts": []},
            {"step": 2, "alerts": [{"monitor": "repetition", "value": 0.4, "threshold": 0.3, "samples": 2},
                                   {"monitor": "length_drift", "value": -0.7, "threshold": 0.5, "samples": None}]},
            {"step": 3, "alerts": [{"monitor": "repetition", "value": 0.35, "threshold": 0.3, "samples": 1}]}]
    assert M.summarise_alerts(rows) == {
        "repetition": {"steps": [2, 3], "peak": 0.4, "threshold": 0.3, "samples": 3},
        "length_drift": {"steps": [2], "peak": 0.7, "threshold": 0.5, "samples": None}}


def test_divergence_baseline_restarts_after_a_reward_swap():
    t = _tracker()
    clean = [[1, 2, 3], [4, 5, 6]]
    for _ in range(2):   # reward scores ~0.5, audit 0.5
        _step(t, 0.0, 10.0, [3, 3], [0.4, 0.6], clean, [0.5, 0.5])
    t.reward_changed()   # the new reward scores around 5 (another scale)
    v, _, flags = _step(t, 0.0, 10.0, [3, 3], [5.0, 6.0], clean, [0.4, 0.4])
    assert v["divergence"] is None and flags == [[], []]   # no baseline of the new reward yet
    _step(t, 0.0, 10.0, [3, 3], [5.0, 6.0], clean, [0.5, 0.5])
    # new reward's baseline: mean of its first 2 steps = 5.5; audit baseline (run start) 0.5
    v, _, flags = _step(t, 0.0, 10.0, [3, 3], [5.9, 5.1], clean, [0.4, 0.4])
    assert v["divergence"] == 0.5 and flags == [["divergence"], []]
    # a swap while a step is observed but not committed: that step belongs to the old reward
    t.observe(kl=0.0, entropy=10.0, lengths=[3], scores=[1.0], responses=[[1]], audits=[0.5])
    t.reward_changed()
    t.commit()
    assert t.reward_from == len(t.history)
    r = _tracker()
    r.restore([{"kl": 0, "score_mean": 0.5, "reward_version": 1}] * 3 +
              [{"kl": 0, "score_mean": 5.0, "reward_version": 2}] * 2)
    assert r.reward_from == 3


# ---- hysteresis: trip after trip_steps steps over the threshold, clear below clear_fraction x it

def _rep_step(t, response):
    """One step whose only moving monitor is repetition (bigrams of one response)."""
    return _step(t, 0.0, None, [3], [0.5], [response])


def test_hysteresis_trips_stays_between_clear_and_trip_and_clears_below():
    # repetition threshold 0.3, clear 0.5 x 0.3 = 0.15, two steps in a row over it to trip
    t = _tracker(trip_steps=2, clear_fraction=0.5)
    over, calm, between = [7, 7, 7], [1, 2, 3], [1, 2, 1, 2, 3]   # bigram shares 0.5, 0, 0.25
    assert M.repetition(between, 2) == 0.25
    _, alerts, flags = _rep_step(t, over)
    assert alerts == [] and t.started == [] and flags == [["repetition"]]  # one step: no warning
    _rep_step(t, calm)                                  # the count starts again
    _, alerts, _ = _rep_step(t, over)
    assert alerts == [] and t.tripped == set()
    _, alerts, _ = _rep_step(t, over)                   # second step in a row over 0.3: trips
    assert [a["monitor"] for a in t.started] == ["repetition"] and t.tripped == {"repetition"}
    assert alerts == [{"monitor": "repetition", "value": 0.5, "threshold": 0.3,
                       "clear": pytest.approx(0.15), "samples": 1}]
    for response in (between, over, between):          # 0.25 is under 0.3 but above 0.15: stays on
        v, alerts, flags = _rep_step(t, response)
        assert [a["monitor"] for a in alerts] == ["repetition"] and t.started == [] and t.cleared == []
    assert v["repetition"] == 0.25 and flags == [[]]    # the sample flag has no hysteresis
    _, alerts, _ = _rep_step(t, calm)                   # 0 < 0.15: cleared
    assert alerts == [] and t.cleared == ["repetition"] and t.tripped == set()
    _, alerts, _ = _rep_step(t, over)                   # tripping again needs two steps again
    assert alerts == [] and t.started == []
    _rep_step(t, over)
    assert [a["monitor"] for a in t.started] == ["repetition"]


def test_hysteresis_function_edges():
    h = M.hysteresis
    # length drift counts in absolute value, both to trip and to clear
    assert h("length_drift", -0.6, 0.5, 0.375, False, 0, 1) == (True, 0)
    assert h("length_drift", -0.45, 0.5, 0.375, True, 0, 1) == (True, 0)
    assert h("length_drift", 0.3, 0.5, 0.375, True, 0, 1) == (False, 0)
    assert h("divergence", 0.5, 0.4, 0.3, False, 1, 3) == (False, 2)   # counting
    assert h("divergence", 0.4, 0.4, 0.3, False, 2, 3) == (False, 0)   # at the threshold is not over
    assert h("divergence", 0.3, 0.4, 0.3, True, 0, 3) == (True, 0)     # at the clear threshold stays
    assert h("divergence", None, 0.4, 0.3, True, 0, 3) == (False, 0)   # not measured: cleared
    assert h("divergence", 0.9, None, None, False, 5, 1) == (False, 0)  # off
    assert M.clears("kl_growth", 0.1, 0.2) and not M.clears("kl_growth", 0.2, 0.2)


def test_hysteresis_survives_rollback_and_restore():
    t = _tracker(trip_steps=2)
    _rep_step(t, [7, 7, 7])
    t.observe(kl=0.0, entropy=None, lengths=[3], scores=[0.5], responses=[[7, 7, 7]])
    t.rollback()                                        # a retried step does not count as over
    assert t.over["repetition"] == 1 and t.tripped == set()
    r = _tracker(trip_steps=2)
    r.restore([{"step": 1, "kl": 0.0, "repetition": 0.0}, {"step": 2, "kl": 0.0, "repetition": 0.5}])
    assert r.over["repetition"] == 1 and r.tripped == set()
    _rep_step(r, [7, 7, 7])                             # the resumed run's step 3 is the second over
    assert [a["monitor"] for a in r.started] == ["repetition"]


def test_replay_of_recorded_values_matches_the_live_tracker():
    t = _tracker(trip_steps=2, clear_fraction=0.5)
    rows = []
    for i, resp in enumerate([[7, 7, 7], [1, 2, 3], [7, 7, 7], [7, 7, 7], [1, 2, 1, 2, 3], [1, 2, 3],
                              [7, 7, 7, 7, 7], [7, 7, 7]], 1):
        v, alerts, _ = _rep_step(t, resp)
        rows.append({"step": i, **v, "alerts": alerts})
    live = [r["step"] for r in rows if r["alerts"]]
    assert live == [4, 5, 8]
    assert M.replay(rows, t.thresholds, clear_fraction=0.5, trip_steps=2)["repetition"] == live
    assert M.replay(rows, t.thresholds, clear_fraction=0.5, trip_steps=1)["repetition"] == [1, 3, 4, 5, 7, 8]


def test_hysteresis_settings_are_checked_with_the_key_named():
    from engine.config import validate_text

    for bad in (1.0, 1.5, 0):
        with pytest.raises(ValueError, match=r"monitors\.clear_fraction must be above 0 and below 1"):
            _tracker(clear_fraction=bad)
    with pytest.raises(ValueError, match=r"monitors\.trip_steps must be an integer of at least 1"):
        _tracker(trip_steps=0)
    res = validate_text("monitors:\n  clear_fraction: 1.2\n", "run.yaml", check_hardware=False)
    msg = "\n".join(str(i) for i in res.issues)
    assert res.config is None and "run.yaml:2" in msg and "monitors.clear_fraction" in msg
    assert "clear threshold must be under the threshold" in msg
    res = validate_text("", overrides=["monitors.trip_steps=0"], check_hardware=False)
    assert res.config is None and "monitors.trip_steps" in "\n".join(str(i) for i in res.issues)
    mc = validate_text("", overrides=["monitors.clear_fraction=0.5", "monitors.trip_steps=4"],
                       check_hardware=False).config.monitors
    assert (mc.clear_fraction, mc.trip_steps) == (0.5, 4)


def test_replay_script_on_a_run_and_on_a_report(tmp_path):
    """scripts/monitor_replay.py: a metrics.jsonl replayed exactly; a report's steps over the
    threshold tell where it would trip, and it says when the clear step cannot be known."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "monitor_replay.py"
    spec = importlib.util.spec_from_file_location("monitor_replay", path)
    mr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mr)
    assert mr.first_trip([10, 15, 16, 20, 21, 22, 23], 3) == 22 and mr.first_trip([1, 3, 5], 2) is None
    rows = [{"step": s, "divergence": d, "alerts": [{"monitor": "divergence"}] if (d or 0) > 0.4 else []}
            for s, d in enumerate([None, 0.5, 0.1, 0.5, 0.5, 0.5, 0.35, 0.25, 0.5], 1)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.md").write_text("State **finished** at step 30; ...\n\n## Reward-hacking monitors\n\n"
                                   "| monitor | steps over the threshold | peak | threshold | samples flagged |\n"
                                   "|---|---|---:|---:|---:|\n"
                                   "| divergence | 10, 15–16, 20–23 | 0.750 | 0.4 | 9 |\n\n## Per step\n")
    st = {"config": "x", "thresholds": {"kl_growth": 0.3, "entropy_drop": 0.5, "length_drift": 0.5,
                                        "repetition": 0.3, "divergence": 0.4},
          "trip_steps": 3, "clear_fraction": 0.75}
    run = mr.replay_run(tmp_path, st)["monitors"]["divergence"]
    assert run["before"] == {"steps": 5, "first": 2, "ranges": "2, 4–6, 9"} == run["recorded_alerts"]
    assert run["after"] == {"steps": 2, "first": 6, "ranges": "6–7"}   # 0.35 keeps it on, 0.25 < 0.3 clears
    rep = mr.replay_report(tmp_path / "r.md", st)
    assert rep["steps"] == 30 and rep["monitors"]["divergence"]["before"]["steps"] == 7
    after = rep["monitors"]["divergence"]["after"]
    assert after["first"] == 22 and after["steps"] is None and after["steps_at_least"] == 2
    assert rep["monitors"]["repetition"]["after"] == {"steps": 0, "first": None, "ranges": ""}


def test_console_warning_text_while_tripped_between_clear_and_trip():
    from console.widgets.hack_warning import alert_text

    a = {"monitor": "repetition", "value": 0.41, "threshold": 0.3, "clear": 0.225}
    assert alert_text(a) == "repetition 0.410 > 0.3"
    assert alert_text({**a, "value": 0.25}) == "repetition 0.250 (tripped > 0.3, clears < 0.225)"
    assert alert_text({"monitor": "length_drift", "value": -0.45, "threshold": 0.5, "clear": 0.375}) == \
        "length_drift |-0.450| (tripped > 0.5, clears < 0.375)"
    assert alert_text({"monitor": "divergence", "value": 0.5, "threshold": 0.4}) == "divergence 0.500 > 0.4"


def test_console_warning_says_when_every_monitor_has_cleared(tmp_path):
    from console.model import RunModel
    from console.widgets.hack_warning import warning_text

    m = RunModel(tmp_path)
    assert warning_text(m) is None                      # nothing tripped in the run: hidden
    m.alerts_seen = {"divergence": {"first": 10, "last": 12, "steps": 3}}
    m.alerts_now, m.alerts_step = [{"monitor": "divergence", "value": 0.35, "threshold": 0.4,
                                    "clear": 0.3}], 12
    assert "⚠ reward hacking? divergence 0.350 (tripped > 0.4, clears < 0.3) at step 12" in warning_text(m).plain
    m.alerts_now, m.alerts_step = [], 20
    text = warning_text(m).plain
    assert "⚠" not in text and "cleared (no monitor tripped at step 20)" in text
    assert "divergence (steps 10–12, 3×)" in text
