"""The documentation points at things that exist, and the README keeps starting the way a person does.

- Every repository path and every ``distil_platform.*`` module that ``docs/architecture.md`` names in
  backticks exists: the map from the asset graph's stages to the code is only useful while it is true.
  The other current docs (README.md, docs/*.md) are held to the same rule.
- Every relative link in README.md, docs/ (history included) and benchmarks/README.md resolves: the
  file exists and, for a link into a Markdown file, so does the heading its ``#anchor`` names.
- README.md has at most 160 lines and its first section is the two commands.

Pure file reading: no imports of the platform, no network.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

import pytest
from conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
ARCHITECTURE = DOCS / "architecture.md"
# The docs that describe the tree as it is now (docs/history/ records the tree of its day).
CURRENT_DOCS = [README, *sorted(DOCS.glob("*.md"))]
LINKED_DOCS = [*CURRENT_DOCS, *sorted((DOCS / "history").glob("*.md")),
               REPO_ROOT / "benchmarks" / "README.md"]
README_MAX_LINES = 160

# Folders that hold code: a bare module name (`paths.py`) must be one of their files.
CODE_DIRS = ("distil_platform", "assets", "resources", "sensors", "benchmarks", "tests", "deploy", ".ci")
# Where a relative path in the docs may be rooted: the repository, or the domain core
# (`scoring/`, `tasks/*.yaml` in docs/architecture.md's section on `distil_platform/`).
PATH_BASES = (REPO_ROOT, REPO_ROOT / "distil_platform")
RUNTIME_DIRS = {"test-artifacts", ".dagster_home", ".venv", ".venv-vllm"}
FILE_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".json", ".jsonl", ".csv", ".sh", ".cfg",
                 ".ini", ".mako", ".Dockerfile", ".gz", ".parquet"}
# pyproject.toml's setuptools package-dir: these subpackages live in top-level folders.
PACKAGE_DIRS = {"distil_platform.assets": "assets", "distil_platform.resources": "resources",
                "distil_platform.sensors": "sensors", "distil_platform": "distil_platform"}

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_INLINE_LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_USE = re.compile(r"\[([^\]]+)\]\[([^\]]*)\]")
_REF_DEF = re.compile(r"^\s{0,3}\[([^\]]+)\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_MODULE = re.compile(r"\bdistil_platform(?:\.[A-Za-z_]\w*)+")


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def _code_spans(path: Path) -> list[tuple[int, str]]:
    return [(n, m.group(2).strip()) for n, line in _prose_lines(path) for m in _CODE_SPAN.finditer(line)]


def _without_code_spans(line: str) -> str:
    return _CODE_SPAN.sub("", line)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    kept = [ch for ch in text.strip().lower() if ch in " -_" or unicodedata.category(ch)[0] in "LNM"]
    return "".join(kept).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for _, line in _prose_lines(path):
        m = _HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


# --- repository paths named in backticks -------------------------------------------------------------


def _is_candidate_path(span: str) -> bool:
    """A backticked span that names a file or folder of the repository (not a command, an asset key,
    an environment variable, a URL, a runtime location such as `$DAGSTER_HOME/...`)."""
    if not span or any(c.isspace() for c in span) or any(c in span for c in "=|,:;\"'()[]{}"):
        return False
    if span.startswith(("$", "/", "~", "..", "-")) or "://" in span:
        return False
    if "/" not in span:  # a bare file name: only module names are checked (see _bare_module_exists)
        return span.endswith(".py") and span.count(".") == 1
    last = span.rstrip("/").rsplit("/", 1)[-1]
    if not (span.endswith("/") or Path(last).suffix in FILE_SUFFIXES or last.endswith(".Dockerfile")):
        return False  # `config/pricing_file`, `dagster-k8s/config`: asset keys and tags, not paths
    first = span.split("/", 1)[0]  # `<base>/T/...` is a runtime location, not a folder of the tree
    if first in RUNTIME_DIRS:  # written by a run, git-ignored: present or not depending on what ran
        return False
    return any((base / first).exists() for base in PATH_BASES)


def _glob_pattern(span: str) -> str:
    return re.sub(r"<[^>]*>", "*", span.rstrip("/"))


def _path_exists(span: str) -> bool:
    if "/" not in span:
        return any(next((REPO_ROOT / d).rglob(span), None) is not None
                   for d in CODE_DIRS if (REPO_ROOT / d).is_dir())
    pattern = _glob_pattern(span)
    for base in PATH_BASES:
        if "*" in pattern:
            if any(True for _ in base.glob(pattern)):
                return True
        elif (base / pattern).exists():
            return True
    return False


def _module_exists(dotted: str) -> bool:
    """`distil_platform.x.y` is a module or package, or `distil_platform.x` is and `y` is a name in it."""
    parts = dotted.split(".")
    for cut in (len(parts), len(parts) - 1):
        head = parts[:cut]
        for n in range(len(head), 0, -1):
            package = ".".join(head[:n])
            if package in PACKAGE_DIRS:
                folder = REPO_ROOT / PACKAGE_DIRS[package]
                if head[n:]:
                    folder = folder.joinpath(*head[n:])
                if folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file():
                    return True
                break
    return False


def _missing_paths(doc: Path) -> list[str]:
    missing = []
    for number, span in _code_spans(doc):
        if _is_candidate_path(span) and not _path_exists(span):
            missing.append(f"{doc.relative_to(REPO_ROOT)}:{number}: `{span}` does not exist")
        for dotted in _MODULE.findall(span):
            if not _module_exists(dotted):
                missing.append(f"{doc.relative_to(REPO_ROOT)}:{number}: module `{dotted}` does not exist")
    return missing


def test_architecture_names_only_paths_that_exist():
    spans = [s for _, s in _code_spans(ARCHITECTURE)]
    checked = [s for s in spans if _is_candidate_path(s)] + [m for s in spans for m in _MODULE.findall(s)]
    assert len(checked) >= 10, f"docs/architecture.md should map the stages to files; found only {checked}"
    assert _missing_paths(ARCHITECTURE) == []


@pytest.mark.parametrize("doc", [d for d in CURRENT_DOCS if d != ARCHITECTURE], ids=lambda p: p.name)
def test_current_docs_name_only_paths_that_exist(doc):
    assert _missing_paths(doc) == []


def test_path_rules():
    assert _is_candidate_path("assets/seed.py") and _is_candidate_path("distil_platform/data/<task>/")
    assert _is_candidate_path("tasks/*.yaml") and _is_candidate_path("paths.py")
    for not_a_path in ("config/pricing_file", "config/T_prompt", "dagster-k8s/config",
                       "$DAGSTER_HOME/results.db", "distil/trigger=automation", "nvidia.com/gpu",
                       "python -m distil_platform.storage.migrate",
                       "DISTIL_DATA_TEXT2SQL=/data/text2sql", "s3://bucket/prefix", "test-artifacts/ui/",
                       "<base>/T/seed_set/<run>/"):
        assert not _is_candidate_path(not_a_path), not_a_path
    assert _path_exists("distil_platform/tasks/<name>.yaml") and not _path_exists("assets/no_such_stage.py")
    assert _module_exists("distil_platform.assets") and _module_exists("distil_platform.definitions")
    assert not _module_exists("distil_platform.no_such_module.thing")


# --- relative links -----------------------------------------------------------------------------------


def _links(doc: Path) -> list[tuple[int, str]]:
    links, definitions = [], {}
    for number, line in _prose_lines(doc):
        d = _REF_DEF.match(line)
        if d:
            definitions[d.group(1).lower()] = d.group(2)
            links.append((number, d.group(2)))
            continue
        links += [(number, m.group(2)) for m in _INLINE_LINK.finditer(_without_code_spans(line))]
    for number, line in _prose_lines(doc):
        for m in _REF_USE.finditer(_without_code_spans(line)):
            ref = (m.group(2) or m.group(1)).lower()
            if ref not in definitions:
                links.append((number, f"[undefined reference: {ref}]"))
    return links


def _broken_links(doc: Path) -> list[str]:
    broken = []
    for number, target in _links(doc):
        where = f"{doc.relative_to(REPO_ROOT)}:{number}: {target}"
        if target.startswith("[undefined reference"):
            broken.append(where)
            continue
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = Path(os.path.normpath(doc.parent / file_part)) if file_part else doc
        if resolved != REPO_ROOT and REPO_ROOT not in resolved.parents:
            broken.append(f"{where}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{where}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{where}: no heading with that anchor")
    return broken


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(doc):
    assert _broken_links(doc) == []


def test_slug_rules():
    assert github_slug("`make run` on vLLM-CPU, quiet (lead, 2026-12-01 14:23 UTC)") == \
        "make-run-on-vllm-cpu-quiet-lead-2026-12-01-1423-utc"
    assert github_slug("Distributed storage: SQLite + local disk") == "distributed-storage-sqlite--local-disk"
    assert github_slug("The asset graph (per task `T`, Dagster group `T`)") == \
        "the-asset-graph-per-task-t-dagster-group-t"


# --- the README ---------------------------------------------------------------------------------------


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move reference material to docs/")


def test_readme_starts_with_the_two_commands():
    sections = [(n, m.group(2)) for n, line in _prose_lines(README)
                if (m := _HEADING.match(line)) and len(m.group(1)) == 2]
    assert sections, "README.md has no level-2 heading"
    number, first = sections[0]
    assert "two commands" in first.lower(), f"README.md's first section is {first!r}, not the two commands"
    lines = README.read_text(encoding="utf-8").splitlines()
    section = "\n".join(lines[number:sections[1][0] - 1] if len(sections) > 1 else lines[number:])
    assert "make run" in section and "make test" in section, "the first section should show both commands"
