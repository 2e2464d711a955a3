"""Import rules of the code base, checked on the real import graph of engine/ and console/.

The graph is built from every module's AST: ``import``, ``from ... import`` (relative ones
resolved), imports inside functions, ``importlib.import_module("...")`` and ``__import__("...")``
with literal names, and attribute reads through an imported module (``engine.runtime.rundir.RunDir``
after ``import engine``). A name taken from a module that itself imported it is followed to the
module that defines it, so ``from engine.client import X`` reaches wherever X really lives.
Imports under ``if TYPE_CHECKING:`` never run and are not edges.

The rules (each a test below):
  * the engine never imports the console;
  * the console reaches the engine only through the modules in ``PUBLIC`` (the one list);
  * ``engine.client`` re-exports nothing from ``engine.runtime``: every name it takes from there
    is private (``_name``) and none is in its ``__all__``;
  * the libraries the runtime is built from (everything in engine/ outside engine/runtime/ and
    ``ABOVE_RUNTIME``) never import ``engine.runtime``;
  * there is no import cycle anywhere, not even through an import inside a function;
  * engine/algorithms.py stays pure.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent

# The engine the console may reach: engine.client (runs) and the public modules below. A package
# entry admits its submodules (engine.config is one public face over schema/loading/checks/...).
PUBLIC = {
    "engine.client": "runs: launch, attach, list, control, follow, judge; run state",
    "engine.config": "configs: load, validate, presets, ConfigError",
    "engine.records": "the run directory's records: RunInfo, MetricsRow, Sample, Label",
    "engine.runs": "the run-state rule (run_state, LIVE_STATES, ENDED_STATES)",
    "engine.files": "atomic writes, JSONL and line tails",
    "engine.report": "the run report (summarise, write_report)",
    "engine.doctor": "rlhf-console doctor",
    "engine.sources": "the grammar of source strings",
    "engine.data": "prompt sources (the bundled reviews, DataError)",
    "engine.assets": "bundled weights and data (AssetError)",
    "engine.reward_training": "train-rm: a reward model from preference pairs",
    "engine.judgements": "a run's judgements: marks and pairs",
    "engine.standin": "a stand-in run (run directory + control socket) for the console's bench and demos",
}

# engine modules above the runtime: they start or read runs, so they may import engine.runtime
ABOVE_RUNTIME = {"engine.client", "engine.bench", "engine.report", "engine.standin"}


def _runtime(m: str) -> bool:
    return m == "engine.runtime" or m.startswith("engine.runtime.")


def _under(m: str, top: str) -> bool:
    return m == top or m.startswith(top + ".")


@dataclass(frozen=True)
class Import:
    line: int
    module: str                 # the module imported, absolute
    name: Optional[str] = None  # the name taken from it (``from module import name``), if not a module
    how: str = "import"         # import | from | importlib | attribute
    local: bool = False         # inside a function or class body


@dataclass
class Module:
    name: str
    is_package: bool
    source: str
    imports: list = field(default_factory=list)
    # module-level names bound by an import: local name -> (module, name or None for a module)
    bindings: dict = field(default_factory=dict)
    all: Optional[list] = None


def _resolve_relative(name: str, is_package: bool, level: int, module: Optional[str]) -> str:
    pkg = name.split(".") if is_package else name.split(".")[:-1]
    base = pkg[: len(pkg) - level + 1]
    return ".".join(base + ([module] if module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _dotted(node: ast.expr) -> Optional[list[str]]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return None


def _says(imp: Import) -> str:
    if imp.how == "importlib":
        return f"imports {imp.module} (importlib/__import__)"
    if imp.how == "attribute":
        return f"reads {imp.module}" + (f".{imp.name}" if imp.name else "")
    return f"imports {imp.name} from {imp.module}" if imp.name else f"imports {imp.module}"


class Graph:
    """The import graph of a set of modules given as sources (``{name: (source, is_package)}``)."""

    def __init__(self, sources: dict[str, tuple[str, bool]]):
        self.modules = {n: Module(n, pkg, src) for n, (src, pkg) in sources.items()}
        for m in self.modules.values():
            self._scan(m)

    @classmethod
    def of_tree(cls, root: Path = ROOT, folders=("engine", "console")) -> "Graph":
        sources = {}
        for folder in folders:
            for p in sorted((root / folder).rglob("*.py")):
                parts = p.relative_to(root).with_suffix("").parts
                pkg = parts[-1] == "__init__"
                name = ".".join(parts[:-1] if pkg else parts)
                sources[name] = (p.read_text(), pkg)
        return cls(sources)

    # ---- scanning one module -------------------------------------------------------------
    def _from_target(self, mod: str, name: str) -> tuple[str, Optional[str]]:
        sub = f"{mod}.{name}"
        return (sub, None) if sub in self.modules else (mod, name)

    def _scan(self, m: Module) -> None:
        aliases: dict[str, str] = {}   # local name -> module, any scope (for attribute reads)
        tree = ast.parse(m.source, filename=m.name)

        def visit(node, local: bool, bind: bool):
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                for child in node.orelse:
                    visit(child, local, bind)
                return
            if isinstance(node, ast.Import):
                for a in node.names:
                    m.imports.append(Import(node.lineno, a.name, None, "import", local))
                    if a.asname:
                        aliases[a.asname] = a.name
                        if bind:
                            m.bindings[a.asname] = (a.name, None)
                    else:
                        top = a.name.split(".")[0]
                        aliases[top] = top
                        if bind:
                            m.bindings[top] = (top, None)
                return
            if isinstance(node, ast.ImportFrom):
                mod = _resolve_relative(m.name, m.is_package, node.level, node.module) if node.level \
                    else (node.module or "")
                for a in node.names:
                    if a.name == "*":
                        m.imports.append(Import(node.lineno, mod, None, "from", local))
                        continue
                    target = self._from_target(mod, a.name)
                    m.imports.append(Import(node.lineno, target[0], target[1], "from", local))
                    if target[1] is None:
                        aliases[a.asname or a.name] = target[0]
                    if bind:
                        m.bindings[a.asname or a.name] = target
                return
            if isinstance(node, ast.Call):
                lit = self._dynamic_import(node, m)
                if lit:
                    m.imports.append(Import(node.lineno, lit, None, "importlib", local))
            if bind and isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                           for t in node.targets):
                try:
                    m.all = list(ast.literal_eval(node.value))
                except ValueError:
                    pass
            inner = local or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))
            inner_bind = bind and not inner
            for child in ast.iter_child_nodes(node):
                visit(child, inner, inner_bind)

        for stmt in tree.body:
            visit(stmt, False, True)
        # attribute reads through an imported module: engine.runtime.rundir.RunDir, client.RunDir
        inner_attrs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or id(node) in inner_attrs:
                continue
            parts = _dotted(node)
            if not parts or parts[0] not in aliases:
                continue
            mod, rest = aliases[parts[0]], parts[1:]
            while rest and f"{mod}.{rest[0]}" in self.modules:
                mod, rest = f"{mod}.{rest[0]}", rest[1:]
            if mod != aliases[parts[0]] or rest:
                m.imports.append(Import(node.lineno, mod, rest[0] if rest else None, "attribute"))

    @staticmethod
    def _dynamic_import(call: ast.Call, m: Module) -> Optional[str]:
        f = call.func
        fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        if fname not in ("import_module", "__import__") or not call.args:
            return None
        arg = call.args[0]
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            return None   # a name computed at run time (reward sources): not part of the graph
        name = arg.value
        if name.startswith("."):
            pkg = call.args[1] if len(call.args) > 1 else next(
                (k.value for k in call.keywords if k.arg == "package"), None)
            if not (isinstance(pkg, ast.Constant) and isinstance(pkg.value, str)):
                return None
            level = len(name) - len(name.lstrip("."))
            return _resolve_relative(pkg.value, True, level, name.lstrip(".") or None)
        return name

    # ---- queries ----------------------------------------------------------------------------
    def origin(self, module: str, name: Optional[str], _seen=None) -> tuple[str, Optional[str]]:
        """Where ``module.name`` is defined, following re-exports (``from x import name`` in
        ``module``); (module, None) when the name is a module."""
        if name is None or module not in self.modules:
            return module, name
        seen = _seen or set()
        if (module, name) in seen:
            return module, name
        seen.add((module, name))
        bound = self.modules[module].bindings.get(name)
        if bound is None:
            return module, name
        return self.origin(bound[0], bound[1], seen)

    def reached(self, name: str) -> list[tuple[Import, str, str]]:
        """(import, module reached, how) for every module ``name`` imports or takes a name from,
        re-exports followed to the module that defines the name."""
        out = []
        for imp in self.modules[name].imports:
            out.append((imp, imp.module, _says(imp)))
            if imp.name is not None:
                o_mod, o_name = self.origin(imp.module, imp.name)
                if o_mod != imp.module:
                    out.append((imp, o_mod, f"takes {imp.name} from {imp.module}, which has it from "
                                            f"{o_mod}" + (f" ({o_name})" if o_name and o_name != imp.name else "")))
        return out

    def known(self, module: str) -> Optional[str]:
        """The graph's module that an import of ``module`` runs (itself, or its nearest package)."""
        while module and module not in self.modules:
            module = module.rpartition(".")[0]
        return module or None

    def edges(self) -> dict[str, dict[str, int]]:
        """module -> {module it imports: first line}, within the graph; a submodule importing a
        parent package by name counts (that is a cycle when the package imports it back)."""
        g: dict[str, dict[str, int]] = {}
        for name in self.modules:
            deps: dict[str, int] = {}
            for imp, mod, _how in self.reached(name):
                k = self.known(mod)
                if k and k != name:
                    deps.setdefault(k, imp.line)
            g[name] = deps
        return g

    def cycles(self) -> list[list[str]]:
        """Every strongly connected component of more than one module (Tarjan), as a path."""
        g = self.edges()
        index, low, on, stack, comps = {}, {}, set(), [], []
        counter = [0]

        def strong(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in sorted(g[v]):
                if w not in index:
                    strong(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))

        for v in sorted(g):
            if v not in index:
                strong(v)
        return comps

    def describe_cycle(self, comp: list[str]) -> str:
        g = self.edges()
        lines = []
        for a in comp:
            for b, line in sorted(g[a].items()):
                if b in comp:
                    lines.append(f"{a}:{line} -> {b}")
        return "cycle " + " <-> ".join(comp) + ":\n    " + "\n    ".join(lines)


