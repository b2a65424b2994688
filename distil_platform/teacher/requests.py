"""Teacher requests: the system prompt that shows the teacher the task, and the per-request prompts
(sampled seed examples, a topic hint, a fixed context for context-bound tasks, or real unstructured
rows to label) that :func:`build_teacher_requests` makes."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distil_platform.tasks.prompts import system_prompt
from distil_platform.tasks.spec import TaskSpec

Messages = list[dict[str, str]]

# Task types whose examples are about one given context (a schema, a passage): each request fixes
# one context taken from a seed (or an unstructured row) and the teacher writes question + answer.
CONTEXT_BOUND_TYPES = {"text2sql", "open_book_qa"}

DEFAULT_TOPICS: dict[str, list[str]] = {
    "text2sql": ["filtering", "aggregation", "grouping", "ordering and limits", "joins", "counting",
                 "date conditions", "distinct values"],
    "classification": ["short messages", "long detailed messages", "informal wording", "polite wording",
                       "messages with typos", "indirect requests"],
    "tool_calling": ["direct commands", "polite requests", "indirect phrasing", "requests with details"],
    "open_book_qa": ["facts", "names", "numbers and dates", "comparisons"],
    "generation": ["short inputs", "long inputs", "varied style"],
}


@dataclass(frozen=True)
class TeacherRequest:
    messages: Messages
    seed_ids: tuple[str, ...]
    topic: str
    context: str  # the fixed context for context-bound tasks ("" otherwise)
    grounding_ids: tuple[str, ...] = ()  # unstructured rows the teacher was asked to label
    prompt_hash: str = ""


def _example_json(spec: TaskSpec, row: dict[str, Any], with_context: bool) -> str:
    item: dict[str, Any] = {"question": row["question"]}
    if spec.type == "tool_calling":
        try:
            item["answer"] = json.loads(row["answer"])
        except (TypeError, ValueError):
            item["answer"] = row["answer"]
    else:
        item["answer"] = row["answer"]
    if with_context and row.get("context"):
        item["context"] = row["context"]
    return json.dumps(item, ensure_ascii=False)


def teacher_system_prompt(spec: TaskSpec) -> str:
    fields = '"question" and "answer"'
    if spec.type == "generation":
        fields = '"question", "answer" and (when the examples have one) "context"'
    return (
        "You write training examples for a small model that will learn the task below.\n\n"
        f"=== TASK ===\n{system_prompt(spec)}\n=== END TASK ===\n\n"
        f"Write new, varied, realistic examples in exactly the format of the given ones: one JSON object "
        f"per line with the keys {fields}. Every answer must be correct. Output only the JSON lines."
    )


def _hash_messages(messages: Messages) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def build_teacher_requests(
    spec: TaskSpec,
    seeds: Sequence[dict[str, Any]],
    n_requests: int,
    *,
    seeds_per_request: int | None = None,
    examples_per_request: int | None = None,
    topics: Sequence[str] | None = None,
    unstructured: Sequence[dict[str, Any]] | None = None,
    ground_in_unstructured: bool = False,
    rng_seed: int = 0,
) -> list[TeacherRequest]:
    """``n_requests`` teacher prompts, each with its own sampled seeds and topic hint (diversity).

    With ``ground_in_unstructured`` and unstructured rows, the teacher labels real in-domain texts
    instead of inventing questions (classification / tool calling) or writes questions about a real
    passage (context-bound tasks).
    """
    if not seeds:
        raise ValueError(f"{spec.name}: no seed rows to show the teacher")
    rng = random.Random(rng_seed)
    k = max(1, min(seeds_per_request or spec.synthesis.seeds_per_request, len(seeds)))
    per_request = examples_per_request or spec.synthesis.examples_per_request
    topic_pool = list(topics or spec.synthesis.topics or DEFAULT_TOPICS.get(spec.type, ["varied"]))
    grounded = bool(ground_in_unstructured and unstructured)
    system = teacher_system_prompt(spec)
    requests: list[TeacherRequest] = []
    for i in range(n_requests):
        topic = topic_pool[i % len(topic_pool)]
        context = ""
        grounding: list[dict[str, Any]] = []
        if spec.type in CONTEXT_BOUND_TYPES:
            # Examples must share the request's context so the answer is checkable against it.
            anchor = seeds[rng.randrange(len(seeds))]
            if grounded and spec.type == "open_book_qa":
                real = unstructured[rng.randrange(len(unstructured))]  # type: ignore[index]
                context = str(real.get("context") or real.get("question") or "")
                grounding = [real]
            else:
                context = str(anchor.get("context") or "")
            same = [s for s in seeds if (s.get("context") or "") == context and s is not anchor]
            others = [s for s in seeds if s is not anchor]
            shown = [anchor] if context == (anchor.get("context") or "") else []
            pool = same or others
            shown += rng.sample(pool, min(k - len(shown), len(pool)))
            demo = "\n".join(_example_json(spec, s, with_context=False) for s in shown)
            ctx_text = f"Context:\n{context}\n\n" if context else ""
            user = (
                f"Examples (for other questions):\n{demo}\n\n{ctx_text}"
                f"Write {per_request} new examples about the context above. Focus: {topic}."
            )
        else:
            shown = rng.sample(list(seeds), k)
            with_ctx = any(s.get("context") for s in shown)
            demo = "\n".join(_example_json(spec, s, with_context=with_ctx) for s in shown)
            if grounded:
                grounding = rng.sample(list(unstructured), min(per_request, len(unstructured)))  # type: ignore[arg-type]
                texts = "\n".join(
                    json.dumps(str(u.get("question") or u.get("context") or ""), ensure_ascii=False)
                    for u in grounding
                )
                user = (
                    f"Examples:\n{demo}\n\nReal messages (JSON strings), one per line:\n{texts}\n\n"
                    "For each real message write one example line whose question is that message "
                    "verbatim and whose answer is correct for it."
                )
            else:
                user = f"Examples:\n{demo}\n\nWrite {per_request} new examples. Focus: {topic}."
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        requests.append(
            TeacherRequest(
                messages=messages,
                seed_ids=tuple(str(s.get("id", "")) for s in shown),
                topic=topic,
                context=context,
                grounding_ids=tuple(str(g.get("id", "")) for g in grounding),
                prompt_hash=_hash_messages(messages),
            )
        )
    return requests
