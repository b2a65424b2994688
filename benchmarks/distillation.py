"""Distillation benchmark on the `local` profile: student vs zero-shot base vs seed-only student.

For each task whose public data is present under ``../shared/benchmark`` (text2sql, smart_home,
banking77 by default) this runs the task's Dagster graph in-process against ``$DAGSTER_HOME``:

1. ``<task>`` → ``<task>_teacher_data`` → ``<task>_student`` → ``<task>_student_eval`` →
   ``<task>_baseline_evals`` (the zero-shot base model; frontier models only with API keys);
2. the seed-only ablation: ``<task>_student`` with ``use_synthetic: false`` and its eval;
3. with ``--grounding-ablation``, for tasks that have unlabelled in-domain text (``unstructured``):
   ``<task>_teacher_data`` with ``ground_in_unstructured`` flipped from the task's setting, then
   ``<task>_student`` and its eval on that data, to measure what grounding the teacher is worth.

It prints and writes (``--out``, JSON) per task: each model's score with its 95% bootstrap CI, the
teacher-data counts, and per-stage wall times. Run one task at a time on a quiet machine:
it trains and serves SmolLM2-135M on the CPU (~10-15 min per task on 2 cores).

    DAGSTER_HOME=/tmp/bench_home .venv/bin/python benchmarks/distillation.py --tasks text2sql
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "benchmark" / "related"

# Task -> data directory (train/test files) inside the shared benchmark.
TASK_DATA = {
    "text2sql": "distil-labs__distil-text2sql/finetuning/data",
    "smart_home": "distil-labs__distil-smart-home/slm-finetuning/data",
    "banking77": "distil-labs__distil-labs-examples/classification-tutorial/data-banking-routing",
    "git_assistant": "rampallishyam__distil-gitara/finetuning/data",
    "docstring": "distil-labs__distil-localdoc.py/finetuning/data",
}


def _step_times(instance, run_id: str) -> dict[str, float]:
    """Wall seconds per step (asset) of one run, from the event log."""
    import dagster as dg

    starts, times = {}, {}
    for record in instance.get_records_for_run(run_id).records:
        event = record.event_log_entry
        if event.dagster_event is None:
            continue
        kind, step = event.dagster_event.event_type, event.dagster_event.step_key
        if kind == dg.DagsterEventType.STEP_START:
            starts[step] = event.timestamp
        elif kind == dg.DagsterEventType.STEP_SUCCESS and step in starts:
            times[step] = round(event.timestamp - starts[step], 1)
    return times


def _md(result, key: str) -> dict:
    mat = result.asset_materializations_for_node(key)[-1]
    return {k: v.value if hasattr(v, "value") else v for k, v in mat.metadata.items()}


def _score(evaluation: dict) -> dict:
    return {"score": evaluation["score"], "ci": [evaluation["ci_low"], evaluation["ci_high"]]}


def _teacher_counts(teacher: dict) -> dict:
    return {k: teacher.get(k) for k in ("teacher", "requested", "generated", "accepted", "teacher_accepted",
                                        "augmented_accepted", "rejected", "rejections_by_reason",
                                        "exact_duplicates", "near_duplicates", "decontaminated",
                                        "distribution", "wall_time_s")}


def run_task(task: str, literal_swap: bool, teacher_target: int | None, grounding_ablation: bool = False) -> dict:
    import dagster as dg

    from distil_platform.assets import build_task_pipeline_assets
    from distil_platform.assets.seed import build_seed_set_asset
    from distil_platform.profiles import get_profile
    from distil_platform.resources import (
        LLMResource,
        ModelStoreResource,
        ResultsStoreResource,
        ServingResource,
    )
    from distil_platform.taskspec import get_task

    spec = get_task(task)
    profile = get_profile()
    assets = build_seed_set_asset(spec) + build_task_pipeline_assets(spec)
    resources = {"llm": LLMResource(), "serving": ServingResource(backend=profile.serving_backend),
                 "model_store": ModelStoreResource(), "results_store": ResultsStoreResource()}
    teacher_cfg: dict = {"literal_swap": literal_swap}
    if teacher_target is not None:
        teacher_cfg["target"] = teacher_target
    instance = dg.DagsterInstance.get()

    def timed(selection, ops_config: dict) -> tuple:
        start = time.monotonic()
        result = dg.materialize(assets, resources=resources, instance=instance, selection=selection,
                                run_config={"ops": ops_config})
        return result, round(time.monotonic() - start, 1)

    full, full_wall = timed(None, {f"{task}_teacher_data": {"config": teacher_cfg}})
    teacher = _md(full, f"{task}_teacher_data")
    student = _md(full, f"{task}_student")
    student_eval = _md(full, f"{task}_student_eval")
    baselines = _md(full, f"{task}_baseline_evals")
    seed_set = _md(full, task)

    seed_only, seed_only_wall = timed([f"{task}_student", f"{task}_student_eval"],
                                      {f"{task}_student": {"config": {"use_synthetic": False}}})
    seed_student = _md(seed_only, f"{task}_student")
    seed_eval = _md(seed_only, f"{task}_student_eval")

    grounding = None
    if grounding_ablation and seed_set.get("n_unstructured"):
        flipped = not spec.synthesis.ground_in_unstructured
        ablation, ablation_wall = timed(
            [f"{task}_teacher_data", f"{task}_student", f"{task}_student_eval"],
            {f"{task}_teacher_data": {"config": {**teacher_cfg, "ground_in_unstructured": flipped}}},
        )
        grounding = {
            "task_setting": spec.synthesis.ground_in_unstructured,
            "ablation_setting": flipped,
            "teacher": _teacher_counts(_md(ablation, f"{task}_teacher_data")),
            "student": {**_score(_md(ablation, f"{task}_student_eval")),
                        "train_examples": _md(ablation, f"{task}_student")["train_examples"]},
            "wall_s": ablation_wall,
        }
    elif grounding_ablation:
        print(f"{task}: no unstructured rows, grounding ablation skipped", file=sys.stderr)

    zero_shot = {k: v for k, v in baselines["per_model"].items() if k.endswith("(zero-shot)")}
    return {
        "task": task,
        "profile": profile.name,
        "source": seed_set.get("source"),
        "n_seed": seed_set.get("n_seed"),
        "n_unstructured": seed_set.get("n_unstructured"),
        "n_test": student_eval["n"],
        "teacher": _teacher_counts(teacher),
        "ground_in_unstructured": spec.synthesis.ground_in_unstructured,
        "student": {**_score(student_eval), "train_examples": student["train_examples"], "steps": student["steps"],
                    "train_wall_s": student["wall_time_s"], "final_loss": student["final_loss"]},
        "seed_only_student": {**_score(seed_eval), "train_examples": seed_student["train_examples"],
                              "train_wall_s": seed_student["wall_time_s"]},
        "zero_shot": {k: {**_score(v), "vs_student": {x: v["vs_student"].get(x) for x in
                                                      ("diff", "ci_low", "ci_high", "mcnemar_p", "verdict")}}
                      for k, v in zero_shot.items()},
        "grounding_ablation": grounding,
        "skipped": baselines.get("skipped"),
        "wall_s": {"full_graph": full_wall, "seed_only": seed_only_wall,
                   "steps": _step_times(instance, full.run_id)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="text2sql,smart_home,banking77")
    parser.add_argument("--literal-swap", action="store_true", help="add the text2sql literal-swap augmentation")
    parser.add_argument("--teacher-target", type=int, default=None)
    parser.add_argument("--grounding-ablation", action="store_true",
                        help="also train on teacher data with ground_in_unstructured flipped (tasks with unstructured text)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "distillation.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("DISTIL_PROFILE", "local")
    if not os.environ.get("DAGSTER_HOME"):
        parser.error("set DAGSTER_HOME (an absolute directory)")
    results = []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        data = SHARED / TASK_DATA.get(task, "")
        if task not in TASK_DATA or not data.is_dir():
            print(f"skip {task}: no shared data at {data}", file=sys.stderr)
            continue
        os.environ[f"DISTIL_DATA_{task.upper()}"] = str(data)
        print(f"== {task} ({data})", flush=True)
        res = run_task(task, args.literal_swap, args.teacher_target, args.grounding_ablation)
        print(json.dumps(res, indent=1, default=str), flush=True)
        results.append(res)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
