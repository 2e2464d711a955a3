"""The one client API for runs: used by the CLI, the console, scripts and notebooks.

    from engine.client import launch, attach, list_runs
    run = launch("configs/tiny.yaml", overrides=["run.steps=5"])      # detached supervisor
    for m in run.metrics(follow=True):                                 # history, then live
        print(m["step"], m["score_mean"])
    run.pause(); run.resume(); run.checkpoint(wait=True); run.swap_reward("lexicon:vader")
    run.stop()

A run is a run directory plus (while alive) its supervisor's control socket; everything the
console shows can be rebuilt from the directory alone.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from engine.config import ConfigError, ConfigIssue, RunConfig, check_launchable, dump_config, load_config
from engine.files import JsonlTail, LineTail, atomic_write_text, human_size, read_jsonl
from engine.records import Label, MetricsRow, RunInfo, Sample
from engine.runs import ENDED_STATES, LIVE_STATES, run_state

# the runtime's classes are the client's own business, never part of its API (private names)
from engine.runtime.control import ControlClient as _ControlClient
from engine.runtime.rundir import RunDir as _RunDir
from engine.runtime.rundir import list_runs as _list_runs

__all__ = ["Run", "RunError", "launch", "attach", "list_runs", "create_run_dir", "runs_dir_for", "reap_stale",
           "reap_stale_checkpoints", "human_size", "run_state", "LIVE_STATES", "ENDED_STATES", "run_here",
           "dry_run", "RunInfo", "MetricsRow", "Sample", "Label"]


class RunError(RuntimeError):
    pass


def runs_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.logging.log_dir or cfg.run.output_dir)


def create_run_dir(cfg: RunConfig) -> _RunDir:
    """Check that ``cfg`` can start here (:func:`engine.config.check_launchable`: raises
    ConfigError before anything is created), then create its run directory."""
    check_launchable(cfg)
    runs = runs_dir_for(cfg)
    try:
        rd = _RunDir.create(runs, cfg.run.name)
    except OSError as e:
        key = "logging.log_dir" if cfg.logging.log_dir else "run.output_dir"
        raise ConfigError([ConfigIssue(key, None, f"cannot create a run directory under {runs}: "
                                                  f"{e.strerror or e}", file=cfg.source_file)]) from None
    atomic_write_text(rd.config, dump_config(cfg))
    ck = {}
    if cfg.checkpoint.dir:  # checkpoints elsewhere: <dir>/<run dir name>; resume finds them via run.json
        ck = {"checkpoint_dir": str((Path(cfg.checkpoint.dir) / rd.name).resolve())}
    rd.write_state(state="starting", created=time.time(), name=rd.name, steps=cfg.run.steps, step=0, **ck)
    for f in (rd.metrics, rd.samples, rd.labels, rd.events):
        f.touch()
    return rd


def prestart(config: Union[str, Path], overrides: Sequence[str] = ()) -> bool:
    """Before a foreground run (:func:`run_here`) in this process: start its CPU fork server now,
    from the config file read as plain YAML, so that its imports run while the config is loaded
    and checked. Whether it was started (a guess: the device plan still decides how workers start)."""
    from engine.runtime.start import start_early_for

    return start_early_for(Path(config), overrides)


def run_here(run_dir: Union[str, Path, _RunDir], printer=None) -> int:
    """Run the supervisor of a created run directory in this process until the run ends
    (``printer(line)`` gets the step lines); returns its exit code."""
    from engine.runtime.supervisor import Supervisor

    path = run_dir.path if isinstance(run_dir, _RunDir) else Path(run_dir)
    return Supervisor(path, printer=printer).run()


def dry_run(cfg: RunConfig, printer=None) -> dict:
    """Load the four roles and run one rollout and its scoring, no update (``train --dry-run``)."""
    from engine.runtime.dryrun import dry_run as _dry_run

    return _dry_run(cfg, printer)


def reap_stale() -> list[str]:
    """Remove shared-memory segments of runs whose processes are gone; return their names."""
    from engine.segments import reap_stale_segments

    return reap_stale_segments()


def reap_stale_checkpoints(runs_dir: Union[str, Path] = "runs") -> list[tuple[Path, int]]:
    """Remove half-written checkpoint folders (``checkpoints/.tmp-*``) of the runs under
    ``runs_dir`` whose supervisor is gone; return (folder, bytes) of each."""
    from engine.runtime.rundir import reap_stale_checkpoint_tmp

    return reap_stale_checkpoint_tmp(_list_runs(Path(runs_dir)))


def _supervisor_args(rd: _RunDir, resume: bool) -> list[str]:
    return [str(rd.path)] + (["--resume"] if resume else [])


def _supervisor_cmd(rd: _RunDir, resume: bool) -> list[str]:
    return [sys.executable, "-m", "engine.runtime.start", *_supervisor_args(rd, resume)]


def supervisor_env() -> dict:
    """The environment a detached supervisor gets: this one, with the engine importable even when
    it runs from a source checkout (the warm launcher must be started with it too)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start_warm_launcher(sock: Union[str, Path], log=subprocess.DEVNULL, timeout: float = 120.0):
    """Start a warm launcher (``engine.runtime.warm``) on ``sock`` as this process's child, with the
    environment a supervisor would get, and wait until it listens: ``(process, ready)``. Point
    ``RLHF_CONSOLE_WARM`` at ``sock`` for runs started here to be forks of it."""
    proc = subprocess.Popen([sys.executable, "-m", "engine.runtime.warm", str(sock)], env=supervisor_env(),
                            cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)
    t0 = time.time()
    while not Path(sock).exists() and proc.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.01)
    return proc, Path(sock).exists()


