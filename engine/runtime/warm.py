"""The warm launcher: a process that has imported what a run's supervisor and its CPU fork server
import, and forks a new detached supervisor on request.

A detached run starts as ``python -m engine.runtime.start RUN_DIR``: a fresh interpreter that
imports torch, transformers and the engine (about 1.6 s of one core for the supervisor, 3 s for
its fork server, most of the start of a small run on 2 cores). A process that starts many runs
(the test suite, a console that launches and resumes) can keep one of these instead::

    python -m engine.runtime.warm SOCKET        # serves until its parent ends
    RLHF_CONSOLE_WARM=SOCKET                    # engine.client starts supervisors through it

Each request forks twice: the first child forks the supervisor and ends, so the supervisor is
re-parented like any detached process; it leads a new session (as ``start_new_session`` gives)
and the launcher answers with its pid. The supervisor sets up exactly what a fresh one would get: the requester's
environment, working directory, umask and log file on stdout and stderr, stdin on
``/dev/null``; then it runs :func:`engine.runtime.start.main` and ends as that interpreter would
(``sys.exit``, atexit handlers, finalisers). Its fork server is a fork of it too
(:func:`engine.procs.fork_the_fork_server`), so a CPU run imports nothing at start.

The launcher refuses (and :func:`request_start` returns ``None``, so the caller starts a fresh
interpreter) when a fork could differ from a fresh interpreter: another Python or another
engine checkout, engine source files changed since the launcher imported them, a different
value of an environment variable read at import time (torch's CPU and thread settings, Hugging
Face's, the locale), or a working directory or ``PYTHONPATH`` that puts a module the launcher has
imported (or a ``sitecustomize``) where a fresh interpreter would find it first. Otherwise the
supervisor's ``sys.path`` is the one a fresh interpreter started there would have. A refusal is
written to the run's supervisor log.

The launcher prints one line a request on its stdout (``forked a supervisor`` or ``refused:
WHY``). It never runs a torch operation, starts no thread and initialises no GPU: a fork must
inherit none of them. It dies with its parent (``PR_SET_PDEATHSIG``) and removes its socket.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ENV = "RLHF_CONSOLE_WARM"
ROOT = Path(__file__).resolve().parent.parent.parent
# environment read when torch, transformers or the interpreter start: a fork would keep the
# launcher's values, so a request that differs in any of these is refused
IMPORT_TIME_ENV = ("PYTHON", "LD_", "LC_", "LANG", "ATEN_", "ONEDNN_", "DNNL_", "OMP_", "MKL", "KMP_",
                   "GOMP_", "OPENBLAS", "TORCH", "PYTORCH_", "CUDA_", "NVIDIA_", "HF_", "TRANSFORMERS_",
                   "TOKENIZERS_", "MALLOC_", "GLIBC_")
_MAX_REQUEST = 1 << 20


def _code_mtime() -> float:
    """The newest modification time of the engine's source files."""
    newest = 0.0
    for p in (ROOT / "engine").rglob("*.py"):
        try:
            newest = max(newest, p.stat().st_mtime)
        except OSError:
            pass
    return newest


def import_time_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)}


