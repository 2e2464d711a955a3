"""The control socket's operations: one handler per op, in one table (``OPS``).

``handle(sup, req)`` answers a request of ``engine.runtime.control``: ``status``/``ping`` at
any time; every other op only while the run is not over. A handler marked ``locked`` runs
holding the supervisor's condition (it changes what the loop waits on) and may return a
callable, which is then called without it (a ``checkpoint`` that waits for its result). The
others run without the condition: they wait for a step boundary, which needs it.

Adding an op: a function ``(sup, req) -> dict`` and a line in ``OPS``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

if TYPE_CHECKING:  # pragma: no cover
    from engine.runtime.supervisor import Supervisor

FINAL_STATES = ("finished", "failed", "stopped")
Reply = Union[dict, Callable[[], dict]]


@dataclass(frozen=True)
class Op:
    fn: Callable[["Supervisor", dict], Reply]
    locked: bool = False


def handle(sup: "Supervisor", req: dict) -> dict:
    op = req["op"]
    if op in ("status", "ping"):
        return sup.status()
    spec = OPS.get(op)
    with sup.cv:
        if sup.state in FINAL_STATES:
            return {"ok": False, "error": f"the run is {sup.state}"}
        reply = spec.fn(sup, req) if spec is not None and spec.locked else None
    if spec is None:
        return {"ok": False, "error": f"unsupported op {op!r}"}
    if reply is None:
        reply = spec.fn(sup, req)
    return reply() if callable(reply) else reply


def _pause(sup: "Supervisor", req: dict) -> dict:
    if sup.state == "paused":
        return {"ok": True, "pending": False, "message": "already paused"}
    sup.pause_req = True
    sup.cv.notify_all()
    sup.log(f"pause requested: takes effect at the end of step {sup.step + 1}")
    return {"ok": True, "pending": True, "message": f"pausing at the end of step {sup.step + 1}"}


def _resume(sup: "Supervisor", req: dict) -> dict:
    if sup.state != "paused" and not sup.pause_req:
        return {"ok": False, "error": f"not paused (state {sup.state})"}
    sup.pause_req = False
    sup.paused_reason = None
    sup.pause_info = {}
    sup.cv.notify_all()
    return {"ok": True, "pending": False, "message": "resuming"}


def _stop(sup: "Supervisor", req: dict) -> dict:
    sup.stop_req = True
    sup.stop_reason = str(req.get("reason") or "stop requested")
    try:
        grace = sup.arm_stop_grace(req.get("grace_s"))
    except (TypeError, ValueError):
        return {"ok": False, "error": f"grace_s must be a number of seconds > 0; got {req.get('grace_s')!r}"}
    sup.cv.notify_all()
    sup.log(f"stop requested: stopping at the end of the current step (with a checkpoint); "
            f"a worker that has not answered within {grace:.0f}s is killed")
    return {"ok": True, "pending": True,
            "message": f"stopping at the end of the current step (workers that do not answer "
                       f"within {grace:.0f}s are killed)"}


def _checkpoint(sup: "Supervisor", req: dict) -> Reply:
    ev = threading.Event()
    sup.ckpt_req.append(ev)
    sup.cv.notify_all()

    def answer() -> dict:
        if not req.get("wait", False):
            return {"ok": True, "pending": True, "message": "checkpoint at the end of the current step"}
        ev.wait(float(req.get("wait_timeout", 600)))
        res = sup.ckpt_results.get(id(ev))
        return res or {"ok": False, "error": "checkpoint did not complete in time"}

    return answer


def _swap_reward(sup: "Supervisor", req: dict) -> dict:
    return sup.feedback.swap_reward(req)


def _refit_reward(sup: "Supervisor", req: dict) -> dict:
    return sup.feedback.start_refit("requested")


def _sample_pair(sup: "Supervisor", req: dict) -> dict:
    prompt = req.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        return {"ok": False, "error": "sample_pair: 'prompt' must be a non-empty string when given"}
    n = req.get("n", 2)
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 16:
        return {"ok": False, "error": f"sample_pair: 'n' must be an integer from 2 to 16; got {n!r}"}
    cands = req.get("candidates")
    if cands is not None:
        if isinstance(cands, bool) or not isinstance(cands, int) or not 2 <= cands <= 32:
            return {"ok": False, "error": f"sample_pair: 'candidates' must be an integer from 2 to 32; got {cands!r}"}
        if n != 2:
            return {"ok": False, "error": f"sample_pair: 'candidates' picks one pair, so 'n' must be 2; got {n}"}
    return sup.feedback.at_boundary({"op": "sample_pair", "prompt": prompt, "n": n, "candidates": cands},
                                    float(req.get("wait_timeout", 600)))


OPS: dict[str, Op] = {
    "pause": Op(_pause, locked=True),
    "resume": Op(_resume, locked=True),
    "stop": Op(_stop, locked=True),
    "checkpoint": Op(_checkpoint, locked=True),
    "swap_reward": Op(_swap_reward),
    "refit_reward": Op(_refit_reward),
    "sample_pair": Op(_sample_pair),
}
