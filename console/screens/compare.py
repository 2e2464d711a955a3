"""Two runs side by side: their curves overlaid (down-sampled like the dashboard's) and a diff of
their configs. Opened from home after marking two runs with ``space`` (``o``)."""
from __future__ import annotations

import difflib
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual_plotext import PlotextPlot

from console.model import RunFollower, RunModel, fmt_num
from console.widgets.curves import _rs, downsample
from engine.records import metric

# (title, metrics key) of each overlaid plot: the metric's title in the catalogue (engine/records.py)
OVERLAY = tuple((metric(k).title, k) for k in ("score_mean", "kl", "response_len_mean", "policy_loss"))
COLOURS = ("success", "accent")


def config_diff(a_text: str, b_text: str, a_name: str, b_name: str) -> Text:
    out = Text()
    lines = list(difflib.unified_diff(a_text.splitlines(), b_text.splitlines(), a_name, b_name, lineterm="", n=1))
    if not lines:
        return Text("the two configs are the same", style="dim")
    for ln in lines:
        style = ("bold" if ln.startswith(("---", "+++")) else "green" if ln.startswith("+")
                 else "red" if ln.startswith("-") else "cyan" if ln.startswith("@@") else "dim")
        out.append(ln + "\n", style=style)
    return out


class CompareScreen(Screen):
    HELP_TITLE = "compare two runs"
    HELP_KIND = "compare"
    BINDINGS = [
        Binding("question_mark", "app.help", "help", key_display="?", id="compare.help",
                tooltip="Every key of this screen and what it does"),
        Binding("escape,q", "back", "back", id="compare.back", tooltip="Back to the runs"),
    ]

    def __init__(self, a: Path, b: Path):
        super().__init__()
        self.paths = (Path(a), Path(b))
        self.models = (RunModel(self.paths[0]), RunModel(self.paths[1]))
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield Static(id="compare-title")
        with Vertical(id="compare-body"):
            with Grid(id="compare-plots"):
                for i in range(len(OVERLAY)):
                    with Vertical(classes="compare-plot"):
                        yield Static(classes="curve-legend")
                        yield PlotextPlot()
            with VerticalScroll(id="compare-diff", classes="pane") as d:
                d.border_title = "config diff"
                yield Static(id="compare-diff-text")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        a, b = self.paths
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("compare  ", style="bold")
        t.append(a.name, style="bold " + _rs(self._colour(0)))
        t.append("  vs  ")
        t.append(b.name, style="bold " + _rs(self._colour(1)))
        self.query_one("#compare-title", Static).update(t)
        self._load()

    def ready_for_snapshot(self) -> bool:
        return self.loaded

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _load(self) -> None:
        deltas = [RunFollower(p, chunk=None).poll() for p in self.paths]
        self.app.call_from_thread(self._show, deltas)

    def _colour(self, i: int) -> tuple[int, int, int]:
        from textual.color import Color

        try:
            return Color.parse(self.app.get_css_variables().get(COLOURS[i])).rgb
        except Exception:  # noqa: BLE001
            return ((80, 200, 120), (230, 160, 40))[i]

    def _show(self, deltas) -> None:
        for m, d in zip(self.models, deltas):
            m.apply(d)
        a, b = self.models
        self.query_one("#compare-diff-text", Static).update(
            config_diff(deltas[0].config_text or "", deltas[1].config_text or "", a.name, b.name))
        self.redraw()
        self.loaded = True

    def redraw(self) -> None:
        for slot, (title, key) in zip(self.query(".compare-plot"), OVERLAY):
            w = slot.query_one(PlotextPlot)
            plt = w.plt
            plt.clear_figure()
            plt.frame(False)
            plt.yfrequency(3)
            legend = Text(no_wrap=True, overflow="ellipsis")
            legend.append(title, style="bold")
            width = max(10, slot.size.width - 9)
            hi = 0
            for i, m in enumerate(self.models):
                xs, ys = m.series(key)
                rgb = self._colour(i)
                legend.append("  ━ ", style=_rs(rgb))
                legend.append(fmt_num(ys[-1]) if ys else "–")
                if xs:
                    bx, mean, _, _ = downsample(xs, ys, width)
                    plt.plot(bx, mean, marker="braille", color=rgb)
                    hi = max(hi, xs[-1])
            if hi:
                ticks = sorted({1, max(1, hi // 2), hi})
                plt.xticks(ticks, [str(t) for t in ticks])
            slot.query_one(".curve-legend", Static).update(legend)
            w.refresh()

    def on_resize(self) -> None:
        if self.loaded:
            self.redraw()

    def action_back(self) -> None:
        self.app.pop_screen()
