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

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

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


def _score(s: dict) -> Optional[float]:
    v = s.get("score")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def version_at(samples_version: dict, s: dict) -> int:
    """The reward version that scored sample ``s``: its own ``reward_version`` (a fresh pair's
    samples carry it), else the version of its step in ``samples_version`` (step -> version,
    from metrics.jsonl), else 0."""
    v = s.get("reward_version")
    if isinstance(v, int):
        return v
    return int(samples_version.get(int(s.get("step") or 0), 0))


def candidate_pairs(samples: list[dict], judged: Optional[set] = None, limit: int = 50,
                    versions: Optional[dict] = None, current: Optional[int] = None) -> list[tuple[dict, dict]]:
    """Pairs of different samples that answer the same prompt, leaving out pairs judged already
    (``judged``: set of frozenset({id_a, id_b})), the ones a judgement teaches most first: pairs
    whose two scores come from the same reward version (``versions``: step -> reward version)
    ordered by how close the scores are (the reward is least sure which is better), newest
    first among equals, those scored by the ``current`` reward version (when given) before
    older ones; then pairs whose scores cannot be compared."""
    judged = judged or set()
    versions = versions or {}
    by_key: dict[str, list[dict]] = {}
    for s in samples:
        k = pair_key(s)
        if k is not None:
            by_key.setdefault(k, []).append(s)
    out = []
    for group in by_key.values():
        if len(group) < 2:
            continue
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                a, b = group[i], group[j]
                if a.get("response") == b.get("response"):
                    continue
                if frozenset((str(a.get("id")), str(b.get("id")))) in judged:
                    continue
                out.append((a, b))

    def unsure(ab) -> tuple:
        a, b = ab
        sa, sb = _score(a), _score(b)
        newest = -max(int(a.get("step") or 0), int(b.get("step") or 0))
        va = version_at(versions, a)
        if sa is None or sb is None or va != version_at(versions, b):
            return (2, 0.0, newest)
        return (int(current is not None and va != current), abs(sa - sb), newest)

    out.sort(key=unsure)
    return out[:limit]


def pick_pair(scores: Sequence[float], responses: Sequence[str], base: Optional[Sequence[float]] = None,
              preference: Optional[Sequence[float]] = None) -> tuple[int, int, dict]:
    """Of ``len(scores)`` candidate responses to one prompt, the two a judgement teaches most
    (active selection): where a learned preference is in place (``base`` and ``preference``:
    the two parts of each score), the pair the base reward and the preference rank opposite
    ways, most strongly; otherwise (or when they agree on every pair) the pair the current reward
    is least sure about: the closest scores. Identical responses are never paired.
    Returns ``(i, j, why)`` with ``why = {"why", "margin", "candidates"}``."""
    n = len(scores)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if responses[i] != responses[j]]
    if not pairs:
        pairs = [(0, 1)] if n >= 2 else []
    if not pairs:
        raise ValueError(f"pick_pair needs at least 2 candidates; got {n}")
    info = {"candidates": n}
    if base is not None and preference is not None:
        sb = _spread(base) or 1.0
        sp = _spread(preference) or 1.0

        def conflict(ij) -> float:
            i, j = ij
            db, dp = (base[i] - base[j]) / sb, (preference[i] - preference[j]) / sp
            return min(abs(db), abs(dp)) if db * dp < 0 else -1.0

        best = max(pairs, key=conflict)
        if conflict(best) > 0:
            i, j = best
            return i, j, {**info, "why": "the base reward and the learned preference disagree",
                          "margin": round(abs(scores[i] - scores[j]), 6)}
    i, j = min(pairs, key=lambda ij: (abs(scores[ij[0]] - scores[ij[1]]), ij))
    return i, j, {**info, "why": "the current reward is least sure", "margin": round(abs(scores[i] - scores[j]), 6)}


def _spread(xs: Sequence[float]) -> float:
    xs = [float(x) for x in xs]
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def steps_versions(run_dir: Path) -> dict[int, int]:
    """step -> the reward version that scored it (metrics.jsonl's ``reward_version``)."""
    out = {}
    for m in _rows(Path(run_dir) / "metrics.jsonl"):
        if isinstance(m.get("step"), int) and isinstance(m.get("reward_version"), int):
            out[m["step"]] = m["reward_version"]
    return out


