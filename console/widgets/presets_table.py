"""Home: the presets in configs/ (name and description)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from textual.binding import Binding
from textual.widgets import DataTable


def preset_description(path: Path) -> str:
    try:
        import yaml

        doc = yaml.safe_load(path.read_text()) or {}
        return str((doc.get("run") or {}).get("description") or "")
    except Exception:  # noqa: BLE001 - a broken preset still lists, the editor shows why
        return "(does not parse; open it to see why)"


class PresetsTable(DataTable):
    BINDINGS = [Binding("enter", "select_cursor", "edit", id="presets.edit",
                        tooltip="Open the selected preset in the config editor")]

    def __init__(self, **kw):
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self.paths: dict[str, Path] = {}
        self.add_column("preset", key="preset")
        self.add_column("description", key="description")

    def show_presets(self, presets: list[tuple[str, Path, str]]) -> None:
        self.clear()
        self.paths = {}
        for name, path, desc in presets:
            self.paths[name] = path
            self.add_row(name, desc, key=name)

    def current(self) -> Optional[tuple[str, Path]]:
        if self.row_count == 0:
            return None
        key = self.coordinate_to_cell_key((self.cursor_row, 0)).row_key
        name = str(key.value)
        return name, self.paths[name]
