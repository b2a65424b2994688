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


def _make_value(expr: str, *args: str, env: dict[str, str] | None = None) -> str:
    """What ``expr`` expands to in a recipe of the Makefile (shell variables: ``$$NAME``)."""
    import os

    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "DISTIL_PROFILE", "TORCH_SPEC")}
    out = subprocess.run(["make", "-s", "--no-print-directory", "--eval", f'distil-print: ; @echo "[{expr}]"',
                          "distil-print", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False, env={**base, **(env or {})})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_hub_offline_only_for_the_profiles_that_need_nothing_from_the_hub():
    # Issue 32, finding 6: HF_HUB_OFFLINE=1 for everything made the gpu profile fail at its first download.
    assert _make_value("$$HF_HUB_OFFLINE") == "[1]"  # local, the default
    assert _make_value("$$HF_HUB_OFFLINE", "DISTIL_PROFILE=test") == "[1]"
    assert _make_value("$$HF_HUB_OFFLINE", "DISTIL_PROFILE=gpu") == "[]"
    assert _make_value("$$HF_HUB_OFFLINE", env={"DISTIL_PROFILE": "gpu"}) == "[]"
    # The user's own setting wins under any profile.
    assert _make_value("$$HF_HUB_OFFLINE", env={"HF_HUB_OFFLINE": "0"}) == "[0]"
    assert _make_value("$$HF_HUB_OFFLINE", env={"DISTIL_PROFILE": "gpu", "HF_HUB_OFFLINE": "1"}) == "[1]"


def test_the_venv_stamp_follows_the_torch_spec(tmp_path):
    # Issue 32, finding 6: one stamp for every TORCH_SPEC made `make TORCH_SPEC='torch' venv` a no-op
    # on a venv already built with CPU torch.
    venv = tmp_path / "venv"
    venv.mkdir()
    stamp = _make_value("$(STAMP)", f"VENV={venv}", "TORCH_SPEC=torch==2.13.0").strip("[]")
    assert stamp != _make_value("$(STAMP)", f"VENV={venv}", "TORCH_SPEC=torch").strip("[]")
    assert stamp == _make_value("$(STAMP)", f"VENV={venv}", "TORCH_SPEC=torch==2.13.0").strip("[]")  # stable
    Path(stamp).touch()  # a venv built with torch==2.13.0

    def plan(spec: str) -> str:
        out = subprocess.run(["make", "-n", "venv", f"VENV={venv}", f"TORCH_SPEC={spec}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "pip install" not in plan("torch==2.13.0")  # same spec: nothing to do
    other = plan("torch")
    # Another spec reinstalls, removing the torch of the previous spec first (pip would keep a CPU
    # torch as satisfying `torch`), and records the spec it installed.
    assert 'pip install -q "torch"' in other
    assert "= 'torch' ||" in other and "uninstall -q -y torch" in other
    assert "printf '%s' 'torch' >" in other and "torch-spec.txt" in other


def test_a_new_torch_spec_replaces_the_venvs_torch(tmp_path):
    """The venv recipe run for real against a stand-in venv whose pip and python log their calls (no
    install happens): a new spec uninstalls the old torch before installing, the same spec is a no-op."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls.log"
    for tool in ("pip", "python"):
        script = venv / "bin" / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n'
                          + ('echo "torch==0.0.0"\n' if tool == "python" else ""))
        script.chmod(0o755)

    def run(spec: str) -> list[str]:
        calls.write_text("")
        out = subprocess.run(["make", "venv", f"VENV={venv}", f"TORCH_SPEC={spec}"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return calls.read_text().splitlines()

    first = run("torch==2.13.0")  # a venv from before the spec was recorded: its torch is replaced
    assert first.index("pip uninstall -q -y torch") < first.index("pip install -q torch==2.13.0")
    assert (venv / "torch-spec.txt").read_text() == "torch==2.13.0"
    assert run("torch==2.13.0") == []  # same spec: the stamp is current
    cuda = run("torch")
    assert cuda.index("pip uninstall -q -y torch") < cuda.index("pip install -q torch")
    assert (venv / "torch-spec.txt").read_text() == "torch"
    stamp = _make_value("$(STAMP)", f"VENV={venv}", "TORCH_SPEC=torch").strip("[]")
    assert [str(p) for p in venv.glob(".installed*")] == [stamp]  # the previous spec's stamp is gone
