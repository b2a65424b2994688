"""Production traces as a task's data source (``data.traces`` in the task YAML; docs/traces.md).

:mod:`distil_platform.tasks.trace_formats` reads the logged calls (OpenAI chat-completions JSONL,
Langfuse exports); this module maps each onto the task's row layout, masks personal data
(:mod:`distil_platform.tasks.pii`), rejects what is outside the task's answer space, removes
duplicates, splits seed/test (stratified, seeded) and decontaminates the split.

Mapping (``question`` / ``answer`` / ``context``, as every seed set):

- the question is the last user turn (with ``question_pattern``: its ``question`` group, and the
  ``context`` group if any); tool calling: the JSON chat history without system turns, the last user
  turn cut the same way; text2sql: the public ``Schema: ... Question: ...`` layout is split into
  context and question;
- the answer is the assistant's reply: classification, its text mapped onto a label (case, quotes,
  a trailing full stop ignored); tool calling, its one tool call (``tool_calls[0]``, or a JSON call in
  the text) as ``{"name", "parameters"}``; text2sql, the SQL without code fences; other types, the text.

A row whose answer is outside the answer space is rejected with :mod:`~distil_platform.tasks.validation`'s
reason (``label_not_in_set``, ``unknown_tool``, ``tool_args_invalid``, ``sql_unparseable``, ...) or
``multiple_tool_calls`` / ``no_tool_call`` / ``question_pattern_mismatch`` / ``missing_user_message``;
every rejection is counted by reason and the first ones named by file and line. A call with no usable
answer (none logged, an error, an empty reply, cut off at ``max_tokens``), or every call when
``labelled: false``, is an *unlabelled* row: its question goes to the teacher (``<task>_teacher_data``).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from distil_platform.tasks.pii import PII_KINDS, mask_json_text, mask_text, mask_value
from distil_platform.tasks.sources import COLUMNS, DataSourceError, split_schema_question
from distil_platform.tasks.spec import TaskSpec, TracesSource
from distil_platform.tasks.trace_formats import Generation, read_generations
from distil_platform.tasks.validation import REASON_FIELD, canonical_tool_call, parse_tool_call, validate_row

ROLES = ("system", "user", "assistant", "tool")
MAX_NAMED_REJECTIONS = 20
_FENCE_RE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.DOTALL)


def labels_note(model: str) -> str:
    return f"labels are your production model's answers ({model or 'model not logged'})"


# -- configuration -------------------------------------------------------------------------------
def traces_config(spec: TaskSpec, overrides: dict[str, Any] | None = None) -> TracesSource | None:
    """The task's ``data.traces`` with run-config ``overrides`` (None values ignored) applied; with no
    YAML block, env ``DISTIL_TRACES_<TASK>`` (or an override ``path``) turns traces on with the defaults.
    None: the task reads no traces."""
    base = spec.data.traces
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    env = (base.path_env if base else None) or f"DISTIL_TRACES_{spec.name.upper()}"
    if base is None and not overrides.get("path") and not os.environ.get(env):
        return None
    merged = {**(base.model_dump() if base else {}), **overrides}
    try:
        return TracesSource(**merged)
    except ValidationError as exc:
        bad = "; ".join(f"field `data.traces.{'.'.join(map(str, e['loc']))}`: {e['msg']}" for e in exc.errors())
        raise DataSourceError(f"{spec.source_file}: {bad} (with run config {sorted(overrides) or 'none'})") from None


def traces_path(spec: TaskSpec, cfg: TracesSource) -> Path:
    """Env ``path_env`` (default ``DISTIL_TRACES_<TASK>``) over ``path``; relative to the task YAML."""
    env = cfg.path_env or f"DISTIL_TRACES_{spec.name.upper()}"
    value = os.environ.get(env) or cfg.path
    if not value:
        raise DataSourceError(f"{spec.source_file}: field `data.traces.path` is not set and env {env} is empty")
    path = Path(value).expanduser()
    if not path.is_absolute() and spec.source_file:
        path = Path(spec.source_file).parent / path
    return path


# -- one call -> one row ---------------------------------------------------------------------------
def _text(content: Any) -> str:
    """A message's content as text (OpenAI content parts: their ``text`` joined)."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return raw
    return {} if raw is None else raw


def _history(messages: list[Any]) -> list[dict[str, Any]] | None:
    """The conversation without system turns, in the row layout's form; None if a turn is malformed."""
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return None
        if m["role"] == "system":
            continue
        turn: dict[str, Any] = {"role": m["role"], "content": _text(m.get("content"))}
        calls = m.get("tool_calls")
        if m["role"] == "assistant" and isinstance(calls, list) and calls:
            turn["tool_calls"] = [{"type": "function", "function": {
                "name": (c.get("function") or {}).get("name"), "arguments": _arguments((c.get("function") or {}).get(
                    "arguments"))}} for c in calls if isinstance(c, dict)]
        out.append(turn)
    return out


