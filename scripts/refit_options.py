"""Which refit learns a judge's taste best per second? Measured on a finished run's samples.

A scripted judge prefers, of two samples written at the same step, the one with more words from
a list (``--words``; default: film words, a taste the bundled sentiment reward is at chance on).
``--pairs`` such pairs (the oldest steps) go into a scratch run folder's ``labels.jsonl`` beside a
copy of the run's ``config.yaml``; the real refit (``engine.refit.run_refit``) runs once per
option; the current and the new reward are then scored on the judge's other pairs (the script's
own held-out set, never trained on):

    python scripts/refit_options.py RUN_DIR [--pairs 40] [--options head:reward+words,head:words,...]
        [--json OUT.json]

Prints, per option: seconds, the refit's own held-out agreement (k-fold) and verdict, and the
agreement of the current and the new reward with the judge on the script's held-out pairs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILM = ["movie", "movies", "film", "films", "story", "plot", "scene", "scenes", "actor", "actors", "acting",
        "director", "cast", "character", "characters", "script", "music", "camera", "dialogue", "screen"]
_WORD = re.compile(r"[a-z]+")


def count(words: set, text: str) -> int:
    return sum(1 for w in _WORD.findall(text.lower()) if w in words)


def judge_pairs(samples: list[dict], words: set, seed: int) -> list[tuple[dict, dict]]:
    """Same-step pairs whose taste counts differ: (preferred, other), oldest steps first."""
    rng = random.Random(seed)
    by_step: dict[int, list[dict]] = {}
    for s in samples:
        by_step.setdefault(int(s["step"]), []).append(s)
    out = []
    for step in sorted(by_step):
        rows = by_step[step][:]
        rng.shuffle(rows)
        hi = [r for r in rows if count(words, r["response"]) > 0]
        lo = [r for r in rows if count(words, r["response"]) == 0]
        for a, b in zip(hi, lo):
            out.append((a, b))
    return out


def agreement(src, pairs) -> float:
    sc = src.score([a["prompt"] for a, _ in pairs], [a["response"] for a, _ in pairs])
    sr = src.score([b["prompt"] for _, b in pairs], [b["response"] for _, b in pairs])
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(sc, sr)) / len(pairs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--words", default=",".join(FILM))
    ap.add_argument("--options", default="head:sentence,head:sentence+words,head:reward,head:words",
                    help="comma-separated METHOD:FEATURES (finetune:- for the fine-tune)")
    ap.add_argument("--weight", type=float, default=2.0, help="reward.refit.weight")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import yaml

    from engine.config import validate_text
    from engine.files import read_jsonl
    from engine.refit import build_reward_source, run_refit

    run = Path(a.run_dir)
    words = {w.strip().lower() for w in a.words.split(",") if w.strip()}
    samples = [s for s in read_jsonl(run / "samples.jsonl") if s.get("kind") != "pair"]
    pairs = judge_pairs(samples, words, a.seed)
    train, held = pairs[:a.pairs], pairs[a.pairs:]
    if len(train) < a.pairs or not held:
        print(f"only {len(pairs)} judge pairs in {run}: need more than {a.pairs}", file=sys.stderr)
        return 2
    base_rate = sum(count(words, s["response"]) > 0 for s in samples) / len(samples)
    cfg_text = (run / "config.yaml").read_text()
    cfg = validate_text(cfg_text, str(run / "config.yaml")).config
    current = cfg.reward.source
    report = {"run": str(run), "samples": len(samples), "taste_share": base_rate, "train_pairs": len(train),
              "script_held_out_pairs": len(held), "train_steps": [train[0][0]["step"], train[-1][0]["step"]],
              "current": current, "options": []}
    src = build_reward_source(cfg, current)
    try:
        report["current_agreement_script_held_out"] = agreement(src, held)
        report["current_agreement_train_pairs"] = agreement(src, train)
    finally:
        src.close()
    print(f"{len(samples)} samples, taste share {base_rate:.3f}; {len(train)} judge pairs to refit on, "
          f"{len(held)} held out by the script; current '{current}' agrees on "
          f"{report['current_agreement_script_held_out']:.3f} of them", flush=True)
    for opt in a.options.split(","):
        method, _, feats = opt.partition(":")
        scratch = Path(tempfile.mkdtemp(prefix="refit-options-"))
        try:
            c = yaml.safe_load(cfg_text)
            c["reward"]["refit"] = dict(c["reward"].get("refit") or {}, method=method, weight=a.weight,
                                        **({"features": feats} if method == "head" else {}))
            (scratch / "config.yaml").write_text(yaml.safe_dump(c, sort_keys=False))
            with open(scratch / "labels.jsonl", "w") as f:
                for hi, lo in train:
                    f.write(json.dumps({"prompt": hi["prompt"], "chosen": hi["response"], "rejected": lo["response"],
                                        "rejected_prompt": lo["prompt"], "step": hi["step"], "source": "human",
                                        "chosen_id": hi["id"], "rejected_id": lo["id"], "time": 0}) + "\n")
            (scratch / "samples.jsonl").write_text("")
            t0 = time.time()
            res = run_refit(scratch, 1, current, scratch / "refit-1", progress=lambda m: None)
            secs = time.time() - t0
            row = {"option": opt, "seconds": round(secs, 1), "accepted": res["accepted"], "reason": res["reason"],
                   "refit_held_out": res["judgements"]["held_out"],
                   "refit_current": res["current"]["judgement_accuracy"],
                   "refit_new": res["new"]["judgement_accuracy"],
                   "original_current": res["current"].get("original_accuracy"),
                   "original_new": res["new"].get("original_accuracy"), "test": res.get("test")}
            src = build_reward_source(cfg, str(scratch / "refit-1"))
            try:
                row["new_agreement_script_held_out"] = agreement(src, held)
            finally:
                src.close()
            report["options"].append(row)
            print(f"{opt:22s} {secs:6.1f} s  refit k-fold {row['refit_current']:.3f} -> {row['refit_new']:.3f}  "
                  f"script held-out {report['current_agreement_script_held_out']:.3f} -> "
                  f"{row['new_agreement_script_held_out']:.3f}  original {row['original_current']} -> "
                  f"{row['original_new']}  {'accepted' if res['accepted'] else 'refused'}", flush=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
