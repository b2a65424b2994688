"""The client's request and result types (:class:`ChatRequest`, :class:`ChatResult` with its reply
outcomes ``truncated`` and ``empty``), the batch-level errors, and the default per-request deadline
(:func:`request_timeout_s`). See :mod:`distil_platform.llm.client` for the semantics.

Reply outcomes. Every answered request records the choice's ``finish_reason`` ("stop", "length",
"content_filter", "tool_calls", ...; None when the server sends none) and the reasoning tokens the
provider reports (``usage.completion_tokens_details.reasoning_tokens``). Two outcomes are billed but
are not an answer: an **empty** reply (a 200 with no text and no tool call: a reasoning model that
spent its whole budget thinking, a safety block) and a **truncated** one (``finish_reason ==
"length"``: cut off at ``max_tokens``). They are cached like any other reply, *with* their
``finish_reason`` (a rerun pays nothing and sees the same outcome), flagged on :class:`ChatResult`
(``empty``, ``truncated``) and counted per client (:meth:`LLMClient.reply_counts`); what a consumer
does with them is its rule: the teacher stage never keeps such a reply as a training row
(``synthesis``), an evaluation never scores an empty reply as an answer (``evaluation``).

Timeouts. ``timeout_s=None`` (the default) gives each request a deadline that scales with what it
may generate: ``max(60, 30 + max_tokens / 20)`` seconds (:func:`request_timeout_s`, 20 tokens/s being
a slow hosted model), so a 4k-token teacher or reasoning request is not cut at 60 s; a number is a
fixed deadline for every request. A timed-out attempt may still be billed by the provider, so
timeouts are retried at most ``max_timeout_retries`` times (default 2), apart from the other retries,
and counted (``ChatResult.timeouts``, ``reply_counts()["timeouts"]``, the ``timeouts`` column of
``llm_requests``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Default per-request deadline (timeout_s=None): max(MIN_TIMEOUT_S, TIMEOUT_BASE_S + max_tokens /
# TIMEOUT_TOKENS_PER_S). 20 tokens/s is a slow hosted open-weight model (20-40 tok/s) or a reasoning
# model thinking through its whole budget; 30 s covers queueing and a long prompt's prefill.
MIN_TIMEOUT_S = 60.0
TIMEOUT_BASE_S = 30.0
TIMEOUT_TOKENS_PER_S = 20.0
# finish_reason of a reply cut off at max_tokens (OpenAI; litellm maps other providers' onto it).
FINISH_LENGTH = "length"


def request_timeout_s(max_tokens: int | None) -> float:
    """The default deadline of one request that may generate ``max_tokens`` tokens (see module docstring)."""
    return max(MIN_TIMEOUT_S, TIMEOUT_BASE_S + max(0, int(max_tokens or 0)) / TIMEOUT_TOKENS_PER_S)


class LLMError(RuntimeError):
    """Base class of batch-level failures; ``results`` holds what completed before the stop."""

    def __init__(self, message: str, results: list[ChatResult] | None = None):
        super().__init__(message)
        self.results = results or []


class ErrorRateExceeded(LLMError):
    """Too many items failed: the endpoint (or the requests) are broken, stop billing."""


class BudgetExceeded(LLMError):
    """The next request could take spending past ``max_usd``."""


class UnknownPriceError(LLMError):
    """A budget was set but no price is known for the model."""


class EndpointGone(LLMError):
    """The local server answering the batch exited: the batch stops at once (no retries against it)."""


class StoreUnavailable(LLMError):
    """The results store kept refusing writes: the batch stops calling (nothing more would be cached);
    the answers not yet written are spilled to a file and loaded into the store by the next batch."""


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    repeat: int = 0  # repeat index: part of the cache key, so repeats are distinct calls
    item_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # other OpenAI params (top_p, stop, seed, ...)


@dataclass
class ChatResult:
    request: ChatRequest
    text: str | None
    tool_calls: list[dict[str, Any]] | None
    prompt_tokens: int | None
    completion_tokens: int | None
    tokens_counted: bool  # True: counted locally because the server reported no usage
    latency_s: float | None
    # Cost of this answer's tokens at the current prices (None: no price known). A cache hit
    # reports the same cost but bills nothing; the budget counts only fresh calls.
    cost_usd: float | None
    cache_hit: bool
    error: str | None
    attempts: int = 0
    # Prompt tokens the provider served from its prompt cache (``usage.prompt_tokens_details.
    # cached_tokens``; billed at the cached-input price). None: not reported.
    cached_prompt_tokens: int | None = None
    # The choice's ``logprobs.content``: one dict per generated token (``token``, ``logprob``,
    # ``bytes``, ``top_logprobs``), when the request asked for ``logprobs`` (ChatRequest.extra). None otherwise.
    logprobs: list[dict[str, Any]] | None = None
    # Why generation stopped: "stop", "length" (cut at max_tokens), "content_filter", "tool_calls", ...
    # None: the server sent none (or a cache entry from before it was recorded).
    finish_reason: str | None = None
    # Completion tokens spent on hidden reasoning (``usage.completion_tokens_details.reasoning_tokens``;
    # already inside ``completion_tokens``). None: not reported.
    reasoning_tokens: int | None = None
    # Attempts of this request that timed out (each may have been billed by the provider).
    timeouts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def truncated(self) -> bool:
        """Answered, but cut off at ``max_tokens`` (``finish_reason == "length"``)."""
        return self.error is None and self.finish_reason == FINISH_LENGTH

    @property
    def empty(self) -> bool:
        """Answered (HTTP 200) with no text and no tool call: billed, but no answer."""
        return self.error is None and not (self.text or "").strip() and not self.tool_calls
