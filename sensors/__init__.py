"""Sensors, schedules and the jobs they launch.

- ``config_change_sensor`` (default RUNNING): pricing file or a task's prompt changed →
  re-price / re-distil exactly what that change invalidates (see ``config_watch``).
- ``monthly_repricing`` (``0 6 1 * *`` UTC, default RUNNING): refresh the price snapshot
  (litellm's hosted map when reachable) and re-materialise every existing cost table and the report.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg
from distil_platform.assets.keys import PRICING_KEY, REPORT_KEY, cost_table_key, teacher_data_key

from distil_platform.taskspec import TaskSpec

from .config_watch import REPRICING_JOB, TASK_REFRESH_JOB, build_config_change_sensor, repricing_keys

MONTHLY_REPRICING = "monthly_repricing"
MONTHLY_CRON = "0 6 1 * *"


def build_jobs(task_names: list[str]) -> tuple[dg.UnresolvedAssetJobDefinition, dg.UnresolvedAssetJobDefinition]:
    repricing_job = dg.define_asset_job(
        REPRICING_JOB,
        selection=dg.AssetSelection.assets(PRICING_KEY, REPORT_KEY, *[cost_table_key(t) for t in task_names]),
        description="Re-price: price snapshot, cost tables and the benchmark report (no model calls).",
    )
    task_refresh_job = dg.define_asset_job(
        TASK_REFRESH_JOB,
        selection=dg.AssetSelection.assets(*[teacher_data_key(t) for t in task_names]).downstream(),
        description="Re-distil a task after its prompt changed: teacher data and everything downstream.",
    )
    return repricing_job, task_refresh_job


def build_monthly_repricing(task_names: list[str], repricing_job) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=MONTHLY_REPRICING,
        cron_schedule=MONTHLY_CRON,
        execution_timezone="UTC",
        job=repricing_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="On the 1st of each month, 06:00 UTC: refresh prices (litellm's hosted map when reachable, "
        "else the bundled one, always overlaid by the pricing file) and re-price every materialised task.",
    )
    def monthly_repricing(context: dg.ScheduleEvaluationContext):
        return dg.RunRequest(
            asset_selection=repricing_keys(context.instance, task_names),
            run_config={"ops": {"pricing": {"config": {"refresh_hosted": True}}}},
            tags={"distil/trigger": "monthly_repricing"},
        )

    return monthly_repricing


def build_sensors_and_schedules(specs: Mapping[str, TaskSpec]):
    """``(sensors, schedules, jobs)`` for the Definitions."""
    names = sorted(specs)
    repricing_job, task_refresh_job = build_jobs(names)
    sensor = build_config_change_sensor(specs, repricing_job, task_refresh_job)
    schedule = build_monthly_repricing(names, repricing_job)
    return [sensor], [schedule], [repricing_job, task_refresh_job]
