"""A role over several processes, for real: two worker processes forming one gloo group on the
tiny random Llama, float32. The update must equal the one-process update, and checkpoints must
resume across world sizes."""
from __future__ import annotations

import shutil

import pytest

from engine.client import launch
from engine.config import apply_overrides, dump_config, load_config
from tests.conftest import TINY, kill_run, run_processes_gone, run_segments, tiny_overrides

pytestmark = pytest.mark.timeout(900)

KEYS = ("score_mean", "kl", "kl_penalty_mean", "policy_loss", "value_loss", "entropy", "approx_kl",
        "clipfrac", "grad_norm", "critic_grad_norm", "advantage_mean", "return_mean", "value_mean",
        "response_len_mean")
BASE = ("run.steps=2", "checkpoint.every=1", "checkpoint.keep_last=2", "actor.dtype=float32")


def _by_step(run) -> dict[int, dict]:
    return {m["step"]: m for m in run.metrics()}


def _max_diffs(a: dict[int, dict], b: dict[int, dict], steps) -> dict[str, float]:
    return {k: max(abs(a[s][k] - b[s][k]) for s in steps) for k in KEYS}


def _clean(run) -> None:
    assert run_processes_gone(run) == [], "processes of the run are still alive"
    assert run_segments(run) == [], "shared-memory segments of the run are left"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process reference run: 2 steps, checkpoints at steps 1 and 2."""
    d = tmp_path_factory.mktemp("runs")
    run = launch(TINY, tiny_overrides(d, *BASE, "run.name=w1"))
    try:
        assert run.wait(timeout=600) == "finished", run.info.get("failure")
        yield run, _by_step(run)
    finally:
        kill_run(run)


def _resume_with(run, *overrides: str) -> None:
    """Drop the last checkpoint and continue from step 1 with other ranks."""
    shutil.rmtree(run.dir.checkpoints / "step_2")
    cfg = apply_overrides(load_config(run.dir.config, check_hardware=False), list(overrides),
                          check_hardware=False)
    run.dir.config.write_text(dump_config(cfg))
    run.restart()
    assert run.wait(timeout=600) == "finished", run.info.get("failure")


def test_two_ddp_ranks_equal_one_process_and_resume_across(single, runs_dir, cleanup_runs, tmp_path):
    one, m1 = single
    # this run also keeps its checkpoints elsewhere and prints every second step line
    two = launch(TINY, tiny_overrides(runs_dir, *BASE, "run.name=w2", "actor.world_size=2",
                                      f"checkpoint.dir={tmp_path / 'ck'}", "logging.print_every=2"))
    cleanup_runs.append(two)
    assert two.wait(timeout=600) == "finished", two.info.get("failure")
    m2 = _by_step(two)
    assert sorted(m2) == [1, 2]
    diffs = _max_diffs(m1, m2, (1, 2))
    print("world_size 2 vs 1, max abs diff over 2 steps:", diffs)
    assert all(v <= 1e-4 for v in diffs.values()), diffs
    events = (two.path / "events.log").read_text()
    assert "device plan: actor x2 ddp -> cpu, cpu; reference -> cpu" in events
    assert set(two.info["pids"]) == {"actor[0]", "actor[1]", "reference", "critic", "reward"}
    assert two.info["devices"]["actor"] == ["cpu", "cpu"]
    assert (two.dir.latest_checkpoint() / "actor" / "trainer_state.pt").is_file()
    assert two.dir.latest_checkpoint() == tmp_path / "ck" / two.path.name / "step_2"
    assert not list((two.path / "checkpoints").glob("step_*"))
    printed = (two.path / "supervisor.log").read_text()
    assert "step 2/2 |" in printed and "step 1/2 |" not in printed
    assert "step 1/2 |" in events and "step 2/2 |" in events
    _clean(two)

    # a two-rank checkpoint resumed by one process, and a one-process checkpoint by two fsdp
    # ranks per trained role (loaded into the shards)
    _resume_with(two, "actor.world_size=1")
    _resume_with(one, "actor.world_size=2", "actor.strategy=fsdp", "critic.world_size=2",
                 "critic.strategy=fsdp")
    for run in (two, one):
        again = _by_step(run)
        assert sorted(again) == [1, 2]
        d = _max_diffs(m1, again, (2,))
        assert all(v <= 1e-4 for v in d.values()), (run.path.name, d)
        _clean(run)
    assert "device plan: actor x2 fsdp -> cpu, cpu" in (one.path / "events.log").read_text()


@pytest.mark.slow
def test_fsdp_ranks_equal_one_process(single, runs_dir, cleanup_runs):
    _, m1 = single
    run = launch(TINY, tiny_overrides(runs_dir, *BASE, "run.name=fsdp", "actor.world_size=2",
                                      "actor.strategy=fsdp", "critic.world_size=2", "critic.strategy=fsdp"))
    cleanup_runs.append(run)
    assert run.wait(timeout=600) == "finished", run.info.get("failure")
    diffs = _max_diffs(m1, _by_step(run), (1, 2))
    print("fsdp world_size 2 vs 1, max abs diff over 2 steps:", diffs)
    assert all(v <= 1e-4 for v in diffs.values()), diffs
    assert "actor x2 fsdp -> cpu, cpu" in (run.path / "events.log").read_text()
    # the sharded checkpoint is written in the one-process layout: it resumes in one process
    _resume_with(run, "actor.world_size=1")
    d = _max_diffs(m1, _by_step(run), (2,))
    assert all(v <= 1e-4 for v in d.values()), d
    _clean(run)
