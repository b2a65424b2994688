"""Where the platform writes things. Everything lives under ``$DAGSTER_HOME``."""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # distil_platform/


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


def read_rows(url: str | None, *, what: str = "the upstream asset") -> list[dict]:
    """The rows of the Parquet artefact at ``url`` (None: no rows); a missing one names ``what``."""
    if not url:
        return []
    try:
        return read_parquet(url).to_dicts()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{url} does not exist; re-materialise {what}") from exc


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

    if not is_remote(str(url)):
        if not Path(url).is_file():
            raise FileNotFoundError(f"{url}: no such artefact")
        return pl.read_parquet(url)
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


# -- one step's output directory, published at a URL --------------------------------------------
class ArtifactDir:
    """Where a step writes one artefact directory (``<base>/<parts>``).

    Local base: ``local`` *is* the destination (``local_dir`` when given, e.g. ``$DAGSTER_HOME/
    checkpoints/...``, else ``<base>/<parts>``), ``url`` is its path and ``publish()`` does nothing.
    Remote base: ``local`` is a scratch directory of this process; ``publish()`` uploads it to ``url``
    and removes it, so the next step (maybe on another machine) reads the artefact from the object
    store only. As a context manager it publishes on success and always drops the scratch directory."""

    def __init__(self, *parts: str, local_dir: Path | str | None = None) -> None:
        import tempfile

        self.url = artifact_url(*parts)
        self.remote = is_remote(self.url)
        if self.remote:
            self.local = Path(tempfile.mkdtemp(prefix="distil-artefact-"))
        else:
            self.local = Path(local_dir) if local_dir is not None else Path(self.url)
            self.local.mkdir(parents=True, exist_ok=True)
            self.url = str(self.local)
        self.published = False

    def url_for(self, path: Path | str) -> str:
        """The URL a file written under ``local`` has once published."""
        rel = Path(path).resolve().relative_to(self.local.resolve()).as_posix()
        return str(self.local / rel) if not self.remote else f"{self.url}/{rel}"

    def publish(self) -> str:
        if self.remote and not self.published:
            import shutil

            upload_dir(self.local, self.url)
            shutil.rmtree(self.local, ignore_errors=True)
        self.published = True
        return self.url

    def discard(self) -> None:
        if self.remote and not self.published:
            import shutil

            shutil.rmtree(self.local, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.publish()
        else:
            self.discard()


# -- checkpoints: trained in one step, served in others ------------------------------------------
def checkpoint_artifact(*parts: str) -> ArtifactDir:
    """Where a step trains a checkpoint: ``$DAGSTER_HOME/checkpoints/<parts>`` on a local base; on a
    remote one a scratch directory uploaded to ``<base>/checkpoints/<parts>`` and removed when the
    step publishes it (a serving step never relies on the training step's disk)."""
    return ArtifactDir("checkpoints", *parts, local_dir=None if is_remote(artifacts_base_url())
                       else checkpoints_dir(*parts))


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the block: processes and threads
    that lock the same file take turns. The kernel drops it when its holder dies."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:  # one open file description per holder: threads exclude each other too
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def local_checkpoint(location: str, *, what: str = "checkpoint") -> Path:
    """A local directory holding the checkpoint at ``location`` (a path, or a URL fetched once into
    ``$DAGSTER_HOME/cache/checkpoints/``). Raises FileNotFoundError naming ``what`` if it is gone.

    Fetches of one URL are serialised by a lock file beside the cache directory: steps that need the
    same checkpoint at once download it once, and none reads a half-written copy."""
    import hashlib
    import shutil

    if not is_remote(location):
        path = Path(location)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: no checkpoint (config.json missing); re-materialise {what}")
        return path
    cache = _sub("cache", "checkpoints") / hashlib.sha256(location.encode()).hexdigest()[:20]
    marker = cache.with_name(cache.name + ".complete")  # beside the tree: the checkpoint stays as trained
    if marker.exists() and (cache / "config.json").exists():
        return cache
    with file_lock(cache.with_name(cache.name + ".lock")):
        if marker.exists() and (cache / "config.json").exists():  # fetched while we waited
            return cache
        partial = cache.with_name(cache.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            download_dir(location, partial)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{location}: no checkpoint at this URL; re-materialise {what}") from exc
        if not (partial / "config.json").exists():
            raise FileNotFoundError(f"{location}: no config.json in the fetched checkpoint; re-materialise {what}")
        marker.unlink(missing_ok=True)
        shutil.rmtree(cache, ignore_errors=True)
        partial.rename(cache)
        marker.write_text(location, encoding="utf-8")
    return cache
