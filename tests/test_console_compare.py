"""Home: mark two runs (space) and compare them (o): their curves overlaid, a diff of configs."""
from __future__ import annotations

import asyncio

import pytest

from console import demo
from console.app import ConsoleApp

pytestmark = pytest.mark.timeout(120)


def test_mark_two_runs_and_compare(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    a = demo.copy_recorded_run(runs, "finished", name="tiny-20261124-181502", created_delta=-30000)
    b = demo.copy_recorded_run(runs, "finished", name="tiny-20261125-101010", created_delta=-20000)
    cfg = (b / "config.yaml").read_text()
    assert "  temperature: 1.0\n" in cfg
    (b / "config.yaml").write_text(cfg.replace("  temperature: 1.0\n", "  temperature: 0.7\n", 1))

    async def go():
        from console.screens.compare import CompareScreen

        app = ConsoleApp("home", runs_dir=runs, gpu_probe=demo.no_nvml, blink=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await demo.settle(pilot)
            home = app.screen
            assert home.check_action("compare", ()) is None        # greyed until two are marked
            await pilot.press("space", "down", "space")
            table = home.query_one("#runs")
            assert sorted(table.marked) == sorted([str(a), str(b)])
            assert "◆" in str(table.get_row_at(0)[0]) and "◆" in str(table.get_row_at(1)[0])
            await pilot.press("o")
            await demo.settle(pilot)
            screen = app.screen
            assert isinstance(screen, CompareScreen)
            diff = screen.query_one("#compare-diff-text").render()
            text = str(diff)
            # marked first: the newest run (b, top row), so b is the "from" side of the diff
            assert "--- tiny-20261125-101010" in text and "+++ tiny-20261124-181502" in text
            assert "-  temperature: 0.7" in text and "+  temperature: 1.0" in text
            legends = [str(s.render()) for s in screen.query(".curve-legend")]
            assert len(legends) == 4 and all(leg.count("━") == 2 for leg in legends)
            plots = [p for p in screen.query("PlotextPlot")]
            assert all(p.size.height - 1 >= 6 for p in plots)
            await pilot.press("escape")
            assert app.screen is home

    asyncio.run(go())
