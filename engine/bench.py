"""Benchmarks that print figures.

    python -m engine.bench transport [--sizes 1,16,256] [--repeats N]
    python -m engine.bench step --config FILE [--steps N] [--set k=v ...] [--modes multi,local,ray,single]
    python -m engine.bench generate [--config FILE] [--batch N] [--tokens N] [--repeats N] [--compile]
    python -m engine.bench precision --config FILE [--steps N] [--modes auto,float32,bf16] [--json F]

Each benchmark is a subcommand: a ``bench_<name>(args)`` function plus a ``_register_<name>``
function that adds its subparser; ``build_parser`` lists them (see the place marked for ``step``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from engine.records import MetricsRow

MB = 1 << 20


# ----------------------------------------------------------------------------- transport


def _transport_receiver(conn) -> None:
    """Child side: for each message, get a usable tensor, touch one element, acknowledge."""
    from engine.transport import read_tensors

    conn.send("ready")
    while True:
        kind, payload = conn.recv()
        if kind == "stop":
            return
        if kind == "shm":
            value = read_tensors(json.loads(payload))["x"][-1].item()
        elif kind == "pkl":
            value = float(payload[-1])
        else:
            raise ValueError(kind)
        conn.send(value)


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else float("inf")


def bench_transport(args: argparse.Namespace) -> int:
    from engine.transport import TensorArena, new_run_tag, shm_dir, unlink_run_segments

    sizes = [float(s) for s in str(args.sizes).split(",") if s.strip()]
    repeats = max(1, int(args.repeats))
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_transport_receiver, args=(child,), daemon=True)
    proc.start()
    if not parent.poll(120) or parent.recv() != "ready":
        raise RuntimeError("benchmark receiver process did not start")
    tag = new_run_tag()
    arena = TensorArena(os.getpid(), tag, "bench")
    rows = []
    try:
        for size_mb in sizes:
            n = int(size_mb * MB) // 4
            nbytes = n * 4
            x = torch.randn(n)

            # (a) shared-memory transport: put start -> receiver has a view, read one element, acked
            times = []
            for _ in range(repeats + 1):  # first round is cold: new segment, first mapping
                t0 = time.perf_counter()
                desc = arena.put({"x": x})
                parent.send(("shm", json.dumps(desc)))
                got = parent.recv()
                times.append(time.perf_counter() - t0)
                arena.release(desc)
                assert got == x[-1].item()
            cold, shm = times[0], statistics.median(times[1:])

            # (b) in-process copy
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                y = x.clone()
                times.append(time.perf_counter() - t0)
                del y
            clone = statistics.median(times)

            # (c) pickle over a pipe (numpy array), received and touched by the other process
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                parent.send(("pkl", x.numpy()))
                got = parent.recv()
                times.append(time.perf_counter() - t0)
                assert got == x[-1].item()
            pkl = statistics.median(times)
            rows.append((size_mb, nbytes, shm, cold, clone, pkl))
            del x
        parent.send(("stop", None))
        proc.join(30)
    finally:
        arena.close()
        unlink_run_segments(os.getpid(), tag)
        if proc.is_alive():
            proc.kill()
            proc.join(5)

    print(f"transport benchmark: float32 batches, median of {repeats} repeats "
          f"(transport cold = first put incl. segment creation); shm dir {shm_dir()}; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = (f"{'size MB':>8} | {'transport ms':>12} {'GB/s':>7} {'cold ms':>8} | "
              f"{'clone ms':>9} {'GB/s':>7} | {'pickle-pipe ms':>14} {'GB/s':>7}")
    print(header)
    print("-" * len(header))
    for size_mb, nbytes, shm, cold, clone, pkl in rows:
        print(f"{size_mb:>8g} | {shm * 1e3:>12.3f} {_gbps(nbytes, shm):>7.2f} {cold * 1e3:>8.2f} | "
              f"{clone * 1e3:>9.3f} {_gbps(nbytes, clone):>7.2f} | {pkl * 1e3:>14.3f} {_gbps(nbytes, pkl):>7.2f}")
    return 0


def _register_transport(sub) -> None:
    p = sub.add_parser("transport", help="shared-memory transport vs in-process copy vs pickle over a pipe")
    p.add_argument("--sizes", default="1,16,256", help="batch sizes in MB, comma separated (default 1,16,256)")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per size (default 10)")
    p.set_defaults(func=bench_transport)


# ----------------------------------------------------------------------------- step

STEP_PHASES = ("rollout", "actor_logprobs", "ref", "critic", "reward", "scoring", "advantage",
               "actor_update", "critic_update", "update", "step")


def peak_matmul_tflops(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """The machine's own limit: dense square matmul rate in ``dtype`` with all threads."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.matmul(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass
class MatmulPeak:
    """The compute dtype's dense matmul rate on this machine, and whether it is a peak at all.

    A CPU without matmul instructions for a 16-bit dtype (no AVX512-BF16 or AMX for bfloat16)
    runs it on a fallback slower than float32. A step's "% of peak" against that rate is a
    share of nothing (thousands of %), so such a dtype has ``fast_path`` False, ``share_of``
    None, and the bench says "no fast bf16 on this CPU" instead of a share."""

    dtype: str                       # the compute dtype measured (torch name: "bfloat16")
    tflops: float                    # its dense matmul rate, TFLOP/s (at n x n)
    n: int                           # the matrices' size the rate was measured at
    fast_path: bool                  # float32 itself, or faster than float32 at probe_n
    probe_n: Optional[int] = None    # the size of the float32 comparison (16-bit dtypes only)
    probe_tflops: Optional[float] = None          # this dtype's rate at probe_n
    probe_float32_tflops: Optional[float] = None  # float32's rate at probe_n

    @property
    def share_of(self) -> Optional[float]:
        """The rate a phase's share is taken of: None when the dtype has no fast path."""
        return self.tflops if self.fast_path else None

    @property
    def short(self) -> str:
        return _SHORT.get(self.dtype, self.dtype)

    def describe(self) -> str:
        if self.fast_path:
            return f"the measured {self.dtype} dense matmul rate, {self.tflops:.3f} TFLOP/s"
        return (f"no fast {self.short} on this CPU: {self.dtype} matmul {self.probe_tflops:.4f} TFLOP/s against "
                f"float32's {self.probe_float32_tflops:.4f} at {self.probe_n}x{self.probe_n}, so no share of a peak")

    def to_json(self) -> dict:
        return {**asdict(self), "share_of": self.share_of}


