"""Dagster assets. One factory builds every task's pipeline from its TaskSpec."""

from __future__ import annotations

from distil_platform.taskspec import TaskSpec


def build_task_assets(spec: TaskSpec) -> list:
    """All assets and asset checks of one task, in group ``spec.name``.

    Keys: ``<task>`` (seed set), ``<task>_teacher_data``, ``<task>_student``, ``<task>_student_eval``,
    ``<task>_baseline_evals``, ``<task>_throughput``, ``<task>_cost_table``.
    """
    from .costs import build_task_cost_assets
    from .pipeline import build_task_pipeline_assets
    from .seed import build_seed_set_asset

    return build_seed_set_asset(spec) + build_task_pipeline_assets(spec) + build_task_cost_assets(spec)
