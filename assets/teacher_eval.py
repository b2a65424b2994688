"""``<task>_teacher_eval``: before any data is generated, the profile's teacher answers the test set
with the prompt the student will get, scored like the student; its score gives the teacher gate's
verdict (PROCEED / ITERATE / RETHINK, ``distil_platform.evaluation.teacher_gate``), checked by the
blocking asset check ``teacher_gate``. ``<task>_teacher_data`` reads the verdict back from Dagster's
record (``published.latest_teacher_eval``), so the gate holds in any run or selection.

The gate's two halves, and why the check does not stop a run on a RETHINK by default: a RETHINK is an
outcome (this teacher cannot do the task), not a fault. Dagster's blocking check stops everything
downstream in the run, the seed-only student included, and fails the run; ``make run`` must complete.
So the verdict is enforced where the teacher would be asked, in ``<task>_teacher_data`` (RETHINK:
no teacher rows, the student trains on the seeds, and says so), and the check fails with severity
WARN, shown on the asset, without stopping the run. A task whose YAML sets
``teacher_gate.on_rethink: stop`` gets the hard stop: the check fails with severity ERROR (blocking:
nothing downstream runs, the run fails) unless this run's teacher-data config sets
``override_teacher_gate: true``, and a later teacher-data run fails the same way.

Which teacher (as ``assets/teacher.py`` resolves it): a model-store name is served locally (the same
server, request and cache identity as the zero-shot base's eval: on ``local``, where the teacher is
the base, the two share every answer through the response cache); an endpoint teacher is asked at
its endpoint with its key; a recorded teacher (the profile's ``synthesis.source`` is ``recorded``)
is scored on its file's answers to the test questions it has (matched by normalised question), and
is "not evaluable", with the reason, when it has none.
"""

# No `from __future__ import annotations`: Dagster reads the config/resource annotations at runtime.

import time
from typing import Any

import dagster as dg
from distil_platform.resources.models import LLMResource, ModelStoreResource, ServingResource
from distil_platform.resources.store import ResultsStoreResource
from distil_platform.resources.teacher import TeacherEndpointResource

from distil_platform.economics.cost_inputs import STAGE_BASELINES, STAGE_TEACHER_EVAL, TEACHER_IS_BASE_VARIANT
from distil_platform.profiles import Profile, get_profile
from distil_platform.tasks.spec import TaskSpec

from .common import (
    all_cached,
    answer_token_cap,
    api_client,
    build_judge,
    eval_concurrency_for,
    is_store_model,
    local_client,
    read_asset_rows,
    serving_identity_for,
    serving_model_string,
    summary_metadata,
)
from .config_sources import prompt_observation
from .deployment import GPU_POOL, gpu_op_tags
from .keys import prompt_key, task_key, teacher_eval_key
from .published import published_runs, store_run_id_metadata
from .teacher import TEACHER_API_KEY_ENV, gate_teacher_label, resolve_teacher, teacher_source

GATE_CHECK = "teacher_gate"


class TeacherEvalConfig(dg.Config):
    # Requests in flight (None: as the baseline evals, per backend; 8 for an endpoint).
    concurrency: int | None = None
    worst_items: int = 10


def teacher_is_student_base(spec: TaskSpec, profile: Profile) -> bool:
    """The profile's teacher is the student's base model (``local`` and ``test``): no gap to close."""
    from distil_platform.evaluation.teacher_gate import teacher_is_base

    teacher = spec.teacher_for(profile.name)
    return (teacher_source(spec, profile, None) != "recorded" and is_store_model(teacher)
            and teacher_is_base(teacher.model, spec.student_base(profile.name)))


