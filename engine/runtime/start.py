"""The detached supervisor's entry point: ``python -m engine.runtime.start RUN_DIR [--resume]``.

A CPU run's workers are forks of a fork server that imports torch, transformers and the role
code (``engine.runtime.forkserver``, about 3 s of one core). The supervisor imports most of the
same (about 1.6 s) before it can plan devices and start the workers. This entry point starts the
fork server first, from nothing but the run's ``config.yaml`` read as plain YAML, so that the two
imports run side by side; then it imports and runs the supervisor, whose
:func:`engine.runtime.worker.worker_context` finds the server running.

The guess is cheap and only ever early: a run on the local backend whose roles are all on the CPU
(``device: cpu``, or ``auto`` on a machine with no GPU device node). When the guess is wrong the
server sits unused and ends with the supervisor; the device plan still decides how workers start.
"""
from __future__ import annotations

import glob
import sys
from pathlib import Path
from typing import Optional, Sequence

from engine.procs import ensure_fork_server

# device nodes of the GPUs ``device: auto`` could pick (NVIDIA, WSL's GPU, ROCm)
_GPU_NODES = ("/dev/nvidia[0-9]*", "/dev/dxg", "/dev/kfd")


def likely_cpu_only(cfg: dict) -> Optional[bool]:
    """From the run's config as plain YAML: the local backend with every role on the CPU, as far
    as can be told without importing torch. ``None`` when the config cannot be read so."""
    if not isinstance(cfg, dict):
        return None
    if str((cfg.get("runtime") or {}).get("backend", "local")) != "local":
        return False
    devices = {str(sec.get("device")) for sec in cfg.values() if isinstance(sec, dict) and "device" in sec}
    if devices <= {"cpu"}:
        return True
    if devices <= {"cpu", "auto"}:
        return sys.platform.startswith("linux") and not any(glob.glob(p) for p in _GPU_NODES)
    return False


def _uses_lora(cfg: dict) -> bool:
    return any(isinstance(cfg.get(r), dict) and cfg[r].get("lora") for r in ("actor", "critic"))


def start_early(run_dir: Path) -> bool:
    """Start the fork server if the run is likely CPU-only; whether it was started."""
    return start_early_for(run_dir / "config.yaml")


def start_early_for(config: Path, overrides: Sequence[str] = ()) -> bool:
    """The same guess from a config file and ``--set KEY=VALUE`` overrides, before they are
    validated (a foreground ``train`` starts the server while it loads and checks the config)."""
    try:
        import yaml

        cfg = yaml.safe_load(Path(config).read_text())
        if overrides:  # as the loader applies them (its issues are reported when it loads)
            from engine.config.issues import Ctx
            from engine.config.loading import apply_override_list

            cfg = apply_override_list(cfg, overrides, Ctx(str(config), {}, check_hardware=False))
    except Exception:  # noqa: BLE001 - the loader reads and reports the config itself
        return False
    if not likely_cpu_only(cfg):
        return False
    return ensure_fork_server(_uses_lora(cfg))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        start_early(Path(args[0]))
    from engine.runtime.supervisor import main as supervisor_main

    return end(supervisor_main(args))


def end(code: int) -> int:
    """End the supervisor's process once its run is over: exit handlers, then ``os._exit``.

    Everything a run writes is written and closed by then, and the exit handlers run as at any
    exit (multiprocessing's, logging's, weak-reference finalisers); what is skipped is the
    interpreter's teardown of every module it imported (torch, transformers: 0.8-1.3 s of one
    core on 2 cores, after the run has ended). Returns (to exit normally) only while a thread
    other than the main one that is not a daemon still runs, since a normal exit waits for it.
    """
    import os
    import threading

    from engine.procs import run_exit_handlers

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return code
    run_exit_handlers()
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    sys.exit(main())
