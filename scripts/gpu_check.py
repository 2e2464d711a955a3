"""The device check of issue 24, in one run on one H100/H200: ``scripts/gpu_check.sh [OUT_DIR]``.

Writes its raw outputs to ``OUT_DIR`` (default ``docs/results/gpu-<yyyymmdd>/``): ``stdout.log``
(everything printed), ``bench.json`` (every part's figures), each run's ``events.log`` and
``metrics.jsonl`` under ``runs/<name>/``, ``nvidia-smi-peak.txt`` (``nvidia-smi -q`` taken when
the GPU's memory in use was highest) and ``files.txt`` (what was written). The parts:

a. ``preset``   configs/gpu-0.5b.yaml for 5 steps (all four roles on the GPU: the reward is a
                randomly initialised ~DeBERTa-base-sized classifier built here): seconds per
                step, generated tokens/s, phase times, the achieved FLOP rate against the
                GPU's bf16 peak, NVML's peak per role;
b. ``console``  the console attached headless to that live run (Textual's ``run_test``), its
                screen saved to ``screenshots/gpu-dashboard.svg``;
c. ``reward4``  that reward model in 4-bit through bitsandbytes (when importable) scored next to
                bf16 on the same texts;
d. ``equal``    CUDA IPC on/off give the same first step; the CUDA-graph decoding step gives
                the eager step's greedy tokens;
e. ``versions`` torch, CUDA, the driver, transformers.

Every part says what it skipped and why and never stops the others; the exit code is 0 when no
part failed (skips are not failures), 1 otherwise, 3 with no CUDA device (nothing run).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "configs" / "gpu-0.5b.yaml"
PROMPTS = ["This movie was", "I walked out of the cinema", "The acting in this film", "My friends said the plot",
           "Halfway through the second act", "The soundtrack alone", "I expected a comedy but",
           "Nobody in the theatre", "The director clearly", "After the credits rolled"]

# dense bf16 tensor-core peaks in TFLOP/s (no sparsity), from NVIDIA's data sheets: H100 SXM5
# 989.4 and H100 PCIe 756 ("NVIDIA H100 Tensor Core GPU" datasheet), H200 989
# ("NVIDIA H200 Tensor Core GPU" datasheet: the same compute as H100 SXM), A100 312 ("NVIDIA
# A100 Tensor Core GPU" datasheet). Matched on torch.cuda.get_device_name().
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "A100": 312.0}


class Skip(Exception):
    """A part that cannot run here: its message is the one-line reason."""


def peak_tflops(device_name: str) -> Optional[float]:
    """The dense bf16 peak of a GPU named ``device_name`` (longest matching key), or None."""
    for k in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if k.lower() in device_name.lower():
            return BF16_PEAK_TFLOPS[k]
    return None


def flop_rate(params: float, tokens: float, seconds: float, *, train: bool,
              peak: Optional[float] = None) -> dict:
    """Achieved FLOP rate of a transformer pass over ``tokens`` tokens with ``params``
    parameters: 2 FLOPs per parameter and token forward, 6 with the backward (Kaplan et al.
    2020's approximation, attention's quadratic term left out). ``{"tflops", "share"}``, the
    share of ``peak`` TFLOP/s or None without one."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    tf = (6 if train else 2) * params * tokens / seconds / 1e12
    return {"tflops": round(tf, 2), "share": round(tf / peak, 4) if peak else None}


class Results:
    """The output folder: every file written through it is listed in ``files.txt``."""

    def __init__(self, folder: Path):
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: list[str] = []

    def write(self, name: str, text: str) -> Path:
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        self._add(name)
        return p

    def copy_run(self, run_dir: Path, name: str) -> list[str]:
        """events.log and metrics.jsonl (and run.json) of a run, under ``runs/<name>/``."""
        got = []
        for f in ("events.log", "metrics.jsonl", "run.json"):
            src = Path(run_dir) / f
            if src.is_file():
                dst = self.dir / "runs" / name / f
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                self._add(f"runs/{name}/{f}")
                got.append(f)
        return got

    def _add(self, name: str) -> None:
        if name not in self.files:
            self.files.append(name)
        (self.dir / "files.txt").write_text("\n".join(self.files) + "\n")


