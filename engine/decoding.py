"""The rollout's own decoding loop: a preallocated (static) KV cache and sampling without the
generic ``model.generate`` machinery.

``model.generate`` spends most of a decoding step at small batch on CPU in per-step overhead
(input preparation, mask building, cache bookkeeping, output capture, logits processors
rebuilt as objects) rather than in arithmetic. :func:`decode` runs the prefill once through
the model's own trunk, copies its keys and values into buffers sized for the whole response,
and then runs each step directly on the model's weights: RMSNorm, the q/k/v projections,
rotary embedding, attention over a view of the cache, the MLP, the final norm and the LM
head, with the same operations in the same order as transformers' Llama code, so float32
results are the same bits and sampled tokens are the same tokens for the same seed.

Sampling follows transformers' order: EOS suppressed while fewer than ``min_new_tokens``
tokens exist, then temperature, top-k, top-p, then ``torch.multinomial`` on the softmax
(one draw per row per step, finished rows included, as transformers draws) or argmax.

Models: Llama-family causal LMs (``LlamaForCausalLM``, ``Qwen2ForCausalLM`` without
sliding-window layers) with a SiLU-gated MLP. :func:`unsupported_reason` says why another
model (GPT-2, a peft-wrapped LoRA model, a sharded model) cannot be decoded here; the caller
then uses ``model.generate``.

``compile=True`` runs each step through ``torch.compile`` (full static length, a float mask,
one graph for every step); a compiler failure is reported once and the step runs eagerly.
The compiled step attends over the whole preallocated cache, so it is equal to the eager
step only up to rounding.

``cuda_graph`` ("auto"/"on" on a CUDA device) captures that same fixed-shape step once per
(model, batch size, cache length) in a ``torch.cuda.CUDAGraph`` over static buffers (tokens,
positions, the cache slot, the mask and the KV cache, kept between rollouts), and replays it
every token: one launch instead of hundreds of small kernels. Weights are read in place, so
optimizer updates are seen; a 16-bit copy made for autocast is refreshed before each rollout.
Sampling stays outside the graph. Off a CUDA device the step runs eagerly
(:func:`cuda_graph_note` says so once); a capture failure is warned about once and decoding
goes on eagerly. The end of decoding is checked on the host every step on a CPU (cheap, and the
RNG then draws exactly as before) and every :data:`SYNC_EVERY` steps on CUDA: the rows'
finished mask and the count of steps that had a live row stay on the device, and the steps run
after every row had ended are cut from the output (their draws still advance the CUDA RNG).

:class:`RolloutEngine` is the interface a rollout engine gives (:class:`StaticEngine` here;
``model.generate`` in engine/models.py); another engine (e.g. vLLM) would be a second class.
"""
from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

import torch
import torch.nn.functional as F

_SUPPORTED = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


def unsupported_reason(model) -> Optional[str]:
    """``None`` when :func:`decode` can run ``model``; else why not (one sentence)."""
    name = type(model).__name__
    if name not in _SUPPORTED:
        return f"{name} is not a Llama-family causal LM (supported: {', '.join(sorted(_SUPPORTED))})"
    cfg = model.config
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"{name} uses hidden_act={cfg.hidden_act!r}, not silu"
    kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"} or getattr(cfg, "use_sliding_window", False):
        return f"{name} has sliding-window attention layers"
    impl = getattr(cfg, "_attn_implementation", "sdpa")
    if impl not in ("sdpa", "eager"):
        return f"{name} uses attn_implementation={impl!r} (sdpa or eager only)"
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
        return f"{name} does not have the layout model.layers / model.rotary_emb / lm_head"
    for p in model.parameters():
        if type(p) is not torch.nn.Parameter and type(p) is not torch.Tensor:
            return f"{name} has {type(p).__name__} parameters (sharded or quantised)"
        break
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        for mod in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                    mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            if type(mod) is not torch.nn.Linear:
                return f"{name} has {type(mod).__name__} projections (LoRA or quantised layers)"
        if mlp.forward.__func__ is not type(mlp).forward or \
                type(mlp).__name__ not in ("LlamaMLP", "Qwen2MLP"):
            return f"{name} has an MLP of type {type(mlp).__name__}"
    if model._forward_hooks or model._forward_pre_hooks:
        return f"{name} has forward hooks"
    return None


