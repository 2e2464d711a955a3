"""Shape checks on what the user types before it is sent anywhere."""
from __future__ import annotations

import os
import re
from typing import Optional

_PY = re.compile(r"^python:[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_HUB = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PREFIXED = re.compile(r"^(bundled|lexicon):[\w.-]+$")


def check_reward_source(s: str) -> Optional[str]:
    """None when ``s`` looks like a reward source, else what is wrong with it."""
    s = s.strip()
    if not s:
        return "a reward source is needed"
    if s.startswith(("bundled:", "lexicon:")):
        return None if _PREFIXED.match(s) else "expected bundled:NAME or lexicon:NAME (e.g. lexicon:vader)"
    if s.startswith("python:"):
        return None if _PY.match(s) else "expected python:package.module:function"
    if s.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(s)):
        return None if os.path.isdir(os.path.expanduser(s)) else f"no folder {s}"
    if _HUB.match(s):
        return None
    return ("expected bundled:NAME, lexicon:NAME, python:module:function, a local folder "
            "or a hub id (org/name)")


def check_new_config_path(s: str) -> Optional[str]:
    s = s.strip()
    if not s:
        return "a file name is needed"
    if not s.endswith((".yaml", ".yml")):
        return "the name must end in .yaml"
    if os.path.exists(s):
        return f"{s} exists already; choose another name"
    parent = os.path.dirname(os.path.abspath(s))
    if not os.path.isdir(parent):
        return f"no folder {parent}"
    return None
