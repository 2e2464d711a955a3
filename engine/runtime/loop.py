"""The run loop: PPO steps until ``run.steps``, and what happens between two of them.

At every step boundary the loop writes a due checkpoint, answers checkpoint requests, runs the
work queued for the boundary (reward swaps, pairs: ``FeedbackService``), and honours pause and
stop. Its failure policy:

- a role's error, or a non-finite value, in a step: the step is not applied, the run pauses
  (``resume`` retries the same batch);
- a step that cannot be recorded (a full disk): the same;
- a failed checkpoint: pause, and the checkpoint is retried first on resume;
- a worker that died or ran past ``runtime.worker_timeout_s``, or an update that broke the
  roles' consistency: the run fails;
- a worker killed because it did not answer a stop: the run stops without a stop checkpoint.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from engine.records import MetricsRow, Sample
from engine.runtime.checkpoints import save_checkpoint
from engine.runtime.driver import PPODriver, UpdateConsistencyError, format_step_line
from engine.runtime.pool import WorkerDied
from engine.runtime.role_base import NonFiniteError
from engine.runtime.worker import WorkerError

if TYPE_CHECKING:  # pragma: no cover
    from engine.runtime.supervisor import Supervisor


class RunLoop:
    """The steps of one run (``run``) and its failure policy, on the supervisor ``sup``."""

    def __init__(self, sup: "Supervisor"):
        self.sup = sup
        self.driver: Optional[PPODriver] = None
        self.stream = None
        self.kl_ctl = None
        self.stream_state_before: Optional[dict] = None  # the data stream before a pending batch
        self._audit_warned = False

    def stream_state(self) -> dict:
        """The data stream's state for a checkpoint: a batch not applied yet is not consumed."""
        return self.stream_state_before or self.stream.state_dict()

    def save_checkpoint(self) -> dict:
        return save_checkpoint(self.sup, self)

    # ---- the loop ------------------------------------------------------------------------
    def run(self, driver: PPODriver, stream, kl_ctl) -> int:
        """Steps until ``run.steps``, a stop, or a failure; the run's exit code."""
        self.driver, self.stream, self.kl_ctl = driver, stream, kl_ctl
        tb = self._tensorboard()
        try:
            code = self._steps(tb)
        finally:
            if tb is not None:
                try:
                    tb.close()
                except Exception:  # noqa: BLE001
                    pass
        return self._end() if code is None else code

    def _steps(self, tb) -> Optional[int]:
        """The step loop; an exit code when the run ends inside it, None when it leaves the loop."""
        sup, total = self.sup, self.sup.cfg.run.steps
        ckpt_due = False  # a checkpoint (periodic or final) that must be written before going on
        batch_prompts: Optional[list[str]] = None  # kept until its step is applied: resume retries it
        while True:
            if ckpt_due or sup.step >= total:  # before a pause takes effect
                try:
                    res = self.save_checkpoint()
                except WorkerError as e:  # a role died while writing its part
                    return self.fail(e)
                if res["ok"]:
                    ckpt_due = False
                else:
                    self.pause_for(f"checkpoint at step {sup.step} failed: {res['error']}; "
                                   f"free space (or fix the permission) and resume to retry",
                                   phase="checkpoint", error=res["error"])
            try:
                if self._boundary():
                    return None
            except WorkerError as e:
                return self.fail(e)
            if ckpt_due:
                continue  # resumed after a failed checkpoint: retry it first
            if sup.step >= total:
                return None
            if batch_prompts is None:
                self.stream_state_before = self.stream.state_dict()
                batch_prompts = self.stream.next_batch()
            outcome = self._step(batch_prompts, tb)
            if outcome == "break":
                return None
            if isinstance(outcome, int) and not isinstance(outcome, bool):
                return outcome
            if outcome == "retry":
                continue
            batch_prompts = None
            ce = sup.cfg.checkpoint.every
            if ce and sup.step % ce == 0:
                ckpt_due = True

    def _step(self, batch_prompts: list[str], tb):
        """One step: "applied", "retry" (not applied, the run pauses), "break" (a stop killed a
        worker), or an exit code."""
        sup, driver, total = self.sup, self.driver, self.sup.cfg.run.steps
        t_step = time.monotonic()
        try:
            metrics, samples = driver.step(sup.step + 1, batch_prompts, commit=False)
        except (WorkerError, NonFiniteError) as e:
            if sup.pool.killed_on_stop:  # stop: a worker that did not answer was killed
                return "break"
            if isinstance(e, WorkerError) and e.kind in ("died", "timeout"):
                return self.fail(e)
            self.pause_on_step_error(e)
            return "retry"
        except UpdateConsistencyError as e:
            return self.fail(e)
        sup.longest_s = max(sup.longest_s, time.monotonic() - t_step)
        sup.stage.phase(sup.step + 1, "recording")
        metrics["memory"] = sup.pool.memory()
        try:
            self._record_step(metrics, samples)
        except OSError as e:
            self.pause_for(f"step {sup.step + 1} not applied: could not record it ({e}); "
                           f"free space (or fix the permission) and resume to retry",
                           phase="record", error=str(e))
            return "retry"
        except UpdateConsistencyError as e:
            return self.fail(e)
        except WorkerError as e:
            return self.fail(e)
        self.stream_state_before = None
        self._log_monitors(metrics)
        if tb is not None:
            try:
                self._tb_write(tb, metrics, samples)
            except Exception as e:  # noqa: BLE001 - TensorBoard is an extra
                sup.log(f"tensorboard write failed: {e}", "WARNING")
        line = format_step_line(metrics, total)
        sup.log_quiet(line, show=sup.step % sup.cfg.logging.print_every == 0 or sup.step == total)
        sup.broadcast({"event": "step", "metrics": metrics})
        sup.broadcast({"event": "samples", "step": sup.step, "samples": samples})
        return "applied"

    def _end(self) -> int:
        """Out of the loop: stopped (with its checkpoint) or finished (with the final one)."""
        sup, cfg = self.sup, self.sup.cfg
        total = cfg.run.steps
        if sup.pool.killed_on_stop:
            return self.stopped_by_kill()
        if sup.stop_req and sup.step < total:
            msg = sup.stop_reason
            if cfg.checkpoint.on_stop and sup.step > 0:
                try:
                    res = self.save_checkpoint()
                except WorkerError as e:
                    return self.fail(e)
                if not res["ok"]:
                    latest = sup.rd.latest_checkpoint()
                    msg += (f"; the stop checkpoint at step {sup.step} failed ({res['error']}): resume "
                            f"restarts from {latest.name if latest else 'nothing'}")
                    sup.log(f"stopped at step {sup.step}/{total} without its checkpoint: {res['error']}", "ERROR")
                    sup.finish("stopped", message=msg, checkpoint_error=res["error"])
                    return 0
            sup.log(f"stopped at step {sup.step}/{total} ({sup.stop_reason})")
            sup.finish("stopped", message=msg)
            return 0
        try:
            res = self.save_checkpoint()  # "already saved" unless a stop cut in first
        except WorkerError as e:
            return self.fail(e)
        if not res["ok"]:
            latest = sup.rd.latest_checkpoint()
            msg = (f"{sup.stop_reason or 'stopped'} with all {total} steps done, but the final checkpoint "
                   f"failed ({res['error']}): resume restarts from {latest.name if latest else 'nothing'}")
            sup.log(msg, "ERROR")
            sup.finish("stopped", message=msg, checkpoint_error=res["error"])
            return 0
        sup.log(f"finished {sup.step}/{total} steps")
        sup.finish("finished")
        return 0

    # ---- the step boundary ---------------------------------------------------------------
    def _boundary(self) -> bool:
        """Honour checkpoint / pause / stop requests between steps. True means stop."""
        sup = self.sup
        sup.stage.clear()  # no step in progress until the driver starts the next
        while True:
            with sup.cv:
                ckpts, sup.ckpt_req = sup.ckpt_req, []
            if ckpts:
                res = self.save_checkpoint()
                for ev in ckpts:
                    sup.ckpt_results[id(ev)] = res
                    ev.set()
                if not res["ok"]:
                    self.pause_for(f"checkpoint at step {sup.step} failed: {res['error']}",
                                   phase="checkpoint", error=res["error"])
            sup.flush_state()
            sup.feedback.run_boundary_jobs()
            sup.feedback.maybe_auto_refit()
            with sup.cv:
                if sup.stop_req:
                    return True
                if not sup.pause_req:
                    if sup.state == "paused":
                        sup.log(f"resumed at step {sup.step}")
                        sup.set_state("running", message=None, pause_info=None)
                    return False
                if sup.state != "paused":
                    sup.set_state("paused", message=sup.paused_reason or "paused by request",
                                  pause_info=sup.pause_info or None)
                    sup.log(f"paused after step {sup.step}" + (f": {sup.paused_reason}" if sup.paused_reason else ""))
                sup.cv.wait(timeout=0.5)
            dead = sup.pool.dead()
            if dead:
                raise WorkerDied(dead[0])

    def _record_step(self, metrics: dict, samples: list[dict]) -> None:
        """Append the step's metrics and samples and update run.json, then commit the roles'
        updates. If a write fails (full disk, permission), the files are cut back to where they
        were, the updates are rolled back and OSError is raised: the step is not applied."""
        sup, driver = self.sup, self.driver
        metrics["reward_version"] = sup.feedback.reward_version
        try:
            sup.rd.record_step(metrics, samples, step=sup.step + 1, last_score=metrics["score_mean"],
                               last_kl=metrics["kl"])
        except OSError:
            driver.rollback()
            raise
        driver.commit()
        sup.step += 1
        sup.last_metrics = metrics

    def _log_monitors(self, metrics: dict) -> None:
        """events.log: a reward-hacking monitor that starts tripping (which, value, threshold) or
        comes back under its threshold; a failing audit scorer."""
        from engine.monitors import describe_alert

        sup, driver = self.sup, self.driver
        for a in driver.monitors.started:
            sup.log(describe_alert(a, sup.step), "WARNING")
        for name in driver.monitors.cleared:
            sup.log(f"reward-hacking monitor '{name}' back under its threshold at step {sup.step}")
        if metrics.get("audit_error") and not self._audit_warned:
            self._audit_warned = True
            sup.log(f"audit scorer '{sup.cfg.reward.audit}' failed: {metrics['audit_error']}; "
                    f"steps go on without audit scores while it fails", "WARNING")

    # ---- failure policy ------------------------------------------------------------------
    def pause_for(self, reason: str, *, role: Optional[str] = None, phase: Optional[str] = None,
                  error: Optional[str] = None) -> None:
        """Pause at this boundary because of a fault; run.json, events and status name it."""
        sup = self.sup
        sup.log(reason + "; pausing", "ERROR")
        with sup.cv:
            sup.pause_req = True
            sup.paused_reason = reason
            sup.pause_info = {"role": role, "phase": phase, "error": error, "step": sup.step + 1}
            if sup.state == "paused":  # already paused (a retry failed again): say so now
                sup.set_state("paused", message=reason, pause_info=sup.pause_info)

    def pause_on_step_error(self, e: BaseException) -> None:
        sup = self.sup
        reply = getattr(e, "reply", {}) or {}
        role = getattr(e, "role", None) or reply.get("role") or "+".join(getattr(e, "roles", []) or ["?"])
        phase = getattr(e, "phase", None) or reply.get("phase") or "?"
        err = reply.get("error") or str(e)
        if reply.get("trace"):
            try:
                (sup.rd.path / "worker.traceback").write_text(reply["trace"])
            except OSError:
                pass
        if isinstance(e, NonFiniteError) or getattr(e, "kind", None) == "nonfinite":
            reason = f"step {sup.step + 1} not applied: {err}"  # err already names role and phase
        else:
            reason = f"step {sup.step + 1} not applied: error in {role} ({phase}): {err}"
        self.pause_for(reason + "; resume retries the step", role=role, phase=phase, error=err)

    def stopped_by_kill(self) -> int:
        sup = self.sup
        killed = "; ".join(r["message"] for r in sup.pool.killed_on_stop)
        ck = sup.rd.latest_checkpoint()
        kept = f"resume continues from {ck.relative_to(sup.rd.path)}" if ck else "no checkpoint was written"
        msg = (f"{sup.stop_reason}: {killed}; the step in progress was not applied and no stop "
               f"checkpoint was written ({kept})")
        sup.log(f"stopped at step {sup.step}/{sup.cfg.run.steps if sup.cfg else '?'}: {msg}", "WARNING")
        sup.finish("stopped", message=msg, killed=[r["label"] for r in sup.pool.killed_on_stop])
        return 0

    def fail(self, e: BaseException) -> int:
        sup = self.sup
        t = sup.pool.timeout_failure
        if t is not None:  # the watchdog killed a worker that ran past runtime.worker_timeout_s
            failure = f"{t['label']}: {t['message']}"
            sup.log(f"worker timeout: {failure}; stopping the other workers", "ERROR")
            sup.finish("failed", failure=failure, failed_role=t["role"], failed_op=t["op"],
                       timeout_s=t["timeout_s"])
            return 1
        reply = getattr(e, "reply", {}) or {}
        roles = getattr(e, "roles", None) or ["?"]
        cause = reply.get("error") or str(e)
        if reply.get("trace"):
            (sup.rd.path / "worker.traceback").write_text(reply["trace"])
        failure = f"{'+'.join(roles)}: {cause}"
        sup.log(f"worker failure: {failure}; stopping the other workers", "ERROR")
        sup.finish("failed", failure=failure, failed_role="+".join(roles))
        return 1

    # ---- tensorboard ---------------------------------------------------------------------
    def _tensorboard(self):
        sup = self.sup
        lg = sup.cfg.logging
        if not lg.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as e:  # noqa: BLE001
            sup.log(f"tensorboard disabled: {e}", "WARNING")
            return None
        path = Path(lg.tensorboard_dir) / sup.rd.name if lg.tensorboard_dir else sup.rd.path / "tensorboard"
        return SummaryWriter(log_dir=str(path))

    def _tb_write(self, tb, m: dict, samples: list[dict]) -> None:
        row = MetricsRow.from_dict(m)
        s = row.step
        for k, v in row.values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                tb.add_scalar(f"ppo/{k}", v, s)
        for k, v in row.timings.items():
            tb.add_scalar(f"time/{k}", v, s)
        if samples:
            shown = [Sample.from_dict(x) for x in samples[:4]]
            text = "\n\n".join(f"**{x.score:.3f}** {x.prompt} ⟶ {x.response}" for x in shown)
            tb.add_text("samples", text, s)
        tb.flush()
