"""``rlhf-console doctor``: what this machine is, what a run will choose on it, how long the
default will take here, and what would stop a run, before a newcomer waits for anything.

It reads: the CPU (model, the flags that decide matmul speed, cores), memory, free disk where
the cache lives, GPUs through NVML and through torch, the asset cache's contents, and the
precision calibration (:mod:`engine.precision`, measured once per machine and cached). Every
problem a run would hit is one line; any problem makes the command exit non-zero.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

# what the embedded default needs (measured on the 2-core development machine:
# docs/results/, peak RSS of the default's four workers ~6 GB; cache ~0.85 GB once filled)
DEFAULT_RSS_GB = 6.5
CACHE_NEED_GB = 1.5
REWARD_TRAIN_ROWS = 4000   # the bundled reward model's training set (engine.reward_training)
REWARD_TRAIN_TOKENS = 96   # its max length
MINILM_PARAMS = 22.7e6


@dataclass
class Report:
    machine: dict = field(default_factory=dict)
    gpus: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    precision: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    estimate: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    seconds: float = 0.0


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def gpu_state() -> dict:
    """GPUs as NVML and torch see them; a GPU device node with no working NVML or CUDA is a
    problem the run would hit."""
    out: dict = {"nodes": sorted(p.name for p in Path("/dev").glob("nvidia[0-9]*")),
                 "cuda": torch.cuda.is_available(), "nvml": None, "devices": []}
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            out["driver"] = _str(pynvml.nvmlSystemGetDriverVersion())
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                try:
                    cc = ".".join(str(x) for x in pynvml.nvmlDeviceGetCudaComputeCapability(h))
                except pynvml.NVMLError:
                    cc = "N/A"
                out["devices"].append({"index": i, "name": _str(pynvml.nvmlDeviceGetName(h)),
                                       "memory_gb": round(mem.total / 2**30, 1),
                                       "used_gb": round(mem.used / 2**30, 1), "compute_capability": cc})
            out["nvml"] = "ok"
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 - any NVML failure is reported, never raised
        out["nvml"] = f"unavailable: {type(e).__name__}: {str(e).strip() or 'no detail'}"
    out["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return out


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def cache_state() -> dict:
    """The asset cache: where it is, what it holds, how much space is left there."""
    from engine.assets import WHEELS, cache_dir, cached_wheel_asset

    root = cache_dir()
    items = {}
    for a in WHEELS.values():
        got = cached_wheel_asset(a.name)
        items[f"{a.package}=={a.version} ({a.size_mb} MB wheel)"] = {
            "path": str(got or root / "assets" / f"{a.package}-{a.version}"), "present": got is not None,
            "bytes": _du(got) if got is not None else 0}
    for label, rel in (("SmolLM2 converted to safetensors", "models/smollm2-135m-instruct"),
                       ("trained sentiment reward model", "models/minilm-sentiment"),
                       ("precision calibration", "calibration.json")):
        p = root / rel
        items[label] = {"path": str(p), "present": p.exists(), "bytes": _du(p) if p.exists() else 0}
    usage = shutil.disk_usage(root)
    return {"root": str(root), "items": items, "free_bytes": usage.free,
            "writable": os.access(root, os.W_OK)}


def _du(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def estimate(cfg, cal, chosen: dict, cache: dict) -> dict:
    """The config's seconds per step and the time to its first PPO step on this machine, from
    the calibration (whole-model pass times in the chosen dtypes); rough: attention, the
    optimizer's memory traffic and the reward model are approximated."""
    from engine.precision import prompt_tokens, role_shapes

    s = role_shapes(cfg, "actor")
    if s is None or cal is None:
        return {}
    actor = chosen.get("actor")
    ac = actor.autocast if actor else {}

    def t(phase: str) -> float:
        dt = "bfloat16" if ac.get(phase) == "bfloat16" else "float32"
        return cal.seconds[phase][dt]

    R, P = int(cfg.rollout.max_new_tokens), prompt_tokens(cfg)
    T = P + R
    n = int(getattr(cfg.rollout, "n", 1) or 1)
    B = int(cfg.rollout.batch_size) * n
    fp32_rate = 3 * s.update_rows * s.layer_flops() * s.layers / max(cal.seconds["update"]["float32"], 1e-9)
    head_fwd = 2 * s.hidden * s.vocab * B * T / fp32_rate * 3  # a forward is a third of fwd+bwd's FLOPs
    score = t("score") * (B * T) / s.score_rows + head_fwd
    generate = R * t("generate") + score * P / T
    scoring = score  # the reference
    if not cfg.rollout.reuse_logprobs:
        scoring += score
    if cfg.ppo.critic_trunk != "reference" and "critic" in chosen:
        scoring += score
    reward = 2 * MINILM_PARAMS * B * R / fp32_rate * 3
    micro_batches = B / max(1, int(cfg.ppo.micro_batch_size)) * int(cfg.ppo.epochs)
    upd_rows = max(1, s.update_rows)
    update = t("update") * (B * T) / upd_rows * int(cfg.ppo.epochs) + 3 * head_fwd * int(cfg.ppo.epochs)
    # AdamW and the gradient clip stream ~36 bytes per parameter per optimizer step
    params = s.layers * s.layer_flops() / 2 + s.vocab * s.hidden
    opt_steps = (B / max(1, int(cfg.ppo.mini_batch_size))) * int(cfg.ppo.epochs)
    optimizer = opt_steps * params * 36 / 15e9
    step = generate + scoring + reward + update + optimizer
    first = {}
    items = cache["items"]
    if not items["SmolLM2 converted to safetensors"]["present"]:
        first["SmolLM2 download and conversion"] = 30.0
    if str(cfg.reward.source) == "bundled:minilm-sentiment" and not items["trained sentiment reward model"]["present"]:
        # one epoch over the bundled rows, forward and backward, float32, at the measured rate
        first["reward model training (once)"] = 6 * MINILM_PARAMS * REWARD_TRAIN_ROWS * REWARD_TRAIN_TOKENS / fp32_rate
    first["loading the roles"] = 12.0
    first["first step (warm-up)"] = 1.3 * step
    return {"step_s": step, "phases_s": {"generate": generate, "scoring": scoring + reward, "update": update + optimizer},
            "first_step_s": sum(first.values()), "first_step_stages_s": first,
            "micro_batches": micro_batches, "fp32_tflops": fp32_rate / 1e12}


