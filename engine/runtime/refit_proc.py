"""The refit's process, as the supervisor starts and watches it.

A refit (``engine/refit.py``) runs in a process of its own, one at a time, so that it can use the
run's cores at a lower priority and never take the run down. Where the run has a fork server (a
CPU run's supervisor does), the refit is forked from it: torch and transformers are imported there
already, so the refit starts in a fraction of a second instead of the ~4 s a fresh interpreter
takes on 2 cores. Elsewhere (the Ray backend) it is spawned. Either way its progress lines come
back over a pipe, its stdout and stderr (library warnings) go to ``supervisor.log``, and it ends
when the process that started it (the fork server, or the supervisor) does.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from typing import Iterator, Optional


def _watch_parent(ppid: int) -> None:
    """Exit once ``ppid`` is no longer this process's parent. Not ``engine.procs.die_with_parent``:
    its signal follows the thread that created the process, and a spawned refit's creator is a
    control-op thread of the supervisor that ends long before the refit does."""
    import threading
    import time

    def loop() -> None:
        while True:
            if os.getppid() != ppid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def _refit_main(argv: list[str], conn, ppid: int, nice: int, log_path: str) -> None:
    import signal

    if os.getppid() != ppid:
        os._exit(1)
    _watch_parent(ppid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ctrl+c in the run's terminal is the supervisor's
    if nice:
        os.nice(nice)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    from engine.refit import main
    from engine.runtime.worker import quiet_hf_logging

    quiet_hf_logging()
    try:
        main(argv, progress=conn.send)
    finally:
        conn.close()


class RefitProcess:
    """One refit process: ``lines()`` yields its progress until it ends; ``wait()`` gives its exit code."""

    def __init__(self, argv: list[str], *, log_path: str, nice: int = 0, server: Optional[int] = None):
        """``server``: the pid of the caller's fork server (``engine.procs.fork_server_pid()``) to
        fork the refit from, or None to spawn it."""
        self.how = "forked from the run's fork server" if server else "spawned"
        ctx = mp.get_context("forkserver" if server else "spawn")
        self._rx, tx = ctx.Pipe(duplex=False)
        self._p = ctx.Process(target=_refit_main, args=(list(argv), tx, server or os.getpid(), int(nice),
                                                         str(log_path)),
                              name="rlhf-refit", daemon=True)
        self._p.start()
        tx.close()
        self.pid = self._p.pid

    def lines(self) -> Iterator[str]:
        """The refit's progress lines as they come, until its process has ended."""
        while True:
            try:
                if self._rx.poll(0.5):
                    yield str(self._rx.recv())
                    continue
            except (EOFError, OSError):
                break
            if not self._p.is_alive():
                break
        try:  # whatever it sent just before it ended
            while self._rx.poll(0):
                yield str(self._rx.recv())
        except (EOFError, OSError):
            pass

    def poll(self) -> Optional[int]:
        return self._p.exitcode

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        self._p.join(timeout)
        return self._p.exitcode

    def terminate(self) -> None:
        self._p.terminate()

    def kill(self) -> None:
        self._p.kill()

    def close(self) -> None:
        self._rx.close()
