"""The Ray backend's actor: one group of roles inside a Ray worker process.

It hosts the same role objects (``engine.runtime.roles``) as a local worker process and answers
the same calls; ``engine.runtime.ray_backend.RayWorkerHandle`` is the supervisor's side. Made
remote lazily (``remote_cls``), so importing this module never needs Ray.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
from typing import Any, Optional


class RoleActor:
    """Hosts one group of roles inside a Ray worker process."""

    def __init__(self, roles: list[str], config_yaml: str, threads: int):
        import torch

        from engine.runtime.worker import quiet_hf_logging

        self.roles = list(roles)
        self.config_yaml = config_yaml
        self.objs: dict[str, Any] = {}
        self._progress: list[str] = []
        self._plock = threading.Lock()
        self._stop = threading.Event()
        self._threads = max(1, int(threads))
        torch.set_num_threads(self._threads)
        quiet_hf_logging()

    def _note(self, role: str, msg: str) -> None:
        with self._plock:
            self._progress.append(msg if msg.startswith(f"{role}:") else f"{role}: {msg}")

    def rendezvous(self) -> str:
        """On rank 0 of a role over several actors: a tcp:// address on this node for the
        torch.distributed group (this node's IP and a port free here)."""
        import socket

        import ray

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sk:
            sk.bind(("", 0))
            port = sk.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def load(self, rank: Optional[dict] = None) -> dict:
        """Build the roles; ``rank`` ({"rank", "world_size", "init_method"}) first joins the
        role's torch.distributed group, as a local rank worker does."""
        import random

        import ray
        import torch

        from engine.config import validate_text
        from engine.runtime.role_base import role_seed
        from engine.runtime.roles import ROLE_CLASSES

        try:
            t0 = time.perf_counter()
            cfg = validate_text(self.config_yaml, "<run config>", check_hardware=False).config
            if ray.get_gpu_ids():
                cfg = _on_assigned_gpu(cfg, self.roles)
            if rank:
                from engine.runtime.ranks import init_rank

                init_rank(rank, getattr(cfg, self.roles[0]).device, cfg.runtime.worker_timeout_s)
            seed = role_seed(cfg.run.seed, "+".join(self.roles))
            torch.manual_seed(seed)
            random.seed(seed)
            for r in self.roles:
                t = time.perf_counter()
                self.objs[r] = ROLE_CLASSES[r](cfg, progress=lambda m, r=r: self._note(r, m))
                self._note(r, f"loaded in {time.perf_counter() - t:.1f}s")
            ctx = ray.get_runtime_context()
            return {"ok": True, "roles": self.roles, "pid": os.getpid(), "node_id": ctx.get_node_id(),
                    "seconds": time.perf_counter() - t0}
        except BaseException as e:  # noqa: BLE001 - reported to the supervisor
            return {"ok": False, "error": f"{type(e).__name__}: {e}", "kind": "load",
                    "trace": traceback.format_exc()}

    def call(self, role: str, op: str, inputs: Optional[dict], args: dict, threads: Optional[int]) -> dict:
        import torch

        from engine.runtime.calls import RoleCall, perform
        from engine.runtime.role_base import NonFiniteError

        try:
            if threads and int(threads) != self._threads:
                torch.set_num_threads(int(threads))
                self._threads = int(threads)
            res = perform(self.objs, RoleCall(role, op, inputs, args or {}, threads))
            return {"ok": True, "outputs": res.tensors, "result": res.info, "seconds": res.seconds}
        except NonFiniteError as e:
            return {"ok": False, "kind": "nonfinite", "error": str(e), "role": e.role, "phase": e.phase}
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the supervisor decides what an error means
            what = f"SystemExit({e.code!r})" if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
            return {"ok": False, "kind": "error", "error": what, "role": role, "phase": op,
                    "trace": traceback.format_exc()}

    # the "watch" concurrency group: runs beside a long call
    def progress(self) -> list[str]:
        with self._plock:
            out, self._progress = self._progress, []
        return out

    def watch(self) -> bool:
        """Returns only when the actor is told to stop; its failure is how a death is noticed."""
        self._stop.wait()
        return True

    def stop(self) -> bool:
        self._stop.set()
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the actor is being killed anyway
            pass
        return True


_REMOTE = None


def remote_cls():
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(concurrency_groups={"watch": 2})(RoleActor)
    return _REMOTE




def _on_assigned_gpu(cfg, roles: list[str]):
    """Inside an actor that Ray gave GPUs (CUDA_VISIBLE_DEVICES = its share): the roles it hosts
    run on the first visible one, whatever cuda:N the config named for a single machine."""
    import dataclasses

    for r in roles:
        rc = getattr(cfg, r)
        if str(rc.device or "auto").lower() != "cpu":
            cfg = dataclasses.replace(cfg, **{r: dataclasses.replace(rc, device="cuda:0")})
    return cfg
