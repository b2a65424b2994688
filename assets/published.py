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
    STAGE_THROUGHPUT,
)

from .keys import cost_table_key, task_key, throughput_key

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
    """What ``<task>_cost_table`` may read: each upstream stage's successful runs."""
    return {STAGE_STUDENT_EVAL: published_runs(instance, task_key(task, "student_eval")),
            STAGE_BASELINES: published_runs(instance, task_key(task, "baseline_evals")),
            STAGE_FRONTIER: published_runs(instance, task_key(task, "frontier_evals")),
            STAGE_THROUGHPUT: published_runs(instance, throughput_key(task))}


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
