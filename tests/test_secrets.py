"""Secrets stay out of messages: a results-store URL with a password is rendered with the password
hidden in every exception the cost table, routing and pricing raise (Dagster's event log)."""

from __future__ import annotations

import pytest

from distil_platform.economics.cost_inputs import CostTableError, gather_cost_inputs
from distil_platform.economics.pricing import load_snapshot
from distil_platform.economics.pricing_file import PricingError
from distil_platform.economics.routing import RoutingError
from distil_platform.economics.routing_io import gather_routing_inputs
from distil_platform.redact import hide_password
from distil_platform.storage.store import ResultsStore
from distil_platform.tasks.spec import get_task

PASSWORD = "hunter2-s3cr3t"


@pytest.mark.parametrize(("url", "shown"), [
    (f"postgresql+psycopg://distil:{PASSWORD}@db.internal:5432/results",
     "postgresql+psycopg://distil:***@db.internal:5432/results"),
    (f"postgresql://distil:{PASSWORD}@db/results?sslmode=require", "postgresql://distil:***@db/results?sslmode=require"),
    (f"s3://AKIAEXAMPLE:{PASSWORD}@bucket/prefix", "s3://AKIAEXAMPLE:***@bucket/prefix"),
    ("sqlite:////home/me/.dagster_home/results.db", "sqlite:////home/me/.dagster_home/results.db"),
    ("postgresql://distil@db/results", "postgresql://distil@db/results"),
    ("/plain/path/results.db", "/plain/path/results.db"),
])
def test_hide_password_renders_urls_without_their_password(url, shown):
    assert hide_password(url) == shown
    assert PASSWORD not in hide_password(url)


def test_hide_password_of_a_password_with_url_special_characters():
    url = "postgresql://distil:p%40ss%2Fw0rd@db/results"  # "p@ss/w0rd", percent-encoded
    assert hide_password(url) == "postgresql://distil:***@db/results"


@pytest.fixture(scope="module")
def pg():
    from distributed_services import postgres_server

    yield from postgres_server()


@pytest.fixture
def store_with_password(pg):
    """A real results store on PostgreSQL, reached with a password in its URL (as DISTIL_DB_URL gives it)."""
    from sqlalchemy.engine import make_url

    store = ResultsStore(pg.create_database("secrets"))
    password = make_url(store.url).password
    assert password and password in store.url
    return store, password


def test_cost_table_routing_and_pricing_errors_hide_the_store_password(store_with_password):
    store, password = store_with_password
    spec = get_task("text2sql")
    errors = []
    with pytest.raises(CostTableError) as cost:
        gather_cost_inputs(store, spec)
    errors.append(str(cost.value))
    with pytest.raises(RoutingError) as routing:
        gather_routing_inputs(store, spec)
    errors.append(str(routing.value))
    with pytest.raises(PricingError) as pricing:
        load_snapshot(store, "0" * 64)
    errors.append(str(pricing.value))
    for message in errors:
        assert "results store (postgresql" in message and ":***@127.0.0.1:" in message, message
        assert password not in message, message
