"""Ask for one line of text (a reward source, a file name), checked before it is accepted."""
from __future__ import annotations

from typing import Callable, Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class PromptScreen(ModalScreen[Optional[str]]):
    BINDINGS = [Binding("escape", "cancel", "cancel", id="prompt.cancel", tooltip="Close without doing anything")]

    def __init__(self, title: str, *, value: str = "", placeholder: str = "", help: str = "",
                 check: Callable[[str], Optional[str]] = lambda s: None, blink: bool = True):
        super().__init__()
        self.title_text, self.value, self.placeholder, self.help_text = title, value, placeholder, help
        self.check = check
        self.blink = blink

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Static(self.title_text, id="prompt-title")
            inp = Input(value=self.value, placeholder=self.placeholder, id="prompt-input")
            inp.cursor_blink = self.blink
            yield inp
            yield Static(self.help_text, id="prompt-help", classes="dim")
            yield Static("", id="prompt-error")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        err = self.check(text)
        if err:
            self.query_one("#prompt-error", Static).update(f"✗ {err}")
            return
        self.dismiss(text)

    def action_cancel(self) -> None:
        self.dismiss(None)
