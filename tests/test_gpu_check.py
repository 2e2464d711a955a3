"""scripts/gpu_check.{sh,py}: the pieces that run without a GPU, run for real — the no-CUDA
exit, the part runner's skip/failure lines and exit code, the results writer, the FLOP-rate
arithmetic; the whole script only where CUDA is visible."""
from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest
import torch

from engine.config import cuda_device_count
from tests.conftest import ROOT


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


G = _script()


@pytest.mark.skipif(cuda_device_count() > 0, reason="a CUDA device is visible: the script would run")
def test_gpu_check_without_a_gpu_says_so_and_starts_nothing(tmp_path):
    out = tmp_path / "gpu-check"
    p = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), str(out)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 3, p.stderr
    assert "no CUDA device is visible" in p.stderr and "nothing was run" in p.stderr
    assert not out.exists()


def test_a_part_that_skips_or_fails_is_reported_and_the_others_run():
    log = G.Log()

    def no_bnb():
        raise G.Skip("bitsandbytes is not importable here (ModuleNotFoundError)")

    def boom():
        raise RuntimeError("CUDA error: out of memory\nmore lines")

    parts = [G.run_part("reward4", no_bnb, log), G.run_part("versions", lambda: {"torch": "x"}, log)]
    assert [p["status"] for p in parts] == ["skipped", "ok"]
    assert log.lines[0] == "gpu_check: reward4: skipped: bitsandbytes is not importable here (ModuleNotFoundError)"
    assert G.exit_code(parts) == 0  # a skip is not a failure
    parts.append(G.run_part("equal", boom, log))
    assert parts[-1] == {"part": "equal", "status": "failed", "reason": "RuntimeError: CUDA error: out of memory"}
    assert log.lines[-1] == "gpu_check: equal: failed: RuntimeError: CUDA error: out of memory"
    assert G.exit_code(parts) == 1


def test_the_results_writer_writes_what_it_lists(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.log").write_text("step 1\n")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    res = G.Results(tmp_path / "out")
    res.write("bench.json", json.dumps([{"part": "x"}]))
    assert res.copy_run(run, "preset") == ["events.log", "metrics.jsonl"]  # no run.json there
    listed = (tmp_path / "out" / "files.txt").read_text().split()
    assert listed == ["bench.json", "runs/preset/events.log", "runs/preset/metrics.jsonl"]
    for f in listed:
        assert (tmp_path / "out" / f).is_file()
    assert (tmp_path / "out" / "runs" / "preset" / "events.log").read_text() == "step 1\n"


def test_flop_rate_arithmetic():
    # 0.5e9 parameters training on 256 x 320 tokens in 1 s: 6 * 0.5e9 * 81920 = 245.76 TFLOP/s
    r = G.flop_rate(0.5e9, 256 * 320, 1.0, train=True, peak=989.4)
    assert r["tflops"] == pytest.approx(245.76, abs=0.01)
    assert r["share"] == pytest.approx(245.76 / 989.4, abs=1e-4)
    assert G.flop_rate(1e9, 1e6, 2.0, train=False) == {"tflops": 1000.0, "share": None}  # 2 * 1e9 * 1e6 / 2 s
    with pytest.raises(ValueError):
        G.flop_rate(1e9, 1, 0.0, train=True)
    assert G.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert G.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert G.peak_tflops("NVIDIA H200") == 989.4
    assert G.peak_tflops("NVIDIA GeForce RTX 4090") is None


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")]).returncode == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_versions_part_on_cuda():
    v = G.versions()
    assert v["cuda"] and v["gpu"] and v["torch"] == torch.__version__
