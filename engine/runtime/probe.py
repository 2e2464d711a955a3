"""Try a candidate reward source in a throw-away process before the live reward worker loads it.

A swap must never take the run down: a module that calls ``sys.exit()`` or crashes the
interpreter at import, a model that hangs while loading, a function that raises or returns
NaN on a probe sample. The candidate is first built and scored in a short-lived process (forked
from the run's fork server when it has one, else spawned); only when that answers in time does
the live reward worker load it.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
from typing import Optional


def _probe_main(config_yaml: str, spec: str, conn, ppid: int) -> None:
    from engine.procs import die_with_parent
    from engine.runtime.worker import quiet_hf_logging

    die_with_parent()
    import os

    if os.getppid() != ppid:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_hf_logging()
    try:
        from engine.config import validate_text
        from engine.models import resolve_device
        from engine.runtime.role_reward import build_reward_source, probe_reward_source

        cfg = validate_text(config_yaml, "<run config>", check_hardware=False).config
        source = build_reward_source(cfg, spec, str(resolve_device(cfg.reward.device)))
        value = probe_reward_source(source, spec)
        conn.send({"ok": True, "value": value})
    except SystemExit as e:
        conn.send({"ok": False, "error": f"it called sys.exit({e.code!r}) while loading"})
    except BaseException as e:  # noqa: BLE001 - reported to the supervisor
        conn.send({"ok": False, "error": f"{type(e).__name__}: {e}",
                   "trace": traceback.format_exc(limit=8)})
    finally:
        conn.close()


def probe_reward(config_yaml: str, spec: str, timeout: float) -> tuple[bool, str]:
    """Build and score ``spec`` in a throw-away process. (True, "") when it answered a finite
    score within ``timeout`` seconds, else (False, why)."""
    import os

    from engine.procs import fork_server_pid

    # a CPU run's supervisor has a fork server that imported torch and transformers: a probe
    # forked from it answers in a fraction of a second, a spawned one imports them again (~4 s
    # on 2 cores). Either way the candidate is imported and run in a process of its own, whose
    # parent (the fork server, or this process) it checks and dies with.
    server = fork_server_pid()
    ctx = mp.get_context("forkserver" if server else "spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_probe_main, args=(config_yaml, spec, child, server or os.getpid()),
                    name="rlhf-reward-probe", daemon=True)
    p.start()
    child.close()
    reply: Optional[dict] = None
    try:
        if parent.poll(timeout):
            try:
                reply = parent.recv()
            except (EOFError, OSError):
                reply = None
        else:
            if p.is_alive():
                return False, f"it did not load and score a probe sample within {timeout:.0f}s"
    finally:
        if p.is_alive():
            p.join(2.0)
        if p.is_alive():
            p.kill()
        p.join(5.0)
        parent.close()
    if reply is not None:
        return bool(reply.get("ok")), str(reply.get("error") or "")
    code = p.exitcode
    if code is not None and code < 0:
        try:
            return False, f"the probe process was killed by {signal.Signals(-code).name} while loading it"
        except ValueError:
            return False, f"the probe process was killed by signal {-code} while loading it"
    return False, f"the probe process exited with code {code} while loading it"
