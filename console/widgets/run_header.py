"""The dashboard's top lines: run name, state, step k/N, elapsed, ETA, steps per minute, what
the step in progress is doing, and what is pending or wrong."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from console.model import RunModel, fmt_duration

STATE_STYLE = {
    "starting": "bold cyan", "running": "bold green", "paused": "bold yellow", "stopping": "bold yellow",
    "finished": "bold blue", "stopped": "bold magenta", "failed": "bold red", "dead": "bold red",
}


def state_text(state: str) -> Text:
    return Text(f"● {state}", style=STATE_STYLE.get(state, "bold"))


def progress_bar(k: int, n: int | None, width: int = 12) -> str:
    if not n:
        return ""
    filled = max(0, min(width, round(width * k / n)))
    return "█" * filled + "░" * (width - filled)


_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def precision_summary(precision: dict | None) -> str:
    """One phrase for what the run's roles compute in (run.json's ``precision``): ``bf16`` or
    ``fp32`` when every pass agrees, else each role's passes; ``(measured)`` for auto."""
    if not precision:
        return ""
    per_role = {}
    for role, p in precision.items():
        ac = p.get("autocast") or {}
        per_role[role] = {ph: _SHORT.get(v, _SHORT.get(p.get("dtype"), p.get("dtype"))) if v != "none"
                          else _SHORT.get(p.get("dtype"), p.get("dtype")) for ph, v in ac.items()}
    kinds = {v for phases in per_role.values() for v in phases.values()}
    auto = any(p.get("requested") == "auto" for p in precision.values())
    tag = " (measured)" if auto else ""
    if len(kinds) == 1:
        return f"precision {kinds.pop()}{tag}"
    parts = [f"{r} " + "/".join(f"{ph[:3]} {v}" for ph, v in phases.items()) for r, phases in per_role.items() if phases]
    return "precision " + ", ".join(parts) + tag


class RunHeader(Static):
    """Two lines; redrawn by the dashboard on each update and on a 1 s clock."""

    def show(self, model: RunModel, pending: dict[str, str], answer: str = "", narrow: bool = False) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(model.name, style="bold")
        t.append("  ")
        t.append_text(state_text(model.state))
        n = model.steps
        stage = model.stage()
        if stage is not None:      # starting: what it is doing, and how far
            t.append(f"  {stage.label}")
            if stage.total:
                t.append(f" {stage.done}/{stage.total} ")
                t.append(progress_bar(stage.done or 0, stage.total), style="cyan")
            if stage.left_s is not None:
                t.append(f"  ~{fmt_duration(stage.left_s)} left")
            t.append(f"  elapsed {fmt_duration(model.elapsed())}")
            t.truncate(max(10, self.size.width - 2) if self.size.width else 200, overflow="ellipsis")
            line2 = Text(no_wrap=True, overflow="ellipsis")
            last = model.events[-1] if model.events else ""
            line2.append(last[11:] if len(last) > 20 and last[4] == "-" else last, style="dim")
            line2.truncate(max(10, self.size.width - 2) if self.size.width else 200, overflow="ellipsis")
            t.append("\n")
            t.append_text(line2)
            self.update(t)
            return
        t.append(f"  step {model.step}/{n if n is not None else '?'} ")
        if self.size.width >= 100:
            t.append(progress_bar(model.step, n), style="green")
        t.append(f"  elapsed {fmt_duration(model.elapsed())}" if self.size.width >= 90 else f"  {fmt_duration(model.elapsed())}")
        eta = model.eta()
        if model.state == "finished":
            t.append("  ETA done")
        else:
            t.append(f"  ETA {fmt_duration(eta)}")
        spm = model.steps_per_minute()
        t.append(f"  {spm:.1f} steps/min" if spm else "  – steps/min")
        line2 = Text(no_wrap=True, overflow="ellipsis")
        inside = model.step_stage()
        if inside is not None:     # inside a step: what it is doing now, and for how long
            k, what, secs = inside
            line2.append(f"step {k}: {what}", style="cyan")
            if secs is not None:
                line2.append(f" {fmt_duration(secs)}", style="dim")
            line2.append("  ")
        if pending:
            line2.append("⧗ ", style="bold yellow")
            line2.append(" · ".join(pending.values()), style="yellow")
        elif model.state in ("failed", "dead"):
            line2.append(f"{model.state}: ", style="bold red")
            line2.append(model.failure or "no reason recorded", style="red")
        elif answer:
            line2.append(answer, style="bold red" if answer.startswith("✗") else "green" if answer.startswith("✓") else "")
        elif model.state in ("finished", "stopped"):
            msg = "read-only: the run is " + model.state
            if model.failure:
                msg += f" ({model.failure})"
            line2.append(msg, style="dim")
        elif model.state == "paused":
            line2.append("paused — p resumes", style="yellow")
            if narrow:
                line2.append(" · tab: next pane", style="dim")
        else:
            src = model.info.reward_source
            line2.append(f"reward {src}" if src else "", style="dim")
            prec = precision_summary(model.info.precision)
            if prec:
                line2.append(f"{' · ' if src else ''}{prec}", style="dim")
            if narrow:
                line2.append(" · tab: next pane", style="dim")
        width = max(10, self.size.width - 2) if self.size.width else 200
        t.truncate(width, overflow="ellipsis")
        line2.truncate(width, overflow="ellipsis")
        t.append("\n")
        t.append_text(line2)
        self.update(t)

    def on_resize(self) -> None:
        screen = self.screen
        if hasattr(screen, "_show_header"):
            screen._show_header()
