"""The step timeline (one lane per role on a shared time axis, from a recorded step's timings)
and the per-role CPU % next to memory (a real busy process measured with psutil)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from console import demo
from console.gpu import live_cpu
from console.widgets.timings import step_spans, timeline


def test_timeline_of_a_recorded_step_shows_overlap_and_idle():
    line = (demo.recorded_run_dir() / "metrics.jsonl").read_text().splitlines()[0]
    t = json.loads(line)["timings"]
    spans, total = step_spans(t)
    (g0, g1, kind), = [s for s in spans["actor"] if s[2] == "generate"]
    assert (g0, kind) == (0.0, "generate") and g1 == t["rollout"]
    # scoring: every role starts when generation ends, in parallel
    for role in ("reference", "critic", "reward"):
        assert spans[role][0][0] == g1 and spans[role][0][2] == "score"
    # updates of actor and critic start together, after the advantage
    a_up = [s for s in spans["actor"] if s[2] == "update"][0]
    c_up = [s for s in spans["critic"] if s[2] == "update"][0]
    assert a_up[0] == c_up[0] == spans["driver"][0][1]
    assert total >= a_up[1] and abs(total - max(t["step"], a_up[0] + t["update"])) < 1e-9
    text = timeline(t, 50).plain.splitlines()
    lanes = {ln.split()[0]: ln[10:] for ln in text[:5]}
    assert set(lanes) == {"actor", "reference", "critic", "reward", "driver"}
    assert all(len(v) == 39 for v in lanes.values())
    assert "·" in lanes["reference"] and "▓" in lanes["reference"]      # idle, then its score
    assert lanes["actor"].startswith("█")                                # generation first


def test_cpu_percent_of_a_busy_role_process():
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert live_cpu({"actor": p.pid}) == {}          # the first reading only starts the clock
        time.sleep(1.0)
        cpu = live_cpu({"actor": p.pid, "critic": 2**22 + 7})   # a pid no process has: left out
        assert set(cpu) == {"actor"} and cpu["actor"] > 10
    finally:
        p.kill()
        p.wait()
