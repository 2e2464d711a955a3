"""What every role shares: the ``Role`` base class and the helpers its operations use.

A role owns its model(s) and answers operations (``generate``, ``logprobs``, ``values``,
``score``, ``update``, ``save``, ``load`` ...). Each operation takes a dict of tensors and a dict
of JSON-able arguments and returns the same pair. The worker process (``worker.py``) hosts one
or more roles behind the shared-memory transport; the single-process baseline of the benchmark
calls the very same objects inline. The roles themselves: ``role_policy`` (actor, reference),
``role_critic``, ``role_reward``; how a trained role updates: ``role_training``; the table of
roles by name: ``roles``.
"""
from __future__ import annotations

import random
import resource
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from engine.config import RunConfig

Tensors = dict[str, torch.Tensor]
Result = tuple[Tensors, dict[str, Any]]


class NonFiniteError(RuntimeError):
    """A NaN/inf in a loss, gradient, value or reward: the step's update must not be applied."""

    def __init__(self, role: str, phase: str, detail: str):
        super().__init__(f"non-finite value in {role} ({phase}): {detail}")
        self.role, self.phase, self.detail = role, phase, detail


def role_seed(seed: int, role: str) -> int:
    return (seed * 1_000_003 + sum(ord(c) * 31**i for i, c in enumerate(role))) % (2**31 - 1)


def memory_stats(device: torch.device) -> dict[str, float]:
    st: dict[str, float] = {}
    try:
        import psutil

        st["rss_mb"] = psutil.Process().memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - memory figures are best effort
        pass
    st["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        st["gpu_alloc_mb"] = torch.cuda.memory_allocated(device) / 2**20
        st["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return st


def capture_rng() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np

        st["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def restore_rng(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "numpy" in st:
        import numpy as np

        np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def check_finite(role: str, phase: str, **named: Any) -> None:
    for k, v in named.items():
        t = v if isinstance(v, torch.Tensor) else torch.tensor(float(v))
        if not torch.isfinite(t).all():
            raise NonFiniteError(role, phase, f"{k} is not finite")


def named_write_errors(fn: Callable[[], Result], folder: Path) -> Result:
    """Run a checkpoint write; a failure is re-raised as OSError naming its cause."""
    try:
        return fn()
    except Exception as e:
        from engine.runtime.rundir import write_error_cause

        raise OSError(write_error_cause(e, folder)) from e


def score_parts(cfg: RunConfig, tensors: Tensors) -> Optional[list]:
    """With ``ppo.micro_batch_tokens``: the scoring pass's micro-batches, ``(rows, sub-batch)``
    each (engine/runtime/microbatch.py: length-bucketed, unused padding columns cut off);
    None = one pass over the whole batch."""
    budget = cfg.ppo.micro_batch_tokens
    if not budget:
        return None
    from engine.runtime import microbatch as MB

    qs, rs = MB.spans(tensors["query_mask"], tensors["response_mask"])
    rows = torch.arange(tensors["query_ids"].shape[0])
    return [(m, MB.sub_batch(tensors, m, qs, rs)) for m in MB.token_micro_batches(rows, qs, rs, budget)]


class Role:
    name = "role"

    def __init__(self, cfg: RunConfig, progress: Optional[Callable[[str], None]] = None):
        from engine.models import resolve_device

        self.cfg = cfg
        self.progress = progress or (lambda m: None)
        self.role_cfg = getattr(cfg, self.name)
        self.device = resolve_device(self.role_cfg.device)
        from engine.runtime.ranks import RankContext

        # rank and strategy when this role runs over several processes (world_size > 1)
        self.ranks = RankContext(getattr(self.role_cfg, "strategy", "ddp"),
                                 getattr(self.role_cfg, "reshard_after_forward", True))

    def call(self, op: str, tensors: Tensors, args: dict) -> Result:
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            raise ValueError(f"role {self.name} has no operation '{op}'")
        return fn(tensors, args)

    def op_memory(self, tensors: Tensors, args: dict) -> Result:
        return {}, memory_stats(self.device)

    def op_reset_peak(self, tensors: Tensors, args: dict) -> Result:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return {}, {}

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    def _planned_checkpointing(self) -> bool:
        """Whether the memory plan turns gradient checkpointing on for this role's GPU (said
        in the log when it does)."""
        from engine.runtime.placement import planned_checkpointing

        why = planned_checkpointing(self.cfg, self.name, self.device)
        if why:
            self.progress(why)
        return why is not None

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        """A large output (hidden states): left on the GPU when runtime.cuda_ipc is on, so the
        worker sends a CUDA IPC handle instead of copying it through host memory."""
        if self.cfg.runtime.cuda_ipc and t.is_cuda:
            return t.detach()
        return t.cpu()

    def attn_implementation(self) -> str:
        """The role's attention kernel after fallbacks; a fallback is reported once."""
        from engine.models import resolve_attn_implementation

        attn, warn = resolve_attn_implementation(self.role_cfg.attn_implementation, self.device)
        if warn:
            self.progress(f"{self.name}: {warn}")
        return attn

    @property
    def weights_dtype(self) -> str:
        """``<role>.dtype`` with ``auto`` resolved for this role's device (engine.precision)."""
        from engine.precision import resolve_dtype

        return resolve_dtype(getattr(self.role_cfg, "dtype", "float32"), self.name, self.device)

    def precision_for(self, phase: str) -> str:
        """The autocast dtype of ``phase`` (``none`` = the weights' own): as the supervisor
        set it (``op_precision``), else resolved here from ``<role>.autocast`` (``auto``
        measures this machine once, cached)."""
        plan = getattr(self, "_precision", None)
        if plan is None:
            ac = getattr(self.role_cfg, "autocast", "none")
            if ac != "auto":
                return ac
            from engine.precision import role_precision

            plan = self._precision = role_precision(self.cfg, self.name, self.device,
                                                    progress=self.progress).autocast
        return plan.get(phase, "none")

    def op_precision(self, tensors: Tensors, args: dict) -> Result:
        """Set the autocast dtype per phase (``args["autocast"]``: phase -> dtype or none)."""
        plan = dict(args.get("autocast") or {})
        bad = {k: v for k, v in plan.items() if v not in ("none", "bfloat16", "float16")}
        if bad:
            raise ValueError(f"{self.name}: unknown autocast dtype(s) {bad}")
        self._precision = plan
        return {}, {}

    def amp(self, phase: str):
        """torch.autocast for one of this role's passes (``generate``, ``score``, ``update``)."""
        from engine.precision import autocast_context

        return autocast_context(self.device, self.precision_for(phase))
