"""The Makefile's documented knobs do what the README says (dry runs: `make -n`, nothing installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry(*args: str) -> str:
    out = subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_torch_spec_really_changes_torch():
    # The constraint applied after TORCH_SPEC must not pin another torch (it did: torch==2.13.0).
    assert not re.search(r"^\s*torch\s*[=<>~!]", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    plan = _dry("venv", "TORCH_SPEC=torch==2.9.1")
    assert 'pip install -q "torch==2.9.1"' in plan
    install = next(line for line in plan.splitlines() if "-e '.[dev]'" in line)
    assert "torch-constraint.txt" in install  # pins whatever TORCH_SPEC installed


def test_every_script_the_makefile_runs_exists():
    scripts = set(re.findall(r"((?:benchmarks|scripts|tools|\.ci)/[\w./-]+\.(?:py|sh))", (ROOT / "Makefile").read_text()))
    missing = sorted(s for s in scripts if not (ROOT / s).exists())
    assert not missing, f"the Makefile runs scripts that do not exist: {missing}"
