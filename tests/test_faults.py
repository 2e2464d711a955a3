"""Fault injection on the tiny config, with real processes: every fault leaves the run
resumable and the disk clean.

One run takes most faults in turn (a reward that raises once, a NaN reward, reward swaps that
exit or segfault at import, kill -9 of the supervisor mid-checkpoint, kill -9 of each role
mid-checkpoint or mid-step); another takes a NaN in the actor's and then the critic's update
after its first optimizer step; a third lives on a small tmpfs that fills up. Faults inside
the roles are injected with a ``python:`` reward module and, for the NaN updates, a
``sitecustomize`` module on the PYTHONPATH of the run (it wraps ``engine.algorithms.policy_loss``
/ ``value_loss`` when a flag file says so); the product has no test hooks. Detection times are
printed (``-s``), never asserted.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.client import Run, RunError, launch
from tests.conftest import ROOT, TINY, assert_run_clean, run_processes_gone, run_segments, tiny_overrides

pytestmark = pytest.mark.timeout(900)

SITECUSTOMIZE = '''
import os
_dir = os.environ.get("RLHFC_FAULT_DIR")
if _dir:
    import engine.algorithms as _A

    def _wrap(name, flag):
        orig = getattr(_A, name)

        def wrapped(*a, **k):
            loss, st = orig(*a, **k)
            path = os.path.join(_dir, flag)
            try:
                with open(path) as f:
                    n = int(f.read().strip())
            except (FileNotFoundError, ValueError):
                return loss, st
            if n > 0:  # let n more calls through first
                with open(path, "w") as f:
                    f.write(str(n - 1))
                return loss, st
            os.unlink(path)
            return loss * float("nan"), st

        setattr(_A, name, wrapped)

    _wrap("policy_loss", "nan_actor")
    _wrap("value_loss", "nan_critic")
'''

FAULTY_REWARD = '''
import os
_dir = os.environ["RLHFC_FAULT_DIR"]

def score(prompts, responses):
    for flag in ("reward_raise", "reward_nan"):
        path = os.path.join(_dir, flag)
        if os.path.exists(path):
            os.unlink(path)
            if flag == "reward_raise":
                raise TimeoutError("remote scorer timed out")
            return [float("nan")] * len(responses)
    return [0.125 * (len(r) % 5) for r in responses]
'''

TIMES: dict[str, float] = {}


def _report(name: str, seconds: float) -> None:
    TIMES[name] = seconds
    print(f"\n[fault timing] {name}: {seconds:.2f}s", flush=True)


def _fault_mods(tmp_path: Path, monkeypatch, *, nan_losses: bool) -> Path:
    mods = tmp_path / "mods"
    mods.mkdir()
    flags = tmp_path / "flags"
    flags.mkdir()
    if nan_losses:
        (mods / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (mods / "faulty_reward.py").write_text(FAULTY_REWARD)
    (mods / "exit_on_import.py").write_text("import sys\nsys.exit(3)\n")
    (mods / "segv_on_import.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    (mods / "hang_on_import.py").write_text("import time\ntime.sleep(3600)\n")
    monkeypatch.setenv("PYTHONPATH", f"{mods}{os.pathsep}{os.environ['PYTHONPATH']}")
    monkeypatch.setenv("RLHFC_FAULT_DIR", str(flags))
    return flags


@pytest.fixture
def fault_env(tmp_path, monkeypatch):
    """Reward modules that fail on request (a flag file in the returned folder) or at import.
    No sitecustomize: the runs are forked by the suite's warm launcher like any other."""
    return _fault_mods(tmp_path, monkeypatch, nan_losses=False)


@pytest.fixture
def nan_env(tmp_path, monkeypatch):
    """``fault_env`` and a sitecustomize that turns the actor's or the critic's loss into NaN on
    request. It runs at interpreter start, so the warm launcher refuses these runs (it says so
    in supervisor.log) and they start as fresh interpreters."""
    return _fault_mods(tmp_path, monkeypatch, nan_losses=True)