def build_teacher_eval_asset(spec: TaskSpec, profile: Profile | None = None) -> list:
    """``<task>_teacher_eval`` with its blocking check ``teacher_gate``."""
    profile = profile or get_profile()  # resolved once, when the Definitions are built
    task = spec.name
    key = teacher_eval_key(task)
    source = teacher_source(spec, profile, None)
    label = gate_teacher_label(spec, profile, source)
    # A local teacher is a model server: on a GPU it holds the card (the `gpu` pool, like the teacher data).
    served_locally = source != "recorded" and is_store_model(spec.teacher_for(profile.name))
    same_as_base = teacher_is_student_base(spec, profile)

    @dg.asset(
        key=key,
        group_name=task,
        ins={"seed_set": dg.AssetIn(dg.AssetKey(task))},
        deps=[prompt_key(task)],
        pool=GPU_POOL if served_locally else None,
        op_tags=gpu_op_tags() if served_locally else None,
        check_specs=[dg.AssetCheckSpec(
            GATE_CHECK, asset=key, blocking=True,
            description="The teacher is good enough to distil from: fails on RETHINK (WARN: the teacher data "
            "goes seed-only and the run goes on; ERROR, stopping what is downstream, where the task YAML sets "
            "teacher_gate.on_rethink: stop) and warns on ITERATE or when the teacher is not evaluable.")],
        description=f"The `{task}` teacher ({label}) answering the test set with the student's prompt, scored with "
        f"`{spec.metric_name}` (per-item rows in the results store, stage {STAGE_TEACHER_EVAL}); score, CI and the "
        "teacher gate's verdict PROCEED / ITERATE / RETHINK with its thresholds. Read by the teacher data.",
    )
    def teacher_eval(
        context: dg.AssetExecutionContext,
        config: TeacherEvalConfig,
        seed_set: dict,
        llm: LLMResource,
        serving: ServingResource,
        model_store: ModelStoreResource,
        results_store: ResultsStoreResource,
        teacher_endpoint: TeacherEndpointResource,
    ) -> dg.MaterializeResult:
        from distil_platform.evaluation.evaluate import prediction_rows
        from distil_platform.evaluation.summary import summarize
        from distil_platform.evaluation.teacher_gate import (
            NOT_EVALUABLE,
            gate_metric,
            thresholds_for,
            verdict_for,
            verdict_line,
        )
        from distil_platform.storage.store import predictions

        if (observation := prompt_observation(spec)) is not None:
            context.log_event(observation)  # the <task>_prompt version this eval used
        test = read_asset_rows(seed_set["test_path"])
        store = results_store.store()
        judge = build_judge(spec, llm, context)
        start = time.monotonic()
        if source == "recorded":
            results, reason, answered_by = recorded_answers(spec, test, judge)
            calls = 0
        else:
            teacher = resolve_teacher(spec, profile, teacher_endpoint)
            api_key = teacher_endpoint.api_key if teacher.api_key_env == TEACHER_API_KEY_ENV else None
            results, calls, answered_by = model_answers(context, spec, profile, config, teacher, test, llm, serving,
                                                        model_store, store, judge, api_key)
            reason = None
        wall = time.monotonic() - start
        metadata: dict[str, Any] = {
            "teacher": label, "teacher_source": source, "teacher_is_student_base": same_as_base,
            "answered_by": answered_by, "n_test": len(test), "new_model_calls": calls, "wall_time_s": round(wall, 1),
            "on_rethink": spec.teacher_gate.on_rethink, **store_run_id_metadata(context.run_id)}
        if results:
            store.insert(predictions, prediction_rows(results, task=task, stage=STAGE_TEACHER_EVAL, model=label,
                                                      run_id=context.run_id,
                                                      variant=TEACHER_IS_BASE_VARIANT if same_as_base else "teacher"))
            summary = summarize(results)
            metric, metric_note = gate_metric([r.metric for r in results])
            thresholds = thresholds_for(spec, metric)
            verdict = verdict_for(summary.score, thresholds)
            metadata.update(summary_metadata(summary, results, config.worst_items))
            metadata.update({"metric": metric, "verdict": verdict, "verdict_line": verdict_line(verdict, summary.score,
                                                                                                 thresholds),
                             "thresholds": dg.MetadataValue.json({"proceed": thresholds.proceed,
                                                                  "rethink": thresholds.rethink,
                                                                  "metric": thresholds.metric}),
                             "thresholds_source": thresholds.source})
            if metric_note:
                metadata["metric_note"] = metric_note
                context.log.warning(f"{task}: teacher eval {metric_note}")
            score = summary.score
        else:
            verdict, score, thresholds = NOT_EVALUABLE, None, thresholds_for(spec, spec.metric_name)
            metadata.update({"verdict": verdict, "reason": reason or "no answers", "metric": spec.metric_name,
                             "verdict_line": f"{NOT_EVALUABLE}: {reason}"})
        context.log.info(f"{task}: teacher {label} — {metadata['verdict_line']}")
        check = gate_check(spec, verdict, score, thresholds, reason,
                           override=_override_in_run(context, task))
        return dg.MaterializeResult(metadata=metadata, check_results=[check])

    return [teacher_eval]


