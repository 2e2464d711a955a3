"""Every key of the screen underneath and what it does (greyed when it makes no sense now)."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Static

EXTRA = {
    "dashboard": [("tab", "next pane"), ("↑ ↓ pgup pgdn", "move in the rollouts table"),
                  ("end", "last sample (the table follows new steps again)")],
    "editor": [("esc", "leave the text (so e, L and q work), or go back"), ("ctrl+z / ctrl+y", "undo / redo"),
               ],
    "home": [("tab", "runs ⇄ presets"), ("↑ ↓", "move in the list")],
}


def _key_display(app, b: Binding) -> str:
    if b.key_display:
        return b.key_display
    return " / ".join(app.get_key_display(Binding(k.strip(), b.action)) for k in b.key.split(","))


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "close", key_display="esc", id="help.close",
                        tooltip="Close the help")]

    def __init__(self, target: Screen):
        super().__init__()
        self.target = target

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog", classes="dialog"):
            yield Static(Text(f"Keys — {getattr(self.target, 'HELP_TITLE', 'this screen')}", style="bold"), id="help-title")
            yield DataTable(id="help-table", cursor_type="none", zebra_stripes=True)
            yield Static("greyed: not available in the current state · esc closes", classes="dim")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("key")
        table.add_column("action")
        table.add_column("what it does")
        seen = set()
        for owner in (self.target, self.app):
            for b in owner.BINDINGS:
                if not isinstance(b, Binding) or b.action in seen:
                    continue
                seen.add(b.action)
                ok = self._enabled(owner, b.action)
                style = "" if ok else "grey50"
                table.add_row(Text(_key_display(self.app, b), style="bold " + style if ok else style),
                              Text(b.description or b.action, style=style), Text(b.tooltip or "", style=style))
        for key, what in EXTRA.get(getattr(self.target, "HELP_KIND", ""), []):
            table.add_row(Text(key, style="bold"), Text(""), Text(what))
        table.focus()

    @staticmethod
    def _enabled(owner, action: str) -> bool:
        name = action.split("(")[0]
        try:
            return bool(owner.check_action(name, ()))
        except Exception:  # noqa: BLE001
            return True

    def action_close(self) -> None:
        self.dismiss(None)
