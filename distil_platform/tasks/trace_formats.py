"""Reading production traces: OpenAI chat-completions logs and Langfuse exports, one :class:`Generation`
per logged model call (what :mod:`distil_platform.tasks.traces` maps onto a task's rows).

Accepted, exactly (docs/traces.md has examples):

- **OpenAI** (``format: openai``), one JSON object per line of a ``.jsonl`` file:
  ``{"request": {"model", "messages", "tools"?}, "response": <reply>}``, or the flat form
  ``{"model"?, "messages": [...], "response" | "completion": <reply>}``. ``<reply>`` is a
  chat-completions response ``{"model", "choices": [{"message": {"content" | "tool_calls"},
  "finish_reason"}], "usage": {"prompt_tokens", "completion_tokens", "prompt_tokens_details":
  {"cached_tokens"}?}}``, a bare assistant message ``{"role": "assistant", "content" | "tool_calls"}``,
  a string (the assistant's text), ``{"error": ...}`` (a failed call) or null/absent (no answer).
- **Langfuse** (``format: langfuse``): observations (``{"type": "GENERATION", "model", "input",
  "output", "usageDetails" | "usage", ...}``) one per line, traces with an ``observations`` list one
  per line, or a ``.json`` file holding a list of either or the public API's ``{"data": [...]}``.
  Only observations of type ``GENERATION`` (or without a type) are read; ``input`` is a message list,
  ``{"messages": [...]}`` or a string (one user turn); ``output`` an assistant message, a string or a
  chat-completions response; usage from ``usageDetails`` / ``usage`` (``input``, ``output``,
  ``input_cached_tokens`` / ``cache_read_input_tokens``; or ``promptTokens`` / ``completionTokens``).
  An observation with ``level: ERROR`` is a failed call.
- ``format: auto`` (the default) decides per record: ``observations``, ``type`` or ``input``/``output``
  keys are Langfuse, anything else OpenAI.

A line that is not JSON, not an object, or has no message list is yielded as a rejection reason
(``invalid_json``, ``not_an_object``, ``missing_messages``, ``invalid_response``) with its file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRACE_SUFFIXES = (".jsonl", ".json")


@dataclass
class Generation:
    """One logged model call."""

    where: str  # "<file>:<line>" (or "<file>:item <n>" in a .json file)
    messages: list[Any]
    reply: dict[str, Any] | None  # the assistant message ({"content", "tool_calls"}); None: no answer
    finish_reason: str | None
    model: str
    # (prompt, completion, cached prompt) tokens as logged; None when the record has no usable usage.
    usage: tuple[float, float, float] | None
    failed: bool = False  # the call returned an error


def trace_files(path: Path) -> list[Path]:
    """``path`` itself, or the ``*.jsonl`` / ``*.json`` files of a directory (sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in TRACE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no *.jsonl or *.json trace files in this directory")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: trace file not found")
    return [path]


def _records(file: Path) -> Iterator[tuple[str, Any]]:
    """``(where, record)``; a record that is not JSON is the string ``"invalid_json"``."""
    text = file.read_text(encoding="utf-8-sig", errors="replace")
    if file.suffix == ".json" and text.lstrip()[:1] in ("[", "{"):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and isinstance(whole.get("data"), list):
            whole = whole["data"]
        if isinstance(whole, list):
            for i, item in enumerate(whole, start=1):
                yield f"{file}:item {i}", item
            return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{file}:{line_no}", json.loads(line)
        except json.JSONDecodeError:
            yield f"{file}:{line_no}", "invalid_json"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return float(value)


def _usage(prompt: Any, completion: Any, cached: Any) -> tuple[float, float, float] | None:
    p, c = _number(prompt), _number(completion)
    if p is None or c is None:
        return None
    return p, c, min(_number(cached) or 0.0, p)


def openai_usage(usage: Any) -> tuple[float, float, float] | None:
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return _usage(usage.get("prompt_tokens"), usage.get("completion_tokens"), cached)


