"""How long a CLI command takes from a fresh interpreter to its exit (the commands that only read
files: what a user types over SSH many times a session).

    python scripts/cli_start.py [--repeat 5] [--json OUT.json]

Each command runs ``--repeat`` times against an empty runs folder; the median wall time is
printed per command, with whether the command imported torch.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (["runs"], ["report", "no-such-run"], ["stop", "no-such-run"], ["attach", "no-such-run"],
            ["swap-reward", "no-such-run", "lexicon:vader"], ["label", "no-such-run", "1-0", "good"])
_PROBE = ("import sys, runpy; sys.argv = ['rlhf-console'] + sys.argv[1:]\n"
          "try:\n    runpy.run_module('console.cli', run_name='__main__')\n"
          "except SystemExit:\n    pass\n"
          "print('TORCH', 'torch' in sys.modules, file=sys.stderr)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for cmd in COMMANDS:
            args = ["--runs-dir", d, *cmd]
            times = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "console.cli", *args], cwd=ROOT, capture_output=True)
                times.append(time.perf_counter() - t0)
            probe = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=ROOT, capture_output=True, text=True)
            torch_line = [ln for ln in probe.stderr.splitlines() if ln.startswith("TORCH")]
            out[" ".join(cmd)] = {"median_s": round(statistics.median(times), 3), "runs": a.repeat,
                                  "imports_torch": torch_line[-1].endswith("True") if torch_line else None}
            print(f"rlhf-console {' '.join(cmd):45s} {out[' '.join(cmd)]['median_s']:.3f} s  "
                  f"torch imported: {out[' '.join(cmd)]['imports_torch']}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
