"""The warm launcher (engine.runtime.warm) for real: a launcher process, a unix socket, forked
supervisors that run the tiny config, against supervisors started as fresh interpreters."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from engine.client import launch, start_warm_launcher, supervisor_env
from engine.procs import pid_alive
from engine.runtime import warm
from tests.conftest import ROOT, TINY, assert_run_clean, tiny_overrides

pytestmark = pytest.mark.timeout(600)

_NOT_COMPARED = {"step", "time", "tokens_per_s", "gen_tokens_per_s"}


@pytest.fixture
def launcher(warm_launcher, monkeypatch):
    """The session's launcher (tests/conftest.py), or one of this test's own when the session has
    none (RLHF_CONSOLE_TEST_COLD=1); RLHF_CONSOLE_WARM points at it."""
    if warm_launcher is not None:
        monkeypatch.setenv(warm.ENV, str(warm_launcher[1]))
        yield warm_launcher
        return
    sock = Path(tempfile.mkdtemp(prefix="rlhfc-warm-t-")) / "l.sock"
    proc, ready = start_warm_launcher(sock)
    assert ready, f"the launcher did not start (exit code {proc.poll()})"
    monkeypatch.setenv(warm.ENV, str(sock))
    yield proc, sock
    proc.kill()
    proc.wait(timeout=30)


def _numbers(m: dict) -> dict:
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in _NOT_COMPARED}


def test_a_warm_supervisor_is_a_detached_fork_that_gives_a_fresh_ones_metrics(launcher, runs_dir, cleanup_runs,
                                                                              monkeypatch, tmp_path):
    proc, _ = launcher
    # the run's environment is the requester's, not the launcher's: a time zone 3 h east of UTC
    # (read at run time, once time.tzset has run) shows in the events' clock
    monkeypatch.setenv("TZ", "RLHF-3")
    warm_run = launch(TINY, tiny_overrides(runs_dir, "run.steps=3", "run.name=warm"))
    cleanup_runs.append(warm_run)
    sup = psutil.Process(warm_run.info["supervisor_pid"])
    # a fork of the launcher (its command line), in a session of its own, not the launcher's child
    assert sup.cmdline()[1:] == proc.args[1:]
    assert os.getsid(sup.pid) == sup.pid
    assert sup.ppid() != proc.pid
    assert sup.cwd() == os.getcwd()
    # its fork server is a fork of it too, not a new interpreter
    kids = [" ".join(k.cmdline()) for k in sup.children()]
    assert kids and not any("multiprocessing.forkserver" in k for k in kids), kids
    assert warm_run.wait(timeout=300) == "finished", warm_run.info.get("failure")
    assert "warm launcher not used" not in warm_run.dir.supervisor_log.read_text()
    first = (warm_run.path / "events.log").read_text().splitlines()[0][:19]
    shift = time.mktime(time.strptime(first, "%Y-%m-%d %H:%M:%S")) - time.mktime(time.gmtime(warm_run.info["created"]))
    assert abs(shift - 3 * 3600) < 600, f"events.log's clock is {shift / 3600:.2f} h from UTC, not 3"

    # the same run as a fresh interpreter: the launcher refuses a request whose import path has a
    # sitecustomize (a fresh interpreter runs it at start; a fork cannot) and says why
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "sitecustomize.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", f"{mods}{os.pathsep}{os.environ['PYTHONPATH']}")
    cold_run = launch(TINY, tiny_overrides(runs_dir, "run.steps=3", "run.name=cold"))
    cleanup_runs.append(cold_run)
    cold_sup = psutil.Process(cold_run.info["supervisor_pid"])
    assert "engine.runtime.start" in cold_sup.cmdline()
    assert cold_run.wait(timeout=300) == "finished", cold_run.info.get("failure")
    assert (f"warm launcher not used: import path differs: {mods} has sitecustomize.py "
            "(sitecustomize runs at interpreter start)") in cold_run.dir.supervisor_log.read_text()

    a, b = list(warm_run.metrics()), list(cold_run.metrics())
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3]
    for ma, mb in zip(a, b):  # tiny.yaml is float32, seed 0: the same numbers to the bit
        na, nb = _numbers(ma), _numbers(mb)
        assert {"score_mean", "kl", "policy_loss", "value_loss", "entropy"} <= set(na)
        assert na == nb
    assert [s["response"] for s in warm_run.samples()] == [s["response"] for s in cold_run.samples()]
    assert_run_clean(warm_run)
    assert_run_clean(cold_run)
    assert proc.poll() is None, "the launcher serves on after a fork"


def test_a_request_whose_import_time_environment_differs_is_refused_and_the_launcher_serves_on(
        launcher, tmp_path):
    """(A refused request's run starting fresh, and why, is in the test above.)"""
    proc, sock = launcher
    matching = supervisor_env()
    pid, why = warm.request_start(str(sock), ["/nonexistent-run-dir"], env={**matching, "OMP_NUM_THREADS": "1"},
                                  log=tmp_path / "sup.log")
    assert pid is None and why == "environment read at import time differs: OMP_NUM_THREADS"
    assert proc.poll() is None


def test_a_module_on_the_run_s_own_pythonpath_or_in_its_directory_is_found_by_a_forked_supervisor(
        launcher, runs_dir, cleanup_runs, monkeypatch, tmp_path):
    proc, _ = launcher
    mods, here = tmp_path / "mods", tmp_path / "here"
    mods.mkdir()
    here.mkdir()
    (mods / "warm_path_reward.py").write_text("def score(prompts, responses):\n    return [0.25] * len(responses)\n")
    (here / "warm_cwd_reward.py").write_text("def score(prompts, responses):\n    return [0.75] * len(responses)\n")
    monkeypatch.setenv("PYTHONPATH", f"{mods}{os.pathsep}{os.environ['PYTHONPATH']}")
    monkeypatch.chdir(here)  # python -m puts the working directory first on the import path
    for module, value in (("warm_path_reward", 0.25), ("warm_cwd_reward", 0.75)):
        run = launch(TINY, tiny_overrides(runs_dir, "run.steps=2", f"reward.source=python:{module}:score"))
        cleanup_runs.append(run)
        assert psutil.Process(run.info["supervisor_pid"]).cmdline()[1:] == proc.args[1:], module
        assert run.wait(timeout=300) == "finished", run.info.get("failure")
        assert "warm launcher not used" not in run.dir.supervisor_log.read_text()
        assert [m["score_mean"] for m in run.metrics()] == [value, value]
        assert_run_clean(run)


def test_an_import_path_that_would_shadow_an_imported_module_is_refused(tmp_path):
    start = [str(tmp_path / "launcher-cwd"), str(warm.ROOT), "/usr/lib/python3.11"]
    (tmp_path / "extra").mkdir()
    assert warm.path_refusal([str(tmp_path / "extra"), *start[1:]], start) is None  # nothing in it
    (tmp_path / "extra" / "json.py").write_text("")
    why = warm.path_refusal([str(tmp_path / "extra"), *start[1:]], start)
    assert why == f"import path differs: {tmp_path / 'extra'} has json.py (json is imported already)"
    assert "reorders" in warm.path_refusal([start[0], start[2], start[1]], start)
    # the path a fresh `python -m` gets: its directory, PYTHONPATH (relative to it), the defaults
    got = warm.expected_sys_path({"PYTHONPATH": f"rel{os.pathsep}/abs{os.pathsep}{warm.ROOT}"}, "/work/x", start,
                                 {"PYTHONPATH": str(warm.ROOT)}, str(tmp_path / "launcher-cwd"))
    assert got == ["/work/x", "/work/x/rel", "/abs", str(warm.ROOT), "/usr/lib/python3.11"]


def test_the_refusals_name_what_differs(tmp_path):
    env = {"PATH": "/bin", "PYTHONPATH": "/a", "HOME": "/root"}
    ok = {"argv": ["RUN"], "env": dict(env), "cwd": "/", "log": "/tmp/x", "executable": sys.executable,
          "root": str(warm.ROOT)}
    newest = warm._code_mtime()
    assert warm.refusal(ok, env=env, code_mtime=newest) is None
    assert warm.refusal({**ok, "env": {**env, "HOME": "/elsewhere", "RLHFC_X": "1"}}, env=env, code_mtime=newest) is None
    assert "another Python" in warm.refusal({**ok, "executable": "/usr/bin/python0"}, env=env, code_mtime=newest)
    assert "another engine checkout" in warm.refusal({**ok, "root": "/src/other"}, env=env, code_mtime=newest)
    why = warm.refusal({**ok, "env": {**env, "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": "/b"}}, env=env,
                       code_mtime=newest)
    assert why == "environment read at import time differs: ATEN_CPU_CAPABILITY, PYTHONPATH"
    assert "changed since" in warm.refusal(ok, env=env, code_mtime=newest - 1.0)
    assert "malformed" in warm.refusal({**ok, "argv": "RUN"}, env=env, code_mtime=newest)
    # what the launcher's own imports set (torch: its compile cache's path) is what a fresh
    # interpreter sets too: the requester's process may carry it or not
    implied = {"TORCHINDUCTOR_CACHE_DIR": "/tmp/torchinductor_root"}
    for theirs in ({**env, **implied}, env):
        assert warm.refusal({**ok, "env": theirs}, env=env, code_mtime=newest, implied=implied) is None
    why = warm.refusal({**ok, "env": {**env, "TORCHINDUCTOR_CACHE_DIR": "/elsewhere"}}, env=env, code_mtime=newest,
                       implied=implied)
    assert why == "environment read at import time differs: TORCHINDUCTOR_CACHE_DIR"


def test_no_launcher_at_the_socket_is_a_reason_not_an_error(tmp_path):
    pid, why = warm.request_start(str(tmp_path / "absent.sock"), ["RUN"], env=supervisor_env(), log=tmp_path / "l")
    assert pid is None and why.startswith(f"no warm launcher at {tmp_path / 'absent.sock'}")


def test_the_launcher_dies_with_its_parent(tmp_path):
    sock = tmp_path / "p.sock"
    code = ("import subprocess, sys, time, pathlib; "
            f"p = subprocess.Popen([sys.executable, '-m', 'engine.runtime.warm', {str(sock)!r}]); "
            f"s = pathlib.Path({str(sock)!r}); t0 = time.time()\n"
            "while not s.exists() and time.time() - t0 < 120: time.sleep(0.05)\n"
            "print(p.pid, s.exists(), flush=True)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=supervisor_env(), timeout=180)
    assert out.returncode == 0, out.stderr
    pid, existed = out.stdout.split()
    assert existed == "True"
    t0 = time.time()
    while pid_alive(int(pid)) and time.time() - t0 < 10:
        time.sleep(0.05)
    assert not pid_alive(int(pid)), "the launcher outlived the process that started it"
    found, why = warm.request_start(str(sock), ["RUN"], env=supervisor_env(), log=tmp_path / "l")
    assert found is None and why.startswith("no warm launcher at")
