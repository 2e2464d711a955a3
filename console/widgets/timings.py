"""Timings pane: per role and phase, the last step's time, the mean, and its share of the step;
a timeline of the last step (one lane per role, generate / score / update bars on a shared time
axis, so overlap and idle time show at a glance); a sparkline of the step time."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
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


LANES = ("actor", "reference", "critic", "reward", "driver")
GLYPH = {"generate": ("█", "green"), "score": ("▓", "cyan"), "update": ("█", "yellow"), "advantage": ("▒", "magenta")}


def step_spans(t: dict) -> tuple[dict[str, list[tuple[float, float, str]]], float]:
    """Each role's (start, end, kind) in one step, from the step's phase timings: generate, then
    the scoring phase (every role in parallel), the advantage on the driver, then the updates
    (actor and critic in parallel). Returns the spans and the step's length."""
    g = float(t.get("rollout") or 0.0)
    parallel = {"actor": t.get("actor_logprobs"), "reference": t.get("ref"), "critic": t.get("critic"),
                "reward": t.get("reward")}
    scoring = float(t.get("scoring") or max([float(v or 0) for v in parallel.values()] or [0.0]))
    adv = float(t.get("advantage") or 0.0)
    u0 = g + scoring + adv
    ups = {"actor": t.get("actor_update"), "critic": t.get("critic_update")}
    update = float(t.get("update") or max([float(v or 0) for v in ups.values()] or [0.0]))
    spans: dict[str, list] = {r: [] for r in LANES}
    if g:
        spans["actor"].append((0.0, g, "generate"))
    for r, v in parallel.items():
        if v:
            spans[r].append((g, g + float(v), "score"))
    if adv:
        spans["driver"].append((g + scoring, u0, "advantage"))
    for r, v in ups.items():
        if v:
            spans[r].append((u0, u0 + float(v), "update"))
    total = max(float(t.get("step") or 0.0), u0 + update, 1e-9)
    return spans, total


def timeline(t: dict, width: int) -> Text:
    spans, total = step_spans(t)
    out = Text()
    label_w = 10
    cols = max(10, width - label_w - 1)
    for role in LANES:
        if not spans[role]:
            continue
        out.append(f"{role:<{label_w}}", style="bold")
        row = [("·", "grey42")] * cols
        for a, b, kind in spans[role]:
            i, j = int(a / total * cols), max(int(a / total * cols) + 1, int(round(b / total * cols)))
            for k in range(i, min(cols, j)):
                row[k] = GLYPH[kind]
        for ch, style in row:
            out.append(ch, style=style)
        out.append("\n")
    out.append(" " * label_w)
    out.append(f"0{_secs(total).rjust(cols - 1)}\n", style="dim")
    for kind in ("generate", "score", "advantage", "update"):
        ch, style = GLYPH[kind]
        out.append(ch, style=style)
        out.append(f" {kind}  ")
    out.append("· idle", style="grey42")
    return out


class TimingsPane(VerticalScroll):
    """Redrawn from the model on the dashboard's 1 s timer, never per datum."""

    def compose(self) -> ComposeResult:
        yield Static(id="timings-table")
        yield Static(id="timings-note")
        yield Static(id="step-timeline")
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
        self.query_one("#timings-note", Static).update(Text(
            "∥ rows: the phase's wall time with its roles in parallel (role shares overlap)", style="dim"))
        last_t = model.metrics[-1].timings if model.metrics else {}
        tl = Text.assemble(("last step, by role\n", "bold"), timeline(last_t, max(20, self.size.width - 2))) \
            if last_t else Text("no step yet", style="dim")
        self.query_one("#step-timeline", Static).update(tl)
        times = model.step_times()[-120:]
        last = times[-1] if times else None
        cap = Text.assemble(("step ", "bold"), f"last {_secs(last)}  mean {_secs(model.mean('step'))}",
                            ("  ▁▃▅ step time", "dim"))
        self.query_one("#step-caption", Static).update(cap)
        self.query_one("#step-spark", Sparkline).data = times or [0.0]