def reward_version_now(run_dir: Path) -> int:
    """The reward version in place (run.json's ``reward_version``; 0 when it names none)."""
    import json

    try:
        v = json.loads((Path(run_dir) / "run.json").read_text()).get("reward_version")
    except (OSError, ValueError, AttributeError):
        return 0
    return v if isinstance(v, int) else 0


def min_discordant(confidence: float) -> int:
    """The fewest judgements on which a new reward must beat the current one (and lose on none)
    for a one-sided sign test at ``confidence`` to call it better: 0.5**k <= 1 - confidence."""
    alpha = max(1e-9, 1.0 - float(confidence))
    return max(1, math.ceil(math.log(alpha) / math.log(0.5) - 1e-9))


def _refit_confidence(run_dir: Path) -> float:
    """``reward.refit.confidence`` of the run's config.yaml (the schema's default when it sets
    none or cannot be read)."""
    import yaml

    from engine.config import RefitSettings

    default = RefitSettings().confidence
    try:
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
        v = ((cfg.get("reward") or {}).get("refit") or {}).get("confidence")
        return float(v) if isinstance(v, (int, float)) and 0.5 <= v < 1 else default
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return default


def judge_counter(run_dir: Path, confidence: Optional[float] = None) -> dict:
    """What the pairwise screen's counter shows: how often the reward in place agrees with the
    judgements made since it was put in place (they are held out for it: it was not fitted on
    them), the last refit's k-fold held-out agreement, and how many more judgements the next
    refit needs (from the last refit's verdict when it said so; otherwise a lower bound: a
    refit right on every pair the current reward gets wrong needs ``min_discordant`` of them,
    and only judgements held out for the current reward can show it wrong).
    """
    import json

    run_dir = Path(run_dir)
    confidence = _refit_confidence(run_dir) if confidence is None else float(confidence)
    rows = _rows(run_dir / "labels.jsonl")
    n_rows = sum(1 for r in rows if is_mark(r) or is_pair(r))
    pairs = [r for r in rows if is_pair(r)]
    try:
        reg = json.loads((run_dir / "rewards" / "versions.json").read_text())
    except (OSError, ValueError):
        reg = {}
    version = reward_version_now(run_dir)
    versions = steps_versions(run_dir)
    found = find_samples(run_dir, [i for r in pairs for i in (r.get("chosen_id"), r.get("rejected_id"))
                                   if i is not None])
    agree = held = 0
    for r in pairs:
        c, x = found.get(str(r.get("chosen_id"))), found.get(str(r.get("rejected_id")))
        if c is None or x is None or version_at(versions, c) != version or version_at(versions, x) != version:
            continue
        sc, sx = _score(c), _score(x)
        if sc is None or sx is None:
            continue
        held += 1
        agree += 1 if sc > sx else 0
    out = {"rows": n_rows, "pairs": len(pairs), "reward_version": version, "held_out": held, "agree": agree,
           "agreement": agree / held if held else None, "confidence": confidence}
    refits = reg.get("refits") or []
    last = refits[-1] if refits else None
    if last is not None:
        out["last_refit"] = {"attempt": last.get("attempt"), "state": last.get("state"),
                             "judgement_accuracy": (last.get("new") or {}).get("judgement_accuracy"),
                             "current_accuracy": (last.get("current") or {}).get("judgement_accuracy"),
                             "held_out": (last.get("judgements") or {}).get("held_out")}
    more = ((last or {}).get("test") or {}).get("needs_more")
    if last is not None and last.get("state") == "refused" and isinstance(more, int):
        since = n_rows - int(last.get("judgement_rows") or 0)
        out["needs_more"] = max(0, more - since)
        out["needs_how"] = f"refit {last.get('attempt')} said ~{more} more"
    else:
        k = min_discordant(confidence)
        wrong_rate = (held - agree + 1) / (held + 2)        # Laplace: 0.5 with no judgement yet
        # only judgements held out for the current reward can show it wrong (it was fitted on the rest)
        out["needs_more"] = max(0, math.ceil(k / wrong_rate) - held)
        out["needs_how"] = (f"at least: a refit right on every pair the current reward gets wrong needs "
                            f"{k} of them at {confidence:.0%}, among judgements held out for it")
    return out


def judged_pairs(rows: list[dict]) -> set:
    return {frozenset((str(r.get("chosen_id")), str(r.get("rejected_id")))) for r in rows if is_pair(r)}
