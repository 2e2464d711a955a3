"""Curves pane: the run's metrics as plots a person can read, and a page with every metric.

Each series is down-sampled to the plot's width (the mean of each column's steps, drawn over a
dim min–max envelope), so ten thousand steps draw as fast as a hundred and never become a solid
band. Above each plot, outside the data, a legend line with the current value and the min/max of
what is shown. Keys (on the dashboard): ``v`` next plots (as many as fit with at least six data
rows each), ``w`` last ``WINDOW`` steps / the whole run, ``t`` x by step / by minutes, ``m`` the
page of every recorded metric with sparklines. Colours come from the active theme; the KL
target is drawn on top of the data and kept inside the y range.
"""
from __future__ import annotations

import math
from typing import Optional

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.color import Color
from textual.containers import Grid, Vertical, VerticalScroll
from textual.widgets import Static
from textual_plotext import PlotextPlot

from console.model import RunModel, fmt_num
from engine.records import PLOT_GROUPS, plot_group

WINDOW = 200
MIN_DATA_ROWS = 6

# Theme colours of each plot group's series, in the catalogue's order; a group not named
# here draws with DEFAULT_COLOURS.
GROUP_COLOURS = {
    "score": ("success",),
    "held-out accuracy": ("success", "accent"),
    "KL": ("accent",),
    "response length": ("warning",),
    "loss": ("secondary", "primary"),
    "entropy": ("success",),
    "throughput": ("primary", "accent"),
    "KL coefficient": ("warning",),
    "grad norm": ("secondary", "primary"),
}
DEFAULT_COLOURS = ("accent", "primary", "success", "warning", "secondary")


def _plots() -> tuple:
    """(title, [(metrics key, legend, theme colour)]) per plot group of the metrics catalogue
    (engine/records.py), in its order."""
    out = []
    for group in PLOT_GROUPS:
        colours = GROUP_COLOURS.get(group, DEFAULT_COLOURS)
        out.append((group, tuple((m.name, m.legend, colours[i % len(colours)])
                                 for i, m in enumerate(plot_group(group)))))
    return tuple(out)


PLOTS = _plots()

SPARK = "▁▂▃▄▅▆▇█"


def _rs(rgb) -> str:
    return "rgb({},{},{})".format(*rgb)


