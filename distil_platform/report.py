"""The cross-task benchmark report: per task, the best student against the best mid-tier frontier
model (< $1 per million input tokens), with scores and CIs, the paired verdict, USD per million
requests and the cost ratio; the headline count; a cost-vs-accuracy plot per task.

Reads only the latest cost table of each task from the results store: tasks without one are
listed as missing, never fail the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distil_platform.costs import MID_TIER_MAX_INPUT_PER_MTOK, fmt_usd, latest_cost_table

API_ROLES = ("frontier", "mid_tier")


@dataclass
class TaskSummary:
    task: str
    student: Mapping[str, Any] | None
    mid_tier: Mapping[str, Any] | None  # best measured mid-tier model; else the cheapest estimated one
    mid_tier_measured: bool
    verdict: str | None  # student's result vs the mid-tier model: win / tie / loss
    cost_ratio: float | None  # mid-tier $/M requests ÷ student $/M requests
    snapshot_hash: str | None


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


def summarise_task(task: str, rows: Sequence[Mapping[str, Any]]) -> TaskSummary:
    students = [r for r in rows if r.get("role") == "student" and _num(r.get("accuracy")) is not None]
    # Best student by accuracy; the cheaper one on a tie.
    student = max(students, key=lambda r: (r["accuracy"], -(_num(r.get("usd_per_million_requests")) or math.inf)),
                  default=None)
    mids = [r for r in rows if is_mid_tier(r)]
    measured = [r for r in mids if _num(r.get("accuracy")) is not None]
    if measured:
        mid = max(measured, key=lambda r: r["accuracy"])
    else:
        priced = [r for r in mids if _num(r.get("usd_per_million_requests")) is not None]
        mid = min(priced, key=lambda r: r["usd_per_million_requests"], default=None)
    verdict = None
    # Verdicts in the cost table are against the reference (first, bf16) student row.
    if student is not None and student is students[0] and mid is not None and measured:
        verdict = mid.get("student_result")
    s_cost = _num(student.get("usd_per_million_requests")) if student else None
    m_cost = _num(mid.get("usd_per_million_requests")) if mid else None
    return TaskSummary(
        task=task, student=student, mid_tier=mid, mid_tier_measured=bool(measured), verdict=verdict,
        cost_ratio=(m_cost / s_cost) if s_cost and m_cost is not None else None,
        snapshot_hash=rows[0].get("snapshot_hash") if rows else None,
    )


def _score(row: Mapping[str, Any] | None) -> str:
    if not row or _num(row.get("accuracy")) is None:
        return "– (not evaluated)"
    return f"{row['accuracy']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def headline(summaries: Sequence[TaskSummary]) -> str:
    compared = [s for s in summaries if s.verdict is not None]
    good = [s for s in compared if s.verdict in ("win", "tie")]
    cheaper = [s for s in compared if s.cost_ratio is not None and s.cost_ratio > 1]
    text = (f"The distilled student matches or beats the best mid-tier frontier model on {len(good)} of "
            f"{len(compared)} task(s) with a measured comparison")
    if compared:
        wins = sum(1 for s in compared if s.verdict == "win")
        text += f" ({wins} win(s), {len(good) - wins} tie(s), {len(compared) - len(good)} loss(es))"
        if cheaper:
            ratios = sorted(s.cost_ratio for s in cheaper)
            text += (f"; it is cheaper per request on {len(cheaper)} of them "
                     f"(median {ratios[len(ratios) // 2]:.3g}× cheaper)")
    return text + "."


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


def build_markdown(summaries: Sequence[TaskSummary], tables: Mapping[str, Sequence[Mapping[str, Any]]],
                   missing: Sequence[str], plots: Mapping[str, str], head: str) -> str:
    lines = ["# Benchmark report", "", f"**{head}**", "",
             "| task | best student | score (95% CI) | $/M req | best mid-tier model | score (95% CI) "
             "| $/M req | student vs mid-tier | cost ratio (mid-tier ÷ student) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        st, mid = s.student, s.mid_tier
        mid_name = "–" if mid is None else mid["model"] + ("" if s.mid_tier_measured else " (cost estimated)")
        lines.append(
            f"| {s.task} | {st['model'] + ' (' + st['variant'] + ')' if st else '–'} | {_score(st)} "
            f"| {fmt_usd(_num(st.get('usd_per_million_requests'))) if st else '–'} | {mid_name} | {_score(mid)} "
            f"| {fmt_usd(_num(mid.get('usd_per_million_requests'))) if mid else '–'} | {s.verdict or '–'} "
            f"| {f'{s.cost_ratio:.3g}×' if s.cost_ratio is not None else '–'} |")
    if missing:
        lines += ["", f"Tasks without a cost table yet: {', '.join(missing)}."]
    lines += ["", "Verdicts are the paired bootstrap 95% CI of (student − model) over the same test items: win when "
              "it lies above 0, loss below, tie otherwise. Students are priced at hardware $/hour ÷ sustained "
              "requests/s; API models at measured tokens per request × the price snapshot."]
    from distil_platform.costs import cost_table_markdown

    for task, rows in tables.items():
        lines += ["", f"## {task}", "", f"Prices: snapshot `{(rows[0].get('snapshot_hash') or '')[:12]}` "
                  f"as of {rows[0].get('snapshot_as_of')}.", "", cost_table_markdown(rows)]
        if task in plots:
            lines += ["", f"![{task} cost vs accuracy]({Path(plots[task]).name})"]
    return "\n".join(lines) + "\n"


def write_report(store: Any, task_names: Sequence[str], out_dir: Path) -> Report:
    """Summarise every task that has a cost table; write the markdown and plots into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {t: latest_cost_table(store, t) for t in task_names}
    missing = [t for t, rows in tables.items() if not rows]
    tables = {t: rows for t, rows in tables.items() if rows}
    summaries = [summarise_task(t, rows) for t, rows in tables.items()]
    plots = {}
    for task, rows in tables.items():
        path = plot_task(task, rows, out_dir / f"{task}_cost_vs_accuracy.png")
        if path:
            plots[task] = str(path)
    head = headline(summaries)
    markdown = build_markdown(summaries, tables, missing, plots, head)
    path = out_dir / "benchmark_report.md"
    path.write_text(markdown, encoding="utf-8")
    return Report(markdown=markdown, headline=head, path=path, tasks=list(tables), missing=missing, plots=plots,
                  summaries=summaries)
