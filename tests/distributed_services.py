"""Real PostgreSQL and S3-API servers for the distributed tests (no mocks of the servers).

``DISTIL_TEST_PG_URL`` / ``DISTIL_TEST_S3_ENDPOINT`` set (``.ci/services.sh start`` prints them): use
those servers. Unset: start private ones with ``.ci/services.sh`` for the module and stop them after.
A test skips, naming the reason, only when a server truly cannot start (no PostgreSQL binaries).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICES = REPO_ROOT / ".ci" / "services.sh"


def _start(what: str) -> tuple[dict[str, str], Path]:
    # Not a pytest tmp dir: those are 0700, and PostgreSQL runs as an unprivileged user.
    state = Path(tempfile.mkdtemp(prefix=f"distil-{what}-"))
    proc = subprocess.run(
        [str(SERVICES), "start", what, str(state)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "PYTHON": os.environ.get("PYTHON", _python())},
    )
    if proc.returncode != 0:
        shutil.rmtree(state, ignore_errors=True)
        pytest.skip(
            f"{SERVICES.name} start {what} failed (rc {proc.returncode}): {proc.stderr.strip()[-400:]}"
        )
    env = {}
    for line in proc.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env, state


def _stop(state: Path) -> None:
    subprocess.run([str(SERVICES), "stop", str(state)], capture_output=True, timeout=120, check=False)


def _python() -> str:
    import sys

    return sys.executable


@dataclass
class Postgres:
    admin_url: str  # superuser, maintenance database

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def dagster_env(self, url: str) -> dict[str, str]:
        """The DAGSTER_PG_* variables config/dagster-postgres.yaml reads, for database ``url``."""
        u = make_url(url)
        return {
            "DAGSTER_PG_HOST": u.host,
            "DAGSTER_PG_PORT": str(u.port),
            "DAGSTER_PG_USER": u.username,
            "DAGSTER_PG_PASSWORD": u.password or "",
            "DAGSTER_PG_DB": u.database,
        }


def postgres_server() -> Iterator[Postgres]:
    url = os.environ.get("DISTIL_TEST_PG_URL")
    if url:
        yield Postgres(url)
        return
    env, state = _start("pg")
    try:
        yield Postgres(env["DISTIL_TEST_PG_URL"])
    finally:
        _stop(state)


def s3_server() -> Iterator[str]:
    endpoint = os.environ.get("DISTIL_TEST_S3_ENDPOINT")
    if endpoint:
        yield endpoint
        return
    env, state = _start("s3")
    try:
        yield env["DISTIL_TEST_S3_ENDPOINT"]
    finally:
        _stop(state)


def private_postgres() -> Iterator[tuple[Postgres, Path]]:
    """A PostgreSQL server of one's own (never the shared DISTIL_TEST_PG_URL one), for a test that
    takes it down (:func:`pg_down`) and up again (:func:`pg_up`); yields it and its state directory."""
    env, state = _start("pg")
    try:
        yield Postgres(env["DISTIL_TEST_PG_URL"]), state
    finally:
        _stop(state)


def pg_down(state: Path) -> None:
    """Stop it as a crash would (connections cut), keeping its data."""
    subprocess.run([str(SERVICES), "pg-down", str(state)], capture_output=True, timeout=60, check=True)


def pg_up(state: Path) -> None:
    subprocess.run([str(SERVICES), "pg-up", str(state)], capture_output=True, timeout=120, check=True)