def measure_matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0,
                        probe_n: int = 512, probe_seconds: float = 0.5) -> MatmulPeak:
    """:func:`peak_matmul_tflops` of ``dtype``, after a short probe against float32 for a 16-bit
    dtype: one no faster than float32 has no fast path here, and is not measured at ``n`` (on
    such a CPU one bf16 2048x2048 matmul alone takes seconds)."""
    name = str(dtype).replace("torch.", "")
    if dtype == torch.float32:
        return MatmulPeak(name, peak_matmul_tflops(dtype, n, seconds), n, True)
    low = peak_matmul_tflops(dtype, probe_n, probe_seconds)
    f32 = peak_matmul_tflops(torch.float32, probe_n, probe_seconds)
    probe = dict(probe_n=probe_n, probe_tflops=low, probe_float32_tflops=f32)
    if low <= f32:
        return MatmulPeak(name, low, probe_n, False, **probe)
    return MatmulPeak(name, peak_matmul_tflops(dtype, n, seconds), n, True, **probe)


def step_flops(n_policy: int, n_critic: int, n_reward: int, batch: int, prompt_len: float, resp_len: float,
               reward_len: float, epochs: int, reuse_logprobs: bool = False) -> dict:
    """Model FLOPs of one PPO step (2·params per token forward, 6·params forward+backward;
    attention's sequence-length term is left out, small at these lengths). With
    ``reuse_logprobs`` the actor's old log-probs come from generation: no second pass."""
    seq = prompt_len + resp_len
    f = {
        "rollout": 2 * n_policy * batch * seq,          # prefill + one token at a time (KV cache)
        "actor_logprobs": 0 if reuse_logprobs else 2 * n_policy * batch * seq,
        "ref": 2 * n_policy * batch * seq,
        "critic": 2 * n_critic * batch * seq,
        "reward": 2 * n_reward * batch * reward_len,
        "actor_update": 6 * n_policy * batch * seq * epochs,
        "critic_update": 6 * n_critic * batch * seq * epochs,
    }
    f["total"] = sum(f.values())
    return f


