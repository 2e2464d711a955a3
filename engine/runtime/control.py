"""The control socket: AF_UNIX, mode 0600, JSON lines in both directions.

Requests  {"op": "status"|"pause"|"resume"|"stop"|"checkpoint"|"swap_reward"|"refit_reward"|"sample_pair"|
          "subscribe", ...}
Replies   {"ok": true, ...} or {"ok": false, "error": "..."}; ``subscribe`` then streams events
          {"event": "step"|"sample"|"state"|"log"|"checkpoint", ...} until the client leaves.

Only JSON crosses the socket: no pickle, ever. A malformed or unknown request gets an error
reply and changes nothing.
"""
from __future__ import annotations

import json
import os
import queue
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

# where the socket goes is engine.runs' rule (the config checks use it too); re-exported here
from engine.runs import ControlSocketError, short_socket_dir, socket_fits, socket_path_for  # noqa: F401

MAX_LINE = 1 << 20
BACKLOG = 128  # several consoles and scripts may connect at the same moment


OPS = ("status", "pause", "resume", "stop", "checkpoint", "swap_reward", "refit_reward", "sample_pair", "subscribe",
       "ping")


class ControlServer:
    """Serves requests with ``handler(request) -> reply``; broadcasts events to subscribers."""

    def __init__(self, path: Path, handler: Callable[[dict], dict], hello: Callable[[], dict]):
        self.path = Path(path)
        self.handler = handler
        self.hello = hello
        self._subs: list[queue.Queue] = []
        self._subs_lock = threading.Lock()
        server_self = self

        class _Handler(socketserver.StreamRequestHandler):
            def handle(self):  # one connection
                server_self._serve_conn(self.rfile, self.wfile)

        class _Server(socketserver.ThreadingUnixStreamServer):
            request_queue_size = BACKLOG  # listen() backlog (socketserver's default is 5)

        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        old = os.umask(0o177)  # the socket is created 0600
        try:
            self._server = _Server(str(self.path), _Handler)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._subs_lock:
            for q in self._subs:
                q.put(None)
        self._server.shutdown()
        self._server.server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def broadcast(self, event: dict) -> None:
        with self._subs_lock:
            subs = list(self._subs)
        for q in subs:
            if q.qsize() < 10_000:  # a stuck viewer must not eat the supervisor's memory
                q.put(event)

    # ---------------------------------------------------------------------------------------
    def _serve_conn(self, rfile, wfile) -> None:
        def send(obj):
            wfile.write((json.dumps(obj, allow_nan=True) + "\n").encode())
            wfile.flush()

        while True:
            try:
                line = rfile.readline(MAX_LINE)
            except (ConnectionError, OSError):
                return
            if not line:
                return
            if len(line) >= MAX_LINE and not line.endswith(b"\n"):
                # an over-long request is refused whole: the rest of it is never read as a
                # request of its own, and the connection is dropped
                self._safe(send, {"ok": False, "error": f"request longer than {MAX_LINE} bytes; "
                                                        f"connection closed"})
                return
            line = line.strip()
            if not line:
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("a request must be a JSON object")
            except (ValueError, UnicodeDecodeError) as e:
                self._safe(send, {"ok": False, "error": f"malformed request: {e}"})
                continue
            op = req.get("op")
            if op not in OPS:
                self._safe(send, {"ok": False, "error": f"unknown op {op!r}; expected one of {', '.join(OPS)}"})
                continue
            if op == "subscribe":
                self._stream(send)
                return
            try:
                reply = self.handler(req)
            except Exception as e:  # noqa: BLE001 - the connection stays up
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            if not self._safe(send, reply):
                return

    @staticmethod
    def _safe(send, obj) -> bool:
        try:
            send(obj)
            return True
        except (ConnectionError, OSError):
            return False

    def _stream(self, send) -> None:
        q: queue.Queue = queue.Queue()
        with self._subs_lock:
            self._subs.append(q)
        try:
            if not self._safe(send, {"ok": True, "event": "hello", **self.hello()}):
                return
            while True:
                ev = q.get()
                if ev is None or not self._safe(send, ev):
                    return
        finally:
            with self._subs_lock:
                if q in self._subs:
                    self._subs.remove(q)


class ControlClient:
    """A blocking JSON-lines client for one request/reply at a time."""

    def __init__(self, path: Path, timeout: float = 30.0):
        self.path = Path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + (timeout if timeout is not None else 30.0)
        delay = 0.01
        while True:
            try:
                self.sock.connect(str(self.path))
                break
            except BlockingIOError:  # EAGAIN: the listen backlog is full for a moment
                if time.monotonic() >= deadline:
                    self.sock.close()
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
            except BaseException:
                self.sock.close()
                raise
        self._r = self.sock.makefile("rb")

    def request(self, op: str, timeout: Optional[float] = None, **fields: Any) -> dict:
        if timeout is not None:
            self.sock.settimeout(timeout)
        self.sock.sendall((json.dumps({"op": op, **fields}) + "\n").encode())
        line = self._r.readline(MAX_LINE)
        if not line:
            raise ConnectionError("the run's control socket closed")
        return json.loads(line)

    def send_raw(self, data: bytes) -> dict:
        self.sock.sendall(data)
        line = self._r.readline(MAX_LINE)
        if not line:
            raise ConnectionError("the run's control socket closed")
        return json.loads(line)

    def events(self) -> Iterator[dict]:
        """Subscribe and yield events until the socket closes."""
        self.sock.settimeout(None)
        self.sock.sendall(b'{"op": "subscribe"}\n')
        while True:
            line = self._r.readline(MAX_LINE)
            if not line:
                return
            yield json.loads(line)

    def close(self) -> None:
        try:
            self._r.close()
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
