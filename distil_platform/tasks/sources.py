"""Seed and test rows of a task, from the first source that is configured and available:

1. a local directory (``data.local_dir`` or env ``DISTIL_DATA_<TASK>``) holding ``train`` and
   ``test`` files (``.jsonl`` or ``.csv``) in the ``question``/``answer``(/``context``) layout of
   public distillation task repos, optionally an ``unstructured`` file;
2. a Hugging Face dataset (``data.hf``) via ``datasets`` - unless the hub is offline
   (``HF_HUB_OFFLINE=1``) or unreachable, and the path is not a local dataset. Reachability is
   probed once per process and endpoint (a TCP connect to ``HF_ENDPOINT`` or its proxy, ~2 s at
   most, see :mod:`distil_platform.tasks.hf_hub`), so an unreachable hub costs one quick probe
   instead of ``datasets``' retries with back-off for every task;
3. the sample shipped in the package (``distil_platform/data/<task>/``).

Every route returns string columns ``id``, ``question``, ``answer``, ``context``. Text2SQL rows in
the public layout (``question = "Schema:\\n<DDL>\\n\\nQuestion: <q>"``) are split into context and
question; tool-call answers are re-serialised as canonical JSON. Structural problems (missing
file, missing column, empty or malformed row) raise :class:`DataSourceError` naming the file, the
row and the field; whether a row is *valid for the task* is :mod:`distil_platform.tasks.validation`'s job.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from distil_platform.tasks.hf_hub import hf_available, hub_unavailable_reason
from distil_platform.tasks.spec import HFSource, TaskSpec

log = logging.getLogger(__name__)

COLUMNS = ("id", "question", "answer", "context")
SPLIT_FILES = {"seed": "train", "test": "test"}
SOURCES = ("local", "hf", "sample")
_TEXT2SQL_RE = re.compile(r"^\s*Schema:\s*\n(?P<ddl>.*?)\n\s*\n\s*Question:\s*(?P<q>.*)$", re.DOTALL)


class DataSourceError(ValueError):
    """Task data cannot be loaded. The message names the file (or dataset), the row and the field."""


class HubUnavailableError(DataSourceError):
    """The Hugging Face hub could not be reached (the automatic route then falls back to the sample)."""


@dataclass
class LoadedData:
    seed: pl.DataFrame
    test: pl.DataFrame
    # Unlabelled in-domain texts (columns ``id``, ``context``) or None.
    unstructured: pl.DataFrame | None
    # Where the rows came from: "local:<dir>", "hf:<dataset>[:<config>]" or "sample:<dir>".
    source: str
    files: list[str] = field(default_factory=list)
    # Why a configured source was skipped (e.g. the hub unreachable), for the seed asset's metadata.
    note: str | None = None


# -- entry point -------------------------------------------------------------------------------
def load_seed_and_test(spec: TaskSpec, *, source: str | None = None) -> LoadedData:
    """Seed (train) and test rows of ``spec``; ``source`` forces "local", "hf" or "sample"."""
    if source is not None and source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)} (or None for automatic), got {source!r}")
    local_dir = spec.local_data_dir()
    if source == "local" or (source is None and local_dir is not None):
        if local_dir is None:
            env = spec.data.local_dir_env or f"DISTIL_DATA_{spec.name.upper()}"
            raise DataSourceError(
                f"{spec.source_file}: field `data.local_dir` is not set and env {env} is empty; "
                "no local data directory for this task"
            )
        return load_local_dir(spec, local_dir)
    hf = spec.data.hf
    note = None
    if source is None and hf is not None and not hf_available(hf):
        note = f"{hf_origin(hf)} not tried: {hub_unavailable_reason()}; used the shipped sample"
        log.warning("%s: %s", spec.name, note)
    elif source == "hf" or (source is None and hf is not None):
        if hf is None:
            raise DataSourceError(f"{spec.source_file}: field `data.hf` is not set; this task has no HF dataset")
        try:
            return load_hf(spec, hf)
        except HubUnavailableError as exc:
            if source == "hf":
                raise
            note = f"{exc}; used the shipped sample"
            log.warning("%s: %s", spec.name, note)
    data = load_sample(spec)
    data.note = note
    return data


# -- local directory and sample (same file layout) ---------------------------------------------
def _find_file(directory: Path, stem: str, required: bool = True) -> Path | None:
    for suffix in (".jsonl", ".csv"):
        path = directory / f"{stem}{suffix}"
        if path.is_file():
            return path
    if required:
        raise DataSourceError(f"{directory}: missing data file `{stem}.jsonl` (or `{stem}.csv`)")
    return None


def load_local_dir(spec: TaskSpec, directory: str | Path) -> LoadedData:
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise DataSourceError(f"{directory}: local data directory for task {spec.name!r} does not exist")
    return _load_dir(spec, directory, f"local:{directory}")


def load_sample(spec: TaskSpec) -> LoadedData:
    directory = spec.sample_dir()
    if not directory.is_dir():
        raise DataSourceError(f"{directory}: no shipped sample for task {spec.name!r} (field `data.sample`)")
    return _load_dir(spec, directory, f"sample:{directory}")


def _load_dir(spec: TaskSpec, directory: Path, origin: str) -> LoadedData:
    frames, files = {}, []
    for split, stem in SPLIT_FILES.items():
        path = _find_file(directory, stem)
        files.append(str(path))
        frames[split] = normalise_records(spec, read_records(path), str(path), split)
    unstructured, unstructured_path = _load_unstructured(spec, directory)
    if unstructured_path:
        files.append(unstructured_path)
    return LoadedData(frames["seed"], frames["test"], unstructured, origin, files)


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row_number, record)`` from a .jsonl or .csv file; row numbers are 1-based data rows."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"{path}: file not found")
    if path.suffix == ".csv":
        yield from _read_csv(path)
    elif path.suffix in (".jsonl", ".json"):
        yield from _read_jsonl(path)
    else:
        raise DataSourceError(f"{path}: unsupported data file type (use .jsonl or .csv)")


def _not_utf8(path: Path) -> DataSourceError:
    """The error for a data file that is not UTF-8: where the first bad byte is (offset and line)
    and what to do about it."""
    offset, line_no = 0, 1
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start:exc.end]
                return DataSourceError(
                    f"{path}: not UTF-8 text: byte {bad.hex(' ')} at byte offset {offset + exc.start} (line "
                    f"{line_no}) is not valid UTF-8 ({exc.reason}); re-save the file as UTF-8 (e.g. `iconv -f "
                    f"cp1252 -t utf-8`, with the encoding it was written in)"
                )
            offset += len(raw)
    return DataSourceError(f"{path}: not UTF-8 text (the encoding error could not be located)")


def _utf8_lines(path: Path, **open_args: Any) -> Iterator[str]:
    """The file's lines as UTF-8 (a leading byte-order mark is dropped); a byte that is not UTF-8
    raises :class:`DataSourceError` naming the file, the byte offset and the line."""
    with path.open(encoding="utf-8-sig", **open_args) as fh:
        try:
            yield from fh
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    row = 0
    for line_no, line in enumerate(_utf8_lines(path), start=1):
        if not line.strip():
            continue
        row += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataSourceError(f"{path}: row {row} (line {line_no}): not valid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise DataSourceError(f"{path}: row {row} (line {line_no}): expected a JSON object")
        yield row, record


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    # Open-book contexts exceed csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.DictReader(_utf8_lines(path, newline=""))
    if not reader.fieldnames:
        raise DataSourceError(f"{path}: empty CSV file (no header row)")
    for row, record in enumerate(reader, start=1):
        if None in record:
            raise DataSourceError(f"{path}: row {row}: more values than header columns")
        yield row, record


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def split_schema_question(question: str) -> tuple[str, str]:
    """``(ddl, question)`` of a text2sql question in the public layout (``"Schema:\\n<DDL>\\n\\nQuestion:
    <q>"``); ``("", question)`` when it is not in that layout."""
    match = _TEXT2SQL_RE.match(question)
    return (match["ddl"].strip(), match["q"].strip()) if match else ("", question)


def normalise_records(
    spec: TaskSpec, records: Iterable[tuple[int, dict[str, Any]]], origin: str, split: str
) -> pl.DataFrame:
    """Rows in the public layout -> the platform's string columns (see module docstring)."""
    from distil_platform.tasks.validation import canonical_tool_call

    out: dict[str, list[str]] = {c: [] for c in COLUMNS}
    seen_ids: dict[str, int] = {}
    columns_checked = False
    for row, record in records:
        if not columns_checked:
            missing = [c for c in ("question", "answer") if c not in record]
            if missing:
                raise DataSourceError(
                    f"{origin}: row {row}: missing column `{missing[0]}` "
                    f"(columns present: {', '.join(map(str, record)) or 'none'}; expected question, answer[, context])"
                )
            columns_checked = True
        for name in ("question", "answer"):
            if name not in record:
                raise DataSourceError(f"{origin}: row {row}: field `{name}` is missing")
        question, answer = _text(record["question"]), _text(record["answer"])
        context = _text(record.get("context"))
        if spec.type == "text2sql" and not context.strip():
            context, question = split_schema_question(question)
        if spec.type == "tool_calling":
            try:
                answer = canonical_tool_call(answer)
            except ValueError:
                pass  # left as is: validation reports it with the row and field
        for name, value in (("question", question), ("answer", answer)):
            if not value.strip():
                raise DataSourceError(f"{origin}: row {row}: field `{name}` is empty")
        row_id = _text(record.get("id")).strip() or f"{split}-{row:04d}"
        if row_id in seen_ids:
            raise DataSourceError(f"{origin}: row {row}: field `id` {row_id!r} repeats row {seen_ids[row_id]}")
        seen_ids[row_id] = row
        out["id"].append(row_id)
        out["question"].append(question)
        out["answer"].append(answer.strip())
        out["context"].append(context)
    if not seen_ids:
        raise DataSourceError(f"{origin}: no data rows ({split} split)")
    return pl.DataFrame(out, schema=dict.fromkeys(COLUMNS, pl.String))


def _load_unstructured(spec: TaskSpec, directory: Path) -> tuple[pl.DataFrame | None, str | None]:
    """The task's unlabelled texts: ``data.unstructured_file`` in ``directory``, else any
    ``unstructured.{jsonl,csv}`` there (a local data dir brings its own), else the configured file
    in the shipped sample (or an absolute path)."""
    name = spec.data.unstructured_file
    candidates = []
    if name and Path(name).is_absolute():
        candidates.append(Path(name))
    else:
        if name:
            candidates.append(directory / name)
        found = _find_file(directory, "unstructured", required=False)
        if found:
            candidates.append(found)
        if name:
            candidates.append(spec.sample_dir() / name)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        if name:
            raise DataSourceError(
                f"{spec.source_file}: field `data.unstructured_file`: {name} not found "
                f"(looked in {', '.join(sorted({str(c.parent) for c in candidates}))})"
            )
        return None, None
    return read_unstructured(path), str(path)


def read_unstructured(path: str | Path) -> pl.DataFrame:
    """Unlabelled texts: a ``context`` (or ``question`` / ``text``) column -> columns ``id``, ``context``."""
    ids, texts = [], []
    column = None
    for row, record in read_records(path):
        if column is None:
            column = next((c for c in ("context", "question", "text") if c in record), None)
            if column is None:
                raise DataSourceError(f"{path}: row {row}: missing column `context` (or `question`/`text`)")
        text = _text(record.get(column))
        if not text.strip():
            raise DataSourceError(f"{path}: row {row}: field `{column}` is empty")
        ids.append(_text(record.get("id")).strip() or f"unstructured-{row:04d}")
        texts.append(text)
    if not ids:
        raise DataSourceError(f"{path}: no data rows")
    return pl.DataFrame({"id": ids, "context": texts}, schema={"id": pl.String, "context": pl.String})


# -- Hugging Face datasets ---------------------------------------------------------------------
def hf_origin(hf: HFSource) -> str:
    return f"hf:{hf.path}" + (f":{hf.name}" if hf.name else "")


def _open_hf_split(hf: HFSource, split: str):
    """One split as a ``datasets.Dataset``. ``hf.path`` may be a hub id, a local directory of data
    files (parquet/json/csv, as ``load_dataset`` reads them) or a ``save_to_disk`` directory."""
    import datasets

    local = Path(hf.path)
    try:
        if local.is_dir() and ((local / "dataset_dict.json").exists() or (local / "dataset_info.json").exists()):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataSourceError(f"{hf_origin(hf)}: no split {split!r} (has {', '.join(loaded)})")
                return loaded[split]
            return loaded
        return datasets.load_dataset(hf.path, hf.name, split=split, revision=hf.revision)
    except DataSourceError:
        raise
    except (ConnectionError, TimeoutError) as exc:
        raise HubUnavailableError(f"{hf_origin(hf)}: hub unreachable: {exc}") from exc
    except ValueError as exc:  # datasets reports unknown splits as ValueError
        raise DataSourceError(f"{hf_origin(hf)}: split {split!r}: {exc}") from exc
    except OSError as exc:
        # Offline/unreachable hub surfaces as OSError subclasses (LocalEntryNotFoundError, ...).
        if local.exists():
            raise DataSourceError(f"{hf_origin(hf)}: cannot read local dataset: {exc}") from exc
        raise HubUnavailableError(f"{hf_origin(hf)}: cannot load from the hub: {exc}") from exc


def _context_text(value: Any) -> str:
    """HF context columns -> the passage text of the public layout.

    HotpotQA's ``{"title": [...], "sentences": [[...], ...]}`` becomes one "<title>\\n<text>" paragraph
    per title, separated by blank lines; a list of strings is joined the same way.
    """
    if isinstance(value, dict) and "title" in value and "sentences" in value:
        paragraphs = []
        for title, sentences in zip(value["title"], value["sentences"]):
            body = "".join(sentences) if isinstance(sentences, list) else str(sentences)
            paragraphs.append(f"{title}\n{body.strip()}")
        return "\n\n".join(paragraphs)
    if isinstance(value, list):
        return "\n\n".join(_text(v) for v in value)
    return _text(value)


def _hf_split_frame(spec: TaskSpec, hf: HFSource, split: str, cap: int | None) -> pl.DataFrame:
    ds = _open_hf_split(hf, split)
    origin = f"{hf_origin(hf)} (split {split})"
    columns = set(ds.column_names)
    for field_name in ("question_field", "answer_field", "context_field"):
        column = getattr(hf, field_name)
        if column is not None and column not in columns:
            raise DataSourceError(
                f"{spec.source_file}: field `data.hf.{field_name}`: column {column!r} not in {origin} "
                f"(columns: {', '.join(sorted(columns))})"
            )

    to_label = None
    if hf.label_names_from_feature:
        feature = ds.features[hf.answer_field]
        if not hasattr(feature, "int2str") or not getattr(feature, "names", None):
            raise DataSourceError(
                f"{spec.source_file}: field `data.hf.label_names_from_feature`: column {hf.answer_field!r} "
                f"of {origin} is not a ClassLabel ({type(feature).__name__})"
            )
        to_label = feature.int2str
        names = list(feature.names)
        if hf.label_subset:
            unknown = [name for name in hf.label_subset if name not in names]
            if unknown:
                raise DataSourceError(
                    f"{spec.source_file}: field `data.hf.label_subset`: {unknown} are not labels of {origin}"
                )

    # Choose row indices first so only the kept rows are decoded (HotpotQA contexts are large).
    per_label = spec.type == "classification"
    if per_label or hf.label_subset:
        raw_labels = ds[hf.answer_field]
        labels = [to_label(v) if to_label else _text(v) for v in raw_labels]
        keep_set = set(hf.label_subset) if hf.label_subset else None
        counts: dict[str, int] = {}
        indices = []
        for index, label in enumerate(labels):
            if keep_set is not None and label not in keep_set:
                continue
            if per_label and cap is not None and counts.get(label, 0) >= cap:
                continue
            counts[label] = counts.get(label, 0) + 1
            indices.append(index)
        if not per_label and cap is not None:
            indices = indices[:cap]
    else:
        indices = list(range(len(ds) if cap is None else min(cap, len(ds))))
    subset = ds.select(indices)

    def records() -> Iterator[tuple[int, dict[str, Any]]]:
        for position, (index, item) in enumerate(zip(indices, subset), start=1):
            answer = item[hf.answer_field]
            if to_label is not None:
                answer = to_label(answer)
            elif isinstance(answer, dict) and "text" in answer:  # SQuAD-style {"text": [...]}
                texts = answer["text"]
                answer = texts[0] if isinstance(texts, list) and texts else texts
            record = {
                "id": _text(item.get("id")) or f"{split}-{index}",
                "question": item[hf.question_field],
                "answer": answer,
                "context": _context_text(item[hf.context_field]) if hf.context_field else "",
            }
            yield position, record

    return normalise_records(spec, records(), origin, "seed" if split == hf.train_split else "test")


def load_hf(spec: TaskSpec, hf: HFSource | None = None) -> LoadedData:
    hf = hf or spec.data.hf
    if hf is None:
        raise DataSourceError(f"{spec.source_file}: field `data.hf` is not set")
    seed = _hf_split_frame(spec, hf, hf.train_split, hf.max_seed_rows)
    test = _hf_split_frame(spec, hf, hf.test_split, hf.max_test_rows)
    unstructured, unstructured_path = None, None
    if spec.data.unstructured_file:
        unstructured, unstructured_path = _load_unstructured(spec, spec.sample_dir())
    files = [hf.path] + ([unstructured_path] if unstructured_path else [])
    return LoadedData(seed, test, unstructured, hf_origin(hf), files)
