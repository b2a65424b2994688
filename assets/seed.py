"""Seed-set asset ``<task>``: seed (train) and test splits as Parquet, plus blocking checks."""


import hashlib
from collections import Counter

import dagster as dg
import polars as pl
from distil_platform.resources.store import ResultsStoreResource

from distil_platform.storage import paths
from distil_platform.storage.store import seed_sets
from distil_platform.tasks.spec import TaskSpec
from distil_platform.tasks.validation import find_overlaps, validate_frame

from .metadata import location_metadata, polars_column_schema, table_metadata


class InvalidSeedSetError(ValueError):
    """Rows that are not valid for the task. The message names file, row and field."""


class SeedSetConfig(dg.Config):
    """Run-config overrides of the task YAML's ``data.traces`` (None = the YAML's value, else its default).
    A ``traces_path`` turns traces on for a task whose YAML has no ``data.traces`` block."""

    traces_path: str | None = None
    traces_format: str | None = None  # auto | openai | langfuse
    traces_labelled: bool | None = None
    traces_mask_pii: bool | None = None
    traces_test_share: float | None = None


def load_task_data(spec: TaskSpec, config: SeedSetConfig | None = None):
    """``(LoadedData, TraceData | None)``: the task's seed and test rows - from its traces when they are
    the labels (``data.traces.labelled``), else from the first configured source - and its traces."""
    from distil_platform.tasks.sources import LoadedData, load_seed_and_test
    from distil_platform.tasks.traces import load_traces, traces_config, traces_path

    config = config or SeedSetConfig()
    cfg = traces_config(spec, {"path": config.traces_path, "format": config.traces_format,
                               "labelled": config.traces_labelled, "mask_pii": config.traces_mask_pii,
                               "test_share": config.traces_test_share})
    if cfg is None:
        return load_seed_and_test(spec), None
    path = traces_path(spec, cfg)
    traces = load_traces(spec, cfg, path)
    if not cfg.labelled:
        return load_seed_and_test(spec), traces
    data = LoadedData(traces.seed, traces.test, None, f"traces:{path}", [str(path), str(path)],
                      note=traces.summary["labels_note"])
    return data, traces


def _frame_hash(*frames: pl.DataFrame) -> str:
    h = hashlib.sha256()
    for df in frames:
        for row in df.select("id", "question", "answer", "context").iter_rows():
            h.update("\x1f".join(row).encode())
            h.update(b"\x1e")
    return h.hexdigest()


def describe_invalid(spec: TaskSpec, df: pl.DataFrame, split: str, origin: str) -> list[str]:
    return [
        f"{origin} ({split}) row {idx + 1} id={row_id!r} field `{field}`: {reason}"
        for idx, row_id, field, reason in validate_frame(spec, df)
    ]


def label_distribution(spec: TaskSpec, df: pl.DataFrame) -> dict[str, int]:
    """Labels for classification, tool names for tool calling; empty otherwise."""
    if spec.type == "classification":
        return dict(Counter(df["answer"].to_list()).most_common())
    if spec.type == "tool_calling":
        import json

        names = []
        for answer in df["answer"].to_list():
            try:
                names.append(json.loads(answer).get("name", "?"))
            except (ValueError, AttributeError):
                names.append("?")
        return dict(Counter(names).most_common())
    return {}