# ---- the rules, as functions of a graph (the synthetic tests below feed them small graphs) ------
def engine_to_console(g: Graph) -> list[str]:
    return [f"{n}:{imp.line}: {how}" for n in sorted(g.modules) if _under(n, "engine")
            for imp, mod, how in g.reached(n) if _under(mod, "console")]


def console_outside_public(g: Graph, public=PUBLIC) -> list[str]:
    hits = []
    for n in sorted(g.modules):
        if not _under(n, "console"):
            continue
        for imp, mod, how in g.reached(n):
            if _under(mod, "engine") and mod != "engine" and not any(_under(mod, p) for p in public):
                hits.append(f"{n}:{imp.line}: {how}")
    return hits


def client_reexports_runtime(g: Graph, client: str = "engine.client") -> list[str]:
    m = g.modules[client]
    hits = []
    for local, (mod, name) in sorted(m.bindings.items()):
        o_mod, _ = g.origin(mod, name)
        if _runtime(o_mod) and not local.startswith("_"):
            hits.append(f"{client}: `{local}` comes from {o_mod}: import it as `_{local}` (not an API of the client)")
    for exported in m.all or []:
        bound = m.bindings.get(exported)
        if bound and _runtime(g.origin(*bound)[0]):
            hits.append(f"{client}.__all__ lists `{exported}`, which comes from {g.origin(*bound)[0]}")
    return hits


