"""Metadata helpers: tables in the UI keep numbers as numbers."""

import math

import polars as pl
from distil_platform.assets.metadata import polars_column_schema, table_metadata


def test_table_columns_are_typed_and_numbers_stay_numbers():
    value = table_metadata([{"model": "m1", "score": 0.5, "n": 50, "ok": True},
                            {"model": "m2", "score": 1, "n": 40, "ok": False}]).value
    assert {c.name: c.type for c in value.schema.columns} == {"model": "string", "score": "float", "n": "int",
                                                               "ok": "bool"}
    assert value.records[1].data["score"] == 1.0 and isinstance(value.records[1].data["score"], float)


def test_nan_and_missing_cells_are_empty_and_long_text_is_truncated():
    value = table_metadata([{"score": math.nan, "text": "x" * 500}, {"score": None, "text": "a\nb"}],
                           max_chars=20).value
    assert value.records[0].data["score"] is None and value.records[1].data["score"] is None
    assert len(value.records[0].data["text"]) == 20 and value.records[1].data["text"] == "a ⏎ b"


def test_column_schema_from_polars_dtypes():
    schema = polars_column_schema(pl.DataFrame({"id": ["a"], "usd": [1.5], "n": [3]}))
    assert {c.name: c.type for c in schema.columns} == {"id": "string", "usd": "float64", "n": "int64"}
