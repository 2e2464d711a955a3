"""The run schema: every section and key with its type, range or choices, default and description.

Each section is a frozen pydantic dataclass; pydantic checks types, ranges and choices, and
:mod:`engine.config.loading` turns its errors into this project's messages (key path, file
line, what was expected, did-you-mean). The reference (docs/configuration.md) is generated
from here, and so are config_to_dict/dump_config.

Adding a key is one line in its section class, e.g.::

    estimator: Annotated[Literal["gae", "grpo"], Lower] = key("gae", "Advantage estimator.")
    n: Int = key(1, "Responses sampled per prompt.", ge=1, le=64)
    audit: Optional[Str] = key(None, "A second scorer; null = none.")

Types: ``Int``, ``Float`` (finite; an integer is accepted), ``Str``, ``Bool`` (YAML values are
taken as written: ``"5"`` is not an integer, ``yes`` is not true); ``Optional[...]`` allows
null; ``tuple[Str, ...]`` is a list; ``dict[Str, Int]`` a mapping; ``Literal[...]`` gives the
choices (``Annotated[Literal[...], Lower]`` also accepts any case). ``ge``/``gt``/``le``/``lt``
give the range. A rule of its own for one value is a :class:`Check` subclass used as
``Annotated[Str, AfterValidator(MyCheck())]`` (its ``doc`` goes in the reference). A nested
mapping (``actor.lora``) is a ``@section`` class used as ``Optional[ThatClass]``; a new
top-level section is a ``@section`` class plus one line in :class:`RunConfig`
(``name: Cls = key(help="...", factory=Cls)``; the presets in configs/ list every section).
Rules that involve more than one key go in :func:`engine.config.checks.cross_checks`. Then
regenerate the reference: ``python -m engine.config --reference > docs/configuration.md``.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Union, get_args, get_origin, get_type_hints

import annotated_types
from pydantic import AfterValidator, AllowInfNan, BeforeValidator, ConfigDict, Field, Strict
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from engine import estimators as _estimators
from engine import sources as _sources
from engine.config.issues import show as _show
from engine.config.issues import suggest as _suggest

ROLES: tuple[str, ...] = ("actor", "reference", "critic", "reward")
MODEL_ROLES: tuple[str, ...] = ("actor", "reference", "critic")   # causal-LM backbones
TRAINED_ROLES: tuple[str, ...] = ("actor", "critic")              # roles with an optimizer
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("eager", "sdpa", "flash_attention_2")
QUANTIZATIONS: tuple[str, ...] = ("none", "8bit", "4bit")

DEFAULT_MODEL = "bundled:smollm2-135m-instruct"
DEFAULT_REWARD = "bundled:minilm-sentiment"
DEFAULT_PROMPTS = "bundled:movie-reviews"

PRESETS_DIR = Path(__file__).resolve().parent.parent.parent / "configs"


# --------------------------------------------------------------------------------------------
# Value types: YAML values are taken as written (no "5" -> 5, no 1 -> true).

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]   # an integer is accepted and converted
Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]


class Check:
    """A rule of its own for one value: ``doc`` is shown in the reference's "allowed" column,
    ``problem(v)`` returns what is wrong (the message after the key path) or None."""

    doc = ""

    def problem(self, v) -> Optional[str]:
        raise NotImplementedError

    def __call__(self, v):
        msg = self.problem(v) if v is not None else None
        if msg:
            raise PydanticCustomError("config", "{message}", {"message": msg})
        return v


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DeviceCheck(Check):
    doc = "auto, cpu, cuda or cuda:N"

    def problem(self, v):
        return None if _DEVICE_RE.match(v) else f"must be auto, cpu, cuda or cuda:N; got {_show(v)}"


class NameCheck(Check):
    doc = "non-empty, no path separators"

    def problem(self, v):
        if not v.strip():
            return "must not be empty"
        if "/" in v or "\\" in v or v in (".", ".."):
            return f"must be a plain name (it becomes part of the run directory name); got {_show(v)}"
        return None


class RegistryChoice(Check):
    """One of the names a registry holds when the value is checked (``names()``), so a name
    registered later (a new estimator) is accepted without touching the schema. The choices
    show in the reference and in the loader's messages like a ``Literal``'s."""

    def __init__(self, names: Callable[[], tuple]):
        self.names = names

    @property
    def doc(self) -> str:
        return ", ".join(self.names())

    def problem(self, v):
        choices = self.names()
        if v in choices:
            return None
        s = _suggest(v, choices) if isinstance(v, str) else None
        return f"must be one of {', '.join(choices)}; got {_show(v)}" + (f" (did you mean '{s}'?)" if s else "")


ESTIMATOR_CHOICE = RegistryChoice(_estimators.names)   # ppo.estimator: engine/estimators.py


class NonEmpty(Check):
    doc = "non-empty"

    def problem(self, v):
        return "must not be empty" if isinstance(v, str) and not v.strip() else None


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


# Normalisers, applied before the type check (``Annotated[Literal[...], Lower]``).
Lower = BeforeValidator(_lower)
DType = Annotated[Literal["float32", "bfloat16", "float16"], BeforeValidator(_norm_dtype)]
RoleDType = Annotated[Literal["auto", "float32", "bfloat16", "float16"], BeforeValidator(_norm_dtype)]
Device = Annotated[Str, BeforeValidator(_lower), AfterValidator(DeviceCheck())]
Source = Annotated[Str, AfterValidator(NonEmpty())]
NonEmptyStr = Annotated[Str, AfterValidator(NonEmpty())]


def key(default: Any = None, help: str = "", *, factory: Optional[Callable[[], Any]] = None,
        **limits) -> Any:
    """A key's default, its one-line description (shown in the reference) and its range
    (``ge``, ``gt``, ``le``, ``lt``)."""
    if factory is not None:
        return Field(default_factory=factory, description=help, **limits)
    return Field(default, description=help, **limits)


# Upper bounds: far above any sensible run, low enough that a typo (1e38, an extra zero run)
# is refused with its line instead of overflowing a float32 or never ending.
MAX_STEPS = 10_000_000
MAX_TOKENS = 131_072
MAX_BATCH = 65_536
MAX_THREADS = 4096
_STEPS = dict(ge=1, le=MAX_STEPS)
_TOKENS = dict(ge=1, le=MAX_TOKENS)
_BATCH = dict(ge=1, le=MAX_BATCH)
_THREADS = dict(ge=1, le=MAX_THREADS)
_LR = dict(gt=0, le=1)        # a learning rate in (0, 1]
_COEF = dict(ge=0, le=100)    # a loss/penalty coefficient in [0, 100]
_UNIT = dict(ge=0, le=1)

section = dataclass(frozen=True, config=ConfigDict(extra="forbid"))


# --------------------------------------------------------------------------------------------
# The schema.

@section
class RunSection:
    """What the run is called, how long it lasts and where its directory goes."""
    name: Annotated[Str, AfterValidator(NameCheck())] = key(
        "default", "Run name; the run directory is <output_dir>/<name>-<yyyymmdd-hhmmss>.")
    seed: Int = key(0, "Seed for torch, Python and the prompt order.", ge=0, le=2**32 - 1)
    steps: Int = key(100, "Number of PPO steps (one rollout batch each).", **_STEPS)
    output_dir: NonEmptyStr = key("runs", "Folder under which run directories are created.")
    description: Str = key("", "Free text shown in the console and stored with the run.")


LORA_TARGETS_DEFAULT = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@section
class LoraSettings:
    """A LoRA adapter (peft) on a trained role: the base weights stay frozen, the adapter trains."""
    r: Int = key(16, "Adapter rank.", ge=1, le=65_536)
    alpha: Float = key(32.0, "Scaling numerator: the adapter's update is scaled by alpha / r.", gt=0, le=1e6)
    dropout: Float = key(0.0, "Dropout on the adapter's input while training (0 keeps training "
                              "log-probs equal to the rollout's, as PPO expects).", ge=0, lt=1)
    target_modules: tuple[Str, ...] = key(LORA_TARGETS_DEFAULT,
                                          "Layers that get an adapter, by the last part of their "
                                          "name (Llama/SmolLM2: q_proj k_proj v_proj o_proj "
                                          "gate_proj up_proj down_proj).")


@section
class RoleConfig:
    """A causal-LM role: actor (trained policy), reference (frozen policy) or critic (value model)."""
    model: Optional[Str] = key(None, "Model source: bundled:NAME, tiny:llama, a local folder or a "
                                     "Hugging Face hub id; null (reference, critic) = the actor's model.")
    dtype: RoleDType = key("float32", "Weights dtype (aliases fp32, bf16, fp16, torch.* accepted); auto = "
                                   "float32, except a frozen reference on a GPU with bf16 (bf16 weights).")
    device: Device = key("auto", "auto (CUDA when visible, else CPU), cpu, cuda or cuda:N.")
    attn_implementation: Annotated[Literal["eager", "sdpa", "flash_attention_2"],
                                   BeforeValidator(_norm_attn)] = key(
        "sdpa", "Attention kernel; flash_attention_2 falls back to sdpa where it cannot run (no "
                "CUDA, float32, flash-attn missing).")
    gradient_checkpointing: Bool = key(False, "Recompute activations in backward to save memory "
                                              "(trained roles only). false on a GPU: on only where "
                                              "the memory plan (engine/runtime/placement.py) finds "
                                              "the role's GPU short of memory without it; the log "
                                              "says so.")
    threads: Optional[Int] = key(None, "torch intra-op threads for this role's worker; null = automatic.",
                                 **_THREADS)
    autocast: Annotated[Literal["auto", "none", "bfloat16", "float16"],
                        BeforeValidator(lambda v: "none" if v is None else _norm_dtype(v))] = key(
        "none", "Mixed precision: run matmuls in this dtype under torch.autocast while weights, "
                "optimizer state and log-probs stay in `dtype` (none = off). auto = measured on this "
                "machine, per phase (generate, score, update): on a CPU bf16 where it times faster "
                "than float32 at the role's shapes (cached per machine), on CUDA bf16 from compute "
                "capability 8.0, else float16 with a gradient scaler (engine/precision.py).")
    world_size: Int = key(1, "Worker processes (ranks) for this role, forming one torch.distributed "
                             "group (gloo on CPU, NCCL on GPU; one GPU per rank). The batch is split "
                             "across ranks and gradients are summed, so an update equals the "
                             "one-process update. The role must not be colocated with another.",
                          ge=1, le=1024)
    strategy: Annotated[Literal["ddp", "fsdp"], Lower] = key(
        "ddp", "How ranks share the model when world_size > 1: ddp = every rank holds the whole "
               "model, gradients are all-reduced; fsdp = parameters, gradients and optimizer state "
               "are sharded over the ranks (torch.distributed.fsdp.fully_shard).")
    reshard_after_forward: Bool = key(True, "fsdp only: free the gathered parameters after each "
                                            "forward (FULL_SHARD); false keeps them until the "
                                            "backward (SHARD_GRAD_OP: less communication, more "
                                            "memory).")
    lora: Optional[LoraSettings] = key(None, "actor, critic: train a LoRA adapter (peft) instead of "
                                             "every weight; null = full fine-tuning. A mapping of "
                                             "the keys below (missing ones take their defaults). "
                                             "With actor.lora and reference.model null the "
                                             "reference is the actor's base with the adapters "
                                             "disabled: no reference worker, no second copy of the "
                                             "weights (the reference's other keys are then unused).")


class TrainableModelCheck(Check):
    """A model the refit can fine-tune or read features from: not a lexicon or a function."""

    doc = "a folder or hub id of a sequence classifier, or bundled:minilm-sentiment"

    def problem(self, v):
        if _sources.parse(v).scheme in ("lexicon", "python"):
            return (f"must be a trainable model (a folder or hub id of a sequence classifier, or "
                    f"bundled:minilm-sentiment); got {_show(v)}")
        return None


@section
class RefitSettings:
    """``reward.refit``: how a refit of the reward from the run's judgements runs and is judged
    (engine/refit.py reads it through ``refit_settings``)."""
    every_labels: Optional[Int] = key(None, "Refit automatically after every N new judgements; null = "
                                            "only on request.", ge=1, le=10**9)
    method: Literal["head", "finetune"] = key(
        "head", "head = a preference head on frozen features added to the base reward, fitted in "
                "seconds (engine/preference.py); finetune = fine-tune the reward model itself.")
    features: Literal["sentence", "sentence+words", "reward", "reward+words", "words"] = key(
        "sentence", "head: what the head reads: sentence (the bundled all-MiniLM-L6-v2's embedding "
                    "of the response), reward (the reward model's last hidden layer), words (hashed "
                    "words and word pairs of the response), or sentence+words, reward+words.")
    weight: Float = key(1.0, "head: the preference's weight in units of the base reward's spread over "
                             "the judged texts (score = base + weight * spread * z, z clipped to +-3).",
                        ge=0, le=100)
    confidence: Float = key(0.9, "Accept a refit only if it agrees with the held-out judgements better "
                                 "than the current reward at this confidence (one-sided sign test).",
                            ge=0.5, le=0.999)
    base: Annotated[Optional[Str], AfterValidator(TrainableModelCheck())] = key(
        None, "The model a refit starts from when the current reward is a lexicon or a function (a "
              "folder or hub id of a sequence classifier); null = bundled:minilm-sentiment.")
    holdout: Float = key(0.25, "finetune: share of the judgements, the newest, held out to evaluate the "
                               "current and the new model (head holds every judgement out once, 5-fold).",
                         ge=0, le=0.9)
    min_judgements: Int = key(4, "A refit needs at least this many judgements.", ge=2, le=10**9)
    mix_ratio: Float = key(2.0, "finetune: rows of the model's original training data mixed in per "
                                "judgement.", ge=0, le=1000)
    original_eval_rows: Int = key(200, "Rows of the original held-out set both models are evaluated on.",
                                  ge=0, le=100_000)
    max_original_drop: Float = key(0.05, "The new model may rank at most this share more of the original "
                                         "held-out set's (positive, negative) pairs wrong than the current.",
                                   ge=0, le=1)
    epochs: Int = key(2, "finetune: passes over the judgements and the mixed-in rows.", ge=1, le=1000)
    lr: Float = key(3e-5, "finetune: learning rate.", ge=1e-12, le=1)
    batch_size: Int = key(16, "finetune: rows per optimizer step.", ge=1, le=100_000)
    nice: Optional[Int] = key(None, "Niceness of the refit process (0-19: higher = lower priority than "
                                    "training); null = 0 for head (seconds of work, a fair share of the "
                                    "cores) and 10 for finetune (minutes of work).", ge=0, le=19)


@section
class RewardConfig:
    """The reward role: a sequence-classification model or a reward function."""
    source: Source = key(DEFAULT_REWARD, "Reward source: bundled:minilm-sentiment, lexicon:vader, "
                                         "python:pkg.mod:function, a local folder or a hub id of a "
                                         "sequence-classification model.")
    dtype: DType = key("float32", "Reward model dtype.")
    device: Device = key("auto", "auto, cpu, cuda or cuda:N.")
    quantization: Annotated[Literal["none", "8bit", "4bit"], BeforeValidator(_norm_quant)] = key(
        "none", "Load the reward model with bitsandbytes k-bit weights (needs CUDA).")
    score_label: Annotated[Union[Int, Str], BeforeValidator(_norm_score_label)] = key(
        1, "Which classifier output is the score: an index or a label name from the model "
           "config's id2label.")
    score_kind: Annotated[Literal["prob", "logit"], Lower] = key(
        "prob", "prob = softmax probability of score_label; logit = its raw logit.")
    score_text: Annotated[Literal["prompt+response", "response"], Lower] = key(
        "prompt+response", "What the reward model reads: prompt+response (the prompt and the "
                           "response as one text) or response (the response alone, so the "
                           "prompt's own sentiment does not move the score).")
    max_length: Int = key(128, "Truncate prompt+response to this many reward-model tokens.", **_TOKENS)
    batch_size: Int = key(32, "Reward-model forward batch size.", **_BATCH)
    threads: Optional[Int] = key(None, "torch intra-op threads for the reward worker; null = automatic.",
                                 **_THREADS)
    audit: Optional[Str] = key(None, "A second, independent scorer that checks the reward "
                                     "(reward-hacking monitors): lexicon:vader or "
                                     "python:pkg.mod:function; scored in the driver every step "
                                     "and recorded as each sample's 'audit'; null = none.")
    refit: Optional[RefitSettings] = key(
        None, "Refitting the reward model from the run's judgements (rlhf-console refit-reward, the "
              "dashboard's R key): a mapping of the keys below (missing ones take their defaults); "
              "null = all defaults. E.g. {every_labels: 20}.")


class ClearFractionCheck(Check):
    doc = "above 0, below 1"

    def problem(self, v):
        if 0 < v < 1:
            return None
        return (f"must be above 0 and below 1: a tripped monitor clears below clear_fraction x its "
                f"threshold, and that clear threshold must be under the threshold; got {_show(v)}")


@section
class MonitorsConfig:
    """Reward-hacking monitors, computed every step (engine/monitors.py). A monitor trips after
    trip_steps steps in a row over its threshold and stays tripped until its value is below
    clear_fraction x the threshold; while tripped it is logged in events.log (when it starts and
    when it clears), recorded in metrics.jsonl ('alerts') and shown on the dashboard with its
    samples; null turns that monitor's warning off."""
    window: Int = key(20, "Steps over which the KL growth rate and the entropy trend are fitted.", ge=2)
    baseline_steps: Int = key(5, "The run's first N steps are the baseline for entropy drop, "
                                 "length drift and divergence.", ge=1)
    ngram: Int = key(3, "Token n-gram size of the repetition monitor.", ge=1)
    trip_steps: Int = key(3, "A monitor trips when its value has been over its threshold on this "
                             "many steps in a row (1: at the first); one noisy step of 8 samples "
                             "raises no warning.", ge=1, le=1000)
    clear_fraction: Annotated[Float, AfterValidator(ClearFractionCheck())] = key(
        0.75, "A tripped monitor stays tripped until its value falls below clear_fraction x its "
              "threshold (e.g. divergence 0.4 -> clears below 0.3), so it does not flap on and off "
              "around the threshold.")
    kl_growth: Optional[Float] = key(0.3, "Warn when the KL grows faster than this (nats per step, "
                                          "the slope over the window; the healthy 300-step default "
                                          "run peaks at 0.24).", gt=0)
    entropy_drop: Optional[Float] = key(0.5, "Warn when the policy's entropy has fallen by more than "
                                             "this share of its baseline.", gt=0, le=1)
    length_drift: Optional[Float] = key(0.5, "Warn when the mean response length moves by more than "
                                             "this share of its baseline (either way).", gt=0)
    repetition: Optional[Float] = key(0.3, "Warn when the batch's mean share of repeated n-grams per "
                                           "response is above this; responses above it are flagged.",
                                      ge=0, lt=1)
    divergence: Optional[Float] = key(0.4, "With reward.audit: warn when more than this share of the "
                                           "samples score above the baseline reward while their audit "
                                           "score is below the baseline audit score; they are flagged.",
                                      ge=0, lt=1)


