"""Home: the runs under the runs directory (name, state, step, last score, started)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from console.widgets.run_header import STATE_STYLE
from engine.client import RunInfo


class RunsTable(DataTable):
    BINDINGS = [Binding("enter", "select_cursor", "attach", id="runs.attach",
                        tooltip="Open the dashboard of the selected run")]

    def __init__(self, **kw):
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self.paths: dict[str, Path] = {}
        self.infos: dict[str, tuple[dict, str]] = {}
        self._shown: list = []
        self._runs: list = []
        self.marked: list[str] = []     # up to two run paths marked for comparing (space)
        for label, width in (("run", 30), ("state", 9), ("step", 9), ("last score", 10), ("started", 16)):
            self.add_column(label, key=label, width=width)

    def show_runs(self, runs: list) -> None:
        """``runs``: (path, info, effective state), oldest first; shown newest first."""
        rows = []
        self._runs = runs
        self.infos = {str(path): (info, state) for path, info, state in runs}
        for path, info, state in reversed(runs):
            score = info.last_score
            created = info.created
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if isinstance(created, (int, float)) else "–"
            mark = "◆ " if str(path) in self.marked else ""
            rows.append((str(path), (mark + path.name, state, f"{info.step}/{info.steps if info.steps is not None else '?'}",
                                     f"{score:.3f}" if isinstance(score, (int, float)) else "–", started)))
        if rows == self._shown:
            return
        self._shown = rows
        keep = self.current_path()
        self.clear()
        self.paths = {}
        for key, (name, state, step, score, started) in rows:
            self.paths[key] = Path(key)
            self.add_row(name, Text(state, style=STATE_STYLE.get(state, "")), step, score, started, key=key)
        if keep is not None and str(keep) in self.paths:
            self.move_cursor(row=self.get_row_index(str(keep)), animate=False)

    def toggle_mark(self) -> list[str]:
        """Mark (or unmark) the highlighted run; at most two, the older mark drops out."""
        path = self.current_path()
        if path is not None:
            key = str(path)
            if key in self.marked:
                self.marked.remove(key)
            else:
                self.marked = (self.marked + [key])[-2:]
            self._shown = []
            self.show_runs(self._runs)
        return self.marked

    def detail(self) -> Text:
        """One line about the highlighted run: its folder, reward, and why it failed."""
        path = self.current_path()
        if path is None:
            return Text("")
        info, state = self.infos.get(str(path), (RunInfo(), ""))
        t = Text(no_wrap=True, overflow="ellipsis")
        shown = os.path.relpath(path)
        t.append(shown if not shown.startswith("..") else str(path), style="dim")
        if info.reward_source:
            t.append(f"  reward {info.reward_source}", style="dim")
        if info.failure or state == "dead":
            t.append(f"  {state}: ", style="bold red")
            t.append(str(info.failure or "the supervisor is gone"), style="red")
        return t

    def current_path(self) -> Optional[Path]:
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key((self.cursor_row, 0)).row_key
        except Exception:  # noqa: BLE001
            return None
        return self.paths.get(str(key.value))
