"""``<task>_teacher_data``: the teacher writes training examples from the seeds; validated, deduplicated and decontaminated; with its asset checks."""

# No `from __future__ import annotations`: Dagster reads the config/resource annotations at runtime.

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from distil_platform.resources.models import LLMResource, ModelStoreResource, ServingResource
from distil_platform.resources.store import ResultsStoreResource
from distil_platform.resources.teacher import TeacherEndpointResource

from distil_platform.profiles import Profile, get_profile
from distil_platform.storage import paths
from distil_platform.tasks.spec import ModelRef, TaskSpec

from .automation import check_condition
from .common import (
    STAGE_TEACHER,
    answer_token_cap,
    api_client,
    is_store_model,
    local_client,
    read_asset_rows,
    teacher_max_tokens,
)
from .config_sources import prompt_observation
from .deployment import GPU_POOL, gpu_op_tags
from .keys import prompt_key, task_key, teacher_eval_key
from .metadata import location_metadata, polars_column_schema, table_metadata
from .published import latest_teacher_eval


# -- run config --------------------------------------------------------------------------------
class TeacherDataConfig(dg.Config):
    """Overrides for ``<task>_teacher_data`` (None = task YAML for the profile, else profile default)."""

    target: int | None = None
    ground_in_unstructured: bool | None = None
    # Deterministic text2sql augmentation (swap a literal shared by question and SQL for another
    # value seen in the seeds). Off by default; its rows are marked origin=literal_swap and counted
    # apart from the teacher's.
    literal_swap: bool = False
    max_tokens: int | None = None
    # Continuous-batching servers peak near 16 requests in flight (cpu-notes); the teacher's
    # reproducibility does not hinge on batch composition the way scoring does.
    concurrency: int = 16
    seed: int = 0
    # "teacher" (a model writes the rows), "recorded" (a file of rows another teacher wrote) or
    # "self_training" (the teacher labels the task's unlabelled messages; `target` of them);
    # None = the task YAML's synthesis.source for the profile (default teacher).
    source: str | None = None
    # The recorded file (jsonl / csv / parquet, public layout); None = synthesis.recorded / env.
    recorded_path: str | None = None
    recorded_max_rows: int | None = None
    # Override the task YAML's synthesis.filters.answer_agreement switch.
    answer_agreement: bool | None = None
    # Override the task YAML's synthesis.frequency_penalty (OpenAI semantics, -2..2).
    frequency_penalty: float | None = None
    # self_training: the model that labels the messages, served locally. A checkpoint (a directory
    # or artefact URL, e.g. the `checkpoint_path` of an earlier seed-only `<task>_student` run) or a
    # model-store name; None = the profile's teacher.
    labeller: str | None = None
    # The agreement filter's second answerer, served locally: a checkpoint (a directory or artefact
    # URL, e.g. the `checkpoint_path` of a seed-only `<task>_student` run, which answers with the
    # student's own prompt, greedy, as its eval does) or a model-store name; turns the filter on.
    # None = the teacher re-asked without demonstrations.
    agreement_model: str | None = None
    # Ask the teacher even though its latest `<task>_teacher_eval` says RETHINK (recorded in the metadata).
    override_teacher_gate: bool = False


TEACHER_API_KEY_ENV = "DISTIL_TEACHER_API_KEY"
TEACHER_API_BASE_ENV = "DISTIL_TEACHER_API_BASE"


def resolve_teacher(spec: TaskSpec, profile: Profile, endpoint: TeacherEndpointResource | None = None) -> ModelRef:
    """The profile's teacher with its endpoint and key filled from the ``teacher_endpoint`` resource
    (fed by ``DISTIL_TEACHER_API_BASE`` / ``DISTIL_TEACHER_API_KEY``; read from the environment when
    no resource is given) when the task YAML gives none. A model-store teacher (served locally) is
    returned unchanged: the key never reaches a server that does not need it."""
    teacher = spec.teacher_for(profile.name)
    if is_store_model(teacher):
        return teacher
    # A field the resource leaves unset falls back to the environment variable it is normally fed from.
    api_base = (endpoint.api_base if endpoint is not None else None) or os.environ.get(TEACHER_API_BASE_ENV)
    has_key = bool(endpoint is not None and endpoint.api_key) or bool(os.environ.get(TEACHER_API_KEY_ENV))
    update: dict[str, Any] = {}
    if not teacher.api_base and api_base:
        update["api_base"] = api_base
    if not teacher.api_key_env and has_key:
        update["api_key_env"] = TEACHER_API_KEY_ENV
    teacher = teacher.model_copy(update=update) if update else teacher
    if teacher.model.startswith("openai/") and not teacher.api_base:
        raise RuntimeError(
            f"{spec.name}: teacher {teacher.model} needs an endpoint: set api_base in the task YAML's "
            f"teacher or env {TEACHER_API_BASE_ENV} (an OpenAI-compatible .../v1 URL)"
        )
    if teacher.api_key_env and not (os.environ.get(teacher.api_key_env) or (
            teacher.api_key_env == TEACHER_API_KEY_ENV and endpoint is not None and endpoint.api_key)):
        raise RuntimeError(
            f"{spec.name}: the {profile.name} profile's teacher {teacher.model} needs env {teacher.api_key_env}"
        )
    return teacher


