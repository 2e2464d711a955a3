"""The floor of one decoding step at batch 8 on this machine: the memory bandwidth, and the
projections of SmolLM2-135M's 30 layers and its head as bare matmuls (random weights, bf16 and
float32; bf16 prepacked for oneDNN; int8 weights), best of 7 on 2 threads.

    python scripts/bench_decode_floor.py

See docs/performance.md ("The decoding floor").
"""
from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F

HIDDEN, INTER, VOCAB, LAYERS, KV = 576, 1536, 49152, 30, 192  # SmolLM2-135M (3 kv heads x 64)


def best(fn, n: int = 7) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def weights(dtype: torch.dtype) -> list[torch.Tensor]:
    ws = []
    for _ in range(LAYERS):
        ws += [torch.randn(HIDDEN, HIDDEN, dtype=dtype) for _ in range(2)]  # q, o
        ws += [torch.randn(KV, HIDDEN, dtype=dtype) for _ in range(2)]      # k, v
        ws += [torch.randn(INTER, HIDDEN, dtype=dtype) for _ in range(2)]   # gate, up
        ws += [torch.randn(HIDDEN, INTER, dtype=dtype)]                     # down
    return ws + [torch.randn(VOCAB, HIDDEN, dtype=dtype)]                   # head


def main() -> None:
    torch.set_num_threads(2)
    a = torch.ones(128 * 2**20, dtype=torch.float32)  # 512 MB
    b = torch.empty_like(a)
    t = best(lambda: b.copy_(a))
    print(f"copy 512 MB: {t * 1e3:.1f} ms -> {2 * a.numel() * 4 / t / 1e9:.1f} GB/s (read + write)")
    t = best(lambda: a.sum())
    print(f"sum 512 MB: {t * 1e3:.1f} ms -> {a.numel() * 4 / t / 1e9:.1f} GB/s (read)")
    for dtype in (torch.bfloat16, torch.float32):
        ws = weights(dtype)
        x = torch.randn(8, HIDDEN, dtype=dtype)
        xi = torch.randn(8, INTER, dtype=dtype)
        nbytes = sum(w.numel() * w.element_size() for w in ws)

        def step():
            for w in ws:
                F.linear(xi if w.shape[1] == INTER else x, w)

        t = best(step)
        print(f"one step's matmuls, {str(dtype).removeprefix('torch.')}, batch 8: {t * 1e3:.1f} ms "
              f"for {nbytes / 1e6:.0f} MB of weights -> {nbytes / t / 1e9:.1f} GB/s")
        if dtype == torch.bfloat16:
            try:  # the weights laid out once for oneDNN (what engine/decoding.py does)
                packed = [torch.ops.mkldnn._reorder_linear_weight(w, 8) for w in ws]

                def packed_step():
                    for w, p in zip(ws, packed):
                        torch.ops.mkldnn._linear_pointwise(xi if w.shape[1] == INTER else x, p, None,
                                                           "none", [], "")

                print(f"one step's matmuls, bfloat16 prepacked for oneDNN, batch 8: {best(packed_step) * 1e3:.1f} ms")
            except Exception as e:  # noqa: BLE001
                print(f"bfloat16 prepacking unavailable here: {e!r}")
        if dtype == torch.float32:
            try:  # int8 weights (per-row scales), activations quantised on the fly (fbgemm)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    q8 = []
                    for w in ws:
                        scale = (w.abs().amax(dim=1) / 127).double()
                        q = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0,
                                                       torch.qint8)
                        q8.append(torch.ops.quantized.linear_prepack(q, None))

                def int8_step():
                    for w, p in zip(ws, q8):
                        torch.ops.quantized.linear_dynamic(xi if w.shape[1] == INTER else x, p, True)

                print(f"one step's matmuls, int8 weights (fbgemm dynamic), batch 8: {best(int8_step) * 1e3:.1f} ms "
                      f"for {nbytes / 4e6:.0f} MB of weights")
            except Exception as e:  # noqa: BLE001
                print(f"int8 dynamic matmuls unavailable here: {e!r}")


if __name__ == "__main__":
    main()
