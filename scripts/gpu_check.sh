#!/usr/bin/env bash
# The device check of issue 24 in one run (<= 8 minutes on one H100/H200): the GPU preset
# (configs/gpu-0.5b.yaml) for 5 steps with NVML peaks per role and the console attached headless,
# a 4-bit reward model next to bf16, CUDA IPC on/off and CUDA-graph/eager equality, versions.
# Raw outputs go to docs/results/gpu-<yyyymmdd>/ (or OUT_DIR); see scripts/gpu_check.py.
#
#   scripts/gpu_check.sh [OUT_DIR] [--only PART] [--steps N]
#
# Exits 3 without starting anything when no CUDA device is visible; 1 when a part failed (a
# skipped part, e.g. no bitsandbytes, is not a failure: its reason is printed). Needs torch,
# transformers, pyyaml, psutil, textual (nvidia-ml-py for NVML) and the asset cache's SmolLM2
# tokenizer (RLHF_CONSOLE_CACHE points to it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "${PYTHON:-python3}" scripts/gpu_check.py "$@"