# (label, the step_flops entries counted, the timing key the phase's seconds come from, what is counted)
PHASE_FLOP_ROWS = (
    ("rollout", ("rollout",), "rollout", "generation: 2·P·(prompt+response) forward"),
    ("actor logprobs", ("actor_logprobs",), "actor_logprobs", "2·P·(prompt+response) forward"),
    ("reference", ("ref",), "ref", "2·P·(prompt+response) forward"),
    ("critic values", ("critic",), "critic", "2·Pc·(prompt+response) forward"),
    ("reward", ("reward",), "reward", "2·Pr·(tokens read) forward"),
    ("scoring (wall)", ("actor_logprobs", "ref", "critic", "reward"), "scoring",
     "the four scoring passes over the phase's wall time"),
    ("actor update", ("actor_update",), "actor_update", "6·P·(prompt+response)·epochs fwd+bwd"),
    ("critic update", ("critic_update",), "critic_update", "6·Pc·(prompt+response)·epochs fwd+bwd"),
    ("update (wall)", ("actor_update", "critic_update"), "update", "both updates over the phase's wall time"),
    ("whole step", ("total",), "step", "everything above over the step's wall time"),
)


def phase_flop_rates(flops: dict, secs: dict, peak_tflops: Optional[float]) -> list[dict]:
    """Per phase of a step: its model FLOPs (from :func:`step_flops`), its mean seconds (a
    ``STEP_PHASES`` timing), the achieved rate in TFLOP/s and its share of ``peak_tflops``.
    A phase with no FLOPs or no time (absent on this config, e.g. no critic pass with a head
    critic) gets ``tflops``/``share`` None; every ``share`` is None without a peak (None: the
    compute dtype has no fast path, :class:`MatmulPeak`)."""
    out = []
    for label, keys, timing, what in PHASE_FLOP_ROWS:
        f = float(sum(flops.get(k, 0) for k in keys))
        t = float(secs.get(timing, 0.0) or 0.0)
        rate = f / t / 1e12 if f > 0 and t > 0 else None
        out.append({"phase": label, "flops": f, "seconds": t, "tflops": rate,
                    "share": rate / peak_tflops if rate is not None and peak_tflops else None,
                    "counted": what})
    return out


def format_phase_flop_rates(rows: list[dict], peak: MatmulPeak) -> list[str]:
    lines = [f"  {'phase':<16}{'GFLOP':>10}{'s':>9}{'GFLOP/s':>10}{'% of peak':>11}   counted",
             "  " + "-" * 78]
    for r in rows:
        rate = f"{r['tflops'] * 1e3:>10.4g}" if r["tflops"] is not None else f"{'-':>10}"
        share = f"{100 * r['share']:>10.1f}%" if r["share"] is not None else f"{'-':>11}"
        lines.append(f"  {r['phase']:<16}{r['flops'] / 1e9:>10.1f}{r['seconds']:>9.3f}{rate}{share}   {r['counted']}")
    lines.append(f"  (peak: {peak.describe()}; P, Pc, Pr = "
                 "actor, critic, reward parameters; attention's sequence-length term left out)")
    return lines


def achieved_line(label: str, total_flops: float, secs: float, peak: MatmulPeak) -> str:
    """One mode's whole-step rate, its share of the matmul peak and the floor at that peak; on a
    dtype without a fast path, the rate and why there is no share."""
    rate = total_flops / secs / 1e12
    if peak.share_of is None:
        return f"  {label:<7} {rate:.3f} TFLOP/s achieved; {peak.describe()}"
    return (f"  {label:<7} {rate:.3f} TFLOP/s achieved = {100 * rate / peak.share_of:.1f}% "
            f"of the {peak.tflops:.3f} TFLOP/s {peak.dtype} matmul peak; floor at that peak "
            f"{total_flops / 1e12 / peak.share_of:.2f}s")


