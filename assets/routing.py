"""``<task>_routing``: student-only, each comparison model, and student-first cascades, priced and
scored from the results store (zero model calls); logic in ``distil_platform.economics.routing``."""

# No `from __future__ import annotations`: Dagster reads the config/resource annotations at runtime.

import hashlib
import json
import math
from typing import Any

import dagster as dg
from distil_platform.resources.store import ResultsStoreResource

from distil_platform.profiles import Profile, get_profile
from distil_platform.storage import paths
from distil_platform.tasks.spec import TaskSpec

from .evals import STAND_IN_NOTE
from .keys import cost_table_key, task_key
from .metadata import location_metadata, markdown_table, png_markdown
from .published import routing_runs, store_run_id_metadata


class RoutingConfig(dg.Config):
    # Requests a day the deployment serves: the student (and a self-hosted escalation model) run on
    # dedicated instances that cost their $/hour busy or not, so the student's $/request depends on it.
    daily_requests: float = 1_000_000.0
    # Cross-fitting parts: τ for each part is fitted on the others.
    folds: int = 2
    seed: int = 0
    # Non-inferiority margin δ; None = the task's (YAML), else 0.02.
    margin: float | None = None


def build_routing_asset(spec: TaskSpec, profile: Profile | None = None) -> list:
    task = spec.name
    profile = profile or get_profile()  # resolved once, when the Definitions are built

    @dg.asset(
        key=task_key(task, "routing"),
        group_name=task,
        deps=[task_key(task, "student_eval"), task_key(task, "baseline_evals"),
              task_key(task, "frontier_evals"), cost_table_key(task)],
        description=f"`{task}`: serve with the student, with one comparison model, or with a cascade (the student "
        "answers; items whose logprob confidence is below τ go to model M, τ cross-fitted). Accuracy (paired, per "
        "item), escalation rate and $/M requests at a stated daily volume per policy; the cheapest policy "
        "non-inferior to the best single model within the task's margin is recommended. Computed from the results "
        "store only (zero model calls), so re-pricing recomputes it.",
    )
    def routing(context: dg.AssetExecutionContext, config: RoutingConfig,
                results_store: ResultsStoreResource) -> dg.MaterializeResult:
        # The cost table (and eval rows) of the last successful materialisations only (Dagster's record).
        result = compute_task_routing(spec, results_store.store(), context.run_id, daily_requests=config.daily_requests,
                                      folds=config.folds, seed=config.seed, margin=config.margin,
                                      runs=routing_runs(context.instance, task))
        if profile.frontier_stand_ins:  # the rehearsal: its frontier routes are stand-ins, not recommendations
            result["metadata"]["stand_ins"] = dg.MetadataValue.md(STAND_IN_NOTE)
            result["metadata"]["recommendation"] = dg.MetadataValue.md(
                f"**Rehearsal, frontier models are stand-ins:** {result['sentence']}")
        for note in result["notes"]:
            context.log.info(f"{task}: {note}")
        context.log.info(result["sentence"])
        # No asset loads this value: its decision is in the metadata and the results store.
        return dg.MaterializeResult(metadata=result["metadata"],
                                    data_version=dg.DataVersion(result["content_hash"][:32]))

    return [routing]


def compute_task_routing(spec: TaskSpec, store, run_id: str, *, daily_requests: float = 1_000_000.0,
                         folds: int = 2, seed: int = 0, margin: float | None = None, runs=None) -> dict[str, Any]:
    """Gather, compute, write (Parquet, CSV, PNG, store) and describe one task's routing. ``runs``:
    as ``gather_routing_inputs``' (None: the newest cost table, for offline callers)."""
    from distil_platform.economics.routing import compute_routing
    from distil_platform.economics.routing_io import (
        gather_routing_inputs,
        plot_routing,
        policy_markdown,
        store_routing,
        write_policies,
    )
    from distil_platform.evaluation.confidence import CONFIDENCE_RULES

    inputs = gather_routing_inputs(store, spec, daily_requests=daily_requests, folds=folds, seed=seed, margin=margin,
                                   runs=runs)
    result = compute_routing(inputs)
    # Local dir, or scratch published to the object store when the block ends.
    with paths.ArtifactDir(spec.name, "routing", run_id) as out:
        parquet, csv = write_policies(result, out.local)
        plot = plot_routing(result, out.local / f"{spec.name}_routing.png")
        store_routing(store, result, run_id)
        summary = result.summary()
        content_hash = hashlib.sha256(json.dumps([p.row() for p in result.policies + result.sweep] + [summary],
                                                 sort_keys=True, default=str).encode()).hexdigest()
        rec = result.recommendation

        def num(v: Any) -> Any:
            return None if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))) else v

        metadata: dict[str, Any] = {
            "recommendation": dg.MetadataValue.md(result.sentence),
            "recommended_policy": summary["recommended"] or "none",
            "route": summary["route"] or "none",
            "n_items": result.n_items,
            "daily_requests": dg.MetadataValue.float(float(result.daily_requests)),
            "margin": dg.MetadataValue.float(float(result.margin)),
            "margin_source": result.margin_source,
            "confidence_available": dg.MetadataValue.bool(result.confidence_available),
            "confidence_rule": CONFIDENCE_RULES.get(spec.type, ""),
            "best_single_model": result.best_single or "none",
            "comparison_models": dg.MetadataValue.json([m.label for m in inputs.models]),
            "policies": dg.MetadataValue.md(policy_markdown(result)),
            "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in result.notes) or "_none_"),
            "cost_table_id": result.cost_table_id,
            "snapshot_hash": result.snapshot_hash[:16],
            "parquet_path": location_metadata(out.url_for(parquet)),
            "csv_path": location_metadata(out.url_for(csv)),
            "model_calls": 0,
            **store_run_id_metadata(run_id),
        }
        if rec is not None:
            for key in ("accuracy", "escalation_rate", "usd_per_million_requests", "savings_vs_best_single"):
                value = num(summary.get(key))
                if value is not None:
                    metadata[f"recommended_{key}"] = dg.MetadataValue.float(float(value))
            if rec.kind == "cascade" and num(rec.tau) is not None:
                metadata["recommended_tau"] = dg.MetadataValue.float(float(rec.tau))
        if result.sweep:
            metadata["sweep"] = dg.MetadataValue.md(markdown_table(
                [{"policy": p.name, "accuracy": f"{p.accuracy:.3f}", "escalated": f"{p.escalation_rate:.0%}",
                  "$/M requests": "–" if p.usd_per_million_requests is None else f"{p.usd_per_million_requests:.4g}"}
                 for p in result.sweep]))
        if plot is not None:
            metadata["pareto_plot"] = png_markdown(plot, f"{spec.name} routing: cost vs accuracy")
        value = {"run_id": run_id, "summary": summary, "parquet_path": out.url_for(parquet), "csv_path": out.url_for(csv),
                 "plot_path": out.url_for(plot) if plot else None}
    return {"value": value, "metadata": metadata, "content_hash": content_hash, "sentence": result.sentence,
            "notes": result.notes, "result": result}
