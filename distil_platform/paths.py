"""Where the platform writes things. Everything lives under ``$DAGSTER_HOME``."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def dagster_home() -> Path:
    """``$DAGSTER_HOME`` as an absolute, existing directory.

    Dagster silently keeps runs in a temporary directory without it, so we refuse to guess.
    """
    value = os.environ.get("DAGSTER_HOME")
    if not value:
        raise RuntimeError(
            "DAGSTER_HOME is not set. Set it to an absolute directory (make does this: "
            "<repo>/.dagster_home) so runs, artefacts and the results store persist."
        )
    path = Path(value)
    if not path.is_absolute():
        raise RuntimeError(f"DAGSTER_HOME must be an absolute path, got {value!r}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sub(*parts: str) -> Path:
    path = dagster_home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifacts_dir(*parts: str) -> Path:
    """``$DAGSTER_HOME/artifacts/<parts>`` (created)."""
    return _sub("artifacts", *parts)


def checkpoints_dir(*parts: str) -> Path:
    """``$DAGSTER_HOME/checkpoints/<parts>`` (created)."""
    return _sub("checkpoints", *parts)


def models_dir(*parts: str) -> Path:
    """Cached base models: ``$DISTIL_MODELS_DIR`` if set (share one cache across homes), else
    ``$DAGSTER_HOME/models/<parts>`` (created)."""
    override = os.environ.get("DISTIL_MODELS_DIR")
    if override:
        path = Path(override).joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return _sub("models", *parts)


def reports_dir(*parts: str) -> Path:
    """``$DAGSTER_HOME/reports/<parts>`` (created)."""
    return _sub("reports", *parts)
