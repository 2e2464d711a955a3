"""Under the editor: every problem the engine found (line, key path, message); Enter jumps there."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option


class IssuesList(OptionList):
    def show(self, issues: list, notices: list) -> None:
        self.clear_options()
        opts = []
        for i, it in enumerate(list(issues) + list(notices)):
            err = it.severity == "error"
            t = Text()
            t.append("✗ " if err else "! ", style="bold red" if err else "bold yellow")
            t.append(f"line {it.line:<4}" if it.line is not None else "line –   ", style="bold")
            if it.origin:
                t.append(f"{it.origin}  ", style="dim")
            t.append(f"{it.path or '(file)'}", style="cyan")
            t.append(f": {it.message}")
            opts.append(Option(t, id=f"issue-{i}"))
        self.add_options(opts)
        self._items = list(issues) + list(notices)
        if opts:
            self.highlighted = 0

    def issue_at(self, index: int):
        items = getattr(self, "_items", [])
        return items[index] if 0 <= index < len(items) else None
