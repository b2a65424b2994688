"""Dagster resource for the results store."""

from __future__ import annotations

import dagster as dg

from distil_platform.store import ResultsStore


class ResultsStoreResource(dg.ConfigurableResource):
    """SQLAlchemy results store. ``url`` None: env ``DISTIL_DB_URL``, else ``$DAGSTER_HOME/results.db``."""

    url: str | None = None

    def store(self) -> ResultsStore:
        return ResultsStore(self.url)
