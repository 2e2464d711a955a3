"""Each ppo.estimator end to end on configs/tiny.yaml, real processes, tiny Llama (gae from the CLI
in the foreground, the others launched detached): critic-free estimators start no critic process
and skip the value phase; the n responses to a prompt share a group id in samples.jsonl."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from engine.runtime.rundir import RunDir, read_jsonl
from tests.conftest import ROOT, TINY, run_processes_gone

pytestmark = pytest.mark.timeout(600)

# one process per role for gae and grpo (the critic's process is there or not); the others run
# their roles in one process (runtime.colocate) and one step, to keep the suite short
CASES = [
    ("gae", 1, ("runtime.colocate=true", "run.steps=1")),
    ("grpo", 4, ("ppo.kl_in=loss", "ppo.kl_loss_coef=0.1")),
    ("dr_grpo", 4, ("ppo.loss_agg=seq-mean-token-sum-norm", "runtime.colocate=true", "run.steps=1")),
    ("rloo", 2, ("ppo.loss_agg=seq-mean-token-mean", "runtime.colocate=true", "run.steps=1")),
    # the verifiable task: rule reward with answers, held-out evaluation before step 1 and after each
    ("reinforce_pp", 1, ("data.source=bundled:arithmetic", "reward.source=rule:arithmetic", "runtime.colocate=true",
                         "eval.every=1", "eval.num_prompts=3", "data.max_prompt_tokens=48")),
    ("reinforce_pp_baseline", 2, ("ppo.loss_agg=seq-mean-token-sum", "runtime.colocate=true", "run.steps=1")),
]


@pytest.mark.parametrize("estimator,n,extra", CASES, ids=[c[0] for c in CASES])
def test_estimator_end_to_end(estimator, n, extra, runs_dir, cleanup_runs):
    sets = [f"run.output_dir={runs_dir}", f"run.name={estimator}", "run.steps=2", "checkpoint.every=0",
            f"ppo.estimator={estimator}", f"rollout.n={n}", "rollout.batch_size=2",
            "ppo.mini_batch_size=2", "ppo.micro_batch_size=1", "rollout.samples_to_log=4", *extra]
    if estimator == "gae":  # one case in the foreground from the CLI, as a user types it
        cmd = [sys.executable, "-m", "console.cli", "train", "--config", str(TINY)]
        for s in sets:
            cmd += ["--set", s]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=500)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    else:  # the others detached (engine.client.launch: the suite's warm launcher forks them)
        from engine.client import launch

        run = launch(TINY, sets)
        cleanup_runs.append(run)
        assert run.wait(timeout=500) == "finished", run.info.get("failure")
    (path,) = list(runs_dir.iterdir())
    rd = RunDir(path)
    info = rd.read_state()
    assert info["state"] == "finished"
    critic_free = estimator != "gae"
    colocated = "runtime.colocate=true" in extra
    if not colocated:  # one process per role: the critic's is there or not
        assert ("critic" in info["pids"]) is not critic_free, info["pids"]
    log = (path / "events.log").read_text()
    roles = "actor, reference, reward" if critic_free else "actor, reference, critic, reward"
    assert f"worker process(es) for {roles} (" in log and ("no critic" in log) is critic_free
    metrics = read_jsonl(rd.metrics)
    steps = 1 if "run.steps=1" in extra else 2
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    for m in metrics:
        assert m["estimator"] == estimator and m["rollout_n"] == n
        for key in ("score_mean", "kl", "policy_loss", "advantage_mean", "entropy", "grad_norm"):
            assert math.isfinite(m[key]), key
        assert ("value_loss" in m) is not critic_free and ("value_mean" in m) is not critic_free
        if not colocated:
            assert set(m["memory"]) == ({"actor", "reference", "reward"} | (set() if critic_free else {"critic"}))
        assert ("critic" in m["timings"] and "critic_update" in m["timings"]) is not critic_free
        assert ("kl_loss" in m) is ("ppo.kl_in=loss" in extra)
        if n > 1:
            assert 0.0 <= m["group_all_equal_frac"] <= 1.0
    if estimator in ("grpo", "dr_grpo", "rloo"):
        # group-relative advantages sum to zero within each group: their batch mean is ~0
        assert all(abs(m["advantage_mean"]) < 0.5 for m in metrics)
    if "eval.every=1" in extra:
        assert 0.0 <= metrics[0]["heldout_accuracy_initial"] <= 1.0
        assert all(0.0 <= m["heldout_accuracy"] <= 1.0 and m["heldout_n"] == 3 for m in metrics)
        assert all(0.0 <= m["accuracy"] <= 1.0 for m in metrics)
        from engine.report import write_report

        text = write_report(path, runs_dir.parent / "report").read_text()
        assert "## Held-out accuracy" in text  # the starting model's point and one per step
        assert text.count("\n| 0 | ") == 1 and "\n| 2 | " in text
    samples = [x for x in read_jsonl(rd.samples) if x["step"] == 1]
    assert len(samples) == min(4, 2 * n)
    if "eval.every=1" in extra:
        assert all(x["answer"] is not None and isinstance(x["correct"], bool) for x in samples)
    if n > 1:  # whole groups, n responses to one prompt each
        groups: dict = {}
        for x in samples:
            groups.setdefault(x["group"], []).append(x)
        assert all(len(v) == n and len({x["prompt"] for x in v}) == 1 for v in groups.values())
        if estimator == "rloo":
            for v in groups.values():  # (s - mean) * n / (n - 1) sums to 0 within a group
                assert sum(x["advantage"] for x in v) == pytest.approx(0.0, abs=1e-4)
    assert run_processes_gone(type("R", (), {"info": info})()) == []


def test_critic_free_run_stops_and_resumes(runs_dir, cleanup_runs):
    """A grpo run has no critic in its checkpoints, and resumes from them."""
    from engine.client import launch

    # 8 steps: the stop request must land before the run ends (workers forked from a preloaded
    # fork server made 3 tiny steps fast enough to finish first)
    run = launch(TINY, [f"run.output_dir={runs_dir}", "run.steps=8", "ppo.estimator=grpo", "rollout.n=2",
                        "rollout.batch_size=2", "ppo.mini_batch_size=2", "ppo.micro_batch_size=2",
                        "runtime.colocate=true", "checkpoint.every=0"])
    cleanup_runs.append(run)
    run.wait_step(1, timeout=300)
    run.stop()
    assert run.wait(timeout=120) == "stopped"
    k = run.info["step"]
    ck = run.dir.latest_checkpoint()
    assert k < 8 and ck is not None and ck.name == f"step_{k}"
    assert (ck / "actor").is_dir() and not (ck / "critic").exists()
    run.restart()
    assert run.wait(timeout=300) == "finished", run.info.get("failure")
    steps = [m["step"] for m in read_jsonl(run.dir.metrics)]
    assert steps == list(range(1, 9)) and run.dir.latest_checkpoint().name == "step_8"
    assert not (run.dir.latest_checkpoint() / "critic").exists()
