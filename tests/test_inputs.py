"""Bad inputs and hostile or stuck peers: each ends in one clear message, nothing half-done.

Control socket (real AF_UNIX sockets), config inputs refused before anything is created, the
CLI's one-line errors, the worker timeout, ``stop`` with a hung worker, and a foreground
``train`` that outlives its terminal (real tmux)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from engine.runtime import control
from engine.runtime.control import ControlClient, ControlServer, ControlSocketError
from tests.conftest import ROOT, TINY, assert_run_clean

pytestmark = pytest.mark.timeout(600)


# ---------------------------------------------------------------------------------- control socket

@pytest.fixture
def server(tmp_path):
    seen = []

    def handler(req):
        seen.append(req["op"])
        return {"ok": True, "op": req["op"]}

    srv = ControlServer(tmp_path / "c.sock", handler, hello=lambda: {})
    srv.seen = seen
    yield srv
    srv.close()


def test_overlong_line_is_refused_whole_and_its_tail_never_runs(server):
    server.start()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(server.path))
    payload = b"X" * (control.MAX_LINE + 10) + b'{"op": "pause"}\n'
    try:
        s.sendall(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may drop us before we finish sending
    got = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    replies = [json.loads(x) for x in got.splitlines() if x.strip()]
    assert len(replies) <= 1 and all(not r["ok"] and "longer than" in r["error"] for r in replies)
    time.sleep(0.3)
    assert "pause" not in server.seen
    with ControlClient(server.path, timeout=10) as c:  # the server itself is fine
        assert c.request("status")["ok"]


def test_twenty_concurrent_connections_all_succeed(server):
    # the socket listens but nobody accepts yet: every connection waits in the listen backlog
    clients = []
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect(str(server.path))  # raises BlockingIOError (EAGAIN) when the backlog is full
        clients.append(s)
    server.start()
    for s in clients:
        s.setblocking(True)
        s.settimeout(10)
        s.sendall(b'{"op": "status"}\n')
    for s in clients:
        assert json.loads(s.makefile("rb").readline())["ok"]
        s.close()
    # and 20 ControlClients at the same moment, from 20 threads
    results, barrier = [], threading.Barrier(20)

    def one():
        barrier.wait()
        with ControlClient(server.path, timeout=10) as c:
            results.append(c.request("status")["ok"])

    ts = [threading.Thread(target=one) for _ in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert results == [True] * 20


@pytest.fixture
def tmpdir_base(tmp_path, monkeypatch):
    base = tmp_path / "tmp"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    return base / f"rlhfc-{os.getuid()}"


def test_short_socket_dir_is_created_private(tmpdir_base):
    long_run = Path("/x" * 60)
    p = control.socket_path_for(long_run)
    assert p.parent == tmpdir_base
    st = os.lstat(tmpdir_base)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()


def test_short_socket_dir_open_to_others_is_refused(tmpdir_base):
    tmpdir_base.mkdir()
    os.chmod(tmpdir_base, 0o777)
    with pytest.raises(ControlSocketError, match=r"refusing .*mode is 0777"):
        control.socket_path_for(Path("/x" * 60))


def test_short_socket_dir_symlink_is_refused(tmpdir_base, tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    tmpdir_base.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ControlSocketError, match="not a directory"):
        control.socket_path_for(Path("/x" * 60))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_short_socket_dir_of_another_user_is_refused(tmpdir_base):
    tmpdir_base.mkdir(mode=0o700)
    os.chown(tmpdir_base, 65534, 65534)
    with pytest.raises(ControlSocketError, match="owned by uid 65534"):
        control.socket_path_for(Path("/x" * 60))


def test_supervisor_refuses_an_unsafe_fallback_before_creating_a_run(tmp_path):
    """A run directory whose path is too long for AF_UNIX + a fallback folder open to others:
    refused by `train` with the key named, and no run directory."""
    base = tmp_path / "tmp"
    (base / f"rlhfc-{os.getuid()}").mkdir(parents=True)
    os.chmod(base / f"rlhfc-{os.getuid()}", 0o777)
    runs = tmp_path / ("r" * 90)
    out = _cli("train", "--config", str(TINY), "--set", f"run.output_dir={runs}", env={"TMPDIR": str(base)})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "run.output_dir" in out.stderr and "mode is 0777" in out.stderr
    assert not runs.exists() or list(runs.iterdir()) == []


# ---------------------------------------------------------------------------------- bad inputs

def _cli(*args, env=None, cwd=ROOT, timeout=300):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "console.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=e, timeout=timeout)


def _refused(out, *needles):
    err = out.stderr
    assert out.returncode == 2, out.stdout + err
    assert "Traceback" not in err + out.stdout, err
    for n in needles:
        assert n in err, (n, err)


BAD_INPUTS = {
    # name: (file text or bytes, --set overrides, what the message must name)
    "binary file": (bytes(range(256)) * 4, [], ["bad.yaml:2:", "not a YAML text file", "byte 0x80 at offset 128"]),
    "empty file": ("", [], ["bad.yaml:", "holds no settings"]),
    "comments only": ("# just a comment\n\n   # another\n", [], ["holds no settings"]),
    "steps 1e38": (None, ["run.steps=100000000000000000000000000000000000000"], ["run.steps", "must be in [1, 10000000]"]),
    "max_new_tokens 1e10": (None, ["rollout.max_new_tokens=10000000000"], ["rollout.max_new_tokens", "[1, 131072]"]),
    "actor_lr 1e38": (None, ["ppo.actor_lr=1e38"], ["ppo.actor_lr", "must be in (0, 1]; got 1e+38"]),
    "output_dir under a file": (None, ["run.output_dir={tmp}/afile/runs"], ["run.output_dir", "is not a folder"]),
    "missing python module": (None, ["reward.source=python:no_such_reward_mod:score"],
                              ["reward.source", "'no_such_reward_mod' was not found"]),
    "hub id, offline": (None, ["actor.model=someone/some-model"],
                        ["actor.model", "hub access is switched off", "cannot be loaded"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_clear_message_and_creates_nothing(name, tmp_path, monkeypatch, capsys):
    """The CLI's own main() in this process (the same code as the rlhf-console entry point,
    without an interpreter start per case)."""
    from console.cli import main

    content, sets, needles = BAD_INPUTS[name]
    (tmp_path / "afile").write_text("x")
    runs = tmp_path / "runs"
    cfg = TINY
    if content is not None:
        cfg = tmp_path / "bad.yaml"
        (cfg.write_bytes if isinstance(content, bytes) else cfg.write_text)(content)
    args = ["train", "--config", str(cfg), "--set", f"run.output_dir={runs}"]
    for s in sets:
        args += ["--set", s.format(tmp=tmp_path)]
    monkeypatch.chdir(tmp_path)
    rc = main(args)
    cap = capsys.readouterr()
    _refused(subprocess.CompletedProcess(args, rc, cap.out, cap.err), *needles)
    assert "nothing was started" in cap.err
    assert not runs.exists(), "a run directory was created"


def test_in_file_values_are_reported_with_their_line(tmp_path):
    text = TINY.read_text().replace("actor_lr: 1.0e-5", "actor_lr: 1e38")
    cfg = tmp_path / "lr.yaml"
    cfg.write_text(text)
    line = text.splitlines().index("  actor_lr: 1e38") + 1
    out = _cli("validate", "--config", str(cfg))
    _refused(out, f"lr.yaml:{line}: ppo.actor_lr: must be in (0, 1]; got 1e+38")


def test_unwritable_output_dir(tmp_path):
    """An output folder that cannot be made is refused with the key named, nothing created. A
    file standing where a folder is needed stops root too; a read-only folder stops every user
    but root (root writes into it, so as root that case has nothing to refuse)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    out = _cli("train", "--config", str(TINY), "--set", f"run.output_dir={blocker}/runs")
    _refused(out, "run.output_dir", f"{blocker} is not a folder")
    assert blocker.read_text() == "a file, not a folder\n"
    if os.geteuid() == 0:
        return
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    out = _cli("train", "--config", str(TINY), "--set", f"run.output_dir={ro}/runs")
    _refused(out, "run.output_dir", "not writable")
    assert list(ro.iterdir()) == []


