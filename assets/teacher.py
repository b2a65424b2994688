"""``<task>_teacher_data``: the teacher writes training examples from the seeds; validated, deduplicated and decontaminated; with its asset checks."""

# No `from __future__ import annotations`: Dagster reads the config/resource annotations at runtime.

import os
import time
from typing import Any

import dagster as dg
import polars as pl
from distil_platform.resources.models import LLMResource, ModelStoreResource, ServingResource
from distil_platform.resources.store import ResultsStoreResource

from distil_platform import paths
from distil_platform.profiles import Profile, get_profile
from distil_platform.taskspec import TaskSpec

from .common import (
    STAGE_TEACHER,
    _api_client,
    _is_store_model,
    _local_client,
    _read_rows,
    teacher_max_tokens,
)
from .keys import task_key
from .metadata import table_metadata


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



def build_teacher_assets(spec: TaskSpec) -> list:
    """``<task>_teacher_data`` and its checks."""
    task = spec.name
    seed_key = dg.AssetKey(task)
    teacher_key = task_key(task, "teacher_data")

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

