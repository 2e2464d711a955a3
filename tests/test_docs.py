"""The documentation that is generated or quoted must match the code."""
from pathlib import Path

from engine.config import schema_reference_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_is_generated_from_the_schema():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc.strip() == schema_reference_markdown().strip(), (
        "docs/configuration.md is stale: regenerate with `python -m engine.config --reference > docs/configuration.md`")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    i = readme.index("<!-- test-command -->")
    assert readme[i + 1].startswith("```")
    cmd = readme[i + 2]
    assert "pytest" in cmd and "torch==2.13.0" in cmd
    assert "test-command" in (ROOT / ".ci" / "run").read_text()


def test_engine_never_imports_console():
    offenders = []
    for f in (ROOT / "engine").rglob("*.py"):
        for line in f.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import console", "from console")):
                offenders.append(f"{f.relative_to(ROOT)}: {s}")
    assert offenders == []
