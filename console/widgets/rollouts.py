"""Rollouts pane: every sample of the run (step, score, KL, label, response, prompt) in a virtual
table over the model's ``SampleIndex`` — only the rows on screen are read and drawn.

Rows are keyed by sample id (the index's ordinal), never by row position: the selection is a
sample, so whatever streams in, sorts or filters, the cursor, ``g``/``b`` and Enter act on the
sample the user picked. In file order the table follows new steps while the cursor is on the last
row; once the user moves away it stays on that sample (End follows again). ``s`` cycles the sort
(newest last, score ↓, score ↑, |KL| ↓, labelled first), ``f`` the filter (all, good, bad,
unlabelled, search matches, suspicious); search matches are highlighted in the text columns.
A sample a reward-hacking monitor flagged (or one of a step where a monitor tripped) carries a
``⚠`` in the label column; the "suspicious" filter shows only those (``!`` on the dashboard).
"""
from __future__ import annotations

import bisect
from typing import Callable, Optional

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console.history import SampleIndex, text_matches
from console.model import fmt_num

LABEL_MARK = {"good": Text("✓ good", style="bold green"), "bad": Text("✗ bad", style="bold red")}
LABEL_CELL = {"good": ("✓", "bold green"), "bad": ("✗", "bold red")}
FIXED = (("step", 7), ("score", 6), ("kl", 7), ("✓✗", 2))
PAD = 1

SORTS = ("newest last", "score ↓", "score ↑", "|KL| ↓", "labelled first")
FILTERS = ("all", "good", "bad", "unlabelled", "matches", "suspicious")
SUSPICIOUS = FILTERS.index("suspicious")


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


