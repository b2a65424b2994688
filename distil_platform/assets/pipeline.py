"""Distillation assets of one task: ``<task>_teacher_data`` → ``<task>_student`` →
``<task>_student_eval`` and ``<task>_baseline_evals``, with their asset checks.

Logic lives in ``distil_platform.synthesis`` / ``training`` / ``evaluation``; this module only wires
it to resources (model store, serving, LLM client, results store), run config and metadata.
"""

# No `from __future__ import annotations`: Dagster reads the config/resource annotations at runtime.

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from distil_platform import paths
from distil_platform.evaluation import client_answer_fn
from distil_platform.modelstore import chat_token_counter
from distil_platform.profiles import Profile, get_profile
from distil_platform.resources.models import LLMResource, ModelStoreResource, ServingResource
from distil_platform.resources.store import ResultsStoreResource
from distil_platform.taskspec import ModelRef, TaskSpec

from .keys import task_key
from .metadata import markdown_table, png_markdown, table_metadata

STAGE_TEACHER = "teacher_data"
STAGE_STUDENT_EVAL = "student_eval"
STAGE_BASELINES = "baseline_evals"


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


class StudentConfig(dg.Config):
    """Overrides for ``<task>_student`` (None = task YAML ``training``, else profile default)."""

    max_steps: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    max_length: int | None = None
    use_lora: bool | None = None
    # False trains on the seeds alone (the "seed-only" ablation of the benchmark).
    use_synthetic: bool = True
    seed: int = 0


class EvalConfig(dg.Config):
    # Requests in flight per model. None: 1 for CPU transformers serving (batched bf16 greedy
    # decoding depends on batch composition, so one-at-a-time is what makes scores reproducible),
    # 16 otherwise.
    concurrency: int | None = None
    worst_items: int = 10


class BaselineConfig(EvalConfig):
    # Repeats for models at temperature > 0 when the task YAML does not say (greedy decoding at
    # temperature 0 is deterministic, so those models are asked once).
    default_repeats: int = 3
    include_zero_shot_base: bool = True


# -- helpers -----------------------------------------------------------------------------------
def _read_rows(path: str | None) -> list[dict[str, Any]]:
    if not path:
        return []
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} does not exist; re-materialise the upstream asset")
    return pl.read_parquet(path).to_dicts()


def _is_store_model(ref: ModelRef) -> bool:
    """A model-store name served locally (no endpoint and no provider prefix)."""
    return ref.api_base is None and "/" not in ref.model and ref.api_key_env is None


def _eval_concurrency(cfg: EvalConfig, serving: ServingResource) -> int:
    if cfg.concurrency:
        return cfg.concurrency
    if get_profile().name == "test":
        return 8  # tiny random models: speed matters, reproducibility of their noise does not
    return 1 if getattr(serving, "backend", "transformers") in ("transformers", "auto") and not _has_cuda() else 16


def teacher_max_tokens(spec: TaskSpec, profile: Profile) -> int:
    """Room for ``examples_per_request`` examples (a question plus an answer each). On the CPU
    ``local`` profile the budget per example is compact (a 135M teacher fills whatever it is given,
    and every token costs ~50 ms there); capable teachers get the task's full answer length."""
    per_request = spec.synthesis.examples_per_request
    if profile.name == "local":
        return per_request * (min(spec.max_answer_tokens, 64) + 48)
    return answer_token_cap(profile, min(4096, per_request * (spec.max_answer_tokens + 64)))


def answer_token_cap(profile: Profile, max_tokens: int) -> int:
    """The `test` profile's tiny random models never emit EOS: cap their answers at 32 tokens so the
    suite stays fast. Other profiles use the task's / model's limit unchanged."""
    return min(max_tokens, 32) if profile.name == "test" else max_tokens


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