def _override_in_run(context, task: str) -> bool:
    """Whether this run's ``<task>_teacher_data`` config sets ``override_teacher_gate: true`` (a stop
    would otherwise block the very step the override is for)."""
    ops = (getattr(context.run, "run_config", None) or {}).get("ops") or {}
    return bool(((ops.get(f"{task}_teacher_data") or {}).get("config") or {}).get("override_teacher_gate"))


def gate_check(spec: TaskSpec, verdict: str, score: float | None, thresholds, reason: str | None = None, *,
               override: bool = False) -> dg.AssetCheckResult:
    """The ``teacher_gate`` check (plain, so tests run it on planted values): passes on PROCEED; fails
    with WARN on ITERATE, NOT_EVALUABLE and a RETHINK the teacher data handles as seed-only; fails
    with ERROR (blocking) on a RETHINK with ``teacher_gate.on_rethink: stop`` and no override."""
    from distil_platform.evaluation.teacher_gate import PROCEED, RETHINK, verdict_line

    stop = verdict == RETHINK and spec.teacher_gate.on_rethink == "stop" and not override
    if verdict == RETHINK:
        what = ("stopped (teacher_gate.on_rethink: stop)" if stop else
                "overridden by the teacher data's run config" if override else
                "the teacher data goes seed-only: the teacher is asked nothing")
        description = f"{verdict_line(verdict, score, thresholds)}; {what}"
    elif score is None:
        description = f"not evaluable: {reason}"
    else:
        description = verdict_line(verdict, score, thresholds)
    md: dict[str, Any] = {"verdict": verdict, "thresholds": dg.MetadataValue.json(thresholds.as_dict()),
                          "on_rethink": spec.teacher_gate.on_rethink, "override_teacher_gate": override}
    if score is not None:
        md["score"] = dg.MetadataValue.float(round(float(score), 4))
    return dg.AssetCheckResult(check_name=GATE_CHECK, passed=verdict == PROCEED,
                               severity=dg.AssetCheckSeverity.ERROR if stop else dg.AssetCheckSeverity.WARN,
                               description=description, metadata=md)


def recorded_answers(spec: TaskSpec, test: list[dict], judge) -> tuple[list, str | None, str]:
    """A recorded teacher's answers to the test questions its file has, scored; or ``([], reason)``."""
    from distil_platform.evaluation.evaluate import score_logged_answers
    from distil_platform.tasks.spec import RecordedTeacher
    from distil_platform.teacher.recorded import RecordedTeacherError, load_recorded, recorded_path

    rcfg = spec.synthesis.recorded or RecordedTeacher()
    try:
        path = recorded_path(spec, rcfg)
        rows = load_recorded(spec, path, teacher_model=rcfg.teacher_model)  # every row: the most matches
    except RecordedTeacherError as exc:
        return [], f"no recorded teacher file: {exc}", "recorded file"
    matched, results = score_logged_answers(spec, test, rows, judge=judge)
    if not matched:
        return [], (f"the recorded file {path} answers none of the {len(test)} test questions (matched by "
                    "normalised question)"), f"recorded file {path}"
    return results, None, f"recorded file {path} ({len(matched)} of {len(test)} test questions)"


