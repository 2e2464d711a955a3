"""Command palette: every key of the current screen as a named command (greyed keys left out)."""
from __future__ import annotations

from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider


class ConsoleCommands(Provider):
    def _commands(self):
        screen = self.screen
        app = self.app
        seen = set()
        for owner in (screen, app):
            for b in getattr(owner, "BINDINGS", []):
                if not isinstance(b, Binding) or not b.description or b.action in seen:
                    continue
                seen.add(b.action)
                name, _, _ = b.action.partition("(")
                try:
                    ok = owner.check_action(name, ())
                except Exception:  # noqa: BLE001
                    ok = True
                if not ok:
                    continue
                key = b.key_display or b.key.split(",")[0]
                label = f"{b.description} ({key})"
                yield label, partial(owner.run_action, b.action), b.tooltip or b.description

    async def discover(self) -> Hits:
        for label, cb, help in self._commands():
            yield DiscoveryHit(label, cb, help=help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for label, cb, help in self._commands():
            score = max(matcher.match(label), matcher.match(help) * 0.8)
            if score > 0:
                yield Hit(score, matcher.highlight(label), cb, help=help)
