"""Declarative automation: which assets re-materialise when their inputs change, in one place.

The ``config_change_sensor`` (an automation-condition sensor, sensors/) evaluates these conditions;
the UI's asset page shows each evaluation and why it did or did not request a run.

- ``observe_condition``: the configuration files (``pricing_file``, ``<task>_prompt``) are observed
  on a cron tick; their data version is a content hash.
- ``reprice_condition`` (``<task>_cost_table``, ``<task>_routing``): eager-style — a new
  upstream version (new prices, a new eval) requests the asset, never while an upstream is running
  or missing. Cheap: these assets read the results store and never call a model.
- ``refresh_condition`` (``pricing``, ``benchmark_report``): any upstream updated, whether or not the
  asset or some upstream is missing (tasks that were never run do not hold the report back).
- ``gpu_chain_condition`` (teacher eval, teacher data, student, evals, throughput): a new version of
  an upstream asset *other than the seed set* (so rebuilding a seed set never starts training). The
  chain's roots, ``<task>_teacher_eval`` and ``<task>_teacher_data`` (both read the prompt), also
  require that they were materialised before: a task that was never run is not started by an edit of
  its prompt. The teacher data is not held back by a teacher eval that was never materialised.
"""

import dagster as dg

AC = dg.AutomationCondition


def _not_busy() -> AC:
    return ~AC.any_deps_in_progress() & ~AC.in_progress()


def observe_condition(cron: str) -> AC:
    return (AC.cron_tick_passed(cron) & ~AC.in_progress()).with_label(f"observe on cron {cron}")


def reprice_condition() -> AC:
    return (AC.any_deps_updated().since_last_handled() & ~AC.missing() & ~AC.any_deps_missing()
            & _not_busy()).with_label("re-price when an upstream has a new version")


def refresh_condition() -> AC:
    """``pricing`` and ``benchmark_report``: any upstream has a new version. Unlike
    ``reprice_condition`` they run while missing (``pricing`` is first taken by a cost table on a
    fresh home) and while some upstream is missing (tasks never run do not hold the report back)."""
    return (AC.any_deps_updated().since_last_handled() & _not_busy()).with_label(
        "refresh when an upstream has a new version")


def gpu_chain_condition(seed_key: dg.AssetKey, *, root: bool, optional=()) -> AC:
    """``optional``: upstream keys whose absence does not hold the asset back (the teacher data
    proceeds without a teacher eval, and says the gate was not evaluated)."""
    updated = AC.any_deps_updated().ignore(dg.AssetSelection.assets(seed_key)).since_last_handled()
    missing = AC.any_deps_missing()
    if optional:
        missing = missing.ignore(dg.AssetSelection.assets(*optional))
    condition = updated & ~missing & _not_busy()
    if root:
        condition = condition & ~AC.missing()
    return condition.with_label("re-distil on a new upstream version (the seed set ignored)")


def check_condition() -> AC:
    """Asset checks run with their asset in automation runs too."""
    return AC.any_deps_updated().since_last_handled() & ~AC.in_progress()
