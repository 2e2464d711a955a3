"""Human feedback changes the training: judgements through the CLI, a refit in its own process,
a swap at a step boundary, reward_version in metrics.jsonl, a resume that keeps the new reward,
and a refit that changes nothing refused.

The run is configs/tiny.yaml (VADER reward). The samples judged are fresh pairs the actor writes
for prompts the test chooses: strongly positive or negative review openings, which the reward
reads with the response (reward.score_text prompt+response). The judge goes against the reviews'
sentiment, which VADER follows: the refit's preference head (features from the bundled MiniLM
sentiment classifier: slow the first time, it is trained once) must learn that, and a second
refit on the same judgements, which cannot agree with them better than the first, is refused.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.files import read_jsonl
from tests.conftest import ROOT, TINY, tiny_overrides

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


def test_judgements_refit_accepted_swap_then_a_refit_that_changes_nothing_refused_and_resume(
        runs_dir, cleanup_runs, monkeypatch):
    from engine.client import launch

    monkeypatch.chdir(runs_dir.parent)     # `label RUN_NAME` looks under ./runs
    # the head reads the bundled sentiment classifier's hidden layer over prompt+response (VADER,
    # the current reward, is no model); weight 4: a taste against the base's own must be able to
    # outweigh it on these judgements
    run = launch(TINY, tiny_overrides(runs_dir, "run.steps=40", "checkpoint.every=2", "reward.max_length=64",
                                      "reward.refit.features=reward", "reward.refit.weight=4"))
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

    # --- judgements against the reviews' sentiment, which VADER (reading prompt+response)
    #     follows: the current reward disagrees with the judge, the refit learns the judge
    _judge(run, pos, neg, agree=False)
    rows = read_jsonl(run.dir.labels)
    marks = {x["sample_id"]: x["label"] for x in rows if "sample_id" in x}
    assert marks == {**{s["id"]: "bad" for s in pos}, **{s["id"]: "good" for s in neg}}
    pair = next(x for x in rows if "chosen" in x)
    assert pair["source"] == "human" and (pair["chosen_id"], pair["rejected_id"]) == (neg[0]["id"], pos[0]["id"])
    assert (pair["chosen"], pair["rejected"]) == (neg[0]["response"], pos[0]["response"])
    assert (pair["prompt"], pair["rejected_prompt"]) == (neg[0]["prompt"], pos[0]["prompt"])
    assert pair["step"] == neg[0]["step"]
    paused_at = run.info["step"]
    r = _cli("refit-reward", str(run.path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"refit 1 accepted: reward v1 from step {paused_at + 1}" in r.stdout
    reg = run.reward_versions()
    first = reg["refits"][0]
    assert first["state"] == "accepted" and first["method"] == "head"
    assert first["judgements"]["held_out"] == 12 == first["judgements"]["total"]
    assert first["new"]["judgement_accuracy"] >= first["current"]["judgement_accuracy"] + 0.5
    assert first["test"]["p"] <= 0.1 and isinstance(first["seconds"], float)
    assert {"judgement_accuracy", "original_accuracy"} <= set(first["current"]) & set(first["new"])
    v1 = reg["versions"][-1]
    assert (v1["version"], v1["kind"], v1["attempt"], v1["from_step"]) == (1, "refit", 1, paused_at + 1)
    assert run.status()["reward_version"] == 1

    # --- a second refit on the same judgements cannot agree with them better than v1 does:
    #     refused, v1 stays, and the reason says so
    r = _cli("refit-reward", str(run.path))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "refit 2 refused" in r.stdout and "not significantly better" in r.stdout
    reg = run.reward_versions()
    second = reg["refits"][1]
    assert second["state"] == "refused" and second["current_source"] == v1["source"]
    assert [v["version"] for v in reg["versions"]] == [0, 1]
    assert not (run.path / "rewards" / "refit-2").exists()
    events = run.dir.events.read_text()
    assert "refit 2: refused, keeping reward v1" in events
    # a CPU run's refit is forked from its fork server (torch already imported), and its progress
    # lines come back over the pipe into the event log
    assert "in a separate process (forked from the run's fork server" in events
    assert "refit 2: done: refused" in events

    # --- active selection under the learned preference: the pair offered is picked from 4
    #     fresh candidates, each sample carries its score's two parts (score = base + w * z), and
    #     the counter holds it out for v1 once judged
    from engine.judgements import judge_counter

    w = json.loads((Path(v1["source"]) / "preference.json").read_text())["w"]
    picked = run.sample_pair(prompt=NEGATIVE[0], candidates=4, timeout=300)
    assert len(picked) == 2 and picked[0]["response"] != picked[1]["response"]
    for s in picked:
        assert s["picked"]["candidates"] == 4 and s["reward_version"] == 1, s
        assert s["score"] == pytest.approx(s["score_base"] + w * s["preference"], abs=1e-5)
    before = judge_counter(run.path)
    assert (before["reward_version"], before["held_out"], before["last_refit"]["attempt"]) == (1, 0, 2)
    better = max(picked, key=lambda s: s["score"])
    run.prefer(better["id"], next(s for s in picked if s is not better)["id"])
    after = judge_counter(run.path)
    assert (after["held_out"], after["agree"], after["pairs"]) == (1, 1, before["pairs"] + 1)

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
    print(json.dumps({"refit1": {k: first[k] for k in ("current", "new", "reason", "test")},
                      "refit2": {k: second[k] for k in ("current", "new", "reason", "test")}}, indent=1))


def test_a_refit_without_a_fork_server_is_spawned_and_reports_over_its_pipe(tmp_path):
    """The Ray backend's supervisor has no fork server: its refit is a spawned interpreter. Its
    progress comes back over the pipe, its stderr goes to the log named, and a refit that fails
    (here: no such run) still writes its result and ends."""
    from engine.runtime.refit_proc import RefitProcess

    result, log = tmp_path / "refit-1.json", tmp_path / "supervisor.log"
    argv = [str(tmp_path / "no-such-run"), "--attempt", "1", "--current", "vader", "--out",
            str(tmp_path / "refit-1"), "--result", str(result)]
    proc = RefitProcess(argv, log_path=str(log), server=None)
    assert proc.how == "spawned"
    lines = list(proc.lines())
    assert proc.wait(30) == 0
    assert lines and lines[-1].startswith("done: refused: the refit failed:"), lines
    res = json.loads(result.read_text())
    assert res["accepted"] is False and "the refit failed" in res["reason"]
    assert log.exists() and not (tmp_path / "refit-1").exists()


_ORPHAN = r"""
import multiprocessing as mp, os, time
from engine.runtime.refit_proc import _watch_parent

def body(ppid):
    _watch_parent(ppid)
    time.sleep(120)

p = mp.get_context("fork").Process(target=body, args=(os.getpid(),))
p.start()
print(p.pid, flush=True)
time.sleep(120)
"""


def test_a_refit_process_ends_when_the_process_that_started_it_is_killed():
    """The refit's process watches its parent (the fork server, or the supervisor): a supervisor
    killed with SIGKILL leaves no refit behind, still writing into the run directory."""
    import os
    import signal
    import time

    from engine.procs import pid_alive

    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        time.sleep(1.0)
        assert pid_alive(child), "the watched child ended before its parent did"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        t0 = time.time()
        while pid_alive(child) and time.time() - t0 < 10:
            time.sleep(0.05)
        assert not pid_alive(child), "the child outlived its parent by 10 s"
    finally:
        parent.kill()
