"""The console in a real terminal, the way a user over SSH meets it: ``python -m console.cli``
inside tmux, launch the tiny config from the editor, watch steps, pause, resume, detach (training
goes on), re-attach and find the earlier steps, stop. Skipped where tmux is missing."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.client import Run, list_runs
from engine.config import dump_config, load_config
from engine.procs import pid_alive
from tests.conftest import ROOT, TINY, kill_run

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]


class Tmux:
    def __init__(self, socket: str, env: dict):
        self.socket, self.env = socket, env

    def __call__(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(["tmux", "-u", "-L", self.socket, *args], env=self.env, capture_output=True,
                           text=True, timeout=30)
        if check and r.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {r.stderr}")
        return r.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "main")

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", "main", *keys)

    def type(self, text: str) -> None:
        self("send-keys", "-t", "main", "-l", text)
        self.keys("Enter")

    def wait(self, pattern: str, timeout: float = 60.0) -> re.Match:
        t0 = time.monotonic()
        while True:
            m = re.search(pattern, self.screen())
            if m:
                return m
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"not on screen after {timeout:.0f}s: {pattern!r}\n{self.screen()}")
            time.sleep(0.3)


@pytest.fixture
def tmux(tmp_path):
    env = dict(os.environ, LANG="C.UTF-8", LC_ALL="C.UTF-8", TERM="xterm-256color", EDITOR="true")
    t = Tmux(f"rlhfc-test-{os.getpid()}", env)
    t("-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", "120", "-y", "40", "-c", str(ROOT),
      "bash --norc --noprofile")
    t("set-option", "-g", "status", "off")
    try:
        yield t
    finally:
        t("kill-server", check=False)


def _kill_run(runs: Path) -> None:
    for r in list_runs(runs):
        kill_run(r)


def test_launch_pause_resume_detach_reattach_in_tmux(tmux, tmp_path):
    runs = tmp_path / "runs"
    cfg = tmp_path / "tiny-long.yaml"
    # the tiny config with run.steps overridden the way --set does it (not by editing its text)
    cfg.write_text(dump_config(load_config(TINY, ["run.steps=300"])))
    cli = f"{sys.executable} -m console.cli --runs-dir {runs}"
    try:
        # `rlhf-console CONFIG.yaml`: the editor, launching into --runs-dir
        tmux.type(f"{sys.executable} -m console.cli {cfg} --runs-dir {runs}")
        tmux.wait(r"✓ valid", 60)
        tmux.keys("C-l")                                           # launch
        tmux.wait(r"● (starting|running)", 60)
        tmux.wait(r"● running\s+step ([2-9]|\d\d+)/300", 300)  # a few real steps
        runs_found = list_runs(runs)
        assert len(runs_found) == 1
        run: Run = runs_found[0]

        tmux.keys("p")
        tmux.wait(r"end of the current step|● paused", 30)
        tmux.wait(r"● paused", 120)
        assert run.info["state"] == "paused"
        tmux.keys("p")
        tmux.wait(r"● running", 60)

        step_before = int(run.info["step"])
        tmux.keys("d")                                             # detach
        tmux.wait(r"detached from " + re.escape(run.name), 30)
        pids = [run.info["supervisor_pid"], *run.info["pids"].values()]
        assert all(pid_alive(p) for p in pids), "detaching must leave training running"
        run.wait_step(step_before + 1, timeout=120)

        tmux.keys("C-l")
        tmux.type(f"{cli} attach {run.name}")                      # re-attach
        tmux.wait(r"● running\s+step \d+/300", 60)
        tmux.keys("C-Home")                                        # the oldest rollouts: step 1
        tmux.wait(r"\b1·0\b", 20)
        tmux.wait(r"\b1·1\b", 20)                                  # earlier steps on screen
        tmux.wait(r"curves", 20)                                     # with the rest of the dashboard

        tmux.keys("x")
        tmux.wait(r"Stop " + re.escape(run.name), 10)
        tmux.keys("y")
        tmux.wait(r"● stopped", 180)
        assert run.wait(timeout=60) == "stopped"
        tmux.keys("q")
        tmux.wait(r"left " + re.escape(run.name) + r" \(stopped\)", 30)
    finally:
        _kill_run(runs)
