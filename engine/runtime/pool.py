"""The run's role workers as one pool: the backend that started them, an endpoint per role for
the driver, every role call in flight, and the watchdog that kills a worker past
``runtime.worker_timeout_s`` or past the grace of a stop request."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Callable, Optional

from engine import transport
from engine.runtime.backend import Backend
from engine.runtime.calls import RoleCall
from engine.runtime.worker import WorkerError

# Role calls that runtime.worker_timeout_s does not cover: checkpoint save/load (disk-bound, they
# grow with the model) and a reward swap (it may load or train a model). Loading the roles at
# start-up is not a call at all (wait_ready), so downloads, conversion and first-use reward-model
# training are never cut short either.
UNTIMED_OPS = ("save", "load", "swap")
STOP_GRACE_MIN_S = 60.0  # `stop` kills workers that have not answered after max(this, 3 x the longest step)


class WorkerDied(WorkerError):
    def __init__(self, h):
        super().__init__(h.roles, h.dead_reason or "worker died", "died")


class Endpoint:
    """One worker as the driver calls it: every call goes through the pool."""

    def __init__(self, handle, pool: "WorkerPool"):
        self.h, self.pool = handle, pool

    def submit(self, call: RoleCall) -> Future:
        """Future of the ``RoleResult``."""
        return self.pool.submit(self.h, call)


class WorkerPool:
    """The workers of one run, whatever their backend."""

    def __init__(self, log_safe: Callable[..., None], is_starting: Callable[[], bool]):
        self.log_safe = log_safe
        self.is_starting = is_starting     # a stop while the roles load kills the loading workers
        self.backend: Optional[Backend] = None
        self.arena: Optional[transport.TensorArena] = None
        self.workers: list = []            # WorkerHandle (local) or RayWorkerHandle (ray)
        self.by_role: dict = {}            # role -> its (first rank's) handle
        self.endpoints: dict = {}          # role -> endpoint the driver calls (a RoleGroup over ranks)
        self.stopping = threading.Event()  # the run's background threads end
        self._inflight: dict[int, dict] = {}  # role calls not answered yet (watchdog)
        self._inflight_lock = threading.Lock()
        self._aborted: set = set()         # labels of workers killed by the watchdog
        self.timeout_failure: Optional[dict] = None
        self.killed_on_stop: list[dict] = []
        self._stop_deadline: Optional[float] = None
        self._stop_grace: Optional[float] = None

    def add(self, h) -> None:
        self.workers.append(h)

    def index(self) -> None:
        """``by_role`` and ``endpoints`` from the started workers."""
        from engine.runtime.ranks import RoleGroup

        ranks: dict[str, list] = {}
        for h in self.workers:
            for r in h.roles:
                self.by_role.setdefault(r, h)  # a role's (first rank's) process
                ranks.setdefault(r, []).append(h)
        self.endpoints = {r: (Endpoint(hs[0], self) if len(hs) == 1
                              else RoleGroup([Endpoint(h, self) for h in hs]))
                          for r, hs in ranks.items()}

    def pids(self) -> dict:
        return {h.label: h.pid for h in self.workers if h.pid}

    def dead(self) -> list:
        return [h for h in self.workers if h.dead_reason]

    # ---- calls ---------------------------------------------------------------------------
    def submit(self, h, call: RoleCall) -> Future:
        """Every role call goes through here so the watchdog sees what is in flight. Future of
        the ``RoleResult``."""
        if not isinstance(call, RoleCall):
            raise TypeError(f"a role call is a RoleCall (engine/runtime/calls.py); got {type(call).__name__}")
        fut = h.submit(call, arena=self.arena)
        key = id(fut)
        with self._inflight_lock:
            self._inflight[key] = {"fut": fut, "h": h, "role": call.role, "op": call.op,
                                   "t0": time.monotonic(), "timed": call.op not in UNTIMED_OPS}

        def done(_f, key=key):
            with self._inflight_lock:
                self._inflight.pop(key, None)

        fut.add_done_callback(done)
        return fut

    def memory(self) -> dict:
        """Each worker's memory figures (best effort: a worker that does not answer is left out)."""
        futs = {h.label: self.submit(h, RoleCall(h.roles[0], "memory")) for h in self.workers}
        out = {}
        for label, f in futs.items():
            try:
                out[label] = memory_report(f.result(timeout=30).info)
            except Exception:  # noqa: BLE001 - memory is best effort
                pass
        return out

    # ---- watchdog: worker timeout and stop grace ------------------------------------------
    def arm_stop_grace(self, longest_s: float, grace_s=None) -> float:
        grace = max(STOP_GRACE_MIN_S, 3.0 * longest_s) if grace_s is None else float(grace_s)
        if not grace > 0 or grace != grace:
            raise ValueError(grace_s)
        deadline = time.monotonic() + grace
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline, self._stop_grace = deadline, grace
        return grace

    def watchdog(self, timeout: float) -> None:
        while not self.stopping.wait(0.25):
            try:
                self._watch_once(timeout)
            except Exception as e:  # noqa: BLE001 - never let the watchdog die quietly
                self.log_safe(f"watchdog error: {type(e).__name__}: {e}", "ERROR")

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
            if self.is_starting():  # a role that hangs while loading
                for h in self.workers:
                    self._abort(h, "stopped", h.roles[0], "load", f"{h.label} (loading) {why}")

    def _abort(self, h, kind: str, role: str, op: str, why: str, **extra) -> None:
        if h.label in self._aborted:
            return
        self._aborted.add(h.label)
        msg = f"{why}; killed worker '{h.label}' (pid {h.pid})"
        rec = {"kind": kind, "role": role, "op": op, "label": h.label, "message": msg, **extra}
        if kind == "timeout" and self.timeout_failure is None:
            self.timeout_failure = rec
        if kind == "stopped":
            self.killed_on_stop.append(rec)
        self.log_safe(msg, "ERROR")
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
            self.log_safe(f"could not kill worker '{h.label}': {type(e).__name__}: {e}", "ERROR")

    # ---- teardown ------------------------------------------------------------------------
    def shutdown(self, log_event: Callable[[str, str], None]) -> None:
        """Every worker down (by its backend), then the arena's segments."""
        if self.backend is not None:
            self.backend.shutdown(self.workers, log_event)
        if self.arena is not None:
            self.arena.close()


def memory_report(st: dict) -> dict:
    """A worker's memory figures for metrics.jsonl, rounded, with ``peak_rss_mb`` never below
    ``rss_mb``: the kernel's high-water mark (getrusage) can lag the rss read just before it."""
    st = dict(st)
    if isinstance(st.get("rss_mb"), (int, float)) and isinstance(st.get("peak_rss_mb"), (int, float)):
        st["peak_rss_mb"] = max(st["peak_rss_mb"], st["rss_mb"])
    return {k: round(v, 1) for k, v in st.items()}