def _label(spec: TaskSpec, text: str) -> str:
    cleaned = text.strip().strip("`\"' ").rstrip(".").strip()
    try:
        value = json.loads(text)
        if isinstance(value, dict) and isinstance(value.get("label"), str):
            cleaned = value["label"].strip()
    except (json.JSONDecodeError, TypeError):
        pass
    by_norm = {name.casefold(): name for name in spec.labels or {}}
    return by_norm.get(cleaned.casefold(), cleaned)


def _answer(spec: TaskSpec, gen: Generation) -> tuple[str, str | None]:
    """``(answer, None)``, ``("", "unlabelled:<why>")`` or ``("", <rejection reason>)``."""
    if gen.failed:
        return "", "unlabelled:error"
    if gen.reply is None:
        return "", "unlabelled:no_reply"
    if gen.finish_reason == "length":
        return "", "unlabelled:truncated"
    text = _text(gen.reply.get("content")).strip()
    if spec.type == "tool_calling":
        calls = [c for c in gen.reply.get("tool_calls") or [] if isinstance(c, dict)]
        if len(calls) > 1:
            return "", "multiple_tool_calls"
        if calls:
            fn = calls[0].get("function") or {}
            args = _arguments(fn.get("arguments"))
            if not isinstance(fn.get("name"), str) or not isinstance(args, dict):
                return "", "tool_call_unparseable"
            return json.dumps({"name": fn["name"], "parameters": args}, ensure_ascii=False), None
        if not text:
            return "", "unlabelled:empty_reply"
        return (text, None) if parse_tool_call(text) is not None else ("", "no_tool_call")
    if not text:
        return "", "unlabelled:empty_reply"
    if spec.type == "classification":
        return _label(spec, text), None
    if spec.type == "text2sql":
        match = _FENCE_RE.match(text)
        return (match.group(1).strip() if match else text), None
    return text, None


def map_generation(spec: TaskSpec, gen: Generation, cfg: TracesSource, pii: Counter | None) -> tuple[dict, str | None]:
    """``(row, status)``: status None = a labelled row, ``"unlabelled:<why>"``, or a rejection reason.
    With ``pii`` (a counter) every field of the row is masked and the occurrences counted."""
    history = _history(gen.messages)
    if history is None:
        return {}, "invalid_messages"
    if not history or history[-1]["role"] != "user" or not history[-1]["content"].strip():
        return {}, "missing_user_message"
    last, context = history[-1]["content"], ""
    if cfg.question_pattern:
        match = re.search(cfg.question_pattern, last, re.DOTALL)
        if match is None:
            return {}, "question_pattern_mismatch"
        last, context = match.group("question").strip(), (match.groupdict().get("context") or "").strip()
    if spec.type == "tool_calling":
        question = json.dumps([*history[:-1], {"role": "user", "content": last}], ensure_ascii=False)
    else:
        question = last.strip()
    if spec.type == "text2sql" and not context:
        context, question = split_schema_question(question)
    answer, status = _answer(spec, gen)
    production, masked_answer = None, False
    if not cfg.labelled and not (status or "").startswith("unlabelled:"):
        # Not a label (the teacher's job), but what the production model answered, in or out of the answer
        # space: scored against the test set's own labels where the call asks a test question.
        production, answer, status = answer, "", "unlabelled:not_labelled"
    if pii is not None:
        question = mask_json_text(question, pii) if spec.type == "tool_calling" else mask_text(question, pii)
        context = mask_text(context, pii)
        answer = _masked_answer(spec, answer, pii)
        if production:
            before = sum(pii.values())
            production = _masked_answer(spec, production, pii)
            # What it answered is no longer what is stored (a leaked e-mail in a redaction, a timestamp read as
            # a phone number in SQL): scoring the masked text would be wrong either way, so it is not scored.
            masked_answer = sum(pii.values()) > before
    if spec.type == "tool_calling" and answer:
        try:
            answer = canonical_tool_call(answer)
        except ValueError:
            return {}, "tool_call_unparseable"
    row = {"question": question, "answer": answer, "context": context, "where": gen.where, "model": gen.model,
           "message": mask_text(last, Counter()) if pii is not None else last}
    if production is not None:
        row["production_answer"] = production
        row["production_not_scored"] = "answer changed by PII masking" if masked_answer else ""
    if status is not None and status.startswith("unlabelled:"):
        # Only the question side is checked: the teacher writes the answer.
        reason = validate_row(spec, {**row, "answer": _placeholder_answer(spec)})
        return row, reason if reason and REASON_FIELD.get(reason) in ("question", "context") else status
    if status is not None:
        return {}, status
    return row, validate_row(spec, row)


