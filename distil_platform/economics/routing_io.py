"""Routing's inputs and outputs around the pure computation (``economics.routing``): gathering
:class:`RoutingInputs` from the results store (the latest cost table's prices and the eval runs it
priced), and writing and presenting a :class:`RoutingResult` (policy table, Pareto plot, markdown,
the store's ``routing_results`` row, the benchmark report's routing cells).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distil_platform.economics.cost_inputs import (
    STAGE_BASELINES,
    STAGE_COST_TABLE,
    STAGE_FRONTIER,
    STAGE_ROUTING,
    STAGE_STUDENT_EVAL,
    readable_runs,
)
from distil_platform.economics.costs import fmt_usd
from distil_platform.economics.routing import (
    DEFAULT_DAILY_REQUESTS,
    DEFAULT_FOLDS,
    DEFAULT_MARGIN,
    ModelItems,
    Policy,
    Pricing,
    RoutingError,
    RoutingInputs,
    RoutingResult,
    finite,
)


# -- from the results store ---------------------------------------------------------------------
def pricing_from_cost_row(row: Mapping[str, Any]) -> Pricing:
    """A model's :class:`Pricing` from its cost-table row (self-hosted capacity recovered from the
    row's $/hour and $/M requests, so it matches whatever rate the cost table priced at)."""
    cost = row.get("usd_per_million_requests")
    cost = None if cost is None or (isinstance(cost, float) and math.isnan(cost)) else float(cost)
    if row.get("cost_basis") == "api":
        return Pricing(usd_per_million=cost, note=row.get("cost_note") or "")
    hour = row.get("usd_per_hour")
    capacity = hour * 1e6 / (3600.0 * cost) if hour and cost else None
    return Pricing(usd_per_million=cost, self_hosted=True, usd_per_hour=hour, capacity_rps=capacity,
                   note=row.get("cost_note") or "")


