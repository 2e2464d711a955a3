"""The full sample: prompt, response, score, KL, return, length; g/b label it from here too.

A sample written with its ``tokens`` (engine.records.TokenTrace) shows its response token by
token (console.widgets.tokens): ``l`` cycles the layer that colours them (log-prob under the actor,
under the reference, KL, advantage), ``←``/``→`` move over them and the line above the text gives
the selected token's values. An older sample, or one whose ``tokens`` do not read, shows the plain
response (and, for the latter, why)."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from console.model import fmt_num
from console.widgets.rollouts import LABEL_MARK
from console.widgets.tokens import TokenView
from engine.records import TokenTrace

PAIR_MARK = {"preferred": Text("▲ preferred", style="bold green"), "rejected": Text("▼ rejected", style="bold red")}


class SampleScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,enter", "close", "close", id="sample.close", tooltip="Back to the dashboard"),
        Binding("g", "label('good')", "good", id="sample.good", tooltip="Mark this sample good (labels.jsonl)"),
        Binding("b", "label('bad')", "bad", id="sample.bad", tooltip="Mark this sample bad (labels.jsonl)"),
        Binding("l", "layer", "layer", id="sample.layer",
                tooltip="Colour the tokens by the next layer: log-prob (actor), log-prob (reference), KL, advantage"),
    ]
    HELP_TITLE = "sample"
    HELP_KIND = "sample"

    def __init__(self, sample: dict, label: str = "", search: str = "", pair: str = ""):
        super().__init__()
        self.sample = sample
        self.label = label
        self.pair = pair
        self.search = search
        self.trace, self.trace_error = None, ""
        if sample.get("tokens") is not None:
            try:
                self.trace = TokenTrace.from_dict(sample["tokens"])
            except ValueError as e:
                self.trace_error = str(e)

    def _text(self, key: str) -> Text:
        t = Text(str(self.sample.get(key, "")))
        if self.search:
            t.highlight_words([self.search], style="bold reverse", case_sensitive=False)
        return t

    def compose(self) -> ComposeResult:
        with Vertical(id="sample-dialog", classes="dialog"):
            yield Static(id="sample-meta")
            if self.trace is not None:
                yield Static(id="sample-token-legend")
                yield Static(id="sample-token-cursor")
            with VerticalScroll(id="sample-body"):
                yield Static(Text("prompt", style="bold cyan"))
                yield Static(self._text("prompt"), id="sample-prompt")
                if self.trace is not None:
                    yield Static(Text(f"response, {len(self.trace)} tokens", style="bold cyan"))
                    yield TokenView(self.trace, search=self.search, id="sample-tokens")
                else:
                    yield Static(Text("response", style="bold cyan"))
                    yield Static(self._text("response"), id="sample-response")
                    if self.trace_error:
                        yield Static(Text(f"per-token data unreadable: {self.trace_error}", style="yellow"),
                                     id="sample-token-error")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self._show_meta()
        if self.trace is not None:
            self.query_one(TokenView).focus()
        else:
            self.query_one("#sample-body").focus()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "layer" and self.trace is None:
            return False  # no per-token data (an older samples.jsonl): no layers to cycle
        return True

    def action_layer(self) -> None:
        if self.trace is not None:
            self.query_one(TokenView).cycle_layer()

    def on_token_view_changed(self, event: TokenView.Changed) -> None:
        view = self.query_one(TokenView)
        self.query_one("#sample-token-legend", Static).update(view.legend())
        self.query_one("#sample-token-cursor", Static).update(view.cursor_line())

    def _show_meta(self) -> None:
        s = self.sample
        t = Table.grid(padding=(0, 2))
        for _ in range(4):
            t.add_column()
        t.add_row(Text("sample", style="bold"), str(s.get("id", "")), Text("step", style="bold"), str(s.get("step", "")))
        t.add_row(Text("score", style="bold"), fmt_num(s.get("score"), 4), Text("kl", style="bold"), fmt_num(s.get("kl"), 4))
        t.add_row(Text("return", style="bold"), fmt_num(s.get("return"), 4), Text("length", style="bold"),
                  f"{s.get('length', '–')}" + (" (eos)" if s.get("eos") else " (no eos)"))
        if "group" in s or "advantage" in s:  # rollout.n > 1: the response's group and advantage
            t.add_row(Text("group", style="bold"), str(s.get("group", "–")), Text("advantage", style="bold"),
                      fmt_num(s.get("advantage"), 4))
        if "answer" in s:  # a verifiable task: the reference answer and whether it was hit
            t.add_row(Text("answer", style="bold"), str(s.get("answer")), Text("correct", style="bold"),
                      {True: Text("yes", style="green"), False: Text("no", style="red")}.get(s.get("correct"), Text("–")))
        t.add_row(Text("label", style="bold"), LABEL_MARK.get(self.label, Text("–")),
                  Text("in a pair", style="bold"), PAIR_MARK.get(self.pair, Text("–")))
        if "repetition" in s or "audit" in s:  # the reward-hacking monitors' view of it
            t.add_row(Text("repetition", style="bold"), fmt_num(s.get("repetition"), 3),
                      Text("audit", style="bold"), fmt_num(s.get("audit"), 4))
        flags = list(s.get("flags") or []) + [f"{a} (step)" for a in s.get("step_alerts") or []]
        if flags:
            t.add_row(Text("⚠ flags", style="bold yellow"), Text(", ".join(flags), style="yellow"), "", "")
        self.query_one("#sample-meta", Static).update(t)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_label(self, verdict: str) -> None:
        self.label = verdict
        self._show_meta()
        dash = self.app.screen_stack[-2] if len(self.app.screen_stack) > 1 else None
        if dash is not None and hasattr(dash, "write_label"):
            dash.write_label(self.sample, verdict)
