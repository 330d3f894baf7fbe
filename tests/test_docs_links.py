"""The documentation holds together: links resolve, method citations point at docs/methods.md, docs ship.

- every relative link and image of README.md, docs/ and the plugins' READMEs names an existing file, and every
  ``#anchor`` an existing heading (GitHub's heading ids);
- the method notes that recipes, docs and code cite are the project's own page: every ``methods.md`` in a
  project file is ``docs/methods.md`` or a markdown link to it, and every cited section number exists there;
- the wheel installs README.md and every file of docs/ under ``share/doc/milzoo`` with their layout (so the
  README's links work there) and the sdist carries docs/; tests/test_recipes_wheel.py builds and installs it;
- ``milzoo.__version__`` is the distribution's version and ``dir(milzoo)`` lists the public API;
- the example plugin's milzoo pin is the one docs/plugins.md shows, and docs/plugins.md lists every contract
  check that runs.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ROOT / "docs" / "methods.md"

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
#: [text](target) and ![alt](target); the target ends at the first space (an optional "title" may follow)
_LINK = re.compile(r"!?\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_NUM = r"\d+(?:\.\d+){0,2}"


def _project_files() -> list[Path]:
    """Tracked files plus new ones that git does not ignore (what the next commit can hold)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return sorted({ROOT / name for name in out.split("\0") if name and (ROOT / name).is_file()})


