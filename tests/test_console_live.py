"""The console's dashboard against a real tiny run (real supervisor, four real workers): every
control key, driven the way a user drives it, checked against the run directory."""
from __future__ import annotations

import asyncio
import time

import pytest

from engine.client import launch
from engine.files import read_jsonl
from tests.conftest import TINY, kill_run, run_processes_gone, tiny_overrides

pytestmark = pytest.mark.timeout(600)

SIZE = (120, 40)


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("console-live") / "runs"
    # enough steps that the run is still going when the last test stops it
    run = launch(TINY, tiny_overrides(runs, "run.steps=400", "checkpoint.every=0"), wait_ready=True, timeout=600)
    try:
        run.wait_step(1, timeout=300)
        yield run
    finally:
        kill_run(run)


def _app(run):
    from console.app import ConsoleApp

    return ConsoleApp("attach", run=run.path, runs_dir=run.path.parent, blink=False)


async def wait_for(pilot, cond, timeout: float = 120.0, what: str = ""):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or cond}")
        await pilot.pause(0.1)


async def _attached(pilot):
    screen = pilot.app.screen
    await wait_for(pilot, lambda: screen.loaded and screen.query_one("#rollouts").row_count > 0, 60, "history")
    return screen


def test_attach_rebuilds_history_then_follows(live_run):
    asyncio.run(_test_attach_rebuilds_history_then_follows(live_run))


async def _test_attach_rebuilds_history_then_follows(live_run):
    on_disk = read_jsonl(live_run.dir.samples)
    app = _app(live_run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _attached(pilot)
        table = screen.query_one("#rollouts")
        assert table.row_count >= len(on_disk) > 0          # the whole history, not just what is new
        assert [m.step for m in screen.model.metrics][:1] == [1]
        first = screen.model.step
        await wait_for(pilot, lambda: screen.model.step > first, 120, "a new step")
        assert table.row_count > len(on_disk)               # and then it follows
        assert table.cursor_row == table.row_count - 1      # following the newest row
        assert "running" in str(screen.query_one("#run-header").render())


def test_labels_g_and_b(live_run):
    asyncio.run(_test_labels_g_and_b(live_run))


async def _test_labels_g_and_b(live_run):
    app = _app(live_run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _attached(pilot)
        table = screen.query_one("#rollouts")
        await pilot.press("up")                             # leave the newest row: no more following
        good = table.current()
        await pilot.press("g")
        await pilot.press("up")
        bad = table.current()
        await pilot.press("b")

        def rows():
            return {(r["sample_id"], r["label"]) for r in read_jsonl(live_run.dir.labels)}

        await wait_for(pilot, lambda: (bad["id"], "bad") in rows(), 10, "labels.jsonl rows")
        assert (good["id"], "good") in rows()
        assert table.current()["id"] == bad["id"]           # the cursor stayed where the user put it
        assert screen.model.labels[good["id"]] == "good"


def test_pause_then_resume(live_run):
    asyncio.run(_test_pause_then_resume(live_run))


async def _test_pause_then_resume(live_run):
    from console.messages import ControlReplied

    replies = []
    app = _app(live_run)
    async with app.run_test(size=SIZE, message_hook=lambda m: isinstance(m, ControlReplied) and replies.append(m)) as pilot:
        screen = await _attached(pilot)
        header = screen.query_one("#run-header")
        await pilot.press("p")
        # pending until the state changes (a tiny step can get there before we look); the
        # runtime's answer says the pause takes effect at the end of the step
        if "pause" in screen.pending:
            assert "end of the current step" in screen.pending["pause"]
            assert "end of the current step" in str(header.render())
        await wait_for(pilot, lambda: replies, 30, "the runtime's reply")
        assert replies[0].op == "pause" and replies[0].ok and replies[0].reply.get("pending")
        assert "end of step" in replies[0].message
        await wait_for(pilot, lambda: live_run.info.get("state") == "paused", 180, "run.json paused")
        await wait_for(pilot, lambda: screen.model.state == "paused" and not screen.pending, 10, "paused shown")
        assert screen.answer.startswith("✓ paused")
        assert screen.active_bindings["p"].binding.action == "resume"
        step = live_run.info["step"]
        await pilot.press("p")
        await wait_for(pilot, lambda: live_run.info.get("state") == "running", 60, "run.json running")
        await wait_for(pilot, lambda: screen.model.state == "running" and not screen.pending, 10, "running shown")
        live_run.wait_step(step + 1, timeout=120)


def test_checkpoint_now(live_run):
    asyncio.run(_test_checkpoint_now(live_run))


async def _test_checkpoint_now(live_run):
    app = _app(live_run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _attached(pilot)
        before = {p.name for p in live_run.dir.checkpoint_dirs()}
        await pilot.press("c")
        # pending until the runtime answers (a tiny step may answer before we look)
        assert "checkpoint" in screen.pending or screen.answer.startswith("✓ checkpoint")
        await wait_for(pilot, lambda: screen.answer.startswith("✓ checkpoint saved"), 180, "checkpoint reply")
        after = {p.name for p in live_run.dir.checkpoint_dirs()}
        assert after - before, "no new checkpoint directory"
        assert not screen.pending


def test_swap_reward_asks_validates_and_reports(live_run):
    asyncio.run(_test_swap_reward_asks_validates_and_reports(live_run))


async def _test_swap_reward_asks_validates_and_reports(live_run):
    from console.screens.prompt import PromptScreen

    app = _app(live_run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _attached(pilot)
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), 5, "the source prompt")
        prompt = app.screen
        await pilot.press("enter")                           # empty: refused in the dialog
        assert "needed" in str(prompt.query_one("#prompt-error").render())
        await pilot.press(*"not a source")
        await pilot.press("enter")
        assert "expected" in str(prompt.query_one("#prompt-error").render())
        prompt.query_one("#prompt-input").value = ""
        await pilot.press(*"lexicon:vader", "enter")
        await wait_for(pilot, lambda: app.screen is screen, 5, "the dialog to close")
        assert "swap_reward" in screen.pending or screen.answer
        await wait_for(pilot, lambda: screen.answer.startswith("✓ reward is now 'lexicon:vader'"), 300, "swap reply")
        assert "was 'lexicon:vader'" in screen.answer


def test_detach_leaves_the_run_running(live_run):
    asyncio.run(_test_detach_leaves_the_run_running(live_run))


async def _test_detach_leaves_the_run_running(live_run):
    app = _app(live_run)
    async with app.run_test(size=SIZE) as pilot:
        await _attached(pilot)
        await pilot.press("d")
        await pilot.pause(0.2)
    assert app.return_code == 0
    assert live_run.alive and live_run.state == "running"
    step = live_run.info["step"]
    live_run.wait_step(step + 1, timeout=120)               # training goes on without a viewer


def test_stop_asks_first_then_stops(live_run):
    asyncio.run(_test_stop_asks_first_then_stops(live_run))


async def _test_stop_asks_first_then_stops(live_run):
    from console.screens.confirm import ConfirmScreen

    app = _app(live_run)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _attached(pilot)
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
        await pilot.press("n")                               # no: nothing happens
        await pilot.pause(0.2)
        assert app.screen is screen and not screen.pending and live_run.alive
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: live_run.info.get("state") == "stopped", 180, "run.json stopped")
        await wait_for(pilot, lambda: screen.model.state == "stopped", 10, "stopped shown")
        # a stopped run is read-only: the control keys are greyed
        for key in ("p", "c", "r", "x"):
            assert not screen.active_bindings[key].enabled, key
        assert screen.active_bindings["d"].enabled
    assert run_processes_gone(live_run) == []
