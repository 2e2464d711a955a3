"""The four PPO roles by name: the table the workers (local and Ray), the dry run and the benchmark
build a role from.

Where each role lives: ``role_policy`` (actor, reference), ``role_critic``, ``role_reward``; what
they share: ``role_base`` (the ``Role`` class, RNG capture, memory figures) and ``role_training``
(the update of a trained role: AdamW, schedule, two-phase commit).
"""
from __future__ import annotations

from engine.runtime.role_critic import CriticRole
from engine.runtime.role_policy import ActorRole, ReferenceRole
from engine.runtime.role_reward import RewardRole

ROLE_CLASSES = {"actor": ActorRole, "reference": ReferenceRole, "critic": CriticRole, "reward": RewardRole}