def _phase_means(rows: list[MetricsRow], skip: int) -> dict:
    use = rows[skip:] or rows
    return {k: statistics.mean(r.timings.get(k, 0.0) for r in use) for k in STEP_PHASES}


def peak_rss_by_worker(rows: list[MetricsRow]) -> dict[str, float]:
    """Each worker process's peak resident memory (MB) over the run, from the metrics' memory
    reports (``peak_rss_mb`` is the process's high-water mark, so the largest report is it)."""
    out: dict[str, float] = {}
    for r in rows:
        for label, st in r.memory.items():
            if "peak_rss_mb" in st:
                out[label] = max(out.get(label, 0.0), float(st["peak_rss_mb"]))
    return out


def peak_rss_sum(rows: list[MetricsRow]) -> float:
    """The run's peak resident memory summed over its worker processes (MB)."""
    return sum(peak_rss_by_worker(rows).values())


def _dispatch_overhead(rows: list[MetricsRow], skip: int) -> float:
    """Per step, the wall time of the scoring and update phases beyond the slowest role's own
    compute time in them: what moving tensors and dispatching calls cost (mean over steps)."""
    use = rows[skip:] or rows
    out = []
    for r in use:
        t = r.timings
        score_roles = max(t.get(k, 0.0) for k in ("actor_logprobs", "ref", "critic", "reward"))
        upd_roles = max(t.get("actor_update", 0.0), t.get("critic_update", 0.0))
        out.append(max(0.0, t.get("scoring", 0.0) - score_roles) + max(0.0, t.get("update", 0.0) - upd_roles))
    return statistics.mean(out) if out else 0.0


def _run_multiprocess(cfg, steps: int, backend: str | None = None, label: str = "multi") -> list[MetricsRow]:
    """The real runtime (supervisor + role workers) for ``steps`` steps; ``backend`` overrides
    ``runtime.backend`` (local worker processes or Ray actors)."""
    import tempfile
    from dataclasses import replace

    from engine.client import create_run_dir, run_here

    with tempfile.TemporaryDirectory(prefix="rlhfc-bench-") as tmp:
        cfg = replace(cfg, run=replace(cfg.run, steps=steps, output_dir=tmp, name="bench"),
                      checkpoint=replace(cfg.checkpoint, every=0, on_stop=False),
                      logging=replace(cfg.logging, tensorboard=False, log_dir=None),
                      runtime=replace(cfg.runtime, backend=backend or cfg.runtime.backend))
        rd = create_run_dir(cfg)
        run_here(rd, printer=lambda line: print(f"  [{label}]", line, flush=True))
        info = rd.read_info()
        if info.state != "finished":
            raise RuntimeError(f"the {label} run ended {info.state}: {info.failure}")
        return rd.read_metrics()


def _run_single_process(cfg, steps: int):
    from engine.config import resolve_role_model
    from engine.data import prompt_stream
    from engine.models import count_parameters, load_tokenizer
    from engine.procs import available_cores
    from engine.runtime.driver import (
        InlineEndpoint,
        PPODriver,
        ThreadPlan,
        active_roles,
        format_step_line,
    )
    from engine.runtime.role_base import role_seed
    from engine.runtime.roles import ROLE_CLASSES
    from engine.runtime.supervisor import make_kl_controller

    cores = available_cores()
    torch.set_num_threads(cores)
    torch.manual_seed(role_seed(cfg.run.seed, "actor"))
    roles = {r: ROLE_CLASSES[r](cfg) for r in active_roles(cfg)}
    ep = InlineEndpoint(roles)
    all_cores = {r: cores for r in roles}
    plan = ThreadPlan(generate=dict(all_cores), score=dict(all_cores), update=dict(all_cores))
    tok = load_tokenizer(resolve_role_model(cfg, "actor"))
    stream = prompt_stream(cfg, tok)
    driver = PPODriver(cfg, {r: ep for r in roles}, tok, make_kl_controller(cfg), plan, concurrent=False)
    rows = []
    for s in range(1, steps + 1):
        m, _ = driver.step(s, stream.next_batch())
        rows.append(MetricsRow.from_dict(m))
        print("  [single]", format_step_line(m, steps), flush=True)
    n_reward = 0
    src = getattr(roles["reward"], "source", None)
    model = getattr(src, "model", None)
    if isinstance(model, torch.nn.Module):
        n_reward = count_parameters(model)
    counts = {"policy": count_parameters(roles["actor"].model), "critic": count_parameters(roles["critic"].model),
              "reward": n_reward, "prompt_len": float(tok(stream.prompts[: cfg.rollout.batch_size], return_tensors="pt",
                                                            padding=True)["input_ids"].shape[1])}
    for r in roles.values():
        if hasattr(r, "source"):
            r.source.close()
    del roles
    return rows, counts


