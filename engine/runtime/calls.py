"""The contract of a role call: what the driver (and the supervisor) asks a role to do, and what
comes back.

Every endpoint a role is reached through takes a ``RoleCall`` and returns a Future of a
``RoleResult``: ``InlineEndpoint`` (in this process, engine/runtime/driver.py), ``Endpoint`` (a
worker of the pool, engine/runtime/pool.py), ``RoleGroup`` (a role over several ranks,
engine/runtime/ranks.py), and under them the two backends' handles (``WorkerHandle``,
``RayWorkerHandle``). How the tensors travel is each backend's business and unchanged by this
contract: shared memory for a local worker (engine/transport.py), Ray's object store for an actor.
On the far side, the worker process and the Ray actor both answer with :func:`perform`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    import torch

    Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RoleCall:
    """One operation of one role: ``role.op_<op>(tensors, args)``, run with ``threads`` intra-op
    threads (None: whatever the worker has)."""

    role: str                                   # actor, reference, critic, reward
    op: str                                     # generate, logprobs, values, score, update, save, ...
    tensors: Optional[Tensors] = None           # the operation's tensor inputs (none: {})
    args: dict[str, Any] = field(default_factory=dict)  # its JSON-able arguments
    threads: Optional[int] = None


@dataclass(frozen=True)
class RoleResult:
    """What a role call returned: its tensors, its JSON-able info (losses, counts, flags ...) and
    how long the role took to answer, in seconds (the call alone, not the transfers)."""

    tensors: Tensors
    info: dict[str, Any]
    seconds: float


def perform(roles: dict, call: RoleCall) -> RoleResult:
    """Run ``call`` on the role objects of this process (name -> role), timed: how the worker
    process, the Ray actor and the inline endpoint answer. The role gets its own copy of the
    tensors dict (it may add to or pop from it)."""
    t = time.perf_counter()
    outputs, info = roles[call.role].call(call.op, dict(call.tensors or {}), call.args or {})
    return RoleResult(outputs or {}, info, time.perf_counter() - t)
