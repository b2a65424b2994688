"""The cross-task benchmark report: per task, the named student variant against the best mid-tier
frontier model (< $1 per million input tokens), with scores and CIs, the paired verdict (win /
non-inferior (δ) / inconclusive / loss, with the test used), USD per million requests and the cost
ratio; the headline count; the rules (:data:`RULES`); a cost-vs-accuracy plot per task.

Reads only the latest cost table of each task from the results store (the benchmark-report asset:
the table of the task's last successful ``<task>_cost_table`` materialisation): tasks without one
are listed as missing, never fail the report.

A rehearsal's report (``stand_ins``: the profile's frontier models answered through the provider fake)
says so in its title, its headline and every frontier row, and is written as ``rehearsal_report.md``,
never as ``benchmark_report.md``: its numbers prove the code path, they are not results.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distil_platform.economics.cost_inputs import STAGE_COST_TABLE
from distil_platform.economics.costs import (
    MID_TIER_MAX_INPUT_PER_MTOK,
    fmt_usd,
    latest_cost_table,
    teacher_lines,
)
from distil_platform.economics.stats import verdict_label

API_ROLES = ("frontier", "mid_tier")
TEMPERATURE_0_VARIANT = "@t0"  # variant suffix of a comparison model's extra run at temperature 0
GOOD_VERDICTS = ("win", "non_inferior")
STAND_IN_MARK = " [stand-in]"  # after every frontier model's name in a rehearsal's report
STAND_IN_TITLE = "# Rehearsal report: frontier rows are stand-ins, not benchmark results"
STAND_IN_NOTE = ("**Rehearsal** (profile `rehearsal`): every frontier model and the judge were answered by the "
                 "provider fake on loopback (distil_platform/llm/provider_fake.py: a small local model's answers, "
                 "or a test's deterministic ones), and the student is a small CPU stand-in; every number below proves that the gpu profile's code "
                 "path runs, none is a score or a cost of the models named. Do not publish it as a result.")

RULES = (
    "Verdicts compare the student with a model on the same test items (paired) and never pair items scored "
    "by different metrics (a judge score with a token-F1 fallback). With 0/1 scores: **win** / **loss** when "
    "the exact McNemar test is significant at 5% (two-sided), and the interval of (student − model) is "
    "Newcombe's paired-Wilson 95% CI; with other scores (judge scores, runs averaged per item) the paired "
    "BCa bootstrap 95% CI decides: win when it lies above 0, loss below. Otherwise the student is "
    "**non-inferior (δ)** when the CI's lower bound is above −δ, the task's margin (default 0.02 = 2 points; "
    "one-sided 2.5% level), and **inconclusive** when the data cannot tell. \"Matches\" in the headline means "
    "non-inferior. Accuracy intervals: Wilson for 0/1 item scores, BCa bootstrap otherwise. Every student "
    "variant gets its own verdict; the report names the reference variant (served at the hardware's compute "
    "dtype: bf16, fp16 or fp32), or fp8 when fp8 is non-inferior to it and "
    "cheaper per request, and uses that variant's verdict. Students are priced at hardware $/hour ÷ "
    "sustained requests/s of the same checkpoint (a profile of another checkpoint is refused); API models at "
    "measured tokens per request (cached prompt tokens at the cached price) × the price snapshot. "
    "Gap closed: (student − base) / (teacher − base) on the items the student, its zero-shot base and the teacher "
    "scored with the same metric, with a paired percentile bootstrap 95% CI (items resampled jointly); deploy at "
    "≥ 0.8, retune at 0.4–0.8, below under 0.4; not defined where the teacher is the student's base model or "
    "does not beat it. The teacher gate: the teacher's score on the test set, PROCEED / ITERATE / RETHINK by the "
    "task's thresholds; on RETHINK the student is trained on the seeds alone (\"seed-only\")."
)


@dataclass
class TaskSummary:
    task: str
    student: Mapping[str, Any] | None  # the named student variant's cost-table row
    mid_tier: Mapping[str, Any] | None  # best measured mid-tier model; else the cheapest estimated one
    mid_tier_measured: bool
    verdict: str | None  # the named student vs the mid-tier model: win / non_inferior / inconclusive / loss
    cost_ratio: float | None  # mid-tier $/M requests ÷ student $/M requests
    snapshot_hash: str | None
    margin: float | None = None
    verdict_test: str | None = None
    diff: tuple[float, float, float] | None = None  # (student − model, CI low, CI high)
    verdict_note: str | None = None  # where exact McNemar and the interval disagree (stats.compare)
    # The same mid-tier model run at temperature 0 (TaskSpec.frontier_temperature_0), when measured.
    mid_tier_t0: Mapping[str, Any] | None = None
    verdict_t0: str | None = None
    unpriced: list[str] = field(default_factory=list)  # comparison models shown as "price unknown"
    # Further per-task columns (name -> cell text), appended to the summary table in order.
    extra: dict[str, str] = field(default_factory=dict)
    base: Mapping[str, Any] | None = None  # the zero-shot base's cost-table row (the gap closed's base)
    candidates: str | None = None  # the choice among student candidates, with why (None: one student)


@dataclass
class Report:
    markdown: str
    headline: str
    path: Path
    tasks: list[str]
    missing: list[str]
    plots: dict[str, str]
    summaries: list[TaskSummary]


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def is_mid_tier(row: Mapping[str, Any]) -> bool:
    price = _num(row.get("input_usd_per_mtok"))
    return row.get("role") in API_ROLES and price is not None and price < MID_TIER_MAX_INPUT_PER_MTOK


def _is_t0(row: Mapping[str, Any]) -> bool:
    return str(row.get("variant") or "").endswith(TEMPERATURE_0_VARIANT)


def name_student(students: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The variant the report names: the reference (the first row, at its compute dtype), or an fp8 row that is
    non-inferior to it (or better) on the same items and cheaper per request."""
    if not students:
        return None
    reference = students[0]
    named = reference
    for row in students[1:]:
        verdict = (reference.get("verdicts") or {}).get(row.get("variant"))  # this variant vs the reference
        cost, named_cost = _num(row.get("usd_per_million_requests")), _num(named.get("usd_per_million_requests"))
        if verdict and verdict.get("verdict") in GOOD_VERDICTS and cost is not None and (
                named_cost is None or cost < named_cost):
            named = row
    return named


