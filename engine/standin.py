"""A stand-in run: a run directory and a control socket that look like a live run to the
console, written by the caller. The console's responsiveness bench, its demos and screenshots
use it; it trains nothing. Its files are written by the engine's own run-directory writer (the
supervisor's format, run.json fields checked against ``RunInfo``) and its control socket speaks
the supervisor's protocol, answered by the caller's handler."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from engine.records import MetricsRow, RunInfo, Sample
from engine.runs import socket_path_for
from engine.runtime.control import ControlServer as _ControlServer
from engine.runtime.rundir import RunDir as _RunDir


class StandInRun:
    """``StandInRun(path)``: the run directory at ``path`` (created by the caller or copied from
    a recorded run); ``serve(handler, hello)`` answers its control socket until ``close()``."""

    def __init__(self, path: Union[str, Path]):
        self._rd = _RunDir(Path(path))
        self.path = self._rd.path
        self.socket = socket_path_for(self.path)    # where serve() listens: write it into run.json
        self._server: Optional[_ControlServer] = None

    # the run directory's files
    config = property(lambda self: self._rd.config)
    metrics = property(lambda self: self._rd.metrics)
    samples = property(lambda self: self._rd.samples)
    labels = property(lambda self: self._rd.labels)
    events = property(lambda self: self._rd.events)

    def read_info(self) -> RunInfo:
        return self._rd.read_info()

    def write_state(self, **fields) -> dict:
        """Update run.json (every name a :class:`RunInfo` field)."""
        return self._rd.write_state(**fields)

    def log_event(self, message: str, level: str = "INFO", when: Optional[float] = None) -> str:
        return self._rd.log_event(message, level, when=when)

    def record_step(self, metrics: Union[MetricsRow, dict], samples: Iterable[Union[Sample, dict]]) -> None:
        self._rd.record_step(metrics, samples)

    def serve(self, handler: Callable[[dict], dict], hello: Callable[[], dict]) -> Path:
        """Answer the control socket: ``handler(request) -> reply`` for each request, ``hello()``
        for a subscriber's first event. Returns the socket's path."""
        if self._server is None:
            self._server = _ControlServer(self.socket, handler, hello=hello)
            self._server.start()
        return self.socket

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
