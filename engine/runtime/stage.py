"""The stage of the step in progress, for the console's header: which phase the driver is in
(generating, scoring, advantages, update, ...) and, where a worker reports it, how far
(k of N tokens generated, k of N update mini-batches done).

A 2-core machine's step takes up to a minute; without this the dashboard shows only the elapsed
time moving between two metrics lines. The driver reports phases and the workers report
progress inside an operation (engine/runtime/worker.py); :meth:`StepStage.flush` publishes the
newest state (to run.json, as ``step_stage``) at most once per ``min_interval`` seconds, so a
per-token report never turns into a per-token file write.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

# which worker operation (and role) carries the progress of a driver phase
PHASE_OPS = {"generating": ("actor", "generate"), "evaluating": ("actor", "generate"),
             "update": ("actor", "update")}


class StepStage:
    """What the step in progress is doing; thread-safe (the driver's thread sets phases, the
    workers' reader threads report progress, a timer thread flushes)."""

    def __init__(self, publish: Callable[[Optional[dict]], object], min_interval: float = 1.0,
                 clock: Callable[[], float] = time.time):
        self._publish = publish
        self.min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()   # one publication at a time, in order
        self._stage: Optional[dict] = None
        self._published: Optional[dict] = None
        self._published_at = float("-inf")

    def phase(self, step: int, phase: str) -> None:
        """The driver entered ``phase`` of step ``step``; progress counts start afresh."""
        now = self._clock()
        with self._lock:
            since = self._stage["since"] if self._stage and self._stage["step"] == step else now
            self._stage = {"step": int(step), "phase": phase, "since": since, "phase_since": now}

    def progress(self, role: str, op: str, done: int, total: int, unit: str) -> None:
        """A worker's report from inside ``role.op``: ``done`` of ``total`` ``unit``. Kept only
        when it belongs to the phase in progress (an evaluation's generate call at a step
        boundary is not the rollout)."""
        with self._lock:
            st = self._stage
            if st is None or PHASE_OPS.get(st["phase"]) != (role, op):
                return
            st.update(done=int(done), total=int(total), unit=unit)

    def clear(self) -> None:
        """No step is in progress (the run is between steps for good: paused, stopping, ended)."""
        with self._lock:
            self._stage = None

    def current(self) -> Optional[dict]:
        with self._lock:
            return dict(self._stage) if self._stage is not None else None

    def flush(self, force: bool = False) -> bool:
        """Publish the current stage if it changed since the last publication and at least
        ``min_interval`` seconds have passed (``force``: now, whatever the time). True when
        it published."""
        with self._flush_lock:
            with self._lock:
                now = self._clock()
                cur = dict(self._stage) if self._stage is not None else None
                if cur == self._published or (not force and now - self._published_at < self.min_interval):
                    return False
                self._published, self._published_at = cur, now
            self._publish(cur)
            return True