def test_hub_id_unreachable_is_refused_before_a_run_directory(tmp_path):
    runs = tmp_path / "runs"
    env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
           "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on the discard port
    out = _cli("train", "--config", str(TINY), "--set", f"run.output_dir={runs}",
               "--set", "reward.source=someone/some-reward-model", env=env)
    _refused(out, "reward.source", "cannot be reached", "cannot be loaded")
    assert not runs.exists()


def test_python_reward_module_in_the_current_folder_is_found(tmp_path):
    (tmp_path / "my_local_reward.py").write_text("def score(p, r):\n    return [0.5] * len(r)\n")
    out = _cli("validate", "--config", str(TINY), "--set", "reward.source=python:my_local_reward:score",
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr


def test_article_config_offline_validate_and_dry_run_agree_without_traceback(tmp_path):
    seed = ROOT / "tests" / "fixtures" / "seed_config_local.yaml"
    v = _cli("validate", "--config", str(seed), env={"HF_HUB_OFFLINE": "1"})
    d = _cli("train", "--dry_run", "--config", str(seed), env={"HF_HUB_OFFLINE": "1"})
    for out in (v, d):
        _refused(out, "seed_config_local.yaml:14: model_config.actor.model_name_or_path",
                 "hub access is switched off")
        errors = [ln for ln in out.stderr.splitlines() if not ln.startswith("note:")]
        assert len(errors) <= 7, out.stderr  # one line per unusable source, and the verdict


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    for args in (["report", "no-such-run"], ["stop", "no-such-run"], ["attach", "no-such-run"],
                 ["swap-reward", "no-such-run", "lexicon:vader"], ["runs"]):
        out = _cli("--runs-dir", str(tmp_path / "none"), *args)
        assert "Traceback" not in out.stderr, (args, out.stderr)
        if args != ["runs"]:
            assert out.returncode != 0 and out.stderr.startswith("rlhf-console: "), (args, out.stderr)
            assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    # a project error raised deep inside a command: one message, or the traceback with --debug
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "run.json").write_text('{"state": "finished", "step": 0}')
    out = _cli("report", str(bad))
    assert out.returncode != 0 and "Traceback" not in out.stderr and out.stderr.startswith("rlhf-console: ")
    dbg = _cli("report", str(bad), "--debug")
    assert dbg.returncode != 0 and "Traceback" in dbg.stderr


