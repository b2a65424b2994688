"""Cost tables: one row per model of a task — accuracy with its CI, USD per million requests, the
paired verdict against the student, the cost ratio and the break-even daily volume.

Everything is computed from what earlier stages stored (per-item predictions, per-request token
usage, throughput profiles) and a price snapshot. Nothing here calls a model, so re-pricing after a
price change is a pure recomputation.

Formulas (per request):

- API model: mean (prompt - cached) tokens x input price + mean cached tokens x cached-input price
  + mean completion tokens x output price; x 1e6 for USD per million requests.
- Self-hosted student: hardware USD/hour / (3600 x sustained RPS) x 1e6 (the benchmark's: $2.40/h at
  222 RPS = $3.00 per million requests).
- Break-even volume: a dedicated instance costs 24 x USD/hour a day, busy or not. Up to its capacity
  it beats an API model above ``24 x USD/hour / API cost per request`` requests a day; if the API
  is cheaper per request than the saturated student, there is no break-even.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distil_platform.pricing import PriceSnapshot
from distil_platform.taskspec import TaskSpec

STAGE_STUDENT_EVAL = "student_eval"
STAGE_BASELINES = "baseline_evals"
STAGE_FP8_EVAL = "throughput_fp8"  # the fp8 student's accuracy, measured by <task>_throughput

API_TIERS = ("frontier", "mid_tier")
MID_TIER_MAX_INPUT_PER_MTOK = 1.0  # "mid-tier": under $1 per million input tokens

COLUMNS = [
    "task", "model", "role", "variant", "n_items", "repeats", "accuracy", "accuracy_std", "ci_low", "ci_high",
    "usd_per_million_requests", "cost_source", "cost_basis", "cost_note", "mean_prompt_tokens",
    "mean_completion_tokens", "mean_cached_prompt_tokens", "input_usd_per_mtok", "output_usd_per_mtok",
    "price_origin", "hardware_key", "usd_per_hour", "sustained_rps", "student_result", "diff_vs_student",
    "diff_ci_low", "diff_ci_high", "mcnemar_p", "cost_ratio_vs_student", "break_even_requests_per_day",
    "snapshot_hash", "snapshot_as_of", "table_id",
]


class CostTableError(RuntimeError):
    """A cost table cannot be computed (message says what is missing and which asset makes it)."""


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


# -- inputs ------------------------------------------------------------------------------------
@dataclass
class Usage:
    """Mean tokens per request of one model on one task."""

    n_requests: int
    prompt_tokens: float
    completion_tokens: float
    cached_prompt_tokens: float = 0.0
    estimated: bool = False  # True: counted from the test prompts and reference answers
    basis: str = "llm_requests"


@dataclass
class ThroughputProfile:
    variant: str
    model: str
    backend: str
    hardware: str
    hardware_key: str
    sustained_rps: float | None
    max_achieved_rps: float | None
    slo_s: float | None = None
    peak_memory_gb: float | None = None


@dataclass
class EvaluatedModel:
    label: str
    role: str  # student / frontier / mid_tier / baseline
    variant: str
    run_id: str | None
    # Per-item scores (item_id -> list of repeat scores; None = unscorable).
    scores: dict[str, list[float | None]]
    self_hosted: bool = False


@dataclass
class CostInputs:
    task: str
    students: list[EvaluatedModel]  # bf16 first (the reference), then fp8 if measured
    baselines: list[EvaluatedModel]
    usage: dict[str, Usage]  # API models by label (measured) and skipped frontier models (estimated)
    throughput: dict[str, ThroughputProfile]  # by variant
    skipped: dict[str, str] = field(default_factory=dict)  # model -> tier, with no evaluation
    table_id: str = ""


def _item_scores(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (str(r["item_id"]), r.get("repeat") or 0)):
        score = r.get("score")
        out[str(r["item_id"])].append(None if score is None or (isinstance(score, float) and math.isnan(score))
                                      else float(score))
    return dict(out)


def _latest_run(rows: Sequence[Mapping[str, Any]]) -> str | None:
    best = max(rows, key=lambda r: r["id"], default=None)
    return best["run_id"] if best else None


def _usage_from_rows(rows: Sequence[Mapping[str, Any]], basis: str) -> Usage | None:
    rows = [r for r in rows if not r.get("error") and r.get("prompt_tokens") is not None
            and r.get("completion_tokens") is not None]
    if not rows:
        return None
    n = len(rows)
    return Usage(
        n_requests=n,
        prompt_tokens=sum(float(r["prompt_tokens"]) for r in rows) / n,
        completion_tokens=sum(float(r["completion_tokens"]) for r in rows) / n,
        cached_prompt_tokens=sum(float(r.get("cached_prompt_tokens") or 0) for r in rows) / n,
        basis=basis,
    )


def _tiers(spec: TaskSpec) -> dict[str, str]:
    return {ref.model: ref.tier for ref in spec.comparison_models}


def gather_cost_inputs(store: Any, spec: TaskSpec, *, test_rows: Sequence[Mapping[str, Any]] | None = None,
                       token_counter: Any = None) -> CostInputs:
    """Read everything a cost table needs from the results store (latest run of each stage).

    ``test_rows`` (for estimating skipped frontier models) default to the task's latest seed set.
    """
    from distil_platform.store import llm_requests, predictions, throughput_profiles

    task = spec.name
    tiers = _tiers(spec)
    student_rows = store.select(predictions, task=task, stage=STAGE_STUDENT_EVAL)
    run = _latest_run(student_rows)
    if run is None:
        raise CostTableError(f"{task}: no student evaluation in the results store ({store.url}); "
                             f"materialise {task}_student_eval first")
    student_rows = [r for r in student_rows if r["run_id"] == run]
    students = [EvaluatedModel(label=student_rows[0]["model"], role="student", variant="bf16", run_id=run,
                               scores=_item_scores(student_rows), self_hosted=True)]
    fp8_rows = store.select(predictions, task=task, stage=STAGE_FP8_EVAL)
    fp8_run = _latest_run(fp8_rows)
    if fp8_run:
        fp8_rows = [r for r in fp8_rows if r["run_id"] == fp8_run]
        students.append(EvaluatedModel(label=fp8_rows[0]["model"], role="student", variant="fp8", run_id=fp8_run,
                                       scores=_item_scores(fp8_rows), self_hosted=True))

    baseline_rows = store.select(predictions, task=task, stage=STAGE_BASELINES)
    base_run = _latest_run(baseline_rows)
    baselines: list[EvaluatedModel] = []
    usage: dict[str, Usage] = {}
    if base_run:
        by_model: dict[str, list[dict]] = defaultdict(list)
        for r in baseline_rows:
            if r["run_id"] == base_run:
                by_model[r["model"]].append(r)
        request_rows = store.select(llm_requests, task=task, stage=STAGE_BASELINES, run_id=base_run)
        for label, rows in sorted(by_model.items()):
            variant = rows[0].get("variant") or ""
            # Served here (the zero-shot base, or a model-store comparison model): priced like the student.
            self_hosted = variant == "zero_shot" or tiers.get(label, "baseline") not in API_TIERS
            role = "baseline" if self_hosted else tiers[label]
            baselines.append(EvaluatedModel(label=label, role=role, variant=variant, run_id=base_run,
                                            scores=_item_scores(rows), self_hosted=self_hosted))
            if not self_hosted:
                measured = _usage_from_rows([r for r in request_rows if r["model"] == label], "llm_requests")
                measured = measured or _usage_from_rows(rows, "predictions")
                if measured:
                    usage[label] = measured

    evaluated = {b.label for b in baselines}
    skipped = {m: t for m, t in tiers.items() if t in API_TIERS and m not in evaluated}
    if skipped:
        rows = list(test_rows) if test_rows is not None else _latest_test_rows(store, task)
        for model in skipped:
            usage[model] = estimate_usage(spec, model, rows, token_counter=token_counter)

    throughput: dict[str, ThroughputProfile] = {}
    tp_rows = store.select(throughput_profiles, task=task)
    tp_run = _latest_run(tp_rows)
    for r in tp_rows:
        if r["run_id"] == tp_run:
            throughput[r["variant"]] = ThroughputProfile(
                variant=r["variant"], model=r["model"], backend=r["backend"], hardware=r["hardware"],
                hardware_key=r["hardware_key"], sustained_rps=r["sustained_rps"],
                max_achieved_rps=r["max_achieved_rps"], slo_s=r["slo_s"], peak_memory_gb=r["peak_memory_gb"])
    return CostInputs(task=task, students=students, baselines=baselines, usage=usage, throughput=throughput,
                      skipped=skipped)


def _latest_test_rows(store: Any, task: str) -> list[dict[str, Any]]:
    import polars as pl

    from distil_platform.store import seed_sets

    rows = store.select(seed_sets, task=task)
    if not rows:
        raise CostTableError(f"{task}: no seed set in the results store to estimate skipped models from; "
                             f"materialise {task} first")
    latest = max(rows, key=lambda r: r["id"])
    return pl.read_parquet(latest["test_path"]).to_dicts()


def estimate_usage(spec: TaskSpec, model: str, rows: Sequence[Mapping[str, Any]], *,
                   token_counter: Any = None) -> Usage:
    """Tokens per request a model would use on the test set: its tokenizer's count (litellm's
    ``token_counter``) of the exact eval prompt, and of the reference answer as the completion.
    Reasoning models spend more completion tokens than the answer: this is a lower bound."""
    from distil_platform.prompts import build_messages, format_answer

    if token_counter is None:
        import os

        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch prices over the network here
        import litellm

        token_counter = litellm.token_counter
    if not rows:
        raise CostTableError(f"{spec.name}: no test rows to estimate {model}'s token usage from")
    prompt = completion = 0
    for row in rows:
        prompt += token_counter(model=model, messages=build_messages(spec, dict(row)))
        completion += token_counter(model=model, text=format_answer(spec, row["answer"]))
    n = len(rows)
    return Usage(n_requests=n, prompt_tokens=prompt / n, completion_tokens=completion / n, estimated=True,
                 basis="litellm.token_counter")


# -- the table ---------------------------------------------------------------------------------
def _item_means(model: EvaluatedModel) -> dict[str, float]:
    """Mean score per item over its scored repeats; items with no score are left out."""
    out = {}
    for k, vals in model.scores.items():
        vals = [v for v in vals if v is not None]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out


def _summary(model: EvaluatedModel) -> dict[str, Any]:
    from distil_platform.stats import bootstrap_ci, mean_std

    means = _item_means(model)
    if not means:
        return {"n_items": 0, "repeats": 0, "accuracy": None, "accuracy_std": None, "ci_low": None, "ci_high": None}
    repeats = max(len(v) for v in model.scores.values())
    by_repeat = [[vals[r] for vals in model.scores.values() if r < len(vals) and vals[r] is not None]
                 for r in range(repeats)]
    repeat_means = [sum(v) / len(v) for v in by_repeat if v]
    ci = bootstrap_ci(means)
    std = mean_std(repeat_means).std if len(repeat_means) > 1 else 0.0
    return {"n_items": len(means), "repeats": repeats, "accuracy": sum(means.values()) / len(means),
            "accuracy_std": float(std), "ci_low": float(ci.low), "ci_high": float(ci.high)}


def _versus(student: EvaluatedModel, other: EvaluatedModel) -> dict[str, Any]:
    from distil_platform.stats import compare

    s, o = _item_means(student), _item_means(other)
    common = sorted(set(s) & set(o))
    if not common:
        return {}
    result = compare([s[i] for i in common], [o[i] for i in common])
    return {"student_result": result["verdict"], "diff_vs_student": result["diff"],
            "diff_ci_low": result["ci_low"], "diff_ci_high": result["ci_high"], "mcnemar_p": result["mcnemar_p"]}


def _student_cost(profile: ThroughputProfile | None, snapshot: PriceSnapshot, task: str) -> dict[str, Any]:
    if profile is None:
        return {"usd_per_million_requests": None, "cost_source": None, "cost_basis": "self_hosted",
                "cost_note": f"no throughput profile: materialise {task}_throughput"}
    hw = snapshot.hardware_price(profile.hardware_key)
    out = {"cost_basis": "self_hosted", "hardware_key": hw.key, "usd_per_hour": hw.usd_per_hour,
           "sustained_rps": profile.sustained_rps}
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
    price = snapshot.find_model(model)
    if usage is None:
        return {"usd_per_million_requests": None, "cost_source": None, "cost_basis": "api",
                "cost_note": "no token usage recorded"}
    out: dict[str, Any] = {"cost_basis": "api", "mean_prompt_tokens": usage.prompt_tokens,
                           "mean_completion_tokens": usage.completion_tokens,
                           "mean_cached_prompt_tokens": usage.cached_prompt_tokens}
    if price is None:
        out.update(usd_per_million_requests=None, cost_source=None,
                   cost_note=f"{model} has no price in snapshot {snapshot.hash[:12]}")
        return out
    per_request = api_usd_per_request(usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens,
                                      price.input_per_mtok, price.output_per_mtok, price.cached_input_per_mtok)
    note = (f"tokens from {usage.basis} over {usage.n_requests} request(s)" if not usage.estimated
            else f"not evaluated (no API key): tokens estimated with {usage.basis} on {usage.n_requests} test "
                 "prompts and reference answers")
    out.update(usd_per_million_requests=per_request * 1e6, cost_source="estimated" if usage.estimated else "measured",
               cost_note=note, input_usd_per_mtok=price.input_per_mtok, output_usd_per_mtok=price.output_per_mtok,
               price_origin=price.origin)
    return out


def build_cost_table(inputs: CostInputs, snapshot: PriceSnapshot) -> list[dict[str, Any]]:
    """Rows of the cost table (see :data:`COLUMNS`). Pure: no store, no model."""
    if not inputs.students:
        raise CostTableError(f"{inputs.task}: no student evaluation")
    reference = inputs.students[0]
    common = {"task": inputs.task, "snapshot_hash": snapshot.hash, "snapshot_as_of": snapshot.as_of,
              "table_id": inputs.table_id}
    rows: list[dict[str, Any]] = []
    student_cost = None
    bf16_profile = inputs.throughput.get("bf16") or next(iter(inputs.throughput.values()), None)
    for student in inputs.students:
        profile = inputs.throughput.get(student.variant)
        row = {**common, "model": student.label, "role": "student", "variant": student.variant,
               **_summary(student), **_student_cost(profile, snapshot, inputs.task)}
        if student is not reference:
            row.update(_versus(reference, student))
        if student is reference:
            student_cost = row["usd_per_million_requests"]
        rows.append(row)
    for base in inputs.baselines:
        row = {**common, "model": base.label, "role": base.role, "variant": base.variant, **_summary(base),
               **_versus(reference, base)}
        if base.self_hosted:
            cost = _student_cost(bf16_profile, snapshot, inputs.task)
            if cost.get("usd_per_million_requests") is not None:
                cost["cost_source"] = "estimated"
                cost["cost_note"] = ("served like the student (same base architecture and serving stack): "
                                     "priced with the student's throughput")
            row.update(cost)
        else:
            row.update(_api_cost(base.label, inputs.usage.get(base.label), snapshot))
        rows.append(row)
    for model, tier in sorted(inputs.skipped.items()):
        rows.append({**common, "model": model, "role": tier, "variant": tier, "n_items": 0, "repeats": 0,
                     "accuracy": None, "accuracy_std": None, "ci_low": None, "ci_high": None,
                     **_api_cost(model, inputs.usage.get(model), snapshot)})

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
    schema = {c: (pl.Utf8 if c in _TEXT_COLUMNS else pl.Int64 if c in ("n_items", "repeats") else pl.Float64)
              for c in COLUMNS}
    df = pl.DataFrame([dict(r) for r in rows], schema=schema)
    parquet, csv = out_dir / "cost_table.parquet", out_dir / "cost_table.csv"
    df.write_parquet(parquet)
    df.write_csv(csv)
    return parquet, csv


_TEXT_COLUMNS = {"task", "model", "role", "variant", "cost_source", "cost_basis", "cost_note", "price_origin",
                 "hardware_key", "student_result", "snapshot_hash", "snapshot_as_of", "table_id"}


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


def cost_table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| model | role | accuracy (95% CI) | ± std | $/M requests | source | student | cost × student "
             "| break-even |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = ("–" if r.get("accuracy") is None
               else f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        std = "–" if r.get("accuracy_std") is None else f"{r['accuracy_std']:.3f}"
        ratio = "–" if r.get("cost_ratio_vs_student") is None else f"{r['cost_ratio_vs_student']:.3g}×"
        lines.append(f"| {r['model']} | {r['role']}{'/' + r['variant'] if r['role'] == 'student' else ''} | {acc} "
                     f"| {std} | {fmt_usd(r.get('usd_per_million_requests'))} | {r.get('cost_source') or '–'} "
                     f"| {r.get('student_result') or '–'} | {ratio} | {fmt_volume(r.get('break_even_requests_per_day'))} |")
    return "\n".join(lines)


def cost_rows_for_store(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the store's ``cost_rows`` table (the full row as JSON; NaN made None)."""
    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and (math.isnan(v) or math.isinf(v)) else v

    return [{"task": r["task"], "snapshot_hash": r["snapshot_hash"], "model": r["model"],
             "row": {k: clean(v) for k, v in r.items()}} for r in rows]


def latest_cost_table(store: Any, task: str) -> list[dict[str, Any]]:
    """The most recently written cost table of ``task`` ([] if none)."""
    from distil_platform.store import cost_rows

    rows = store.select(cost_rows, task=task)
    if not rows:
        return []
    latest = max(rows, key=lambda r: r["id"])
    table_id = latest["row"].get("table_id")
    return [r["row"] for r in sorted(rows, key=lambda r: r["id"]) if r["row"].get("table_id") == table_id]