class Log:
    """Prints and keeps every line (stdout.log)."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, msg: str) -> None:
        print(msg, flush=True)
        self.lines.append(msg)


def run_part(name: str, fn: Callable[[], dict], log: Log) -> dict:
    """One part: ``{"part", "status": ok|skipped|failed, "result" or "reason"}``; a
    :class:`Skip` or any exception is reported in one line and never raised."""
    t0 = time.time()
    try:
        res = fn()
        log(f"gpu_check: {name}: ok ({time.time() - t0:.1f} s)")
        return {"part": name, "status": "ok", "result": res, "wall_s": round(time.time() - t0, 1)}
    except Skip as e:
        log(f"gpu_check: {name}: skipped: {e}")
        return {"part": name, "status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - a failed part is reported; the others still run
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        log(f"gpu_check: {name}: failed: {msg}")
        return {"part": name, "status": "failed", "reason": msg}


def cuda_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0


def exit_code(parts: list[dict]) -> int:
    return 1 if any(p["status"] == "failed" for p in parts) else 0


# ---------------------------------------------------------------------------- NVML sampling

class NvmlPeaks:
    """Peak GPU memory per pid (NVML), sampled in a thread; ``nvidia-smi -q`` is saved each time
    the GPU's total in use passes its previous peak by 5% (at most every 5 s)."""

    def __init__(self, period: float = 0.2):
        self.period, self.peaks, self.why = period, {}, None
        self.smi: Optional[str] = None
        self._top, self._smi_at = 0.0, 0.0
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
        except Exception as e:  # noqa: BLE001
            self.nv, self.why = None, f"NVML unavailable ({type(e).__name__}: {e})"
        self._t = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        if self.nv:
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.nv:
            self._t.join(5)

    def _loop(self):
        nv = self.nv
        handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
        while not self._stop.is_set():
            total = 0.0
            for i, h in enumerate(handles):
                try:
                    total += nv.nvmlDeviceGetMemoryInfo(h).used / 2**20
                    procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
                except Exception:  # noqa: BLE001
                    continue
                for p in procs:
                    mb = (p.usedGpuMemory or 0) / 2**20
                    self.peaks[(p.pid, i)] = max(self.peaks.get((p.pid, i), 0.0), mb)
            if total > self._top * 1.05 and time.time() - self._smi_at > 5 and shutil.which("nvidia-smi"):
                self._top, self._smi_at = total, time.time()
                try:
                    self.smi = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True,
                                              timeout=20).stdout
                except Exception:  # noqa: BLE001
                    pass
            self._stop.wait(self.period)


# ---------------------------------------------------------------------------- parts

