"""How long a detached run takes to start and to end: fresh interpreters against the warm launcher.

Launches ``configs/tiny.yaml`` (3 steps) ``--runs`` times each way through ``engine.client``, one
at a time, and prints per run the seconds from ``launch`` to: every role loaded (``launch``
returns), the first metrics row, state ``finished``, and the supervisor's exit. "warm" starts a
launcher of its own first (``python -m engine.runtime.warm``; its own start is printed apart)::

    python scripts/start_time.py [--runs 3] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.client import launch, start_warm_launcher  # noqa: E402
from engine.procs import available_cores, pid_alive  # noqa: E402


def one_run(runs_dir: Path) -> dict:
    t0 = time.time()
    run = launch(ROOT / "configs" / "tiny.yaml", [f"run.output_dir={runs_dir}", "run.steps=3"])
    started = time.time()
    while not list(run.metrics()):
        time.sleep(0.01)
    first = time.time()
    state = run.wait(timeout=600, poll=0.01)
    finished = time.time()
    sup = run.info["supervisor_pid"]
    while pid_alive(sup):
        time.sleep(0.01)
    ended = time.time()
    log = run.dir.supervisor_log.read_text()
    return {"state": state, "started_s": round(started - t0, 3), "first_step_s": round(first - t0, 3),
            "finished_s": round(finished - t0, 3), "exited_s": round(ended - t0, 3),
            "warm_refused": next((ln for ln in log.splitlines() if ln.startswith("warm launcher not used")), None)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    out: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": available_cores(),
                             "python": sys.version.split()[0]}}
    try:
        out["machine"]["cpu"] = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                                     if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    os.environ.pop("RLHF_CONSOLE_WARM", None)
    with tempfile.TemporaryDirectory(prefix="start-time-") as d:
        runs = Path(d) / "runs"
        out["fresh"] = [one_run(runs) for _ in range(a.runs)]
        sock = Path(d) / "launcher.sock"
        t0 = time.time()
        proc, _ = start_warm_launcher(sock, log=None)
        out["launcher_ready_s"] = round(time.time() - t0, 3)
        os.environ["RLHF_CONSOLE_WARM"] = str(sock)
        try:
            out["warm"] = [one_run(runs) for _ in range(a.runs)]
        finally:
            proc.terminate()
            proc.wait()
    print(f"machine: {out['machine']}")
    print(f"warm launcher ready in {out['launcher_ready_s']:.2f} s")
    for way in ("fresh", "warm"):
        rows = out[way]
        for k in ("started_s", "first_step_s", "finished_s", "exited_s"):
            out.setdefault("median", {}).setdefault(way, {})[k] = statistics.median(r[k] for r in rows)
        m = out["median"][way]
        print(f"{way:5}: launch -> roles loaded {m['started_s']:.2f} s, first step {m['first_step_s']:.2f} s, "
              f"finished {m['finished_s']:.2f} s, supervisor exited {m['exited_s']:.2f} s "
              f"(median of {len(rows)}; states {sorted({r['state'] for r in rows})})")
        for r in rows:
            if r["warm_refused"]:
                print(f"       {r['warm_refused']}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