def _cli(runs_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "console.cli", "--runs-dir", str(runs_dir), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def _wait_for(cond, timeout: float, what: str, poll: float = 0.1):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


def _paused(run: Run, timeout: float = 180) -> dict:
    """Wait for a fault pause (in the socket's status); return that status."""
    def check():
        st = run.status()
        if st.get("state") in ("failed", "dead", "finished", "stopped"):
            raise AssertionError(f"run ended {st.get('state')}: {st.get('failure')}")
        return st if st.get("state") == "paused" and st.get("pause_info") else None
    return _wait_for(check, timeout, "a pause with its cause", poll=0.2)


def _tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's actor and critic (weights, optimizer and scheduler
    state), by name; RNG states are left out (generation draws from them)."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted((ckpt / "actor").glob("*.safetensors")):
        out.update({f"actor.w.{k}": v for k, v in load_file(f).items()})

    def flat(prefix, obj):
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                flat(f"{prefix}.{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                flat(f"{prefix}.{i}", v)
        elif isinstance(obj, (int, float)):
            out[prefix] = torch.tensor(float(obj))

    ts = torch.load(ckpt / "actor" / "trainer_state.pt", weights_only=False)
    flat("actor.opt", ts["optimizer"])
    flat("actor.sched", ts["scheduler"])
    cs = torch.load(ckpt / "critic" / "critic_state.pt", weights_only=False)
    for k in ("model", "optimizer", "scheduler"):
        flat(f"critic.{k}", cs[k])
    return out


def _assert_same_state(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys(), set(ta) ^ set(tb)
    changed = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not changed, f"changed by a step that was not applied: {changed[:5]}"


def _assert_update_rolled_back(run: Run, tmp_path: Path, flag: str, fault_env: Path, role: str) -> None:
    """Resume into a step whose `role` update hits a NaN after its first optimizer step; the
    run pauses; a checkpoint taken then must equal the one taken before that step."""
    step = int(run.status()["step"])
    ck = run.path / "checkpoints" / f"step_{step}"
    assert ck.is_dir(), "checkpoint.every=1: the step before the fault is checkpointed"
    (fault_env / flag).write_text("2")  # two micro-batches (one optimizer step) pass, then NaN
    t0 = time.time()
    run.resume()
    st = _paused(run)
    _report(f"NaN in the {role} update -> paused", time.time() - t0)
    assert st["step"] == step and st["pause_info"]["role"] == role and st["pause_info"]["phase"] == "update"
    assert st["paused_reason"].count("non-finite value") == 1, st["paused_reason"]
    before = tmp_path / f"before-{role}"
    os.replace(ck, before)
    saved = run.checkpoint(wait=True)
    assert saved["ok"] and Path(saved["path"]).name == f"step_{step}"
    _assert_same_state(before, ck)  # neither role changed: both updates rolled back together


def _kill_during_checkpoint(run: Run, pid: int, timeout: float = 120) -> list[Path]:
    """SIGKILL ``pid`` as soon as a checkpoint folder is being written; return the folders."""
    ck = run.path / "checkpoints"
    t0 = time.time()
    while time.time() - t0 < timeout:
        tmps = [p for p in ck.glob(".tmp-*") if (p / "actor").exists() or (p / "critic").exists()]
        if tmps:  # the roles are writing their parts
            os.kill(pid, signal.SIGKILL)
            return tmps
        time.sleep(0.002)
    raise AssertionError("no checkpoint was written")


def _latest_step(run: Run) -> int:
    return int(run.dir.latest_checkpoint().name.split("_")[1])


def _resume_line(step: int) -> str:
    return f"resumed from checkpoints/step_{step} (step {step}, "


def _assert_resumes_from(run: Run, step: int, seen: int) -> None:
    run.wait_step(step + 1, timeout=300)
    assert (run.path / "events.log").read_text().count(_resume_line(step)) == seen + 1


def test_faults_leave_the_run_resumable_and_the_disk_clean(runs_dir, cleanup_runs, tmp_path, fault_env):
    run = launch(TINY, tiny_overrides(runs_dir, "run.steps=200", "checkpoint.every=1", "checkpoint.keep_last=2",
                                      "reward.source=python:faulty_reward:score"))
    cleanup_runs.append(run)
    run.wait_step(1, timeout=300)

    # 1. a reward that raises once: the step is not applied, the run pauses naming role, phase
    #    and error (run.json, events, status); resume retries the step
    (fault_env / "reward_raise").touch()
    t0 = time.time()
    st = _paused(run)
    _report("reward raises -> paused", time.time() - t0)
    step = st["step"]
    assert st["pause_info"] == {"role": "reward", "phase": "score",
                                "error": "TimeoutError: remote scorer timed out", "step": step + 1}
    assert "remote scorer timed out" in st["paused_reason"]
    info = _wait_for(lambda: run.info if run.info.get("state") == "paused" else None, 30, "run.json paused")
    assert info["pause_info"]["role"] == "reward" and "remote scorer timed out" in info["message"]
    assert info["step"] == step and max(m["step"] for m in run.metrics()) == step
    assert "error in reward (score): TimeoutError: remote scorer timed out" in (run.path / "events.log").read_text()
    out = _cli(runs_dir, "runs")
    assert "remote scorer timed out" in out.stdout, out.stdout

    # 2. a NaN from the reward: the message says it once
    (fault_env / "reward_nan").touch()
    run.resume()
    st = _paused(run)
    assert st["pause_info"]["role"] == "reward" and st["step"] == step
    assert st["paused_reason"].count("non-finite value in reward (score)") == 1, st["paused_reason"]
    run.resume()
    run.wait_step(step + 1, timeout=120)

    # 3. (a NaN in an update: test_a_nan_in_one_update_rolls_back_both_roles, below)
    # 4. swaps that kill their own process: refused, the live reward worker untouched
    reward_pid = run.info["pids"]["reward"]
    for mod, why in (("exit_on_import", "sys.exit(3)"), ("segv_on_import", "SIGSEGV")):
        t0 = time.time()
        with pytest.raises(RunError, match="stays in place") as e:
            run.swap_reward(f"python:{mod}:score")
        _report(f"swap to a module that dies at import ({why}) -> refused", time.time() - t0)
        assert why in str(e.value)
    assert run.status()["reward_source"] == "python:faulty_reward:score"
    assert run.info["pids"]["reward"] == reward_pid and run.state == "running"
    step = run.info["step"]
    run.wait_step(step + 1, timeout=120)

    # 5. kill -9 of the supervisor mid-checkpoint: the workers go, the half-written folder and
    #    the segments stay until the next command, which removes and reports them; the previous
    #    checkpoint loads
    sup = run.info["supervisor_pid"]
    tmps = _kill_during_checkpoint(run, sup)
    t0 = time.time()
    assert run_processes_gone(run, timeout=30) == []
    _report("supervisor SIGKILL -> every process gone", time.time() - t0)
    assert run.state == "dead"
    left = [p for p in tmps if p.exists()]
    assert left, "the kill came after the checkpoint's rename"
    latest = _latest_step(run)
    out = _cli(runs_dir, "runs")
    assert out.returncode == 0, out.stderr
    assert "removed the half-written checkpoint" in out.stderr and left[0].name in out.stderr
    assert re.search(r"\(\d+(\.\d)? (B|KB|MB)\)", out.stderr), out.stderr
    assert not list((run.path / "checkpoints").glob(".tmp-*"))
    assert run_segments(run) == []
    seen = (run.path / "events.log").read_text().count(_resume_line(latest))
    out = _cli(runs_dir, "resume", run.name)
    assert out.returncode == 0, out.stderr
    _assert_resumes_from(run, latest, seen)

    # 6. kill -9 of each role, mid-checkpoint (actor, critic: they write it) or mid-step
    #    (reference, reward): the run fails naming the role; nothing half-written and no
    #    segment remains; resume continues from the previous checkpoint
    kills = (("actor", "checkpoint"), ("critic", "checkpoint"), ("reference", "step"), ("reward", "step"))
    for i, (role, when) in enumerate(kills):
        pid = run.info["pids"][role]
        failures = (run.path / "events.log").read_text().count("worker failure")
        if when == "checkpoint":
            _kill_during_checkpoint(run, pid)
        else:
            time.sleep(0.5)
            os.kill(pid, signal.SIGKILL)
        t0 = time.time()
        _wait_for(lambda: (run.path / "events.log").read_text().count("worker failure") > failures, 60,
                  "the worker failure in events.log", poll=0.05)
        _report(f"{role} SIGKILL mid-{when} -> named in events.log", time.time() - t0)
        assert run.wait(timeout=60) == "failed"
        _report(f"{role} SIGKILL mid-{when} -> failed, every process gone", time.time() - t0)
        info = run.info
        assert role in info["failure"] and "SIGKILL" in info["failure"], info["failure"]
        assert run_processes_gone(run) == [] and run_segments(run) == []
        assert not list((run.path / "checkpoints").glob(".tmp-*"))
        latest = _latest_step(run)
        assert (run.path / "checkpoints" / f"step_{latest}" / "state.json").exists()
        if i < len(kills) - 1:  # (the last resume is the same as the others: spare its start-up)
            seen = (run.path / "events.log").read_text().count(_resume_line(latest))
            run.restart()
            _assert_resumes_from(run, latest, seen)


def test_a_nan_in_one_update_rolls_back_both_roles(runs_dir, cleanup_runs, tmp_path, nan_env):
    """A NaN in one role's update after its first optimizer step: the run pauses naming the role
    and phase, and actor and critic are both left exactly as before the step (the other role's
    finished update is undone); resumed, the retried step goes through."""
    run = launch(TINY, tiny_overrides(runs_dir, "run.steps=200", "checkpoint.every=1", "checkpoint.keep_last=2",
                                      "reward.source=python:faulty_reward:score"))
    cleanup_runs.append(run)
    run.wait_step(1, timeout=300)
    run.pause()
    _wait_for(lambda: run.status()["state"] == "paused", 120, "paused")
    _assert_update_rolled_back(run, tmp_path, "nan_actor", nan_env, "actor")
    _assert_update_rolled_back(run, tmp_path, "nan_critic", nan_env, "critic")
    step = run.status()["step"]
    run.resume()
    run.wait_step(step + 1, timeout=120)  # the retried step now goes through
    run.stop(wait=True, timeout=120)
    assert_run_clean(run)


class SmallTmpfs:
    """The run directory on a tmpfs of our own (needs root): it really fills up."""

    cause = "No space left on device"

    def __init__(self, mnt: Path):
        self.mnt = mnt
        self.filler = mnt / "filler"

    def fill_for_records(self, run: Run) -> None:
        with open(self.filler, "wb", buffering=0) as f:
            for chunk in (65536, 512):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError:
                    pass

    def room_for_records(self, run: Run) -> None:
        self.filler.unlink()

    def too_small_for_a_checkpoint(self, run: Run) -> None:
        used = int(subprocess.run(["df", "--output=used", "-B1", str(self.mnt)], capture_output=True,
                                  text=True).stdout.split()[-1])
        ck = sum(f.stat().st_size for f in (run.path / "checkpoints" / "step_2").rglob("*") if f.is_file())
        subprocess.run(["mount", "-o", f"remount,size={used + ck // 2}", str(self.mnt)], check=True)

    def room_again(self, run: Run) -> None:
        subprocess.run(["mount", "-o", "remount,size=300m", str(self.mnt)], check=True)


class FileSizeLimit:
    """Where no tmpfs can be mounted: RLIMIT_FSIZE on the run's live processes (Python ignores
    SIGXFSZ, so a write past the limit fails with EFBIG instead of killing the process)."""

    cause = "File too large"

    def __init__(self, mnt: Path):
        self.mnt = mnt

    @staticmethod
    def _limit(pids, nbytes) -> None:
        import resource

        for pid in pids:  # the soft limit only: raising it back needs no privilege
            _soft, hard = resource.prlimit(int(pid), resource.RLIMIT_FSIZE)
            resource.prlimit(int(pid), resource.RLIMIT_FSIZE, (nbytes, hard))

    def fill_for_records(self, run: Run) -> None:  # metrics.jsonl cannot grow; run.json still fits
        self._limit([run.info["supervisor_pid"]], (run.path / "metrics.jsonl").stat().st_size + 100)

    def room_for_records(self, run: Run) -> None:
        import resource

        self._limit([run.info["supervisor_pid"]], resource.RLIM_INFINITY)

    def too_small_for_a_checkpoint(self, run: Run) -> None:  # the weights' files cannot be written
        self._limit([run.info["pids"]["actor"], run.info["pids"]["critic"]], 1 << 20)

    def room_again(self, run: Run) -> None:
        import resource

        self._limit([run.info["pids"]["actor"], run.info["pids"]["critic"]], resource.RLIM_INFINITY)


@pytest.fixture
def full_disk(tmp_path):
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    forced = os.environ.get("RLHFC_TEST_FULL_DISK") == "fsize"  # to exercise the fallback here
    r = None if forced else subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(mnt)],
                                           capture_output=True, text=True)
    if r is None or r.returncode != 0:
        yield FileSizeLimit(mnt)
        return
    try:
        yield SmallTmpfs(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_pauses_the_run_and_loses_nothing(full_disk, cleanup_runs):
    runs_dir = full_disk.mnt / "runs"
    run = launch(TINY, tiny_overrides(runs_dir, "run.steps=6", "checkpoint.every=2", "checkpoint.keep_last=2"))
    cleanup_runs.append(run)
    _wait_for(lambda: (run.path / "checkpoints" / "step_2").is_dir(), 300, "the step-2 checkpoint")
    run.pause()
    _wait_for(lambda: run.status()["state"] == "paused", 120, "paused")
    step = run.status()["step"]
    rows = len(list(run.metrics()))

    # a metrics/samples write that fails: the step is not applied, nothing is half-written
    full_disk.fill_for_records(run)
    t0 = time.time()
    run.resume()
    st = _paused(run)
    _report(f"{full_disk.cause} at a metrics write -> paused", time.time() - t0)
    assert st["step"] == step and st["pause_info"]["phase"] == "record"
    assert full_disk.cause in st["paused_reason"], st["paused_reason"]
    full_disk.room_for_records(run)
    info = _wait_for(lambda: run.info if run.info.get("pause_info") else None, 30, "run.json written once there is room")
    assert info["state"] == "paused" and full_disk.cause in info["message"]
    assert len(list(run.metrics())) == rows and (run.path / "metrics.jsonl").read_bytes().endswith(b"\n")

    # a checkpoint that does not fit: paused, never "finished"; the folder is removed
    full_disk.too_small_for_a_checkpoint(run)
    t0 = time.time()
    run.resume()
    st = _paused(run)
    _report(f"{full_disk.cause} at a checkpoint -> paused", time.time() - t0)
    assert st["step"] == 4 and st["pause_info"]["phase"] == "checkpoint"
    assert full_disk.cause in st["paused_reason"], st["paused_reason"]
    info = _wait_for(lambda: run.info if run.info.get("state") == "paused" else None, 30, "run.json paused")
    assert full_disk.cause in info["message"]
    assert not list((run.path / "checkpoints").glob(".tmp-*"))
    assert run.dir.latest_checkpoint().name == "step_2"
    out = _cli(runs_dir, "runs")
    assert full_disk.cause in out.stdout and "paused" in out.stdout

    # room again: resume writes the checkpoint and finishes
    full_disk.room_again(run)
    run.resume()
    assert run.wait(timeout=180) == "finished"
    assert run.dir.latest_checkpoint().name == "step_6"
    assert "checkpoint step 4 saved" in (run.path / "events.log").read_text()
    assert [m["step"] for m in run.metrics()] == [1, 2, 3, 4, 5, 6]
    assert run_processes_gone(run) == [] and run_segments(run) == []


def test_checkpoint_rename_is_durable(tmp_path, monkeypatch):
    """Every file and folder of a checkpoint is fsynced before the rename, the parent after it
    (a power loss can leave no renamed but empty checkpoint)."""
    from engine.runtime import rundir

    src = tmp_path / "checkpoints" / ".tmp-step_3-1"
    (src / "actor").mkdir(parents=True)
    (src / "actor" / "model.safetensors").write_bytes(b"w" * 100)
    (src / "state.json").write_text("{}")
    final = tmp_path / "checkpoints" / "step_3"
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("rename", str(b)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    rundir.durable_rename(src, final)
    rename_at = events.index(("rename", str(final)))
    before = {p for e, p in events[:rename_at] if e == "fsync"}
    assert before == {str(src / "actor" / "model.safetensors"), str(src / "state.json"), str(src / "actor"), str(src)}
    assert events[rename_at + 1:] == [("fsync", str(final.parent))]
    assert (final / "actor" / "model.safetensors").read_bytes() == b"w" * 100


_PROBE_FROM_A_FORK_SERVER = r"""
import json, sys
from engine.config import dump_config, load_config
from engine.procs import ensure_fork_server, fork_server_pid
from engine.runtime.probe import probe_reward

assert ensure_fork_server(False)
cfg = dump_config(load_config(sys.argv[1], []))
import multiprocessing as mp
import time
t0 = time.time()
hang = probe_reward(cfg, "python:hang_on_import:score", timeout=3)
hang_s = time.time() - t0
left = [p.name for p in mp.active_children() if p.name == "rlhf-reward-probe"]
print(json.dumps({"server": fork_server_pid(),
                  "ok": probe_reward(cfg, "python:where_am_i:score", timeout=120),
                  "exit": probe_reward(cfg, "python:exit_on_import:score", timeout=120),
                  "hang": hang, "hang_s": hang_s, "left": left}))
"""

_WHERE_AM_I = """import json, os, sys
with open(os.environ["WHERE_AM_I"], "w") as f:
    json.dump({"ppid": os.getppid(), "torch_before_import": "torch" in sys.modules}, f)
def score(prompts, responses):
    return [0.5] * len(responses)
"""


def test_a_probe_in_a_process_with_a_fork_server_is_forked_from_it(fault_env, tmp_path):
    """A CPU run's supervisor has a fork server: the probe of a swap candidate is its child
    (torch already imported, no new interpreter) and still refuses a module that exits, and one
    that hangs at import after its timeout, leaving no probe process behind. (The spawned probe
    of a run without a fork server is the Ray backend's: its swap in test_ray_backend.py.)"""
    mods = fault_env.parent / "mods"
    (mods / "where_am_i.py").write_text(_WHERE_AM_I)
    mark = tmp_path / "where.json"
    out = subprocess.run([sys.executable, "-c", _PROBE_FROM_A_FORK_SERVER, str(TINY)], cwd=ROOT,
                         env={**os.environ, "WHERE_AM_I": str(mark)}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ok"] == [True, ""], got
    assert got["exit"][0] is False and "sys.exit(3)" in got["exit"][1], got
    assert got["hang"][0] is False and "within 3s" in got["hang"][1], got
    assert got["hang_s"] < 60 and got["left"] == [], got
    where = json.loads(mark.read_text())
    assert where["ppid"] == got["server"] and where["torch_before_import"] is True, (where, got)
