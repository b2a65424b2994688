"""Schema revisions of the results store (Alembic; scripts in ``distil_platform/storage/migrations``).

``ResultsStore`` calls :func:`upgrade` when it first opens a database, so a column added in a release
upgrades an existing SQLite file or PostgreSQL database in place. A store created before migrations
existed (tables but no ``alembic_version``) is stamped at the baseline revision first. Concurrent
first opens are serialised: a PostgreSQL advisory lock, a file lock for SQLite.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"
# The schema of the first release (before migrations); stores without a version table are this.
BASELINE = "0001"
# pg_advisory_xact_lock key: any fixed 64-bit number private to this schema.
_PG_LOCK_KEY = 0x64697374696C  # "distil"


def alembic_config(connection: Connection | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no migration scripts under {SCRIPT_LOCATION}"
    return head


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if (
        engine.dialect.name != "sqlite"
        or not database
        or database == ":memory:"
        or database.startswith("file:")
    ):
        yield
        return
    with open(f"{database}.migrate.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring ``engine``'s database to ``revision``; returns the revision it is at afterwards."""
    from alembic import command

    target = head_revision() if revision == "head" else revision
    with engine.connect() as conn:  # fast path: already there (every open after the first)
        if has_version_table(conn) and current_revision(conn) == target:
            return target
    with _sqlite_file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        cfg = alembic_config(conn)
        if not has_version_table(conn) and "seed_sets" in inspect(conn).get_table_names():
            command.stamp(cfg, BASELINE)  # created by create_all before migrations existed
        command.upgrade(cfg, revision)
        return current_revision(conn)


def has_version_table(conn: Connection) -> bool:
    return "alembic_version" in inspect(conn).get_table_names()
