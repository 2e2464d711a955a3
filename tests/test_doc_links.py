"""The README and docs/ link only to files (and headings) that exist, the README stays a short
manual, and the docs index lists every dated result."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# [text](target) and ![alt](target); the target ends at the first space or closing parenthesis
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~)")


def _docs() -> list[Path]:
    """The manual and the hand-written docs: README.md, docs/*.md and docs/guides/*.md. The run
    reports under docs/results/ are written by `rlhf-console report` and checked by its tests."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted((ROOT / "docs" / "guides").glob("*.md"))]


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a code block may hold `[x](y)` that is no link)."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file: lower case, punctuation dropped, spaces to
    hyphens, a repeated heading numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    anchors = set()
    fenced = False
    for line in md.read_text().splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
        if fenced or not re.match(r"#{1,6} ", line):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(md: Path) -> list[str]:
    return _LINK.findall(_prose(md.read_text()))


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = []
    for md in _docs():
        for target in _links(md):
            if re.match(r"[a-z]+:", target):  # https:, mailto: — not checked offline
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            where = f"{md.relative_to(ROOT)} -> {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert broken == [], "broken links:\n" + "\n".join(broken)


def test_the_link_check_finds_a_broken_link_and_a_broken_anchor(tmp_path):
    """The checker itself can fail: a missing file and a missing heading are both reported."""
    (tmp_path / "a.md").write_text("# Title\n\n## Some `code` here\n")
    md = tmp_path / "b.md"
    md.write_text("[ok](a.md#some-code-here) [gone](missing.md) [bad](a.md#nope)\n"
                  "```\n[in code](ignored.md)\n```\n")
    assert _links(md) == ["a.md#some-code-here", "missing.md", "a.md#nope"]
    assert "some-code-here" in _anchors(tmp_path / "a.md")
    assert "nope" not in _anchors(tmp_path / "a.md")


def test_readme_is_a_manual_of_at_most_300_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move details into docs/"


def test_readme_links_every_guide_and_the_docs_index():
    readme_links = {t.partition("#")[0] for t in _links(ROOT / "README.md")}
    wanted = {f"docs/guides/{p.name}" for p in (ROOT / "docs" / "guides").glob("*.md")}
    assert wanted, "docs/guides/ has no guide"
    wanted |= {"docs/README.md", "docs/configuration.md", "docs/CONTRACTS.md", "docs/performance.md"}
    assert sorted(wanted - readme_links) == [], "README.md does not link these"


def test_docs_index_lists_every_result():
    """Each report (`*.md`) and each folder under docs/results/ has a line in docs/README.md."""
    index = {t.partition("#")[0] for t in _links(ROOT / "docs" / "README.md")}
    results = ROOT / "docs" / "results"
    entries = sorted(p for p in results.iterdir() if p.is_dir() or p.suffix == ".md")
    unlisted = [p.name for p in entries
                if not any(t == f"results/{p.name}" or t.startswith(f"results/{p.name}/") for t in index)]
    assert unlisted == [], f"docs/README.md (Results) has no line for {unlisted}"
