"""Deterministic inputs for snapshots, screenshots and the benchmark: copies of the recorded tiny
run (tests/fixtures/recorded_run/) in a chosen state, a frozen clock, and a GPU probe that reports
"no NVML" the same way on every machine."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Optional

from console.gpu import GpuReport
from engine.standin import StandInRun

ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / "tests" / "fixtures" / "recorded_run"


def recorded_run_dir() -> Path:
    runs = sorted(p for p in RECORDED.iterdir() if (p / "run.json").exists())
    if not runs:
        raise FileNotFoundError(f"no recorded run under {RECORDED}")
    return runs[0]


def copy_recorded_run(runs_dir: Path, state: str = "paused", *, live: bool = False,
                      failure: Optional[str] = None, name: Optional[str] = None,
                      created_delta: float = 0.0) -> Path:
    """Copy the recorded run into ``runs_dir`` and set its run.json ``state``.

    ``live=True`` makes this process stand in for its supervisor (so a paused copy reads as
    paused, not dead); the role pids stay ones no process can have.
    """
    src = recorded_run_dir()
    dst = Path(runs_dir) / (name or src.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)
    rd = StandInRun(dst)
    info = rd.read_info()
    created, updated = info.created + created_delta, info.updated + created_delta
    if state == "failed" and failure:
        rd.log_event(f"worker failure: {failure}; stopping the other workers", "ERROR",
                     when=time.mktime((2026, 11, 25, 2, 17, 40, 0, 0, -1)))
    if state in ("finished", "stopped", "failed"):
        updated += 2.0
    rd.write_state(state=state, created=created, updated=updated,
                   supervisor_pid=os.getpid() if live else info.supervisor_pid,
                   failure=failure if failure is not None else info.failure)
    return dst


def frozen_clock(run_dir: Path, after_s: float = 754.0):
    """A clock stopped ``after_s`` seconds after the run was created."""
    created = StandInRun(Path(run_dir)).read_info().created or 0.0
    return lambda: created + after_s


def no_nvml() -> GpuReport:
    return GpuReport(False, "NVML unavailable: NVML Shared Library Not Found")


def make_presets(folder: Path) -> Path:
    """A presets folder with the recorded run's config as 'tiny'."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(recorded_run_dir() / "config.yaml", folder / "tiny.yaml")
    return folder


async def settle(pilot, timeout: float = 20.0) -> None:
    """Wait until the current screen has everything it shows (history read, validation done,
    GPU probed), then draw the timer-driven panes once so a screenshot is complete."""
    import time

    t0 = time.monotonic()
    while True:
        screen = pilot.app.screen
        ready = getattr(screen, "ready_for_snapshot", None)
        if ready is None or ready():
            break
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{type(screen).__name__} did not settle in {timeout}s")
        await pilot.pause(0.05)
    if hasattr(screen, "redraw_now"):
        screen.redraw_now()
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()