def versions() -> dict:
    import torch
    import transformers

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
           "python": sys.version.split()[0], "gpu": torch.cuda.get_device_name(0),
           "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}
    try:
        import pynvml

        pynvml.nvmlInit()
        d = pynvml.nvmlSystemGetDriverVersion()
        out["driver"] = d.decode() if isinstance(d, bytes) else d
    except Exception as e:  # noqa: BLE001
        out["driver"] = f"unknown (NVML: {type(e).__name__})"
    for mod in ("bitsandbytes", "textual", "pynvml"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            out[mod] = f"not importable ({type(e).__name__})"
    return out


def build_reward_model(folder: Path) -> Path:
    """A randomly initialised Llama sequence classifier about DeBERTa-v3-base's size (12 layers,
    hidden 768, 1 output) with the actor's tokenizer, saved to ``folder``: a GPU reward model
    that needs no hub."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from engine.models import load_tokenizer

    if (folder / "config.json").is_file():
        return folder
    tok = load_tokenizer("tiny:qwen2-0.5b")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=12, num_labels=1,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def preset_run(res: Results, rm: Path, log: Log, state: dict, steps: int = 5) -> dict:
    import torch

    from engine.client import launch
    from engine.config import load_config
    from engine.runtime.placement import _KNOWN_PARAMS

    runs = res.dir / "runs-live"
    ov = [f"run.output_dir={runs}", "run.name=preset", f"run.steps={steps}", f"reward.source={rm}",
          "reward.device=cuda", "reward.dtype=bfloat16", "reward.score_kind=logit", "reward.score_label=0"]
    cfg = load_config(PRESET, ov)
    t0 = time.time()
    with NvmlPeaks() as nvml:
        run = launch(PRESET, ov)
        state["run"] = run
        st = run.wait(timeout=420)
    info, metrics = run.dir.read_info(), run.dir.read_metrics()
    res.copy_run(run.dir.path, "preset")
    if nvml.smi:
        res.write("nvidia-smi-peak.txt", nvml.smi)
    out = {"state": st, "failure": info.failure, "wall_s": round(time.time() - t0, 1), "devices": info.devices}
    later = [m for m in metrics if m.step > 1] or metrics
    if later:
        s = sum(m.timing("step") or 0.0 for m in later) / len(later)
        out["s_per_step"] = round(s, 3)
        out["phases"] = {k: round(sum(m.timings.get(k, 0.0) for m in later) / len(later), 3)
                         for k in sorted({k for m in later for k in m.timings})}
        ntok = cfg.rollout.batch_size * cfg.rollout.max_new_tokens  # min_new_tokens = max: full length
        roll = out["phases"].get("rollout")
        if roll:
            out["generated_tokens_per_s"] = round(ntok / roll, 1)
        peak = peak_tflops(torch.cuda.get_device_name(0))
        n = _KNOWN_PARAMS["tiny:qwen2-0.5b"]
        seq_tokens = cfg.rollout.batch_size * (cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens)
        upd = out["phases"].get("update")
        if upd:  # actor and critic each train on every token once per epoch
            out["update_flops"] = flop_rate(2 * n, seq_tokens * cfg.ppo.epochs, upd, train=True, peak=peak)
        out["bf16_peak_tflops"] = peak
    out["torch_peak_mb"] = {lbl: v.get("gpu_peak_mb") for lbl, v in metrics[-1].memory.items()} if metrics else None
    pid_label = {p: lbl for lbl, p in (info.pids or {}).items()}
    out["nvml_peak_mb"] = {f"{pid_label.get(pid, pid)}@cuda:{i}": round(mb) for (pid, i), mb in nvml.peaks.items()} \
        if nvml.nv else nvml.why
    return out


def console_shot(res: Results, state: dict, log: Log) -> dict:
    """Waits for the preset's run to exist and finish a step, then attaches the console."""
    try:
        import textual
        del textual
    except Exception as e:
        raise Skip(f"textual is not importable ({type(e).__name__}); no screenshot") from e
    from console.app import ConsoleApp

    t_end = time.time() + 300
    while time.time() < t_end and ("run" not in state or not state["run"].dir.read_metrics()):
        time.sleep(1)
    if "run" not in state:
        raise Skip("the preset run never started")
    run = state["run"]

    async def shoot() -> str:
        app = ConsoleApp("attach", run=run.dir.path,
                         runs_dir=res.dir / "runs-live")
        async with app.run_test(size=(160, 48)) as pilot:
            for _ in range(10):  # a few seconds of live frames: the GPU pane polls NVML
                await pilot.pause(0.5)
            return app.export_screenshot(title="rlhf-console on a GPU")

    svg = asyncio.run(shoot())
    dst = ROOT / "screenshots" / "gpu-dashboard.svg"
    dst.write_text(svg)
    res.write("gpu-dashboard.svg", svg)
    return {"screenshot": str(dst.relative_to(ROOT)), "nvml_in_screen": "MiB" in svg or "GB" in svg}


def reward_4bit(rm: Path) -> dict:
    try:
        import bitsandbytes
        del bitsandbytes
    except Exception as e:
        raise Skip(f"bitsandbytes is not importable here ({type(e).__name__}: {e})") from e
    from engine.rewards import build_reward

    prompts = PROMPTS[:8]
    responses = [" a wonderful film", " dull and far too long", " I laughed", " the worst", " fine",
                 " a quiet masterpiece", " never again", " it was ok"]
    out = {}
    for q in ("none", "4bit"):
        r = build_reward(str(rm), device="cuda", dtype="bfloat16", quantization=q, score_kind="logit",
                         score_label=0)
        out[q] = [round(float(x), 4) for x in r(prompts, responses)]
    diff = [abs(a - b) for a, b in zip(out["none"], out["4bit"])]
    return {"bf16": out["none"], "nf4": out["4bit"], "max_abs_diff": round(max(diff), 4)}


def equalities(res: Results) -> dict:
    import torch

    from engine import decoding as D
    from engine.client import launch
    from engine.models import generate, load_policy, load_tokenizer

    out = {}
    tok = load_tokenizer("tiny:qwen2-0.5b")
    m = load_policy("tiny:qwen2-0.5b", trainable=False, device="cuda", dtype="bfloat16")
    enc = tok(PROMPTS[:8] * 4, return_tensors="pt", padding=True)
    ids, am = enc["input_ids"].cuda(), enc["attention_mask"].cuda()
    kw = dict(max_new_tokens=64, decoder="static", do_sample=False)
    eager = generate(m, tok, ids, am, cuda_graph="off", **kw)[0]
    graph = generate(m, tok, ids, am, cuda_graph="on", **kw)[0]
    captured = bool(D._GRAPHS.get(m)) and all(s.graph is not None for s in D._GRAPHS[m].values())
    same = int((graph == eager).all(1).sum())
    out["cuda_graph"] = {"captured": captured, "rows_equal": f"{same}/{len(ids)}",
                         "tokens_equal": bool(torch.equal(graph, eager))}
    # timing of both, the same call
    for name, mode in (("eager", "off"), ("graph", "on")):
        torch.cuda.synchronize()
        t = time.time()
        generate(m, tok, ids, am, cuda_graph=mode, **kw)
        torch.cuda.synchronize()
        out["cuda_graph"][f"{name}_tokens_per_s"] = round(len(ids) * 64 / (time.time() - t), 1)
    del m
    torch.cuda.empty_cache()
    firsts = {}
    for ipc in ("true", "false"):
        ov = [f"run.output_dir={res.dir / 'runs-live'}", f"run.name=ipc-{ipc}", "run.steps=1",
              "rollout.batch_size=16", "rollout.max_new_tokens=16", "rollout.min_new_tokens=16",
              "ppo.mini_batch_size=16", "ppo.critic_trunk=reference", "ppo.critic_lr=1e-3",
              f"runtime.cuda_ipc={ipc}", "reward.source=python:scripts.gpu_check:reward"]
        run = launch(PRESET, ov)
        st = run.wait(timeout=240)
        res.copy_run(run.dir.path, f"ipc-{ipc}")
        mets = run.dir.read_metrics()
        if st != "finished" or not mets:
            raise RuntimeError(f"ipc {ipc}: run {st}: {run.dir.read_info().failure}")
        firsts[ipc] = {k: v for k, v in mets[0].values.items() if isinstance(v, (int, float))}
    keys = sorted(set(firsts["true"]) & set(firsts["false"]))
    diff = {k: abs(firsts["true"][k] - firsts["false"][k]) for k in keys}
    out["cuda_ipc"] = {"stats_compared": len(keys), "max_abs_diff": max(diff.values()) if diff else None,
                       "equal": all(v == 0 for v in diff.values())}
    return out


def reward(prompts, responses):
    """The IPC runs' reward (``python:scripts.gpu_check:reward``): the share of letters in a
    response; no model, so the runs compare the roles alone."""
    return [sum(c.isalpha() for c in r) / max(1, len(r)) for r in responses]


# ---------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.sh")
    ap.add_argument("out", nargs="?", default=None, help="default docs/results/gpu-<yyyymmdd>")
    ap.add_argument("--only", action="append", help="run only these parts (versions, preset, console, "
                                                    "reward4, equal)")
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args(argv)
    if cuda_gpus() == 0:
        print("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); "
              "nothing was run. Run this on a machine with an NVIDIA GPU.", file=sys.stderr)
        return 3
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(a.out or ROOT / "docs" / "results" / f"gpu-{time.strftime('%Y%m%d')}").resolve()
    res, log = Results(out), Log()

    def want(part: str) -> bool:
        return not a.only or part in a.only

    parts: list[dict] = []
    state: dict = {}
    if want("versions"):
        parts.append(run_part("versions", versions, log))
    rm_box: dict = {}

    def rm() -> Path:
        if "p" not in rm_box:
            rm_box["p"] = build_reward_model(out / "reward-model")
        return rm_box["p"]

    shot: dict = {}
    if want("console") and want("preset"):
        th = threading.Thread(target=lambda: shot.update(run_part("console", lambda: console_shot(res, state, log), log)),
                              daemon=True)
        th.start()
    else:
        th = None
    if want("preset"):
        parts.append(run_part("preset", lambda: preset_run(res, rm(), log, state, a.steps), log))
    elif want("console"):
        parts.append(run_part("console", lambda: (_ for _ in ()).throw(Skip("needs the preset part's live run")), log))
    if th is not None:
        th.join(60)
        parts.append(shot or {"part": "console", "status": "failed", "reason": "did not finish in time"})
    if want("reward4"):
        parts.append(run_part("reward4", lambda: reward_4bit(rm()), log))
    if want("equal"):
        parts.append(run_part("equal", lambda: equalities(res), log))
    shutil.rmtree(out / "reward-model", ignore_errors=True)  # rebuilt from a seed; not evidence
    res.write("bench.json", json.dumps(parts, indent=1, default=str))
    res.write("stdout.log", "\n".join(log.lines) + "\n")
    return exit_code(parts)


if __name__ == "__main__":
    sys.exit(main())
