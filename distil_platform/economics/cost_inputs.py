"""What a cost table is computed from, read from the results store (:func:`gather_cost_inputs`):
every model's per-item scores and metrics, the API models' token usage (measured, or estimated from
the test prompts for frontier models that were skipped) and the student's throughput profile.

Lineage (``storage.lineage``): the reference student is the latest student eval that is not the
seed-only ablation (that one is a baseline row, never the student); a throughput profile of another
checkpoint is refused.

Which runs count (``runs``): the assets pass, per stage, the run ids of the upstream asset's
*successful* materialisations, read from Dagster's event log (``assets/published.py``); rows of any
other run (a run that failed after writing some rows) are never read, only named in
``CostInputs.ignored_runs``. Without ``runs`` (offline inspection: tests, benchmarks) each stage's
newest rows are read, as the store alone can tell.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distil_platform.economics.production import PRODUCTION_PREFIX, production_label
from distil_platform.storage.lineage import Lineage, lineage, read_lineage_rows
from distil_platform.tasks.spec import TaskSpec

STAGE_STUDENT_EVAL = "student_eval"
STAGE_BASELINES = "baseline_evals"
STAGE_FRONTIER = "frontier_evals"
STAGE_FP8_EVAL = "throughput_fp8"  # the fp8 student's accuracy, measured by <task>_throughput
STAGE_THROUGHPUT = "throughput"  # lineage rows of <task>_throughput
STAGE_TEACHER_EVAL = "teacher_eval"  # the teacher's answers to the test set (<task>_teacher_eval)
# The teacher eval's variant when the teacher is the student's base model (the gap closed is undefined).
TEACHER_IS_BASE_VARIANT = "teacher_is_base"
# Keys of ``runs`` beside the stages above: the table ids of <task>_cost_table's materialisations and
# the run ids of <task>_routing's (read by routing and the benchmark report).
STAGE_COST_TABLE = "cost_table"
STAGE_ROUTING = "routing"

API_TIERS = ("frontier", "mid_tier")
SEED_ONLY_SUFFIX = " (seed-only)"


class CostTableError(RuntimeError):
    """A cost table cannot be computed (message says what is missing and which asset makes it)."""


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
    run_id: str | None = None


@dataclass
class EvaluatedModel:
    label: str
    role: str  # student / frontier / mid_tier / baseline
    variant: str
    run_id: str | None
    # Per-item scores (item_id -> list of repeat scores; None = unscorable).
    scores: dict[str, list[float | None]]
    self_hosted: bool = False
    # Per item, the metric that scored it (one name for all its repeats, "mixed" otherwise; None
    # when the store does not say). Only items scored by the same metric are ever paired.
    metrics: dict[str, str | None] = field(default_factory=dict)
    lineage: Lineage | None = None
    price_model: str | None = None  # the model whose price applies (label without a run suffix)


@dataclass
class CostInputs:
    task: str
    students: list[EvaluatedModel]  # the reference (served at its compute dtype) first, then fp8 if measured
    baselines: list[EvaluatedModel]
    usage: dict[str, Usage]  # API models by label (measured) and skipped frontier models (estimated)
    throughput: dict[str, ThroughputProfile]  # by variant; only profiles of the reference checkpoint
    skipped: dict[str, str] = field(default_factory=dict)  # model -> tier, with no evaluation
    table_id: str = ""
    margin: float = 0.02  # non-inferiority margin δ of the task
    judge: str | None = None  # the task's judge model when its metric is llm_judge
    # Why the reference student has no throughput profile (a profile of another checkpoint was refused).
    throughput_note: str | None = None
    # Stage -> runs whose rows are newer than the ones read but that never materialised successfully
    # (a failed run's rows: kept for resume and audit, never priced). Empty without ``runs``.
    ignored_runs: dict[str, list[str]] = field(default_factory=dict)
    # The teacher's scores on the test set (the latest successful <task>_teacher_eval; None: none), for
    # the gap closed; and per student run id, what the teacher gate did to its training data.
    teacher: EvaluatedModel | None = None
    gate_notes: dict[str, str] = field(default_factory=dict)
    # The model the task's production traces logged (the latest seed set's ``traces.json``), priced from
    # its logged usage as "your current model: <name>"; None when the seed set read no traces.
    production: ProductionModel | None = None


@dataclass
class ProductionModel:
    """What the user runs today, from its traces (``tasks.traces``): the model name and mean logged usage."""

    model: str
    usage: Usage | None
    source: str  # the traces' path
    labels_note: str | None = None  # "labels are your production model's answers (...)" when they are
    # Its trace answers to test questions, scored against the test set's own labels (``labelled: false``;
    # the latest successful <task>_frontier_evals), and how many test questions they covered.
    evaluated: EvaluatedModel | None = None
    scored_note: str | None = None


TRACES_SUMMARY = "traces.json"  # beside the seed set's test.parquet (written by the seed-set asset)


def production_model(store: Any, task: str) -> ProductionModel | None:
    """The production model of ``task``'s latest seed set, from its trace summary (None: no traces)."""
    import json

    from distil_platform.storage.paths import read_bytes
    from distil_platform.storage.store import seed_sets

    rows = store.select(seed_sets, task=task)
    if not rows:
        return None
    test_path = str(max(rows, key=lambda r: r["id"])["test_path"])
    try:
        summary = json.loads(read_bytes(test_path.rsplit("/", 1)[0] + "/" + TRACES_SUMMARY))
    except FileNotFoundError:
        return None
    usage = summary.get("usage") or {}
    logged = None
    if usage.get("n_requests"):
        logged = Usage(n_requests=int(usage["n_requests"]), prompt_tokens=float(usage["mean_prompt_tokens"]),
                       completion_tokens=float(usage["mean_completion_tokens"]),
                       cached_prompt_tokens=float(usage.get("mean_cached_tokens") or 0.0), basis="traces")
    return ProductionModel(model=str(summary.get("production_model") or "model not logged"), usage=logged,
                           source=str(summary.get("path") or ""),
                           labels_note=summary.get("labels_note") if summary.get("labels_are_production_answers") else None)