def libraries_import_runtime(g: Graph, above=ABOVE_RUNTIME) -> list[str]:
    return [f"{n}:{imp.line}: {how}" for n in sorted(g.modules)
            if _under(n, "engine") and not _runtime(n) and n not in above
            for imp, mod, how in g.reached(n) if _runtime(mod)]


# ---- the real code ------------------------------------------------------------------------------
_REAL: list = []


def real() -> Graph:
    if not _REAL:
        _REAL.append(Graph.of_tree())
    return _REAL[0]


def test_the_graph_sees_the_real_code():
    g = real()
    assert {"engine.client", "engine.runtime.supervisor", "console.cli", "console.bench"} <= set(g.modules)
    # a sample of real edges, one of each kind the scan reads
    assert any(i.module == "engine.runtime.supervisor" and i.local for i in g.modules["engine.client"].imports)
    assert "engine.config.schema" in g.edges()["engine.config.loading"]


def test_engine_never_imports_the_console():
    hits = engine_to_console(real())
    assert not hits, "\n".join(hits)


def test_console_reaches_the_engine_only_through_public_modules():
    assert not [p for p in PUBLIC if _runtime(p)], "engine.runtime cannot be public"
    hits = console_outside_public(real())
    assert not hits, ("the console reaches the engine through engine.client and the modules in "
                      "PUBLIC (tests/test_architecture.py):\n" + "\n".join(hits))


