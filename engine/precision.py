"""``auto`` precision: which dtype each role's matmuls run in, measured on the machine at hand.

bf16 is fast only where the hardware has it (AVX512-BF16 or AMX on x86 CPUs, compute
capability 8.0+ on NVIDIA GPUs). On an AVX2-only CPU it is an emulation, 2-9x slower than
float32, so a default tuned on one CPU class is wrong on the other. With
``<role>.autocast: auto`` the run decides per role and phase:

- on a CPU, :func:`calibrate` times bf16 against float32 at the roles' real shapes (one
  decoder layer of the model, plus its LM head where the phase runs it in 16 bits): a
  decoding step at the rollout's batch, a scoring forward over prompt + response, an update
  forward + backward over a micro-batch. A phase runs in bf16 only where bf16 measured at
  least ``BF16_MARGIN`` faster; otherwise float32, the more precise of two equals. The result
  is cached per machine (CPU model and flags, cores, torch version, the ISA torch and oneDNN
  may use) and per shape in the asset cache, so a machine is measured once
  (``rlhf-console doctor --recalibrate`` measures again);
- on CUDA: bf16 where the GPU supports it (compute capability >= 8.0), else float16 autocast
  (the trained roles then scale their losses with a gradient scaler), with no timing.

Weights, optimizer state and log-probs stay in the role's ``dtype`` (float32 unless set);
``<role>.dtype: auto`` is float32 except a frozen reference on a bf16-capable GPU, which
holds bf16 weights (half the memory, the same bf16 matmuls under autocast).

The decoder's weight packing (engine.decoding) follows the generate phase: a packed bf16
copy only where that phase runs in bf16.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

PHASES = ("generate", "score", "update")
# the phases each role runs (a critic that is a head on the reference's hidden states runs no
# trunk pass of its own: nothing to choose)
ROLE_PHASES = {"actor": ("generate", "score", "update"), "reference": ("score",),
               "critic": ("score", "update")}
BF16_MARGIN = 0.95        # bf16 is chosen where it takes at most this share of float32's time
CALIBRATION_FORMAT = 3
OTHERS_BUSY_MAX = 0.5     # cores other processes may keep busy while it measures, and the result still be cached
BUDGET_S = 0.2            # timing budget per (phase, dtype) after its warm-up
MAX_ROWS = 1024           # longer inputs are timed at this many rows (the ratio no longer moves)
MACHINE_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_fp16",
                 "amx_tile", "amx_bf16", "avx_ne_convert", "avx_vnni", "fma")
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


class PrecisionError(ValueError):
    pass


# ----------------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU flags that decide bf16 and float32 matmul speed (from /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in MACHINE_FLAGS if f in have]
    except OSError:
        pass
    return []


def cpu_class(flags: Optional[list[str]] = None, capability: Optional[str] = None) -> str:
    """``AMX``, ``AVX-512-BF16``, ``AVX-512``, ``AVX2`` or ``other``: the class the README's
    figures are given for. The ISA torch may use counts (``ATEN_CPU_CAPABILITY=avx2`` on an
    AMX CPU makes it the AVX2 class), as well as the flags."""
    flags = cpu_flags() if flags is None else flags
    capability = (capability or torch.backends.cpu.get_cpu_capability()).upper()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()
    capped = capability in ("AVX2", "DEFAULT", "NO AVX") or isa.startswith("AVX2") or isa in ("SSE41", "AVX")
    if capped:
        return "AVX2" if "avx2" in flags else "other"
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512-BF16"
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "other"


def machine_identity() -> dict:
    """What a CPU calibration is valid for: change any of it and the machine is measured again."""
    from engine.procs import available_cores

    return {
        "cpu": cpu_model(),
        "flags": cpu_flags(),
        "cores": available_cores(),
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "isa_env": {k: os.environ[k] for k in ISA_ENV if k in os.environ},
        "class": cpu_class(),
    }


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------- shapes

@dataclass(frozen=True)
class Shapes:
    """One model's layer sizes and the rows each phase multiplies (the rollout's batch, the
    scoring pass's tokens, a micro-batch's tokens)."""
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int
    decode_rows: int
    score_rows: int
    update_rows: int

    def layer_flops(self) -> int:
        """Matmul FLOPs of one layer per row (forward)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return 2 * (h * q + 2 * h * kv + q * h + 3 * h * i)


