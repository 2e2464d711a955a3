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
