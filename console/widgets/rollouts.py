"""Rollouts pane: the newest samples (step, score, KL, label, response, prompt) in a DataTable.

The table follows new steps while its cursor is on the last row; once the user moves away it
stays put (End follows again). Jumps and search move the cursor, which stops following. The text
columns share whatever width the pane has (the response gets the larger part).
"""
from __future__ import annotations

from typing import Optional

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from console.model import fmt_num

LABEL_MARK = {"good": Text("✓ good", style="bold green"), "bad": Text("✗ bad", style="bold red")}
LABEL_CELL = {"good": Text("✓", style="bold green"), "bad": Text("✗", style="bold red")}
FIXED = (("step", "step", 5), ("score", "score", 6), ("kl", "kl", 7), ("✓✗", "label", 2))


def _one_line(s: str, n: int) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: max(0, n - 1)] + "…"


class RolloutsTable(DataTable):
    BINDINGS = [Binding("enter", "select_cursor", "open", id="rollouts.open",
                        tooltip="Show the selected sample in full")]
    MAX_ROWS = 1000

    def __init__(self, **kw):
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self.samples: dict[str, dict] = {}     # row key -> sample (only rows in the table)
        self.labels: dict[str, str] = {}
        self.follow = True
        self._widths = (40, 24)
        self._add_columns()

    def _add_columns(self) -> None:
        for label, key, width in FIXED:
            self.add_column(label, key=key, width=width)
        self.add_column("response", key="response", width=self._widths[0])
        if self._widths[1]:
            self.add_column("prompt", key="prompt", width=self._widths[1])

    def _text_widths(self, width: int) -> tuple[int, int]:
        rest = width - sum(w for _, _, w in FIXED) - 2 * self.cell_padding * (len(FIXED) + 2) - 2
        rest = max(24, rest)
        if rest < 56:  # not enough room for both: the response only (Enter shows the prompt)
            return rest + 2 * self.cell_padding, 0
        resp = int(rest * 0.62)
        return resp, rest - resp

    def on_resize(self) -> None:
        widths = self._text_widths(self.size.width)
        if widths == self._widths:
            return
        self._widths = widths
        keep = self.cursor_row
        self.clear(columns=True)
        self._add_columns()
        for s in self.samples.values():
            self._add(s)
        if self.row_count:
            self.move_cursor(row=min(keep, self.row_count - 1), animate=False)

    # ---- data -----------------------------------------------------------------------------------
    @staticmethod
    def key_of(s: dict) -> str:
        return str(s.get("id") or f"{s.get('step')}-{s.get('index')}")

    def _add(self, s: dict) -> None:
        key = self.key_of(s)
        resp_w, prompt_w = self._widths
        cells = [f"{s.get('step', '')}·{s.get('index', '')}", fmt_num(s.get("score")), fmt_num(s.get("kl"), 4),
                 LABEL_CELL.get(self.labels.get(key, ""), ""), _one_line(s.get("response", ""), resp_w)]
        if prompt_w:
            cells.append(Text(_one_line(s.get("prompt", ""), prompt_w), style="dim"))
        self.add_row(*cells, key=key)

    def add_samples(self, samples: list[dict], labels: dict[str, str]) -> None:
        self.labels = labels
        if not samples:
            return
        following = self.follow and (self.row_count == 0 or self.cursor_row >= self.row_count - 1)
        for s in samples:
            key = self.key_of(s)
            if key in self.samples:
                continue
            self.samples[key] = s
            self._add(s)
        while self.row_count > self.MAX_ROWS:
            first = self.ordered_rows[0].key
            self.remove_row(first)
            self.samples.pop(str(first.value), None)
        if following:
            self.move_cursor(row=self.row_count - 1, animate=False)
        self.follow = following

    def set_label(self, sample_id: str, verdict: str) -> None:
        self.labels[sample_id] = verdict
        if sample_id in self.samples:
            self.update_cell(sample_id, "label", LABEL_CELL.get(verdict, verdict))

    # ---- cursor -----------------------------------------------------------------------------------
    def current(self) -> Optional[dict]:
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key((self.cursor_row, 0)).row_key
        except Exception:  # noqa: BLE001
            return None
        return self.samples.get(str(key.value))

    def goto(self, key: str) -> None:
        self.move_cursor(row=self.get_row_index(key), animate=False)
        self.follow = self.cursor_row >= self.row_count - 1

    def extreme(self, highest: bool) -> Optional[str]:
        best = None
        for k, s in self.samples.items():
            v = s.get("score")
            if not isinstance(v, (int, float)):
                continue
            if best is None or (v > best[1] if highest else v < best[1]):
                best = (k, v)
        return best[0] if best else None

    def find(self, text: str) -> Optional[str]:
        """The next row after the cursor whose prompt or response contains ``text`` (wrapping)."""
        text = text.lower()
        keys = [str(r.key.value) for r in self.ordered_rows]
        if not keys:
            return None
        start = self.cursor_row + 1
        for i in range(len(keys)):
            k = keys[(start + i) % len(keys)]
            s = self.samples.get(k) or {}
            if text in str(s.get("prompt", "")).lower() or text in str(s.get("response", "")).lower():
                return k
        return None

    def watch_cursor_coordinate(self, old, new) -> None:  # user moved: stop following unless at the end
        super().watch_cursor_coordinate(old, new)
        self.follow = self.row_count == 0 or new.row >= self.row_count - 1
