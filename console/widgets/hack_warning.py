"""The reward-hacking warning above the rollouts: which monitors tripped (value > threshold, at
which step), and how many samples they flagged, one key (``!``) from the "suspicious" filter.
Hidden while no monitor has tripped in the run."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from console.model import RunModel


def alert_text(a: dict) -> str:
    v, th = a.get("value"), a.get("threshold")
    if not isinstance(v, (int, float)) or not isinstance(th, (int, float)):
        return str(a.get("monitor"))
    cmp = f"|{v:+.3f}|" if a.get("monitor") == "length_drift" else f"{v:.3f}"
    return f"{a.get('monitor')} {cmp} > {th:g}"


class HackWarning(Static):
    def show(self, model: RunModel, filtered: bool = False) -> None:
        seen = model.alerts_seen
        self.display = bool(seen)
        if not seen:
            return
        t = Text(no_wrap=False)
        t.append("⚠ reward hacking? ", style="bold yellow")
        if model.alerts_now:
            t.append(" · ".join(alert_text(a) for a in model.alerts_now), style="yellow")
            t.append(f" at step {model.alerts_step}")
        else:
            t.append("earlier: ", style="dim")
            t.append(", ".join(f"{name} (steps {s['first']}–{s['last']}, {s['steps']}×)"
                               for name, s in seen.items()), style="yellow")
        n = len(model.samples.flags)
        if filtered:
            t.append(f" — showing the {n} suspicious sample(s); ! shows all", style="bold")
        else:
            t.append(f" — {n} suspicious sample(s): press ! to show them", style="bold")
        self.update(t)
