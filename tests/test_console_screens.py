"""The console without a live run: the editor (validation, save, $EDITOR, launch refused), home,
help, the command palette, and attaching to finished, failed and dead runs (copies of the
recorded tiny run). Fast: no training processes."""
from __future__ import annotations

import asyncio
import stat
import sys
import textwrap

import pytest

from console import demo
from console.app import ConsoleApp

pytestmark = pytest.mark.timeout(120)


def run(coro):
    return asyncio.run(coro)


async def wait_for(pilot, cond, timeout: float = 10.0, what: str = ""):
    import time

    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await pilot.pause(0.05)


def text_of(widget) -> str:
    """What a widget shows on screen, as plain text."""
    from textual.geometry import Region

    strips = widget.render_lines(Region(0, 0, widget.size.width, widget.size.height))
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "my.yaml"
    p.write_text((demo.recorded_run_dir() / "config.yaml").read_text())
    return p


def _editor(config_file, **kw):
    return ConsoleApp("edit", config=config_file, runs_dir=config_file.parent / "runs", blink=False, **kw)


# ---- editor -----------------------------------------------------------------------------------------
def test_typing_an_error_lists_key_path_and_line_and_refuses_launch(config_file):
    async def go():
        app = _editor(config_file)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            await wait_for(pilot, screen.ready_for_snapshot, what="first validation")
            assert screen.valid and screen.check_action("launch", ()) is True
            ed = screen.query_one("#yaml")
            line = next(i for i, ln in enumerate(ed.text.splitlines()) if ln.strip() == "batch_size: 4")
            ed.move_cursor((line, len("  batch_size: ")))
            await pilot.press("minus")                       # typed: batch_size: -4
            await wait_for(pilot, lambda: screen.ready_for_snapshot() and not screen.valid, what="revalidation")
            issues = screen.query_one("#issues")
            shown = str(issues.get_option_at_index(0).prompt)
            assert "rollout.batch_size" in shown and f"line {line + 1}" in shown and ("[1, " in shown or ">= 1" in shown)
            assert line in ed.error_lines                    # the gutter marker
            assert "launch is refused" in str(screen.query_one("#validity").render())
            assert not screen.active_bindings["ctrl+l"].enabled   # greyed
            await pilot.press("ctrl+l")                      # and refused
            await pilot.pause(0.2)
            assert app.screen is screen and not list(config_file.parent.glob("runs/*"))
            # Enter on the problem jumps to its line
            await pilot.press("escape")
            assert issues.has_focus
            ed.move_cursor((0, 0))
            await pilot.press("enter")
            assert ed.has_focus and ed.cursor_location[0] == line
            await pilot.press("end", "left", "backspace")    # fixed again: batch_size: 4
            await wait_for(pilot, lambda: screen.ready_for_snapshot() and screen.valid, what="valid again")
            assert not ed.error_lines and not issues.display

    run(go())


def test_ctrl_s_saves_atomically_and_keeps_the_mode(config_file):
    config_file.chmod(0o600)

    async def go():
        app = _editor(config_file)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await wait_for(pilot, screen.ready_for_snapshot)
            assert not screen.active_bindings["ctrl+s"].enabled  # nothing to save yet
            ed = screen.query_one("#yaml")
            ed.move_cursor((0, 0))
            await pilot.press(*"# note", "enter")
            assert screen.modified
            await pilot.press("ctrl+s")
            assert not screen.modified

    run(go())
    assert config_file.read_text().startswith("# note\nrun:")
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert not [p for p in config_file.parent.iterdir() if p.name.startswith(".my.yaml.")]  # no temp left


def test_editor_title_says_saved_only_after_this_editor_saved(config_file, tmp_path):
    """The title's word about the file is true: nothing for a file as loaded, "● modified"
    after an edit, "saved" after ctrl+s, "● not saved yet" for a file that does not exist."""
    def title(screen) -> str:
        return str(screen.query_one("#editor-title").render())

    async def go():
        app = _editor(config_file)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await wait_for(pilot, screen.ready_for_snapshot)
            assert "saved" not in title(screen) and "modified" not in title(screen)   # nothing saved it
            ed = screen.query_one("#yaml")
            ed.move_cursor((0, 0))
            await pilot.press(*"# note", "enter")
            assert "● modified" in title(screen) and "saved" not in title(screen)
            await pilot.press("ctrl+s")
            assert "  saved" in title(screen) and "modified" not in title(screen)
            await pilot.press("x")
            assert "● modified" in title(screen)

        new = tmp_path / "new.yaml"
        app = _editor(new)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await wait_for(pilot, screen.ready_for_snapshot)
            assert "● not saved yet" in title(screen) and screen.active_bindings["ctrl+s"].enabled
            await pilot.press("ctrl+s")
            assert new.is_file() and "  saved" in title(screen)

    run(go())


def test_e_opens_editor_env_and_reloads(config_file, tmp_path, monkeypatch):
    fake = tmp_path / "fake-editor.py"
    fake.write_text(textwrap.dedent("""\
        import sys
        p = sys.argv[1]
        text = open(p).read().replace("steps: 40", "steps: 7")
        open(p, "w").write(text)
    """))
    monkeypatch.setenv("EDITOR", f"{sys.executable} {fake}")
    monkeypatch.delenv("VISUAL", raising=False)

    async def go():
        app = _editor(config_file)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await wait_for(pilot, screen.ready_for_snapshot)
            await pilot.press("escape")                     # leave the text, so "e" is a key
            assert not screen.query_one("#yaml").has_focus
            await pilot.press("e")
            await wait_for(pilot, lambda: "steps: 7" in screen.query_one("#yaml").text, what="reload")
            await wait_for(pilot, lambda: screen.ready_for_snapshot() and screen.valid)
            assert "7 steps" in str(screen.query_one("#validity").render())
            assert not screen.modified

    run(go())


