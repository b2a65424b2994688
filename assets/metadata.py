"""Helpers that turn domain results into Dagster metadata (the UI)."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg


def _cell(value: Any, max_chars: int) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _column_type(values: Sequence[Any]) -> str:
    """Dagster table column type of a column's values: bool, int, float or string (None ignored)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float"
    return "string"


def _typed(value: Any, kind: str, max_chars: int) -> Any:
    if value is None:
        return None
    if kind == "float":
        value = float(value)
        return None if math.isnan(value) else value  # NaN is no number to show
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    return _cell(value, max_chars)


def table_metadata(rows: Sequence[Mapping[str, Any]], columns: Sequence[str | tuple[str, str]] | None = None,
                   max_rows: int = 5, max_chars: int = 160) -> dg.MetadataValue:
    """A small table shown natively in the Dagster UI, with typed columns (numbers stay numbers,
    sortable; text is truncated). A column is a name (its type inferred from the values) or a
    ``(name, type)`` pair."""
    rows = list(rows)[:max_rows]
    given = list(columns or (rows[0].keys() if rows else []))
    columns = [c[0] if isinstance(c, tuple) else c for c in given]
    kinds = {c: _column_type([r.get(c) for r in rows]) for c in columns}
    kinds.update({c[0]: c[1] for c in given if isinstance(c, tuple)})
    schema = dg.TableSchema(columns=[dg.TableColumn(name=c, type=kinds[c]) for c in columns])
    records = [dg.TableRecord({c: _typed(r.get(c), kinds[c], max_chars) for c in columns}) for r in rows]
    return dg.MetadataValue.table(records=records, schema=schema)


def column_schema(columns: Mapping[str, str], descriptions: Mapping[str, str] | None = None) -> dg.TableSchema:
    """``dagster/column_schema`` of a data asset: column name -> type (``string``, ``float``, ...)."""
    descriptions = descriptions or {}
    return dg.TableSchema(columns=[dg.TableColumn(name=c, type=t, description=descriptions.get(c))
                                   for c, t in columns.items()])


def polars_column_schema(frame) -> dg.TableSchema:
    """``dagster/column_schema`` from a polars frame's dtypes."""
    return column_schema({name: str(dtype).lower() for name, dtype in frame.schema.items()})


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   max_chars: int = 80) -> str:
    rows = list(rows)
    columns = list(columns or (rows[0].keys() if rows else []))
    if not columns:
        return "_(empty)_"
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(_cell(r.get(c), max_chars).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(out)


def location_metadata(location: str | Path) -> dg.MetadataValue:
    """A path for a local artefact, a URL for one on an object store (``s3://...``)."""
    from distil_platform.storage.paths import is_remote

    return dg.MetadataValue.url(str(location)) if is_remote(str(location)) else dg.MetadataValue.path(str(location))


def png_markdown(path: str | Path, alt: str = "plot") -> dg.MetadataValue:
    """Embed a PNG in markdown metadata (inline, so it survives moving DAGSTER_HOME)."""
    return png_base64_markdown(base64.b64encode(Path(path).read_bytes()).decode(), alt)


def png_base64_markdown(data: str, alt: str = "plot") -> dg.MetadataValue:
    """``png_markdown`` for a PNG already base64-encoded (e.g. reported by a Pipes job)."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def inline_pngs(markdown: str, paths) -> str:
    """``markdown`` with each relative image link to one of ``paths`` (matched by file name) replaced
    by the PNG inline: the UI cannot follow a link relative to a file it never opened."""
    for path in paths:
        path = Path(path)
        data = base64.b64encode(path.read_bytes()).decode()
        markdown = markdown.replace(f"]({path.name})", f"](data:image/png;base64,{data})")
    return markdown


def materializations_of(result, key: str) -> list:
    """The ``AssetMaterialization``s of asset ``key`` in an in-process run result, whatever step
    produced them (``asset_materializations_for_node`` takes a step name, and a multi-asset such as
    ``<task>_student_serving`` is one step for several assets)."""
    import dagster as dg

    asset_key = dg.AssetKey.from_user_string(key)
    return [e.event_specific_data.materialization for e in result.get_asset_materialization_events()
            if e.asset_key == asset_key]
