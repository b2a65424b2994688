"""Shared test fixtures: every test gets its own DAGSTER_HOME and results store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCHMARK = REPO_ROOT.parent / "shared" / "benchmark" / "related"


@pytest.fixture(scope="session")
def _shared_models_dir(tmp_path_factory) -> Path:
    # Base models (tiny-qwen3, dequantised SmolLM2) are built once per test session.
    return Path(os.environ.get("DISTIL_TEST_MODELS_DIR") or tmp_path_factory.mktemp("models"))


@pytest.fixture(autouse=True)
def _isolated_dagster_home(tmp_path, monkeypatch, _shared_models_dir):
    monkeypatch.setenv("DISTIL_MODELS_DIR", str(_shared_models_dir))
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("DISTIL_DB_URL", raising=False)
    monkeypatch.delenv("DISTIL_TASKS_DIR", raising=False)
    monkeypatch.delenv("DISTIL_PRICING_FILE", raising=False)
    yield home


@pytest.fixture
def shared_benchmark() -> Path:
    if not SHARED_BENCHMARK.is_dir():
        pytest.skip("../shared/benchmark is not present")
    return SHARED_BENCHMARK
