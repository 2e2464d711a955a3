"""Human judgements of a run's samples: good/bad marks and pairwise preferences.

Both live in the run's append-only ``labels.jsonl``:

* a mark:  ``{"sample_id", "step", "label": "good"|"bad", "source": "human", "note", "time"}``
  (the newest mark of a sample wins);
* a pair:  ``{"prompt", "chosen", "rejected", "step", "source": "human", "chosen_id",
  "rejected_id", "time"}`` -- the texts are copied in, so the row is a training example on its
  own (``train-rm`` reads such rows as preference pairs); ``rejected_prompt`` is added only when
  the two samples answer different prompts.

Every judgement is checked against ``samples.jsonl`` before it is written: the sample ids must
exist, and the row records that sample's own step and text, never those of another.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from engine.files import read_jsonl
from engine.records import LABEL_VERDICTS as VERDICTS
from engine.records import Label


class JudgementError(ValueError):
    """A judgement cannot be written (unknown sample, bad verdict, a pair of one sample)."""


def is_pair(row: dict) -> bool:
    return isinstance(row, dict) and Label.from_dict(row).is_pair


def is_mark(row: dict) -> bool:
    return isinstance(row, dict) and Label.from_dict(row).is_mark


def _rows(path: Path) -> list[dict]:
    return read_jsonl(path)


def find_samples(run_dir: Path, ids) -> dict[str, dict]:
    """The rows of ``samples.jsonl`` whose id is in ``ids`` (the newest row of an id wins)."""
    want = {str(i) for i in ids}
    found: dict[str, dict] = {}
    for s in _rows(Path(run_dir) / "samples.jsonl"):
        sid = str(s.get("id"))
        if sid in want:
            found[sid] = s
    return found


def _sample(run_dir: Path, sid: str, found: dict) -> dict:
    s = found.get(str(sid))
    if s is None:
        raise JudgementError(f"no sample {sid!r} in {Path(run_dir) / 'samples.jsonl'} (sample ids look "
                             f"like STEP-INDEX, e.g. 3-0; `rlhf-console attach` shows them)")
    return s


def mark_row(run_dir: Path, sample_id: str, verdict: str, note: str = "", source: str = "human") -> dict:
    """The labels.jsonl row that marks ``sample_id`` good or bad (checked, not written)."""
    if verdict not in VERDICTS:
        raise JudgementError(f"a mark is 'good' or 'bad', got {verdict!r}")
    sid = str(sample_id)
    s = _sample(run_dir, sid, find_samples(run_dir, [sid]))
    return Label(sample_id=sid, step=int(s.get("step") or 0), label=verdict, source=source, note=note,
                 time=time.time()).to_dict()


def pair_row(run_dir: Path, chosen_id: str, rejected_id: str, source: str = "human") -> dict:
    """The labels.jsonl row that prefers sample ``chosen_id`` over ``rejected_id``."""
    c_id, r_id = str(chosen_id), str(rejected_id)
    if c_id == r_id:
        raise JudgementError(f"a pair needs two different samples; got {c_id!r} twice")
    found = find_samples(run_dir, [c_id, r_id])
    c, r = _sample(run_dir, c_id, found), _sample(run_dir, r_id, found)
    prompt, other = str(c.get("prompt", "")), str(r.get("prompt", ""))
    return Label(prompt=prompt, chosen=str(c.get("response", "")), rejected=str(r.get("response", "")),
                 step=max(int(c.get("step") or 0), int(r.get("step") or 0)), source=source,
                 chosen_id=c_id, rejected_id=r_id, time=time.time(),
                 rejected_prompt=other if other != prompt else None).to_dict()


# ---- reading ----------------------------------------------------------------------------------
@dataclass
class Judgements:
    """A run's judgements, in the order they were made (marks: the newest mark of a sample)."""
    marks: list[dict] = field(default_factory=list)     # {"sample_id", "label", "prompt", "response", "n"}
    pairs: list[dict] = field(default_factory=list)     # {"prompt", "chosen", "rejected", ..., "n"}
    rows: int = 0                                       # judgement rows in labels.jsonl

    @property
    def good(self) -> int:
        return sum(1 for m in self.marks if m["label"] == "good")

    @property
    def bad(self) -> int:
        return sum(1 for m in self.marks if m["label"] == "bad")

    def ordered(self) -> list[dict]:
        """Marks and pairs together, oldest judgement first (``n``: position in labels.jsonl)."""
        return sorted(self.marks + self.pairs, key=lambda j: j["n"])


