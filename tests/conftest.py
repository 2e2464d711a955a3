"""Shared test fixtures: real processes, real shared memory, tiny real models."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"

# the supervisor and the workers are separate interpreters: make the checkout importable there
os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# what a role sets in its own process (engine.runtime.worker.quiet_hf_logging): set once here, so
# that a test running a role in this process does not change the environment the session's warm
# launcher compares each run's with (huggingface_hub reads it at import)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
_WARM_SUMMARY: list[str] = []


def _free_space() -> str:
    """Free space where the tests write (the temp dir, shared memory): a full disk otherwise shows
    up only as unrelated-looking failures late in the run."""
    parts = []
    for label, path in (("tmp", tempfile.gettempdir()), ("shm", "/dev/shm")):
        try:
            parts.append(f"{label} {path}: {shutil.disk_usage(path).free / 2**30:.1f} GiB")
        except OSError:
            continue
    return "free space: " + ", ".join(parts)


def pytest_report_header(config):
    return _free_space()


@pytest.fixture(scope="session", autouse=True)
def warm_launcher():
    """One warm launcher (``engine.runtime.warm``) for the session: every detached run a test
    starts through ``engine.client`` is a fork of it, not a fresh interpreter that imports torch
    and transformers again (about 3.5 s less a run on 2 cores). A test whose environment differs
    where it matters (its own ``PYTHONPATH``) is refused by it and gets a fresh one, as does every
    run with ``RLHF_CONSOLE_TEST_COLD=1`` (the whole suite on the plain path)."""
    if os.environ.get("RLHF_CONSOLE_TEST_COLD") == "1":
        yield None
        return
    import subprocess

    from engine.client import start_warm_launcher

    d = Path(tempfile.mkdtemp(prefix="rlhfc-warm-"))
    sock = d / "launcher.sock"
    with open(d / "launcher.log", "ab") as log:
        proc, ready = start_warm_launcher(sock, log=log)
    if ready:
        os.environ["RLHF_CONSOLE_WARM"] = str(sock)
    try:
        yield (proc, sock) if ready else None
    finally:
        os.environ.pop("RLHF_CONSOLE_WARM", None)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        lines = (d / "launcher.log").read_text(errors="replace").splitlines()
        refused = sorted({ln for ln in lines if ln.startswith("refused:")})
        _WARM_SUMMARY.append(f"warm launcher: {sum(ln == 'forked a supervisor' for ln in lines)} supervisors forked, "
                             f"{sum(ln.startswith('refused:') for ln in lines)} requests refused"
                             + "".join(f"\n  {r}" for r in refused))
        shutil.rmtree(d, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    terminalreporter.write_line(_free_space() + " (at the end)")
    for line in _WARM_SUMMARY:
        terminalreporter.write_line(line)


def proc_cpu_flags() -> set[str]:
    """The CPU's flags from /proc/cpuinfo: what the tests expect of the hardware is told from
    these (and the ISA cap below), never from the code under test's own probes."""
    try:
        return set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return set()


def isa_capped_at_avx2() -> bool:
    """Whether the environment caps torch or oneDNN at AVX2 or below (the emulated AVX2 class)."""
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").upper()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()
    return aten in ("AVX2", "DEFAULT") or isa in ("SSE41", "AVX", "AVX2", "AVX2_VNNI")


@pytest.fixture
def runs_dir(tmp_path):
    d = tmp_path / "runs"
    d.mkdir()
    return d


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty ``RLHF_CONSOLE_CACHE`` for what a test measures or writes at the cache's root (the
    precision calibration, trained rewards), whose ``models`` and ``assets`` are the suite's own
    cache's, linked: the tiny models are built once for the session, not converted again from
    the GGUF tokenizer (~6 s on 2 cores) for every test that wants its own calibration. The
    tests of a first run with nothing cached use a plain empty folder instead."""
    from engine.assets import cache_dir
    from engine.models import load_tokenizer

    load_tokenizer("tiny:llama")  # built in the suite's cache, if it is not yet
    shared = cache_dir()
    root = tmp_path / "cache"
    root.mkdir()
    for sub in ("models", "assets"):
        (shared / sub).mkdir(exist_ok=True)
        (root / sub).symlink_to(shared / sub, target_is_directory=True)
    monkeypatch.setenv("RLHF_CONSOLE_CACHE", str(root))
    return root


def tiny_overrides(runs_dir: Path, *extra: str) -> list[str]:
    return [f"run.output_dir={runs_dir}", *extra]


def run_processes_gone(run, timeout: float = 20.0) -> list[int]:
    """Wait until the run's supervisor and workers have exited; return pids still alive."""
    from engine.procs import pid_alive

    st = run.info
    pids = [st.get("supervisor_pid")] + list((st.get("pids") or {}).values())
    pids = [p for p in pids if p]
    t0 = time.time()
    while time.time() - t0 < timeout:
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


def run_segments(run) -> list[str]:
    from engine import transport

    pid = run.info.get("supervisor_pid")
    return transport.list_segments(owner_pid=int(pid)) if pid else []


def assert_run_clean(run) -> None:
    """Every process of the run is gone and none of its shared-memory segments is left."""
    assert run_processes_gone(run) == [], "processes of the run are still alive"
    assert run_segments(run) == [], "shared-memory segments of the run are left in /dev/shm"


def start_tiny(runs_dir: Path, cleanup_runs: list, *extra: str):
    """Launch configs/tiny.yaml under runs_dir (with extra --set overrides); killed after the test."""
    from engine.client import launch

    run = launch(TINY, tiny_overrides(runs_dir, *extra))
    cleanup_runs.append(run)
    return run


def kill_run(run) -> None:
    """SIGKILL whatever is left of a run's supervisor and workers."""
    from engine.procs import pid_alive

    st = run.info
    for pid in [st.get("supervisor_pid")] + list((st.get("pids") or {}).values()):
        if pid and pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def cleanup_runs():
    """Collects runs started by a test and kills whatever is left of them afterwards."""
    runs = []
    yield runs
    for run in runs:
        kill_run(run)
