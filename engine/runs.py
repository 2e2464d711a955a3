"""A run's name, where its control socket goes, and how its state reads: the rules that the
runtime (which writes runs), the config checks (which check that a run can start here) and
engine.client (which reads runs) share. It sits below all three and imports none of them."""
from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Optional, Union

from engine.procs import pid_alive
from engine.records import RunInfo

STATES = ("starting", "running", "paused", "stopping", "finished", "failed", "stopped")
LIVE_STATES = ("starting", "running", "paused", "stopping")
ENDED_STATES = ("finished", "failed", "stopped", "dead")
# a run created moments ago whose supervisor is still being spawned has no pid in run.json yet
START_GRACE_S = 120.0


def run_state(info: Union[dict, RunInfo], now: Optional[float] = None) -> str:
    """The one rule for a run's state: run.json's ``state``, or ``"dead"`` when it claims to be
    live but its supervisor is gone without saying so. A run still ``starting`` with no
    supervisor pid yet is given ``START_GRACE_S`` seconds since run.json was last written."""
    rec = info if isinstance(info, RunInfo) else RunInfo.from_dict(info)
    state = rec.state or "unknown"
    if state not in LIVE_STATES:
        return state
    pid = rec.supervisor_pid
    if not pid:
        updated = rec.updated or rec.created or 0
        age = (time.time() if now is None else now) - float(updated)
        if state == "starting" and age < START_GRACE_S:
            return state
        return "dead"
    return state if pid_alive(pid) else "dead"


def make_run_name(name: str) -> str:
    """A run directory's name: ``run.name`` made safe for a path, and the start time."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
    return f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"


class ControlSocketError(RuntimeError):
    """The control socket cannot be placed safely (e.g. an unsafe fallback directory)."""


def short_socket_dir() -> Path:
    """``/tmp/rlhfc-<uid>`` (under ``tempfile.gettempdir()``), created 0700; refused unless it
    is a real directory owned by this user with no group or world access."""
    d = Path(tempfile.gettempdir()) / f"rlhfc-{os.getuid()}"
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise ControlSocketError(f"cannot create the control-socket folder {d}: {e.strerror or e}") from None
    st = os.lstat(d)
    problems = []
    if not stat.S_ISDIR(st.st_mode):
        problems.append("it is not a directory" + (" (a symlink)" if stat.S_ISLNK(st.st_mode) else ""))
    if st.st_uid != os.getuid():
        problems.append(f"it is owned by uid {st.st_uid}, not by you (uid {os.getuid()})")
    if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o077:
        problems.append(f"its mode is {stat.S_IMODE(st.st_mode):04o}, open to other users (needs 0700)")
    if problems:
        raise ControlSocketError(
            f"refusing to put the control socket in {d}: {'; '.join(problems)}. Another user could "
            f"intercept the run's control socket there. Remove {d} (or, if it is yours, chmod 700 it), "
            f"or use a shorter run.output_dir so the socket fits in the run directory.")
    return d


def socket_path_for(run_dir: Path) -> Path:
    """``run_dir/control.sock`` unless that is too long for AF_UNIX (108 bytes)."""
    p = Path(run_dir) / "control.sock"
    if len(str(p).encode()) < 100:
        return p
    h = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
    return short_socket_dir() / f"{h}.sock"


def socket_fits(run_dir: Path) -> bool:
    return len(str(Path(run_dir) / "control.sock").encode()) < 100
