"""Which rows readers may use: the store run ids of an upstream asset's *successful*
materialisations, read from Dagster's own record (its event log), never "the newest rows in the
store".

An eval or throughput step writes its rows into the results store as it goes, under its run id,
and a run that fails afterwards leaves them there (for resume and audit). Dagster records a
materialisation only when the step returned its output, so the run ids of those records are the
rows that count. Every asset that writes rows readers use names its store run id in its metadata
(``store_run_id``); a materialisation without it (from before it was written, or an external
report) counts under its Dagster run id, which is what the assets write under. A runless report
without ``store_run_id`` names no rows.
"""

from typing import Any

import dagster as dg

from distil_platform.economics.cost_inputs import (
    STAGE_BASELINES,
    STAGE_COST_TABLE,
    STAGE_FRONTIER,
    STAGE_ROUTING,
    STAGE_STUDENT_EVAL,
    STAGE_TEACHER_EVAL,
    STAGE_THROUGHPUT,
)

from .keys import candidate_key, cost_table_key, task_key, teacher_eval_key, throughput_key

STORE_RUN_ID = "store_run_id"
# Successful materialisations read per asset, newest first: the cost table needs the latest
# distilled eval and the latest seed-only one, and the latest profile of the student's checkpoint.
HISTORY = 50


def store_run_id_metadata(run_id: str) -> dict[str, Any]:
    """The metadata entry that names the results-store run id of a materialisation's rows."""
    return {STORE_RUN_ID: run_id}


def published_runs(instance: dg.DagsterInstance, key: dg.AssetKey, limit: int = HISTORY) -> list[str]:
    """Store run ids of ``key``'s successful materialisations, newest first ([] if none)."""
    out: list[str] = []
    for record in instance.fetch_materializations(key, limit=limit).records:
        materialization = record.asset_materialization
        entry = materialization.metadata.get(STORE_RUN_ID) if materialization is not None else None
        run = getattr(entry, "value", entry) or record.run_id  # "" for a runless report without it
        if run and run not in out:
            out.append(str(run))
    return out


def cost_table_runs(instance: dg.DagsterInstance, task: str) -> dict[str, list[str]]:
    """What ``<task>_cost_table`` may read: each upstream stage's successful runs (the teacher eval's
    for the gap closed)."""
    return {STAGE_STUDENT_EVAL: published_runs(instance, task_key(task, "student_eval")),
            STAGE_BASELINES: published_runs(instance, task_key(task, "baseline_evals")),
            STAGE_FRONTIER: published_runs(instance, task_key(task, "frontier_evals")),
            STAGE_THROUGHPUT: published_runs(instance, throughput_key(task)),
            STAGE_TEACHER_EVAL: published_runs(instance, teacher_eval_key(task))}


def student_candidate_runs(instance: dg.DagsterInstance, task: str, candidates: list) -> list[dict[str, Any]]:
    """Per student candidate (``tasks.candidates.StudentCandidate``, first = today's keys): its name,
    base model, the successful runs of its student eval and throughput, and its latest training's
    wall time (``wall_time_s``; None if never trained), for the cost table's choice."""
    out = []
    for i, candidate in enumerate(candidates):
        suffix = candidate.name if i else None
        event = instance.get_latest_materialization_event(candidate_key(task, "student", suffix))
        materialization = event.asset_materialization if event is not None else None
        wall = materialization.metadata.get("wall_time_s") if materialization is not None else None
        out.append({"name": candidate.name, "base_model": candidate.base_model,
                    "training_s": float(getattr(wall, "value", wall)) if wall is not None else None,
                    "runs": {STAGE_STUDENT_EVAL: published_runs(instance, candidate_key(task, "student_eval", suffix)),
                             STAGE_THROUGHPUT: published_runs(instance, candidate_key(task, "throughput", suffix))}})
    return out


# The teacher eval's metadata entries the gate is read from (``evaluation.teacher_gate.gate_decision``).
GATE_FIELDS = ("teacher", "teacher_source", "verdict", "score", "metric", "reason", "n")


def latest_teacher_eval(instance: dg.DagsterInstance, task: str) -> dict[str, Any] | None:
    """The gate as ``<task>_teacher_eval`` last recorded it (its latest materialisation's metadata,
    whichever run made it, plus ``run_id``); None when it was never materialised. The teacher data
    reads it here, so the gate holds in any run or selection, not only in the run that evaluated."""
    event = instance.get_latest_materialization_event(teacher_eval_key(task))
    materialization = event.asset_materialization if event is not None else None
    if materialization is None:
        return None
    out = {k: getattr(v, "value", v) for k, v in materialization.metadata.items() if k in GATE_FIELDS}
    out["run_id"] = event.run_id
    return out


def student_gate_notes(instance: dg.DagsterInstance, task: str, limit: int = HISTORY) -> dict[str, str]:
    """Student run id -> what the teacher gate did to the data that student trained on (its
    ``teacher_gate`` metadata), for the cost table and the report."""
    out: dict[str, str] = {}
    for record in instance.fetch_materializations(task_key(task, "student"), limit=limit).records:
        materialization = record.asset_materialization
        entry = materialization.metadata.get("teacher_gate") if materialization is not None else None
        if entry is not None and record.run_id not in out:
            out[record.run_id] = str(getattr(entry, "value", entry))
    return out


def routing_runs(instance: dg.DagsterInstance, task: str) -> dict[str, list[str]]:
    """What ``<task>_routing`` may read: the cost table's successful materialisations (its table ids)
    and the eval stages' (where a cost row names no eval run)."""
    runs = cost_table_runs(instance, task)
    runs[STAGE_COST_TABLE] = published_runs(instance, cost_table_key(task))
    return runs


def report_runs(instance: dg.DagsterInstance, tasks: list[str]) -> dict[str, dict[str, list[str]]]:
    """What ``benchmark_report`` may read per task: its cost table's and routing's successful runs."""
    return {t: {STAGE_COST_TABLE: published_runs(instance, cost_table_key(t)),
                STAGE_ROUTING: published_runs(instance, task_key(t, "routing"))} for t in tasks}
