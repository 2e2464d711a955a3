"""Micro-batches sized by a token budget (``ppo.micro_batch_tokens``), with length bucketing.

A batch of prompt+response rows is ``[B, P+R]`` with the prompts left-padded to ``P`` and the
responses right-padded to ``R``. At a real batch (256 rows x ~300 tokens) a forward over all
rows at once holds activations for every padded position; a fixed number of rows per
micro-batch (``ppo.micro_batch_size``) bounds memory only for a known length. Here the rows
are sorted by their real length and cut so that ``rows x padded length <= budget``, where the
padded length of a micro-batch is its longest prompt plus its longest response: the columns
that no row of the micro-batch uses (left prompt padding, right response padding) are cut off
before the forward and the outputs padded back to ``R`` after it, so every consumer sees the
``[b, R]`` shapes of the unsplit path.

The weights (:func:`token_weights`) make the accumulated gradient the unsplit mini-batch's:
a token-mean loss of a micro-batch weighted by its share of the mini-batch's valid tokens sums
to the mini-batch's token-mean; a sequence mean weighted by its share of the mini-batch's
non-empty rows sums to the mini-batch's sequence mean.

Pure functions of tensors; no model, no device.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

# loss aggregations that average over sequences (each row weighs the same) rather than tokens
SEQ_MEAN = ("seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def spans(query_mask: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: how many trailing prompt columns it uses (``P`` minus the index of its first
    attended prompt column) and how many leading response columns (the index of its last
    attended response column + 1). Rows with no attended prompt or response column get 0."""
    P = query_mask.shape[1]
    R = response_mask.shape[1]
    q = query_mask.bool()
    first = torch.where(q.any(1), q.float().argmax(1), torch.full((q.shape[0],), P, dtype=torch.long))
    r = response_mask.bool()
    last = R - r.flip(1).float().argmax(1)
    last = torch.where(r.any(1), last, torch.zeros_like(last))
    return (P - first).long(), last.long()


def padded_len(rows: torch.Tensor, q_span: torch.Tensor, r_span: torch.Tensor) -> int:
    """The sequence length of ``rows`` once the columns none of them uses are cut off (at
    least one prompt and one response column, so a forward always has something to score)."""
    return max(1, int(q_span[rows].max())) + max(1, int(r_span[rows].max()))


def token_micro_batches(rows: torch.Tensor, q_span: torch.Tensor, r_span: torch.Tensor,
                        budget: int) -> list[torch.Tensor]:
    """``rows`` (a 1-D index tensor) sorted by length (prompt + response span, stable) and cut
    into micro-batches of at most ``budget`` tokens counted as rows x padded length. A row
    longer than ``budget`` on its own is a micro-batch of its own. Every row appears once."""
    if budget < 1:
        raise ValueError(f"ppo.micro_batch_tokens must be >= 1, got {budget}")
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    if rows.numel() == 0:
        return []
    total = (q_span[rows] + r_span[rows]).tolist()
    order = sorted(range(len(total)), key=lambda i: total[i])
    out: list[list[int]] = []
    cur: list[int] = []
    q_max = r_max = 0
    for i in order:
        r = int(rows[i])
        nq, nr = max(q_max, int(q_span[r]), 1), max(r_max, int(r_span[r]), 1)
        if cur and (len(cur) + 1) * (nq + nr) > budget:
            out.append(cur)
            cur, nq, nr = [], max(1, int(q_span[r])), max(1, int(r_span[r]))
        cur.append(r)
        q_max, r_max = nq, nr
    out.append(cur)
    return [torch.tensor(c, dtype=torch.long) for c in out]


def sub_batch(tensors, rows: torch.Tensor, q_span: torch.Tensor, r_span: torch.Tensor) -> dict:
    """The rows ``rows`` of a batch (``query_ids``, ``query_mask``, ``response_ids``,
    ``response_mask``) without the columns none of them uses: the first ``P - P'`` prompt
    columns and the response columns after ``R'``, where ``P'`` and ``R'`` are the rows'
    longest prompt and response spans (at least 1 each)."""
    P = tensors["query_ids"].shape[1]
    R = tensors["response_ids"].shape[1]
    qs = min(P, max(1, int(q_span[rows].max())))
    rs = min(R, max(1, int(r_span[rows].max())))
    out = {k: tensors[k][rows][:, P - qs:] for k in ("query_ids", "query_mask")}
    out.update({k: tensors[k][rows][:, :rs] for k in ("response_ids", "response_mask")})
    return out


def pad_to(x: torch.Tensor, R: int) -> torch.Tensor:
    """``x [b, R', ...]`` padded with zeros along dim 1 to ``R`` columns (gradients flow)."""
    extra = R - x.shape[1]
    if extra <= 0:
        return x
    pad = [0, 0] * (x.dim() - 2) + [0, extra]
    return F.pad(x, pad)


def token_weights(part: torch.Tensor, minibatch: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """``(token weight, row weight)`` of the rows ``part`` in the mini-batch ``minibatch``:
    its share of the mini-batch's valid tokens, and its share of the mini-batch's rows with at
    least one valid token (what a sequence mean averages over). An all-empty mini-batch gives
    rows / rows for both."""
    m = mask.bool()
    tok_all = float(m[minibatch].sum())
    rows_all = float(m[minibatch].any(1).sum())
    tok = float(m[part].sum()) / tok_all if tok_all else len(part) / max(1, len(minibatch))
    row = float(m[part].any(1).sum()) / rows_all if rows_all else len(part) / max(1, len(minibatch))
    return tok, row


def agg_weight(loss_agg: str, tok: float, row: float) -> float:
    """The weight of a loss aggregated by ``loss_agg``: rows for a sequence mean, else tokens."""
    return row if loss_agg in SEQ_MEAN else tok


def scatter_rows(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], B: int) -> torch.Tensor:
    """``[B, ...]`` from ``(rows, values)`` pairs covering every row once."""
    first = parts[0][1]
    out = first.new_zeros((B, *first.shape[1:]))
    for rows, vals in parts:
        out[rows.to(out.device)] = vals
    return out


__all__ = ["spans", "padded_len", "token_micro_batches", "sub_batch", "pad_to", "token_weights",
           "agg_weight", "scatter_rows", "SEQ_MEAN"]