def model_answers(context, spec: TaskSpec, profile: Profile, config: TeacherEvalConfig, teacher, test: list[dict],
                  llm: LLMResource, serving: ServingResource, model_store: ModelStoreResource, store, judge,
                  api_key: str | None) -> tuple[list, int, str]:
    """The teacher's greedy answers to every test row with the student's prompt, scored: ``(results,
    new model calls, who answered)``. A model-store teacher is served locally with the zero-shot base
    eval's request (so the two share cached answers where they are one model); a rerun whose every
    request is cached starts no server."""
    from distil_platform.evaluation.evaluate import client_answer_fn, eval_messages, evaluate
    from distil_platform.llm import ChatRequest

    task = spec.name
    item_ids = [str(r["id"]) for r in test]
    local = is_store_model(teacher)
    # The zero-shot base's answer budget for a local teacher (the same request, the same cache key);
    # an endpoint teacher's own max_tokens where it is larger (a reasoning model thinks first).
    budget = spec.max_answer_tokens if local else max(spec.max_answer_tokens, teacher.max_tokens)
    kwargs = {"temperature": 0.0, "max_tokens": answer_token_cap(profile, budget)}
    if local:
        model_dir = model_store.resolve(teacher.model)
        litellm_model = serving_model_string(serving, model_dir)
        identity = serving_identity_for(serving, model_dir)
        requests = [ChatRequest(messages=m, item_id=i, **kwargs) for m, i in zip(eval_messages(spec, test), item_ids)]
        if litellm_model and identity is not None and all_cached(store, litellm_model, requests, identity):
            client = llm.client(model=litellm_model, api_base="http://cached.invalid/v1", run_id=context.run_id,
                                task=task, stage=STAGE_TEACHER_EVAL, log=context.log.info, identity=identity)
            results = evaluate(spec, test, client_answer_fn(client, **kwargs, item_ids=item_ids), judge=judge)
            return results, client.http_calls, "response cache (every answer cached: no server started)"
        with local_client(context, llm, serving, model_dir, stage=STAGE_TEACHER_EVAL, task=task,
                          concurrency=eval_concurrency_for(config, serving, profile)) as (client, server):
            results = evaluate(spec, test, client_answer_fn(client, **kwargs, item_ids=item_ids), judge=judge)
            answered_by = f"local {getattr(server, 'backend', None) or 'transformers'} server"
    else:
        client = api_client(context, llm, teacher, stage=STAGE_TEACHER_EVAL, task=task,
                            concurrency=config.concurrency or 8, api_key=api_key)
        results = evaluate(spec, test, client_answer_fn(client, **kwargs, item_ids=item_ids), judge=judge)
        answered_by = f"endpoint {teacher.api_base or teacher.model}"
    if results and all(r.error is not None for r in results):
        # A fault (endpoint down, bad key, dead server), not a verdict on the teacher.
        raise dg.Failure(description=f"{task}: the teacher {teacher.model} answered none of the {len(results)} test "
                         f"questions (first error: {str(results[0].error)[:300]}); fix the endpoint or key (env "
                         f"DISTIL_TEACHER_API_BASE / {TEACHER_API_KEY_ENV}) and rerun")
    return results, client.http_calls, answered_by


def gap_closed_metadata(context, spec: TaskSpec, profile: Profile, results, store) -> dict[str, Any]:
    """The student eval's gap closed, against the latest successful zero-shot base eval and teacher eval
    (Dagster's record); the cost table computes it again once the baseline evals of this run are in."""
    from distil_platform.evaluation.evaluate import results_from_store_rows
    from distil_platform.evaluation.summary import item_means, item_metrics
    from distil_platform.evaluation.teacher_gate import gap_closed_summary, same_metric_items
    from distil_platform.storage.store import predictions

    task = spec.name

    def latest(stage: str, key: dg.AssetKey, variant: str | None = None):
        for run in published_runs(context.instance, key):
            rows = [r for r in store.select(predictions, task=task, stage=stage, run_id=run)
                    if variant is None or r.get("variant") == variant]
            if rows or stage == STAGE_TEACHER_EVAL:  # the latest teacher eval, with rows or without
                return run, results_from_store_rows(rows)
        return None, []

    base_run, base = latest(STAGE_BASELINES, task_key(task, "baseline_evals"), "zero_shot")
    teacher_run, teacher = latest(STAGE_TEACHER_EVAL, teacher_eval_key(task))
    models = [(item_means(x), item_metrics(x)) for x in (results, base, teacher)]
    items = same_metric_items(*models) if base and teacher else []
    gap = gap_closed_summary({i: models[0][0][i] for i in items}, {i: models[1][0][i] for i in items} if base else None,
                             {i: models[2][0][i] for i in items} if teacher else None,
                             same_model=teacher_is_student_base(spec, profile))
    pending = not base and not gap.get("note", "").startswith("not defined: the teacher is")
    md: dict[str, Any] = {"gap_closed_note": gap["note"] + (f"; the cost table reports it once {task}_baseline_evals "
                                                            "has run" if pending else ""),
                          "gap_closed_inputs": dg.MetadataValue.json({"baseline_evals_run": base_run,
                                                                      "teacher_eval_run": teacher_run})}
    if gap.get("defined"):
        md["gap_closed"] = dg.MetadataValue.float(round(gap["value"], 4))
        if gap.get("ci_low") is not None and gap["ci_low"] == gap["ci_low"]:  # NaN: unbounded
            md["gap_closed_ci_low"], md["gap_closed_ci_high"] = round(gap["ci_low"], 4), round(gap["ci_high"], 4)
    return md
