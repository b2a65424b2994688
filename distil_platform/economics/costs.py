"""Cost tables: one row per model of a task — accuracy with its CI, USD per million requests, the
paired verdict against the student, the cost ratio and the break-even daily volume.

Everything is computed from what earlier stages stored (per-item predictions, per-request token
usage, throughput profiles) and a price snapshot. Nothing here calls a model, so re-pricing after a
price change is a pure recomputation.

Formulas (per request):

- API model: mean (prompt - cached) tokens x input price + mean cached tokens x cached-input price
  + mean completion tokens x output price; x 1e6 for USD per million requests.
- The production model (from its traces, "your current model: <name>"): the API formula on its mean
  logged tokens per call (``production_row``).
- Self-hosted student: hardware USD/hour / (3600 x sustained RPS) x 1e6 (the benchmark's: $2.40/h at
  222 RPS = $3.00 per million requests).
- Break-even volume: a dedicated instance costs 24 x USD/hour a day, busy or not. Up to its capacity
  it beats an API model above ``24 x USD/hour / API cost per request`` requests a day; if the API
  is cheaper per request than the saturated student, there is no break-even.

Verdicts (``stats.compare``, margin δ from the task YAML) pair only items scored by the same
metric; every student variant gets one against every model (``verdicts``). Lineage: each student
row names the checkpoint it measured (student run id, checkpoint fingerprint from the
``student_lineage`` table); throughput of another checkpoint is refused, and the seed-only ablation
is a baseline row, never the student (``economics.cost_inputs`` reads the inputs from the results
store). A model without a price is an error naming it unless the pricing file declares it
``unpriced`` (then "price unknown", with the reason).

Each student row also carries the teacher's score (the latest ``<task>_teacher_eval``), the gap closed
(student − base) / (teacher − base) with its paired bootstrap CI and reading, and what the teacher gate
did to that student's data (``evaluation.teacher_gate``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from distil_platform.economics.cost_inputs import (
    CostInputs,
    CostTableError,
    EvaluatedModel,
    ProductionModel,
    ThroughputProfile,
    Usage,
)
from distil_platform.economics.pricing import PriceSnapshot
from distil_platform.economics.production import production_label, production_price

MID_TIER_MAX_INPUT_PER_MTOK = 1.0  # "mid-tier": under $1 per million input tokens

COLUMNS = [
    "task", "model", "role", "variant", "n_items", "repeats", "accuracy", "accuracy_std", "ci_low", "ci_high",
    "ci_method", "metric", "usd_per_million_requests", "cost_source", "cost_basis", "cost_note", "mean_prompt_tokens",
    "mean_completion_tokens", "mean_cached_prompt_tokens", "input_usd_per_mtok", "output_usd_per_mtok",
    "cached_input_usd_per_mtok", "price_origin", "price_source", "price_as_of", "hardware_key", "usd_per_hour",
    "sustained_rps", "student_result", "diff_vs_student", "diff_ci_low", "diff_ci_high", "mcnemar_p",
    "verdict_test", "verdict_note", "n_paired", "margin", "verdicts", "cost_ratio_vs_student", "break_even_requests_per_day",
    "teacher_model", "teacher_accuracy", "teacher_ci_low", "teacher_ci_high", "gap_closed", "gap_closed_ci_low",
    "gap_closed_ci_high", "gap_closed_note", "teacher_gate",
    "eval_run_id", "student_run_id", "checkpoint_fingerprint", "lineage", "judge",
    "snapshot_hash", "snapshot_as_of", "table_id", "candidate", "candidate_choice", "candidate_choice_note", "versus",
]


# -- formulas ----------------------------------------------------------------------------------
def api_usd_per_request(prompt_tokens: float, completion_tokens: float, cached_prompt_tokens: float,
                        input_per_mtok: float, output_per_mtok: float, cached_input_per_mtok: float) -> float:
    cached = min(max(cached_prompt_tokens or 0.0, 0.0), prompt_tokens)
    return ((prompt_tokens - cached) * input_per_mtok + cached * cached_input_per_mtok
            + completion_tokens * output_per_mtok) / 1e6


def self_hosted_usd_per_million_requests(usd_per_hour: float, requests_per_second: float) -> float:
    if requests_per_second <= 0:
        raise ValueError(f"requests_per_second must be positive, got {requests_per_second}")
    return usd_per_hour / (3600.0 * requests_per_second) * 1e6


def break_even_requests_per_day(usd_per_hour: float, api_usd_per_million: float,
                                student_usd_per_million: float) -> float | None:
    """Daily volume above which one dedicated instance (24 x USD/hour a day) costs less than the API.
    None when the API is no dearer per request than the student at full load (never breaks even)."""
    if api_usd_per_million <= 0 or api_usd_per_million <= student_usd_per_million:
        return None
    return 24.0 * usd_per_hour / (api_usd_per_million / 1e6)


# -- the production model (from its traces) ------------------------------------------------------
def production_row(prod: ProductionModel, snapshot: PriceSnapshot, common: Mapping[str, Any],
                   margin: float, scored: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The cost-table row of the model the traces logged: its mean logged tokens per request at the
    snapshot's prices (cached prompt tokens at the cached rate); no model call. ``scored``: its
    accuracy and verdict columns where its trace answers were scored against the test set's own
    labels (``labelled: false``); none when its answers are the labels (it agrees with them by
    construction) or no trace call asks a test question."""
    row: dict[str, Any] = {**common, "model": production_label(prod.model), "role": "production",
                           "variant": "traces", "n_items": 0, "repeats": 0, "accuracy": None, "accuracy_std": None,
                           "ci_low": None, "ci_high": None, "margin": margin, "cost_basis": "api", **(scored or {})}
    notes = [prod.labels_note] if prod.labels_note else []
    if prod.scored_note:
        notes.append(prod.scored_note)
    price = production_price(snapshot, prod.model)
    if prod.usage is not None:
        row.update(mean_prompt_tokens=prod.usage.prompt_tokens, mean_completion_tokens=prod.usage.completion_tokens,
                   mean_cached_prompt_tokens=prod.usage.cached_prompt_tokens)
    if price is None:
        row.update(usd_per_million_requests=None, cost_source=None, cost_note="; ".join(
            [f"price unknown: {prod.model} is not in price snapshot {snapshot.hash[:12]}; add models.{prod.model} "
             "to the pricing file and re-materialise `pricing`", *notes]))
        return row
    row.update(input_usd_per_mtok=price.input_per_mtok, output_usd_per_mtok=price.output_per_mtok,
               cached_input_usd_per_mtok=price.cached_input_per_mtok, price_origin=price.origin,
               price_source=price.source, price_as_of=price.as_of)
    if prod.usage is None:
        row.update(usd_per_million_requests=None, cost_source=None,
                   cost_note="; ".join(["no token usage logged in the traces", *notes]))
        return row
    u = prod.usage
    per_request = api_usd_per_request(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens,
                                      price.input_per_mtok, price.output_per_mtok, price.cached_input_per_mtok)
    row.update(usd_per_million_requests=per_request * 1e6, cost_source="measured", cost_note="; ".join(
        [f"logged usage of {u.n_requests} calls in {prod.source or 'the traces'}: {u.prompt_tokens:.1f} prompt "
         f"({u.cached_prompt_tokens:.1f} cached, at the cached price) + {u.completion_tokens:.1f} completion tokens "
         "per request", *notes]))
    return row


