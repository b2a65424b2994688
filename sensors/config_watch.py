"""Sensor ``config_change_sensor``: re-materialise what a changed configuration file invalidates.

- The pricing file changed: ``pricing`` (the snapshot of that file), every ``<task>_cost_table``
  that has been materialised, and ``benchmark_report``. Nothing of the model pipeline: re-pricing
  never calls a model.
- Task T's prompt or description changed (``description``, ``prompt_template``, ``labels``, ``tools``
  in its YAML: what the rendered prompt is made of): ``T_teacher_data`` and everything downstream of
  it, nothing of other tasks.

The cursor keeps, per file, its mtime, size and content hash. Only files whose mtime or size moved
are read and hashed. A change is "the hash differs from the last one seen", so reverting a file to
earlier content triggers too. The first evaluation only records the baseline. A task YAML that does
not parse is reported and left at its last good hash (fixing it is then compared with that).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from distil_platform.assets.keys import (
    PRICING_KEY,
    REPORT_KEY,
    TASK_STAGES,
    cost_table_key,
    teacher_data_key,
)

from distil_platform.taskspec import TaskSpec

PROMPT_FIELDS = ("description", "prompt_template", "labels", "tools")
PRICING_ID = "pricing"
SENSOR_NAME = "config_change_sensor"
REPRICING_JOB = "repricing"
TASK_REFRESH_JOB = "task_refresh"
# Stages downstream of <task>_teacher_data, used only when no asset graph is at hand.
_DOWNSTREAM_STAGES = TASK_STAGES[TASK_STAGES.index("_teacher_data"):]


@dataclass
class Scan:
    cursor: dict[str, Any]
    changed: list[str] = field(default_factory=list)  # watched ids whose content hash changed
    problems: list[str] = field(default_factory=list)
    hashed: list[str] = field(default_factory=list)  # ids whose file was read this time


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def pricing_content_hash(data: bytes) -> str:
    """Parsed content, so comment/whitespace edits do not re-price; an unparseable file hashes its
    bytes, so the pricing run happens and fails loudly (the previous snapshot stays current)."""
    try:
        return hashlib.sha256(_canonical(yaml.safe_load(data.decode("utf-8"))).encode()).hexdigest()
    except (yaml.YAMLError, UnicodeDecodeError):
        return hashlib.sha256(data).hexdigest()


def prompt_content_hash(data: bytes, path: str) -> str:
    """Hash of the prompt-defining fields of a task YAML (raises ValueError if it does not parse)."""
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a task file must be a mapping")
    return hashlib.sha256(_canonical({k: raw.get(k) for k in PROMPT_FIELDS}).encode()).hexdigest()


def watched_files(specs: Mapping[str, TaskSpec], pricing_path: Path) -> dict[str, str]:
    """Watched id -> path: ``pricing`` and ``task:<name>`` for every task with a source file."""
    files = {PRICING_ID: str(pricing_path)}
    for name, spec in sorted(specs.items()):
        if spec.source_file:
            files[f"task:{name}"] = spec.source_file
    return files


def scan(previous: Mapping[str, Any] | None, files: Mapping[str, str]) -> Scan:
    """Compare ``files`` with the cursor ``previous``; returns the new cursor and what changed."""
    prev_files = dict((previous or {}).get("files", {}))
    result = Scan(cursor={"files": {}, "seq": int((previous or {}).get("seq", 0))})
    for wid, path in files.items():
        old = prev_files.get(wid)
        try:
            st = os.stat(path)
        except OSError as exc:
            result.problems.append(f"{path}: cannot stat ({exc.strerror})")
            if old:
                result.cursor["files"][wid] = old
            continue
        if old and old.get("path") == path and old.get("mtime_ns") == st.st_mtime_ns and old.get("size") == st.st_size:
            result.cursor["files"][wid] = old  # untouched: not even read
            continue
        try:
            data = Path(path).read_bytes()
            digest = pricing_content_hash(data) if wid == PRICING_ID else prompt_content_hash(data, path)
        except (OSError, ValueError) as exc:
            result.problems.append(str(exc))
            if old:
                result.cursor["files"][wid] = old
            continue
        result.hashed.append(wid)
        result.cursor["files"][wid] = {"path": path, "mtime_ns": st.st_mtime_ns, "size": st.st_size, "hash": digest}
        if old is not None and old.get("hash") != digest:
            result.changed.append(wid)
    return result


def materialized_cost_tables(instance: dg.DagsterInstance, tasks: Sequence[str]) -> list[dg.AssetKey]:
    """Cost-table keys of ``tasks`` that have at least one materialisation in ``instance``."""
    return [cost_table_key(t) for t in tasks if instance.get_latest_materialization_event(cost_table_key(t))]


def downstream_of_teacher_data(task: str, asset_graph: Any | None) -> list[dg.AssetKey]:
    """``<task>_teacher_data`` and everything downstream of it (from the asset graph when given)."""
    start = teacher_data_key(task)
    if asset_graph is not None:
        keys = dg.AssetSelection.assets(start).downstream().resolve(asset_graph)
        return sorted(keys, key=lambda k: k.to_user_string())
    return [dg.AssetKey(f"{task}{s}") for s in _DOWNSTREAM_STAGES] + [REPORT_KEY]


def repricing_keys(instance: dg.DagsterInstance, tasks: Sequence[str]) -> list[dg.AssetKey]:
    return [PRICING_KEY, *materialized_cost_tables(instance, tasks), REPORT_KEY]


def build_config_change_sensor(specs: Mapping[str, TaskSpec], repricing_job, task_refresh_job,
                               pricing_path_fn=None) -> dg.SensorDefinition:
    from distil_platform.pricing import pricing_file

    tasks = sorted(specs)
    pricing_path_fn = pricing_path_fn or pricing_file

    @dg.sensor(
        name=SENSOR_NAME,
        jobs=[repricing_job, task_refresh_job],
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Watches the pricing file and every task YAML. Pricing change: pricing + every materialised "
        "<task>_cost_table + benchmark_report (no model calls). A task's prompt/description change: "
        "<task>_teacher_data and everything downstream of it.",
    )
    def config_change_sensor(context: dg.SensorEvaluationContext):
        previous = json.loads(context.cursor) if context.cursor else None
        result = scan(previous, watched_files(specs, pricing_path_fn()))
        for problem in result.problems:
            context.log.warning(problem)
        requests = []
        seq = result.cursor["seq"]
        if PRICING_ID in result.changed:
            seq += 1
            requests.append(dg.RunRequest(
                run_key=f"pricing-{seq}", job_name=REPRICING_JOB,
                asset_selection=repricing_keys(context.instance, tasks),
                tags={"distil/trigger": "pricing_file_changed"},
            ))
        graph = context.repository_def.asset_graph if context.repository_def is not None else None
        for wid in result.changed:
            if not wid.startswith("task:"):
                continue
            task = wid.split(":", 1)[1]
            seq += 1
            requests.append(dg.RunRequest(
                run_key=f"{task}-prompt-{seq}", job_name=TASK_REFRESH_JOB,
                asset_selection=downstream_of_teacher_data(task, graph),
                tags={"distil/trigger": "task_prompt_changed", "distil/task": task},
            ))
        result.cursor["seq"] = seq
        cursor = json.dumps(result.cursor, sort_keys=True)
        if not requests:
            reason = "baseline recorded" if previous is None else "no watched file changed"
            if result.problems:
                reason += f"; {len(result.problems)} problem(s): " + "; ".join(result.problems)[:500]
            return dg.SensorResult(skip_reason=dg.SkipReason(reason), cursor=cursor)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return config_change_sensor
