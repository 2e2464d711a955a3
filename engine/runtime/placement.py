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
    from engine.config import role_device_request
    from engine.runtime.driver import active_roles, reference_in_actor

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


def device_plan(cfg, gpu_memory_gb: Optional[Sequence[float]] = None) -> dict[str, list[str]]:
    """The plan for ``cfg`` on this machine (or on ``gpu_memory_gb``)."""
    gpus = visible_gpu_memory_gb() if gpu_memory_gb is None else list(gpu_memory_gb)
    devs = cfg.runtime.devices
    allowed = None
    if isinstance(devs, tuple):
        allowed = sorted({int(d.split(":")[1]) if ":" in d else 0 for d in devs if d.startswith("cuda")})
    from engine.runtime.driver import active_roles

    needs = {r: (role_need_gb(cfg, r) if gpus else 0.0) for r in active_roles(cfg)}
    return plan_devices(role_requests(cfg, needs), gpus, allowed)


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