def build_seed_set_asset(spec: TaskSpec) -> list:
    task = spec.name

    @dg.asset(
        key=dg.AssetKey(task),
        group_name=task,
        kinds={"polars", "parquet"},
        description=f"Seed (train) and test splits of `{task}` ({spec.type}), Parquet under "
        f"$DAGSTER_HOME/artifacts/{task}/seed_set/<run id>/ (or under DISTIL_ARTIFACTS_URL). From production "
        "traces where `data.traces` (or env DISTIL_TRACES_<TASK>) names them: masked, checked, deduplicated, "
        "split; their summary in traces.json, the calls without a usable answer (for the teacher) beside it.",
        metadata={"task_type": spec.type, "metric": spec.metric_name, "task_file": spec.source_file or ""},
    )
    def seed_set(context: dg.AssetExecutionContext, config: SeedSetConfig,
                 results_store: ResultsStoreResource) -> dg.Output[dict]:
        data, traces = load_task_data(spec, config)
        origin = data.source
        context.log.info(f"{task}: loaded {data.seed.height} seed / {data.test.height} test rows from {origin}")
        # A bad row fails the run before anything is written, so the last good materialisation stays.
        seed_file = data.files[0] if len(data.files) > 0 else origin
        test_file = data.files[1] if len(data.files) > 1 else origin
        problems = describe_invalid(spec, data.seed, "seed", seed_file) + describe_invalid(
            spec, data.test, "test", test_file
        )
        if problems:
            shown = "\n".join(problems[:20])
            more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise InvalidSeedSetError(f"{task}: {len(problems)} invalid row(s):\n{shown}{more}")

        # Local directory, or an object-store prefix (DISTIL_ARTIFACTS_URL): later steps read the URLs.
        seed_path = paths.write_parquet(data.seed, paths.artifact_url(task, "seed_set", context.run_id, "seed.parquet"))
        test_path = paths.write_parquet(data.test, paths.artifact_url(task, "seed_set", context.run_id, "test.parquet"))
        unstructured_path = None
        if data.unstructured is not None and data.unstructured.height:
            unstructured_path = paths.write_parquet(
                data.unstructured, paths.artifact_url(task, "seed_set", context.run_id, "unstructured.parquet"))

        trace_values, trace_metadata = {}, {}
        if traces is not None:
            trace_values, trace_metadata = _write_traces(traces, task, context.run_id)
            context.log.info(f"{task}: traces {traces.summary['calls']} calls: {traces.summary['labelled']} labelled, "
                             f"{traces.summary['unlabelled']} to the teacher, {traces.summary['rejected']} rejected")

        content_hash = _frame_hash(data.seed, data.test)
        results_store.store().insert(
            seed_sets,
            [dict(task=task, run_id=context.run_id, source=origin, n_seed=data.seed.height,
                  n_test=data.test.height, seed_path=str(seed_path), test_path=str(test_path),
                  content_hash=content_hash)],
        )
        value = {
            "seed_path": str(seed_path),
            "test_path": str(test_path),
            "unstructured_path": str(unstructured_path) if unstructured_path else None,
            "source": origin,
            "content_hash": content_hash,
            **trace_values,
        }
        dist = label_distribution(spec, data.seed)
        metadata = {
            "dagster/row_count": data.seed.height + data.test.height,
            "dagster/column_schema": polars_column_schema(data.seed),
            "source": origin,
            "source_note": data.note or "",
            "n_seed": data.seed.height,
            "n_test": data.test.height,
            "n_unstructured": data.unstructured.height if data.unstructured is not None else 0,
            "seed_path": location_metadata(seed_path),
            "test_path": location_metadata(test_path),
            "content_hash": content_hash[:16],
            "seed_sample": table_metadata(data.seed.to_dicts(), ["id", "question", "answer"]),
            **trace_metadata,
        }
        if dist:
            metadata["seed_label_distribution"] = dg.MetadataValue.json(dist)
            metadata["test_label_distribution"] = dg.MetadataValue.json(label_distribution(spec, data.test))
        return dg.Output(value, metadata=metadata)

    @dg.asset_check(asset=seed_set, name="rows_valid", blocking=True,
                    description="Every seed and test row is valid for the task type.")
    def rows_valid(seed_set: dict) -> dg.AssetCheckResult:
        return check_rows_valid(spec, seed_set)

    @dg.asset_check(asset=seed_set, name="no_seed_test_leakage", blocking=True,
                    description="No test question also appears (after normalisation) among the seeds.")
    def no_leakage(seed_set: dict) -> dg.AssetCheckResult:
        return check_no_leakage(seed_set)

    @dg.asset_check(asset=seed_set, name="minimum_sizes", blocking=True,
                    description="Enough seed and test rows for training and a meaningful CI.")
    def minimum_sizes(seed_set: dict) -> dg.AssetCheckResult:
        return check_minimum_sizes(spec, seed_set)

    return [seed_set, rows_valid, no_leakage, minimum_sizes]