def check_teacher_answered(task: str, model: str, report, errors: list[str]) -> None:
    """A teacher that answered none of its requests fails the stage (dg.Failure) with the first
    error, instead of handing the student zero rows (a silent seed-only "distilled" student)."""
    if report.n_requests and report.failed_requests == report.n_requests:
        first = next((e for e in errors if e), "no reply")
        raise dg.Failure(
            description=f"{task}: the teacher {model} answered none of its {report.n_requests} requests "
            f"(first error: {first[:300]}). Check the endpoint and key (env {TEACHER_API_BASE_ENV}, "
            f"{TEACHER_API_KEY_ENV}, or the task YAML's teacher) or the local model; a student trained on the "
            "seeds alone is not a distilled one.",
        )


def _teacher_fault(task: str, model: str, exc: Exception, llm: LLMResource) -> str:
    """The failure a teacher batch stopped by its error rate gets: a fault, named, with the way out."""
    return (f"{task}: the teacher {model} failed too many requests, so the stage stops instead of training on "
            f"the rows that got through: {str(exc)[:400]}. The answers received are cached: rerun once the "
            f"endpoint is healthy and only the rest is asked (LLMResource.max_error_rate="
            f"{llm.max_error_rate} sets the share of failures a batch tolerates).")


def resolve_local_model(name: str, model_store: ModelStoreResource, field: str) -> tuple[ModelRef, Path]:
    """``(ref, local_dir)`` of a model the stage serves itself (the self-training labeller, the
    agreement model): a checkpoint directory or artefact URL (fetched once, like the serving stages
    do) or a model-store name. Served locally, never with a key."""
    if paths.is_remote(name) or name.startswith(("/", ".", "~")):  # local_checkpoint takes both
        local = paths.local_checkpoint(os.path.expanduser(name), what=f"the checkpoint of run config `{field}`")
    else:
        local = model_store.resolve(name)
    return ModelRef(model=name, tier="teacher"), local


def teacher_source(spec: TaskSpec, profile: Profile, override: str | None) -> str:
    source = override or spec.synthesis.source.for_profile(profile.name) or "teacher"
    if source not in ("teacher", "recorded", "self_training"):
        raise ValueError(f"{spec.name}: teacher data source must be teacher, recorded or self_training, got {source!r}")
    return source


def gate_teacher_label(spec: TaskSpec, profile: Profile, source: str) -> str:
    """Who the teacher gate is about: the recorded file's teacher, else the profile's teacher model. The
    teacher eval records it; the teacher data compares it with its own, so a gate that measured another
    teacher (run config ``source``, ``labeller``) is reported as not applicable, never applied."""
    if source == "recorded":
        from distil_platform.tasks.spec import RecordedTeacher

        return (spec.synthesis.recorded or RecordedTeacher()).teacher_model
    return spec.teacher_for(profile.name).model


def teacher_serves_locally(spec: TaskSpec, profile: Profile) -> bool:
    """Whether ``<task>_teacher_data`` starts a local model server with the task's and profile's own
    settings: the profile's teacher is a model-store name (no endpoint, no provider) and the stage asks
    it something - it writes or labels the rows (source ``teacher`` / ``self_training``) or gives the
    agreement filter's second answer. A remote teacher or a recorded file without that filter: no."""
    if not is_store_model(spec.teacher_for(profile.name)):
        return False
    return teacher_source(spec, profile, None) != "recorded" or spec.synthesis.filters.answer_agreement


