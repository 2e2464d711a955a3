"""A response token by token: each token's background coloured by one layer of its
``samples.jsonl`` ``tokens`` record (engine.records.TokenTrace) — its log-prob under the actor,
under the reference, its KL term, its advantage — with a cursor over the tokens.

``←``/``→`` (``home``/``end``) move the cursor; the screen that holds
the view cycles the layer (``cycle_layer``) and shows :meth:`TokenView.cursor_line` and
:meth:`TokenView.legend`, which it refreshes on :class:`TokenView.Changed`.

Colour scales: log-probs on a fixed scale (red at ``LOGPROB_FLOOR`` nats or below, yellow half way,
green at 0), so the actor's and the reference's layers compare token for token; KL and advantage
diverge from grey, scaled to the largest magnitude in this response (KL: red where the actor
likes the token more than the reference, blue where less; advantage: green positive, red
negative).
"""
from __future__ import annotations

import math
from typing import Optional

from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Static

from engine.records import TokenTrace

LAYERS = (
    ("logprob", "log-prob under the actor"),
    ("ref_logprob", "log-prob under the reference"),
    ("kl", "KL to the reference"),
    ("advantage", "advantage"),
)
LOGPROB_FLOOR = -8.0            # nats: this unlikely or less is full red
NEUTRAL = (60, 60, 66)
RED, YELLOW, GREEN, BLUE = (200, 50, 50), (190, 160, 40), (40, 150, 70), (50, 100, 210)


def _mix(a: tuple, b: tuple, t: float) -> tuple:
    t = min(1.0, max(0.0, t))
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _style(rgb: tuple) -> Style:
    r, g, b = rgb
    light = 0.299 * r + 0.587 * g + 0.114 * b > 150
    return Style(bgcolor=Color.from_rgb(r, g, b), color="black" if light else "white")


def layer_colour(layer: str, value: float, scale: float) -> tuple:
    """The background of a token with ``value`` in ``layer``; ``scale``: the largest magnitude
    of that layer in the response (diverging layers)."""
    if layer in ("logprob", "ref_logprob"):
        t = 1.0 - min(1.0, max(0.0, value / LOGPROB_FLOOR))      # 0 at the floor, 1 at log-prob 0
        return _mix(RED, YELLOW, t * 2) if t < 0.5 else _mix(YELLOW, GREEN, t * 2 - 1)
    t = abs(value) / scale if scale > 0 else 0.0
    if layer == "kl":
        return _mix(NEUTRAL, RED if value > 0 else BLUE, t)
    return _mix(NEUTRAL, GREEN if value > 0 else RED, t)


def show_piece(piece: str) -> str:
    """A token as it reads on screen: newlines and tabs made visible, an empty piece a dot."""
    if not piece:
        return "∅"
    return piece.replace("\t", "⇥").replace("\r", "").replace("\n", "↵\n")


def fmt(x: float) -> str:
    return f"{x:+.4f}" if abs(x) >= 1e-3 or x == 0 else f"{x:+.2e}"


class TokenView(Static, can_focus=True):
    BINDINGS = [
        Binding("left", "move(-1)", "token ←", show=False, id="tokens.left", tooltip="The previous token"),
        Binding("right", "move(1)", "token →", show=False, id="tokens.right", tooltip="The next token"),
        Binding("home", "move_to(0)", "first token", show=False, id="tokens.first", tooltip="The first token"),
        Binding("end", "move_to(-1)", "last token", show=False, id="tokens.last", tooltip="The last token"),
    ]
    DEFAULT_CSS = """
    TokenView { height: auto; padding: 0 1; }
    """

    layer_index = reactive(0)
    cursor = reactive(0)

    class Changed(Message):
        """The layer or the cursor moved (the screen redraws the legend and the values line)."""

    def __init__(self, trace: TokenTrace, search: str = "", **kw):
        super().__init__(**kw)
        self.trace = trace
        self.search = search

    @property
    def layer_name(self) -> str:
        return LAYERS[self.layer_index][0]

    def cycle_layer(self) -> str:
        self.layer_index = (self.layer_index + 1) % len(LAYERS)
        return self.layer_name

    def value(self, layer: Optional[str] = None, i: Optional[int] = None) -> float:
        return self.trace.value(layer or self.layer_name, self.cursor if i is None else i)

    def on_mount(self) -> None:
        self._redraw()

    def watch_layer_index(self) -> None:
        self._redraw()

    def watch_cursor(self) -> None:
        self._redraw()

    def validate_cursor(self, i: int) -> int:
        return max(0, min(int(i), max(0, len(self.trace) - 1)))

    def action_move(self, d: int) -> None:
        self.cursor += int(d)

    def action_move_to(self, i: int) -> None:
        self.cursor = len(self.trace) - 1 if int(i) < 0 else int(i)

    def _redraw(self) -> None:
        self.update(self.render_tokens())
        self.post_message(self.Changed())

    def render_tokens(self) -> Text:
        name = self.layer_name
        values = getattr(self.trace, name)
        scale = max((abs(v) for v in values), default=0.0)
        out = Text()
        for i, piece in enumerate(self.trace.piece):
            st = _style(layer_colour(name, values[i], scale))
            if i == self.cursor:
                st += Style(reverse=True, bold=True, underline=True)
            out.append(show_piece(piece), style=st)
        if self.search:
            out.highlight_words([self.search], style="bold underline", case_sensitive=False)
        return out

    def legend(self) -> Text:
        name, what = LAYERS[self.layer_index]
        t = Text.assemble(("tokens by ", "bold"), (what, "bold cyan"))
        if name == "kl":
            t.append(f" ({self.trace.kl_estimator})", style="bold cyan")
        t.append(" (l: next)   ", style="dim")
        if name in ("logprob", "ref_logprob"):
            for v, label in ((LOGPROB_FLOOR, f"≤ {LOGPROB_FLOOR:g}"), (LOGPROB_FLOOR / 2, f"{LOGPROB_FLOOR / 2:g}"), (0.0, "0")):
                t.append(f" {label} ", style=_style(layer_colour(name, v, 1.0)))
            t.append(" nats")
        else:
            values = getattr(self.trace, name)
            scale = max((abs(v) for v in values), default=0.0)
            neg, pos = ("actor < ref", "actor > ref") if name == "kl" else ("negative", "positive")
            t.append(f" {neg} {fmt(-scale)} ", style=_style(layer_colour(name, -scale, scale)))
            t.append(" 0 ", style=_style(layer_colour(name, 0.0, scale)))
            t.append(f" {pos} {fmt(scale)} ", style=_style(layer_colour(name, scale, scale)))
        return t

    def cursor_line(self) -> Text:
        n = len(self.trace)
        if not n:
            return Text("no response tokens", style="dim")
        i, tr, cur = self.cursor, self.trace, self.layer_name
        lp, ref = tr.logprob[i], tr.ref_logprob[i]
        t = Text.assemble((f"token {i + 1}/{n} ", "bold"), (repr(tr.piece[i]), "bold"))
        parts = (("logprob", "log-prob", f"{lp:.4f} (p {math.exp(lp):.3g})"),
                 ("ref_logprob", "ref", f"{ref:.4f}"),
                 ("kl", f"KL {tr.kl_estimator}", fmt(tr.kl[i])),
                 ("advantage", "adv", fmt(tr.advantage[i])))
        for key, label, val in parts:
            t.append(" │ ", style="dim")
            t.append(f"{label} {val}", style="bold reverse" if key == cur else "")
        return t
