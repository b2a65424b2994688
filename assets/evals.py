"""``<task>_student_eval`` and ``<task>_baseline_evals``: the served student and every comparison model on the same test rows and prompts."""

# No `from __future__ import annotations`: Dagster reads the config/resource annotations at runtime.

import os
import time
from typing import Any

import dagster as dg
from distil_platform.resources.models import LLMResource, ModelStoreResource, ServingResource
from distil_platform.resources.store import ResultsStoreResource

from distil_platform.economics.cost_inputs import STAGE_BASELINES, STAGE_FRONTIER, STAGE_STUDENT_EVAL
from distil_platform.economics.production import PRODUCTION_VARIANT
from distil_platform.evaluation.evaluate import client_answer_fn
from distil_platform.profiles import Profile, get_profile
from distil_platform.tasks.spec import ModelRef, TaskSpec

from .common import (
    all_cached,
    answer_token_cap,
    api_client,
    build_judge,
    eval_concurrency_for,
    evaluate_served,
    fmt_value,
    is_store_model,
    jsonable,
    local_client,
    peak_memory,
    read_asset_rows,
    serving_identity_for,
    serving_model_string,
    summary_metadata,
)
from .deployment import FRONTIER_API_POOL, GPU_POOL, gpu_op_tags
from .keys import task_key
from .metadata import location_metadata, markdown_table
from .published import store_run_id_metadata

# What a rehearsal's frontier rows are (profiles.Profile.frontier_stand_ins).
STAND_IN_NOTE = ("**Rehearsal: every frontier row is a stand-in** answered by the provider fake on loopback "
                 "(distil_platform/llm/provider_fake.py), not by the provider: it proves the code path, never a "
                 "score or a cost of that model.")


class EvalConfig(dg.Config):
    # Requests in flight per model. None: 16 on vLLM (CPU or GPU; see common.VLLM_EVAL_CONCURRENCY),
    # 1 for CPU `transformers serve` (its batched bf16 greedy decoding depends on batch
    # composition, so one-at-a-time is what makes scores reproducible there), 16 on a GPU.
    concurrency: int | None = None
    worst_items: int = 10


class BaselineConfig(EvalConfig):
    # Repeats for models at temperature > 0 when the task YAML does not say (greedy decoding at
    # temperature 0 is deterministic, so those models are asked once).
    default_repeats: int = 3
    include_zero_shot_base: bool = True



def build_eval_assets(spec: TaskSpec, profile: Profile | None = None) -> list:
    """``<task>_baseline_evals`` (self-hosted, ``gpu`` pool) and ``<task>_frontier_evals`` (API models,
    ``frontier_api`` pool). ``<task>_student_eval`` is computed with the throughput profile on one
    server of the student (``assets/student_serving.py``); its body is :func:`evaluate_student`."""
    profile = profile or get_profile()  # resolved once, when the Definitions are built
    task = spec.name
    seed_key = dg.AssetKey(task)
    student_eval_key = task_key(task, "student_eval")
    baselines_key = task_key(task, "baseline_evals")
    frontier_key = task_key(task, "frontier_evals")

    comparison_ins = {"seed_set": dg.AssetIn(seed_key), "student_eval": dg.AssetIn(student_eval_key)}

    @dg.asset(
        key=baselines_key,
        group_name=task,
        ins=comparison_ins,
        pool=GPU_POOL,  # the zero-shot base is served on the accelerator like the student
        op_tags=gpu_op_tags(),
        description=f"Self-hosted comparison models (the zero-shot base model; model-store comparison models) on the "
        f"`{task}` test set with the same prompts; per-item rows in the results store (stage {STAGE_BASELINES}), "
        "paired comparison with the student. Frontier APIs are in `<task>_frontier_evals`.",
    )
    def baseline_evals(
        context: dg.AssetExecutionContext,
        config: BaselineConfig,
        seed_set: dict,
        student_eval: dict,
        llm: LLMResource,
        serving: ServingResource,
        model_store: ModelStoreResource,
        results_store: ResultsStoreResource,
    ) -> dg.Output[dict]:
        plan, _ = plan_baselines(spec, profile, include_zero_shot_base=config.include_zero_shot_base,
                                 default_repeats=config.default_repeats)
        return _compare(context, spec, profile, config, [e for e in plan if e["local"]], [], seed_set, student_eval,
                        llm, results_store, stage=STAGE_BASELINES, serving=serving, model_store=model_store)

    @dg.asset(
        key=frontier_key,
        group_name=task,
        ins=comparison_ins,
        # Waits on the network, never on a card: its own pool, so an API-bound eval never holds a GPU slot
        # (size it per deployment: `dagster instance concurrency set frontier_api <N>`).
        pool=FRONTIER_API_POOL,
        description=f"Frontier API models with credentials (each model's `api_key_env`; skipped, and listed, "
        f"without) on the `{task}` test set with the same prompts, repeated at temperature > 0 (plus a "
        f"temperature-0 run where the task asks for it); per-item rows in the results store (stage "
        f"{STAGE_FRONTIER}), paired comparison with the student.",
    )
    def frontier_evals(
        context: dg.AssetExecutionContext,
        config: BaselineConfig,
        seed_set: dict,
        student_eval: dict,
        llm: LLMResource,
        results_store: ResultsStoreResource,
    ) -> dg.Output[dict]:
        plan, skipped = plan_baselines(spec, profile, include_zero_shot_base=False,
                                       default_repeats=config.default_repeats)
        return _compare(context, spec, profile, config, [e for e in plan if not e["local"]], skipped, seed_set,
                        student_eval, llm, results_store, stage=STAGE_FRONTIER)

    return [baseline_evals, frontier_evals]


