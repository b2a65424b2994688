"""A recorded teacher: examples someone else's teacher already wrote, read from a file.

The file is in the public layout (``question``, ``answer``, optional ``context``; jsonl, csv or
parquet), e.g. a benchmark's published synthetic training set. Its rows become candidates with
``origin="recorded"`` and go through exactly the validators, quality filters, deduplication and
decontamination that a live teacher's rows go through (:func:`distil_platform.teacher.synthesis.synthesize`).
Rows with empty fields are not an error here: validation counts them like any bad teacher row.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

from distil_platform.tasks.spec import RecordedTeacher, TaskSpec

_TEXT2SQL_RE = re.compile(r"^\s*Schema:\s*(?P<ddl>.*?)\s*Question:\s*(?P<q>.*)$", re.DOTALL)


class RecordedTeacherError(ValueError):
    """The recorded file is missing or malformed; the message names the file (and row/field)."""


def recorded_path(spec: TaskSpec, cfg: RecordedTeacher | None, override: str | None = None) -> Path:
    """The recorded file for ``spec``: ``override``, else env ``path_env`` (default
    ``DISTIL_RECORDED_<TASK>``), else ``cfg.path`` (relative to the task YAML)."""
    env = (cfg.path_env if cfg else None) or f"DISTIL_RECORDED_{spec.name.upper()}"
    value = override or os.environ.get(env) or (cfg.path if cfg else None)
    if not value:
        raise RecordedTeacherError(
            f"{spec.name}: synthesis source is `recorded` but no file is given: set synthesis.recorded.path "
            f"in {spec.source_file or 'the task YAML'}, env {env}, or the run config's recorded_path"
        )
    path = Path(value)
    if not path.is_absolute() and not override and spec.source_file and value == (cfg.path if cfg else None):
        path = Path(spec.source_file).parent / path
    return path


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise RecordedTeacherError(f"{path}: recorded teacher file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import polars as pl

        try:
            return pl.read_parquet(path).to_dicts()
        except Exception as exc:  # noqa: BLE001 - any read failure names the file
            raise RecordedTeacherError(f"{path}: not a readable parquet file: {exc}") from None
    if suffix in (".jsonl", ".csv", ".json"):
        from distil_platform.tasks.sources import DataSourceError, read_records

        try:
            return [record for _, record in read_records(path)]
        except DataSourceError as exc:
            raise RecordedTeacherError(str(exc)) from None
    raise RecordedTeacherError(f"{path}: unsupported recorded teacher file type (use .jsonl, .csv or .parquet)")


def load_recorded(
    spec: TaskSpec, path: str | Path, *, max_rows: int | None = None, sample_seed: int = 0,
    teacher_model: str = "recorded",
) -> list[dict[str, Any]]:
    """Candidate rows (``question``, ``answer``, ``context``, ``origin="recorded"``, ...) from ``path``.

    With ``max_rows`` a seeded random sample of that many rows is kept (the file's order is often
    grouped by tool or topic). A file without a ``question`` or ``answer`` column is an error.
    """
    path = Path(path)
    records = _records(path)
    if not records:
        raise RecordedTeacherError(f"{path}: no rows")
    columns = set(records[0])
    missing = [c for c in ("question", "answer") if c not in columns]
    if missing:
        raise RecordedTeacherError(
            f"{path}: missing column `{missing[0]}` (columns present: {', '.join(sorted(map(str, columns))) or 'none'};"
            " expected question, answer[, context])"
        )
    indexed = list(enumerate(records, start=1))
    if max_rows is not None and max_rows < len(indexed):
        indexed = sorted(random.Random(sample_seed).sample(indexed, max_rows), key=lambda x: x[0])
    rows = []
    for row_no, record in indexed:
        question, answer, context = _text(record.get("question")), _text(record.get("answer")), _text(record.get("context"))
        if spec.type == "text2sql" and not context.strip():
            match = _TEXT2SQL_RE.match(question)
            if match:
                context, question = match["ddl"].strip(), match["q"].strip()
        if spec.type == "tool_calling":
            from distil_platform.tasks.validation import canonical_tool_call

            try:
                answer = canonical_tool_call(answer)
            except ValueError:
                pass  # validation rejects it and counts the reason
        rows.append({
            "question": question.strip(), "answer": answer.strip(), "context": context,
            "origin": "recorded", "teacher_model": teacher_model, "seed_ids": "", "topic": "",
            "prompt_hash": "", "grounding_ids": "", "source_row": str(record.get("id") or row_no),
        })
    return rows
