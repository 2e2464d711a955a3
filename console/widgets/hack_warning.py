"""The reward-hacking warning above the rollouts: which monitors are tripped at the newest step
(value against the threshold; a tripped monitor stays on until it is under its clear threshold),
or, once every one has cleared, that they cleared and when they were on; and how many samples
they flagged, one key (``!``) from the "suspicious" filter. Hidden while no monitor has tripped
in the run."""
from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.widgets import Static

from console.model import RunModel


def alert_text(a: dict) -> str:
    """``repetition 0.412 > 0.3`` while over the threshold; ``repetition 0.250 (tripped > 0.3,
    clears < 0.225)`` while tripped but between the clear threshold and the threshold."""
    v, th, clear = a.get("value"), a.get("threshold"), a.get("clear")
    if not isinstance(v, (int, float)) or not isinstance(th, (int, float)):
        return str(a.get("monitor"))
    length = a.get("monitor") == "length_drift"
    cmp = f"|{v:+.3f}|" if length else f"{v:.3f}"
    if (abs(v) if length else v) > th or not isinstance(clear, (int, float)):
        return f"{a.get('monitor')} {cmp} > {th:g}"
    return f"{a.get('monitor')} {cmp} (tripped > {th:g}, clears < {clear:g})"


def warning_text(model: RunModel, filtered: bool = False) -> Optional[Text]:
    """The warning's text; None while no monitor has tripped in the run."""
    seen = model.alerts_seen
    if not seen:
        return None
    t = Text(no_wrap=False)
    if model.alerts_now:
        t.append("⚠ reward hacking? ", style="bold yellow")
        t.append(" · ".join(alert_text(a) for a in model.alerts_now), style="yellow")
        t.append(f" at step {model.alerts_step}")
    else:   # every monitor back under its clear threshold: say so, and when they were on
        t.append("reward hacking? ", style="bold")
        t.append(f"cleared (no monitor tripped at step {model.alerts_step}); earlier: ", style="dim")
        t.append(", ".join(f"{name} (steps {s['first']}–{s['last']}, {s['steps']}×)"
                           for name, s in seen.items()), style="yellow")
    n = len(model.samples.flags)
    if filtered:
        t.append(f" — showing the {n} suspicious sample(s); ! shows all", style="bold")
    else:
        t.append(f" — {n} suspicious sample(s): press ! to show them", style="bold")
    return t


class HackWarning(Static):
    def show(self, model: RunModel, filtered: bool = False) -> None:
        t = warning_text(model, filtered)
        self.display = t is not None
        if t is not None:
            self.update(t)