def bench_step(args) -> int:
    from engine.config import load_config
    from engine.procs import available_cores
    from engine.runtime.worker import quiet_hf_logging

    overrides = list(args.set or [])
    quiet_hf_logging()
    cfg = load_config(args.config, overrides)
    steps = max(2, args.steps)
    cores = available_cores()
    print(f"step benchmark: {args.config}, {steps} steps each (first step is warm-up and left out), "
          f"{cores} cores, torch {torch.__version__}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ("multi", "local", "ray", "single")]
    if unknown:
        print(f"unknown mode(s) {', '.join(unknown)}; use multi, local, ray, single", file=sys.stderr)
        return 2
    results, counts = _run_step_modes(cfg, modes, steps)
    means = {k: _phase_means(v, 1) for k, v in results.items()}
    disp, tok_rates, peak_rss = _print_step_table(results, means)
    rt_key = next((k for k in ("multi", "ray", "local") if k in means), None)
    _print_step_comparisons(means, disp, rt_key)
    peak, fl = _print_step_flops(cfg, results, means, counts, rt_key)
    if args.json:
        extra = {"phase_flop_rates": {k: phase_flop_rates(fl, means[k], peak.share_of) for k in means}} if counts else {}
        with open(args.json, "w") as f:
            # peak_tflops: the rate shares are taken of, null when the compute dtype has no fast path
            json.dump({"means": means, "tokens_per_s": tok_rates, "peak_tflops": peak.share_of,
                       "matmul_peak": peak.to_json(), "peak_rss_mb": peak_rss, **extra}, f, indent=2)
    return 0


def _run_step_modes(cfg, modes: list[str], steps: int):
    """Each mode's metric rows (mode label -> rows) and, with ``single``, the parameter counts and
    prompt length the FLOP figures need (else None)."""
    results = {}
    if "multi" in modes:  # the runtime as configured: runtime.backend decides local or ray
        label = "ray" if cfg.runtime.backend == "ray" else "multi"
        print(f"multi-process runtime, backend {cfg.runtime.backend} (four role workers, concurrent phases):",
              flush=True)
        results[label] = _run_multiprocess(cfg, steps, label=label)
    for backend in [m for m in modes if m in ("ray", "local")]:  # in the order given
        if backend not in results:
            print(f"multi-process runtime, backend {backend}:", flush=True)
            results[backend] = _run_multiprocess(cfg, steps, backend=backend, label=backend)
    counts = None
    if "single" in modes:
        print("single process, one phase after another (same PPO step, same code):", flush=True)
        results["single"], counts = _run_single_process(cfg, steps)
    return results, counts


def _print_step_table(results: dict, means: dict):
    """The phase-by-mode table, dispatch overhead, tokens/s and peak RSS; returns those three."""
    hdr = f"{'phase':<16}" + "".join(f"{k + ' s':>12}" for k in means)
    print()
    print(hdr)
    print("-" * len(hdr))
    for ph in STEP_PHASES:
        print(f"{ph:<16}" + "".join(f"{means[k][ph]:>12.3f}" for k in means))
    disp = {k: _dispatch_overhead(v, 1) for k, v in results.items() if k != "single"}
    print(f"{'dispatch':<16}" + "".join(f"{disp[k]:>12.3f}" if k in disp else f"{'-':>12}" for k in means)
          + "   (scoring + update wall time minus the slowest role's own time: transport and scheduling)")
    tok_rates = {k: statistics.mean(r["tokens_per_s"] for r in (v[1:] or v)) for k, v in results.items()}
    print(f"{'tokens/s':<16}" + "".join(f"{tok_rates[k]:>12.1f}" for k in means))
    peak_rss = {k: peak_rss_sum(v) for k, v in results.items() if k != "single"}
    if peak_rss:
        print(f"{'peak RSS MB':<16}" + "".join(f"{peak_rss[k]:>12.0f}" if k in peak_rss else f"{'-':>12}"
                                               for k in means)
              + "   (summed over the role workers: " + "; ".join(
                  f"{k} " + ", ".join(f"{w} {mb:.0f}" for w, mb in peak_rss_by_worker(results[k]).items())
                  for k in peak_rss) + ")")
    return disp, tok_rates, peak_rss


def _print_step_comparisons(means: dict, disp: dict, rt_key) -> None:
    """The runtime's speed-up over one process, and Ray's overhead over the local backend."""
    if rt_key and "single" in means:
        print(f"\nspeed-up of the multi-process runtime ({rt_key}) over one process: "
              f"{means['single']['step'] / means[rt_key]['step']:.2f}x per step")
    local_key = "local" if "local" in means else ("multi" if "multi" in means else None)
    if "ray" in means and local_key:
        d = means["ray"]["step"] - means[local_key]["step"]
        print(f"\nRay overhead per step: {d:+.3f}s ({100 * d / means[local_key]['step']:+.1f}%) "
              f"= ray {means['ray']['step']:.3f}s - local {means[local_key]['step']:.3f}s (mean step time); "
              f"dispatch overhead ray {disp['ray']:.3f}s vs local {disp[local_key]:.3f}s per step")


def actor_compute(cfg, phase: str, device=None) -> tuple[str, str]:
    """(weights dtype, autocast) of the actor's ``phase`` under ``cfg`` on this machine, ``auto``
    resolved as the run resolves it (engine.precision: the cached calibration, or a new one)."""
    from engine.precision import role_precision

    rp = role_precision(cfg, "actor", device)
    return rp.dtype, rp.autocast.get(phase, "none")


def update_compute_dtype(cfg) -> str:
    """The dtype the actor's update multiplies in under ``cfg`` on this machine."""
    dtype, ac = actor_compute(cfg, "update")
    return dtype if ac == "none" else ac


def _print_step_flops(cfg, results: dict, means: dict, counts, rt_key):
    """Model FLOPs per step and the achieved share of this machine's matmul peak, per mode and
    per phase (with the parameter counts of a ``single`` run); the peak and the FLOP figures."""
    from engine.models import torch_dtype

    compute = update_compute_dtype(cfg)
    dtype = torch_dtype(compute)
    peak = measure_matmul_peak(dtype)
    fl = None
    if counts is not None:
        rows = results.get(rt_key) if rt_key else results["single"]
        resp = statistics.mean(r["response_len_mean"] for r in rows)
        fl = step_flops(counts["policy"], counts["critic"], counts["reward"], cfg.rollout.batch_size,
                        counts["prompt_len"], resp,
                        resp if cfg.reward.score_text == "response" else counts["prompt_len"] + resp,
                        cfg.ppo.epochs, cfg.rollout.reuse_logprobs)
        print(f"\nmodel FLOPs per step: {fl['total'] / 1e12:.3f} TFLOP "
              f"(policy {counts['policy'] / 1e6:.1f}M, critic {counts['critic'] / 1e6:.1f}M, reward {counts['reward'] / 1e6:.1f}M params; "
              f"prompt {counts['prompt_len']:.0f} + response {resp:.1f} tokens x {cfg.rollout.batch_size})")
        for k in means:
            print(achieved_line(k, fl["total"], means[k]["step"], peak))
        for k in means:  # each phase's rate: the lowest share is the next bottleneck
            print(f"\nFLOP rate per phase, {k} (mean phase seconds after warm-up):")
            for line in format_phase_flop_rates(phase_flop_rates(fl, means[k], peak.share_of), peak):
                print(line)
    elif peak.fast_path:
        print(f"\npeak {compute} matmul rate on this machine: {peak.tflops:.3f} TFLOP/s")
    else:
        print(f"\n{peak.describe()}")
    return peak, fl


def _add_run_args(p, steps: int) -> None:
    """The arguments of a benchmark that runs a config for a few steps per mode."""
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, default=steps, help=f"steps per mode, the first is warm-up (default {steps})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--json", help="also write the figures to this JSON file")


