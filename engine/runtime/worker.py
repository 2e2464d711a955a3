"""Role worker processes and the supervisor's handles on them.

Control plane: a multiprocessing Pipe per worker carrying JSON documents (``send_bytes``) —
operation names, arguments, timings and transport descriptors (segment names, shapes, dtypes,
offsets). No tensor is ever pickled. Data plane: ``engine.transport`` shared-memory segments.

Request  {"id", "role", "op", "args", "inputs": descriptor|null, "release": [segments], "threads"}
Reply    {"id", "ok", "outputs": descriptor|null, "result": {...}, "seconds", "error", "kind"}
Events   {"id": null, "event": "progress", "message"} (a line for the event log) and
         {"id": null, "event": "stage", "role", "op", "done", "total", "unit"} (how far a generate
         or update call is, for the console's header; see ``op_progress``)

The sender of a descriptor keeps its segment until the receiver's reply (inputs) or the next
request (outputs, listed in "release") says it has been read, so views are zero-copy and safe.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any, Optional

import torch

from engine import transport
from engine.procs import die_with_parent, ensure_fork_server, parent_pid, run_exit_handlers
from engine.runtime.calls import RoleCall, RoleResult, perform


def worker_context(devices: Optional[dict] = None, lora: bool = False):
    """The ``multiprocessing`` context that starts a run's role workers.

    A run whose roles are all on the CPU (``devices``: the device plan, role -> devices) gets a
    fork server that imports torch, transformers and the engine's role code once
    (``engine.runtime.forkserver``, and peft when a role has ``lora``): each worker is a fork of
    it instead of a fresh interpreter that imports them again (about 3.5 s of CPU a worker, most
    of the start of a small run on 2 cores). A detached supervisor's entry point
    (``engine.runtime.start``) has usually started the server already, before its own imports, so
    that both import at once; otherwise it starts here. A run with a role on a GPU, or a platform
    without a fork server, gets ``spawn``: CUDA must never be initialised in a process that
    forks.
    """
    import multiprocessing as mp

    cpu_only = bool(devices) and all(str(d) == "cpu" for ds in devices.values() for d in ds)
    if not cpu_only or not ensure_fork_server(lora):
        return mp.get_context("spawn")
    return mp.get_context("forkserver")


def _supervisor_is_up(ppid: int) -> bool:
    """This process's parent is the supervisor ``ppid`` (spawn), or the fork server that is the
    supervisor's child (forkserver). Called after ``die_with_parent``: a parent that ended before
    that took effect is no longer the parent (this process, or the fork server, was re-parented)."""
    parent = os.getppid()
    return parent == ppid or parent_pid(parent) == ppid


def _forked_worker_main(*args, **kwargs) -> None:
    """``worker_main`` in a fork of the fork server. The server ends its children with
    ``os._exit``: the atexit hooks (the arena's cleanup among them) and the flush of stdout and
    stderr happen here, as they do at the end of a spawned worker."""
    try:
        worker_main(*args, **kwargs)
    finally:
        run_exit_handlers()


def quiet_hf_logging() -> None:
    """Keep load reports and progress bars of transformers out of the run's log."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - quieter logs are a nicety
        pass


def _send(conn, obj: dict) -> None:
    conn.send_bytes(json.dumps(obj, allow_nan=True).encode())


def _recv(conn) -> dict:
    return json.loads(conn.recv_bytes().decode())


def _output_to(log_path: Optional[str]) -> None:
    """Send this process's stdout/stderr to the run's log instead of the launching terminal, which
    may go away (a foreground run in a closed tmux) while the run goes on."""
    if not log_path:
        return
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        return
    import sys

    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def worker_main(roles: list[str], config_yaml: str, conn, owner_pid: int, run_tag: str,
                threads: int, ppid: int, log_path: Optional[str] = None,
                rank: Optional[dict] = None, env: Optional[dict] = None) -> None:
    """Entry point of a worker process (spawned, or forked by the fork server of
    :func:`worker_context`). Hosts ``roles`` until told to exit.

    ``rank`` (a role with world_size > 1): ``{"rank", "world_size", "init_method"}``; the
    process joins that torch.distributed group before it builds its role. ``env``: the
    supervisor's environment when the worker is forked (a fork server keeps the one it was
    started with)."""
    die_with_parent()  # the supervisor, or the fork server, which dies with the supervisor
    if not _supervisor_is_up(ppid):  # it died before prctl took effect
        os._exit(1)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the fork server ignores it; a worker does not
    _output_to(log_path)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    torch.set_num_threads(max(1, threads))
    quiet_hf_logging()
    from engine.config import validate_text
    from engine.runtime.roles import ROLE_CLASSES

    name = "-".join(roles) + (f"-r{rank['rank']}" if rank else "")
    arena = transport.TensorArena(owner_pid, run_tag, name)
    transport.install_cleanup(arena)
    cfg = validate_text(config_yaml, "<run config>", check_hardware=False).config
    import random

    from engine.runtime.role_base import role_seed

    seed = role_seed(cfg.run.seed, "+".join(roles))
    torch.manual_seed(seed)
    random.seed(seed)
    objs: dict[str, Any] = {}

    def progress(msg: str) -> None:
        try:
            _send(conn, {"id": None, "event": "progress", "message": msg})
        except Exception:  # noqa: BLE001 - progress lines are a nicety
            pass

    def stage(role: str, op: str, done: int, total: int, unit: str) -> None:
        try:
            _send(conn, {"id": None, "event": "stage", "role": role, "op": op, "done": done,
                         "total": total, "unit": unit})
        except Exception:  # noqa: BLE001 - like progress lines, a nicety
            pass

    every = stage_every_s()

    try:
        t0 = time.perf_counter()
        if rank:
            from engine.runtime.ranks import init_rank

            init_rank(rank, getattr(cfg, roles[0]).device, cfg.runtime.worker_timeout_s)
        for r in roles:
            t = time.perf_counter()
            objs[r] = ROLE_CLASSES[r](cfg, progress=lambda m, r=r: progress(m if m.startswith(f"{r}:") else f"{r}: {m}"))
            progress(f"{r}: loaded in {time.perf_counter() - t:.1f}s")
        _send(conn, {"id": 0, "ok": True, "result": {"roles": roles, "pid": os.getpid(), "seconds": time.perf_counter() - t0}})
    except BaseException as e:  # noqa: BLE001 - reported to the supervisor, then exit
        _send(conn, {"id": 0, "ok": False, "error": f"{type(e).__name__}: {e}", "kind": "load",
                     "trace": traceback.format_exc()})
        arena.close()
        _leave_group()
        return

    _serve(conn, arena, cfg, objs, max(1, threads), stage, every)
    arena.close()
    _leave_group()


def _serve(conn, arena, cfg, objs: dict, current_threads: int, stage, every: float) -> None:
    """Answer the supervisor's requests for the loaded roles ``objs`` until told to exit (or the
    pipe closes)."""
    from engine.runtime.role_base import NonFiniteError

    cuda_ipc = bool(cfg.runtime.cuda_ipc)
    while True:
        try:
            msg = _recv(conn)
        except (EOFError, OSError):
            break
        if msg.get("op") == "exit":
            break
        for desc in msg.get("release") or []:
            try:
                arena.release(desc)
            except transport.TransportError:
                pass
        rid = msg.get("id")
        try:
            n = msg.get("threads")
            if n and int(n) != current_threads:
                torch.set_num_threads(int(n))
                current_threads = int(n)
            inputs = transport.read_tensors(msg["inputs"]) if msg.get("inputs") else {}
            call = RoleCall(msg["role"], msg["op"], inputs, msg.get("args") or {}, n)
            del inputs
            role, op = call.role, call.op
            with op_progress(lambda d, n, u: stage(role, op, d, n, u), cfg, role, op, objs[role], call.tensors, every):
                res = perform(objs, call)
            del call
            desc = arena.put(res.tensors, cuda_ipc=cuda_ipc) if res.tensors else None
            _send(conn, {"id": rid, "ok": True, "outputs": desc, "result": res.info, "seconds": res.seconds})
        except NonFiniteError as e:
            _send(conn, {"id": rid, "ok": False, "kind": "nonfinite", "error": str(e),
                         "role": e.role, "phase": e.phase})
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the supervisor decides what an error means
            # a role's exception (a reward function that raises, sys.exit() in user code) is
            # reported, not fatal: the worker stays up and the step is not applied
            what = f"SystemExit({e.code!r})" if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
            _send(conn, {"id": rid, "ok": False, "kind": "error", "error": what,
                         "role": msg.get("role"), "phase": msg.get("op"),
                         "trace": traceback.format_exc()})


STAGE_EVERY_S = 2.0  # a worker's op progress at most this often (env RLHF_CONSOLE_STAGE_EVERY_S)


def stage_every_s() -> float:
    """Seconds between two progress reports of one operation (``op_progress``)."""
    try:
        return max(0.0, float(os.environ.get("RLHF_CONSOLE_STAGE_EVERY_S", STAGE_EVERY_S)))
    except ValueError:
        return STAGE_EVERY_S


@contextlib.contextmanager
def op_progress(send, cfg, role: str, op: str, obj, inputs: dict, every: float):
    """Inside a ``generate`` or ``update`` call of ``role``: how far it is, as
    ``send(done, total, unit)`` at most once per ``every`` seconds (none in the first
    ``every`` seconds: a fast call reports nothing). ``generate``: tokens decoded of
    ``rollout.max_new_tokens`` (engine.models.reporting_tokens); ``update``: optimizer steps
    done of ``ppo.epochs`` x the batch's mini-batches (a hook on the role's optimizer). Other
    operations report nothing."""
    last = [time.monotonic()]

    def report(done: int, total: int, unit: str) -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            send(done, total, unit)

    opt = getattr(obj, "optimizer", None)
    mask = inputs.get("response_mask")
    if op == "generate":
        from engine.models import reporting_tokens

        with reporting_tokens(lambda k, n: report(k, n, "tokens")):
            yield
    elif op == "update" and mask is not None and hasattr(opt, "register_step_post_hook"):
        p = cfg.ppo
        total = int(p.epochs) * -(-int(mask.shape[0]) // int(p.mini_batch_size))
        done = [0]

        def stepped(*_args) -> None:
            done[0] += 1
            report(done[0], total, "mini-batches")

        handle = opt.register_step_post_hook(stepped)
        try:
            yield
        finally:
            handle.remove()
    else:
        yield


def _leave_group() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - the process is ending anyway
        pass


class WorkerError(RuntimeError):
    def __init__(self, roles: list[str], message: str, kind: str = "error", reply: Optional[dict] = None):
        super().__init__(message)
        self.roles, self.kind, self.reply = roles, kind, reply or {}


class CallBook:
    """The bookkeeping both kinds of worker handle share (``WorkerHandle`` here, the Ray
    backend's ``RayWorkerHandle``): the calls in flight by request id, and ``dead_reason``.

    An entry is ``(future, role, op, *more)``; a handle that keeps more per call (the local one
    keeps the input segment to release) says what to do with it in ``_dropped``."""

    def _init_book(self, first: int = 1) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, tuple] = {}
        self._next = first
        self.dead_reason: Optional[str] = None

    def _take_id(self) -> int:
        """The next request id (the caller holds ``_lock``)."""
        rid = self._next
        self._next += 1
        return rid

    def _dropped(self, entry: tuple) -> None:
        """An entry failed without a reply (the handle is dead or aborted)."""

    def _fail_pending(self, reason: str, error) -> None:
        """Mark the worker dead with ``reason`` and fail every call in flight with
        ``error(role, op)``."""
        with self._lock:
            if self.dead_reason is None:
                self.dead_reason = reason
            pending, self._pending = self._pending, {}
        for entry in pending.values():
            self._dropped(entry)
            fut, role, op = entry[:3]
            if not fut.done():
                fut.set_exception(error(role, op))

    def _mark_dead(self, reason: str) -> None:
        self._fail_pending(reason, lambda role, op: WorkerError(self.roles, f"{reason} during {role}.{op}", "died"))

    def _fail_all(self, reason: str, kind: str) -> None:
        """Every call in flight, and every later one, fails with ``reason`` and ``kind``
        ("timeout", "stopped"): the first half of ``abort``."""
        self._fail_pending(reason, lambda role, op: WorkerError([role], reason, kind,
                                                                {"error": reason, "role": role, "op": op}))


class WorkerHandle(CallBook):
    """The supervisor's side of one worker process: submit operations, get futures."""

    def __init__(self, ctx, roles: list[str], config_yaml: str, owner_pid: int, run_tag: str,
                 threads: int, on_progress=None, log_path: Optional[str] = None,
                 rank: Optional[dict] = None, cuda_ipc: bool = False, on_stage=None):
        self.roles = roles
        self.rank = rank
        self.label = "+".join(roles) + (f"[{rank['rank']}]" if rank else "")
        self.threads = threads
        self.cuda_ipc = cuda_ipc
        args = (roles, config_yaml, None, owner_pid, run_tag, threads, os.getpid())
        kwargs = {"log_path": log_path, "rank": rank}
        try:
            self._start(ctx, args, kwargs)
        except (OSError, EOFError):
            if self.start_method != "forkserver":
                raise
            import multiprocessing as mp

            if getattr(self, "_conn", None) is not None:
                self._conn.close()
            # the fork server did not start or answer: this worker is spawned instead
            self._start(mp.get_context("spawn"), args, kwargs)
        self._init_book()
        self._release: list[dict] = []  # worker output descriptors read here, to hand back
        self._ready: Future = Future()
        self._pending[0] = (self._ready, roles[0], "load", None, None)
        self._on_progress = on_progress or (lambda label, msg: None)
        self._on_stage = on_stage or (lambda label, msg: None)  # msg: the "stage" event
        self._reader = threading.Thread(target=self._read_loop, name=f"reader-{self.label}", daemon=True)
        self._reader.start()

    def _start(self, ctx, args: tuple, kwargs: dict) -> None:
        self.start_method = ctx.get_start_method()
        forked = self.start_method == "forkserver"
        self._conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_forked_worker_main if forked else worker_main, name=f"rlhf-{self.label}",
            args=(*args[:2], child, *args[3:]),
            kwargs={**kwargs, "env": dict(os.environ) if forked else None}, daemon=True,
        )
        try:
            self.process.start()
        finally:
            child.close()

    # -------------------------------------------------------------------------------------
    def wait_ready(self, timeout: Optional[float] = None) -> dict:
        return self._ready.result(timeout)

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid

    def submit(self, call: RoleCall, arena: Optional[transport.TensorArena] = None) -> Future:
        """Send ``call`` to the worker (its tensors through ``arena``'s shared memory); a Future
        of its ``RoleResult``."""
        fut: Future = Future()
        with self._lock:
            if self.dead_reason:
                fut.set_exception(WorkerError(self.roles, self.dead_reason, "died"))
                return fut
            rid = self._take_id()
            desc = arena.put(call.tensors, cuda_ipc=self.cuda_ipc) if call.tensors else None
            self._pending[rid] = (fut, call.role, call.op, arena, desc)
            release, self._release = self._release, []
            try:
                _send(self._conn, {"id": rid, "role": call.role, "op": call.op, "args": call.args or {},
                                   "inputs": desc, "release": release, "threads": call.threads})
            except (BrokenPipeError, OSError) as e:
                self._pending.pop(rid, None)
                if desc is not None:
                    arena.release(desc)
                fut.set_exception(WorkerError(self.roles, f"worker {self.label} is gone: {e}", "died"))
        return fut

    def _read_loop(self) -> None:
        from multiprocessing.connection import wait

        while True:
            try:
                ready = wait([self._conn, self.process.sentinel])
            except OSError:
                break
            if self._conn in ready:
                try:
                    msg = _recv(self._conn)
                except (EOFError, OSError):
                    msg = None
                if msg is not None:
                    self._dispatch(msg)
                    continue
            # the pipe closed or the process ended
            self.process.join(timeout=1.0)
            code = self.process.exitcode
            if code is not None and code < 0:
                try:
                    cause = f"killed by {signal.Signals(-code).name}"
                except ValueError:
                    cause = f"killed by signal {-code}"
            else:
                cause = f"exited with code {code}"
            self._mark_dead(f"worker '{self.label}' (pid {self.pid}) {cause}")
            break

    def _dispatch(self, msg: dict) -> None:
        if msg.get("event") == "progress":
            self._on_progress(self.label, msg.get("message", ""))
            return
        if msg.get("event") == "stage":
            self._on_stage(self.label, msg)
            return
        with self._lock:
            entry = self._pending.pop(msg.get("id"), None)
        if entry is None:
            return
        fut, role, op, arena, in_desc = entry
        if in_desc is not None:
            arena.release(in_desc)  # the reply means the worker is done reading our inputs
        if msg.get("ok"):
            desc = msg.get("outputs")
            outs = {}
            if desc:
                outs = transport.read_tensors(desc, copy=True)
                with self._lock:
                    self._release.append(desc)
            fut.set_result(RoleResult(outs, msg.get("result") or {}, float(msg.get("seconds") or 0.0)))
        else:
            fut.set_exception(WorkerError([role], f"{role}.{op}: {msg.get('error')}", msg.get("kind", "error"), msg))

    def _dropped(self, entry: tuple) -> None:
        """A request failed without a reply: release its input segment."""
        _fut, _role, _op, arena, in_desc = entry
        if in_desc is not None:
            try:
                arena.release(in_desc)
            except transport.TransportError:
                pass

    def abort(self, reason: str, kind: str) -> None:
        """Kill the worker now (it does not answer): every request in flight, and every later
        one, fails with ``reason`` and ``kind`` ("timeout", "stopped")."""
        self._fail_all(reason, kind)
        try:
            self.process.kill()
        except (OSError, ValueError, AttributeError):
            pass

    def shutdown(self, timeout: float = 10.0) -> None:
        if self.process.is_alive():
            try:
                with self._lock:
                    _send(self._conn, {"op": "exit"})
            except (BrokenPipeError, OSError):
                pass
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(3.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(3.0)
        try:
            self._conn.close()
        except OSError:
            pass
