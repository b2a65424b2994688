"""Helpers that turn domain results into Dagster metadata (the UI)."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg


def _cell(value: Any, max_chars: int) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def table_metadata(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   max_rows: int = 5, max_chars: int = 160) -> dg.MetadataValue:
    """A small sample table (strings, truncated) shown natively in the Dagster UI."""
    rows = list(rows)[:max_rows]
    columns = list(columns or (rows[0].keys() if rows else []))
    schema = dg.TableSchema(columns=[dg.TableColumn(name=c, type="string") for c in columns])
    records = [dg.TableRecord({c: _cell(r.get(c), max_chars) for c in columns}) for r in rows]
    return dg.MetadataValue.table(records=records, schema=schema)


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


def png_markdown(path: str | Path, alt: str = "plot") -> dg.MetadataValue:
    """Embed a PNG in markdown metadata (inline, so it survives moving DAGSTER_HOME)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")