def refusal(req: dict, *, env: dict, code_mtime: float, path: Optional[Sequence[str]] = None,
            cwd: Optional[str] = None, implied: Optional[dict] = None) -> Optional[str]:
    """Why a fork of this launcher would not be what a fresh interpreter gets (``None``: it would).

    ``path`` and ``cwd``: the launcher's ``sys.path`` and working directory when it started. With
    them, a request's own working directory and ``PYTHONPATH`` are accepted when the import path
    a fresh interpreter would get (:func:`expected_sys_path`) adds only directories that hold no
    module the launcher has imported (nor a ``sitecustomize``, which runs at interpreter start);
    without them, ``PYTHONPATH`` must be the launcher's. ``implied``: variables the launcher's
    imports set where they were unset (torch sets its compile cache's path): a request that has
    the value they set, or none, is the same to a fresh interpreter."""
    if req.get("executable") != sys.executable:
        return f"another Python ({req.get('executable')}; the launcher runs {sys.executable})"
    if req.get("root") != str(ROOT):
        return f"another engine checkout ({req.get('root')}; the launcher imported {ROOT})"
    implied = implied or {}
    theirs = import_time_env({**implied, **(req.get("env") or {})})
    mine = import_time_env({**implied, **env})
    differ = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k)
                    and not (path is not None and k == "PYTHONPATH"))
    if differ:
        return "environment read at import time differs: " + ", ".join(differ)
    if _code_mtime() > code_mtime:
        return "engine source files changed since the launcher imported them"
    if not isinstance(req.get("argv"), list) or not all(isinstance(a, str) for a in req["argv"]):
        return "malformed request (argv)"
    for key in ("cwd", "log"):
        if not isinstance(req.get(key), str):
            return f"malformed request ({key})"
    if path is not None:
        return path_refusal(expected_sys_path(req["env"], req["cwd"], path, env, cwd or "/"), path)
    return None


