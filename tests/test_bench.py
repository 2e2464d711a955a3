"""The bench's FLOP arithmetic (engine.bench): the seconds are given, except where the matmul
peak's probe itself is the subject (a second or two of small matmuls)."""
import json
import os
import platform
import subprocess
import sys

import pytest

from engine.bench import (
    STEP_PHASES,
    MatmulPeak,
    achieved_line,
    format_phase_flop_rates,
    phase_flop_rates,
    step_flops,
)
from tests.conftest import ROOT


def test_step_flops_counts_forward_and_backward():
    f = step_flops(n_policy=100, n_critic=10, n_reward=5, batch=2, prompt_len=3, resp_len=7, reward_len=7, epochs=2)
    assert f["rollout"] == f["actor_logprobs"] == f["ref"] == 2 * 100 * 2 * 10
    assert f["critic"] == 2 * 10 * 2 * 10
    assert f["reward"] == 2 * 5 * 2 * 7
    assert f["actor_update"] == 6 * 100 * 2 * 10 * 2  # forward + backward = 3x the forward, per epoch
    assert f["critic_update"] == 6 * 10 * 2 * 10 * 2
    assert f["total"] == sum(v for k, v in f.items() if k != "total")
    assert step_flops(100, 10, 5, 2, 3, 7, 7, 2, reuse_logprobs=True)["actor_logprobs"] == 0


def test_phase_flop_rates_arithmetic():
    f = step_flops(n_policy=1e8, n_critic=0, n_reward=2e7, batch=8, prompt_len=10, resp_len=20, reward_len=20, epochs=1)
    secs = {k: 0.0 for k in STEP_PHASES}
    secs.update(rollout=2.0, actor_logprobs=0.5, ref=0.25, reward=0.1, scoring=0.6,
                actor_update=1.5, update=1.6, step=4.5)  # no critic pass, no critic update
    rows = {r["phase"]: r for r in phase_flop_rates(f, secs, peak_tflops=0.1)}
    # rollout: 2 * 1e8 * 8 * 30 = 4.8e10 FLOPs in 2 s = 0.024 TFLOP/s = 24 % of 0.1
    assert rows["rollout"]["flops"] == 4.8e10
    assert rows["rollout"]["tflops"] == pytest.approx(0.024)
    assert rows["rollout"]["share"] == pytest.approx(0.24)
    assert rows["reference"]["tflops"] == pytest.approx(4.8e10 / 0.25 / 1e12)
    # reward: 2 * 2e7 * 8 * 20 = 6.4e9 in 0.1 s
    assert rows["reward"]["tflops"] == pytest.approx(0.064)
    # the scoring phase's wall time carries the four passes' FLOPs together
    assert rows["scoring (wall)"]["flops"] == 4.8e10 + 4.8e10 + 0 + 6.4e9
    assert rows["scoring (wall)"]["tflops"] == pytest.approx((9.6e10 + 6.4e9) / 0.6 / 1e12)
    # update: 6 * 1e8 * 8 * 30 = 1.44e11 in 1.5 s (actor), 1.6 s (wall)
    assert rows["actor update"]["tflops"] == pytest.approx(0.096)
    assert rows["update (wall)"]["tflops"] == pytest.approx(1.44e11 / 1.6 / 1e12)
    assert rows["whole step"]["flops"] == f["total"]
    assert rows["whole step"]["share"] == pytest.approx(f["total"] / 4.5 / 1e12 / 0.1)
    # phases absent on this config: no rate rather than a division by zero
    assert rows["critic values"]["tflops"] is None and rows["critic update"]["share"] is None
    text = "\n".join(format_phase_flop_rates(list(rows.values()), MatmulPeak("bfloat16", 0.1, 2048, True)))
    assert "rollout" in text and "24.0%" in text and "bfloat16" in text and "fwd+bwd" in text
    assert "        24      24.0%" in text  # rollout at 24 GFLOP/s


