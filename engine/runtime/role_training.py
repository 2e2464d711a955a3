"""How a trained role (actor, critic) updates: its AdamW and learning-rate schedule, the
optimizer step (clipping, float16 loss scaling, finite checks), seeded mini-batch shuffles, and
the two-phase commit that applies the actor's and the critic's updates of a step together or not
at all."""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Optional

import torch

from engine.runtime.role_base import NonFiniteError, Result, Tensors, check_finite


def step_generator(seed: int, step: int, tag: int) -> torch.Generator:
    """A generator derived from (seed, step, tag): mini-batch shuffles that resume exactly."""
    g = torch.Generator()
    g.manual_seed((seed * 7919 + step * 104_729 + tag * 15_485_863) % (2**63 - 1))
    return g


def make_scheduler(opt: torch.optim.Optimizer, kind: str, warmup: int, total: int):
    total = max(int(total), 1)

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return max(0.0, 1.0 - frac)
        return 0.5 * (1.0 + math.cos(math.pi * frac))  # cosine

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def is_sharded(t: torch.Tensor) -> bool:
    return hasattr(t, "to_local")  # a DTensor (fsdp)


class _AdamW(torch.optim.AdamW):
    """AdamW with its implementation (fused, foreach, or one tensor at a time) fixed when it is
    built: ``load_state_dict`` would otherwise take those flags from the saved param groups, so
    resuming from a checkpoint written by another implementation would silently switch kernels."""

    def load_state_dict(self, state_dict: dict) -> None:
        keep = [{k: g.get(k) for k in ("fused", "foreach")} for g in self.param_groups]
        groups = [{**saved, **mine} for saved, mine in zip(state_dict["param_groups"], keep)]
        super().load_state_dict({**state_dict, "param_groups": groups})


def make_adamw(params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The roles' AdamW: the fused kernel (one pass over each parameter, its gradient and both
    moments per step) where torch has it for these parameters, i.e. plain (unsharded) floating
    point tensors on CPU or CUDA; otherwise torch's default implementation. Both compute the
    same update; they differ only by float rounding."""
    params = list(params)
    fused = bool(params) and all(
        not is_sharded(q) and q.is_floating_point() and q.device.type in ("cpu", "cuda") for q in params)
    return _AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


class TwoPhaseUpdate:
    """Makes a role's ``update`` one half of a two-phase commit across roles.

    ``op_update`` keeps a copy of the trainable parameters, the optimizer and the scheduler
    before the first change and checks the losses, the gradient norms and the new parameters
    for NaN/inf; on any error it restores the copy itself before raising. A successful update
    stays *pending* until the driver says ``commit`` (drop the copy) or ``rollback`` (restore
    it, because another role's update of the same step failed). So the actor and the critic
    updates of one step are applied together or not at all. The copy lives in host memory:
    the trainable parameters plus the optimizer's state (about 3x the parameters with AdamW).

    The copy's host buffers are allocated once and reused by every update (one
    ``torch._foreach_copy_`` into them, no fresh allocation to page in each step): after the
    first update they stay resident, the same peak memory as a fresh copy per update. Sharded
    (fsdp) parameters take a fresh copy each update.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    _pending: Optional[dict] = None
    _snap_buffers: Optional[list] = None

    def _trained(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(k, v) for k, v in self.model.named_parameters() if v.requires_grad]

    def _snapshot(self) -> dict:
        named = self._trained()
        if any(is_sharded(v) for _, v in named):
            params = {k: v.detach().to("cpu", copy=True) for k, v in named}
            return {"params": params, "optimizer": to_cpu(self.optimizer.state_dict()),
                    "scheduler": copy.deepcopy(self.scheduler.state_dict())}
        # the optimizer's state in state_dict()'s layout: tensors go to the reused buffers,
        # anything else (and the param groups: lr ...) is copied as it is
        tensors = [v.detach() for _, v in named]
        layout: dict[int, dict[str, Any]] = {}
        i = 0
        for group in self.optimizer.param_groups:
            for q in group["params"]:
                st = self.optimizer.state.get(q)
                if st:
                    entry = {}
                    for key in sorted(st):
                        val = st[key]
                        if isinstance(val, torch.Tensor):
                            entry[key] = ("buffer", len(tensors))
                            tensors.append(val.detach())
                        else:
                            entry[key] = ("value", copy.deepcopy(val))
                    layout[i] = entry
                i += 1
        bufs = self._snap_buffers
        if bufs is None or len(bufs) != len(tensors) or any(
                b.shape != t.shape or b.dtype != t.dtype for b, t in zip(bufs, tensors)):
            bufs = self._snap_buffers = [torch.empty(t.shape, dtype=t.dtype, device="cpu") for t in tensors]
        with torch.no_grad():
            if all(t.device.type == "cpu" for t in tensors):
                torch._foreach_copy_(bufs, tensors)
            else:
                for b, t in zip(bufs, tensors):
                    b.copy_(t)
        groups = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups])
        return {"fast": True, "names": [k for k, _ in named], "buffers": bufs, "layout": layout,
                "groups": groups, "scheduler": copy.deepcopy(self.scheduler.state_dict())}

    def _restore(self, snap: dict) -> None:
        if snap.get("fast"):
            self._restore_fast(snap)
            return
        with torch.no_grad():
            named = dict(self.model.named_parameters())
            for k, v in snap["params"].items():
                named[k].copy_(v.to(named[k].device))
        self.optimizer.load_state_dict(snap["optimizer"])  # moves state to the params' device
        self.scheduler.load_state_dict(snap["scheduler"])
        self.optimizer.zero_grad(set_to_none=True)

    def _restore_fast(self, snap: dict) -> None:
        bufs = snap["buffers"]
        with torch.no_grad():
            named = dict(self.model.named_parameters())
            for j, k in enumerate(snap["names"]):
                named[k].copy_(bufs[j])
        # load_state_dict may keep the given tensors as the live state: hand it clones, so the
        # reused buffers never become the optimizer's state
        state = {i: {key: bufs[v].clone() if kind == "buffer" else copy.deepcopy(v)
                     for key, (kind, v) in entry.items()} for i, entry in snap["layout"].items()}
        groups, n = [], 0
        for g, saved in zip(self.optimizer.param_groups, snap["groups"]):
            groups.append({**saved, "params": list(range(n, n + len(g["params"])))})
            n += len(g["params"])
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        self.scheduler.load_state_dict(snap["scheduler"])
        self.optimizer.zero_grad(set_to_none=True)

    def _check_params(self) -> None:
        named = self._trained()
        # one reduction per tensor (NaN and inf propagate through a sum) instead of an
        # elementwise isfinite; the slow search for the name runs only when something is wrong
        sums = [local_shard(v.detach()).sum() for _, v in named]
        ok = not sums or bool(torch.isfinite(torch.stack([s.float().cpu() for s in sums])).all())
        bad = None
        if not ok:
            bad = next((k for k, v in named if not torch.isfinite(local_shard(v.detach())).all()), None)
            ok = bad is None  # a sum that overflowed on finite values
        if self.ranks.any_true(not ok):  # fsdp: each rank checks its own shard
            raise NonFiniteError(self.name, "update", f"parameter {bad} is not finite after the optimizer step"
                                 if bad else "a parameter shard of another rank is not finite after the optimizer step")

    def _two_phase(self, fn: Callable[[], Result]) -> Result:
        if self._pending is not None:  # an update nobody committed: it is not part of this step
            self._restore(self._pending)
            self._pending = None
        snap = self._snapshot()
        try:
            out = fn()
            self._check_params()
        except BaseException:
            self._restore(snap)
            raise
        self._pending = snap
        return out

    def op_commit(self, tensors: Tensors, args: dict) -> Result:
        had = self._pending is not None
        self._pending = None
        return {}, {"committed": had}

    def op_rollback(self, tensors: Tensors, args: dict) -> Result:
        had = self._pending is not None
        if had:
            self._restore(self._pending)
            self._pending = None
        return {}, {"rolled_back": had}


def backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) tensor; a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) result, e.g. FSDP's gradient norm, as a plain tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t



class TrainedRole(TwoPhaseUpdate):
    """A role that trains (mixed in before ``Role``): the loss checks, the optimizer step and
    the float16 gradient scaler of its update, and the two-phase commit of ``TwoPhaseUpdate``."""

    def _token_spans(self, tensors: Tensors) -> Optional[tuple]:
        """With ``ppo.micro_batch_tokens``: each row's query and response spans, which the
        token-budget micro-batches are cut by (engine/runtime/microbatch.py); else None."""
        if not self.cfg.ppo.micro_batch_tokens:
            return None
        from engine.runtime import microbatch as MB

        return MB.spans(tensors["query_mask"], tensors["response_mask"])

    def _micro_batches(self, mb_idx: torch.Tensor, spans: Optional[tuple]) -> list:
        """A mini-batch's rows (``mb_idx``) cut into micro-batches: by the token budget when
        ``spans`` is given (``_token_spans``), else ``ppo.micro_batch_size`` rows each."""
        if spans is not None:
            from engine.runtime import microbatch as MB

            return MB.token_micro_batches(mb_idx, *spans, self.cfg.ppo.micro_batch_tokens)
        return [mb_idx[mc] for mc in batches(len(mb_idx), self.cfg.ppo.micro_batch_size)]

    def _check_loss(self, **named: torch.Tensor) -> None:
        """``check_finite`` of a loss, agreed over the ranks: each rank's loss comes from its own
        share of the batch, and a rank that stopped alone would leave the others waiting in the
        gradient all-reduce."""
        bad = next((k for k, v in named.items() if not torch.isfinite(v.detach()).all()), None)
        if self.ranks.any_true(bad is not None):
            raise NonFiniteError(self.name, "update", f"{bad} is not finite" if bad
                                 else "a loss on another rank is not finite")

    def _clip_and_step(self, max_norm: float, scaler) -> torch.Tensor:
        """Clip the gradients to ``max_norm`` and take the optimizer step; the gradient norm.
        With a float16 ``scaler`` the gradients are unscaled first, and a step whose gradients
        overflowed is skipped (the scaler lowers its scale) instead of failing the run."""
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        gn = full_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
            return gn
        check_finite(self.name, "update", grad_norm=gn)
        self.optimizer.step()
        return gn

    def grad_scaler(self):
        """A gradient scaler for a float16 update (None otherwise): float16's range needs the
        loss scaled up before the backward and the gradients unscaled before clipping."""
        if self.precision_for("update") != "float16":
            return None
        scaler = getattr(self, "_scaler", None)
        if scaler is None:
            scaler = self._scaler = torch.amp.GradScaler(self.device.type)
        return scaler