def named_row(rows: Sequence[Mapping[str, Any]], students: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The student the report names: the candidate the cost table chose (``economics.candidates``),
    else (the first candidate chosen, or none good enough, or a single student) ``name_student``."""
    chosen = next((r for r in rows if r.get("candidate_choice") == "chosen"), None)
    if chosen is not None and chosen.get("role") == "candidate" and _num(chosen.get("accuracy")) is not None:
        return chosen
    return name_student(students)


def _verdict_of(student: Mapping[str, Any], reference: Mapping[str, Any], other: Mapping[str, Any]):
    if student.get("role") == "candidate":  # a further candidate: its verdicts vs its own table's models
        return (student.get("versus") or {}).get(other.get("model"))
    if student is reference:
        if other.get("student_result") is None:
            return None
        return {"verdict": other.get("student_result"), "test": other.get("verdict_test"),
                "diff": other.get("diff_vs_student"), "ci_low": other.get("diff_ci_low"),
                "ci_high": other.get("diff_ci_high"), "verdict_note": other.get("verdict_note")}
    return (other.get("verdicts") or {}).get(student.get("variant"))


def summarise_task(task: str, rows: Sequence[Mapping[str, Any]]) -> TaskSummary:
    students = [r for r in rows if r.get("role") == "student" and _num(r.get("accuracy")) is not None]
    student = named_row(rows, students)
    mids = [r for r in rows if is_mid_tier(r) and not _is_t0(r)]
    measured = [r for r in mids if _num(r.get("accuracy")) is not None]
    if measured:
        mid = max(measured, key=lambda r: r["accuracy"])
    else:
        priced = [r for r in mids if _num(r.get("usd_per_million_requests")) is not None]
        mid = min(priced, key=lambda r: r["usd_per_million_requests"], default=None)
    reference = students[0] if students else None  # the table's own student (None: it has no accuracy)
    result = _verdict_of(student, reference, mid) if student is not None and mid is not None and measured else None
    mid_t0 = None
    result_t0 = None
    if mid is not None:
        mid_t0 = next((r for r in rows if _is_t0(r) and str(r.get("model", "")).startswith(mid["model"] + " @")
                       and _num(r.get("accuracy")) is not None), None)
        if mid_t0 is not None and student is not None:
            result_t0 = _verdict_of(student, reference, mid_t0)
    s_cost = _num(student.get("usd_per_million_requests")) if student else None
    m_cost = _num(mid.get("usd_per_million_requests")) if mid else None
    margin = _num(rows[0].get("margin")) if rows else None
    return TaskSummary(
        task=task, student=student, mid_tier=mid, mid_tier_measured=bool(measured),
        verdict=result["verdict"] if result else None,
        cost_ratio=(m_cost / s_cost) if s_cost and m_cost is not None else None,
        snapshot_hash=rows[0].get("snapshot_hash") if rows else None,
        margin=margin, verdict_test=result.get("test") if result else None,
        verdict_note=result.get("verdict_note") if result else None,
        diff=(result["diff"], result["ci_low"], result["ci_high"]) if result and result.get("diff") is not None else None,
        mid_tier_t0=mid_t0, verdict_t0=result_t0["verdict"] if result_t0 else None,
        unpriced=[r["model"] for r in rows if r.get("cost_basis") == "api"
                  and str(r.get("cost_note") or "").startswith("price unknown")],
        base=next((r for r in rows if r.get("variant") == "zero_shot" and _num(r.get("accuracy")) is not None), None),
        candidates=next((str(r["candidate_choice_note"]) for r in rows if r.get("candidate_choice_note")), None),
    )


def _score(row: Mapping[str, Any] | None) -> str:
    if not row or _num(row.get("accuracy")) is None:
        return "– (not evaluated)"
    return f"{row['accuracy']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def headline(summaries: Sequence[TaskSummary]) -> str:
    compared = [s for s in summaries if s.verdict is not None]
    counts = {v: sum(1 for s in compared if s.verdict == v) for v in ("win", "non_inferior", "inconclusive", "loss")}
    good = [s for s in compared if s.verdict in GOOD_VERDICTS]
    margins = sorted({s.margin for s in compared if s.margin is not None})
    delta = "/".join(f"{m:g}" for m in margins) or "0.02"
    text = (f"The distilled student matches or beats the best mid-tier frontier model on {len(good)} of "
            f"{len(compared)} task(s) with a measured comparison")
    if compared:
        text += (f" ({counts['win']} win(s), {counts['non_inferior']} non-inferior within δ = {delta}; "
                 f"{counts['inconclusive']} inconclusive, {counts['loss']} loss(es))")
        cheaper = [s for s in good if s.cost_ratio is not None and s.cost_ratio > 1]
        if cheaper:
            ratios = sorted(s.cost_ratio for s in cheaper)
            text += (f"; it is cheaper per request on {len(cheaper)} of those "
                     f"(median {ratios[len(ratios) // 2]:.3g}× cheaper)")
    return text + "."


def summary_row(s: TaskSummary) -> dict[str, str]:
    """One task's cells of the summary table (column -> text); ``s.extra`` adds columns."""
    st, mid = s.student, s.mid_tier
    mid_name = "–" if mid is None else mid["model"] + ("" if s.mid_tier_measured else " (cost estimated)")
    verdict = verdict_label(s.verdict, s.margin)
    if s.verdict is not None:
        detail = f"{s.verdict_test}" + (f"; Δ {s.diff[0]:+.3f} [{s.diff[1]:+.3f}, {s.diff[2]:+.3f}]" if s.diff else "")
        verdict += f" ({detail}" + (f"; {s.verdict_note}" if s.verdict_note else "") + ")"
    row = {
        "task": s.task,
        "student (variant)": (f"{st['model']} ({st['variant']}" + (f"; candidate {st['candidate']}" if s.candidates
                              and st.get("candidate") else "") + ")") if st else "–",
        "score (95% CI)": _score(st),
        "$/M req": fmt_usd(_num(st.get("usd_per_million_requests"))) if st else "–",
        "best mid-tier model": mid_name,
        "mid-tier score (95% CI)": _score(mid),
        "mid-tier $/M req": fmt_usd(_num(mid.get("usd_per_million_requests"))) if mid else "–",
        "student vs mid-tier (test)": verdict,
        "vs mid-tier @ temperature 0": (f"{_score(s.mid_tier_t0)}: {verdict_label(s.verdict_t0, s.margin)}"
                                        if s.mid_tier_t0 is not None else "–"),
        "cost ratio (mid-tier ÷ student)": f"{s.cost_ratio:.3g}×" if s.cost_ratio is not None else "–",
        "teacher · student · base": " · ".join(_short(v) for v in (
            (_num(st.get("teacher_accuracy")) if st else None), (_num(st.get("accuracy")) if st else None),
            (_num(s.base.get("accuracy")) if s.base else None))),
        "gap closed": str(st.get("gap_closed_note") or "–") if st else "–",
        "teacher gate": str(st.get("teacher_gate") or "–") if st else "–",
    }
    row.update(s.extra)
    return row


def _short(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def plot_task(task: str, rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Accuracy (with CI) against USD per million requests, log cost axis."""
    pts = [r for r in rows if _num(r.get("accuracy")) is not None and _num(r.get("usd_per_million_requests"))]
    pts = [r for r in pts if r["usd_per_million_requests"] > 0]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"student": "tab:green", "frontier": "tab:red", "mid_tier": "tab:orange", "baseline": "tab:grey"}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in pts:
        x, y = r["usd_per_million_requests"], r["accuracy"]
        lo, hi = _num(r.get("ci_low")), _num(r.get("ci_high"))
        yerr = [[max(y - lo, 0)], [max(hi - y, 0)]] if lo is not None and hi is not None else None
        marker = "o" if r.get("cost_source") == "measured" else "s"
        ax.errorbar([x], [y], yerr=yerr, fmt=marker, color=colours.get(r["role"], "tab:blue"), capsize=3)
        label = r["model"] + (f" ({r['variant']})" if r["role"] == "student" else "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("USD per million requests (log; squares: estimated cost)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{task}: cost vs accuracy")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mark_stand_ins(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Cost-table rows with every frontier (API) model's name marked as a stand-in."""
    return [{**r, "model": str(r.get("model")) + STAND_IN_MARK} if r.get("role") in API_ROLES else dict(r)
            for r in rows]


def build_markdown(summaries: Sequence[TaskSummary], tables: Mapping[str, Sequence[Mapping[str, Any]]],
                   missing: Sequence[str], plots: Mapping[str, str], head: str, *, stand_ins: bool = False) -> str:
    lines = [STAND_IN_TITLE, "", STAND_IN_NOTE, ""] if stand_ins else ["# Benchmark report", ""]
    lines += [f"**{head}**", ""]
    rows = [summary_row(s) for s in summaries]
    if stand_ins:  # every frontier model's name, wherever a cell names it (best mid-tier, routes, unpriced)
        names = sorted({str(r.get("model")) for rows_ in tables.values() for r in rows_ if r.get("role") in API_ROLES},
                       key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(n) for n in names) or "(?!)")
        for row in rows:
            for column, cell in row.items():
                if column not in ("task", "student (variant)"):
                    row[column] = pattern.sub(lambda m: m.group(0) + STAND_IN_MARK, cell)
        tables = {task: mark_stand_ins(rows_) for task, rows_ in tables.items()}
    if rows:
        columns = list(dict.fromkeys(c for r in rows for c in r))
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(r.get(c, "–") for c in columns) + " |" for r in rows]
    if missing:
        lines += ["", f"Tasks without a cost table yet: {', '.join(missing)}."]
    margins = ", ".join(f"{s.task} δ = {s.margin:g}" for s in summaries if s.margin is not None)
    lines += ["", RULES + (f" Margins: {margins}." if margins else "")]
    from distil_platform.economics.costs import cost_table_markdown

    for s in summaries:
        if s.unpriced:
            lines += ["", f"{s.task}: price unknown for {', '.join(n + (STAND_IN_MARK if stand_ins else '') for n in s.unpriced)} (see the pricing file's `unpriced`)."]
    for task, rows_ in tables.items():
        judge = rows_[0].get("judge")
        lines += ["", f"## {task}", "", f"Prices: snapshot `{(rows_[0].get('snapshot_hash') or '')[:12]}` "
                  f"as of {rows_[0].get('snapshot_as_of')}." + (f" LLM judge: {judge}." if judge else ""), "",
                  cost_table_markdown(rows_)]
        lines += ["", "Teacher, student and base: " + "; ".join(teacher_lines(rows_)) + "."]
        choice = next((s.candidates for s in summaries if s.task == task and s.candidates), None)
        if choice:
            lines += ["", f"Student candidates: {choice}"]
        lineage = [f"{r['model']} ({r['variant']}): {r['lineage']}" for r in rows_
                   if r.get("role") == "student" and r.get("lineage")]
        if lineage:
            lines += ["", "Student lineage: " + "; ".join(lineage) + "."]
        if task in plots:
            lines += ["", f"![{task} cost vs accuracy]({Path(plots[task]).name})"]
    return "\n".join(lines) + "\n"


def write_report(store: Any, task_names: Sequence[str], out_dir: Path,
                 runs: Mapping[str, Mapping[str, Sequence[str]]] | None = None, *, stand_ins: bool = False) -> Report:
    """Summarise every task that has a cost table; write the markdown and plots into ``out_dir``
    (``stand_ins``: a rehearsal's, marked as such: module docstring).

    ``runs`` (what the asset passes, from Dagster's record): task -> {``STAGE_COST_TABLE``: table ids,
    ``STAGE_ROUTING``: run ids} of the successful materialisations, newest first; a task missing
    from it has neither. None: each task's newest cost table and routing (offline inspection only)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task_runs = {t: None if runs is None else runs.get(t, {}) for t in task_names}
    tables = {t: latest_cost_table(store, t, None if r is None else r.get(STAGE_COST_TABLE, ()))
              for t, r in task_runs.items()}
    missing = [t for t, rows in tables.items() if not rows]
    tables = {t: rows for t, rows in tables.items() if rows}
    summaries = [summarise_task(t, rows) for t, rows in tables.items()]
    from distil_platform.economics.routing_io import routing_report_columns

    for s in summaries:  # the routing column: recommended route and its cost ratio vs the mid-tier model
        s.extra.update(routing_report_columns(store, s, task_runs[s.task]))
    plots = {}
    for task, rows in tables.items():
        path = plot_task(task, mark_stand_ins(rows) if stand_ins else rows,
                         out_dir / f"{task}_{'rehearsal_' if stand_ins else ''}cost_vs_accuracy.png")
        if path:
            plots[task] = str(path)
    head = headline(summaries)
    if stand_ins:
        head = f"REHEARSAL, frontier rows are stand-ins (not results): {head}"
    markdown = build_markdown(summaries, tables, missing, plots, head, stand_ins=stand_ins)
    path = out_dir / ("rehearsal_report.md" if stand_ins else "benchmark_report.md")
    path.write_text(markdown, encoding="utf-8")
    return Report(markdown=markdown, headline=head, path=path, tasks=list(tables), missing=missing, plots=plots,
                  summaries=summaries)
