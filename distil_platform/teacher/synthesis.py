"""Teacher data generation: prompts, parsing, validation, quality filters, deduplication, decontamination.

The teacher is shown the task (description, labels / tool schemas / schema DDL) and ``k`` seed
examples sampled per request, plus a topic hint, and asked for new examples as JSON (where the
endpoint supports it the reply is constrained to the task's example schema, see
``teacher_schemas``). Alternatively the candidates come from a recorded teacher's file
(``recorded_teacher``). Candidates are parsed, validated per task type (``validation.validate_row``,
then rendering through the task's prompt template), judged by the task's quality filters
(``filters``: question sanity, SQL that returns rows in the sandbox, grounded tool arguments, an
independent second answer that agrees), deduplicated (exactly and near-exactly, against itself and
the seeds) and decontaminated against the test set on the channel that can leak (the question, or
the code of a docstring task). Every dropped example is counted by reason and kept in an audit
list with its verdicts.

The model calls are injected (``generate(list_of_messages, formats) -> list_of_replies``, and for the agreement
filter ``second_answer(rows) -> list_of_replies``) so this module stays free of any client, server or
Dagster import and every step is unit-testable. A reply is the text (None: the request failed) or an
object with ``text``, ``finish_reason`` and ``error`` (an ``llm.ChatResult``, or :class:`Reply`).

Two rules make the stage total over whatever a model sends:

- **Billed non-answers are never rows.** A reply cut off at ``max_tokens`` (``finish_reason ==
  "length"``) is rejected whole as ``truncated_reply`` and one with no text as ``empty_reply``
  (a teacher reply, a self-training label, or the agreement filter's second answer:
  ``answer_agreement: second_answer_truncated`` / ``second_answer_empty``). The client cached them
  with their finish reason, so a rerun pays nothing and rejects them again.
- **Poison is a rejection, not a crash.** Any exception while parsing a reply, validating or
  rendering a row, or running a quality filter on it (``RecursionError`` from ``"[" * 2000`` or SQL
  nested 3,000 parentheses deep included) rejects that reply or row with the reason
  (``parse_error (RecursionError)``, ``validation_error (RecursionError)``,
  ``<filter>: filter_error (RecursionError)``); the other rows go on.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distil_platform.tasks.prompts import build_training_messages, system_prompt
from distil_platform.tasks.spec import TaskSpec

Messages = list[dict[str, str]]
# generate(messages, formats) -> replies: one constrained-output format per request (None: free text).
GenerateFn = Callable[[list[Messages], list["dict[str, Any] | None"]], list["str | None"]]

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


# -- teacher prompts ---------------------------------------------------------------------------
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


# -- replies -----------------------------------------------------------------------------------
TRUNCATED_REPLY, EMPTY_REPLY = "truncated_reply", "empty_reply"


@dataclass(frozen=True)
class Reply:
    """A model reply with what the stage needs to judge it (``llm.ChatResult`` has the same fields)."""

    text: str | None
    finish_reason: str | None = None
    error: str | None = None


def reply_text(reply: Any) -> str | None:
    """The text of a reply (a string, None, or an object with ``text``)."""
    if reply is None or isinstance(reply, str):
        return reply
    return getattr(reply, "text", None)


def reply_failed(reply: Any) -> bool:
    """The request got no reply (None, or an object with an ``error``)."""
    if reply is None or isinstance(reply, str):
        return reply is None
    return getattr(reply, "error", None) is not None


def unusable_reply(reply: Any) -> str | None:
    """``truncated_reply`` (cut off at max_tokens) or ``empty_reply`` (answered with no text) for a
    billed reply that is no answer; None for anything else (failed requests and plain strings,
    which carry no finish reason, included)."""
    if reply is None or isinstance(reply, str) or reply_failed(reply):
        return None
    if getattr(reply, "finish_reason", None) == "length":
        return TRUNCATED_REPLY
    if not (reply_text(reply) or "").strip() and not getattr(reply, "tool_calls", None):
        return EMPTY_REPLY
    return None


def exception_reason(kind: str, exc: BaseException) -> str:
    """A countable rejection reason for an exception raised on one reply or row."""
    return f"{kind} ({type(exc).__name__})"


# -- parsing -----------------------------------------------------------------------------------
_FENCE_RE = re.compile(r"```[a-zA-Z]*\n?")


def _json_objects(text: str) -> list[Any]:
    """Every top-level JSON value in ``text`` (JSON lines, a JSON list, or objects in prose)."""
    text = _FENCE_RE.sub("", text)
    decoder = json.JSONDecoder()
    out: list[Any] = []
    i = 0
    while i < len(text):
        start = min((p for p in (text.find("{", i), text.find("[", i)) if p >= 0), default=-1)
        if start < 0:
            break
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            i = start + 1
            continue
        if isinstance(value, list):
            out.extend(v for v in value if isinstance(v, dict))
        elif isinstance(value, dict) and "question" not in value and "answer" not in value and any(
                isinstance(v, list) and v and all(isinstance(x, dict) for x in v) for v in value.values()):
            # An object wrapper ({"examples": [...]}), as endpoints that need an object root write.
            for v in value.values():
                if isinstance(v, list):
                    out.extend(x for x in v if isinstance(x, dict))
        elif isinstance(value, dict):
            out.append(value)
        i = end
    return out


def parse_teacher_output(spec: TaskSpec, text: str | None, context: str = "") -> tuple[list[dict], Counter]:
    """Candidate rows (``question``, ``answer``, ``context``) from one teacher reply, plus the
    count of objects dropped while parsing, by reason."""
    rejected: Counter = Counter()
    if not text or not text.strip():
        rejected["empty_response"] += 1
        return [], rejected
    objects = _json_objects(text)
    if not objects:
        rejected["no_json_in_response"] += 1
        return [], rejected
    rows = []
    for obj in objects:
        question, answer = obj.get("question"), obj.get("answer")
        if question is None or answer is None or (isinstance(question, str) and not question.strip()):
            rejected["missing_question_or_answer"] += 1
            continue
        if spec.type == "tool_calling":
            if isinstance(answer, str):
                try:
                    answer = json.loads(answer)
                except json.JSONDecodeError:
                    rejected["answer_not_json"] += 1
                    continue
            answer_text = json.dumps(answer, ensure_ascii=False)
        elif isinstance(answer, (dict, list)):
            answer_text = json.dumps(answer, ensure_ascii=False)
        else:
            answer_text = str(answer).strip()
        if isinstance(question, list):  # a chat history (multi-turn tool calling)
            question = json.dumps(question, ensure_ascii=False)
        row_context = context if spec.type in CONTEXT_BOUND_TYPES else str(obj.get("context") or "")
        rows.append({"question": str(question).strip(), "answer": answer_text, "context": row_context})
    return rows, rejected


# -- validation --------------------------------------------------------------------------------
def check_candidate(spec: TaskSpec, row: dict[str, Any]) -> str | None:
    """Rejection reason for one candidate, or None when it is a valid training example. A validator
    that raises on the row (e.g. ``RecursionError`` on deeply nested SQL) is a rejection too."""
    from distil_platform.tasks.validation import validate_row

    if row.get("reject_reason"):  # a billed non-answer or an unparseable label (self-training)
        return str(row["reject_reason"])
    try:
        reason = validate_row(spec, row)
    except Exception as exc:  # noqa: BLE001 - any failure on one row rejects that row, never the stage
        return f"{exception_reason('validation_error', exc)}: {str(exc)[:120]}"
    if reason:
        return reason
    try:
        build_training_messages(spec, row)
    except Exception as exc:  # noqa: BLE001 - any failure to render is a rejection reason
        return f"does not render through the prompt template ({type(exc).__name__})"
    return None


def reason_key(reason: str) -> str:
    """Group free-text reasons into countable keys (text before the first colon, truncated)."""
    return reason.split(":", 1)[0].strip()[:80] or "invalid"


# -- deduplication and decontamination ---------------------------------------------------------
_WS_RE = re.compile(r"\s+")
_PUNCT_RE = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    return _WS_RE.sub(" ", _PUNCT_RE.sub(" ", str(text).lower())).strip()


def exact_key(row: dict[str, Any]) -> str:
    """Same normalised question and context = the same example (whatever the answer says)."""
    raw = normalise(row["question"]) + "\x1f" + normalise(row.get("context") or "")
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class DedupResult:
    kept: list[dict[str, Any]]
    exact_duplicates: int = 0
    near_duplicates: int = 0
    seed_duplicates: int = 0  # of the above, how many duplicated a seed


def deduplicate(
    rows: Sequence[dict[str, Any]], seeds: Sequence[dict[str, Any]] = (), near_threshold: float = 0.9
) -> DedupResult:
    """Drop exact (normalised hash) and near duplicates (rapidfuzz ratio >= ``near_threshold``)
    among ``rows`` and against ``seeds``; first occurrence wins. ``near_threshold`` >= 1 disables the
    near-duplicate pass, which applies to teacher rows only (see below)."""
    from rapidfuzz import fuzz, process

    seed_keys = {exact_key(s) for s in seeds}
    seen = set(seed_keys)
    # Near-duplicates are only meaningful within one context (same schema / passage).
    pool: dict[str, list[str]] = {}
    seed_pool: dict[str, set[str]] = {}
    for s in seeds:
        ctx = normalise(s.get("context") or "")
        q = normalise(s["question"])
        pool.setdefault(ctx, []).append(q)
        seed_pool.setdefault(ctx, set()).add(q)
    result = DedupResult(kept=[])
    cutoff = near_threshold * 100
    for row in rows:
        key = exact_key(row)
        if key in seen:
            result.exact_duplicates += 1
            result.seed_duplicates += key in seed_keys
            continue
        ctx, q = normalise(row.get("context") or ""), normalise(row["question"])
        candidates = pool.setdefault(ctx, [])
        # Literal-swap rows are near-copies of a seed by construction (one value changed, and the
        # answer with it): only exact duplicates of them are dropped.
        near_check = row.get("origin", "teacher") == "teacher"
        if near_threshold < 1 and candidates and near_check:
            match = process.extractOne(q, candidates, scorer=fuzz.ratio, score_cutoff=cutoff)
            if match is not None:
                result.near_duplicates += 1
                result.seed_duplicates += match[0] in seed_pool.get(ctx, ())
                continue
        seen.add(key)
        candidates.append(q)
        result.kept.append(row)
    return result


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = normalise(text).split()
    if not words:
        return set()
    n = min(n, len(words))  # a question shorter than n words is one n-gram
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class DecontaminationResult:
    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]] = field(default_factory=list)


def decontaminate(
    rows: Sequence[dict[str, Any]],
    test: Sequence[dict[str, Any]],
    *,
    n: int = 8,
    threshold: float = 0.5,
    seeds: Sequence[dict[str, Any]] = (),
    fields: Sequence[str] = ("question",),
    near_threshold: float | None = None,
) -> DecontaminationResult:
    """Drop rows whose ``fields`` (default the question) share more than ``threshold`` of their word
    ``n``-grams with the same field of the test rows, or equal one after normalisation.

    N-grams that also occur in the seeds' field are boilerplate of the task's format (e.g. a fixed
    instruction), not leakage, so they are ignored on both sides. Tasks whose question is a fixed
    instruction leak through the ``context`` (the code of a docstring task): see
    :func:`decontamination_fields`. With ``near_threshold`` a row whose field has a rapidfuzz ratio
    >= ``near_threshold`` with a test row's is a near-copy and dropped too (short questions have
    fewer than ``n`` words, so the n-gram test alone only catches exact copies of them).
    """
    from rapidfuzz import fuzz, process

    checks = []
    for name in fields:
        boilerplate: set[tuple[str, ...]] = set()
        for s in seeds:
            boilerplate |= ngrams(s.get(name) or "", n)
        test_grams: set[tuple[str, ...]] = set()
        test_exact = set()
        for t in test:
            test_grams |= ngrams(t.get(name) or "", n) - boilerplate
            if normalise(t.get(name) or ""):
                test_exact.add(normalise(t.get(name) or ""))
        checks.append((name, boilerplate, test_grams, test_exact, sorted(test_exact)))
    cutoff = None if near_threshold is None or near_threshold >= 1 else near_threshold * 100
    result = DecontaminationResult(kept=[])
    for row in rows:
        worst, hit = 0.0, False
        for name, boilerplate, test_grams, test_exact, test_list in checks:
            grams = ngrams(row.get(name) or "", n) - boilerplate
            overlap = len(grams & test_grams) / len(grams) if grams else 0.0
            worst = max(worst, overlap)
            text = normalise(row.get(name) or "")
            hit = hit or text in test_exact or overlap > threshold
            if not hit and cutoff is not None and text and test_list:
                hit = process.extractOne(text, test_list, scorer=fuzz.ratio, score_cutoff=cutoff) is not None
        if hit:
            result.dropped.append({**row, "test_overlap": round(worst, 3)})
        else:
            result.kept.append(row)
    return result


def decontamination_fields(spec: TaskSpec, setting: str = "auto") -> tuple[str, ...]:
    """The fields that can leak test items: ``auto`` = the context for generation tasks with one
    (docstring: the question is a fixed instruction, the code is the content), else the question.
    Context-bound tasks (text2sql, open-book QA) share contexts with the test set by design."""
    if setting == "both":
        return ("question", "context")
    if setting in ("question", "context"):
        return (setting,)
    return ("context",) if spec.type == "generation" and "{context}" in spec.prompt_template else ("question",)


# -- deterministic augmentation (an option, never reported as teacher output) ------------------
_INT_RE = re.compile(r"(?<![\w.])(\d+)(?![\w.])")


def _swap_int(text: str, old: str, new: str) -> str:
    return _INT_RE.sub(lambda m: new if m.group(1) == old else m.group(1), text)


def literal_swap_augment(
    spec: TaskSpec, seeds: Sequence[dict[str, Any]], per_seed: int = 2, rng_seed: int = 0
) -> list[dict[str, Any]]:
    """text2sql only: new rows made from seeds by swapping a literal that appears verbatim in both
    the question and the SQL (a quoted string for another value of the same column seen in other
    seeds, or an integer for a nearby one). Deterministic, no model involved; rows are marked
    ``origin="literal_swap"`` and still go through validation, dedup and decontamination.
    """
    if spec.type != "text2sql":
        return []
    import sqlglot
    from sqlglot import exp

    rng = random.Random(rng_seed)
    # Column name -> string literals compared with it anywhere in the seeds.
    values: dict[str, set[str]] = {}
    parsed: list[list[tuple[str, str]]] = []
    for s in seeds:
        pairs = []
        try:
            tree = sqlglot.parse_one(s["answer"], read="sqlite")
        except Exception:  # noqa: BLE001 - an unparsable seed simply is not augmented
            parsed.append([])
            continue
        for eq in tree.find_all(exp.EQ, exp.NEQ, exp.Like):
            col, lit = eq.args.get("this"), eq.args.get("expression")
            if isinstance(col, exp.Column) and isinstance(lit, exp.Literal) and lit.is_string:
                values.setdefault(col.name.lower(), set()).add(lit.this)
                pairs.append((col.name.lower(), lit.this))
        parsed.append(pairs)
    out: list[dict[str, Any]] = []
    for s, pairs in zip(seeds, parsed):
        made: set[tuple[str, str]] = set()
        options: list[tuple[str, str, str]] = []  # (kind, old, new)
        for col, old in pairs:
            if s["question"].count(old) == 1 and s["answer"].count(f"'{old}'") == 1:
                for new in sorted(values.get(col, set()) - {old}):
                    if "'" not in new:
                        options.append(("str", old, new))
        for m in set(_INT_RE.findall(s["question"])):
            if len(_INT_RE.findall(s["answer"])) and _INT_RE.findall(s["answer"]).count(m) == 1 \
                    and _INT_RE.findall(s["question"]).count(m) == 1:
                n = int(m)
                for new in {n + 1, n * 2, max(1, n // 2)} - {n}:
                    options.append(("int", m, str(new)))
        rng.shuffle(options)
        for kind, old, new in options[:per_seed]:
            if (old, new) in made:
                continue
            made.add((old, new))
            if kind == "str":
                question = s["question"].replace(old, new)
                answer = s["answer"].replace(f"'{old}'", f"'{new}'")
            else:
                question, answer = _swap_int(s["question"], old, new), _swap_int(s["answer"], old, new)
            out.append({"question": question, "answer": answer, "context": s.get("context") or "",
                        "origin": "literal_swap", "seed_ids": str(s.get("id", ""))})
    return out


# -- the whole stage ---------------------------------------------------------------------------
FILTER_ORDER = ("min_confidence", "question_sanity", "sql_nonempty", "grounded_arguments", "enum_consistency",
                "answer_agreement")
# Rows a model (or a recorded model) wrote, as opposed to deterministic augmentation of the seeds.
MODEL_ORIGINS = ("teacher", "recorded", "self_training")
# A second answer per row (the rows' questions answered independently): rows -> texts.
SecondAnswerFn = Callable[[list[dict[str, Any]]], list["str | None"]]


@dataclass
class FilterStats:
    checked: int = 0
    passed: int = 0
    rejected: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "passed": self.passed, "rejected": dict(self.rejected.most_common())}


def active_filters(spec: TaskSpec, filters: Any = None) -> list[str]:
    """The quality filters that apply to ``spec`` with its YAML switches (or ``filters``)."""
    cfg = filters or spec.synthesis.filters
    out = []
    if cfg.min_confidence is not None and spec.type in ("classification", "tool_calling"):
        out.append("min_confidence")  # self-training rows carry a confidence
    if cfg.question_sanity:
        out.append("question_sanity")
    if cfg.sql_nonempty and spec.type == "text2sql":
        out.append("sql_nonempty")
    if cfg.grounded_arguments and spec.type == "tool_calling":
        out.append("grounded_arguments")
    if cfg.enum_consistency and spec.type == "tool_calling":
        out.append("enum_consistency")
    if cfg.answer_agreement:
        out.append("answer_agreement")
    return out


def apply_filters(
    spec: TaskSpec,
    rows: Sequence[dict[str, Any]],
    seeds: Sequence[dict[str, Any]],
    *,
    filters: Any = None,
    second_answer: SecondAnswerFn | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, FilterStats]]:
    """``(kept, rejected, stats)``: each active filter in :data:`FILTER_ORDER` on the rows that passed
    the previous ones; every row gets ``verdicts`` ({filter: "pass" or reason}); a rejected row also
    gets ``rejected_by`` (``"<filter>: <reason>"``). Agreement runs last (it costs a model call per
    row) and only on teacher / recorded rows (literal-swap rows are derived from the seeds)."""
    from distil_platform.teacher import filters as qf

    cfg = filters or spec.synthesis.filters
    names = active_filters(spec, cfg)
    if "min_confidence" in names and not any(r.get("confidence") is not None for r in rows):
        names.remove("min_confidence")  # nothing to judge: no row carries a confidence
    stats = {name: FilterStats() for name in names}
    kept = [dict(r, verdicts=dict(r.get("verdicts") or {})) for r in rows]
    rejected: list[dict[str, Any]] = []

    def run(name: str, verdict_of: Callable[[dict[str, Any]], str | None], applies=lambda r: True) -> None:
        nonlocal kept
        survivors = []
        for row in kept:
            if not applies(row):
                survivors.append(row)
                continue
            stats[name].checked += 1
            try:
                reason = verdict_of(row)
            except Exception as exc:  # noqa: BLE001 - a filter that raises on one row rejects that row
                reason = exception_reason("filter_error", exc)
            row["verdicts"][name] = reason or "pass"
            if reason:
                stats[name].rejected[reason] += 1
                rejected.append({**row, "rejected_by": f"{name}: {reason}"})
            else:
                stats[name].passed += 1
                survivors.append(row)
        kept = survivors

    if "min_confidence" in names:
        # Only rows that carry a confidence (self-training with logprobs) are judged by it.
        run("min_confidence", lambda r: None if r["confidence"] >= cfg.min_confidence else "low_confidence",
            applies=lambda r: r.get("confidence") is not None)
    if "question_sanity" in names:
        sanity = qf.QuestionSanity.from_seeds(spec, seeds, cfg)
        run("question_sanity", sanity.check)
    if "sql_nonempty" in names:
        run("sql_nonempty", lambda r: qf.sql_nonempty(str(r["answer"]), str(r.get("context") or "")))
    if "grounded_arguments" in names:
        def grounded(row: dict[str, Any]) -> str | None:
            bad = qf.ungrounded_arguments(spec, row)
            return f"ungrounded_argument ({', '.join(sorted(bad))})" if bad else None
        run("grounded_arguments", grounded)
    if "enum_consistency" in names:
        def consistent(row: dict[str, Any]) -> str | None:
            bad = qf.contradicted_enums(spec, row)
            return f"contradicted_enum ({', '.join(sorted(bad))})" if bad else None
        run("enum_consistency", consistent)
    if "answer_agreement" in names:
        if second_answer is None:
            raise ValueError(f"{spec.name}: synthesis.filters.answer_agreement is on but no second answerer was given")
        todo = [r for r in kept if r.get("origin") in MODEL_ORIGINS]
        answers = second_answer(todo) if todo else []
        if len(answers) != len(todo):
            raise RuntimeError(f"second answerer returned {len(answers)} answers for {len(todo)} rows")
        by_id = {id(r): a for r, a in zip(todo, answers)}
        for row in todo:
            row["second_answer"] = reply_text(by_id[id(row)])

        def agreement(row: dict[str, Any]) -> str | None:
            second = by_id.get(id(row))
            unusable = unusable_reply(second)
            if unusable:  # the second answer was cut off or empty: no verdict on the row, not a "yes"
                return "second_answer_" + unusable.removesuffix("_reply")
            return None if qf.answers_agree(spec, row, reply_text(second)) else "disagrees"

        run("answer_agreement", agreement, applies=lambda r: id(r) in by_id)
    return kept, rejected, stats


@dataclass
class SynthesisReport:
    accepted: list[dict[str, Any]]
    requested: int
    n_requests: int
    generated: int
    rejections: Counter
    exact_duplicates: int
    near_duplicates: int
    seed_duplicates: int
    decontaminated: int
    augmented_generated: int = 0
    augmented_accepted: int = 0
    failed_requests: int = 0
    decontaminated_examples: list[dict[str, Any]] = field(default_factory=list)
    source: str = "teacher"  # teacher | recorded | self_training
    schema_valid: int = 0
    filter_stats: dict[str, FilterStats] = field(default_factory=dict)
    decontamination_fields: tuple[str, ...] = ("question",)
    # Every candidate with its fate (accepted / invalid / rejected by a filter / duplicate /
    # contaminated): the stage's sample table reads it.
    audit: list[dict[str, Any]] = field(default_factory=list)

    @property
    def teacher_accepted(self) -> int:
        return sum(1 for r in self.accepted if r.get("origin") in MODEL_ORIGINS)

    @property
    def passed_filters(self) -> int:
        return len(self.accepted) + self.exact_duplicates + self.near_duplicates + self.decontaminated

    def funnel(self) -> dict[str, int]:
        """Rows left after each step, in order."""
        out = {"requested": self.requested, "generated": self.generated + self.augmented_generated,
               "schema_valid": self.schema_valid}
        left = self.schema_valid
        for name, st in self.filter_stats.items():
            left -= sum(st.rejected.values())
            out[f"passed_{name}"] = left
        out["deduplicated"] = left - self.exact_duplicates - self.near_duplicates
        out["decontaminated"] = out["deduplicated"] - self.decontaminated
        out["accepted"] = len(self.accepted)
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "requested": self.requested,
            "teacher_requests": self.n_requests,
            "failed_requests": self.failed_requests,
            "generated": self.generated,
            "schema_valid": self.schema_valid,
            "passed_filters": self.passed_filters,
            "rejected": sum(self.rejections.values()),
            "rejections_by_reason": dict(self.rejections.most_common()),
            "filters": {name: st.as_dict() for name, st in self.filter_stats.items()},
            "funnel": self.funnel(),
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "duplicates_of_seeds": self.seed_duplicates,
            "decontaminated": self.decontaminated,
            "decontaminated_on": ",".join(self.decontamination_fields),
            "augmented_generated": self.augmented_generated,
            "augmented_accepted": self.augmented_accepted,
            "teacher_accepted": self.teacher_accepted,
            "accepted": len(self.accepted),
        }


def _verdict_text(row: dict[str, Any]) -> str:
    return "; ".join(f"{k}={v}" for k, v in (row.get("verdicts") or {}).items())


def synthesize(
    spec: TaskSpec,
    seeds: Sequence[dict[str, Any]],
    test: Sequence[dict[str, Any]],
    generate: GenerateFn,
    *,
    target: int,
    teacher_model: str,
    unstructured: Sequence[dict[str, Any]] | None = None,
    ground_in_unstructured: bool | None = None,
    literal_swap: bool = False,
    rng_seed: int = 0,
    log: Callable[[str], None] | None = None,
    recorded: Sequence[dict[str, Any]] | None = None,
    second_answer: SecondAnswerFn | None = None,
    filters: Any = None,
    source_name: str = "recorded",
    reply_format: Callable[[TeacherRequest], dict[str, Any] | None] | None = None,
) -> SynthesisReport:
    """Ask the teacher for ``target`` examples and keep the valid, sane, agreed, new, uncontaminated ones.

    With ``recorded`` (rows from :func:`distil_platform.teacher.recorded.load_recorded`, or labelled
    messages from :func:`distil_platform.teacher.self_training.label_rows` with ``source_name="self_training"``)
    no teacher is asked: those rows are the candidates and pass the same steps. ``literal_swap`` adds
    :func:`literal_swap_augment` rows (origin ``literal_swap``); they are counted apart.
    ``second_answer`` answers rows independently for the agreement filter (when it is on).
    ``reply_format`` gives each teacher request its constrained-output format (a request's schema
    can depend on its context); ``generate(messages, formats)`` gets None formats without it.
    Steps: parse → validate (schema) → quality filters → dedup → decontaminate.
    """
    cfg = spec.synthesis
    fcfg = filters or cfg.filters
    rejections: Counter = Counter()
    candidates: list[dict[str, Any]] = []
    failed = 0
    audit: list[dict[str, Any]] = []
    if recorded is not None:
        source, n_requests = source_name, 0
        candidates = [dict(r, origin=r.get("origin") or "recorded") for r in recorded]
        requested = len(candidates)
    else:
        source = "teacher"
        per_request = max(1, cfg.examples_per_request)
        n_requests = max(1, -(-target // per_request)) if target > 0 else 0
        requested = target
        grounded = cfg.ground_in_unstructured if ground_in_unstructured is None else ground_in_unstructured
        requests = build_teacher_requests(
            spec, seeds, n_requests, unstructured=unstructured, ground_in_unstructured=grounded, rng_seed=rng_seed
        )
        messages = [r.messages for r in requests]
        formats = [reply_format(r) if reply_format is not None else None for r in requests]
        texts = generate(messages, formats) if requests else []
        if len(texts) != len(requests):
            raise RuntimeError(f"teacher returned {len(texts)} replies for {len(requests)} requests")
        for req, reply in zip(requests, texts):
            failed += reply_failed(reply)
            text = reply_text(reply)
            unusable = unusable_reply(reply)
            if unusable:  # billed, cached with its finish reason, never a row
                rows, dropped = [], Counter({unusable: 1})
            else:
                try:
                    rows, dropped = parse_teacher_output(spec, text, context=req.context)
                except Exception as exc:  # noqa: BLE001 - a poisonous reply is a rejection, never a crash
                    rows, dropped = [], Counter({exception_reason("parse_error", exc): 1})
            rejections.update(dropped)
            if dropped:
                audit.append({"origin": "teacher", "question": "", "answer": (text or "")[:200],
                              "status": "unparsed: " + ", ".join(dropped), "verdicts": ""})
            for row in rows:
                row.update(origin="teacher", teacher_model=teacher_model, seed_ids=",".join(req.seed_ids),
                           topic=req.topic, prompt_hash=req.prompt_hash,
                           grounding_ids=",".join(req.grounding_ids))
                candidates.append(row)
    generated = len(candidates)
    augmented = literal_swap_augment(spec, seeds, rng_seed=rng_seed) if literal_swap else []
    for row in augmented:
        row.update(teacher_model="", topic="", prompt_hash="", grounding_ids="")
    valid: list[dict[str, Any]] = []
    for row in candidates + augmented:
        reason = check_candidate(spec, row)
        if reason:
            key = reason_key(reason)
            rejections[key if row["origin"] in MODEL_ORIGINS else f"{row['origin']}: {key}"] += 1
            audit.append({**row, "status": f"invalid: {key}", "verdicts": ""})
        else:
            valid.append(row)
    kept, filtered, stats = apply_filters(spec, valid, seeds, filters=fcfg, second_answer=second_answer)
    for row in filtered:
        origin = row.get("origin", "teacher")
        rejections[row["rejected_by"] if origin in MODEL_ORIGINS else f"{origin}: {row['rejected_by']}"] += 1
        audit.append({**row, "status": f"rejected: {row['rejected_by']}", "verdicts": _verdict_text(row)})
    dedup = deduplicate(kept, seeds, near_threshold=cfg.near_duplicate_threshold)
    kept_ids = {id(r) for r in dedup.kept}
    for row in kept:
        if id(row) not in kept_ids:
            audit.append({**row, "status": "duplicate", "verdicts": _verdict_text(row)})
    fields = decontamination_fields(spec, fcfg.decontaminate_on)
    decon = decontaminate(dedup.kept, test, n=cfg.decontamination_ngram,
                          threshold=cfg.decontamination_threshold, seeds=seeds, fields=fields,
                          near_threshold=cfg.near_duplicate_threshold)
    for row in decon.dropped:
        audit.append({**row, "status": f"contaminated (overlap {row['test_overlap']})", "verdicts": _verdict_text(row)})
    accepted = []
    for i, row in enumerate(decon.kept):
        row = {"id": f"syn-{i:05d}", **row}
        row["verdicts"] = _verdict_text(row)
        accepted.append(row)
        audit.append({**row, "status": "accepted"})
    report = SynthesisReport(
        accepted=accepted,
        requested=requested,
        n_requests=n_requests,
        generated=generated,
        rejections=rejections,
        exact_duplicates=dedup.exact_duplicates,
        near_duplicates=dedup.near_duplicates,
        seed_duplicates=dedup.seed_duplicates,
        decontaminated=len(decon.dropped),
        augmented_generated=len(augmented),
        augmented_accepted=sum(1 for r in accepted if r["origin"] not in MODEL_ORIGINS),
        failed_requests=failed,
        decontaminated_examples=decon.dropped[:10],
        source=source,
        schema_valid=len(valid),
        filter_stats=stats,
        decontamination_fields=fields,
        audit=audit,
    )
    if log:
        log(f"{spec.name}: synthesis {report.summary()}")
    return report


def sample_rows(report: SynthesisReport, k: int = 10) -> list[dict[str, Any]]:
    """Up to ``k`` audit rows for the sample table: accepted ones first, then one of each other fate."""
    accepted = [r for r in report.audit if r["status"] == "accepted"]
    others: dict[str, dict[str, Any]] = {}
    for r in report.audit:
        if r["status"] != "accepted":
            others.setdefault(r["status"].split(" (", 1)[0], r)
    half = max(1, k // 2)
    picked = accepted[: max(half, k - len(others))] + list(others.values())
    return picked[:k]


def answer_distribution(spec: TaskSpec, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Label counts (classification) or tool-name counts (tool calling); {} for other types."""
    if spec.type == "classification":
        return dict(Counter(str(r["answer"]) for r in rows).most_common())
    if spec.type == "tool_calling":
        names = []
        for r in rows:
            try:
                names.append(str(json.loads(r["answer"]).get("name", "?")))
            except (ValueError, AttributeError):
                names.append("?")
        return dict(Counter(names).most_common())
    return {}


def distribution_collapsed(dist: dict[str, int], max_share: float = 0.8) -> bool:
    """True when one class holds more than ``max_share`` of at least 5 examples (and >1 expected)."""
    total = sum(dist.values())
    return total >= 5 and max(dist.values(), default=0) / total > max_share
