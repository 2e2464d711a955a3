"""Reading a config: YAML with the line of every key, ``--set`` overrides, the schema check.

The YAML is composed with ``ruamel.yaml`` (YAML 1.2) and walked node by node, so every key and
list item keeps its line and a key given twice is refused naming both lines. The plain tree is
checked against the schema by pydantic; its errors become :class:`ConfigIssue` s naming the key
path, the file line (or the ``--set`` that set it) and what was expected, with a did-you-mean
for unknown keys. Every problem is reported together; nothing is started or created.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union, get_args, get_origin

import yaml as _pyyaml  # the dumper only
from pydantic import TypeAdapter, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

from engine.config.article import ARTICLE_SECTIONS, from_article
from engine.config.checks import access_checks, cross_checks, launch_checks
from engine.config.issues import (
    ConfigError,
    ConfigIssue,
    Ctx,
    Path_,
    path_str,
    show,
    suggest,
    type_name,
)
from engine.config.keys import unknown_key
from engine.config.schema import (
    PRESETS_DIR,
    KeySpec,
    RunConfig,
    key_spec,
    section_keys,
    sections,
    subsection_cls,
)

MAX_CONFIG_BYTES = 1 << 20


@dataclass
class ValidationResult:
    config: Optional[RunConfig]
    issues: list[ConfigIssue]
    notices: list[ConfigIssue]

    @property
    def ok(self) -> bool:
        return not self.issues


# --------------------------------------------------------------------------------------------
# YAML with lines.

class _SyntaxProblem(Exception):
    def __init__(self, issue: ConfigIssue):
        self.issue = issue


_MAP, _SEQ, _OMAP = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap"
_MERGE = "tag:yaml.org,2002:merge"


def _marked(e: MarkedYAMLError, filename: str, what: str) -> ConfigIssue:
    mark = e.problem_mark or e.context_mark
    msg = e.problem or "invalid YAML"
    if e.context:
        msg = f"{msg} ({e.context}"
        if e.context_mark is not None and e.problem_mark is not None \
                and e.context_mark.line != e.problem_mark.line:
            msg += f" at line {e.context_mark.line + 1}"
        msg += ")"
    return ConfigIssue("", mark.line + 1 if mark else None, f"{what}: {msg}", file=filename,
                       column=mark.column + 1 if mark else None)


def parse_yaml(text: str, filename: str) -> tuple[Any, dict]:
    """Return (plain Python tree, {path: 1-based line of the key or item}); raise _SyntaxProblem."""
    y = YAML(typ="safe", pure=True)
    try:
        node = y.compose(text)
    except MarkedYAMLError as e:
        raise _SyntaxProblem(_marked(e, filename, "YAML syntax error")) from None
    except YAMLError as e:
        raise _SyntaxProblem(ConfigIssue("", None, f"YAML error: {e}", file=filename)) from None
    lines: dict = {}
    if node is None:
        return None, lines
    constructor = y.constructor
    active: set = set()
    budget = [100_000]  # nodes; guards against alias bombs

    def fail(path, n, msg):
        raise _SyntaxProblem(ConfigIssue(path_str(path), n.start_mark.line + 1, msg, file=filename))

    def walk(n, path):
        budget[0] -= 1
        if budget[0] < 0 or len(path) > 50:
            fail(path, n, "the document is too large or too deeply nested")
        if id(n) in active:
            fail(path, n, "recursive YAML alias")
        if isinstance(n, (MappingNode, SequenceNode)):
            if str(n.tag) not in (_MAP, _SEQ, _OMAP):
                fail(path, n, f"unsupported YAML tag {str(n.tag)!r}")
            active.add(id(n))
            try:
                return walk_map(n, path) if isinstance(n, MappingNode) else walk_seq(n, path)
            finally:
                active.discard(id(n))
        try:
            return constructor.construct_object(n, deep=True)
        except MarkedYAMLError as e:
            raise _SyntaxProblem(_marked(e, filename, "YAML error")) from None

    def walk_seq(n, path):
        out = []
        for i, item in enumerate(n.value):
            lines[path + (i,)] = item.start_mark.line + 1
            out.append(walk(item, path + (i,)))
        return out

    def walk_map(n, path):
        out: dict = {}
        # merged mappings (<<: *anchor) first, so that the mapping's own keys win
        for kn, vn in n.value:
            if str(kn.tag) == _MERGE:
                for m in (vn.value if isinstance(vn, SequenceNode) else [vn]):
                    if not isinstance(m, MappingNode):
                        fail(path, m, "a merge (<<) takes a mapping or a list of mappings")
                    out.update(walk(m, path))
        seen: dict = {}
        for kn, vn in n.value:
            if str(kn.tag) == _MERGE:
                continue
            kline = kn.start_mark.line + 1
            if not isinstance(kn, ScalarNode):
                fail(path, kn, "keys must be plain names")
            key = walk(kn, path)
            if isinstance(key, (dict, list, float)) or key is None:
                key = str(kn.value)
            if key in seen:
                raise _SyntaxProblem(ConfigIssue(
                    path_str(path + (key,)), kline,
                    f"duplicate key '{key}' (first given at line {seen[key]}, again at line {kline}); "
                    f"give each key once", file=filename))
            seen[key] = kline
            lines[path + (key,)] = kline
            out[key] = walk(vn, path + (key,))
        return out

    return walk(node, ()), lines


def parse_scalar(text: str) -> Any:
    """A ``--set`` value, read as YAML."""
    raw, _ = parse_yaml(text, "--set")
    return raw


# --------------------------------------------------------------------------------------------
# The schema check: pydantic's errors in this project's words.

_ADAPTER = TypeAdapter(RunConfig)
_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def describe(tp, plural=False) -> str:
    """A type in words: "an integer", "a list of strings", "true or false"."""
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Union:
        return " or ".join(describe(a, plural) for a in get_args(tp))
    if tp is bool:
        return "true or false"
    if tp is int:
        return "integers" if plural else "an integer"
    if tp is float:
        return "numbers" if plural else "a number"
    if tp is str or (getattr(tp, "__origin__", None) is not None and str(origin) == "typing.Literal"):
        return "strings" if plural else "a string"
    if origin in (tuple, list):
        inner = describe(get_args(tp)[0], plural=True)
        return f"lists of {inner}" if plural else f"a list of {inner}"
    if origin is dict:
        k, v = get_args(tp)
        return f"a mapping of {describe(k, True)} to {describe(v, True)}"
    return str(tp)


def _member(args, tag) -> Any:
    base = str(tag).split("[", 1)[0]
    for a in args:
        name = getattr(get_origin(a) or a, "__name__", "")
        if name == base:
            return a
    return args[0]


def _walk_loc(tp, rest: tuple) -> tuple[tuple, Any, tuple]:
    """Follow an error location below a key through its type: (the path the user wrote, the
    type expected there, the union branches taken)."""
    real: list = []
    branch: list = []
    shown = tp
    while True:
        origin = get_origin(tp)
        if origin is Union:
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
            if not rest:
                return tuple(real), shown, tuple(branch)
            branch.append(rest[0])
            tp = shown = _member(args, rest[0])
            rest = rest[1:]
            continue
        if not rest:
            return tuple(real), shown, tuple(branch)
        if origin in (tuple, list):
            real.append(rest[0])
            tp = shown = get_args(tp)[0]
            rest = rest[1:]
            continue
        if origin is dict:
            real.append(rest[0])
            rest = rest[1:]
            if rest and rest[0] == "[key]":
                return tuple(real), get_args(tp)[0], tuple(branch)
            tp = shown = get_args(tp)[1]
            continue
        return tuple(real), shown, tuple(branch)


def _message(err: dict, spec: KeySpec, expected) -> str:
    kind, value = err["type"], err["input"]
    if kind == "config":
        return err["ctx"]["message"]
    if kind in _RANGE_ERRORS:
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        return f"must be {spec.allowed}; got {show(value)}"
    if kind == "finite_number":
        return f"expected a finite number, got {show(value)} ({type_name(value)})"
    if kind == "literal_error" and isinstance(value, str) and spec.choices:
        msg = f"must be one of {', '.join(spec.choices)}; got {show(value)}"
        s = suggest(value, spec.choices)
        return msg + (f" (did you mean '{s}'?)" if s else "")
    msg = f"expected {describe(expected)}, got {show(value)} ({type_name(value)})"
    if expected is bool and isinstance(value, str) and value.lower() in ("yes", "no", "on", "off", "y", "n"):
        msg += "; YAML 1.2 reads yes/no/on/off as text: write true or false"
    return msg


def _report_key(ctx: Ctx, fpath: tuple, spec: KeySpec, errs: list[tuple]) -> None:
    """The errors pydantic found in one key, as issues: the deepest first-branch errors of a
    list or mapping, else one message for the key."""
    walked = [(_walk_loc(spec.type, rest), e) for rest, e in errs]
    errs = [e for _, e in errs]
    deep = [(w, e) for w, e in walked if w[0]]
    ctx.bad.add(fpath)
    if deep:
        branch = max(deep, key=lambda d: len(d[0][0]))[0][2]   # the member that got furthest
        done = set()
        for (real, expected, br), e in deep:
            if br == branch and real not in done:
                done.add(real)
                ctx.error(fpath + real, _message(e, spec, expected))
        return
    if any(w[2] for w, _ in walked):   # a union: every member refused it
        own = [e for e in errs if e["type"] in _RANGE_ERRORS + ("config", "literal_error")]
        e = own[0] if own else errs[0]
        ctx.error(fpath, _message(e, spec, spec.type) if own else
                  f"expected {describe(spec.type)}, got {show(e['input'])} ({type_name(e['input'])})")
        return
    (_, expected, _), e = walked[0]
    ctx.error(fpath, _message(e, spec, expected))


@functools.lru_cache(maxsize=1)
def _default() -> RunConfig:
    return RunConfig()


def build(raw: Any, ctx: Ctx) -> RunConfig:
    """The RunConfig of a plain tree. Problems go to ``ctx``; a key in error takes its default
    so that the cross-field checks can still run over the rest."""
    names = [s.name for s in sections()]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        ctx.error((), f"the config must be a mapping of sections ({', '.join(names)}); "
                      f"got {type_name(raw)}")
        return RunConfig()
    tree = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()
            if not (k in names and v is None)}
    default = _default()
    for sec in sections():   # a partial section keeps the run's defaults (the actor's model)
        given = tree.get(sec.name)
        if isinstance(given, dict):
            inst = getattr(default, sec.name)
            tree[sec.name] = {**{k.name: getattr(inst, k.name) for k in section_keys(sec.type)
                                 if k.name not in given}, **given}
    try:
        return _ADAPTER.validate_python(tree)
    except ValidationError as e:
        errors = e.errors()
    by_key: dict = {}
    drop: list = []
    for err in errors:
        path, spec, cls, rest = _locate(tuple(err["loc"]))
        if err["type"] == "unexpected_keyword_argument" and spec is None and len(path) == len(err["loc"]):
            unknown_key(ctx, path[:-1], path[-1], [k.name for k in section_keys(cls)],
                        what="section" if cls is RunConfig else "key")
            drop.append(path)
        elif spec is None:   # a section (or a nested one, e.g. actor.lora) that is not a mapping
            value = err["input"]
            what = f"a mapping of {path[-1]} settings"
            if len(path) > 1:
                what = (f"null or a mapping of {path[-1]} settings "
                        f"({', '.join(k.name for k in section_keys(cls))})")
            ctx.error(path, f"expected {what}, got {show(value)} ({type_name(value)})")
            drop.append(path)
        else:
            by_key.setdefault(path, (spec, []))[1].append((rest, err))
    for path, (spec, errs) in by_key.items():
        _report_key(ctx, path, spec, errs)
        drop.append(path)
    for path in drop:
        node = tree
        for p in path[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    try:
        return _ADAPTER.validate_python(tree)
    except ValidationError:  # pragma: no cover - every refused key was taken out above
        return RunConfig()


def _locate(loc: tuple) -> tuple[tuple, Optional[KeySpec], Optional[type], tuple]:
    """Split an error location into the key path through the sections, the key's spec (None when
    the error is about a section itself or an unknown key), the innermost section class and the
    rest of the location (inside the key's value)."""
    cls, path = RunConfig, ()
    for i, name in enumerate(loc):
        spec = next((k for k in section_keys(cls) if k.name == name), None)
        path += (name,)
        if spec is None:
            return path, None, cls, ()
        sub = subsection_cls(spec.type)
        if sub is None:
            return path, spec, cls, tuple(loc[i + 1:])
        cls = sub
    return path, None, cls, ()


# --------------------------------------------------------------------------------------------
# Overrides.

def _is_schema_value(path: Path_) -> bool:
    """True when ``path`` names a schema key that holds a value rather than a mapping."""
    spec = key_spec(path) if len(path) == 2 else None
    if spec is None:
        return False
    tp = spec.type
    args = get_args(tp) if get_origin(tp) is Union else (tp,)
    return not any(get_origin(a) is dict or dataclasses.is_dataclass(a) for a in args)


def apply_override_list(raw: Any, overrides: Iterable[str], ctx: Ctx) -> Any:
    if raw is None:
        raw = {}
    for ov in overrides:
        origin = f"--set {ov}"
        if not isinstance(ov, str) or "=" not in ov:
            ctx.errors.append(ConfigIssue("", None, "expected KEY.PATH=VALUE, e.g. ppo.kl_coef=0.1",
                                          "error", ctx.filename, origin))
            continue
        key, _, text = ov.partition("=")
        key = key.strip()
        parts = tuple(p.strip() for p in key.split("."))
        if not key or any(not p for p in parts):
            ctx.errors.append(ConfigIssue(key, None, "expected KEY.PATH=VALUE, e.g. ppo.kl_coef=0.1",
                                          "error", ctx.filename, origin))
            continue
        try:
            value = parse_scalar(text)
        except _SyntaxProblem as e:
            ctx.errors.append(ConfigIssue(key, None, f"cannot parse the value as YAML: "
                                                     f"{e.issue.message.split(': ', 1)[-1]}",
                                          "error", ctx.filename, origin))
            continue
        if not isinstance(raw, dict):
            continue  # the top-level error is reported by build()
        node = raw
        ok = True
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None and _is_schema_value(parts[:i + 1]):
                nxt = 0  # a scalar key: fall through to the "not a section" error
            if nxt is None:
                nxt = node[p] = {}
                ctx.origins.setdefault(parts[:i + 1], origin)
            elif not isinstance(nxt, dict):
                ctx.errors.append(ConfigIssue(path_str(parts[:i + 1]), None,
                                              f"'{path_str(parts[:i + 1])}' is a value, not a section; "
                                              f"cannot set '{key}'", "error", ctx.filename, origin))
                ok = False
                break
            node = nxt
        if not ok:
            continue
        node[parts[-1]] = value
        for p in [p for p in ctx.lines if p[:len(parts)] == parts]:
            del ctx.lines[p]
        for p in [p for p in ctx.origins if p[:len(parts)] == parts]:
            del ctx.origins[p]
        ctx.origins[parts] = origin
    return raw


# --------------------------------------------------------------------------------------------
# Entry points.

def _by_line(issues):
    return sorted(issues, key=lambda i: (i.origin is not None, i.line if i.line is not None else 10**9))


def validate_tree(raw: Any, ctx: Ctx, overrides: Iterable[str]) -> ValidationResult:
    if isinstance(raw, dict) and any(k in ARTICLE_SECTIONS for k in raw):
        raw = from_article(raw, ctx)
    raw = apply_override_list(raw, overrides, ctx)
    cfg = build(raw, ctx)
    cross_checks(cfg, ctx)
    if ctx.check_access:
        access_checks(cfg, ctx)
    errors, notices = _by_line(ctx.errors), _by_line(ctx.notices)
    if errors:
        return ValidationResult(None, errors, notices)
    cfg = dataclasses.replace(cfg, notices=tuple(notices), source_file=ctx.filename)
    return ValidationResult(cfg, [], notices)


def validate_text(text: str, filename: str = "<config>", overrides: Iterable[str] = (),
                  check_hardware: bool = True, check_access: bool = False) -> ValidationResult:
    """Validate YAML text. Never raises for bad input: problems come back as issues.

    ``check_access`` adds the launch-time checks (hub reachable for hub ids, python: reward
    module present, run.output_dir writable; see :func:`check_launchable`)."""
    try:
        raw, lines = parse_yaml(text, filename)
    except _SyntaxProblem as e:
        return ValidationResult(None, [e.issue], [])
    ctx = Ctx(filename, lines, check_hardware)
    ctx.check_access = check_access
    return validate_tree(raw, ctx, list(overrides))


def file_lines(path: Optional[str]) -> dict:
    """The key lines of a config file in this project's own shape ({} when unreadable or in the
    article's shape), for checks run on a config loaded earlier."""
    if not path or not os.path.isfile(path):
        return {}
    try:
        raw, lines = parse_yaml(Path(path).read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError, _SyntaxProblem):
        return {}
    if isinstance(raw, dict) and any(k in ARTICLE_SECTIONS for k in raw):
        return {}
    return lines


def check_launchable(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` when ``cfg`` cannot be started on this machine now (hub ids
    without hub access, a python: reward module that is not there, an output folder that cannot
    be written, an unsafe control-socket folder). Lines come from ``cfg.source_file`` when it is
    a config in this project's own shape."""
    src = cfg.source_file
    ctx = Ctx(src or "<config>", file_lines(src), True)
    launch_checks(cfg, ctx)
    if ctx.errors:
        raise ConfigError(ctx.errors, ctx.notices)


def _read_config_file(p: Path, shown: str) -> str:
    """The text of a config file, or ConfigError naming the file (and the line of a bad byte)."""
    def fail(msg, line=None):
        raise ConfigError([ConfigIssue("", line, msg, file=shown)]) from None

    try:
        st = p.stat()
    except OSError as e:
        fail(f"cannot read config file: {e.strerror or e}")
    if stat.S_ISDIR(st.st_mode):
        fail("is a folder, not a config file")
    if not stat.S_ISREG(st.st_mode):
        fail("is not a regular file (a config is a YAML text file)")
    if st.st_size > MAX_CONFIG_BYTES:
        fail(f"is {st.st_size} bytes; a config is a small YAML text file (at most {MAX_CONFIG_BYTES} bytes)")
    try:
        data = p.read_bytes()
    except OSError as e:
        fail(f"cannot read config file: {e.strerror or e}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        fail(f"not a YAML text file: byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8 "
             f"text (is this a binary file?)", line)
    if "\x00" in text:
        off = text.index("\x00")
        fail("not a YAML text file: it contains NUL bytes (is this a binary file?)",
             text[:off].count("\n") + 1)
    return text


def _holds_no_settings(text: str) -> bool:
    """True for an empty file, only comments/blank lines, or an empty mapping ({})."""
    try:
        raw, _ = parse_yaml(text, "<config>")
    except _SyntaxProblem:
        return False  # reported by the validator with its line
    return raw is None or raw == {}


def list_presets() -> list[str]:
    """Names of the presets in configs/ (``load_config(name)`` accepts them)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")) if PRESETS_DIR.is_dir() else []


def preset_path(name: str) -> Path:
    return PRESETS_DIR / f"{name}.yaml"


def load_config(path: Union[str, os.PathLike], overrides: Iterable[str] = (), *,
                check_hardware: bool = True, check_access: bool = False) -> RunConfig:
    """Load and validate a config file (or a preset name such as ``tiny``).

    Raises :class:`ConfigError` listing every error. The returned config carries
    ``cfg.notices`` (tuple of ConfigIssue) and ``cfg.source_file``.
    """
    p = Path(path)
    if not p.exists() and not p.suffix and preset_path(str(path)).exists():
        p = preset_path(str(path))
    text = _read_config_file(p, str(path))
    if _holds_no_settings(text):
        raise ConfigError([ConfigIssue(
            "", None, "the file holds no settings (it is empty or only comments); a run needs at "
                      "least its models and sources: start from a preset, e.g. configs/tiny.yaml, "
                      "or name one: --config default", file=str(path))])
    res = validate_text(text, filename=str(p), overrides=overrides, check_hardware=check_hardware,
                        check_access=check_access)
    if res.issues:
        raise ConfigError(res.issues, res.notices)
    return res.config


def apply_overrides(cfg: RunConfig, overrides: Iterable[str], *,
                    check_hardware: bool = True) -> RunConfig:
    """Return ``cfg`` with ``--set``-style overrides applied and the result re-validated."""
    ctx = Ctx(cfg.source_file or "<config>", {}, check_hardware)
    res = validate_tree(config_to_dict(cfg), ctx, list(overrides))
    if res.issues:
        raise ConfigError(res.issues, res.notices)
    return res.config


# --------------------------------------------------------------------------------------------
# Writing a config back.

def _plain(v):
    if dataclasses.is_dataclass(v):
        return {k.name: _plain(getattr(v, k.name)) for k in section_keys(type(v))}
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain dict in schema order (tuples become lists; loader-only fields left out)."""
    return {sec.name: {k.name: _plain(getattr(getattr(cfg, sec.name), k.name))
                       for k in section_keys(sec.type)}
            for sec in sections()}


class _Dumper(_pyyaml.SafeDumper):
    pass


def _repr_list(dumper, data):
    flow = all(not isinstance(x, (list, dict)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _repr_list)


@functools.lru_cache(maxsize=None)
def _needs_quotes(s: str) -> bool:
    """A string that YAML 1.2 would read back as something else (``1e5``, ``yes`` is fine)."""
    try:
        return not isinstance(parse_scalar(s), str)
    except _SyntaxProblem:
        return True


def _repr_str(dumper, data):
    if data and _needs_quotes(data):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    return dumper.represent_str(data)


_Dumper.add_representer(str, _repr_str)


def dump_config(cfg: RunConfig) -> str:
    """YAML text of the whole config, sections and keys in schema order; loads back equal."""
    return _pyyaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False,
                        default_flow_style=False, allow_unicode=True, width=100)