def production_models(store: Any, tasks: Iterable[str]) -> list[str]:
    """The production models the tasks' latest seed sets logged (for the price snapshot)."""
    found = [production_model(store, task) for task in tasks]
    return sorted({p.model for p in found if p is not None and p.usage is not None})


def _item_scores(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (str(r["item_id"]), r.get("repeat") or 0)):
        score = r.get("score")
        out[str(r["item_id"])].append(None if score is None or (isinstance(score, float) and math.isnan(score))
                                      else float(score))
    return dict(out)


def _item_metrics(rows: Iterable[Mapping[str, Any]]) -> dict[str, str | None]:
    seen: dict[str, set] = defaultdict(set)
    for r in rows:
        seen[str(r["item_id"])].add(r.get("metric"))
    return {k: (next(iter(v)) if len(v) == 1 else "mixed") for k, v in seen.items()}


def _evaluated(label: str, role: str, variant: str, run_id: str | None, rows: Sequence[Mapping[str, Any]],
               **kw: Any) -> EvaluatedModel:
    return EvaluatedModel(label=label, role=role, variant=variant, run_id=run_id, scores=_item_scores(rows),
                          metrics=_item_metrics(rows), **kw)


def _runs_latest_first(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Run ids of ``rows``, most recently written first."""
    last: dict[str, int] = {}
    for r in rows:
        last[r["run_id"]] = max(last.get(r["run_id"], -1), r["id"])
    return sorted(last, key=lambda run: -last[run])


def readable_runs(rows: Sequence[Mapping[str, Any]], published: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(the runs of ``rows`` a reader may use, newest first; the runs skipped for want of a successful
    materialisation). ``published``: the run ids of the stage's successful materialisations, newest
    first (Dagster's record); None: every run, newest rows first (offline inspection only)."""
    written = _runs_latest_first(rows)
    if published is None:
        return written, []
    present, counted = set(written), set(published)
    readable = [run for run in dict.fromkeys(published) if run in present]
    newest = written.index(readable[0]) if readable else len(written)
    return readable, [run for run in written[:newest] if run not in counted]


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
        # Prompt tokens the provider served from its prompt cache, billed at the cached price.
        cached_prompt_tokens=sum(float(r.get("cached_prompt_tokens") or 0) for r in rows) / n,
        basis=basis,
    )


