"""One rendering of a task row into chat messages, used for training, evaluation and baselines.

The student is trained on exactly the messages it is evaluated on, and every comparison model
sees the same prompt: that is what makes the scores comparable.
"""

from __future__ import annotations

import json
from typing import Any

from distil_platform.taskspec import TaskSpec


def system_prompt(spec: TaskSpec) -> str:
    """Task description plus what the model must choose from (labels, tools) and the output rule."""
    parts = [spec.description.strip()]
    if spec.type == "classification" and spec.labels:
        lines = "\n".join(f"- {name}: {desc}" for name, desc in spec.labels.items())
        parts.append(f"Classes:\n{lines}\n\nAnswer with the class name only.")
    elif spec.type == "tool_calling" and spec.tools:
        # Chat templates of small open models ignore `tools`, so the schemas go in the prompt and
        # the call comes back as JSON in the message content (parsed by scoring.parse_tool_call).
        tools = json.dumps([t["function"] for t in spec.tools], separators=(",", ":"))
        parts.append(
            f"Available functions (JSON schema):\n{tools}\n\n"
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


def build_messages(spec: TaskSpec, row: dict[str, Any]) -> list[dict[str, str]]:
    """System + user messages for ``row`` (keys ``question`` and optional ``context``)."""
    messages = [{"role": "system", "content": system_prompt(spec)}]
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
