"""Where the platform writes things. Everything lives under ``$DAGSTER_HOME``."""

from __future__ import annotations

import os
import posixpath
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


# -- artefacts at a URL (fsspec) ----------------------------------------------------------------
# ``DISTIL_ARTIFACTS_URL``: where artefacts that steps hand to each other go when the steps do not
# share a disk: ``s3://bucket/prefix``, ``gs://...``, ``az://...`` (any fsspec URL; the matching
# fsspec backend, e.g. s3fs, must be installed) or a local directory. Unset: ``artifacts_dir()``.
# Credentials and endpoints come from the backend's usual environment (``AWS_ACCESS_KEY_ID``,
# ``AWS_ENDPOINT_URL`` for an S3-compatible server, ...); ``DISTIL_ARTIFACTS_STORAGE_OPTIONS`` (a
# JSON object) passes anything else to the filesystem. Secrets are never part of a URL we log.
ARTIFACTS_URL_ENV = "DISTIL_ARTIFACTS_URL"
STORAGE_OPTIONS_ENV = "DISTIL_ARTIFACTS_STORAGE_OPTIONS"


def artifacts_base_url() -> str:
    """The artefact base: ``$DISTIL_ARTIFACTS_URL`` (no trailing slash) or the local artefacts dir."""
    value = os.environ.get(ARTIFACTS_URL_ENV, "").strip()
    return value.rstrip("/") if value else str(artifacts_dir())


def artifact_url(*parts: str) -> str:
    """``<base>/<parts>``; nothing is created (object stores have no directories)."""
    for part in parts:
        segments = str(part).strip("/").split("/")
        if any(s in ("", ".", "..") for s in segments):
            raise ValueError(f"artefact path part {part!r} is empty or climbs out of the base")
    return "/".join([artifacts_base_url(), *(p.strip("/") for p in parts)])


def is_remote(url: str) -> bool:
    import fsspec.utils

    return fsspec.utils.get_protocol(url) not in ("file", "local")


def _fs(url: str):
    import json

    import fsspec.core

    raw = os.environ.get(STORAGE_OPTIONS_ENV)
    try:
        options = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{STORAGE_OPTIONS_ENV} is not valid JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise ValueError(f"{STORAGE_OPTIONS_ENV} must be a JSON object")  # noqa: TRY004 - a config error
    return fsspec.core.url_to_fs(url, **(options if is_remote(url) else {}))


def write_bytes(url: str, data: bytes) -> str:
    fs, path = _fs(url)
    if not is_remote(url):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)
    return url


def read_bytes(url: str) -> bytes:
    fs, path = _fs(url)
    if not fs.exists(path):
        raise FileNotFoundError(f"{url}: no such artefact")
    return fs.cat_file(path)


def write_parquet(frame, url: str) -> str:
    """Write a polars DataFrame as Parquet at ``url``; returns ``url``."""
    import io

    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return write_bytes(url, buffer.getvalue())


def read_parquet(url: str):
    """A polars DataFrame from the Parquet file at ``url`` (local path or fsspec URL)."""
    import io

    import polars as pl

    return pl.read_parquet(io.BytesIO(read_bytes(url)))


def upload_dir(local_dir: Path | str, url: str) -> str:
    """Copy a local directory tree (a checkpoint) to ``url``; returns ``url``."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"{local_dir}: not a directory")
    fs, path = _fs(url)
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        target = f"{path.rstrip('/')}/{file.relative_to(local_dir).as_posix()}"
        if not is_remote(url):
            fs.makedirs(posixpath.dirname(target), exist_ok=True)
        fs.put_file(str(file), target)
    return url


def download_dir(url: str, local_dir: Path | str) -> Path:
    """Copy the tree at ``url`` into ``local_dir`` (created); returns ``local_dir``."""
    local_dir = Path(local_dir)
    fs, path = _fs(url)
    files = [f for f in fs.find(path) if not f.endswith("/")]
    if not files:
        raise FileNotFoundError(f"{url}: nothing there")
    root = path.rstrip("/") + "/"
    for remote in files:
        target = local_dir / remote[len(root) :] if remote.startswith(root) else local_dir / Path(remote).name
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(target))
    return local_dir
