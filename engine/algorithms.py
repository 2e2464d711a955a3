"""Pure PPO / RLHF math: tensors in, tensors out.

No I/O, no models, no config objects, no project imports.

Conventions
-----------
* Per-token tensors are ``[B, T]`` over the *response* tokens (``compute_gae`` also accepts
  ``[..., T]``; time is always the last dim).
* ``mask`` marks valid tokens: bool, int or float; any nonzero entry is valid (masks are
  binarised, fractional weights are not supported).  Invalid positions are selected away with
  ``torch.where``, never multiplied by 0, so junk there (huge values, even inf/NaN) cannot leak
  into valid outputs, losses or statistics.
* Losses aggregate by token-mean over the mask:
  ``sum(loss * mask) / max(sum(mask), 1)``; an all-invalid mask gives a loss of 0.
* Dtypes: float64 inputs are computed (and returned) in float64, float32 in float32.
  Half precision (bfloat16 / float16) and integer inputs are upcast and computed *and returned*
  in float32.
* ``stats`` dicts hold detached 0-dim tensors in the compute dtype (no host sync); use
  ``float(v)`` to log them.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "whiten",
    "compute_gae",
    "grpo_advantages",
    "rloo_advantages",
    "reinforce_pp_baseline_advantages",
    "reinforce_pp_advantages",
    "agg_loss",
    "LOSS_AGG_MODES",
    "policy_loss",
    "value_loss",
    "kl_penalty",
    "KL_KINDS",
    "entropy_from_logits",
    "FixedKLController",
    "AdaptiveKLController",
    "PIKLController",
    "shape_rewards",
]

LOG_RATIO_CLAMP = 20.0
"""``policy_loss`` clamps ``logprobs - old_logprobs`` to ``[-20, 20]`` before ``exp``."""

K3_LOG_RATIO_CLAMP = 20.0
"""``kl_penalty(kind="k3")`` clamps ``d = ref - logp`` to ``[-20, 20]`` before ``exp``."""

K3_CLAMP = 10.0
"""``kl_penalty(kind="k3")`` clamps the per-token estimate to ``[-10, 10]``."""

WHITEN_EPS = 1e-8

LOSS_AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)

_KL_ALIASES = {
    "k1": "k1",
    "kl": "k1",
    "abs": "abs",
    "k2": "k2",
    "mse": "k2",
    "k3": "k3",
    "low_var_kl": "k3",
}
KL_KINDS: tuple[str, ...] = tuple(_KL_ALIASES)


# --------------------------------------------------------------------------------------------
# dtype / mask helpers
# --------------------------------------------------------------------------------------------


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half/int inputs are upcast)."""
    dtype = None
    for t in tensors:
        dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    if dtype == torch.float64:
        return torch.float64
    return torch.float32


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _broadcast(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape == mask.shape:
        return x, mask
    x, mask = torch.broadcast_tensors(x, mask)
    return x, mask


def _select(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x`` where ``mask`` else 0 (``mask`` already bool)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _count(mask: torch.Tensor, dtype: torch.dtype, dim=None, keepdim: bool = False) -> torch.Tensor:
    m = mask.to(dtype)
    if dim is None:
        return m.sum()
    return m.sum(dim=dim, keepdim=keepdim)


# --------------------------------------------------------------------------------------------
# masked reductions
# --------------------------------------------------------------------------------------------


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    """``sum(x[mask])`` over ``dim`` (all dims when ``None``).

    ``x``, ``mask``: broadcastable, typically ``[B, T]``.  Returns a 0-dim tensor, or ``x``
    reduced over ``dim``.
    """
    m = _as_bool(mask)
    x = x.to(_compute_dtype(x))
    x, m = _broadcast(x, m)
    xs = _select(m, x)
    if dim is None:
        return xs.sum()
    return xs.sum(dim=dim, keepdim=keepdim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    """``sum(x * mask) / max(sum(mask), 1)`` over ``dim`` (all dims when ``None``).

    An empty selection gives 0 (not NaN).  Shapes as in :func:`masked_sum`.
    """
    m = _as_bool(mask)
    x = x.to(_compute_dtype(x))
    x, m = _broadcast(x, m)
    total = masked_sum(x, m, dim=dim, keepdim=keepdim)
    count = _count(m, x.dtype, dim=dim, keepdim=keepdim)
    return total / count.clamp(min=1.0)


def masked_var(
    x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, dim=None, keepdim: bool = False
) -> torch.Tensor:
    """Variance of ``x[mask]`` over ``dim`` (all dims when ``None``).

    ``var = sum(mask * (x - mu)^2) / n`` with ``n = sum(mask)``; times ``n / (n - 1)`` when
    ``unbiased``.  Where the estimate is undefined (``n == 0``, or ``n == 1`` and ``unbiased``)
    the result is 0 instead of NaN/inf.
    """
    m = _as_bool(mask)
    x = x.to(_compute_dtype(x))
    x, m = _broadcast(x, m)
    mean = masked_mean(x, m, dim=dim, keepdim=True)
    sq = (x - mean) ** 2
    ss = masked_sum(sq, m, dim=dim, keepdim=keepdim)
    n = _count(m, x.dtype, dim=dim, keepdim=keepdim)
    denom = n - 1.0 if unbiased else n
    ok = denom > 0
    return torch.where(ok, ss / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(ss))


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whiten over all valid tokens of the batch (pooled, not per sequence).

    ``mu = masked_mean(x, mask)``, ``var = masked_var(x, mask, unbiased=True)``::

        y = (x - mu) * rsqrt(var + 1e-8)        (+ mu when shift_mean=False)

    ``x``, ``mask``: ``[B, T]`` (any broadcastable shapes).  Returns ``x``'s shape.
    Padded positions of the output are 0.  With a single valid token the unbiased variance is
    undefined and taken as 0, so that token whitens to 0 (``mu`` when ``shift_mean=False``);
    an empty mask gives all zeros.  Differentiable (not detached).
    """
    m = _as_bool(mask)
    x = x.to(_compute_dtype(x))
    x, m = _broadcast(x, m)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    y = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        y = y + mean
    return _select(m, y)


# --------------------------------------------------------------------------------------------
# advantages
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation over the valid tokens.

    For the valid tokens ``t_1 < ... < t_n`` of a row (invalid positions skipped)::

        delta_i = r_{t_i} + gamma * V_{t_{i+1}} - V_{t_i}       (V_{t_{n+1}} := 0)
        A_{t_i} = delta_i + gamma * lam * A_{t_{i+1}}           (A_{t_{n+1}} := 0)
        R_t     = A_t + V_t

    The backward recursion carries ``next_value`` / ``next_advantage`` across invalid
    positions unchanged, so nothing at an invalid position (rewards or values, however large)
    is ever read: the last valid token bootstraps from 0.

    ``rewards``, ``values``, ``mask``: ``[B, T]`` (or ``[..., T]``).  Returns
    ``(advantages, returns)``, both ``[B, T]``, detached, **0 at invalid positions**;
    advantages are not whitened.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
            f"{tuple(mask.shape)} must have the same shape"
        )
    dtype = _compute_dtype(rewards, values)
    shape = rewards.shape
    if rewards.dim() == 0:
        raise ValueError("compute_gae needs at least one (time) dimension")
    T = shape[-1]
    if rewards.numel() == 0:
        z = torch.zeros(shape, dtype=dtype, device=rewards.device)
        return z, z.clone()
    m = _as_bool(mask).reshape(-1, T)
    r = _select(m, rewards.detach().to(dtype).reshape(-1, T))
    v = _select(m, values.detach().to(dtype).reshape(-1, T))

    next_value = torch.zeros(r.shape[0], dtype=dtype, device=r.device)
    next_adv = torch.zeros_like(next_value)
    adv = torch.zeros_like(r)
    for t in range(T - 1, -1, -1):
        mt = m[:, t]
        delta = r[:, t] + gamma * next_value - v[:, t]
        a = delta + gamma * lam * next_adv
        next_value = torch.where(mt, v[:, t], next_value)
        next_adv = torch.where(mt, a, next_adv)
        adv[:, t] = _select(mt, a)
    returns = _select(m, adv + v)
    return adv.reshape(shape), returns.reshape(shape)


# --------------------------------------------------------------------------------------------
# critic-free (outcome) advantages
# --------------------------------------------------------------------------------------------


def _group_stats(scores: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row ``(n, mean, unbiased std)`` of the row's group (rows sharing an ``index``).

    ``scores``: ``[B]`` float; ``index``: ``[B]`` integer group ids (any values, any order).
    ``n`` is the group size; ``std`` is 0 for a group of one (the caller decides what a group of
    one means).  Everything is in ``scores``' dtype.
    """
    if scores.dim() != 1 or index.shape != scores.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and index {tuple(index.shape)} must both be [B]")
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(f"index must hold integer group ids, got {index.dtype}")
    _, inv = torch.unique(index, return_inverse=True)
    G = int(inv.max()) + 1 if inv.numel() else 0
    z = torch.zeros(G, dtype=scores.dtype, device=scores.device)
    n_g = z.index_add(0, inv, torch.ones_like(scores))
    mean_g = z.index_add(0, inv, scores) / n_g.clamp(min=1.0)
    dev = scores - mean_g[inv]
    ss_g = z.index_add(0, inv, dev * dev)
    var_g = torch.where(n_g > 1, ss_g / (n_g - 1.0).clamp(min=1.0), torch.zeros_like(ss_g))
    return n_g[inv], mean_g[inv], var_g.sqrt()[inv]


def _outcome_inputs(scores: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if mask.dim() != 2 or mask.shape[0] != scores.shape[0]:
        raise ValueError(f"mask {tuple(mask.shape)} must be [B, T] with B = {scores.shape[0]}")
    return scores.detach().to(_compute_dtype(scores)), _as_bool(mask)


def _broadcast_over_response(per_row: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _select(m, per_row.unsqueeze(-1).expand(m.shape))


@torch.no_grad()
def grpo_advantages(
    scores: torch.Tensor,
    index: torch.Tensor,
    mask: torch.Tensor,
    eps: float = 1e-6,
    norm_by_std: bool = True,
) -> torch.Tensor:
    """GRPO outcome advantages: one score per response, normalised within its group.

    ``scores``: ``[B]``; ``index``: ``[B]`` integer group ids (the responses to one prompt share
    one); ``mask``: ``[B, T]``.  Per group of ``n`` responses::

        A = (s - mean_group) / (std_group + eps)      std unbiased (n - 1)
        A = s - mean_group                            norm_by_std=False (Dr.GRPO)

    A group of one has mean 0 and std 1 (its advantage is ``s / (1 + eps)``, or ``s``); equal
    scores in a group give 0.  The advantage is broadcast over the response's valid tokens and
    is 0 elsewhere.  Returns ``[B, T]``, detached.
    """
    s, m = _outcome_inputs(scores, mask)
    n, mean, std = _group_stats(s, index.to(s.device))
    single = n <= 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    adv = s - mean
    if norm_by_std:
        std = torch.where(single, torch.ones_like(std), std)
        denom = std + eps
        # equal scores: std 0 means every deviation is exactly 0 (0 even with eps = 0)
        adv = torch.where(denom > 0, adv / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(adv))
    return _broadcast_over_response(adv, m)


@torch.no_grad()
def rloo_advantages(scores: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RLOO: each response's baseline is the mean score of the *other* responses to its prompt.

    For a group of ``n > 1``: ``A = s - mean(others) = (s - mean_group) * n / (n - 1)``; a group
    of one keeps its score.  Shapes as in :func:`grpo_advantages`; returns ``[B, T]``, detached,
    broadcast over the valid tokens, 0 elsewhere.
    """
    s, m = _outcome_inputs(scores, mask)
    n, mean, _ = _group_stats(s, index.to(s.device))
    multi = n > 1
    adv = torch.where(multi, (s - mean) * n / torch.where(multi, n - 1.0, torch.ones_like(n)), s)
    return _broadcast_over_response(adv, m)


@torch.no_grad()
def reinforce_pp_baseline_advantages(scores: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE++ with a group baseline: subtract the group's mean score (a group of one: mean 0),
    broadcast over the response's valid tokens, then :func:`whiten` over all valid tokens of the
    batch.  Shapes as in :func:`grpo_advantages`; returns ``[B, T]``, detached, 0 at invalid
    positions.
    """
    s, m = _outcome_inputs(scores, mask)
    n, mean, _ = _group_stats(s, index.to(s.device))
    adv = s - torch.where(n > 1, mean, torch.zeros_like(mean))
    return whiten(_broadcast_over_response(adv, m), m)


@torch.no_grad()
def reinforce_pp_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: discounted returns of token-level rewards, whitened over the batch.

    ``rewards``: ``[B, T]`` (typically the score on the last valid token plus a per-token KL
    penalty, as :func:`shape_rewards` makes them); ``mask``: ``[B, T]``.  Over the valid tokens
    ``t_1 < ... < t_n`` of a row (invalid positions skipped, never read)::

        G_{t_i} = r_{t_i} + gamma * G_{t_{i+1}}        (G_{t_{n+1}} := 0)

    Returns ``(advantages, returns)``, both ``[B, T]``, detached, 0 at invalid positions;
    ``advantages = whiten(returns, mask)``.
    """
    if rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(f"rewards {tuple(rewards.shape)} and mask {tuple(mask.shape)} must both be [B, T]")
    dtype = _compute_dtype(rewards)
    m = _as_bool(mask)
    r = _select(m, rewards.detach().to(dtype))
    T = r.shape[-1]
    running = torch.zeros(r.shape[0], dtype=dtype, device=r.device)
    ret = torch.zeros_like(r)
    for t in range(T - 1, -1, -1):
        g = r[:, t] + gamma * running
        running = torch.where(m[:, t], g, running)
        ret[:, t] = _select(m[:, t], g)
    return whiten(ret, m), ret


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------


def agg_loss(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean") -> torch.Tensor:
    """Aggregate a per-token loss ``[B, T]`` to a scalar over the valid tokens of ``mask``.

    * ``token-mean``: ``sum(l * mask) / sum(mask)`` (every token weighs the same);
    * ``seq-mean-token-sum``: each sequence's token sum, averaged over the sequences;
    * ``seq-mean-token-mean``: each sequence's token mean, averaged over the sequences;
    * ``seq-mean-token-sum-norm``: each sequence's token sum divided by the padded length ``T``
      (a constant, so long and short answers are not reweighted; Dr.GRPO), averaged over the
      sequences.  verl divides the batch's total by ``T`` alone; this is that divided by ``B``.

    Sequence means run over the rows with at least one valid token (a row without one adds
    nothing); an all-invalid mask gives 0.  Differentiable through ``loss_mat``.
    """
    m = _as_bool(mask)
    x = loss_mat.to(_compute_dtype(loss_mat))
    x, m = _broadcast(x, m)
    if mode == "token-mean":
        return masked_mean(x, m)
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; allowed: {', '.join(LOSS_AGG_MODES)}")
    if x.dim() < 2:
        x, m = x.unsqueeze(0), m.unsqueeze(0)
    tok_sum = masked_sum(x, m, dim=-1)
    n_tok = _count(m, x.dtype, dim=-1)
    if mode == "seq-mean-token-sum":
        per_seq = tok_sum
    elif mode == "seq-mean-token-mean":
        per_seq = tok_sum / n_tok.clamp(min=1.0)
    else:
        per_seq = tok_sum / float(max(x.shape[-1], 1))
    return masked_mean(per_seq, n_tok > 0)



def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = None,
    loss_agg: str = "token-mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (optionally dual-clip), aggregated by :func:`agg_loss` over ``mask``
    (``loss_agg``, token-mean by default).

    ::

        ratio = exp(clamp(logp - logp_old, -20, 20))
        pg1   = -A * ratio
        pg2   = -A * clamp(ratio, 1 - clip_low, 1 + clip_high)
        l     = max(pg1, pg2)
        l     = min(l, -A * clip_c)   where A < 0          (dual clip, only if clip_c given)
        loss  = agg_loss(l, mask, loss_agg)      (token-mean: sum(l * mask) / sum(mask))

    ``logprobs``, ``old_logprobs``, ``advantages``, ``mask``: ``[B, T]``.  Gradient flows
    through ``logprobs`` only (``old_logprobs``/``advantages`` are detached).  The log-ratio
    clamp zeroes the gradient where ``|logp - logp_old| > 20``.

    ``stats`` (detached 0-dim tensors, means over valid tokens):

    * ``clipfrac``: fraction with ``pg2 > pg1`` strictly (clipped term active), excluding
      dual-clip events;
    * ``dual_clipfrac``: fraction with ``A < 0`` and ``-A * clip_c < max(pg1, pg2)`` strictly
      (0 when ``clip_c`` is None);
    * ``approx_kl``: k1 estimate ``mean(logp_old - logp)`` (unclamped);
    * ``ratio_mean``: mean ratio.
    """
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low/clip_high must be >= 0, got {clip_low}, {clip_high}")
    if clip_c is not None and not clip_c > 1.0:
        raise ValueError(f"clip_c must be > 1 for dual clip, got {clip_c}")
    dtype = _compute_dtype(logprobs, old_logprobs, advantages)
    m = _as_bool(mask)
    logp = logprobs.to(dtype)
    old = old_logprobs.detach().to(dtype)
    adv = _select(m, advantages.detach().to(dtype))

    diff = _select(m, logp - old)
    ratio = torch.exp(diff.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(pg1, pg2)
    is_clipped = pg2 > pg1
    if clip_c is not None:
        pg3 = -adv * clip_c
        is_dual = (adv < 0) & (pg3 < clipped)
        per_token = torch.where(is_dual, pg3, clipped)
        is_clipped = is_clipped & ~is_dual
    else:
        is_dual = torch.zeros_like(is_clipped)
        per_token = clipped

    loss = agg_loss(per_token, m, loss_agg)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(is_clipped.to(dtype), m),
            "dual_clipfrac": masked_mean(is_dual.to(dtype), m),
            "approx_kl": masked_mean(-diff.detach(), m),
            "ratio_mean": masked_mean(ratio.detach(), m),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss, token-mean over ``mask``.

    ::

        v_clip = clamp(v, v_old - clip, v_old + clip)
        loss   = 0.5 * mean_mask(max((v - R)^2, (v_clip - R)^2))

    ``clip=None`` disables clipping (``0.5 * mean_mask((v - R)^2)``).  ``values``,
    ``old_values``, ``returns``, ``mask``: ``[B, T]``; gradient flows through ``values`` only.

    ``stats`` (detached 0-dim tensors): ``clipfrac`` (fraction of valid tokens where the
    clipped term is strictly larger), ``values_mean``, ``returns_mean``.
    """
    if clip is not None and clip < 0:
        raise ValueError(f"clip must be >= 0 or None, got {clip}")
    dtype = _compute_dtype(values, old_values, returns)
    m = _as_bool(mask)
    v = _select(m, values.to(dtype))
    old = _select(m, old_values.detach().to(dtype))
    ret = _select(m, returns.detach().to(dtype))

    vf1 = (v - ret) ** 2
    if clip is None:
        per_token = vf1
        is_clipped = torch.zeros_like(m)
    else:
        v_clip = old + (v - old).clamp(-clip, clip)
        vf2 = (v_clip - ret) ** 2
        per_token = torch.maximum(vf1, vf2)
        is_clipped = vf2 > vf1
    loss = 0.5 * masked_mean(per_token, m)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(is_clipped.to(dtype), m),
            "values_mean": masked_mean(v.detach(), m),
            "returns_mean": masked_mean(ret, m),
        }
    return loss, stats


# --------------------------------------------------------------------------------------------
# KL
# --------------------------------------------------------------------------------------------


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimator on sampled tokens (no masking, no reduction).

    With ``x = logp - logp_ref``:

    * ``k1`` (alias ``kl``): ``x``
    * ``abs``: ``|x|``
    * ``k2`` (alias ``mse``): ``0.5 * x^2``
    * ``k3`` (alias ``low_var_kl``): with ``d = clamp(-x, -20, 20)``,
      ``clamp(exp(d) - d - 1, -10, 10)``; the clamps keep ``exp`` finite and bound the
      per-token value at 10 (gradient is 0 beyond the clamps).

    ``logprobs``, ``ref_logprobs``: same shape, e.g. ``[B, T]``; returns that shape.
    Differentiable through both inputs.  Unknown ``kind`` raises ``ValueError``.
    """
    key = _KL_ALIASES.get(kind.lower() if isinstance(kind, str) else kind)
    if key is None:
        raise ValueError(f"unknown kl kind {kind!r}; allowed: {', '.join(KL_KINDS)}")
    dtype = _compute_dtype(logprobs, ref_logprobs)
    x = logprobs.to(dtype) - ref_logprobs.to(dtype)
    if key == "k1":
        return x
    if key == "abs":
        return x.abs()
    if key == "k2":
        return 0.5 * x.square()
    d = (-x).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return (torch.exp(d) - d - 1.0).clamp(-K3_CLAMP, K3_CLAMP)


class FixedKLController:
    """Constant KL coefficient; ``update`` is a no-op."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: Any = None, n_steps: int = 0) -> float:
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "fixed", "value": self.value}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.value = float(d["value"])


class AdaptiveKLController:
    """Proportional KL controller (Ziegler et al. 2019).

    ::

        e      = clip(current_kl / target_kl - 1, -0.2, 0.2)
        value *= 1 + e * n_steps / horizon
    """

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: float):
        if not target_kl > 0:
            raise ValueError(f"target_kl must be > 0, got {target_kl}")
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target_kl = float(target_kl)
        self.horizon = float(horizon)

    def update(self, current_kl: Any, n_steps: int) -> float:
        error = min(max(float(current_kl) / self.target_kl - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * float(n_steps) / self.horizon
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "adaptive",
            "value": self.value,
            "target_kl": self.target_kl,
            "horizon": self.horizon,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.value = float(d["value"])
        if "target_kl" in d:
            self.target_kl = float(d["target_kl"])
        if "horizon" in d:
            self.horizon = float(d["horizon"])


class PIKLController:
    """A proportional-integral controller on ``ln(kl_coef)`` that reads the KL of the batch it
    shapes (``acts_on_current = True``): the driver calls ``update`` with the batch's mean summed
    per-response KL *before* it shapes that batch's rewards, and uses the new ``value`` on it.

    With ``lo, hi = coef_min, coef_max``::

        e     = clip(ln(max(kl, 1e-8) / target_kl), -1, 1)      # log error, bounded step
        ema'  = kl (first call), else 0.5 * ema + 0.5 * kl      # the recent KL level
        reached = reached or ema' >= target_kl                  # the KL has been at target once
        e    += band_gain * clip(ln(kl / (1.5 * target_kl)), 0, 1)  # more pull above the band
        if reached:                                             # then a plain integral:
            z = clip(z + ki * e, ln lo, ln hi)                  #   as fast down as up
        elif ema is set and kl <= ema:                          # before: only when not rising,
            z = clip(z + RELEASE * ki * e, ln lo, ln hi)        #   and RELEASE (0.1) x slower
        value = clip(exp(z + kp * e), lo, hi)                   # P term: acts on this batch
        ema   = ema'

    ``z`` starts at ``ln(init_kl_coef)``.  Every step moves ``ln(value)`` by at most
    ``ki + 2 * kp`` (the integral by at most ``ki``), so the coefficient can move by orders of
    magnitude within tens of steps, whatever the score's scale, without jumping on one noisy
    batch.  ``n_steps`` is accepted for the common controller interface and unused (the step is
    the time unit).

    Warm-up (before the recent KL level, ``ema'``, first reaches the target): the policy has not moved yet and no
    penalty can push the KL up, so a plain integral would sink the coefficient towards
    ``coef_min`` only for the KL to overshoot when it arrives (seen on the default: 0.05 ->
    1e-4 within 30 steps).  So until then the integral is held while the KL rises and releases
    at a tenth of ``ki`` otherwise.  After that the integral is symmetric: a release slower than
    the tightening would, with noisy batch KLs, settle the mean KL well below target and let
    the coefficient creep up (seen on the default: a mean KL of about 2.3 for a target of 3 and the
    coefficient rising 0.06 -> 0.16 over 250 steps while the score fell).
    """

    acts_on_current = True
    RELEASE = 0.1  # the integral's rate below target during warm-up, relative to ki
    BAND = 1.5     # the band's upper edge, relative to target_kl (band_gain acts above it)

    def __init__(self, init_kl_coef: float, target_kl: float, ki: float, kp: float,
                 coef_min: float, coef_max: float, band_gain: float = 0.0):
        if not target_kl > 0:
            raise ValueError(f"target_kl must be > 0, got {target_kl}")
        if not 0 < coef_min <= coef_max:
            raise ValueError(f"need 0 < coef_min <= coef_max, got {coef_min}, {coef_max}")
        if ki < 0 or kp < 0:
            raise ValueError(f"gains must be >= 0, got ki={ki}, kp={kp}")
        self.target_kl = float(target_kl)
        self.ki, self.kp = float(ki), float(kp)
        if band_gain < 0:
            raise ValueError(f"band_gain must be >= 0, got {band_gain}")
        self.band_gain = float(band_gain)
        self.coef_min, self.coef_max = float(coef_min), float(coef_max)
        self.z = math.log(min(max(float(init_kl_coef), self.coef_min), self.coef_max))
        self.value = math.exp(self.z)
        self.ema: Optional[float] = None
        self.reached = False

    def update(self, current_kl: Any, n_steps: int = 0) -> float:
        kl = float(current_kl)
        if not math.isfinite(kl):
            raise ValueError(f"KL must be finite, got {kl}")
        e = min(max(math.log(max(kl, 1e-8) / self.target_kl), -1.0), 1.0)
        smooth = kl if self.ema is None else 0.5 * self.ema + 0.5 * kl
        # warm-up ends when the recent level reaches the target, not one noisy batch: a single
        # batch at target followed by ordinary ones below it would otherwise release the
        # coefficient ~10x before the KL has really arrived (seen on the default with seed 1)
        self.reached = self.reached or smooth >= self.target_kl
        # above the band's upper edge the error counts (1 + band_gain) x: a fast climb back
        # that leaves the error inside the band (and so the mean it settles at) untouched
        out = min(max(math.log(max(kl, 1e-8) / (self.BAND * self.target_kl)), 0.0), 1.0)
        e_eff = e + self.band_gain * out
        rate = self.ki if self.reached else (
            self.ki * self.RELEASE if self.ema is not None and kl <= self.ema else 0.0)
        if rate:
            self.z = min(max(self.z + rate * e_eff, math.log(self.coef_min)), math.log(self.coef_max))
        self.value = min(max(math.exp(self.z + self.kp * e_eff), self.coef_min), self.coef_max)
        self.ema = smooth
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "pi", "value": self.value, "z": self.z, "ema": self.ema, "reached": self.reached,
                "target_kl": self.target_kl, "ki": self.ki, "kp": self.kp, "band_gain": self.band_gain,
                "coef_min": self.coef_min, "coef_max": self.coef_max}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.value = float(d["value"])
        self.z = float(d["z"]) if "z" in d else math.log(self.value)
        self.ema = None if d.get("ema") is None else float(d["ema"])
        self.reached = bool(d.get("reached", False))
        for k in ("target_kl", "ki", "kp", "band_gain", "coef_min", "coef_max"):
            if k in d:
                setattr(self, k, float(d[k]))


@torch.no_grad()
def shape_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kind: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level rewards with a KL penalty and the sequence score on the last valid token.

    ::

        kl_t = kl_penalty(logp, logp_ref, kind)_t * mask_t
        r_t  = -kl_coef * kl_t + score * [t == last valid index of the row]

    ``scores``: ``[B]``; ``logprobs``, ``ref_logprobs``, ``mask``: ``[B, T]``.
    Returns ``(rewards, kl)``, both ``[B, T]``, detached, 0 at invalid positions (the score
    only ever lands on a valid token).  Rows with no valid token get no score (it is dropped)
    and all-zero rewards.
    """
    kl_raw = kl_penalty(logprobs, ref_logprobs, kind)
    dtype = _compute_dtype(kl_raw, scores)
    m = _as_bool(mask)
    kl = _select(m, kl_raw.to(dtype))
    rewards = -float(kl_coef) * kl if not torch.is_tensor(kl_coef) else -kl_coef.to(dtype) * kl
    T = m.shape[-1]
    pos = torch.arange(T, device=m.device)
    last = torch.where(m, pos, torch.full_like(pos, -1)).amax(dim=-1) if T else None
    if last is not None:
        at_last = pos == last.unsqueeze(-1)  # never true for rows without a valid token (last=-1)
        rewards = rewards + _select(at_last, scores.to(dtype).unsqueeze(-1).expand_as(rewards))
    return rewards, kl


# --------------------------------------------------------------------------------------------
# entropy
# --------------------------------------------------------------------------------------------


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over the last dim.

    ``H = logsumexp(l) - sum(p * l)``, evaluated as ``sum(p * (logsumexp(l') - l'))`` with
    ``l' = l - max(l)`` (same value, no cancellation between two large numbers).  ``-inf`` logits contribute 0; each term is
    >= 0, so the result is finite and >= 0 even for extreme logits (e.g. +-1e4).  A row of all
    ``-inf`` gives 0.

    ``logits``: ``[..., V]`` -> ``[...]``.  Differentiable.
    """
    dtype = _compute_dtype(logits)
    lg = logits.to(dtype)
    # Shift by the (finite) row max first: exact for nearby values, keeps lse - l accurate when
    # all logits are large (entropy is shift invariant, so the gradient is unchanged).
    top = lg.detach().amax(dim=-1, keepdim=True)
    lg = lg - torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    lse = torch.logsumexp(lg, dim=-1, keepdim=True)
    p = torch.softmax(lg, dim=-1)
    neg_logp = lse - lg
    live = (p > 0) & torch.isfinite(neg_logp)
    neg_logp = torch.where(live, neg_logp, torch.zeros((), dtype=dtype, device=lg.device))
    p = torch.where(live, p, torch.zeros((), dtype=dtype, device=lg.device))
    return (p * neg_logp).sum(dim=-1)