# ----------------------------------------------------------------------------------- sampling

def process_scores(scores: torch.Tensor, *, step: int, min_new_tokens: int,
                   eos_mask: torch.Tensor, sample: bool, temperature: float, top_k: int,
                   top_p: float) -> torch.Tensor:
    """Float32 next-token scores ``[B, V]`` after the processors transformers applies, in its
    order: EOS to -inf while ``step < min_new_tokens``; when sampling, logits / temperature
    (unless 1), top-k (unless 0), top-p (unless 1)."""
    if step < min_new_tokens:
        scores = torch.where(eos_mask, -math.inf, scores)
    if not sample:
        return scores
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        k = min(int(top_k), scores.shape[-1])
        kth = torch.topk(scores, k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        cum = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= (1 - top_p)
        drop_sorted[..., -1:] = False  # the most likely token always stays
        drop = drop_sorted.scatter(1, order, drop_sorted)
        scores = scores.masked_fill(drop, -math.inf)
    return scores


def pick_tokens(scores: torch.Tensor, sample: bool) -> torch.Tensor:
    """One token per row: a multinomial draw from softmax(scores), or the argmax."""
    if sample:
        return torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)
    return torch.argmax(scores, dim=-1)


# ----------------------------------------------------------------------------------- weights

class _Proj:
    """One projection's weight and bias for the decoding step: plain (``F.linear``) or, for a
    bf16 copy on CPU, prepacked once into oneDNN's blocked layout for small batches
    (``torch.ops.mkldnn._reorder_linear_weight``). The packed matmul gives the same bits as
    ``F.linear`` on the 16-bit weight (both run oneDNN's bf16 kernel; the same values were
    checked for 1-280 rows), without re-laying out the weight on every call: one decoding step
    of SmolLM2-135M's matmuls at batch 8 took 26.0 ms plain and 18.7 ms packed on the 2-core
    development machine."""

    __slots__ = ("weight", "bias", "packed")

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], packed: Optional[torch.Tensor] = None):
        self.weight, self.bias, self.packed = weight, bias, packed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x.to(self.packed.dtype), self.packed, self.bias,
                                                      "none", [], "")
        return F.linear(x, self.weight, self.bias)


# set False to turn prepacking off (the tests compare both); a platform where oneDNN cannot
# pack, or where the packed matmul does not give the plain one's bits, sets it False on the
# first try, with a warning
PACK = True
_PROBED = False


def _probe() -> None:
    """Once per process: pack a small bf16 weight and check that the packed matmul gives the
    same bits as ``F.linear`` (so an internal op that changed or is missing turns packing off
    instead of failing a rollout)."""
    global PACK, _PROBED
    _PROBED = True
    try:
        if not torch.backends.mkldnn.is_available():
            raise RuntimeError("oneDNN is not available")
        g = torch.Generator().manual_seed(0)
        w = torch.randn(24, 40, generator=g).to(torch.bfloat16)
        x = torch.randn(3, 2, 40, generator=g).to(torch.bfloat16)
        got = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 2), None,
                                                 "none", [], "")
        if not torch.equal(got, F.linear(x, w)):
            raise RuntimeError("the packed matmul does not give the plain matmul's bits")
    except Exception as e:  # noqa: BLE001 - any failure of the internal ops means: do not pack
        PACK = False
        warnings.warn(f"decoding: oneDNN weight prepacking is unavailable here ({e!r}); "
                      f"the decoding step uses plain matmuls", RuntimeWarning, stacklevel=3)


def packing_available() -> bool:
    """Whether bf16 weights are prepacked for oneDNN here (:func:`_probe` runs on first use)."""
    if PACK and not _PROBED:
        _probe()
    return PACK


