"""Did the policy chase the learned preference, or the base reward? Read from a judge demo's folder.

Re-scores the policy's samples of the windows before and after the swap with the base reward and
with the refit's reward (``preference.json`` in the folder: score = base + w * z), and prints per
window the mean of z (the preference head, in its own standard units), the mean base score and the
judge's taste share:

    python scripts/preference_drift.py docs/results/judge-demo-20261207-paused [--windows 1-11,12-36,37-61]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics as st
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("demo", help="a judge demo's folder (demo.json, samples.jsonl, preference.json)")
    ap.add_argument("--windows", default="1-11,12-36,37-61", help="step windows A-B, comma-separated")
    a = ap.parse_args(argv)
    import judge_demo as J

    from engine.config import load_config
    from engine.files import read_jsonl
    from engine.preference import PREFERENCE_FILE, read

    folder = Path(a.demo)
    cfg = load_config(str(folder / "config.yaml"), [])
    J.use_judge_of(json.loads((folder / "demo.json").read_text()))
    pref = read(folder)
    w = float(pref["w"])
    windows = [tuple(int(x) for x in part.split("-")) for part in a.windows.split(",")]
    rows = [s for s in read_jsonl(folder / "samples.jsonl") if s.get("kind") != "pair"
            and windows[0][0] <= s["step"] <= windows[-1][1]]
    with tempfile.TemporaryDirectory() as tmp:  # the reward source is a folder holding preference.json
        shutil.copy(folder / PREFERENCE_FILE, Path(tmp) / PREFERENCE_FILE)
        (both,) = J.scores_of(tmp, cfg, rows)  # scored as the run scored: its config's reward settings
    (base,) = J.scores_of(pref["base_source"], cfg, rows)
    z = [(c - b) / w for c, b in zip(both, base)]
    print(f"{folder}: w = {w:.4f} (weight {pref['weight']}), base {pref['base_source']}")
    print(f"{'steps':>8} {'samples':>7} {'mean z':>7} {'base':>6} {'taste share':>11}")
    for lo, hi in windows:
        idx = [i for i, s in enumerate(rows) if lo <= s["step"] <= hi]
        share = J.taste([rows[i] for i in idx])["share"]
        print(f"{lo:>4}-{hi:<3} {len(idx):>7} {st.mean(z[i] for i in idx):>7.3f} "
              f"{st.mean(base[i] for i in idx):>6.3f} {share:>11.3f}")
    taste = [i for i, s in enumerate(rows) if J.judge_count(s["response"]) > 0]
    other = [i for i, s in enumerate(rows) if J.judge_count(s["response"]) == 0]
    print(f"mean z of samples with a judge word {st.mean(z[i] for i in taste):.3f}, "
          f"without {st.mean(z[i] for i in other):.3f}; base score's spread over these samples "
          f"{st.pstdev(base):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
