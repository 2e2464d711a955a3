"""The config editor's text: a YAML code editor that marks the lines the engine complains about
(a red marker in the gutter, the line's text underlined)."""
from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Offset
from textual.strip import Strip
from textual.widgets import TextArea

ERROR_GUTTER = Style(color="bright_white", bgcolor="red", bold=True)
ERROR_TEXT = Style(underline=True, color="bright_red")
NOTICE_GUTTER = Style(color="black", bgcolor="yellow")


def yaml_language() -> str | None:
    """"yaml" when tree-sitter and its YAML grammar are installed (textual[syntax]), else None."""
    try:
        import tree_sitter  # noqa: F401
        import tree_sitter_yaml  # noqa: F401
    except ImportError:
        return None
    return "yaml"


class YamlEditor(TextArea):
    def __init__(self, text: str = "", **kw):
        super().__init__(
            text, language=yaml_language(), theme="monokai", soft_wrap=False, tab_behavior="indent",
            show_line_numbers=True, **kw,
        )
        self.indent_width = 2
        self.error_lines: dict[int, str] = {}     # 0-based line -> message
        self.notice_lines: dict[int, str] = {}

    async def _on_key(self, event) -> None:
        # "?" opens the help even while typing (it is never typed into the YAML)
        if event.key == "question_mark":
            event.stop()
            event.prevent_default()
            self.app.action_help()
            return
        await super()._on_key(event)

    def mark(self, errors: dict[int, str], notices: dict[int, str]) -> None:
        if errors == self.error_lines and notices == self.notice_lines:
            return
        self.error_lines, self.notice_lines = errors, notices
        cache = getattr(self, "_line_cache", None)
        if cache is not None:
            cache.clear()
        self.refresh()

    def get_line(self, line_index: int) -> Text:
        line = super().get_line(line_index)
        if line_index in self.error_lines:
            line.stylize(ERROR_TEXT)
        return line

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        if not (self.error_lines or self.notice_lines) or not self.show_line_numbers:
            return strip
        y_off = self.scroll_offset.y + y
        if y_off >= self.wrapped_document.height:
            return strip
        row, col = self.wrapped_document.offset_to_location(Offset(0, y_off))
        style = ERROR_GUTTER if row in self.error_lines else NOTICE_GUTTER if row in self.notice_lines else None
        if style is None:
            return strip
        w = self.gutter_width
        number = str(row + self.line_number_start) if col == 0 else ""
        marker = Strip([Segment(f"{number:>{w - 2}}", style), Segment("▶", style), Segment(" ")], w)
        return Strip.join([marker, strip.crop(w, strip.cell_length)])