@section
class DataConfig:
    """Where prompts come from and how they are cut."""
    source: Source = key(DEFAULT_PROMPTS, "Prompt source: bundled:movie-reviews, a hub dataset name "
                                          "or a local .jsonl/.csv/.txt file.")
    split: NonEmptyStr = key("train", "Dataset split (hub datasets).")
    column: NonEmptyStr = key("text", "Column holding the text the prompt is cut from.")
    prompt_words: Int = key(8, "A prompt is the first N words of a row.", ge=1, le=100_000)
    max_prompt_tokens: Int = key(64, "Prompts are truncated to this many tokens.", **_TOKENS)
    num_prompts: Optional[Int] = key(None, "Use only the first N prompts (after shuffling); null = all.",
                                     ge=1, le=10**9)
    chat_template: Bool = key(False, "Wrap each prompt in the tokenizer's chat template.")
    shuffle: Bool = key(True, "Shuffle prompts (seeded by run.seed).")


@section
class RolloutConfig:
    """Generation: how many prompts per step and how responses are sampled."""
    batch_size: Int = key(8, "Prompts per PPO step.", **_BATCH)
    max_new_tokens: Int = key(24, "Maximum response length in tokens.", **_TOKENS)
    min_new_tokens: Int = key(0, "Minimum response length (EOS suppressed before it).",
                              ge=0, le=MAX_TOKENS)
    temperature: Float = key(1.0, "Sampling temperature.", gt=0, le=100)
    top_k: Int = key(0, "Top-k sampling; 0 = off.", ge=0, le=10_000_000)
    top_p: Float = key(1.0, "Nucleus sampling; 1.0 = off.", gt=0, le=1)
    do_sample: Bool = key(True, "Sample (true) or decode greedily (false).")
    n: Int = key(1, "Responses sampled per prompt (in one generate call); the responses to one prompt "
                    "form a group for grpo, dr_grpo, rloo and reinforce_pp_baseline. A step trains on "
                    "rollout.batch_size * rollout.n responses.", ge=1, le=256)
    samples_to_log: Int = key(8, "Rollouts per step written to samples.jsonl.", ge=0, le=MAX_BATCH)
    reuse_logprobs: Bool = key(False, "Take the actor's old log-probs from the generation pass (each "
                                      "sampled token's final hidden state through a float32 LM head) "
                                      "instead of a second forward pass over prompt+response. Equal "
                                      "up to kernel rounding in float32; under 16-bit autocast the "
                                      "cached decoding pass rounds differently from a full pass.")
    decoder: Annotated[Literal["static", "hf"], Lower] = key(
        "hf", "Decoding loop for the rollout: static = the project's own loop (engine/decoding.py: a "
                  "preallocated KV cache, transformers' sampling order, the same tokens as hf for the "
                  "same seed in float32, less overhead per step); hf = transformers' model.generate. "
                  "A model static cannot run (not Llama-family, a LoRA actor, sharded weights) uses hf, "
                  "with a note in the log.")
    compile_decoder: Bool = key(False, "Run each decoding step of rollout.decoder static through "
                                       "torch.compile (one graph over the whole preallocated cache; "
                                       "equal to the eager step up to rounding). A compiler failure is "
                                       "warned about once and decoding goes on eagerly. Off by default: "
                                       "on CPU it did not pay for its compile time.")
    cuda_graph: Annotated[Literal["auto", "on", "off"],
                          BeforeValidator(lambda v: {True: "on", False: "off"}.get(v, v) if isinstance(v, bool)
                                          else _lower(v))] = key(
        "auto", "rollout.decoder static on CUDA: capture the decoding step in a CUDA graph per batch "
                "size (static input/output buffers, replayed every token); auto and on capture on "
                "CUDA, off decodes eagerly. On a CPU there is no graph: the step runs eagerly and the "
                "log says so once. A capture failure is reported once and decoding goes on eagerly.")