def build_teacher_assets(spec: TaskSpec, profile: Profile | None = None) -> list:
    """``<task>_teacher_data`` and its checks."""
    profile = profile or get_profile()  # resolved once, when the Definitions are built
    task = spec.name
    seed_key = dg.AssetKey(task)
    teacher_key = task_key(task, "teacher_data")
    # A local teacher (or labeller, or agreement model) is a model server: on a GPU it holds the card,
    # so the step takes a `gpu` pool slot like the student's training and serving steps. Decided here,
    # from the task and profile; run config `labeller` / `agreement_model` serve a model too (warned).
    in_gpu_pool = teacher_serves_locally(spec, profile)

    @dg.asset(
        key=teacher_key,
        group_name=task,
        ins={"seed_set": dg.AssetIn(seed_key)},
        # The teacher eval's verdict is read from Dagster's record, not loaded as an input: the gate
        # holds in a run that does not select the eval, and a never-evaluated teacher is not a failure.
        deps=[prompt_key(task), teacher_eval_key(task)],
        kinds={"polars", "parquet"},
        pool=GPU_POOL if in_gpu_pool else None,
        op_tags=gpu_op_tags() if in_gpu_pool else None,
        description=f"Synthetic `{task}` training examples written by the teacher (or read from a recorded "
        "teacher's file) from the seeds, schema-validated, passed through the quality filters, deduplicated and "
        "decontaminated against the test set. Reads the teacher gate (`<task>_teacher_eval`): on RETHINK the "
        "teacher is asked nothing and no teacher rows are written (the student trains on the seeds) unless run "
        "config `override_teacher_gate` is true.",
    )
    def teacher_data(
        context: dg.AssetExecutionContext,
        config: TeacherDataConfig,
        seed_set: dict,
        llm: LLMResource,
        serving: ServingResource,
        model_store: ModelStoreResource,
        results_store: ResultsStoreResource,
        teacher_endpoint: TeacherEndpointResource,
    ) -> dg.Output[dict]:
        from distil_platform.evaluation.evaluate import eval_messages
        from distil_platform.llm import ChatRequest
        from distil_platform.tasks.spec import RecordedTeacher
        from distil_platform.teacher.recorded import load_recorded, recorded_path
        from distil_platform.teacher.schemas import (
            response_format,
            second_answer_format,
            sql_subset_for,
            unwrap_second_answer,
            use_structured_output,
        )
        from distil_platform.teacher.synthesis import answer_distribution, sample_rows, synthesize

        if (observation := prompt_observation(spec)) is not None:
            context.log_event(observation)  # the <task>_prompt version this run distils from
        seeds = read_asset_rows(seed_set["seed_path"])
        test = read_asset_rows(seed_set["test_path"])
        unstructured = read_asset_rows(seed_set.get("unstructured_path"))
        # Production-trace questions without a usable answer (the seed set's traces): the teacher labels them.
        trace_texts = [{"id": r["id"], "question": r["question"], "context": r.get("context") or ""}
                       for r in read_asset_rows(seed_set.get("traces_unlabelled_path"))]
        target = _synthetic_target(spec, profile, config.target)
        source = teacher_source(spec, profile, config.source)
        filters = spec.synthesis.filters
        if config.answer_agreement is not None:
            filters = filters.model_copy(update={"answer_agreement": config.answer_agreement})
        if config.agreement_model:
            if config.answer_agreement is False:
                raise ValueError(f"{task}: run config `agreement_model` gives the agreement filter's second answer, "
                                 "but `answer_agreement` is false")
            filters = filters.model_copy(update={"answer_agreement": True})
        max_tokens = config.max_tokens or teacher_max_tokens(spec, profile, seeds)
        penalty = spec.synthesis.frequency_penalty if config.frequency_penalty is None else config.frequency_penalty
        sampling = {"frequency_penalty": penalty} if penalty else {}
        start = time.monotonic()

        # The teacher gate, as the latest teacher eval recorded it (evaluation.teacher_gate.gate_decision).
        from distil_platform.evaluation.teacher_gate import gate_decision

        gate = gate_decision(spec, latest_teacher_eval(context.instance, task),
                             teacher=config.labeller or gate_teacher_label(spec, profile, source), source=source,
                             override=config.override_teacher_gate)
        if gate.stop:
            raise dg.Failure(description=f"{task}: {gate.note}")
        seed_only = not gate.ask_teacher
        if seed_only:
            # Nothing is asked: no teacher rows, no labels, no second answers (literal swaps, derived from
            # the seeds, still apply when on). The student trains on the seeds, and its metadata says so.
            context.log.warning(f"{task}: {gate.note}: the teacher is asked nothing")
            target, filters = 0, filters.model_copy(update={"answer_agreement": False})
        else:
            context.log.info(f"{task}: {gate.note}")

        recorded = None
        teacher_label = gate_teacher_label(spec, profile, source)  # a recorded file's teacher, else the model
        if source == "recorded" and not seed_only:
            rcfg = spec.synthesis.recorded or RecordedTeacher()
            path = recorded_path(spec, rcfg, config.recorded_path)
            recorded = load_recorded(spec, path, max_rows=config.recorded_max_rows or rcfg.max_rows,
                                     sample_seed=rcfg.sample_seed, teacher_model=rcfg.teacher_model)
            teacher_label = rcfg.teacher_model
            context.log.info(f"{task}: recorded teacher {rcfg.teacher_model}: {len(recorded)} rows from {path}")
        from distil_platform.teacher.self_training import SELF_TRAINING_TYPES

        texts: list[dict] = []
        if source == "self_training" and not seed_only:
            import random

            from distil_platform.teacher.self_training import unlabelled_texts

            if spec.type not in SELF_TRAINING_TYPES:
                raise ValueError(f"{task}: self-training applies to {', '.join(SELF_TRAINING_TYPES)} tasks, not {spec.type}")
            texts = unlabelled_texts(unstructured)
            if not texts and not trace_texts:
                raise RuntimeError(f"{task}: self-training needs unlabelled messages (data.unstructured_file in "
                                   f"{spec.source_file}, or production traces); the seed set has none")
            if target < len(texts):
                texts = random.Random(config.seed).sample(texts, max(0, target))
        traces_note = None
        if trace_texts and (seed_only or source == "recorded" or spec.type not in SELF_TRAINING_TYPES):
            traces_note = (f"{len(trace_texts)} unlabelled trace rows not labelled: "
                           + ("the teacher gate says the teacher is asked nothing" if seed_only else
                              "a recorded teacher labels nothing" if source == "recorded" else
                              f"the teacher labels {' and '.join(SELF_TRAINING_TYPES)} messages only"))
            context.log.warning(f"{task}: {traces_note}")
            trace_texts = []
        needs_model = not seed_only and ((source in ("teacher", "self_training") and (target > 0 or bool(trace_texts)))
                                         or (filters.answer_agreement and not config.agreement_model))
        labeller_dir = None
        if config.labeller:
            if source != "self_training":
                raise ValueError(f"{task}: run config `labeller` applies to source self_training, not {source}")
            teacher, labeller_dir = resolve_local_model(config.labeller, model_store, "labeller")
            teacher_label = teacher.model
        elif needs_model:
            teacher = resolve_teacher(spec, profile, teacher_endpoint)
        else:
            teacher = spec.teacher_for(profile.name)
        served: dict[str, Any] = {"structured_output": False}
        errors: list[str] = []
        traced: list[dict] = []  # the trace rows as the teacher labelled them (filled once a model is up)

        def generate_with(client):
            def generate(batch, formats):
                from distil_platform.llm import ErrorRateExceeded, LLMError

                # No per-request seed: with one, the vLLM-CPU teacher server died mid-batch on
                # docstring (4 concurrent constrained requests; benchmarks/README.md, teacher yield).
                requests = [ChatRequest(messages=m, temperature=spec.synthesis.temperature, max_tokens=max_tokens,
                                        item_id=f"teacher-{i}", extra={**sampling, **({"response_format": f} if f else {})})
                            for i, (m, f) in enumerate(zip(batch, formats))]
                try:
                    results = client.chat_batch(requests)
                except ErrorRateExceeded as exc:
                    # A fault (a 429/5xx storm, a dying server), not a low yield: training on what the
                    # storm let through would silently shrink the training set. What completed is cached,
                    # so a rerun once the teacher is healthy asks only for the rest. (A teacher that
                    # answered nothing at all gets check_teacher_answered's message: endpoint or key.)
                    if any(r.error is None for r in exc.results):
                        raise dg.Failure(description=_teacher_fault(task, teacher_label, exc, llm)) from exc
                    context.log.warning(f"{task}: teacher batch stopped early: {exc}")
                    errors.append(str(exc))
                    errors.extend(r.error for r in exc.results if r.error)
                    return [None] * len(requests)
                except LLMError as exc:
                    # A batch stopped by the spend cap (a limit the user set) still yields what completed;
                    # the missing replies count as failed requests.
                    context.log.warning(f"{task}: teacher batch stopped early: {exc}")
                    errors.append(str(exc))
                    done = {id(r.request): r for r in exc.results}
                    errors.extend(r.error for r in exc.results if r.error)
                    return [done.get(id(q)) for q in requests]
                errors.extend(r.error for r in results if r.error)
                # The results themselves: synthesis rejects a truncated or empty reply by its finish reason.
                return results
            return generate

        def agreement_requests(rows, formats):
            # Each row's question with the student's own prompt (system + user), greedy.
            return [ChatRequest(messages=m, temperature=0.0, max_tokens=answer_token_cap(profile, spec.max_answer_tokens),
                                item_id=f"agree-{i}", extra={"response_format": f} if f else {})
                    for i, (m, f) in enumerate(zip(eval_messages(spec, rows), formats))]

        def second_answer_with(client, structured):
            # The agreement filter's independent answer: the teacher re-asked, no demonstrations; with
            # structured outputs, held to the answer space its first answer was
            # (teacher_schemas.second_answer_format).
            def answer(rows):
                from distil_platform.teacher.replies import Reply

                formats = [second_answer_format(spec, r) if structured else None for r in rows]
                requests = agreement_requests(rows, formats)
                return [Reply(unwrap_second_answer(r.text) if f else r.text, r.finish_reason, r.error)
                        for r, f in zip(client.chat_batch(requests), formats)]
            return answer

        def second_answer_by(ref, model_dir, release_teacher=lambda: None):
            # The agreement filter's second answer from another model (e.g. the seed-only student),
            # served for this one batch: the student's prompt, greedy, its own output format. The
            # filter runs after generation, so the teacher's own server is released first: one local
            # server at a time (two vLLM servers would not both fit one GPU's memory share).
            def answer(rows):
                from distil_platform.llm import LLMError

                release_teacher()
                requests = agreement_requests(rows, [None] * len(rows))
                with _teacher_client(context, llm, serving, model_store, ref, task=task,
                                     concurrency=config.concurrency, model_dir=model_dir) as (client, _):
                    try:
                        results = client.chat_batch(requests)
                    except LLMError as exc:
                        raise dg.Failure(description=f"{task}: the agreement model {ref.model} stopped answering: "
                                         f"{str(exc)[:300]}") from exc
                texts = [r.text for r in results]
                if texts and all(t is None for t in texts):
                    first = next((r.error for r in results if r.error), "no reply")
                    raise dg.Failure(description=f"{task}: the agreement model {ref.model} answered none of "
                                     f"{len(texts)} rows (first error: {str(first)[:300]})")
                served["agreement_answered"] = sum(t is not None for t in texts)
                return results  # with their finish reasons: a truncated second answer is no verdict
            return answer

        judge = (resolve_local_model(config.agreement_model, model_store, "agreement_model")
                 if config.agreement_model and not seed_only else None)
        if not in_gpu_pool and (config.labeller or config.agreement_model):
            context.log.warning(
                f"{task}: run config `{'labeller' if config.labeller else 'agreement_model'}` serves a model locally, "
                f"but this step is not in the `{GPU_POOL}` pool (the {profile.name} profile's teacher is not served "
                "locally): on a GPU machine its server can start beside another GPU step's")

        def run(generate, second=None, reply_format=None):
            return synthesize(
                spec, seeds, test, generate, target=target, teacher_model=teacher_label,
                unstructured=unstructured, ground_in_unstructured=config.ground_in_unstructured,
                literal_swap=config.literal_swap, rng_seed=config.seed, log=context.log.info,
                recorded=recorded, second_answer=second, filters=filters, reply_format=reply_format, traced=traced,
            )

        def label_with(client, send_logprobs, texts=texts, counter="labelled"):
            # Self-training (and trace rows): the teacher answers each real message with the student's prompt, greedy.
            from distil_platform.llm import ErrorRateExceeded, LLMError
            from distil_platform.teacher.self_training import answer_confidence, label_rows

            extra = {"logprobs": True} if send_logprobs else {}
            requests = [ChatRequest(messages=m, temperature=0.0, item_id=f"{counter}-{i}", extra=dict(extra),
                                    max_tokens=answer_token_cap(profile, spec.max_answer_tokens))
                        for i, m in enumerate(eval_messages(spec, texts))]
            try:
                results = client.chat_batch(requests)
            except ErrorRateExceeded as exc:
                raise dg.Failure(description=_teacher_fault(task, teacher.model, exc, llm)) from exc
            except LLMError as exc:
                context.log.warning(f"{task}: labelling batch stopped early: {exc}")
                errors.append(str(exc))
                results = exc.results
            done = {id(r.request): r for r in results}
            errors.extend(r.error for r in results if r.error)
            got = [done.get(id(q)) for q in requests]
            served[counter] = sum(1 for r in got if r is not None and r.text is not None)
            served["confidence_available"] = any(r is not None and r.logprobs for r in got)
            if requests and not served[counter]:
                first = next((e for e in errors if e), "no reply")
                raise dg.Failure(description=f"{task}: the labeller {teacher.model} answered none of {len(requests)} "
                                 f"messages (first error: {first[:300]})")
            from distil_platform.teacher.replies import unusable_reply

            return label_rows(spec, texts, [r.text if r else None for r in got],
                              [answer_confidence(r.logprobs) if r else None for r in got], labeller=teacher.model,
                              unusable=[unusable_reply(r) for r in got])

        if not needs_model:
            report = run(lambda batch, formats: [], second_answer_by(*judge) if judge else None)
        else:
            with contextlib.ExitStack() as teacher_stack:
                client, local_backend = teacher_stack.enter_context(_teacher_client(
                    context, llm, serving, model_store, teacher, api_key=teacher_endpoint.api_key
                    if teacher.api_key_env == TEACHER_API_KEY_ENV else None, task=task,
                    concurrency=config.concurrency, model_dir=labeller_dir))
                structured = use_structured_output(teacher.response_format, served_locally=local_backend is not None,
                                                   backend=local_backend)
                served["structured_output"] = structured
                # Each request's own schema: an open-book QA answer is a span of that request's passage.
                sql_subset = sql_subset_for(spec, profile.name)
                served["sql_subset"] = structured and sql_subset

                def reply_format(req):
                    fmt = response_format(spec, seeds, context=req.context, sql_subset=sql_subset)
                    served.setdefault("reply_schema", fmt["json_schema"]["schema"])  # the first, for the UI
                    return fmt

                if not structured:
                    reply_format = None
                if judge:
                    second = second_answer_by(*judge, release_teacher=teacher_stack.close)
                else:
                    second = second_answer_with(client, structured) if filters.answer_agreement else None
                if trace_texts:  # transformers serve returns no logprobs; vLLM and OpenAI-style endpoints do.
                    traced.extend(label_with(client, send_logprobs=local_backend != "transformers",
                                             texts=trace_texts, counter="traces_labelled"))
                if source == "self_training":
                    labelled = label_with(client, send_logprobs=local_backend != "transformers") if texts else []
                    report = synthesize(
                        spec, seeds, test, lambda batch, formats: [], target=target, teacher_model=teacher.model,
                        rng_seed=config.seed, log=context.log.info, recorded=labelled, second_answer=second,
                        filters=filters, source_name="self_training", traced=traced)
                else:
                    report = run(generate_with(client), second, reply_format)
                served["reply_counts"] = client.reply_counts()  # truncated / empty / timeouts of this teacher
        if source == "teacher" and not seed_only:
            check_teacher_answered(task, teacher.model, report, errors)
        wall = time.monotonic() - start

        columns = ["id", "question", "answer", "context", "origin", "teacher_model", "seed_ids", "topic",
                   "prompt_hash", "grounding_ids", "verdicts"]
        frame = pl.DataFrame([{c: str(r.get(c, "") or "") for c in columns} for r in report.accepted],
                             schema=dict.fromkeys(columns, pl.String))
        out_path = paths.write_parquet(frame, paths.artifact_url(task, "teacher_data", context.run_id,
                                                                 "accepted.parquet"))
        summary = report.summary()
        dist = answer_distribution(spec, report.accepted)
        gate_value = {"status": gate.status, "note": gate.note, "ask_teacher": gate.ask_teacher,
                      "overridden": gate.overridden}
        value = {"path": str(out_path), "n_accepted": len(report.accepted), "teacher": teacher_label,
                 "source": source, "summary": summary, "distribution": dist, "teacher_gate": gate_value}
        metadata: dict[str, Any] = {
            "teacher": teacher_label,
            "source": source,
            # The gate this run read (the latest <task>_teacher_eval) and what it did.
            "teacher_gate": gate.note,
            "teacher_gate_status": gate.status,
            "seed_only_by_gate": seed_only,
            "override_teacher_gate": config.override_teacher_gate,
            "structured_output": served["structured_output"],
            # Who gave the agreement filter's second answer (None: the filter is off).
            "agreement_answerer": (config.agreement_model or "teacher (re-asked, no demonstrations)")
            if filters.answer_agreement else "none (filter off)",
            **({"agreement_answered": served.get("agreement_answered", 0)} if judge else {}),
            **({"reply_schema": dg.MetadataValue.json(served["reply_schema"]),
                "sql_subset": served["sql_subset"]} if served.get("reply_schema") else {}),
            **({"labelled_messages": served.get("labelled", 0),
                "confidence_available": served.get("confidence_available", False)} if source == "self_training" else {}),
            "requested": summary["requested"],
            "teacher_requests": summary.get("teacher_requests", 0),
            # The teacher-data target: at least one accepted row per request to the teacher.
            "accepted_per_request": dg.MetadataValue.float(
                round(summary["teacher_accepted"] / summary["teacher_requests"], 3)
                if summary.get("teacher_requests") else 0.0),
            "generated": summary["generated"],
            "schema_valid": summary["schema_valid"],
            "passed_filters": summary["passed_filters"],
            "accepted": summary["accepted"],
            "teacher_accepted": summary["teacher_accepted"],
            "augmented_accepted": summary["augmented_accepted"],
            "rejected": summary["rejected"],
            "rejections_by_reason": dg.MetadataValue.json(summary["rejections_by_reason"]),
            "funnel": table_metadata([{"step": k, "rows": v} for k, v in summary["funnel"].items()]
                                     + ([{"step": "of which from traces: in", "rows": summary["traces_candidates"]},
                                         {"step": "of which from traces: accepted", "rows": summary["traces_accepted"]}]
                                        if summary["traces_candidates"] else []),
                                  [("step", "string"), ("rows", "int")], max_rows=20),
            # Production-trace questions the teacher labelled (the seed set's unlabelled trace rows).
            "traces_candidates": summary["traces_candidates"],
            "traces_accepted": summary["traces_accepted"],
            **({"traces_labelled": served.get("traces_labelled", 0)} if summary["traces_candidates"] else {}),
            **({"traces_note": traces_note} if traces_note else {}),
            "filters": table_metadata(
                [{"filter": name, "checked": st["checked"], "passed": st["passed"],
                  "rejected": sum(st["rejected"].values()),
                  "reasons": ", ".join(f"{k} ({v})" for k, v in st["rejected"].items())}
                 for name, st in summary["filters"].items()],
                [("filter", "string"), ("checked", "int"), ("passed", "int"), ("rejected", "int"),
                 ("reasons", "string")], max_rows=20),
            "exact_duplicates": summary["exact_duplicates"],
            "near_duplicates": summary["near_duplicates"],
            "duplicates_of_seeds": summary["duplicates_of_seeds"],
            "decontaminated": summary["decontaminated"],
            "decontaminated_on": summary["decontaminated_on"],
            "failed_requests": summary["failed_requests"],
            # Billed replies that are no rows (synthesis module docstring): cut off at max_tokens, or empty.
            "truncated_replies": summary["rejections_by_reason"].get("truncated_reply", 0),
            "empty_replies": summary["rejections_by_reason"].get("empty_reply", 0),
            **({"teacher_reply_counts": dg.MetadataValue.json(served["reply_counts"])}
               if served.get("reply_counts") else {}),
            "literal_swap": config.literal_swap,
            "frequency_penalty": float(penalty),
            "wall_time_s": round(wall, 1),
            "accepted_path": location_metadata(out_path),
            "sample": table_metadata(sample_rows(report, 10),
                                  [("origin", "string"), ("status", "string"), ("verdicts", "string"),
                                   ("question", "string"), ("answer", "string")], max_rows=10),
            "dagster/row_count": len(report.accepted),
            "dagster/column_schema": polars_column_schema(frame),
        }
        for name, st in summary["filters"].items():
            metadata[f"rejected_by_{name}"] = sum(st["rejected"].values())
        if dist:
            metadata["distribution"] = dg.MetadataValue.json(dist)
            total = sum(dist.values())
            metadata["distribution_table"] = table_metadata(
                [{"class": k, "count": v, "share": round(v / total, 3)} for k, v in dist.items()],
                [("class", "string"), ("count", "int"), ("share", "float")], max_rows=50)
        context.log.info(f"{task}: teacher data {summary}")
        return dg.Output(value, metadata=metadata)

    @dg.asset_check(asset=teacher_data, automation_condition=check_condition(), name="accepted_minimum",
                    description="At least the configured minimum of synthetic examples survived the filters.")
    def accepted_minimum(teacher_data: dict) -> dg.AssetCheckResult:
        return check_accepted_minimum(spec, teacher_data, profile)

    @dg.asset_check(asset=teacher_data, automation_condition=check_condition(), name="distribution_not_collapsed",
                    description="Accepted labels / tool calls are not collapsed onto one class.")
    def distribution_not_collapsed(teacher_data: dict) -> dg.AssetCheckResult:
        return check_distribution(spec, teacher_data)

    return [teacher_data, accepted_minimum, distribution_not_collapsed]


