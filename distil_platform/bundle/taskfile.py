"""``task.json``: what the bundle's client needs to prompt the student and read its answers, as data.

The prompt pieces come from the one rendering the platform trains and evaluates with
(:mod:`distil_platform.tasks.prompts`): the system prompt is rendered here once (description, labels
or tool signatures, the output rule), the user template is the task's ``prompt_template``. The
answer rule names the parsing the client applies, per task type (``client.parse_answer``).
"""

from __future__ import annotations

from typing import Any

from distil_platform.tasks.prompts import rendering_label, system_prompt
from distil_platform.tasks.spec import TaskSpec

TASK_FILE_FORMAT = 1
# Task type -> the client's answer rule (distil_platform/bundle/client.py: parse_answer).
ANSWER_RULES = {"classification": "label", "tool_calling": "tool_call", "text2sql": "sql",
                "open_book_qa": "text", "generation": "text"}


def generation_settings(max_tokens: int) -> dict[str, Any]:
    """The request parameters the platform's student eval sends: greedy, the eval's answer budget."""
    return {"temperature": 0.0, "max_tokens": int(max_tokens)}


def task_file(spec: TaskSpec, *, served_name: str, max_tokens: int, chat_template: str | None = None
              ) -> dict[str, Any]:
    """The content of ``task.json`` for ``spec``'s student served as ``served_name``."""
    return {
        "format": TASK_FILE_FORMAT,
        "task": spec.name,
        "type": spec.type,
        "description": spec.description.strip(),
        "served_name": served_name,
        "system_prompt": system_prompt(spec),
        "prompt_template": spec.prompt_template,
        "prompt_rendering": rendering_label(spec),
        "labels": list(spec.labels or {}),
        "tools": list(spec.tools or []),
        "answer_rule": ANSWER_RULES[spec.type],
        "metric": spec.metric_name,
        "generation": generation_settings(max_tokens),
        # What the server applies to the messages (also in the weights' tokenizer files).
        "chat_template": chat_template,
    }