def _masked_answer(spec: TaskSpec, answer: str, pii: Counter) -> str:
    if spec.type == "tool_calling" and answer:
        call = json.loads(answer) if answer.startswith("{") else None
        return json.dumps(mask_value(call, pii), ensure_ascii=False) if call is not None else mask_text(answer, pii)
    return mask_text(answer, pii)


def _placeholder_answer(spec: TaskSpec) -> str:
    if spec.type == "classification":
        return next(iter(spec.labels or {"x": ""}))
    if spec.type == "tool_calling":
        return json.dumps({"name": spec.tool_names[0], "parameters": {}})
    return "SELECT 1" if spec.type == "text2sql" else "answer"


# -- a whole trace source ------------------------------------------------------------------------------
@dataclass
class TraceData:
    """What a trace source gives a task: the split, the teacher's rows, and what happened to every call."""

    seed: pl.DataFrame
    test: pl.DataFrame
    unlabelled: pl.DataFrame  # columns id, question, context (for the teacher)
    summary: dict[str, Any] = field(default_factory=dict)
    # ``labelled: false``: the production model's answers (question, context, answer; masked), scored
    # against the test set's own labels where a call asks a test question (``<task>_frontier_evals``).
    production_answers: pl.DataFrame | None = None


def _frame(rows: list[dict[str, Any]], columns=COLUMNS) -> pl.DataFrame:
    return pl.DataFrame([{c: str(r.get(c) or "") for c in columns} for r in rows],
                        schema=dict.fromkeys(columns, pl.String))


def stratum(spec: TaskSpec, answer: str) -> str:
    """What the split stratifies on: the label, the tool's name, else one stratum."""
    if spec.type == "classification":
        return answer
    if spec.type == "tool_calling":
        call = parse_tool_call(answer)
        return call["name"] if call else ""
    return ""


