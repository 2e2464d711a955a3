"""Processes and cores: is a process alive and when did it start, whose child is it (through
psutil), how many CPU cores this process may use, and a process that dies with its parent. The
one place that asks.

A zombie counts as dead (its exit status is waiting for a parent that may never read it); a
process owned by another user counts as alive.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import psutil

_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def process_info(pid: Optional[int]) -> tuple[bool, Optional[float]]:
    """(alive, start time as epoch seconds or None when it cannot be read)."""
    try:
        pid = int(pid or 0)
    except (TypeError, ValueError):
        return False, None
    if pid <= 0:
        return False, None
    try:
        p = psutil.Process(pid)
        if p.status() in _GONE:
            return False, None
    except psutil.NoSuchProcess:
        return False, None
    except psutil.AccessDenied:
        return True, None
    try:
        return True, p.create_time()
    except (psutil.AccessDenied, psutil.ZombieProcess):
        return True, None
    except psutil.NoSuchProcess:
        return False, None


def pid_alive(pid: Optional[int]) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    return process_info(pid)[0]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; the CPU count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def parent_pid(pid: Optional[int]) -> Optional[int]:
    """The parent's pid of a live process; None when it is gone (or a zombie) or cannot be read."""
    try:
        p = psutil.Process(int(pid or 0))
        if p.status() in _GONE:
            return None
        return p.ppid()
    except (psutil.Error, TypeError, ValueError):
        return None


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent ends (``PR_SET_PDEATHSIG``).

    The parent is the thread that created this process; a caller checks ``os.getppid()`` after
    this, since a parent that ended before it took effect is no longer the parent."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # pragma: no cover - not Linux
        pass


def fork_server_preload(lora: bool) -> list[str]:
    """What the fork server imports before it forks a worker."""
    return ["engine.runtime.forkserver", *(["peft"] if lora else [])]


def run_exit_handlers() -> None:
    """What a normal exit does before the interpreter's teardown: the ``atexit`` handlers, then
    a flush of stdout and stderr. For a process about to end with ``os._exit``."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


_FORK_THE_SERVER = [False]


def fork_the_fork_server(on: bool = True) -> None:
    """From now on this process starts its fork server as a fork of itself instead of a fresh
    interpreter: only for a process that has imported the server's preload already and runs no
    other thread (a supervisor forked by the warm launcher, ``engine.runtime.warm``)."""
    _FORK_THE_SERVER[0] = on


def ensure_fork_server(lora: bool) -> bool:
    """Start this process's ``multiprocessing`` fork server now (no-op when it runs); whether it
    is running. The preload takes effect only on the first start."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return False
    mp.get_context("forkserver").set_forkserver_preload(fork_server_preload(lora))
    try:
        import threading
        from multiprocessing import forkserver

        if _FORK_THE_SERVER[0] and threading.active_count() == 1:  # never fork a second thread's locks
            _fork_server_by_fork(forkserver._forkserver, fork_server_preload(lora))
        else:
            forkserver.ensure_running()
    except Exception:  # noqa: BLE001 - a worker's start says what is wrong, or falls back to spawn
        return False
    return True


def fork_server_pid() -> Optional[int]:
    """The pid of this process's ``multiprocessing`` fork server when it has started one (a CPU
    run's supervisor has), else ``None``. A child asked of it starts as a fork of a process that
    has imported torch and transformers already, instead of a fresh interpreter; its parent is
    the fork server, not this process."""
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


def _fork_server_by_fork(server, preload: list[str]) -> None:
    """``multiprocessing.forkserver.ForkServer.ensure_running`` with ``os.fork`` in place of a
    new interpreter: the server is this process's child, listens on a fresh socket, ends when
    the last holder of the "alive" pipe's write end does, and imports ``preload`` (already
    imported here, so nearly free) before it serves. Its children are what ``forkserver``
    workers always are: forks of the server, handed their fds by the client."""
    import socket
    from multiprocessing import connection, forkserver, resource_tracker

    with server._lock:
        resource_tracker.ensure_running()
        if server._forkserver_pid is not None:
            pid, _ = os.waitpid(server._forkserver_pid, os.WNOHANG)
            if not pid:
                return
            os.close(server._forkserver_alive_fd)
            server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None
        listener = socket.socket(socket.AF_UNIX)
        address = connection.arbitrary_address("AF_UNIX")
        listener.bind(address)
        os.chmod(address, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # nothing buffered here is written twice
            stream.flush()
        pid = os.fork()
        if pid == 0:  # the server
            code = 1
            try:
                keep = {0, 1, 2, listener.fileno(), alive_r}
                for fd in map(int, os.listdir("/proc/self/fd")):
                    if fd not in keep:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                forkserver.main(listener.fileno(), alive_r, preload)
                code = 0
            except SystemExit as e:  # the last client is gone
                code = e.code if isinstance(e.code, int) else 0
            except BaseException:  # noqa: BLE001 - say why on the run's log, then end
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(alive_r)
        listener.close()
        server._forkserver_address = address
        server._forkserver_alive_fd = alive_w
        server._forkserver_pid = pid
