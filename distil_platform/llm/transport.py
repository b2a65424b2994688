"""How one request reaches a server and how its reply is read: the OpenAI-compatible HTTP fast path
(one pooled ``aiohttp`` session) and ``litellm.acompletion`` for providers, each returning the reply as
a plain dict, with failures classified as retryable (:class:`RetryableError`) or not (:class:`FatalError`)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import time
from collections.abc import Mapping
from typing import Any

from distil_platform.llm.chat import ChatRequest

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
# Never wait longer than this for a Retry-After (a misconfigured server could ask for hours).
MAX_RETRY_AFTER_S = 120.0


class RetryableError(Exception):
    def __init__(self, message: str, retry_after_s: float | None = None, timeout: bool = False):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.timeout = timeout  # the attempt ran past its deadline (retried at most max_timeout_retries)


class FatalError(Exception):
    """Not worth retrying (400, 401, 404, 422, ...)."""


def _parse_retry_after(value: Any) -> float | None:
    if value is None:
        return None
    value = str(value).strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, min(seconds, MAX_RETRY_AFTER_S))


def _headers_of(exc: BaseException) -> dict[str, str]:
    for attr in ("litellm_response_headers", "headers"):
        headers = getattr(exc, attr, None)
        if headers:
            return {str(k).lower(): v for k, v in dict(headers).items()}
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers:
        return {str(k).lower(): v for k, v in dict(headers).items()}
    return {}


def _classify_litellm_error(exc: BaseException) -> Exception:
    import httpx

    if isinstance(exc, (asyncio.TimeoutError, httpx.TimeoutException)):
        return RetryableError(f"timeout: {exc}", timeout=True)
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    if name in ("Timeout", "APITimeoutError"):
        return RetryableError(f"timeout: {exc}", timeout=True)
    if name in ("APIConnectionError", "ServiceUnavailableError", "InternalServerError", "BadGatewayError"):
        return RetryableError(f"{name}: {exc}", _parse_retry_after(_headers_of(exc).get("retry-after")))
    if isinstance(status, int) and status in RETRYABLE_STATUS:
        return RetryableError(f"HTTP {status}: {exc}", _parse_retry_after(_headers_of(exc).get("retry-after")))
    return FatalError(f"{name}: {exc}")


def _normalise_tool_calls(raw: Any) -> list[dict[str, Any]] | None:
    if not raw:
        return None
    calls = []
    for call in raw:
        if hasattr(call, "model_dump"):
            call = call.model_dump()
        elif not isinstance(call, dict):
            call = dict(call)
        fn = call.get("function") or {}
        if hasattr(fn, "model_dump"):
            fn = fn.model_dump()
        calls.append({"id": call.get("id"), "type": call.get("type", "function"),
                      "function": {"name": fn.get("name"), "arguments": fn.get("arguments")}})
    return calls


def _as_dict(value: Any) -> Any:
    if value is None or isinstance(value, (dict, list, str, int, float, bool)):
        return value
    if hasattr(value, "model_dump"):
        return value.model_dump()
    try:
        return dict(value)
    except (TypeError, ValueError):
        return None


def _read_usage(usage: Any) -> tuple[int | None, int | None, int | None]:
    """(prompt, completion, cached prompt) tokens of an OpenAI-style ``usage`` object."""
    usage = _as_dict(usage)
    if not isinstance(usage, dict):
        return None, None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    # Some servers send zeros instead of omitting usage: treat "0 prompt tokens" as unknown.
    if not prompt:
        return None, None, None
    details = _as_dict(usage.get("prompt_tokens_details"))
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if cached is None and usage.get("cache_read_input_tokens") is not None:  # Anthropic-style usage
        cached = usage["cache_read_input_tokens"]
    cached = None if cached is None else min(int(cached), int(prompt))
    return int(prompt), None if completion is None else int(completion), cached


def _read_reasoning_tokens(usage: Any) -> int | None:
    """``usage.completion_tokens_details.reasoning_tokens`` (None when not reported)."""
    usage = _as_dict(usage)
    if not isinstance(usage, dict):
        return None
    details = _as_dict(usage.get("completion_tokens_details"))
    value = details.get("reasoning_tokens") if isinstance(details, dict) else None
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _finish_reason(value: Any) -> str | None:
    return str(value)[:32] if value else None


def _read_logprobs(raw: Any) -> list[dict[str, Any]] | None:
    """The ``content`` list of a choice's ``logprobs`` as plain dicts (JSON-storable), or None."""
    raw = _as_dict(raw)
    if not isinstance(raw, dict):
        return None
    content = raw.get("content")
    if content is None:
        return None
    return [_as_dict(token) for token in content]


