"""The dashboard of a 2,000-step run (synthetic, 8 samples a step, written before attaching) at
80×24, 120×40 and 200×60: SVG snapshots, every pane reachable by keyboard, curves readable
(at least six data rows per plot), ``? help`` first in the footer; and ``?`` in the editor opens
the help instead of typing into the YAML.

    pytest tests/test_console_sizes.py --snapshot-update     # after an intended change
"""
from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from console import demo
from console.app import ConsoleApp
from console.bench import SyntheticRun

pytestmark = pytest.mark.timeout(300)

T0 = 1795573000.0
SIZES = [(80, 24), (120, 40), (200, 60)]


@pytest.fixture
def run2000(tmp_path, monkeypatch):
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    run = SyntheticRun(tmp_path)
    run.write_history(2000, t0=T0)
    st = json.loads((run.path / "run.json").read_text())
    st.update(state="paused", pids={}, updated=T0 + 4000.0, socket="")  # a paused run of this process
    (run.path / "run.json").write_text(json.dumps(st))
    try:
        yield run
    finally:
        if old_tz is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old_tz
        time.tzset()


def _app(run):
    return ConsoleApp("attach", run=run.path, runs_dir=run.path.parent, gpu_probe=demo.no_nvml,
                      clock=lambda: T0 + 4005.0, blink=False)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_snapshot_2000_steps(snap_compare, run2000, size):
    async def settle(pilot):
        await demo.settle(pilot, timeout=60)

    assert snap_compare(_app(run2000), terminal_size=size, run_before=settle)


def _visible(screen, widget) -> bool:
    r = widget.region
    return widget.display and r.width > 0 and r.height > 0 and screen.region.contains_region(r)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_every_pane_reachable_and_curves_readable(run2000, size):
    from textual.widgets import Footer
    from textual_plotext import PlotextPlot

    from console.screens.dashboard import PANES

    async def go():
        app = _app(run2000)
        async with app.run_test(size=size) as pilot:
            await demo.settle(pilot, timeout=60)
            screen = app.screen
            assert len(screen.model.samples) == 16000 and screen.model.step == 2000
            seen = set()
            for _ in range(len(PANES)):
                for p in PANES:
                    if _visible(screen, screen.query_one(p.selector)):
                        seen.add(p.name)
                if size[0] < 110:       # one pane at a time, and it fills the body
                    shown = [p.name for p in PANES if _visible(screen, screen.query_one(p.selector))]
                    assert shown == [PANES[screen.pane].name], shown
                    assert screen.query_one(PANES[screen.pane].selector).region.height >= size[1] - 5
                await pilot.press("tab")
                await pilot.pause()
            assert seen == {p.name for p in PANES}
            while PANES[screen.pane].name != "curves":
                await pilot.press("tab")
            await pilot.pause()
            screen.redraw_now()
            await pilot.pause()
            plots = [p for p in screen.query(PlotextPlot) if p.display and p.parent.display]
            assert plots and all(p.size.height - 1 >= 6 for p in plots), [p.size for p in plots]
            shown_before = list(screen.query_one("#curves").shown)
            await pilot.press("v")                       # the next plots
            assert screen.query_one("#curves").shown != shown_before
            footer = screen.query_one(Footer)
            keys = [k for k in footer.query("FooterKey") if k.display]
            assert keys and keys[0].key == "question_mark" and keys[0].region.right <= size[0]

    asyncio.run(go())


def test_question_mark_in_the_editor_opens_help_and_types_nothing(tmp_path, monkeypatch):
    from console.screens.help import HelpScreen

    monkeypatch.chdir(tmp_path)
    p = tmp_path / "my.yaml"
    p.write_text((demo.recorded_run_dir() / "config.yaml").read_text())

    async def go():
        app = ConsoleApp("edit", config=p, runs_dir=tmp_path / "runs", blink=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await demo.settle(pilot)
            ed = app.screen.query_one("#yaml")
            assert ed.has_focus
            before = ed.text
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen) and ed.text == before
            body = app.screen.query_one("#help-table")
            await pilot.press("down", "down", "down")
            assert body.scroll_y > 0 or body.max_scroll_y == 0

    asyncio.run(go())