# the bundled and tiny models' architectures (engine.models builds them), for a calibration
# before they are downloaded, converted or built; their config.json is read once cached
_KNOWN_ARCH = {
    "bundled:smollm2-135m-instruct": dict(hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64,
                                          layers=30, vocab=49152),
    "tiny:llama": dict(hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, layers=2, vocab=49152),
    "tiny:qwen2-0.5b": dict(hidden=896, intermediate=4864, heads=14, kv_heads=2, head_dim=64, layers=24,
                            vocab=49152),
}


def model_arch(source: str) -> Optional[dict]:
    """``source``'s layer sizes from its config (a cached or local model), never downloading;
    None when they cannot be known here."""
    from engine.models import cached_model_path

    path = cached_model_path(source)
    if path is None:
        return _KNOWN_ARCH.get(source)
    try:
        conf = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return _KNOWN_ARCH.get(source)
    h = int(conf.get("hidden_size") or 0)
    heads = int(conf.get("num_attention_heads") or 0)
    if not h or not heads:
        return None
    return dict(hidden=h, intermediate=int(conf.get("intermediate_size") or 4 * h), heads=heads,
                kv_heads=int(conf.get("num_key_value_heads") or heads),
                head_dim=int(conf.get("head_dim") or h // heads),
                layers=int(conf.get("num_hidden_layers") or 1), vocab=int(conf.get("vocab_size") or 32000))


def prompt_tokens(cfg) -> int:
    """The prompt length a step sees: the first ``prompt_words`` words are ~2 tokens each."""
    words = getattr(cfg.data, "prompt_words", None)
    cap = int(cfg.data.max_prompt_tokens)
    return min(cap, 2 * int(words)) if words else cap


def role_shapes(cfg, role: str) -> Optional[Shapes]:
    from engine.config import resolve_role_model

    arch = model_arch(resolve_role_model(cfg, role))
    if arch is None:
        return None
    n = int(getattr(cfg.rollout, "n", 1) or 1)
    B = int(cfg.rollout.batch_size) * n
    T = prompt_tokens(cfg) + int(cfg.rollout.max_new_tokens)
    micro = int(cfg.ppo.micro_batch_size) * (n if cfg.ppo.mini_batch_size == cfg.rollout.batch_size else 1)
    return Shapes(**arch, decode_rows=B, score_rows=min(MAX_ROWS, B * T), update_rows=min(MAX_ROWS, micro * T))


# ----------------------------------------------------------------------------------- timing

def _best_pair(a: Callable[[], None], b: Callable[[], None], budget: float = BUDGET_S) -> tuple[float, float]:
    """Seconds per call of ``a`` and of ``b``: each the fastest of at least 3 timed calls after
    a warm-up, taken in turn (a, b, a, b, ...) so that anything else loading the machine
    meanwhile slows both alike, more rounds while the budget lasts."""
    a(), b()
    ta: list[float] = []
    tb: list[float] = []
    end = time.perf_counter() + budget
    while len(ta) < 3 or (time.perf_counter() < end and len(ta) < 50):
        for fn, times in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return min(ta), min(tb)


class _Layer(torch.nn.Module):
    """The matmuls of one Llama-style decoder layer (q, k, v, o, gate, up, down) with its two
    RMS norms; attention itself is left out (small next to the matmuls at these lengths)."""

    def __init__(self, s: Shapes, gen: torch.Generator):
        super().__init__()
        q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim

        def lin(o, i):
            m = torch.nn.Linear(i, o, bias=False)
            with torch.no_grad():
                m.weight.copy_(torch.randn(o, i, generator=gen) * i ** -0.5)
            return m

        self.q, self.k, self.v, self.o = lin(q, s.hidden), lin(kv, s.hidden), lin(kv, s.hidden), lin(s.hidden, q)
        self.gate, self.up, self.down = lin(s.intermediate, s.hidden), lin(s.intermediate, s.hidden), \
            lin(s.hidden, s.intermediate)
        self.ln1 = torch.nn.RMSNorm(s.hidden)
        self.ln2 = torch.nn.RMSNorm(s.hidden)

    def forward(self, x):
        h = self.ln1(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        a = q + (k * v).repeat(1, q.shape[-1] // k.shape[-1])  # an elementwise stand-in for attention
        x = x + self.o(a)
        h = self.ln2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def _decode_layer(layer: "_Layer", rows: int, cast: Optional[torch.dtype]):
    """One layer of a decoding step: the seven projections as engine.decoding runs them."""
    from engine.decoding import _proj

    q, k, v, o, g, u, d = (_proj(m, cast, rows) for m in (layer.q, layer.k, layer.v, layer.o, layer.gate,
                                                          layer.up, layer.down))
    x = torch.randn(rows, layer.q.in_features)
    if cast is not None:
        x = x.to(cast)

    def run():
        a = q(x)
        k(x), v(x)
        y = x + o(a)
        d(F.silu(g(y)) * u(y))
    return run


def _decode_head(head: torch.nn.Linear, rows: int, cast: Optional[torch.dtype]):
    from engine.decoding import _proj

    h = _proj(head, cast, rows)
    x = torch.randn(rows, head.in_features)
    if cast is not None:
        x = x.to(cast)
    return lambda: h(x)


def _measure(s: Shapes, budget: float) -> dict:
    """Seconds per call, float32 against bf16, for each phase of the whole model at ``s``:
    one layer timed and counted ``s.layers`` times, plus the LM head where the phase runs it in
    the phase's dtype (decoding; the scoring and update passes run the head in float32 either
    way, so it does not enter the choice)."""
    gen = torch.Generator().manual_seed(0)
    layer = _Layer(s, gen)
    head = torch.nn.Linear(s.hidden, s.vocab, bias=False)
    with torch.no_grad():
        head.weight.normal_(0, s.hidden ** -0.5, generator=gen)
    xs = torch.randn(s.score_rows, s.hidden, generator=gen)
    xu = torch.randn(s.update_rows, s.hidden, generator=gen)

    def score(dt):
        @torch.no_grad()
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dt == "bfloat16"):
                layer(xs)
        return run

    def update(dt):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dt == "bfloat16"):
                y = layer(xu)
            y.float().square().mean().backward()
            for p in layer.parameters():
                p.grad = None
        return run

    L = s.layers
    with torch.no_grad():
        l32, l16 = _best_pair(_decode_layer(layer, s.decode_rows, None),
                              _decode_layer(layer, s.decode_rows, torch.bfloat16), budget)
        h32, h16 = _best_pair(_decode_head(head, s.decode_rows, None),
                              _decode_head(head, s.decode_rows, torch.bfloat16), budget / 2)
    out = {"generate": {"float32": L * l32 + h32, "bfloat16": L * l16 + h16}}
    for phase, make in (("score", score), ("update", update)):
        t32, t16 = _best_pair(make("float32"), make("bfloat16"), budget)
        out[phase] = {"float32": L * t32, "bfloat16": L * t16}
    return out


# ----------------------------------------------------------------------------------- cache

def _cache_path() -> Path:
    from engine.assets import cache_dir

    return cache_dir() / "calibration.json"


def _read_cache() -> dict:
    p = _cache_path()
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == CALIBRATION_FORMAT else {}


def _write_entry(key: str, entry: dict) -> None:
    from filelock import FileLock

    from engine.files import atomic_write_json

    p = _cache_path()
    with FileLock(str(p) + ".lock"):
        data = _read_cache() or {"format": CALIBRATION_FORMAT, "entries": {}}
        data.setdefault("entries", {})[key] = entry
        atomic_write_json(p, data)


def clear_cache() -> bool:
    """Forget every calibration of this machine (doctor --recalibrate); True when one existed."""
    p = _cache_path()
    had = p.exists()
    p.unlink(missing_ok=True)
    return had


@dataclass
class Calibration:
    """bf16 against float32 at one model's shapes on this machine (seconds per call, per phase)."""
    machine: dict
    shapes: dict
    seconds: dict            # phase -> {"float32": s, "bfloat16": s}
    took_s: float            # how long measuring took (0 when it came from the cache)
    cached: bool = False
    measured_at: float = field(default_factory=time.time)
    others_busy_cores: float = 0.0   # how many cores other processes kept busy meanwhile

    def ratio(self, phase: str) -> float:
        """How many times faster bf16 ran than float32 in ``phase`` (below 1: slower)."""
        t = self.seconds[phase]
        return t["float32"] / t["bfloat16"] if t["bfloat16"] > 0 else 0.0

    def faster(self, phase: str) -> str:
        t = self.seconds[phase]
        return "bfloat16" if t["bfloat16"] <= BF16_MARGIN * t["float32"] else "float32"


def calibrate(s: Shapes, *, recalibrate: bool = False, budget: float = BUDGET_S,
              progress: Optional[Callable[[str], None]] = None) -> Calibration:
    """The calibration for ``s`` on this machine: from the cache, or measured (and cached)."""
    machine = machine_identity()
    shapes = asdict(s)
    key = _digest({"machine": machine, "shapes": shapes})
    if not recalibrate:
        hit = _read_cache().get("entries", {}).get(key)
        if hit:
            return Calibration(machine, shapes, hit["seconds"], 0.0, cached=True,
                               measured_at=hit.get("measured_at", 0.0))
    if progress:
        progress(f"precision: timing bf16 against float32 at the model's shapes on this {machine['class']} CPU "
                 f"(once per machine; cached)")
    t0 = time.perf_counter()
    others0 = _others_cpu_s()
    seconds = _measure(s, budget)
    took = time.perf_counter() - t0
    busy = (_others_cpu_s() - others0) / max(took, 1e-9)
    cal = Calibration(machine, shapes, seconds, took)
    cal.others_busy_cores = busy
    if busy > OTHERS_BUSY_MAX:
        # other processes ran while it measured: the figures serve this run, but are not kept
        if progress:
            progress(f"precision: other processes kept {busy:.1f} cores busy while it measured; this run uses "
                     f"the figures, the next measures again")
        return cal
    try:
        _write_entry(key, {"machine": machine, "shapes": shapes, "seconds": seconds,
                           "took_s": cal.took_s, "measured_at": cal.measured_at, "others_busy_cores": busy})
    except OSError as e:  # a read-only or full cache: measured again next time
        if progress:
            progress(f"precision: could not cache the calibration ({e})")
    return cal


def _others_cpu_s() -> float:
    """CPU seconds spent so far by every process but this one (system-wide busy time minus
    this process's): how much else ran while the calibration measured."""
    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    own = psutil.Process().cpu_times()
    return busy - (own.user + own.system)


# ----------------------------------------------------------------------------------- choice

_PHASE_SHAPE = {"generate": "a decoding step's shape", "score": "the scoring pass's shape",
                "update": "the update's shape"}


@dataclass
class RolePrecision:
    """What one role runs in, and why: ``autocast`` per phase (``none`` = the weights' dtype)."""
    role: str
    dtype: str
    autocast: dict                     # phase -> "none" | "bfloat16" | "float16"
    decoder_packing: bool = False
    requested: str = "auto"
    device: str = "cpu"
    measured: dict = field(default_factory=dict)   # phase -> {float32_ms, bfloat16_ms, bf16_speedup}
    why: dict = field(default_factory=dict)        # phase -> one sentence

    def to_json(self) -> dict:
        return {"autocast": dict(self.autocast), "dtype": self.dtype, "decoder_packing": self.decoder_packing,
                "requested": self.requested, "device": self.device, "measured": self.measured, "why": self.why}

    def line(self) -> str:
        """The one line events.log gets for this role."""
        parts = []
        for ph, ac in self.autocast.items():
            name = {"none": self.dtype.replace("float", "fp").replace("bfloat16", "bf16"),
                    "bfloat16": "bf16 autocast", "float16": "fp16 autocast"}[ac]
            parts.append(f"{ph} {name} ({self.why.get(ph, '')})" if self.why.get(ph) else f"{ph} {name}")
        pack = "; decoder weights prepacked" if self.decoder_packing else ""
        if not parts:
            return f"precision: {self.role} runs no pass of its own (a value head on the reference's hidden states)"
        return f"precision: {self.role} " + ", ".join(parts) + pack


def _fmt_ratio(r: float) -> str:
    return f"bf16 {r:.1f}x fp32" if r >= 1 else f"bf16 {1 / r:.1f}x slower than fp32" if r > 0 else "bf16 unmeasured"


def cuda_autocast(device: torch.device) -> tuple[str, str]:
    """(dtype, why) for 16-bit autocast on a CUDA device: bf16 from compute capability 8.0."""
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if major >= 8:
        return "bfloat16", f"{name}, compute capability {major}.{minor}: bf16 in hardware"
    return "float16", f"{name}, compute capability {major}.{minor}: no bf16; fp16 with a gradient scaler"


def resolve_dtype(requested: str, role: str, device: torch.device) -> str:
    """``<role>.dtype`` with ``auto`` resolved: float32, except a frozen reference on a
    bf16-capable GPU (bf16 weights)."""
    if requested != "auto":
        return requested
    if role == "reference" and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return "bfloat16"
    return "float32"


def role_precision(cfg, role: str, device: Optional[torch.device] = None, *, recalibrate: bool = False,
                   progress: Optional[Callable[[str], None]] = None,
                   calibration: Optional[Calibration] = None) -> RolePrecision:
    """The precision ``role`` runs in under ``cfg`` on ``device`` (its configured device by default)."""
    from engine.decoding import packing_available
    from engine.models import resolve_device

    rc = getattr(cfg, role)
    device = device or resolve_device(rc.device)
    dtype = resolve_dtype(rc.dtype, role, device)
    phases = ROLE_PHASES.get(role, ())
    if role == "critic" and cfg.ppo.critic_trunk == "reference":
        phases = ()
    req = rc.autocast
    rp = RolePrecision(role, dtype, {}, requested=req, device=str(device))
    if req != "auto":
        for ph in phases:
            rp.autocast[ph] = req
            rp.why[ph] = "set in the config"
    elif device.type == "cuda":
        ac, why = cuda_autocast(device)
        for ph in phases:
            rp.autocast[ph] = ac
            rp.why[ph] = why
    elif dtype != "float32":
        for ph in phases:  # 16-bit weights already: autocast adds nothing
            rp.autocast[ph] = "none"
            rp.why[ph] = f"weights are {dtype}"
    elif phases:
        s = role_shapes(cfg, role)
        if s is None:
            for ph in phases:
                rp.autocast[ph] = "none"
                rp.why[ph] = "the model's shapes are unknown here: float32"
        else:
            cal = calibration or calibrate(s, recalibrate=recalibrate, progress=progress)
            for ph in phases:
                r = cal.ratio(ph)
                t = cal.seconds[ph]
                rp.autocast[ph] = "bfloat16" if cal.faster(ph) == "bfloat16" else "none"
                rp.measured[ph] = {"float32_ms": round(1e3 * t["float32"], 3),
                                   "bfloat16_ms": round(1e3 * t["bfloat16"], 3), "bf16_speedup": round(r, 3)}
                rp.why[ph] = f"{_fmt_ratio(r)} at {_PHASE_SHAPE[ph]}"
    rp.decoder_packing = bool(role == "actor" and device.type == "cpu" and rp.autocast.get("generate") == "bfloat16"
                              and cfg.rollout.decoder == "static" and packing_available())
    return rp


def plan(cfg, devices: Optional[dict] = None, *, recalibrate: bool = False,
         progress: Optional[Callable[[str], None]] = None,
         calibration: Optional[Calibration] = None) -> dict[str, RolePrecision]:
    """The precision of every model role that runs a pass of its own (one calibration per
    distinct model shape; ``calibration``, when given, serves the roles of its shape)."""
    from engine.config import MODEL_ROLES, active_roles

    out: dict[str, RolePrecision] = {}
    cals: dict = {}
    if calibration is not None:
        cals[json.dumps(calibration.shapes, sort_keys=True)] = calibration
    for role in [r for r in active_roles(cfg) if r in MODEL_ROLES]:
        dev = None
        if devices and role in devices:
            dev = torch.device(devices[role][0])
        s = role_shapes(cfg, role)
        cal = None
        rc = getattr(cfg, role)
        if rc.autocast == "auto" and s is not None and (dev or _device_of(rc)).type == "cpu":
            key = json.dumps(asdict(s), sort_keys=True)
            if key not in cals:
                cals[key] = calibrate(s, recalibrate=recalibrate, progress=progress)
            cal = cals[key]
        out[role] = role_precision(cfg, role, dev, calibration=cal, progress=progress)
    return out


def _device_of(rc) -> torch.device:
    from engine.models import resolve_device

    return resolve_device(rc.device)


def autocast_context(device: torch.device, ac: str):
    """``torch.autocast`` for ``ac`` on ``device`` (a no-op context for ``none``)."""
    import contextlib

    if ac in (None, "none"):
        return contextlib.nullcontext()
    from engine.models import torch_dtype

    return torch.autocast(device_type=device.type, dtype=torch_dtype(ac))


__all__ = ["PHASES", "ROLE_PHASES", "BF16_MARGIN", "Shapes", "Calibration", "RolePrecision", "calibrate",
           "plan", "role_precision", "role_shapes", "resolve_dtype", "machine_identity", "cpu_class",
           "clear_cache", "autocast_context", "PrecisionError"]
