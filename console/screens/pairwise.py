"""Pairwise judgements: two responses to the same prompt side by side; prefer the left, the
right, or skip. A preference goes to labels.jsonl as a pair (``Run.prefer``).

Pairs come from the run's samples that answer one prompt (the ``rollout.n`` responses of a
group when the run records groups, or samples that share a prompt's text), the pairs the reward
is least sure about first; ``n`` asks the live actor for ``CANDIDATES`` fresh responses to one
prompt and offers the two a judgement teaches most (where the base reward and a learned
preference disagree, else the closest scores). The key acts on the pair on the screen when it
was pressed, whatever arrives meanwhile. A counter line shows how often the reward in place
agrees with the judgements held out for it and how many more the next refit needs.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Optional

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from console.messages import CounterLoaded, PairsLoaded, PairWritten
from console.model import fmt_num

RECENT = 4000   # samples considered for pairs (the newest)
CANDIDATES = 6  # fresh responses the actor writes for one pair (the two that teach most are shown)


class PairwiseScreen(Screen):
    HELP_TITLE = "pairwise"
    HELP_KIND = "pairwise"
    AUTO_FOCUS = None

    BINDINGS = [
        Binding("left,1", "prefer('left')", "prefer left", key_display="←/1", id="pairwise.left",
                tooltip="The left response is better (a pair in labels.jsonl)"),
        Binding("right,2", "prefer('right')", "prefer right", key_display="→/2", id="pairwise.right",
                tooltip="The right response is better (a pair in labels.jsonl)"),
        Binding("s,down,space", "skip", "skip", key_display="s", id="pairwise.skip",
                tooltip="No preference: show the next pair"),
        Binding("n", "fresh", "fresh pair", id="pairwise.fresh",
                tooltip="Ask the live actor for two new responses to one prompt"),
        Binding("escape,q", "close", "back", key_display="esc", id="pairwise.close",
                tooltip="Back to the dashboard"),
    ]

    def __init__(self, path: Path, alive: bool = False):
        super().__init__()
        self.path = Path(path)
        self.alive = alive
        self.queue: list[tuple[dict, dict]] = []
        self.current: Optional[tuple[dict, dict]] = None     # (left, right) on the screen
        self.done = 0
        self.answer = ""
        self.busy = ""
        self.counter: Optional[dict] = None

    def compose(self) -> ComposeResult:
        with Vertical(id="pair-top"):
            yield Static(id="pair-title")
            yield Static(id="pair-prompt")
        with Horizontal(id="pair-sides"):
            with VerticalScroll(id="pair-left", classes="pane"):
                yield Static(id="pair-left-text")
            with VerticalScroll(id="pair-right", classes="pane"):
                yield Static(id="pair-right-text")
        yield Static(id="pair-counter")
        yield Static(id="pair-status")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.sub_title = f"{self.path.name} · pairwise"
        self._show()
        self._load()
        self._count()

    # ---- workers --------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="pairs", exit_on_error=False)
    def _load(self) -> None:
        from engine.files import read_jsonl
        from engine.judgements import candidate_pairs, judged_pairs, reward_version_now, steps_versions

        try:
            samples = read_jsonl(self.path / "samples.jsonl")[-RECENT:]
            judged = judged_pairs(read_jsonl(self.path / "labels.jsonl"))
            self.post_message(PairsLoaded(candidate_pairs(samples, judged, limit=200, versions=steps_versions(self.path),
                                                          current=reward_version_now(self.path))))
        except Exception as e:  # noqa: BLE001 - shown, never a crash
            self.post_message(PairsLoaded([], f"{type(e).__name__}: {e}"))

    @work(thread=True, exclusive=True, group="fresh", exit_on_error=False)
    def _fresh(self) -> None:
        from engine.client import Run

        try:
            a, b = Run(self.path).sample_pair(candidates=CANDIDATES)
            self.post_message(PairsLoaded([(a, b)]))
        except Exception as e:  # noqa: BLE001
            self.post_message(PairsLoaded([], f"fresh pair: {e}"))

    @work(thread=True, exclusive=True, group="counter", exit_on_error=False)
    def _count(self) -> None:
        from engine.judgements import judge_counter

        try:
            self.post_message(CounterLoaded(judge_counter(self.path)))
        except Exception as e:  # noqa: BLE001
            self.post_message(CounterLoaded({}, f"{type(e).__name__}: {e}"))

    @work(thread=True, group="prefer", exit_on_error=False)
    def _write(self, chosen_id: str, rejected_id: str) -> None:
        from engine.client import Run

        try:
            self.post_message(PairWritten(Run(self.path).prefer(chosen_id, rejected_id)))
        except Exception as e:  # noqa: BLE001
            self.post_message(PairWritten({"chosen_id": chosen_id, "rejected_id": rejected_id}, str(e)))

    # ---- messages -------------------------------------------------------------------------
    def on_pairs_loaded(self, message: PairsLoaded) -> None:
        fresh = self.busy == "fresh"
        self.busy = ""
        if message.error:
            self.answer = f"✗ {message.error}"
        seen = {frozenset((str(a.get("id")), str(b.get("id")))) for a, b in self.queue}
        new = [p for p in message.pairs if frozenset((str(p[0].get("id")), str(p[1].get("id")))) not in seen]
        self.queue = (new + self.queue) if fresh else (self.queue + new)
        if self.current is None:
            self._next()
        elif fresh and new:
            self.answer = "a fresh pair is next (s: skip to it)"
        if self.current is None and not message.error and self.alive and not fresh:
            self.action_fresh()          # nothing to compare yet: ask the actor
        self._show()
        self.refresh_bindings()

    def on_pair_written(self, message: PairWritten) -> None:
        r = message.row
        if message.error:
            self.answer = f"✗ not written: {message.error}"
            self.notify(message.error, title="pair not written", severity="error")
        else:
            self.done += 1
            self.answer = f"✓ {r['chosen_id']} preferred over {r['rejected_id']} (labels.jsonl)"
            self._count()
        self._show()

    def on_counter_loaded(self, message: CounterLoaded) -> None:
        self.counter = message.counter if not message.error else {"error": message.error}
        self._show()

    # ---- keys -----------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> Optional[bool]:
        if action in ("prefer", "skip"):
            return True if self.current is not None else None
        if action == "fresh":
            return True if self.alive and not self.busy else None
        return True

    def action_prefer(self, side: str) -> None:
        if self.current is None:
            return
        left, right = self.current          # the pair on the screen when the key was pressed
        chosen, rejected = (left, right) if side == "left" else (right, left)
        self._write(str(chosen.get("id")), str(rejected.get("id")))
        self._next()
        self._show()

    def action_skip(self) -> None:
        if self.current is not None:
            self.answer = "skipped"
            self._next()
            self._show()

    def action_fresh(self) -> None:
        if not self.alive or self.busy:
            return
        self.busy = "fresh"
        self.answer = "asking the actor for a fresh pair (at the end of the current step)…"
        self._fresh()
        self._show()
        self.refresh_bindings()

    def action_close(self) -> None:
        self.workers.cancel_group(self, "pairs")
        self.dismiss(self.done)

    # ---- drawing --------------------------------------------------------------------------
    def _next(self) -> None:
        self.current = None
        if self.queue:
            a, b = self.queue.pop(0)
            # which response goes left is a coin toss fixed by the ids (no position habit)
            if zlib.crc32(f"{a.get('id')}|{b.get('id')}".encode()) % 2:
                a, b = b, a
            self.current = (a, b)
        self.refresh_bindings()

    def _side(self, s: dict, which: str) -> Text:
        t = Text()
        t.append(str(s.get("response", "")))
        return t

    def _show(self) -> None:
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append("Which response is better? ", style="bold")
        title.append(f"{len(self.queue) + (self.current is not None)} pair(s) to judge · {self.done} judged here",
                     style="dim")
        self.query_one("#pair-title", Static).update(title)
        left, right = self.query_one("#pair-left"), self.query_one("#pair-right")
        if self.current is None:
            msg = "loading pairs…" if not self.answer and self.busy != "fresh" else (
                "no two samples answer the same prompt" + (" — n: ask the actor for a fresh pair"
                                                          if self.alive else " (the run is not live)"))
            self.query_one("#pair-prompt", Static).update(Text(msg, style="dim"))
            self.query_one("#pair-left-text", Static).update("")
            self.query_one("#pair-right-text", Static).update("")
            left.border_title = right.border_title = ""
            left.border_subtitle = right.border_subtitle = ""
        else:
            a, b = self.current
            p = Text()
            p.append("prompt  ", style="bold cyan")
            p.append(str(a.get("prompt", "")))
            picked = a.get("picked") or b.get("picked")
            if isinstance(picked, dict) and picked.get("why"):
                p.append(f"\n        offered because {picked['why']} (of {picked.get('candidates')} "
                         f"responses; scores {fmt_num(picked.get('margin'))} apart)", style="dim")
            if b.get("prompt") != a.get("prompt"):
                p.append("\n(right) ", style="bold cyan")
                p.append(str(b.get("prompt", "")))
            self.query_one("#pair-prompt", Static).update(p)
            self.query_one("#pair-left-text", Static).update(self._side(a, "left"))
            self.query_one("#pair-right-text", Static).update(self._side(b, "right"))
            left.border_title = f"← left · sample {a.get('id')}"
            right.border_title = f"right → · sample {b.get('id')}"
            left.border_subtitle = f"score {fmt_num(a.get('score'))} · step {a.get('step')}"
            right.border_subtitle = f"score {fmt_num(b.get('score'))} · step {b.get('step')}"
        self.query_one("#pair-counter", Static).update(counter_text(self.counter))
        self.query_one("#pair-status", Static).update(Text(self.answer, no_wrap=True, overflow="ellipsis"))


def counter_text(c: Optional[dict]) -> Text:
    """The counter line: the reward in place against the judgements held out for it, the last
    refit's held-out agreement, and what the next refit needs."""
    t = Text(no_wrap=True, overflow="ellipsis")
    if not c:
        return t
    if c.get("error"):
        t.append(f"counter: {c['error']}", style="dim")
        return t
    v = c.get("reward_version", 0)
    if c.get("held_out"):
        t.append(f"reward v{v} agrees with {c['agree']} of {c['held_out']} judgement(s) held out for it "
                 f"({c['agreement']:.2f})", style="bold")
    else:
        t.append(f"reward v{v}: no judgement held out for it yet", style="bold")
    last = c.get("last_refit")
    if last and last.get("judgement_accuracy") is not None:
        t.append(f" · refit {last['attempt']} ({last.get('state')}): held-out "
                 f"{fmt_num(last.get('current_accuracy'))} → {fmt_num(last['judgement_accuracy'])} on "
                 f"{last.get('held_out')}", style="dim")
    more = c.get("needs_more")
    if more is not None:
        lead = "≥" if "at least" in str(c.get("needs_how", "")) else "~"
        t.append(f" · next refit: {lead}{more} more judgement(s)" if more else " · next refit: enough judgements",
                 style="bold cyan")
    return t
