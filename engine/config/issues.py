"""Config problems: how one is recorded, placed (file line or ``--set`` override) and shown.

A :class:`ConfigIssue` names the key path, where it was written and what is wrong; a
:class:`ConfigError` carries every error of a config at once. :class:`Ctx` is what the loader
and the checks write issues into while a config is validated.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Optional, Sequence

Path_ = tuple  # a key path: ("ppo", "mini_batch_size") or ("runtime", "colocate", 0, 1)


@dataclass(frozen=True)
class ConfigIssue:
    """One problem (severity "error") or remark (severity "notice") about a config.

    ``line`` is 1-based, or None when the value was not in the file (a default, or an override).
    ``origin`` is the ``--set KEY=VALUE`` text when the value came from an override.
    """
    path: str
    line: Optional[int]
    message: str
    severity: str = "error"
    file: Optional[str] = None
    origin: Optional[str] = None
    column: Optional[int] = None

    @property
    def location(self) -> str:
        if self.origin:
            return self.origin
        f = self.file or "<config>"
        return f"{f}:{self.line}" if self.line is not None else f

    def __str__(self) -> str:
        head = f"{self.location}: {self.path}" if self.path else self.location
        return f"{head}: {self.message}"


class ConfigError(Exception):
    """The config is invalid. ``.issues`` holds every error (not just the first)."""

    def __init__(self, issues: Sequence[ConfigIssue], notices: Sequence[ConfigIssue] = ()):
        self.issues = list(issues)
        self.notices = list(notices)
        super().__init__("\n".join(str(i) for i in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)

    def __reduce__(self):
        return (ConfigError, (self.issues, self.notices))


def path_str(path: Path_) -> str:
    out = ""
    for p in path:
        if isinstance(p, int) and not isinstance(p, bool):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def show(v) -> str:
    """A value as the user wrote it in YAML (true/false/null; long values cut)."""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    s = repr(list(v) if isinstance(v, tuple) else v)
    return s if len(s) <= 60 else s[:57] + "..."


def type_name(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "mapping"
    if isinstance(v, (list, tuple)):
        return "list"
    return type(v).__name__


def suggest(word, candidates) -> Optional[str]:
    if not isinstance(word, str):
        return None
    m = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return m[0] if m else None


class Ctx:
    """Where the issues of one validation go, and where each key was written."""

    def __init__(self, filename: str, lines: dict, check_hardware: bool):
        self.filename = filename
        self.lines = lines
        self.origins: dict = {}       # path -> "--set a.b=c"
        self.aliases: dict = {}       # native path -> source path string (article shape)
        self.check_hardware = check_hardware
        self.check_access = False     # set by the launch-time checks
        self.errors: list[ConfigIssue] = []
        self.notices: list[ConfigIssue] = []
        self.bad: set = set()         # paths whose value failed validation

    def has(self, path: Path_) -> bool:
        return path in self.origins or path in self.lines

    def _locate(self, path: Path_) -> tuple[Optional[int], Optional[str]]:
        p = tuple(path)
        while p:
            if p in self.origins:
                return None, self.origins[p]
            if p in self.lines:
                return self.lines[p], None
            p = p[:-1]
        return None, None

    def issue(self, path: Path_, message: str, severity: str = "error",
              at: Sequence[Path_] = ()) -> ConfigIssue:
        """Record an issue about ``path``; ``at`` lists other keys whose line may be shown instead
        when ``path`` itself was not written in the file (the first that was written wins)."""
        loc_path = path
        if not self.has(path):
            for alt in at:
                if self.has(alt):
                    loc_path = alt
                    break
        line, origin = self._locate(loc_path)
        shown = path_str(path)
        alias = self.aliases.get(tuple(path))
        if alias:
            message = f"{message} (mapped to {shown})"
            shown = alias
        iss = ConfigIssue(shown, line, message, severity, self.filename, origin)
        (self.errors if severity == "error" else self.notices).append(iss)
        if severity == "error":
            self.bad.add(tuple(path))
        return iss

    def error(self, path, message, at=()):
        return self.issue(path, message, "error", at)

    def notice(self, path, message, at=()):
        return self.issue(path, message, "notice", at)

    def ok(self, *paths: Path_) -> bool:
        """True when none of ``paths`` (nor anything above or below them) failed validation."""
        for p in paths:
            p = tuple(p)
            for b in self.bad:
                n = min(len(p), len(b))
                if p[:n] == b[:n]:
                    return False
        return True