def _spawn_detached(rd: _RunDir, resume: bool = False) -> int:
    env = supervisor_env()
    pid = None
    sock = os.environ.get("RLHF_CONSOLE_WARM")
    if sock:  # a warm launcher (engine.runtime.warm) forks the supervisor, or says why not
        from engine.runtime.warm import request_start

        pid, why = request_start(sock, _supervisor_args(rd, resume), env=env, log=rd.supervisor_log)
        if pid is None:
            with open(rd.supervisor_log, "a") as log:
                log.write(f"warm launcher not used: {why}\n")
    if pid is None:
        with open(rd.supervisor_log, "ab") as log:
            pid = subprocess.Popen(
                _supervisor_cmd(rd, resume), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, env=env, cwd=os.getcwd(),
            ).pid
    rd.write_state(supervisor_pid=pid)
    return pid


def launch(config: Union[str, Path, RunConfig], overrides: Sequence[str] = (), *, detach: bool = True,
           wait_ready: bool = True, timeout: float = 600.0) -> "Run":
    """Validate a config, create its run directory and start its supervisor.

    ``detach=True`` starts the supervisor in its own session (it outlives this process and the
    terminal); ``detach=False`` runs it in this process until the run ends.
    """
    cfg = config if isinstance(config, RunConfig) else load_config(config, list(overrides), check_access=True)
    rd = create_run_dir(cfg)
    run = Run(rd.path)
    if not detach:
        run_here(rd)
        return run
    _spawn_detached(rd)
    if wait_ready:
        run.wait_started(timeout)
    return run


def attach(run: Union[str, Path], runs_dir: Union[str, Path] = "runs") -> "Run":
    """A handle on an existing run: a directory path, or a run name under ``runs_dir``."""
    p = Path(run)
    if not (p / "run.json").exists():
        cand = Path(runs_dir) / str(run)
        if (cand / "run.json").exists():
            p = cand
        else:
            matches = [r.path for r in _list_runs(Path(runs_dir)) if r.name.startswith(str(run))]
            if len(matches) == 1:
                p = matches[0]
            else:
                raise RunError(f"no run '{run}' (looked for {p}/run.json and under {runs_dir}/)")
    return Run(p)


def list_runs(runs_dir: Union[str, Path] = "runs") -> list["Run"]:
    return [Run(r.path) for r in _list_runs(Path(runs_dir))]