def _python_path(env: dict, cwd: str) -> list[str]:
    return [os.path.abspath(os.path.join(cwd, p)) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def expected_sys_path(env: dict, cwd: str, start_path: Sequence[str], start_env: dict, start_cwd: str) -> list[str]:
    """The ``sys.path`` of ``python -m ...`` started in ``cwd`` with ``env``, from the launcher's
    own (started in ``start_cwd`` with ``start_env``): the working directory, then ``PYTHONPATH``
    (absolute, relative to it), then the interpreter's defaults; duplicates after the first
    dropped."""
    mine = set(_python_path(start_env, start_cwd))
    defaults = [p for p in list(start_path)[1:] if p not in mine]
    # ``-m`` puts the directory first after the rest is built (and deduplicated by ``site``)
    return [os.path.abspath(cwd), *_unique([*_python_path(env, cwd), *defaults])]


def _unique(paths: Sequence[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


_MODULE_SUFFIXES = (".py", ".pyc", ".so", ".pyd")


def path_refusal(expected: Sequence[str], start_path: Sequence[str]) -> Optional[str]:
    """Why importing with ``expected`` in place of the launcher's ``start_path`` could differ for a
    module already imported (``None``: it could not)."""
    start, expected = _unique(start_path), _unique(expected)
    common = [p for p in expected if p in start]
    if common != [p for p in start if p in common]:
        return "PYTHONPATH differs: it reorders the launcher's import path"
    loaded = {name.split(".")[0] for name in sys.modules} | {"sitecustomize", "usercustomize"}
    for d in expected:
        if d in start_path:
            continue
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for e in entries:
            name = e.split(".")[0]
            is_module = e.endswith(_MODULE_SUFFIXES) or os.path.isdir(os.path.join(d, e))
            if is_module and name in loaded:
                what = "runs at interpreter start" if name.endswith("customize") else "is imported already"
                return f"import path differs: {d} has {e} ({name} {what})"
    return None


# --------------------------------------------------------------------------------------- client
def request_start(sock: str, argv: Sequence[str], *, env: dict, log: Path, cwd: Optional[str] = None,
                  timeout: float = 30.0) -> tuple[Optional[int], str]:
    """Ask the launcher at ``sock`` for a supervisor running ``engine.runtime.start`` with ``argv``:
    ``(pid, "")``, or ``(None, why)`` when there is no launcher or it refused."""
    req = {"argv": list(argv), "env": dict(env), "cwd": cwd or os.getcwd(), "log": str(log),
           "umask": _current_umask(), "executable": sys.executable, "root": str(ROOT)}
    try:
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(timeout)
            c.connect(sock)
            c.sendall(json.dumps(req).encode() + b"\n")
            reply = _read_line(c)
    except OSError as e:
        return None, f"no warm launcher at {sock} ({e.strerror or e})"
    try:
        ans = json.loads(reply)
    except ValueError:
        return None, f"the warm launcher at {sock} gave no answer"
    if ans.get("ok") and isinstance(ans.get("pid"), int):
        return ans["pid"], ""
    return None, str(ans.get("error") or "refused")


def _current_umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _read_line(conn: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < _MAX_REQUEST:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


# --------------------------------------------------------------------------------------- server
def serve(path: str) -> int:
    """Import, listen on ``path`` and fork supervisors until the parent ends. In the launcher this
    never returns; in a forked supervisor it returns the supervisor's exit code."""
    from engine.procs import die_with_parent

    owner = os.getpid()
    start_env = dict(os.environ)  # what a request's environment is compared with
    start_path, start_cwd = list(sys.path), os.getcwd()
    die_with_parent()
    if os.getppid() == 1:  # the parent ended before that took effect
        return 0
    from engine.runtime.preload import preload

    preload()
    import engine.runtime.start
    import engine.runtime.supervisor  # noqa: F401

    # variables the imports set (torch sets its compile cache's path): a fresh interpreter with
    # the same start environment sets the same
    added = {k: v for k, v in os.environ.items() if k not in start_env}
    code_mtime = _code_mtime()
    listener = socket.socket(socket.AF_UNIX)
    old = os.umask(0o177)
    try:
        tmp = f"{path}.{owner}.tmp"
        listener.bind(tmp)
        os.replace(tmp, path)  # the socket appears when the launcher is ready
    finally:
        os.umask(old)
    listener.listen(16)
    req = None
    try:
        while req is None:
            conn, _ = listener.accept()
            with conn:
                req = _answer(conn, listener, start_env, code_mtime, start_path, start_cwd, added)
    finally:
        if os.getpid() == owner:
            try:
                os.unlink(path)
            except OSError:
                pass
    # only the forked supervisor gets here
    return _supervise(req, added, expected_sys_path(req["env"], req["cwd"], start_path, start_env, start_cwd))


def _answer(conn: socket.socket, listener: socket.socket, env: dict, code_mtime: float, path: list[str],
            cwd: str, implied: dict) -> Optional[dict]:
    """One request: ``None`` in the launcher, the request in the forked supervisor."""
    try:
        conn.settimeout(10.0)
        req = json.loads(_read_line(conn))
        if not isinstance(req, dict):
            raise ValueError
    except (OSError, ValueError):
        return None
    why = refusal(req, env=env, code_mtime=code_mtime, path=path, cwd=cwd, implied=implied)
    if why:
        print(f"refused: {why}", flush=True)
        _reply(conn, {"ok": False, "error": why})
        return None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    first = os.fork()
    if first == 0:
        try:
            listener.close()
            pid = os.fork()
            if pid == 0:
                os.setsid()  # a session and process group of its own, as start_new_session gives
                return req
        except BaseException:  # noqa: BLE001 - the launcher answers for this child
            os._exit(1)
        _reply(conn, {"ok": True, "pid": pid})
        os._exit(0)
    _, status = os.waitpid(first, 0)
    if status != 0:
        print("refused: the launcher's fork failed", flush=True)
        _reply(conn, {"ok": False, "error": "the launcher's fork failed"})
    else:
        print("forked a supervisor", flush=True)
    return None


def _reply(conn: socket.socket, ans: dict) -> None:
    try:
        conn.sendall(json.dumps(ans).encode() + b"\n")
    except OSError:
        pass


def _supervise(req: dict, added: dict, path: list[str]) -> int:
    """In the forked supervisor: become what ``python -m engine.runtime.start ARGV`` would be."""
    os.umask(int(req.get("umask", 0o022)))
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    os.environ.update({k: v for k, v in added.items() if k not in req["env"]})
    sys.path[:] = path  # the requester's working directory and PYTHONPATH, as a fresh one gets
    time.tzset()
    fd = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if "numpy" in sys.modules:  # a fresh interpreter seeds numpy's global generator anew
        sys.modules["numpy"].random.seed()
    from engine.procs import fork_the_fork_server
    from engine.runtime import start

    sys.argv = [start.__file__, *req["argv"]]
    fork_the_fork_server()
    return start.main(req["argv"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m engine.runtime.warm SOCKET", file=sys.stderr)
        return 2
    return serve(args[0])


if __name__ == "__main__":
    sys.exit(main())