# ---------------------------------------------------------------------------------- hung workers

HANGING_REWARD = '''
import os, time
calls = 0
def score(prompts, responses):
    global calls
    calls += 1
    if calls >= int(os.environ["HANG_FROM_CALL"]):
        open(os.environ["HANG_MARK"], "w").close()
        time.sleep(600)
    return [0.5] * len(responses)
'''


@pytest.fixture
def hanging_reward(tmp_path, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "hanging_reward.py").write_text(HANGING_REWARD)
    monkeypatch.setenv("PYTHONPATH", f"{mods}{os.pathsep}{os.environ['PYTHONPATH']}")
    monkeypatch.setenv("HANG_MARK", str(tmp_path / "hanging"))
    return tmp_path / "hanging"


def test_worker_timeout_fails_the_run_naming_role_op_and_timeout(runs_dir, cleanup_runs, hanging_reward, monkeypatch):
    from engine.client import launch

    monkeypatch.setenv("HANG_FROM_CALL", "1")
    run = launch(TINY, [f"run.output_dir={runs_dir}", "run.steps=5", "runtime.worker_timeout_s=4",
                        "reward.source=python:hanging_reward:score"])
    cleanup_runs.append(run)
    assert run.wait(timeout=300) == "failed"
    st = run.info
    assert st["failed_role"] == "reward" and st["failed_op"] == "score" and st["timeout_s"] == 4
    assert "reward.score did not finish within runtime.worker_timeout_s = 4s" in st["failure"]
    events = (run.path / "events.log").read_text()
    assert "reward.score did not finish within runtime.worker_timeout_s = 4s" in events
    assert hanging_reward.exists() and st["step"] == 0
    assert_run_clean(run)