def evaluate_student(context, spec: TaskSpec, profile: Profile, config: "EvalConfig", test: list[dict],
                     student: dict, ckpt, server, llm: LLMResource, serving: ServingResource,
                     results_store: ResultsStoreResource) -> tuple[dict, dict[str, Any]]:
    """The body of ``<task>_student_eval``: the student (served by ``server`` from ``ckpt``) answers every
    test row at temperature 0; per-item rows go to the results store. Returns ``(value, metadata)``."""
    from distil_platform.evaluation.evaluate import prediction_rows
    from distil_platform.evaluation.summary import summarize
    from distil_platform.storage.store import predictions

    task = spec.name
    judge = build_judge(spec, llm, context)
    start = time.monotonic()
    concurrency = eval_concurrency_for(config, serving, profile)
    # The one path every served variant is evaluated by (fp8 too): greedy, token logprobs (each
    # answer's confidence; transformers serve returns none), the judge (common.evaluate_served).
    results = evaluate_served(context, spec, profile, llm, server, ckpt, test, stage=STAGE_STUDENT_EVAL,
                              concurrency=concurrency, judge=judge)
    peak = peak_memory(server)
    backend = getattr(server, "backend", None)
    wall = time.monotonic() - start
    model_name = student["served_name"]
    store = results_store.store()
    store.insert(predictions, prediction_rows(results, task=task, stage=STAGE_STUDENT_EVAL, model=model_name,
                                              run_id=context.run_id, variant="student"))
    from distil_platform.storage.lineage import (
        record_student_lineage,  # the checkpoint these scores belong to
    )

    # The variant is the precision that ran (bf16 / fp16 / fp32): the cost table prices the student
    # with the throughput profile of the same variant.
    variant = getattr(server, "precision_label", None) or "bf16"
    record_student_lineage(store, task=task, stage=STAGE_STUDENT_EVAL, run_id=context.run_id, model=model_name,
                           student=student, local_dir=ckpt, variant=variant)
    summary = summarize(results)
    value = {"score": summary.score, "ci": [summary.ci_low, summary.ci_high], "n": summary.n,
             "model": model_name, "run_id": context.run_id, "base_model": student["base_model"],
             "parse_failures": summary.parse_failures}
    metadata = summary_metadata(summary, results, config.worst_items)
    precision = getattr(server, "precision", None)
    value["variant"] = variant
    metadata.update({"model": model_name, "metric": spec.metric_name, "wall_time_s": round(wall, 1),
                     "serving_backend": str(backend), "eval_concurrency": concurrency,
                     "variant": variant,
                     "compute_dtype": precision.dtype if precision else "unknown",
                     "compute_dtype_reason": precision.reason if precision else "not reported by the server",
                     "checkpoint_path": location_metadata(student["checkpoint_path"]),
                     **store_run_id_metadata(context.run_id)})  # the rows readers may use (assets/published.py)
    confident = [r.confidence for r in results if r.confidence is not None]
    metadata["confidence_items"] = len(confident)  # answers with a logprob confidence (for routing)
    if confident:
        metadata["mean_confidence"] = round(sum(confident) / len(confident), 4)
    else:
        context.log.warning(f"{task}: the {backend} server returned no token logprobs: no confidence "
                            f"recorded, {task}_routing will skip cascades")
    if peak is not None:
        metadata["server_peak_memory_gb"] = round(peak, 2)
        if callable(getattr(server, "peak_memory", None)):  # GPU: by PID, device used, or vLLM's figures
            metadata["server_peak_memory_source"] = server.peak_memory()[1]
    from .teacher_eval import gap_closed_metadata  # (student − base) / (teacher − base), paired bootstrap CI

    metadata.update(gap_closed_metadata(context, spec, profile, results, store))
    context.log.info(f"{task}: student {spec.metric_name} {summary.score:.3f} "
                     f"[{summary.ci_low:.3f}, {summary.ci_high:.3f}] n={summary.n}")
    return value, metadata


