"""The teacher gate and the gap closed: can this teacher do the task well enough to distil from, and
how much of its lead over the student's base did the student close.

**The gate** (``<task>_teacher_eval``): the teacher answers the test set with the prompt the student
gets, scored like the student; its score gives a verdict (:func:`verdict_for`):

- ``PROCEED`` at or above ``proceed`` (default 0.80; tool-call equivalence 0.70);
- ``ITERATE`` between: fix the task description or the seeds before spending on data;
- ``RETHINK`` below ``rethink`` (default 0.60): the teacher cannot do the task, so no student learns
  it from this teacher;
- ``NOT_EVALUABLE``: no score (a recorded teacher whose file answers none of the test questions).

Thresholds belong to a metric (:data:`DEFAULT_THRESHOLDS`; the task YAML's ``teacher_gate`` overrides
them, :func:`thresholds_for`): a judge-scored task whose judge is unreachable is scored by the token-F1
fallback and judged by token F1's thresholds, which says so. ``<task>_teacher_data`` reads the latest
verdict (:func:`gate_decision`): on RETHINK it asks the teacher nothing (seed-only) unless the run
config overrides the gate.

**The gap closed**: (student − base) / (teacher − base) on the items all three scored with the same
metric, with a paired bootstrap interval (``economics.stats.gap_closed``) and a reading
(:func:`gap_reading`): deploy at ≥ 0.8, retune at 0.4-0.8, below under 0.4. It is defined only where
the teacher is another model than the student's base (on ``local`` and ``test`` the teacher *is* the
base: :func:`gap_closed_summary` says "not defined" with that reason).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from distil_platform.tasks.spec import TaskSpec

PROCEED, ITERATE, RETHINK, NOT_EVALUABLE = "PROCEED", "ITERATE", "RETHINK", "NOT_EVALUABLE"
VERDICTS = (PROCEED, ITERATE, RETHINK, NOT_EVALUABLE)
# The gate's states in ``<task>_teacher_data`` beside the verdicts.
NOT_EVALUATED, NOT_APPLICABLE = "not_evaluated", "not_applicable"

# (proceed, rethink) per metric. 0/1 metrics and the judge's 0-1 verdicts: the 0.80 / 0.60;
# tool-call equivalence 0.70 (a call with every argument right is a harder target). Token F1 is the
# judge's fallback on free text: a correct paraphrase shares only part of the reference's tokens, so
# its scale sits lower; 0.50 / 0.30 is a convention, not a measurement: set `by_metric.token_f1`.
DEFAULT_THRESHOLDS: dict[str, tuple[float, float]] = {
    "exact_match": (0.80, 0.60),
    "sql_execution_match": (0.80, 0.60),
    "llm_judge": (0.80, 0.60),
    "tool_call_equivalence": (0.70, 0.60),
    "token_f1": (0.50, 0.30),
}

# The gap closed's reading.
GAP_DEPLOY, GAP_RETUNE = 0.8, 0.4
TEACHER_IS_BASE = "not defined: the teacher is the student's base model"


@dataclass(frozen=True)
class Thresholds:
    metric: str  # the metric they belong to (``base_metric``: llm_judge, token_f1, ...)
    proceed: float
    rethink: float
    source: str  # where they came from: the task YAML's field, or the default

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"PROCEED ≥ {self.proceed:g}, ITERATE {self.rethink:g}–{self.proceed:g}, RETHINK < {self.rethink:g} "
                f"({self.metric}; {self.source})")


def base_metric(metric: str) -> str:
    """The metric a per-item metric name belongs to: ``llm_judge:<model>`` -> ``llm_judge``,
    ``fallback:token_f1`` -> ``token_f1``."""
    metric = metric or ""
    if metric.startswith("fallback:"):
        return metric.split(":", 1)[1]
    return metric.split(":", 1)[0]


def thresholds_for(spec: TaskSpec, metric: str) -> Thresholds:
    """The gate's thresholds for a score of ``metric``: for the task's own metric the task YAML's
    ``teacher_gate.proceed``/``rethink``, else ``teacher_gate.by_metric.<metric>``, else
    :data:`DEFAULT_THRESHOLDS`."""
    name = base_metric(metric) or spec.metric_name
    gate = spec.teacher_gate
    where = spec.source_file or f"{spec.name}.yaml"
    if name == spec.metric_name and gate.proceed is not None and gate.rethink is not None:
        return Thresholds(name, gate.proceed, gate.rethink, f"task YAML {where}: teacher_gate")
    if name in gate.by_metric:
        t = gate.by_metric[name]
        return Thresholds(name, t.proceed, t.rethink, f"task YAML {where}: teacher_gate.by_metric.{name}")
    proceed, rethink = DEFAULT_THRESHOLDS.get(name, DEFAULT_THRESHOLDS["exact_match"])
    return Thresholds(name, proceed, rethink, f"default for {name}")


def verdict_for(score: float | None, thresholds: Thresholds) -> str:
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return NOT_EVALUABLE
    if score >= thresholds.proceed:
        return PROCEED
    return ITERATE if score >= thresholds.rethink else RETHINK


def verdict_line(verdict: str, score: float | None, thresholds: Thresholds) -> str:
    """``RETHINK: 0.040 < 0.6 (sql_execution_match; default for sql_execution_match)``."""
    if verdict == NOT_EVALUABLE or score is None:
        return NOT_EVALUABLE
    relation = {PROCEED: f"≥ {thresholds.proceed:g}", RETHINK: f"< {thresholds.rethink:g}",
                ITERATE: f"in [{thresholds.rethink:g}, {thresholds.proceed:g})"}[verdict]
    return f"{verdict}: {score:.3f} {relation} ({thresholds.metric}; {thresholds.source})"


def gate_metric(metrics: Sequence[str]) -> tuple[str, str | None]:
    """``(metric, note)``: the metric most items were scored by, and a note where it is not the task's
    own (a fallback) or where items were scored by several."""
    counts = Counter(m for m in metrics if m)
    if not counts:
        return "", None
    metric, n = counts.most_common(1)[0]
    notes = []
    if metric.startswith("fallback:"):
        notes.append(f"scored by the fallback metric {base_metric(metric)} (no judge reachable), judged by its "
                     "thresholds")
    if len(counts) > 1:
        notes.append(f"{n} of {sum(counts.values())} items scored by {metric}: "
                     + ", ".join(f"{k} ({v})" for k, v in counts.most_common()))
    return metric, "; ".join(notes) or None


def normalised_question(text: Any) -> str:
    from distil_platform.tasks.validation import normalise_text

    return normalise_text(str(text or ""))


def match_recorded(test_rows: Sequence[Mapping[str, Any]],
                   recorded_rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """``(test rows the recorded rows answer, the recorded row answering each)``, matched by normalised
    question and, where the test row has a context (a schema, passages), by normalised context too: an
    answer written for another context is not an answer to this item. The first match wins."""
    by_question: dict[str, list[Mapping[str, Any]]] = {}
    for r in recorded_rows:
        by_question.setdefault(normalised_question(r.get("question")), []).append(r)
    rows, matched = [], []
    for row in test_rows:
        found = by_question.get(normalised_question(row.get("question")))
        if not found:
            continue
        context = normalised_question(row.get("context"))
        best = next((r for r in found if normalised_question(r.get("context")) == context), None)
        if best is None and context:
            continue
        rows.append(row)
        matched.append(best if best is not None else found[0])
    return rows, matched


@dataclass(frozen=True)
class GateDecision:
    """What ``<task>_teacher_data`` does with the latest teacher eval (:func:`gate_decision`)."""

    status: str  # a verdict, NOT_EVALUATED or NOT_APPLICABLE
    ask_teacher: bool  # False: seed-only (RETHINK, not overridden)
    note: str  # the sentence the metadata shows
    stop: bool = False  # RETHINK with ``on_rethink: stop`` and no override: the stage fails
    overridden: bool = False
    score: float | None = None
    thresholds: Thresholds | None = None


def gate_decision(spec: TaskSpec, record: Mapping[str, Any] | None, *, teacher: str, source: str,
                  override: bool = False) -> GateDecision:
    """The gate for a teacher-data run whose teacher is ``teacher`` (source ``source``), given the
    latest ``<task>_teacher_eval`` ``record`` (its metadata: ``teacher``, ``teacher_source``,
    ``verdict``, ``score``, ``metric``, ``reason``; None: never materialised). The verdict is
    recomputed from the recorded score with the task's current thresholds."""
    task = spec.name
    if record is None:
        return GateDecision(NOT_EVALUATED, True, f"gate not evaluated: {task}_teacher_eval was never materialised "
                            "(materialise it to gate the teacher)")
    seen = (str(record.get("teacher") or ""), str(record.get("teacher_source") or ""))
    if seen != (teacher, source):
        return GateDecision(NOT_APPLICABLE, True, f"gate not applicable: the latest {task}_teacher_eval measured "
                            f"{seen[0]} (source {seen[1]}), this run's teacher is {teacher} (source {source}); "
                            f"materialise {task}_teacher_eval to gate it")
    score = record.get("score")
    score = None if score is None or (isinstance(score, float) and math.isnan(score)) else float(score)
    if score is None or record.get("verdict") == NOT_EVALUABLE:
        return GateDecision(NOT_EVALUABLE, True, "gate not evaluated: the teacher was not evaluable ("
                            f"{record.get('reason') or 'no score'})")
    thresholds = thresholds_for(spec, str(record.get("metric") or spec.metric_name))
    verdict = verdict_for(score, thresholds)
    line = verdict_line(verdict, score, thresholds)
    if verdict != RETHINK:
        return GateDecision(verdict, True, f"teacher gate {line}", score=score, thresholds=thresholds)
    if override:
        return GateDecision(verdict, True, f"teacher gate {line}; overridden by run config override_teacher_gate: true",
                            overridden=True, score=score, thresholds=thresholds)
    failed = f"the teacher failed its gate ({score:.3f} < {thresholds.rethink:g}, {thresholds.metric})"
    if spec.teacher_gate.on_rethink == "stop":
        return GateDecision(verdict, False, f"stopped: {failed}; teacher_gate.on_rethink is stop (run config "
                            "override_teacher_gate: true asks the teacher anyway)", stop=True, score=score,
                            thresholds=thresholds)
    return GateDecision(verdict, False, f"seed-only: {failed}", score=score, thresholds=thresholds)