@contextlib.contextmanager
def _local_client(context, llm: LLMResource, serving: ServingResource, model_dir: Path, *, stage: str,
                  task: str, concurrency: int, served_name: str | None = None, timeout_s: float = 600.0):
    """Serve ``model_dir`` locally and yield ``(client, server)``.

    The per-request timeout is long: a CPU server answering several long generations at once
    (the teacher) legitimately takes minutes per request."""
    with serving.serve(model_dir, served_model_name=served_name, log=context.log.info) as server:
        client = llm.client(
            model=server.litellm_model, api_base=server.base_url, run_id=context.run_id, task=task,
            stage=stage, concurrency=concurrency, log=context.log.info,
            token_counter=chat_token_counter(model_dir), timeout_s=timeout_s,
        )
        yield client, server


def _api_client(context, llm: LLMResource, ref: ModelRef, *, stage: str, task: str, concurrency: int):
    api_key = os.environ.get(ref.api_key_env) if ref.api_key_env else None
    return llm.client(model=ref.model, api_base=ref.api_base, api_key=api_key, run_id=context.run_id,
                      task=task, stage=stage, concurrency=concurrency, log=context.log.info)


def _all_cached(store, model: str, requests) -> bool:
    """True when every request is already in the response cache (a rerun then needs no server)."""
    from sqlalchemy import select

    from distil_platform.llm import cache_key
    from distil_platform.store import llm_cache

    keys = {cache_key(model, r) for r in requests}
    found: set[str] = set()
    key_list = list(keys)
    with store.engine.connect() as conn:
        for i in range(0, len(key_list), 500):
            chunk = key_list[i : i + 500]
            found |= {row[0] for row in conn.execute(select(llm_cache.c.key).where(llm_cache.c.key.in_(chunk)))}
    return found == keys


def _judge(spec: TaskSpec, llm: LLMResource, context):
    """The task's LLM judge (``messages -> verdict text``) when configured and reachable, else None:
    scoring then uses its documented fallback metric, with a warning here."""
    if spec.metric_name != "llm_judge":
        return None
    ref = spec.judge
    if ref is None or (ref.api_key_env and not os.environ.get(ref.api_key_env)):
        context.log.warning(
            f"{spec.name}: metric llm_judge but no judge is reachable "
            f"({'none configured' if ref is None else f'{ref.api_key_env} not set'}); "
            "scoring falls back to token F1 (ItemScore.detail = fallback:token_f1)"
        )
        return None
    from distil_platform.llm import ChatRequest

    client = _api_client(context, llm, ref, stage="judge", task=spec.name, concurrency=1)

    def judge(messages):
        result = client.chat_batch([ChatRequest(messages=messages, temperature=ref.temperature,
                                                max_tokens=ref.max_tokens)])[0]
        if result.text is None:
            raise RuntimeError(f"judge {ref.model} failed: {result.error}")
        return result.text

    return judge


def _summary_metadata(summary, results, k: int) -> dict[str, Any]:
    from distil_platform.evaluation import worst_items

    md: dict[str, Any] = {
        "score": dg.MetadataValue.float(round(summary.score, 4)),
        "ci_low": round(summary.ci_low, 4),
        "ci_high": round(summary.ci_high, 4),
        "n": summary.n,
        "parse_failures": summary.parse_failures,
        "request_errors": summary.request_errors,
        "unscorable": summary.unscorable,
    }
    if summary.score_strict is not None:
        md["score_strict"] = round(summary.score_strict, 4)
    for key in ("mean_prompt_tokens", "mean_completion_tokens", "mean_latency_s"):
        value = getattr(summary, key)
        if value is not None:
            md[key] = round(value, 3)
    md["worst_items"] = dg.MetadataValue.md(markdown_table(
        worst_items(results, k), ["item_id", "score", "parse_ok", "question", "prediction", "reference", "detail"],
        max_chars=70))
    return md


