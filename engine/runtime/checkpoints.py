"""A run's checkpoints: ``checkpoints/step_<N>/`` with the actor's and critic's parts (written
by their workers), the supervisor's RNG, and ``state.json`` (step, data stream, KL controller,
reward version). Written into a temporary folder and renamed when complete, so a checkpoint
folder is whole or absent; the oldest beyond ``checkpoint.keep_last`` are removed."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.files import atomic_write_json, atomic_write_text, durable_rename, read_jsonl
from engine.runtime.calls import RoleCall
from engine.runtime.role_base import capture_rng, restore_rng
from engine.runtime.rundir import write_error_cause
from engine.runtime.worker import WorkerError

if TYPE_CHECKING:  # pragma: no cover
    from engine.runtime.loop import RunLoop
    from engine.runtime.supervisor import Supervisor


def show(sup: "Supervisor", p: Path) -> str:
    """A checkpoint path relative to the run directory when it is inside it."""
    try:
        return str(p.relative_to(sup.rd.path))
    except ValueError:
        return str(p)


def save_checkpoint(sup: "Supervisor", loop: "RunLoop") -> dict:
    """Checkpoint the step ``sup.step``: ``{"ok": True, "path", ...}`` or ``{"ok": False, "error"}``
    (a disk error); a worker that died while writing raises."""
    cfg = sup.cfg
    final = sup.rd.checkpoints / f"step_{sup.step}"
    if final.exists():
        return {"ok": True, "path": str(final), "step": sup.step, "message": "already saved"}
    t = time.perf_counter()
    tmp = sup.rd.checkpoints / f".tmp-step_{sup.step}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        futs = [sup.pool.endpoints[r].submit(RoleCall(r, "save", args={"path": str(tmp)})) for r in ("actor", "critic")
                if r in sup.pool.endpoints]
        errs = []
        for f in futs:  # wait for both before the folder may be removed
            try:
                f.result()
            except BaseException as e:  # noqa: BLE001
                errs.append(e)
        if errs:
            raise errs[0]
        torch.save({"rng": capture_rng()}, tmp / "supervisor_rng.pt")
        data = loop.stream_state()  # a retried batch is not consumed
        atomic_write_json(tmp / "state.json", {
            "step": sup.step, "data": data, "kl_controller": loop.kl_ctl.state_dict(),
            "reward_source": sup.feedback.reward_source, "reward_version": sup.feedback.reward_version,
            "time": time.time(), "run_tag": sup.run_tag,
        })
        durable_rename(tmp, final)  # fsync files and folder, rename, fsync checkpoints/
    except BaseException as e:
        if isinstance(e, WorkerError) and e.kind == "died" or not isinstance(e, Exception):
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if isinstance(e, WorkerError):
            cause = e.reply.get("error") or str(e)
        else:
            cause = write_error_cause(e, sup.rd.checkpoints)  # before the removal frees space
        shutil.rmtree(tmp, ignore_errors=True)
        sup.log(f"checkpoint at step {sup.step} failed: {cause}", "ERROR")
        return {"ok": False, "error": cause}
    keep = max(1, cfg.checkpoint.keep_last)
    for old in sup.rd.checkpoint_dirs()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    secs = time.perf_counter() - t
    sup.longest_s = max(sup.longest_s, secs)
    sup.log(f"checkpoint step {sup.step} saved to {show(sup, final)} in {secs:.1f}s")
    sup.broadcast({"event": "checkpoint", "step": sup.step, "path": str(final)})
    sup.write_state(last_checkpoint=str(final), last_checkpoint_step=sup.step)
    return {"ok": True, "path": str(final), "step": sup.step, "seconds": secs}


def load_checkpoint(sup: "Supervisor", ck: Path, stream, kl_ctl) -> None:
    """Resume from ``ck``: the roles' parts, the stream, the KL controller, the RNG, the step and
    the reward it was taken with; metrics and samples past it are cut off."""
    st = json.loads((ck / "state.json").read_text())
    futs = [sup.pool.endpoints[r].submit(RoleCall(r, "load", args={"path": str(ck)})) for r in ("actor", "critic")
            if r in sup.pool.endpoints]
    for f in futs:
        f.result()
    stream.load_state_dict(st["data"])
    kl_ctl.load_state_dict(st["kl_controller"])
    restore_rng(torch.load(ck / "supervisor_rng.pt", weights_only=False)["rng"])
    sup.step = int(st["step"])
    before = int(sup.rd.read_state().get("step") or 0)
    if before > sup.step:
        sup.log(f"the latest checkpoint is {ck.name}: steps {sup.step + 1}-{before} of the previous "
                f"session were not checkpointed and are trained again", "WARNING")
    # the history past the checkpoint is replaced by what the resumed run computes
    for path in (sup.rd.metrics, sup.rd.samples):
        rows = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= sup.step]
        atomic_write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
    fb = sup.feedback
    fb.resume(st)
    sup.log(f"resumed from {show(sup, ck)} (step {sup.step}, reward v{fb.reward_version} "
            f"'{fb.reward_source}')")
