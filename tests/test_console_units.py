"""Small pure pieces of the console: the run model's derived figures, the follower's incremental
reads, input checks, and the GPU probe against a stand-in NVML (no GPU on the test machines)."""
from __future__ import annotations

import sys
import types

import pytest

from console import demo
from console.gpu import NvmlProbe, host_memory
from console.model import RunFollower, RunModel, fmt_duration
from console.sources import check_new_config_path, check_reward_source


def test_follower_reads_history_then_only_what_is_new(tmp_path):
    d = demo.copy_recorded_run(tmp_path / "runs", "finished")
    f = RunFollower(d)
    first = f.poll()
    assert len(first.metrics) == 12 and len(first.samples) == 48 and len(first.labels) == 2
    assert first.state == "finished" and first.config_text and first.events
    assert not f.poll()                                      # nothing new: an empty delta
    with open(d / "samples.jsonl", "a") as fh:
        fh.write('{"id": "13-0", "step": 13, "score": 0.9}\n{"id": "13-1", "step"')   # a partial line
    d2 = f.poll()
    assert [s["id"] for s in d2.samples] == ["13-0"]
    with open(d / "samples.jsonl", "a") as fh:
        fh.write(': 13, "score": 0.1}\n')
    assert [s["id"] for s in f.poll().samples] == ["13-1"]


def test_model_figures_from_the_recorded_run(tmp_path):
    d = demo.copy_recorded_run(tmp_path / "runs", "paused", live=True)
    m = RunModel(d, clock=demo.frozen_clock(d, 100.0))
    m.apply(RunFollower(d).poll())
    assert m.state == "paused" and m.step == 12 and m.steps == 40
    assert m.elapsed() == pytest.approx(100.0)
    spm = m.steps_per_minute()
    assert spm > 0 and m.eta() == pytest.approx(28 * 60 / spm)
    rows = {(r[0], r[1]): r for r in m.timing_rows()}
    assert ("actor", "generate") in rows and ("reference", "logprobs") in rows
    role, phase, last, mean, share, wall = rows[("actor", "generate")]
    assert last == m.metrics[-1].timings["rollout"] and 0 < share < 1 and not wall
    assert m.kl_target is None                                # fixed KL controller: no target line
    m.config["ppo"]["kl_controller"] = "adaptive"
    assert m.kl_target == m.config["ppo"]["target_kl"]
    assert m.labels == {"3-1": "good", "5-2": "bad"}


def test_dead_and_failed_runs_say_why(tmp_path):
    dead = demo.copy_recorded_run(tmp_path / "a", "running")        # no supervisor behind it
    m = RunModel(dead)
    m.apply(RunFollower(dead).poll())
    assert m.state == "dead" and "supervisor is gone" in m.failure and m.eta() is None
    failed = demo.copy_recorded_run(tmp_path / "b", "failed", failure="critic: boom")
    m = RunModel(failed)
    m.apply(RunFollower(failed).poll())
    assert m.state == "failed" and m.failure == "critic: boom"


def test_fmt_duration():
    assert fmt_duration(59.6) == "1m00s" and fmt_duration(3725) == "1h02m" and fmt_duration(None) == "–"


@pytest.mark.parametrize("src,ok", [
    ("lexicon:vader", True), ("bundled:minilm-sentiment", True), ("python:pkg.mod:score", True),
    ("org/model-name", True), ("", False), ("   ", False), ("python:pkg", False), ("lexicon:", False),
    ("just words", False), ("/no/such/folder", False),
])
def test_reward_source_shapes(src, ok):
    assert (check_reward_source(src) is None) is ok


def test_new_config_path(tmp_path):
    assert check_new_config_path(str(tmp_path / "a.yaml")) is None
    (tmp_path / "b.yaml").write_text("x")
    assert "exists" in check_new_config_path(str(tmp_path / "b.yaml"))
    assert ".yaml" in check_new_config_path(str(tmp_path / "c.txt"))


# ---- GPU ---------------------------------------------------------------------------------------------
def _fake_pynvml(fail_init: Exception | None = None):
    nv = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    nv.NVMLError = NVMLError
    nv.NVML_TEMPERATURE_GPU = 0

    def init():
        if fail_init:
            raise fail_init

    nv.nvmlInit = init
    nv.nvmlSystemGetDriverVersion = lambda: "550.54"
    nv.nvmlDeviceGetCount = lambda: 1
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=87)
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=40 * 2**30, total=80 * 2**30)
    nv.nvmlDeviceGetTemperature = lambda h, k: 61

    def unsupported(h):
        raise NVMLError("Not Supported")

    nv.nvmlDeviceGetPowerUsage = unsupported                 # a field the device does not support
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    nv.nvmlDeviceGetComputeRunningProcesses = lambda h: [
        types.SimpleNamespace(pid=111, usedGpuMemory=12 * 2**30),
        types.SimpleNamespace(pid=999, usedGpuMemory=2**30)]
    nv.nvmlDeviceGetGraphicsRunningProcesses = lambda h: []
    return nv