def test_every_public_module_exists():
    g = real()
    missing = [p for p in PUBLIC if p not in g.modules]
    assert not missing, f"PUBLIC names modules that do not exist: {missing}"


def test_the_client_reexports_no_runtime_name():
    hits = client_reexports_runtime(real())
    assert not hits, "\n".join(hits)


def test_engine_libraries_never_import_the_runtime():
    """The libraries the runtime is built from (models, rewards, config, data, ...) import
    nothing from engine.runtime, lazily or not; the config's checks included."""
    hits = libraries_import_runtime(real())
    assert not hits, "\n".join(hits)


def test_no_import_cycle_anywhere():
    g = real()
    cycles = g.cycles()
    assert not cycles, "\n".join(g.describe_cycle(c) for c in cycles)


def test_algorithms_is_pure():
    allowed = {"__future__", "math", "typing", "dataclasses", "torch"}
    hits = [f"engine/algorithms.py:{imp.line}: {imp.how}s {imp.module}"
            for imp in real().modules["engine.algorithms"].imports
            if imp.module.split(".")[0] not in allowed]
    assert not hits, "\n".join(hits)


# ---- the checker itself, on small synthetic code bases ------------------------------------------
def _fake(**mods: str) -> Graph:
    """A code base from sources; a name ending in ``__init__`` is a package."""
    base = {
        "engine": ("", True),
        "engine.runtime": ("", True),
        "engine.runtime.rundir": ("class RunDir:\n    pass\n", False),
        "engine.records": ("class RunInfo:\n    pass\n", False),
        "engine.client": ("from engine.records import RunInfo\n"
                          "from engine.runtime.rundir import RunDir as _RunDir\n"
                          "__all__ = ['RunInfo']\n", False),
        "console": ("", True),
        "console.screens": ("", True),
    }
    for k, src in mods.items():
        name = k.replace("__", ".").removesuffix(".init")
        base[name] = (src, k.endswith("__init"))
    return Graph(base)


def test_the_fake_base_itself_passes_every_rule():
    g = _fake(console__ok="from engine.client import RunInfo\nimport engine.client as c\nc.RunInfo\n")
    assert console_outside_public(g) == []
    assert client_reexports_runtime(g) == []
    assert engine_to_console(g) == []
    assert g.cycles() == []


def test_console_bypasses_are_reported():
    for src in (
        "import engine.runtime.rundir\n",
        "from engine.runtime import rundir\n",
        "from engine import runtime\n",
        "def f():\n    from engine.runtime.rundir import RunDir\n",
        "import importlib\nrd = importlib.import_module('engine.runtime.rundir')\n",
        "from importlib import import_module\ndef f():\n    return import_module('.rundir', 'engine.runtime')\n",
        "mod = __import__('engine.runtime.rundir', fromlist=['RunDir'])\n",
        "import engine\ndef f():\n    return engine.runtime.rundir.RunDir\n",
        "from engine.client import _RunDir\n",               # a re-export, private or not
        "import engine.client as c\nc._RunDir()\n",          # the same through an attribute
    ):
        hits = console_outside_public(_fake(console__screens__probe=src))
        assert hits and all("engine.runtime" in h for h in hits), src
        assert hits[0].startswith("console.screens.probe:"), hits


def test_a_reexport_through_the_client_is_reported_on_both_sides():
    g = _fake(engine__client="from engine.runtime.rundir import RunDir\n__all__ = ['RunDir']\n",
              console__bench="from engine.client import RunDir\n")
    hits = console_outside_public(g)
    assert hits == ["console.bench:1: takes RunDir from engine.client, which has it from engine.runtime.rundir"]
    mine = client_reexports_runtime(g)
    assert len(mine) == 2 and "`RunDir` comes from engine.runtime.rundir" in mine[0] and "__all__" in mine[1]
    # two hops: client -> a public module -> the runtime
    g2 = _fake(engine__records="from engine.runtime.rundir import RunDir\n",
               engine__client="from engine.records import RunDir\n",
               console__bench="from engine.client import RunDir\n")
    assert console_outside_public(g2) == [
        "console.bench:1: takes RunDir from engine.client, which has it from engine.runtime.rundir"]
    assert client_reexports_runtime(g2)


