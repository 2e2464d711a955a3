"""Import rules of the code base, checked on the source (AST), not by convention:
the console reaches the engine through engine.client and public engine modules, never
engine.runtime; the engine never imports the console; engine/algorithms.py stays pure."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def _offenders(folder: str, bad, root: Path = ROOT) -> list[str]:
    found = []
    for p in sorted((root / folder).rglob("*.py")):
        for line, mod in _imports(p, root):
            if bad(mod):
                found.append(f"{p.relative_to(root)}:{line}: imports {mod}")
    return found


def _runtime(m: str) -> bool:
    return m == "engine.runtime" or m.startswith("engine.runtime.")


def test_console_never_imports_engine_runtime():
    hits = _offenders("console", _runtime)
    assert not hits, "the console reaches the engine through engine.client:\n" + "\n".join(hits)


def test_engine_never_imports_the_console():
    hits = _offenders("engine", lambda m: m == "console" or m.startswith("console."))
    assert not hits, "\n".join(hits)


def test_algorithms_is_pure():
    allowed = {"__future__", "math", "typing", "dataclasses", "torch", "torch.nn", "torch.nn.functional"}
    hits = [f"engine/algorithms.py:{line}: imports {mod}" for line, mod in _imports(ROOT / "engine" / "algorithms.py")
            if mod.split(".")[0] not in {m.split(".")[0] for m in allowed} or mod.startswith("engine")]
    assert not hits, "\n".join(hits)


def test_the_scan_sees_every_form_of_import(tmp_path):
    # the check itself catches `import engine.runtime.x`, `from engine.runtime import x`,
    # `from engine import runtime`, inside functions too; and lets engine.client through
    (tmp_path / "console" / "screens").mkdir(parents=True)
    probe = tmp_path / "console" / "screens" / "probe.py"
    for src in ("import engine.runtime.rundir\n", "from engine.runtime import rundir\n",
                "from engine import runtime\n", "def f():\n    from engine.runtime.rundir import RunDir\n"):
        probe.write_text(src)
        assert _offenders("console", _runtime, tmp_path), src
    probe.write_text("from engine.client import RunDir\nfrom ..model import RunModel\n")
    assert _offenders("console", _runtime, tmp_path) == []


# modules above the runtime: they start or read runs, so they may reach into engine.runtime
_ABOVE_RUNTIME = {"engine/client.py", "engine/bench.py", "engine/report.py", "engine/config/checks.py"}


def test_engine_libraries_never_import_the_runtime():
    """The libraries the runtime is built from (models, rewards, reward_training, data, ...)
    import nothing from engine.runtime, lazily or not: no circle such as reward_training ->
    runtime.driver -> runtime.roles -> rewards -> reward_training."""
    hits = []
    for p in sorted((ROOT / "engine").rglob("*.py")):
        rel = str(p.relative_to(ROOT))
        if rel.startswith("engine/runtime/") or rel in _ABOVE_RUNTIME:
            continue
        hits += [f"{rel}:{line}: imports {mod}" for line, mod in _imports(p) if _runtime(mod)]
    assert not hits, "\n".join(hits)


def test_no_import_cycle_at_module_level():
    """Module-level imports between engine/console modules form no cycle."""
    mods = {}
    for folder in ("engine", "console"):
        for p in (ROOT / folder).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    graph: dict[str, set] = {}
    for name, p in mods.items():
        tree = ast.parse(p.read_text())
        deps = set()
        for node in tree.body:     # module level only; lazy imports inside functions are allowed
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for _line, mod in _imports_of(node, p):
                    while mod and mod not in mods:
                        mod = mod.rpartition(".")[0]
                    # a submodule naming its own package is Python's package import, not a cycle
                    if mod and mod != name and not name.startswith(mod + "."):
                        deps.add(mod)
        graph[name] = deps
    seen, stack, on = set(), [], set()
    cycles = []

    def visit(n):
        seen.add(n)
        stack.append(n)
        on.add(n)
        for d in graph[n]:
            if d in on:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in seen:
                visit(d)
        stack.pop()
        on.discard(n)

    for n in sorted(graph):
        if n not in seen:
            visit(n)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def _imports_of(node, path: Path) -> list[tuple[int, str]]:
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    if isinstance(node, ast.Import):
        return [(node.lineno, a.name) for a in node.names]
    if node.level:
        base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    return [(node.lineno, f"{mod}.{a.name}") for a in node.names]


def test_architecture_doc_lists_every_module_once():
    """docs/architecture.md names every module of engine/ and console/ (and no module that is
    gone), so it stays true as modules come and go."""
    import re

    section = (ROOT / "docs" / "architecture.md").read_text()
    listed = re.findall(r"^\| `((?:engine|console)/[\w/]+\.py)` \| \S", section, flags=re.M)
    on_disk = sorted(str(p.relative_to(ROOT)) for folder in ("engine", "console")
                     for p in (ROOT / folder).rglob("*.py"))
    assert len(listed) == len(set(listed)), "a module is listed twice"
    missing = sorted(set(on_disk) - set(listed))
    gone = sorted(set(listed) - set(on_disk))
    assert not missing, f"docs/architecture.md: add a line (its one job) for {missing}"
    assert not gone, f"docs/architecture.md lists modules that do not exist: {gone}"