@section
class PPOConfig:
    """The PPO update, KL penalty and optimisers."""
    estimator: Annotated[Str, Lower, AfterValidator(ESTIMATOR_CHOICE)] = key(
        "gae", "Advantage estimator: gae (PPO with a critic), grpo, dr_grpo (GRPO without the std "
               "division), rloo, reinforce_pp, reinforce_pp_baseline; all but gae start no critic.")
    kl_in: Annotated[Literal["reward", "loss"], Lower] = key(
        "reward", "Where the KL to the reference goes: reward = a per-token penalty in the reward "
                  "(kl_coef, kl_estimator); loss = a k3 term in the actor loss (kl_loss_coef), as "
                  "GRPO does.")
    kl_loss_coef: Float = key(0.001, "Coefficient of the k3 KL term in the actor loss (ppo.kl_in: loss).", **_COEF)
    loss_agg: Annotated[Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                                "seq-mean-token-sum-norm"], Lower] = key(
        "token-mean", "How the policy loss is averaged: token-mean, seq-mean-token-sum, "
                      "seq-mean-token-mean or seq-mean-token-sum-norm (Dr.GRPO).")
    epochs: Int = key(1, "Passes over each rollout batch.", ge=1, le=1000)
    mini_batch_size: Int = key(8, "Samples per optimizer step; must divide rollout.batch_size * "
                                  "rollout.n.", **_BATCH)
    micro_batch_size: Int = key(8, "Samples per forward/backward (gradient accumulation); must divide "
                                   "mini_batch_size.", **_BATCH)
    micro_batch_tokens: Optional[Int] = key(
        None, "Token budget of one forward (scoring: reference, critic and old log-probs) or "
              "forward/backward (updates): the rows are sorted by length and cut so that rows x "
              "padded length <= this budget, padding columns no row of the micro-batch uses are "
              "dropped, and each micro-batch's loss is weighted by its share of the mini-batch's "
              "tokens (rows for the seq-mean aggregations), so the gradient is the unsplit "
              "mini-batch's. Bounds activation memory at a real batch; null = micro_batch_size "
              "rows. A row longer than the budget is a micro-batch of its own.",
        ge=16, le=10**8)
    clip_low: Float = key(0.2, "Policy ratio clip below: ratio >= 1 - clip_low.", **_UNIT)
    clip_high: Float = key(0.2, "Policy ratio clip above: ratio <= 1 + clip_high.", ge=0, le=100)
    dual_clip_c: Optional[Float] = key(None, "Dual-clip constant c (> 1) for negative advantages; "
                                             "null = off.", gt=1, le=1000)
    value_clip: Float = key(0.2, "Value-function clip range around the old values.", ge=0, le=1e6)
    gamma: Float = key(1.0, "Discount factor.", **_UNIT)
    lam: Float = key(0.95, "GAE lambda.", **_UNIT)
    kl_estimator: Annotated[Literal["k1", "k2", "k3", "abs"], Lower] = key(
        "k1", "KL estimator for the reward penalty.")
    kl_controller: Annotated[Literal["fixed", "adaptive", "pi"], Lower] = key(
        "fixed", "fixed = constant kl_coef; adaptive = adjust towards target_kl after each step "
                 "(Ziegler et al., kl_horizon); pi = a proportional-integral controller on "
                 "ln(kl_coef) driven by ln(KL / target_kl) of the batch being shaped (kl_pi_ki, "
                 "kl_pi_kp, kl_coef_min, kl_coef_max): it holds the KL near target_kl whatever "
                 "the score's scale.")
    kl_coef: Float = key(0.05, "KL penalty coefficient (initial value when adaptive or pi).", **_COEF)
    target_kl: Float = key(6.0, "Target KL per response (the mean over the batch of the summed "
                                "per-token KL, the metric kl) for the adaptive and pi controllers "
                                "(> 0 with either).", le=1e6)
    kl_horizon: Int = key(10000, "Adaptive controller horizon, in samples.", ge=1, le=10**12)
    kl_pi_ki: Float = key(0.5, "pi controller: integral gain, the change of ln(kl_coef) per step per "
                               "unit of ln(KL / target_kl) (clipped to [-1, 1]); until the recent "
                               "KL level (each batch weighted half, the level before the other "
                               "half) first reaches target_kl it releases at a tenth of that rate "
                               "(and not while the KL rises), then as fast as it tightens.",
                          ge=0, le=10)
    kl_pi_kp: Float = key(0.5, "pi controller: proportional gain, ln(kl_coef) of the batch moves by "
                               "kp * ln(KL / target_kl) (clipped to [-1, 1]) on top of the integral.",
                          ge=0, le=10)
    kl_pi_band_gain: Float = key(0.0, "pi controller: above 1.5 * target_kl (the band's upper "
                                      "edge) the error counts this much more, so the coefficient "
                                      "climbs back faster after an overshoot: the integral and the "
                                      "proportional term move by (1 + band_gain) * ln(KL / "
                                      "(1.5 * target_kl)) beyond the usual term; 0 = off.",
                                 ge=0, le=100)
    kl_coef_min: Float = key(1e-4, "pi controller: lower bound of kl_coef.", gt=0, le=100)
    kl_coef_max: Float = key(100.0, "pi controller: upper bound of kl_coef.", gt=0, le=1e6)
    kl_guard: Optional[Float] = key(None, "Stop the actor's update of a batch early when the "
                                          "policy has moved away from the reference: before each "
                                          "optimizer step after a batch's first, the step is skipped "
                                          "and the batch's update ends if the mini-batch's KL to the "
                                          "reference (k1, summed per response, under the weights "
                                          "being trained) is above kl_guard * target_kl and above "
                                          "the same responses' KL at rollout. A multiple of "
                                          "target_kl, e.g. 1.5; null = off. The metric "
                                          "kl_guard_skipped counts the optimizer steps skipped.",
                                   gt=0, le=1000)
    entropy_coef: Float = key(0.0, "Entropy bonus coefficient in the actor loss.", **_COEF)
    vf_coef: Float = key(0.1, "Value loss coefficient.", **_COEF)
    critic_trunk: Annotated[Literal["own", "reference"], Lower] = key(
        "own", "own = the critic is a whole model (critic.model) trained end to end; reference = "
               "the critic is a value head on the frozen reference model's last hidden states, "
               "which the reference's scoring pass already computes, so the critic's forward and "
               "backward through a trunk disappear and its update trains the head alone "
               "(critic.model, dtype and autocast are then unused; give critic_lr a head-sized "
               "value such as 1e-3).")
    actor_lr: Float = key(1e-6, "Actor learning rate (AdamW).", **_LR)
    critic_lr: Float = key(1e-5, "Critic learning rate (AdamW).", **_LR)
    lr_schedule: Annotated[Literal["constant", "linear", "cosine"], Lower] = key(
        "constant", "Learning-rate schedule over run.steps (after warmup).")
    warmup_steps: Int = key(0, "Linear warmup, in PPO steps.", ge=0, le=MAX_STEPS)
    weight_decay: Float = key(0.0, "AdamW weight decay.", ge=0, le=10)
    grad_clip: Float = key(1.0, "Gradient-norm clip (max global norm).", gt=0, le=1e6)
    whiten_advantages: Bool = key(True, "Whiten advantages over the batch (masked).")
    whiten_rewards: Bool = key(False, "Whiten the shaped rewards before GAE.")
    missing_eos_penalty: Optional[Float] = key(None, "Subtracted from the score of responses that "
                                                     "never emit EOS; null = off.", ge=0, le=1e6)


