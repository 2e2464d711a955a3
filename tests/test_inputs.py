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
from tests.conftest import ROOT, TINY

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