# -- the table ---------------------------------------------------------------------------------
def _item_means(model: EvaluatedModel) -> dict[str, float]:
    """Mean score per item over its scored repeats; items with no score are left out."""
    out = {}
    for k, vals in model.scores.items():
        vals = [v for v in vals if v is not None]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out


def _metric_summary(model: EvaluatedModel, items: Iterable[str]) -> str | None:
    counts: dict[str, int] = defaultdict(int)
    for k in items:
        counts[model.metrics.get(k) or ""] += 1
    named = {k: v for k, v in counts.items() if k}
    if not named:
        return None
    if len(counts) == 1:
        return next(iter(named))
    return ", ".join(f"{k or 'unrecorded'} ({v})" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _summary(model: EvaluatedModel) -> dict[str, Any]:
    from distil_platform.economics.stats import mean_std, score_interval

    means = _item_means(model)
    if not means:
        return {"n_items": 0, "repeats": 0, "accuracy": None, "accuracy_std": None, "ci_low": None, "ci_high": None}
    repeats = max(len(v) for v in model.scores.values())
    by_repeat = [[vals[r] for vals in model.scores.values() if r < len(vals) and vals[r] is not None]
                 for r in range(repeats)]
    repeat_means = [sum(v) / len(v) for v in by_repeat if v]
    ci = score_interval(means)  # Wilson for 0/1 item scores, BCa bootstrap otherwise
    std = mean_std(repeat_means).std if len(repeat_means) > 1 else 0.0
    return {"n_items": len(means), "repeats": repeats, "accuracy": sum(means.values()) / len(means),
            "accuracy_std": float(std), "ci_low": float(ci.low), "ci_high": float(ci.high), "ci_method": ci.method,
            "metric": _metric_summary(model, means)}


def compare_models(student: EvaluatedModel, other: EvaluatedModel, margin: float) -> dict[str, Any] | None:
    """``stats.compare`` of ``student`` vs ``other`` on the items both scored **with the same
    metric** (a judge score never pairs with a fallback score); None when no item pairs."""
    from distil_platform.economics.stats import compare

    s, o = _item_means(student), _item_means(other)
    common = sorted(k for k in set(s) & set(o)
                    if student.metrics.get(k) == other.metrics.get(k) and student.metrics.get(k) != "mixed")
    if not common:
        return None
    result = compare([s[i] for i in common], [o[i] for i in common], margin=margin)
    result["n_metric_mismatch"] = len(set(s) & set(o)) - len(common)
    return result


def _verdict_entry(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("verdict", "diff", "ci_low", "ci_high", "test", "mcnemar_p", "n", "margin",
                                   "n_metric_mismatch", "verdict_note")}


def _versus(reference: EvaluatedModel, other: EvaluatedModel, students: Sequence[EvaluatedModel],
            margin: float) -> dict[str, Any]:
    """Verdict columns of ``other``'s row: the reference student's, plus ``verdicts`` = every
    student variant's (other than ``other`` itself) against it."""
    out: dict[str, Any] = {"margin": margin}
    verdicts = {}
    for student in students:
        if student is other:
            continue
        result = compare_models(student, other, margin)
        if result is None:
            continue
        verdicts[student.variant] = _verdict_entry(result)
        if student is reference:
            out.update(student_result=result["verdict"], diff_vs_student=result["diff"],
                       diff_ci_low=result["ci_low"], diff_ci_high=result["ci_high"],
                       mcnemar_p=result["mcnemar_p"], verdict_test=result["test"], n_paired=result["n"],
                       verdict_note=result["verdict_note"])
    out["verdicts"] = verdicts
    return out


def _student_cost(profile: ThroughputProfile | None, snapshot: PriceSnapshot, task: str,
                  refused: str | None = None) -> dict[str, Any]:
    if profile is None:
        return {"usd_per_million_requests": None, "cost_source": None, "cost_basis": "self_hosted",
                "cost_note": refused or f"no throughput profile of this checkpoint: materialise {task}_throughput"}
    hw = snapshot.hardware_price(profile.hardware_key)
    out = {"cost_basis": "self_hosted", "hardware_key": hw.key, "usd_per_hour": hw.usd_per_hour,
           "sustained_rps": profile.sustained_rps, "price_source": hw.source, "price_as_of": hw.as_of}
    if profile.sustained_rps and profile.sustained_rps > 0:
        out.update(usd_per_million_requests=self_hosted_usd_per_million_requests(hw.usd_per_hour, profile.sustained_rps),
                   cost_source="measured", cost_note=f"{profile.backend} on {profile.hardware}")
    elif profile.max_achieved_rps and profile.max_achieved_rps > 0:
        # No offered rate met the latency SLO (common on CPU): price at the highest throughput the
        # server reached, and say so.
        out.update(usd_per_million_requests=self_hosted_usd_per_million_requests(hw.usd_per_hour,
                                                                                  profile.max_achieved_rps),
                   cost_source="estimated",
                   cost_note=f"no offered rate met the {profile.slo_s or '?'} s p95 SLO; priced at the max achieved "
                             f"{profile.max_achieved_rps:.3g} req/s ({profile.backend} on {profile.hardware})")
    else:
        out.update(usd_per_million_requests=None, cost_source=None,
                   cost_note="the throughput profile has no completed requests")
    return out


def _api_cost(model: str, usage: Usage | None, snapshot: PriceSnapshot) -> dict[str, Any]:
    from distil_platform.economics.pricing_file import PricingError

    price = snapshot.find_model(model)
    if price is None:
        reason = snapshot.declared_unpriced.get(model)
        if reason is None:
            raise PricingError(
                f"{model} has no price in snapshot {snapshot.hash[:12]} ({snapshot.source}) and the pricing file does "
                f"not declare it unpriced: add models.{model} (or unpriced.{model} with the reason) to the pricing "
                "file and re-materialise `pricing`")
    out: dict[str, Any] = {"cost_basis": "api"}
    if usage is not None:
        out.update(mean_prompt_tokens=usage.prompt_tokens, mean_completion_tokens=usage.completion_tokens,
                   mean_cached_prompt_tokens=usage.cached_prompt_tokens)
    if price is None:
        out.update(usd_per_million_requests=None, cost_source=None,
                   cost_note=f"price unknown (declared in the pricing file: {snapshot.declared_unpriced[model]})")
        return out
    out.update(input_usd_per_mtok=price.input_per_mtok, output_usd_per_mtok=price.output_per_mtok,
               cached_input_usd_per_mtok=price.cached_input_per_mtok, price_origin=price.origin,
               price_source=price.source, price_as_of=price.as_of)
    if usage is None:
        out.update(usd_per_million_requests=None, cost_source=None, cost_note="no token usage recorded")
        return out
    per_request = api_usd_per_request(usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens,
                                      price.input_per_mtok, price.output_per_mtok, price.cached_input_per_mtok)
    note = (f"tokens from {usage.basis} over {usage.n_requests} request(s)" if not usage.estimated
            else f"not evaluated (no API key): tokens estimated with {usage.basis} on {usage.n_requests} test "
                 "prompts and reference answers")
    if usage.cached_prompt_tokens and not usage.estimated:
        note += f"; {usage.cached_prompt_tokens:.0f} cached prompt tokens/request at the cached price"
    out.update(usd_per_million_requests=per_request * 1e6, cost_source="estimated" if usage.estimated else "measured",
               cost_note=note)
    return out


def _lineage_columns(model: EvaluatedModel, profile: ThroughputProfile | None = None) -> dict[str, Any]:
    lin = model.lineage
    if lin is None:
        return {"eval_run_id": model.run_id}
    text = lin.describe()
    if profile is not None:
        text += f"; throughput run {(profile.run_id or '?')[:8]}"
    return {"eval_run_id": model.run_id, "student_run_id": lin.student_run_id,
            "checkpoint_fingerprint": lin.fingerprint, "lineage": text}


def _teacher_columns(student: EvaluatedModel, inputs: CostInputs) -> dict[str, Any]:
    """A student row's teacher columns: the teacher's score, the gap closed ((student − base) /
    (teacher − base) on the items all three scored with the same metric, paired bootstrap CI) and what
    the teacher gate did to this student's training data (``evaluation.teacher_gate``)."""
    from distil_platform.economics.cost_inputs import TEACHER_IS_BASE_VARIANT
    from distil_platform.evaluation.teacher_gate import gap_closed_summary, same_metric_items, teacher_is_base

    teacher = inputs.teacher
    base = next((b for b in inputs.baselines if b.variant == "zero_shot"), None)
    out: dict[str, Any] = {"teacher_gate": inputs.gate_notes.get(student.lineage.student_run_id or "")
                           if student.lineage is not None else None}
    if teacher is not None:
        summary = _summary(teacher)
        out.update(teacher_model=teacher.label, teacher_accuracy=summary["accuracy"],
                   teacher_ci_low=summary["ci_low"], teacher_ci_high=summary["ci_high"])
    same = teacher is not None and (teacher.variant == TEACHER_IS_BASE_VARIANT or (
        base is not None and teacher_is_base(teacher.label, base.label.removesuffix(" (zero-shot)"))))
    means = {"s": _item_means(student), "b": _item_means(base) if base else {}, "t": _item_means(teacher) if teacher else {}}
    items = (same_metric_items((means["s"], student.metrics), (means["b"], base.metrics), (means["t"], teacher.metrics))
             if base is not None and teacher is not None else [])
    gap = gap_closed_summary({i: means["s"][i] for i in items},
                             {i: means["b"][i] for i in items} if base is not None else None,
                             {i: means["t"][i] for i in items} if teacher is not None else None, same_model=same)
    out.update(gap_closed=gap.get("value"), gap_closed_ci_low=gap.get("ci_low"), gap_closed_ci_high=gap.get("ci_high"),
               gap_closed_note=gap["note"])
    return out


def build_cost_table(inputs: CostInputs, snapshot: PriceSnapshot) -> list[dict[str, Any]]:
    """Rows of the cost table (see :data:`COLUMNS`). Pure: no store, no model."""
    if not inputs.students:
        raise CostTableError(f"{inputs.task}: no student evaluation")
    reference = inputs.students[0]
    margin = inputs.margin
    common = {"task": inputs.task, "snapshot_hash": snapshot.hash, "snapshot_as_of": snapshot.as_of,
              "table_id": inputs.table_id, "judge": inputs.judge}
    rows: list[dict[str, Any]] = []
    student_cost = None
    reference_profile = inputs.throughput.get(reference.variant) or next(iter(inputs.throughput.values()), None)
    for student in inputs.students:
        profile = inputs.throughput.get(student.variant)
        row = {**common, "model": student.label, "role": "student", "variant": student.variant,
               **_summary(student), **_student_cost(profile, snapshot, inputs.task, inputs.throughput_note),
               **_lineage_columns(student, profile), **_versus(reference, student, inputs.students, margin),
               **_teacher_columns(student, inputs)}
        if student is reference:
            student_cost = row["usd_per_million_requests"]
        rows.append(row)
    for base in inputs.baselines:
        row = {**common, "model": base.label, "role": base.role, "variant": base.variant, **_summary(base),
               **_lineage_columns(base), **_versus(reference, base, inputs.students, margin)}
        if base.self_hosted:
            cost = _student_cost(reference_profile, snapshot, inputs.task, inputs.throughput_note)
            if cost.get("usd_per_million_requests") is not None:
                cost["cost_source"] = "estimated"
                cost["cost_note"] = ("served like the student (same base architecture and serving stack): "
                                     "priced with the student's throughput")
            row.update(cost)
        else:
            row.update(_api_cost(base.price_model or base.label, inputs.usage.get(base.label), snapshot))
        rows.append(row)
    for model, tier in sorted(inputs.skipped.items()):
        rows.append({**common, "model": model, "role": tier, "variant": tier, "n_items": 0, "repeats": 0,
                     "accuracy": None, "accuracy_std": None, "ci_low": None, "ci_high": None, "margin": margin,
                     **_api_cost(model, inputs.usage.get(model), snapshot)})
    if inputs.production is not None:
        scored = inputs.production.evaluated
        rows.append(production_row(inputs.production, snapshot, common, margin, scored=None if scored is None else
                                   {**_summary(scored), **_versus(reference, scored, inputs.students, margin),
                                    "eval_run_id": scored.run_id}))

    hw_hour = next((r.get("usd_per_hour") for r in rows if r["role"] == "student" and r.get("usd_per_hour")), None)
    for row in rows:
        cost = row.get("usd_per_million_requests")
        row["cost_ratio_vs_student"] = (cost / student_cost if cost is not None and student_cost else None)
        row["break_even_requests_per_day"] = (
            break_even_requests_per_day(hw_hour, cost, student_cost)
            if row.get("cost_basis") == "api" and cost is not None and student_cost is not None and hw_hour else None)
    return [{c: row.get(c) for c in COLUMNS} for row in rows]


# -- outputs -----------------------------------------------------------------------------------
def write_cost_table(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    import polars as pl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = {c: (pl.Utf8 if c in _TEXT_COLUMNS else pl.Int64 if c in _INT_COLUMNS else pl.Float64)
              for c in COLUMNS}
    df = pl.DataFrame([{**r, **{c: json.dumps(r.get(c) or {}, sort_keys=True, default=str) for c in ("verdicts", "versus")}}
                       for r in rows], schema=schema)
    parquet, csv = out_dir / "cost_table.parquet", out_dir / "cost_table.csv"
    df.write_parquet(parquet)
    df.write_csv(csv)
    return parquet, csv


_TEXT_COLUMNS = {"task", "model", "role", "variant", "ci_method", "metric", "cost_source", "cost_basis", "cost_note",
                 "price_origin", "price_source", "price_as_of", "hardware_key", "student_result", "verdict_test",
                 "verdict_note", "verdicts", "eval_run_id", "student_run_id", "checkpoint_fingerprint", "lineage", "judge",
                 "snapshot_hash", "snapshot_as_of", "table_id", "teacher_model", "gap_closed_note", "teacher_gate",
                 "candidate", "candidate_choice", "candidate_choice_note", "versus"}
_INT_COLUMNS = {"n_items", "repeats", "n_paired"}


def fmt_usd(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"${value:,.0f}"
    if value >= 1:
        return f"${value:,.2f}"
    return f"${value:.3g}"


def fmt_volume(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}/day"


def _source_cell(row: Mapping[str, Any]) -> str:
    if row.get("cost_source"):
        return row["cost_source"]
    return "price unknown" if str(row.get("cost_note") or "").startswith("price unknown") else "–"


def cost_table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    from distil_platform.economics.stats import verdict_label

    lines = [("| model | role | accuracy (95% CI) | ± std | $/M requests | source | student vs model (test) "
              "| cost × student | break-even |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = ("–" if r.get("accuracy") is None
               else f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        std = "–" if r.get("accuracy_std") is None else f"{r['accuracy_std']:.3f}"
        ratio = "–" if r.get("cost_ratio_vs_student") is None else f"{r['cost_ratio_vs_student']:.3g}×"
        verdict = verdict_label(r.get("student_result"), r.get("margin"))
        if r.get("student_result"):
            verdict += f" ({r.get('verdict_test')}, n={r.get('n_paired')})"
            if r.get("verdict_note"):
                verdict += f"; {r['verdict_note']}"
        lines.append(f"| {r['model']} | {r['role']}{'/' + r['variant'] if r['role'] == 'student' else ''} | {acc} "
                     f"| {std} | {fmt_usd(r.get('usd_per_million_requests'))} | {_source_cell(r)} "
                     f"| {verdict} | {ratio} | {fmt_volume(r.get('break_even_requests_per_day'))} |")
    return "\n".join(lines)


def teacher_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per student row: teacher, student and zero-shot base side by side, the gap closed, and what the
    teacher gate did ("seed-only: the teacher failed its gate (...)")."""
    base = next((r for r in rows if r.get("variant") == "zero_shot" and r.get("accuracy") is not None), None)

    def score(acc, lo, hi) -> str:
        return "–" if acc is None else f"{acc:.3f} [{lo:.3f}, {hi:.3f}]"

    lines = []
    for r in rows:
        if r.get("role") != "student":
            continue
        teacher = (f"{r['teacher_model']} {score(r.get('teacher_accuracy'), r.get('teacher_ci_low'), r.get('teacher_ci_high'))}"
                   if r.get("teacher_model") else "not evaluated")
        text = (f"{r['model']} ({r['variant']}): teacher {teacher} · student "
                f"{score(r.get('accuracy'), r.get('ci_low'), r.get('ci_high'))} · base "
                + (f"{base['model']} {score(base['accuracy'], base['ci_low'], base['ci_high'])}" if base else "not evaluated")
                + f"; gap closed {r.get('gap_closed_note') or '–'}")
        if r.get("teacher_gate"):
            text += f"; teacher data: {r['teacher_gate']}"
        lines.append(text)
    return lines


def cost_rows_for_store(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the store's ``cost_rows`` table (the full row as JSON; NaN made None)."""
    def clean(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items()}
        return None if isinstance(v, float) and (math.isnan(v) or math.isinf(v)) else v

    return [{"task": r["task"], "snapshot_hash": r["snapshot_hash"], "model": r["model"],
             "row": {k: clean(v) for k, v in r.items()}} for r in rows]


def latest_cost_table(store: Any, task: str, table_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The cost table of ``task`` ([] if none). ``table_ids``: the ids of its successful
    materialisations, newest first (the assets pass Dagster's record): the first with rows. None:
    the most recently written table, successful or not (offline inspection only)."""
    from distil_platform.storage.store import cost_rows

    rows = store.select(cost_rows, task=task)
    if not rows:
        return []
    if table_ids is None:
        table_id = max(rows, key=lambda r: r["id"])["row"].get("table_id")
    else:
        written = {r["row"].get("table_id") for r in rows}
        table_id = next((t for t in table_ids if t in written), None)
        if table_id is None:
            return []
    return [r["row"] for r in sorted(rows, key=lambda r: r["id"]) if r["row"].get("table_id") == table_id]
