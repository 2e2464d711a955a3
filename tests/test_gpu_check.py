"""scripts/gpu_check.sh on a machine without a GPU: one clear line, exit 3, nothing started."""
from __future__ import annotations

import subprocess

import pytest

from engine.config import cuda_device_count
from tests.conftest import ROOT


@pytest.mark.skipif(cuda_device_count() > 0, reason="a CUDA device is visible: the script would run")
def test_gpu_check_without_a_gpu_says_so_and_starts_nothing(tmp_path):
    out = tmp_path / "gpu-check"
    p = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), str(out)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 3, p.stderr
    assert "no CUDA device is visible" in p.stderr and "nothing was run" in p.stderr
    assert not out.exists()


def test_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")]).returncode == 0
    src = (ROOT / "scripts" / "gpu_check.py").read_text()
    compile(src, "gpu_check.py", "exec")
