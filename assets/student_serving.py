"""``<task>_student_eval`` and ``<task>_throughput``: one step, one server start of the student.

Both stages serve the same checkpoint with the same settings (the hardware's compute dtype, prefix
caching on). As one subsettable multi-asset (``<task>_student_serving``) they share that server: the
eval answers the test set first, on a fresh server, so its scores do not depend on the load test;
then the load generator measures that reference variant (named after its dtype: ``bf16``, ``fp32``, ...) on the
same server; the server stops; then the variant without prefix caching and fp8 get servers of their
own (their settings differ). Selecting only one of the two assets (the UI, a
``--select``, an automation request) runs only that part. In the graph they stay two assets with
their own metadata, checks and automation conditions; a fresh server per stage cost one more vLLM
start (~35 s on the CPU, the model load on a GPU) per distillation run.

Why a multi-asset rather than a server kept by a resource for the run: with Dagster's multiprocess
and Kubernetes executors every step is its own process or pod, so a resource cannot hold a server
across steps without a home-made registry of live processes; within one step the server's lifetime
is a ``with`` block, and nothing can leak.
"""

# No `from __future__ import annotations`: Dagster reads the config/resource annotations at runtime.

import dagster as dg
from distil_platform.resources.models import LLMResource, ServingResource
from distil_platform.resources.store import ResultsStoreResource

from distil_platform.economics.cost_inputs import STAGE_STUDENT_EVAL
from distil_platform.profiles import Profile, get_profile
from distil_platform.storage import paths
from distil_platform.tasks.spec import TaskSpec

from .candidates import CandidateWiring, default_wiring
from .common import read_asset_rows
from .deployment import GPU_POOL, gpu_op_tags
from .evals import EvalConfig, evaluate_student
from .throughput import StudentProfiler, ThroughputConfig, serve_student

EVAL_OUTPUT = "student_eval"
THROUGHPUT_OUTPUT = "throughput"


class StudentServingConfig(ThroughputConfig):
    """Run config of ``<task>_student_serving`` (the throughput fields as in ``ThroughputConfig``)."""

    eval_concurrency: int | None = None  # EvalConfig.concurrency: eval requests in flight (None: per backend)
    worst_items: int = 10


def build_student_serving_asset(spec: TaskSpec, profile: Profile | None = None,
                                candidate: CandidateWiring | None = None) -> list:
    """``<task>_student_serving`` (a further candidate ``c``: ``<task>_student_serving__c`` with
    ``<task>_student_eval__c`` and ``<task>_throughput__c``, rows under its store run id)."""
    profile = profile or get_profile()  # resolved once, when the Definitions are built
    candidate = candidate or default_wiring(spec, profile.name)
    task = spec.name
    seed_key = dg.AssetKey(task)
    student_key = candidate.key(task, "student")
    of = "" if candidate.first else f" candidate `{candidate.candidate.name}`"
    slo = spec.latency_slo_by_profile or {}

    @dg.multi_asset(
        name=candidate.serving_name(task),
        group_name=task,
        ins={"seed_set": dg.AssetIn(seed_key), "student": dg.AssetIn(student_key)},
        outs={
            EVAL_OUTPUT: dg.AssetOut(
                key=candidate.key(task, "student_eval"), is_required=False,
                description=f"The `{task}` student{of} answering every test row at temperature 0, scored with "
                f"`{spec.metric_name}`; per-item rows in the results store (stage {STAGE_STUDENT_EVAL})."),
            THROUGHPUT_OUTPUT: dg.AssetOut(
                key=candidate.key(task, "throughput"), is_required=False, kinds={"aiohttp"},
                description=f"Serving profile of the `{task}` student{of}: open-loop Poisson load test (the platform's "
                f"generator; guidellm by run config) with the task's real test prompts at rising rates, to saturation "
                f"where the profile has no fixed rates; the generator's own ceiling on the host beside the claim; sustained RPS (the highest offered rate, with every lower "
                f"one, whose arrivals matched it, whose backlog at the window's close was no more than a server "
                f"keeping up leaves, and whose p95 met the profile's SLO: {slo} else {spec.latency_slo_s:g} s), max "
                "throughput, latency/TTFT percentiles, memory (process peak; vLLM: weights, KV cache reserved vs "
                "used, prefix-cache hit rate); at the hardware's compute dtype (bf16 / fp16 / fp32, the variant's name), "
                "without prefix caching (vLLM, run config), fp8 (vLLM on fp8 GPUs)."),
        },
        can_subset=True,
        pool=GPU_POOL,
        op_tags=gpu_op_tags(),  # GPU request / placement of the step pod on Kubernetes
        description=f"Serves the `{task}` student{of} once for its eval and its throughput profile.",
    )
    def student_serving(
        context: dg.AssetExecutionContext,
        config: StudentServingConfig,
        seed_set: dict,
        student: dict,
        llm: LLMResource,
        serving: ServingResource,
        results_store: ResultsStoreResource,
    ):
        selected = set(context.selected_output_names)
        context = candidate.context(context)  # a further candidate writes under its own store run id
        test = read_asset_rows(seed_set["test_path"])
        ckpt = paths.local_checkpoint(student["checkpoint_path"], what=f"{task}_student")  # fetched if remote
        profiler = (StudentProfiler(context, spec, profile, config, test, student, ckpt, serving, llm, results_store)
                    if THROUGHPUT_OUTPUT in selected else None)
        eval_config = EvalConfig(concurrency=config.eval_concurrency, worst_items=config.worst_items)
        # One server for both when both are selected (same settings); otherwise each part starts its own.
        share = profiler is not None and EVAL_OUTPUT in selected
        if EVAL_OUTPUT in selected:
            with serve_student(serving, ckpt, student, log=context.log.info) as server:
                value, metadata = evaluate_student(context, spec, profile, eval_config, test, student, ckpt, server,
                                                   llm, serving, results_store)
                metadata["server_shared_with_throughput"] = share
                yield dg.Output(value, output_name=EVAL_OUTPUT, metadata=metadata)
                if share:
                    profiler.measure(server)
        if profiler is not None:
            if not share:
                profiler.measure_served()
            profiler.measure_other_variants()
            value, metadata = profiler.result(shared_with_eval=share)
            yield dg.Output(value, output_name=THROUGHPUT_OUTPUT, metadata=metadata)

    return [student_serving]
