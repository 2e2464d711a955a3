"""Would the plain mean of all-MiniLM-L6-v2's token states make better preference features than
the unit-length mean the refit reads (``engine.preference.SentenceEncoder``)? Measured on a judge
demo's own judgements: the head is fitted as the refit fits it (L2 by cross-validation) on both,
then read on

* the policy's samples of a run (``--samples``: steps ``--steps``), where the judge's taste (its
  words) is known: the spread of ``z`` there, its correlation with the taste and the gap in ``z``
  between samples with and without a judge word -- what PPO is pushed by;
* the base reward's original held-out rows (whole reviews): the spread of ``z`` there and the
  base's pairwise ranking of them with ``base + weight * spread * z`` for each weight -- what the
  refit's original-set guard reads; ``--train-rows``: the base's original *training* rows instead
  (short snippets, as long as the policy's responses, where the held-out rows are whole reviews).

The answer (``docs/results/refit-pooling-20261208/``): the plain mean halves the head's spread on
the whole reviews, so the guard sees less harm, but not on the short rows -- it is the reviews'
length, not a better head, so the refit keeps the unit length.

    python scripts/refit_pooling.py DEMO_DIR --samples RUN_OR_DEMO_DIR [--steps 12-61] [--words a,b]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

WEIGHTS = (0.5, 1.0, 1.5, 2.0, 3.0)


def main(argv=None) -> int:
    from judge_demo import JUDGE_WORDS, judge_count

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("demo", help="a judge demo folder: config.yaml and labels.jsonl")
    ap.add_argument("--samples", required=True, help="a run or demo folder whose samples.jsonl is read")
    ap.add_argument("--steps", default="12-61")
    ap.add_argument("--words", default=",".join(JUDGE_WORDS))
    ap.add_argument("--train-rows", action="store_true", help="read the original *training* rows (short) instead")
    a = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from engine import preference as pref
    from engine.config import validate_text
    from engine.files import read_jsonl
    from engine.judgements import read_judgements
    from engine.refit import (
        _judged_texts,
        _original_set,
        build_reward_source,
        decision_threshold,
        original_accuracy_of,
        refit_settings,
    )

    demo = Path(a.demo)
    JUDGE_WORDS[:] = [w.strip().lower() for w in a.words.split(",") if w.strip()]
    lo, hi = (int(x) for x in a.steps.split("-"))
    cfg = validate_text((demo / "config.yaml").read_text(), str(demo / "config.yaml")).config
    rc = refit_settings(cfg)
    prompts, responses, judged = _judged_texts(read_judgements(demo).ordered())
    _, orig_train, orig, positive = _original_set(cfg, rc, cfg.reward.source, lambda m: None)
    if a.train_rows:
        orig = orig_train[:len(orig)]
    samples = [s for s in read_jsonl(Path(a.samples) / "samples.jsonl")
               if s.get("kind") != "pair" and lo <= int(s["step"]) <= hi]
    taste = torch.tensor([float(judge_count(s["response"]) > 0) for s in samples])
    base_src = build_reward_source(cfg, cfg.reward.source)
    try:
        thr = decision_threshold(base_src)
        base = torch.tensor(base_src.score(prompts, responses), dtype=torch.float32)
        ob = torch.tensor(base_src.score([""] * len(orig), [r.text for r in orig]), dtype=torch.float32)
    finally:
        base_src.close()
    spread = pref.spread(base[judged.rows()])
    print(f"{demo}: {len(judged)} judgements; {len(samples)} samples of steps {lo}-{hi} in {a.samples} "
          f"(taste share {float(taste.mean()):.3f}); {len(orig)} original {'training' if a.train_rows else 'held-out'} "
          f"rows ({sum(len(r.text.split()) for r in orig) / max(1, len(orig)):.0f} words on average), base ranks "
          f"{original_accuracy_of(ob.tolist(), orig, positive, thr)['original_accuracy']:.3f} of their pairs; "
          f"base spread over the judged texts {spread:.4f}")
    print("pooling  L2     z spread: samples  original | corr(z, taste)  z gap | original rows ranked at weight "
          + " ".join(f"{w:g}" for w in WEIGHTS))
    enc = pref.SentenceEncoder()       # the refit's own
    try:    # each text read once: the unit-length features are the plain mean scaled
        means = [enc.embed(t, unit=False) for t in (responses, [s["response"] for s in samples],
                                                      [r.text for r in orig])]
    finally:
        enc.close()
    for pooling in ("unit", "mean"):
        feats, fs, fo = (torch.nn.functional.normalize(m, dim=-1) if pooling == "unit" else m for m in means)
        l2 = pref.choose_l2("sentence", feats, judged)
        head = pref.fit_head("sentence", feats, judged, l2)
        zs, zo = head.z(fs), head.z(fo)
        corr = float(torch.corrcoef(torch.stack([zs, taste]))[0, 1])
        gap = float(zs[taste == 1].mean() - zs[taste == 0].mean())
        ranks = [original_accuracy_of(pref.combined(ob, zo, w * spread).tolist(), orig, positive, thr)
                 ["original_accuracy"] for w in WEIGHTS]
        print(f"{pooling:7s} {l2:<6g} {float(zs.std()):16.2f} {float(zo.std()):9.2f} | {corr:14.3f} {gap:6.2f} | "
              + " ".join(f"{r:.3f}" for r in ranks), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