def test_stop_kills_a_hung_worker_after_the_grace_period(runs_dir, cleanup_runs, hanging_reward, monkeypatch):
    from engine.client import launch

    monkeypatch.setenv("HANG_FROM_CALL", "2")  # step 1 completes (and is checkpointed), step 2 hangs
    run = launch(TINY, [f"run.output_dir={runs_dir}", "run.steps=50", "checkpoint.every=1",
                        "runtime.worker_timeout_s=3600", "reward.source=python:hanging_reward:score"])
    cleanup_runs.append(run)
    deadline = time.time() + 300
    while not hanging_reward.exists():
        assert run.state in ("starting", "running"), run.info
        if time.time() > deadline:
            pytest.fail(f"the reward never reached its hanging call: {run.info}")
        time.sleep(0.2)
    out = _cli("--runs-dir", str(runs_dir), "stop", run.name, "--grace", "2")
    assert out.returncode == 0 and "do not answer within 2s" in out.stdout, out.stdout + out.stderr
    assert run.wait(timeout=120) == "stopped"
    st = run.info
    assert "reward.score did not answer within 2s of the stop request" in st["message"]
    assert "killed worker 'reward'" in st["message"] and st["killed"] == ["reward"]
    assert st["step"] == 1 and run.dir.latest_checkpoint().name == "step_1"
    assert "killed worker 'reward'" in (run.path / "events.log").read_text()
    assert_run_clean(run)


# ---------------------------------------------------------------------------------- lost terminal

@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_foreground_train_survives_the_loss_of_its_terminal(runs_dir, cleanup_runs):
    from engine.client import Run

    sock = f"rlhfc-inputs-{os.getpid()}"
    env = dict(os.environ, TERM="xterm-256color")
    cmd = (f"{sys.executable} -m console.cli train --config {TINY} --set run.output_dir={runs_dir} "
           f"--set run.steps=40 --set checkpoint.every=100")
    tmux = ["tmux", "-L", sock]
    subprocess.run(tmux + ["new-session", "-d", "-s", "fg", "-x", "150", "-y", "40", "-c", str(ROOT), cmd],
                   env=env, check=True, timeout=30)
    try:
        deadline = time.time() + 120
        while not list(runs_dir.glob("*/run.json")):
            if time.time() > deadline:
                pytest.fail("the foreground run did not start")
            time.sleep(0.2)
        run = Run(next(runs_dir.glob("*/run.json")).parent)
        cleanup_runs.append(run)
        run.wait_step(2, timeout=300)
        pane = subprocess.run(tmux + ["capture-pane", "-p", "-t", "fg"], env=env, capture_output=True,
                              text=True, timeout=30).stdout
        assert "/40 |" in pane, pane  # it was printing to the terminal
        subprocess.run(tmux + ["kill-session", "-t", "fg"], env=env, timeout=30)  # the terminal goes away
        at_kill = int(run.info["step"])
        run.wait_step(at_kill + 3, timeout=300)  # training goes on
        assert run.alive
        assert run.status()["state"] == "running"  # attach works: the control socket answers
        run.stop()
        assert run.wait(timeout=120) == "stopped"
        assert run.dir.latest_checkpoint() is not None
        events = (run.path / "events.log").read_text()
        assert "printing to the terminal failed" in events
        assert "Traceback" not in (run.path / "supervisor.log").read_text() if (run.path / "supervisor.log").exists() else True
        assert_run_clean(run)
    finally:
        subprocess.run(tmux + ["kill-server"], env=env, capture_output=True, timeout=30)
