#!/usr/bin/env bash
# The GPU checks of issue 9 in one run (under 5 minutes on a GPU machine): the Qwen2-0.5B-shaped
# preset with random weights over the planned GPUs, CUDA IPC on and off, actor.world_size=2 with
# FSDP when there are two GPUs, NVML peaks per role. Writes OUT_DIR/gpu_check.{json,md}.
#
#   scripts/gpu_check.sh [OUT_DIR] [--runs-dir DIR] [--only SHAPE]   # default OUT_DIR: ./gpu-check
#
# Exits 3 without starting anything when no CUDA device is visible. Needs torch, transformers,
# pyyaml, psutil (nvidia-ml-py for the NVML peaks) and the asset cache's models/tiny-llama folder
# (16 MB, the SmolLM2 tokenizer; any tiny run fills it; RLHF_CONSOLE_CACHE points elsewhere).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
