"""The Textual app: home, config editor, dashboard, help."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from textual.app import App
from textual.binding import Binding

from console.commands import ConsoleCommands


class ConsoleApp(App):
    """``start`` is "home", "edit" (``config``) or "attach" (``run``: a run directory)."""

    TITLE = "rlhf-console"
    CSS_PATH = ["app.tcss", "home.tcss", "editor.tcss", "dashboard.tcss"]
    COMMANDS = App.COMMANDS | {ConsoleCommands}
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    ENABLE_COMMAND_PALETTE = True

    BINDINGS = [
        Binding("question_mark", "help", "help", key_display="?", id="app.help",
                tooltip="Every key of this screen and what it does"),
        Binding("ctrl+p", "command_palette", "commands", key_display="^p", id="app.palette",
                tooltip="Every action by name"),
    ]

    def __init__(self, start: str = "home", *, runs_dir: str | Path = "runs", config: Optional[Path] = None,
                 run: Optional[Path] = None, presets_dir: Optional[Path] = None,
                 clock: Callable[[], float] = time.time, gpu_probe=None, poll_interval: float = 0.5,
                 blink: bool = True):
        super().__init__()
        self.start = start
        self.runs_dir = Path(runs_dir)
        self.config_path = Path(config) if config else None
        self.run_path = Path(run) if run else None
        self.presets_dir = Path(presets_dir) if presets_dir else None
        self.clock = clock
        self.gpu_probe = gpu_probe
        self.poll_interval = poll_interval
        self.blink = blink

    def on_mount(self) -> None:
        if self.start == "edit" and self.config_path is not None:
            from console.screens.editor import EditorScreen

            self.push_screen(EditorScreen(self.config_path))
        elif self.start == "attach" and self.run_path is not None:
            from console.screens.dashboard import DashboardScreen

            self.push_screen(DashboardScreen(self.run_path))
        else:
            from console.screens.home import HomeScreen

            self.push_screen(HomeScreen())

    def action_help(self) -> None:
        from console.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.screen))