# -- the factory -------------------------------------------------------------------------------
def build_task_pipeline_assets(spec: TaskSpec) -> list:
    task = spec.name
    seed_key = dg.AssetKey(task)
    teacher_key = task_key(task, "teacher_data")
    student_key = task_key(task, "student")
    student_eval_key = task_key(task, "student_eval")
    baselines_key = task_key(task, "baseline_evals")

    @dg.asset(
        key=teacher_key,
        group_name=task,
        ins={"seed_set": dg.AssetIn(seed_key)},
        kinds={"polars", "parquet"},
        description=f"Synthetic `{task}` training examples written by the teacher from the seeds, validated, "
        "deduplicated and decontaminated against the test set.",
    )
    def teacher_data(
        context: dg.AssetExecutionContext,
        config: TeacherDataConfig,
        seed_set: dict,
        llm: LLMResource,
        serving: ServingResource,
        model_store: ModelStoreResource,
        results_store: ResultsStoreResource,
    ) -> dg.Output[dict]:
        from distil_platform.llm import ChatRequest
        from distil_platform.synthesis import answer_distribution, synthesize

        profile = get_profile()
        seeds = _read_rows(seed_set["seed_path"])
        test = _read_rows(seed_set["test_path"])
        unstructured = _read_rows(seed_set.get("unstructured_path"))
        target = _synthetic_target(spec, profile, config.target)
        teacher = spec.teacher_for(profile.name)
        max_tokens = config.max_tokens or teacher_max_tokens(spec, profile)
        start = time.monotonic()
        served = {"teacher": teacher.model}

        def generate_with(client):
            def generate(batch):
                from distil_platform.llm import LLMError

                requests = [ChatRequest(messages=m, temperature=spec.synthesis.temperature, max_tokens=max_tokens,
                                        item_id=f"teacher-{i}") for i, m in enumerate(batch)]
                try:
                    results = client.chat_batch(requests)
                except LLMError as exc:
                    # A teacher batch stopped early (error rate, budget) still yields what completed;
                    # the missing replies count as failed requests.
                    context.log.warning(f"{task}: teacher batch stopped early: {exc}")
                    done = {id(r.request): r for r in exc.results}
                    return [done[id(q)].text if id(q) in done else None for q in requests]
                return [r.text for r in results]
            return generate

        def run(generate):
            return synthesize(
                spec, seeds, test, generate, target=target, teacher_model=teacher.model,
                unstructured=unstructured, ground_in_unstructured=config.ground_in_unstructured,
                literal_swap=config.literal_swap, rng_seed=config.seed, log=context.log.info,
            )

        if target <= 0:
            report = run(lambda batch: [])
        elif _is_store_model(teacher):
            model_dir = model_store.resolve(teacher.model)
            with _local_client(context, llm, serving, model_dir, stage=STAGE_TEACHER, task=task,
                               concurrency=config.concurrency) as (client, server):
                served["served_as"] = server.model
                report = run(generate_with(client))
        else:
            # The gpu profile's open-weight teacher sits behind an OpenAI-compatible endpoint.
            api_base = teacher.api_base or os.environ.get("DISTIL_TEACHER_API_BASE")
            if teacher.model.startswith("openai/") and not api_base:
                raise RuntimeError(
                    f"{task}: teacher {teacher.model} needs an endpoint: set api_base in the task YAML's "
                    "teacher or env DISTIL_TEACHER_API_BASE (an OpenAI-compatible .../v1 URL)"
                )
            teacher = teacher.model_copy(update={"api_base": api_base})
            if teacher.api_key_env and not os.environ.get(teacher.api_key_env):
                raise RuntimeError(
                    f"{task}: the {profile.name} profile's teacher {teacher.model} needs env {teacher.api_key_env}"
                )
            report = run(generate_with(_api_client(context, llm, teacher, stage=STAGE_TEACHER, task=task,
                                                   concurrency=max(config.concurrency, 8))))
        wall = time.monotonic() - start

        out_dir = paths.artifacts_dir(task, "teacher_data", context.run_id)
        out_path = out_dir / "accepted.parquet"
        columns = ["id", "question", "answer", "context", "origin", "teacher_model", "seed_ids", "topic",
                   "prompt_hash", "grounding_ids"]
        frame = pl.DataFrame([{c: str(r.get(c, "") or "") for c in columns} for r in report.accepted],
                             schema={c: pl.String for c in columns})
        frame.write_parquet(out_path)
        summary = report.summary()
        dist = answer_distribution(spec, report.accepted)
        value = {"path": str(out_path), "n_accepted": len(report.accepted), "teacher": teacher.model,
                 "summary": summary, "distribution": dist}
        metadata: dict[str, Any] = {
            "teacher": teacher.model,
            "requested": summary["requested"],
            "generated": summary["generated"],
            "accepted": summary["accepted"],
            "teacher_accepted": summary["teacher_accepted"],
            "augmented_accepted": summary["augmented_accepted"],
            "rejected": summary["rejected"],
            "rejections_by_reason": dg.MetadataValue.json(summary["rejections_by_reason"]),
            "exact_duplicates": summary["exact_duplicates"],
            "near_duplicates": summary["near_duplicates"],
            "duplicates_of_seeds": summary["duplicates_of_seeds"],
            "decontaminated": summary["decontaminated"],
            "failed_requests": summary["failed_requests"],
            "literal_swap": config.literal_swap,
            "wall_time_s": round(wall, 1),
            "accepted_path": dg.MetadataValue.path(str(out_path)),
            "sample": table_metadata(report.accepted, ["origin", "question", "answer"]),
        }
        if dist:
            metadata["distribution"] = dg.MetadataValue.json(dist)
        context.log.info(f"{task}: teacher data {summary}")
        return dg.Output(value, metadata=metadata)

    @dg.asset_check(asset=teacher_data, name="accepted_minimum",
                    description="At least the configured minimum of synthetic examples survived the filters.")
    def accepted_minimum(teacher_data: dict) -> dg.AssetCheckResult:
        return check_accepted_minimum(spec, teacher_data)

    @dg.asset_check(asset=teacher_data, name="distribution_not_collapsed",
                    description="Accepted labels / tool calls are not collapsed onto one class.")
    def distribution_not_collapsed(teacher_data: dict) -> dg.AssetCheckResult:
        return check_distribution(spec, teacher_data)

    @dg.asset(
        key=student_key,
        group_name=task,
        ins={"seed_set": dg.AssetIn(seed_key), "teacher_data": dg.AssetIn(teacher_key)},
        kinds={"pytorch"},
        pool="gpu",
        description=f"The `{task}` student: SFT (LoRA merged, or full) of the profile's base model on seeds + "
        "accepted synthetic rows; checkpoint under $DAGSTER_HOME/checkpoints/<task>/<run id>/.",
    )
    def student(
        context: dg.AssetExecutionContext,
        config: StudentConfig,
        seed_set: dict,
        teacher_data: dict,
        model_store: ModelStoreResource,
    ) -> dg.Output[dict]:
        from distil_platform.training import TrainConfig, train_student

        profile = get_profile()
        base_name = spec.student_base(profile.name)
        base_dir = model_store.resolve(base_name)
        seeds = _read_rows(seed_set["seed_path"])
        synthetic = _read_rows(teacher_data["path"]) if config.use_synthetic else []
        rows = [{k: r[k] for k in ("id", "question", "answer", "context")} for r in seeds + synthetic]
        train_cfg = TrainConfig.for_task(
            spec, profile, max_steps=config.max_steps, learning_rate=config.learning_rate,
            batch_size=config.batch_size, max_length=config.max_length, use_lora=config.use_lora, seed=config.seed,
        )
        out_dir = paths.checkpoints_dir(task, context.run_id)
        context.log.info(f"{task}: training {base_name} on {len(seeds)} seeds + {len(synthetic)} synthetic rows "
                         f"({'LoRA' if train_cfg.use_lora else 'full'}, {train_cfg.max_steps} steps)")

        def progress(event: dict) -> None:
            if "step" in event:
                context.log.info(f"{task} train step {event['step']}/{event['total_steps']} loss {event['loss']:.4f} "
                                 f"lr {event['learning_rate']:.2e} elapsed {event['elapsed_s']:.0f}s "
                                 f"ETA {event['eta_s']:.0f}s")
            elif event.get("event") == "warning":
                context.log.warning(f"{task}: {event['message']}")
            else:
                context.log.info(f"{task}: {event}")

        result = train_student(spec, rows, base_dir, out_dir, train_cfg, base_model_name=base_name,
                               progress=progress)
        served_name = f"{task}-student-{context.run_id[:8]}"
        value = {"checkpoint_path": str(result.checkpoint_dir), "base_model": base_name,
                 "served_name": served_name, "run_id": context.run_id, "use_synthetic": config.use_synthetic}
        metadata: dict[str, Any] = {
            "checkpoint_path": dg.MetadataValue.path(str(result.checkpoint_dir)),
            "base_model": base_name,
            "method": "lora (merged)" if train_cfg.use_lora else "full fine-tune",
            "trainable_params": result.trainable_params,
            "total_params": result.total_params,
            "train_examples": result.train_examples,
            "seed_examples": len(seeds),
            "synthetic_examples": len(synthetic),
            "steps": result.steps,
            "wall_time_s": result.wall_time_s,
            "tokens_per_s": result.tokens_per_s,
            "final_loss": float(result.final_loss) if result.final_loss is not None else float("nan"),
            "truncated_examples": result.truncated_examples,
            "config": dg.MetadataValue.json({k: (list(v) if isinstance(v, tuple) else v)
                                             for k, v in result.config.items()}),
        }
        if result.loss_curve_png:
            metadata["loss_curve"] = png_markdown(result.loss_curve_png, "loss curve")
            metadata["loss_curve_path"] = dg.MetadataValue.path(str(result.loss_curve_png))
        return dg.Output(value, metadata=metadata)

    @dg.asset(
        key=student_eval_key,
        group_name=task,
        ins={"seed_set": dg.AssetIn(seed_key), "student": dg.AssetIn(student_key)},
        pool="gpu",
        description=f"The `{task}` student answering every test row at temperature 0, scored with "
        f"`{spec.metric_name}`; per-item rows in the results store (stage {STAGE_STUDENT_EVAL}).",
    )
    def student_eval(
        context: dg.AssetExecutionContext,
        config: EvalConfig,
        seed_set: dict,
        student: dict,
        llm: LLMResource,
        serving: ServingResource,
        results_store: ResultsStoreResource,
    ) -> dg.Output[dict]:
        from distil_platform.evaluation import evaluate, prediction_rows, summarize
        from distil_platform.store import predictions

        test = _read_rows(seed_set["test_path"])
        ckpt = Path(student["checkpoint_path"])
        if not (ckpt / "config.json").exists():
            raise FileNotFoundError(f"{ckpt}: no checkpoint (config.json missing); re-materialise {task}_student")
        judge = _judge(spec, llm, context)
        start = time.monotonic()
        with _local_client(context, llm, serving, ckpt, stage=STAGE_STUDENT_EVAL, task=task,
                           concurrency=_eval_concurrency(config, serving),
                           served_name=student["served_name"]) as (client, server):
            results = evaluate(spec, test, client_answer_fn(client, 0.0, answer_token_cap(get_profile(), spec.max_answer_tokens),
                                                     [str(r["id"]) for r in test]), repeats=1, judge=judge)
            peak = _peak_memory(server)
        wall = time.monotonic() - start
        model_name = student["served_name"]
        store = results_store.store()
        store.insert(predictions, prediction_rows(results, task=task, stage=STAGE_STUDENT_EVAL, model=model_name,
                                                  run_id=context.run_id, variant="student"))
        summary = summarize(results)
        value = {"score": summary.score, "ci": [summary.ci_low, summary.ci_high], "n": summary.n,
                 "model": model_name, "run_id": context.run_id, "base_model": student["base_model"],
                 "parse_failures": summary.parse_failures}
        metadata = _summary_metadata(summary, results, config.worst_items)
        metadata.update({"model": model_name, "metric": spec.metric_name, "wall_time_s": round(wall, 1),
                         "checkpoint_path": dg.MetadataValue.path(str(ckpt))})
        if peak is not None:
            metadata["server_peak_memory_gb"] = round(peak, 2)
        context.log.info(f"{task}: student {spec.metric_name} {summary.score:.3f} "
                         f"[{summary.ci_low:.3f}, {summary.ci_high:.3f}] n={summary.n}")
        return dg.Output(value, metadata=metadata)

    @dg.asset(
        key=baselines_key,
        group_name=task,
        ins={"seed_set": dg.AssetIn(seed_key), "student_eval": dg.AssetIn(student_eval_key)},
        pool="gpu",  # the zero-shot base is served on the accelerator like the student
        description=f"Comparison models (frontier APIs with credentials; the zero-shot base model) on the `{task}` "
        f"test set with the same prompts, repeated; per-item rows in the results store (stage {STAGE_BASELINES}), "
        "paired comparison with the student.",
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
        from distil_platform.evaluation import (
            eval_messages,
            evaluate,
            paired_comparison,
            prediction_rows,
            results_from_store_rows,
            summarize,
        )
        from distil_platform.llm import ChatRequest
        from distil_platform.store import predictions

        profile = get_profile()
        test = _read_rows(seed_set["test_path"])
        item_ids = [str(r["id"]) for r in test]
        store = results_store.store()
        student_rows = store.select(predictions, run_id=student_eval["run_id"], stage=STAGE_STUDENT_EVAL)
        student_results = results_from_store_rows(student_rows)
        judge = _judge(spec, llm, context)
        plan, skipped = plan_baselines(spec, profile, include_zero_shot_base=config.include_zero_shot_base,
                                       default_repeats=config.default_repeats)
        per_model: dict[str, Any] = {}
        table = []
        new_calls = 0
        for entry in plan:
            ref: ModelRef = entry["ref"]
            repeats = entry["repeats"]
            answer_kwargs = {"temperature": ref.temperature, "max_tokens": answer_token_cap(profile, ref.max_tokens)}
            start = time.monotonic()
            if entry["local"]:
                model_dir = model_store.resolve(ref.model)
                # A rerun whose every request is cached needs no server at all.
                litellm_model = serving_model_string(serving, model_dir)
                messages = eval_messages(spec, test)
                requests = [ChatRequest(messages=m, repeat=r, item_id=i, **answer_kwargs)
                            for r in range(repeats) for m, i in zip(messages, item_ids)]
                if litellm_model and _all_cached(store, litellm_model, requests):
                    client = llm.client(model=litellm_model, api_base="http://cached.invalid/v1",
                                        run_id=context.run_id, task=task, stage=STAGE_BASELINES,
                                        log=context.log.info)
                    results = evaluate(spec, test, client_answer_fn(client, **answer_kwargs, item_ids=item_ids),
                                       repeats=repeats, judge=judge)
                    new_calls += client.http_calls
                else:
                    with _local_client(context, llm, serving, model_dir, stage=STAGE_BASELINES, task=task,
                                       concurrency=_eval_concurrency(config, serving)) as (client, _server):
                        results = evaluate(spec, test, client_answer_fn(client, **answer_kwargs, item_ids=item_ids),
                                           repeats=repeats, judge=judge)
                        new_calls += client.http_calls
            else:
                client = _api_client(context, llm, ref, stage=STAGE_BASELINES, task=task,
                                     concurrency=config.concurrency or 8)
                results = evaluate(spec, test, client_answer_fn(client, **answer_kwargs, item_ids=item_ids),
                                   repeats=repeats, judge=judge)
                new_calls += client.http_calls
            wall = time.monotonic() - start
            label = entry["label"]
            store.insert(predictions, prediction_rows(results, task=task, stage=STAGE_BASELINES, model=label,
                                                      run_id=context.run_id, variant=entry["variant"]))
            summary = summarize(results)
            comparison = paired_comparison(student_results, results) if student_results else {"n_paired": 0}
            per_model[label] = {**summary.as_dict(), "tier": ref.tier, "repeats": repeats,
                                "wall_time_s": round(wall, 1), "vs_student": comparison}
            table.append({"model": label, "tier": ref.tier, "repeats": repeats,
                          "score": f"{summary.score:.3f}", "ci": f"[{summary.ci_low:.3f}, {summary.ci_high:.3f}]",
                          "mean±std over repeats": f"{summary.repeat_mean:.3f} ± {summary.repeat_std:.3f}",
                          "prompt tok": _fmt(summary.mean_prompt_tokens), "completion tok":
                          _fmt(summary.mean_completion_tokens), "parse fails": summary.parse_failures,
                          "student − model": _fmt(comparison.get("diff", comparison.get("mean_diff"))),
                          "McNemar p": _fmt(comparison.get("mcnemar_p", comparison.get("p_value")))})
            context.log.info(f"{task}: {label} {spec.metric_name} {summary.score:.3f} "
                             f"[{summary.ci_low:.3f}, {summary.ci_high:.3f}] over {repeats} repeat(s)")
        student_line = {"model": f"{student_eval['model']} (student)", "tier": "student", "repeats": 1,
                        "score": f"{student_eval['score']:.3f}",
                        "ci": f"[{student_eval['ci'][0]:.3f}, {student_eval['ci'][1]:.3f}]"}
        value = {"models": {k: {"score": v["score"], "ci": [v["ci_low"], v["ci_high"]], "n": v["n"],
                                "repeats": v["repeats"]} for k, v in per_model.items()},
                 "skipped": skipped, "run_id": context.run_id, "student_run_id": student_eval["run_id"]}
        metadata: dict[str, Any] = {
            "models_evaluated": len(per_model),
            "models_skipped": len(skipped),
            "skipped": dg.MetadataValue.json(skipped),
            "new_model_calls": new_calls,
            "comparison": dg.MetadataValue.md(markdown_table([student_line, *table])),
            "per_model": dg.MetadataValue.json(_jsonable(per_model)),
        }
        return dg.Output(value, metadata=metadata)

    return [teacher_data, accepted_minimum, distribution_not_collapsed, student, student_eval, baseline_evals]


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
    from distil_platform.synthesis import distribution_collapsed

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
                     "local": _is_store_model(ref)})
    if include_zero_shot_base:
        base = spec.student_base(profile.name)
        ref = ModelRef(model=base, tier="baseline", temperature=0.0, max_tokens=spec.max_answer_tokens, repeats=1)
        plan.append({"ref": ref, "label": f"{base} (zero-shot)", "variant": "zero_shot", "repeats": 1,
                     "local": True})
    return plan, skipped


def _repeats(ref: ModelRef, default_repeats: int) -> int:
    if ref.temperature == 0.0:
        return 1  # greedy decoding: repeats would be identical
    return ref.repeats if ref.repeats > 1 else default_repeats


def serving_model_string(serving: ServingResource, model_dir: Path) -> str | None:
    """The litellm model string a local server of ``model_dir`` answers to (None if unknown)."""
    fn = getattr(serving, "litellm_model_for", None)
    return fn(model_dir) if fn else None


def _peak_memory(server) -> float | None:
    fn = getattr(server, "peak_memory_gb", None)
    try:
        return float(fn()) if callable(fn) else None
    except Exception:
        return None


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _jsonable(value: Any) -> Any:
    import math

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value