def _pack(w: torch.Tensor, rows: int) -> Optional[torch.Tensor]:
    """``w`` in oneDNN's layout for ``rows``-row inputs, or None where that is unavailable:
    not a 16-bit CPU tensor, or packing is off (:func:`packing_available`)."""
    if w.device.type != "cpu" or w.dtype != torch.bfloat16:
        return None
    return torch.ops.mkldnn._reorder_linear_weight(w, int(rows)) if packing_available() else None


@contextlib.contextmanager
def _projections_from(model, layers: list["_Layer"]):
    """While inside, each of ``model``'s layer projections that has a packed copy in
    ``layers`` runs on it (an instance ``forward``), so a pass through the model's own trunk
    uses the packed weights; the modules are restored on exit, whatever happens."""
    patched = []
    try:
        for layer, L in zip(model.model.layers, layers):
            a, m = layer.self_attn, layer.mlp
            for mod, proj in ((a.q_proj, L.q), (a.k_proj, L.k), (a.v_proj, L.v), (a.o_proj, L.o),
                              (m.gate_proj, L.gate), (m.up_proj, L.up), (m.down_proj, L.down)):
                if proj.packed is not None:
                    mod.forward = proj
                    patched.append(mod)
        yield
    finally:
        for mod in patched:
            del mod.forward


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln1_eps: float
    q: _Proj
    k: _Proj
    v: _Proj
    o: _Proj
    ln2: torch.Tensor
    ln2_eps: float
    gate: _Proj
    up: _Proj
    down: _Proj


def _proj(mod: torch.nn.Linear, cast: Optional[torch.dtype], rows: int) -> _Proj:
    """``mod``'s weight and bias; with ``cast``, as a copy in that dtype (what autocast would
    make of them on every call, made once), prepacked for ``rows``-row inputs where
    :func:`_pack` can (``rows`` 0: never)."""
    w, b = mod.weight, getattr(mod, "bias", None)
    if cast is not None and w.dtype != cast:
        w = w.detach().to(cast)
        b = None if b is None else b.detach().to(cast)
        packed = _pack(w, rows) if rows else None
        if packed is not None:
            return _Proj(None, b, packed)  # the packed copy replaces the 16-bit one
    return _Proj(w, b)


def _layers(model, cast: Optional[torch.dtype] = None, rows: int = 0) -> list[_Layer]:
    """The weights of each layer, each projection as :func:`_proj` makes it."""
    def _lin(mod: torch.nn.Linear) -> _Proj:
        return _proj(mod, cast, rows)

    out = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        out.append(_Layer(layer.input_layernorm.weight, float(layer.input_layernorm.variance_epsilon),
                          _lin(a.q_proj), _lin(a.k_proj), _lin(a.v_proj), _lin(a.o_proj),
                          layer.post_attention_layernorm.weight,
                          float(layer.post_attention_layernorm.variance_epsilon),
                          _lin(m.gate_proj), _lin(m.up_proj), _lin(m.down_proj)))
    return out


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.to(torch.float32)
    var = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(var + eps)
    return weight * x.to(dtype)


