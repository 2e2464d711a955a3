"""The supervisor: one per run, the single PPO controller.

It starts the role workers through the run's backend (``engine.runtime.backend``; forks of a
fork server when every role is on the CPU), drives PPO steps (``engine.runtime.loop``), writes
the run directory, serves the control socket (``engine.runtime.ops``), honours
pause/stop/checkpoint/swap-reward at step boundaries (``engine.runtime.feedback`` for the
reward), survives the terminal going away (it runs in its own session when detached), and
cleans up shared memory and processes on every exit path.

Where each job lives:

- ``backend``: where workers run (``LocalBackend``, ``RayBackend``), chosen by ``BACKENDS``;
- ``pool``: the workers, the role endpoints, calls in flight and the watchdog;
- ``loop``: the steps, the step boundary and the failure policy;
- ``checkpoints``: writing and resuming from ``checkpoints/step_<N>``;
- ``feedback``: reward versions, swaps, the refit process, fresh pairs;
- ``ops``: the control socket's operations.

Detached start: ``python -m engine.runtime.start RUN_DIR [--resume]`` (it starts a CPU run's fork server,
then runs :func:`main` here).
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Optional

import torch

from engine import transport
from engine.config import RunConfig, resolve_role_model, validate_text
from engine.files import human_size, read_jsonl
from engine.procs import available_cores
from engine.runtime import ops
from engine.runtime.backend import (  # worker_groups, process_specs: public here too
    BackendError,
    StartContext,
    backend_spec,
    make_backend,
    process_specs,
    worker_groups,
)
from engine.runtime.calls import RoleCall
from engine.runtime.checkpoints import load_checkpoint
from engine.runtime.control import ControlServer, socket_path_for
from engine.runtime.driver import PPODriver, ThreadPlan, active_roles
from engine.runtime.feedback import FeedbackService
from engine.runtime.loop import RunLoop
from engine.runtime.pool import WorkerPool, memory_report  # noqa: F401 - memory_report: public here too
from engine.runtime.rundir import RunDir, reap_stale_checkpoint_tmp
from engine.runtime.stage import StepStage
from engine.runtime.worker import WorkerError


def make_kl_controller(cfg: RunConfig):
    from engine.algorithms import AdaptiveKLController, FixedKLController, PIKLController

    p = cfg.ppo
    if p.kl_controller == "adaptive":
        return AdaptiveKLController(p.kl_coef, p.target_kl, p.kl_horizon)
    if p.kl_controller == "pi":
        return PIKLController(p.kl_coef, p.target_kl, ki=p.kl_pi_ki, kp=p.kl_pi_kp,
                              coef_min=p.kl_coef_min, coef_max=p.kl_coef_max, band_gain=p.kl_pi_band_gain)
    return FixedKLController(p.kl_coef)


class Supervisor:
    def __init__(self, run_dir: Path, *, resume: bool = False, printer: Optional[Callable[[str], None]] = None):
        self.rd = RunDir(run_dir)
        self.resume = resume
        self.printer = printer or (lambda s: print(s, flush=True))
        self.owner_pid = os.getpid()
        self.run_tag = transport.new_run_tag()
        self.cfg: Optional[RunConfig] = None
        self.precision: dict = {}  # role -> what it runs in and why (engine.precision), once loaded
        self.server: Optional[ControlServer] = None
        self.step = 0
        self.state = "starting"
        self.last_metrics: dict = {}
        self.driver: Optional[PPODriver] = None
        # requests the loop honours at the step boundary (ops, signals), under ``cv``
        self.cv = threading.Condition()
        self.pause_req = False
        self.stop_req = False
        self.stop_reason = ""
        self.ckpt_req: list[threading.Event] = []
        self.ckpt_results: dict[int, dict] = {}
        self.paused_reason: Optional[str] = None
        self.pause_info: dict = {}  # role / phase / error of the fault that paused the run
        self.longest_s = 0.0        # longest step or checkpoint so far (stop grace)
        self._signals = 0
        self._first_signal_at = 0.0
        self._final: Optional[tuple[str, dict]] = None
        self._unwritten_state: dict = {}  # run.json fields a full disk kept from being written
        self._printer_broken = False
        self._print_lock = threading.Lock()  # workers' progress lines arrive on several threads
        self.pool = WorkerPool(self.log_safe, lambda: self.state == "starting")
        self.feedback = FeedbackService(self, self.cv)
        self.loop = RunLoop(self)
        # the stage of the step in progress (phase, tokens, mini-batches): the status reply has
        # it at once, run.json (for the console's header) at most once a second
        self.stage = StepStage(lambda st: self.write_state(step_stage=st))
        self._stage_thread: Optional[threading.Thread] = None

    # ---- logging & state ----------------------------------------------------------------
    def log(self, message: str, level: str = "INFO") -> None:
        try:
            line = self.rd.log_event(message, level)
        except OSError as e:  # a full disk must not turn a log line into a crash
            line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {level:<7} {message} [not in events.log: {e.strerror or e}]"
        self._print(line)
        self.broadcast({"event": "log", "line": line, "level": level})

    def log_safe(self, message: str, level: str = "INFO") -> None:
        try:
            self.log(message, level)
        except Exception:  # noqa: BLE001 - the watchdog must keep going
            pass

    def log_quiet(self, line: str, show: bool = True) -> None:
        """A step line: events.log and (``show``: logging.print_every) the terminal, not the
        socket's log stream."""
        try:
            self.rd.log_event(line)
        except OSError:
            pass
        if show:
            self._print(line)

    def broadcast(self, event: dict) -> None:
        """An event to every client of the control socket (none before it is up)."""
        if self.server:
            self.server.broadcast(event)

    def write_state(self, **fields) -> bool:
        """run.json, or (on a full disk) kept in memory and written at the next chance."""
        pending = {**self._unwritten_state, **fields}
        try:
            self.rd.write_state(**pending)
        except OSError as e:
            if not self._unwritten_state:
                self._print(f"could not write run.json ({e}); the socket's status is current")
            self._unwritten_state = pending
            return False
        self._unwritten_state = {}
        return True

    def flush_state(self) -> None:
        """run.json fields a full disk kept back, written now if they can be."""
        if self._unwritten_state:
            self.write_state()

    def _print(self, line: str) -> None:
        """Print through ``printer``; if that fails (the terminal is gone: EIO, EPIPE), stop
        printing and carry on: the run directory has everything."""
        if self._printer_broken:
            return
        try:
            with self._print_lock:  # print() writes the line and its newline separately
                self.printer(line)
        except Exception as e:  # noqa: BLE001 - output is never a reason to stop training
            self._printer_broken = True
            try:
                self.rd.log_event(f"printing to the terminal failed ({type(e).__name__}: {e}); the run "
                                  f"goes on without printing; watch it with: rlhf-console attach "
                                  f"{self.rd.name}", "WARNING")
            except OSError:
                pass

    def set_state(self, state: str, **extra) -> None:
        self.state = state
        self.write_state(state=state, step=self.step, **extra)
        self.broadcast({"event": "state", "state": state, "step": self.step,
                        "message": extra.get("message") or extra.get("failure") or ""})

    def finish(self, state: str, **extra) -> None:
        """Record the final state; run.json gets it only after every process and segment of
        the run is gone, so a client that sees a final state may restart the run at once."""
        self.state = state
        self._final = (state, extra)
        self.broadcast({"event": "state", "state": state, "step": self.step,
                        "message": extra.get("message") or extra.get("failure") or ""})

    def status(self) -> dict:
        st = self.rd.read_state()
        return {
            "ok": True, "state": self.state, "step": self.step,
            "steps": self.cfg.run.steps if self.cfg else None,
            "run_dir": str(self.rd.path), "name": self.rd.name,
            "pids": st.get("pids", {}), "supervisor_pid": self.owner_pid,
            "pause_requested": self.pause_req, "stop_requested": self.stop_req,
            "paused_reason": self.paused_reason, "pause_info": self.pause_info or None,
            "reward_source": self.feedback.reward_source,
            "reward_version": self.feedback.reward_version,
            "refit": self.feedback.refit_status(),
            "last_metrics": self.last_metrics,
            "step_stage": self.stage.current(),
            "precision": self.precision,
        }

    # ---- control socket and signals --------------------------------------------------------
    def handle(self, req: dict) -> dict:
        return ops.handle(self, req)

    def arm_stop_grace(self, grace_s=None) -> float:
        return self.pool.arm_stop_grace(self.longest_s, grace_s)

    def _publish_stage(self) -> None:
        """run.json's ``step_stage``, the newest at most once a second (StepStage.flush)."""
        while not self.pool.stopping.wait(0.25):
            try:
                self.stage.flush()
            except Exception as e:  # noqa: BLE001 - the header's stage is a nicety
                self.log_safe(f"step stage not published: {type(e).__name__}: {e}", "WARNING")

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_term(signum, frame):
            now = time.monotonic()
            if self._signals and now - self._first_signal_at < 0.25:
                # the same request delivered twice (``timeout -s INT`` signals the child and
                # then its process group): not a second Ctrl-C
                return
            self._signals += 1
            if self._signals > 1:
                raise KeyboardInterrupt
            self._first_signal_at = now
            name = signal.Signals(signum).name
            with self.cv:
                self.stop_req = True
                self.stop_reason = f"{name} received"
                self.arm_stop_grace()
                self.cv.notify_all()
            try:
                self.rd.log_event(f"{name} received: stopping at the end of the current step (again to stop now)", "WARNING")
            except OSError:
                pass

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        try:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a dropped SSH session never stops training
        except (AttributeError, ValueError):  # pragma: no cover
            pass

    # ---- lifecycle ----------------------------------------------------------------------
    def run(self) -> int:
        code = 1
        try:
            code = self._run()
        except KeyboardInterrupt:
            self.finish("stopped", message="interrupted")
            self.log_safe("interrupted again: stopping now without a final checkpoint", "WARNING")
            code = 130
        except BaseException as e:  # noqa: BLE001 - recorded, then cleaned up
            # the cause goes into run.json first: logging or printing may fail too (a lost
            # terminal, a full disk) and must not leave "supervisor ended unexpectedly"
            if isinstance(e, WorkerError) and self.pool.killed_on_stop:
                code = self.loop.stopped_by_kill()
            elif isinstance(e, WorkerError) and (self.pool.timeout_failure or e.kind == "died"):
                code = self.loop.fail(e)
            else:
                self.finish("failed", failure=f"supervisor: {type(e).__name__}: {e}")
                code = 1
                try:
                    (self.rd.path / "supervisor.traceback").write_text(traceback.format_exc())
                except OSError:
                    pass
                self.log_safe(f"supervisor error: {type(e).__name__}: {e}", "ERROR")
        finally:
            self._teardown()
        return code

    def _load_config(self) -> RunConfig:
        res = validate_text(self.rd.config.read_text(), str(self.rd.config))
        if res.config is None:
            raise RuntimeError("invalid config: " + "; ".join(str(i) for i in res.issues))
        return res.config

    def _run(self) -> int:
        cfg = self._open()
        spec = backend_spec(cfg.runtime.backend)
        devices = None
        if spec.plans_devices:  # other backends (Ray) assign the GPUs of their workers themselves
            from engine.runtime.placement import PlacementError, device_plan, format_plan

            try:
                devices = device_plan(cfg)
            except PlacementError as e:
                self.log(f"no device plan: {e}", "ERROR")
                self.finish("failed", failure=f"device plan: {e}")
                return 1
        n = len(process_specs(cfg, devices)) if devices else len(worker_groups(cfg))
        self.log(f"run {self.rd.name}: starting {n} {spec.workers} for "
                 f"{', '.join(active_roles(cfg))} ({available_cores()} cores)"
                 + ("; the reference is the LoRA actor's base (adapters disabled)"
                    if "reference" not in active_roles(cfg) else "")
                 + (f"; ppo.estimator {cfg.ppo.estimator}: no critic" if "critic" not in active_roles(cfg) else ""))
        if devices:
            self.log(format_plan(devices, cfg))
            self.rd.write_state(devices=devices)
        torch.manual_seed(cfg.run.seed)
        random.seed(cfg.run.seed)

        # the actor's tokenizer and the prompts are read on another core while the workers load;
        # an error there is raised where it always was, once the workers are up
        prompts = _in_thread("prompts", lambda: _tokenizer_and_prompts(cfg))
        plan = ThreadPlan.make(cfg, devices=devices)
        code = self._start_workers(cfg, devices, plan)
        if code is not None:
            return code
        tokenizer, stream = prompts.result()
        try:  # after the prompts' thread is done: nothing else runs while it times the machine
            self._set_precision(cfg, devices)
        except WorkerError as e:
            self.log(f"could not set the roles' precision: {e}", "ERROR")
            self.finish("failed", failure=f"precision: {e}")
            return 1
        self.feedback.start(tokenizer, list(stream.prompts))
        kl_ctl = make_kl_controller(cfg)
        driver = self.driver = PPODriver(cfg, self.pool.endpoints, tokenizer, kl_ctl, plan)
        driver.on_stage = self.stage.phase
        self._task_answers(driver, tokenizer)

        if self.resume:
            ck = self.rd.latest_checkpoint()
            if ck is None:
                raise RuntimeError(f"no checkpoint to resume from in {self.rd.checkpoints}")
            load_checkpoint(self, ck, stream, kl_ctl)
            driver.monitors.restore(read_jsonl(self.rd.metrics))
        self.set_state("running", pids={h.label: h.pid for h in self.pool.workers})
        return self.loop.run(driver, stream, kl_ctl)

    def _open(self) -> RunConfig:
        """Signals, the config, stale leftovers reaped, the control socket, the arena, run.json."""
        self._install_signals()
        self.cfg = cfg = self._load_config()
        stale = transport.reap_stale_segments()
        if stale:
            self.log(f"removed {len(stale)} stale shared-memory segment(s) of runs whose processes are gone", "WARNING")
        for folder, size in reap_stale_checkpoint_tmp([self.rd], keep_pid=self.owner_pid):
            self.log(f"removed the half-written checkpoint {folder.relative_to(self.rd.path)} "
                     f"({human_size(size)}) left by a supervisor that is gone", "WARNING")
        sock = socket_path_for(self.rd.path)
        self.server = ControlServer(sock, self.handle, hello=self.status)
        self.server.start()
        self.pool.arena = transport.TensorArena(self.owner_pid, self.run_tag, "driver")
        self.feedback.reward_source = cfg.reward.source
        self.rd.write_state(
            state="starting", supervisor_pid=self.owner_pid, socket=str(sock), name=self.rd.name,
            steps=cfg.run.steps, run_tag=self.run_tag, reward_source=cfg.reward.source,
            created=self.rd.read_state().get("created", time.time()), failure=None,
            backend=cfg.runtime.backend,
        )
        return cfg

    def _start_workers(self, cfg: RunConfig, devices, plan: ThreadPlan) -> Optional[int]:
        """Start the workers through the backend and wait until every one has loaded; an exit
        code when the run ends here."""
        t0 = time.perf_counter()
        pool = self.pool
        pool.backend = make_backend(cfg, self.log)
        ctx = StartContext(
            cfg=cfg, devices=devices, plan=plan, owner_pid=self.owner_pid, run_tag=self.run_tag,
            log_path=str(self.rd.supervisor_log),
            on_stage=lambda label, m: self.stage.progress(m.get("role"), m.get("op"), m.get("done"),
                                                          m.get("total"), m.get("unit")),
            reinstall_signals=self._install_signals)
        try:
            pool.backend.start(ctx, pool.add)
        except BackendError as e:
            self.log(str(e), "ERROR")
            self.finish("failed", failure=f"{cfg.runtime.backend}: {e}")
            return 1
        pool.index()
        self.rd.write_state(pids=pool.pids())
        threading.Thread(target=pool.watchdog, args=(float(cfg.runtime.worker_timeout_s),),
                         name="watchdog", daemon=True).start()
        self._stage_thread = threading.Thread(target=self._publish_stage, name="stage", daemon=True)
        self._stage_thread.start()
        for h in pool.workers:
            try:
                h.wait_ready()
            except WorkerError as e:
                if pool.killed_on_stop:
                    return self.loop.stopped_by_kill()
                reason = e.reply.get("error") or str(e)
                self.log(f"worker '{h.label}' failed to load: {reason}", "ERROR")
                self.finish("failed", failure=f"{h.label} (load): {reason}")
                return 1
        self.log(f"all roles loaded in {time.perf_counter() - t0:.1f}s")
        pool.backend.after_ready(pool.workers, self.rd.write_state)
        return None

    def _set_precision(self, cfg: RunConfig, devices) -> None:
        """Resolve each model role's precision (``auto`` is measured here once per machine, on
        the idle machine now that every worker has loaded), tell the workers, and record it:
        one line per role in events.log and a ``precision`` object in run.json."""
        from engine.precision import plan

        t0 = time.perf_counter()
        chosen = plan(cfg, devices, progress=self.log)
        for role, rp in chosen.items():
            ep = self.pool.endpoints.get(role)
            if ep is not None and rp.autocast:
                ep.submit(RoleCall(role, "precision", args={"autocast": rp.autocast})).result()
            self.log(rp.line())
        took = time.perf_counter() - t0
        if took > 0.5:  # it measured (a cached calibration takes milliseconds)
            self.log(f"precision: chosen in {took:.1f}s")
        self.precision = {r: rp.to_json() for r, rp in chosen.items()}
        self.rd.write_state(precision=self.precision)

    def _task_answers(self, driver: PPODriver, tokenizer) -> None:
        """A verifiable task (bundled:arithmetic): each prompt's reference answer for the reward,
        and the held-out prompts that eval.every evaluates."""
        from engine.tasks import task_rows

        cfg, d = self.cfg, self.cfg.data
        rows = task_rows(d.source, "train")
        if rows is None:
            return
        from engine.data import format_prompts

        def fmt(texts):
            return format_prompts(texts, tokenizer, True) if d.chat_template else list(texts)

        driver.answers = dict(zip(fmt([r["prompt"] for r in rows]), [r["answer"] for r in rows]))
        if cfg.eval.every:
            held = task_rows(d.source, "heldout")[: cfg.eval.num_prompts]
            driver.heldout = (fmt([r["prompt"] for r in held]), [r["answer"] for r in held])

    # ---- teardown ------------------------------------------------------------------------
    def _teardown(self) -> None:
        self.pool.stopping.set()
        if self._stage_thread is not None:  # its last write must come before the final state's
            self._stage_thread.join(timeout=5.0)
        self.feedback.fail_boundary_jobs(f"the run ended ({self.state})")
        try:
            self.feedback.stop_refit()
        except Exception:  # noqa: BLE001 - teardown goes on
            pass
        self.pool.shutdown(self.rd.log_event)
        removed = transport.unlink_run_segments(self.owner_pid)
        if removed:
            self.rd.log_event(f"removed {len(removed)} shared-memory segment(s) left by workers", "INFO")
        if self.server is not None:
            try:
                self.server.close()
            except Exception:  # noqa: BLE001
                pass
        state, extra = self._final or ("failed", {"failure": "supervisor ended unexpectedly"})
        if state != "paused":
            extra = {"pause_info": None, **extra}
        self.write_state(state=state, step=self.step, step_stage=None, **extra)


def _tokenizer_and_prompts(cfg: RunConfig):
    from engine.data import prompt_stream
    from engine.models import load_tokenizer

    tokenizer = load_tokenizer(resolve_role_model(cfg, "actor"))
    return tokenizer, prompt_stream(cfg, tokenizer)


def _in_thread(name: str, fn: Callable[[], object]) -> Future:
    """``fn()`` in a daemon thread; its result, or its exception, in the returned future."""
    fut: Future = Future()

    def run() -> None:
        try:
            fut.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - raised by fut.result() in the caller
            fut.set_exception(e)

    threading.Thread(target=run, name=name, daemon=True).start()
    return fut


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.runtime.supervisor")
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args(argv)
    return Supervisor(Path(a.run_dir), resume=a.resume).run()


if __name__ == "__main__":
    sys.exit(main())
