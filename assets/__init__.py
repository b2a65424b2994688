"""Dagster wiring of the asset graph. One factory builds every task's pipeline from its TaskSpec;
each stage has its own module (``seed``, ``teacher``, ``student``, ``evals``, ``throughput``,
``costs``)."""

from __future__ import annotations

from distil_platform.taskspec import TaskSpec


def build_task_assets(spec: TaskSpec) -> list:
    """All assets and asset checks of one task, in group ``spec.name``.

    Keys: ``<task>`` (seed set), ``<task>_teacher_data``, ``<task>_student``, ``<task>_student_eval``,
    ``<task>_baseline_evals``, ``<task>_throughput``, ``<task>_cost_table``.
    """
    from .costs import build_task_cost_assets
    from .evals import build_eval_assets
    from .seed import build_seed_set_asset
    from .student import build_student_asset
    from .teacher import build_teacher_assets
    from .throughput import build_throughput_asset

    return (build_seed_set_asset(spec) + build_teacher_assets(spec) + build_student_asset(spec)
            + build_eval_assets(spec) + build_throughput_asset(spec) + build_task_cost_assets(spec))


def build_task_pipeline_assets(spec: TaskSpec) -> list:
    """The distillation stages without the seed set and cost stages: teacher data, student, evals."""
    from .evals import build_eval_assets
    from .student import build_student_asset
    from .teacher import build_teacher_assets

    return build_teacher_assets(spec) + build_student_asset(spec) + build_eval_assets(spec)
