"""engine.models: loading, generation, log-probs, critic, reward model.

Most tests use ``tiny:llama`` (random 2-layer Llama + the real SmolLM2 tokenizer, built once
into the default cache). The slow test converts/loads the real bundled SmolLM2.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
import torch

from engine import models as M
from engine.models import (
    ModelLoadError,
    ValueModel,
    count_parameters,
    generate,
    load_critic,
    load_policy,
    load_reward_model,
    load_tokenizer,
    model_memory_bytes,
    resolve_attn_implementation,
    resolve_device,
    resolve_model_path,
    response_mask_from_ids,
    sequence_logprobs,
    torch_dtype,
)

TINY = "tiny:llama"
PROMPTS = ["Hello there, how are you doing today my friend", "Hi", "The movie was really"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


@pytest.fixture(scope="module")
def batch(tok):
    return tok(PROMPTS, return_tensors="pt", padding=True)


def _eosy(model, eos_id: int, bias: float = 9.5):
    """The tiny model with an LM-head bias on EOS (~25% per step) so responses end at
    different lengths; still an ordinary causal LM."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[eos_id] = bias
    model.lm_head = head
    return model


@pytest.fixture()
def eosy(tok):
    return _eosy(load_policy(TINY), tok.eos_token_id)


# ---------------------------------------------------------------------------------------------
# sources, tokenizer, small helpers
# ---------------------------------------------------------------------------------------------

def test_tiny_llama_is_deterministic(tmp_path, tok):
    a = load_policy(TINY)
    b = load_policy(TINY, trainable=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    cfg = a.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.intermediate_size, cfg.max_position_embeddings) == \
        (2, 64, 4, 2, 128, 512)
    assert cfg.vocab_size == len(tok)
    # building again from scratch (another process, another machine) gives the same weights
    M._build_tiny_llama(tmp_path, lambda m: None)
    from transformers import AutoModelForCausalLM
    c = AutoModelForCausalLM.from_pretrained(str(tmp_path)).state_dict()
    assert all(torch.equal(sa[k], c[k]) for k in sa)


def test_tokenizer_left_pads_with_eos(tok, batch):
    assert tok.padding_side == "left"
    assert tok.pad_token_id == tok.eos_token_id
    assert tok.eos_token == "<|im_end|>"
    mask = batch["attention_mask"]
    assert mask[1, 0] == 0 and mask[1, -1] == 1  # short prompt padded on the left
    assert (batch["input_ids"][mask == 0] == tok.pad_token_id).all()
    assert load_tokenizer(TINY, padding_side="right").padding_side == "right"


def test_resolve_model_path_sources(tmp_path):
    p = resolve_model_path(TINY)
    assert p.endswith("tiny-llama")
    assert resolve_model_path(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model_path("someorg/some-model") == "someorg/some-model"
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelLoadError, match="unknown model source"):
        resolve_model_path("bundled:nothing")


def test_dtype_device_helpers():
    assert torch_dtype("float32") is torch.float32
    assert torch_dtype("bf16") is torch.bfloat16
    assert torch_dtype("float16") is torch.float16
    with pytest.raises(ValueError):
        torch_dtype("int3")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA"):
            resolve_device("cuda:0")


def test_attention_fallback():
    assert resolve_attn_implementation("eager", "cpu") == ("eager", None)
    assert resolve_attn_implementation("sdpa", "cpu") == ("sdpa", None)
    impl, warn = resolve_attn_implementation("flash_attention_2", torch.device("cpu"))
    assert impl == "sdpa" and "flash_attention_2" in warn
    msgs = []
    model = load_policy(TINY, attn_implementation="flash_attention_2", progress=msgs.append)
    assert model.config._attn_implementation == "sdpa"
    assert any("flash_attention_2" in m for m in msgs)


