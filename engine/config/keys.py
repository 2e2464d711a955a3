"""Names the schema does not know: an unknown key (a did-you-mean, or the section it belongs in)
and an unknown role. They read the schema, so they sit above it and above engine/config/issues.py
(which the schema writes its own messages with)."""
from __future__ import annotations

from typing import Any, Sequence

from engine.config.issues import Ctx, Path_, suggest
from engine.config.schema import ROLES, section_keys, sections


def unknown_key(ctx: Ctx, path: Path_, key: Any, valid: Sequence[str], what: str = "key") -> None:
    """An error for an unknown key under ``path``: a did-you-mean when one is close, else the
    section it belongs in or the valid keys."""
    msg = f"unknown {what} {key!r}" if not isinstance(key, str) else f"unknown {what} '{key}'"
    s = suggest(key, valid)
    if s:
        msg += f"; did you mean '{s}'?"
    else:
        names = [sec.name for sec in sections()]
        elsewhere = [sec.name for sec in sections()
                     if isinstance(key, str) and key in {k.name for k in section_keys(sec.type)}
                     and sec.name != (path[0] if path else None)]
        if elsewhere and len(path) == 1 and path[0] in names:
            msg += f"; '{key}' belongs in section {' or '.join(elsewhere)}"
        else:
            msg += f"; valid {what}s: {', '.join(valid)}"
    ctx.error(tuple(path) + (key,), msg)


def known_role(ctx: Ctx, path: Path_, name: str) -> bool:
    """True when ``name`` is a role; otherwise an error at ``path`` with a did-you-mean."""
    if name in ROLES:
        return True
    sug = suggest(name, ROLES)
    ctx.error(path, f"unknown role '{name}'"
              + (f"; did you mean '{sug}'?" if sug else f"; roles are {', '.join(ROLES)}"))
    return False
