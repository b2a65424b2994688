"""Distillation benchmark on the `local` profile: student vs zero-shot base vs seed-only student.

For each task whose public data is present under ``../shared/benchmark`` (text2sql, smart_home,
banking77 by default) this runs the task's Dagster graph in-process against ``$DAGSTER_HOME``:

1. ``<task>`` → ``<task>_teacher_data`` → ``<task>_student`` → ``<task>_student_eval`` →
   ``<task>_baseline_evals`` (the zero-shot base model; frontier models only with API keys);
2. the seed-only ablation: ``<task>_student`` with ``use_synthetic: false`` and its eval;
3. ``student_vs_seed_only``: the two students paired on the same test items (difference, CI, exact
   McNemar), from the per-item rows in the results store;
4. with ``--grounding-ablation``, for tasks that have unlabelled in-domain text (``unstructured``):
   ``<task>_teacher_data`` with ``ground_in_unstructured`` flipped from the task's setting, then
   ``<task>_student`` and its eval on that data, to measure what grounding the teacher is worth.

It prints and writes (``--out``, JSON) per task: each model's score with its 95% bootstrap CI, the
teacher-data counts, and per-stage wall times. Run one task at a time on a quiet machine:
it trains and serves SmolLM2-135M on the CPU (~10-15 min per task on 2 cores).

    DAGSTER_HOME=/tmp/bench_home .venv/bin/python benchmarks/distillation.py --tasks text2sql

A recorded teacher (e.g. the public Git Assistant set written by gpt-oss-120b; seeds and near-copies
of test questions are removed by the stage's dedup and decontamination):

    DAGSTER_HOME=/tmp/bench_home .venv/bin/python benchmarks/distillation.py --tasks git_assistant \
        --recorded ../shared/benchmark/related/rampallishyam__distil-gitara/finetuning/synthetic-data/train.jsonl \
        --recorded-max-rows 600 --max-steps 150 --no-baselines

The seed-only student as the agreement filter's second answerer (it is trained first; a teacher row is
kept only where that student, asked the row's question with its own prompt, gives the same answer):

    DAGSTER_HOME=/tmp/bench_home .venv/bin/python benchmarks/distillation.py --tasks smart_home \
        --teacher-target 64 --agreement-model seed_only --no-baselines

Self-training (banking77: the seed-only student labels the 1,000 real unlabelled messages, greedy with
token logprobs; labels below the task's min_confidence are dropped; a second student trains on seeds +
kept rows and is paired with the seed-only one):

    DAGSTER_HOME=/tmp/bench_home .venv/bin/python benchmarks/distillation.py --tasks banking77 \
        --teacher-source self_training --teacher-target 1000 --no-baselines
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
    from distil_platform.assets.metadata import materializations_of

    mat = materializations_of(result, key)[-1]
    return {k: v.value if hasattr(v, "value") else v for k, v in mat.metadata.items()}


def _score(evaluation: dict) -> dict:
    return {"score": evaluation["score"], "ci": [evaluation["ci_low"], evaluation["ci_high"]]}


def _records(value) -> list[dict] | None:
    records = getattr(value, "records", None)
    return None if records is None else [dict(r.data) for r in records]


def _teacher_counts(teacher: dict) -> dict:
    out = {k: teacher.get(k) for k in ("teacher", "source", "structured_output", "requested", "generated",
                                       "schema_valid", "passed_filters", "accepted", "teacher_accepted",
                                       "augmented_accepted", "rejected", "rejections_by_reason",
                                       "exact_duplicates", "near_duplicates", "decontaminated",
                                       "decontaminated_on", "distribution", "wall_time_s", "agreement_answerer")}
    for key in ("funnel", "filters"):
        out[key] = _records(teacher.get(key))
    return out


def _load() -> list[float]:
    return [round(float(x), 2) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _paired(store, task: str, student_run: str, seed_run: str, margin: float) -> dict:
    """Distilled vs seed-only student on the same test items: difference, CI, exact McNemar."""
    from distil_platform.evaluation.evaluate import results_from_store_rows
    from distil_platform.evaluation.summary import PAIRED_KEYS, paired_comparison
    from distil_platform.storage.store import predictions

    def results(run_id):
        return results_from_store_rows(store.select(predictions, run_id=run_id, task=task, stage="student_eval"))

    cmp = paired_comparison(results(student_run), results(seed_run), margin=margin)
    return {k: cmp.get(k) for k in PAIRED_KEYS if k in cmp}


def local_resources(profile) -> dict:
    """The resources an in-process benchmark run binds (env settings as the Definitions read them)."""
    from distil_platform.resources import (
        LLMResource,
        ModelStoreResource,
        ResultsStoreResource,
        ServingResource,
        TeacherEndpointResource,
        TrainerResource,
    )
    from distil_platform.resources.trainer import launcher_from_env

    return {"llm": LLMResource(), "serving": ServingResource(backend=profile.serving_backend, dtype=profile.dtype),
            "model_store": ModelStoreResource(), "results_store": ResultsStoreResource(),
            "teacher_endpoint": TeacherEndpointResource(), "trainer": TrainerResource(launcher=launcher_from_env())}


def run_task(task: str, literal_swap: bool, teacher_target: int | None, grounding_ablation: bool = False,
             *, teacher_source: str | None = None, recorded_path: str | None = None,
             recorded_max_rows: int | None = None, max_steps: int | None = None,
             baselines: bool = True, seed_only_mode: str = "auto", truncated_ablation: bool = False,
             labeller: str | None = None, agreement_model: str | None = None) -> dict:
    import dagster as dg
    from distil_platform.assets import build_task_pipeline_assets
    from distil_platform.assets.seed import build_seed_set_asset

    from distil_platform.profiles import get_profile
    from distil_platform.tasks.spec import get_task

    spec = get_task(task)
    profile = get_profile()
    assets = build_seed_set_asset(spec) + build_task_pipeline_assets(spec)
    resources = local_resources(profile)
    teacher_cfg: dict = {"literal_swap": literal_swap}
    if teacher_target is not None:
        teacher_cfg["target"] = teacher_target
    for key, value in (("source", teacher_source), ("recorded_path", recorded_path),
                       ("recorded_max_rows", recorded_max_rows)):
        if value is not None:
            teacher_cfg[key] = value
    student_cfg: dict = {} if max_steps is None else {"max_steps": max_steps}
    instance = dg.DagsterInstance.get()
    load_before = _load()

    def timed(selection, ops_config: dict) -> tuple:
        start = time.monotonic()
        result = dg.materialize(assets, resources=resources, instance=instance, selection=selection,
                                run_config={"ops": ops_config})
        return result, round(time.monotonic() - start, 1)

    # Self-training labelled by the seed-only student: that student is trained (and evaluated) first,
    # on the seeds alone, and its checkpoint labels the task's unlabelled messages.
    # The same when the seed-only student is the agreement filter's second answerer.
    seed_first = (teacher_source == "self_training" and labeller == "seed_only") or agreement_model == "seed_only"
    seed_only = None
    seed_only_wall = 0.0
    if seed_first:
        seed_only, seed_only_wall = timed(
            [task, f"{task}_teacher_data", f"{task}_student", f"{task}_student_eval"],
            {f"{task}_teacher_data": {"config": {"source": "teacher", "target": 0, "answer_agreement": False}},
             f"{task}_student": {"config": {**student_cfg, "use_synthetic": False}}})
        checkpoint = _md(seed_only, f"{task}_student")["checkpoint_path"]
        if agreement_model == "seed_only":
            teacher_cfg["agreement_model"] = checkpoint
            print(f"{task}: seed-only student trained; it answers the agreement filter ({checkpoint})", flush=True)
        else:
            teacher_cfg["labeller"] = checkpoint
            print(f"{task}: seed-only student trained; labelling with {checkpoint}", flush=True)
    if labeller is not None and labeller != "seed_only":
        teacher_cfg["labeller"] = labeller
    if agreement_model is not None and agreement_model != "seed_only":
        teacher_cfg["agreement_model"] = agreement_model

    # Not the throughput profile (it shares a step with the student eval, but is selected apart).
    full_selection = [task, f"{task}_teacher_data", f"{task}_student", f"{task}_student_eval",
                      *([f"{task}_baseline_evals", f"{task}_frontier_evals"] if baselines else [])]
    full, full_wall = timed(full_selection, {f"{task}_teacher_data": {"config": teacher_cfg},
                                             f"{task}_student": {"config": student_cfg}})
    teacher = _md(full, f"{task}_teacher_data")
    student = _md(full, f"{task}_student")
    student_eval = _md(full, f"{task}_student_eval")
    baseline_md = _md(full, f"{task}_baseline_evals") if baselines else {"per_model": {}}
    seed_set = _md(full, task)

    # "auto": no seed-only retraining when the student trained on no synthetic row: its training set
    # *is* the seed set (seeded training reproduces it; measured: the same predictions on 50/50 items).
    run_seed_only = not seed_first and (
        seed_only_mode == "always" or (seed_only_mode == "auto" and student["synthetic_examples"] > 0))
    if seed_first:
        seed_student, seed_eval = _md(seed_only, f"{task}_student"), _md(seed_only, f"{task}_student_eval")
    elif run_seed_only:
        seed_only, seed_only_wall = timed([f"{task}_student", f"{task}_student_eval"],
                                          {f"{task}_student": {"config": {**student_cfg, "use_synthetic": False}}})
        seed_student = _md(seed_only, f"{task}_student")
        seed_eval = _md(seed_only, f"{task}_student_eval")
    else:
        seed_only, seed_only_wall, seed_student, seed_eval = None, 0.0, None, None

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

    truncated = None
    if truncated_ablation:
        # The student as it was trained before prompts stopped being cut: tool schemas rendered as raw
        # JSON schema (for training and its eval), a fixed max_length of 384 with over-long rows cut
        # from the start (keep_end), 8 rows per step, seeds only. Same test items, paired.
        old_spec = spec.model_copy(update={
            "tool_rendering": "json_schema",
            "training": spec.training.model_copy(update={"allow_truncation": True})})
        old_assets = build_seed_set_asset(old_spec) + build_task_pipeline_assets(old_spec)
        start = time.monotonic()
        old = dg.materialize(old_assets, resources=resources, instance=instance,
                             selection=[f"{task}_student", f"{task}_student_eval"],
                             run_config={"ops": {f"{task}_student": {"config": {
                                 **student_cfg, "use_synthetic": False, "max_length": 384, "batch_size": 8}}}})
        old_student, old_eval = _md(old, f"{task}_student"), _md(old, f"{task}_student_eval")
        truncated = {**_score(old_eval), "train_examples": old_student["train_examples"],
                     "truncated_examples": old_student.get("truncated_examples"),
                     "max_length": old_student.get("max_length"), "rendering": "json_schema",
                     "train_wall_s": old_student["wall_time_s"], "wall_s": round(time.monotonic() - start, 1),
                     "student_vs_truncated": _paired(resources["results_store"].store(), task, full.run_id,
                                                     old.run_id, spec.margin)}

    paired = (_paired(resources["results_store"].store(), task, full.run_id, seed_only.run_id, spec.margin)
              if seed_only is not None else
              {"skipped": f"seed-only not trained (--seed-only {seed_only_mode}; "
                          f"{student['synthetic_examples']} synthetic rows: the same training set)"})
    zero_shot = {k: v for k, v in baseline_md["per_model"].items() if k.endswith("(zero-shot)")}
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
        "seed_only_student": ({**_score(seed_eval), "train_examples": seed_student["train_examples"],
                               "train_wall_s": seed_student["wall_time_s"]} if seed_eval is not None else None),
        "zero_shot": {k: {**_score(v), "vs_student": {x: v["vs_student"].get(x) for x in
                                                      ("diff", "ci_low", "ci_high", "mcnemar_p", "verdict")}}
                      for k, v in zero_shot.items()},
        "student_vs_seed_only": paired,
        "truncated_student": truncated,
        "grounding_ablation": grounding,
        "skipped": baseline_md.get("skipped"),
        "teacher_source": teacher.get("source"),
        "labeller": teacher_cfg.get("labeller"),
        "agreement_model": teacher_cfg.get("agreement_model"),
        "labelled_messages": teacher.get("labelled_messages"),
        "confidence_available": teacher.get("confidence_available"),
        "prompt_sample": _prompt_sample(spec),
        "loadavg": {"before": load_before, "after": _load()},
        "wall_s": {"full_graph": full_wall, "seed_only": seed_only_wall,
                   "steps": _step_times(instance, full.run_id)},
    }


def _prompt_sample(spec) -> dict:
    """How the first test item is rendered for the student (prompt rendering changes between runs)."""
    from distil_platform.tasks.prompts import build_messages
    from distil_platform.tasks.sources import load_seed_and_test

    row = load_seed_and_test(spec).test.row(0, named=True)
    messages = build_messages(spec, row)
    return {"system_chars": len(messages[0]["content"]), "user_chars": len(messages[-1]["content"]),
            "system_head": messages[0]["content"][:300]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="text2sql,smart_home,banking77")
    parser.add_argument("--literal-swap", action="store_true", help="add the text2sql literal-swap augmentation")
    parser.add_argument("--teacher-target", type=int, default=None)
    parser.add_argument("--grounding-ablation", action="store_true",
                        help="also train on teacher data with ground_in_unstructured flipped (tasks with unstructured text)")
    parser.add_argument("--teacher-source", choices=["teacher", "recorded", "self_training"], default=None,
                        help="teacher data source (default: the task YAML's synthesis.source for the profile)")
    parser.add_argument("--labeller", default=None,
                        help="self_training: 'seed_only' (default: train the seed-only student first and label with "
                             "it), a checkpoint directory/URL or a model-store name")
    parser.add_argument("--agreement-model", default=None,
                        help="the agreement filter's second answerer: 'seed_only' (train the seed-only student first "
                             "and let it answer each teacher question), a checkpoint directory/URL or a model-store "
                             "name; turns the filter on")
    parser.add_argument("--recorded", default=None, help="recorded teacher file (jsonl/csv/parquet, public layout)")
    parser.add_argument("--recorded-max-rows", type=int, default=None, help="random sample of the recorded file")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps of both students")
    parser.add_argument("--no-baselines", action="store_true", help="skip the zero-shot / frontier evals")
    parser.add_argument("--truncated-ablation", action="store_true",
                        help="also train the pre-fix student (JSON-schema tool rendering, max_length 384, rows cut "
                             "keep_end, seeds only) and pair the student with it")
    parser.add_argument("--seed-only", choices=["auto", "always", "never"], default="auto",
                        help="train the seed-only ablation (auto: only when the student had synthetic rows)")
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
        res = run_task(task, args.literal_swap, args.teacher_target, args.grounding_ablation,
                       teacher_source=args.teacher_source or ("recorded" if args.recorded else None),
                       recorded_path=args.recorded, recorded_max_rows=args.recorded_max_rows,
                       max_steps=args.max_steps, baselines=not args.no_baselines, seed_only_mode=args.seed_only,
                       truncated_ablation=args.truncated_ablation,
                       labeller=args.labeller or ("seed_only" if args.teacher_source == "self_training" else None),
                       agreement_model=args.agreement_model)
        print(json.dumps(res, indent=1, default=str), flush=True)
        results.append(res)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