def _compare(context, spec: TaskSpec, profile: Profile, config: "BaselineConfig", plan: list[dict[str, Any]],
             skipped: list[dict[str, str]], seed_set: dict, student_eval: dict, llm: LLMResource,
             results_store: ResultsStoreResource, *, stage: str, serving: ServingResource | None = None,
             model_store: ModelStoreResource | None = None) -> dg.Output[dict]:
    """Evaluate ``plan``'s models on the test set, store per-item rows under ``stage`` and pair each
    with the student (the body of ``<task>_baseline_evals`` and ``<task>_frontier_evals``)."""
    from distil_platform.economics.stats import verdict_label
    from distil_platform.evaluation.evaluate import (
        eval_messages,
        evaluate,
        prediction_rows,
        results_from_store_rows,
    )
    from distil_platform.evaluation.summary import paired_comparison, summarize
    from distil_platform.llm import ChatRequest
    from distil_platform.storage.store import predictions

    task = spec.name
    test = read_asset_rows(seed_set["test_path"])
    item_ids = [str(r["id"]) for r in test]
    store = results_store.store()
    student_rows = store.select(predictions, run_id=student_eval["run_id"], stage=STAGE_STUDENT_EVAL)
    # Rows from before the per-item metric column: only a metric without fallback can be assumed.
    student_results = results_from_store_rows(
        student_rows, default_metric=spec.metric_name if spec.metric_name != "llm_judge" else "")
    scores_production = stage == STAGE_FRONTIER and bool(seed_set.get("traces_production_answers_path"))
    judge = build_judge(spec, llm, context) if plan or scores_production else None
    for entry in skipped:
        context.log.info(f"{task}: {entry['model']} skipped ({entry['reason']})")
    per_model: dict[str, Any] = {}
    table = []
    new_calls = 0

    def record(label: str, variant: str, tier: str, repeats: int, results, outcomes: dict[str, int], wall: float,
               stand_in: bool) -> None:
        """Store one model's per-item rows and its summary, paired with the student, in the table."""
        store.insert(predictions, prediction_rows(results, task=task, stage=stage, model=label,
                                                  run_id=context.run_id, variant=variant))
        summary = summarize(results)
        comparison = (paired_comparison(student_results, results, margin=spec.margin)
                      if student_results else {"n_paired": 0})
        per_model[label] = {**summary.as_dict(), **outcomes, "tier": tier, "repeats": repeats,
                            "wall_time_s": round(wall, 1), "vs_student": comparison}
        if stand_in:
            per_model[label]["stand_in"] = True
        table.append({"model": label + (" [stand-in]" if stand_in else ""), "tier": tier, "repeats": repeats,
                      "score": f"{summary.score:.3f}", "ci": f"[{summary.ci_low:.3f}, {summary.ci_high:.3f}]",
                      "mean±std over repeats": f"{summary.repeat_mean:.3f} ± {summary.repeat_std:.3f}",
                      "prompt tok": fmt_value(summary.mean_prompt_tokens), "completion tok":
                      fmt_value(summary.mean_completion_tokens), "parse fails": summary.parse_failures,
                      "truncated / empty": f"{summary.truncated} / {summary.empty}",
                      "retries / timeouts": f"{outcomes.get('retries', 0)} / {summary.timeouts}",
                      "student − model": fmt_value(comparison.get("diff", comparison.get("mean_diff"))),
                      "McNemar p": fmt_value(comparison.get("mcnemar_p", comparison.get("p_value"))),
                      "verdict": (verdict_label(comparison.get("verdict"), spec.margin)
                                  + (f" ({comparison['verdict_note']})" if comparison.get("verdict_note") else ""))
                      if comparison.get("verdict") else "–"})
        context.log.info(f"{task}: {label} {spec.metric_name} {summary.score:.3f} "
                         f"[{summary.ci_low:.3f}, {summary.ci_high:.3f}] over {repeats} repeat(s)")

    for entry in plan:
        ref: ModelRef = entry["ref"]
        repeats = entry["repeats"]
        outcomes: dict[str, int] = {}
        answer_kwargs = {"temperature": ref.temperature, "max_tokens": answer_token_cap(profile, ref.max_tokens)}
        start = time.monotonic()
        if entry["local"]:
            model_dir = model_store.resolve(ref.model)
            # A rerun whose every request is cached needs no server at all.
            litellm_model = serving_model_string(serving, model_dir)
            messages = eval_messages(spec, test)
            requests = [ChatRequest(messages=m, repeat=r, item_id=i, **answer_kwargs)
                        for r in range(repeats) for m, i in zip(messages, item_ids)]
            identity = serving_identity_for(serving, model_dir)  # the replay must match the server's keys
            if litellm_model and identity is not None and all_cached(store, litellm_model, requests, identity):
                client = llm.client(model=litellm_model, api_base="http://cached.invalid/v1",
                                    run_id=context.run_id, task=task, stage=stage,
                                    log=context.log.info, identity=identity)
                results = evaluate(spec, test, client_answer_fn(client, **answer_kwargs, item_ids=item_ids),
                                   repeats=repeats, judge=judge)
                new_calls += client.http_calls
            else:
                with local_client(context, llm, serving, model_dir, stage=stage, task=task,
                                   concurrency=eval_concurrency_for(config, serving, profile)) as (client, _server):
                    results = evaluate(spec, test, client_answer_fn(client, **answer_kwargs, item_ids=item_ids),
                                       repeats=repeats, judge=judge)
                    new_calls += client.http_calls
        else:
            client = api_client(context, llm, ref, stage=stage, task=task,
                                 concurrency=config.concurrency or 8)
            # An API model's empty reply (its reasoning spent the budget we set, a safety block) is no
            # answer it gave: unscorable and counted, never a silent 0 (distil_platform.evaluation.evaluate).
            results = evaluate(spec, test, client_answer_fn(client, **answer_kwargs, item_ids=item_ids),
                               repeats=repeats, judge=judge, empty_reply="unscorable")
            new_calls += client.http_calls
            # Attempts after a request's first (429 / 5xx / timeouts) and requests that failed after them.
            counts = client.reply_counts()
            outcomes = {"retries": counts["retries"], "failed_requests": counts["failed"]}
        stand_in = profile.frontier_stand_ins and not entry["local"]  # answered by the rehearsal's provider fake
        record(entry["label"], entry["variant"], ref.tier, repeats, results, outcomes, time.monotonic() - start,
               stand_in)
    production = production_answers(spec, seed_set, test, judge) if stage == STAGE_FRONTIER else None
    if production is not None and production[1]:  # its trace answers, scored: no model call
        record(production[0], PRODUCTION_VARIANT, "production", 1, production[1], {}, 0.0, False)
    student_line = {"model": f"{student_eval['model']} (student)", "tier": "student", "repeats": 1,
                    "score": f"{student_eval['score']:.3f}",
                    "ci": f"[{student_eval['ci'][0]:.3f}, {student_eval['ci'][1]:.3f}]"}
    value = {"models": {k: {"score": v["score"], "ci": [v["ci_low"], v["ci_high"]], "n": v["n"],
                            "repeats": v["repeats"]} for k, v in per_model.items()},
             "skipped": skipped, "run_id": context.run_id, "student_run_id": student_eval["run_id"]}
    metadata: dict[str, Any] = {
        "stage": stage,
        "models_evaluated": len(per_model),
        "models_skipped": len(skipped),
        "skipped": dg.MetadataValue.json(skipped),
        "new_model_calls": new_calls,
        # Columns from a model row: the student's own row has no comparison cells (shown as –).
        "comparison": dg.MetadataValue.md(markdown_table([student_line, *table],
                                                         columns=list(table[0]) if table else None)),
        "per_model": dg.MetadataValue.json(jsonable(per_model)),
        **({"production_model_scored": production[2]} if production is not None else {}),
        **({"stand_ins": dg.MetadataValue.md(STAND_IN_NOTE)} if profile.frontier_stand_ins and stage == STAGE_FRONTIER
           else {}),
        **store_run_id_metadata(context.run_id),  # the rows readers may use (assets/published.py)
    }
    return dg.Output(value, metadata=metadata)


