"""The advantage estimators by name (``ppo.estimator``): one registry that the schema (the
allowed values), the checks (a critic, groups of responses), ``engine.config.critic_free``
and the driver (which function computes the advantages) all read.

A new estimator is one decorated function here (or anywhere imported before the config is
read)::

    @estimator("my_est", needs_critic=False, needs_groups=True)
    def my_est(x: EstimatorInputs) -> tuple[torch.Tensor, torch.Tensor]:
        adv = ...                      # [B, T], 0 at invalid tokens
        return adv, adv.clone()        # (advantages, returns)

Each function takes :class:`EstimatorInputs` (token rewards already KL-shaped, the response
mask, the group ids, the critic's values and the PPO hyper-parameters it may use) and returns
``(advantages, returns)``, both ``[B, T]``. The maths lives in :mod:`engine.algorithms`; these
functions only choose and combine it. ``needs_critic``: the critic is started and trained and
``values`` holds its values (else zeros); ``needs_groups``: the estimator compares the
responses to one prompt, so ``rollout.n`` must be at least 2.

Importing this module does not import torch (the config loader and the console read the
names); the functions import :mod:`engine.algorithms` when they run.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class EstimatorInputs:
    """What an estimator may read. Tensors are ``[B, T]`` over response tokens (``index``:
    ``[B]``, the prompt each response answers)."""

    rewards: Any            # token rewards: the score on the last valid token, minus the KL penalty
    mask: Any               # 1.0 at valid response tokens
    index: Any              # group id per response (rollout.n responses per prompt share one)
    values: Any             # the critic's values (zeros for an estimator without a critic)
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    whiten_advantages: bool = True


@dataclass(frozen=True)
class Estimator:
    name: str
    fn: Callable[[EstimatorInputs], tuple]
    needs_critic: bool
    needs_groups: bool

    def __call__(self, x: EstimatorInputs) -> tuple:
        return self.fn(x)


_REGISTRY: dict[str, Estimator] = {}


def estimator(name: str, *, needs_critic: bool, needs_groups: bool):
    """Register the decorated function as ``ppo.estimator: <name>`` (lower case); returns it
    unchanged. A name registered twice is an error."""
    def deco(fn):
        register(name, fn, needs_critic=needs_critic, needs_groups=needs_groups)
        return fn
    return deco


def register(name: str, fn: Callable, *, needs_critic: bool, needs_groups: bool) -> Estimator:
    if not isinstance(name, str) or not name or name != name.strip().lower():
        raise ValueError(f"estimator name must be a non-empty lower-case string; got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"estimator '{name}' is already registered ({_REGISTRY[name].fn.__qualname__})")
    est = Estimator(name, fn, bool(needs_critic), bool(needs_groups))
    _REGISTRY[name] = est
    return est


def unregister(name: str) -> None:
    _REGISTRY.pop(name)


@contextlib.contextmanager
def registered(name: str, fn: Callable, *, needs_critic: bool, needs_groups: bool) -> Iterator[Estimator]:
    """``with registered("x", fn, ...):`` — the estimator exists inside the block only (tests)."""
    est = register(name, fn, needs_critic=needs_critic, needs_groups=needs_groups)
    try:
        yield est
    finally:
        unregister(name)


def names() -> tuple[str, ...]:
    """Every registered name, in registration order (the schema's choices)."""
    return tuple(_REGISTRY)


def get(name: str) -> Estimator:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no advantage estimator '{name}' (registered: {', '.join(_REGISTRY)})") from None


def needs_critic(name: str) -> bool:
    return get(name).needs_critic


def needs_groups(name: str) -> bool:
    return get(name).needs_groups


# ---------------------------------------------------------------------------------- the estimators

@estimator("gae", needs_critic=True, needs_groups=False)
def gae(x: EstimatorInputs):
    """PPO with a critic: GAE(gamma, lambda) over token rewards (optionally whitened first),
    advantages whitened over the batch (``whiten_advantages``)."""
    from engine import algorithms as A

    rewards = x.rewards
    if x.whiten_rewards:
        rewards = A.whiten(rewards, x.mask, shift_mean=False) * x.mask
    adv, ret = A.compute_gae(rewards, x.values, x.mask, x.gamma, x.lam)
    if x.whiten_advantages:
        adv = A.whiten(adv, x.mask) * x.mask
    return adv, ret


def _outcome(x: EstimatorInputs):
    """One score per response: its token rewards summed (the score plus the KL penalty)."""
    return x.rewards.sum(dim=1)


@estimator("grpo", needs_critic=False, needs_groups=True)
def grpo(x: EstimatorInputs):
    """GRPO: (score - group mean) / group std, on every valid token."""
    from engine import algorithms as A

    adv = A.grpo_advantages(_outcome(x), x.index, x.mask, norm_by_std=True)
    return adv, adv.clone()


@estimator("dr_grpo", needs_critic=False, needs_groups=True)
def dr_grpo(x: EstimatorInputs):
    """Dr. GRPO: score - group mean, without the std division."""
    from engine import algorithms as A

    adv = A.grpo_advantages(_outcome(x), x.index, x.mask, norm_by_std=False)
    return adv, adv.clone()


@estimator("rloo", needs_critic=False, needs_groups=True)
def rloo(x: EstimatorInputs):
    """RLOO: score - the mean score of the other responses to the prompt."""
    from engine import algorithms as A

    adv = A.rloo_advantages(_outcome(x), x.index, x.mask)
    return adv, adv.clone()


@estimator("reinforce_pp", needs_critic=False, needs_groups=False)
def reinforce_pp(x: EstimatorInputs):
    """REINFORCE++: discounted token returns, whitened over the batch."""
    from engine import algorithms as A

    return A.reinforce_pp_advantages(x.rewards, x.mask, x.gamma)


@estimator("reinforce_pp_baseline", needs_critic=False, needs_groups=False)
def reinforce_pp_baseline(x: EstimatorInputs):
    """REINFORCE++ with the group's mean score as baseline (a group of one: no baseline)."""
    from engine import algorithms as A

    adv = A.reinforce_pp_baseline_advantages(_outcome(x), x.index, x.mask)
    return adv, adv.clone()
