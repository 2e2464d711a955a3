"""Processes and cores: is a process alive and when did it start, whose child is it (through
psutil), how many CPU cores this process may use, and a process that dies with its parent. The
one place that asks.

A zombie counts as dead (its exit status is waiting for a parent that may never read it); a
process owned by another user counts as alive.
"""
from __future__ import annotations

import os
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


def ensure_fork_server(lora: bool) -> bool:
    """Start this process's ``multiprocessing`` fork server now (no-op when it runs); whether it
    is running. The preload takes effect only on the first start."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return False
    mp.get_context("forkserver").set_forkserver_preload(fork_server_preload(lora))
    try:
        from multiprocessing import forkserver

        forkserver.ensure_running()
    except Exception:  # noqa: BLE001 - a worker's start says what is wrong, or falls back to spawn
        return False
    return True
