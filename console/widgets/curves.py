"""Curves pane: score (raw and smoothed), KL (with the target line when the controller is
adaptive), response length, policy and value loss — plotext plots redrawn on a timer."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid
from textual_plotext import PlotextPlot

from console.model import RunModel, ema


class Curves(Grid):
    """Four small plots; ``redraw(model)`` is called by the dashboard's 1 s timer when the model
    moved, so a flood of steps costs one redraw a second."""

    def compose(self) -> ComposeResult:
        yield PlotextPlot(id="plot-score")
        yield PlotextPlot(id="plot-kl")
        yield PlotextPlot(id="plot-len")
        yield PlotextPlot(id="plot-loss")

    @staticmethod
    def _base(w: PlotextPlot, title: str):
        plt = w.plt
        plt.clear_figure()
        plt.title(title)
        plt.yfrequency(3)
        return plt

    @staticmethod
    def _xticks(plt, x: list[int]) -> None:
        if not x:
            return
        lo, hi = x[0], x[-1]
        ticks = sorted({lo, (lo + hi) // 2, hi})
        plt.xticks(ticks, [str(t) for t in ticks])

    def redraw(self, model: RunModel) -> None:
        roomy = self.size.height >= 24          # legends only where they do not hide the data
        x, score = model.series("score_mean")
        plt = self._base(self.query_one("#plot-score", PlotextPlot), "score  • raw  ⣿ smoothed" if not roomy else "score")
        if x:
            plt.plot(x, score, marker="dot", color="white", label="raw" if roomy else None)
            plt.plot(x, ema(score), marker="braille", color="green", label="smoothed" if roomy else None)
            self._xticks(plt, x)
        x, kl = model.series("kl")
        plt = self._base(self.query_one("#plot-kl", PlotextPlot), "KL")
        if x:
            plt.plot(x, kl, marker="braille", color="cyan")
            self._xticks(plt, x)
            target = model.kl_target
            if target is not None:
                plt.hline(target, "red")
                plt.title(f"KL (target {target:g})")
        x, ln = model.series("response_len_mean")
        plt = self._base(self.query_one("#plot-len", PlotextPlot), "response length")
        if x:
            plt.plot(x, ln, marker="braille", color="yellow")
            self._xticks(plt, x)
        x, pl = model.series("policy_loss")
        x2, vl = model.series("value_loss")
        plt = self._base(self.query_one("#plot-loss", PlotextPlot), "loss")
        if x:
            plt.plot(x, pl, marker="braille", color="magenta", label="policy")
        if x2:
            plt.plot(x2, vl, marker="braille", color="cyan", label="value")
        self._xticks(plt, x or x2)
        for w in self.query(PlotextPlot):
            w.refresh()
