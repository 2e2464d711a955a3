"""The kernel floor of one step of the embedded default on this machine: the bare matmuls of
each phase at the default's shapes (SmolLM2-135M and the MiniLM reward model, batch 8, ~11 prompt + 24 new tokens, four
optimizer steps of 2 sequences, bf16 autocast with float32 master weights), the sampling draws,
and the passes over the weights that the update makes in memory (the autocast weight casts,
gradients, clipping, fused AdamW, the two-phase host copy). No attention, norms, activations,
Python or transport: what is left of a step if everything else cost nothing.

    python scripts/bench_step_floor.py [--threads 2] [--step 4.90]

``--step`` is a measured step time (``python -m engine.bench step``) to set beside the floor.
See docs/performance.md ("The step's kernel floor").
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from bench_decode_floor import HIDDEN, INTER, KV, LAYERS, VOCAB, best  # SmolLM2-135M's shapes

BATCH, PROMPT, NEW, MINI, STEPS = 8, 11, 24, 2, 4


def projections(dtype: torch.dtype) -> list[torch.Tensor]:
    """The weights of the 30 layers' seven projections (q, k, v, o, gate, up, down)."""
    shapes = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN),
              (INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER)]
    return [torch.randn(s, dtype=dtype).mul_(0.02) for _ in range(LAYERS) for s in shapes]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--step", type=float, default=None, help="a measured step time in seconds, to compare")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bf = torch.bfloat16
    w16 = projections(bf)
    head16 = torch.randn(VOCAB, HIDDEN, dtype=bf)
    head32 = torch.randn(VOCAB, HIDDEN)

    def layer_mms(x_h: torch.Tensor, x_i: torch.Tensor, ws: list[torch.Tensor]) -> None:
        for w in ws:
            F.linear(x_i if w.shape[1] == INTER else x_h, w)

    rows: list[tuple[str, float, str]] = []

    # ---- rollout: the prefill, then 24 steps of 8 rows each, and one sampling draw per step
    xp, xpi = torch.randn(BATCH * PROMPT, HIDDEN, dtype=bf), torch.randn(BATCH * PROMPT, INTER, dtype=bf)
    x8, x8i = torch.randn(BATCH, HIDDEN, dtype=bf), torch.randn(BATCH, INTER, dtype=bf)
    probs = torch.softmax(torch.randn(BATCH, VOCAB), -1)
    gen = torch.Generator().manual_seed(0)
    t_prefill = best(lambda: layer_mms(xp, xpi, w16))
    t_dec = best(lambda: (layer_mms(x8, x8i, w16), F.linear(x8, head16)))
    t_draw = best(lambda: torch.multinomial(probs, 1, generator=gen))
    rows.append(("rollout: prefill matmuls (bf16)", t_prefill, f"{BATCH} x {PROMPT} rows"))
    rows.append(("rollout: 24 decoding steps' matmuls (bf16)", NEW * t_dec, f"{t_dec * 1e3:.1f} ms a step"))
    rows.append(("rollout: 24 sampling draws", NEW * t_draw,
                 f"{t_draw * 1e3:.1f} ms a draw over {BATCH} x {VOCAB} (torch.multinomial)"))

    # ---- scoring: the reference's forward over prompt + response (the head in float32)
    n_seq = BATCH * (PROMPT + NEW)
    xs, xsi = torch.randn(n_seq, HIDDEN, dtype=bf), torch.randn(n_seq, INTER, dtype=bf)
    xs32 = torch.randn(BATCH * NEW, HIDDEN)
    t_ref = best(lambda: (layer_mms(xs, xsi, w16), F.linear(xs32, head32)))
    rows.append(("scoring: the reference's forward matmuls", t_ref, f"{n_seq} rows, head over {BATCH * NEW}"))
    # the reward model (MiniLM-L12-H384, float32) reads the responses: 12 layers of 4 + 2 projections
    rw = [torch.randn(s) for _ in range(12) for s in [(384, 384)] * 4 + [(1536, 384), (384, 1536)]]
    xr, xri = torch.randn(BATCH * (NEW + 2), 384), torch.randn(BATCH * (NEW + 2), 1536)
    t_rw = best(lambda: [F.linear(xri if w.shape[1] == 1536 else xr, w) for w in rw])
    rows.append(("scoring: the reward model's forward matmuls", t_rw, f"{BATCH * (NEW + 2)} rows, float32"))

    # ---- update: per optimizer step a forward and a backward over MINI sequences
    m = MINI * (PROMPT + NEW)
    xm, xmi = torch.randn(m, HIDDEN, dtype=bf), torch.randn(m, INTER, dtype=bf)
    gm = torch.randn(m, HIDDEN, dtype=bf)
    gmi = torch.randn(m, INTER, dtype=bf)
    hm32 = torch.randn(MINI * NEW, HIDDEN)
    gl32 = torch.randn(MINI * NEW, VOCAB)

    def fwd_bwd() -> None:
        for w in w16:
            x = xmi if w.shape[1] == INTER else xm
            F.linear(x, w)                             # forward
            g = gmi if w.shape[0] == INTER else gm
            g = g[:, :w.shape[0]] if w.shape[0] == KV else g
            torch.mm(g, w)                             # grad of the input
            torch.mm(g.t(), x)                         # grad of the weight
        F.linear(hm32, head32)                         # the head: forward,
        F.linear(hm32, head32)                         # recomputed in backward,
        torch.mm(gl32, head32)                         # grad of its input,
        torch.mm(gl32.t(), hm32)                       # grad of its weight

    t_fb = best(fwd_bwd, n=4)
    rows.append(("update: 4 x forward + backward matmuls", STEPS * t_fb,
                 f"{m} rows a mini-batch: {t_fb * 1e3:.0f} ms each"))

    # the passes over the 135M float32 weights: the casts autocast makes, the gradient, AdamW
    n_params = sum(w.numel() for w in w16) + head32.numel()
    p32 = torch.zeros(n_params)
    g32 = torch.zeros(n_params)
    p16 = torch.zeros(n_params, dtype=bf)
    g16 = torch.zeros(n_params, dtype=bf)
    ex, ex2 = torch.zeros(n_params), torch.zeros(n_params)
    step_t = torch.tensor(1.0)
    snap = torch.empty(3 * n_params)

    def memory_passes() -> None:
        p16.copy_(p32)                                 # autocast: the weights cast to bf16
        g32.copy_(g16)                                 # the bf16 weight grads cast to float32
        torch.linalg.vector_norm(g32)                  # clipping: the norm,
        g32.mul_(0.5)                                  # and the scale
        torch._fused_adamw_([p32], [g32], [ex], [ex2], [], [step_t], lr=2e-5, beta1=0.9, beta2=0.999,
                            weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)

    t_mem = best(memory_passes)
    rows.append(("update: 4 x passes over the weights", STEPS * t_mem,
                 f"{n_params / 1e6:.0f}M float32 parameters: {t_mem * 1e3:.0f} ms each (cast, grads, clip, fused AdamW)"))
    t_snap = best(lambda: (snap[:n_params].copy_(p32), snap[n_params:2 * n_params].copy_(ex),
                           snap[2 * n_params:].copy_(ex2)))
    rows.append(("update: the two-phase host copy", t_snap, "parameters and AdamW's two moments"))

    total = sum(t for _, t, _ in rows)
    print(f"kernel floor of one step of the default: {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'':48s}{'seconds':>9s}")
    for name, t, note in rows:
        print(f"{name:48s}{t:9.3f}   {note}")
    print(f"{'total':48s}{total:9.3f}")
    if args.step:
        print(f"measured step {args.step:.2f} s: the kernels above are {total / args.step:.0%} of it; "
              f"everything else (attention, norms, activations, Python, transport) "
              f"{args.step - total:.2f} s")
    print(f"the 3.0 s target leaves {3.0 - total:.2f} s for everything else")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