class Run:
    def __init__(self, path: Union[str, Path]):
        self.dir = _RunDir(Path(path))
        self.path = self.dir.path
        self.name = self.dir.name
        self.resume_note = ""

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, state={self.state!r})"

    # ---- state ---------------------------------------------------------------------------
    @property
    def info(self) -> dict:
        return self.dir.read_state()

    @property
    def state(self) -> str:
        return self.dir.effective_state()

    @property
    def alive(self) -> bool:
        """Its state (:func:`run_state`, the one rule) is a live one."""
        return self.state in LIVE_STATES

    def wait_started(self, timeout: float = 600.0) -> str:
        """Wait until the supervisor has loaded every role (or failed)."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            st = self.info
            s = st.get("state")
            if s in ("running", "paused", "finished", "stopped"):
                return s
            if s == "failed":
                raise RunError(f"run {self.name} failed: {st.get('failure')}")
            if run_state(st) == "dead":
                raise RunError(f"run {self.name}: the supervisor exited during start-up; see {self.dir.supervisor_log}")
            time.sleep(0.05)
        raise RunError(f"run {self.name} did not start within {timeout:.0f}s")

    def wait(self, states=("finished", "failed", "stopped"), timeout: float = 600.0, poll: float = 0.05) -> str:
        t0 = time.time()
        while time.time() - t0 < timeout:
            s = self.state
            if s in states or s == "dead":
                return s
            time.sleep(poll)
        raise RunError(f"run {self.name} still {self.state} after {timeout:.0f}s")

    def wait_step(self, step: int, timeout: float = 600.0) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if int(self.info.get("step") or 0) >= step:
                return
            if self.state in ("failed", "dead", "finished", "stopped"):
                raise RunError(f"run {self.name} is {self.state} at step {self.info.get('step')}: {self.info.get('failure')}")
            time.sleep(0.05)
        raise RunError(f"run {self.name} did not reach step {step} within {timeout:.0f}s")

    # ---- control -------------------------------------------------------------------------
    def _socket(self) -> Path:
        st = self.info
        sock = st.get("socket")
        if not sock or not self.alive:
            raise RunError(f"run {self.name} is not running (state {self.state}); no control socket")
        return Path(sock)

    def request(self, op: str, timeout: float = 60.0, **fields) -> dict:
        try:
            with _ControlClient(self._socket(), timeout=timeout) as c:
                return c.request(op, **fields)
        except (ConnectionError, FileNotFoundError, OSError) as e:
            raise RunError(f"run {self.name}: control socket unavailable ({e})") from e

    def _ok(self, reply: dict) -> dict:
        if not reply.get("ok"):
            raise RunError(reply.get("error", "request refused"))
        return reply

    def status(self) -> dict:
        if not self.alive or not self.info.get("socket"):
            return {"ok": True, **self.info, "state": self.state}
        return self.request("status")

    def pause(self) -> dict:
        return self._ok(self.request("pause"))

    def resume(self) -> dict:
        return self._ok(self.request("resume"))

    def stop(self, wait: bool = False, timeout: float = 600.0, grace_s: Optional[float] = None) -> dict:
        """Stop at the end of the current step (with a checkpoint). A worker that has not
        answered within ``grace_s`` seconds (default: max(60 s, 3 x the longest step)) is killed
        and the run stops without finishing that step."""
        fields = {} if grace_s is None else {"grace_s": float(grace_s)}
        r = self._ok(self.request("stop", **fields))
        if wait:
            self.wait(timeout=timeout)
        return r

    def checkpoint(self, wait: bool = True, timeout: float = 600.0) -> dict:
        return self._ok(self.request("checkpoint", timeout=timeout + 5, wait=wait, wait_timeout=timeout))

    def swap_reward(self, source: str, timeout: float = 900.0) -> dict:
        return self._ok(self.request("swap_reward", timeout=timeout, source=source))

    def restart(self, timeout: float = 600.0, wait_ready: bool = True) -> "Run":
        """Continue a stopped/failed/dead run from its latest checkpoint in a new supervisor.
        ``resume_note`` says which steps are trained again when that checkpoint is older than
        the run's last step."""
        if self.alive:
            raise RunError(f"run {self.name} is still {self.state}; pause/resume it instead")
        latest = self.dir.latest_checkpoint()
        if latest is None:
            raise RunError(f"run {self.name} has no checkpoint to resume from")
        from engine.runtime.rundir import reap_stale_checkpoint_tmp

        reap_stale_checkpoint_tmp([self.dir])  # the supervisor also does, and logs it
        ck_step = int(latest.name.split("_")[-1])
        last = int(self.info.get("step") or 0)
        self.resume_note = (f"the latest checkpoint is {latest.name}: steps {ck_step + 1}-{last} were not "
                            f"checkpointed and are trained again" if last > ck_step else "")
        self.dir.write_state(state="starting", failure=None, failed_role=None, checkpoint_error=None)
        _spawn_detached(self.dir, resume=True)
        if wait_ready:
            self.wait_started(timeout)
        return self

    # ---- history then live ----------------------------------------------------------------
    def _iter(self, path: Path, follow: bool, poll: float) -> Iterator[dict]:
        tail = JsonlTail(path)
        while True:
            rows = tail.read_new()
            yield from rows
            if not follow:
                return
            if not rows:
                if not self.alive:
                    yield from tail.read_new()
                    return
                time.sleep(poll)

    def metrics(self, follow: bool = False, poll: float = 0.25) -> Iterator[dict]:
        return self._iter(self.dir.metrics, follow, poll)

    def samples(self, follow: bool = False, poll: float = 0.25) -> Iterator[dict]:
        return self._iter(self.dir.samples, follow, poll)

    def labels(self) -> list[dict]:
        return read_jsonl(self.dir.labels)

    def events(self, follow: bool = False, poll: float = 0.25) -> Iterator[str]:
        tail = LineTail(self.dir.events)
        while True:
            lines = tail.read_lines()
            yield from lines
            if not follow:
                return
            if not lines:
                if not self.alive:
                    yield from tail.read_lines()
                    return
                time.sleep(poll)

    def subscribe(self) -> Iterator[dict]:
        """Live events from the supervisor's socket (step, samples, state, log, checkpoint)."""
        c = _ControlClient(self._socket(), timeout=None)
        try:
            yield from c.events()
        finally:
            c.close()

    def label(self, sample_id: str, verdict, step=None, note: str = "") -> dict:
        """Mark sample ``sample_id`` good or bad: a row in labels.jsonl that names that sample
        and its own step (the id is checked against samples.jsonl first). The older form
        ``label(sample_id, step, verdict)`` is accepted too."""
        from engine.judgements import JudgementError, mark_row

        if isinstance(verdict, int) and isinstance(step, str):   # label(sample_id, step, verdict)
            verdict, step = step, verdict
        try:
            row = mark_row(self.path, str(sample_id), str(verdict), note=note)
        except JudgementError as e:
            raise RunError(f"run {self.name}: {e}") from None
        return self.dir.append_label(Label.from_dict(row).check()).to_dict()

    def prefer(self, chosen_id: str, rejected_id: str) -> dict:
        """Prefer sample ``chosen_id`` over ``rejected_id`` (two responses to one prompt): a pair
        row ``{"prompt", "chosen", "rejected", "step", "source": "human", "chosen_id",
        "rejected_id"}`` in labels.jsonl, its texts copied from samples.jsonl."""
        from engine.judgements import JudgementError, pair_row

        try:
            row = pair_row(self.path, str(chosen_id), str(rejected_id))
        except JudgementError as e:
            raise RunError(f"run {self.name}: {e}") from None
        return self.dir.append_label(Label.from_dict(row).check()).to_dict()

    def judgements(self):
        """Counts and rows of the run's judgements (:class:`engine.judgements.Judgements`)."""
        from engine.judgements import read_judgements

        return read_judgements(self.path, with_text=False)

    def sample_pair(self, prompt: Optional[str] = None, n: int = 2, timeout: float = 600.0,
                    candidates: Optional[int] = None) -> list[dict]:
        """Fresh responses of the live actor to one prompt (a random prompt of the run's data
        unless given; ``n`` of them, 2 by default, for a pair), generated at the next step
        boundary, scored by the current reward and logged to samples.jsonl (ids ``STEP-pairKa``,
        ``STEP-pairKb``, ...). ``candidates``: generate that many and return the pair a judgement
        teaches most (active selection: where the base reward and the learned preference
        disagree, else where the reward is least sure; each sample says why in ``picked``).
        Returns the samples."""
        fields = {"wait_timeout": timeout, "n": int(n)}
        if prompt is not None:
            fields["prompt"] = prompt
        if candidates is not None:
            fields["candidates"] = int(candidates)
        return self._ok(self.request("sample_pair", timeout=timeout + 5, **fields))["samples"]

    def refit_reward(self, wait: bool = False, timeout: float = 3600.0, poll: float = 0.5) -> dict:
        """Start a refit of the reward model from the run's judgements (a separate low-priority
        process; progress in events.log). ``wait``: return when it is decided (and, if accepted,
        swapped in) with its entry of ``reward_versions()["refits"]``."""
        r = self._ok(self.request("refit_reward"))
        if not wait:
            return r
        attempt = r["attempt"]
        t0 = time.time()
        while time.time() - t0 < timeout:
            reg = self.reward_versions()
            entry = next((x for x in reg["refits"] if x.get("attempt") == attempt), None)
            if entry and entry.get("state") != "running":
                if entry.get("state") != "accepted":
                    return entry
                if any(v.get("attempt") == attempt for v in reg["versions"]):
                    return entry
                if not self.alive:
                    return entry
            elif not self.alive:
                raise RunError(f"run {self.name} ended ({self.state}) before refit {attempt} was decided")
            time.sleep(poll)
        raise RunError(f"run {self.name}: refit {attempt} not decided within {timeout:.0f}s")

    def reward_versions(self) -> dict:
        """``rewards/versions.json``: ``versions`` (each reward that scored steps: version, source,
        kind, from_step, and for a refit its evaluation) and ``refits`` (every attempt with its
        figures, verdict and reason)."""
        import json as _json

        try:
            reg = _json.loads((self.path / "rewards" / "versions.json").read_text())
        except (OSError, ValueError):
            reg = {}
        reg.setdefault("versions", [])
        reg.setdefault("refits", [])
        return reg
