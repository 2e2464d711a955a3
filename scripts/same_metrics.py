"""Same metrics before and after a refactor: run ``configs/tiny.yaml`` (float32, local backend)
for a few steps from two source trees and compare their ``metrics.jsonl`` line by line.

    python scripts/same_metrics.py BASE_REV [NEW_REV]     # NEW_REV: the working tree when left out
    python scripts/same_metrics.py --run REV --out DIR    # one run, its metrics.jsonl kept in DIR
    python scripts/same_metrics.py --src DIR --out DIR2        # one run from a source folder
    python scripts/same_metrics.py --compare A.jsonl B.jsonl

Each tree is a ``git archive`` of the revision in a temporary folder (the repository and its
working tree are not touched); the run is ``rlhf-console train`` in the foreground, from that
folder, with that folder first on PYTHONPATH. Every value must be bit-identical (floats compared
by ``==`` on what json wrote, i.e. repr round-trip) except wall-clock fields: ``time``,
``timings``, ``memory`` and any metric whose name ends in one of ``TIMING_SUFFIXES``.
Exit 0 when identical, 1 when not (each differing key printed), 2 on a failed run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WALL_CLOCK = ("time", "timings", "memory")
TIMING_SUFFIXES = ("_s", "_seconds", "per_s", "_per_sec", "_mb")
STEPS = 4
OVERRIDES = ("run.steps={steps}", "runtime.backend=local", "actor.dtype=float32", "reference.dtype=float32",
             "critic.dtype=float32", "run.name=same-metrics", "logging.tensorboard=false")


def _tree(rev: str | None, into: Path) -> Path:
    """The source of ``rev`` (the working tree when None) under ``into``."""
    if rev is None:
        return ROOT
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_tree(src: Path, out_dir: Path, steps: int = STEPS) -> Path:
    """One foreground run of configs/tiny.yaml from the source tree ``src``; its metrics.jsonl."""
    runs = out_dir / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(src) + (os.pathsep + os.environ["PYTHONPATH"]
                                                  if os.environ.get("PYTHONPATH") else ""))
    sets = [a for o in OVERRIDES for a in ("--set", o.format(steps=steps))]
    cmd = [sys.executable, "-c", "import sys; from console.cli import main; sys.exit(main(sys.argv[1:]))",
           "train", "--config", str(src / "configs" / "tiny.yaml"), *sets, "--set", f"run.output_dir={runs}"]
    p = subprocess.run(cmd, cwd=str(src), env=env, capture_output=True, text=True)
    dirs = sorted(runs.glob("*/metrics.jsonl")) if runs.exists() else []
    if p.returncode != 0 or not dirs:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit(f"the run from {src} failed (exit code {p.returncode})")
    kept = out_dir / "metrics.jsonl"
    shutil.copyfile(dirs[-1], kept)
    return kept


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items()
            if k not in WALL_CLOCK and not k.endswith(TIMING_SUFFIXES)}


def compare(a: Path, b: Path) -> list[str]:
    """The differences between two metrics.jsonl files, one line each (empty: identical)."""
    ra = [json.loads(x) for x in a.read_text().splitlines() if x.strip()]
    rb = [json.loads(x) for x in b.read_text().splitlines() if x.strip()]
    diffs = []
    if len(ra) != len(rb):
        diffs.append(f"{len(ra)} rows vs {len(rb)} rows")
    for x, y in zip(ra, rb):
        cx, cy = _comparable(x), _comparable(y)
        for k in sorted(set(cx) | set(cy)):
            if cx.get(k, "<absent>") != cy.get(k, "<absent>"):
                diffs.append(f"step {x.get('step')}: {k}: {cx.get(k, '<absent>')!r} != {cy.get(k, '<absent>')!r}")
    return diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("revs", nargs="*", help="BASE_REV [NEW_REV]")
    ap.add_argument("--run", metavar="REV", help="one run of REV ('.' = the working tree)")
    ap.add_argument("--src", type=Path, help="one run from this source folder (a checkout, an unpacked tree)")
    ap.add_argument("--out", type=Path, help="where --run keeps its metrics.jsonl")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    ap.add_argument("--steps", type=int, default=STEPS)
    a = ap.parse_args(argv)
    if a.compare:
        diffs = compare(*a.compare)
    elif a.src:
        print(f"metrics: {run_tree(a.src.resolve(), a.out or Path(tempfile.mkdtemp(prefix='same-metrics-')), a.steps)}")
        return 0
    elif a.run:
        out = a.out or Path(tempfile.mkdtemp(prefix="same-metrics-"))
        with tempfile.TemporaryDirectory(prefix="same-metrics-src-") as tmp:
            kept = run_tree(_tree(None if a.run == "." else a.run, Path(tmp) / "src"), out, a.steps)
        print(f"metrics: {kept}")
        return 0
    elif a.revs:
        with tempfile.TemporaryDirectory(prefix="same-metrics-") as tmp:
            t = Path(tmp)
            base = run_tree(_tree(a.revs[0], t / "base-src"), t / "base", a.steps)
            new = run_tree(_tree(a.revs[1] if len(a.revs) > 1 else None, t / "new-src"), t / "new", a.steps)
            diffs = compare(base, new)
            n = len(base.read_text().splitlines())
    else:
        ap.error("give BASE_REV [NEW_REV], --run REV or --compare A B")
    if diffs:
        print("\n".join(diffs))
        print(f"DIFFERENT: {len(diffs)} difference(s)")
        return 1
    print("identical (wall-clock fields excluded)" + (f": {n} step rows" if a.revs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