# -- plain functions (tested directly) ---------------------------------------------------------
def _synthetic_target(spec: TaskSpec, profile: Profile, override: int | None) -> int:
    if override is not None:
        return override
    value = spec.synthesis.target.for_profile(profile.name)
    return int(value) if value is not None else profile.synthetic_target


def min_accepted(spec: TaskSpec, profile: Profile) -> int:
    value = spec.synthesis.min_accepted.for_profile(profile.name)
    if value is not None:
        return int(value)
    # Unconfigured: a quarter of the target on capable teachers; one example on the small local ones.
    return max(1, _synthetic_target(spec, profile, None) // 4) if profile.name == "gpu" else 1


def check_accepted_minimum(spec: TaskSpec, teacher_data: dict, profile: Profile | None = None) -> dg.AssetCheckResult:
    profile = profile or get_profile()
    gate = teacher_data.get("teacher_gate") or {}
    if gate and not gate.get("ask_teacher", True):
        # Seed-only by the teacher gate: no teacher rows is the intended outcome, not a low yield.
        return dg.AssetCheckResult(passed=True, metadata={"applicable": False, "reason": gate.get("note", "")})
    minimum = min_accepted(spec, profile)
    n = int(teacher_data["n_accepted"])
    summary = teacher_data.get("summary", {})
    return dg.AssetCheckResult(
        passed=n >= minimum,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"accepted": n, "minimum": minimum, "generated": summary.get("generated", 0),
                  "rejections_by_reason": dg.MetadataValue.json(summary.get("rejections_by_reason", {}))},
    )


