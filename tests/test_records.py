"""engine/records.py: the run-directory records read old files, keep keys they do not know,
and are the one home of the field names (every run.json write names only RunInfo fields)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from engine.records import Label, MetricsRow, RunInfo, Sample
from engine.runtime.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
RECORDED = sorted((ROOT / "tests" / "fixtures" / "recorded_run").glob("*/run.json"))[0].parent


def test_recorded_run_reads_into_records_and_round_trips():
    rd = RunDir(RECORDED)
    info = rd.read_info()
    assert info.state == "paused" and info.step == 12 and info.supervisor_pid and info.pids
    raw_info = json.loads(rd.run_json.read_text())
    assert info.to_dict() == {k: v for k, v in raw_info.items() if v is not None}   # null = absent
    metrics = rd.read_metrics()
    assert len(metrics) == 12 and metrics[-1].step == 12 and metrics[-1].timing("step") > 0
    assert "score_mean" in metrics[0].values and metrics[0].get("kl") is not None
    raw = [json.loads(ln) for ln in rd.metrics.read_text().splitlines()]
    assert [m.to_dict() for m in metrics] == raw
    samples = rd.read_samples()
    assert samples and samples[0].id == f"{samples[0].step}-{samples[0].index}"
    first = json.loads(rd.samples.read_text().splitlines()[0])
    assert samples[0].ret == first["return"]
    back = samples[0].to_dict()
    assert {k: v for k, v in back.items() if k in first} == first   # old lines: new fields only added


def test_unknown_keys_are_kept_and_new_metric_names_need_no_field():
    row = MetricsRow.from_dict({"step": 3, "time": 1.0, "timings": {"step": 0.5},
                                "reward_version": 2, "heldout_accuracy": 0.8})
    assert row.get("reward_version") == 2 and row.to_dict()["heldout_accuracy"] == 0.8
    old = {"sample_id": "3-1", "step": 3, "label": "good", "note": "", "time": 1.0}   # a line from before pairs
    lab = Label.from_dict(old)
    assert lab.is_mark and not lab.is_pair and lab.to_dict() == old
    pair = Label.from_dict({"prompt": "p", "chosen": "a", "rejected": "b", "chosen_id": "1-0", "rejected_id": "1-1",
                            "step": 1, "source": "human", "time": 2.0, "rater": "x"})
    assert pair.is_pair and not pair.is_mark and pair.check() is pair
    assert pair.extra == {"rater": "x"} and pair.to_dict()["rater"] == "x" and "sample_id" not in pair.to_dict()
    with pytest.raises(ValueError, match="two different samples"):
        Label(prompt="p", chosen="a", rejected="b", chosen_id="1-0", rejected_id="1-0").check()
    s = Sample.from_dict({"id": "1-0", "step": 1, "return": 0.5})
    assert s.ret == 0.5 and s.flags == [] and "audit" not in s.to_dict()
    with pytest.raises(ValueError, match="verdict"):
        Label(sample_id="1-0", step=1, label="meh").check()


def test_write_state_refuses_a_name_that_is_not_a_field(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_state(state="starting", step=0)
    with pytest.raises(KeyError, match="supervisor_pdi"):
        rd.write_state(supervisor_pdi=1)
    assert rd.read_info().state == "starting" and "supervisor_pdi" not in rd.read_state()


def test_every_run_json_write_in_the_engine_names_runinfo_fields():
    """Static: keyword names of write_state/set_state/_finish/record_step calls under engine/."""
    bad = []
    for p in sorted((ROOT / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("write_state", "set_state", "_finish", "record_step"):
                for kw in node.keywords:
                    if kw.arg is not None and kw.arg not in RunInfo.names():
                        bad.append(f"{p.relative_to(ROOT)}:{node.lineno}: {node.func.attr}({kw.arg}=...)")
    assert not bad, "not RunInfo fields (engine/records.py):\n" + "\n".join(bad)
