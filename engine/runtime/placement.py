"""Which device each role (and each rank of a multi-process role) runs on.

``plan_devices`` is a pure function: role requests, rank counts, memory needs and the visible
GPUs in, one device string per rank out. ``device_plan(cfg)`` gathers those inputs from a
config and this machine (CUDA, model configs) and calls it; ``format_plan`` prints the result
for events.log and ``--dry-run``.

The automatic rule: roles that are pinned (``<role>.device: cuda:N`` or a ``runtime.devices``
mapping) take their GPUs first; the others go, largest memory need first, to the GPU with the
most memory left (lowest index on a tie); a role with ``world_size`` N takes the N GPUs with the
most memory left, one rank per GPU (NCCL ranks cannot share a GPU). Roles on ``cpu``, and every
role when no GPU is visible, run on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

ROLES = ("actor", "reference", "critic", "reward")


class PlacementError(ValueError):
    pass


@dataclass(frozen=True)
class RoleRequest:
    """What the config asks for one role: ``device`` is auto, cpu, cuda, cuda:N or a tuple of
    one device per rank; ``need_gb`` the estimated memory of one rank."""

    device: object = "auto"
    world_size: int = 1
    need_gb: float = 1.0
    with_role: Optional[str] = None  # auto: go where this role goes (a head on its hidden states)


def plan_devices(requests: Mapping[str, RoleRequest], gpu_memory_gb: Sequence[float],
                 allowed: Optional[Sequence[int]] = None) -> dict[str, list[str]]:
    """One device string per rank for every role.

    ``gpu_memory_gb[i]`` is the memory of ``cuda:i`` (all visible GPUs, in index order);
    ``allowed`` restricts the automatic plan to these GPU indices (``runtime.devices`` as a
    list); None = all. Raises :class:`PlacementError` for a plan that cannot exist (a GPU index
    that is not visible, more ranks than GPUs, two ranks of one role on one GPU).
    """
    n = len(gpu_memory_gb)
    pool = list(range(n)) if allowed is None else list(allowed)
    for i in pool:
        if not 0 <= i < n:
            raise PlacementError(f"cuda:{i} is not visible (GPUs: {_visible(n)})")
    left = {i: float(gpu_memory_gb[i]) for i in range(n)}
    plan: dict[str, list[str]] = {}
    todo: list[tuple[str, RoleRequest]] = []

    for role, req in requests.items():
        W = int(req.world_size)
        if W < 1:
            raise PlacementError(f"{role}: world_size must be >= 1, got {W}")
        dev = req.device
        if isinstance(dev, (list, tuple)):
            devs = [str(d) for d in dev]
            if len(devs) != W:
                raise PlacementError(f"{role}: {len(devs)} devices for {W} ranks")
        elif dev == "cpu" or (dev == "auto" and not pool):
            devs = ["cpu"] * W
        elif dev in ("auto", "cuda") and req.with_role in requests \
                and requests[req.with_role].world_size == W:
            continue  # placed after the role it follows
        elif dev in ("auto", "cuda"):
            if not pool:
                raise PlacementError(f"{role}: 'cuda' needs a GPU but none is "
                                     f"{'visible' if not n else 'allowed by runtime.devices'}")
            todo.append((role, req))
            continue
        else:
            devs = [str(dev)] * W
        for d in devs:
            if d.startswith("cuda"):
                i = int(d.split(":")[1]) if ":" in d else 0
                if not 0 <= i < n:
                    raise PlacementError(f"{role}: {d} is not visible (GPUs: {_visible(n)})")
                left[i] -= req.need_gb
        cuda = [d for d in devs if d.startswith("cuda")]
        if W > 1 and cuda and len(set(cuda)) < len(cuda):
            raise PlacementError(f"{role}: {W} ranks need {W} different GPUs, got {', '.join(devs)}")
        plan[role] = [d if d == "cpu" or ":" in d else "cuda:0" for d in devs]

    # automatic roles: largest first, each rank on the GPU with the most memory left
    for role, req in sorted(todo, key=lambda rq: (-rq[1].need_gb * rq[1].world_size, ROLES.index(rq[0])
                                                   if rq[0] in ROLES else 99)):
        W = int(req.world_size)
        if W > len(pool):
            raise PlacementError(f"{role}: {W} ranks need {W} GPUs (one per rank) but "
                                 f"{len(pool)} {'are' if len(pool) != 1 else 'is'} available "
                                 f"({', '.join(f'cuda:{i}' for i in pool) or 'none'})")
        chosen = sorted(pool, key=lambda i: (-left[i], i))[:W]
        for i in chosen:
            left[i] -= req.need_gb
        plan[role] = [f"cuda:{i}" for i in sorted(chosen)]
    for role, req in requests.items():
        if role not in plan:
            plan[role] = list(plan[req.with_role])
            for d in plan[role]:
                if d.startswith("cuda"):
                    left[int(d.split(":")[1])] -= req.need_gb
    return {r: plan[r] for r in requests}


def _visible(n: int) -> str:
    return f"cuda:0..cuda:{n - 1}" if n else "none"


# ---------------------------------------------------------------------------- from a config

# built-in sources: their sizes, so planning never builds or converts one
_KNOWN_PARAMS = {"tiny:llama": 3.3e6, "tiny:qwen2-0.5b": 402e6, "bundled:smollm2-135m-instruct": 134.5e6,
                 "bundled:minilm-sentiment": 22.7e6}


def _param_count(source: str) -> Optional[float]:
    """Parameters of a causal-LM source, estimated from its config (no weights read)."""
    if source in _KNOWN_PARAMS:
        return _KNOWN_PARAMS[source]
    try:
        from transformers import AutoConfig

        from engine.models import resolve_model_path

        if source.startswith(("lexicon:", "python:")):
            return None  # a reward function: no weights
        # never the network here: a hub id not cached yet gets the default estimate
        c = AutoConfig.from_pretrained(resolve_model_path(source), local_files_only=True)
    except Exception:  # noqa: BLE001 - a reward function, an unreadable source: no estimate
        return None
    h = getattr(c, "hidden_size", None)
    L = getattr(c, "num_hidden_layers", None)
    V = getattr(c, "vocab_size", None)
    if not (h and L and V):
        return None
    inter = getattr(c, "intermediate_size", None) or 4 * h
    heads = getattr(c, "num_attention_heads", 1) or 1
    kv = getattr(c, "num_key_value_heads", heads) or heads
    attn = h * h * 2 + 2 * h * (h * kv // heads)
    mlp = 3 * h * inter
    emb = V * h * (1 if getattr(c, "tie_word_embeddings", False) else 2)
    return float(L * (attn + mlp) + emb)


_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def role_need_gb(cfg, role: str) -> float:
    """Rough memory of one rank of ``role`` in GB: weights, plus for trained roles float32
    gradients and AdamW's two moments; FSDP divides the trained state by the ranks."""
    from engine.config import resolve_role_model

    if role == "reward":
        if cfg.reward.source.startswith(("lexicon:", "python:")):
            return 0.0
        p = _param_count(cfg.reward.source)
        return (p or 25e6) * _BYTES.get(cfg.reward.dtype, 4) / 1e9 + 0.2
    rc = getattr(cfg, role)
    if role == "critic" and cfg.ppo.critic_trunk == "reference":
        return 0.1
    p = _param_count(resolve_role_model(cfg, role)) or 135e6
    # a trained role adds float32 gradients and AdamW's two moments per trained parameter; a
    # LoRA role trains a small adapter (its state is neglected here)
    trained = role in ("actor", "critic") and getattr(rc, "lora", None) is None
    per = _BYTES.get(rc.dtype, 4) + (12 if trained else 0)
    if rc.world_size > 1 and rc.strategy == "fsdp":
        per /= rc.world_size
    return p * per / 1e9 + 0.5  # + activations and the CUDA context, roughly