def test_yaml_syntax_error_is_shown_with_its_line(config_file):
    config_file.write_text("run:\n  name: [unclosed\n")

    async def go():
        app = _editor(config_file)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await wait_for(pilot, screen.ready_for_snapshot)
            assert not screen.valid
            shown = str(screen.query_one("#issues").get_option_at_index(0).prompt)
            assert "YAML" in shown and "line" in shown

    run(go())


# ---- attach: finished, failed, dead -------------------------------------------------------------------
def _attach(run_dir):
    return ConsoleApp("attach", run=run_dir, runs_dir=run_dir.parent, gpu_probe=demo.no_nvml, blink=False)


@pytest.mark.parametrize("state,expect", [
    ("finished", "read-only: the run is finished"),
    ("failed", "failed: actor: CUDA out of memory"),
    ("paused", "dead: the supervisor is gone"),           # run.json says paused, no supervisor: dead
])
def test_attach_ended_runs_read_only_with_the_reason(tmp_path, state, expect):
    d = demo.copy_recorded_run(tmp_path / "runs", state, failure="actor: CUDA out of memory" if state == "failed" else None)

    async def go():
        app = _attach(d)
        async with app.run_test(size=(120, 40)) as pilot:
            await demo.settle(pilot)
            screen = app.screen
            assert expect in text_of(screen.query_one("#run-header"))
            assert screen.model.step == 12 and len(screen.model.metrics) == 12
            assert screen.query_one("#rollouts").row_count == 48
            assert screen.model.labels == {"3-1": "good", "5-2": "bad"}
            for key in ("p", "c", "r", "x"):
                assert not screen.active_bindings[key].enabled, key
            await pilot.press("p", "c", "x")             # greyed keys do nothing, and nothing crashes
            assert not screen.pending
            if state == "failed":
                events = screen.query_one("#events")
                assert any("worker failure" in str(line.text) for line in events.lines)
            gpu = text_of(screen.query_one("#gpu"))
            assert "NVML unavailable" in gpu

    run(go())


def test_gpu_pane_without_nvml_shows_why_and_host_memory(tmp_path):
    """The real probe on this machine (no GPU here; with one, the devices show instead)."""
    d = demo.copy_recorded_run(tmp_path / "runs", "finished")

    async def go():
        app = ConsoleApp("attach", run=d, runs_dir=d.parent, blink=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await demo.settle(pilot)
            screen = app.screen
            report = screen.gpu_report
            text = text_of(screen.query_one("#gpu"))
            if not report.available:
                assert report.reason.startswith("NVML")
                for role in ("actor", "critic", "reference", "reward"):
                    assert role in text

    run(go())


# ---- home, help, palette ---------------------------------------------------------------------------------
def test_home_lists_runs_and_presets_enter_attaches_n_starts_a_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    d = demo.copy_recorded_run(runs, "finished")
    presets = demo.make_presets(tmp_path / "configs")

    async def go():
        from console.screens.dashboard import DashboardScreen
        from console.screens.editor import EditorScreen
        from console.screens.prompt import PromptScreen

        app = ConsoleApp("home", runs_dir=runs, presets_dir=presets, gpu_probe=demo.no_nvml, blink=False)
        async with app.run_test(size=(120, 36)) as pilot:
            await demo.settle(pilot)
            home = app.screen
            table = home.query_one("#runs")
            assert table.row_count == 1 and table.get_row_at(0)[0] == d.name
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
            await pilot.press("d")                             # detach: back home, not out
            await wait_for(pilot, lambda: app.screen is home)
            await pilot.press("tab")
            assert home.query_one("#presets").has_focus
            await pilot.press("n")
            await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen))
            assert app.screen.query_one("#prompt-input").value == "tiny-new.yaml"
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, EditorScreen))
            editor = app.screen
            await wait_for(pilot, editor.ready_for_snapshot)
            assert editor.valid and editor.modified           # a copy of the preset, not yet saved
            await pilot.press("ctrl+s")
            assert (tmp_path / "tiny-new.yaml").read_text() == (presets / "tiny.yaml").read_text()
            await pilot.press("escape", "q")
            await wait_for(pilot, lambda: app.screen is home)
            await pilot.press("enter")                         # Enter on a preset: the editor on it
            await wait_for(pilot, lambda: isinstance(app.screen, EditorScreen))
            assert app.screen.path == presets / "tiny.yaml"

    run(go())


def test_help_lists_every_key_and_the_palette_offers_them(tmp_path):
    d = demo.copy_recorded_run(tmp_path / "runs", "paused", live=True)

    async def go():
        from textual.command import CommandPalette

        from console.screens.help import HelpScreen

        app = _attach(d)
        async with app.run_test(size=(120, 40)) as pilot:
            await demo.settle(pilot)
            dash = app.screen
            await pilot.press("question_mark")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            rows = [r[1] for r in app.screen.rows]
            for what in ("pause", "resume", "checkpoint", "reward", "stop", "detach", "good", "bad", "open",
                         "lowest", "highest", "search", "help"):
                assert what in rows, what
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is dash)
            # every binding with an id and a tooltip
            for b in type(dash).BINDINGS:
                assert b.id and b.tooltip, b
            await pilot.press("ctrl+p")
            await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
            await pilot.press(*"highest")
            await pilot.pause(0.5)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.screen is dash)
            table = dash.query_one("#rollouts")
            assert table.current()["score"] == max(v for v in table.index.scores if v is not None)

    run(go())