def test_a_dtype_without_a_fast_path_gets_no_share_of_its_meaningless_peak():
    """A CPU without fast bf16 measured a bf16 "peak" far below float32 and printed phases at
    thousands of % of it: with no fast path every share is None (null in the JSON), the table
    shows "-", and the lines say so instead."""
    f = step_flops(n_policy=1e8, n_critic=0, n_reward=2e7, batch=8, prompt_len=10, resp_len=20, reward_len=20, epochs=1)
    secs = {k: 0.0 for k in STEP_PHASES}
    secs.update(rollout=2.0, ref=0.25, reward=0.1, scoring=0.6, actor_update=1.5, update=1.6, step=4.5)
    slow = MatmulPeak("bfloat16", 0.0009, 512, False, probe_n=512, probe_tflops=0.0009, probe_float32_tflops=0.017)
    assert slow.share_of is None and json.loads(json.dumps(slow.to_json()))["share_of"] is None
    rows = phase_flop_rates(f, secs, slow.share_of)
    assert all(r["share"] is None for r in rows) and rows[0]["tflops"] == pytest.approx(0.024)
    text = "\n".join(format_phase_flop_rates(rows, slow))
    assert "no fast bf16 on this CPU" in text and "%" not in text.split("\n", 2)[2]
    line = achieved_line("multi", f["total"], 4.5, slow)
    assert "no fast bf16 on this CPU" in line and "%" not in line and "floor" not in line
    fast = MatmulPeak("bfloat16", 0.4, 2048, True, probe_n=512, probe_tflops=0.3, probe_float32_tflops=0.1)
    assert "% of the 0.400 TFLOP/s bfloat16 matmul peak" in achieved_line("multi", f["total"], 4.5, fast)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX2 limit is an x86 setting")
def test_bf16_held_to_avx2_is_measured_as_having_no_fast_path():
    """The slow bf16 class for real: torch and oneDNN held to AVX2 (no bf16 matmul instructions)
    run bf16 matmuls slower than float32; the probe must see that."""
    code = ("import json, torch; from engine.bench import measure_matmul_peak; "
            "print(json.dumps(measure_matmul_peak(torch.bfloat16, probe_seconds=0.3).to_json()))")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    peak = json.loads(out.stdout.strip().splitlines()[-1])
    assert peak["fast_path"] is False and peak["share_of"] is None, peak
    assert peak["probe_tflops"] <= peak["probe_float32_tflops"] and peak["n"] == 512


def test_the_peak_is_taken_for_the_dtype_the_update_runs_in_with_auto_resolved(fresh_cache):
    """The default's `auto` precision is no dtype name: the bench resolves it as the run does
    (it crashed there after the steps, before writing its JSON)."""
    from engine.bench import update_compute_dtype
    from engine.config import load_config

    tiny = ROOT / "configs" / "tiny.yaml"
    assert update_compute_dtype(load_config(tiny, ["actor.autocast=bfloat16"])) == "bfloat16"
    assert update_compute_dtype(load_config(tiny, ["actor.autocast=none", "actor.dtype=float32"])) == "float32"
    got = update_compute_dtype(load_config(tiny, ["actor.autocast=auto", "actor.dtype=auto"]))
    assert got in ("float32", "bfloat16")
    # the same answer as the plan the run logs (engine.precision.plan), from the same calibration
    from engine.precision import plan

    rp = plan(load_config(tiny, ["actor.autocast=auto", "actor.dtype=auto"]))["actor"]
    assert got == (rp.dtype if rp.autocast["update"] == "none" else rp.autocast["update"])


def test_bench_generate_runs_the_default_s_auto_precision(fresh_cache):
    """`bench generate` loaded the actor with `dtype: auto` and autocast `auto` as dtype names
    and raised on the default; it now resolves both as the run does."""
    env = {**os.environ, "RLHF_CONSOLE_CACHE": str(fresh_cache)}  # no calibration yet
    out = subprocess.run([sys.executable, "-m", "engine.bench", "generate", "--config", str(ROOT / "configs" / "tiny.yaml"),
                          "--set", "actor.autocast=auto", "--set", "actor.dtype=auto",
                          "--batch", "2", "--tokens", "3", "--repeats", "1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "static" in out.stdout and "autocast" in out.stdout, out.stdout
