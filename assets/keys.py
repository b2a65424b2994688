"""Asset keys: the platform's interface (users select them on the CLI). Defined once, here."""

import dagster as dg

# Per-task stages, in graph order; the seed set's key is the bare task name.
TASK_STAGES = ("", "_teacher_data", "_student", "_student_eval", "_baseline_evals", "_throughput", "_cost_table")

PRICING_KEY = dg.AssetKey("pricing")
REPORT_KEY = dg.AssetKey("benchmark_report")


def task_key(task: str, stage: str = "") -> dg.AssetKey:
    """``task_key("text2sql", "student")`` -> ``text2sql_student``; no stage -> the seed set."""
    stage = stage.lstrip("_")
    if stage and f"_{stage}" not in TASK_STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {[s.lstrip('_') for s in TASK_STAGES if s]}")
    return dg.AssetKey(f"{task}_{stage}" if stage else task)


def throughput_key(task: str) -> dg.AssetKey:
    return task_key(task, "throughput")


def cost_table_key(task: str) -> dg.AssetKey:
    return task_key(task, "cost_table")


def teacher_data_key(task: str) -> dg.AssetKey:
    return task_key(task, "teacher_data")
