"""The backend registry: ``BACKENDS`` is the one place that knows the names of
``runtime.backend`` -- what each one's workers are called, whether the run's device plan applies
to it, what it needs installed, which ``runtime.*`` keys only it reads, and (by module and class
name, imported only when a run starts) the class that runs it. The config checks, the dry run and
the supervisor ask it questions; none of them compares the name. Pure data: it imports nothing
of the engine, so the config checks read it without importing the runtime."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    from engine.config import RunConfig
    from engine.runtime.backend import Backend


@dataclass(frozen=True)
class BackendSpec:
    """What a run needs to know about one ``runtime.backend`` before (and without) starting it."""

    name: str
    workers: str                # what its workers are called in events.log
    plans_devices: bool         # the run's device plan (runtime.devices, placement) places its roles
    own_keys: tuple = ()        # runtime.* keys that only this backend reads
    module: str = ""            # where its Backend class lives, imported when a run starts
    cls: str = ""
    requires: Optional[str] = None    # a module it needs installed
    missing: str = ""           # what to do when that module is missing
    device_note: str = ""       # why runtime.devices does not apply (plans_devices False)

    def load(self) -> type:
        return getattr(importlib.import_module(self.module), self.cls)

    def make(self, cfg: "RunConfig", log: Callable[..., None]) -> "Backend":
        return self.load()(cfg, log)

    def describe(self, runtime) -> Optional[str]:
        """A line for ``train --dry-run`` on how this backend would place the roles (or None)."""
        return self.load().describe(runtime)


BACKENDS: dict[str, BackendSpec] = {
    "local": BackendSpec(
        name="local", workers="worker process(es)", plans_devices=True,
        module="engine.runtime.backend", cls="LocalBackend"),
    "ray": BackendSpec(
        name="ray", workers="Ray actor(s)", plans_devices=False, own_keys=("ray_address", "ray_resources"),
        module="engine.runtime.ray_backend", cls="RayBackend", requires="ray",
        missing="needs Ray, which is not installed: pip install -e \".[ray]\" in a checkout, or "
                "pip install ray==2.60.0 (or use backend: local)",
        device_note="Ray gives each role actor its GPUs (the device plan is the local backend's)"),
}


def backend_spec(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"runtime.backend: unknown backend {name!r}; one of {', '.join(BACKENDS)}") from None