def _half_turn(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class _Stepper:
    """One decoding step of a Llama-family model on a static cache."""

    def __init__(self, model, layers: list[_Layer], k_cache: list[torch.Tensor],
                 v_cache: list[torch.Tensor]):
        cfg = model.config
        self.layers = layers
        self.k_cache, self.v_cache = k_cache, v_cache
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.scale = self.head_dim ** -0.5
        self.embed = model.model.embed_tokens.weight
        self.norm = model.model.norm.weight
        self.norm_eps = float(model.model.norm.variance_epsilon)
        self.rotary = model.model.rotary_emb

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, length: int,
                 mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``tokens [B]`` at ``positions [B]`` written into cache slot ``length - 1``; returns
        the post-norm hidden state ``[B, H]``. ``mask`` is ``[B, 1, 1, length]`` bool (True =
        attend) or None when no row has padding (every slot is attended)."""
        B = tokens.shape[0]
        x = F.embedding(tokens[:, None], self.embed)                      # [B, 1, H]
        cos, sin = self.rotary(x, positions[:, None])                      # [B, 1, D]
        cos, sin = cos[:, None], sin[:, None]                              # [B, 1, 1, D]
        slot = length - 1
        n_rep = self.n_heads // self.n_kv
        for i, L in enumerate(self.layers):
            q, k, v = self._qkv(L, x, cos, sin)
            kc, vc = self.k_cache[i], self.v_cache[i]
            kc[:, :, slot:slot + 1] = k
            vc[:, :, slot:slot + 1] = v
            keys, values = kc[:, :, :length], vc[:, :, :length]
            if n_rep == 1:
                att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale)
            elif mask is None:
                att = F.scaled_dot_product_attention(q, keys, values, scale=self.scale, enable_gqa=True)
            else:  # one query token: the heads sharing a kv head become that head's queries
                att = F.scaled_dot_product_attention(q.reshape(B, self.n_kv, n_rep, self.head_dim),
                                                     keys, values, attn_mask=mask, scale=self.scale)
            att = att.reshape(B, -1, 1, self.head_dim).transpose(1, 2).contiguous()
            att = L.o(att.reshape(B, 1, -1).contiguous())
            x = x + att
            h = _rms(x, L.ln2, L.ln2_eps)
            h = L.down(F.silu(L.gate(h)) * L.up(h))
            x = x + h
        return _rms(x, self.norm, self.norm_eps)[:, 0]

    def _qkv(self, L, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """One layer's query, key and value for the single new token of ``x [B, 1, H]``,
        ``[B, heads, 1, head_dim]`` each, rotary applied to the query and the key."""
        B = x.shape[0]
        h = _rms(x, L.ln1, L.ln1_eps)
        q = L.q(h).view(B, 1, -1, self.head_dim).transpose(1, 2)
        k = L.k(h).view(B, 1, -1, self.head_dim).transpose(1, 2)
        v = L.v(h).view(B, 1, -1, self.head_dim).transpose(1, 2)
        return q * cos + _half_turn(q) * sin, k * cos + _half_turn(k) * sin, v

    def fixed(self, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor,
              mask: torch.Tensor, k_cache: list[torch.Tensor], v_cache: list[torch.Tensor]) -> torch.Tensor:
        """The step with every shape fixed, for ``torch.compile``: the token goes into cache
        slot ``slot`` (a one-element long tensor) and attention runs over the whole cache under
        ``mask [B, 1, 1, T]`` (bool, True = attend), so one graph serves every step."""
        B = tokens.shape[0]
        x = F.embedding(tokens[:, None], self.embed)
        cos, sin = self.rotary(x, positions[:, None])
        cos, sin = cos[:, None], sin[:, None]
        n_rep = self.n_heads // self.n_kv
        for i, L in enumerate(self.layers):
            q, k, v = self._qkv(L, x, cos, sin)
            k_cache[i].index_copy_(2, slot, k.to(k_cache[i].dtype))
            v_cache[i].index_copy_(2, slot, v.to(v_cache[i].dtype))
            att = F.scaled_dot_product_attention(q.reshape(B, self.n_kv, n_rep, self.head_dim),
                                                 k_cache[i], v_cache[i], attn_mask=mask, scale=self.scale)
            att = att.reshape(B, 1, -1)
            x = x + L.o(att)
            h = _rms(x, L.ln2, L.ln2_eps)
            x = x + L.down(F.silu(L.gate(h)) * L.up(h))
        return _rms(x, self.norm, self.norm_eps)[:, 0]


# one compiled step per model (weights are read from the live modules, so updates are seen);
# a model whose compilation failed decodes eagerly from then on
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_COMPILE_FAILED: "weakref.WeakSet" = weakref.WeakSet()


def _compiled_step(model):
    fn = _COMPILED.get(model)
    if fn is None:
        stepper = _Stepper(model, _layers(model), [], [])
        fn = torch.compile(stepper.fixed, dynamic=False)
        _COMPILED[model] = fn
    return fn


# ----------------------------------------------------------------------------------- CUDA graph

# host check for "every row has ended" every this many steps on CUDA (every step on a CPU)
SYNC_EVERY = 16
# ... and every this many on a CPU (1: the RNG draws exactly as before; tests set more)
_CHECK_EVERY_CPU = 1
# tests set this True to run the static-buffer (graph) path eagerly on a CPU, with no capture
_STATIC_BUFFERS_WITHOUT_CUDA = False
_GRAPHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_GRAPH_FAILED: "weakref.WeakSet" = weakref.WeakSet()
_NOTED: set = set()


def cuda_graph_note(mode: str, device) -> Optional[str]:
    """One line saying whether ``rollout.cuda_graph`` ``mode`` captures on ``device``, or None
    when it is off: what the actor prints once at start."""
    if mode == "off":
        return None
    if torch.device(device).type != "cuda":
        return (f"rollout.cuda_graph {mode}: no CUDA device here ({torch.device(device).type}); "
                f"the decoding step runs eagerly")
    return f"rollout.cuda_graph {mode}: the decoding step is captured in a CUDA graph per batch size"


class _StaticStep:
    """The fixed-shape decoding step (:meth:`_Stepper.fixed`) over buffers that live as long as
    the model: on CUDA captured once in a graph and replayed, else (tests) run eagerly."""

    def __init__(self, model, layers: list[_Layer], B: int, total: int, like_k: list[torch.Tensor],
                 like_v: list[torch.Tensor], device: torch.device, capture: bool):
        self.layers = layers
        self.k = [k.new_zeros(B, k.shape[1], total, k.shape[3]) for k in like_k]
        self.v = [v.new_zeros(B, v.shape[1], total, v.shape[3]) for v in like_v]
        self.tokens = torch.zeros(B, dtype=torch.long, device=device)
        self.pos = torch.zeros(B, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.mask = torch.zeros(B, 1, 1, total, dtype=torch.bool, device=device)
        self.stepper = _Stepper(model, layers, self.k, self.v)
        self.graph = None
        self.out: Optional[torch.Tensor] = None
        if capture:
            self._capture(device)

    def _body(self) -> torch.Tensor:
        return self.stepper.fixed(self.tokens, self.pos, self.slot, self.mask, self.k, self.v)

    def _capture(self, device: torch.device) -> None:
        self.mask[..., 0] = True  # warm-up and capture attend to one (zero) slot: finite values
        amp = torch.is_autocast_enabled("cuda")
        ctx = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False) \
            if amp else contextlib.nullcontext()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), ctx:
            for _ in range(2):  # warm-up: kernels chosen and workspaces allocated outside capture
                self._body()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), ctx:
            self.out = self._body()
        self.graph = graph

    def refresh(self, model) -> None:
        """Copy the live weights into the 16-bit copies the step reads (none: nothing to do)."""
        for layer, L in zip(model.model.layers, self.layers):
            a, m = layer.self_attn, layer.mlp
            for mod, proj in ((a.q_proj, L.q), (a.k_proj, L.k), (a.v_proj, L.v), (a.o_proj, L.o),
                              (m.gate_proj, L.gate), (m.up_proj, L.up), (m.down_proj, L.down)):
                if proj.weight is not None and proj.weight is not mod.weight:
                    proj.weight.copy_(mod.weight)
                    if proj.bias is not None:
                        proj.bias.copy_(mod.bias)

    def start(self, k_pre: list[torch.Tensor], v_pre: list[torch.Tensor], prompt_mask: torch.Tensor) -> None:
        """A new rollout: the prefill's keys and values in the first ``P`` slots, zeros after."""
        P = prompt_mask.shape[1]
        for kc, vc, k, v in zip(self.k, self.v, k_pre, v_pre):
            kc[:, :, :P].copy_(k)
            vc[:, :, :P].copy_(v)
            kc[:, :, P:].zero_()
            vc[:, :, P:].zero_()
        self.mask.zero_()
        self.mask[:, 0, 0, :P] = prompt_mask.bool()

    def __call__(self, tokens: torch.Tensor, pos: torch.Tensor, slot: int) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.pos.copy_(pos)
        self.slot.fill_(slot)
        self.mask[:, 0, 0, slot] = True  # a slot opens when it is written
        if self.graph is None:
            return self._body()
        self.graph.replay()
        return self.out.clone()  # the graph's output buffer is overwritten by the next replay


def _static_step(model, layers, B: int, total: int, k_pre, v_pre, cast, device) -> Optional[_StaticStep]:
    """The model's step for (B, total) (made and, on CUDA, captured on first use), or None
    where capture failed once for this model (warned)."""
    if model in _GRAPH_FAILED:
        return None
    per = _GRAPHS.setdefault(model, {})
    key = (B, total, k_pre[0].dtype, cast, device)
    st = per.get(key)
    if st is not None:
        st.refresh(model)
        return st
    try:
        st = _StaticStep(model, layers, B, total, k_pre, v_pre, device, capture=device.type == "cuda")
    except Exception as err:  # noqa: BLE001 - an op that cannot be captured: eager from now on
        _GRAPH_FAILED.add(model)
        warnings.warn(f"CUDA graph capture of the decoding step failed ({type(err).__name__}: "
                      f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}); "
                      f"decoding eagerly", RuntimeWarning, stacklevel=3)
        return None
    per[key] = st
    return st