def _tiers(spec: TaskSpec) -> dict[str, str]:
    return {ref.model: ref.tier for ref in spec.comparison_models}


def base_model_of(label: str) -> str:
    """The comparison model behind a baseline label (``"m @ temperature 0"`` -> ``"m"``)."""
    from distil_platform.tasks.spec import TEMPERATURE_0_SUFFIX

    return label.removesuffix(TEMPERATURE_0_SUFFIX)


def gather_cost_inputs(store: Any, spec: TaskSpec, *, test_rows: Sequence[Mapping[str, Any]] | None = None,
                       token_counter: Any = None, runs: Mapping[str, Sequence[str]] | None = None) -> CostInputs:
    """Read everything a cost table needs from the results store.

    ``runs``: stage (``STAGE_STUDENT_EVAL``, ``STAGE_BASELINES``, ``STAGE_FRONTIER``,
    ``STAGE_THROUGHPUT``) -> the run ids of that asset's successful materialisations, newest first;
    only their rows are read, and a stage missing from it (never materialised successfully) is
    absent (frontier models then "skipped"). The cost-table asset always passes it. Without it: each
    stage's newest rows in the store, for offline inspection only (a run that failed after writing
    some rows is then read as if it had succeeded).

    Lineage: the reference student is the latest ``<task>_student_eval`` run that is not the
    seed-only ablation (which is shown as its own baseline row); throughput and the fp8 eval come
    from the latest ``<task>_throughput`` run that measured the *same checkpoint* — a profile of
    another checkpoint is refused (the student is then unpriced, with the reason). With ``runs``,
    a student eval without a lineage record is never the student: if it is newer than every
    recorded one, :class:`CostTableError` names it (its checkpoint, distilled or seed-only, is
    unknown). Without ``runs`` such evals are matched by served name (it carries the student's run
    id) and marked "unrecorded", as stores from before lineage need.
    ``test_rows`` (for estimating skipped frontier models) default to the task's latest seed set.
    """
    from distil_platform.storage.store import llm_requests, predictions, throughput_profiles

    task = spec.name
    tiers = _tiers(spec)
    lineage_rows = read_lineage_rows(store, task)
    ignored: dict[str, list[str]] = {}

    def published(stage: str) -> Sequence[str] | None:
        return None if runs is None else runs.get(stage, ())

    student_rows = store.select(predictions, task=task, stage=STAGE_STUDENT_EVAL)
    eval_runs, ignored[STAGE_STUDENT_EVAL] = readable_runs(student_rows, published(STAGE_STUDENT_EVAL))
    if not eval_runs:
        from distil_platform.redact import hide_password

        what = "no student evaluation" if runs is None else "no successfully materialised student evaluation"
        raise CostTableError(f"{task}: {what} in the results store ({hide_password(store.url)}); "
                             f"materialise {task}_student_eval first")
    by_run: dict[str, list[dict]] = defaultdict(list)
    for r in student_rows:
        by_run[r["run_id"]].append(r)
    run_lineage = {run: lineage(lineage_rows, STAGE_STUDENT_EVAL, run, by_run[run][0]["model"]) for run in eval_runs}
    known = [run for run in eval_runs if runs is None or run_lineage[run].recorded]
    distilled = [run for run in known if run_lineage[run].use_synthetic is not False]
    seed_only = [run for run in known if run_lineage[run].use_synthetic is False]
    unknown = eval_runs[:eval_runs.index(distilled[0])] if distilled else eval_runs
    unknown = [run for run in unknown if run not in known]
    if unknown:
        raise CostTableError(
            f"{task}: student eval run {unknown[0]} has no lineage record, so whether it measured the distilled "
            f"student or the seed-only ablation is unknown; it is never priced as the student, and no older eval "
            f"stands in for it. Re-materialise {task}_student_eval (it records the checkpoint it served)")
    if not distilled:
        raise CostTableError(
            f"{task}: the only student evaluations in the results store are of the seed-only ablation "
            f"(use_synthetic: false, run {seed_only[0][:8]}); it is never priced as the student. Materialise "
            f"{task}_student with synthetic data and {task}_student_eval")
    run = distilled[0]
    ref_lineage = run_lineage[run]
    # The eval's variant is the precision it was served in (bf16 / fp16 / fp32; rows written before
    # the dtype followed the hardware were bf16).
    eval_variant = (lineage_rows.get((STAGE_STUDENT_EVAL, run, "")) or {}).get("variant") or "bf16"
    students = [_evaluated(by_run[run][0]["model"], "student", eval_variant, run, by_run[run], self_hosted=True,
                           lineage=ref_lineage)]

    throughput: dict[str, ThroughputProfile] = {}
    throughput_note = None
    tp_rows = store.select(throughput_profiles, task=task)
    tp_runs, ignored[STAGE_THROUGHPUT] = readable_runs(tp_rows, published(STAGE_THROUGHPUT))
    tp_by_run: dict[str, list[dict]] = defaultdict(list)
    for r in tp_rows:
        tp_by_run[r["run_id"]].append(r)
    matching = [tp for tp in tp_runs
                if lineage(lineage_rows, STAGE_THROUGHPUT, tp, tp_by_run[tp][0]["model"]).same_checkpoint(ref_lineage)]
    if tp_runs and not matching:
        other = lineage(lineage_rows, STAGE_THROUGHPUT, tp_runs[0], tp_by_run[tp_runs[0]][0]["model"])
        throughput_note = (f"refused: the latest throughput profile measured another checkpoint ({other.describe()}), "
                           f"not the evaluated student ({ref_lineage.describe()}); re-materialise {task}_throughput")
    tp_run = matching[0] if matching else None
    if tp_run:
        for r in tp_by_run[tp_run]:
            throughput[r["variant"]] = ThroughputProfile(
                variant=r["variant"], model=r["model"], backend=r["backend"], hardware=r["hardware"],
                hardware_key=r["hardware_key"], sustained_rps=r["sustained_rps"],
                max_achieved_rps=r["max_achieved_rps"], slo_s=r["slo_s"], peak_memory_gb=r["peak_memory_gb"],
                run_id=tp_run)
        fp8_rows = store.select(predictions, task=task, stage=STAGE_FP8_EVAL, run_id=tp_run)
        if fp8_rows:
            fp8_lineage = lineage(lineage_rows, STAGE_THROUGHPUT, tp_run, fp8_rows[0]["model"], "fp8")
            students.append(_evaluated(fp8_rows[0]["model"], "student", "fp8", tp_run, fp8_rows, self_hosted=True,
                                       lineage=fp8_lineage))

    baselines: list[EvaluatedModel] = []
    if seed_only:
        so = seed_only[0]
        baselines.append(_evaluated(by_run[so][0]["model"] + SEED_ONLY_SUFFIX, "baseline", "seed_only", so,
                                    by_run[so], self_hosted=True, lineage=run_lineage[so]))

    usage: dict[str, Usage] = {}
    # Self-hosted comparisons (stage baseline_evals) and frontier APIs (stage frontier_evals; stores
    # from before that asset existed hold API rows under baseline_evals too): each stage's latest
    # run; a model measured under both counts from the later run.
    by_label: dict[str, tuple[int, str, str, list[dict]]] = {}
    for stage in (STAGE_BASELINES, STAGE_FRONTIER):
        stage_rows = store.select(predictions, task=task, stage=stage)
        stage_runs, ignored[stage] = readable_runs(stage_rows, published(stage))
        if not stage_runs:
            continue
        stage_run = stage_runs[0]
        grouped: dict[str, list[dict]] = defaultdict(list)
        for r in stage_rows:
            if r["run_id"] == stage_run:
                grouped[r["model"]].append(r)
        for label, rows in grouped.items():
            newest = max(r["id"] for r in rows)
            if label not in by_label or newest > by_label[label][0]:
                by_label[label] = (newest, stage, stage_run, rows)
    request_cache: dict[tuple[str, str], list[dict]] = {}
    prod = production_model(store, task)
    for label, (_, stage, base_run, rows) in sorted(by_label.items()):
        if label.startswith(PRODUCTION_PREFIX):  # the production model's trace answers: its own row, no call
            if prod is not None and label == production_label(prod.model):
                prod.evaluated = _evaluated(label, "production", rows[0].get("variant") or "", base_run, rows)
                prod.scored_note = (f"scored on the {len(prod.evaluated.scores)} test question(s) its traces asked, "
                                    "against the test set's labels")
            continue
        if (stage, base_run) not in request_cache:
            request_cache[(stage, base_run)] = store.select(llm_requests, task=task, stage=stage, run_id=base_run)
        request_rows = request_cache[(stage, base_run)]
        variant = rows[0].get("variant") or ""
        model = base_model_of(label)
        # Served here (the zero-shot base, or a model-store comparison model): priced like the student.
        self_hosted = variant == "zero_shot" or tiers.get(model, "baseline") not in API_TIERS
        role = "baseline" if self_hosted else tiers[model]
        baselines.append(_evaluated(label, role, variant, base_run, rows, self_hosted=self_hosted,
                                    price_model=model))
        if not self_hosted:
            measured = _usage_from_rows([r for r in request_rows if r["model"] == label], "llm_requests")
            measured = measured or _usage_from_rows(rows, "predictions")
            if measured:
                usage[label] = measured

    evaluated = {b.price_model or b.label for b in baselines}
    skipped = {m: t for m, t in tiers.items() if t in API_TIERS and m not in evaluated}
    if skipped:
        rows = list(test_rows) if test_rows is not None else _latest_test_rows(store, task)
        for model in skipped:
            usage[model] = estimate_usage(spec, model, rows, token_counter=token_counter)

    judge = spec.judge.model if spec.judge is not None and spec.metric_name == "llm_judge" else None
    return CostInputs(task=task, students=students, baselines=baselines, usage=usage, throughput=throughput,
                      skipped=skipped, margin=spec.margin, judge=judge, throughput_note=throughput_note,
                      ignored_runs={stage: found for stage, found in ignored.items() if found},
                      teacher=_teacher(store, task, published(STAGE_TEACHER_EVAL)), production=prod)


