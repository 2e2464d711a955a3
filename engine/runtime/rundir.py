"""The run directory: the single source of truth for a run.

    runs/<name>-<yyyymmdd-hhmmss>/
      config.yaml  run.json  control.sock  metrics.jsonl  samples.jsonl  labels.jsonl
      events.log   supervisor.log  tensorboard/  checkpoints/step_<N>/

Everything here is plain files written so that a crash never leaves a half-written one:
whole files are written to a temp file and renamed; JSONL files are appended one complete line
at a time and readers skip a trailing partial line.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

# the file primitives live in engine.files; the names below are re-exported for older importers
from engine.files import (
    JsonlTail,
    LineTail,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    durable_rename,
    fsync_dir,
    fsync_tree,
    human_size,
    read_jsonl,
    tree_size,
)
from engine.procs import pid_alive
from engine.records import Label, MetricsRow, RunInfo, Sample

# the run-state rule and run names are engine.runs' (shared with engine.client and the config checks)
from engine.runs import ENDED_STATES, LIVE_STATES, START_GRACE_S, STATES, make_run_name, run_state

__all__ = ["STATES", "LIVE_STATES", "ENDED_STATES", "START_GRACE_S", "run_state", "RunDir", "list_runs",
           "make_run_name", "write_error_cause", "reap_stale_checkpoint_tmp", "pid_alive",
           "JsonlTail", "LineTail", "append_jsonl", "atomic_write_json", "atomic_write_text", "durable_rename",
           "fsync_dir", "fsync_tree", "human_size", "read_jsonl", "tree_size"]

def write_error_cause(e: BaseException, folder: Path) -> str:
    """The cause of a failed write, named even when a library hides it (torch.save reports a
    full disk as ``unexpected pos ...``): a full filesystem, a file-size limit or the error."""
    chain, x = [], e
    while x is not None and len(chain) < 8:
        chain.append(x)
        x = x.__cause__ or x.__context__
    for x in chain:
        if isinstance(x, OSError) and x.errno:
            return f"{x.strerror or os.strerror(x.errno)} ({type(e).__name__}: {e})" if x is not e else f"{type(e).__name__}: {e}"
    what = f"{type(e).__name__}: {e}"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 4 * 2**20:
        return f"{os.strerror(errno.ENOSPC)} ({human_size(free)} free) ({what})"
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return f"{os.strerror(errno.EFBIG)} (file-size limit {human_size(soft)}) ({what})"
    return what


_TMP_CKPT = re.compile(r"\.tmp-step_\d+-(\d+)")


def reap_stale_checkpoint_tmp(run_dirs, keep_pid: Optional[int] = None) -> list[tuple[Path, int]]:
    """Remove half-written checkpoint folders (``checkpoints/.tmp-step_N-PID``) whose writer is
    gone: the supervisor PID in the name is dead, or the run's live supervisor is another
    process. ``keep_pid`` is the calling supervisor's own pid (its folders are never touched).
    Returns (folder, bytes) of each folder removed."""
    removed: list[tuple[Path, int]] = []
    for rd in run_dirs:
        rd = rd if isinstance(rd, RunDir) else RunDir(Path(rd))
        try:
            entries = list(rd.checkpoints.iterdir())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        live_sup = rd.read_info().supervisor_pid
        for p in entries:
            m = _TMP_CKPT.fullmatch(p.name)
            if not m:
                continue
            writer = int(m.group(1))
            if writer == keep_pid:
                continue
            if pid_alive(writer) and writer == live_sup:
                continue  # the run's own supervisor is writing it right now
            size = tree_size(p)
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                removed.append((p, size))
    return removed


_STATE_LOCK = threading.RLock()  # run.json's read-update-write, across this process's threads


@dataclass
class RunDir:
    path: Path

    def __post_init__(self):
        self.path = Path(self.path).resolve()

    # ---- layout -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    config = property(lambda self: self.path / "config.yaml")
    run_json = property(lambda self: self.path / "run.json")
    socket = property(lambda self: self.path / "control.sock")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    samples = property(lambda self: self.path / "samples.jsonl")
    labels = property(lambda self: self.path / "labels.jsonl")
    events = property(lambda self: self.path / "events.log")
    supervisor_log = property(lambda self: self.path / "supervisor.log")

    @property
    def checkpoints(self) -> Path:
        """<run dir>/checkpoints, or the folder run.json names (checkpoint.dir set)."""
        other = self.read_info().checkpoint_dir
        return Path(other) if other else self.path / "checkpoints"

    @classmethod
    def create(cls, runs_dir: Path, name: str) -> "RunDir":
        runs_dir = Path(runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        base = make_run_name(name)
        for i in range(100):
            p = runs_dir / (base if i == 0 else f"{base}-{i}")
            try:
                p.mkdir(mode=0o700)
                break
            except FileExistsError:
                continue
        else:
            raise RuntimeError(f"could not create a run directory under {runs_dir}")
        os.chmod(p, 0o700)
        rd = cls(p)
        (p / "checkpoints").mkdir(exist_ok=True)
        return rd

    # ---- run.json -----------------------------------------------------------------------
    def read_state(self) -> dict:
        try:
            return json.loads(self.run_json.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def read_info(self) -> RunInfo:
        """run.json as a typed record (a missing or unreadable file: the defaults)."""
        return RunInfo.from_dict(self.read_state())

    def write_state(self, **fields) -> dict:
        """Update run.json atomically. Every name must be a :class:`RunInfo` field; ``updated``
        is set to now unless given. Read, update and write are one step for the threads of this
        process (the supervisor's loop, its stage publisher, a refit's watcher): two writers
        never lose each other's fields."""
        RunInfo.check_names(fields)
        with _STATE_LOCK:
            state = self.read_state()
            state.update(fields)
            if "updated" not in fields:
                state["updated"] = time.time()
            atomic_write_json(self.run_json, state)
        return state

    def effective_state(self) -> str:
        """run.json's state, corrected when the supervisor is gone without saying so (:func:`run_state`)."""
        return run_state(self.read_state())

    # ---- events -------------------------------------------------------------------------
    def log_event(self, message: str, level: str = "INFO", when: Optional[float] = None) -> str:
        """Append one line to events.log: ``<date> <time> <LEVEL>  message`` (``when``: epoch
        seconds, default now)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
        line = f"{stamp} {level:<7} {message}"
        with open(self.events, "a") as f:
            f.write(line + "\n")
        return line

    # ---- metrics, samples, labels -------------------------------------------------------
    def record_step(self, metrics: Union[MetricsRow, dict], samples: Iterable[Union[Sample, dict]],
                    **state) -> None:
        """Append one step's metrics line and sample lines, then (``state`` given) update
        run.json. If a write fails (full disk, permission), metrics.jsonl and samples.jsonl
        are cut back to where they were and the OSError is raised: the step is not recorded."""
        sizes = {}
        for path in (self.metrics, self.samples):
            try:
                sizes[path] = path.stat().st_size
            except FileNotFoundError:
                sizes[path] = 0
        try:
            # every line goes through its record: the file's shape is the record's
            row = metrics if isinstance(metrics, MetricsRow) else MetricsRow.from_dict(metrics)
            append_jsonl(self.metrics, row.to_dict())
            for x in samples:
                append_jsonl(self.samples, (x if isinstance(x, Sample) else Sample.from_dict(x)).to_dict())
            if state:
                self.write_state(**state)
        except OSError:
            for path, size in sizes.items():
                try:
                    os.truncate(path, size)
                except OSError:
                    pass
            raise

    def read_metrics(self) -> list[MetricsRow]:
        return [MetricsRow.from_dict(r) for r in read_jsonl(self.metrics)]

    def read_samples(self) -> list[Sample]:
        return [Sample.from_dict(r) for r in read_jsonl(self.samples)]

    def append_label(self, label: Label) -> Label:
        append_jsonl(self.labels, label.to_dict())
        return label

    def read_labels(self) -> list[Label]:
        return [Label.from_dict(r) for r in read_jsonl(self.labels)]

    # ---- checkpoints --------------------------------------------------------------------
    def checkpoint_dirs(self) -> list[Path]:
        if not self.checkpoints.exists():
            return []
        out = []
        for p in self.checkpoints.iterdir():
            m = re.fullmatch(r"step_(\d+)", p.name)
            if m and p.is_dir() and (p / "state.json").exists():
                out.append((int(m.group(1)), p))
        return [p for _, p in sorted(out)]

    def latest_checkpoint(self) -> Optional[Path]:
        c = self.checkpoint_dirs()
        return c[-1] if c else None


def list_runs(runs_dir: Path) -> list[RunDir]:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    out = [RunDir(p) for p in runs_dir.iterdir() if p.is_dir() and (p / "run.json").exists()]
    out.sort(key=lambda r: r.read_info().created or 0)
    return out
