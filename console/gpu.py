"""GPU and host-memory readings for the GPU pane (called from a thread worker).

NVML is probed once: with no driver or no GPU the report says why ("NVML unavailable: ...")
and the pane shows each role's host memory instead. A field a device does not support is
``None`` (shown as N/A). Nothing here raises.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class GpuProcess:
    pid: int
    used_mb: Optional[float]


@dataclass
class GpuDevice:
    index: int
    name: str
    util: Optional[int] = None            # percent
    mem_used_mb: Optional[float] = None
    mem_total_mb: Optional[float] = None
    temp_c: Optional[int] = None
    power_w: Optional[float] = None
    power_limit_w: Optional[float] = None
    processes: list = field(default_factory=list)


@dataclass
class RoleMemory:
    role: str
    pid: Optional[int]
    rss_mb: Optional[float]
    peak_mb: Optional[float]
    source: str                           # "live" (psutil) or "step N" (metrics.jsonl)


@dataclass
class GpuReport:
    available: bool
    reason: str = ""
    driver: str = ""
    devices: list = field(default_factory=list)
    live_rss: dict = field(default_factory=dict)   # role -> MB, for the processes that still run
    live_cpu: dict = field(default_factory=dict)   # role -> CPU % since the previous reading (100 = one core)


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class NvmlProbe:
    """Initialises NVML once and reads every device on each ``read()``."""

    def __init__(self):
        self._nv = None
        self._reason: Optional[str] = None
        self._driver = ""

    def _init(self) -> None:
        if self._nv is not None or self._reason is not None:
            return
        try:
            import pynvml  # nvidia-ml-py
        except Exception as e:  # noqa: BLE001
            self._reason = f"NVML unavailable: nvidia-ml-py not importable ({e})"
            return
        try:
            pynvml.nvmlInit()
        except Exception as e:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self._reason = f"NVML unavailable: {_s(e) or type(e).__name__}"
            return
        try:
            self._driver = _s(pynvml.nvmlSystemGetDriverVersion())
        except Exception:  # noqa: BLE001
            self._driver = ""
        self._nv = pynvml

    def read(self) -> GpuReport:
        self._init()
        if self._nv is None:
            return GpuReport(False, self._reason or "NVML unavailable")
        nv = self._nv
        try:
            n = nv.nvmlDeviceGetCount()
        except Exception as e:  # noqa: BLE001
            return GpuReport(False, f"NVML unavailable: {_s(e)}")
        if n == 0:
            return GpuReport(False, "NVML: no NVIDIA GPU on this machine", self._driver)
        devices = []
        for i in range(n):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
            except Exception:  # noqa: BLE001
                continue
            d = GpuDevice(i, _try(lambda: _s(nv.nvmlDeviceGetName(h))) or f"GPU {i}")
            d.util = _try(lambda: int(nv.nvmlDeviceGetUtilizationRates(h).gpu))
            mem = _try(lambda: nv.nvmlDeviceGetMemoryInfo(h))
            if mem is not None:
                d.mem_used_mb, d.mem_total_mb = mem.used / 2**20, mem.total / 2**20
            d.temp_c = _try(lambda: int(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))
            d.power_w = _try(lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
            d.power_limit_w = _try(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
            procs = []
            for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                for p in _try(lambda: getattr(nv, fn)(h)) or []:
                    used = getattr(p, "usedGpuMemory", None)
                    procs.append(GpuProcess(int(p.pid), used / 2**20 if isinstance(used, int) else None))
            d.processes = procs
            devices.append(d)
        return GpuReport(True, "", self._driver, devices)


def _try(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - "not supported" on this device
        return None


def live_rss(pids: dict) -> dict:
    """Resident memory (MB) of each role's process that still runs (psutil); others are left out."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return {}
    out = {}
    for role, pid in pids.items():
        try:
            out[role] = psutil.Process(int(pid)).memory_info().rss / 2**20
        except Exception:  # noqa: BLE001 - gone, zombie, no permission
            continue
    return out


_PROCS: dict = {}


def live_cpu(pids: dict) -> dict:
    """CPU use of each role's process that still runs, in % of one core since the previous call
    (psutil; the first reading of a process is left out: it has nothing to compare with)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return {}
    out = {}
    for role, pid in pids.items():
        try:
            pid = int(pid)
            proc = _PROCS.get(pid)
            if proc is None:
                proc = _PROCS[pid] = psutil.Process(pid)
                proc.cpu_percent(None)
                continue
            out[role] = proc.cpu_percent(None)
        except Exception:  # noqa: BLE001 - gone, zombie, no permission
            _PROCS.pop(pid, None)
            continue
    return out


def host_memory(pids: dict, live: dict, from_metrics: dict, metrics_step) -> list:
    """Each role's host memory: live when its process runs, else the newest step's record. The
    peak is never below the rss shown: a live rss read now may be above the high-water mark the
    last step recorded, and then it is the peak so far."""
    out = []
    for role in dict.fromkeys(list(pids) + list(from_metrics)):
        m = from_metrics.get(role) or {}
        if role in live:
            rss, src = live[role], "live"
        else:
            rss, src = m.get("rss_mb"), (f"step {metrics_step}" if m else "–")
        out.append(RoleMemory(role, pids.get(role), rss, _peak(m.get("peak_rss_mb"), rss), src))
    return out


def _peak(peak: Optional[float], rss: Optional[float]) -> Optional[float]:
    """The larger of a recorded peak and a current rss; no recorded peak stays unknown."""
    if peak is None or not isinstance(rss, (int, float)):
        return peak
    return max(float(peak), float(rss))
