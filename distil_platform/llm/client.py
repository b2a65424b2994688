"""Async batch LLM client: bounded concurrency, retries, response cache, usage/cost records, budget cap.

One client serves frontier APIs (litellm model strings, through ``litellm.acompletion``) and
OpenAI-compatible servers (``openai/<served name>`` + ``api_base``: vLLM, ``transformers serve``),
the latter over one pooled ``aiohttp`` session (``fast_path``; ~0.2-0.3 ms of client CPU per request
against ~3.2 ms through litellm: ``benchmarks/README.md``).

A batch whose share of failed items exceeds ``max_error_rate`` raises (checked once
``min_items_for_error_rate`` items are done, and at the end, so a one-item batch that fails raises).

Reply outcomes (empty, truncated) and the default per-request deadline: see :mod:`distil_platform.llm.chat`.

Results store use (``distil_platform.storage.store``):
- ``llm_cache``: one row per successful response, keyed by model, endpoint identity (checkpoint,
  backend, dtype/quantization of a served model; see ``LLMClient``), messages, tools, decoding
  parameters (the client's ``request_extra`` included) and the repeat index. The cached payload
  keeps logprobs, cached-token counts, ``finish_reason`` and reasoning tokens. A rerun after a crash
  re-bills nothing; repeats 0, 1, 2 of one prompt are three distinct calls.
- ``llm_requests``: one row per request answered (from the server or the cache) or failed.
Rows are written as answers arrive (one transaction for whatever arrived during the previous write),
so a SIGKILL loses only the answers in flight and a rerun re-bills nothing else; a store that keeps
failing stops the batch (:class:`StoreUnavailable`) and the unwritten answers go to ``spill_dir``
(loaded by the next batch). See :class:`~distil_platform.llm.cache.StoreWriter`.

``abort_check`` (e.g. ``Server.exit_reason``) is polled while a batch runs: when the local server
exited, the batch stops at once, no retries against a dead server (:class:`EndpointGone`).

Beside this module: ``chat`` (request/result types, errors), ``transport`` (one attempt over HTTP or
litellm) and ``cache`` (identities, cache keys, the store writer).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distil_platform.llm.cache import (
    StoreWriter,
    cache_key,
    cache_payload,
    default_identity,
    normalise_identity,
    store_unavailable,
)
from distil_platform.llm.chat import (
    BudgetExceeded,
    ChatRequest,
    ChatResult,
    EndpointGone,
    ErrorRateExceeded,
    LLMError,
    StoreUnavailable,
    UnknownPriceError,
    request_timeout_s,
)
from distil_platform.llm.prices import PriceLookup, litellm_price_lookup
from distil_platform.llm.transport import (
    FatalError,
    RetryableError,
    call_http,
    call_litellm,
    http_session,
    request_payload,
)


class LLMClient:
    """Batch chat completions against one model. See the module docstring for store semantics.

    ``token_counter(messages, text) -> (prompt_tokens, completion_tokens)`` counts tokens when the
    server reports none (pass the served model's tokenizer); default ``litellm.token_counter``.
    ``log(str)`` receives progress lines; the API key never appears in them.

    ``identity`` names what answers (a string, or a mapping such as :func:`serving_identity`'s:
    checkpoint hash, backend, dtype, quantization) and is part of every cache key, so a bf16 and an
    fp8 server of one checkpoint under one served name never share answers. Default: the endpoint
    URL when ``api_base`` is set (an ephemeral server on a fresh port then never hits an old entry;
    pass its identity to reuse answers across runs), nothing for provider models.

    ``timeout_s``: a fixed deadline per request, or None for one derived from each request's
    ``max_tokens`` (:func:`request_timeout_s`); timeouts are retried at most ``max_timeout_retries``
    times. ``request_extra``: parameters sent with every request of this client (a task's per-model
    ``reasoning_effort``); part of the cache key, under each request's own ``extra``.
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        store: Any | None = None,
        concurrency: int = 16,
        timeout_s: float | None = None,
        max_retries: int = 5,
        max_timeout_retries: int = 2,
        max_error_rate: float = 0.5,
        max_usd: float | None = None,
        price_lookup: PriceLookup | None = None,
        log: Callable[[str], None] | None = None,
        run_id: str | None = None,
        task: str | None = None,
        stage: str | None = None,
        token_counter: Callable[[list, str], tuple[int, int]] | None = None,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        fast_path: bool = True,
        min_items_for_error_rate: int = 10,
        progress_every_s: float = 10.0,
        identity: str | Mapping[str, Any] | None = None,
        request_extra: Mapping[str, Any] | None = None,
        abort_check: Callable[[], str | None] | None = None,
        spill_dir: str | os.PathLike | None = None,
    ):
        if not model:
            raise ValueError("LLMClient needs a model string (a litellm model, or openai/<name> with api_base)")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if not 0.0 <= max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must be within [0, 1], got {max_error_rate}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 (or None: derived from each request's max_tokens), got {timeout_s}")
        if max_timeout_retries < 0:
            raise ValueError(f"max_timeout_retries must be >= 0, got {max_timeout_retries}")
        self.model = model
        self.api_base = api_base.rstrip("/") if api_base else None
        self._api_key = api_key
        self.store = store
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_timeout_retries = max_timeout_retries
        self.request_extra = dict(request_extra or {})
        self.max_error_rate = max_error_rate
        self.max_usd = max_usd
        self.price_lookup = price_lookup or litellm_price_lookup
        self.log = log or (lambda message: None)
        self.run_id, self.task, self.stage = run_id, task, stage
        self.token_counter = token_counter
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self.fast_path = bool(fast_path and self.api_base and model.startswith("openai/"))
        self.min_items_for_error_rate = min_items_for_error_rate
        self.progress_every_s = progress_every_s
        self.abort_check, self.spill_dir = abort_check, spill_dir
        self.spent_usd = 0.0  # fresh (billed) spend across this client's batches
        self._price: tuple[float, float] | bool | None = False  # False = not looked up yet
        self.http_calls = 0  # attempts sent over the wire (tests and benchmarks read it)
        # Outcomes across this client's batches (fresh and cached answers): see reply_counts().
        self._counts: dict[str, int] = {}
        self.identity = normalise_identity(identity) if identity is not None else default_identity(model, self.api_base)

    def __repr__(self) -> str:  # never show the key
        return f"LLMClient(model={self.model!r}, api_base={self.api_base!r}, concurrency={self.concurrency})"

    def request_timeout(self, request: ChatRequest) -> float:
        """The deadline of one attempt of ``request`` (fixed ``timeout_s``, else from its max_tokens)."""
        return float(self.timeout_s) if self.timeout_s is not None else request_timeout_s(request.max_tokens)

    def reply_counts(self) -> dict[str, int]:
        """Outcomes of this client's requests so far: ``answered`` (fresh or cached), ``truncated``
        (finish_reason length), ``empty`` (no text, no tool call), ``content_filter``, ``failed``, ``timeouts``
        (timed-out attempts, each possibly billed), ``retries`` (attempts after a request's first: 429/5xx/timeouts), ``reasoning_tokens``."""
        keys = ("answered", "truncated", "empty", "content_filter", "failed", "timeouts", "retries", "reasoning_tokens")
        return {k: self._counts.get(k, 0) for k in keys}

    def _count(self, result: ChatResult, fresh: bool) -> None:
        c = self._counts
        if fresh:
            c["timeouts"], c["retries"] = c.get("timeouts", 0) + result.timeouts, c.get("retries", 0) + max(0, result.attempts - 1)
        if result.error is not None:
            c["failed"] = c.get("failed", 0) + 1
            return
        c["answered"] = c.get("answered", 0) + 1
        c["truncated"] = c.get("truncated", 0) + result.truncated
        c["empty"] = c.get("empty", 0) + result.empty
        c["content_filter"] = c.get("content_filter", 0) + (result.finish_reason == "content_filter")
        c["reasoning_tokens"] = c.get("reasoning_tokens", 0) + (result.reasoning_tokens or 0)

    # -- prices ------------------------------------------------------------------------------

    def price(self) -> tuple[float, ...] | None:
        """(USD per input token, per output token[, per cached input token]) or None."""
        if self._price is False:
            self._price = self.price_lookup(self.model)
        return self._price  # type: ignore[return-value]

    def _cost(self, prompt_tokens: int | None, completion_tokens: int | None,
              cached_prompt_tokens: int | None = None) -> float | None:
        price = self.price()
        if price is None or prompt_tokens is None:
            return None
        # Cached prompt tokens cost the cached-input price when the lookup knows one, else full input.
        cached = min(max(cached_prompt_tokens or 0, 0), prompt_tokens)
        cached_price = price[2] if len(price) > 2 and price[2] is not None else price[0]
        return (prompt_tokens - cached) * price[0] + cached * cached_price + (completion_tokens or 0) * price[1]

    def _worst_case_cost(self, request: ChatRequest) -> float:
        price = self.price()
        assert price is not None
        # Upper-bound the prompt cheaply: ~1 token per 3 characters of JSON is generous for BPE.
        prompt_chars = len(json.dumps(request.messages)) + len(json.dumps(request.tools or []))
        return (prompt_chars / 3.0) * price[0] + request.max_tokens * price[1]

    # -- token counting ----------------------------------------------------------------------

    def _count_tokens(self, request: ChatRequest, text: str) -> tuple[int, int]:
        if self.token_counter is not None:
            prompt, completion = self.token_counter(request.messages, text)
            return int(prompt), int(completion)
        import litellm

        model = self.model.split("/", 1)[1] if self.model.startswith("openai/") else self.model
        prompt = litellm.token_counter(model=model, messages=request.messages)
        completion = litellm.token_counter(model=model, text=text or "", count_response_tokens=True)
        return int(prompt), int(completion)

    # -- one call ------------------------------------------------------------------------------

    async def _call_with_retries(self, http, request: ChatRequest) -> tuple[dict[str, Any], int, int]:
        """``(response, attempts, timed-out attempts)``; a FatalError carries ``attempts`` and ``timeouts``."""
        attempt = timeouts = 0
        while True:
            attempt += 1
            self.http_calls += 1
            try:
                payload, deadline = request_payload(request, self.request_extra), self.request_timeout(request)
                if self.fast_path:
                    served = self.model.split("/", 1)[1]
                    return await call_http(http, self.api_base, served, payload, deadline), attempt, timeouts
                return await call_litellm(self.model, payload, deadline, api_base=self.api_base,
                                          api_key=self._api_key), attempt, timeouts
            except FatalError as exc:
                exc.attempts, exc.timeouts = attempt, timeouts
                raise
            except RetryableError as exc:
                timeouts += exc.timeout
                if exc.timeout and timeouts > self.max_timeout_retries:
                    # A timed-out attempt may have been billed: never re-send it max_retries times.
                    fatal = FatalError(f"gave up after {timeouts} timed-out attempts "
                                        f"(max_timeout_retries={self.max_timeout_retries}): {exc}")
                    fatal.attempts, fatal.timeouts = attempt, timeouts
                    raise fatal from exc
                if attempt > self.max_retries:
                    fatal = FatalError(f"gave up after {attempt} attempts: {exc}")
                    fatal.attempts, fatal.timeouts = attempt, timeouts
                    raise fatal from exc
                backoff = min(self.retry_max_s, self.retry_base_s * (2 ** (attempt - 1)))
                delay = backoff * (0.5 + random.random())  # jitter: retries of a burst spread out
                if exc.retry_after_s is not None:
                    delay = max(delay, exc.retry_after_s)
                await asyncio.sleep(delay)

    # -- batch ---------------------------------------------------------------------------------

    def chat_batch(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Synchronous :meth:`achat_batch` (runs its own event loop; works inside a running loop too)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.achat_batch(requests))
        box: dict[str, Any] = {}

        def runner() -> None:
            try:
                box["value"] = asyncio.run(self.achat_batch(requests))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=runner, name="llm-batch")
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    async def achat_batch(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Answer ``requests`` (results in input order). Raises :class:`ErrorRateExceeded` or
        :class:`BudgetExceeded` with the completed results attached; those are cached and stored."""
        requests = list(requests)
        if not requests:
            return []
        if self.max_usd is not None and self.price() is None:
            raise UnknownPriceError(
                f"max_usd={self.max_usd} is set but no price is known for model {self.model!r}: add it to the "
                "platform pricing file or use a model in litellm's price map"
            )
        keys = [cache_key(self.model, r, self.identity, self.request_extra) for r in requests]
        results: list[ChatResult | None] = [None] * len(requests)
        writer = StoreWriter(self.store, spill_dir=self.spill_dir, log=self.log)
        cached = {}
        if self.store is not None:
            if replayed := await asyncio.to_thread(writer.replay_spills):
                self.log(f"llm cache: loaded {replayed} rows a batch had spilled while the store was down")
            cached = await asyncio.to_thread(writer.lookup, set(keys))

        # Identical requests in one batch are asked once and share the answer.
        first_index: dict[str, int] = {}
        pending: list[int] = []
        duplicates: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            if key in cached:
                results[i] = self._from_cache(requests[i], cached[key])
                self._count(results[i], fresh=False)
                writer.add_request(self._request_row(results[i], key))
            elif key in first_index:
                duplicates.setdefault(first_index[key], []).append(i)
            else:
                first_index[key] = i
                pending.append(i)

        state = _BatchState(total=len(requests), done=len(requests) - len(pending) - sum(map(len, duplicates.values())))
        state.cache_hits = state.done
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(self.concurrency)
        stop: list[LLMError] = []
        reserved = [0.0]

        async def run_one(index: int, http) -> None:
            request, key = requests[index], keys[index]
            async with semaphore:
                if stop:
                    return
                estimate = 0.0
                if self.max_usd is not None:
                    estimate = self._worst_case_cost(request)
                    if self.spent_usd + reserved[0] + estimate > self.max_usd:
                        stop.append(BudgetExceeded(
                            f"budget cap: spent ${self.spent_usd:.4f} of max_usd=${self.max_usd:.4f} on "
                            f"{self.model!r}; the next request could cost up to ${estimate:.4f}, so the batch "
                            f"stopped with {state.done}/{state.total} items done (completed items are cached)"
                        ))
                        return
                    reserved[0] += estimate
                t0 = time.perf_counter()
                try:
                    response, attempts, timeouts = await self._call_with_retries(http, request)
                    error = None
                except FatalError as exc:
                    response, error = None, str(exc)
                    attempts, timeouts = getattr(exc, "attempts", 1), getattr(exc, "timeouts", 0)
                finally:
                    reserved[0] -= estimate
                latency = time.perf_counter() - t0
            result = self._finish(request, response, error, latency, attempts)
            result.timeouts = timeouts
            self._count(result, fresh=True)
            if result.error is None and result.cost_usd is not None:
                self.spent_usd += result.cost_usd
            results[index] = result
            writer.add_request(self._request_row(result, key))
            if result.error is None:
                writer.add_cache(key, self.model, cache_payload(result), self.identity)
            for dup in duplicates.get(index, []):
                results[dup] = ChatResult(**{**result.__dict__, "request": requests[dup],
                                             "cache_hit": result.error is None, "timeouts": 0})
                self._count(results[dup], fresh=False)
                writer.add_request(self._request_row(results[dup], key))
            if result.error is not None:
                state.last_error = result.error
            for finished in [index, *duplicates.get(index, [])]:
                state.done += 1
                state.errors += results[finished].error is not None
            self._check_error_rate(state, stop)
            self._progress(state, started)

        flush_task = asyncio.create_task(writer.run())
        try:
            async with http_session(self.fast_path, self._api_key, self.concurrency, self.timeout_s) as http:
                tasks = [asyncio.create_task(run_one(i, http)) for i in pending]
                watcher = asyncio.create_task(self._watch(writer, stop, tasks))
                try:
                    outcomes = await asyncio.gather(*tasks, return_exceptions=True) if tasks else []
                    for outcome in outcomes:  # a cancelled task was halted by the watcher; anything else is a bug
                        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                            raise outcome
                except BaseException:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise
                finally:
                    watcher.cancel()
        finally:
            writer.close()
            await flush_task
        if writer.failed is not None and not stop:
            stop.append(store_unavailable(self.model, writer))
        self._check_error_rate(state, stop, final=True)
        self._progress(state, started, final=True)
        done_results = [r for r in results if r is not None]
        if stop:
            stop[0].results = done_results
            raise stop[0]
        return done_results  # every slot is filled when nothing stopped the batch

    async def _watch(self, writer: StoreWriter, stop: list[LLMError], tasks: list[asyncio.Task],
                     every_s: float = 0.2) -> None:
        """Stop the batch at once, in-flight requests cancelled, when its local server died
        (``abort_check``) or the store gave up (a batch whose answers are not kept pays for nothing)."""
        while True:
            reason = self.abort_check() if self.abort_check is not None else None
            if reason is not None and not stop:
                stop.append(EndpointGone(f"{self.model!r}: {reason}; the batch stopped at once (completed items "
                                         "are cached)"))
            if writer.failed is not None and not stop:
                stop.append(store_unavailable(self.model, writer))
            if stop and isinstance(stop[0], EndpointGone | StoreUnavailable):
                for task in tasks:
                    task.cancel()
                return
            await asyncio.sleep(every_s)

    def _check_error_rate(self, state: _BatchState, stop: list[LLMError], final: bool = False) -> None:
        if stop:
            return
        fresh_done = state.done - state.cache_hits
        if fresh_done == 0 or (fresh_done < self.min_items_for_error_rate and not final):
            return
        rate = state.errors / fresh_done
        if rate > self.max_error_rate:
            stop.append(ErrorRateExceeded(
                f"{state.errors}/{fresh_done} requests to {self.model!r} failed ({rate:.0%} > max_error_rate="
                f"{self.max_error_rate:.0%}); batch stopped, completed items are cached. Last error: {state.last_error}"
            ))

    def _progress(self, state: _BatchState, started: float, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - state.last_log < self.progress_every_s:
            return
        state.last_log = now
        elapsed = now - started
        # ETA from the rate of answers fetched so far (cache hits are instant and not counted).
        fresh = state.done - state.cache_hits
        left = state.total - state.done
        # Only once a full wave of concurrent requests has come back: the first answers of a batch
        # all arrive after one latency, which says nothing yet about the rate.
        eta = (f", ETA {elapsed / fresh * left:.0f}s"
               if fresh >= min(self.concurrency, state.total) and left > 0 and not final else "")
        counts = self.reply_counts()
        outcomes = "".join(f", {counts[k]} {k}" for k in ("truncated", "empty", "timeouts") if counts[k])
        self.log(
            f"llm {self.model}: {state.done}/{state.total} done, {state.errors} errors, {state.cache_hits} cache hits"
            f"{outcomes}, {elapsed:.1f}s{eta}, spent ${self.spent_usd:.4f}"
            + (f" of ${self.max_usd:.2f}" if self.max_usd else "")
        )

    def _finish(self, request, response, error, latency, attempts) -> ChatResult:
        if response is None:
            return ChatResult(request, None, None, None, None, False, latency, None, False, error, attempts)
        cached = response.get("cached_prompt_tokens")
        prompt, completion, counted = response["prompt_tokens"], response["completion_tokens"], False
        if prompt is None or completion is None:
            try:
                counted_prompt, counted_completion = self._count_tokens(request, response["text"] or "")
                prompt = prompt if prompt is not None else counted_prompt
                completion = completion if completion is not None else counted_completion
                counted = True
            except Exception as exc:  # noqa: BLE001 - counting is best effort; cost then stays unknown
                self.log(f"llm {self.model}: could not count tokens ({type(exc).__name__}: {exc})")
        cost = self._cost(prompt, completion, cached)
        return ChatResult(request, response["text"], response["tool_calls"], prompt, completion, counted,
                          latency, cost, False, None, attempts, cached_prompt_tokens=cached,
                          logprobs=response.get("logprobs"), finish_reason=response.get("finish_reason"),
                          reasoning_tokens=response.get("reasoning_tokens"))

    def _from_cache(self, request: ChatRequest, payload: dict[str, Any]) -> ChatResult:
        prompt, completion = payload.get("prompt_tokens"), payload.get("completion_tokens")
        cached = payload.get("cached_prompt_tokens")
        return ChatResult(request, payload.get("text"), payload.get("tool_calls"), prompt, completion,
                          bool(payload.get("tokens_counted")), payload.get("latency_s"),
                          self._cost(prompt, completion, cached), True, None, 0,
                          cached_prompt_tokens=cached, logprobs=payload.get("logprobs"),
                          finish_reason=payload.get("finish_reason"), reasoning_tokens=payload.get("reasoning_tokens"))

    def _request_row(self, result: ChatResult, key: str) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "task": self.task, "stage": self.stage, "model": self.model,
            "cache_key": key, "identity": self.identity, "repeat": result.request.repeat, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens, "cached_prompt_tokens": result.cached_prompt_tokens,
            "tokens_counted": result.tokens_counted, "latency_s": result.latency_s, "cost_usd": result.cost_usd, "cache_hit": result.cache_hit,
            "error": result.error, "finish_reason": result.finish_reason, "reasoning_tokens": result.reasoning_tokens,
            "timeouts": result.timeouts,
        }


@dataclass
class _BatchState:
    total: int
    done: int = 0
    errors: int = 0
    cache_hits: int = 0
    last_log: float = 0.0
    last_error: str | None = None