def test_response_mask_from_ids():
    ids = torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8], [2, 9, 2, 9]])
    assert response_mask_from_ids(ids, [2]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_count_and_memory():
    m = load_policy(TINY)
    n = count_parameters(m)
    assert n == sum(p.numel() for p in m.parameters())
    assert model_memory_bytes(m) >= 4 * n
    m.requires_grad_(False)
    assert count_parameters(m, trainable_only=True) == 0


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CONSOLE_CACHE", str(tmp_path))

    def boom(dest):
        (dest / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        M._build_cached("thing", boom, {}, lambda m: None)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [".thing.lock"]


# ---------------------------------------------------------------------------------------------
# generation and log-probs
# ---------------------------------------------------------------------------------------------

def test_generate_masks_end_at_first_eos(eosy, tok, batch):
    eos = tok.eos_token_id
    eosy.train()
    resp, mask = generate(eosy, tok, batch["input_ids"], batch["attention_mask"],
                          max_new_tokens=12, generator_seed=0)
    assert eosy.training  # mode restored
    assert resp.shape == mask.shape and resp.shape[0] == len(PROMPTS)
    assert 1 <= resp.shape[1] <= 12
    lengths = mask.sum(1).tolist()
    assert len(set(lengths)) > 1  # rows of different lengths
    for row, m in zip(resp.tolist(), mask.tolist()):
        if eos in row:
            first = row.index(eos)
            assert m == [1] * (first + 1) + [0] * (len(row) - first - 1)
            assert all(t == tok.pad_token_id for t in row[first + 1:])
        else:
            assert m == [1] * len(row)
    # stops as soon as every row has an EOS, so the longest row decides R
    assert resp.shape[1] == 12 or max(lengths) == resp.shape[1]
    # same seed, same tokens; the global RNG is untouched by generator_seed
    state = torch.get_rng_state()
    resp2, _ = generate(eosy, tok, batch["input_ids"], batch["attention_mask"],
                        max_new_tokens=12, generator_seed=0)
    assert torch.equal(resp, resp2)
    assert torch.equal(state, torch.get_rng_state())
    # without a seed, the caller seeds torch
    torch.manual_seed(3)
    r3, _ = generate(eosy, tok, batch["input_ids"], batch["attention_mask"], max_new_tokens=12)
    torch.manual_seed(3)
    r4, _ = generate(eosy, tok, batch["input_ids"], batch["attention_mask"], max_new_tokens=12)
    assert torch.equal(r3, r4)


def test_generate_respects_max_new_tokens(tok, batch):
    m = load_policy(TINY, trainable=False)
    resp, mask = generate(m, tok, batch["input_ids"], batch["attention_mask"],
                          max_new_tokens=5, do_sample=False)
    assert resp.shape[1] <= 5 and mask.shape == resp.shape
    assert not m.training
    greedy2, _ = generate(m, tok, batch["input_ids"], batch["attention_mask"],
                          max_new_tokens=5, do_sample=False)
    assert torch.equal(resp, greedy2)
    resp, mask = generate(m, tok, batch["input_ids"], batch["attention_mask"],
                          max_new_tokens=3, min_new_tokens=3, generator_seed=1)
    assert resp.shape[1] == 3 and (mask[:, :3] == 1).all()  # no EOS allowed before 3 tokens


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sequence_logprobs_match_generation_scores(eosy, tok, batch, temperature):
    """Scoring the sampled tokens again (one forward, explicit position ids under left padding,
    only the response slice through the LM head) gives the same log-probs as the step-by-step,
    KV-cached generation did."""
    ids, am = batch["input_ids"], batch["attention_mask"]
    P = ids.shape[1]
    eosy.eval()
    torch.manual_seed(11)
    with torch.no_grad():
        out = eosy.generate(input_ids=ids, attention_mask=am, max_new_tokens=10, do_sample=True,
                            temperature=temperature, top_k=0, top_p=1.0,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                            output_logits=True, return_dict_in_generate=True)
    # our generate() draws exactly the same tokens with the same seed
    resp, mask = generate(eosy, tok, ids, am, max_new_tokens=10, temperature=temperature,
                          generator_seed=11)
    assert torch.equal(resp, out.sequences[:, P:])
    logits = torch.stack(out.logits, 1).float() / temperature
    ref = torch.log_softmax(logits, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
    full = torch.cat([ids, resp], 1)
    full_mask = torch.cat([am, mask], 1)
    lp, ent = sequence_logprobs(eosy, full, full_mask, P, temperature=temperature,
                                return_entropy=True)
    assert lp.shape == ent.shape == resp.shape and lp.dtype == torch.float32
    assert ((lp - ref).abs() * mask).max().item() < 1e-4
    ref_ent = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    assert ((ent - ref_ent).abs() * mask).max().item() < 1e-3
    # (RoPE is relative, so for Llama the explicit position ids mostly buy float-level
    # agreement; for absolute-position models they are essential.)
    # rollout.reuse_logprobs: the generation pass's own hidden states give the same log-probs
    resp2, mask2, hidden = generate(eosy, tok, ids, am, max_new_tokens=10, temperature=temperature,
                                    generator_seed=11, return_hidden=True)
    assert torch.equal(resp2, resp) and torch.equal(mask2, mask)
    assert hidden.shape == (*resp.shape, eosy.config.hidden_size)
    reused = M.head_logprobs(eosy, hidden, resp, temperature=temperature)
    assert ((reused - lp).abs() * mask).max().item() < 1e-4


def test_logprobs_chunking_and_grad(tok, batch):
    m = load_policy(TINY)
    ids, am = batch["input_ids"], batch["attention_mask"]
    resp, mask = generate(m, tok, ids, am, max_new_tokens=4, generator_seed=2)
    full, fm = torch.cat([ids, resp], 1), torch.cat([am, mask], 1)
    lp = sequence_logprobs(m, full, fm, ids.shape[1])
    logits = m(input_ids=full, attention_mask=fm,
               position_ids=M.position_ids_from_mask(fm)).logits[:, ids.shape[1] - 1:-1]
    chunked = M._logprobs_from_logits(logits, resp, 1.0, False, torch.float32, max_elems=1)
    assert torch.allclose(lp, chunked, atol=1e-5)
    (lp * mask).sum().backward()
    assert m.model.embed_tokens.weight.grad is not None


def test_gradient_checkpointing_gives_gradients_and_generation_keeps_cache(tok, batch):
    ids, am = batch["input_ids"], batch["attention_mask"]
    plain = load_policy(TINY)
    ckpt = load_policy(TINY, gradient_checkpointing=True)
    assert M.is_checkpointing(ckpt) and ckpt.config.use_cache is False
    assert not M.is_checkpointing(plain)
    resp, mask = generate(ckpt, tok, ids, am, max_new_tokens=6, generator_seed=4)
    full, fm = torch.cat([ids, resp], 1), torch.cat([am, mask], 1)
    for model in (plain, ckpt):
        (sequence_logprobs(model, full, fm, ids.shape[1]) * mask).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert q.grad is not None, name
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name
    assert ckpt.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0
    # generation on the checkpointed model still feeds one token per step (KV cache)
    lengths = []
    hook = ckpt.model.register_forward_pre_hook(
        lambda mod, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        generate(ckpt, tok, ids, am, max_new_tokens=4, do_sample=False)
    finally:
        hook.remove()
    assert lengths[0] == ids.shape[1] and all(n == 1 for n in lengths[1:]) and len(lengths) > 1
    assert ckpt.training


def test_bfloat16_policy(tok, batch):
    ids, am = batch["input_ids"], batch["attention_mask"]
    m32 = load_policy(TINY, trainable=False)
    m16 = load_policy(TINY, dtype="bfloat16", trainable=False)
    assert next(m16.parameters()).dtype == torch.bfloat16
    assert all(not p.requires_grad for p in m16.parameters()) and not m16.training
    resp, mask = generate(m16, tok, ids, am, max_new_tokens=5, generator_seed=5)
    full, fm = torch.cat([ids, resp], 1), torch.cat([am, mask], 1)
    lp16 = sequence_logprobs(m16, full, fm, ids.shape[1])
    lp32 = sequence_logprobs(m32, full, fm, ids.shape[1])
    assert lp16.dtype == torch.float32 and torch.isfinite(lp16).all()
    assert ((lp16 - lp32).abs() * mask).max().item() < 0.1


def test_sequence_logprobs_hidden_states_and_float32_head_under_autocast(tok, batch):
    m = load_policy(TINY, trainable=False)
    ids, am = batch["input_ids"], batch["attention_mask"]
    resp, mask = generate(m, tok, ids, am, max_new_tokens=5, generator_seed=6)
    full, fm = torch.cat([ids, resp], 1), torch.cat([am, mask], 1)
    P = ids.shape[1]
    plain = sequence_logprobs(m, full, fm, P)
    lp, hidden = sequence_logprobs(m, full, fm, P, return_hidden=True)
    assert torch.allclose(lp, plain, atol=1e-5)
    out = m(input_ids=full, attention_mask=fm, position_ids=M.position_ids_from_mask(fm),
            output_hidden_states=True)
    assert hidden.shape == (full.shape[0], resp.shape[1], m.config.hidden_size)
    assert torch.allclose(hidden, out.hidden_states[-1][:, P - 1:-1], atol=1e-5)
    lp_e, ent, h2 = sequence_logprobs(m, full, fm, P, return_entropy=True, return_hidden=True)
    assert torch.allclose(lp_e, plain, atol=1e-5) and ent.shape == lp.shape and torch.equal(h2, hidden)
    # under bf16 autocast the trunk runs in 16 bits but the LM head in float32: the logits
    # are not rounded to bf16 (which a full-model autocast forward does)
    seen = []
    hook = m.lm_head.register_forward_hook(lambda mod, a, o: seen.append(o.dtype))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp16 = sequence_logprobs(m, full, fm, P)
    finally:
        hook.remove()
    assert seen == []  # the head ran as an explicit float32 matmul, not the bf16 module
    assert lp16.dtype == torch.float32
    assert ((lp16 - plain).abs() * mask).max().item() < 0.1


# ---------------------------------------------------------------------------------------------
# critic
# ---------------------------------------------------------------------------------------------

def test_critic_zero_head_shape_and_reload(tmp_path, batch):
    ids, am = batch["input_ids"], batch["attention_mask"]
    critic = load_critic(TINY, dtype="float32", device="cpu", attn_implementation="sdpa",
                         gradient_checkpointing=False, progress=lambda m: None)
    assert isinstance(critic, ValueModel) and critic.training
    assert type(critic.model).__name__ == "LlamaForTokenClassification"
    values = critic(ids, am)
    assert values.shape == ids.shape and values.dtype == torch.float32
    assert torch.count_nonzero(values) == 0  # zero-initialised head
    assert all(p.abs().sum() == 0 for p in critic.head.parameters())
    # backbone equals the causal LM's
    policy = load_policy(TINY)
    assert torch.equal(critic.model.model.layers[0].mlp.up_proj.weight,
                       policy.model.layers[0].mlp.up_proj.weight)
    # train a step, save, reload: the trained head comes back
    opt = torch.optim.SGD(critic.parameters(), lr=0.1)
    ((critic(ids, am) - 1.0) ** 2 * am).mean().backward()
    opt.step()
    trained = critic(ids, am).detach()
    assert trained.abs().sum() > 0
    critic.save_pretrained(tmp_path / "critic")
    again = load_critic(str(tmp_path / "critic"), dtype="float32", device="cpu",
                        attn_implementation="sdpa", gradient_checkpointing=False)
    assert torch.allclose(again(ids, am), trained, atol=1e-6)


def test_critic_checkpointing_and_bf16(batch):
    ids, am = batch["input_ids"], batch["attention_mask"]
    critic = load_critic(TINY, dtype="bfloat16", device="cpu", attn_implementation="sdpa",
                         gradient_checkpointing=True)
    with torch.no_grad():
        critic.head.weight.normal_(std=0.1)  # nonzero so the backbone gets gradients
    values = critic(ids, am)
    assert values.dtype == torch.float32 and values.shape == ids.shape
    (values * am).sum().backward()
    assert critic.model.model.layers[0].self_attn.q_proj.weight.grad is not None


# ---------------------------------------------------------------------------------------------
# reward model
# ---------------------------------------------------------------------------------------------

def test_reward_model_minilm():
    model, rtok = load_reward_model("bundled:minilm-l6", num_labels=2)
    assert rtok.padding_side == "right"
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    enc = rtok(["a wonderful film", "dull and far too long, I left early"],
               return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def _installed_bitsandbytes() -> tuple:
    """The installed bitsandbytes' (major, minor), () when it is not installed: read from the
    package metadata, not from the code's own probe."""
    import importlib.metadata

    try:
        return tuple(int(x) for x in importlib.metadata.version("bitsandbytes").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return ()


def test_reward_model_4bit_cpu():
    """bitsandbytes >= 0.47 ships CPU kernels: 4-bit loads and runs on CPU with the head in full
    precision. Which case applies is told from the installed version; an older or missing
    bitsandbytes must get the error that a GPU is needed (forced on any machine in the next test)."""
    if _installed_bitsandbytes() >= (0, 47):
        model, rtok = load_reward_model("bundled:minilm-l6", num_labels=2, quantization="4bit")
        enc = rtok(["a wonderful film", "boring"], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**enc).logits
        assert logits.shape == (2, 2) and torch.isfinite(logits).all()
        assert type(model.classifier).__name__ == "Linear"  # head kept in full precision
    else:
        with pytest.raises(ModelLoadError, match="4-bit reward model needs a CUDA GPU"):
            load_reward_model("bundled:minilm-l6", num_labels=2, quantization="4bit")


def test_reward_model_quantization_unsupported_error(monkeypatch):
    monkeypatch.setattr(M, "_bnb_unsupported_reason", lambda q, d: "no CPU kernels")
    with pytest.raises(ModelLoadError, match="4-bit reward model needs a CUDA GPU"):
        load_reward_model("bundled:minilm-l6", num_labels=2, quantization="4bit")
    with pytest.raises(ModelLoadError, match="8-bit reward model needs a CUDA GPU"):
        load_reward_model("bundled:minilm-l6", num_labels=2, quantization="8bit")
    with pytest.raises(ModelLoadError, match="unknown quantization"):
        load_reward_model("bundled:minilm-l6", quantization="3bit")


# ---------------------------------------------------------------------------------------------
# hub ids without a hub
# ---------------------------------------------------------------------------------------------

def test_hub_id_offline_fails_fast(monkeypatch):
    import huggingface_hub.constants as hc
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_policy("no-such-org/no-such-model-xyz")
    assert time.perf_counter() - t0 < 10
    msg = str(info.value)
    assert "hub" in msg and "local folder" in msg and "bundled:" in msg


def test_hub_id_unreachable_fails_fast(monkeypatch):
    import huggingface_hub.constants as hc
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    from engine import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="unreachable"):
        load_reward_model("no-such-org/no-such-model-xyz", num_labels=1)
    assert time.perf_counter() - t0 < 10


# ---------------------------------------------------------------------------------------------
# the real model
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bundled_smollm2_generates_and_critic_loads():
    src = "bundled:smollm2-135m-instruct"
    tok = load_tokenizer(src)
    assert tok.pad_token == "<|im_end|>" and tok.padding_side == "left"
    model = load_policy(src, trainable=False)
    assert 130e6 < count_parameters(model) < 140e6
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    enc = tok([text], return_tensors="pt", padding=True)
    resp, mask = generate(model, tok, enc["input_ids"], enc["attention_mask"],
                          max_new_tokens=8, do_sample=False)
    out = tok.decode(resp[0][mask[0].bool()], skip_special_tokens=True)
    assert len(re.findall(r"[A-Za-z]", out)) >= 3, out
    # scoring matches generation on the real model too, with left padding
    enc = tok(["The film was", "Honestly, I thought this movie was"], return_tensors="pt",
              padding=True)
    ids, am = enc["input_ids"], enc["attention_mask"]
    P = ids.shape[1]
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=am, max_new_tokens=8, do_sample=True,
                             top_k=0, top_p=1.0, temperature=1.0, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, output_logits=True,
                             return_dict_in_generate=True)
    resp = out.sequences[:, P:]
    mask = response_mask_from_ids(resp, [tok.eos_token_id])
    ref = torch.log_softmax(torch.stack(out.logits, 1).float(), -1)
    ref = ref.gather(-1, resp.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        lp = sequence_logprobs(model, torch.cat([ids, resp], 1), torch.cat([am, mask], 1), P)
    assert ((lp - ref).abs() * mask).max().item() < 1e-4
    critic = load_critic(src, dtype="float32", device="cpu", attn_implementation="sdpa",
                         gradient_checkpointing=False)
    values = critic(ids, am)
    assert values.shape == ids.shape and torch.count_nonzero(values) == 0
    assert type(critic.model).__name__ == "LlamaForTokenClassification"


def test_sequence_entropy_is_the_algorithms_one_even_for_huge_logits():
    # one entropy: models computes it with algorithms.entropy_from_logits (max shift), so
    # logits around 1e4 give the uniform entropy log(V), not a cancellation artefact
    from engine.algorithms import entropy_from_logits

    V = 7
    logits = torch.full((2, 3, V), 1e4) + torch.linspace(0, 1e-3, V)
    targets = torch.zeros(2, 3, dtype=torch.long)
    _, ent = M._logprobs_from_logits(logits, targets, 1.0, True, torch.float32)
    assert torch.isfinite(ent).all()
    assert torch.allclose(ent, entropy_from_logits(logits), atol=0, rtol=0)
    assert torch.allclose(ent, torch.full((2, 3), math.log(V)), atol=1e-5)


def test_a_policy_role_reports_building_its_tokenizer_through_its_progress(tmp_path, monkeypatch):
    """A first run converts (here: builds) the model while the role loads its tokenizer: those
    lines must reach the role's progress callback (the run's event log), not the worker's stderr."""
    from engine.assets import cache_dir
    from engine.config import load_config
    from engine.runtime.role_policy import ReferenceRole

    warm = cache_dir() / "assets"
    resolve_model_path(TINY)                       # the SmolLM2 GGUF asset is in the warm cache
    (tmp_path / "assets").mkdir()
    for d in warm.iterdir():
        (tmp_path / "assets" / d.name).symlink_to(d)
    monkeypatch.setenv("RLHF_CONSOLE_CACHE", str(tmp_path))  # no built models: tiny:llama is built anew
    said: list[str] = []
    ReferenceRole(load_config(Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"), progress=said.append)
    assert any("saved tiny-llama" in m for m in said), said
    assert any("reading the SmolLM2 tokenizer" in m for m in said), said
