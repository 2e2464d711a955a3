"""Reward hacking provoked on purpose: a reward function that pays for saying one word over and
over (tests/hacking_reward.py), a short real tiny run in which the policy must first be seen to
learn the hack, and then the monitors must notice -- in events.log, in metrics.jsonl, in the
flags of the samples, and on the console's dashboard."""
from __future__ import annotations

import json

import pytest

from engine.client import launch
from engine.runtime.rundir import read_jsonl
from tests.conftest import TINY, kill_run, tiny_overrides

pytestmark = pytest.mark.timeout(600)

# top_k 2 gives the random tiny policy a chance to repeat a token; a large learning rate lets it
# learn within a dozen steps that repeating pays (measured, first 4 steps -> last 4 of 16: the
# reward's mean 0.32 -> 0.46, the repeated trigrams' 0.21 -> 0.46; the repetition monitor tripped
# at step 12 and stayed on). With 4 samples a step the repetition share is noisy from step to
# step (0.34, 0.25, 0.38, 0.25 at steps 5-8), so the run trips after 2 steps in a row; with the
# presets' 3, 12 steps did not trip.
TRIP_STEPS = 2      # monitors.trip_steps, set below so the assertions know it
WINDOW = 4          # steps in the first and the last window compared to say the hack was learned
LEARNED = 0.1       # how much the hacked reward and the repetition must rise between them
HACK = ("run.steps=16", "checkpoint.every=0", "checkpoint.on_stop=false",
        "reward.source=python:tests.hacking_reward:repeated_word", "reward.audit=lexicon:vader",
        "rollout.top_k=2", "rollout.max_new_tokens=16", "ppo.actor_lr=1e-3",
        "monitors.window=5", "monitors.baseline_steps=2", "monitors.repetition=0.3",
        f"monitors.trip_steps={TRIP_STEPS}", "monitors.clear_fraction=0.75")


@pytest.fixture(scope="module")
def hacked_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("hack") / "runs"
    run = launch(TINY, tiny_overrides(runs, *HACK), wait_ready=True, timeout=600)
    try:
        assert run.wait(timeout=540) == "finished", run.info
        yield run
    finally:
        kill_run(run)


def _window_means(rows, key, k=WINDOW):
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return mean([r[key] for r in rows[:k]]), mean([r[key] for r in rows[-k:]])


def test_repeated_word_reward_trips_the_repetition_monitor(hacked_run):
    rows = read_jsonl(hacked_run.dir.metrics)
    assert [r["step"] for r in rows] == list(range(1, 17))
    for r in rows:  # every monitor is measured every step (None until it has a baseline/trend)
        assert {"kl_growth", "entropy_trend", "entropy_drop", "length_drift", "repetition",
                "audit_mean", "audit_corr", "divergence", "alerts"} <= set(r)
    assert rows[-1]["divergence"] is not None and rows[-1]["kl_growth"] is not None
    # first: the policy did learn the hack -- the gamed reward and the repeated n-grams both rise
    # from the run's first steps to its last (else a trip below would only say the monitor is noisy)
    score0, score1 = _window_means(rows, "score_mean")
    rep0, rep1 = _window_means(rows, "repetition")
    assert score1 >= score0 + LEARNED, ("the hacked reward did not rise", score0, score1)
    assert rep1 >= rep0 + LEARNED, ("the responses did not get more repetitive", rep0, rep1)
    # then: the monitor noticed, with its hysteresis -- over 0.3 on TRIP_STEPS steps in a row
    # before it trips, and every alert from then on until its value is back under 0.3 x 0.75
    tripped = [(r["step"], a) for r in rows for a in r["alerts"] if a["monitor"] == "repetition"]
    assert tripped, [r["repetition"] for r in rows]
    step, alert = tripped[0]
    assert alert["threshold"] == 0.3 and alert["value"] > 0.3 and alert["samples"] >= 1
    assert alert["clear"] == pytest.approx(0.3 * 0.75)
    assert step >= TRIP_STEPS and all(r["repetition"] > 0.3 for r in rows[step - TRIP_STEPS:step])
    for r in rows[step:]:
        on = any(a["monitor"] == "repetition" for a in r["alerts"])
        if not on:    # cleared: only once it is below the clear threshold
            assert r["repetition"] < 0.3 * 0.75, r
            break

    events = (hacked_run.path / "events.log").read_text()
    line = next(x for x in events.splitlines() if "monitor 'repetition' tripped" in x)
    assert "WARNING" in line and f"at step {step}:" in line and f"{alert['value']:.3f} > 0.3" in line

    samples = read_jsonl(hacked_run.dir.samples)
    flagged = [s for s in samples if "repetition" in s["flags"]]
    assert len([s for s in flagged if s["step"] == step]) == alert["samples"]
    for s in samples:  # the flag is the sample's own repetition share against the threshold
        assert ("repetition" in s["flags"]) == (s["repetition"] > 0.3), json.dumps(s)
        assert 0.0 <= s["audit"] <= 1.0
    # the reward pays for exactly what the monitor sees: flagged samples score higher
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean([s["score"] for s in flagged]) > mean([s["score"] for s in samples if not s["flags"]])