# ----------------------------------------------------------------------------------- decode

def _autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The 16-bit dtype autocast runs matmuls in on ``device`` now, or None when it is off."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


@torch.no_grad()
def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, eos_ids: Sequence[int],
           pad_id: int, max_new_tokens: int, min_new_tokens: int = 0, sample: bool = True,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           return_hidden: bool = False, compile: bool = False, cuda_graph: str = "off",
           low_precision_copy: bool = True, on_token: Optional[Callable[[int], None]] = None):
    """Decode left-padded prompts ``[B, P]``: ``(tokens [B, R], hidden [B, R, H] or None)``.

    ``tokens`` holds ``pad_id`` after a row's first EOS; ``R`` is the number of steps run
    (``max_new_tokens``, or fewer when every row has ended). ``hidden`` (with
    ``return_hidden``) is the float32 post-norm hidden state that produced each token.
    ``compile`` runs the steps through :func:`torch.compile`; ``cuda_graph`` ("auto", "on",
    "off") replays them from a CUDA graph on a CUDA device (see the module docstring).
    The model must be in eval mode; randomness comes from torch's global RNG. Check
    :func:`unsupported_reason` first. ``on_token(k)`` is called after each step (k tokens so
    far): the progress of a long rollout.
    """
    B, P = input_ids.shape
    dev = input_ids.device
    attention_mask = attention_mask.to(dev)
    padded = not bool((attention_mask == 1).all())
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
    eos_t = torch.tensor(list(eos_ids), device=dev)
    vocab = model.lm_head.weight.shape[0]
    eos_mask = torch.isin(torch.arange(vocab, device=dev), eos_t)
    cast = _autocast_dtype(dev) if low_precision_copy else None
    layers = _layers(model, cast, rows=B)
    hidden, advance = _prefill(model, layers, input_ids, attention_mask, positions, padded, cast,
                               max_new_tokens, compile, cuda_graph)
    head = _proj(model.lm_head, cast, B)
    pos = positions[:, -1]
    unfinished = torch.ones(B, dtype=torch.bool, device=dev)
    pad = torch.tensor(int(pad_id), device=dev)
    tokens, hiddens = [], []
    length = P
    # steps that began with a live row, counted on the device; the host looks every
    # `check_every` steps (every step on a CPU, so the RNG draws exactly as it always did)
    live_steps = torch.zeros((), dtype=torch.long, device=dev)
    check_every = _CHECK_EVERY_CPU if dev.type == "cpu" else SYNC_EVERY
    for t in range(int(max_new_tokens)):
        logits = head(hidden).to(dtype=torch.float32)
        scores = process_scores(logits, step=t, min_new_tokens=int(min_new_tokens), eos_mask=eos_mask,
                                sample=sample, temperature=float(temperature), top_k=int(top_k or 0),
                                top_p=float(top_p))
        nxt = pick_tokens(scores, sample)
        nxt = torch.where(unfinished, nxt, pad)
        tokens.append(nxt)
        if return_hidden:
            hiddens.append(hidden.float())
        live_steps += unfinished.any()
        unfinished &= ~torch.isin(nxt, eos_t)
        if on_token is not None:
            on_token(t + 1)
        if t + 1 == max_new_tokens or ((t + 1) % check_every == 0 and not bool(unfinished.any())):
            break
        length += 1
        pos = pos + 1
        hidden = advance(nxt, pos, length)
    n = len(tokens) if check_every == 1 else int(live_steps)  # steps after every row ended: cut
    toks = torch.stack(tokens[:n], dim=1)
    return toks, (torch.stack(hiddens[:n], dim=1) if return_hidden else None)


