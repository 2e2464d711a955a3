"""The documentation that is generated or quoted must match the code."""
import re
import subprocess
from pathlib import Path

from engine.config import schema_reference_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_is_generated_from_the_schema():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc.strip() == schema_reference_markdown().strip(), (
        "docs/configuration.md is stale: regenerate with `python -m engine.config --reference > docs/configuration.md`")


def test_ci_runs_the_readme_test_command():
    """.ci/run's own extraction (its awk line, run here on README.md) yields the README's
    quick-start test line, which installs the pinned torch, runs pytest and is valid bash."""
    readme = (ROOT / "README.md").read_text().splitlines()
    i = readme.index("<!-- test-command -->")
    assert readme[i + 1].startswith("```")
    cmd = readme[i + 2]
    assert "pytest" in cmd and "torch==2.13.0" in cmd
    ci = (ROOT / ".ci" / "run").read_text()
    m = re.search(r"""^cmd=\$\(awk '([^']+)' README\.md\)$""", ci, flags=re.M)
    assert m, ".ci/run no longer reads its command from README.md with awk"
    extracted = subprocess.run(["awk", m.group(1), "README.md"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.rstrip("\n")
    assert extracted == cmd
    assert re.search(r'^bash -c "\$cmd" \|\| rc=\$\?$', ci, flags=re.M), ".ci/run does not run what it extracted"
    assert re.search(r'^exit "\$rc"$', ci, flags=re.M), ".ci/run does not exit with the command's status"
    syntax = subprocess.run(["bash", "-n", "-c", extracted], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
