"""Is a process alive, and when did it start: the one place that asks (through psutil).

A zombie counts as dead (its exit status is waiting for a parent that may never read it); a
process owned by another user counts as alive.
"""
from __future__ import annotations

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
