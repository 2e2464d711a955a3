"""What the dashboard knows about a run, rebuilt from the run directory and kept up to date.

``RunFollower`` reads the files incrementally (it runs in a thread worker); ``RunModel`` holds
the accumulated history on the event loop and derives everything the panes show. No pane keeps
its own copy of the history: they all read this one model.
"""
from __future__ import annotations

import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from console.history import ChunkTail, SampleIndex, parse_jsonl
from engine.client import ENDED_STATES, LIVE_STATES, Label, MetricsRow, Run, RunInfo, run_state

# (key in metrics["timings"], role, phase, concurrent-wall?)
PHASES = (
    ("rollout", "actor", "generate", False),
    ("actor_logprobs", "actor", "old logprob", False),
    ("ref", "reference", "logprobs", False),
    ("critic", "critic", "values", False),
    ("reward", "reward", "score", False),
    ("scoring", "wall", "scoring ∥", True),
    ("advantage", "driver", "advantage", False),
    ("actor_update", "actor", "update", False),
    ("critic_update", "critic", "update", False),
    ("update", "wall", "update ∥", True),
)

CONTROL_STATES = ("running", "paused", "starting")

_RM_STEP = re.compile(r"train-rm: step (\d+)/(\d+)(?:.*?~(\d+) s left)?")
_LOADED = re.compile(r"^(\w+): loaded in ")
N_ROLES = 4
_STARTING = re.compile(r": starting \d+ .*? for ([a-z, ]+) \(")


@dataclass
class Stage:
    """What a starting run is doing, from its events.log progress lines."""
    label: str
    done: Optional[int] = None
    total: Optional[int] = None
    left_s: Optional[float] = None


@dataclass
class RunDelta:
    info: Optional[RunInfo] = None       # run.json when it changed
    state: Optional[str] = None          # effective state when it changed
    metrics: list = field(default_factory=list)         # MetricsRow
    samples: list = field(default_factory=list)
    sample_offsets: list = field(default_factory=list)   # byte offset of each sample in samples.jsonl
    labels: list = field(default_factory=list)          # Label
    events: list = field(default_factory=list)
    config_text: Optional[str] = None    # config.yaml, on the first poll
    caught_up: bool = True               # every file was read to its end by this poll

    def __bool__(self) -> bool:
        return bool(self.info is not None or self.state is not None or self.metrics or self.samples
                    or self.labels or self.events or self.config_text is not None)


class RunFollower:
    """Reads a run directory incrementally: the history first, at most ``chunk`` bytes of each
    file per ``poll()`` (``delta.caught_up`` is False while there is more), then what is new.

    One linear pass over each file: byte offsets, never a re-read. Of events.log only the last
    ``EVENTS_TAIL`` bytes of the history are read (the pane keeps a bounded tail anyway).
    """

    EVENTS_TAIL = 16 * 1024
    FIRST_CHUNK = 128 * 1024     # the first poll is small: the dashboard has something to show at once

    def __init__(self, path: Path, chunk: Optional[int] = 1 << 20):
        self.run = Run(path)
        d = self.run.dir
        self.chunk = chunk
        self._metrics = ChunkTail(d.metrics)
        self._samples = ChunkTail(d.samples)
        self._labels = ChunkTail(d.labels)
        self._events = ChunkTail.from_tail(d.events, self.EVENTS_TAIL)
        self._info: Optional[dict] = None    # run.json as last read
        self._state: Optional[str] = None
        self._first = True

    @property
    def state(self) -> Optional[str]:
        """The effective state at the last poll (None before the first)."""
        return self._state

    def poll(self) -> RunDelta:
        delta = RunDelta()
        raw = self.run.dir.read_state()
        if raw and raw != self._info:
            self._info = raw
            delta.info = RunInfo.from_dict(raw)
        st = run_state(self._info or {})
        if st != self._state:
            self._state = st
            delta.state = st
        chunk = self.chunk if not self._first or self.chunk is None else min(self.chunk, self.FIRST_CHUNK)
        rows, _ = parse_jsonl(self._metrics.read(chunk))
        delta.metrics = [MetricsRow.from_dict(r) for r in rows]
        delta.samples, delta.sample_offsets = parse_jsonl(self._samples.read(chunk))
        rows, _ = parse_jsonl(self._labels.read(self.chunk))
        delta.labels = [Label.from_dict(r) for r in rows]
        delta.events = [ln.decode("utf-8", "replace") for _, ln in self._events.read(self.chunk)]
        delta.caught_up = all(t.at_end for t in (self._metrics, self._samples, self._labels, self._events))
        if self._first:
            self._first = False
            try:
                delta.config_text = self.run.dir.config.read_text()
            except OSError:
                delta.config_text = ""
        return delta


def fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


def fmt_num(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return str(v)


class RunModel:
    """The accumulated history of one run and the figures derived from it."""

    MAX_EVENTS = 2000

    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.name = self.path.name
        self.clock = clock
        self.info = RunInfo()
        self.state: str = "unknown"
        self.metrics: list[MetricsRow] = []
        self.samples = SampleIndex(self.path / "samples.jsonl")
        self.labels: dict[str, str] = {}
        self.pair_marks: dict[str, str] = {}   # sample id -> "preferred" / "rejected" (pairwise judgements)
        self.n_pairs = 0
        self.n_judgements = 0                 # judgement rows in labels.jsonl (marks and pairs)
        self.events: deque[str] = deque(maxlen=self.MAX_EVENTS)
        self.config: dict = {}
        self.version = 0                  # bumps on every change; panes redraw when it moves
        self._sum: dict[str, float] = {}
        self._count: dict[str, int] = {}
        self._series: dict[str, tuple[list, list, list, int]] = {}   # key -> (steps, times, values, metrics read)
        self._mem: dict = {}
        self.new_samples: list[int] = []   # ordinals added by the last apply()
        self.caught_up = False             # the whole history on disk has been read once
        self.alerts_now: list[dict] = []   # reward-hacking monitors over threshold at the newest step
        self.alerts_step = 0
        self.alerts_seen: dict[str, dict] = {}   # monitor -> {first, last, steps} over the run

    # ---- updates ----------------------------------------------------------------------------
    def apply(self, d: RunDelta) -> None:
        if d.config_text is not None:
            try:
                import yaml

                self.config = yaml.safe_load(d.config_text) or {}
            except Exception:  # noqa: BLE001 - a config we cannot read only loses the KL target line
                self.config = {}
        if d.info is not None:
            self.info = d.info
        if d.state is not None:
            self.state = d.state
        for m in d.metrics:
            self.metrics.append(m)
            for k, v in m.timings.items():
                if isinstance(v, (int, float)):
                    self._sum[k] = self._sum.get(k, 0.0) + float(v)
                    self._count[k] = self._count.get(k, 0) + 1
            if m.memory:
                self._mem = m.memory
            self._alerts(m)
        self.new_samples = self.samples.add(d.samples, d.sample_offsets if d.sample_offsets else None)
        for row in d.labels:
            self.add_label_row(row)
        self.events.extend(d.events)
        if d.caught_up:
            self.caught_up = True
        if d:
            self.version += 1

    def _alerts(self, m: MetricsRow) -> None:
        alerts = [a for a in (m.get("alerts") or []) if isinstance(a, dict) and a.get("monitor")]
        step = m.step
        self.alerts_now, self.alerts_step = alerts, step
        for a in alerts:
            s = self.alerts_seen.setdefault(str(a["monitor"]), {"first": step, "last": step, "steps": 0})
            s["last"] = step
            s["steps"] += 1

    def add_label_row(self, row) -> None:
        """One row of labels.jsonl (a Label record or its dict): a good/bad mark or a pair."""
        if hasattr(row, "to_dict"):
            row = row.to_dict()
        if "chosen" in row and "rejected" in row:
            self.n_pairs += 1
            self.n_judgements += 1
            for key, what in (("chosen_id", "preferred"), ("rejected_id", "rejected")):
                if row.get(key) is not None:
                    self.pair_marks[str(row[key])] = what
        elif row.get("sample_id"):
            self.labels[str(row["sample_id"])] = str(row.get("label", ""))
            self.n_judgements += 1

    def judgement_counts(self) -> dict:
        """good, bad (newest mark of each sample), pairs, and judgements since the last refit."""
        vals = list(self.labels.values())
        refit = self.info.refit or {}
        return {"good": vals.count("good"), "bad": vals.count("bad"), "pairs": self.n_pairs,
                "since_refit": max(0, self.n_judgements - int(refit.get("judgement_rows") or 0)),
                "refit": refit}

    @property
    def reward_version(self) -> int:
        v = self.info.reward_version
        if v is None and self.metrics:
            v = self.metrics[-1].get("reward_version")
        return int(v or 0)

    def reward_swaps(self) -> list[tuple[int, float, int]]:
        """(first step, its time, version) of each reward version after the first, from metrics."""
        out, prev = [], None
        for m in self.metrics:
            v = m.get("reward_version")
            if v is None:
                continue
            if prev is not None and v != prev:
                out.append((int(m.get("step") or 0), float(m.get("time") or 0.0), int(v)))
            prev = v
        return out

    # ---- derived ------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        s = self.info.step
        if not s and self.metrics:
            s = self.metrics[-1].step
        return int(s or 0)

    @property
    def steps(self) -> Optional[int]:
        s = self.info.steps
        if s is None:
            s = (self.config.get("run") or {}).get("steps")
        return int(s) if s is not None else None

    @property
    def alive(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def failure(self) -> str:
        if self.state == "dead":
            return self.info.failure or "the supervisor is gone (killed?) and the control socket with it"
        return self.info.failure or ""

    @property
    def created(self) -> Optional[float]:
        c = self.info.created
        return float(c) if isinstance(c, (int, float)) else None

    def elapsed(self) -> Optional[float]:
        if self.created is None:
            return None
        if self.alive:
            end = self.clock()
        else:  # ended: when run.json was last written (the final state), else the last step
            end = self.info.updated
            if not isinstance(end, (int, float)):
                end = self.metrics[-1].time if self.metrics else self.created
            end = end if isinstance(end, (int, float)) else self.created
        return max(0.0, end - self.created)

    def steps_per_minute(self, window: int = 20) -> Optional[float]:
        ts = [m.time for m in self.metrics[-window:] if isinstance(m.time, (int, float))]
        if len(ts) >= 2 and ts[-1] > ts[0]:
            return 60.0 * (len(ts) - 1) / (ts[-1] - ts[0])
        if self.metrics:
            st = self.metrics[-1].timing("step")
            if st:
                return 60.0 / st
        return None

    def eta(self) -> Optional[float]:
        if self.steps is None or self.state in ENDED_STATES:
            return None
        rate = self.steps_per_minute()
        if not rate:
            return None
        return max(0, self.steps - self.step) * 60.0 / rate

    def timing_rows(self) -> list[tuple[str, str, Optional[float], Optional[float], Optional[float], bool]]:
        """(role, phase, last, mean, share of the step (mean/mean), concurrent-wall)."""
        last = self.metrics[-1].timings if self.metrics else {}
        mean_step = self.mean("step")
        rows = []
        for key, role, phase, wall in PHASES:
            if key not in last and key not in self._sum:
                continue
            mean = self.mean(key)
            share = (mean / mean_step) if (mean is not None and mean_step) else None
            rows.append((role, phase, last.get(key), mean, share, wall))
        return rows

    def mean(self, key: str) -> Optional[float]:
        n = self._count.get(key)
        return self._sum[key] / n if n else None

    def series(self, key: str, with_time: bool = False):
        """(steps, values) of one metric, or (steps, times, values); kept up to date incrementally
        (each metrics line is read once per key, however often the plots redraw)."""
        xs, ts, ys, upto = self._series.get(key) or ([], [], [], 0)
        for m in self.metrics[upto:] if upto < len(self.metrics) else ():
            v = m.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                xs.append(int(m.step if m.step else len(xs) + 1))
                t = m.time
                ts.append(float(t) if isinstance(t, (int, float)) else float("nan"))
                ys.append(float(v))
        self._series[key] = (xs, ts, ys, len(self.metrics))
        return (xs, ts, ys) if with_time else (xs, ys)

    def step_times(self) -> list[float]:
        return [m.timing("step") or 0.0 for m in self.metrics]

    @property
    def kl_target(self) -> Optional[float]:
        ppo = self.config.get("ppo") or {}
        if str(ppo.get("kl_controller", "")).lower() == "adaptive" and isinstance(ppo.get("target_kl"), (int, float)):
            return float(ppo["target_kl"])
        return None

    def role_memory(self) -> dict[str, dict]:
        """The newest per-role host memory from metrics.jsonl (``memory`` of the last step)."""
        return self._mem

    def stage(self) -> Optional[Stage]:
        """While the run is starting: the stage (download, conversion, reward-model training,
        model loading) and its progress, from the newest progress lines of events.log."""
        if self.state != "starting":
            return None
        lines = list(self.events)[-400:]
        start = max((i for i, ln in enumerate(lines) if ": starting " in ln and " for " in ln), default=0)
        lines = lines[start:]
        loaded = {m.group(1) for ln in lines for m in [_LOADED.match(_message(ln))] if m}
        # the roles the run starts ("... for actor, reference, reward (2 cores)": a critic-free
        # estimator has no critic, a LoRA actor no reference worker)
        m = _STARTING.search(_message(lines[0])) if lines else None
        n_roles = len(m.group(1).split(", ")) if m else N_ROLES
        for ln in reversed(lines):
            msg = _message(ln)
            m = _RM_STEP.search(msg)
            if m:
                return Stage("training the reward model", int(m.group(1)), int(m.group(2)),
                             float(m.group(3)) if m.group(3) else None)
            if "held-out " in msg or ": saved to " in msg:
                return Stage("reward model trained; loading the roles", len(loaded), n_roles)
            if "is not trained yet" in msg or re.search(r"(^|: )training a \w+ reward model", msg):
                return Stage("training the reward model", 0, None)
            if "waiting for another process that is training" in msg:
                return Stage("waiting for another process training the reward model")
            if re.search(r"(^|: )downloading ", msg):
                what = msg.split("downloading ", 1)[1].split(" (")[0]
                return Stage(f"downloading {what}")
            if "verified sha256" in msg:
                return Stage("unpacking a download")
            if any(k in msg for k in ("converting ", "dequantising", "rebuilding a plain", "writing safetensors",
                                      "reading the SmolLM2 tokenizer")):
                return Stage("converting SmolLM2 (once)")
            if _LOADED.match(msg) or (": starting " in msg and " for " in msg):
                break
        return Stage("loading the models", len(loaded), n_roles)

    def step_stage(self) -> Optional[tuple[int, str, Optional[float]]]:
        """While a step runs: (its number, what it is doing -- "generating 12/24 tokens",
        "scoring", "update 2/4 mini-batches" --, seconds in that phase), from run.json's
        ``step_stage``; None between steps, when not running, or for a stage already recorded."""
        st = self.info.step_stage
        if self.state != "running" or not isinstance(st, dict) or not isinstance(st.get("step"), int):
            return None
        if st["step"] != self.step + 1:
            return None
        phase = str(st.get("phase") or "")
        done, total = st.get("done"), st.get("total")
        if isinstance(done, int) and isinstance(total, int) and total > 0:
            phase = f"{phase} {done}/{total} {st.get('unit') or ''}".rstrip()
        since = st.get("phase_since")
        secs = max(0.0, self.clock() - since) if isinstance(since, (int, float)) else None
        return st["step"], phase, secs

    @property
    def pids(self) -> dict[str, int]:
        return {k: v for k, v in (self.info.pids or {}).items() if v}


def _message(line: str) -> str:
    """An events.log line without its date, time and level (``2026-01-01 10:00:00 INFO    msg``)."""
    parts = line.split(None, 3)
    if len(parts) == 4 and len(parts[0]) == 10 and parts[0][4] == "-":
        msg = parts[3]
    else:
        msg = line
    return msg


def ema(values: list[float], alpha: float = 0.2) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out

