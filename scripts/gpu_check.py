"""The GPU checks of issue 9, in one run: ``scripts/gpu_check.sh [OUT_DIR]``.

On a machine with CUDA GPUs (no hub needed; the SmolLM2 tokenizer comes from the asset cache,
see docs/performance.md) it runs ``configs/qwen2-0.5b-random.yaml`` — Qwen2-0.5B's shape with
random weights — for 3 PPO steps in each of these shapes:

1. ``plan``      every role on ``cuda``: the automatic device plan spreads them over the GPUs;
2. ``ipc-on``    the critic as a value head on the reference's hidden states
                 (``ppo.critic_trunk=reference``, the one large tensor that travels between
                 processes) with ``runtime.cuda_ipc=true``;
3. ``ipc-off``   the same with ``runtime.cuda_ipc=false`` (hidden states through host memory);
4. ``fsdp2``     ``actor.world_size=2, actor.strategy=fsdp`` (only with two GPUs or more).

For each it records the device plan, seconds per step (steps 2-3; step 1 is warm-up), the
torch peak per role from metrics.jsonl and the NVML peak per process (sampled every 0.2 s while
the run lives), and writes ``OUT_DIR/gpu_check.json`` and ``OUT_DIR/gpu_check.md`` (a section to
paste into docs/performance.md). Without a visible CUDA device it says so and exits with 3,
having started nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "configs" / "qwen2-0.5b-random.yaml"
PROMPTS = ["This movie was", "I walked out of the cinema", "The acting in this film", "My friends said the plot",
           "Halfway through the second act", "The soundtrack alone", "I expected a comedy but",
           "Nobody in the theatre", "The director clearly", "After the credits rolled"]


def reward(prompts, responses):
    """The checks' reward function (``python:scripts.gpu_check:reward``): the share of letters
    in a response. No model and no extra package, so nothing but torch and transformers is
    needed on the GPU machine; the figures are about speed and memory, not learning."""
    return [sum(c.isalpha() for c in r) / max(1, len(r)) for r in responses]


def cuda_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0


class NvmlPeaks:
    """Peak GPU memory per pid (NVML's per-process figure), sampled in a thread."""

    def __init__(self, period: float = 0.2):
        self.period, self.peaks, self.why = period, {}, None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
        except Exception as e:  # noqa: BLE001
            self.nv, self.why = None, f"NVML unavailable: {e}"
        self._t = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        if self.nv:
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.nv:
            self._t.join(2)

    def _loop(self):
        nv = self.nv
        handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
        while not self._stop.is_set():
            for i, h in enumerate(handles):
                try:
                    procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
                except Exception:  # noqa: BLE001
                    continue
                for p in procs:
                    mb = (p.usedGpuMemory or 0) / 2**20
                    key = (p.pid, i)
                    self.peaks[key] = max(self.peaks.get(key, 0.0), mb)
            self._stop.wait(self.period)


def run_shape(name: str, overrides: list[str], out: Path, runs: Path) -> dict:
    from engine.client import launch

    base = [f"run.output_dir={runs}", f"run.name={name}", f"data.source={out / 'prompts.txt'}",
            "data.num_prompts=64", "reward.source=python:scripts.gpu_check:reward"]
    t0 = time.time()
    with NvmlPeaks() as nvml:
        run = launch(PRESET, base + overrides)
        state = run.wait(timeout=900)
    info = run.dir.read_info()
    metrics = run.dir.read_metrics()
    res = {"shape": name, "overrides": overrides, "state": state, "failure": info.failure,
           "wall_s": round(time.time() - t0, 1), "devices": info.devices, "pids": info.pids}
    later = [m for m in metrics if m.step > 1]
    if later:
        res["s_per_step"] = round(sum(m.timing("step") or 0.0 for m in later) / len(later), 3)
        res["phases"] = {k: round(sum(m.timings.get(k, 0.0) for m in later) / len(later), 3)
                         for k in ("rollout", "scoring", "update")}
    if metrics:
        res["torch_peak_mb"] = {lbl: v.get("gpu_peak_mb") for lbl, v in metrics[-1].memory.items()}
    pid_label = {p: lbl for lbl, p in (info.pids or {}).items()}
    res["nvml_peak_mb"] = {f"{pid_label.get(pid, pid)}@cuda:{i}": round(mb) for (pid, i), mb in nvml.peaks.items()
                           if pid in pid_label or pid == info.supervisor_pid} if nvml.nv else nvml.why
    return res


def markdown(results: list[dict], gpus: int) -> str:
    import torch

    names = [torch.cuda.get_device_name(i) for i in range(gpus)]
    lines = [f"## On GPUs ({gpus} x {', '.join(sorted(set(names)))})", "",
             f"`scripts/gpu_check.sh` ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}); "
             f"configs/qwen2-0.5b-random.yaml, 3 steps per shape, seconds per step over steps 2-3.", "",
             "| shape | device plan | s/step | rollout | scoring | update | NVML peak MB per process |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        plan = "; ".join(f"{k}: {', '.join(v)}" for k, v in (r.get("devices") or {}).items())
        nv = r.get("nvml_peak_mb")
        nv = ", ".join(f"{k} {v}" for k, v in nv.items()) if isinstance(nv, dict) else str(nv)
        ph = r.get("phases") or {}
        if r["state"] != "finished":
            lines.append(f"| {r['shape']} | {plan} | failed: {r.get('failure')} | | | | {nv} |")
            continue
        lines.append(f"| {r['shape']} | {plan} | {r.get('s_per_step')} | {ph.get('rollout')} | "
                     f"{ph.get('scoring')} | {ph.get('update')} | {nv} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.sh")
    ap.add_argument("out", nargs="?", default="gpu-check")
    ap.add_argument("--only", action="append", help="run only these shapes (plan, ipc-on, ipc-off, fsdp2)")
    ap.add_argument("--runs-dir", help="where the run directories go (default OUT_DIR/runs)")
    a = ap.parse_args(argv)
    gpus = cuda_gpus()
    if gpus == 0:
        print("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); "
              "nothing was run. Run this on a machine with NVIDIA GPUs.", file=sys.stderr)
        return 3
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompts.txt").write_text("\n".join(PROMPTS * 7) + "\n")
    shapes = [("plan", []),
              ("ipc-on", ["ppo.critic_trunk=reference", "ppo.critic_lr=1e-3", "runtime.cuda_ipc=true"]),
              ("ipc-off", ["ppo.critic_trunk=reference", "ppo.critic_lr=1e-3", "runtime.cuda_ipc=false"])]
    if gpus >= 2:
        shapes.append(("fsdp2", ["actor.world_size=2", "actor.strategy=fsdp"]))
    else:
        print("gpu_check: one GPU: the fsdp2 shape (actor.world_size=2) needs two; skipped")
    results = []
    for name, ov in shapes:
        if a.only and name not in a.only:
            continue
        print(f"gpu_check: {name} {' '.join(ov)}", flush=True)
        r = run_shape(name, ov, out, Path(a.runs_dir).resolve() if a.runs_dir else out / "runs")
        print(json.dumps(r), flush=True)
        results.append(r)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    md = markdown(results, gpus)
    (out / "gpu_check.md").write_text(md)
    print(md)
    return 0 if all(r["state"] == "finished" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
