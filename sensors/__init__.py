"""Sensors and schedules.

- ``config_change_sensor`` (default RUNNING): the automation-condition sensor. It evaluates every
  asset's ``AutomationCondition`` (assets/automation.py): it observes the configuration files
  (``pricing_file``, ``<task>_prompt``, group ``config``) on their cron, and a new data version
  requests exactly what it invalidates — a pricing edit: ``pricing``, every materialised cost table
  and routing table, and the report; task T's prompt edit: ``T_teacher_data`` and everything
  downstream, nothing of other tasks. The UI shows per asset why a run was requested.
- ``monthly_repricing`` (``0 6 1 * *`` UTC, default RUNNING): refreshes the price snapshot
  (litellm's hosted map when reachable) and re-materialises every existing cost table, routing
  table and the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg
from distil_platform.assets.keys import PRICING_KEY, REPORT_KEY, TASK_STAGES, task_key

from distil_platform.tasks.spec import TaskSpec

SENSOR_NAME = "config_change_sensor"
REPRICING_JOB = "repricing"
MONTHLY_REPRICING = "monthly_repricing"
MONTHLY_CRON = "0 6 1 * *"
# Per-task stages that re-pricing recomputes from the store (no model calls).
REPRICED_STAGES = tuple(s.lstrip("_") for s in ("_cost_table", "_routing") if s in TASK_STAGES)


def repriced_keys(task_names: Sequence[str]) -> list[dg.AssetKey]:
    return [task_key(t, s) for t in task_names for s in REPRICED_STAGES]


def repricing_keys(instance: dg.DagsterInstance, task_names: Sequence[str]) -> list[dg.AssetKey]:
    """``pricing``, the re-priced assets of every task that has them materialised, the report."""
    done = [k for k in repriced_keys(task_names) if instance.get_latest_materialization_event(k)]
    return [PRICING_KEY, *done, REPORT_KEY]


def build_repricing_job(task_names: Sequence[str]) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        REPRICING_JOB,
        selection=dg.AssetSelection.assets(PRICING_KEY, REPORT_KEY, *repriced_keys(task_names)),
        description="Re-price: price snapshot, cost tables, routing and the benchmark report (no model calls).",
    )


def build_monthly_repricing(task_names: Sequence[str], repricing_job) -> dg.ScheduleDefinition:
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


def build_config_change_sensor() -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        SENSOR_NAME,
        target=dg.AssetSelection.all(include_sources=True) | dg.AssetSelection.all_asset_checks(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        run_tags={"distil/trigger": "automation"},
        description="Evaluates the assets' automation conditions: observes the pricing file and every task's prompt, "
        "and on a new version requests what it invalidates (pricing: re-price; a prompt: re-distil that task).",
    )


def build_sensors_and_schedules(specs: Mapping[str, TaskSpec]):
    """``(sensors, schedules, jobs)`` for the Definitions."""
    names = sorted(specs)
    repricing_job = build_repricing_job(names)
    return [build_config_change_sensor()], [build_monthly_repricing(names, repricing_job)], [repricing_job]