def stratified_split(spec: TaskSpec, rows: list[dict[str, Any]], test_share: float,
                     seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(seed_rows, test_rows)``: per stratum (in first-seen order) ``round(n x test_share)`` rows to
    test, chosen by ``random.Random(seed)``; a stratum of one stays in the seed split. Deterministic
    for the same rows, share and seed; both splits keep the input order."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(stratum(spec, row["answer"]), []).append(i)
    rng = random.Random(seed)
    to_test: set[int] = set()
    for key in groups:
        members = groups[key]
        n = min(len(members) - 1, round(len(members) * test_share)) if len(members) > 1 else 0
        to_test.update(rng.sample(members, n))
    return ([r for i, r in enumerate(rows) if i not in to_test], [r for i, r in enumerate(rows) if i in to_test])


def load_traces(spec: TaskSpec, cfg: TracesSource, path: Path | None = None) -> TraceData:
    """Read, map, mask, validate, deduplicate, split and decontaminate ``spec``'s traces.

    Raises :class:`DataSourceError` naming the file when it cannot be read, or when ``labelled`` is
    on and fewer than two rows survive (the reasons counted in the message)."""
    from distil_platform.teacher.dedup import decontaminate, decontamination_fields, deduplicate

    path = path or traces_path(spec, cfg)
    pii: Counter = Counter()
    rejections: Counter = Counter()
    unlabelled_why: Counter = Counter()
    named: list[str] = []
    labelled, unlabelled = [], []
    models: Counter = Counter()
    usage_by_model: dict[str, list[tuple[float, float, float]]] = {}
    n_calls = 0
    try:
        generations = list(read_generations(path, cfg.format))
    except (OSError, UnicodeError) as exc:
        raise DataSourceError(f"{path}: cannot read traces: {exc}") from None
    for item in generations:
        n_calls += 1
        if not isinstance(item, Generation):
            where, reason = item
        else:
            models[item.model] += 1
            if item.usage is not None:
                usage_by_model.setdefault(item.model, []).append(item.usage)
            try:
                row, reason = map_generation(spec, item, cfg, pii if cfg.mask_pii else None)
            except Exception as exc:  # noqa: BLE001 - one poisonous record is a rejection, never a crash
                row, reason = {}, f"unreadable_record ({type(exc).__name__})"
            where = item.where
            if reason is None:
                labelled.append(row)
                continue
            if reason.startswith("unlabelled:"):
                unlabelled_why[reason.split(":", 1)[1]] += 1
                unlabelled.append(row)
                continue
        rejections[reason] += 1
        if len(named) < MAX_NAMED_REJECTIONS:
            named.append(f"{where}: {reason}")
    for rows in (labelled, unlabelled):
        for row in rows:
            row["origin"] = "traces"
    dedup = deduplicate(labelled, near_threshold=1.0)
    labelled = dedup.kept
    udedup = deduplicate(unlabelled, seeds=labelled, near_threshold=1.0)
    unlabelled = udedup.kept
    for i, row in enumerate(unlabelled):
        row["id"] = f"trace-u{i:05d}"

    seed_rows, test_rows, decontaminated = [], [], 0
    if cfg.labelled:
        if len(labelled) < 2:
            raise DataSourceError(
                f"{path}: {len(labelled)} usable labelled trace row(s) of {n_calls} call(s) (rejected: "
                f"{dict(rejections.most_common()) or 'none'}; unlabelled: {dict(unlabelled_why) or 'none'}); a seed "
                "and a test split need at least two; set `data.traces.labelled: false` to use them as teacher input")
        for i, row in enumerate(labelled):
            row["id"] = f"trace-{i:05d}"
        seed_rows, test_rows = stratified_split(spec, labelled, cfg.test_share, cfg.split_seed)
        # The teacher's rule (exact after normalisation, or n-gram overlap above the threshold) without its
        # near-copy ratio: production messages often differ from each other in one slot, and the answer with it.
        # Tool calling compares the latest user turns (the JSON histories share their scaffolding).
        syn = spec.synthesis
        fields = ("message",) if spec.type == "tool_calling" else decontamination_fields(spec, syn.filters.decontaminate_on)
        decon = decontaminate(seed_rows, test_rows, n=syn.decontamination_ngram,
                              threshold=syn.decontamination_threshold, fields=fields)
        seed_rows, decontaminated = decon.kept, len(decon.dropped)

    production = models.most_common(1)[0][0] if models else ""
    # The production model's answers to its (deduplicated) calls, where its answers are not the labels.
    answered = [r for r in unlabelled if "production_answer" in r and r.get("model") == production]
    used = usage_by_model.get(production, [])
    n = len(used)
    summary: dict[str, Any] = {
        "path": str(path), "format": cfg.format, "calls": n_calls,
        "labelled": len(labelled) if cfg.labelled else 0, "unlabelled": len(unlabelled),
        "unlabelled_by_reason": dict(unlabelled_why.most_common()),
        "rejected": sum(rejections.values()), "rejections_by_reason": dict(rejections.most_common()),
        "rejected_examples": named, "duplicates": dedup.exact_duplicates + udedup.exact_duplicates,
        "decontaminated": decontaminated, "n_seed": len(seed_rows), "n_test": len(test_rows),
        "test_share": cfg.test_share, "split_seed": cfg.split_seed, "mask_pii": cfg.mask_pii,
        "pii_masked": {kind: pii.get(kind, 0) for kind in PII_KINDS} if cfg.mask_pii else None,
        "labels_are_production_answers": cfg.labelled,
        "labels_note": labels_note(production) if cfg.labelled else "labels come from the task's own data; the "
        "traces' answers are not used as labels",
        "production_model": production, "models": dict(models.most_common()),
        "production_answers": len(answered),
        "production_answers_masked": sum(1 for r in answered if r["production_not_scored"]),
        "usage": {"model": production, "n_requests": n,
                  "mean_prompt_tokens": sum(u[0] for u in used) / n if n else None,
                  "mean_completion_tokens": sum(u[1] for u in used) / n if n else None,
                  "mean_cached_tokens": sum(u[2] for u in used) / n if n else None},
    }
    answers = _frame([{**r, "answer": r["production_answer"], "not_scored": r["production_not_scored"]} for r in answered],
                     ("question", "context", "answer", "not_scored"))
    return TraceData(_frame(seed_rows), _frame(test_rows), _frame(unlabelled, ("id", "question", "context")), summary,
                     production_answers=answers if answered else None)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The trace source in a few lines, for the seed set's metadata."""
    usage = summary.get("usage") or {}
    lines = [f"**{summary['labels_note']}**", "", "| step | rows |", "|---|---|",
             f"| calls read | {summary['calls']} |", f"| rejected | {summary['rejected']} |",
             f"| duplicates removed | {summary['duplicates']} |",
             f"| decontaminated (seed rows like a test row) | {summary['decontaminated']} |",
             f"| seed / test | {summary['n_seed']} / {summary['n_test']} |",
             f"| unlabelled, to the teacher | {summary['unlabelled']} |"]
    if usage.get("n_requests"):
        lines += ["", f"Logged usage of `{usage['model']}` over {usage['n_requests']} calls: "
                  f"{usage['mean_prompt_tokens']:.1f} prompt ({usage['mean_cached_tokens']:.1f} cached) and "
                  f"{usage['mean_completion_tokens']:.1f} completion tokens per request."]
    if summary.get("pii_masked") is not None:
        lines += ["", "Masked: " + ", ".join(f"{k} {v}" for k, v in summary["pii_masked"].items())]
    return "\n".join(lines)