def request_payload(request: ChatRequest, request_extra: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI request body of ``request`` (without the model), the client's ``request_extra``
    under the request's own ``extra``."""
    payload: dict[str, Any] = {
        "messages": request.messages,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
    }
    if request.tools:
        payload["tools"] = request.tools
    payload.update(request_extra)
    payload.update(request.extra)
    return payload


async def call_http(http, api_base: str, served_model: str, payload: dict[str, Any], deadline: float) -> dict[str, Any]:
    """One attempt over the fast path: POST ``payload`` to ``api_base``'s chat completions with ``http``
    (an ``aiohttp`` session, see :func:`http_session`)."""
    import aiohttp

    payload["model"] = served_model
    try:
        async with http.post(f"{api_base}/chat/completions", json=payload,
                             timeout=aiohttp.ClientTimeout(total=deadline)) as response:
            status = response.status
            body = await response.read()
            retry_after = response.headers.get("Retry-After")
    except asyncio.TimeoutError as exc:
        raise RetryableError(f"timeout after {deadline:g}s", timeout=True) from exc
    except aiohttp.ClientError as exc:
        raise RetryableError(f"connection error: {type(exc).__name__}: {exc}") from exc
    if status != 200:
        message = f"HTTP {status}: {body[-500:].decode('utf-8', 'replace')}"
        if status in RETRYABLE_STATUS:
            raise RetryableError(message, _parse_retry_after(retry_after))
        raise FatalError(message)
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        message_obj = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise FatalError(f"malformed response: {body[-300:].decode('utf-8', 'replace')}") from exc
    prompt, completion, cached = _read_usage(data.get("usage"))
    return {"text": message_obj.get("content"), "tool_calls": _normalise_tool_calls(message_obj.get("tool_calls")),
            "prompt_tokens": prompt, "completion_tokens": completion, "cached_prompt_tokens": cached,
            "logprobs": _read_logprobs(choice.get("logprobs")),
            "finish_reason": _finish_reason(choice.get("finish_reason")),
            "reasoning_tokens": _read_reasoning_tokens(data.get("usage"))}


async def call_litellm(model: str, kwargs: dict[str, Any], deadline: float, *, api_base: str | None = None,
                       api_key: str | None = None) -> dict[str, Any]:
    """One attempt through ``litellm.acompletion`` of ``kwargs`` (a :func:`request_payload`) to ``model``."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback" banners in run logs
    if api_base:
        kwargs["api_base"] = api_base
    if api_key:
        kwargs["api_key"] = api_key
    elif api_base and model.startswith("openai/"):
        # Local OpenAI-compatible servers need no key, but the OpenAI SDK refuses to send none.
        kwargs["api_key"] = "no-key"
    try:
        # Retries are the client's (with Retry-After); litellm's and the OpenAI SDK's are switched off.
        response = await asyncio.wait_for(
            litellm.acompletion(model=model, timeout=deadline, num_retries=0, max_retries=0, **kwargs),
            timeout=deadline + 5,
        )
    except (RetryableError, FatalError):
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise _classify_litellm_error(exc) from exc
    choice = response.choices[0]
    usage = getattr(response, "usage", None)
    prompt, completion, cached = _read_usage(usage)
    return {"text": choice.message.content, "tool_calls": _normalise_tool_calls(choice.message.tool_calls),
            "prompt_tokens": prompt, "completion_tokens": completion, "cached_prompt_tokens": cached,
            "logprobs": _read_logprobs(getattr(choice, "logprobs", None)),
            "finish_reason": _finish_reason(getattr(choice, "finish_reason", None)),
            "reasoning_tokens": _read_reasoning_tokens(usage)}


class _NullAsyncContext:
    async def __aenter__(self):
        return None

    async def __aexit__(self, *exc):
        return False


def http_session(fast_path: bool, api_key: str | None, concurrency: int, timeout_s: float | None):
    """The pooled ``aiohttp`` session of one batch on the fast path (``async with`` it); a context
    giving None otherwise."""
    if not fast_path:
        return _NullAsyncContext()
    import aiohttp

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # The deadline is set per request (request_timeout: it can depend on the request's max_tokens).
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        headers=headers,
    )
