"""Replay recorded runs through the reward-hacking monitors: per monitor, on how many steps it
raised a warning and from which step, with the old rule (a warning on every step over the
threshold) and with the hysteresis of ``engine/monitors.py`` (trip after ``trip_steps`` steps in
a row over the threshold, clear below ``clear_fraction`` x the threshold).

    python scripts/monitor_replay.py RUN_DIR_OR_METRICS_JSONL ... [--report REPORT.md ...]
        [--config configs/default.yaml] [--trip-steps N] [--clear-fraction F] [--json]

A run directory (or its metrics.jsonl) is replayed exactly: the monitors' values are in every
row and do not depend on the alert settings. A committed report (``rlhf-console report``) of a run
recorded before the hysteresis keeps only the steps each monitor was over its threshold, which is
enough to say whether and where it would trip; once tripped, the step it clears needs the values
under the threshold, which the report does not have, so the replay says so instead of guessing.
Thresholds and settings come from ``--config`` (the default preset), overridable by the flags.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Optional

from engine import monitors as M


def _settings(args) -> dict:
    from engine.config.loading import load_config

    mc = load_config(args.config).monitors
    return {"config": str(args.config),
            "thresholds": {name: getattr(mc, name) for name in M.MONITORS},
            "trip_steps": args.trip_steps if args.trip_steps is not None else mc.trip_steps,
            "clear_fraction": args.clear_fraction if args.clear_fraction is not None else mc.clear_fraction}


def _summary(steps: list[int]) -> dict:
    return {"steps": len(steps), "first": steps[0] if steps else None, "ranges": M.step_ranges(steps)}


def replay_run(path: Path, st: dict) -> dict:
    """A run directory or metrics.jsonl, replayed row by row."""
    metrics = path / "metrics.jsonl" if path.is_dir() else path
    if not metrics.is_file():
        raise SystemExit(f"monitor_replay: {metrics} not found (give a run directory or its metrics.jsonl)")
    rows = []
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"monitor_replay: {metrics}:{n}: not JSON ({e})") from None
    th = st["thresholds"]
    after = M.replay(rows, th, clear_fraction=st["clear_fraction"], trip_steps=st["trip_steps"])
    out = {}
    for name in M.MONITORS:
        before = [int(r["step"]) for r in rows if M.trips(name, r.get(name), th[name])]
        recorded = [int(r["step"]) for r in rows if any(a.get("monitor") == name for a in r.get("alerts") or [])]
        out[name] = {"before": _summary(before), "after": _summary(after[name]),
                     "recorded_alerts": _summary(recorded)}
    return {"source": str(metrics), "kind": "metrics.jsonl", "steps": len(rows), "monitors": out}


_TABLE_ROW = re.compile(r"^\| (\w+) \| ([^|]*) \| ([^|]*) \| ([^|]*) \| ([^|]*) \|$")


def _parse_ranges(text: str) -> list[int]:
    steps: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("–")
        steps.extend(range(int(a), int(b or a) + 1))
    return steps


def first_trip(over: list[int], trip_steps: int) -> Optional[int]:
    """The first step ending ``trip_steps`` consecutive steps over the threshold, or None."""
    run, last = 0, None
    for s in sorted(set(over)):
        run = run + 1 if last is not None and s == last + 1 else 1
        last = s
        if run >= trip_steps:
            return s
    return None


def replay_report(path: Path, st: dict) -> dict:
    """A committed run report: its 'Reward-hacking monitors' table (steps over the threshold)."""
    text = path.read_text()
    m = re.search(r"State \*\*\w+\*\* at step (\d+)", text)
    total = int(m.group(1)) if m else None
    sec = text.split("## Reward-hacking monitors", 1)
    if len(sec) < 2:
        raise SystemExit(f"monitor_replay: {path} has no 'Reward-hacking monitors' section")
    table = sec[1].split("\n## ", 1)[0]
    over: dict[str, list[int]] = {}
    for line in table.splitlines():
        row = _TABLE_ROW.match(line.strip())
        if row and row.group(1) in M.MONITORS:
            name, ranges, _, threshold = row.group(1), row.group(2), row.group(3), row.group(4)
            if float(threshold) != st["thresholds"][name]:
                raise SystemExit(f"monitor_replay: {path}: {name}'s threshold was {threshold}, the replay's is "
                                 f"{st['thresholds'][name]}; a report only lists the steps over its own threshold")
            over[name] = _parse_ranges(ranges)
    out = {}
    for name in M.MONITORS:
        steps = over.get(name, [])
        trip = first_trip(steps, st["trip_steps"]) if st["thresholds"][name] is not None else None
        after = {"steps": 0, "first": None, "ranges": ""} if trip is None else {
            "steps": None, "first": trip, "ranges": None,
            "steps_at_least": len([s for s in steps if s >= trip]),
            "note": "tripped; the report lists only the steps over the threshold, so when it cleared is not known"}
        out[name] = {"before": _summary(steps), "after": after}
    return {"source": str(path), "kind": "report", "steps": total, "monitors": out}


def _text(results: list[dict], st: dict) -> str:
    lines = [f"settings: trip_steps={st['trip_steps']} clear_fraction={st['clear_fraction']} "
             f"thresholds={st['thresholds']} (from {st['config']})", ""]
    for r in results:
        lines.append(f"{r['source']} ({r['kind']}, {r['steps']} steps)")
        lines.append(f"  {'monitor':<13} {'before: steps':>13} {'first':>6}   {'after: steps':>12} {'first':>6}")
        for name, m in r["monitors"].items():
            b, a = m["before"], m["after"]
            a_steps = a["steps"] if a["steps"] is not None else f">={a['steps_at_least']}"
            lines.append(f"  {name:<13} {b['steps']:>13} {str(b['first'] or '-'):>6}   "
                         f"{str(a_steps):>12} {str(a['first'] or '-'):>6}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path, help="run directories or metrics.jsonl files")
    ap.add_argument("--report", action="append", type=Path, default=[],
                    help="a committed run report (.md) of a run recorded before the hysteresis")
    ap.add_argument("--config", type=Path, default=Path("configs/default.yaml"),
                    help="where the thresholds, trip_steps and clear_fraction come from")
    ap.add_argument("--trip-steps", type=int, default=None)
    ap.add_argument("--clear-fraction", type=float, default=None)
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    if not args.runs and not args.report:
        ap.error("give at least one run directory, metrics.jsonl or --report")
    st = _settings(args)
    try:
        M.check_hysteresis(st["clear_fraction"], st["trip_steps"])
    except ValueError as e:
        ap.error(str(e))
    results = [replay_run(p, st) for p in args.runs] + [replay_report(p, st) for p in args.report]
    if args.json:
        print(json.dumps({"settings": st, "runs": results}, indent=1))
    else:
        print(_text(results, st))
    return 0


if __name__ == "__main__":
    sys.exit(main())
