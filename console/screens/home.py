"""Home: the runs under the runs directory and the presets. Enter on a run attaches, Enter on a
preset opens it in the editor, n starts a new config from a preset."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker

from console.messages import RunsListed
from console.sources import check_new_config_path
from console.widgets.presets_table import PresetsTable, preset_description
from console.widgets.runs_table import RunsTable


def list_presets(presets_dir: Optional[Path]) -> list[tuple[str, Path, str]]:
    if presets_dir is None:
        from engine.config import list_presets as names
        from engine.config import preset_path

        paths = [(n, Path(preset_path(n))) for n in names()]
    else:
        paths = [(p.stem, p) for p in sorted(Path(presets_dir).glob("*.y*ml"))]
    return [(n, p, preset_description(p)) for n, p in paths]


class HomeScreen(Screen):
    HELP_TITLE = "home"
    HELP_KIND = "home"
    AUTO_FOCUS = "#runs"

    BINDINGS = [
        Binding("question_mark", "app.help", "help", key_display="?", id="home.help",
                tooltip="Every key of this screen and what it does"),
        Binding("enter", "open", "open", id="home.open",
                tooltip="On a run: attach its dashboard; on a preset: open it in the editor"),
        Binding("n", "new_config", "new config", id="home.new",
                tooltip="Start a new config from the selected preset (asks for a file name)"),
        Binding("space", "mark", "mark", id="home.mark",
                tooltip="Mark the selected run for comparing (two at most)"),
        Binding("o", "compare", "compare", id="home.compare",
                tooltip="Overlay the curves of the two marked runs, with a diff of their configs"),
        Binding("tab", "switch_pane", "runs/presets", show=False, id="home.switch",
                tooltip="Move between the runs and the presets"),
        Binding("q", "app.quit", "quit", id="home.quit", tooltip="Leave the console (runs keep training)"),
    ]

    listed = False

    def compose(self) -> ComposeResult:
        yield Static(id="home-title")
        with Vertical(id="home-body"):
            r = RunsTable(id="runs", classes="pane")
            r.border_title = "runs"
            yield r
            yield Static(id="run-detail")
            p = PresetsTable(id="presets", classes="pane")
            p.border_title = "presets (configs/)"
            yield p
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        app = self.app
        runs_dir = Path(getattr(app, "runs_dir", "runs"))
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("rlhf-console", style="bold")
        t.append(f"  runs in {runs_dir}", style="dim")
        t.append("   enter: attach / edit · n: new config · ?: keys", style="dim")
        self.query_one("#home-title", Static).update(t)
        self.query_one(PresetsTable).show_presets(list_presets(getattr(app, "presets_dir", None)))
        self.query_one(RunsTable).border_subtitle = "loading…"
        self._list_runs(runs_dir)

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False)
    def _list_runs(self, runs_dir: Path) -> None:
        from engine.client import list_runs, run_state

        worker = get_current_worker()
        while not worker.is_cancelled:
            out = []
            for run in list_runs(runs_dir):
                info = run.dir.read_info()
                out.append((run.path, info, run_state(info)))
            self.post_message(RunsListed(out))
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                if worker.is_cancelled:
                    return
                time.sleep(0.05)

    def ready_for_snapshot(self) -> bool:
        return self.listed

    def on_runs_listed(self, message: RunsListed) -> None:
        self.listed = True
        table = self.query_one(RunsTable)
        table.show_runs(message.runs)
        self.query_one("#run-detail", Static).update(table.detail())
        n = len(message.runs)
        table.border_subtitle = f"{n} run{'s' if n != 1 else ''}" if n else f"no runs under {getattr(self.app, 'runs_dir', 'runs')}/ yet"
        self.refresh_bindings()

    # ---- keys -------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> Optional[bool]:
        if action == "open":
            focused = self.focused
            if isinstance(focused, RunsTable):
                return True if focused.row_count else None
            if isinstance(focused, PresetsTable):
                return True if focused.row_count else None
            return None
        if action == "mark":
            return True if isinstance(self.focused, RunsTable) and self.focused.row_count else None
        if action == "compare":
            return True if len(self.query_one(RunsTable).marked) == 2 else None
        if action == "new_config":
            return True if self.query_one(PresetsTable).row_count else None
        return True

    def action_mark(self) -> None:
        marked = self.query_one(RunsTable).toggle_mark()
        self.refresh_bindings()
        self.notify(f"{len(marked)} of 2 runs marked" + (" — o compares them" if len(marked) == 2 else ""),
                    timeout=3)

    def action_compare(self) -> None:
        from console.screens.compare import CompareScreen

        a, b = self.query_one(RunsTable).marked
        self.app.push_screen(CompareScreen(Path(a), Path(b)))

    def action_switch_pane(self) -> None:
        runs, presets = self.query_one(RunsTable), self.query_one(PresetsTable)
        (presets if runs.has_focus else runs).focus()

    def on_descendant_focus(self) -> None:
        self.refresh_bindings()

    def action_open(self) -> None:
        focused = self.focused
        if isinstance(focused, RunsTable):
            self.open_run(focused.current_path())
        elif isinstance(focused, PresetsTable):
            cur = focused.current()
            if cur is not None:
                from console.screens.editor import EditorScreen

                self.app.push_screen(EditorScreen(cur[1]))

    @on(DataTable.RowHighlighted, "#runs")
    def _run_highlighted(self) -> None:
        self.query_one("#run-detail", Static).update(self.query_one(RunsTable).detail())

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def open_run(self, path: Optional[Path]) -> None:
        if path is None:
            return
        from console.screens.dashboard import DashboardScreen

        self.app.push_screen(DashboardScreen(path))

    def action_new_config(self) -> None:
        from console.screens.editor import EditorScreen
        from console.screens.prompt import PromptScreen

        presets = self.query_one(PresetsTable)
        cur = presets.current()
        if cur is None:
            return
        name, path = cur
        default = f"{name}-new.yaml"
        i = 2
        while Path(default).exists():
            default = f"{name}-new-{i}.yaml"
            i += 1

        def done(target: Optional[str]) -> None:
            if not target:
                return
            self.app.push_screen(EditorScreen(Path(target), text=path.read_text()))

        self.app.push_screen(PromptScreen(
            f"New config from the preset '{name}' — save it as:", value=default,
            help="a path ending in .yaml (relative to the current folder); ctrl+s saves it in the editor",
            check=check_new_config_path, blink=getattr(self.app, "blink", True)), done)
