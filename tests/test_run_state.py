"""One rule for a run's state (engine.client.run_state): the engine, the home screen and the
dashboard agree, and a run created a moment ago whose supervisor is still being spawned is
"starting", not "dead". Fast: no training processes (a real short-lived process stands in for
a supervisor that died)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from console import demo
from console.app import ConsoleApp
from console.messages import RunsListed
from console.model import RunFollower, RunModel
from engine.client import LIVE_STATES, Run, create_run_dir, run_state
from engine.config import load_config
from tests.conftest import TINY, tiny_overrides

pytestmark = pytest.mark.timeout(120)


def _fresh_run(runs_dir):
    """What `launch` leaves before it spawns the supervisor: run.json says starting, no pid."""
    return create_run_dir(load_config(TINY, tiny_overrides(runs_dir)))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _home_states(runs_dir) -> dict[str, str]:
    got: list = []

    async def go():
        app = ConsoleApp("home", runs_dir=runs_dir, presets_dir=runs_dir.parent, gpu_probe=demo.no_nvml,
                         blink=False)
        async with app.run_test(size=(120, 36), message_hook=got.append) as pilot:
            t0 = time.monotonic()
            while not any(isinstance(m, RunsListed) for m in got):
                if time.monotonic() - t0 > 20:
                    pytest.fail("the home screen never listed the runs")
                await pilot.pause(0.05)

    asyncio.run(go())
    listed = [m for m in got if isinstance(m, RunsListed)][0]
    return {path.name: state for path, _info, state in listed.runs}


def test_rule_on_run_json_alone():
    now = 1_000_000.0
    assert run_state({"state": "starting", "updated": now - 5}, now=now) == "starting"
    assert run_state({"state": "starting", "updated": now - 500}, now=now) == "dead"
    assert run_state({"state": "running", "updated": now}, now=now) == "dead"       # live, no pid
    assert run_state({"state": "running", "supervisor_pid": _dead_pid()}, now=now) == "dead"
    import os

    assert run_state({"state": "paused", "supervisor_pid": os.getpid()}, now=now) == "paused"
    for ended in ("finished", "failed", "stopped"):
        assert run_state({"state": ended, "supervisor_pid": _dead_pid()}, now=now) == ended
    assert run_state({}, now=now) == "unknown"


def test_fresh_run_is_starting_everywhere_not_dead(runs_dir):
    rd = _fresh_run(runs_dir)
    run = Run(rd.path)
    assert run.state == "starting" and run.alive and rd.effective_state() == "starting"
    follower = RunFollower(rd.path)
    model = RunModel(rd.path)
    model.apply(follower.poll())
    assert follower.state == "starting" and model.state == "starting" and model.alive
    assert model.failure == ""
    assert _home_states(runs_dir) == {rd.name: "starting"}


def test_console_calls_dead_what_the_engine_calls_dead(runs_dir):
    rd = _fresh_run(runs_dir)
    st = json.loads(rd.run_json.read_text())
    st["supervisor_pid"] = _dead_pid()              # the supervisor was spawned and then killed
    rd.run_json.write_text(json.dumps(st))
    stale = _fresh_run(runs_dir)                    # never got a supervisor, long ago
    st = json.loads(stale.run_json.read_text())
    st["updated"] = st["created"] = time.time() - 3600
    stale.run_json.write_text(json.dumps(st))
    for d in (rd, stale):
        assert Run(d.path).state == "dead" and not Run(d.path).alive
        follower = RunFollower(d.path)
        follower.poll()
        assert follower.state == "dead" and "dead" not in LIVE_STATES
    assert _home_states(runs_dir) == {rd.name: "dead", stale.name: "dead"}
