"""A scripted judge in the loop: do 40 judgements change the reward and the policy within minutes?

The judge prefers the response that talks more about the film itself: more words from a list
(``JUDGE_WORDS``: movie, story, acting, characters, ...), a taste the bundled sentiment reward does not have (the script measures that: the base reward's
agreement with the judge on the judged pairs must be near 0.5). It works through engine.client
only, like a person at the console's pairwise screen:

1. launch the run (default: configs/default.yaml) and let it train ``--base-steps`` steps; the
   taste's base rate is its share in those steps' samples;
2. for at most ``--label-minutes``, ask the live actor for a pair the reward is least sure
   about (``run.sample_pair(candidates=...)``, the screen's active selection; ``--concurrent``
   requests at a time, as a judge with a few pairs queued), prefer the response with more judge
   words (a tie is skipped, as a judge with no preference would) and record it with
   ``run.prefer`` until ``--pairs`` are in; every ``--heldout-every``-th judged pair is kept
   aside instead (never written): the script's own held-out set;
3. ``run.refit_reward(wait=True)``: the refit runs in its own process while the run trains and
   is swapped in at a step boundary only if its verdict accepts it;
4. the run trains ``--window`` steps after the swap and ``--extra`` more (reported apart), then stops;
5. it writes ``--out``: ``demo.json`` (every figure below, computed here), ``README.md`` (made
   from demo.json), and the run's raw files (events.log, metrics.jsonl, labels.jsonl,
   versions.json, the head's preference.json, samples.jsonl without the per-token traces).

Figures: the refit's k-fold held-out agreement (current -> new) and seconds, both rewards on the
script's held-out pairs, the taste's share of the policy's samples in the ``--window`` steps
before and after the swap, and the base reward's mean score over the same windows (re-scored
here with the base reward, since the steps after the swap are scored by base + preference).

    python scripts/judge_demo.py                                   # the default config, ~25 min
    python scripts/judge_demo.py --config configs/tiny.yaml --pairs 6 --label-minutes 2 \\
        --base-steps 2 --window 3 --words a,e --substrings --out /tmp/demo-smoke     # ~3 min
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "scripts"))
from refit_options import FILM  # noqa: E402 - one word list for both scripts

# The judge's words: the film itself (movie, story, acting, ...). A narrower film-craft list
# (camera, soundtrack, cinematography, ...) appeared in 6 % of the default's samples on
# 2026-12-07: too rare to judge 40 pairs in 10 minutes (9 in 4 minutes; most pairs were ties).
JUDGE_WORDS = list(FILM)
_WORD = re.compile(r"[a-z]+")
SUBSTRINGS = [False]   # --substrings: count occurrences inside words (a smoke run on random text)

TARGETS = {"heldout_agreement_min": 0.8, "refit_seconds_max": 60.0, "share_ratio_min": 2.0,
           "share_gain_min": 0.15, "base_drop_max": 0.05, "base_chance_band": (0.35, 0.65)}


def use_judge_of(res: dict) -> None:
    """Count as the judge of a finished demo (its ``demo.json``) counted: its words, and whether
    they were counted inside words (``--substrings``)."""
    JUDGE_WORDS[:] = res["judge_words"]
    SUBSTRINGS[0] = "--substrings" in res.get("argv", [])


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


def ranks_like_judge(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def scores_of(source: str, cfg, *groups: list[dict]) -> list[list[float]]:
    """The scores of a reward source on each group of samples (the source loaded once)."""
    from engine.refit import build_reward_source

    src = build_reward_source(cfg, source, "cpu")
    try:
        return [[float(x) for x in src.score([s["prompt"] for s in g], [s["response"] for s in g])] if g else []
                for g in groups]
    finally:
        src.close()


def agreement(source: str, cfg, pairs: list[tuple[dict, dict]]) -> float:
    """Share of (chosen, rejected) pairs a reward source ranks the judge's way (ties: half)."""
    sc, sr = scores_of(source, cfg, [c for c, _ in pairs], [r for _, r in pairs])
    return sum(ranks_like_judge(a, b) for a, b in zip(sc, sr)) / len(pairs)


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


