"""The runtime's GPU paths for real. Every test here skips on a machine without CUDA (the
development machine has none); scripts/gpu_check.sh measures the same paths."""
from __future__ import annotations

import pytest

from engine.client import launch
from engine.config import cuda_device_count
from tests.conftest import TINY, tiny_overrides

pytestmark = [pytest.mark.timeout(900)]

KEYS = ("score_mean", "kl", "policy_loss", "value_loss", "entropy", "grad_norm")
BASE = ("run.steps=2", "checkpoint.every=0", "ppo.critic_trunk=reference", "ppo.critic_lr=1e-3")


def _metrics(runs_dir, cleanup_runs, name, *extra):
    run = launch(TINY, tiny_overrides(runs_dir, *BASE, f"run.name={name}", *extra))
    cleanup_runs.append(run)
    assert run.wait(timeout=600) == "finished", run.info.get("failure")
    return {m["step"]: m for m in run.metrics()}, run


@pytest.mark.skipif(cuda_device_count() < 1, reason="needs a CUDA device")
def test_cuda_ipc_on_and_off_give_the_same_run(runs_dir, cleanup_runs):
    on, run = _metrics(runs_dir, cleanup_runs, "ipc-on", "runtime.cuda_ipc=true")
    off, _ = _metrics(runs_dir, cleanup_runs, "ipc-off", "runtime.cuda_ipc=false")
    assert run.info["devices"]["critic"] == run.info["devices"]["reference"]
    for s in (1, 2):
        for k in KEYS:
            assert on[s][k] == pytest.approx(off[s][k], abs=1e-4), (s, k)


@pytest.mark.skipif(cuda_device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_nccl_ranks_equal_one_process(runs_dir, cleanup_runs, strategy):
    one, _ = _metrics(runs_dir, cleanup_runs, "one")
    two, run = _metrics(runs_dir, cleanup_runs, "two", "actor.world_size=2", f"actor.strategy={strategy}")
    assert sorted(run.info["devices"]["actor"]) == ["cuda:0", "cuda:1"]
    for s in (1, 2):
        for k in KEYS:
            assert one[s][k] == pytest.approx(two[s][k], abs=1e-4), (s, k)
