"""How far can PPO on the default move the policy toward a judge's taste in 50 steps, given a
*perfect* preference? The ceiling of issue 25's policy-movement target, apart from how well a
refit learns the taste.

The reward (``score``, a ``python:`` reward source) is the default's base reward plus the judge's
own taste at the refit's scale: ``base + w * z``, with ``z`` = (has a judge word - 0.227) / 0.419
(the film taste's base rate in the default's first steps, and its spread) and ``w`` from
``TASTE_CEILING_W`` (0.233 = weight 1 x the base's spread over the judged texts of
``docs/results/judge-demo-20261207-paused``, what a refit at the default weight gets). A learned
head agrees with the taste less (its ``z`` correlates ~0.58 with it on the policy's samples:
``scripts/refit_pooling.py``), so it can only move the policy less than this.

    PYTHONPATH=scripts TASTE_CEILING_W=0.233 rlhf-console train --config configs/default.yaml \\
        --set reward.source=python:taste_ceiling:score --set run.name=taste-ceiling-w0.233 \\
        --set run.steps=50 --set checkpoint.every=0
    python scripts/taste_ceiling.py RUN_DIR [RUN_DIR ...] [--last-step N]   # taste share, base score per 10 steps

The second form reads each run's ``samples.jsonl`` (every sample of every step) and its
``config.yaml`` (``w`` from its ``run.name``, which must end in ``-w<weight>``, the value given to
``TASTE_CEILING_W``); a run whose reward is not this one (a control on the base reward) counts w = 0.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from judge_demo import judge_count  # the demo's judge: its film words

BASE_RATE, SPREAD = 0.227, 0.419
_base = None


def has_taste(text: str) -> bool:
    return judge_count(text) > 0


def weight() -> float:
    return float(os.environ.get("TASTE_CEILING_W", "0.233"))


def z_of(text: str) -> float:
    return ((1.0 if has_taste(text) else 0.0) - BASE_RATE) / SPREAD


def score(prompts, responses):
    """The reward source: the default's base reward plus ``w`` times the judge's own taste."""
    global _base
    if _base is None:
        from engine.rewards import build_reward

        _base = build_reward("bundled:minilm-sentiment", score_text="response")
    w = weight()
    return [float(b) + w * z_of(r) for b, r in zip(_base.score(prompts, responses), responses)]


def main(argv=None) -> int:
    import argparse

    import yaml

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--last-step", type=int, default=None, help="read steps up to this one only")
    a = ap.parse_args(argv)
    from engine.files import read_jsonl

    for run in a.runs:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        ours = "taste_ceiling" in str(cfg["reward"]["source"])
        m = re.search(r"-w([0-9.]+)$", str(cfg["run"]["name"]))
        if ours and not m:
            print(f"{run}: its run.name {cfg['run']['name']!r} does not end in -w<weight>", file=sys.stderr)
            return 2
        w = float(m.group(1)) if ours else 0.0
        samples = [s for s in read_jsonl(run / "samples.jsonl") if s.get("kind") != "pair"
                   and (a.last_step is None or int(s["step"]) <= a.last_step)]
        print(f"{run}: reward {cfg['reward']['source']}, w = {w:g}")
        steps = sorted({int(s["step"]) for s in samples})
        print("  steps    samples  taste share  base score")
        for lo in range(steps[0], steps[-1] + 1, 10):
            rows = [s for s in samples if lo <= int(s["step"]) < lo + 10]
            if not rows:
                continue
            share = sum(has_taste(s["response"]) for s in rows) / len(rows)
            base = sum(s["score"] - w * z_of(s["response"]) for s in rows) / len(rows)
            print(f"  {lo:>3}-{min(lo + 9, steps[-1]):<3}  {len(rows):7d}  {share:11.3f}  {base:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