def test_probe_reads_devices_and_labels_processes_by_role(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    report = NvmlProbe().read()
    assert report.available and report.driver == "550.54"
    (d,) = report.devices
    assert d.util == 87 and d.mem_total_mb == 80 * 1024 and d.temp_c == 61
    assert d.power_w is None and d.power_limit_w == 700.0      # N/A, not a crash
    assert [p.pid for p in d.processes] == [111, 999]

    from rich.console import Console

    from console.widgets.gpu_pane import GpuPane

    run_dir = demo.copy_recorded_run(tmp_path / "runs", "finished")
    m = RunModel(run_dir)
    m.apply(RunFollower(run_dir).poll())
    m.info.pids = {"actor": 111, "critic": 112}
    pane = GpuPane()
    shown = {}
    pane.update = lambda r: shown.setdefault("r", r)
    pane.render_report(report, m)
    console = Console(width=60, record=True)
    console.print(shown["r"])
    text = console.export_text()
    assert "H100" in text and "87%" in text and "N/A" in text and "40.0G/80.0G" in text
    assert "actor" in text and "pid 111" in text and "12.0G" in text and "other processes: 1" in text


def test_probe_without_nvml_says_why(monkeypatch):
    nv = _fake_pynvml(fail_init=RuntimeError("NVML Shared Library Not Found"))
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    probe = NvmlProbe()
    r = probe.read()
    assert not r.available and r.reason == "NVML unavailable: NVML Shared Library Not Found"
    assert probe.read().reason == r.reason                   # probed once


def test_host_memory_prefers_live_processes():
    rows = host_memory({"actor": 1, "critic": 2}, {"actor": 900.0},
                       {"actor": {"rss_mb": 500, "peak_rss_mb": 600}, "critic": {"rss_mb": 400, "peak_rss_mb": 450}}, 12)
    by = {r.role: r for r in rows}
    assert by["actor"].rss_mb == 900.0 and by["actor"].source == "live"
    assert by["critic"].rss_mb == 400 and by["critic"].source == "step 12"


def test_host_memory_peak_is_never_below_the_rss_shown():
    """A live rss read now can exceed the high-water mark the last step recorded: the pane once
    showed rss 900M beside peak 600M. The peak shown is then the rss; a recorded peak above the
    rss stays; no recorded peak stays unknown."""
    rows = host_memory({"actor": 1, "critic": 2, "reward": 3}, {"actor": 900.0, "reward": 300.0},
                       {"actor": {"rss_mb": 500, "peak_rss_mb": 600}, "critic": {"rss_mb": 400, "peak_rss_mb": 450},
                        "reward": {"rss_mb": 250}}, 12)
    by = {r.role: r for r in rows}
    assert by["actor"].rss_mb == 900.0 and by["actor"].peak_mb == 900.0
    assert by["critic"].peak_mb == 450
    assert by["reward"].peak_mb is None
    assert all(r.peak_mb is None or r.peak_mb >= r.rss_mb for r in rows)


def test_rollouts_show_a_prompts_group_with_scores_and_advantages():
    """rollout.n > 1: each response shows its group and advantage, and a group shades as one block."""
    from console.history import SampleIndex
    from console.widgets.rollouts import RolloutsTable

    idx = SampleIndex()
    rows = [{"id": f"1-{i}", "step": 1, "index": i, "prompt": "What is 2 + 2?", "response": r, "score": s,
             "kl": 0.0, "group": i // 2, "advantage": a}
            for i, (r, s, a) in enumerate([("Answer: 4", 1.1, 0.7), ("5", 0.0, -0.7), ("4", 1.0, 0.0), ("4", 1.0, 0.0)])]
    idx.add(rows)
    table = RolloutsTable(idx)
    texts = [table._row_text(n, 140).plain for n in range(4)]
    assert "g0 A+0.70 │ Answer: 4" in texts[0] and "g0 A-0.70 │ 5" in texts[1] and "g1 A+0.00 │ 4" in texts[2]
    shades = [table._shade(n, n) for n in range(4)]
    assert shades[0] == shades[1] and shades[2] == shades[3] and shades[0] != shades[2]
    idx.add([{"id": "2-0", "step": 2, "index": 0, "prompt": "p", "response": "r", "score": 0.5, "kl": 0.0}])
    assert "│" not in table._row_text(4, 140).plain  # no group: the plain row
