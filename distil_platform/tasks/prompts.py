"""One rendering of a task row into chat messages, used for training, evaluation and baselines.

The student is trained on exactly the messages it is evaluated on, and every comparison model
sees the same prompt: that is what makes the scores comparable.
"""

from __future__ import annotations

import json
from typing import Any

from distil_platform.tasks.spec import TaskSpec

# -- tool schemas in the prompt ------------------------------------------------------------------
# Chat templates of small open models ignore `tools`, so the schemas go in the system prompt and the
# call comes back as JSON in the message content (parsed by scoring.parse_tool_call). Every model
# (student, zero-shot base, teacher, frontier APIs) gets the same rendering.

_SCALAR_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}
# Keys of a property schema the signature shows in its own notation; any other key is appended
# verbatim (`key=value`) so the rendering never drops part of a schema.
_TYPE_KEYS = {"type", "enum", "const", "items", "properties", "required", "additionalProperties", "anyOf", "oneOf"}
_CONSTRAINT_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                    "minItems", "maxItems", "uniqueItems", "pattern", "format", "multipleOf")
_SHOWN_KEYS = _TYPE_KEYS | set(_CONSTRAINT_KEYS) | {"default", "description", "title"}

_SEP = " — "
SIGNATURE_LEGEND = ("each function, then one line per parameter: `name: type` is required, `name?: type` "
                    "optional, `= value` is the default when it is left out")
# Appended to the legend when no function accepts unlisted parameters (additionalProperties: false).
CLOSED_LEGEND = "; no other parameters exist"