def run_doctor(cfg, *, recalibrate: bool = False, progress=None) -> Report:
    from engine.precision import calibrate, clear_cache, cpu_class, machine_identity, plan, role_shapes
    from engine.procs import available_cores

    t0 = time.perf_counter()
    rep = Report()
    m = machine_identity()
    try:
        import psutil

        vm = psutil.virtual_memory()
        m["memory_total_bytes"], m["memory_available_bytes"] = vm.total, vm.available
    except ImportError:  # pragma: no cover - psutil is a dependency
        pass
    m["cores_total"] = os.cpu_count()
    m["class"] = cpu_class()
    rep.machine = m
    rep.gpus = gpu_state()
    rep.cache = cache_state()
    if recalibrate:
        clear_cache()
    s = role_shapes(cfg, "actor")
    cal = None
    if s is not None and not rep.gpus["cuda"]:  # measured once here, and the plan reuses it
        cal = calibrate(s, progress=progress)
        rep.calibration = {"seconds": cal.seconds, "took_s": cal.took_s, "cached": cal.cached,
                           "shapes": cal.shapes}
    chosen = plan(cfg, progress=progress, calibration=cal)
    rep.precision = {r: rp.to_json() for r, rp in chosen.items()}
    rep.estimate = estimate(cfg, cal, chosen, rep.cache) if cal else {}
    # problems a run would hit
    p = rep.problems
    free = rep.cache["free_bytes"]
    missing = not all(i["present"] for k, i in rep.cache["items"].items() if k != "precision calibration")
    if missing and free < CACHE_NEED_GB * 2**30:
        p.append(f"only {_gb(free)} free in {rep.cache['root']}: the first run's downloads and models need "
                 f"~{CACHE_NEED_GB} GiB (set RLHF_CONSOLE_CACHE to a folder with room)")
    if not rep.cache["writable"]:
        p.append(f"the cache {rep.cache['root']} is not writable (set RLHF_CONSOLE_CACHE to a folder you own)")
    avail = m.get("memory_available_bytes")
    if avail is not None and not rep.gpus["cuda"] and avail < DEFAULT_RSS_GB * 2**30 \
            and str(cfg.actor.model).startswith("bundled:smollm2"):
        p.append(f"{_gb(avail)} of memory available; the default's four workers peak at ~{DEFAULT_RSS_GB} GiB "
                 f"(runtime.colocate: true shares one process)")
    if rep.gpus["nodes"] and rep.gpus["nvml"] != "ok":
        p.append(f"a GPU is visible ({', '.join('/dev/' + n for n in rep.gpus['nodes'])}) but NVML is "
                 f"{rep.gpus['nvml']}: the console's GPU pane will be empty (pip install nvidia-ml-py; check the driver)")
    if rep.gpus["nodes"] and not rep.gpus["cuda"]:
        p.append(f"a GPU is visible but torch {torch.__version__} has no CUDA "
                 f"({'a CPU build' if torch.version.cuda is None else 'CUDA ' + str(torch.version.cuda) + ' not usable'}): "
                 f"every role will run on the CPU")
    if available_cores() < 2:
        p.append("one core available: the four roles will take turns (expect several times the 2-core step time)")
    rep.seconds = time.perf_counter() - t0
    return rep


