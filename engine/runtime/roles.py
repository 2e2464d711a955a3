"""The four PPO roles as plain objects: actor, reference, critic, reward.

A role owns its model(s) and answers operations (``generate``, ``logprobs``, ``values``,
``score``, ``update``, ``save``, ``load`` ...). Each operation takes a dict of tensors and a dict
of JSON-able arguments and returns the same pair. The worker process (``worker.py``) hosts one
or more roles behind the shared-memory transport; the single-process baseline of the benchmark
calls the very same objects inline.
"""
from __future__ import annotations

import copy
import math
import random
import resource
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from engine import algorithms as A
from engine.config import RunConfig, resolve_role_model

Tensors = dict[str, torch.Tensor]
Result = tuple[Tensors, dict[str, Any]]


class NonFiniteError(RuntimeError):
    """A NaN/inf in a loss, gradient, value or reward: the step's update must not be applied."""

    def __init__(self, role: str, phase: str, detail: str):
        super().__init__(f"non-finite value in {role} ({phase}): {detail}")
        self.role, self.phase, self.detail = role, phase, detail


def role_seed(seed: int, role: str) -> int:
    return (seed * 1_000_003 + sum(ord(c) * 31**i for i, c in enumerate(role))) % (2**31 - 1)


def step_generator(seed: int, step: int, tag: int) -> torch.Generator:
    """A generator derived from (seed, step, tag): mini-batch shuffles that resume exactly."""
    g = torch.Generator()
    g.manual_seed((seed * 7919 + step * 104_729 + tag * 15_485_863) % (2**63 - 1))
    return g


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


def _make_scheduler(opt: torch.optim.Optimizer, kind: str, warmup: int, total: int):
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


def _check_finite(role: str, phase: str, **named: Any) -> None:
    for k, v in named.items():
        t = v if isinstance(v, torch.Tensor) else torch.tensor(float(v))
        if not torch.isfinite(t).all():
            raise NonFiniteError(role, phase, f"{k} is not finite")


def _named_write_errors(fn: Callable[[], Result], folder: Path) -> Result:
    """Run a checkpoint write; a failure is re-raised as OSError naming its cause."""
    try:
        return fn()
    except Exception as e:
        from engine.runtime.rundir import write_error_cause

        raise OSError(write_error_cause(e, folder)) from e


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _score_parts(cfg: RunConfig, tensors: Tensors) -> Optional[list]:
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


