"""Planted results-store contents for cost-table and report tests: what the eval, baseline and
throughput stages write, with numbers chosen so the expected costs can be computed by hand."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from distil_platform.storage.store import (
    ResultsStore,
    llm_requests,
    predictions,
    seed_sets,
    throughput_profiles,
)
from distil_platform.tasks.spec import TaskSpec

# Hand-computable usage for the measured API models: 1000 prompt tokens (200 of them cached),
# 50 completion tokens per request.
PROMPT, CACHED, COMPLETION = 1000, 200, 50
N_ITEMS = 12


def test_rows(spec: TaskSpec) -> list[dict]:
    rows = pl.read_ndjson(spec.sample_dir() / "test.jsonl").to_dicts()[:N_ITEMS]
    for r in rows:
        r.setdefault("context", "")
        r["id"] = str(r["id"])
    return rows


def plant_task(store: ResultsStore, spec: TaskSpec, tmp_path: Path, *, student_correct: int = 10,
               api_models: dict[str, int] | None = None, sustained_rps: float = 222.0,
               hardware_key: str = "h100", max_achieved_rps: float | None = None,
               api_stage: str = "baseline_evals", api_run: str = "baseline-run",
               student_lineage: dict | None = None) -> dict:
    """Plant one task: seed set, student eval, baseline evals (API models with usage + zero-shot base),
    a bf16 throughput profile. ``api_models``: model -> number of items it gets right (2 repeats).
    ``api_stage``/``api_run``: where the API rows go (``frontier_evals``: the asset that asks APIs
    today; ``baseline_evals``: stores written before it existed). ``student_lineage``: the student
    eval's lineage record (student_run_id, use_synthetic, ...); None: none, as before lineage.
    Returns the student's name, the test rows and ``runs`` (stage -> the run id its rows are under,
    for :func:`publish_planted`)."""
    task = spec.name
    rows = test_rows(spec)
    ids = [r["id"] for r in rows]
    test_path = tmp_path / f"{task}_test.parquet"
    pl.DataFrame(rows).select("id", "question", "answer", "context").write_parquet(test_path)
    store.insert(seed_sets, [dict(task=task, run_id="seed-run", source="sample", n_seed=0, n_test=len(rows),
                                  seed_path=str(test_path), test_path=str(test_path), content_hash="x")])
    student = f"{task}-student-abc"
    store.insert(predictions, [dict(run_id="student-run", task=task, stage="student_eval", model=student,
                                    variant="student", item_id=i, repeat=0, score=float(k < student_correct))
                               for k, i in enumerate(ids)])
    if student_lineage is not None:
        from distil_platform.storage.store import student_lineage as lineage_table

        store.insert(lineage_table, [dict(run_id="student-run", task=task, stage="student_eval", model=student,
                                          **student_lineage)])
    api_models = api_models if api_models is not None else {"anthropic/claude-haiku-4-5": 10,
                                                             "gemini/gemini-2.5-flash-lite": 4}
    tiers = {ref.model: ref.tier for ref in spec.comparison_models}
    pred, reqs = [], []
    for model, correct in api_models.items():
        for rep in range(2):
            for k, i in enumerate(ids):
                pred.append(dict(run_id=api_run, task=task, stage=api_stage, model=model,
                                 variant=tiers[model], item_id=i, repeat=rep, score=float(k < correct),
                                 prompt_tokens=PROMPT, completion_tokens=COMPLETION))
                reqs.append(dict(run_id=api_run, task=task, stage=api_stage, model=model,
                                 prompt_tokens=PROMPT, completion_tokens=COMPLETION, cached_prompt_tokens=CACHED,
                                 error=None))
        # A failed request is not a usage sample.
        reqs.append(dict(run_id=api_run, task=task, stage=api_stage, model=model,
                         prompt_tokens=0, completion_tokens=0, cached_prompt_tokens=0, error="HTTP 500"))
    base = spec.student_base("local")
    pred += [dict(run_id="baseline-run", task=task, stage="baseline_evals", model=f"{base} (zero-shot)",
                  variant="zero_shot", item_id=i, repeat=0, score=float(k < 1), prompt_tokens=None,
                  completion_tokens=None) for k, i in enumerate(ids)]
    store.insert(predictions, pred)
    store.insert(llm_requests, reqs)
    store.insert(throughput_profiles, [dict(run_id="tp-run", task=task, model=student, variant="bf16",
                                            backend="vllm", hardware="1x NVIDIA H100 80GB HBM3",
                                            hardware_key=hardware_key, sustained_rps=sustained_rps,
                                            max_achieved_rps=max_achieved_rps if max_achieved_rps is not None
                                            else sustained_rps * 1.1, slo_s=1.0, peak_memory_gb=20.0)])
    runs = {"student_eval": "student-run", "baseline_evals": "baseline-run", "throughput": "tp-run"}
    if api_models:
        runs[api_stage] = api_run
    return {"student": student, "rows": rows, "api_models": api_models, "runs": runs}


DISTILLED = {"student_run_id": "train-1", "use_synthetic": True}  # a lineage record of the distilled student


def publish_planted(instance, task: str, runs: dict[str, str]) -> None:
    """What the runs that wrote planted rows leave in Dagster: one successful materialisation per
    stage (``runs``: stage -> store run id), reported as runless events naming the store run id, so
    the cost-table, routing and report assets read those rows (``assets/published.py``)."""
    import dagster as dg
    from distil_platform.assets.keys import task_key
    from distil_platform.assets.published import store_run_id_metadata

    for stage, run_id in runs.items():
        instance.report_runless_asset_event(dg.AssetMaterialization(task_key(task, stage),
                                                                    metadata=store_run_id_metadata(run_id)))


def plant_student_eval(store: ResultsStore, spec: TaskSpec, run_id: str, model: str, correct: set[int] | int,
                       *, stage: str = "student_eval", variant: str = "student", metric: str | None = None,
                       lineage: dict | None = None) -> None:
    """One student eval run (``correct``: the item indices it gets right, or the first n), with an
    optional lineage record (student_run_id, use_synthetic, checkpoint_fingerprint)."""
    from distil_platform.storage.store import student_lineage

    ids = [r["id"] for r in test_rows(spec)]
    right = set(range(correct)) if isinstance(correct, int) else correct
    store.insert(predictions, [dict(run_id=run_id, task=spec.name, stage=stage, model=model, variant=variant,
                                    item_id=i, repeat=0, score=float(k in right), metric=metric)
                               for k, i in enumerate(ids)])
    if lineage is not None:
        store.insert(student_lineage, [dict(run_id=run_id, task=spec.name, stage="student_eval" if stage ==
                                            "student_eval" else "throughput", model=model, **lineage)])


def plant_throughput(store: ResultsStore, spec: TaskSpec, run_id: str, model: str, *, sustained_rps: float = 222.0,
                     variants: tuple[str, ...] = ("bf16",), lineage: dict | None = None,
                     rps: dict[str, float] | None = None) -> None:
    from distil_platform.storage.store import student_lineage

    for variant in variants:
        store.insert(throughput_profiles, [dict(run_id=run_id, task=spec.name, model=model, variant=variant,
                                                backend="vllm", hardware="1x NVIDIA H100 80GB HBM3", hardware_key="h100",
                                                sustained_rps=(rps or {}).get(variant, sustained_rps),
                                                max_achieved_rps=sustained_rps * 1.1, slo_s=1.0, peak_memory_gb=20.0)])
        if lineage is not None:
            store.insert(student_lineage, [dict(run_id=run_id, task=spec.name, stage="throughput", variant=variant,
                                                model=model, **lineage)])