def _literal(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _type_expr(schema: dict[str, Any]) -> str:
    """A JSON schema as a compact type: "a"|"b", int, list[str], {k: T, k2?: T}, A | B."""
    if not isinstance(schema, dict) or not schema:
        return "any"
    if "enum" in schema:
        return "|".join(_literal(v) for v in schema["enum"])
    if "const" in schema:
        return _literal(schema["const"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(_type_expr(s) for s in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_type_expr({**schema, "type": k}) for k in kind)
    if kind == "array":
        return f"list[{_type_expr(schema.get('items') or {})}]"
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        if not props:
            return "dict"
        required = set(schema.get("required") or [])
        return "{" + ", ".join(_param(name, sub, name in required) for name, sub in props.items()) + "}"
    return _SCALAR_TYPES.get(kind, str(kind) if kind else "any")


def _constraints(schema: dict[str, Any]) -> list[str]:
    out = []
    for key in _CONSTRAINT_KEYS:
        if key in schema:
            out.append(f"{key}={_literal(schema[key])}")
    items = schema.get("items")
    if isinstance(items, dict):
        out += [f"items.{c}" for c in _constraints(items)]
    for key, value in schema.items():
        if key not in _SHOWN_KEYS:
            out.append(f"{key}={_literal(value)}")
    return out


def _param(name: str, schema: dict[str, Any], required: bool) -> str:
    text = f"{name}{'' if required else '?'}: {_type_expr(schema)}"
    if isinstance(schema, dict) and "default" in schema:
        text += f" = {_literal(schema['default'])}"
    return text


def render_tool_signature(function: dict[str, Any]) -> str:
    """One function as a compact, complete block::

        git_push — Upload local commits to a remote.
          remote?: str = "origin" — Remote name.
          files: list[str] — Paths to stage. [minItems=1]

    Every parameter appears with its type (enums as their literal values), a ``?`` unless it is
    required, ``= default`` when it has one, its description and any constraint or other schema
    keyword (``[key=value]``): nothing of the schema is dropped."""
    params = function.get("parameters") or {}
    props = params.get("properties") or {}
    required = set(params.get("required") or [])
    description = str(function.get("description") or "").strip()
    lines = [f"{function['name']}{_SEP}{description}" if description else str(function["name"])]
    for name, sub in props.items():
        sub = sub if isinstance(sub, dict) else {}
        notes = [str(sub["description"]).strip()] if sub.get("description") else []
        extra = _constraints(sub)
        if extra:
            notes.append(f"[{', '.join(extra)}]")
        lines.append(f"  {_param(name, sub, name in required)}" + (f"{_SEP}{' '.join(notes)}" if notes else ""))
    if not props:
        lines.append("  (no parameters)")
    extra_top = [f"{k}={_literal(v)}" for k, v in params.items()
                 if k not in ("type", "properties", "required", "additionalProperties", "description", "title")]
    if params.get("additionalProperties", True) is not False:
        extra_top.insert(0, "other parameters allowed")
    if extra_top:
        lines.append(f"  [{', '.join(extra_top)}]")
    return "\n".join(lines)


def render_tools(spec: TaskSpec, style: str | None = None) -> str:
    """The tool block of the system prompt in ``style`` (default: the task's ``tool_rendering``)."""
    style = style or spec.tool_rendering
    functions = [t["function"] for t in spec.tools or []]
    if style == "json_schema":
        return "Available functions (JSON schema):\n" + json.dumps(functions, separators=(",", ":"))
    if style == "signature":
        body = "\n".join(render_tool_signature(f) for f in functions)
        closed = all((f.get("parameters") or {}).get("additionalProperties", True) is False for f in functions)
        return f"Available functions ({SIGNATURE_LEGEND}{CLOSED_LEGEND if closed else ''}):\n{body}"
    raise ValueError(f"unknown tool rendering {style!r} (expected signature or json_schema)")


def rendering_label(spec: TaskSpec) -> str:
    """How the task's prompt presents its choices, for metadata and cost tables."""
    if spec.type == "tool_calling" and spec.tools:
        return f"tools as {spec.tool_rendering}"
    if spec.type == "classification":
        return "labels as a list"
    return "plain"


def system_prompt(spec: TaskSpec, tool_rendering: str | None = None) -> str:
    """Task description plus what the model must choose from (labels, tools) and the output rule."""
    parts = [spec.description.strip()]
    if spec.type == "classification" and spec.labels:
        lines = "\n".join(f"- {name}: {desc}" for name, desc in spec.labels.items())
        parts.append(f"Classes:\n{lines}\n\nAnswer with the class name only.")
    elif spec.type == "tool_calling" and spec.tools:
        parts.append(
            f"{render_tools(spec, tool_rendering)}\n\n"
            'Respond with exactly one JSON object: {"name": <function name>, "parameters": {...}}.'
        )
    elif spec.type == "text2sql":
        parts.append("Respond with a single SQLite query and nothing else.")
    return "\n\n".join(parts)


def _history(question: str) -> list[dict[str, Any]] | None:
    """A multi-turn question is a JSON-encoded chat history (the public smart-home layout)."""
    text = question.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return value
    return None


def _flatten_message(message: dict[str, Any]) -> dict[str, str]:
    """Prior assistant tool calls become the same JSON the model is asked to emit."""
    content = message.get("content") or ""
    if message.get("role") == "assistant" and message.get("tool_calls"):
        call = message["tool_calls"][0].get("function", {})
        args = call.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        content = json.dumps({"name": call.get("name"), "parameters": args}, separators=(", ", ": "))
    return {"role": str(message["role"]), "content": str(content)}


def render_user_prompt(spec: TaskSpec, question: str, context: str | None = "") -> str:
    return spec.prompt_template.format(question=question, context=context or "")


def build_messages(spec: TaskSpec, row: dict[str, Any], *, tool_rendering: str | None = None
                   ) -> list[dict[str, str]]:
    """System + user messages for ``row`` (keys ``question`` and optional ``context``).

    ``tool_rendering`` overrides the task's ``tool_rendering`` (for measuring the alternatives only:
    the platform always renders with the task's setting)."""
    messages = [{"role": "system", "content": system_prompt(spec, tool_rendering)}]
    history = _history(str(row["question"])) if spec.type == "tool_calling" else None
    if history:
        flat = [_flatten_message(m) for m in history]
        last = flat[-1]
        if last["role"] == "user":
            last["content"] = render_user_prompt(spec, last["content"], row.get("context"))
        messages.extend(flat)
    else:
        messages.append(
            {"role": "user", "content": render_user_prompt(spec, str(row["question"]), row.get("context"))}
        )
    return messages


def format_answer(spec: TaskSpec, answer: Any) -> str:
    """The assistant target text for training. Tool calls are re-serialised compactly."""
    if spec.type == "tool_calling":
        value = json.loads(answer) if isinstance(answer, str) else answer
        return json.dumps(value, separators=(", ", ": "))
    return str(answer).strip()


def build_training_messages(spec: TaskSpec, row: dict[str, Any]) -> list[dict[str, str]]:
    return build_messages(spec, row) + [{"role": "assistant", "content": format_answer(spec, row["answer"])}]
