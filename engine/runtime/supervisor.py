"""The supervisor: one per run, the single PPO controller.

It starts the role workers (``spawn``; forks of a fork server when every role is on the CPU),
drives PPO steps, writes the run directory, serves the control socket, honours
pause/stop/checkpoint/swap-reward at step boundaries, survives the terminal going away (it runs
in its own session when detached), and cleans up shared memory and processes on every exit path.

Detached start: ``python -m engine.runtime.supervisor RUN_DIR [--resume]``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
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
from engine.config import RunConfig, dump_config, resolve_role_model, validate_text
from engine.files import append_jsonl, atomic_write_json, atomic_write_text, durable_rename, human_size, read_jsonl
from engine.procs import available_cores
from engine.records import MetricsRow, Sample
from engine.runtime.control import ControlServer, socket_path_for
from engine.runtime.driver import (
    ROLES,
    PPODriver,
    ThreadPlan,
    UpdateConsistencyError,
    active_roles,
    format_step_line,
)
from engine.runtime.ranks import group_world_size
from engine.runtime.roles import NonFiniteError, capture_rng, restore_rng
from engine.runtime.rundir import RunDir, reap_stale_checkpoint_tmp, write_error_cause
from engine.runtime.stage import StepStage
from engine.runtime.worker import WorkerError, WorkerHandle, worker_context


def worker_groups(cfg: RunConfig) -> list[list[str]]:
    """The roles of each worker process; a role that gets no worker (a LoRA actor's reference,
    see ``active_roles``) is left out, and a group left empty by that is no process."""
    c = cfg.runtime.colocate
    active = active_roles(cfg)
    if c is True:
        groups = [list(ROLES)]
    elif not c:
        groups = [[r] for r in ROLES]
    else:
        groups = [list(g) for g in c]
    groups = [[r for r in g if r in active] for g in groups]
    return [g for g in groups if g]


def world_size(cfg: RunConfig, role: str) -> int:
    return group_world_size(cfg, [role])


def process_specs(cfg: RunConfig, plan: dict[str, list[str]]) -> list[tuple[list[str], int, RunConfig]]:
    """One ``(roles, rank, config)`` per worker process: a colocation group is one process,
    a role with world_size N is N processes (ranks 0..N-1). Each process's config carries its
    planned device in ``<role>.device`` (and no runtime.devices mapping)."""
    import dataclasses

    out = []
    base = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, devices=None))
    for group in worker_groups(cfg):
        W = group_world_size(cfg, group)
        for rank in range(W):
            c = base
            for r in group:
                c = dataclasses.replace(c, **{r: dataclasses.replace(getattr(c, r), device=plan[r][rank])})
            out.append((group, rank, c))
    return out


def free_tcp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_kl_controller(cfg: RunConfig):
    from engine.algorithms import AdaptiveKLController, FixedKLController, PIKLController

    p = cfg.ppo
    if p.kl_controller == "adaptive":
        return AdaptiveKLController(p.kl_coef, p.target_kl, p.kl_horizon)
    if p.kl_controller == "pi":
        return PIKLController(p.kl_coef, p.target_kl, ki=p.kl_pi_ki, kp=p.kl_pi_kp,
                              coef_min=p.kl_coef_min, coef_max=p.kl_coef_max, band_gain=p.kl_pi_band_gain)
    return FixedKLController(p.kl_coef)


class StopRun(Exception):
    pass


# Role calls that runtime.worker_timeout_s does not cover: checkpoint save/load (disk-bound, they
# grow with the model) and a reward swap (it may load or train a model). Loading the roles at
# start-up is not a call at all (wait_ready), so downloads, conversion and first-use reward-model
# training are never cut short either.
UNTIMED_OPS = ("save", "load", "swap")
STOP_GRACE_MIN_S = 60.0  # `stop` kills workers that have not answered after max(this, 3 x the longest step)


class Supervisor:
    def __init__(self, run_dir: Path, *, resume: bool = False, printer: Optional[Callable[[str], None]] = None):
        self.rd = RunDir(run_dir)
        self.resume = resume
        self.printer = printer or (lambda s: print(s, flush=True))
        self.owner_pid = os.getpid()
        self.run_tag = transport.new_run_tag()
        self.cfg: Optional[RunConfig] = None
        self.workers: list = []  # WorkerHandle (local) or RayWorkerHandle (ray): same interface
        self.by_role: dict = {}
        self.ray = None  # engine.runtime.ray_backend.RayBackend when runtime.backend is ray
        self.endpoints: dict = {}  # role -> endpoint the driver calls (a RoleGroup over ranks)
        self.precision: dict = {}  # role -> what it runs in and why (engine.precision), once loaded
        self.arena: Optional[transport.TensorArena] = None
        self.server: Optional[ControlServer] = None
        self.step = 0
        self.state = "starting"
        self.paused_reason: Optional[str] = None
        self.last_metrics: dict = {}
        self._audit_warned = False
        self.driver: Optional[PPODriver] = None
        self.reward_source = ""
        self._cv = threading.Condition()
        self._pause_req = False
        self._stop_req = False
        self._stop_reason = ""
        self._ckpt_req: list[threading.Event] = []
        self._ckpt_results: dict[int, dict] = {}
        self._signals = 0
        self._first_signal_at = 0.0
        self._final: Optional[tuple[str, dict]] = None
        self.pause_info: dict = {}  # role / phase / error of the fault that paused the run
        self._unwritten_state: dict = {}  # run.json fields a full disk kept from being written
        self._stream_state_before: Optional[dict] = None  # the data stream before a pending batch
        self._inflight: dict[int, dict] = {}  # role calls not answered yet (watchdog)
        self._inflight_lock = threading.Lock()
        self._watch_stop = threading.Event()
        self._aborted: set = set()          # labels of workers killed by the watchdog
        self._timeout_failure: Optional[dict] = None
        self._killed_on_stop: list[dict] = []
        self._stop_deadline: Optional[float] = None
        self._stop_grace: Optional[float] = None
        self._longest_s = 0.0               # longest step or checkpoint so far (stop grace)
        self._printer_broken = False
        self._print_lock = threading.Lock()  # workers' progress lines arrive on several threads
        # human feedback: the reward version scoring each step, swaps and pair requests waiting for
        # the step boundary, the refit process (one at a time)
        self.reward_version = 0
        self._boundary_q: list[dict] = []
        self._refit: Optional[dict] = None
        self._refit_lock = threading.Lock()
        self._judgements_at_refit = 0
        self._labels_seen: tuple = (-1, 0)   # (labels.jsonl size, judgement rows) for every_labels
        self._prompts: list[str] = []
        self._tokenizer = None
        self._pairs_made = 0
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
        if self.server:
            self.server.broadcast({"event": "log", "line": line, "level": level})

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
        if self.server:
            self.server.broadcast({"event": "state", "state": state, "step": self.step,
                                   "message": extra.get("message") or extra.get("failure") or ""})

    def _finish(self, state: str, **extra) -> None:
        """Record the final state; run.json gets it only after every process and segment of
        the run is gone, so a client that sees a final state may restart the run at once."""
        self.state = state
        self._final = (state, extra)
        if self.server:
            self.server.broadcast({"event": "state", "state": state, "step": self.step,
                                   "message": extra.get("message") or extra.get("failure") or ""})

    def status(self) -> dict:
        st = self.rd.read_state()
        return {
            "ok": True, "state": self.state, "step": self.step,
            "steps": self.cfg.run.steps if self.cfg else None,
            "run_dir": str(self.rd.path), "name": self.rd.name,
            "pids": st.get("pids", {}), "supervisor_pid": self.owner_pid,
            "pause_requested": self._pause_req, "stop_requested": self._stop_req,
            "paused_reason": self.paused_reason, "pause_info": self.pause_info or None,
            "reward_source": self.reward_source,
            "reward_version": self.reward_version,
            "refit": self._refit_status(),
            "last_metrics": self.last_metrics,
            "step_stage": self.stage.current(),
            "precision": self.precision,
        }

    # ---- control socket ----------------------------------------------------------------
    def handle(self, req: dict) -> dict:
        op = req["op"]
        if op in ("status", "ping"):
            return self.status()
        with self._cv:
            if self.state in ("finished", "failed", "stopped"):
                return {"ok": False, "error": f"the run is {self.state}"}
            if op == "pause":
                if self.state == "paused":
                    return {"ok": True, "pending": False, "message": "already paused"}
                self._pause_req = True
                self._cv.notify_all()
                self.log(f"pause requested: takes effect at the end of step {self.step + 1}")
                return {"ok": True, "pending": True, "message": f"pausing at the end of step {self.step + 1}"}
            if op == "resume":
                if self.state != "paused" and not self._pause_req:
                    return {"ok": False, "error": f"not paused (state {self.state})"}
                self._pause_req = False
                self.paused_reason = None
                self.pause_info = {}
                self._cv.notify_all()
                return {"ok": True, "pending": False, "message": "resuming"}
            if op == "stop":
                self._stop_req = True
                self._stop_reason = str(req.get("reason") or "stop requested")
                try:
                    grace = self._arm_stop_grace(req.get("grace_s"))
                except (TypeError, ValueError):
                    return {"ok": False, "error": f"grace_s must be a number of seconds > 0; got {req.get('grace_s')!r}"}
                self._cv.notify_all()
                self.log(f"stop requested: stopping at the end of the current step (with a checkpoint); "
                         f"a worker that has not answered within {grace:.0f}s is killed")
                return {"ok": True, "pending": True,
                        "message": f"stopping at the end of the current step (workers that do not answer "
                                   f"within {grace:.0f}s are killed)"}
            if op == "checkpoint":
                ev = threading.Event()
                self._ckpt_req.append(ev)
                self._cv.notify_all()
        if op == "checkpoint":
            if not req.get("wait", False):
                return {"ok": True, "pending": True, "message": "checkpoint at the end of the current step"}
            ev.wait(float(req.get("wait_timeout", 600)))
            res = self._ckpt_results.get(id(ev))
            return res or {"ok": False, "error": "checkpoint did not complete in time"}
        if op == "swap_reward":
            return self._swap_reward(req)
        if op == "refit_reward":
            return self._start_refit("requested")
        if op == "sample_pair":
            prompt = req.get("prompt")
            if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
                return {"ok": False, "error": "sample_pair: 'prompt' must be a non-empty string when given"}
            n = req.get("n", 2)
            if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 16:
                return {"ok": False, "error": f"sample_pair: 'n' must be an integer from 2 to 16; got {n!r}"}
            return self._at_boundary({"op": "sample_pair", "prompt": prompt, "n": n}, float(req.get("wait_timeout", 600)))
        return {"ok": False, "error": f"unsupported op {op!r}"}

    # ---- watchdog: worker timeout and stop grace ------------------------------------------
    def _arm_stop_grace(self, grace_s=None) -> float:
        grace = max(STOP_GRACE_MIN_S, 3.0 * self._longest_s) if grace_s is None else float(grace_s)
        if not grace > 0 or grace != grace:
            raise ValueError(grace_s)
        deadline = time.monotonic() + grace
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline, self._stop_grace = deadline, grace
        return grace

    def _submit(self, h, role: str, op: str, tensors=None, args=None, threads=None):
        """Every role call goes through here so the watchdog sees what is in flight."""
        fut = h.submit(role, op, tensors, args, arena=self.arena, threads=threads)
        key = id(fut)
        with self._inflight_lock:
            self._inflight[key] = {"fut": fut, "h": h, "role": role, "op": op,
                                   "t0": time.monotonic(), "timed": op not in UNTIMED_OPS}

        def done(_f, key=key):
            with self._inflight_lock:
                self._inflight.pop(key, None)

        fut.add_done_callback(done)
        return fut

    def _watchdog(self) -> None:
        timeout = float(self.cfg.runtime.worker_timeout_s)
        while not self._watch_stop.wait(0.25):
            try:
                self._watch_once(timeout)
            except Exception as e:  # noqa: BLE001 - never let the watchdog die quietly
                self._log_safe(f"watchdog error: {type(e).__name__}: {e}", "ERROR")

    def _publish_stage(self) -> None:
        """run.json's ``step_stage``, the newest at most once a second (StepStage.flush)."""
        while not self._watch_stop.wait(0.25):
            try:
                self.stage.flush()
            except Exception as e:  # noqa: BLE001 - the header's stage is a nicety
                self._log_safe(f"step stage not published: {type(e).__name__}: {e}", "WARNING")

    def _watch_once(self, timeout: float) -> None:
        now = time.monotonic()
        with self._inflight_lock:
            recs = [r for r in self._inflight.values() if not r["fut"].done()]
        for r in recs:
            if r["timed"] and now - r["t0"] > timeout:
                self._abort(r["h"], "timeout", r["role"], r["op"],
                            f"{r['role']}.{r['op']} did not finish within runtime.worker_timeout_s = "
                            f"{timeout:g}s", timeout_s=timeout)
        if self._stop_deadline is not None and now > self._stop_deadline:
            why = f"did not answer within {self._stop_grace:g}s of the stop request"
            for r in recs:
                self._abort(r["h"], "stopped", r["role"], r["op"], f"{r['role']}.{r['op']} {why}")
            if self.state == "starting":  # a role that hangs while loading
                for h in self.workers:
                    self._abort(h, "stopped", h.roles[0], "load", f"{h.label} (loading) {why}")

    def _abort(self, h, kind: str, role: str, op: str, why: str, **extra) -> None:
        if h.label in self._aborted:
            return
        self._aborted.add(h.label)
        msg = f"{why}; killed worker '{h.label}' (pid {h.pid})"
        rec = {"kind": kind, "role": role, "op": op, "label": h.label, "message": msg, **extra}
        if kind == "timeout" and self._timeout_failure is None:
            self._timeout_failure = rec
        if kind == "stopped":
            self._killed_on_stop.append(rec)
        self._log_safe(msg, "ERROR")
        try:
            abort = getattr(h, "abort", None)
            if abort is not None:
                abort(msg, kind)
            else:  # a handle without abort(): mark it dead, then take it down
                mark = getattr(h, "_mark_dead", None)
                if mark is not None:
                    mark(msg)
                threading.Thread(target=h.shutdown, args=(1.0,), daemon=True).start()
        except Exception as e:  # noqa: BLE001 - the watchdog must keep going
            self._log_safe(f"could not kill worker '{h.label}': {type(e).__name__}: {e}", "ERROR")

    def _log_safe(self, message: str, level: str = "INFO") -> None:
        try:
            self.log(message, level)
        except Exception:  # noqa: BLE001 - the watchdog must keep going
            pass

    def _swap_reward(self, req: dict) -> dict:
        source = req.get("source")
        if not isinstance(source, str) or not source.strip():
            return {"ok": False, "error": "swap_reward needs a non-empty 'source' string"}
        w = self.by_role["reward"]
        self.log(f"swapping reward to '{source}' ...")
        from engine.runtime.probe import probe_reward

        # first in a throw-away process: a crash, sys.exit or hang there cannot touch the run
        ok, why = probe_reward(dump_config(self.cfg), source, float(self.cfg.runtime.worker_timeout_s))
        if not ok:
            self.log(f"reward swap to '{source}' refused, keeping '{self.reward_source}': {why}", "WARNING")
            return {"ok": False, "error": f"could not load '{source}': {why}; the previous reward "
                                          f"'{self.reward_source}' stays in place"}
        del w
        # the live worker loads it at the step boundary, so every step is scored by one version
        return self._at_boundary({"op": "swap", "source": source, "kind": "swap"},
                                 float(self.cfg.runtime.worker_timeout_s) + 3600.0)

    # ---- work done at the step boundary (reward swaps, fresh pairs) -----------------------
    def _at_boundary(self, job: dict, timeout: float) -> dict:
        job["event"] = threading.Event()
        with self._cv:
            if self.state in ("finished", "failed", "stopped"):
                return {"ok": False, "error": f"the run is {self.state}"}
            self._boundary_q.append(job)
            self._cv.notify_all()
        if not job["event"].wait(timeout):
            return {"ok": False, "error": f"no step boundary within {timeout:.0f}s"}
        return job["result"]

    def _run_boundary_jobs(self) -> None:
        with self._cv:
            jobs, self._boundary_q = self._boundary_q, []
        for job in jobs:
            try:
                if job["op"] == "swap":
                    job["result"] = self._apply_swap(job["source"], job["kind"], job.get("extra") or {})
                else:
                    job["result"] = self._sample_pair(job.get("prompt"), int(job.get("n", 2)))
            except WorkerError:
                job["result"] = {"ok": False, "error": "a worker failed"}
                job["event"].set()
                raise
            except Exception as e:  # noqa: BLE001 - answered, never a crash of the run
                job["result"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            job["event"].set()

    def _fail_boundary_jobs(self, why: str) -> None:
        with self._cv:
            jobs, self._boundary_q = self._boundary_q, []
        for job in jobs:
            job["result"] = {"ok": False, "error": why}
            job["event"].set()

    def _apply_swap(self, source: str, kind: str, extra: dict) -> dict:
        """Load ``source`` into the live reward worker (between steps); a new reward version."""
        w = self.by_role["reward"]
        try:
            _, res, secs = self._submit(w, "reward", "swap", None, {"source": source}).result()
        except WorkerError as e:
            if e.kind == "died":
                raise
            self.log(f"reward swap to '{source}' failed, keeping '{self.reward_source}' "
                     f"(v{self.reward_version}): {e}", "WARNING")
            return {"ok": False, "error": f"could not load '{source}': {e}; the previous reward "
                                          f"'{self.reward_source}' stays in place"}
        old, self.reward_source = self.reward_source, source
        if self.driver is not None:  # its scores have another scale: divergence gets a new baseline
            self.driver.monitors.reward_changed()
        reg = self._registry()
        version = max([v.get("version", 0) for v in reg["versions"]] + [self.reward_version]) + 1
        self.reward_version = version
        reg["versions"].append({"version": version, "source": source, "kind": kind, "from_step": self.step + 1,
                                "previous": old, "time": time.time(), **extra})
        self._save_registry(reg)
        self.write_state(reward_source=source, reward_version=version)
        self.log(f"reward v{version} in place from step {self.step + 1}: swapped from '{old}' to "
                 f"'{source}' in {secs:.1f}s" + (f" (refit {extra['attempt']})" if "attempt" in extra else ""))
        if self.server:
            self.server.broadcast({"event": "reward", "version": version, "source": source, "step": self.step})
        return {"ok": True, "source": source, "previous": old, "seconds": secs, "version": version,
                "message": f"reward v{version} '{source}' in place from step {self.step + 1}"}

    def _sample_pair(self, prompt: Optional[str], n: int = 2) -> dict:
        """``n`` (2 by default) fresh responses of the actor to one prompt (a random prompt of the
        run's data unless given), scored by the current reward and appended to samples.jsonl,
        to be judged against each other."""
        if prompt is None:
            if not self._prompts:
                return {"ok": False, "error": "the run has no prompts loaded yet"}
            prompt = random.Random(f"{self.cfg.run.seed}-pair-{self._pairs_made}").choice(self._prompts)
        k = self._pairs_made
        self._pairs_made += 1
        batch, _, _ = self.endpoints["actor"].submit("actor", "generate", None,
                                                     {"prompts": [prompt] * n, "step": self.step}).result()
        batch = dict(batch)
        batch.pop("old_logprobs", None)
        scores = self.endpoints["reward"].submit("reward", "score", batch, {}).result()[0]["scores"]
        tok = self._tokenizer
        prompts_txt = tok.batch_decode(batch["query_ids"], skip_special_tokens=True)
        eos = tok.eos_token_id
        out = []
        for i, tag in enumerate("abcdefghijklmnop"[:n]):
            m = batch["response_mask"][i].bool()
            ids = batch["response_ids"][i]
            out.append({"id": f"{self.step}-pair{k}{tag}", "step": self.step, "index": i, "kind": "pair",
                        "pair": k, "reward_version": self.reward_version, "prompt": prompts_txt[i],
                        "response": tok.decode(ids[m], skip_special_tokens=True), "score": float(scores[i]),
                        "kl": None, "return": None, "length": int(m.sum()),
                        "eos": bool(((ids == eos) & m).any())})
        for row in out:
            append_jsonl(self.rd.samples, row)
        if self.server:
            self.server.broadcast({"event": "samples", "step": self.step, "samples": out})
        return {"ok": True, "samples": out, "message": " / ".join(o["id"] for o in out)}

    # ---- reward versions and refits -------------------------------------------------------
    @property
    def _rewards_dir(self) -> Path:
        return self.rd.path / "rewards"

    def _registry(self) -> dict:
        try:
            reg = json.loads((self._rewards_dir / "versions.json").read_text())
        except (OSError, ValueError):
            reg = {}
        reg.setdefault("versions", [])
        reg.setdefault("refits", [])
        return reg

    def _save_registry(self, reg: dict) -> None:
        self._rewards_dir.mkdir(exist_ok=True)
        atomic_write_json(self._rewards_dir / "versions.json", reg)

    def _refit_status(self) -> Optional[dict]:
        r = self._refit
        return None if r is None else {"state": "running", "attempt": r["attempt"], "started": r["started"]}

    def _judgement_rows(self) -> int:
        from engine.judgements import count_rows

        try:
            size = self.rd.labels.stat().st_size
        except OSError:
            return self._labels_seen[1]
        if size != self._labels_seen[0]:
            self._labels_seen = (size, count_rows(self.rd.path))
        return self._labels_seen[1]

    def _maybe_auto_refit(self) -> None:
        from engine.refit import refit_settings

        every = refit_settings(self.cfg).every_labels
        if not every or self._refit is not None:
            return
        new = self._judgement_rows() - self._judgements_at_refit
        if new >= every:
            self._start_refit(f"{new} new judgement(s), reward.refit.every_labels = {every}")

    def _start_refit(self, why: str) -> dict:
        import subprocess

        from engine.refit import refit_settings

        with self._refit_lock:
            if self._refit is not None:
                return {"ok": False, "error": f"refit {self._refit['attempt']} is still running"}
            if self.cfg is None or "reward" not in self.by_role:
                return {"ok": False, "error": "the run has not started yet"}
            rs = refit_settings(self.cfg)
            reg = self._registry()
            attempt = len(reg["refits"]) + 1
            rows = self._judgement_rows()
            self._rewards_dir.mkdir(exist_ok=True)
            out = self._rewards_dir / f"refit-{attempt}"
            result = self._rewards_dir / f"refit-{attempt}.json"
            cmd = [sys.executable, "-m", "engine.refit", str(self.rd.path), "--attempt", str(attempt),
                   "--current", self.reward_source, "--out", str(out), "--result", str(result)]
            nice = int(rs.nice)
            # progress lines on stdout go to the event log; library warnings on stderr to supervisor.log
            with open(self.rd.supervisor_log, "ab") as err:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                        text=True, errors="replace",
                                        preexec_fn=(lambda: os.nice(nice)) if nice else None)
            self._refit = {"attempt": attempt, "proc": proc, "started": time.time(), "out": out}
            self._judgements_at_refit = rows
            reg["refits"].append({"attempt": attempt, "state": "running", "started": time.time(),
                                  "from_step": self.step, "current_source": self.reward_source,
                                  "current_version": self.reward_version, "judgement_rows": rows, "why": why})
            self._save_registry(reg)
            self.write_state(refit={"state": "running", "attempt": attempt, "judgement_rows": rows})
        self.log(f"refit {attempt}: started ({why}) from reward v{self.reward_version} "
                 f"'{self.reward_source}' with {rows} judgement(s), in a separate process (nice {nice}, "
                 f"pid {proc.pid})")
        threading.Thread(target=self._watch_refit, args=(attempt, proc, result), name="refit",
                         daemon=True).start()
        return {"ok": True, "pending": True, "attempt": attempt,
                "message": f"refit {attempt} started on {rows} judgement(s); progress in the event log"}

    def _watch_refit(self, attempt: int, proc, result_path: Path) -> None:
        try:
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    self._log_safe(f"refit {attempt}: {line}")
            proc.wait()
            try:
                res = json.loads(result_path.read_text())
            except (OSError, ValueError):
                res = {"accepted": False, "reason": f"the refit process ended (exit code {proc.returncode}) "
                                                    f"without a result"}
            reg = self._registry()
            for r in reg["refits"]:
                if r.get("attempt") == attempt:
                    r.update({k: v for k, v in res.items() if k != "time"},
                             state="accepted" if res.get("accepted") else ("failed" if res.get("error") else "refused"),
                             finished=time.time())
            self._save_registry(reg)
            if res.get("accepted"):
                self.log(f"refit {attempt}: accepted: {res['reason']}; swapping it in at the next step boundary")
                with self._cv:
                    self._boundary_q.append({"op": "swap", "source": res["source"], "kind": "refit",
                                             "extra": {"attempt": attempt, "current": res.get("current"),
                                                       "new": res.get("new")},
                                             "event": threading.Event()})
                    self._cv.notify_all()
            else:
                self.log(f"refit {attempt}: refused, keeping reward v{self.reward_version} "
                         f"'{self.reward_source}': {res.get('reason')}", "WARNING")
            self.write_state(refit={"state": "accepted" if res.get("accepted") else "refused",
                                    "attempt": attempt, "reason": res.get("reason"),
                                    "judgement_rows": self._judgements_at_refit})
        except Exception as e:  # noqa: BLE001 - a refit never takes the run down
            self._log_safe(f"refit {attempt}: error: {type(e).__name__}: {e}", "ERROR")
        finally:
            with self._refit_lock:
                self._refit = None

    def _stop_refit(self) -> None:
        r = self._refit
        if r is None:
            return
        proc = r["proc"]
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except Exception:  # noqa: BLE001
                proc.kill()
        for tmp in self._rewards_dir.glob(f".{r['out'].name}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    # ---- lifecycle ----------------------------------------------------------------------
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
            with self._cv:
                self._stop_req = True
                self._stop_reason = f"{name} received"
                self._arm_stop_grace()
                self._cv.notify_all()
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

    def run(self) -> int:
        code = 1
        try:
            code = self._run()
        except KeyboardInterrupt:
            self._finish("stopped", message="interrupted")
            self._log_safe("interrupted again: stopping now without a final checkpoint", "WARNING")
            code = 130
        except BaseException as e:  # noqa: BLE001 - recorded, then cleaned up
            # the cause goes into run.json first: logging or printing may fail too (a lost
            # terminal, a full disk) and must not leave "supervisor ended unexpectedly"
            if isinstance(e, WorkerError) and self._killed_on_stop:
                code = self._stopped_by_kill()
            elif isinstance(e, WorkerError) and (self._timeout_failure or e.kind == "died"):
                code = self._fail(e)
            else:
                self._finish("failed", failure=f"supervisor: {type(e).__name__}: {e}")
                code = 1
                try:
                    (self.rd.path / "supervisor.traceback").write_text(traceback.format_exc())
                except OSError:
                    pass
                self._log_safe(f"supervisor error: {type(e).__name__}: {e}", "ERROR")
        finally:
            self._teardown()
        return code

    def _load_config(self) -> RunConfig:
        res = validate_text(self.rd.config.read_text(), str(self.rd.config))
        if res.config is None:
            raise RuntimeError("invalid config: " + "; ".join(str(i) for i in res.issues))
        return res.config

    def _run(self) -> int:
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
        self.arena = transport.TensorArena(self.owner_pid, self.run_tag, "driver")
        self.reward_source = cfg.reward.source
        self.rd.write_state(
            state="starting", supervisor_pid=self.owner_pid, socket=str(sock), name=self.rd.name,
            steps=cfg.run.steps, run_tag=self.run_tag, reward_source=cfg.reward.source,
            created=self.rd.read_state().get("created", time.time()), failure=None,
            backend=cfg.runtime.backend,
        )
        what = "Ray actor(s)" if cfg.runtime.backend == "ray" else "worker process(es)"
        devices = None
        if cfg.runtime.backend != "ray":  # Ray assigns the GPUs of its actors itself
            from engine.runtime.placement import PlacementError, device_plan, format_plan

            try:
                devices = device_plan(cfg)
            except PlacementError as e:
                self.log(f"no device plan: {e}", "ERROR")
                self._finish("failed", failure=f"device plan: {e}")
                return 1
        specs = process_specs(cfg, devices) if devices else [(g, 0, cfg) for g in worker_groups(cfg)]
        self.log(f"run {self.rd.name}: starting {len(specs)} {what} for "
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

        # workers ---------------------------------------------------------------------------
        plan = ThreadPlan.make(cfg, devices=devices)
        t0 = time.perf_counter()
        groups = worker_groups(cfg)
        threads = [max(plan.generate.get(r, 1) for r in group) if group else 1 for group in groups]
        if cfg.runtime.backend == "ray":
            from engine.runtime.ray_backend import RayBackend, RayBackendError

            self.ray = RayBackend(cfg, self.log)
            try:
                try:
                    self.ray.start()
                finally:
                    self._install_signals()  # ray.init installs its own SIGTERM handler: ours again
                self.workers = list(self.ray.start_actors(groups, dump_config(cfg), threads,
                                                          on_progress=lambda label, msg: self.log(msg)))
            except RayBackendError as e:
                self.log(str(e), "ERROR")
                self._finish("failed", failure=f"ray: {e}")
                return 1
        else:
            lora = any(getattr(getattr(cfg, r), "lora", None) for r in ("actor", "critic"))
            ctx = worker_context(devices, preload=["peft"] if lora else [])
            init = {r: f"tcp://127.0.0.1:{free_tcp_port()}" for r in active_roles(cfg) if world_size(cfg, r) > 1}
            for group, rank, wcfg in specs:
                W = group_world_size(cfg, group)
                n = max(plan.generate.get(r, 1) for r in group) if group else 1
                info = {"rank": rank, "world_size": W, "init_method": init[group[0]]} if W > 1 else None
                self.workers.append(WorkerHandle(
                    ctx, group, dump_config(wcfg), self.owner_pid, self.run_tag, max(1, n // W),
                    on_progress=lambda label, msg: self.log(f"{label}: {msg}" if "[" in label else msg),
                    on_stage=lambda label, m: self.stage.progress(m.get("role"), m.get("op"), m.get("done"),
                                                                  m.get("total"), m.get("unit")),
                    rank=info, cuda_ipc=cfg.runtime.cuda_ipc,
                    log_path=str(self.rd.supervisor_log)))
        ranks: dict[str, list] = {}
        for h in self.workers:
            for r in h.roles:
                self.by_role.setdefault(r, h)  # a role's (first rank's) process
                ranks.setdefault(r, []).append(h)
        from engine.runtime.ranks import RoleGroup

        self.endpoints = {r: (_Endpoint(hs[0], self) if len(hs) == 1
                              else RoleGroup([_Endpoint(h, self) for h in hs]))
                          for r, hs in ranks.items()}
        self.rd.write_state(pids={h.label: h.pid for h in self.workers if h.pid})
        threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()
        self._stage_thread = threading.Thread(target=self._publish_stage, name="stage", daemon=True)
        self._stage_thread.start()
        for h in self.workers:
            try:
                h.wait_ready()
            except WorkerError as e:
                if self._killed_on_stop:
                    return self._stopped_by_kill()
                reason = e.reply.get("error") or str(e)
                self.log(f"worker '{h.label}' failed to load: {reason}", "ERROR")
                self._finish("failed", failure=f"{h.label} (load): {reason}")
                return 1
        self.log(f"all roles loaded in {time.perf_counter() - t0:.1f}s")
        if self.ray is not None:
            nodes = self.ray.placement()
            self.rd.write_state(ray={"address": cfg.runtime.ray_address, "started_here": self.ray.owned,
                                     "nodes": nodes})
            self.log("ray: " + ", ".join(f"{h.label} on node {(h.node_id or '?')[:12]} (pid {h.pid})"
                                         for h in self.workers))

        tokenizer, stream = prompts.result()
        self._prompts, self._tokenizer = list(stream.prompts), tokenizer
        try:  # after the prompts' thread is done: nothing else runs while it times the machine
            self._set_precision(cfg, devices)
        except WorkerError as e:
            self.log(f"could not set the roles' precision: {e}", "ERROR")
            self._finish("failed", failure=f"precision: {e}")
            return 1
        reg = self._registry()
        if not reg["versions"]:
            reg["versions"].append({"version": 0, "source": cfg.reward.source, "kind": "config", "from_step": 1,
                                    "time": time.time()})
            self._save_registry(reg)
        kl_ctl = make_kl_controller(cfg)
        driver = self.driver = PPODriver(cfg, self.endpoints, tokenizer, kl_ctl, plan)
        driver.on_stage = self.stage.phase
        self._task_answers(driver, tokenizer)

        if self.resume:
            ck = self.rd.latest_checkpoint()
            if ck is None:
                raise RuntimeError(f"no checkpoint to resume from in {self.rd.checkpoints}")
            self._load_checkpoint(ck, stream, kl_ctl)
            driver.monitors.restore(read_jsonl(self.rd.metrics))
        self.set_state("running", pids={h.label: h.pid for h in self.workers})

        tb = self._tensorboard()
        total = cfg.run.steps
        ckpt_due = False  # a checkpoint (periodic or final) that must be written before going on
        batch_prompts: Optional[list[str]] = None  # kept until its step is applied: resume retries it
        try:
            while True:
                if ckpt_due or self.step >= total:  # before a pause takes effect
                    try:
                        res = self._save_checkpoint(stream, kl_ctl)
                    except WorkerError as e:  # a role died while writing its part
                        return self._fail(e)
                    if res["ok"]:
                        ckpt_due = False
                    else:
                        self._pause_for(f"checkpoint at step {self.step} failed: {res['error']}; "
                                        f"free space (or fix the permission) and resume to retry",
                                        phase="checkpoint", error=res["error"])
                try:
                    if self._boundary(stream, kl_ctl):
                        break
                except WorkerError as e:
                    return self._fail(e)
                if ckpt_due:
                    continue  # resumed after a failed checkpoint: retry it first
                if self.step >= total:
                    break
                if batch_prompts is None:
                    self._stream_state_before = stream.state_dict()
                    batch_prompts = stream.next_batch()
                t_step = time.monotonic()
                try:
                    metrics, samples = driver.step(self.step + 1, batch_prompts, commit=False)
                except (WorkerError, NonFiniteError) as e:
                    if self._killed_on_stop:  # stop: a worker that did not answer was killed
                        break
                    if isinstance(e, WorkerError) and e.kind in ("died", "timeout"):
                        return self._fail(e)
                    self._pause_on_step_error(e)
                    continue
                except UpdateConsistencyError as e:
                    return self._fail(e)
                self._longest_s = max(self._longest_s, time.monotonic() - t_step)
                self.stage.phase(self.step + 1, "recording")
                metrics["memory"] = self._memory()
                try:
                    self._record_step(metrics, samples, driver)
                except OSError as e:
                    self._pause_for(f"step {self.step + 1} not applied: could not record it ({e}); "
                                    f"free space (or fix the permission) and resume to retry",
                                    phase="record", error=str(e))
                    continue
                except UpdateConsistencyError as e:
                    return self._fail(e)
                except WorkerError as e:
                    return self._fail(e)
                batch_prompts, self._stream_state_before = None, None
                self._log_monitors(driver, metrics)
                if tb is not None:
                    try:
                        self._tb_write(tb, metrics, samples)
                    except Exception as e:  # noqa: BLE001 - TensorBoard is an extra
                        self.log(f"tensorboard write failed: {e}", "WARNING")
                line = format_step_line(metrics, total)
                self.log_quiet(line, show=self.step % cfg.logging.print_every == 0 or self.step == total)
                if self.server:
                    self.server.broadcast({"event": "step", "metrics": metrics})
                    self.server.broadcast({"event": "samples", "step": self.step, "samples": samples})
                ce = cfg.checkpoint.every
                if ce and self.step % ce == 0:
                    ckpt_due = True
        finally:
            if tb is not None:
                try:
                    tb.close()
                except Exception:  # noqa: BLE001
                    pass
        if self._killed_on_stop:
            return self._stopped_by_kill()
        if self._stop_req and self.step < total:
            msg = self._stop_reason
            if cfg.checkpoint.on_stop and self.step > 0:
                try:
                    res = self._save_checkpoint(stream, kl_ctl)
                except WorkerError as e:
                    return self._fail(e)
                if not res["ok"]:
                    latest = self.rd.latest_checkpoint()
                    msg += (f"; the stop checkpoint at step {self.step} failed ({res['error']}): resume "
                            f"restarts from {latest.name if latest else 'nothing'}")
                    self.log(f"stopped at step {self.step}/{total} without its checkpoint: {res['error']}", "ERROR")
                    self._finish("stopped", message=msg, checkpoint_error=res["error"])
                    return 0
            self.log(f"stopped at step {self.step}/{total} ({self._stop_reason})")
            self._finish("stopped", message=msg)
            return 0
        try:
            res = self._save_checkpoint(stream, kl_ctl)  # "already saved" unless a stop cut in first
        except WorkerError as e:
            return self._fail(e)
        if not res["ok"]:
            latest = self.rd.latest_checkpoint()
            msg = (f"{self._stop_reason or 'stopped'} with all {total} steps done, but the final checkpoint "
                   f"failed ({res['error']}): resume restarts from {latest.name if latest else 'nothing'}")
            self.log(msg, "ERROR")
            self._finish("stopped", message=msg, checkpoint_error=res["error"])
            return 0
        self.log(f"finished {self.step}/{total} steps")
        self._finish("finished")
        return 0

    def _set_precision(self, cfg: RunConfig, devices) -> None:
        """Resolve each model role's precision (``auto`` is measured here once per machine, on
        the idle machine now that every worker has loaded), tell the workers, and record it:
        one line per role in events.log and a ``precision`` object in run.json."""
        from engine.precision import plan

        t0 = time.perf_counter()
        chosen = plan(cfg, devices, progress=self.log)
        for role, rp in chosen.items():
            ep = self.endpoints.get(role)
            if ep is not None and rp.autocast:
                ep.submit(role, "precision", args={"autocast": rp.autocast}).result()
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

    def log_quiet(self, line: str, show: bool = True) -> None:
        """A step line: events.log and (``show``: logging.print_every) the terminal, not the
        socket's log stream."""
        try:
            self.rd.log_event(line)
        except OSError:
            pass
        if show:
            self._print(line)

    def _record_step(self, metrics: dict, samples: list[dict], driver: PPODriver) -> None:
        """Append the step's metrics and samples and update run.json, then commit the roles'
        updates. If a write fails (full disk, permission), the files are cut back to where they
        were, the updates are rolled back and OSError is raised: the step is not applied."""
        metrics["reward_version"] = self.reward_version
        try:
            self.rd.record_step(metrics, samples, step=self.step + 1, last_score=metrics["score_mean"],
                                last_kl=metrics["kl"])
        except OSError:
            driver.rollback()
            raise
        driver.commit()
        self.step += 1
        self.last_metrics = metrics

    def _log_monitors(self, driver: PPODriver, metrics: dict) -> None:
        """events.log: a reward-hacking monitor that starts tripping (which, value, threshold) or
        comes back under its threshold; a failing audit scorer."""
        from engine.monitors import describe_alert

        for a in driver.monitors.started:
            self.log(describe_alert(a, self.step), "WARNING")
        for name in driver.monitors.cleared:
            self.log(f"reward-hacking monitor '{name}' back under its threshold at step {self.step}")
        if metrics.get("audit_error") and not self._audit_warned:
            self._audit_warned = True
            self.log(f"audit scorer '{self.cfg.reward.audit}' failed: {metrics['audit_error']}; "
                     f"steps go on without audit scores while it fails", "WARNING")

    def _pause_for(self, reason: str, *, role: Optional[str] = None, phase: Optional[str] = None,
                   error: Optional[str] = None) -> None:
        """Pause at this boundary because of a fault; run.json, events and status name it."""
        self.log(reason + "; pausing", "ERROR")
        with self._cv:
            self._pause_req = True
            self.paused_reason = reason
            self.pause_info = {"role": role, "phase": phase, "error": error, "step": self.step + 1}
            if self.state == "paused":  # already paused (a retry failed again): say so now
                self.set_state("paused", message=reason, pause_info=self.pause_info)

    def _pause_on_step_error(self, e: BaseException) -> None:
        reply = getattr(e, "reply", {}) or {}
        role = getattr(e, "role", None) or reply.get("role") or "+".join(getattr(e, "roles", []) or ["?"])
        phase = getattr(e, "phase", None) or reply.get("phase") or "?"
        err = reply.get("error") or str(e)
        if reply.get("trace"):
            try:
                (self.rd.path / "worker.traceback").write_text(reply["trace"])
            except OSError:
                pass
        if isinstance(e, NonFiniteError) or getattr(e, "kind", None) == "nonfinite":
            reason = f"step {self.step + 1} not applied: {err}"  # err already names role and phase
        else:
            reason = f"step {self.step + 1} not applied: error in {role} ({phase}): {err}"
        self._pause_for(reason + "; resume retries the step", role=role, phase=phase, error=err)

    def _stopped_by_kill(self) -> int:
        killed = "; ".join(r["message"] for r in self._killed_on_stop)
        ck = self.rd.latest_checkpoint()
        kept = f"resume continues from {ck.relative_to(self.rd.path)}" if ck else "no checkpoint was written"
        msg = (f"{self._stop_reason}: {killed}; the step in progress was not applied and no stop "
               f"checkpoint was written ({kept})")
        self.log(f"stopped at step {self.step}/{self.cfg.run.steps if self.cfg else '?'}: {msg}", "WARNING")
        self._finish("stopped", message=msg, killed=[r["label"] for r in self._killed_on_stop])
        return 0

    def _fail(self, e: BaseException) -> int:
        t = self._timeout_failure
        if t is not None:  # the watchdog killed a worker that ran past runtime.worker_timeout_s
            failure = f"{t['label']}: {t['message']}"
            self.log(f"worker timeout: {failure}; stopping the other workers", "ERROR")
            self._finish("failed", failure=failure, failed_role=t["role"], failed_op=t["op"],
                         timeout_s=t["timeout_s"])
            return 1
        reply = getattr(e, "reply", {}) or {}
        roles = getattr(e, "roles", None) or ["?"]
        cause = reply.get("error") or str(e)
        if reply.get("trace"):
            (self.rd.path / "worker.traceback").write_text(reply["trace"])
        failure = f"{'+'.join(roles)}: {cause}"
        self.log(f"worker failure: {failure}; stopping the other workers", "ERROR")
        self._finish("failed", failure=failure, failed_role="+".join(roles))
        return 1

    def _boundary(self, stream, kl_ctl) -> bool:
        """Honour checkpoint / pause / stop requests between steps. True means stop."""
        self.stage.clear()  # no step in progress until the driver starts the next
        while True:
            with self._cv:
                ckpts, self._ckpt_req = self._ckpt_req, []
            if ckpts:
                res = self._save_checkpoint(stream, kl_ctl)
                for ev in ckpts:
                    self._ckpt_results[id(ev)] = res
                    ev.set()
                if not res["ok"]:
                    self._pause_for(f"checkpoint at step {self.step} failed: {res['error']}",
                                    phase="checkpoint", error=res["error"])
            if self._unwritten_state:
                self.write_state()
            self._run_boundary_jobs()
            self._maybe_auto_refit()
            with self._cv:
                if self._stop_req:
                    return True
                if not self._pause_req:
                    if self.state == "paused":
                        self.log(f"resumed at step {self.step}")
                        self.set_state("running", message=None, pause_info=None)
                    return False
                if self.state != "paused":
                    self.set_state("paused", message=self.paused_reason or "paused by request",
                                   pause_info=self.pause_info or None)
                    self.log(f"paused after step {self.step}" + (f": {self.paused_reason}" if self.paused_reason else ""))
                self._cv.wait(timeout=0.5)
            dead = [h for h in self.workers if h.dead_reason]
            if dead:
                raise _WorkerDied(dead[0])

    def _memory(self) -> dict:
        futs = {h.label: self._submit(h, h.roles[0], "memory") for h in self.workers}
        out = {}
        for label, f in futs.items():
            try:
                out[label] = memory_report(f.result(timeout=30)[1])
            except Exception:  # noqa: BLE001 - memory is best effort
                pass
        return out

    # ---- checkpoints ---------------------------------------------------------------------
    def _show(self, p: Path) -> str:
        """A checkpoint path relative to the run directory when it is inside it."""
        try:
            return str(p.relative_to(self.rd.path))
        except ValueError:
            return str(p)

    def _save_checkpoint(self, stream, kl_ctl) -> dict:
        cfg = self.cfg
        final = self.rd.checkpoints / f"step_{self.step}"
        if final.exists():
            return {"ok": True, "path": str(final), "step": self.step, "message": "already saved"}
        t = time.perf_counter()
        tmp = self.rd.checkpoints / f".tmp-step_{self.step}-{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            futs = [self.endpoints[r].submit(r, "save", None, {"path": str(tmp)}) for r in ("actor", "critic")
                    if r in self.endpoints]
            errs = []
            for f in futs:  # wait for both before the folder may be removed
                try:
                    f.result()
                except BaseException as e:  # noqa: BLE001
                    errs.append(e)
            if errs:
                raise errs[0]
            torch.save({"rng": capture_rng()}, tmp / "supervisor_rng.pt")
            data = self._stream_state_before or stream.state_dict()  # a retried batch is not consumed
            atomic_write_json(tmp / "state.json", {
                "step": self.step, "data": data, "kl_controller": kl_ctl.state_dict(),
                "reward_source": self.reward_source, "reward_version": self.reward_version,
                "time": time.time(), "run_tag": self.run_tag,
            })
            durable_rename(tmp, final)  # fsync files and folder, rename, fsync checkpoints/
        except BaseException as e:
            if isinstance(e, WorkerError) and e.kind == "died" or not isinstance(e, Exception):
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if isinstance(e, WorkerError):
                cause = e.reply.get("error") or str(e)
            else:
                cause = write_error_cause(e, self.rd.checkpoints)  # before the removal frees space
            shutil.rmtree(tmp, ignore_errors=True)
            self.log(f"checkpoint at step {self.step} failed: {cause}", "ERROR")
            return {"ok": False, "error": cause}
        keep = max(1, cfg.checkpoint.keep_last)
        for old in self.rd.checkpoint_dirs()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        secs = time.perf_counter() - t
        self._longest_s = max(self._longest_s, secs)
        self.log(f"checkpoint step {self.step} saved to {self._show(final)} in {secs:.1f}s")
        if self.server:
            self.server.broadcast({"event": "checkpoint", "step": self.step, "path": str(final)})
        self.write_state(last_checkpoint=str(final), last_checkpoint_step=self.step)
        return {"ok": True, "path": str(final), "step": self.step, "seconds": secs}

    def _load_checkpoint(self, ck: Path, stream, kl_ctl) -> None:
        st = json.loads((ck / "state.json").read_text())
        futs = [self.endpoints[r].submit(r, "load", None, {"path": str(ck)}) for r in ("actor", "critic")
                if r in self.endpoints]
        for f in futs:
            f.result()
        stream.load_state_dict(st["data"])
        kl_ctl.load_state_dict(st["kl_controller"])
        restore_rng(torch.load(ck / "supervisor_rng.pt", weights_only=False)["rng"])
        self.step = int(st["step"])
        before = int(self.rd.read_state().get("step") or 0)
        if before > self.step:
            self.log(f"the latest checkpoint is {ck.name}: steps {self.step + 1}-{before} of the previous "
                     f"session were not checkpointed and are trained again", "WARNING")
        # the history past the checkpoint is replaced by what the resumed run computes
        for path in (self.rd.metrics, self.rd.samples):
            rows = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= self.step]
            atomic_write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
        self.reward_version = int(st.get("reward_version") or 0)
        if st.get("reward_source") and st["reward_source"] != self.cfg.reward.source:
            # a swapped-in reward (a refit, swap-reward) survives the resume
            try:
                self._submit(self.by_role["reward"], "reward", "swap", None, {"source": st["reward_source"]}).result()
                self.reward_source = st["reward_source"]
            except WorkerError as e:
                if e.kind == "died":
                    raise
                self.reward_source, self.reward_version = self.cfg.reward.source, 0
                self.log(f"the checkpoint was taken with reward '{st['reward_source']}', which cannot be "
                         f"loaded ({e}); resuming with the config's '{self.cfg.reward.source}'", "WARNING")
        self.write_state(reward_source=self.reward_source, reward_version=self.reward_version)
        refits = self._registry()["refits"]
        self._judgements_at_refit = int(refits[-1].get("judgement_rows") or 0) if refits else 0
        self.log(f"resumed from {self._show(ck)} (step {self.step}, reward v{self.reward_version} "
                 f"'{self.reward_source}')")

    # ---- tensorboard ---------------------------------------------------------------------
    def _tensorboard(self):
        lg = self.cfg.logging
        if not lg.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as e:  # noqa: BLE001
            self.log(f"tensorboard disabled: {e}", "WARNING")
            return None
        path = Path(lg.tensorboard_dir) / self.rd.name if lg.tensorboard_dir else self.rd.path / "tensorboard"
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

    # ---- teardown ------------------------------------------------------------------------
    def _teardown(self) -> None:
        self._watch_stop.set()
        if self._stage_thread is not None:  # its last write must come before the final state's
            self._stage_thread.join(timeout=5.0)
        self._fail_boundary_jobs(f"the run ended ({self.state})")
        try:
            self._stop_refit()
        except Exception:  # noqa: BLE001 - teardown goes on
            pass

        def down(h) -> None:
            try:
                h.shutdown(timeout=5.0)
            except Exception:  # noqa: BLE001
                pass

        if self.ray is None:  # worker processes: all at once, so a busy one delays no other
            threads = [threading.Thread(target=down, args=(h,), daemon=True) for h in self.workers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for h in self.workers:
                down(h)
        if self.ray is not None:
            try:
                killed = self.ray.close()
                if killed:
                    self.rd.log_event(f"ray: killed {', '.join(killed)} left after ray.shutdown()", "WARNING")
                self.rd.log_event("ray: local Ray instance stopped" if self.ray.owned
                                  else "ray: disconnected from the cluster (left running)")
            except Exception as e:  # noqa: BLE001
                self.rd.log_event(f"ray: teardown error: {type(e).__name__}: {e}", "WARNING")
        if self.arena is not None:
            self.arena.close()
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


def memory_report(st: dict) -> dict:
    """A worker's memory figures for metrics.jsonl, rounded, with ``peak_rss_mb`` never below
    ``rss_mb``: the kernel's high-water mark (getrusage) can lag the rss read just before it."""
    st = dict(st)
    if isinstance(st.get("rss_mb"), (int, float)) and isinstance(st.get("peak_rss_mb"), (int, float)):
        st["peak_rss_mb"] = max(st["peak_rss_mb"], st["rss_mb"])
    return {k: round(v, 1) for k, v in st.items()}


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


class _WorkerDied(WorkerError):
    def __init__(self, h: WorkerHandle):
        super().__init__(h.roles, h.dead_reason or "worker died", "died")


class _Endpoint:
    def __init__(self, handle: WorkerHandle, sup: "Supervisor"):
        self.h, self.sup = handle, sup

    def submit(self, role, op, tensors=None, args=None, threads=None) -> Future:
        return self.sup._submit(self.h, role, op, tensors, args, threads)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.runtime.supervisor")
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args(argv)
    return Supervisor(Path(a.run_dir), resume=a.resume).run()


if __name__ == "__main__":
    sys.exit(main())