@section
class RuntimeConfig:
    """How roles map onto processes and devices."""
    backend: Annotated[Literal["local", "ray"], Lower] = key(
        "local", "local = worker processes on this host over shared memory; ray = Ray actors.")
    colocate: Union[Bool, tuple[tuple[Str, ...], ...]] = key(
        False, "false = one process per role; true = all roles in one process; or a list of groups, "
               "e.g. [[actor, reference], [critic, reward]], naming every role exactly once.")
    devices: Union[tuple[Str, ...], dict[Str, Union[Str, tuple[Str, ...]]], None] = key(
        None, "Where roles run. A list (e.g. [cuda:0, cuda:1]) = the GPUs the automatic plan may "
              "use; a mapping role -> device (e.g. {actor: cuda:0, critic: cuda:0, reference: "
              "cuda:1, reward: cuda:1}; a list of devices, one per rank, for a role with "
              "world_size > 1) pins roles, the others are planned; null = plan over all visible "
              "GPUs. The plan puts roles on the GPU with the most memory left, largest role first, "
              "and is printed in events.log and by --dry-run.")
    threads: Optional[dict[Str, Int]] = key(None, "Mapping role -> torch threads (e.g. {actor: 2}); "
                                                  "null = split the cores automatically.")
    cuda_ipc: Bool = key(True, "Pass GPU-resident outputs (the reference's hidden states for a "
                               "critic_trunk=reference critic) between processes as CUDA IPC handles "
                               "instead of copying them through host shared memory; false = always "
                               "through host memory. No effect on CPU.")
    worker_timeout_s: Float = key(
        600.0, "Seconds one role call of a training step (generate, log-probs, values, score, "
               "update, memory report) may take; past it the run fails naming the role, the "
               "operation and the timeout, and every process and shared-memory segment is cleaned "
               "up. Not covered: loading the roles (downloads, conversion, reward-model training "
               "on first use), checkpoint save/load and a reward swap, which take as long as they "
               "need.", ge=1, le=7 * 24 * 3600)
    ray_address: Optional[Str] = key(None, "backend ray: null = start a local Ray instance sized to "
                                           "this machine and stop it with the run; auto or HOST:PORT "
                                           "= join that running cluster (left running).")
    ray_resources: Optional[dict[Str, dict[Str, Float]]] = key(
        None, "backend ray: custom Ray resources a role's actor needs, which places it on the nodes "
              "that offer them (e.g. {actor: {node_a: 1}, reward: {node_b: 1}}); null = none.")


