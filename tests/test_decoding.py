"""engine.decoding: the rollout's own decoding loop (static KV cache) against transformers'
``model.generate`` on the tiny random Llama with the real tokenizer: the same tokens for the
same seed in float32, the same hidden states and log-probs, and a fall-back to
``model.generate`` for models it cannot run."""
from __future__ import annotations

import warnings

import pytest
import torch

from engine import decoding as D
from engine.models import (
    _eos_ids,
    generate,
    head_logprobs,
    load_policy,
    load_tokenizer,
    sequence_logprobs,
)

TINY = "tiny:llama"
# different lengths: left padding of 0 to ~10 tokens
PROMPTS = ["Hello there, how are you doing today my friend", "Hi", "The movie was really",
           "I did not expect much from this film, but the ending"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


@pytest.fixture(scope="module")
def model():
    return load_policy(TINY, trainable=True)


@pytest.fixture(scope="module")
def batch(tok):
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    assert (enc["attention_mask"] == 0).any()  # really left padded
    return enc["input_ids"], enc["attention_mask"]


def _both(model, tok, ids, am, **kw):
    hf = generate(model, tok, ids, am, decoder="hf", **kw)
    st = generate(model, tok, ids, am, decoder="static", **kw)
    return hf, st


SETTINGS = [
    dict(),                                              # plain sampling, temperature 1
    dict(temperature=0.7, top_k=20, top_p=0.9),          # every warper
    dict(temperature=1.3, top_p=0.5),
    dict(top_k=5),
    dict(min_new_tokens=6, temperature=0.8),             # EOS suppressed for 6 tokens
    dict(do_sample=False),                               # greedy
    dict(temperature=0.0),                               # greedy as well
]


@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain")
def test_static_decoder_gives_the_same_tokens_and_hidden_states(model, tok, batch, kw):
    ids, am = batch
    assert D.unsupported_reason(model) is None
    for seed in (0, 1, 7):
        (r1, m1, h1), (r2, m2, h2) = _both(model, tok, ids, am, max_new_tokens=10, generator_seed=seed,
                                           return_hidden=True, **kw)
        assert torch.equal(r1, r2), f"seed {seed}: tokens differ"
        assert torch.equal(m1, m2)
        assert h2.dtype == torch.float32 and h2.shape == h1.shape
        torch.testing.assert_close(h2, h1, atol=1e-5, rtol=1e-5)
    # the hidden states give the log-probs a full scoring pass computes
    full = torch.cat([ids, r2], 1)
    fm = torch.cat([am, m2], 1)
    t = kw.get("temperature", 1.0) or 1.0
    scored = sequence_logprobs(model, full, fm, ids.shape[1], temperature=t)
    reused = head_logprobs(model, h2, r2, temperature=t)
    torch.testing.assert_close(reused[m2.bool()], scored[m2.bool()], atol=1e-4, rtol=1e-4)


def test_sampling_consumes_the_global_rng_like_generate(model, tok, batch):
    """Without generator_seed both draw from torch's global RNG, and the same number of times:
    what a run does after a rollout is the same with either decoder."""
    ids, am = batch
    after = {}
    for dec in ("hf", "static"):
        torch.manual_seed(5)
        r, _ = generate(model, tok, ids, am, max_new_tokens=8, decoder=dec, top_k=50)
        after[dec] = (r, torch.rand(3))
    assert torch.equal(after["hf"][0], after["static"][0])
    assert torch.equal(after["hf"][1], after["static"][1])


def test_early_stop_several_eos_ids_and_padding(tok, batch):
    """Rows end at different steps on any of several EOS ids; the loop stops when all have
    ended, and finished rows carry the pad id -- as transformers does."""
    ids, am = batch
    m = load_policy(TINY, trainable=False)
    eos = tok.eos_token_id
    # a second EOS id: the model's greedy first token of row 0, plus a bias on the real EOS
    greedy, _ = generate(m, tok, ids, am, max_new_tokens=1, do_sample=False, decoder="hf")
    other = int(greedy[0, 0])
    assert other != eos
    head = torch.nn.Linear(m.config.hidden_size, m.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(m.lm_head.weight)
        head.bias.zero_()
        head.bias[eos] = 9.0
    m.lm_head = head
    m.generation_config.eos_token_id = [eos, other]
    assert _eos_ids(m, tok) == [eos, other]
    stopped = 0
    for seed in range(6):
        (r1, m1), (r2, m2) = _both(m, tok, ids, am, max_new_tokens=30, generator_seed=seed)
        assert torch.equal(r1, r2) and torch.equal(m1, m2), f"seed {seed}"
        lengths = m2.sum(1)
        if r2.shape[1] < 30:
            stopped += 1
            assert int(lengths.max()) == r2.shape[1]  # stopped at the last row's EOS
        for row, mask in zip(r2.tolist(), m2.tolist()):
            n = sum(mask)
            assert row[n - 1] in (eos, other) or n == r2.shape[1]
            assert all(t == tok.pad_token_id for t in row[n:])
    assert stopped >= 3  # the early stop really happened


def test_decoder_restores_mode_and_rejects_a_bad_name(model, tok, batch):
    ids, am = batch
    model.train()
    generate(model, tok, ids, am, max_new_tokens=3, decoder="static", generator_seed=0)
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="decoder must be"):
        generate(model, tok, ids, am, max_new_tokens=3, decoder="fast")


def test_models_it_cannot_run_fall_back_to_generate(tok, batch):
    """A GPT-2 and a peft-wrapped LoRA Llama go through model.generate with the same result."""
    from transformers import GPT2Config, GPT2LMHeadModel

    ids, am = batch
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    gpt2.eval()
    assert "GPT2LMHeadModel" in D.unsupported_reason(gpt2)
    (r1, m1), (r2, m2) = _both(gpt2, tok, ids, am, max_new_tokens=5, generator_seed=3)
    assert torch.equal(r1, r2) and torch.equal(m1, m2)

    from engine.models import apply_lora

    lora = apply_lora(load_policy(TINY, trainable=True), r=2, alpha=4, dropout=0.0,
                      target_modules=["q_proj", "v_proj"], key="actor.lora", seed=0)
    assert D.unsupported_reason(lora) is not None
    (r1, m1, h1), (r2, m2, h2) = _both(lora, tok, ids, am, max_new_tokens=5, generator_seed=3,
                                       return_hidden=True)
    assert torch.equal(r1, r2) and torch.equal(h1, h2)


def test_qwen2_shape_gives_the_same_tokens(tok, batch):
    """Qwen2 (biased q/k/v projections) decodes in the same loop: a small random one."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    ids, am = batch
    torch.manual_seed(0)
    q = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     max_position_embeddings=128, eos_token_id=tok.eos_token_id,
                                     attn_implementation="sdpa"))
    q.eval()
    assert D.unsupported_reason(q) is None
    (r1, m1, h1), (r2, m2, h2) = _both(q, tok, ids, am, max_new_tokens=8, generator_seed=1, return_hidden=True)
    assert torch.equal(r1, r2)
    torch.testing.assert_close(h2, h1, atol=1e-5, rtol=1e-5)


def test_process_scores_matches_transformers_processors():
    """The processors, one by one, against transformers' own classes on random scores."""
    from transformers.generation.logits_process import (
        MinNewTokensLengthLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 300, generator=g) * 3
    eos = torch.tensor([3, 17])
    eos_mask = torch.isin(torch.arange(300), eos)
    ids = torch.zeros(5, 4, dtype=torch.long)  # 4 prompt tokens, no new token yet
    ref = MinNewTokensLengthLogitsProcessor(4, 2, eos)(ids, scores)
    ref = TemperatureLogitsWarper(0.6)(ids, ref)
    ref = TopKLogitsWarper(40)(ids, ref)
    ref = TopPLogitsWarper(0.8)(ids, ref)
    ours = D.process_scores(scores, step=0, min_new_tokens=2, eos_mask=eos_mask, sample=True,
                            temperature=0.6, top_k=40, top_p=0.8)
    assert torch.equal(ours, ref)
    assert torch.isinf(ours[:, [3, 17]]).all()
    late = D.process_scores(scores, step=2, min_new_tokens=2, eos_mask=eos_mask, sample=False,
                            temperature=0.6, top_k=40, top_p=0.8)
    assert torch.equal(late, scores)  # greedy: no warpers, EOS allowed from step 2


def test_autocast_bf16_copy_gives_the_autocast_tokens(model, tok, batch):
    """Under bf16 autocast the loop decodes with a bf16 copy of the weights made once per
    call; autocast would cast them the same way on every call: the same tokens as
    model.generate under autocast."""
    ids, am = batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for seed in (0, 2):
            (r1, m1, h1), (r2, m2, h2) = _both(model, tok, ids, am, max_new_tokens=8, generator_seed=seed,
                                               return_hidden=True)
            assert torch.equal(r1, r2)
            torch.testing.assert_close(h2, h1, atol=1e-5, rtol=1e-5)


def cpu_runs_onednn_bf16() -> bool:
    """Whether oneDNN has a bf16 matmul on this CPU, told from the CPU's flags and the ISA cap
    in the environment (not from the decoder's own probe): it needs AVX-512 BW/VL/DQ or
    AVX-NE-CONVERT, and ONEDNN_MAX_CPU_ISA=AVX2 (the emulated AVX2 class) rules both out."""
    from tests.conftest import isa_capped_at_avx2, proc_cpu_flags

    if isa_capped_at_avx2():
        return False
    flags = proc_cpu_flags()
    return {"avx512bw", "avx512vl", "avx512dq"} <= flags or "avx_ne_convert" in flags


ONEDNN_BF16 = cpu_runs_onednn_bf16()


@pytest.mark.skipif(not ONEDNN_BF16, reason="this CPU has no oneDNN bf16 matmul (AVX2 class): the test "
                                            "below checks that branch")
def test_prepacked_bf16_copy_gives_the_same_bits(model, tok, batch, monkeypatch):
    """Under bf16 autocast the loop's 16-bit copy is prepacked into oneDNN's layout (also for
    the prefill through the model's trunk): the layers really hold packed weights, and tokens
    and hidden states are the same bits as with the plain 16-bit matmuls."""
    ids, am = batch
    assert D._layers(model, torch.bfloat16, rows=len(ids))[0].q.packed is not None
    assert D._layers(model, None, rows=len(ids))[0].q.packed is None  # float32: never packed
    kw = dict(max_new_tokens=8, decoder="static", return_hidden=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for seed in (0, 3):
            packed = generate(model, tok, ids, am, generator_seed=seed, **kw)
            monkeypatch.setattr(D, "PACK", False)
            plain = generate(model, tok, ids, am, generator_seed=seed, **kw)
            monkeypatch.setattr(D, "PACK", True)
            assert torch.equal(packed[0], plain[0])
            assert torch.equal(packed[2], plain[2])
    # the prefill ran the model's own projections on the packed copy; they are restored after,
    # also when the pass fails
    q_proj = model.model.layers[0].self_attn.q_proj
    assert "forward" not in vars(q_proj)
    layers = D._layers(model, torch.bfloat16, rows=len(ids))
    with pytest.raises(RuntimeError, match="boom"):
        with D._projections_from(model, layers):
            assert vars(q_proj)["forward"] is layers[0].q
            raise RuntimeError("boom")
    assert "forward" not in vars(q_proj)


@pytest.mark.skipif(ONEDNN_BF16, reason="this CPU has a oneDNN bf16 matmul: the test above checks that branch "
                                        "(tests/test_every_machine.py runs this one under the emulated AVX2 class)")
def test_no_bf16_matmul_on_this_cpu_means_no_packing_and_plain_decoding(model, tok, batch, monkeypatch):
    """On a CPU without oneDNN's bf16 matmul (AVX2 only) the real packing op fails: the probe
    warns once with oneDNN's own reason, packing stays off and the step decodes with plain
    matmuls (the tokens model.generate gives under autocast)."""
    ids, am = batch
    monkeypatch.setattr(D, "PACK", True)
    monkeypatch.setattr(D, "_PROBED", False)
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = generate(model, tok, ids, am, max_new_tokens=6, decoder="static", generator_seed=1)
        hf = generate(model, tok, ids, am, max_new_tokens=6, decoder="hf", generator_seed=1)
    assert D.PACK is False
    warned = [str(w.message) for w in caught if "prepacking is unavailable" in str(w.message)]
    assert len(warned) == 1, warned
    assert D._layers(model, torch.bfloat16, rows=len(ids))[0].q.packed is None
    assert torch.equal(got[0], hf[0])


def _raise(*a, **k):
    raise RuntimeError("no oneDNN here")


@pytest.mark.parametrize("op, fault, message", [
    ("_reorder_linear_weight", "raises", "no oneDNN here"),
    ("_linear_pointwise", "raises", "no oneDNN here"),
    ("_linear_pointwise", "other bits", "does not give the plain matmul's bits"),
])
def test_packing_that_fails_its_probe_warns_once_and_decodes_plain(model, tok, batch, monkeypatch, op, fault,
                                                                   message):
    """Where oneDNN's packing ops fail, or the packed matmul gives other bits than the plain
    one, the first rollout warns, packing stays off and the step uses plain matmuls: the same
    tokens as model.generate under autocast."""
    def other_bits(x, *a, **k):
        return torch.zeros(x.shape[:-1] + (24,), dtype=x.dtype) + 1

    ids, am = batch
    monkeypatch.setattr(D, "PACK", True)
    monkeypatch.setattr(D, "_PROBED", False)
    if op == "_linear_pointwise":  # the packing op itself succeeds (on any CPU: oneDNN's refuses
        # bf16 where the CPU has no bf16 path), so the fault injected into the matmul is the one hit
        monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", lambda w, rows: w)
    monkeypatch.setattr(torch.ops.mkldnn, op, _raise if fault == "raises" else other_bits)
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = generate(model, tok, ids, am, max_new_tokens=6, decoder="static", generator_seed=1)
        again = generate(model, tok, ids, am, max_new_tokens=6, decoder="static", generator_seed=1)
        hf = generate(model, tok, ids, am, max_new_tokens=6, decoder="hf", generator_seed=1)
    assert D.PACK is False
    warned = [str(w.message) for w in caught if "prepacking is unavailable" in str(w.message)]
    assert len(warned) == 1 and message in warned[0]
    assert torch.equal(got[0], hf[0]) and torch.equal(again[0], hf[0])


def test_compile_failure_falls_back_to_eager_once(model, tok, batch, monkeypatch):
    """With no usable C++ compiler for inductor, compile=True warns once and decodes eagerly,
    giving the eager tokens."""
    import torch._inductor.config as ic

    ids, am = batch
    monkeypatch.setattr(ic.cpp, "cxx", ("/nonexistent/c++",))
    m = load_policy(TINY, trainable=False)
    eager = generate(m, tok, ids, am, max_new_tokens=5, decoder="static", generator_seed=4)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = generate(m, tok, ids, am, max_new_tokens=5, decoder="static", generator_seed=4, compile=True)
        again = generate(m, tok, ids, am, max_new_tokens=5, decoder="static", generator_seed=4, compile=True)
    torch._dynamo.reset()
    msgs = [str(w.message) for w in caught if "torch.compile of the decoding step failed" in str(w.message)]
    assert len(msgs) == 1
    assert torch.equal(got[0], eager[0]) and torch.equal(again[0], eager[0])


def _cxx() -> str:
    """The C++ compiler inductor would call, found on PATH independently of the decoder (the
    known environment limitation under which compiling cannot work: none installed)."""
    import shutil

    import torch._inductor.config as ic

    names = [c for c in (ic.cpp.cxx if isinstance(ic.cpp.cxx, (tuple, list)) else (ic.cpp.cxx,)) if c]
    for c in [*names, "g++", "c++", "clang++"]:
        if shutil.which(c):
            return shutil.which(c)
    return ""


CXX = _cxx()


@pytest.mark.slow
@pytest.mark.skipif(not CXX, reason="no C++ compiler on PATH: inductor cannot compile on a CPU here")
def test_compiled_step_gives_the_eager_tokens(tok, batch):
    """compile=True where inductor has a compiler: the compiled step attends over the whole
    preallocated cache under a mask (the slots not yet written included), and gives finite
    hidden states equal to the eager loop's up to rounding and the same greedy tokens, on
    left-padded prompts, in float32 (no config compiles the step on a CPU by default; on a GPU,
    scripts/gpu_check.py checks the CUDA-graph bf16 step against eager)."""
    ids, am = batch
    assert not bool((am == 1).all())  # some rows are left-padded
    m = load_policy(TINY, trainable=False)
    torch._dynamo.reset()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            eager = generate(m, tok, ids, am, max_new_tokens=12, decoder="static", do_sample=False,
                             return_hidden=True)
            comp = generate(m, tok, ids, am, max_new_tokens=12, decoder="static", do_sample=False,
                            return_hidden=True, compile=True)
        failed = [str(w.message) for w in caught if "torch.compile of the decoding step failed" in str(w.message)]
        assert not failed, f"a C++ compiler is on PATH ({CXX}) yet compiling the step failed: {failed[0]}"
        assert torch.isfinite(comp[2]).all()
        assert torch.equal(comp[0], eager[0])
        torch.testing.assert_close(comp[2], eager[2], atol=1e-4, rtol=1e-4)
    finally:
        torch._dynamo.reset()


@pytest.mark.slow
def test_smollm2_static_decoder_gives_the_same_tokens():
    from engine.models import SMOLLM2

    tk = load_tokenizer(SMOLLM2)
    m = load_policy(SMOLLM2, trainable=True)
    enc = tk(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    for seed in (0, 1):
        (r1, m1, h1), (r2, m2, h2) = _both(m, tk, enc["input_ids"], enc["attention_mask"],
                                           max_new_tokens=12, generator_seed=seed, return_hidden=True)
        assert torch.equal(r1, r2)
        torch.testing.assert_close(h2, h1, atol=1e-4, rtol=1e-4)


def test_config_keys():
    from engine.config import load_config, validate_text

    cfg = load_config("tiny")
    assert cfg.rollout.decoder == "static" and cfg.rollout.compile_decoder is False  # tiny lists static
    default = load_config("default")  # the embedded default decodes with the static loop too
    assert default.rollout.decoder == "static" and default.rollout.reuse_logprobs
    assert validate_text("").ok and load_config("default", ["rollout.decoder=hf"]).rollout.decoder == "hf"
    res = validate_text("rollout:\n  decoder: hf\n  compile_decoder: true\n")
    assert res.ok
    assert any(n.path == "rollout.compile_decoder" and "not static" in n.message for n in res.notices)
    bad = validate_text("rollout:\n  decoder: fast\n")
    assert not bad.ok and any(e.path == "rollout.decoder" for e in bad.issues)


# ----------------------------------------------------------------------------------- GPU-speed loop

def test_static_buffer_step_gives_the_eager_tokens(model, tok, batch, monkeypatch):
    """The step a CUDA graph captures (fixed shapes over buffers kept between rollouts), run
    eagerly on the CPU: the eager loop's greedy tokens and its hidden states up to rounding, on
    left-padded prompts, and again on a second rollout that reuses the buffers (the prefill's
    keys and values replace the first rollout's)."""
    ids, am = batch
    m = load_policy(TINY, trainable=False)
    eager = generate(m, tok, ids, am, max_new_tokens=12, decoder="static", do_sample=False, return_hidden=True)
    monkeypatch.setattr(D, "_STATIC_BUFFERS_WITHOUT_CUDA", True)
    for _ in range(2):
        got = generate(m, tok, ids, am, max_new_tokens=12, decoder="static", do_sample=False,
                       return_hidden=True, cuda_graph="on")
        assert torch.equal(got[0], eager[0])
        torch.testing.assert_close(got[2], eager[2], atol=1e-4, rtol=1e-4)
    assert len(D._GRAPHS[m]) == 1  # one set of buffers for this batch size and cache length
    # an optimizer step in place is seen by the next rollout (weights are read, not copied)
    with torch.no_grad():
        m.lm_head.weight.mul_(-1.0)
        flipped = generate(m, tok, ids, am, max_new_tokens=6, decoder="static", do_sample=False, cuda_graph="on")
        monkeypatch.setattr(D, "_STATIC_BUFFERS_WITHOUT_CUDA", False)
        plain = generate(m, tok, ids, am, max_new_tokens=6, decoder="static", do_sample=False)
    assert torch.equal(flipped[0], plain[0])


def test_end_checked_every_few_steps_cuts_the_steps_after_every_row_ended(model, tok, batch, monkeypatch):
    """With the host looking at the finished mask only every 4th step, the steps run after the
    last row ended are cut: the same tokens and the same length as checking every step. Half
    the vocabulary counts as EOS, so rows end early and at different steps."""
    ids, am = batch
    eos = list(range(0, model.config.vocab_size, 2))
    kw = dict(eos_ids=eos, pad_id=0, max_new_tokens=30, sample=True)
    torch.manual_seed(3)
    every = D.decode(model.eval(), ids, am, **kw)[0]
    assert every.shape[1] < 30 and every.shape[1] % 4  # every row ended early, not on a check step
    monkeypatch.setattr(D, "_CHECK_EVERY_CPU", 4)
    torch.manual_seed(3)
    lazy = D.decode(model, ids, am, **kw)[0]
    assert torch.equal(lazy, every)
    model.train()


def test_cuda_graph_on_a_cpu_runs_eagerly_and_says_so_once(model, tok, batch, monkeypatch):
    ids, am = batch
    monkeypatch.setattr(D, "_NOTED", set())
    assert "runs eagerly" in D.cuda_graph_note("auto", "cpu") and D.cuda_graph_note("off", "cpu") is None
    eager = generate(model, tok, ids, am, max_new_tokens=5, decoder="static", generator_seed=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = generate(model, tok, ids, am, max_new_tokens=5, decoder="static", generator_seed=2, cuda_graph="on")
        b = generate(model, tok, ids, am, max_new_tokens=5, decoder="static", generator_seed=2, cuda_graph="on")
    said = [w for w in caught if "rollout.cuda_graph on: no CUDA device" in str(w.message)]
    assert len(said) == 1
    assert torch.equal(a[0], eager[0]) and torch.equal(b[0], eager[0])
    eng = D.StaticEngine()
    assert eng.name == "static" and eng.supports(model) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the graph is CUDA's)")
def test_cuda_graph_gives_the_eager_tokens_on_cuda(tok, batch):
    ids, am = (t.cuda() for t in batch)
    m = load_policy(TINY, trainable=False, device="cuda")
    eager = generate(m, tok, ids, am, max_new_tokens=16, decoder="static", do_sample=False, return_hidden=True)
    graph = generate(m, tok, ids, am, max_new_tokens=16, decoder="static", do_sample=False, return_hidden=True,
                     cuda_graph="on")
    assert D._GRAPHS[m] and all(st.graph is not None for st in D._GRAPHS[m].values())
    assert torch.equal(graph[0], eager[0])
    torch.testing.assert_close(graph[2], eager[2], atol=1e-3, rtol=1e-3)
