"""Schema migrations of the results store (Alembic; scripts in ``distil_platform/storage/migrations``).

``ResultsStore`` upgrades its database to the newest revision when it first opens it, so a column
added in a release upgrades an existing SQLite file or PostgreSQL database in place. A store created
before migrations existed (tables but no ``alembic_version``) is stamped at the baseline revision
first. Concurrent first opens are serialised: a PostgreSQL advisory lock, a file lock for SQLite.

    python -m distil_platform.storage.migrate upgrade            # the store at $DISTIL_DB_URL (or the default)
    python -m distil_platform.storage.migrate current
    python -m distil_platform.storage.migrate revision -m "add foo.bar"   # autogenerate from store.metadata
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
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
        if _has_version_table(conn) and current_revision(conn) == target:
            return target
    with _sqlite_file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        cfg = alembic_config(conn)
        if not _has_version_table(conn) and "seed_sets" in inspect(conn).get_table_names():
            command.stamp(cfg, BASELINE)  # created by create_all before migrations existed
        command.upgrade(cfg, revision)
        return current_revision(conn)


def _has_version_table(conn: Connection) -> bool:
    return "alembic_version" in inspect(conn).get_table_names()


def schema_diff(engine: Engine) -> list:
    """Alembic's comparison of the live database with ``store.metadata`` (empty: they agree)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from distil_platform.storage.store import metadata

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, metadata)


def main(argv: list[str] | None = None) -> int:
    from alembic import command
    from sqlalchemy import create_engine

    from distil_platform.storage.store import default_url

    parser = argparse.ArgumentParser(
        prog="python -m distil_platform.storage.migrate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--url", default=None, help="SQLAlchemy URL (default: $DISTIL_DB_URL, else the home store)"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("upgrade")
    sub.add_parser("current")
    rev = sub.add_parser("revision", help="autogenerate a revision from the difference to store.metadata")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--rev-id", default=None)
    args = parser.parse_args(argv)
    engine = create_engine(args.url or os.environ.get("DISTIL_DB_URL") or default_url())
    if args.cmd == "upgrade":
        print(upgrade(engine))
    elif args.cmd == "current":
        with engine.connect() as conn:
            print(current_revision(conn) if _has_version_table(conn) else None)
    else:
        with engine.begin() as conn:
            command.revision(
                alembic_config(conn), message=args.message, autogenerate=True, rev_id=args.rev_id
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
