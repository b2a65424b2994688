"""Alembic environment of the results store (``distil_platform.storage.store``).

Run programmatically by ``distil_platform.storage.revisions.upgrade`` (every ``ResultsStore`` open); no
``alembic.ini`` is needed. Autogenerate a new revision after adding a column or table with::

    python -m distil_platform.storage.migrate revision -m "what changed"   # against $DISTIL_DB_URL / the default store
"""

from __future__ import annotations

from alembic import context

from distil_platform.storage.store import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - always called through distil_platform.storage.revisions
    raise RuntimeError(
        "run the results-store migrations through distil_platform.storage.migrate (needs a connection)"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things in place: batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
