"""A scripted judge in the loop: does human feedback change the training?

The judge prefers the response with more words from a small list of film-craft words
(``JUDGE_WORDS``), a taste the bundled sentiment reward model does not reward (the script
measures that too). It works through engine.client only, like a person at the console:

1. launch the run (default: configs/default.yaml) and let it train;
2. for ``--label-minutes`` it asks the live actor for fresh responses to one prompt
   (``run.sample_pair(n=...)``), prefers the one with the most judge words over the one with the
   fewest (ties are skipped) and records it with ``run.prefer`` until ``--pairs`` pairs are in;
   every ``--heldout-every``-th judged pair is kept aside instead (never written): the script's
   own held-out set;
3. ``run.refit_reward(wait=True)``: the refit trains in its own process while the run goes on,
   and is swapped in at a step boundary only if it is not worse;
4. the run trains ``--after-steps`` more steps, then stops;
5. it prints: the refit's own evaluation (held-out judgements and original set, current vs new),
   both models' agreement with the judge on the script's held-out pairs, and the judge-word
   share / mean count of the policy's samples in the steps before and after the swap.

    python scripts/judge_demo.py                                   # the default config, ~25 min
    python scripts/judge_demo.py --config configs/tiny.yaml --pairs 6 --label-minutes 1 \\
        --after-steps 3 --words a,e --substrings \\
        --set reward.refit.original_eval_rows=32                  # a smoke run, ~3 min
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

JUDGE_WORDS = ["camera", "music", "score", "soundtrack", "director", "script", "scene", "scenes", "actor",
               "actors", "dialogue", "cinematography", "editing", "lighting", "shot", "shots", "cast"]
_WORD = re.compile(r"[a-z]+")


SUBSTRINGS = [False]   # --substrings: count occurrences inside words (a smoke run on random text)


def judge_count(text: str) -> int:
    if SUBSTRINGS[0]:
        return sum(text.lower().count(w) for w in JUDGE_WORDS)
    return sum(1 for w in _WORD.findall(text.lower()) if w in JUDGE_WORDS)


def taste(samples: list[dict]) -> dict:
    counts = [judge_count(s.get("response", "")) for s in samples]
    if not counts:
        return {"samples": 0, "share": None, "mean": None}
    return {"samples": len(counts), "share": sum(c > 0 for c in counts) / len(counts),
            "mean": sum(counts) / len(counts)}


def agreement(source: str, cfg, pairs: list[tuple[dict, dict]]) -> float:
    """Share of (chosen, rejected) pairs a reward source ranks the judge's way (ties: half)."""
    from engine.refit import build_reward_source

    src = build_reward_source(cfg, source, "cpu")
    try:
        sc = src.score([c["prompt"] for c, _ in pairs], [c["response"] for c, _ in pairs])
        sr = src.score([r["prompt"] for _, r in pairs], [r["response"] for _, r in pairs])
    finally:
        src.close()
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(sc, sr)) / len(pairs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--pairs", type=int, default=40, help="pairs to record (labels.jsonl)")
    ap.add_argument("--label-minutes", type=float, default=10.0, help="time to record them in")
    ap.add_argument("--candidates", type=int, default=8, help="responses per prompt the judge picks a pair from")
    ap.add_argument("--heldout-every", type=int, default=5, help="every N-th judged pair is kept aside")
    ap.add_argument("--after-steps", type=int, default=40, help="steps to train after the swap")
    ap.add_argument("--warmup-steps", type=int, default=3, help="steps before the judge starts")
    ap.add_argument("--words", help="comma-separated judge words instead of the film-craft list (a smoke "
                                    "run of tiny:llama, whose random text has no film words, needs common ones)")
    ap.add_argument("--substrings", action="store_true", help="count the judge words inside words too")
    a = ap.parse_args(argv)
    if a.words:
        JUDGE_WORDS[:] = [w.strip().lower() for w in a.words.split(",") if w.strip()]
    SUBSTRINGS[0] = a.substrings

    from engine.client import launch
    from engine.files import read_jsonl

    overrides = [f"run.output_dir={a.runs_dir}", "run.steps=100000", *a.set]
    t_start = time.time()
    run = launch(a.config, overrides=overrides)
    print(f"run {run.name}: {run.path}", flush=True)
    heldout: list[tuple[dict, dict]] = []
    result = {}
    try:
        run.wait_step(a.warmup_steps, timeout=1800)
        t0 = time.time()
        deadline = t0 + a.label_minutes * 60
        recorded = judged = asked = 0
        while recorded < a.pairs and time.time() < deadline:
            # spread the pairs over the time given: no faster than pairs / minutes
            due = t0 + (deadline - t0) * recorded / a.pairs
            if time.time() < due:
                time.sleep(min(5.0, due - time.time()))
                continue
            asked += 1
            cands = run.sample_pair(n=a.candidates)
            ranked = sorted(cands, key=lambda s: judge_count(s["response"]))
            lo, hi = ranked[0], ranked[-1]
            if judge_count(hi["response"]) == judge_count(lo["response"]):
                continue          # no preference: the judge skips
            judged += 1
            if a.heldout_every and judged % a.heldout_every == 0:
                heldout.append((hi, lo))
                continue
            run.prefer(hi["id"], lo["id"])
            recorded += 1
            print(f"[{time.time() - t0:5.0f}s] pair {recorded}/{a.pairs}: {hi['id']} ({judge_count(hi['response'])} "
                  f"judge words) over {lo['id']} ({judge_count(lo['response'])})", flush=True)
        print(f"judge: {recorded} pairs recorded, {len(heldout)} kept aside, {asked} prompts asked, "
              f"{asked - judged} skipped as ties, in {(time.time() - t0) / 60:.1f} min", flush=True)

        print("refit: started (progress in events.log)", flush=True)
        t_refit = time.time()
        entry = run.refit_reward(wait=True, timeout=3600)
        print(f"refit: {entry.get('state')} in {(time.time() - t_refit) / 60:.1f} min: {entry.get('reason')}", flush=True)
        swap = next((v for v in run.reward_versions()["versions"] if v.get("attempt") == entry.get("attempt")), None)
        swap_step = swap["from_step"] if swap else int(run.info.get("step") or 0) + 1
        run.wait_step(swap_step - 1 + a.after_steps, timeout=7200)
    finally:
        if run.alive:
            run.stop(wait=True, timeout=900)

    from engine.config import validate_text

    cfg = validate_text((run.path / "config.yaml").read_text(), str(run.path / "config.yaml")).config
    samples = [s for s in read_jsonl(run.dir.samples) if s.get("kind") != "pair"]
    window = a.after_steps
    before = [s for s in samples if swap_step - window <= s["step"] < swap_step]
    after = [s for s in samples if s["step"] >= swap_step]
    bundled_view = taste(samples)
    v0 = [s for s in samples if s["step"] < swap_step and isinstance(s.get("score"), (int, float))]
    with_w = [s["score"] for s in v0 if judge_count(s["response"]) > 0]
    without = [s["score"] for s in v0 if judge_count(s["response"]) == 0]
    result = {
        "run": str(run.path), "minutes": round((time.time() - t_start) / 60, 1), "refit": {
            k: entry.get(k) for k in ("attempt", "state", "reason", "current", "new", "judgements")},
        "swap_from_step": swap_step if swap else None,
        "taste_before": taste(before), "taste_after": taste(after), "taste_whole_run": bundled_view,
        # does the reward in place before the swap favour the judge's words? (mean score of the
        # policy's samples with and without one)
        "reward_before_swap_with_judge_words": sum(with_w) / len(with_w) if with_w else None,
        "reward_before_swap_without": sum(without) / len(without) if without else None,
    }
    if heldout:
        cur = entry.get("current_source") or cfg.reward.source
        result["script_heldout_pairs"] = len(heldout)
        result["agreement_current"] = agreement(cur, cfg, heldout)
        new_src = swap["source"] if swap else None
        if new_src is None and (run.path / "rewards" / f"refit-{entry.get('attempt')}").exists():
            new_src = str(run.path / "rewards" / f"refit-{entry.get('attempt')}")
        result["agreement_new"] = agreement(new_src, cfg, heldout) if new_src else None
    print(json.dumps(result, indent=1))
    tb, ta = result["taste_before"], result["taste_after"]
    cur_j = (entry.get("current") or {}).get("pair_accuracy")
    new_j = (entry.get("new") or {}).get("pair_accuracy")
    print()
    print(f"refit {entry.get('attempt')}: {entry.get('state')}")
    if cur_j is not None and new_j is not None:
        print(f"  held-out judged pairs (the refit's own, newest {entry['judgements']['held_out']}): "
              f"current {cur_j:.3f} -> new {new_j:.3f}")
    if "agreement_current" in result and result.get("agreement_new") is not None:
        print(f"  the script's {len(heldout)} held-out pairs: current {result['agreement_current']:.3f} -> new "
              f"{result['agreement_new']:.3f} ({'agrees more' if result['agreement_new'] > result['agreement_current'] else 'does not agree more'} with the judge)")
    if tb["samples"] and ta["samples"]:
        print(f"  policy samples with a judge word: {tb['share']:.3f} in the {window} steps before the swap -> "
              f"{ta['share']:.3f} in the {window} steps after (mean count {tb['mean']:.3f} -> {ta['mean']:.3f}; "
              f"{tb['samples']} / {ta['samples']} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
