"""The precision and decoding tests on the AVX2 CPU class, whatever CPU runs the suite.

A CPU without bf16 instructions (AVX2 only: laptops and desktops before 2024, AMD Zen 2/3, many
cloud VMs) emulates bf16, several times slower than float32, and oneDNN has no bf16 matmul to
pack weights for. ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` makes a bf16-capable CPU
behave as that class; the first test checks that it really does (the slow bf16 matmul, no
oneDNN bf16), the second runs the precision tests, and the decoding tests whose path depends on
bf16 support, under it in a fresh interpreter.
On an AVX2 CPU both run the same way, so the suite checks both branches on any machine with
bf16 hardware and the AVX2 branch everywhere.
"""
from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
AVX2_DECODING = ("test_autocast_bf16_copy_gives_the_autocast_tokens", "test_prepacked_bf16_copy_gives_the_same_bits",
                 "test_no_bf16_matmul_on_this_cpu_means_no_packing_and_plain_decoding",
                 "test_packing_that_fails_its_probe_warns_once_and_decodes_plain")

_PROBE = r"""
import json, time, torch, torch.nn.functional as F
def best(fn, n=15):
    fn(); t = []
    for _ in range(n):
        s = time.perf_counter(); fn(); t.append(time.perf_counter() - s)
    return min(t)
x, w = torch.randn(256, 576), torch.randn(1536, 576)
xb, wb = x.bfloat16(), w.bfloat16()
try:
    torch.ops.mkldnn._reorder_linear_weight(wb, 8)
    packs = True
except RuntimeError:
    packs = False
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "packs": packs,
                  "fp32": best(lambda: F.linear(x, w)), "bf16": best(lambda: F.linear(xb, wb))}))
"""


def _env() -> dict:
    return {**os.environ, **AVX2}


def test_the_emulated_avx2_class_has_slow_bf16_and_no_onednn_bf16():
    import json

    out = subprocess.run([sys.executable, "-c", _PROBE], env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["capability"] == "AVX2"
    assert got["packs"] is False
    # the matmul the update runs at 256 rows: bf16 is an emulation here (4-9x slower measured)
    assert got["bf16"] > 1.5 * got["fp32"], got


def test_precision_and_decoding_tests_pass_on_the_avx2_class(tmp_path):
    # all of the precision tests, and the decoding tests whose path depends on the CPU's bf16
    # support (autocast, oneDNN's packed bf16 weights and its probe). The other decoding tests
    # (float32 token equality, sampling, compile, CUDA graphs) take the same path on any x86
    # CPU and run in the native suite, on an AVX2 machine too.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'b'}",
           "tests/test_precision.py", *(f"tests/test_decoding.py::{name}" for name in AVX2_DECODING),
           "-m", "not slow or slow"]
    # inductor's kernels, should any of these compile, go to a cache of their own: kernels built
    # for the capped ISA must not be loaded later by the native runs (a stale cache once made
    # the compiled decoding test abort the interpreter), nor the other way round. No warm
    # launcher: these tests start no detached run, so it would import for nothing
    env = {**_env(), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "RLHF_CONSOLE_TEST_COLD": "1"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = "\n".join(out.stdout.strip().splitlines()[-15:])
    assert out.returncode == 0, tail + out.stderr[-2000:]
    assert " passed" in tail and "failed" not in tail, tail