def _register_step(sub) -> None:
    p = sub.add_parser("step", help="PPO step time: multi-process runtime (local or Ray) vs one process, "
                                    "phase by phase")
    _add_run_args(p, 4)
    p.add_argument("--modes", default="multi,single",
                   help="multi (the runtime as configured; --set runtime.backend=ray runs it on Ray), "
                        "local, ray (the runtime on that backend), single (one process); default multi,single. "
                        "With ray and local both measured, the Ray overhead per step is printed")
    p.set_defaults(func=bench_step)


# ----------------------------------------------------------------------------- generate


def bench_generate(args) -> int:
    """Rollout generation alone: transformers' ``model.generate`` (hf) against the project's
    own loop (static), interleaved, on the config's actor, prompts and autocast."""
    import contextlib

    from engine.config import load_config, resolve_role_model
    from engine.data import prompt_stream
    from engine.models import generate, load_policy, load_tokenizer, resolve_device, torch_dtype
    from engine.runtime.worker import quiet_hf_logging

    quiet_hf_logging()
    cfg = load_config(args.config, list(args.set or []))
    if args.threads:
        torch.set_num_threads(int(args.threads))
    src = resolve_role_model(cfg, "actor")
    tok = load_tokenizer(src)
    dev = resolve_device(cfg.actor.device)
    dtype, ac = actor_compute(cfg, "generate", dev)  # auto resolved as the run resolves it
    model = load_policy(src, dtype=dtype, device=str(dev),
                        attn_implementation=cfg.actor.attn_implementation, trainable=True)
    batch = int(args.batch or cfg.rollout.batch_size)
    stream = prompt_stream(cfg, tok)
    prompts = []
    while len(prompts) < batch:
        prompts += stream.next_batch()
    enc = tok(prompts[:batch], return_tensors="pt", padding=True, truncation=True,
              max_length=cfg.data.max_prompt_tokens, add_special_tokens=False)
    ids, am = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
    n = int(args.tokens or cfg.rollout.max_new_tokens)
    r = cfg.rollout

    def amp():
        if ac == "none":
            return contextlib.nullcontext()
        return torch.autocast(device_type=dev.type, dtype=torch_dtype(ac))

    def run(decoder: str, compile_: bool = False):
        with torch.no_grad(), amp():
            # min_new_tokens = n: every row runs all n steps, so both decode the same count
            return generate(model, tok, ids, am, max_new_tokens=n, min_new_tokens=n,
                            temperature=r.temperature, top_k=r.top_k, top_p=r.top_p, do_sample=r.do_sample,
                            generator_seed=0, decoder=decoder, compile=compile_)[0]

    variants = {"hf": lambda: run("hf"), "static": lambda: run("static")}
    if args.compile:
        variants["static+compile"] = lambda: run("static", True)
    print(f"generate benchmark: {src}, batch {batch}, {n} new tokens (prompt {ids.shape[1]} tokens), "
          f"autocast {ac}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{args.repeats} interleaved repeats after a warm-up", flush=True)
    warm = {k: f() for k, f in variants.items()}
    same = {k: bool(torch.equal(warm["hf"], v)) for k, v in warm.items() if k != "hf"}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(max(1, int(args.repeats))):
        for k, f in variants.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["hf"])
    print(f"{'decoder':<16}{'ms/step':>10}{'tokens/s':>10}{'vs hf':>8}  same tokens as hf")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k:<16}{1000 * med / n:>10.1f}{batch * n / med:>10.1f}{base / med:>7.2f}x  "
              f"{'-' if k == 'hf' else ('yes' if same[k] else 'no')}")
    print("(ms/step includes the prefill spread over the steps; median of the repeats)")
    return 0