def visible_gpu_memory_gb() -> list[float]:
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_properties(i).total_memory / 2**30
                for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001
        return []


def role_requests(cfg, needs: Optional[Mapping[str, float]] = None) -> dict[str, RoleRequest]:
    from engine.config import active_roles, reference_in_actor, role_device_request

    devs = cfg.runtime.devices
    out = {}
    for r in active_roles(cfg):  # a LoRA actor's reference is the actor itself: no device of its own
        rc = getattr(cfg, r)
        W = getattr(rc, "world_size", 1)
        dev: object = role_device_request(cfg, r)
        if isinstance(devs, dict) and r in devs and not isinstance(devs[r], str):
            dev = tuple(devs[r])
        need = needs[r] if needs is not None else role_need_gb(cfg, r)
        follow = None
        if r == "critic" and cfg.ppo.critic_trunk == "reference":  # a head on those hidden states
            follow = "actor" if reference_in_actor(cfg) else "reference"
        out[r] = RoleRequest(dev, W, need, follow)
    return out


def device_plan(cfg, gpu_memory_gb: Optional[Sequence[float]] = None, _memory: bool = True) -> dict[str, list[str]]:
    """The plan for ``cfg`` on this machine (or on ``gpu_memory_gb``); with GPUs, the memory
    plan (:func:`check_memory`) must fit or this raises :class:`PlacementError` with the figures."""
    gpus = visible_gpu_memory_gb() if gpu_memory_gb is None else list(gpu_memory_gb)
    devs = cfg.runtime.devices
    allowed = None
    if isinstance(devs, tuple):
        allowed = sorted({int(d.split(":")[1]) if ":" in d else 0 for d in devs if d.startswith("cuda")})
    from engine.config import active_roles

    needs = {r: (role_need_gb(cfg, r) if gpus else 0.0) for r in active_roles(cfg)}
    plan = plan_devices(role_requests(cfg, needs), gpus, allowed)
    if gpus and _memory:
        check_memory(cfg, gpus)
    return plan