def _text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _prose(markdown: str) -> str:
    """The markdown without fenced code blocks and code spans (links there are examples, not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", markdown))


def heading_ids(markdown: str) -> set[str]:
    """GitHub's ids of a page's headings: lower case, punctuation dropped, spaces to '-', '-1'... for repeats."""
    ids: set[str] = set()
    seen: dict[str, int] = {}
    for line in _FENCE.sub("", markdown).splitlines():
        m = re.match(r"#{1,6} +(.*?) *#*$", line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link in a heading keeps its text
        base = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(base, 0)
        seen[base] = n + 1
        ids.add(base if n == 0 else f"{base}-{n}")
    return ids


def method_sections(markdown: str) -> set[str]:
    """Numbers that docs/methods.md defines: '7', '7.8' from headings, '2.7.3' for item 3 of section 2.7."""
    numbers: set[str] = set()
    current = None
    for line in _FENCE.sub("", markdown).splitlines():
        head = re.match(r"#{2,3} +(\d+(?:\.\d+)?)\.? ", line)
        if head:
            current = head.group(1)
            numbers.add(current)
            continue
        item = re.match(r"(\d+)\. ", line)
        if item and current is not None:
            numbers.add(f"{current}.{item.group(1)}")
    return numbers


def _markdown_pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted(ROOT.glob("plugins/*/README.md"))]
    return [p for p in pages if p.is_file()]


def test_every_relative_link_resolves():
    ids_of: dict[Path, set[str]] = {}

    def ids(page: Path) -> set[str]:
        if page not in ids_of:
            ids_of[page] = heading_ids(page.read_text(encoding="utf-8"))
        return ids_of[page]

    broken = []
    for page in _markdown_pages():
        for m in _LINK.finditer(_prose(page.read_text(encoding="utf-8"))):
            target = m.group("target")
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no file {path}")
            elif anchor and dest.suffix == ".md" and anchor not in ids(dest):
                broken.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_heading_ids_follow_github():
    page = "# A `code` title: x.y\n## 7.8 The WSI protocol\n## Same\n## Same\n```\n# not a heading\n```\n"
    assert heading_ids(page) == {"a-code-title-xy", "78-the-wsi-protocol", "same", "same-1"}


def test_method_citations_are_the_projects_own_page():
    """No file cites method notes outside the project: every ``methods.md`` is docs/methods.md or a link to it."""
    bad = []
    for path in _project_files():
        text = _text(path) if path != Path(__file__).resolve() else None  # this file names what it looks for
        if text is None or ("methods.md" not in text and "shared/reference" not in text):
            continue
        rel = path.relative_to(ROOT)
        for lineno, line in enumerate(text.splitlines(), 1):
            if "shared/reference" in line:
                bad.append(f"{rel}:{lineno}: names a private reference folder: {line.strip()}")
            # a markdown link to the page is a reference to it (test_every_relative_link_resolves checks docs/)
            rest = re.sub(r"\[[^\]]*\]\((?:\.\./)*(?:docs/)?methods\.md(?:#[\w-]*)?\)", "", line)
            if re.search(r"(?<!docs/)methods\.md", rest):
                bad.append(f"{rel}:{lineno}: {line.strip()}")
    assert not bad, ("cite the project's page as docs/methods.md (or link it from docs/):\n" + "\n".join(bad))


def test_cited_method_sections_exist():
    sections = method_sections(METHODS.read_text(encoding="utf-8"))
    assert {"0.1", "2.7.3", "7.8", "8.1", "9.1"} <= sections
    cite = re.compile(r"(?:docs/methods\.md|\[methods\.md)(?:,? sections?)? (" + _NUM + r")((?:(?:, | and )"
                      + _NUM + r")*)")
    missing = []
    for path in _project_files():
        text = _text(path)
        if text is None or "methods.md" not in text:
            continue
        for m in cite.finditer(text):
            numbers = [m.group(1), *re.findall(_NUM, m.group(2))]
            missing += [f"{path.relative_to(ROOT)}: {n}" for n in numbers if n.rstrip(".") not in sections]
    assert not missing, "sections cited but not in docs/methods.md:\n" + "\n".join(missing)


def test_method_sections_parser():
    page = "## 2. DSMIL\n1. not in a subsection\n### 2.7 Pitfalls\n1. one\n2. two\n## 9. Numbers\n### 9.1 Classic\n"
    assert method_sections(page) == {"2", "2.1", "2.7", "2.7.1", "2.7.2", "9", "9.1"}


def test_the_wheel_installs_the_docs_and_the_sdist_carries_them():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    installed = {}
    for dest, patterns in config.items():
        for pattern in patterns:
            for f in ROOT.glob(pattern):
                installed[f.relative_to(ROOT).as_posix()] = dest
    wanted = ["README.md"] + [p.relative_to(ROOT).as_posix() for p in _project_files()
                              if p.is_relative_to(ROOT / "docs")]
    wrong = {f: installed.get(f) for f in wanted if installed.get(f) != str(Path("share/doc/milzoo", f).parent)}
    assert not wrong, f"files of docs/ the wheel would not install in place (pyproject data-files): {wrong}"
    manifest = (ROOT / "MANIFEST.in").read_text().split("\n")
    assert "graft docs" in manifest and "include README.md" in manifest


def test_version_and_public_names():
    import milzoo

    assert milzoo.__version__ == importlib.metadata.version("milzoo")
    assert set(milzoo._EXPORTS) <= set(dir(milzoo))
    assert sorted(milzoo.__all__) == sorted(milzoo._EXPORTS)


def _snippet_pin(text: str) -> str:
    pins = set(re.findall(r'dependencies = \["(milzoo[^"]*)"\]', text))
    assert len(pins) == 1, pins
    return pins.pop()


def test_example_plugin_pin_matches_the_docs():
    from packaging.requirements import Requirement

    example = ROOT / "plugins" / "milzoo-example-pooling"
    deps = tomllib.loads((example / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if Requirement(d).name == "milzoo")
    assert pin == _snippet_pin((ROOT / "docs" / "plugins.md").read_text())
    assert pin == _snippet_pin((example / "README.md").read_text())
    assert Requirement(pin).specifier.contains(importlib.metadata.version("milzoo"))
    readme = (example / "README.md").read_text()
    assert "first registration wins" not in readme and "distribution:name" in readme


@pytest.mark.parametrize("kind", ["encoder", "pooling", "loss", "augment", "task"])
def test_plugins_doc_lists_every_contract_check(kind):
    from milzoo.testing import checks_for

    table = [line for line in (ROOT / "docs" / "plugins.md").read_text().splitlines()
             if line.startswith("| `check_")]
    listed = {name for line in table for name in re.findall(r"`(check_\w+)`", line.split("|")[1])}
    missing = [c.__name__ for c in checks_for(kind) if c.__name__ not in listed]
    assert not missing, f"docs/plugins.md's table of checks lacks: {missing}"



def test_the_packaged_description_has_no_relative_link():
    """What a package index shows (each distribution's `readme`) must not hold links that only work in a checkout:
    the project has no public web address, so the description says where the installed docs are instead."""
    for pyproject in [ROOT / "pyproject.toml", *sorted((ROOT / "plugins").glob("*/pyproject.toml"))]:
        readme = tomllib.loads(pyproject.read_text())["project"].get("readme")
        if readme is None:
            continue
        path = pyproject.parent / (readme if isinstance(readme, str) else readme["file"])
        text = _CODE_SPAN.sub("", _FENCE.sub("", path.read_text()))
        relative = [m.group("target") for m in _LINK.finditer(text) if "://" not in m.group("target")]
        assert not relative, f"{path.relative_to(ROOT)} (the packaged description) links {relative}"
