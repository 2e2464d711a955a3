"""The config editor: YAML with highlighting, the engine's validation on every change (debounced,
in a thread worker), errors next to their lines and listed underneath, save, $EDITOR, launch."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Optional

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult, SuspendNotSupported
from textual.binding import Binding
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, OptionList, Static, TextArea

from console.messages import ConfigValidated, RunLaunched
from console.widgets.issues_list import IssuesList
from console.widgets.yaml_editor import YamlEditor
from engine.files import atomic_write_text as atomic_write

DEBOUNCE_S = 0.3


class EditorScreen(Screen):
    HELP_TITLE = "config editor"
    HELP_KIND = "editor"
    AUTO_FOCUS = "#yaml"

    BINDINGS = [
        Binding("ctrl+s", "save", "save", id="editor.save", tooltip="Save the file (atomically: temp file + rename)"),
        Binding("ctrl+l,L", "launch", "launch", key_display="^l/L", id="editor.launch",
                tooltip="Start the run (detached supervisor) and open its dashboard; refused while the config is invalid"),
        Binding("e", "external_editor", "$EDITOR", id="editor.external",
                tooltip="Open the file in $EDITOR (the console steps aside), then reload it (esc first when typing)"),
        Binding("escape", "leave", "leave text", key_display="esc", id="editor.leave", priority=True,
                tooltip="Leave the text (so e, L, q work); on the list: back to the text"),
        Binding("q", "back", "back", id="editor.back", tooltip="Close the editor (asks when there are unsaved changes)"),
    ]

    def __init__(self, path: Path, text: Optional[str] = None):
        super().__init__()
        self.path = Path(path)
        self.initial = text
        self.saved_text = ""         # the text the file holds (as loaded, saved or reloaded)
        self.on_disk = False         # the file exists with saved_text in it
        self.saved_here = False      # this editor wrote saved_text (the title says "saved" only then)
        self.result = None           # the latest ValidationResult
        self._gen = 0                # bumps on every change
        self._valid_gen = -1         # the generation ``result`` belongs to
        self._timer: Optional[Timer] = None
        self.launching = False

    def compose(self) -> ComposeResult:
        if self.initial is None:
            try:
                self.initial = self.path.read_text()
                self.saved_text = self.initial
                self.on_disk = True
            except FileNotFoundError:
                self.initial = ""
        yield Static(id="editor-title")
        ed = YamlEditor(self.initial, id="yaml")
        ed.cursor_blink = getattr(self.app, "blink", True)
        yield ed
        yield Static(id="validity")
        yield IssuesList(id="issues")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self._title()
        self._validate_soon(0.01)

    def ready_for_snapshot(self) -> bool:
        return self.result is not None and self._valid_gen == self._gen and not self.launching

    # ---- state ------------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        return self.query_one(YamlEditor).text

    @property
    def modified(self) -> bool:
        return self.text != self.saved_text

    @property
    def valid(self) -> bool:
        return self.result is not None and self._valid_gen == self._gen and self.result.ok

    def _title(self) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("config ", style="bold")
        try:
            shown = os.path.relpath(self.path)
        except ValueError:
            shown = str(self.path)
        t.append(shown if not shown.startswith("../..") else str(self.path))
        status = self.file_status()
        if status:
            t.append(f"  {status}", style="yellow" if status.startswith("●") else "dim")
        lang = self.query_one(YamlEditor).language
        if lang is None:
            t.append("  (no YAML highlighting: install textual[syntax])", style="dim")
        self.query_one("#editor-title", Static).update(t)

    def file_status(self) -> str:
        """What the title says about the file: "● modified" (the text differs from the file),
        "● not saved yet" (no file there yet), "saved" (this editor has just written the text
        shown), or nothing (the text is the file as it was loaded)."""
        if not self.on_disk:
            return "● not saved yet"
        if self.modified:
            return "● modified"
        return "saved" if self.saved_here else ""

    # ---- validation -------------------------------------------------------------------------------
    @on(TextArea.Changed, "#yaml")
    def _changed(self) -> None:
        self._gen += 1
        self._title()
        self.refresh_bindings()
        self._validate_soon(DEBOUNCE_S)

    def _validate_soon(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(delay, lambda: self._validate(self.text, self._gen))
        self.query_one("#validity", Static).update(Text("checking…", style="dim"))

    @work(thread=True, exclusive=True, group="validate", exit_on_error=False)
    def _validate(self, text: str, gen: int) -> None:
        from engine.config import validate_text

        try:
            res = validate_text(text, self.path.name)
        except Exception as e:  # noqa: BLE001 - the engine's validator should not raise; show it if it does
            from engine.config import ConfigIssue, ValidationResult

            res = ValidationResult(None, [ConfigIssue("", None, f"validator error: {type(e).__name__}: {e}")], [])
        self.post_message(ConfigValidated(res, gen))

    def on_config_validated(self, message: ConfigValidated) -> None:
        if message.generation != self._gen:
            return  # stale: the text changed since
        self.result, self._valid_gen = message.result, message.generation
        res = message.result
        errors = {i.line - 1: i.message for i in res.issues if i.line}
        notices = {i.line - 1: i.message for i in res.notices if i.line}
        self.query_one(YamlEditor).mark(errors, notices)
        self.query_one(IssuesList).show(res.issues, res.notices)
        v = Text(no_wrap=True, overflow="ellipsis")
        if res.ok:
            cfg = res.config
            v.append("✓ valid", style="bold green")
            v.append(f" — {cfg.run.name}, {cfg.run.steps} steps, reward {cfg.reward.source}")
            if res.notices:
                v.append(f"  ({len(res.notices)} notice{'s' if len(res.notices) > 1 else ''})", style="yellow")
            v.append("  ctrl+l launches", style="dim")
        else:
            n = len(res.issues)
            v.append(f"✗ {n} error{'s' if n > 1 else ''}", style="bold red")
            v.append(" — launch is refused until they are fixed", style="red")
        self.query_one("#validity", Static).update(v)
        self.query_one(IssuesList).display = bool(res.issues or res.notices)
        self.refresh_bindings()

    @on(OptionList.OptionSelected, "#issues")
    def _goto_issue(self, event: OptionList.OptionSelected) -> None:
        issue = self.query_one(IssuesList).issue_at(event.option_index)
        if issue is not None and issue.line:
            ed = self.query_one(YamlEditor)
            ed.move_cursor((issue.line - 1, 0), center=True)
            ed.focus()

    # ---- keys -------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> Optional[bool]:
        if action == "launch":
            return True if self.valid and not self.launching else None
        if action == "save":
            return True if self.is_mounted and (self.modified or not self.on_disk) else None
        return True

    def action_save(self) -> bool:
        try:
            atomic_write(self.path, self.text)
        except OSError as e:
            self.notify(f"could not save {self.path}: {e}", severity="error")
            return False
        self.saved_text = self.text
        self.on_disk = self.saved_here = True
        self._title()
        self.refresh_bindings()
        self.notify(f"saved {self.path}", timeout=2)
        return True

    def action_launch(self) -> None:
        if not self.valid:
            why = "the config is still being checked" if self._valid_gen != self._gen else "the config is invalid"
            self.notify(f"launch refused: {why}", severity="error")
            return
        if self.modified and not self.action_save():
            return
        self.launching = True
        self.refresh_bindings()
        self.query_one("#validity", Static).update(Text("launching… (starting the supervisor)", style="yellow"))
        self._launch(self.path, str(getattr(self.app, "runs_dir", "runs")))

    @work(thread=True, exclusive=True, group="launch", exit_on_error=False)
    def _launch(self, path: Path, runs_dir: str) -> None:
        from engine.client import launch

        try:
            run = launch(path, [f"run.output_dir={runs_dir}"], detach=True, wait_ready=False)
            self.post_message(RunLaunched(run))
        except Exception as e:  # noqa: BLE001 - ConfigError, RunError, OSError: shown
            self.post_message(RunLaunched(None, f"{type(e).__name__}: {e}"))

    def on_run_launched(self, message: RunLaunched) -> None:
        self.launching = False
        self.refresh_bindings()
        if message.error or message.run is None:
            self.notify(message.error, title="launch failed", severity="error")
            self.query_one("#validity", Static).update(Text(f"✗ launch failed: {message.error}", style="red"))
            return
        from console.screens.dashboard import DashboardScreen

        self.app.switch_screen(DashboardScreen(message.run.path))

    def action_external_editor(self) -> None:
        if self.modified and not self.action_save():
            return
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        cmd = shlex.split(editor) + [str(self.path)]
        try:
            try:
                with self.app.suspend():
                    subprocess.call(cmd)
            except SuspendNotSupported:  # headless (tests): run it without a terminal
                subprocess.call(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as e:
            self.notify(f"could not run {editor}: {e}", severity="error")
            return
        try:
            text = self.path.read_text()
        except OSError as e:
            self.notify(f"could not reload {self.path}: {e}", severity="error")
            return
        self.saved_text = text
        self.on_disk, self.saved_here = True, False  # the external editor wrote it, not this one
        self.query_one(YamlEditor).load_text(text)
        self._title()
        self.notify(f"reloaded {self.path} from {Path(cmd[0]).name}", timeout=2)

    def action_leave(self) -> None:
        ed = self.query_one(YamlEditor)
        issues = self.query_one(IssuesList)
        if ed.has_focus and issues.display and issues.option_count:
            issues.focus()
        elif ed.has_focus:
            self.set_focus(None)
        else:
            ed.focus()

    def action_back(self) -> None:
        def leave(ok: Optional[bool] = True) -> None:
            if not ok:
                return
            if len(self.app.screen_stack) > 2:
                self.app.pop_screen()
            else:
                self.app.exit()

        if self.modified:
            from console.screens.confirm import ConfirmScreen

            self.app.push_screen(ConfirmScreen(f"Discard the unsaved changes to {self.path.name}?", "Discard", "Keep editing"), leave)
        else:
            leave()
