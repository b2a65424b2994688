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

Beside this module: ``requests`` (teacher prompts), ``replies`` (reading replies, parsing and
checking candidates), ``dedup`` (deduplication, decontamination), ``augment`` (literal swaps) and
``filters`` (the quality filters that :func:`apply_filters` runs).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distil_platform.tasks.spec import TaskSpec
from distil_platform.teacher.augment import literal_swap_augment
from distil_platform.teacher.dedup import decontaminate, decontamination_fields, deduplicate
from distil_platform.teacher.replies import (
    check_candidate,
    exception_reason,
    parse_teacher_output,
    reason_key,
    reply_failed,
    reply_text,
    unusable_reply,
)
from distil_platform.teacher.requests import Messages, TeacherRequest, build_teacher_requests

# generate(messages, formats) -> replies: one constrained-output format per request (None: free text).
GenerateFn = Callable[[list[Messages], list["dict[str, Any] | None"]], list["str | None"]]
FILTER_ORDER = ("min_confidence", "question_sanity", "sql_nonempty", "grounded_arguments", "enum_consistency",
                "answer_agreement")
# Rows a model (or a recorded model) wrote, as opposed to deterministic augmentation of the seeds.
MODEL_ORIGINS = ("teacher", "recorded", "self_training", "traces")
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
    # Candidates that are production traces labelled by the teacher (origin "traces"), of ``generated``.
    traces_candidates: int = 0

    @property
    def traces_accepted(self) -> int:
        return sum(1 for r in self.accepted if r.get("origin") == "traces")

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
            "traces_candidates": self.traces_candidates,
            "traces_accepted": self.traces_accepted,
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
    traced: Sequence[dict[str, Any]] | None = None,
) -> SynthesisReport:
    """Ask the teacher for ``target`` examples and keep the valid, sane, agreed, new, uncontaminated ones.

    With ``recorded`` (rows from :func:`distil_platform.teacher.recorded.load_recorded`, or labelled
    messages from :func:`distil_platform.teacher.self_training.label_rows` with ``source_name="self_training"``)
    no teacher is asked: those rows are the candidates and pass the same steps. ``literal_swap`` adds
    :func:`literal_swap_augment` rows (origin ``literal_swap``); they are counted apart.
    ``second_answer`` answers rows independently for the agreement filter (when it is on).
    ``reply_format`` gives each teacher request its constrained-output format (a request's schema
    can depend on its context); ``generate(messages, formats)`` gets None formats without it.
    ``traced``: production-trace questions the teacher labelled (``self_training.label_rows``); they join
    the candidates as origin ``traces`` and pass the same steps (``traces_candidates`` counts them).
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
    candidates += [dict(r, origin="traces") for r in traced or ()]
    requested += len(traced or ())  # each trace question is one label asked for
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
        traces_candidates=len(traced or ()),
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