class RolloutsTable(ScrollView, can_focus=True):
    COMPONENT_CLASSES = {"rollouts--header", "rollouts--cursor", "rollouts--even", "rollouts--match"}
    DEFAULT_CSS = """
    RolloutsTable {
        background: $surface;
        color: $foreground;
        & > .rollouts--header { text-style: bold; background: $panel; color: $foreground; }
        & > .rollouts--even { background: $surface-lighten-1 50%; }
        & > .rollouts--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
        }
        &:focus > .rollouts--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: bold;
        }
        & > .rollouts--match { background: $warning 50%; color: $foreground; text-style: bold; }
    }
    """
    BINDINGS = [
        Binding("up", "cursor(-1)", "up", show=False, id="rollouts.up", tooltip="Previous sample"),
        Binding("down", "cursor(1)", "down", show=False, id="rollouts.down", tooltip="Next sample"),
        Binding("pageup", "page(-1)", "page up", show=False, id="rollouts.pageup", tooltip="A page of samples up"),
        Binding("pagedown", "page(1)", "page down", show=False, id="rollouts.pagedown",
                tooltip="A page of samples down"),
        Binding("home,ctrl+home", "first", "first", show=False, id="rollouts.first", tooltip="The first sample of the view"),
        Binding("end,ctrl+end", "last", "last", show=False, id="rollouts.last",
                tooltip="The last sample of the view (in file order: follow the newest again)"),
    ]

    class Opened(Message):
        """A row was clicked while already selected (the dashboard opens the sample)."""

    def __init__(self, index: Optional[SampleIndex] = None, labels: Optional[dict] = None, **kw):
        super().__init__(**kw)
        self.index = index if index is not None else SampleIndex()
        self.labels: dict[str, str] = labels if labels is not None else {}
        self.follow = True
        self.sort = 0
        self.filter = 0
        self.search = ""
        self.matches: set[int] = set()
        self.selected: Optional[int] = None        # the ordinal of the selected sample
        self.view: Optional[list[int]] = None      # None: every sample in file order
        self._sort_key: Optional[Callable] = None

    def bind(self, index: SampleIndex, labels: dict) -> None:
        self.index, self.labels = index, labels
        self.selected, self.view, self.follow = None, None, True
        self.rebuild()

    # ---- the view -------------------------------------------------------------------------------
    @property
    def row_count(self) -> int:
        return len(self.index) if self.view is None else len(self.view)

    def ordinal_at(self, row: int) -> int:
        return row if self.view is None else self.view[row]

    def row_of(self, n: Optional[int]) -> Optional[int]:
        if n is None:
            return None
        if self.view is None:
            return n if 0 <= n < len(self.index) else None
        i = self._bisect(n)
        if i is not None:
            return i
        try:
            return self.view.index(n)
        except ValueError:
            return None

    def _bisect(self, n: int) -> Optional[int]:
        if self._sort_key is None:
            i = bisect.bisect_left(self.view, n)
        else:
            key = self._sort_key
            i = bisect.bisect_left(self.view, key(n), key=key)
        return i if i < len(self.view) and self.view[i] == n else None

    @property
    def cursor_row(self) -> int:
        r = self.row_of(self.selected)
        return 0 if r is None else r

    def _keep(self) -> Optional[Callable[[int], bool]]:
        f = FILTERS[self.filter]
        if f == "all":
            return None
        ids, labels = self.index.ids, self.labels
        if f == "good":
            return lambda n: labels.get(ids[n]) == "good"
        if f == "bad":
            return lambda n: labels.get(ids[n]) == "bad"
        if f == "unlabelled":
            return lambda n: ids[n] not in labels
        if f == "suspicious":
            flags = self.index.flags
            return lambda n: n in flags
        matches = self.matches
        return lambda n: n in matches

    def _key(self) -> Optional[Callable]:
        idx, labels = self.index, self.labels
        sort = SORTS[self.sort]
        if sort == "score ↓":
            return lambda n: (idx.scores[n] is None, -(idx.scores[n] or 0.0), n)
        if sort == "score ↑":
            return lambda n: (idx.scores[n] is None, idx.scores[n] or 0.0, n)
        if sort == "|KL| ↓":
            return lambda n: (idx.kls[n] is None, -abs(idx.kls[n] or 0.0), n)
        if sort == "labelled first":
            return lambda n: (idx.ids[n] not in labels, n)
        return None

    def rebuild(self) -> None:
        """Recompute the view for the current sort and filter, keeping the selected sample."""
        keep, key = self._keep(), self._key()
        self._sort_key = key
        if keep is None and key is None:
            self.view = None
        else:
            rows = range(len(self.index)) if keep is None else [n for n in range(len(self.index)) if keep(n)]
            self.view = sorted(rows, key=key) if key is not None else list(rows)
        if self.row_count and self.row_of(self.selected) is None:
            self.selected = self.ordinal_at(0 if self.view is not None else self.row_count - 1)
        if self.view is not None:
            self.follow = False
        self._resize_virtual()
        self.scroll_to_cursor(center=True)
        self.refresh()

    def add(self, ordinals: list[int]) -> None:
        """New samples were appended to the index (file order); place them in the view."""
        if not ordinals:
            return
        old_row = self.row_of(self.selected)
        offset = None if old_row is None else old_row - int(self.scroll_offset.y)
        if self.search:
            needle = self.search.lower()
            for n in ordinals:
                if text_matches(self.index.get(n), needle):
                    self.matches.add(n)
        if self.view is not None:
            keep, key = self._keep(), self._sort_key
            for n in ordinals:
                if keep is None or keep(n):
                    if key is None:
                        self.view.append(n)
                    else:
                        bisect.insort(self.view, n, key=key)
        if self.selected is None or (self.follow and self.view is None):
            self.selected = self.ordinal_at(self.row_count - 1) if self.row_count else None
            self._resize_virtual()
            self.scroll_to_cursor()
            self.call_after_refresh(self.scroll_to_cursor)
        else:
            self._resize_virtual()
            new_row = self.row_of(self.selected)
            if offset is not None and new_row is not None and new_row != old_row:
                # the selected sample moved in a sorted view: keep it where it was on screen
                self.scroll_to(y=max(0, new_row - offset), animate=False, immediate=True)
        self.refresh()

    def set_label(self, sample_id: str, verdict: str) -> None:
        self.labels[sample_id] = verdict
        if FILTERS[self.filter] in ("good", "bad", "unlabelled") or SORTS[self.sort] == "labelled first":
            self.rebuild()
        self.refresh()

    def set_search(self, text: str) -> None:
        self.search = text
        self.matches = self.index.matches(text) if text else set()
        if FILTERS[self.filter] == "matches":
            self.rebuild()
        self.refresh()

    def cycle_sort(self) -> str:
        self.sort = (self.sort + 1) % len(SORTS)
        self.rebuild()
        return SORTS[self.sort]

    def cycle_filter(self) -> str:
        self.filter = (self.filter + 1) % len(FILTERS)
        while (FILTERS[self.filter] == "matches" and not self.search) or \
                (FILTERS[self.filter] == "suspicious" and not self.index.flags):
            self.filter = (self.filter + 1) % len(FILTERS)  # nothing to match / flagged: skip it
        self.rebuild()
        return FILTERS[self.filter]

    def show_suspicious(self) -> bool:
        """Filter to the suspicious samples, or back to all when already there; whether the
        filter is now "suspicious"."""
        self.filter = 0 if self.filter == SUSPICIOUS else SUSPICIOUS
        self.rebuild()
        return self.filter == SUSPICIOUS

    def describe(self) -> str:
        n, total = self.row_count, len(self.index)
        parts = [f"{n:,} of {total:,}" if n != total else f"{total:,} samples", f"sort: {SORTS[self.sort]}"]
        if self.filter:
            parts.append(f"filter: {FILTERS[self.filter]}" + (f" '{self.search}'" if FILTERS[self.filter] == "matches" else ""))
        elif self.search:
            parts.append(f"{len(self.matches):,} match '{self.search}'")
        return " · ".join(parts)

    # ---- cursor ------------------------------------------------------------------------------------
    def current(self) -> Optional[dict]:
        if self.selected is None or self.row_of(self.selected) is None:
            return None
        return self.index.get(self.selected)

    def goto(self, key: str) -> None:
        n = self.index.ordinal.get(str(key))
        if n is None:
            return
        if self.row_of(n) is None:          # filtered out: show everything again
            self.filter = 0
            self.rebuild()
        self._select_row(self.row_of(n))

    def _select_row(self, row: Optional[int]) -> None:
        if row is None or not self.row_count:
            return
        row = max(0, min(self.row_count - 1, row))
        self.selected = self.ordinal_at(row)
        self.follow = self.view is None and row >= self.row_count - 1
        self.scroll_to_cursor()
        self.refresh()

    def scroll_to_cursor(self, center: bool = False) -> None:
        row = self.row_of(self.selected)
        if row is None:
            return
        visible = max(1, self.size.height - 1)
        top = int(self.scroll_offset.y)
        if center:
            top = max(0, row - visible // 2)
        elif row < top:
            top = row
        elif row >= top + visible:
            top = row - visible + 1
        if top != int(self.scroll_offset.y):
            self.scroll_to(y=top, animate=False, immediate=True)

    def action_cursor(self, delta: int) -> None:
        self._select_row(self.cursor_row + delta)

    def action_page(self, delta: int) -> None:
        self._select_row(self.cursor_row + delta * max(1, self.size.height - 2))

    def action_first(self) -> None:
        self._select_row(0)

    def action_last(self) -> None:
        self._select_row(self.row_count - 1)

    def extreme(self, highest: bool) -> Optional[str]:
        """The id of the highest (lowest) scored sample in the current view."""
        scores = self.index.scores
        rows = range(len(self.index)) if self.view is None else self.view
        best = None
        for n in rows:
            v = scores[n]
            if v is None:
                continue
            if best is None or (v > best[1] if highest else v < best[1]):
                best = (n, v)
        return self.index.ids[best[0]] if best else None

    def find(self, text: str) -> Optional[str]:
        """The id of the next sample after the cursor (in the view) whose prompt or response
        contains ``text``, wrapping."""
        if text != self.search:
            self.set_search(text)
        if not self.matches or not self.row_count:
            return None
        start = self.cursor_row + 1
        total = self.row_count
        for i in range(total):
            n = self.ordinal_at((start + i) % total)
            if n in self.matches:
                return self.index.ids[n]
        return None

    # ---- mouse ---------------------------------------------------------------------------------------
    def on_click(self, event: events.Click) -> None:
        if event.y < 1:
            return
        row = int(self.scroll_offset.y) + event.y - 1
        if row >= self.row_count:
            return
        if self.ordinal_at(row) == self.selected:
            self.post_message(self.Opened())
        else:
            self._select_row(row)

    # ---- drawing ---------------------------------------------------------------------------------------
    def _resize_virtual(self) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width or self.size.width, self.row_count + 1)

    def on_resize(self) -> None:
        self._resize_virtual()
        self.call_after_refresh(self.scroll_to_cursor)

    def _widths(self, width: int) -> tuple[int, int]:
        rest = width - sum(w for _, w in FIXED) - 2 * PAD * (len(FIXED) + 2)
        rest = max(12, rest)
        if rest < 56:
            return rest + 2 * PAD, 0
        resp = int(rest * 0.62)
        return resp, rest - resp

    def _cells(self, width: int) -> list[int]:
        resp, prompt = self._widths(width)
        return [w for _, w in FIXED] + [resp] + ([prompt] if prompt else [])

    @staticmethod
    def _fit(t: Text, w: int, justify: str = "left") -> Text:
        t.truncate(w, overflow="ellipsis", pad=False)
        if t.cell_len < w:
            pad = " " * (w - t.cell_len)
            t = Text.assemble(pad, t) if justify == "right" else Text.assemble(t, pad)
        return t

    def _row_text(self, n: int, width: int) -> Text:
        s = self.index.get(n)
        sid = self.index.ids[n]
        widths = self._cells(width)
        lab = self.labels.get(sid, "")
        mark, mstyle = LABEL_CELL.get(lab, ("", ""))
        cell = Text(mark, style=mstyle)
        if n in self.index.flags:
            cell.append("⚠", style="bold yellow")
        response = Text(_one_line(s.get("response", "")))
        if "group" in s:  # rollout.n > 1: the prompt's group and this response's advantage first
            adv = s.get("advantage")
            head = Text(f"g{s['group']} ", style="bold")
            if isinstance(adv, (int, float)):
                head.append(f"A{adv:+.2f} ", style="green" if adv > 0 else "red" if adv < 0 else "dim")
            response = Text.assemble(head, "│ ", response)
        cells = [Text(f"{s.get('step', '')}·{s.get('index', '')}"), Text(fmt_num(s.get("score"))),
                 Text(fmt_num(s.get("kl"), 4)), cell, response]
        if len(widths) > 5:
            cells.append(Text(_one_line(s.get("prompt", "")), style="dim"))
        if self.search and n in self.matches:
            match_style = self.get_component_rich_style("rollouts--match")
            for c in cells[4:]:
                c.highlight_words([self.search], style=match_style, case_sensitive=False)
        out = Text(no_wrap=True)
        for i, (c, w) in enumerate(zip(cells, widths)):
            out.append(" " * PAD)
            out.append_text(self._fit(c, w, "right" if i in (1, 2) else "left"))
            out.append(" " * PAD)
        return out

    def _header_text(self, width: int) -> Text:
        names = [name for name, _ in FIXED] + ["response", "prompt"]
        out = Text(no_wrap=True)
        for i, (name, w) in enumerate(zip(names, self._cells(width))):
            out.append(" " * PAD)
            out.append_text(self._fit(Text(name), w, "right" if i in (1, 2) else "left"))
            out.append(" " * PAD)
        return out

    def _strip(self, text: Text, width: int, style: Style) -> Strip:
        text.truncate(width, pad=True)
        segments = [Segment(seg.text, style + seg.style if seg.style else style)
                    for seg in text.render(self.app.console) if seg.text != "\n"]
        return Strip(segments, width).crop(0, width)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width or self.size.width
        base = self.rich_style
        if y == 0:
            return self._strip(self._header_text(width), width, base + self.get_component_rich_style("rollouts--header"))
        row = int(self.scroll_offset.y) + y - 1
        if row >= self.row_count:
            return Strip.blank(width, base)
        n = self.ordinal_at(row)
        if n == self.selected:
            style = base + self.get_component_rich_style("rollouts--cursor")
        elif self._shade(row, n):
            style = base + self.get_component_rich_style("rollouts--even")
        else:
            style = base
        return self._strip(self._row_text(n, width), width, style)

    def _shade(self, row: int, n: int) -> bool:
        """Alternate shading by row, or (samples with a group: rollout.n > 1, in file order) by
        group, so the n responses to one prompt read as one block."""
        if self.view is None:
            g = self.index.get(n).get("group")
            if g is not None:
                return bool((self.index.steps[n] * 7919 + int(g)) % 2)
        return bool(row % 2)

    def watch_scroll_y(self, old, new) -> None:
        super().watch_scroll_y(old, new)
        self.refresh()

    def region_of_cursor(self) -> Optional[Region]:
        row = self.row_of(self.selected)
        if row is None:
            return None
        return Region(0, row + 1 - int(self.scroll_offset.y), self.size.width, 1)