def test_a_module_outside_the_public_list_is_reported():
    g = _fake(engine__models="X = 1\n", console__app="from engine.models import X\n")
    assert console_outside_public(g) == ["console.app:1: imports X from engine.models"]
    assert console_outside_public(g, public={**PUBLIC, "engine.models": ""}) == []


def test_engine_importing_the_console_is_reported():
    g = _fake(console__model="X = 1\n",
              engine__data="def f():\n    import importlib\n    return importlib.import_module('console.model')\n")
    assert engine_to_console(g) == ["engine.data:3: imports console.model (importlib/__import__)"]


def test_a_library_importing_the_runtime_is_reported():
    g = _fake(engine__config__init="", engine__config__checks=(
        "def check():\n    from engine.runtime.rundir import RunDir\n"))
    assert libraries_import_runtime(g) == ["engine.config.checks:2: imports RunDir from engine.runtime.rundir"]


def test_cycles_are_found_inside_functions_and_through_importlib():
    g = _fake(engine__a="from engine import b\n",
              engine__b="def f():\n    from engine.a import g\n")
    assert g.cycles() == [["engine.a", "engine.b"]]
    assert "engine.b:2 -> engine.a" in g.describe_cycle(g.cycles()[0])
    g = _fake(console__cli="def main():\n    from console.app_cli import run\n",
              console__app_cli="import importlib\ndef run():\n    importlib.import_module('console.cli').main()\n")
    assert g.cycles() == [["console.app_cli", "console.cli"]]
    # three modules, and a package whose submodule imports it back
    g = _fake(engine__a="import engine.b\n", engine__b="import engine.c\n", engine__c="def f():\n    import engine.a\n")
    assert g.cycles() == [["engine.a", "engine.b", "engine.c"]]
    g = _fake(engine__config__init="from engine.config.checks import x\n",
              engine__config__checks="import engine.config as _probes\nx = 1\n")
    assert g.cycles() == [["engine.config", "engine.config.checks"]]
    # a typing-only import never runs: no edge
    g = _fake(engine__a="from engine import b\n",
              engine__b="from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from engine.a import A\n")
    assert g.cycles() == []


# ---- the module list in the docs --------------------------------------------------------------
def _architecture_table() -> tuple[Path, str]:
    """The one-job-per-module table: docs/architecture.md, or README's Architecture section."""
    doc = ROOT / "docs" / "architecture.md"
    if doc.exists():
        return doc, doc.read_text()
    text = (ROOT / "README.md").read_text()
    start = text.index("## Architecture")
    end = text.find("\n## ", start + 1)
    return ROOT / "README.md", text[start: end if end > 0 else len(text)]


def test_architecture_doc_lists_every_module_once():
    """The architecture table names every module of engine/ and console/ (and no module that is
    gone), so it stays true as modules come and go."""
    where, section = _architecture_table()
    listed = re.findall(r"^\| `((?:engine|console)/[\w/]+\.py)` \| \S", section, flags=re.M)
    on_disk = sorted(str(p.relative_to(ROOT)) for folder in ("engine", "console")
                     for p in (ROOT / folder).rglob("*.py"))
    assert len(listed) == len(set(listed)), f"{where.name}: a module is listed twice"
    missing = sorted(set(on_disk) - set(listed))
    gone = sorted(set(listed) - set(on_disk))
    assert not missing, f"{where.relative_to(ROOT)}: add a line (its one job) for {missing}"
    assert not gone, f"{where.relative_to(ROOT)} lists modules that do not exist: {gone}"


def test_a_cli_command_that_reads_files_does_not_import_torch(tmp_path):
    """``rlhf-console runs`` (and every command's sweep of a killed run's leftovers) reads files
    only: importing torch would add about a second to each command on 2 cores."""
    import subprocess
    import sys

    code = ("import sys; from console.cli import main; rc = main(['--runs-dir', sys.argv[1], 'runs']); "
            "print('torch' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False 0", out.stdout + out.stderr
