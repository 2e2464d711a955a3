"""The Ray backend: each role group is a Ray actor in one placement group.

``runtime.backend: ray`` swaps the local worker processes for Ray actors and nothing else: the
actors (``engine.runtime.ray_actor``) host the same role objects (``engine.runtime.roles``), the
supervisor drives them with the same ``PPODriver`` through handles that have the local ``WorkerHandle``'s interface (``submit(RoleCall)`` ->
Future of ``RoleResult``, ``dead_reason``, ``wait_ready``, ``shutdown``), and the
run directory and control socket are the supervisor's as ever.

Data plane: a request's tensors are ``ray.put`` into the object store and passed by reference;
an actor's outputs come back as the return value of its method, through the object store too.
Nothing here touches the control socket.

``runtime.ray_address``: null starts a private Ray instance sized to this machine (stopped with
the run, its raylet and GCS checked gone), ``auto`` or an address joins a running cluster (left
running). ``runtime.ray_resources`` adds custom resources to a role's bundle, which places that
role on the nodes that offer them (``ray start --resources '{"node_a": 1}'``).

Ray is an optional extra: ``pip install -e ".[ray]"``.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Optional

from engine.runtime.backend import BackendError, StartContext, shutdown_quietly
from engine.runtime.calls import RoleCall, RoleResult
from engine.runtime.ranks import group_world_size
from engine.runtime.ray_actor import remote_cls
from engine.runtime.worker import CallBook, WorkerError

# environment a role actor needs to import the engine and find the same caches, also on a node
# whose raylet was started from another shell
_FORWARD_ENV = ("PYTHONPATH", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                "HF_ENDPOINT", "RLHF_CONSOLE_CACHE", "TOKENIZERS_PARALLELISM")
_RAY_PROCESS_NAMES = ("raylet", "gcs_server")
PLACEMENT_TIMEOUT_S = 120.0


class RayBackendError(BackendError):
    pass


def ray_processes() -> list[tuple[int, str]]:
    """(pid, name) of every raylet and GCS server on this machine (psutil)."""
    import psutil

    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            name = p.info["name"] or ""
            cmd = p.info["cmdline"] or []
            exe = os.path.basename(cmd[0]) if cmd else ""
            for n in _RAY_PROCESS_NAMES:
                if name == n or exe == n:
                    out.append((p.pid, n))
                    break
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# The supervisor's handle on one actor

class RayWorkerHandle(CallBook):
    """Same interface as ``engine.runtime.worker.WorkerHandle``, over one Ray actor."""

    def __init__(self, roles: list[str], config_yaml: str, threads: int, actor_options: dict,
                 on_progress: Optional[Callable[[str, str], None]] = None, rank: Optional[int] = None):
        self.roles = list(roles)
        self.rank = rank  # None: the role is one actor; else this actor's rank in the role's group
        self.label = "+".join(roles) + (f"[{rank}]" if rank is not None else "")
        self.threads = threads
        self.node_id: Optional[str] = None
        self._pid: Optional[int] = None
        self._init_book()
        self._closing = False
        self._on_progress = on_progress or (lambda label, msg: None)
        self.actor = remote_cls().options(**actor_options).remote(self.roles, config_yaml, threads)
        self._ready_ref = None
        self._watch_ref = self.actor.watch.options(concurrency_group="watch").remote()
        self._watch_ref.future().add_done_callback(self._on_watch_done)

    def start_load(self, rank: Optional[dict] = None) -> None:
        self._ready_ref = self.actor.load.remote(rank)

    @property
    def pid(self) -> Optional[int]:
        return self._pid

    def _drain_progress(self) -> None:
        import ray

        try:
            msgs = ray.get(self.actor.progress.options(concurrency_group="watch").remote(), timeout=30)
        except Exception:  # noqa: BLE001 - progress lines are a nicety; death is noticed elsewhere
            return
        for m in msgs:
            self._on_progress(self.label, m)

    def wait_ready(self, timeout: Optional[float] = None) -> dict:
        import ray

        t0 = time.monotonic()
        while True:
            done, _ = ray.wait([self._ready_ref], timeout=0.5)
            self._drain_progress()
            if done:
                break
            if self.dead_reason:
                raise WorkerError(self.roles, self.dead_reason, "died")
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise TimeoutError(f"worker '{self.label}' did not load in {timeout:.0f}s")
        try:
            res = ray.get(self._ready_ref)
        except Exception as e:
            raise WorkerError(self.roles, self.dead_reason or f"Ray actor '{self.label}' died while loading: "
                                                             f"{_first_line(e)}", "died") from e
        if not res.get("ok"):
            raise WorkerError(self.roles, f"{self.label} (load): {res.get('error')}", "load", res)
        self._pid, self.node_id = int(res["pid"]), res.get("node_id")
        return res

    def submit(self, call: RoleCall, arena=None) -> Future:
        """Send ``call`` to the actor (its tensors through the object store; ``arena`` is the local
        backend's and unused); a Future of its ``RoleResult``."""
        import ray

        fut: Future = Future()
        with self._lock:
            if self.dead_reason:
                fut.set_exception(WorkerError(self.roles, self.dead_reason, "died"))
                return fut
            rid = self._take_id()
            self._pending[rid] = (fut, call.role, call.op)
        try:
            ref_in = ray.put(call.tensors) if call.tensors else None  # the object store, not a pipe
            ref = self.actor.call.remote(call.role, call.op, ref_in, call.args or {}, call.threads)
        except Exception as e:  # noqa: BLE001
            with self._lock:
                self._pending.pop(rid, None)
            fut.set_exception(WorkerError(self.roles, f"worker '{self.label}' is gone: {_first_line(e)}", "died"))
            return fut
        ref.future().add_done_callback(lambda f, rid=rid: self._on_reply(rid, f))
        return fut

    def _on_reply(self, rid: int, f: Future) -> None:
        with self._lock:
            entry = self._pending.pop(rid, None)
        if entry is None:
            return  # already failed by _mark_dead
        fut, role, op = entry
        err = f.exception()
        if err is not None:
            reason = self._death_reason(err)
            self._mark_dead(reason)
            if not fut.done():
                fut.set_exception(WorkerError(self.roles, f"{reason} during {role}.{op}", "died"))
            return
        msg = f.result()
        if msg.get("ok"):
            fut.set_result(RoleResult(dict(msg.get("outputs") or {}), msg.get("result") or {},
                                      float(msg.get("seconds") or 0.0)))
        else:
            fut.set_exception(WorkerError([role], f"{role}.{op}: {msg.get('error')}", msg.get("kind", "error"), msg))

    def _death_reason(self, err: BaseException) -> str:
        pid = f", pid {self._pid}" if self._pid else ""
        detail = _first_line(err)
        text = str(err)
        marker = "Worker exit detail:"
        if marker in text:
            detail += " (" + text.split(marker, 1)[1].strip().split(". ")[0] + ")"
        return f"worker '{self.label}' (Ray actor{pid}) died: {detail}"

    def _on_watch_done(self, f: Future) -> None:
        err = f.exception()
        if err is None or self._closing:
            return
        self._mark_dead(self._death_reason(err))

    def abort(self, reason: str, kind: str) -> None:
        """Kill the actor now (it does not answer): every call in flight, and every later one,
        fails with ``reason`` and ``kind`` ("timeout", "stopped"), as a local worker's would."""
        import ray

        self._fail_all(reason, kind)
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - gone already
            pass

    def shutdown(self, timeout: float = 10.0) -> None:
        import ray

        self._closing = True
        try:
            ray.get(self.actor.stop.options(concurrency_group="watch").remote(), timeout=min(timeout, 5.0))
        except Exception:  # noqa: BLE001 - it may be dead already
            pass
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception:  # noqa: BLE001
            pass


# ---------------------------------------------------------------------------------------------
# The cluster side: connect or start, placement group, teardown

def _role_on_cuda(cfg, role: str, cluster_gpus: float) -> bool:
    """A role wants a GPU: device cuda/cuda:N, or auto on a cluster that has GPUs."""
    from engine.config import role_config

    dev = str(role_config(cfg, role).device or "auto").lower()
    return dev.startswith("cuda") or (dev == "auto" and cluster_gpus > 0)


class RayBackend:
    """Ray for one run: init (or join), one placement group, the role actors, teardown
    (the ``engine.runtime.backend.Backend`` protocol)."""

    def __init__(self, cfg, log: Callable[..., None]):
        self.cfg = cfg
        self.log = log
        self.address = cfg.runtime.ray_address
        self.owned = False          # this run started the Ray instance (and stops it)
        self.connected = False
        self.pg = None
        self.handles: list[RayWorkerHandle] = []
        self._own_procs: list[tuple[int, str]] = []

    def _runtime_env(self) -> dict:
        env = {k: os.environ[k] for k in _FORWARD_ENV if os.environ.get(k)}
        root = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return {"env_vars": env}

    @staticmethod
    def describe(rt) -> Optional[str]:
        where = ("a local Ray instance started for the run" if rt.ray_address is None
                 else f"the Ray cluster at '{rt.ray_address}'")
        placed = "; ".join(f"{r} needs {res}" for r, res in (rt.ray_resources or {}).items())
        return (f"backend ray: one actor per role group and rank, in one placement group on {where}"
                + (f" ({placed})" if placed else "") + "; the dry run loads the roles here, without Ray")

    def start(self, ctx: StartContext, add: Callable[[object], None]) -> None:
        """Connect (or start Ray), then one actor per role group and rank; raises RayBackendError."""
        from engine.config import dump_config
        from engine.runtime.backend import worker_groups

        cfg, plan = ctx.cfg, ctx.plan
        groups = worker_groups(cfg)
        threads = [max(plan.generate.get(r, 1) for r in group) if group else 1 for group in groups]
        try:
            self.connect()
        finally:
            ctx.reinstall_signals()  # ray.init installs its own SIGTERM handler: the run's again
        handles = self.start_actors(groups, dump_config(cfg), threads,
                                    on_progress=lambda label, msg: self.log(msg))
        for h in handles:
            add(h)

    def after_ready(self, handles: list, write_state: Callable[..., None]) -> None:
        write_state(ray={"address": self.cfg.runtime.ray_address, "started_here": self.owned,
                         "nodes": self.placement()})
        self.log("ray: " + ", ".join(f"{h.label} on node {(h.node_id or '?')[:12]} (pid {h.pid})"
                                     for h in handles))

    def shutdown(self, handles: list, log_event: Callable[[str, str], None]) -> None:
        for h in handles:
            shutdown_quietly(h)
        try:
            killed = self.close()
            if killed:
                log_event(f"ray: killed {', '.join(killed)} left after ray.shutdown()", "WARNING")
            log_event("ray: local Ray instance stopped" if self.owned
                      else "ray: disconnected from the cluster (left running)", "INFO")
        except Exception as e:  # noqa: BLE001
            log_event(f"ray: teardown error: {type(e).__name__}: {e}", "WARNING")

    def connect(self) -> None:
        import ray

        from engine.procs import available_cores

        if ray.is_initialized():
            raise RayBackendError("this process is already connected to Ray; a run needs its own "
                                  "connection (run it from a fresh process)")
        before = {pid for pid, _ in ray_processes()}
        kw = dict(include_dashboard=False, configure_logging=False, log_to_driver=False,
                  namespace="rlhf-console", runtime_env=self._runtime_env())
        if self.address is None:
            cores = available_cores()
            t = time.perf_counter()
            ray.init(num_cpus=cores, **kw)
            self.owned = True
            self._own_procs = [(p, n) for p, n in ray_processes() if p not in before]
            self.log(f"ray: started a local Ray instance ({cores} CPUs) in {time.perf_counter() - t:.1f}s; "
                     f"it stops with the run")
        else:
            _probe_address(self.address)
            try:
                ray.init(address=self.address, **kw)
            except Exception as e:
                raise RayBackendError(f"runtime.ray_address: cannot join the Ray cluster at "
                                      f"'{self.address}': {_first_line(e)}") from e
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            self.log(f"ray: joined the cluster at '{self.address}' ({len(nodes)} node(s), "
                     f"{ray.cluster_resources().get('CPU', 0):g} CPUs); it is left running after the run")
        self.connected = True

    def specs(self, groups: list[list[str]]) -> list[tuple[int, int, int]]:
        """One (group index, rank, world size) per actor: a colocation group is one actor, a
        role with world_size N is N actors."""
        out = []
        for gi, g in enumerate(groups):
            world = group_world_size(self.cfg, g)
            out += [(gi, rank, world) for rank in range(world)]
        return out

    def bundles(self, groups: list[list[str]], specs: list[tuple[int, int, int]]) -> list[dict]:
        """One bundle per actor: a share of the CPUs, a GPU share for a role on cuda (a whole GPU
        for each rank of a role over several actors: NCCL needs one device per rank), and the
        role's runtime.ray_resources."""
        import ray

        total = ray.cluster_resources()
        # CPU shares are nominal (the ThreadPlan sets each role's threads); they are small enough
        # that every bundle fits on the smallest node, so custom resources alone decide placement
        node_cpus = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
        smallest = min([c for c in node_cpus if c > 0] or [float(total.get("CPU", 1.0))])
        cpu_share = min(1.0, smallest / max(1, len(specs)))
        gpus = float(total.get("GPU", 0.0))
        on_cuda = [any(_role_on_cuda(self.cfg, r, gpus) for r in groups[gi]) for gi, _, _ in specs]
        gpu_share = min(1.0, gpus / sum(on_cuda)) if any(on_cuda) else 0.0
        extra = self.cfg.runtime.ray_resources or {}
        out = []
        for (gi, _, world), cuda in zip(specs, on_cuda):
            g = groups[gi]
            b: dict[str, float] = {"CPU": _floor4(cpu_share)}  # shares never sum past the total
            if cuda and gpus > 0:
                b["GPU"] = 1.0 if world > 1 else _floor4(gpu_share)
            for r in g:
                for k, v in (extra.get(r) or {}).items():
                    b[k] = max(b.get(k, 0.0), float(v))
            out.append(b)
        return out

    def start_actors(self, groups: list[list[str]], cfg_yaml: str, threads: list[int],
                     on_progress: Callable[[str, str], None]) -> list[RayWorkerHandle]:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        specs = self.specs(groups)
        bundles = self.bundles(groups, specs)
        offered = ray.cluster_resources()
        if not offered.get("GPU"):
            from engine.config import role_config

            on_gpu = [r for g in groups for r in g if str(role_config(self.cfg, r).device).lower().startswith("cuda")]
            if on_gpu:
                raise RayBackendError(f"{on_gpu[0]}.device is {role_config(self.cfg, on_gpu[0]).device} but the "
                                      f"Ray cluster offers no GPU; use device: auto or cpu, or add a GPU node")
        for r, res in (self.cfg.runtime.ray_resources or {}).items():
            for name, amount in res.items():
                if offered.get(name, 0.0) < amount:
                    raise RayBackendError(
                        f"runtime.ray_resources.{r}.{name}: the cluster offers {offered.get(name, 0.0):g} of "
                        f"'{name}' (needs {amount:g}); start a node with ray start --resources "
                        f"'{{\"{name}\": {amount:g}}}' or change the key")
        self.pg = placement_group(bundles, strategy="PACK", name=f"rlhf-console-{os.getpid()}")
        ready, _ = ray.wait([self.pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            raise RayBackendError(
                f"the placement group for the roles could not be placed in {PLACEMENT_TIMEOUT_S:.0f}s: "
                + "; ".join(f"{_spec_label(groups, s)} needs {b}" for s, b in zip(specs, bundles))
                + f"; the cluster offers {dict(ray.available_resources())} (runtime.ray_resources)")
        self.log("ray: placement group ready: " + "; ".join(f"{_spec_label(groups, s)} {b}" for s, b in zip(specs, bundles)))
        by_group: dict[int, list[RayWorkerHandle]] = {}
        for i, (gi, rank, world) in enumerate(specs):
            g, b = groups[gi], bundles[i]
            opts = dict(
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=self.pg,
                                                                     placement_group_bundle_index=i),
                num_cpus=b["CPU"], num_gpus=b.get("GPU", 0),
                resources={k: v for k, v in b.items() if k not in ("CPU", "GPU")} or None,
                max_restarts=0, max_task_retries=0, name=None,
            )
            n = max(1, threads[gi] // world)
            h = RayWorkerHandle(g, cfg_yaml, n, opts, on_progress, rank=rank if world > 1 else None)
            by_group.setdefault(gi, []).append(h)
            self.handles.append(h)
        for gi, hs in by_group.items():
            if len(hs) == 1:
                hs[0].start_load()
                continue
            # a role over several actors: one torch.distributed group, rendezvous on rank 0's node
            init = ray.get(hs[0].actor.rendezvous.options(concurrency_group="watch").remote(), timeout=60)
            for h in hs:
                h.start_load({"rank": h.rank, "world_size": len(hs), "init_method": init})
        return self.handles

    def placement(self) -> dict:
        """label -> node id (hex) of the node each role actor runs on."""
        return {h.label: h.node_id for h in self.handles if h.node_id}

    def close(self) -> list[str]:
        """Kill the actors, remove the placement group, disconnect (and stop an owned instance).
        Returns the names of Ray processes that had to be killed by force."""
        notes: list[str] = []
        try:
            import ray
        except ImportError:  # pragma: no cover
            return notes
        for h in self.handles:
            try:
                h.shutdown()
            except Exception:  # noqa: BLE001
                pass
        if self.pg is not None:
            try:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(self.pg)
            except Exception:  # noqa: BLE001
                pass
            self.pg = None
        if self.connected or ray.is_initialized():
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001
                pass
            self.connected = False
        if self.owned:
            notes = self._reap_own()
        return notes

    def _reap_own(self, timeout: float = 15.0) -> list[str]:
        """The raylet and GCS this run started must be gone: wait, then SIGKILL what is left."""
        import psutil

        t0 = time.monotonic()
        left = self._own_procs
        while left and time.monotonic() - t0 < timeout:
            left = [(p, n) for p, n in left if psutil.pid_exists(p) and _is_ray(p, n)]
            if left:
                time.sleep(0.2)
        killed = []
        for p, n in left:
            try:
                psutil.Process(p).kill()
                killed.append(f"{n} (pid {p})")
            except psutil.Error:
                pass
        return killed


def _floor4(x: float) -> float:
    import math

    return max(0.0001, math.floor(x * 10000) / 10000)


def _spec_label(groups: list[list[str]], spec: tuple[int, int, int]) -> str:
    gi, rank, world = spec
    return "+".join(groups[gi]) + (f"[{rank}]" if world > 1 else "")


def _probe_address(address: str, timeout: float = 5.0) -> None:
    """Fail at once, with the address named, when nothing listens at HOST:PORT (ray.init would
    retry for minutes). ``auto`` and other forms are left to Ray, which fails fast for them."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in address:
        return
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise RayBackendError(f"runtime.ray_address: nothing answers at '{address}' ({e}); start the "
                              f"cluster with `ray start --head` or use ray_address: null") from e


def _is_ray(pid: int, name: str) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmd = proc.cmdline()
        return proc.name() == name or (bool(cmd) and os.path.basename(cmd[0]) == name)
    except psutil.Error:
        return False