def _reply(resp: Any) -> tuple[dict | None, str | None, str, tuple | None, bool] | str:
    """``(message, finish_reason, model, usage, failed)`` of a logged reply, or a rejection reason."""
    if resp is None:
        return None, None, "", None, False
    if isinstance(resp, str):
        return {"content": resp}, None, "", None, False
    if not isinstance(resp, dict):
        return "invalid_response"
    model = str(resp.get("model") or "")
    usage = openai_usage(resp.get("usage"))
    if resp.get("error") is not None:
        return None, None, model, usage, True
    if "choices" in resp:
        choices = resp["choices"]
        if not isinstance(choices, list):
            return "invalid_response"
        if not choices:
            return None, None, model, usage, False
        first = choices[0]
        message = first.get("message") if isinstance(first, dict) else None
        if not isinstance(message, dict):
            return "invalid_response"
        return message, first.get("finish_reason"), model, usage, False
    if "content" in resp or "tool_calls" in resp:
        return resp, resp.get("finish_reason"), model, usage, False
    return "invalid_response"


def openai_generation(where: str, record: dict[str, Any]) -> Generation | str:
    if isinstance(record.get("request"), dict):
        request, resp = record["request"], record.get("response")
    else:
        request, resp = record, record.get("response", record.get("completion"))
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return "missing_messages"
    got = _reply(resp)
    if isinstance(got, str):
        return got
    message, finish, model, usage, failed = got
    model = model or str(request.get("model") or record.get("model") or "")
    return Generation(where, messages, message, finish, model, usage, failed)


def _langfuse_usage(obs: dict[str, Any]) -> tuple[float, float, float] | None:
    for key in ("usageDetails", "usage"):
        u = obs.get(key)
        if not isinstance(u, dict):
            continue
        cached = next((u[k] for k in ("input_cached_tokens", "cache_read_input_tokens", "input_cache_read",
                                      "cached_tokens") if k in u), None)
        for prompt, completion in (("input", "output"), ("promptTokens", "completionTokens"),
                                   ("prompt_tokens", "completion_tokens")):
            got = _usage(u.get(prompt), u.get(completion), cached)
            if got is not None:
                return got
    return _usage(obs.get("promptTokens"), obs.get("completionTokens"), None)


def langfuse_generation(where: str, obs: dict[str, Any]) -> Generation | str:
    raw = obs.get("input")
    if isinstance(raw, dict) and isinstance(raw.get("messages"), list):
        raw = raw["messages"]
    if isinstance(raw, str) and raw.strip():
        raw = [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        return "missing_messages"
    got = _reply(obs.get("output"))
    if isinstance(got, str):
        return got
    message, finish, model, usage, failed = got
    failed = failed or str(obs.get("level") or "").upper() == "ERROR"
    return Generation(where, raw, None if failed else message, finish, str(obs.get("model") or model),
                      _langfuse_usage(obs) or usage, failed)


def _is_langfuse(record: dict[str, Any]) -> bool:
    return "observations" in record or "type" in record or ("input" in record and "output" in record)


def read_generations(path: Path, fmt: str = "auto") -> Iterator[Generation | tuple[str, str]]:
    """Every logged call in ``path`` (a file or a directory of them): a :class:`Generation`, or
    ``(where, reason)`` for a record that cannot be one. Langfuse observations that are not
    generations (spans, events) are skipped silently."""
    for file in trace_files(path):
        for where, record in _records(file):
            if record == "invalid_json":
                yield where, "invalid_json"
                continue
            if not isinstance(record, dict):
                yield where, "not_an_object"
                continue
            langfuse = fmt == "langfuse" or (fmt == "auto" and _is_langfuse(record))
            if not langfuse:
                got = openai_generation(where, record)
                yield got if isinstance(got, Generation) else (where, got)
                continue
            observations = record["observations"] if isinstance(record.get("observations"), list) else [record]
            for i, obs in enumerate(observations, start=1):
                at = where if len(observations) == 1 and obs is record else f"{where} observation {i}"
                if not isinstance(obs, dict):
                    yield at, "not_an_object"
                    continue
                if str(obs.get("type") or "GENERATION").upper() != "GENERATION":
                    continue
                got = langfuse_generation(at, obs)
                yield got if isinstance(got, Generation) else (at, got)