class Judge:
    """Asks for pairs, judges them by the word list, records or keeps aside (thread-safe)."""

    def __init__(self, run, a):
        self.run, self.a = run, a
        self.lock = threading.Lock()
        self.recorded: list[tuple[dict, dict]] = []
        self.heldout: list[tuple[dict, dict]] = []
        self.asked = self.ties = self.judged = 0
        self.t0 = time.time()
        self.deadline = self.t0 + a.label_minutes * 60

    def done(self) -> bool:
        return len(self.recorded) >= self.a.pairs or time.time() >= self.deadline

    def work(self) -> None:
        while not self.done():
            try:
                pair = self.run.sample_pair(candidates=self.a.candidates, timeout=300)
            except Exception as e:  # noqa: BLE001 - the run ended or a boundary did not come
                print(f"judge: sample_pair failed: {e}", flush=True)
                return
            a, b = pair
            hi, lo = sorted(pair, key=lambda s: judge_count(s["response"]), reverse=True)
            with self.lock:
                self.asked += 1
                if judge_count(hi["response"]) == judge_count(lo["response"]):
                    self.ties += 1
                    continue
                if self.done():
                    return
                self.judged += 1
                if self.a.heldout_every and self.judged % self.a.heldout_every == 0:
                    self.heldout.append((hi, lo))
                    continue
                self.run.prefer(hi["id"], lo["id"])
                self.recorded.append((hi, lo))
                print(f"[{time.time() - self.t0:5.0f}s] pair {len(self.recorded)}/{self.a.pairs}: {hi['id']} "
                      f"({judge_count(hi['response'])} judge words, score {hi['score']:.3f}) over {lo['id']} "
                      f"({judge_count(lo['response'])}, {lo['score']:.3f}); {hi['picked']['why']}", flush=True)


def label(run, a) -> Judge:
    j = Judge(run, a)
    with ThreadPoolExecutor(a.concurrent) as ex:
        try:
            for f in [ex.submit(j.work) for _ in range(a.concurrent)]:
                f.result()
        except KeyboardInterrupt:
            j.deadline = 0.0           # the judging threads end after their current pair
            raise
    j.seconds = time.time() - j.t0
    print(f"judge: {len(j.recorded)} pairs recorded, {len(j.heldout)} kept aside, {j.asked} pairs asked, "
          f"{j.ties} skipped as ties, in {j.seconds / 60:.1f} min", flush=True)
    return j


