"""JSON schemas that constrain the teacher's reply to the task's example format.

One builder per task type, derived from the task YAML:

- classification: ``answer`` is one of the label names (``enum``);
- tool calling: ``answer`` is one of the tools' calls, each ``{"name": <const>, "parameters": <the
  tool's own JSON schema>}`` (``anyOf``);
- text2sql: ``answer`` is a SQL string (the schema, i.e. the context, is fixed by the request);
- open-book QA / generation: strings (generation tasks whose seeds carry a ``context`` get a
  required ``context`` string too).

The reply is a top-level JSON **array** of 1..N ``{question, answer[, context]}`` items: that is
what :func:`distil_platform.synthesis.parse_teacher_output` reads (cpu-notes: an object wrapper
such as ``{"examples": [...]}`` was not), and what vLLM's structured outputs enforce with
``response_format={"type": "json_schema", ...}``. Whether a teacher endpoint gets the schema is a
per-teacher setting (``ModelRef.response_format``), see :func:`use_structured_output`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from distil_platform.taskspec import TaskSpec


def answer_schema(spec: TaskSpec) -> dict[str, Any]:
    """The JSON schema of one example's ``answer`` for ``spec``'s type."""
    if spec.type == "classification":
        return {"type": "string", "enum": list(spec.labels or {})}
    if spec.type == "tool_calling":
        calls = []
        for tool in spec.tools or []:
            fn = tool["function"]
            params = copy.deepcopy(fn.get("parameters") or {"type": "object", "properties": {}})
            params.setdefault("type", "object")
            calls.append({
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, "parameters": params},
                "required": ["name", "parameters"],
                "additionalProperties": False,
            })
        return {"anyOf": calls}
    if spec.type == "text2sql":
        return {"type": "string", "minLength": 1, "description": "one SQLite SELECT query"}
    return {"type": "string", "minLength": 1}


def _needs_context(spec: TaskSpec, seeds: Sequence[dict[str, Any]]) -> bool:
    # Context-bound tasks (text2sql, open-book QA) get their context from the request, not the reply.
    return spec.type == "generation" and any(str(s.get("context") or "").strip() for s in seeds)


def example_schema(spec: TaskSpec, seeds: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The schema of one ``{question, answer[, context]}`` example."""
    props: dict[str, Any] = {"question": {"type": "string", "minLength": 1}, "answer": answer_schema(spec)}
    required = ["question", "answer"]
    if _needs_context(spec, seeds):
        props["context"] = {"type": "string", "minLength": 1}
        required.append("context")
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def reply_schema(spec: TaskSpec, seeds: Sequence[dict[str, Any]] = (), max_items: int | None = None) -> dict[str, Any]:
    """A top-level JSON array of 1..``max_items`` examples (default ``examples_per_request``)."""
    n = max(1, max_items or spec.synthesis.examples_per_request)
    return {"type": "array", "items": example_schema(spec, seeds), "minItems": 1, "maxItems": n}


def response_format(spec: TaskSpec, seeds: Sequence[dict[str, Any]] = (), max_items: int | None = None) -> dict[str, Any]:
    """The OpenAI-style ``response_format`` value (vLLM structured outputs accept it as is)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": f"{spec.name}_examples", "schema": reply_schema(spec, seeds, max_items)},
    }


def use_structured_output(setting: str, *, served_locally: bool, backend: str | None) -> bool:
    """Whether a teacher gets ``response_format``.

    ``setting`` is the teacher's ``response_format`` field: ``json_schema`` (always send it: the
    endpoint supports it), ``none`` (never: parse free text), ``auto`` (send it only to a model
    served locally by vLLM; ``transformers serve`` ignores it and third-party endpoints vary).
    """
    if setting == "json_schema":
        return True
    if setting == "none":
        return False
    if setting != "auto":
        raise ValueError(f"response_format must be auto, json_schema or none, got {setting!r}")
    return served_locally and backend == "vllm"
