"""Asset checks where money and claims are at stake (per task):

- ``<task>_cost_table`` / ``comparison_models_priced`` (blocking: the report is not written from a
  cost table that prices a comparison model at nothing): every comparison model of the task has a
  price in the snapshot the table used, or is declared unpriced in the pricing file with a reason.
- ``<task>_baseline_evals`` / ``student_not_below_zero_shot`` (warning): the distilled student
  scores at least its own zero-shot base on the same items.
- ``<task>_throughput`` / ``sustained_rps_positive`` (warning): some offered rate was sustained
  within the SLO, so the student's cost is measured, not estimated.

The check bodies are plain functions (``check_*``) so tests run them on planted values.
"""

from typing import Any

import dagster as dg
from distil_platform.resources.store import ResultsStoreResource

from distil_platform.tasks.spec import TaskSpec

from .automation import check_condition
from .keys import cost_table_key, task_key, throughput_key


def check_models_priced(spec: TaskSpec, snapshot) -> dg.AssetCheckResult:
    missing, declared = [], {}
    for ref in spec.comparison_models:
        if snapshot.find_model(ref.model) is not None:
            continue
        reason = snapshot.declared_unpriced.get(ref.model)
        if reason:
            declared[ref.model] = reason
        else:
            missing.append(ref.model)
    return dg.AssetCheckResult(
        passed=not missing,
        severity=dg.AssetCheckSeverity.ERROR,
        description=("unpriced comparison models: " + ", ".join(missing) + " (add them to the pricing file)")
        if missing else "every comparison model is priced",
        metadata={"comparison_models": len(spec.comparison_models), "unpriced": dg.MetadataValue.json(missing),
                  "declared_unpriced": dg.MetadataValue.json(declared), "snapshot_hash": snapshot.hash[:16]},
    )


def check_student_vs_zero_shot(student_eval: dict, baseline_evals: dict) -> dg.AssetCheckResult:
    zero_shot = {k: v for k, v in (baseline_evals.get("models") or {}).items() if k.endswith("(zero-shot)")}
    if not zero_shot:
        return dg.AssetCheckResult(passed=True, metadata={"applicable": False,
                                                          "reason": "no zero-shot base was evaluated"})
    name, base = next(iter(zero_shot.items()))
    student, base_score = float(student_eval["score"]), float(base["score"])
    return dg.AssetCheckResult(
        passed=student >= base_score,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"student {student:.3f} vs zero-shot base {base_score:.3f}",
        metadata={"student_score": dg.MetadataValue.float(student), "zero_shot_score": dg.MetadataValue.float(base_score),
                  "difference": dg.MetadataValue.float(student - base_score), "zero_shot_model": name},
    )


def check_sustained_rps(throughput: dict) -> dg.AssetCheckResult:
    variants: dict[str, Any] = throughput.get("variants") or {}
    rps = {name: float(v.get("sustained_rps") or 0.0) for name, v in variants.items()}
    best = max(rps.values(), default=0.0)
    return dg.AssetCheckResult(
        passed=best > 0,
        severity=dg.AssetCheckSeverity.WARN,
        description="sustained within the SLO" if best > 0 else
        "no offered rate was sustained within the SLO: the student's cost is an estimate",
        metadata={"sustained_rps": dg.MetadataValue.json(rps)},
    )


def build_task_checks(spec: TaskSpec) -> list:
    task = spec.name
    auto = check_condition()

    @dg.asset_check(asset=cost_table_key(task), name="comparison_models_priced", blocking=True,
                    automation_condition=auto,
                    description="Every comparison model has a price in the snapshot this cost table used.")
    def comparison_models_priced(results_store: ResultsStoreResource) -> dg.AssetCheckResult:
        from distil_platform.economics.pricing import current_snapshot

        snapshot = current_snapshot(results_store.store())
        if snapshot is None:
            return dg.AssetCheckResult(passed=False, description="no price snapshot in the results store")
        return check_models_priced(spec, snapshot)

    @dg.asset_check(asset=task_key(task, "baseline_evals"), name="student_not_below_zero_shot",
                    additional_ins={"student_eval": dg.AssetIn(task_key(task, "student_eval"))},
                    automation_condition=auto,
                    description="The student scores at least its zero-shot base on the same test items.")
    def student_not_below_zero_shot(baseline_evals: dict, student_eval: dict) -> dg.AssetCheckResult:
        return check_student_vs_zero_shot(student_eval, baseline_evals)

    @dg.asset_check(asset=throughput_key(task), name="sustained_rps_positive", automation_condition=auto,
                    description="Some offered rate was sustained within the task's latency SLO.")
    def sustained_rps_positive(throughput: dict) -> dg.AssetCheckResult:
        return check_sustained_rps(throughput)

    return [comparison_models_priced, student_not_below_zero_shot, sustained_rps_positive]
