"""Timings pane: per role and phase, the last step's time, the mean, and its share of the step,
with a sparkline of the step time."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from console.model import RunModel


def _secs(v) -> str:
    if v is None:
        return "–"
    return f"{v * 1000:.0f}ms" if v < 1 else f"{v:.2f}s"


def _share(v, width: int = 4) -> Text:
    if v is None:
        return Text("–")
    filled = max(0, min(width, round(width * v)))
    t = Text("▮" * filled, style="cyan")
    t.append("▯" * (width - filled), style="grey35")
    t.append(f" {v * 100:3.0f}%")
    return t


class TimingsPane(Vertical):
    """Redrawn from the model on the dashboard's 1 s timer, never per datum."""

    def compose(self) -> ComposeResult:
        yield Static(id="timings-table")
        yield Static(id="step-caption")
        yield Sparkline([], id="step-spark")

    def redraw(self, model: RunModel) -> None:
        table = Table(box=None, expand=False, padding=(0, 1, 0, 0), show_edge=False, header_style="bold")
        table.add_column("role", no_wrap=True, max_width=9)
        table.add_column("phase", no_wrap=True, max_width=12)
        table.add_column("last", justify="right", no_wrap=True, min_width=6)
        table.add_column("mean", justify="right", no_wrap=True, min_width=6)
        table.add_column("share", no_wrap=True, min_width=9)
        rows = model.timing_rows()
        for role, phase, last, mean, share, wall in rows:
            style = "dim" if wall else ""
            table.add_row(Text(role, style=style), Text(phase, style=style), _secs(last), _secs(mean), _share(share))
        if not rows:
            table.add_row("–", "no step yet", "", "", "")
        self.query_one("#timings-table", Static).update(table)
        times = model.step_times()[-120:]
        last = times[-1] if times else None
        cap = Text.assemble(("step ", "bold"), f"last {_secs(last)}  mean {_secs(model.mean('step'))}",
                            ("  ▁▃▅ step time", "dim"))
        self.query_one("#step-caption", Static).update(cap)
        self.query_one("#step-spark", Sparkline).data = times or [0.0]