def copy_raw(run, out: Path, attempt) -> None:
    from engine.files import read_jsonl

    for name in ("events.log", "metrics.jsonl", "labels.jsonl", "config.yaml"):
        if (run.path / name).exists():
            shutil.copy(run.path / name, out / name)
    reg = run.path / "rewards" / "versions.json"
    if reg.exists():
        shutil.copy(reg, out / "versions.json")
    pref = run.path / "rewards" / f"refit-{attempt}" / "preference.json"
    if pref.exists():
        shutil.copy(pref, out / "preference.json")
    with open(out / "samples.jsonl", "w") as f:
        for s in read_jsonl(run.dir.samples):
            s.pop("tokens", None)
            f.write(json.dumps(s) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--out", help="folder for demo.json, README.md and the raw files "
                                  "(default docs/results/judge-demo-<yyyymmdd>)")
    ap.add_argument("--pairs", type=int, default=40, help="pairs to record (labels.jsonl)")
    ap.add_argument("--label-minutes", type=float, default=10.0, help="time to record them in")
    ap.add_argument("--candidates", type=int, default=6, help="fresh responses per pair asked (active selection)")
    ap.add_argument("--concurrent", type=int, default=4, help="pair requests in flight at a time")
    ap.add_argument("--heldout-every", type=int, default=5, help="every N-th judged pair is kept aside")
    ap.add_argument("--base-steps", type=int, default=10, help="steps whose samples give the taste's base rate")
    ap.add_argument("--window", type=int, default=50, help="steps compared before and after the swap")
    ap.add_argument("--extra", type=int, default=50, help="steps trained after the window, reported "
                                                          "apart (does the policy keep moving?)")
    ap.add_argument("--pause-while-judging", action="store_true",
                    help="pause the run after the base-rate steps, judge and refit while it waits, resume "
                         "with the new reward (as a user who stops training to judge would): the swap comes "
                         "before the run has spent its KL budget on the base reward alone")
    ap.add_argument("--words", help="comma-separated judge words instead of the film-craft list")
    ap.add_argument("--substrings", action="store_true", help="count the judge words inside words too")
    ap.add_argument("--control", help="compare the demo folder --out with this control demo folder "
                                      "(same config and seed, later swap) and rewrite its README; runs nothing")
    a = ap.parse_args(argv)
    if a.control:
        print(json.dumps(compare_control(Path(a.out), Path(a.control)), indent=1))
        return 0
    if a.words:
        JUDGE_WORDS[:] = [w.strip().lower() for w in a.words.split(",") if w.strip()]
    SUBSTRINGS[0] = a.substrings
    out = Path(a.out or ROOT / "docs" / "results" / f"judge-demo-{time.strftime('%Y%m%d')}")

    from engine.client import launch
    from engine.config import validate_text
    from engine.files import read_jsonl

    t_start = time.time()
    run = launch(a.config, overrides=[f"run.output_dir={a.runs_dir}", "run.steps=100000", *a.set])
    print(f"run {run.name}: {run.path}", flush=True)
    try:
        run.wait_step(a.base_steps, timeout=3600)
        rate = taste([s for s in read_jsonl(run.dir.samples) if s.get("kind") != "pair"])
        print(f"taste base rate: {rate['share']:.3f} of {rate['samples']} samples have a judge word", flush=True)
        if not rate["share"] or rate["share"] < 0.1:
            print("warning: the taste is rare in the policy's samples: most pairs will be ties", flush=True)
        if a.pause_while_judging:
            run.pause()
            print("paused while judging and refitting", flush=True)
        judge = label(run, a)
        t_refit = time.time()
        entry = run.refit_reward(wait=True, timeout=3600)
        refit_wall = time.time() - t_refit
        print(f"refit: {entry.get('state')} in {refit_wall:.1f} s: {entry.get('reason')}", flush=True)
        if a.pause_while_judging:
            run.resume()
            print("resumed", flush=True)
        swap = next((v for v in run.reward_versions()["versions"] if v.get("attempt") == entry.get("attempt")), None)
        swap_step = swap["from_step"] if swap else int(run.info.get("step") or 0) + 1
        run.wait_step(swap_step - 1 + a.window + a.extra, timeout=7200)
    finally:
        if run.alive:
            run.stop(wait=True, timeout=900)

    cfg = validate_text((run.path / "config.yaml").read_text(), str(run.path / "config.yaml")).config
    base_source = cfg.reward.source
    samples = [s for s in read_jsonl(run.dir.samples) if s.get("kind") != "pair"]
    base_rate = [s for s in samples if s["step"] <= a.base_steps]
    first = max(1, swap_step - a.window)          # the window before cannot start before step 1
    before = [s for s in samples if first <= s["step"] < swap_step]
    after = [s for s in samples if swap_step <= s["step"] < swap_step + a.window]
    later = [s for s in samples if swap_step + a.window <= s["step"] < swap_step + a.window + a.extra]
    judged = judge.recorded + judge.heldout
    base_on_judged = mean(ranks_like_judge(c["score"], r["score"]) for c, r in judged)   # v0 scored them
    before_base, after_base, later_base = scores_of(base_source, cfg, before, after, later)
    new_source = swap["source"] if swap else None
    res = {
        "run": str(run.path), "argv": sys.argv[1:] if argv is None else list(argv), "judge_words": JUDGE_WORDS,
        "minutes_total": round((time.time() - t_start) / 60, 1),
        "taste_base_rate": {"steps": [1, a.base_steps], **taste(base_rate)},
        "judging": {"recorded": len(judge.recorded), "kept_aside": len(judge.heldout), "asked": judge.asked,
                    "ties_skipped": judge.ties, "minutes": round(judge.seconds / 60, 2),
                    "candidates": a.candidates, "concurrent": a.concurrent,
                    "why_offered": sorted({c["picked"]["why"] for c, _ in judged})},
        "base_reward_agreement_on_judged_pairs": base_on_judged,
        "refit": {k: entry.get(k) for k in ("attempt", "state", "reason", "method", "features", "weight", "w",
                                            "current", "new", "judgements", "test", "seconds")},
        "refit_wall_seconds": round(refit_wall, 1),
        "swap_from_step": swap_step if swap else None, "new_source": new_source,
        "window": a.window, "extra": a.extra, "paused_while_judging": a.pause_while_judging,
        "taste_before": {"steps": [first, swap_step - 1], **taste(before)},
        "taste_after": {"steps": [swap_step, swap_step + a.window - 1], **taste(after)},
        "taste_later": {"steps": [swap_step + a.window, swap_step + a.window + a.extra - 1], **taste(later)},
        "base_score_before": mean(before_base), "base_score_after": mean(after_base),
        "base_score_later": mean(later_base),
        "logged_score_before": mean(s["score"] for s in before),
        "logged_score_after": mean(s["score"] for s in after),
    }
    for k in ("current", "new"):
        for drop in ("hits",):
            (res["refit"].get(k) or {}).pop(drop, None)
    if judge.heldout:
        res["script_heldout_pairs"] = len(judge.heldout)
        res["script_heldout_current"] = agreement(base_source, cfg, judge.heldout)
        res["script_heldout_new"] = agreement(new_source, cfg, judge.heldout) if new_source else None
    res["verdicts"] = checks(res)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(res, indent=1) + "\n")
    copy_raw(run, out, entry.get("attempt"))
    (out / "README.md").write_text(report(res, out))
    print(json.dumps(res["verdicts"], indent=1))
    print(f"wrote {out}")
    return 0


