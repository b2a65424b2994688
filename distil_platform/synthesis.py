"""Teacher data generation: prompts, parsing, validation, deduplication, decontamination.

The teacher is shown the task (description, labels / tool schemas / schema DDL) and ``k`` seed
examples sampled per request, plus a topic hint, and asked for new examples as JSON lines. What it
writes is parsed, validated per task type (``validation.validate_row``, then rendering through the
task's prompt template), deduplicated (exactly and near-exactly, against itself and the seeds) and
decontaminated against the test questions. Every dropped example is counted by reason.

The model call itself is injected (``generate(list_of_messages) -> list_of_texts``) so this module
stays free of any client, server or Dagster import and every step is unit-testable.
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

from distil_platform.prompts import build_training_messages, system_prompt
from distil_platform.taskspec import TaskSpec

Messages = list[dict[str, str]]
GenerateFn = Callable[[list[Messages]], list["str | None"]]

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
    """Rejection reason for one candidate, or None when it is a valid training example."""
    from distil_platform.validation import validate_row

    reason = validate_row(spec, row)
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
) -> DecontaminationResult:
    """Drop rows whose question shares more than ``threshold`` of its word ``n``-grams with the test
    questions, or equals one after normalisation.

    N-grams that also occur in seed questions are boilerplate of the task's format (e.g. a fixed
    instruction), not leakage, so they are ignored on both sides.
    """
    boilerplate: set[tuple[str, ...]] = set()
    for s in seeds:
        boilerplate |= ngrams(s["question"], n)
    test_grams: set[tuple[str, ...]] = set()
    test_exact = set()
    for t in test:
        test_grams |= ngrams(t["question"], n) - boilerplate
        test_exact.add(normalise(t["question"]))
    result = DecontaminationResult(kept=[])
    for row in rows:
        grams = ngrams(row["question"], n) - boilerplate
        overlap = len(grams & test_grams) / len(grams) if grams else 0.0
        if normalise(row["question"]) in test_exact or overlap > threshold:
            result.dropped.append({**row, "test_overlap": round(overlap, 3)})
        else:
            result.kept.append(row)
    return result


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

    @property
    def teacher_accepted(self) -> int:
        return sum(1 for r in self.accepted if r.get("origin") == "teacher")

    def summary(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "teacher_requests": self.n_requests,
            "failed_requests": self.failed_requests,
            "generated": self.generated,
            "rejected": sum(self.rejections.values()),
            "rejections_by_reason": dict(self.rejections.most_common()),
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "duplicates_of_seeds": self.seed_duplicates,
            "decontaminated": self.decontaminated,
            "augmented_generated": self.augmented_generated,
            "augmented_accepted": self.augmented_accepted,
            "teacher_accepted": self.teacher_accepted,
            "accepted": len(self.accepted),
        }


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
) -> SynthesisReport:
    """Ask the teacher for ``target`` examples and keep the valid, new, uncontaminated ones.

    ``literal_swap`` adds :func:`literal_swap_augment` rows (origin ``literal_swap``) alongside the
    teacher's (origin ``teacher``); both pass the same filters and are counted separately.
    """
    cfg = spec.synthesis
    per_request = max(1, cfg.examples_per_request)
    n_requests = max(1, -(-target // per_request)) if target > 0 else 0
    grounded = cfg.ground_in_unstructured if ground_in_unstructured is None else ground_in_unstructured
    requests = build_teacher_requests(
        spec, seeds, n_requests, unstructured=unstructured, ground_in_unstructured=grounded, rng_seed=rng_seed
    )
    texts = generate([r.messages for r in requests]) if requests else []
    if len(texts) != len(requests):
        raise RuntimeError(f"teacher returned {len(texts)} replies for {len(requests)} requests")
    rejections: Counter = Counter()
    candidates: list[dict[str, Any]] = []
    failed = 0
    for req, text in zip(requests, texts):
        failed += text is None
        rows, dropped = parse_teacher_output(spec, text, context=req.context)
        rejections.update(dropped)
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
            rejections[key if row["origin"] == "teacher" else f"{row['origin']}: {key}"] += 1
        else:
            valid.append(row)
    dedup = deduplicate(valid, seeds, near_threshold=cfg.near_duplicate_threshold)
    decon = decontaminate(dedup.kept, test, n=cfg.decontamination_ngram,
                          threshold=cfg.decontamination_threshold, seeds=seeds)
    accepted = []
    for i, row in enumerate(decon.kept):
        accepted.append({"id": f"syn-{i:05d}", **row})
    report = SynthesisReport(
        accepted=accepted,
        requested=target,
        n_requests=n_requests,
        generated=generated,
        rejections=rejections,
        exact_duplicates=dedup.exact_duplicates,
        near_duplicates=dedup.near_duplicates,
        seed_duplicates=dedup.seed_duplicates,
        decontaminated=len(decon.dropped),
        augmented_generated=len(augmented),
        augmented_accepted=sum(1 for r in accepted if r["origin"] != "teacher"),
        failed_requests=failed,
        decontaminated_examples=decon.dropped[:10],
    )
    if log:
        log(f"{spec.name}: synthesis {report.summary()}")
    return report


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