def format_report(rep: Report, config_name: str) -> list[str]:
    m, g, c = rep.machine, rep.gpus, rep.cache
    out = ["machine"]
    out.append(f"  cpu       {m['cpu']} ({m['class']} class; torch uses {m['capability']}"
               + (f", {' '.join(f'{k}={v}' for k, v in m['isa_env'].items())}" if m["isa_env"] else "") + ")")
    out.append(f"  flags     {' '.join(m['flags']) or 'none of note'}")
    out.append(f"  cores     {m['cores']} available of {m.get('cores_total')}")
    if "memory_total_bytes" in m:
        out.append(f"  memory    {_gb(m['memory_total_bytes'])} total, {_gb(m['memory_available_bytes'])} available")
    out.append(f"  torch     {m['torch']}, CUDA {'available' if g['cuda'] else 'not available'}"
               + (f" (built for {torch.version.cuda})" if torch.version.cuda else " (CPU build)")
               + f", MPS {'available' if g['mps'] else 'not available'}")
    if g["devices"]:
        out.append(f"  gpus      driver {g.get('driver')}")
        for d in g["devices"]:
            out.append(f"            {d['index']}: {d['name']}, {d['memory_gb']} GB ({d['used_gb']} GB used), "
                       f"compute capability {d['compute_capability']}")
    else:
        out.append(f"  gpus      none ({'NVML ' + g['nvml'] if g['nvml'] != 'ok' else 'NVML sees none'})")
    out.append("")
    out.append(f"cache {c['root']} ({_gb(c['free_bytes'])} free)")
    for label, it in c["items"].items():
        size = f"{it['bytes'] / 2**20:.0f} MB" if it["present"] else "not yet"
        out.append(f"  {'x' if it['present'] else '-'} {label:<38} {size}")
    out.append("")
    cal = rep.calibration
    if cal:
        how = "from the cache" if cal["cached"] else f"measured now in {cal['took_s']:.1f}s"
        out.append(f"precision calibration for {config_name} ({how}; whole-model pass at the actor's shapes)")
        out.append(f"  {'phase':<10}{'float32':>12}{'bf16':>12}{'bf16 speed-up':>16}")
        for ph, t in cal["seconds"].items():
            r = t["float32"] / t["bfloat16"] if t["bfloat16"] else 0.0
            out.append(f"  {ph:<10}{1e3 * t['float32']:>10.1f}ms{1e3 * t['bfloat16']:>10.1f}ms{r:>15.2f}x")
        if all(t["bfloat16"] > t["float32"] for ph, t in cal["seconds"].items() if ph != "generate"):
            out.append("  no fast bf16 on this CPU: the scoring and update passes run in float32")
    out.append("what the run will use")
    for role, rp in rep.precision.items():
        phases = ", ".join(f"{ph} {'bf16' if ac == 'bfloat16' else 'fp16' if ac == 'float16' else rp['dtype']}"
                           for ph, ac in rp["autocast"].items()) or "no pass of its own"
        out.append(f"  {role:<10} {phases}" + ("; decoder weights prepacked" if rp["decoder_packing"] else ""))
    e = rep.estimate
    if e:
        out.append("")
        out.append(f"estimate for {config_name} on this machine (from the calibration; "
                   f"`python -m engine.bench step` measures it)")
        ph = e["phases_s"]
        out.append(f"  ~{e['step_s']:.1f}s a step (generate {ph['generate']:.1f}s, scoring {ph['scoring']:.1f}s, "
                   f"update {ph['update']:.1f}s)")
        stages = ", ".join(f"{k} ~{v:.0f}s" for k, v in e["first_step_stages_s"].items())
        out.append(f"  ~{e['first_step_s'] / 60:.1f} min to the first PPO step from here ({stages}; "
                   f"downloads not counted)")
    out.append("")
    if rep.problems:
        out.append(f"{len(rep.problems)} problem(s) a run would hit:")
        out += [f"  ! {p}" for p in rep.problems]
    else:
        out.append("no problems found")
    out.append(f"(doctor took {rep.seconds:.1f}s)")
    return out


__all__ = ["Report", "run_doctor", "format_report", "gpu_state", "cache_state", "estimate"]
