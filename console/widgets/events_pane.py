"""Events pane: the tail of events.log, WARNING and ERROR lines highlighted; long lines wrap."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog


def event_text(line: str) -> Text:
    """One events.log line: the date dropped (the time stays), WARNING/ERROR highlighted."""
    if len(line) > 20 and line[4] == "-" and line[10] == " ":
        line = line[11:]
    if " ERROR " in line or " CRITICAL " in line:
        return Text(line, style="bold red")
    if " WARNING " in line:
        return Text(line, style="bold yellow")
    t = Text(line)
    if len(line) > 9 and line[2] == ":":
        t.stylize("dim", 0, 8)
    if "train-rm:" in line or "downloading" in line or "converting" in line or " loaded in " in line:
        t.stylize("cyan", 9)
    return t


class EventsPane(RichLog):
    def __init__(self, **kw):
        super().__init__(max_lines=1000, wrap=True, markup=False, highlight=False, auto_scroll=True, **kw)

    def add_lines(self, lines: list[str]) -> None:
        for ln in lines[-self.max_lines:]:
            self.write(event_text(ln), scroll_end=True)