def _item_means(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for r in rows:
        s = r.get("score")
        if s is None or (isinstance(s, float) and math.isnan(s)):
            continue
        acc.setdefault(str(r["item_id"]), []).append(float(s))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def task_margin(spec: Any) -> tuple[float, str]:
    """The task's non-inferiority margin δ and where it came from."""
    for name in ("noninferiority_margin", "margin"):
        value = getattr(spec, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), f"task spec ({name})"
    return DEFAULT_MARGIN, "default"


def gather_routing_inputs(store: Any, spec: Any, *, daily_requests: float = DEFAULT_DAILY_REQUESTS,
                          folds: int = DEFAULT_FOLDS, seed: int = 0, margin: float | None = None,
                          runs: Mapping[str, Sequence[str]] | None = None) -> RoutingInputs:
    """Everything routing needs, from the results store: the latest cost table (prices, and which
    eval run of each model it priced: ``eval_run_id``), and those runs' per-item scores and the
    student's confidence. Models the cost table has no answers for are listed in the notes.

    ``runs`` (what the routing asset passes, from Dagster's record): ``STAGE_COST_TABLE`` -> the
    table ids of the cost table's successful materialisations, and each eval stage -> its successful
    runs, newest first (read only where a cost row names no eval run). Without it: the newest cost
    table and rows in the store, for offline inspection only."""
    from distil_platform.economics.costs import latest_cost_table
    from distil_platform.storage.store import predictions

    task = spec.name
    table = latest_cost_table(store, task, None if runs is None else runs.get(STAGE_COST_TABLE, ()))
    if not table:
        from distil_platform.redact import hide_password

        what = "no cost table" if runs is None else "no successfully materialised cost table"
        raise RoutingError(f"{task}: {what} in the results store ({hide_password(store.url)}); "
                           f"materialise {task}_cost_table")
    students = [r for r in table if r.get("role") == "student"]
    # The student candidate the cost table chose (``economics.candidates``); else the reference variant
    # (the precision the eval ran in): the table's first student row.
    chosen = next((r for r in table if r.get("candidate_choice") == "chosen"), None)
    student_row = chosen if chosen is not None and chosen.get("role") == "candidate" else (
        students[0] if students else None)
    if student_row is None:
        raise RoutingError(f"{task}: the cost table has no student row; re-materialise {task}_cost_table")

    def rows_of(stage: str, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        rows = store.select(predictions, task=task, stage=stage, model=row["model"])
        readable = readable_runs(rows, None if runs is None else runs.get(stage, ()))[0]
        run = row.get("eval_run_id") or (readable[0] if readable else None)
        return [r for r in rows if r["run_id"] == run]

    student_rows = rows_of(STAGE_STUDENT_EVAL, student_row)
    if not student_rows:
        raise RoutingError(f"{task}: no student predictions for {student_row['model']} (run "
                           f"{student_row.get('eval_run_id')}); materialise {task}_student_eval")
    notes: list[str] = []
    confidence: dict[str, float | None] = {}
    for r in sorted(student_rows, key=lambda r: (r.get("repeat") or 0)):
        c = r.get("confidence")
        confidence.setdefault(str(r["item_id"]), None if c is None or math.isnan(c) else float(c))
    student = ModelItems(label=student_row["model"], role="student", scores=_item_means(student_rows),
                         pricing=pricing_from_cost_row(student_row))

    if student_row.get("candidate"):
        how = ("chosen by the cost table" if student_row is chosen else "the default: the cost table chose none"
               if any(r.get("candidate_choice") for r in table) else "the default")
        notes.append(f"the student is candidate {student_row['candidate']} ({how})")
    models: list[ModelItems] = []
    unevaluated = []
    for row in table:
        if row.get("role") in ("student", "candidate"):  # the other candidates are students, not routes
            continue
        # Self-hosted comparisons answer in baseline_evals, API models in frontier_evals.
        rows = (rows_of(STAGE_BASELINES, row) or rows_of(STAGE_FRONTIER, row)) if row.get("n_items") else []
        if not rows:
            unevaluated.append(row["model"])
            continue
        scores = _item_means(rows)
        if row.get("role") == "production" and not set(student.scores) <= set(scores):
            # Scored only where its traces asked a test question: routing pairs every item, so it is left out.
            notes.append(f"{row['model']} answered {len(scores)} of the student's {len(student.scores)} test items in "
                         "its traces: not routed")
            continue
        models.append(ModelItems(label=row["model"], role=row.get("role") or "baseline", scores=scores,
                                 pricing=pricing_from_cost_row(row)))
    api = [m for m in models if m.role in ("frontier", "mid_tier")]
    if models and not api:
        notes.append("only the zero-shot base has answers (no frontier API key set): routing compares the student "
                     "with it; set API keys to evaluate frontier models")
    if unevaluated:
        notes.append(f"not evaluated (no answers to route to): {', '.join(unevaluated)}")
    if margin is None:
        margin, source = task_margin(spec)
    else:
        source = "run config"
    return RoutingInputs(task=task, task_type=spec.type, student=student, confidence=confidence, models=models,
                         daily_requests=float(daily_requests), margin=float(margin), margin_source=source,
                         folds=folds, seed=seed, cost_table_id=str(student_row.get("table_id") or ""),
                         snapshot_hash=str(student_row.get("snapshot_hash") or ""), notes=notes)


# -- outputs ------------------------------------------------------------------------------------
POLICY_COLUMNS = ["name", "kind", "model", "role", "accuracy", "escalation_rate", "usd_per_million_requests",
                  "tau", "diff_vs_best", "lower_vs_best", "verdict_vs_best", "noninferior", "on_frontier", "eligible", "note"]


def policy_markdown(result: RoutingResult) -> str:
    from distil_platform.economics.stats import verdict_label

    lines = [("| policy | accuracy | escalated | $/M requests | τ (deploy) | Δ vs best [CI low] "
              f"| vs best (δ {result.margin:g}) | frontier |"), "|---|---|---|---|---|---|---|---|"]
    rec = result.recommendation
    for p in result.policies:
        tau = "–" if p.tau is None else ("−∞ (none)" if p.tau == -math.inf else "∞ (all)" if p.tau == math.inf
                                         else f"{p.tau:.3g}")
        if p.name == result.best_single:
            diff, verdict = "best single", "–"
        else:
            low = p.lower_vs_best
            diff = f"{p.diff_vs_best:+.3f}" + ("" if low is None or math.isnan(low) else f" [{low:+.3f}]")
            verdict = verdict_label(p.verdict_vs_best, result.margin)
        name = f"**{p.name}** (recommended)" if rec is not None and p is rec else p.name
        lines.append(f"| {name} | {p.accuracy:.3f} | {p.escalation_rate:.0%} "
                     f"| {fmt_usd(p.usd_per_million_requests)} "
                     f"| {tau} | {diff} | {verdict} | {'★' if p.on_frontier else ''} |")
    return "\n".join(lines)


def _short(model: str | None) -> str:
    return (model or "").rsplit("/", 1)[-1]


def plot_routing(result: RoutingResult, path: Path) -> Path | None:
    """Accuracy against USD per million requests (log axis): single models, fitted cascades, the
    τ sweep per escalation model, the Pareto frontier highlighted, the recommendation circled."""
    pts = [p for p in result.policies + result.sweep
           if p.usd_per_million_requests is not None and p.usd_per_million_requests > 0]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"student": "tab:green", "frontier": "tab:red", "mid_tier": "tab:orange", "baseline": "tab:grey"}
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    by_model: dict[str, list[Policy]] = {}
    for p in result.sweep:
        if p.usd_per_million_requests:
            by_model.setdefault(p.model or "", []).append(p)
    for sweep in by_model.values():
        sweep = sorted(sweep, key=lambda p: p.escalation_rate)
        ax.plot([p.usd_per_million_requests for p in sweep], [p.accuracy for p in sweep], "-", lw=0.8, alpha=0.6,
                color="tab:blue", marker=".", ms=3)
    for p in result.policies:
        if not p.usd_per_million_requests:
            continue
        x, y = p.usd_per_million_requests, p.accuracy
        if p.kind == "cascade":
            if p.escalation_rate == 0.0:
                continue  # escalates nothing: the student's own point
            ax.plot([x], [y], marker="*", ms=11, color="tab:blue", ls="none")
            label = f"cascade→{_short(p.model)} ({p.escalation_rate:.0%})"
        else:
            ax.plot([x], [y], marker="o", ms=7, color=colours.get(p.role, "tab:purple"), ls="none")
            label = "student" if p.kind == "student" else _short(p.model)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    frontier = sorted([p for p in pts if p.on_frontier], key=lambda p: p.usd_per_million_requests)
    if frontier:
        ax.step([p.usd_per_million_requests for p in frontier], [p.accuracy for p in frontier], where="post",
                color="black", lw=1.8, alpha=0.8, label="Pareto frontier")
    rec = result.recommendation
    if rec is not None and rec.usd_per_million_requests:
        ax.plot([rec.usd_per_million_requests], [rec.accuracy], marker="o", ms=18, mfc="none", mec="black", mew=1.5,
                ls="none", label="recommended")
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.08)
    ax.set_xlabel(f"USD per million requests (log) at {result.daily_requests:,.0f} requests/day")
    ax.set_ylabel("accuracy (cascades cross-fitted)")
    ax.set_title(f"{result.task}: routing — cost vs accuracy (blue line: τ sweep)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_policies(result: RoutingResult, out_dir: Path) -> tuple[Path, Path]:
    """``routing_policies.parquet`` / ``.csv``: the main policies and the τ sweep (τ ±inf: escalate
    only items without confidence / everything)."""
    import polars as pl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{c: getattr(p, c) for c in POLICY_COLUMNS} for p in result.policies + result.sweep]
    schema = {c: (pl.Utf8 if c in ("name", "kind", "model", "role", "note", "verdict_vs_best") else
                  pl.Boolean if c in ("noninferior", "on_frontier", "eligible") else pl.Float64)
              for c in POLICY_COLUMNS}
    df = pl.DataFrame(rows, schema=schema)
    parquet, csv = out_dir / "routing_policies.parquet", out_dir / "routing_policies.csv"
    df.write_parquet(parquet)
    df.write_csv(csv)
    return parquet, csv


