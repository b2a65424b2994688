"""Dagster resource for the results store, and the base of resources that write to it."""

# No ``from __future__ import annotations`` here: Dagster recognises a nested resource field (and
# accepts a ``configure_at_launch()`` partial resource for it) only from a real type annotation.

from typing import Any

import dagster as dg

from distil_platform.storage.store import ResultsStore


class ResultsStoreResource(dg.ConfigurableResource):
    """SQLAlchemy results store. ``url`` None: env ``DISTIL_DB_URL``, else ``$DAGSTER_HOME/results.db``."""

    url: str | None = None

    def store(self) -> ResultsStore:
        return ResultsStore(self.url)


class UsesResultsStore(dg.ConfigurableResource):
    """Base of resources that record into the results store through a nested ``results_store``.

    Bind the same ``ResultsStoreResource`` object at the Definitions' ``results_store`` key and here
    (``distil_platform.definitions`` does): with ``ResultsStoreResource.configure_at_launch()`` a
    launch-time ``url`` then reaches both. Left out, it defaults to ``ResultsStoreResource()``
    (env ``DISTIL_DB_URL``, else ``$DAGSTER_HOME/results.db``), the same default as the top-level one.
    """

    results_store: ResultsStoreResource

    def __init__(self, **data: Any):
        # Dagster's resource metaclass rewrites nested-resource fields without their default.
        data.setdefault("results_store", ResultsStoreResource())
        super().__init__(**data)