# -- gap closed ----------------------------------------------------------------------------------
def gap_reading(value: float) -> str:
    if value >= GAP_DEPLOY:
        return f"deploy (≥ {GAP_DEPLOY:g})"
    if value >= GAP_RETUNE:
        return f"retune ({GAP_RETUNE:g}–{GAP_DEPLOY:g})"
    return f"below ({GAP_RETUNE:g})"


def teacher_is_base(teacher_model: str, base_model: str) -> bool:
    """Whether the teacher is the student's base model (model-store names, as the profiles give them)."""
    return bool(teacher_model) and teacher_model.strip().lower() == (base_model or "").strip().lower()


def same_metric_items(*models: tuple[Mapping[str, float], Mapping[str, str | None]]) -> list[str]:
    """Items every model scored, each by the same metric: ``(item means, item metrics)`` per model.
    Scores of different metrics never pair (a judge's verdict with a token-F1 fallback); items whose
    metric no row recorded pair only with each other, as in the cost table's verdicts."""
    common = set(models[0][0])
    for means, _ in models[1:]:
        common &= set(means)
    out = []
    for item in sorted(common):
        seen = {metrics.get(item) or None for _, metrics in models}
        if len(seen) == 1 and "mixed" not in seen:
            out.append(item)
    return out


def gap_closed_summary(student: Mapping[str, float], base: Mapping[str, float] | None,
                       teacher: Mapping[str, float] | None, *, same_model: bool, seed: int = 0) -> dict[str, Any]:
    """The gap closed on the items the three mappings (item id -> score, already restricted to the
    same metric: :func:`same_metric_items`) share, with its interval and reading; or ``defined``
    False with the reason in ``note``. ``same_model``: the teacher is the student's base model
    (:func:`teacher_is_base`), where the ratio means nothing."""
    if same_model:
        return {"defined": False, "note": TEACHER_IS_BASE}
    if teacher is None:
        return {"defined": False, "note": "not defined: no teacher scores on these items (materialise the task's "
                "teacher_eval; a recorded teacher that answers no test question has none)"}
    if base is None:
        return {"defined": False, "note": "not defined: no zero-shot base eval on these items (materialise the "
                "task's baseline_evals)"}
    from distil_platform.economics.stats import gap_closed

    items = sorted(set(student) & set(base) & set(teacher))
    g = gap_closed({i: student[i] for i in items}, {i: base[i] for i in items}, {i: teacher[i] for i in items},
                   seed=seed)
    out: dict[str, Any] = {"n": g.n, "student": g.student, "base": g.base, "teacher": g.teacher, "method": g.method,
                           "undefined_resamples": g.undefined_resamples}
    if g.n == 0:
        return {**out, "defined": False, "note": "not defined: no item was scored by the student, the base and the "
                "teacher with the same metric"}
    if g.method == "undefined":
        return {**out, "defined": False, "note": f"not defined: the teacher ({g.teacher:.3f}) does not beat the base "
                f"({g.base:.3f}) on these {g.n} items"}
    reading = gap_reading(g.value)
    ci = ("interval unbounded: the teacher's lead over the base is too uncertain" if g.method == "unbounded"
          else f"95% CI [{g.low:.2f}, {g.high:.2f}]")
    note = (f"{g.value:.2f} ({ci}; student {g.student:.3f}, base {g.base:.3f}, teacher {g.teacher:.3f}, "
            f"n={g.n}): {reading}")
    return {**out, "defined": True, "value": g.value, "ci_low": g.low, "ci_high": g.high, "reading": reading,
            "note": note}