def count_rows(run_dir: Path) -> int:
    """How many judgement rows (marks and pairs) labels.jsonl holds."""
    return sum(1 for r in _rows(Path(run_dir) / "labels.jsonl") if is_mark(r) or is_pair(r))


def read_judgements(run_dir: Path, with_text: bool = True) -> Judgements:
    """Every judgement of the run; marks get their sample's prompt and response (a mark whose
    sample is not in samples.jsonl, e.g. dropped by a resume, is skipped)."""
    run_dir = Path(run_dir)
    rows = _rows(run_dir / "labels.jsonl")
    marks: dict[str, dict] = {}
    pairs: list[dict] = []
    n_rows = 0
    for n, r in enumerate(rows):
        if is_pair(r):
            n_rows += 1
            pairs.append({**r, "n": n})
        elif is_mark(r):
            n_rows += 1
            marks.pop(str(r["sample_id"]), None)  # the newest mark counts, at its own position
            marks[str(r["sample_id"])] = {"sample_id": str(r["sample_id"]), "label": r["label"],
                                          "step": r.get("step"), "n": n}
    if with_text and marks:
        found = find_samples(run_dir, marks)
        for sid in list(marks):
            s = found.get(sid)
            if s is None:
                del marks[sid]
                continue
            marks[sid]["prompt"] = str(s.get("prompt", ""))
            marks[sid]["response"] = str(s.get("response", ""))
    return Judgements(marks=list(marks.values()), pairs=pairs, rows=n_rows)


def label_of(rows: list[dict]) -> dict[str, str]:
    """sample id -> what the user said about it: good/bad, or preferred/rejected in a pair."""
    out: dict[str, str] = {}
    for r in rows:
        if is_mark(r):
            out[str(r["sample_id"])] = r["label"]
        elif is_pair(r):
            if r.get("chosen_id") is not None:
                out[str(r["chosen_id"])] = "preferred"
            if r.get("rejected_id") is not None:
                out[str(r["rejected_id"])] = "rejected"
    return out


# ---- pairs to judge ------------------------------------------------------------------------------
def pair_key(s: dict) -> Optional[str]:
    """What makes two samples a pair: the group of ``rollout.n`` responses to one prompt when the
    run records one, else the prompt's text."""
    g = s.get("group")
    if g is not None:
        return f"group:{g}"
    p = s.get("prompt")
    return f"prompt:{p}" if p else None


def candidate_pairs(samples: list[dict], judged: Optional[set] = None, limit: int = 50) -> list[tuple[dict, dict]]:
    """Pairs of different samples that answer the same prompt, newest first, leaving out pairs
    that were judged already (``judged``: set of frozenset({id_a, id_b}))."""
    judged = judged or set()
    by_key: dict[str, list[dict]] = {}
    for s in samples:
        k = pair_key(s)
        if k is not None:
            by_key.setdefault(k, []).append(s)
    out = []
    for group in by_key.values():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda s: (int(s.get("step") or 0), str(s.get("id"))), reverse=True)
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                a, b = group[i], group[j]
                if a.get("response") == b.get("response"):
                    continue
                if frozenset((str(a.get("id")), str(b.get("id")))) in judged:
                    continue
                out.append((a, b))
    out.sort(key=lambda ab: max(int(ab[0].get("step") or 0), int(ab[1].get("step") or 0)), reverse=True)
    return out[:limit]


def judged_pairs(rows: list[dict]) -> set:
    return {frozenset((str(r.get("chosen_id")), str(r.get("rejected_id")))) for r in rows if is_pair(r)}