def check_distribution(spec: TaskSpec, teacher_data: dict) -> dg.AssetCheckResult:
    from distil_platform.teacher.synthesis import distribution_collapsed

    dist = teacher_data.get("distribution") or {}
    if spec.type not in ("classification", "tool_calling"):
        return dg.AssetCheckResult(passed=True, metadata={"applicable": False, "task_type": spec.type})
    total = sum(dist.values())
    top = max(dist.values(), default=0)
    return dg.AssetCheckResult(
        passed=not distribution_collapsed(dist),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"applicable": True, "classes": len(dist), "examples": total,
                  "largest_share": round(top / total, 3) if total else 0.0,
                  "distribution": dg.MetadataValue.json(dist)},
    )


@contextlib.contextmanager
def _teacher_client(context, llm: LLMResource, serving: ServingResource, model_store: ModelStoreResource,
                    teacher: ModelRef, *, task: str, concurrency: int, api_key: str | None = None,
                    model_dir: Path | None = None):
    """``(client, local_backend)``: a local server of a model-store teacher or of ``model_dir``
    (backend "vllm" / "transformers"), or a client of the teacher's endpoint (backend None)."""
    if model_dir is not None or is_store_model(teacher):
        model_dir = model_dir or model_store.resolve(teacher.model)
        with local_client(context, llm, serving, model_dir, stage=STAGE_TEACHER, task=task,
                           concurrency=concurrency) as (client, server):
            yield client, getattr(server, "backend", None) or "transformers"
    else:
        yield api_client(context, llm, teacher, stage=STAGE_TEACHER, task=task,
                          concurrency=max(concurrency, 8), api_key=api_key), None
