"""Schema migrations of the results store by hand (Alembic), and the check that a database matches ``store.metadata``.

How a database is upgraded on every first open of a ``ResultsStore`` is
:mod:`distil_platform.storage.revisions`; this module is the command line to run it by hand and to write
a new revision, and :func:`schema_diff`:

    python -m distil_platform.storage.migrate upgrade            # the store at $DISTIL_DB_URL (or the default)
    python -m distil_platform.storage.migrate current
    python -m distil_platform.storage.migrate revision -m "add foo.bar"   # autogenerate from store.metadata
"""

from __future__ import annotations

import argparse
import os

from sqlalchemy.engine import Engine

from distil_platform.storage.revisions import alembic_config, current_revision, has_version_table, upgrade
from distil_platform.storage.store import default_url, metadata


def schema_diff(engine: Engine) -> list:
    """Alembic's comparison of the live database with ``store.metadata`` (empty: they agree)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, metadata)


def main(argv: list[str] | None = None) -> int:
    from alembic import command
    from sqlalchemy import create_engine

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
            print(current_revision(conn) if has_version_table(conn) else None)
    else:
        with engine.begin() as conn:
            command.revision(
                alembic_config(conn), message=args.message, autogenerate=True, rev_id=args.rev_id
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