def store_routing(store: Any, result: RoutingResult, run_id: str) -> None:
    from distil_platform.storage.store import routing_results

    def clean(v: Any) -> Any:
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return finite(v) if math.isinf(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    store.insert(routing_results, [{
        "task": result.task, "run_id": run_id, "cost_table_id": result.cost_table_id,
        "snapshot_hash": result.snapshot_hash, "summary": clean(result.summary()),
        "policies": clean([p.row() for p in result.policies]),
    }])


def latest_routing(store: Any, task: str, run_ids: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The summary of the most recent routing of ``task`` (None if never computed). ``run_ids``: the
    runs of its successful materialisations, newest first (the first with a row counts); None: the
    most recently written one (offline inspection only)."""
    from distil_platform.storage.store import routing_results

    rows = store.select(routing_results, task=task)
    readable = readable_runs(rows, run_ids)[0]
    if not readable:
        return None
    return max((r for r in rows if r["run_id"] == readable[0]), key=lambda r: r["id"])["summary"]


def routing_report_columns(store: Any, summary: Any, runs: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
    """The benchmark report's routing cells for one task (``report.TaskSummary``): the recommended
    route with its $/M requests, and its cost ratio against the report's best mid-tier model
    (mid-tier $/M ÷ route $/M). A routing computed on another cost table than the report's is
    marked stale; none yet says which asset to materialise. ``runs``: as the report's (the routing
    of ``STAGE_ROUTING``'s runs only); None: the newest routing in the store."""
    task = summary.task
    r = latest_routing(store, task, None if runs is None else runs.get(STAGE_ROUTING, ()))
    if r is None:
        return {"recommended route": f"– (materialise {task}_routing)", "cost ratio (mid-tier ÷ route)": "–"}
    table_id = (summary.student or {}).get("table_id") if getattr(summary, "student", None) else None
    cost = r.get("usd_per_million_requests")
    daily = r.get("daily_requests")
    route = f"{r.get('route') or 'none non-inferior'}" + (
        f", {fmt_usd(cost)}/M req" + (f" at {daily:,.0f} req/day" if daily else "") if cost is not None else "")
    if table_id and r.get("cost_table_id") != table_id:
        route += f" (stale: prices changed since; re-materialise {task}_routing)"
    elif not r.get("confidence_available"):
        route += " (no student confidence: cascades not computed)"
    mid = getattr(summary, "mid_tier", None) or {}
    mid_cost = mid.get("usd_per_million_requests")
    ratio = f"{mid_cost / cost:.3g}×" if mid_cost is not None and cost else "–"
    return {"recommended route": route, "cost ratio (mid-tier ÷ route)": ratio}
