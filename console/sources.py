"""Shape checks on what the user types before it is sent anywhere."""
from __future__ import annotations

import os
from typing import Optional

from engine import sources


def check_reward_source(s: str) -> Optional[str]:
    """None when ``s`` is a reward source the engine accepts, else what is wrong with it (the
    config's own check, engine.sources, so the swap prompt and the config agree)."""
    return sources.problem(s, "reward")


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
