"""Which student candidate to deploy (``tasks/candidates.py`` lists them): the **cheapest candidate
non-inferior to the best candidate and to the best priced mid-tier API** (the task's δ,
``stats.compare`` paired on the same items), or none. Where candidates serve at the same cost
(within :data:`SAME_COST_REL`, a load test's noise: one base model on ``local``), the choice among
them is by accuracy, then by training time (training cost on the same machine), and says so.
Pure: no store, no model (the cost table asset reads its inputs from the results store).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distil_platform.economics.cost_inputs import (
    CostInputs,
    CostTableError,
    EvaluatedModel,
    gather_cost_inputs,
)
from distil_platform.economics.costs import build_cost_table, compare_models, fmt_usd
from distil_platform.economics.stats import NON_INFERIOR, WIN, verdict_label

# $/M requests within 10% of the cheapest count as the same serving cost (sustained RPS of one model
# on one machine varies that much between load tests).
SAME_COST_REL = 0.10
GOOD_ENOUGH = (WIN, NON_INFERIOR)


@dataclass
class Candidate:
    """One candidate's priced evaluation (its reference-variant cost row)."""

    name: str
    base_model: str
    model: EvaluatedModel | None  # its student eval's per-item scores; None: not evaluated (``note`` says why)
    accuracy: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    usd_per_million: float | None = None
    sustained_rps: float | None = None
    training_s: float | None = None  # training wall time (its cost on the same machine); None: unknown
    note: str | None = None


@dataclass
class PricedAPI:
    """The best priced mid-tier API model (highest accuracy) on the task."""

    name: str
    model: EvaluatedModel
    accuracy: float | None
    usd_per_million: float | None


@dataclass
class CandidateChoice:
    chosen: str | None
    why: str  # markdown
    best: str | None
    # name -> {"vs_best": verdict, "vs_api": verdict or None, "eligible": bool, "reason": str}
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)


def _verdict(candidate: Candidate, other: EvaluatedModel, margin: float) -> str:
    result = compare_models(candidate.model, other, margin)
    return result["verdict"] if result is not None else "no paired items"


def choose_candidate(candidates: Sequence[Candidate], api: PricedAPI | None, margin: float,
                     same_cost_rel: float = SAME_COST_REL) -> CandidateChoice:
    """The candidate to deploy, with why (see the module docstring)."""
    scored = [c for c in candidates if c.model is not None and c.accuracy is not None]
    if not scored:
        return CandidateChoice(None, "No candidate is chosen: none was evaluated ("
                               + "; ".join(f"{c.name}: {c.note or 'no eval'}" for c in candidates) + ").", None)
    best = max(scored, key=lambda c: (c.accuracy, -(c.usd_per_million or math.inf)))
    verdicts: dict[str, dict[str, Any]] = {}
    eligible: list[Candidate] = []
    for c in candidates:
        if c not in scored:
            verdicts[c.name] = {"vs_best": None, "vs_api": None, "eligible": False, "reason": c.note or "not evaluated"}
            continue
        vs_best = "best" if c is best else _verdict(c, best.model, margin)
        vs_api = _verdict(c, api.model, margin) if api is not None else None
        reasons = []
        if vs_best not in ("best", *GOOD_ENOUGH):
            reasons.append(f"{verdict_label(vs_best, margin)} vs the best candidate")
        if vs_api is not None and vs_api not in GOOD_ENOUGH:
            reasons.append(f"{verdict_label(vs_api, margin)} vs {api.name}")
        if c.usd_per_million is None:
            reasons.append("no $/M requests (no throughput profile)")
        verdicts[c.name] = {"vs_best": vs_best, "vs_api": vs_api, "eligible": not reasons,
                            "reason": "; ".join(reasons) or "good enough"}
        if not reasons:
            eligible.append(c)
    bar = f"the best candidate (**{best.name}**, {best.accuracy:.3f})" + (
        f" and the best priced mid-tier API (**{api.name}**, {api.accuracy:.3f})" if api is not None
        and api.accuracy is not None else "")
    no_api = "" if api is not None else " No mid-tier API is priced with an evaluation on this task: the bar is the best candidate alone."
    if not eligible:
        reasons = "; ".join(f"{n}: {v['reason']}" for n, v in verdicts.items())
        return CandidateChoice(None, f"**None is chosen**: no priced candidate is non-inferior (δ {margin:g}) to "
                               f"{bar}. {reasons}.{no_api}", best.name, verdicts)
    cheapest = min(c.usd_per_million for c in eligible)
    same = [c for c in eligible if c.usd_per_million <= cheapest * (1.0 + same_cost_rel)]
    chosen = max(same, key=lambda c: (c.accuracy, -(c.training_s if c.training_s is not None else math.inf)))
    why = (f"**{chosen.name}** ({chosen.base_model}, {fmt_usd(chosen.usd_per_million)}/M requests, accuracy "
           f"{chosen.accuracy:.3f}): the cheapest candidate non-inferior (δ {margin:g}, paired on the same items) "
           f"to {bar}.{no_api}")
    if len(same) > 1:
        others = ", ".join(c.name for c in same if c is not chosen)
        why += (f" {others} serve(s) at the same cost (within {same_cost_rel:.0%} $/M): chosen among them by "
                "accuracy, then by training time.")
    return CandidateChoice(chosen.name, why, best.name, verdicts)