def _teacher(store: Any, task: str, published: Sequence[str] | None) -> EvaluatedModel | None:
    """The teacher's per-item scores of the latest successful ``<task>_teacher_eval`` (``published``;
    None: the newest rows). A latest eval without rows (a recorded teacher that answered no test
    question) means no teacher scores: an older eval never stands in for it."""
    from distil_platform.storage.store import predictions

    rows = store.select(predictions, task=task, stage=STAGE_TEACHER_EVAL)
    written = _runs_latest_first(rows)
    run = (published[0] if published else None) if published is not None else (written[0] if written else None)
    chosen = [r for r in rows if r["run_id"] == run]
    if not chosen:
        return None
    return _evaluated(chosen[0]["model"], "teacher", chosen[0].get("variant") or "teacher", run, chosen)


def _latest_test_rows(store: Any, task: str) -> list[dict[str, Any]]:
    from distil_platform.storage.store import seed_sets

    rows = store.select(seed_sets, task=task)
    if not rows:
        raise CostTableError(f"{task}: no seed set in the results store to estimate skipped models from; "
                             f"materialise {task} first")
    latest = max(rows, key=lambda r: r["id"])
    from distil_platform.storage.paths import read_rows

    return read_rows(latest["test_path"], what=f"{task} (its seed set)")


def estimate_usage(spec: TaskSpec, model: str, rows: Sequence[Mapping[str, Any]], *,
                   token_counter: Any = None) -> Usage:
    """Tokens per request a model would use on the test set: its tokenizer's count (litellm's
    ``token_counter``) of the exact eval prompt, and of the reference answer as the completion.
    Reasoning models spend more completion tokens than the answer: this is a lower bound."""
    from distil_platform.tasks.prompts import build_messages, format_answer

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
