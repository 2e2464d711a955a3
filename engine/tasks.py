"""Verifiable tasks: the bundled arithmetic task and the rule-based rewards that check answers.

``bundled:arithmetic`` is generated, never downloaded: short integer problems (``a + b``,
``a - b``, ``a * b``) drawn from a seeded ``random.Random``, each with its answer. The problems
are unique and split once into a held-out part and a train part, so the two never share a
problem. The task's seed is fixed (``ARITHMETIC_SEED``), so every run evaluates on the same
held-out problems; ``run.seed`` only shuffles the order in which the train problems are used.

Rule rewards (``rule:<name>``) score a response against the row's reference answer:

* ``rule:arithmetic`` -- 1.0 when the response's answer equals the reference (the number after
  the last ``Answer:``, or else the last integer in the response), plus a format bonus of 0.1
  when the response states its answer as ``Answer: <integer>``.
* ``rule:exact`` -- 1.0 when the response, stripped and case-folded, equals the answer.

A row without a reference answer scores 0 (and is not correct).
"""
from __future__ import annotations

import functools
import random
import re
from typing import Optional, Sequence

ARITHMETIC = "bundled:arithmetic"
ARITHMETIC_SEED = 1234
ARITHMETIC_SIZE = 3000      # unique problems generated
ARITHMETIC_HELDOUT = 300    # of which held out
FORMAT_BONUS = 0.1
INSTRUCTION = "Reply with the result as 'Answer: <number>'."

_ANSWER_RE = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*\**\s*(-?\d+)", re.IGNORECASE)
_FORMAT_RE = re.compile(r"Answer:\s*(-?\d+)")
_INT_RE = re.compile(r"-?\d+")


def _problem(rng: random.Random) -> tuple[str, int]:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"{a} * {b}", a * b
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    if op == "-":
        a, b = max(a, b), min(a, b)  # non-negative results
        return f"{a} - {b}", a - b
    return f"{a} + {b}", a + b


@functools.lru_cache(maxsize=4)
def arithmetic_problems(seed: int = ARITHMETIC_SEED, size: int = ARITHMETIC_SIZE,
                        heldout: int = ARITHMETIC_HELDOUT) -> dict[str, tuple[dict, ...]]:
    """``{"train": rows, "heldout": rows}``, each row ``{"prompt", "answer", "expression"}``.

    Deterministic in ``seed``; the expressions are unique, the first ``heldout`` of them (in
    generation order) are held out, so the splits are disjoint.
    """
    if not 0 < heldout < size:
        raise ValueError(f"heldout must be in (0, {size}); got {heldout}")
    rng = random.Random(seed)
    seen: dict[str, int] = {}
    tries = 0
    while len(seen) < size:
        expr, ans = _problem(rng)
        seen.setdefault(expr, ans)
        tries += 1
        if tries > size * 50:  # pragma: no cover - the space holds ~5000 distinct problems
            raise ValueError(f"cannot draw {size} distinct problems")
    rows = tuple({"prompt": f"What is {e}? {INSTRUCTION}", "answer": str(a), "expression": e}
                 for e, a in seen.items())
    return {"heldout": rows[:heldout], "train": rows[heldout:]}


def task_rows(source: str, split: str) -> Optional[list[dict]]:
    """The rows (prompt + answer) of a task source's ``split`` (train | heldout); None for a
    prompt source that is not a task with answers."""
    if str(source).strip() != ARITHMETIC:
        return None
    return list(arithmetic_problems()[split])


def has_heldout(source: str) -> bool:
    return str(source).strip() == ARITHMETIC


# ------------------------------------------------------------------------------ rule rewards

def extract_answer(response: str) -> Optional[str]:
    """The integer a response gives as its answer: after the last 'Answer' (``Answer: 12``,
    ``the answer is 12``), else its last integer; None when it has no integer."""
    hits = _ANSWER_RE.findall(response)
    if hits:
        return str(int(hits[-1]))
    nums = _INT_RE.findall(response)
    return str(int(nums[-1])) if nums else None


def arithmetic_judge(response: str, answer: Optional[str]) -> tuple[float, bool]:
    """``(score, correct)`` of one response under ``rule:arithmetic``."""
    if answer is None:
        return 0.0, False
    got = extract_answer(response)
    correct = got is not None and got == str(int(str(answer).strip()))
    fmt = _FORMAT_RE.search(response) is not None
    return (1.0 if correct else 0.0) + (FORMAT_BONUS if fmt else 0.0), correct


def exact_judge(response: str, answer: Optional[str]) -> tuple[float, bool]:
    if answer is None:
        return 0.0, False
    ok = response.strip().casefold() == str(answer).strip().casefold()
    return (1.0 if ok else 0.0), ok


RULES = {"arithmetic": arithmetic_judge, "exact": exact_judge}


def judge(rule: str, responses: Sequence[str], answers: Optional[Sequence[Optional[str]]]
          ) -> tuple[list[float], list[bool]]:
    """Scores and correctness of ``responses`` under ``rule`` against ``answers``."""
    fn = RULES[rule]
    answers = list(answers) if answers is not None else [None] * len(responses)
    if len(answers) != len(responses):
        raise ValueError(f"rule:{rule}: {len(answers)} answers for {len(responses)} responses")
    out = [fn(r, a) for r, a in zip(responses, answers)]
    return [s for s, _ in out], [c for _, c in out]
