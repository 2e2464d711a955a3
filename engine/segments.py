"""Shared-memory segment names, listing and clean-up, without torch.

The tensor transport (:mod:`engine.transport`) writes tensors into ``/dev/shm`` segments named
``rlhfc_<owner pid>_<run tag>_<role>_<seq>``. Everything that only needs those names -- every
CLI command's sweep of a killed run's leftovers (:func:`reap_stale_segments`), the tests' checks
that a run left nothing behind -- lives here, so it does not import torch (about 0.9 s of a
command's start on 2 cores). :mod:`engine.transport` re-exports all of it.
"""
from __future__ import annotations

import os
import re
import secrets
from typing import Any

from engine.procs import process_info

SEGMENT_PREFIX = "rlhfc_"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9-]{1,32}$")
_NAME_RE = re.compile(
    r"^rlhfc_(?P<owner>[0-9]{1,10})_(?P<tag>[A-Za-z0-9-]{1,32})_(?P<role>[A-Za-z0-9-]{1,32})_(?P<seq>[0-9]{1,12})$"
)
# Start-time slack when deciding whether a live pid is the segment's owner or a recycled pid:
# /proc/stat's boot time has a resolution of one second.
_PID_REUSE_SLACK_S = 2.0


class TransportError(RuntimeError):
    """Bad descriptor, missing segment, out of shared memory, misuse of an arena."""


# ----------------------------------------------------------------------------- names


def shm_dir() -> str:
    """Directory holding the segments: ``$RLHF_CONSOLE_SHM_DIR`` or ``/dev/shm``."""
    return os.environ.get("RLHF_CONSOLE_SHM_DIR") or "/dev/shm"


def new_run_tag() -> str:
    """A fresh run tag: 8 hex characters."""
    return secrets.token_hex(4)


def _check_token(what: str, value: str) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.match(value):
        raise TransportError(f"{what} must be 1-32 characters of [A-Za-z0-9-], got {value!r}")
    return value


def segment_name(owner_pid: int, run_tag: str, role: str, seq: int) -> str:
    return f"{SEGMENT_PREFIX}{int(owner_pid)}_{_check_token('run_tag', run_tag)}_{_check_token('role', role)}_{int(seq)}"


def parse_segment_name(name: str) -> dict[str, Any] | None:
    """``{"owner_pid", "run_tag", "role", "seq"}`` for a segment name, ``None`` if it is not one."""
    m = _NAME_RE.match(name)
    if not m:
        return None
    return {"owner_pid": int(m["owner"]), "run_tag": m["tag"], "role": m["role"], "seq": int(m["seq"])}


def list_segments(owner_pid: int | None = None, run_tag: str | None = None) -> list[str]:
    """Names of existing segments, optionally filtered by owner pid and run tag."""
    try:
        entries = os.listdir(shm_dir())
    except FileNotFoundError:
        return []
    out = []
    for name in entries:
        info = parse_segment_name(name)
        if info is None:
            continue
        if owner_pid is not None and info["owner_pid"] != int(owner_pid):
            continue
        if run_tag is not None and info["run_tag"] != run_tag:
            continue
        out.append(name)
    return sorted(out)


def _unlink(name: str) -> bool:
    try:
        os.unlink(os.path.join(shm_dir(), name))
        return True
    except FileNotFoundError:
        return False


def unlink_run_segments(owner_pid: int, run_tag: str | None = None) -> list[str]:
    """Unlink every segment of ``owner_pid`` (and ``run_tag`` if given); return the names removed.

    The supervisor calls this on every exit path of a run, including after a worker was
    SIGKILLed (the worker's arena named its segments after the supervisor's pid).
    """
    return [n for n in list_segments(owner_pid, run_tag) if _unlink(n)]


def reap_stale_segments() -> list[str]:
    """Unlink ``rlhfc_*`` segments whose owner process is gone; return their names.

    An owner counts as gone when no process has its pid, the process is a zombie, or the pid was
    recycled: the live process started after the segment was last modified (pid reuse).  Call at
    start-up and report what was removed.
    """
    directory = shm_dir()
    removed = []
    verdicts: dict[int, tuple[bool, float | None]] = {}
    for name in list_segments():
        pid = parse_segment_name(name)["owner_pid"]
        if pid not in verdicts:
            verdicts[pid] = process_info(pid)
        alive, start = verdicts[pid]
        if alive and start is not None:
            try:
                mtime = os.stat(os.path.join(directory, name)).st_mtime
            except FileNotFoundError:
                continue
            if start > mtime + _PID_REUSE_SLACK_S:
                alive = False  # a newer process got the owner's pid
        if not alive and _unlink(name):
            removed.append(name)
    return removed