def candidates_markdown(candidates: Sequence[Candidate], choice: CandidateChoice, margin: float) -> str:
    """A small table: score with CI, sustained RPS, $/M requests, verdict vs the best, chosen."""
    lines = ["| candidate | base model | score (95% CI) | sustained RPS | $/M requests | vs best | chosen |",
             "|---|---|---|---|---|---|---|"]
    for c in candidates:
        score = (f"{c.accuracy:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}]" if c.accuracy is not None
                 and c.ci_low is not None else (f"{c.accuracy:.3f}" if c.accuracy is not None else "–"))
        rps = f"{c.sustained_rps:.3g}" if c.sustained_rps is not None else "–"
        v = choice.verdicts.get(c.name, {})
        vs = v.get("vs_best")
        vs_text = "best" if vs == "best" else verdict_label(vs, margin) if vs else (v.get("reason") or "–")
        lines.append(f"| {c.name} | {c.base_model} | {score} | {rps} | {fmt_usd(c.usd_per_million)} | {vs_text} "
                     f"| {'**yes**' if c.name == choice.chosen else ''} |")
    return "\n".join(lines)


def plot_candidates(candidates: Sequence[Candidate], apis: Sequence[tuple[str, float, float]], path: Path,
                    task: str) -> Path | None:
    """PNG of accuracy vs $/M requests: candidates (circles) and priced APIs ``(name, $/M, accuracy)``
    (squares); None when nothing has both."""
    points = [(c.name, c.usd_per_million, c.accuracy) for c in candidates
              if c.usd_per_million is not None and c.accuracy is not None]
    apis = [a for a in apis if a[1] is not None and a[2] is not None and a[1] > 0]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for marker, group, label in (("o", points, "student candidates"), ("s", apis, "APIs")):
        if group:
            ax.scatter([p[1] for p in group], [p[2] for p in group], marker=marker, label=label)
            for name, x, y in group:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if all(p[1] > 0 for p in points):
        ax.set_xscale("log")
    ax.set_xlabel("USD per million requests")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{task}: accuracy vs cost")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def price_candidates(store: Any, spec: Any, snapshot: Any, runs: Mapping[str, Sequence[str]] | None,
                     candidates: Sequence[Mapping[str, Any]], reference: CostInputs,
                     reference_rows: list[dict[str, Any]]) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """Each candidate priced like the student (``candidates``: first = the table's own student, then
    ``{"name", "base_model", "runs": {stage: its published runs}, "training_s"}`` per further one, read
    with ``runs`` for every other stage) and the further candidates' cost rows (role ``candidate``,
    their reference variant; cost ratio vs the table's student). A candidate without a priceable eval
    is kept with the reason. Store only: no model call."""
    out: list[Candidate] = []
    rows_out: list[dict[str, Any]] = []
    first_cost = next((r["usd_per_million_requests"] for r in reference_rows if r["role"] == "student"), None)
    for i, cand in enumerate(candidates):
        inputs, rows = reference, reference_rows
        if i:
            try:
                inputs = gather_cost_inputs(store, spec, runs={**(runs or {}), **cand["runs"]})
                inputs.table_id = reference.table_id
                rows = build_cost_table(inputs, snapshot)
            except CostTableError as exc:
                out.append(Candidate(cand["name"], cand["base_model"], None, note=str(exc)))
                continue
        row = next(r for r in rows if r["role"] == "student")  # the reference variant comes first
        if i:
            cost = row["usd_per_million_requests"]
            rows_out.append({**row, "role": "candidate", "candidate": cand["name"],
                             "cost_ratio_vs_student": cost / first_cost if cost is not None and first_cost else None,
                             "break_even_requests_per_day": None, "versus": versus_models(rows)})
        out.append(Candidate(cand["name"], cand["base_model"], inputs.students[0], accuracy=row["accuracy"],
                             ci_low=row["ci_low"], ci_high=row["ci_high"], usd_per_million=row["usd_per_million_requests"],
                             sustained_rps=row["sustained_rps"], training_s=cand.get("training_s"),
                             note=row.get("cost_note") if row["usd_per_million_requests"] is None else None))
    return out, rows_out


def best_mid_tier_api(inputs: CostInputs, rows: Sequence[Mapping[str, Any]]) -> PricedAPI | None:
    """The most accurate mid-tier API model that was evaluated and is priced (None: none is)."""
    models = {b.label: b for b in inputs.baselines if b.role == "mid_tier"}
    priced = [r for r in rows if r["role"] == "mid_tier" and r["model"] in models and r.get("accuracy") is not None
              and r.get("usd_per_million_requests") is not None]
    if not priced:
        return None
    row = max(priced, key=lambda r: r["accuracy"])
    return PricedAPI(row["model"], models[row["model"]], row["accuracy"], row["usd_per_million_requests"])


VERSUS_KEYS = ("verdict", "test", "diff", "ci_low", "ci_high", "verdict_note")


def versus_models(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A candidate's verdicts against every model of its own cost table (model -> verdict, test, diff
    and CI, note; read by the report where the candidate is the one it names)."""
    return {r["model"]: dict(zip(VERSUS_KEYS, (r["student_result"], r.get("verdict_test"), r.get("diff_vs_student"),
                                               r.get("diff_ci_low"), r.get("diff_ci_high"), r.get("verdict_note"))))
            for r in rows if r["role"] != "student" and r.get("student_result")}


def mark_choice(rows: Sequence[dict[str, Any]], choice: CandidateChoice) -> None:
    """Write the choice into the candidates' cost rows (``candidate_choice``: chosen / not chosen, and
    the why), so the report and routing name the chosen candidate from the results store alone."""
    for row in rows:
        if row.get("candidate") and row["role"] in ("student", "candidate"):
            row["candidate_choice"] = "chosen" if row["candidate"] == choice.chosen else "not chosen"
            row["candidate_choice_note"] = choice.why
