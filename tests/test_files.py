"""engine.files: the one file lock (filelock), the one "publish a folder atomically", the one
JSONL reader with its two contracts; engine.procs: pid liveness through psutil."""
from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import time

import pytest

from engine.data import DataError
from engine.files import file_lock, iter_jsonl, publish_folder, read_jsonl
from engine.procs import pid_alive, process_info


def _hold(path, ready, release):
    with file_lock(path):
        ready.set()
        release.wait(20)


def test_file_lock_excludes_another_process_and_says_it_waits(tmp_path):
    lock = tmp_path / "sub" / ".x.lock"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(lock, ready, release))
    p.start()
    try:
        assert ready.wait(60), "the holder never took the lock"
        waited = []

        def on_wait():
            waited.append(time.monotonic())
            release.set()

        with file_lock(lock, on_wait=on_wait):
            assert waited, "the lock was taken while another process held it"
    finally:
        release.set()
        p.join(30)
    with file_lock(lock, on_wait=lambda: pytest.fail("nobody holds it")):
        pass
    assert lock.exists()   # left in place: deleting a lock file races with the next taker


def test_publish_folder_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "models" / "m"
    publish_folder(target, lambda d: (d / "a.txt").write_text("one"))
    assert (target / "a.txt").read_text() == "one"
    assert oct(target.stat().st_mode & 0o777) != oct(0o700)   # not mkdtemp's private mode

    def boom(d):
        (d / "a.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        publish_folder(target, boom)
    assert (target / "a.txt").read_text() == "one"
    publish_folder(target, lambda d: (d / "b.txt").write_text("two"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]    # no temp or old folders


def test_jsonl_tolerant_for_run_files_strict_for_user_data(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text('{"a": 1}\nnot json\n[1]\n\n{"b": 2}\n{"c": 3')     # last line still being written
    assert read_jsonl(f) == [{"a": 1}, {"b": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []
    with pytest.raises(DataError, match=r"m.jsonl: line 2 col 1: invalid JSON"):
        list(iter_jsonl(f, strict=True, error=DataError))
    g = tmp_path / "g.jsonl"
    g.write_text('\n{"a": 1}\n\n[2]\n')
    with pytest.raises(DataError, match="line 4: expected a JSON object per line, got list"):
        list(iter_jsonl(g, strict=True, error=DataError))
    g.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        list(iter_jsonl(g, strict=True, error=DataError))


def test_pid_alive_via_psutil_counts_zombies_dead():
    import os

    assert pid_alive(os.getpid()) and process_info(os.getpid())[1] is not None
    assert not pid_alive(None) and not pid_alive(0) and not pid_alive("x")
    z = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 20
    while pid_alive(z.pid):          # exited but not yet waited for: a zombie
        if time.monotonic() > deadline:
            pytest.fail("a zombie child counts as alive")
        time.sleep(0.05)
    z.wait()
    assert not pid_alive(z.pid)
