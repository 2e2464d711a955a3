"""How the console looks: SVG snapshots (pytest-textual-snapshot) of every screen, made
deterministic — a copy of the recorded tiny run (tests/fixtures/recorded_run/), a frozen clock,
a GPU probe that reports no NVML the same way everywhere, no cursor blink, UTC.

    pytest tests/test_console_snapshots.py --snapshot-update     # after an intended change
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from console import demo
from console.app import ConsoleApp

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A folder with runs/ (paused-and-live, finished, failed) and configs/; cwd is that folder."""
    monkeypatch.chdir(tmp_path)
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    runs = Path("runs")
    live = demo.copy_recorded_run(runs, "paused", live=True)
    demo.copy_recorded_run(runs, "finished", name="tiny-20261124-181502", created_delta=-30000)
    demo.copy_recorded_run(runs, "failed", name="tiny-20261124-203311", created_delta=-20000,
                           failure="actor: CUDA out of memory (tried to allocate 2.00 GiB)")
    presets = demo.make_presets(Path("configs"))
    try:
        yield {"runs": runs, "live": live, "presets": presets, "clock": demo.frozen_clock(live)}
    finally:
        if old_tz is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old_tz
        time.tzset()


def _app(world, start="attach", **kw):
    kw.setdefault("run", world["live"])
    return ConsoleApp(start, runs_dir=world["runs"], presets_dir=world["presets"], clock=world["clock"],
                      gpu_probe=demo.no_nvml, blink=False, **kw)


def _keys(*keys):
    async def run_before(pilot):
        await demo.settle(pilot)
        for k in keys:
            await pilot.press(k)
            await demo.settle(pilot)
    return run_before


def test_home(snap_compare, world):
    assert snap_compare(_app(world, "home"), terminal_size=(120, 34), run_before=_keys())


def test_editor_with_an_error(snap_compare, world):
    pytest.importorskip("tree_sitter_yaml", reason="YAML highlighting needs textual[syntax] (tree-sitter-yaml)")
    text = (world["presets"] / "tiny.yaml").read_text()
    Path("my-tiny.yaml").write_text(text.replace("batch_size: 4", "batch_size: -4", 1).replace("  epochs: 1", "  epochz: 1", 1))
    # esc: to the problems list; enter: jump to the first one (its gutter marker in view)
    assert snap_compare(_app(world, "edit", config=Path("my-tiny.yaml")), terminal_size=(120, 34),
                        run_before=_keys("escape", "enter"))


def test_dashboard_mid_run(snap_compare, world):
    assert snap_compare(_app(world), terminal_size=(120, 40), run_before=_keys())


def test_dashboard_failed_run(snap_compare, world):
    app = _app(world, run=world["runs"] / "tiny-20261124-203311")
    assert snap_compare(app, terminal_size=(120, 40), run_before=_keys())


def test_sample_detail(snap_compare, world):
    assert snap_compare(_app(world), terminal_size=(120, 40), run_before=_keys("h", "enter"))


def test_sample_tokens(snap_compare, world):
    """A sample written with its tokens (tests/fixtures/token_samples.jsonl: step 2 of a real run
    of configs/default.yaml) in front of the dashboard: the KL layer, the cursor on token 6."""
    from console.screens.sample import SampleScreen

    fixture = Path(__file__).parent / "fixtures" / "token_samples.jsonl"
    sample = json.loads(fixture.read_text().splitlines()[3])

    async def run_before(pilot):
        await demo.settle(pilot)
        pilot.app.push_screen(SampleScreen(sample))
        await demo.settle(pilot)
        for k in ("right",) * 5 + ("l", "l"):
            await pilot.press(k)
        await demo.settle(pilot)
    assert snap_compare(_app(world), terminal_size=(120, 40), run_before=run_before)


def test_help(snap_compare, world):
    assert snap_compare(_app(world), terminal_size=(120, 40), run_before=_keys("question_mark"))


def test_dashboard_80x24(snap_compare, world):
    assert snap_compare(_app(world), terminal_size=(80, 24), run_before=_keys())


def test_dashboard_200x60(snap_compare, world):
    assert snap_compare(_app(world), terminal_size=(200, 60), run_before=_keys())