def _register_generate(sub) -> None:
    p = sub.add_parser("generate", help="rollout generation tokens/s: transformers' generate (hf) vs "
                                        "the project's static-cache loop (static)")
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--batch", type=int, help="prompts (default rollout.batch_size)")
    p.add_argument("--tokens", type=int, help="new tokens per row (default rollout.max_new_tokens)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also time static with torch.compile")
    p.set_defaults(func=bench_generate)


# ----------------------------------------------------------------------------- precision

PRECISION_MODES = {  # label -> the autocast every model role gets
    "auto": "auto", "float32": "none", "bf16": "bfloat16",
}


def bench_precision(args) -> int:
    """The config's step with ``auto`` precision against the fixed choices, in one sitting: the
    multi-process runtime, the same steps, each mode after the other; auto's step over the
    faster fixed one's is the figure the issue's 1.1x target is about."""
    from dataclasses import replace

    from engine.config import load_config
    from engine.precision import cpu_class, machine_identity
    from engine.procs import available_cores
    from engine.runtime.worker import quiet_hf_logging

    quiet_hf_logging()
    cfg = load_config(args.config, list(args.set or []))
    steps = max(2, args.steps)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in PRECISION_MODES]
    if bad:
        print(f"unknown mode(s) {', '.join(bad)}; use {', '.join(PRECISION_MODES)}", file=sys.stderr)
        return 2
    m = machine_identity()
    print(f"precision benchmark: {args.config}, {steps} steps per mode (the first is warm-up and left out), "
          f"{available_cores()} cores, {m['cpu']} ({cpu_class()} class; torch uses {m['capability']}"
          + (f", {' '.join(f'{k}={v}' for k, v in m['isa_env'].items())}" if m["isa_env"] else "") + f"), "
          f"torch {torch.__version__}", flush=True)
    out: dict = {"config": args.config, "steps": steps, "machine": m, "cpu_class": cpu_class(), "modes": {}}
    for mode in modes:
        ac = PRECISION_MODES[mode]
        c = replace(cfg, **{r: replace(getattr(cfg, r), autocast=ac) for r in ("actor", "reference", "critic")})
        print(f"{mode}: every model role's autocast {ac}", flush=True)
        t0 = time.perf_counter()
        rows = _run_multiprocess(c, steps, label=mode)
        use = rows[1:] or rows
        out["modes"][mode] = {"autocast": ac, "step_s": [r.timings.get("step", 0.0) for r in rows],
                              "mean_step_s": statistics.mean(r.timings.get("step", 0.0) for r in use),
                              "phases_s": _phase_means(rows, 1), "wall_s": time.perf_counter() - t0,
                              "score_mean": [r["score_mean"] for r in rows]}
    print()
    print(f"{'mode':<10}{'mean step s':>14}{'generate':>10}{'scoring':>10}{'update':>10}")
    for mode, r in out["modes"].items():
        ph = r["phases_s"]
        print(f"{mode:<10}{r['mean_step_s']:>14.3f}{ph['rollout']:>10.3f}{ph['scoring']:>10.3f}{ph['update']:>10.3f}")
    fixed = {k: v["mean_step_s"] for k, v in out["modes"].items() if k != "auto"}
    if "auto" in out["modes"] and fixed:
        best = min(fixed, key=fixed.get)
        ratio = out["modes"]["auto"]["mean_step_s"] / fixed[best]
        out["auto_over_fastest_fixed"] = {"fastest_fixed": best, "ratio": ratio}
        print(f"\nauto / fastest fixed ({best}): {ratio:.2f}x  (target <= 1.10)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _register_precision(sub) -> None:
    p = sub.add_parser("precision", help="the step with auto precision against forced float32 and forced bf16, "
                                         "in one sitting")
    _add_run_args(p, 3)
    p.add_argument("--modes", default="auto,float32,bf16", help="comma separated: auto, float32, bf16")
    p.set_defaults(func=bench_precision)


REGISTRARS = [_register_transport, _register_step, _register_generate, _register_precision]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.bench", description="rlhf-console benchmarks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(
        r.__name__.removeprefix("_register_") for r in REGISTRARS) + "}")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