def _write_traces(traces, task: str, run_id: str) -> tuple[dict, dict]:
    """The trace source's artefacts (``traces.json``: its summary, read by the cost table; and
    ``traces_unlabelled.parquet``: the rows for the teacher) and metadata. Every row is masked already."""
    import json

    from distil_platform.tasks.traces import summary_markdown

    summary = traces.summary
    summary_url = paths.write_bytes(paths.artifact_url(task, "seed_set", run_id, "traces.json"),
                                    json.dumps(summary, indent=1, sort_keys=True).encode())
    values = {"traces_summary_path": summary_url, "traces_unlabelled_path": None,
              "labels_note": summary["labels_note"] if summary["labels_are_production_answers"] else None}
    if traces.unlabelled.height:
        values["traces_unlabelled_path"] = paths.write_parquet(
            traces.unlabelled, paths.artifact_url(task, "seed_set", run_id, "traces_unlabelled.parquet"))
    if traces.production_answers is not None:  # scored against the test labels by <task>_frontier_evals
        values["traces_production_answers_path"] = paths.write_parquet(
            traces.production_answers, paths.artifact_url(task, "seed_set", run_id, "traces_production_answers.parquet"))
        values["production_model"] = summary["production_model"]
        values["traces_masked"] = bool(summary["mask_pii"])
    usage = summary["usage"]
    metadata = {
        "traces": dg.MetadataValue.md(summary_markdown(summary)),
        "labels_note": summary["labels_note"],
        "trace_calls": dg.MetadataValue.int(summary["calls"]),
        "trace_rows_labelled": dg.MetadataValue.int(summary["labelled"]),
        "trace_rows_unlabelled": dg.MetadataValue.int(summary["unlabelled"]),
        "trace_rows_rejected": dg.MetadataValue.int(summary["rejected"]),
        "trace_rejections_by_reason": dg.MetadataValue.json(summary["rejections_by_reason"]),
        "trace_rejected_examples": dg.MetadataValue.md("\n".join(f"- {w}" for w in summary["rejected_examples"])
                                                       or "none"),
        "trace_duplicates": dg.MetadataValue.int(summary["duplicates"]),
        "trace_decontaminated": dg.MetadataValue.int(summary["decontaminated"]),
        "pii_masked": dg.MetadataValue.json(summary["pii_masked"] if summary["mask_pii"] else {"masking": "off"}),
        "production_model": summary["production_model"],
        "production_usage": dg.MetadataValue.json(usage),
        "production_answers": dg.MetadataValue.int(summary["production_answers"]),
        "traces_summary_path": location_metadata(summary_url),
    }
    return values, metadata


# The check bodies are plain functions so tests can run them on planted data.
def check_rows_valid(spec: TaskSpec, seed_set: dict) -> dg.AssetCheckResult:
    problems = []
    for split in ("seed", "test"):
        path = seed_set[f"{split}_path"]
        problems += describe_invalid(spec, paths.read_parquet(path), split, path)
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"n_invalid": len(problems), "first_problems": dg.MetadataValue.md("\n".join(
            f"- {p}" for p in problems[:10]) or "none")},
    )


def check_no_leakage(seed_set: dict) -> dg.AssetCheckResult:
    seed = paths.read_parquet(seed_set["seed_path"])
    test = paths.read_parquet(seed_set["test_path"])
    overlaps = find_overlaps(seed, test)
    return dg.AssetCheckResult(
        passed=not overlaps,
        metadata={"n_overlapping_pairs": len(overlaps),
                  "examples": dg.MetadataValue.json([list(p) for p in overlaps[:10]])},
    )


def check_minimum_sizes(spec: TaskSpec, seed_set: dict) -> dg.AssetCheckResult:
    n_seed = paths.read_parquet(seed_set["seed_path"]).height
    n_test = paths.read_parquet(seed_set["test_path"]).height
    return dg.AssetCheckResult(
        passed=n_seed >= spec.min_seed_rows and n_test >= spec.min_test_rows,
        metadata={"n_seed": n_seed, "n_test": n_test, "min_seed_rows": spec.min_seed_rows,
                  "min_test_rows": spec.min_test_rows},
    )


def read_split(seed_set: dict, split: str) -> pl.DataFrame:
    path = seed_set.get(f"{split}_path")
    try:
        if not path:
            raise FileNotFoundError(path)
        return paths.read_parquet(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"seed set has no {split} split at {path}; re-materialise the seed set") from exc