def _is_sharded(t: torch.Tensor) -> bool:
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
        not _is_sharded(q) and q.is_floating_point() and q.device.type in ("cpu", "cuda") for q in params)
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
        if any(_is_sharded(v) for _, v in named):
            params = {k: v.detach().to("cpu", copy=True) for k, v in named}
            return {"params": params, "optimizer": _to_cpu(self.optimizer.state_dict()),
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
        sums = [_local(v.detach()).sum() for _, v in named]
        ok = not sums or bool(torch.isfinite(torch.stack([s.float().cpu() for s in sums])).all())
        bad = None
        if not ok:
            bad = next((k for k, v in named if not torch.isfinite(_local(v.detach())).all()), None)
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


def _backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) tensor; a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def _full(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) result, e.g. FSDP's gradient norm, as a plain tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


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

    def _check_loss(self, **named: torch.Tensor) -> None:
        """``_check_finite`` of a loss, agreed over the ranks: each rank's loss comes from its own
        share of the batch, and a rank that stopped alone would leave the others waiting in the
        gradient all-reduce."""
        bad = next((k for k, v in named.items() if not torch.isfinite(v.detach()).all()), None)
        if self.ranks.any_true(bad is not None):
            raise NonFiniteError(self.name, "update", f"{bad} is not finite" if bad
                                 else "a loss on another rank is not finite")

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

    def _clip_and_step(self, max_norm: float, scaler) -> torch.Tensor:
        """Clip the gradients to ``max_norm`` and take the optimizer step; the gradient norm.
        With a float16 ``scaler`` the gradients are unscaled first, and a step whose gradients
        overflowed is skipped (the scaler lowers its scale) instead of failing the run."""
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        gn = _full(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
            return gn
        _check_finite(self.name, "update", grad_norm=gn)
        self.optimizer.step()
        return gn

    def amp(self, phase: str):
        """torch.autocast for one of this role's passes (``generate``, ``score``, ``update``)."""
        from engine.precision import autocast_context

        return autocast_context(self.device, self.precision_for(phase))

    def grad_scaler(self):
        """A gradient scaler for a float16 update (None otherwise): float16's range needs the
        loss scaled up before the backward and the gradients unscaled before clipping."""
        if self.precision_for("update") != "float16":
            return None
        scaler = getattr(self, "_scaler", None)
        if scaler is None:
            scaler = self._scaler = torch.amp.GradScaler(self.device.type)
        return scaler


class _PolicyBase(Role):
    """Shared by actor and reference: a causal LM that scores response tokens."""

    trainable = False

    def __init__(self, cfg: RunConfig, progress=None):
        super().__init__(cfg, progress)
        from engine.models import load_policy, load_tokenizer

        src = resolve_role_model(cfg, self.name)
        attn = self.attn_implementation()
        self.tokenizer = load_tokenizer(src, progress=self.progress)
        self.model = load_policy(
            src,
            dtype=self.weights_dtype,
            device=str(self.device),
            attn_implementation=attn,
            gradient_checkpointing=self.trainable and (self.role_cfg.gradient_checkpointing
                                                       or self._planned_checkpointing()),
            trainable=self.trainable,
            progress=self.progress,
        )
        self.lora = getattr(self.role_cfg, "lora", None) if self.trainable else None
        if self.lora is not None:
            from engine.models import apply_lora, count_parameters

            lo = self.lora
            self.model = apply_lora(self.model, r=lo.r, alpha=lo.alpha, dropout=lo.dropout,
                                    target_modules=lo.target_modules, key=f"{self.name}.lora",
                                    seed=role_seed(cfg.run.seed, f"{self.name}.lora"))
            self.progress(f"{self.name}: LoRA r={lo.r} alpha={lo.alpha:g} on {', '.join(lo.target_modules)}: "
                          f"{count_parameters(self.model, trainable_only=True):,} trainable of "
                          f"{count_parameters(self.model):,} parameters")
        self.model = self.ranks.prepare(self.model)

    def _logprobs(self, tensors: Tensors, entropy: bool = False, hidden: bool = False):
        from engine.models import sequence_logprobs

        ids = torch.cat([tensors["query_ids"], tensors["response_ids"]], dim=1)
        attn = torch.cat([tensors["query_mask"], tensors["response_mask"]], dim=1)
        with self.amp("score"):
            return sequence_logprobs(
                self.model, self._to(ids), self._to(attn), tensors["query_ids"].shape[1],
                temperature=self.cfg.rollout.temperature, return_entropy=entropy,
                return_hidden=hidden,
            )

    def op_logprobs(self, tensors: Tensors, args: dict) -> Result:
        self.model.eval()
        parts = _score_parts(self.cfg, tensors)
        if parts is not None:  # ppo.micro_batch_tokens: bucketed passes, padded back to [B, R]
            from engine.runtime.microbatch import pad_to, scatter_rows

            B, R = tensors["response_ids"].shape
            lps, hs = [], []
            with torch.no_grad():
                for rows, sub in parts:
                    res = self._logprobs(sub, hidden=bool(args.get("hidden")))
                    lp, h = res if args.get("hidden") else (res, None)
                    lps.append((rows, pad_to(lp.float(), R)))
                    if h is not None:
                        hs.append((rows, pad_to(h, R)))
            out = {"logprobs": scatter_rows(lps, B).cpu()}
            if hs:
                out["hidden"] = self._out(scatter_rows(hs, B))
            return out, {}
        with torch.no_grad():
            if args.get("hidden"):
                lp, hidden = self._logprobs(tensors, hidden=True)
                return {"logprobs": lp.float().cpu(), "hidden": self._out(hidden)}, {}
            lp = self._logprobs(tensors)
        return {"logprobs": lp.float().cpu()}, {}


class ReferenceRole(_PolicyBase):
    name = "reference"


def _base_model(model: torch.nn.Module):
    """The base model under a peft model's disabled adapters (a context manager)."""
    return model.disable_adapter()


class ActorRole(TwoPhaseUpdate, _PolicyBase):
    name = "actor"
    trainable = True

    def __init__(self, cfg: RunConfig, progress=None):
        super().__init__(cfg, progress)
        p = cfg.ppo
        params = [q for q in self.model.parameters() if q.requires_grad]
        self.optimizer = make_adamw(params, lr=p.actor_lr, weight_decay=p.weight_decay)
        self.scheduler = _make_scheduler(self.optimizer, p.lr_schedule, p.warmup_steps, cfg.run.steps)
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"
        # rollout.decoder static: our own decoding loop, when it can run this model
        self.decoder = cfg.rollout.decoder
        if self.decoder == "static":
            from engine.decoding import unsupported_reason

            why = unsupported_reason(self.model)
            if why:
                self.progress(f"{self.name}: rollout.decoder static cannot decode this model ({why}); "
                              f"using transformers' generate")
                self.decoder = "hf"
            else:
                from engine.decoding import cuda_graph_note

                note = cuda_graph_note(cfg.rollout.cuda_graph, self.device)
                if note:  # said once: whether the decoding step runs from a CUDA graph
                    self.progress(f"{self.name}: {note}")

    def op_generate(self, tensors: Tensors, args: dict) -> Result:
        from engine.models import generate

        r = self.cfg.rollout
        prompts: list[str] = args["prompts"]
        enc = self.tokenizer(
            prompts, return_tensors="pt", padding=True, truncation=True,
            max_length=self.cfg.data.max_prompt_tokens, add_special_tokens=False,
        )
        q_ids, q_mask = enc["input_ids"], enc["attention_mask"]
        self.model.eval()
        greedy = bool(args.get("greedy"))  # held-out evaluation: greedy, no log-probs
        reuse = r.reuse_logprobs and not greedy
        with torch.no_grad(), self.amp("generate"):
            gen = generate(
                self.model, self.tokenizer, self._to(q_ids), self._to(q_mask),
                max_new_tokens=r.max_new_tokens, min_new_tokens=0 if greedy else r.min_new_tokens,
                temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
                do_sample=False if greedy else r.do_sample,
                return_hidden=reuse, decoder=self.decoder, compile=r.compile_decoder,
                cuda_graph=r.cuda_graph,
            )
        resp, resp_mask = gen[0], gen[1]
        out = {
            "query_ids": q_ids.cpu(),
            "query_mask": q_mask.cpu(),
            "response_ids": resp.cpu(),
            "response_mask": resp_mask.cpu(),
        }
        if reuse:
            from engine.models import head_logprobs

            with torch.no_grad():
                lp = head_logprobs(self.model, gen[2], resp, temperature=r.temperature)
            out["old_logprobs"] = lp.cpu()
        ntok = int(resp_mask.sum())
        return out, {"response_tokens": ntok}

    def op_ref_logprobs(self, tensors: Tensors, args: dict) -> Result:
        """The reference's ``logprobs`` (and hidden states), answered by a LoRA actor whose
        reference is its own base: the same forward pass with the adapters disabled."""
        if self.lora is None:
            raise ValueError("actor.ref_logprobs needs a LoRA actor (actor.lora)")
        with _base_model(self.model):
            return self.op_logprobs(tensors, args)

    def op_update(self, tensors: Tensors, args: dict) -> Result:
        return self._two_phase(lambda: self._update(tensors, args))

    def _update(self, tensors: Tensors, args: dict) -> Result:
        from engine.models import sequence_logprobs

        p = self.cfg.ppo
        step = int(args["step"])
        mask = tensors["response_mask"].float()
        B = mask.shape[0]
        ids = torch.cat([tensors["query_ids"], tensors["response_ids"]], dim=1)
        attn = torch.cat([tensors["query_mask"], tensors["response_mask"]], dim=1)
        P = tensors["query_ids"].shape[1]
        old_lp, adv = tensors["old_logprobs"].float(), tensors["advantages"].float()
        _check_finite(self.name, "update", advantages=adv[mask.bool()], old_logprobs=old_lp[mask.bool()])
        ref_all = tensors["ref_logprobs"].float() if "ref_logprobs" in tensors else None
        ref_lp = ref_all if p.kl_in == "loss" else None  # k3 KL in the loss
        # ppo.kl_guard: the KL to the reference (k1 per response) above which later optimizer
        # steps of this batch are skipped, once the update has moved the policy further away
        guard = p.kl_guard * p.target_kl if p.kl_guard is not None and ref_all is not None else None
        R = mask.shape[1]
        budget = p.micro_batch_tokens  # token-budget micro-batches (engine/runtime/microbatch.py)
        if budget:
            from engine.runtime import microbatch as MB

            q_span, r_span = MB.spans(tensors["query_mask"], tensors["response_mask"])
        skipped = 0
        n_steps = p.epochs * len(_batches(B, p.mini_batch_size))
        scaler = self.grad_scaler()
        self.model.train()
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "clipfrac", "dual_clipfrac", "approx_kl", "entropy", "grad_norm")}
        if ref_lp is not None:
            stats["kl_loss"] = []
        done = 0
        for epoch in range(p.epochs):
            if skipped:
                break
            perm = torch.randperm(B, generator=step_generator(self.cfg.run.seed, step, 1 + epoch))
            for mb in _batches(B, p.mini_batch_size):
                mb_idx = perm[mb]
                self.optimizer.zero_grad(set_to_none=True)
                n_mb = len(mb_idx)
                if budget:
                    micro = MB.token_micro_batches(mb_idx, q_span, r_span, budget)
                else:
                    micro = [mb_idx[mc] for mc in _batches(n_mb, p.micro_batch_size)]
                kl_now = kl_then = 0.0  # summed k1 KL of this rank's rows: now, and at rollout
                rows = 0
                for idx, weight, scale in self.ranks.micro_parts(micro, n_mb, mask):
                    w_tok = w_agg = weight
                    ids_i, attn_i, P_i = ids[idx], attn[idx], P
                    if budget:  # exact shares of the mini-batch, unused padding columns cut
                        w_tok, w_row = MB.token_weights(idx, mb_idx, mask)
                        w_agg = MB.agg_weight(p.loss_agg, w_tok, w_row)
                        sub = MB.sub_batch(tensors, idx, q_span, r_span)
                        ids_i = torch.cat([sub["query_ids"], sub["response_ids"]], dim=1)
                        attn_i = torch.cat([sub["query_mask"], sub["response_mask"]], dim=1)
                        P_i = sub["query_ids"].shape[1]
                    with self.amp("update"):
                        lp, ent = sequence_logprobs(
                            self.model, self._to(ids_i), self._to(attn_i), P_i,
                            temperature=self.cfg.rollout.temperature, return_entropy=True,
                        )
                    if budget:
                        lp, ent = MB.pad_to(lp, R), MB.pad_to(ent, R)
                    m = self._to(mask[idx])
                    if guard is not None and done:
                        r = self._to(ref_all[idx])
                        kl_now += float(((lp.detach().float() - r) * m).sum())
                        kl_then += float(((self._to(old_lp[idx]) - r) * m).sum())
                        rows += len(idx)
                    loss, st = A.policy_loss(
                        lp.float(), self._to(old_lp[idx]), self._to(adv[idx]), m,
                        clip_low=p.clip_low, clip_high=p.clip_high, clip_c=p.dual_clip_c,
                        loss_agg=p.loss_agg,
                    )
                    ent_mean = A.masked_mean(ent.float(), m)
                    total = loss - p.entropy_coef * ent_mean
                    agg = loss
                    if ref_lp is not None:
                        kl_loss = A.agg_loss(A.kl_penalty(lp.float(), self._to(ref_lp[idx]), "k3"), m, p.loss_agg)
                        total = total + p.kl_loss_coef * kl_loss
                        agg = agg + p.kl_loss_coef * kl_loss
                        stats["kl_loss"].append(float(kl_loss.detach()) * scale)
                    self._check_loss(policy_loss=total)
                    if w_agg == w_tok:
                        _backward(total * weight if not budget else total * w_tok, scaler)
                    else:  # a sequence-mean loss with a token-mean entropy: each by its own share
                        _backward(agg * w_agg - p.entropy_coef * ent_mean * w_tok, scaler)
                    stats["policy_loss"].append(float(loss.detach()) * scale)
                    stats["entropy"].append(float(ent_mean.detach()) * scale)
                    for k in ("clipfrac", "dual_clipfrac", "approx_kl"):
                        stats[k].append(float(st.get(k, 0.0)) * scale)
                if guard is not None and done:
                    if self.ranks.any_true(kl_now > guard * max(rows, 1) and kl_now > kl_then):
                        skipped = n_steps - done
                        break
                self.ranks.sync_grads(self.model)
                gn = self._clip_and_step(p.grad_clip, scaler)
                stats["grad_norm"].append(float(gn))
                done += 1
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = {k: (sum(v) / len(v) if v else 0.0) for k, v in stats.items()}
        if guard is not None:
            out["kl_guard_skipped"] = float(skipped)
        out["lr"] = self.scheduler.get_last_lr()[0]
        return {}, out

    # ---- checkpoints --------------------------------------------------------------------
    def op_save(self, tensors: Tensors, args: dict) -> Result:
        return _named_write_errors(lambda: self._save(args), Path(args["path"]))

    def _save(self, args: dict) -> Result:
        """The one-process format on every world size: rank 0 writes (after gathering the
        shards under fsdp, which every rank takes part in)."""
        d = Path(args["path"]) / self.name
        sd, osd = None, self.optimizer.state_dict
        if self.lora is not None:
            # peft's format: adapter_config.json + adapter_model.safetensors (the adapter alone;
            # the base is the actor's model source, unchanged)
            if not self.ranks.writes():
                return {}, {}
            d.mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(d, safe_serialization=True)
            self.tokenizer.save_pretrained(d)
            torch.save({"optimizer": osd(), "scheduler": self.scheduler.state_dict(), "rng": capture_rng()},
                       d / "trainer_state.pt")
            return {}, {}
        if self.ranks.fsdp:
            sd = self.ranks.full_model_state(self.model)
            full = self.ranks.full_optimizer_state(self.model, self.optimizer)
            osd = lambda: full  # noqa: E731
        if not self.ranks.writes():
            return {}, {}
        d.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(d, safe_serialization=True, **({"state_dict": sd} if sd is not None else {}))
        self.tokenizer.save_pretrained(d)
        torch.save(
            {"optimizer": osd(), "scheduler": self.scheduler.state_dict(), "rng": capture_rng()},
            d / "trainer_state.pt",
        )
        return {}, {}

    def op_load(self, tensors: Tensors, args: dict) -> Result:
        from safetensors.torch import load_file

        self._pending = None
        d = Path(args["path"]) / self.name
        if self.lora is not None:
            return self._load_lora(d)
        sd = {}
        for f in sorted(d.glob("*.safetensors")):
            sd.update(load_file(f, device="cpu" if self.ranks.fsdp else str(self.device)))
        st = torch.load(d / "trainer_state.pt", weights_only=False)
        if self.ranks.fsdp:
            self.ranks.load_full_state(self.model, self.optimizer, sd, st["optimizer"])
            self.scheduler.load_state_dict(st["scheduler"])
            restore_rng(st["rng"])
            return {}, {}
        missing, unexpected = self.model.load_state_dict(sd, strict=False)
        bad = [k for k in missing if "lm_head" not in k]  # tied embeddings are not stored twice
        if bad or unexpected:
            raise RuntimeError(f"{self.name} checkpoint {d} does not match the model: missing {bad[:3]}, unexpected {list(unexpected)[:3]}")
        if getattr(self.model.config, "tie_word_embeddings", False):
            self.model.tie_weights()
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        restore_rng(st["rng"])
        return {}, {}

    def _load_lora(self, d: Path) -> Result:
        from safetensors.torch import load_file

        from engine.models import load_lora_state_dict

        f = d / "adapter_model.safetensors"
        if not f.is_file():
            raise RuntimeError(f"{self.name} checkpoint {d} holds no LoRA adapter (adapter_model.safetensors): "
                               f"was it saved without actor.lora?")
        load_lora_state_dict(self.model, load_file(f, device=str(self.device)), str(d))
        st = torch.load(d / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        restore_rng(st["rng"])
        return {}, {}

    def op_rng(self, tensors: Tensors, args: dict) -> Result:
        return {}, {"torch_rng_sum": int(torch.get_rng_state().sum())}


def _hidden_size(source: str) -> int:
    from transformers import AutoConfig

    from engine.models import resolve_model_path

    conf = AutoConfig.from_pretrained(resolve_model_path(source))
    size = getattr(conf, "hidden_size", None) or getattr(conf, "n_embd", None) or getattr(conf, "d_model", None)
    if not size:
        raise ValueError(f"cannot tell the hidden size of {source!r} from its config")
    return int(size)


class ValueHead(torch.nn.Module):
    """A linear value head on given hidden states ``[B, R, H] -> [B, R]``, zero-initialised so
    the first values are exactly 0 (as with the whole-model critic)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.head = torch.nn.Linear(hidden_size, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden.float()).squeeze(-1)


class CriticRole(TwoPhaseUpdate, Role):
    name = "critic"

    def __init__(self, cfg: RunConfig, progress=None):
        super().__init__(cfg, progress)
        from engine.models import load_critic

        # critic_trunk "reference": a value head on the reference's hidden states, which the
        # driver passes in as tensors["hidden"]; no trunk of its own.
        self.head_only = cfg.ppo.critic_trunk == "reference"
        if self.head_only:
            self.model = ValueHead(_hidden_size(resolve_role_model(cfg, "reference"))).to(self.device)
            self.progress("critic: value head on the reference's hidden states (zero-initialised)")
        else:
            self.model = load_critic(
                resolve_role_model(cfg, self.name), dtype=self.weights_dtype, device=str(self.device),
                attn_implementation=self.attn_implementation(),
                gradient_checkpointing=self.role_cfg.gradient_checkpointing or self._planned_checkpointing(),
                progress=self.progress,
            )
        self.lora = None if self.head_only else self.role_cfg.lora
        if self.lora is not None:
            # the trunk gets the adapter; the value head trains whole (peft's modules_to_save)
            from engine.models import _token_head, apply_lora, count_parameters

            lo, inner = self.lora, self.model.model
            head = next(n for n in ("score", "classifier") if getattr(inner, n, None) is _token_head(inner))
            self.model.model = apply_lora(inner, r=lo.r, alpha=lo.alpha, dropout=lo.dropout,
                                          target_modules=lo.target_modules, task_type="TOKEN_CLS",
                                          key="critic.lora", modules_to_save=[head],
                                          seed=role_seed(cfg.run.seed, "critic.lora"))
            self.progress(f"critic: LoRA r={lo.r} alpha={lo.alpha:g} on {', '.join(lo.target_modules)} "
                          f"+ the value head: {count_parameters(self.model, trainable_only=True):,} trainable "
                          f"of {count_parameters(self.model):,} parameters")
        self.model = self.ranks.prepare(self.model)
        p = cfg.ppo
        self.optimizer = make_adamw(
            [q for q in self.model.parameters() if q.requires_grad], lr=p.critic_lr, weight_decay=p.weight_decay
        )
        self.scheduler = _make_scheduler(self.optimizer, p.lr_schedule, p.warmup_steps, cfg.run.steps)

    def _values(self, inputs: tuple, idx=None, phase: str = "score") -> torch.Tensor:
        """Values of the states *before* each response token (positions P-1 .. P+R-2), for
        the rows ``idx`` (all when None)."""
        if self.head_only:
            hidden = inputs[0] if idx is None else inputs[0][idx]
            return self.model(self._to(hidden)).float()
        ids, attn, P, R = inputs
        if idx is not None:
            ids, attn = ids[idx], attn[idx]
        with self.amp(phase):
            v = self.model(input_ids=self._to(ids), attention_mask=self._to(attn))
        return v[:, P - 1 : P + R - 1].float()

    def _inputs(self, tensors: Tensors) -> tuple:
        if self.head_only:
            if "hidden" not in tensors:
                raise ValueError("critic with ppo.critic_trunk=reference needs the reference's "
                                 "hidden states (tensor 'hidden')")
            return (tensors["hidden"].float(),)
        ids = torch.cat([tensors["query_ids"], tensors["response_ids"]], dim=1)
        attn = torch.cat([tensors["query_mask"], tensors["response_mask"]], dim=1)
        return ids, attn, tensors["query_ids"].shape[1], tensors["response_ids"].shape[1]

    def op_values(self, tensors: Tensors, args: dict) -> Result:
        inputs = self._inputs(tensors)
        self.model.eval()
        parts = None if self.head_only else _score_parts(self.cfg, tensors)
        with torch.no_grad():
            if parts is not None:  # ppo.micro_batch_tokens: bucketed passes, padded back to [B, R]
                from engine.runtime.microbatch import pad_to, scatter_rows

                B, R = tensors["response_ids"].shape
                v = scatter_rows([(rows, pad_to(self._values(self._inputs(sub)), R)) for rows, sub in parts], B)
            else:
                v = self._values(inputs)
        return {"values": v.cpu()}, {}

    def op_update(self, tensors: Tensors, args: dict) -> Result:
        return self._two_phase(lambda: self._update(tensors, args))

    def _update(self, tensors: Tensors, args: dict) -> Result:
        p = self.cfg.ppo
        step = int(args["step"])
        inputs = self._inputs(tensors)
        mask = tensors["response_mask"].float()
        old_v, ret = tensors["values"].float(), tensors["returns"].float()
        _check_finite(self.name, "update", returns=ret[mask.bool()], values=old_v[mask.bool()])
        B, R = mask.shape
        budget = p.micro_batch_tokens  # token-budget micro-batches (engine/runtime/microbatch.py)
        if budget:
            from engine.runtime import microbatch as MB

            q_span, r_span = MB.spans(tensors["query_mask"], tensors["response_mask"])
        scaler = self.grad_scaler()
        self.model.train()
        stats: dict[str, list[float]] = {"value_loss": [], "vf_clipfrac": [], "critic_grad_norm": []}
        for epoch in range(p.epochs):
            perm = torch.randperm(B, generator=step_generator(self.cfg.run.seed, step, 101 + epoch))
            for mb in _batches(B, p.mini_batch_size):
                mb_idx = perm[mb]
                n_mb = len(mb_idx)
                self.optimizer.zero_grad(set_to_none=True)
                if budget:
                    micro = MB.token_micro_batches(mb_idx, q_span, r_span, budget)
                else:
                    micro = [mb_idx[mc] for mc in _batches(n_mb, p.micro_batch_size)]
                for idx, weight, scale in self.ranks.micro_parts(micro, n_mb, mask):
                    if budget:  # the value loss is a token mean: each part by its token share
                        weight = MB.token_weights(idx, mb_idx, mask)[0]
                    if budget and not self.head_only:
                        sub = MB.sub_batch(tensors, idx, q_span, r_span)
                        v = MB.pad_to(self._values(self._inputs(sub), None, "update"), R)
                    else:
                        v = self._values(inputs, idx, "update")
                    loss, st = A.value_loss(v, self._to(old_v[idx]), self._to(ret[idx]), self._to(mask[idx]), clip=p.value_clip)
                    self._check_loss(value_loss=loss)
                    _backward(p.vf_coef * loss * weight, scaler)
                    stats["value_loss"].append(float(loss.detach()) * scale)
                    stats["vf_clipfrac"].append(float(st.get("clipfrac", 0.0)) * scale)
                self.ranks.sync_grads(self.model)
                gn = self._clip_and_step(p.grad_clip, scaler)
                stats["critic_grad_norm"].append(float(gn))
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {}, {k: (sum(v) / len(v) if v else 0.0) for k, v in stats.items()}

    def op_save(self, tensors: Tensors, args: dict) -> Result:
        return _named_write_errors(lambda: self._save(args), Path(args["path"]))

    def _save(self, args: dict) -> Result:
        d = Path(args["path"]) / self.name
        if self.lora is not None:  # peft's format: the adapter and the value head alone
            if not self.ranks.writes():
                return {}, {}
            d.mkdir(parents=True, exist_ok=True)
            self.model.model.save_pretrained(d, safe_serialization=True)
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "rng": capture_rng()}, d / "critic_state.pt")
            return {}, {}
        if self.ranks.fsdp:
            sd = self.ranks.full_model_state(self.model)
            osd = self.ranks.full_optimizer_state(self.model, self.optimizer)
        else:
            sd, osd = self.model.state_dict(), self.optimizer.state_dict()
        if not self.ranks.writes():
            return {}, {}
        d.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"model": sd, "optimizer": osd, "scheduler": self.scheduler.state_dict(), "rng": capture_rng()},
            d / "critic_state.pt",
        )
        return {}, {}

    def op_load(self, tensors: Tensors, args: dict) -> Result:
        self._pending = None
        d = Path(args["path"]) / self.name
        st = torch.load(d / "critic_state.pt", weights_only=False,
                        map_location="cpu" if self.ranks.fsdp else self.device)
        if self.lora is not None:
            from safetensors.torch import load_file

            from engine.models import load_lora_state_dict

            if not (d / "adapter_model.safetensors").is_file():
                raise RuntimeError(f"critic checkpoint {d} holds no LoRA adapter (adapter_model.safetensors): "
                                   f"was it saved without critic.lora?")
            load_lora_state_dict(self.model.model, load_file(d / "adapter_model.safetensors",
                                                             device=str(self.device)), str(d))
            self.optimizer.load_state_dict(st["optimizer"])
        elif "model" not in st:
            raise RuntimeError(f"critic checkpoint {d} holds a LoRA adapter, not the whole critic: "
                               f"was it saved with critic.lora?")
        elif self.ranks.fsdp:
            self.ranks.load_full_state(self.model, self.optimizer, st["model"], st["optimizer"])
        else:
            self.model.load_state_dict(st["model"])
            self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        restore_rng(st["rng"])
        return {}, {}


class RewardRole(Role):
    name = "reward"

    def __init__(self, cfg: RunConfig, progress=None):
        super().__init__(cfg, progress)
        from engine.models import load_tokenizer

        self.tokenizer = load_tokenizer(resolve_role_model(cfg, "actor"), progress=self.progress)
        self.source_spec = cfg.reward.source
        self.source = self._build(cfg.reward.source)

    def _build(self, spec: str):
        return build_reward_source(self.cfg, spec, str(self.device), self.progress)

    def decode(self, tensors: Tensors) -> tuple[list[str], list[str]]:
        tok = self.tokenizer
        prompts = tok.batch_decode(tensors["query_ids"], skip_special_tokens=True)
        responses = []
        for row, m in zip(tensors["response_ids"], tensors["response_mask"]):
            responses.append(tok.decode(row[m.bool()], skip_special_tokens=True))
        return prompts, responses

    def op_score(self, tensors: Tensors, args: dict) -> Result:
        from engine.rewards import RewardError

        prompts, responses = self.decode(tensors)
        answers = args.get("answers")  # each row's reference answer (verifiable tasks)
        info: dict[str, Any] = {}
        if hasattr(self.source, "judge"):
            raw, correct = self.source.judge(responses, answers)
            info["correct"] = [bool(c) for c in correct]
        elif getattr(self.source, "uses_answers", False):
            raw = self.source.score(prompts, responses, answers)
        elif args.get("components") and hasattr(self.source, "components"):
            base, pref = self.source.components(prompts, responses)   # a learned preference on a base
            raw = self.source.combine(base, pref).tolist()
            info["base"], info["preference"] = base.tolist(), pref.tolist()
        else:
            raw = self.source.score(prompts, responses)
        if len(raw) != len(prompts):
            raise RewardError(f"reward source '{self.source_spec}' returned {len(raw)} scores for {len(prompts)} samples")
        scores = torch.tensor([float(x) for x in raw], dtype=torch.float32)
        bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
        if bad:
            raise NonFiniteError("reward", "score", f"source '{self.source_spec}' returned {scores[bad[0]].item()} for sample {bad[0]}")
        return {"scores": scores}, info

    def op_swap(self, tensors: Tensors, args: dict) -> Result:
        spec = str(args["source"])
        try:
            new = self._build(spec)  # raises on failure: the old source stays in place
            probe_reward_source(new, spec)
        except SystemExit as e:  # a module that calls sys.exit() at import must not end the worker
            raise RuntimeError(f"reward source '{spec}' called sys.exit({e.code!r}) while loading") from None
        old, self.source, self.source_spec = self.source, new, spec
        try:
            old.close()
        except Exception:  # noqa: BLE001 - the old source is being replaced anyway
            pass
        return {}, {"source": spec}


def build_reward_source(cfg: RunConfig, spec: str, device: str, progress=None):
    """The reward source ``spec`` built with the run's reward settings."""
    from engine.rewards import build_reward

    r = cfg.reward
    return build_reward(
        spec, device=device, dtype=r.dtype, quantization=r.quantization,
        score_label=r.score_label, score_kind=r.score_kind, score_text=r.score_text,
        max_length=r.max_length, batch_size=r.batch_size, progress=progress,
    )


def probe_reward_source(source, spec: str) -> float:
    """Score one probe sample, so that a source that loads but cannot score is refused too."""
    probe = source.score(["This movie"], [" was fine."])
    if len(probe) != 1 or not math.isfinite(float(probe[0])):
        raise ValueError(f"reward source '{spec}' loaded but returned {probe!r} for a probe sample")
    return float(probe[0])


ROLE_CLASSES = {"actor": ActorRole, "reference": ReferenceRole, "critic": CriticRole, "reward": RewardRole}
