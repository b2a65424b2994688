"""The house rules of the domain core (issue 29), checked from the source, not by convention.

- No import circle among ``distil_platform``'s modules, counting imports inside functions and
  ``TYPE_CHECKING`` blocks (a circle hidden in a function is still a circle a reader has to untangle).
- The core never imports the Dagster wiring (``distil_platform.assets``/``resources``/``sensors``).
- No module of the core over ``MAX_LINES`` lines unless its docstring says why in a line starting
  ``One module despite its length:``.
- No module imports another module's private (``_``-prefixed) names: what one module needs from
  another is that module's public API.

``.ci/run`` runs this file before the suite (seconds), so a returning circle fails CI early.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = "distil_platform"
WIRING = {"distil_platform.assets": "assets", "distil_platform.resources": "resources",
          "distil_platform.sensors": "sensors"}
MAX_LINES = 500
LENGTH_REASON = "One module despite its length:"


def _modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (a package named ``package``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = [package, *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [a.name for a in node.names]
            # `from pkg import submodule` depends on the submodule, not on pkg's __init__
            subs = [n for n in names if f"{base}.{n}" in known]
            rest = [n for n in names if f"{base}.{n}" not in known]
            found.extend((f"{base}.{n}", [], node.lineno) for n in subs)
            if rest:
                found.append((base, rest, node.lineno))
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for target, _names, _line in _imports(mod, path, known):
            if target in known and target != mod:
                graph[mod].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def oversized(modules: dict[str, Path], limit: int = MAX_LINES) -> list[str]:
    bad = []
    for path in modules.values():
        text = path.read_text(encoding="utf-8")
        n = text.count("\n")
        if n > limit and LENGTH_REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            bad.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {n} lines")
    return bad


def private_imports(modules: dict[str, Path], known: set[str]) -> list[str]:
    bad = []
    for mod, path in modules.items():
        for target, names, line in _imports(mod, path, known):
            if target in known and target != mod:
                bad += [f"{path.name}:{line} imports {target}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    return bad


def _core() -> dict[str, Path]:
    return _modules(REPO / CORE, CORE)


def _wiring() -> dict[str, Path]:
    out = {}
    for pkg, folder in WIRING.items():
        out.update(_modules(REPO / folder, pkg))
    return out


def test_the_core_has_no_import_circle():
    cycle = find_cycle(import_graph(_core()))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_core_does_not_import_the_wiring():
    core = _core()
    known = set(core) | set(_wiring())
    bad = [f"{path.relative_to(REPO)}:{line} imports {target}"
           for mod, path in core.items() for target, _n, line in _imports(mod, path, known)
           if target.startswith(tuple(WIRING)) and mod != "distil_platform.definitions"]
    assert not bad, bad


def test_no_core_module_is_over_the_size_limit_without_a_reason():
    assert not oversized(_core()), oversized(_core())


def test_no_module_imports_another_modules_private_names():
    mods = {**_core(), **_wiring()}
    bad = private_imports(mods, set(mods))
    assert not bad, bad


# The checks themselves, on a package built here: each must be able to fail.


def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return _modules(root / "pkg", "pkg")


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    mods = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a/__init__.py": "",
        "pkg/a/store.py": "def f():\n    from pkg.a import migrate\n    return migrate\n",
        "pkg/a/migrate.py": "from .store import f\n",
        "pkg/b.py": "from pkg.a.store import f\n",
    })
    cycle = find_cycle(import_graph(mods))
    assert cycle is not None and set(cycle) == {"pkg.a.store", "pkg.a.migrate"}


def test_an_acyclic_package_passes(tmp_path):
    mods = _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "import json\n",
                             "pkg/b.py": "from pkg import a\nfrom pkg.a import json\n"})
    assert find_cycle(import_graph(mods)) is None


def test_private_names_and_size_are_caught(tmp_path):
    mods = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sql.py": "_Table = 1\n",
        "pkg/suite.py": "from pkg.sql import _Table\n",
        "pkg/long.py": '"""Long."""\n' + "x = 1\n" * 20,
        "pkg/long_ok.py": '"""Long.\n\nOne module despite its length: a grammar.\n"""\n' + "x = 1\n" * 20,
    })
    assert private_imports(mods, set(mods)) == ["suite.py:1 imports pkg.sql._Table"]
    assert [b.split(":")[0].rsplit("/", 1)[-1] for b in oversized(mods, limit=10)] == ["long.py"]


@pytest.mark.parametrize("module", ["distil_platform.definitions"])
def test_the_checker_sees_the_real_graph(module):
    """Guards the checker against reading nothing: the entry point imports the stages it wires."""
    core = _core()
    assert module in core and len(core) > 30
    graph = import_graph({**core, **_wiring()})
    assert any(t.startswith("distil_platform.assets") for t in graph[module])