def production_answers(spec: TaskSpec, seed_set: dict, test: list[dict], judge) -> tuple[str, list, str] | None:
    """``(label, results, note)``: the production model's trace answers (``labelled: false``: the seed
    set's ``traces_production_answers_path``) to the test questions its traces asked, scored against
    the test set's labels; None when the seed set has none."""
    from distil_platform.economics.production import production_label
    from distil_platform.evaluation.evaluate import OUTCOME_NOT_SCORED, score_logged_answers

    path = seed_set.get("traces_production_answers_path")
    if not path:
        return None
    logged = read_asset_rows(path)
    match_on = None
    if seed_set.get("traces_masked"):  # the logged questions are masked: match the test's masked the same way
        from collections import Counter

        from distil_platform.tasks.pii import mask_json_text, mask_text

        mask_question = mask_json_text if spec.type == "tool_calling" else mask_text

        def match_on(row: dict) -> dict:
            return {**row, "question": mask_question(str(row.get("question") or ""), Counter()),
                    "context": mask_text(str(row.get("context") or ""), Counter())}
    matched, results = score_logged_answers(spec, test, logged, judge=judge, match_on=match_on)
    label = production_label(seed_set.get("production_model") or "")
    not_scored = sum(1 for r in results if r.outcome == OUTCOME_NOT_SCORED)
    note = (f"{label}: {len(matched)} of {len(test)} test question(s) asked in its traces (matched by normalised "
            "question and context), scored against the test set's labels" + ("" if matched else ": no score")
            + (f"; {not_scored} not scored: the answer was changed by PII masking (`mask_pii: false` scores them)"
               if not_scored else ""))
    return label, results, note


