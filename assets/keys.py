"""Asset keys: the platform's interface (users select them on the CLI). Defined once, here."""

import dagster as dg

# Per-task stages, in graph order; the seed set's key is the bare task name.
TASK_STAGES = ("", "_teacher_eval", "_teacher_data", "_student", "_student_eval", "_baseline_evals", "_frontier_evals", "_throughput",
               "_cost_table", "_routing", "_student_bundle")

# Owner of every asset (shown and filterable in the UI).
OWNERS = ["team:distil-platform"]

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


def teacher_eval_key(task: str) -> dg.AssetKey:
    return task_key(task, "teacher_eval")


# Observable source assets (group `config`): the configuration files whose content hash is their
# data version. Their new data versions drive the declarative automation (assets/automation.py).
# Keys are prefixed `config/` so `key:"<task>*"` selections (assets to materialise) never match them.
CONFIG_GROUP = "config"
PRICING_FILE_KEY = dg.AssetKey([CONFIG_GROUP, "pricing_file"])


def prompt_key(task: str) -> dg.AssetKey:
    """``config/<task>_prompt``: the prompt-bearing fields of the task's YAML."""
    return dg.AssetKey([CONFIG_GROUP, f"{task}_prompt"])


def candidate_key(task: str, stage: str, candidate: str | None = None) -> dg.AssetKey:
    """A student candidate's key of ``stage`` (``student``, ``student_eval``, ``throughput``): the
    first candidate (``None``) keeps today's key; another ``c``: ``<task>_<stage>__<c>``."""
    key = task_key(task, stage)
    return key if candidate is None else dg.AssetKey(f"{key.path[-1]}__{candidate}")


def student_serving_name(task: str, candidate: str | None = None) -> str:
    """The student-serving multi-asset's name (``<task>_student_serving``, ``..._serving__<c>``)."""
    return f"{task}_student_serving" + (f"__{candidate}" if candidate else "")
