"""What the config checks ask of this machine: CUDA devices, installed packages, bitsandbytes'
CPU kernels. Each is probed once (cached); the checks read them through this module, so a test
replaces one here (``monkeypatch.setattr(engine.config.probes, "cuda_device_count", ...)``)."""
from __future__ import annotations

import functools
import importlib.util
from typing import Optional


@functools.lru_cache(maxsize=None)
def cuda_device_count() -> int:
    """Number of visible CUDA devices (0 when torch or CUDA is absent). Imports torch lazily."""
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - any failure means "no usable CUDA"
        return 0


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=None)
def bnb_cpu_unsupported_reason(quantization: str) -> Optional[str]:
    """None if bitsandbytes runs ``quantization`` on this CPU (tried for real, once), else why not."""
    if not module_available("bitsandbytes"):
        return "the bitsandbytes package is not installed"
    import torch

    from engine.models import _bnb_unsupported_reason

    return _bnb_unsupported_reason(quantization, torch.device("cpu"))