def compare_control(out: Path, control: Path) -> dict:
    """The demo in ``out`` against a control run of ``control`` (another demo folder of the same
    config and seed whose swap came later): the two are the same run up to the first swap (checked
    on the samples' text); from there, the taste's share in the windows where only ``out`` had the
    learned preference, and after."""
    from engine.files import read_jsonl

    res, ctl = json.loads((out / "demo.json").read_text()), json.loads((control / "demo.json").read_text())
    use_judge_of(res)  # the taste is this demo's judge's (the control may have had another)
    rows = {k: [s for s in read_jsonl(d / "samples.jsonl") if s.get("kind") != "pair"]
            for k, d in (("demo", out), ("control", control))}
    swap, ctl_swap = res["swap_from_step"], ctl["swap_from_step"] or 10 ** 9
    shared = [(a["response"], b["response"]) for a, b in zip(
        [s for s in rows["demo"] if s["step"] < swap], [s for s in rows["control"] if s["step"] < swap])]
    last = max(s["step"] for s in rows["demo"])
    bounds = [(swap, ctl_swap - 1), (ctl_swap, last)] if ctl_swap <= last else [(swap, last)]
    windows = []
    for lo, hi in bounds:
        pick = {k: [s for s in v if lo <= s["step"] <= hi] for k, v in rows.items()}
        if all(pick.values()):
            windows.append({"steps": [lo, hi], "demo": taste(pick["demo"]), "control": taste(pick["control"]),
                            "control_reward": "base" if hi < ctl_swap else "its own refit, from step "
                                                                           f"{ctl_swap}"})
    out_ = {"control": os.path.relpath(control, out), "identical_before_swap": bool(shared) and all(a == b for a, b in shared),
            "compared_steps_before_swap": swap - 1, "windows": windows}
    res["control"] = out_
    (out / "demo.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "README.md").write_text(report(res, out))
    return out_


def checks(res: dict) -> dict:
    """Each target of the demo against what was measured (None: could not be measured)."""
    t = TARGETS
    new = (res["refit"].get("new") or {}).get("judgement_accuracy")
    tb, ta = res["taste_before"]["share"], res["taste_after"]["share"]
    bb, ba = res["base_score_before"], res["base_score_after"]
    lo, hi = t["base_chance_band"]
    ok = res["base_reward_agreement_on_judged_pairs"]
    return {
        "base_reward_at_chance": None if ok is None else lo <= ok <= hi,
        "heldout_agreement_at_least_0.8": None if new is None else new >= t["heldout_agreement_min"],
        "refit_accepted": res["refit"].get("state") == "accepted",
        "refit_at_most_60_s": None if res["refit"].get("seconds") is None else res["refit"]["seconds"] <= t["refit_seconds_max"],
        "taste_share_doubled": None if not tb or ta is None else ta >= t["share_ratio_min"] * tb,
        "taste_share_up_0.15": None if tb is None or ta is None else ta - tb >= t["share_gain_min"],
        "base_score_drop_at_most_0.05": None if bb is None or ba is None else bb - ba <= t["base_drop_max"],
    }


def _f(v, nd=3) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def report(res: dict, out: Path) -> str:
    r, j = res["refit"], res["judging"]
    cur, new = r.get("current") or {}, r.get("new") or {}
    tb, ta = res["taste_before"], res["taste_after"]
    lines = [
        f"# Judge demo: {Path(res['run']).name}",
        "",
        "Made by `scripts/judge_demo.py` from `demo.json` in this folder (nothing typed by hand); the",
        "raw files of the run are next to it. Command: `python scripts/judge_demo.py "
        + " ".join(res["argv"]) + "`.",
        "",
        f"- Judge: prefers the response with more of these words: {', '.join(res['judge_words'])}; its taste's "
        f"base rate in the policy's samples of steps {res['taste_base_rate']['steps'][0]}-"
        f"{res['taste_base_rate']['steps'][1]}: {_f(res['taste_base_rate']['share'])} "
        f"({res['taste_base_rate']['samples']} samples).",
        f"- The base reward agrees with the judge on {_f(res['base_reward_agreement_on_judged_pairs'])} of the "
        f"{j['recorded'] + j['kept_aside']} judged pairs (chance is 0.5).",
        f"- Judging: {j['recorded']} pairs recorded (+{j['kept_aside']} kept aside) in {j['minutes']} min; "
        f"{j['asked']} pairs asked, {j['ties_skipped']} skipped as ties; each pair picked from "
        f"{j['candidates']} fresh responses because: {'; '.join(j['why_offered'])}"
        + ("; the run was paused while judging and refitting." if res.get("paused_while_judging") else "."),
        f"- Refit {r.get('attempt')} ({r.get('method')}, features {r.get('features')}, weight {r.get('weight')}): "
        f"**{r.get('state')}** after {_f(r.get('seconds'), 1)} s — {r.get('reason')}",
        f"- Held-out agreement with the judge ({(r.get('judgements') or {}).get('held_out')} judgements, "
        f"{(r.get('judgements') or {}).get('held_out_how')}): {_f(cur.get('judgement_accuracy'))} → "
        f"**{_f(new.get('judgement_accuracy'))}**; original held-out set: {_f(cur.get('original_accuracy'))} → "
        f"{_f(new.get('original_accuracy'))}.",
    ]
    if "script_heldout_pairs" in res:
        lines.append(f"- The script's own {res['script_heldout_pairs']} held-out pairs (never written): "
                     f"{_f(res['script_heldout_current'])} → {_f(res['script_heldout_new'])}.")
    lines += [
        f"- Swap at step {res['swap_from_step']}. Taste share of the policy's samples: "
        f"{_f(tb['share'])} (steps {tb['steps'][0]}-{tb['steps'][1]}, {tb['samples']} samples) → "
        f"**{_f(ta['share'])}** (steps {ta['steps'][0]}-{ta['steps'][1]}, {ta['samples']} samples); "
        f"mean judge words {_f(tb['mean'])} → {_f(ta['mean'])}.",
        f"- Base reward's mean score over the same windows (re-scored with the base reward): "
        f"{_f(res['base_score_before'])} → {_f(res['base_score_after'])}.",
    ]
    if res["extra"]:
        lines.append(f"- The {res['extra']} steps after those (steps {res['taste_later']['steps'][0]}-"
                     f"{res['taste_later']['steps'][1]}, not a target): taste share "
                     f"{_f(res['taste_later']['share'])}, base score {_f(res['base_score_later'])}.")
    lines += [
        f"- Whole demo: {res['minutes_total']} min.",
        "",
        "| target | met |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in res["verdicts"].items()]
    c = res.get("control")
    if c:
        lines += ["", f"## Against a control: `{c['control']}/`", "",
                  f"The control is the same config and seed; its samples are identical to this run's for "
                  f"the {c['compared_steps_before_swap']} steps before this run's swap: "
                  f"**{c['identical_before_swap']}**. Taste share from the swap on:", "",
                  "| steps | this run (learned preference) | control | control's reward |", "|---|---|---|---|"]
        lines += [f"| {w['steps'][0]}-{w['steps'][1]} | {_f(w['demo']['share'])} ({w['demo']['samples']}) | "
                  f"{_f(w['control']['share'])} ({w['control']['samples']}) | {w['control_reward']} |"
                  for w in c["windows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