@section
class LoggingConfig:
    """Where logs and TensorBoard events go."""
    log_dir: Optional[Str] = key(None, "Folder that holds the run directories (the headless "
                                       "--log-dir sets it); overrides run.output_dir; null = "
                                       "run.output_dir.")
    tensorboard: Bool = key(True, "Write TensorBoard event files.")
    tensorboard_dir: Optional[Str] = key(None, "TensorBoard folder; null = <run dir>/tensorboard.")
    print_every: Int = key(1, "Print the step line on the terminal every N steps (headless mode; "
                              "the last step is always printed); events.log gets every step.", ge=1)


@section
class CheckpointConfig:
    """Checkpoints of actor, critic, optimizers and RNG state."""
    every: Int = key(50, "Checkpoint every N steps; 0 = only on stop.", ge=0)
    keep_last: Int = key(3, "Keep the newest N checkpoints (older ones are deleted).", ge=1)
    dir: Optional[Str] = key(None, "Folder for checkpoints: they go to <dir>/<run dir name>/step_N "
                                   "(resume finds them there); null = <run dir>/checkpoints.")
    on_stop: Bool = key(True, "Write a checkpoint when the run is stopped.")


@section
class EvalConfig:
    """Held-out evaluation (prompt sources with a held-out split, e.g. bundled:arithmetic)."""
    every: Int = key(0, "Evaluate on the held-out split every N steps (and before the first and "
                        "after the last), greedy; 0 = off. Logged to metrics.jsonl as "
                        "heldout_accuracy / heldout_score.", ge=0)
    num_prompts: Int = key(64, "Held-out prompts per evaluation.", ge=1, le=100_000)


