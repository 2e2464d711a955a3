"""Reward hacking provoked on purpose: a reward function that pays for saying one word over and
over (tests/hacking_reward.py), a short real tiny run, and the monitors must notice -- in
events.log, in metrics.jsonl, in the flags of the samples, and on the console's dashboard."""
from __future__ import annotations

import json

import pytest

from engine.client import launch
from engine.runtime.rundir import read_jsonl
from tests.conftest import TINY, kill_run, tiny_overrides

pytestmark = pytest.mark.timeout(600)

# top_k 2 gives the random tiny policy a chance to repeat a token; a large learning rate lets it
# learn within a dozen steps that repeating pays (its reward climbs from ~0.3 to ~0.5)
HACK = ("run.steps=12", "checkpoint.every=0", "checkpoint.on_stop=false",
        "reward.source=python:tests.hacking_reward:repeated_word", "reward.audit=lexicon:vader",
        "rollout.top_k=2", "rollout.max_new_tokens=16", "ppo.actor_lr=1e-3",
        "monitors.window=5", "monitors.baseline_steps=2", "monitors.repetition=0.3")


@pytest.fixture(scope="module")
def hacked_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("hack") / "runs"
    run = launch(TINY, tiny_overrides(runs, *HACK), wait_ready=True, timeout=600)
    try:
        assert run.wait(timeout=540) == "finished", run.info
        yield run
    finally:
        kill_run(run)


def test_repeated_word_reward_trips_the_repetition_monitor(hacked_run):
    rows = read_jsonl(hacked_run.dir.metrics)
    assert [r["step"] for r in rows] == list(range(1, 13))
    for r in rows:  # every monitor is measured every step (None until it has a baseline/trend)
        assert {"kl_growth", "entropy_trend", "entropy_drop", "length_drift", "repetition",
                "audit_mean", "audit_corr", "divergence", "alerts"} <= set(r)
    assert rows[-1]["divergence"] is not None and rows[-1]["kl_growth"] is not None
    tripped = [(r["step"], a) for r in rows for a in r["alerts"] if a["monitor"] == "repetition"]
    assert tripped, [r["repetition"] for r in rows]
    step, alert = tripped[0]
    assert alert["threshold"] == 0.3 and alert["value"] > 0.3 and alert["samples"] >= 1

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