def downsample(xs: list[float], ys: list[float], n: int):
    """(x, mean, min, max) per bucket: at most ``n`` buckets of consecutive points."""
    if n <= 0 or len(xs) <= n:
        return list(xs), list(ys), list(ys), list(ys)
    bx, mean, lo, hi = [], [], [], []
    size = len(xs) / n
    for i in range(n):
        a, b = int(i * size), int((i + 1) * size)
        if b <= a:
            continue
        chunk = ys[a:b]
        bx.append(xs[(a + b - 1) // 2])
        mean.append(sum(chunk) / len(chunk))
        lo.append(min(chunk))
        hi.append(max(chunk))
    return bx, mean, lo, hi


def sparkline(values: list[float], width: int) -> str:
    if not values:
        return ""
    _, mean, _, _ = downsample(list(range(len(values))), values, width)
    lo, hi = min(mean), max(mean)
    if not math.isfinite(lo) or not math.isfinite(hi):
        return ""
    span = hi - lo or 1.0
    return "".join(SPARK[min(7, int((v - lo) / span * 7.999))] for v in mean)


class CurvePlot(Vertical):
    """A legend line (outside the data) and the plot under it."""

    def compose(self) -> ComposeResult:
        yield Static(classes="curve-legend")
        yield PlotextPlot()


class Curves(Vertical):
    """``redraw(model)`` is called by the dashboard's 1 s timer when the model moved (and when a
    key changes the view), so a flood of steps costs one redraw a second."""

    SLOTS = 4

    def __init__(self, **kw):
        super().__init__(**kw)
        self.page = 0
        self.windowed = False
        self.by_time = False
        self.show_metrics = False
        self.shown: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static(id="curves-caption")
        with Grid(id="curves-grid"):
            for i in range(self.SLOTS):
                yield CurvePlot(id=f"curve-{i}")
        with VerticalScroll(id="metrics-page"):
            yield Static(id="metrics-table")

    # ---- layout ----------------------------------------------------------------------------
    def layout_for(self, width: int, height: int) -> tuple[int, int]:
        """(rows, columns) of plots so that each has at least MIN_DATA_ROWS data rows."""
        per_plot = MIN_DATA_ROWS + 2          # legend line + x ticks
        cols = 2 if width >= 60 else 1
        rows = max(1, min(2, height // per_plot))
        return rows, cols

    def cycle(self) -> str:
        self.page += 1
        return self._plots_caption()

    def _plots_caption(self) -> str:
        return ", ".join(self.shown) or "–"

    # ---- colours ---------------------------------------------------------------------------
    def _colour(self, name: str) -> tuple[int, int, int]:
        try:
            var = self.app.get_css_variables().get(name) or self.app.get_css_variables().get("foreground")
            return Color.parse(var).rgb
        except Exception:  # noqa: BLE001 - a theme without that variable: plain white
            return (200, 200, 200)

    def _dim(self, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
        try:
            bg = Color.parse(self.app.get_css_variables().get("surface") or "#000000").rgb
        except Exception:  # noqa: BLE001
            bg = (0, 0, 0)
        return tuple(int(0.45 * c + 0.55 * b) for c, b in zip(rgb, bg))

    # ---- drawing ---------------------------------------------------------------------------
    def redraw(self, model: RunModel) -> None:
        grid = self.query_one("#curves-grid")
        table = self.query_one("#metrics-table", Static)
        grid.display = not self.show_metrics
        self.query_one("#metrics-page").display = self.show_metrics
        inner_h = max(0, self.size.height - 1)
        if self.show_metrics:
            self._metrics_page(model, table)
            self.shown = ["every metric"]
        else:
            rows, cols = self.layout_for(self.size.width, inner_h)
            n = rows * cols
            grid.styles.grid_size_columns = cols
            grid.styles.grid_size_rows = rows
            available = [p for p in PLOTS if any(model.series(k)[0] for k, _, _ in p[1])] or list(PLOTS[:n])
            start = (self.page * n) % max(1, len(available))
            chosen = [available[(start + i) % len(available)] for i in range(min(n, len(available)))]
            self.shown = [c[0] for c in chosen]
            for i in range(self.SLOTS):
                slot = self.query_one(f"#curve-{i}", CurvePlot)
                slot.display = i < len(chosen)
                if i < len(chosen):
                    self._draw(slot, chosen[i], model)
        cap = Text(no_wrap=True, overflow="ellipsis", style="dim")
        cap.append(f"{'last %d steps' % WINDOW if self.windowed else 'whole run'} (w)")
        if not self.show_metrics:
            cap.append(f" · x: {'minutes' if self.by_time else 'step'} (t) · v: next plots")
        cap.append(" · m: " + ("plots" if self.show_metrics else "all metrics"))
        self.query_one("#curves-caption", Static).update(cap)

    def _xy(self, model: RunModel, key: str):
        xs, ts, ys = model.series(key, with_time=True)
        if self.windowed and xs:
            cut = xs[-1] - WINDOW
            i = next((j for j in range(len(xs) - 1, -1, -1) if xs[j] <= cut), -1) + 1
            xs, ts, ys = xs[i:], ts[i:], ys[i:]
        if self.by_time:
            t0 = model.created or (ts[0] if ts else 0.0)
            xs = [(t - t0) / 60.0 for t in ts]
        return xs, ys

    def _draw(self, slot: CurvePlot, plot: tuple, model: RunModel) -> None:
        title, series = plot
        w = slot.query_one(PlotextPlot)
        plt = w.plt
        plt.clear_figure()
        plt.frame(False)
        plt.yfrequency(3)
        width = max(10, slot.size.width - 9)          # the y labels take ~8 columns
        legend = Text(no_wrap=True, overflow="ellipsis")
        legend.append(title, style="bold")
        lo_all, hi_all, x_all = math.inf, -math.inf, []
        for key, label, colour in series:
            xs, ys = self._xy(model, key)
            rgb = self._colour(colour)
            if len(series) > 1:
                legend.append("  ━ ", style=_rs(rgb))
                legend.append(label)
            if not xs:
                legend.append(" –", style="dim")
                continue
            bx, mean, lo, hi = downsample(xs, ys, width)
            if len(bx) < len(xs):        # the envelope only where a column holds several steps
                dim = self._dim(rgb)
                plt.plot(bx, lo, marker="braille", color=dim)
                plt.plot(bx, hi, marker="braille", color=dim)
            plt.plot(bx, mean, marker="braille", color=rgb)
            lo_all, hi_all = min(lo_all, min(ys)), max(hi_all, max(ys))
            x_all = xs if len(xs) > len(x_all) else x_all
            legend.append(f" {fmt_num(ys[-1])}", style="bold " + _rs(rgb))
            if len(series) == 1:
                legend.append(f"  min {fmt_num(min(ys))} max {fmt_num(max(ys))}", style="dim")
        if any(k == "kl" for k, _, _ in series) and model.kl_target is not None and x_all:
            target = model.kl_target
            plt.hline(target, self._colour("error"))
            lo_all, hi_all = min(lo_all, target), max(hi_all, target)
            legend.append("  ┄ target ", style=_rs(self._colour('error')))
            legend.append(f"{target:g}")
        swaps = [(step, t, v) for step, t, v in model.reward_swaps()]
        if swaps and x_all:
            t0 = model.created or 0.0
            shown = [((t - t0) / 60.0 if self.by_time else step, v) for step, t, v in swaps]
            shown = [(x, v) for x, v in shown if x_all[0] <= x <= x_all[-1]]
            for x, _v in shown:          # a reward swap: a vertical line where the new version starts
                plt.vline(x, self._colour("warning"))
            if shown:
                legend.append(f"  ┊ reward v{shown[-1][1]}", style=_rs(self._colour("warning")))
        if x_all:
            if hi_all > lo_all:
                pad = (hi_all - lo_all) * 0.05
                plt.ylim(lo_all - pad, hi_all + pad)
            a, b = x_all[0], x_all[-1]
            ticks = sorted({a, (a + b) / 2, b}) if b > a else [a]
            fmt = (lambda v: f"{v:.0f}m" if b - a >= 3 else f"{v:.1f}m") if self.by_time else (lambda v: f"{v:.0f}")
            plt.xticks(ticks, [fmt(t) for t in ticks])
        slot.query_one(".curve-legend", Static).update(legend)
        w.refresh()

    def _metrics_page(self, model: RunModel, out: Static) -> None:
        keys: list[str] = []
        for m in model.metrics[-50:]:
            for k, v in m.values.items():
                if k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                    keys.append(k)
        t = Table(box=None, expand=True, padding=(0, 1), show_edge=False, header_style="bold")
        t.add_column("metric", no_wrap=True)
        t.add_column("now", justify="right", no_wrap=True)
        t.add_column("min", justify="right", no_wrap=True)
        t.add_column("max", justify="right", no_wrap=True)
        t.add_column(f"{'last %d steps' % WINDOW if self.windowed else 'whole run'}", no_wrap=True, ratio=1)
        spark_w = max(8, self.size.width - 46)
        colour = _rs(self._colour('accent'))
        for k in keys:
            _, ys = self._xy(model, k)
            if not ys:
                continue
            t.add_row(k, fmt_num(ys[-1], 4), fmt_num(min(ys), 4), fmt_num(max(ys), 4),
                      Text(sparkline(ys, spark_w), style=colour))
        if not keys:
            t.add_row("–", "no step yet", "", "", "")
        out.update(t)

    def on_resize(self) -> None:
        screen = self.screen
        model: Optional[RunModel] = getattr(screen, "model", None)
        if model is not None:
            self.redraw(model)