@section
class RunConfig:
    """A whole run. ``notices`` and ``source_file`` are set by the loader and ignored by ==."""
    run: RunSection = key(help="Run name, length, seed, output folder.", factory=RunSection)
    actor: RoleConfig = key(help="The trained policy.", factory=lambda: RoleConfig(model=DEFAULT_MODEL))
    reference: RoleConfig = key(help="The frozen reference policy (model null = copy of the actor).",
                                factory=RoleConfig)
    critic: RoleConfig = key(help="The value model (model null = the actor's backbone with a value head).",
                             factory=RoleConfig)
    reward: RewardConfig = key(help="The reward model or function.", factory=RewardConfig)
    data: DataConfig = key(help="Prompts.", factory=DataConfig)
    rollout: RolloutConfig = key(help="Generation.", factory=RolloutConfig)
    ppo: PPOConfig = key(help="PPO update and KL penalty.", factory=PPOConfig)
    eval: EvalConfig = key(help="Held-out evaluation.", factory=EvalConfig)
    runtime: RuntimeConfig = key(help="Processes and devices.", factory=RuntimeConfig)
    logging: LoggingConfig = key(help="Logs and TensorBoard.", factory=LoggingConfig)
    checkpoint: CheckpointConfig = key(help="Checkpoints.", factory=CheckpointConfig)
    monitors: MonitorsConfig = key(help="Reward-hacking monitors and their thresholds.", factory=MonitorsConfig)
    notices: tuple = dataclasses.field(default=(), compare=False, repr=False)
    source_file: Optional[str] = dataclasses.field(default=None, compare=False, repr=False)


