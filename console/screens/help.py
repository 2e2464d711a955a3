"""Every key of the screen underneath and what it does (greyed when it makes no sense now)."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

EXTRA = {
    "dashboard": [("tab / shift+tab", "next / previous pane (at 80 columns one pane fills the screen)"),
                  ("↑ ↓ pgup pgdn home", "move in the rollouts table (the selection is a sample: it stays on it)"),
                  ("end", "last sample (the table follows new steps again)")],
    "editor": [("esc", "leave the text (so e, L and q work), or go back"), ("ctrl+z / ctrl+y", "undo / redo"),
               ],
    "home": [("tab", "runs ⇄ presets"), ("↑ ↓", "move in the list")],
    "sample": [("← → home end", "move over the response's tokens (their values in the line above the text)"),
               ("↑ ↓ pgup pgdn", "scroll the prompt and response")],
}


def _key_display(app, b: Binding) -> str:
    if b.key_display:
        return b.key_display
    return " / ".join(app.get_key_display(Binding(k.strip(), b.action)) for k in b.key.split(","))


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "close", key_display="esc", id="help.close",
                        tooltip="Close the help"),
                Binding("up", "scroll('up')", "scroll", show=False, id="help.up", tooltip="Scroll up"),
                Binding("down", "scroll('down')", "scroll", show=False, id="help.down", tooltip="Scroll down")]

    def __init__(self, target: Screen):
        super().__init__()
        self.target = target

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog", classes="dialog"):
            yield Static(Text(f"Keys — {getattr(self.target, 'HELP_TITLE', 'this screen')}", style="bold"), id="help-title")
            with VerticalScroll(id="help-table"):
                yield Static(id="help-rows")
            yield Static("greyed: not available in the current state · ↑ ↓ pgup pgdn scroll · esc closes", classes="dim")

    def on_mount(self) -> None:
        table = Table(box=None, expand=True, padding=(0, 1), show_edge=False, header_style="bold")
        table.add_column("key", no_wrap=True)
        table.add_column("action", no_wrap=True)
        table.add_column("what it does", ratio=1, overflow="fold")
        self.rows: list[tuple[str, str, str]] = []
        seen = set()
        for owner in (self.target, self.app):
            for b in owner.BINDINGS:
                if not isinstance(b, Binding) or b.action in seen:
                    continue
                seen.add(b.action)
                ok = self._enabled(owner, b.action)
                style = "" if ok else "grey50"
                key = _key_display(self.app, b)
                self.rows.append((key, b.description or b.action, b.tooltip or ""))
                table.add_row(Text(key, style="bold " + style if ok else style),
                              Text(b.description or b.action, style=style), Text(b.tooltip or "", style=style))
        for key, what in EXTRA.get(getattr(self.target, "HELP_KIND", ""), []):
            self.rows.append((key, "", what))
            table.add_row(Text(key, style="bold"), Text(""), Text(what))
        self.query_one("#help-rows", Static).update(table)
        self.query_one("#help-table").focus()

    def action_scroll(self, way: str) -> None:
        body = self.query_one("#help-table", VerticalScroll)
        body.scroll_up() if way == "up" else body.scroll_down()

    @staticmethod
    def _enabled(owner, action: str) -> bool:
        name = action.split("(")[0]
        try:
            return bool(owner.check_action(name, ()))
        except Exception:  # noqa: BLE001
            return True

    def action_close(self) -> None:
        self.dismiss(None)