def format_plan(plan: Mapping[str, Sequence[str]], cfg=None) -> str:
    parts = []
    for r, devs in plan.items():
        rc = getattr(cfg, r, None) if cfg is not None else None
        W = len(devs)
        if W > 1:
            strat = f" {rc.strategy}" if rc is not None and hasattr(rc, "strategy") else ""
            parts.append(f"{r} x{W}{strat} -> {', '.join(devs)}")
        else:
            parts.append(f"{r} -> {devs[0]}")
    return "device plan: " + "; ".join(parts)


# ---------------------------------------------------------------------------- memory plan

# activations of one transformer layer per token and hidden unit kept for the backward, in
# bytes, with 16-bit compute and an attention kernel that keeps no [T, T] matrix (Korthikanti
# et al. 2022, "Reducing Activation Recomputation in Large Transformer Models": 34 s b h per
# layer); float32 compute doubles it; with gradient checkpointing one layer input (2 bytes per
# element in 16 bits) stays per layer, plus one layer's full set during its recomputation
_ACT_PER_LAYER = 34
_CUDA_CONTEXT_GB = 0.5
_HEADROOM = 0.92  # of a GPU's memory the plan fills at most (allocator fragmentation, NCCL, ...)


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated GPU memory of each role's process in GB (``parts`` names each term), the
    device each role's first rank runs on, and which trained roles need gradient
    checkpointing to fit (``checkpoint``)."""

    roles: dict
    parts: dict
    devices: dict
    gpu_gb: dict
    checkpoint: dict

    def used_gb(self, device: str) -> float:
        return sum(gb for r, gb in self.roles.items() if self.devices[r] == device)

    def fits(self) -> bool:
        return all(self.used_gb(d) <= _HEADROOM * gb for d, gb in self.gpu_gb.items())

    def lines(self) -> list[str]:
        out = []
        for d, gb in self.gpu_gb.items():
            used = self.used_gb(d)
            verdict = "fits" if used <= _HEADROOM * gb else "does NOT fit"
            who = ", ".join(f"{r} {self.roles[r]:.1f}" for r in self.roles if self.devices[r] == d)
            out.append(f"memory plan {d}: {used:.1f} GB of {gb:.1f} GB ({verdict}; at most "
                       f"{_HEADROOM:.0%} planned): {who}")
        for r, on in self.checkpoint.items():
            if on:
                out.append(f"memory plan: {r} trains with gradient checkpointing (its activations "
                           f"without it: {self.parts[r]['activations_full']:.1f} GB)")
        return out


def _shape(source: str) -> dict:
    """Layers, hidden size, vocabulary, KV heads and head size of a causal LM source (the
    tiny/bundled shapes are known; else from its config without weights; else SmolLM2's)."""
    known = {"tiny:qwen2-0.5b": (24, 896, 49152, 2, 64), "tiny:llama": (2, 64, 49152, 2, 16),
             "bundled:smollm2-135m-instruct": (30, 576, 49152, 3, 64)}
    if source in known:
        L, h, V, kv, hd = known[source]
    else:
        try:
            from transformers import AutoConfig

            from engine.models import resolve_model_path

            c = AutoConfig.from_pretrained(resolve_model_path(source), local_files_only=True)
            L, h, V = c.num_hidden_layers, c.hidden_size, c.vocab_size
            heads = c.num_attention_heads
            kv = getattr(c, "num_key_value_heads", heads) or heads
            hd = getattr(c, "head_dim", None) or h // heads
        except Exception:  # noqa: BLE001 - unreadable: SmolLM2-135M's shape
            L, h, V, kv, hd = known["bundled:smollm2-135m-instruct"]
    return {"layers": L, "hidden": h, "vocab": V, "kv_heads": kv, "head_dim": hd}


def role_memory_gb(cfg, role: str, checkpoint: Optional[bool] = None) -> dict:
    """The terms of one role's GPU memory in GB: ``state`` (weights, and for a trained role
    float32 gradients and AdamW moments: :func:`role_need_gb`), ``activations`` of one update
    micro-batch (``activations_full`` without checkpointing), ``scoring`` (one scoring pass's
    logits and hidden states), ``kv_cache`` (the actor's rollout), ``context`` (CUDA's)."""
    from engine.config import resolve_role_model

    head = role == "critic" and cfg.ppo.critic_trunk == "reference"  # a value head: 0.1 GB
    out = {"state": role_need_gb(cfg, role) - (0.5 if role != "reward" and not head else 0.0),
           "activations": 0.0, "activations_full": 0.0, "scoring": 0.0, "kv_cache": 0.0,
           "context": _CUDA_CONTEXT_GB}
    if role == "reward":
        if cfg.reward.source.startswith(("lexicon:", "python:", "rule:")):
            return {k: 0.0 for k in out}
        return out
    if head:
        return out
    s = _shape(resolve_role_model(cfg, role))
    ro, p = cfg.rollout, cfg.ppo
    rows = ro.batch_size * ro.n
    seq = cfg.data.max_prompt_tokens + ro.max_new_tokens
    resp_share = ro.max_new_tokens / seq
    rc = getattr(cfg, role)
    sixteen = rc.dtype in ("bfloat16", "float16") or rc.autocast not in ("none", None)
    act = _ACT_PER_LAYER * (1 if sixteen else 2)
    L, h, V = s["layers"], s["hidden"], s["vocab"]
    score_tokens = p.micro_batch_tokens or rows * seq  # no budget: the whole batch in one pass
    out["scoring"] = (score_tokens * h * 4 * 2 + score_tokens * resp_share * V * 4 * 2) / 1e9
    if role in ("actor", "critic"):
        upd = p.micro_batch_tokens or p.micro_batch_size * seq
        logits = upd * resp_share * V * 4 * 3 / 1e9 if role == "actor" else 0.0
        full = L * upd * h * act / 1e9 + logits
        ck = upd * h * (L * 2 + act) / 1e9 + logits
        out["activations_full"] = full
        out["activations"] = ck if checkpoint or rc.gradient_checkpointing else full
    if role == "actor":
        out["kv_cache"] = rows * seq * L * 2 * s["kv_heads"] * s["head_dim"] * 2 / 1e9
    return out


def memory_plan(cfg, gpu_memory_gb: Optional[Sequence[float]] = None) -> Optional[MemoryPlan]:
    """The estimated memory of each role on the GPUs of ``gpu_memory_gb`` (default: this
    machine's), gradient checkpointing turned on for a trained role (actor first, then critic)
    where its GPU is over the plan's share without it; None when no role runs on a GPU."""
    gpus = visible_gpu_memory_gb() if gpu_memory_gb is None else list(gpu_memory_gb)
    if not gpus:
        return None
    plan = device_plan(cfg, gpus, _memory=False)
    devices = {r: d[0] for r, d in plan.items() if d[0].startswith("cuda")}
    if not devices:
        return None
    ck = {r: False for r in devices if r in ("actor", "critic")}

    def build() -> MemoryPlan:
        parts = {r: role_memory_gb(cfg, r, ck.get(r)) for r in devices}
        total = {r: sum(v for k, v in parts[r].items() if k != "activations_full") for r in devices}
        gpu_gb = {d: float(gpus[int(d.split(":")[1])]) for d in sorted(set(devices.values()))}
        return MemoryPlan(total, parts, devices, gpu_gb, dict(ck))

    mp = build()
    for r in ("actor", "critic"):
        if mp.fits():
            break
        if r in ck and not getattr(cfg, r).gradient_checkpointing:
            ck[r] = True
            mp = build()
    return mp


def check_memory(cfg, gpu_memory_gb: Optional[Sequence[float]] = None) -> list[str]:
    """The memory plan's lines; raises :class:`PlacementError` with the figures when the roles
    do not fit even with gradient checkpointing."""
    mp = memory_plan(cfg, gpu_memory_gb)
    if mp is None:
        return []
    if not mp.fits():
        raise PlacementError("; ".join(line for line in mp.lines() if "does NOT fit" in line) +
                             " -- lower rollout.batch_size or ppo.micro_batch_tokens, use "
                             "ppo.critic_trunk: reference, or spread the roles over more GPUs")
    return mp.lines()


def planned_checkpointing(cfg, role: str, device) -> Optional[str]:
    """Why ``role`` (a trained role on a CUDA ``device``) should train with gradient
    checkpointing although its config says false: the memory plan's line, or None."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda" or getattr(cfg, role).gradient_checkpointing:
        return None
    gpus = visible_gpu_memory_gb()
    mp = memory_plan(cfg, gpus) if gpus else None
    if mp is None or not mp.checkpoint.get(role):
        return None
    d = f"cuda:{dev.index or 0}"
    return (f"{role}: gradient checkpointing on: the memory plan puts {d} at "
            f"{mp.used_gb(mp.devices[role]):.1f} GB of {mp.gpu_gb.get(mp.devices[role], 0):.1f} GB with it "
            f"(activations {mp.parts[role]['activations_full']:.1f} GB without it)")