_INTERNAL = ("notices", "source_file")


# --------------------------------------------------------------------------------------------
# Reading the schema (the loader's messages and the reference use these).

@dataclasses.dataclass(frozen=True)
class KeySpec:
    """One key of a section: its name, plain type (``int``, ``Optional[str]``, ...), default,
    description, choices (for ``Literal`` keys) and the allowed range or rule, in words."""
    name: str
    type: Any
    default: Any
    help: str
    choices: Optional[tuple] = None
    allowed: str = ""
    section_cls: Optional[type] = None


@dataclasses.dataclass(frozen=True)
class SectionSpec:
    name: str
    cls: type
    help: str


@functools.lru_cache(maxsize=None)
def hints(cls) -> dict:
    """Type hints with the pydantic annotations stripped (``Int`` -> ``int``)."""
    return get_type_hints(cls)


def range_doc(lo=None, hi=None, lo_open=False, hi_open=False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


def _limits_doc(metadata) -> str:
    lo = hi = None
    lo_open = hi_open = False
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, annotated_types.Le):
            hi = m.le
        elif isinstance(m, annotated_types.Lt):
            hi, hi_open = m.lt, True
    return range_doc(lo, hi, lo_open, hi_open)


def _check_doc(metadata) -> str:
    """The ``doc`` of a :class:`Check` among a key's validators."""
    for m in metadata:
        func = getattr(m, "func", None)
        if isinstance(func, Check) and func.doc:
            return func.doc
    return ""