def plan_baselines(spec: TaskSpec, profile: Profile, *, include_zero_shot_base: bool = True,
                   default_repeats: int = 3) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Which comparison models run, and which are skipped (with the reason).

    API models run only when their key is set. The zero-shot student base (served locally on the
    ``local``/``test`` profiles, through the model store elsewhere) is always a baseline.
    """
    plan: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for ref in spec.comparison_models:
        if ref.api_key_env and not os.environ.get(ref.api_key_env):
            skipped.append({"model": ref.model, "reason": f"env {ref.api_key_env} not set"})
            continue
        repeats = _repeats(ref, default_repeats)
        plan.append({"ref": ref, "label": ref.model, "variant": ref.tier, "repeats": repeats,
                     "local": is_store_model(ref)})
        if (spec.frontier_temperature_0 and ref.temperature != 0.0 and ref.supports_temperature_0
                and not is_store_model(ref)):
            from distil_platform.tasks.spec import (
                TEMPERATURE_0_SUFFIX,  # like-for-like with the greedy student
            )

            plan.append({"ref": ref.model_copy(update={"temperature": 0.0, "repeats": 1}),
                         "label": ref.model + TEMPERATURE_0_SUFFIX, "variant": f"{ref.tier}@t0", "repeats": 1,
                         "local": False})
    if include_zero_shot_base:
        base = spec.student_base(profile.name)
        ref = ModelRef(model=base, tier="baseline", temperature=0.0, max_tokens=spec.max_answer_tokens, repeats=1)
        plan.append({"ref": ref, "label": f"{base} (zero-shot)", "variant": "zero_shot", "repeats": 1,
                     "local": True})
    return plan, skipped


def _repeats(ref: ModelRef, default_repeats: int) -> int:
    if ref.temperature == 0.0:
        return 1  # greedy decoding: repeats would be identical
    return ref.repeats if ref.repeats is not None else default_repeats  # the YAML's value, 1 included

