"""Human feedback changes the training: judgements through the CLI, a refit in its own process,
a swap at a step boundary, reward_version in metrics.jsonl, a resume that keeps the new reward,
and a worse refit refused.

The run is configs/tiny.yaml (VADER reward, so the first refit starts from the bundled MiniLM
sentiment classifier: slow). The samples judged are fresh pairs the actor writes for prompts
the test chooses: strongly positive or negative review openings, which the reward model reads
with the response (reward.score_text prompt+response), so a judgement that agrees with the
reviews' sentiment is one the bundled classifier can learn and one that contradicts it is a
judgement against its original data.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.files import read_jsonl
from tests.conftest import TINY, tiny_overrides

pytestmark = pytest.mark.slow

POSITIVE = ["An absolutely wonderful, brilliant and moving film, I loved every minute of it",
            "A masterpiece: superb acting, a beautiful story and a perfect, joyful ending"]
NEGATIVE = ["A terrible, boring and awful film, the worst waste of time I have ever seen",
            "Dreadful acting, a stupid plot and a horrible ending; I hated every minute"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "console.cli", *args], capture_output=True, text=True,
                          timeout=900)


def _pairs(run, prompts) -> tuple[list[dict], list[dict]]:
    """Fresh samples for positive and negative prompts: (positive samples, negative samples)."""
    pos, neg = [], []
    for p in prompts:
        (pos if p in POSITIVE else neg).extend(run.sample_pair(prompt=p, timeout=300))
    return pos, neg


def _judge(run, pos, neg, agree: bool) -> None:
    """Marks, then pairs: ``agree`` with the reviews' sentiment, or against it (a sample marked
    again keeps only its newest mark). The first of each kind goes through the CLI, the rest
    through engine.client (each CLI call is a fresh interpreter)."""
    good, bad = (pos, neg) if agree else (neg, pos)
    r = _cli("label", str(run.path), good[0]["id"], "good")
    assert r.returncode == 0, r.stderr
    r = _cli("label", run.name, bad[0]["id"], "bad")  # a run name works as well as its folder
    assert r.returncode == 0, r.stderr
    for s in good[1:]:
        run.label(s["id"], "good")
    for s in bad[1:]:
        run.label(s["id"], "bad")
    r = _cli("prefer", str(run.path), good[0]["id"], bad[0]["id"])
    assert r.returncode == 0, r.stderr
    for a, b in zip(good[1:], bad[1:]):
        run.prefer(a["id"], b["id"])


def test_judgements_refit_refused_then_accepted_swap_and_resume(runs_dir, cleanup_runs, monkeypatch):
    from engine.client import launch

    monkeypatch.chdir(runs_dir.parent)     # `label RUN_NAME` looks under ./runs
    run = launch(TINY, tiny_overrides(runs_dir, "run.steps=40", "checkpoint.every=2", "reward.max_length=64",
                                      "reward.refit.original_eval_rows=48", "reward.refit.mix_ratio=1"))
    cleanup_runs.append(run)
    run.wait_step(1)
    run.pause()
    run.wait(("paused",), timeout=120)

    # --- fresh pairs from the actor; a bad id is refused and nothing is written
    pos, neg = _pairs(run, POSITIVE + NEGATIVE)
    assert len(pos) == len(neg) == 4 and len({s["id"] for s in pos + neg}) == 8
    r = _cli("label", str(run.path), "999-9", "good")
    assert r.returncode != 0 and "no sample '999-9'" in r.stderr
    assert run.dir.labels.read_text() == ""

    # --- judgements against the reviews' sentiment (the MiniLM's original data): the refit
    #     starts from the bundled MiniLM (the current reward is a lexicon), which keeps what it
    #     knew, so it disagrees with the held-out judgements more than VADER does: refused
    _judge(run, pos, neg, agree=False)
    rows = read_jsonl(run.dir.labels)
    marks = {x["sample_id"]: x["label"] for x in rows if "sample_id" in x}
    assert marks == {**{s["id"]: "bad" for s in pos}, **{s["id"]: "good" for s in neg}}
    pair = next(x for x in rows if "chosen" in x)
    assert pair["source"] == "human" and (pair["chosen_id"], pair["rejected_id"]) == (neg[0]["id"], pos[0]["id"])
    assert (pair["chosen"], pair["rejected"]) == (neg[0]["response"], pos[0]["response"])
    assert (pair["prompt"], pair["rejected_prompt"]) == (neg[0]["prompt"], pos[0]["prompt"])
    assert pair["step"] == neg[0]["step"]
    r = _cli("refit-reward", str(run.path))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "refit 1 refused" in r.stdout and "worse on the held-out judgements" in r.stdout
    assert "starting from 'bundled:minilm-sentiment'" in r.stdout      # its progress, from the event log
    reg = run.reward_versions()
    first = reg["refits"][0]
    assert first["state"] == "refused"
    assert first["new"]["judgement_accuracy"] < first["current"]["judgement_accuracy"]
    assert [v["version"] for v in reg["versions"]] == [0]
    assert not (run.path / "rewards" / "refit-1").exists()
    assert "refit 1: refused, keeping reward v0 'lexicon:vader'" in run.dir.events.read_text()
    assert run.status()["reward_version"] == 0

    # --- the user changes their mind: marks and pairs that agree with the reviews. The newest
    #     judgements (held out) are pairs the new model ranks better than VADER: accepted, and
    #     swapped in at the step boundary while the run is paused
    _judge(run, pos, neg, agree=True)
    j = run.judgements()
    assert (j.good, j.bad, len(j.pairs)) == (4, 4, 8)
    paused_at = run.info["step"]
    r = _cli("refit-reward", str(run.path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"refit 2 accepted: reward v1 from step {paused_at + 1}" in r.stdout
    reg = run.reward_versions()
    v1 = reg["versions"][-1]
    assert (v1["version"], v1["kind"], v1["attempt"], v1["from_step"]) == (1, "refit", 2, paused_at + 1)
    second = reg["refits"][1]
    assert second["new"]["judgement_accuracy"] >= second["current"]["judgement_accuracy"]
    assert run.status()["reward_version"] == 1

    # --- the steps after the swap are scored by v1; a stop (with its checkpoint) and a resume
    #     keep it
    run.resume()
    run.wait_step(paused_at + 2)
    run.stop(wait=True, timeout=300)
    versions = {m["step"]: m["reward_version"] for m in read_jsonl(run.dir.metrics)}
    assert max(versions) >= paused_at + 2
    assert all(v == (0 if s <= paused_at else 1) for s, v in versions.items())
    run.restart()
    last = run.info["step"]
    run.wait_step(last + 1)
    st = run.status()
    assert (st["reward_version"], st["reward_source"]) == (1, v1["source"])
    run.stop(wait=True, timeout=300)
    after = [m["reward_version"] for m in read_jsonl(run.dir.metrics) if m["step"] > last]
    assert after and set(after) == {1}
    print(json.dumps({"refit1": {k: first[k] for k in ("current", "new", "reason")},
                      "refit2": {k: second[k] for k in ("current", "new", "reason")}}, indent=1))
