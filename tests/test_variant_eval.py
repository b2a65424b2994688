"""Every served variant of the student is evaluated by one path (``assets.common.evaluate_served``): the
fp8 variant of ``<task>_throughput`` is judged by the task's LLM judge and asked for token logprobs
exactly like the reference variant's ``<task>_student_eval``, so their scores are of one metric and
pair (issue 32, finding 1: fp8 was scored by the token-F1 fallback, without logprobs, and so never
paired with the judged bf16 scores).

The student and the judge are OpenAI-compatible endpoints on loopback; nothing of the platform is
patched."""

from __future__ import annotations

import math
from types import SimpleNamespace

import dagster as dg
import pytest
from cost_fixtures import test_rows as fixture_rows
from distil_platform.assets.evals import EvalConfig, evaluate_student
from distil_platform.assets.throughput import evaluate_variant
from distil_platform.resources import LLMResource, ResultsStoreResource, ServingResource
from test_teacher_endpoint import _Endpoint

from distil_platform.economics.cost_inputs import STAGE_FP8_EVAL, STAGE_STUDENT_EVAL
from distil_platform.evaluation.evaluate import results_from_store_rows
from distil_platform.evaluation.summary import paired_comparison
from distil_platform.llm import serving_identity
from distil_platform.profiles import get_profile
from distil_platform.storage.modelstore import resolve_model
from distil_platform.storage.store import predictions
from distil_platform.tasks.spec import ModelRef, get_task

JUDGE_KEY_ENV = "DISTIL_TEST_JUDGE_KEY"
N = 6


def _server(endpoint: _Endpoint, quantization: str | None) -> SimpleNamespace:
    """What ``serving.serve`` yields, for a server at ``endpoint`` (the cache keys on its identity)."""
    identity = serving_identity(served_model="stu", checkpoint_hash="c0ffee", backend="vllm", dtype="bfloat16",
                                quantization=quantization)
    return SimpleNamespace(model="stu", litellm_model="openai/stu", base_url=endpoint.base, identity=identity,
                           exit_reason=lambda: None, precision_label="bf16", backend="vllm", precision=None)


@pytest.fixture
def endpoints(monkeypatch):
    spec = get_task("docstring")
    assert spec.metric_name == "llm_judge"
    rows = fixture_rows(spec)[:N]

    def student(body):  # the reference answer for the first half of the items, a wrong one after
        user = body["messages"][-1]["content"]
        k = next(k for k, r in enumerate(rows) if r["context"].strip() in user)  # the code names the item
        text = rows[k]["answer"] if k < N // 2 else "Does something."
        return text, [{"token": "Does", "logprob": math.log(0.9), "top_logprobs": []}]

    def judge(body):  # GOOD when the judged answer is the reference
        user = body["messages"][-1]["content"]
        return ("BAD" if "Does something." in user else "GOOD"), None

    with _Endpoint(respond=student) as served, _Endpoint(respond=judge) as judged:
        monkeypatch.setenv(JUDGE_KEY_ENV, "judge-key")
        spec = spec.model_copy(update={"judge": ModelRef(model="openai/judge-stub", api_base=judged.base,
                                                          api_key_env=JUDGE_KEY_ENV, tier="judge", temperature=0.0,
                                                          max_tokens=16)})
        yield spec, rows, served, judged


def test_fp8_is_judged_and_asked_for_logprobs_like_the_reference_variant(endpoints):
    spec, rows, served, judged = endpoints
    profile = get_profile("local")
    ckpt = resolve_model("tiny-qwen3")  # its tokenizer counts tokens; the endpoint answers
    store_resource, llm = ResultsStoreResource(), LLMResource(max_retries=0)
    store = store_resource.store()
    context = dg.build_asset_context()
    student = {"served_name": "stu", "base_model": "tiny-qwen3", "checkpoint_path": str(ckpt)}

    _value, metadata = evaluate_student(context, spec, profile, EvalConfig(concurrency=2), rows, student, ckpt,
                                        _server(served, None), llm, ServingResource(backend="transformers"),
                                        store_resource)
    score, metric = evaluate_variant(context, spec, profile, llm, _server(served, "fp8"), ckpt, rows, store,
                                     variant="fp8", stage=STAGE_FP8_EVAL, concurrency=2)

    judged_metric = "llm_judge:openai/judge-stub"
    assert metric == judged_metric and score == pytest.approx(0.5)
    assert metadata["score"].value == pytest.approx(0.5)
    # Both variants asked the server for logprobs and the judge for a verdict on every item.
    assert len(served.bodies) == 2 * N and all(b.get("logprobs") is True for b in served.bodies)
    assert {b["temperature"] for b in served.bodies} == {0.0}
    assert len(judged.bodies) == N  # the verdicts on identical answers are cached: asked once
    reference = store.select(predictions, run_id=context.run_id, stage=STAGE_STUDENT_EVAL)
    fp8 = store.select(predictions, run_id=context.run_id, stage=STAGE_FP8_EVAL)
    assert {r["metric"] for r in reference} == {r["metric"] for r in fp8} == {judged_metric}
    assert {r["variant"] for r in fp8} == {"fp8"}
    # Every fp8 answer has its confidence from the logprobs, as the reference variant's do.
    assert all(r["confidence"] == pytest.approx(0.9) for r in reference + fp8)
    # Same metric: every item pairs, so fp8 can be compared with (and named beside) the reference.
    comparison = paired_comparison(results_from_store_rows(reference), results_from_store_rows(fp8))
    assert comparison["n_paired"] == N and comparison.get("n_metric_mismatch", 0) == 0
