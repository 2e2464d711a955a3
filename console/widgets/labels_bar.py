"""The judgements line of the rollouts pane: good, bad, pairs, those since the last refit, and
the reward version in use (with what the last refit decided)."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from console.model import RunModel


class LabelsBar(Static):
    def show(self, model: RunModel) -> None:
        c = model.judgement_counts()
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"reward v{model.reward_version}", style="bold")
        t.append(" · ")
        t.append(f"✓ {c['good']} good", style="green")
        t.append(" · ")
        t.append(f"✗ {c['bad']} bad", style="red")
        t.append(f" · ⇄ {c['pairs']} pairs · {c['since_refit']} since the last refit")
        refit = c["refit"]
        if refit.get("state"):
            state = refit["state"]
            style = {"running": "yellow", "accepted": "green", "refused": "red"}.get(state, "")
            t.append(f" · refit {refit.get('attempt')} {state}", style=style)
        t.append("  (a: pairs · R: refit)", style="dim")
        self.update(t)
