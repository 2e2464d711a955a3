"""Where a run's role workers live: the ``Backend`` protocol, the local backend, and the registry.

A backend starts one worker per role group and rank and hands the supervisor handles with one
interface (``engine.runtime.worker.CallBook`` plus ``submit(RoleCall)`` -> Future of ``RoleResult``
(engine/runtime/calls.py), ``wait_ready``, ``abort``, ``shutdown``, ``label``, ``roles``, ``pid``). Everything
else — the PPO driver, the watchdog, the run directory, the control socket — never asks which
backend it has.

``BACKENDS`` is the one place that knows the names of ``runtime.backend``: what each one's
workers are called, whether the run's device plan applies to it, what it needs installed, which
``runtime.*`` keys only it reads, and the class that runs it. The config checks, the dry run
and the supervisor ask it questions; none of them compares the name.

The registry itself is engine/backends.py's (the config checks read it without importing the
runtime); its names are kept here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Protocol

from engine.backends import BACKENDS, BackendSpec, backend_spec  # noqa: F401 - the registry, re-exported

if TYPE_CHECKING:  # pragma: no cover
    from engine.config import RunConfig
    from engine.runtime.driver import ThreadPlan


class BackendError(RuntimeError):
    """A backend could not start its workers (the run fails with this message, named by backend)."""


def make_backend(cfg: "RunConfig", log: Callable[..., None]) -> "Backend":
    """The backend ``cfg.runtime.backend`` names, ready to ``start``."""
    return backend_spec(cfg.runtime.backend).make(cfg, log)


@dataclass
class StartContext:
    """What a backend needs from the supervisor to start the workers."""

    cfg: "RunConfig"
    devices: Optional[dict]             # the device plan (role -> one device per rank), or None
    plan: "ThreadPlan"
    owner_pid: int
    run_tag: str
    log_path: str                       # the run's supervisor.log: workers' stdout and stderr
    on_stage: Callable[[str, dict], None]   # a worker's "stage" event (how far a call is)
    reinstall_signals: Callable[[], None]   # after a library that installs its own handlers


class Backend(Protocol):
    """One run's workers: started once, shut down once."""

    owned: bool

    def start(self, ctx: StartContext, add: Callable[[object], None]) -> None:
        """Start every worker; ``add(handle)`` each as soon as it exists (teardown shuts down
        what was added, also when a later one fails). Raises BackendError."""

    def after_ready(self, handles: list, write_state: Callable[..., None]) -> None:
        """Every worker has loaded: record where they run."""

    def shutdown(self, handles: list, log_event: Callable[[str, str], None]) -> None:
        """Take every worker down (and whatever the backend started for them); never raises."""


def worker_groups(cfg: "RunConfig") -> list[list[str]]:
    """The roles of each worker process; a role that gets no worker (a LoRA actor's reference,
    see ``active_roles``) is left out, and a group left empty by that is no process."""
    from engine.runtime.driver import ROLES, active_roles

    c = cfg.runtime.colocate
    active = active_roles(cfg)
    if c is True:
        groups = [list(ROLES)]
    elif not c:
        groups = [[r] for r in ROLES]
    else:
        groups = [list(g) for g in c]
    groups = [[r for r in g if r in active] for g in groups]
    return [g for g in groups if g]


def world_size(cfg: "RunConfig", role: str) -> int:
    from engine.runtime.ranks import group_world_size

    return group_world_size(cfg, [role])


def process_specs(cfg: "RunConfig", plan: dict[str, list[str]]) -> list[tuple[list[str], int, "RunConfig"]]:
    """One ``(roles, rank, config)`` per worker process: a colocation group is one process,
    a role with world_size N is N processes (ranks 0..N-1). Each process's config carries its
    planned device in ``<role>.device`` (and no runtime.devices mapping)."""
    import dataclasses

    from engine.runtime.ranks import group_world_size

    out = []
    base = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, devices=None))
    for group in worker_groups(cfg):
        W = group_world_size(cfg, group)
        for rank in range(W):
            c = base
            for r in group:
                c = dataclasses.replace(c, **{r: dataclasses.replace(getattr(c, r), device=plan[r][rank])})
            out.append((group, rank, c))
    return out


def free_tcp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalBackend:
    """Worker processes on this machine (``engine.runtime.worker``): forks of a fork server when
    every role is on the CPU, spawned otherwise; a role over several ranks joins one
    torch.distributed group over a local TCP rendezvous."""

    owned = True

    def __init__(self, cfg: "RunConfig", log: Callable[..., None]):
        self.cfg = cfg
        self.log = log

    @staticmethod
    def describe(runtime) -> Optional[str]:
        return None

    def start(self, ctx: StartContext, add: Callable[[object], None]) -> None:
        from engine.config import dump_config
        from engine.runtime.driver import active_roles
        from engine.runtime.ranks import group_world_size
        from engine.runtime.worker import WorkerHandle, worker_context

        cfg, plan, devices = ctx.cfg, ctx.plan, ctx.devices
        specs = process_specs(cfg, devices) if devices else [(g, 0, cfg) for g in worker_groups(cfg)]
        lora = any(getattr(getattr(cfg, r), "lora", None) for r in ("actor", "critic"))
        mp_ctx = worker_context(devices, lora=lora)
        init = {r: f"tcp://127.0.0.1:{free_tcp_port()}" for r in active_roles(cfg) if world_size(cfg, r) > 1}
        for group, rank, wcfg in specs:
            W = group_world_size(cfg, group)
            n = max(plan.generate.get(r, 1) for r in group) if group else 1
            info = {"rank": rank, "world_size": W, "init_method": init[group[0]]} if W > 1 else None
            add(WorkerHandle(
                mp_ctx, group, dump_config(wcfg), ctx.owner_pid, ctx.run_tag, max(1, n // W),
                on_progress=lambda label, msg: self.log(f"{label}: {msg}" if "[" in label else msg),
                on_stage=ctx.on_stage, rank=info, cuda_ipc=cfg.runtime.cuda_ipc, log_path=ctx.log_path))

    def after_ready(self, handles: list, write_state: Callable[..., None]) -> None:
        pass

    def shutdown(self, handles: list, log_event: Callable[[str, str], None]) -> None:
        """All at once, so a busy worker delays no other."""
        import threading

        threads = [threading.Thread(target=shutdown_quietly, args=(h,), daemon=True) for h in handles]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def shutdown_quietly(h) -> None:
    try:
        h.shutdown(timeout=5.0)
    except Exception:  # noqa: BLE001 - teardown goes on
        pass