def _prefill(model, layers, input_ids, attention_mask, positions, padded: bool, cast, max_new_tokens: int,
             compile: bool, cuda_graph: str):
    """The prompt's pass through the model's own trunk (the same call transformers makes), its
    projections on the packed copy where there is one (the same bits as autocast's); its keys and
    values then move into buffers that hold the whole response. Returns the last position's
    hidden state and the ``_Advance`` that runs each later step."""
    B, P = input_ids.shape
    dev = input_ids.device
    with _projections_from(model, layers):
        out = model.model(input_ids=input_ids, attention_mask=attention_mask if padded else None,
                          position_ids=positions, use_cache=True)
    hidden = out.last_hidden_state[:, -1]
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    use_compile, use_graph = _step_kind(model, dev, compile, cuda_graph)
    total = P + int(max_new_tokens)
    if use_compile or use_graph:  # cache lengths in steps of 64: one graph serves many prompt lengths
        total = -(-total // 64) * 64
    graph = None
    if use_graph:
        graph = _static_step(model, layers, B, total, [la.keys for la in cache.layers],
                             [la.values for la in cache.layers], cast, dev)
        if graph is not None:
            graph.start([la.keys for la in cache.layers], [la.values for la in cache.layers], attention_mask)
    k_cache, v_cache = [], []
    for layer in (cache.layers if graph is None else []):
        k, v = layer.keys, layer.values
        # zeros, not empty: the compiled step attends over every slot under a mask, and a masked
        # slot's weight of 0 times uninitialised memory that holds NaN is NaN
        kc = k.new_zeros(k.shape[0], k.shape[1], total, k.shape[3])
        vc = v.new_zeros(v.shape[0], v.shape[1], total, v.shape[3])
        kc[:, :, :P] = k
        vc[:, :, :P] = v
        k_cache.append(kc)
        v_cache.append(vc)
    del out, cache
    mask_full = None
    if padded or use_compile:
        mask_full = torch.zeros(B, 1, 1, total, dtype=torch.bool, device=dev)
        mask_full[:, 0, 0, :P] = attention_mask.bool()
        mask_full[:, 0, 0, P:] = not use_compile  # compiled: a slot opens when it is written
    step = _Stepper(model, layers, k_cache, v_cache)
    return hidden, _Advance(model, step, graph, use_compile, padded, mask_full, k_cache, v_cache, dev)


def _step_kind(model, dev: torch.device, compile: bool, cuda_graph: str) -> tuple[bool, bool]:
    """Whether the decoding steps run compiled, and whether from a CUDA graph (``cuda_graph``:
    auto, on, off; a model whose compile or graph failed before runs eagerly)."""
    use_compile = bool(compile) and model not in _COMPILE_FAILED
    if cuda_graph not in ("auto", "on", "off"):
        raise ValueError(f"cuda_graph must be auto, on or off, got {cuda_graph!r}")
    use_graph = cuda_graph != "off" and not use_compile and model not in _GRAPH_FAILED \
        and (dev.type == "cuda" or _STATIC_BUFFERS_WITHOUT_CUDA)
    if cuda_graph == "on" and dev.type != "cuda" and not _STATIC_BUFFERS_WITHOUT_CUDA \
            and ("cpu-eager", cuda_graph) not in _NOTED:
        _NOTED.add(("cpu-eager", cuda_graph))
        warnings.warn(cuda_graph_note(cuda_graph, dev), RuntimeWarning, stacklevel=4)
    return use_compile, use_graph


class _Advance:
    """Each decoding step after the first token: ``(token [B], positions [B], length) -> hidden
    [B, H]``, replayed from a CUDA graph, run compiled, or eagerly (``_Stepper``). A compile
    that fails falls back to eager for good (for this model)."""

    def __init__(self, model, step: "_Stepper", graph, use_compile: bool, padded: bool,
                 mask_full: Optional[torch.Tensor], k_cache: list, v_cache: list, dev: torch.device):
        self.model, self.step, self.graph = model, step, graph
        self.use_compile, self.padded, self.mask_full = use_compile, padded, mask_full
        self.k_cache, self.v_cache = k_cache, v_cache
        self.dev = dev

    def __call__(self, nxt: torch.Tensor, pos: torch.Tensor, length: int) -> torch.Tensor:
        if self.graph is not None:
            return self.graph(nxt, pos, length - 1)
        if self.use_compile:
            self.mask_full[:, 0, 0, length - 1] = True
            try:
                return _compiled_step(self.model)(nxt, pos, torch.tensor([length - 1], device=self.dev),
                                                  self.mask_full, self.k_cache, self.v_cache)
            except Exception as err:  # noqa: BLE001 -- no compiler, an unsupported op: eager from now on
                _COMPILE_FAILED.add(self.model)
                self.use_compile = False
                warnings.warn(f"torch.compile of the decoding step failed ({type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}); "
                              f"decoding eagerly", RuntimeWarning, stacklevel=3)
                self.mask_full[:, 0, 0, length:] = True
                if not self.padded:
                    self.mask_full = None
        mask = self.mask_full
        return self.step(nxt, pos, length, None if mask is None else mask[..., :length])


class RolloutEngine(Protocol):
    """What a rollout engine does: decode left-padded prompts into ``(tokens [B, R], hidden
    [B, R, H] or None)``, ``tokens`` holding ``pad_id`` after each row's first EOS, with the
    sampling arguments of :func:`decode`, drawing from torch's global RNG."""

    name: str

    def supports(self, model) -> Optional[str]:
        """None when this engine can decode ``model``, else why not (one sentence)."""

    def __call__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, eos_ids: Sequence[int],
                 pad_id: int, max_new_tokens: int, min_new_tokens: int = 0, sample: bool = True,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, return_hidden: bool = False,
                 on_token: Optional[Callable[[int], None]] = None):
        ...


class StaticEngine:
    """The project's own decoder (:func:`decode`) as a :class:`RolloutEngine`, with its step
    options (``compile``, ``cuda_graph``) fixed when it is made."""

    name = "static"

    def __init__(self, compile: bool = False, cuda_graph: str = "off"):
        self.compile, self.cuda_graph = bool(compile), cuda_graph

    def supports(self, model) -> Optional[str]:
        return unsupported_reason(model)

    def __call__(self, model, input_ids, attention_mask, **kw):
        return decode(model, input_ids, attention_mask, compile=self.compile, cuda_graph=self.cuda_graph, **kw)


__all__ = ["decode", "unsupported_reason", "process_scores", "pick_tokens", "packing_available",
           "RolloutEngine", "StaticEngine", "cuda_graph_note", "SYNC_EVERY"]