def _choices(tp, metadata=()) -> Optional[tuple]:
    if getattr(tp, "__origin__", None) is Literal or type(tp).__name__ == "_LiteralGenericAlias":
        return tuple(get_args(tp))
    for m in metadata:     # a RegistryChoice: the names registered now
        if isinstance(getattr(m, "func", None), RegistryChoice):
            return tuple(m.func.names())
    return None


@functools.lru_cache(maxsize=None)
def section_keys(cls) -> tuple[KeySpec, ...]:
    """Every public key of a section (or of RunConfig: its sections), in schema order."""
    out = []
    h = hints(cls)
    for name, fi in cls.__pydantic_fields__.items():
        if name in _INTERNAL:
            continue
        default = fi.default_factory() if fi.default_factory is not None else fi.default
        choices = _choices(h[name], fi.metadata)
        allowed = _limits_doc(fi.metadata) or _check_doc(fi.metadata)
        out.append(KeySpec(name, h[name], default, fi.description or "", choices, allowed, cls))
    return tuple(out)


def sections() -> tuple[KeySpec, ...]:
    """The sections of a run config, in schema order (``.name``, ``.type`` = the section class,
    ``.help``)."""
    return section_keys(RunConfig)


def subsection_cls(tp) -> Optional[type]:
    """The section class of a key that is a nested section (``Optional[LoraSettings]``), else None."""
    args = get_args(tp) if get_origin(tp) is Union else (tp,)
    found = [a for a in args if dataclasses.is_dataclass(a)]
    return found[0] if found else None


def section_cls(sec: KeySpec) -> type:
    return sec.type


def key_spec(path: tuple) -> Optional[KeySpec]:
    """The KeySpec of ``(section, key)``, or None."""
    if len(path) < 2:
        return None
    sec = next((s for s in sections() if s.name == path[0]), None)
    if sec is None:
        return None
    return next((k for k in section_keys(sec.type) if k.name == path[1]), None)


# --------------------------------------------------------------------------------------------
# Helpers for the runtime: reading a loaded config.

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


def critic_free(cfg: RunConfig) -> bool:
    """True when ppo.estimator needs no critic (engine/estimators.py): no critic process is started."""
    return not _estimators.needs_critic(cfg.ppo.estimator)


def reference_in_actor(cfg: RunConfig) -> bool:
    """A LoRA actor (``actor.lora``) whose reference is its own base (``reference.model: null``):
    the actor answers the reference's log-probs (and hidden states) with its adapters disabled,
    so no reference worker is started and no second copy of the weights exists."""
    return getattr(cfg.actor, "lora", None) is not None and cfg.reference.model is None


def active_roles(cfg: RunConfig) -> tuple[str, ...]:
    """The roles that get a worker (process, rank or Ray actor) in this run, in ROLES order: no
    reference worker for a LoRA actor that is its own reference, no critic for a critic-free
    estimator (``ppo.estimator`` other than gae)."""
    skip = {"reference"} if reference_in_actor(cfg) else set()
    if critic_free(cfg):
        skip.add("critic")
    return tuple(r for r in ROLES if r not in skip)


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


def role_device_request(cfg: RunConfig, role: str) -> str:
    """Where a role was asked to run before planning: ``<role>.device`` or its entry in a
    ``runtime.devices`` mapping (the first rank's), else 'auto' restricted to a devices list."""
    devs = cfg.runtime.devices
    if isinstance(devs, dict) and role in devs:
        d = devs[role]
        return d if isinstance(d, str) else (d[0] if d else "auto")
    return role_config(cfg, role).device