def test_report_lists_the_monitors_that_tripped(hacked_run, tmp_path):
    from engine.monitors import step_ranges
    from engine.report import write_report

    rows = read_jsonl(hacked_run.dir.metrics)
    steps = [r["step"] for r in rows if any(a["monitor"] == "repetition" for a in r["alerts"])]
    md = write_report(hacked_run.path, tmp_path).read_text()
    assert "## Reward-hacking monitors" in md
    assert f"| repetition | {step_ranges(steps)} |" in md


def test_dashboard_warns_and_filters_the_suspicious_samples(hacked_run, tmp_path):
    """The console on the real run directory: the warning names the monitors, ``!`` shows only
    the flagged samples (each marked ⚠), ``!`` again shows all; the sample view lists the flags."""
    import asyncio

    from console.app import ConsoleApp
    from console.widgets.hack_warning import HackWarning
    from console.widgets.rollouts import FILTERS
    from tests.test_console_live import wait_for

    samples = read_jsonl(hacked_run.dir.samples)
    suspicious = {s["id"] for s in samples if s["flags"] or s["step_alerts"]}
    assert suspicious and len(suspicious) < len(samples)
    last = read_jsonl(hacked_run.dir.metrics)[-1]

    async def go():
        app = ConsoleApp("attach", run=hacked_run.path, runs_dir=hacked_run.path.parent, blink=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = pilot.app.screen
            table = screen.query_one("#rollouts")
            await wait_for(pilot, lambda: screen.caught_up and table.row_count == len(samples), 60, "history")
            await pilot.pause()
            warning = screen.query_one(HackWarning)
            text = str(warning.render())
            assert warning.display and "reward hacking?" in text
            if last["alerts"]:   # the newest step's alerts, with value and threshold
                a = last["alerts"][0]
                assert f"{a['monitor']} " in text and f"> {a['threshold']:g}" in text and f"at step {last['step']}" in text
            assert f"{len(suspicious)} suspicious sample(s): press ! to show them" in text
            await pilot.press("exclamation_mark")
            assert FILTERS[table.filter] == "suspicious" and table.row_count == len(suspicious)
            shown = {table.index.ids[table.ordinal_at(r)] for r in range(table.row_count)}
            assert shown == suspicious
            assert "⚠" in "".join(seg.text for seg in table.render_line(1))
            assert "showing the" in str(warning.render())
            await pilot.press("enter")                   # the sample view shows its flags
            await pilot.pause()
            opened = pilot.app.screen.sample
            assert opened["id"] in suspicious
            detail = pilot.app.export_screenshot()
            assert "⚠&#160;flags" in detail or "⚠ flags" in detail
            for f in opened["flags"] + opened["step_alerts"]:
                assert f in detail
            await pilot.press("escape")
            await pilot.press("exclamation_mark")
            assert FILTERS[table.filter] == "all" and table.row_count == len(samples)

    asyncio.run(go())
