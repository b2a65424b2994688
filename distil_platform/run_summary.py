"""What a newcomer reads at the end of ``make run``: the task's result in a few lines.

``python -m distil_platform.run_summary text2sql`` prints, from the results store and the Dagster
instance (``$DAGSTER_HOME``):

- the student against its zero-shot base on the same test items: scores with 95% CIs, the paired
  difference, its test and the verdict (the cost table's columns); the teacher's score, the gap
  closed and what the teacher gate did to the data;
- the student's sustained requests/s under the profile's SLO and its $ per million requests, with the
  compute dtype the variant ran in;
- where each step's time went in the latest run (from Dagster's step stats);
- where the report and the UI are.

The formatting (:func:`format_summary`) is plain Python over cost-table rows and step timings; only
:func:`main` reads the store and the instance.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}%"


def _ci(row: Mapping[str, Any]) -> str:
    if row.get("ci_low") is None or row.get("ci_high") is None:
        return ""
    return f" [{_pct(row['ci_low'])}, {_pct(row['ci_high'])}]"


def _count(row: Mapping[str, Any]) -> str:
    acc, n = row.get("accuracy"), row.get("n_items")
    if acc is None or not n:
        return ""
    correct = float(acc) * int(n)
    return f" ({correct:.0f}/{n})" if abs(correct - round(correct)) < 1e-6 else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_summary(task: str, rows: Sequence[Mapping[str, Any]], *, steps: Sequence[tuple[str, float | None]] = (),
                   run_wall_s: float | None = None, report_path: str | None = None,
                   ui_command: str = "make ui") -> str:
    """The end-of-run summary (see the module docstring). ``rows``: one cost table of ``task``."""
    lines = [f"== {task}: distil-platform summary =="]
    students = [r for r in rows if r.get("role") == "student"]
    if not students:
        lines.append(f"no cost table for {task} yet: materialise {task}_cost_table")
    else:
        st = students[0]
        lines.append(f"student   {st['model']} ({st.get('variant')}): {st.get('metric') or 'score'} "
                     f"{_pct(st.get('accuracy'))}{_count(st)}{_ci(st)}")
        zero = next((r for r in rows if r.get("variant") == "zero_shot"), None)
        if zero is not None:
            lines.append(f"zero-shot {zero['model']}: {_pct(zero.get('accuracy'))}{_count(zero)}{_ci(zero)}")
            diff = zero.get("diff_vs_student")
            if diff is not None:
                test = f", {zero['verdict_test']}" if zero.get("verdict_test") else ""
                p = f", p = {zero['mcnemar_p']:.2g}" if zero.get("mcnemar_p") is not None else ""
                lines.append(f"          student − zero-shot {100 * diff:+.1f} points "
                             f"[{100 * zero['diff_ci_low']:+.1f}, {100 * zero['diff_ci_high']:+.1f}]{p}{test}: "
                             f"**{zero.get('student_result') or 'not compared'}**")
                if zero.get("verdict_note"):
                    lines.append(f"          ({zero['verdict_note']})")
        if st.get("teacher_model") or st.get("teacher_gate"):
            # The teacher gate and the gap closed (docs/assets.md, "The teacher gate and the gap closed").
            teacher = (f"{st['teacher_model']}: {_pct(st.get('teacher_accuracy'))}"
                       f"{_ci({'ci_low': st.get('teacher_ci_low'), 'ci_high': st.get('teacher_ci_high')})}"
                       if st.get("teacher_model") else "not evaluated")
            lines.append(f"teacher   {teacher}; gap closed {st.get('gap_closed_note') or '–'}")
            if st.get("teacher_gate"):
                lines.append(f"          teacher data: {st['teacher_gate']}")
        rps, cost = st.get("sustained_rps"), st.get("usd_per_million_requests")
        cost_text = "unpriced" if cost is None else f"${cost:,.2f} per million requests ({st.get('cost_source')})"
        lines.append(f"serving   sustained {rps:g} req/s under the SLO; {cost_text}" if rps is not None
                     else f"serving   no sustained rate measured; {cost_text}")
        if st.get("cost_note"):
            lines.append(f"          {st['cost_note']}")
        apis = [r for r in rows if r.get("role") in ("frontier", "mid_tier") and r.get("n_items")]
        if not apis:
            lines.append("frontier  none evaluated (no API keys set): see README, 'Run the full benchmark'")
    if steps:
        # Checks and bookkeeping steps take under a second each: the long steps are the story.
        long = [(name, sec) for name, sec in steps if sec is None or sec >= 1.0]
        short = len(steps) - len(long)
        lines.append("time      " + ", ".join(f"{name} {_duration(sec)}" for name, sec in long)
                     + (f" (+{short} steps < 1s)" if short else "")
                     + (f"; run {_duration(run_wall_s)}" if run_wall_s is not None else ""))
    if report_path:
        lines.append(f"report    {report_path}")
    lines.append(f"UI        {ui_command}  (then open http://127.0.0.1:3000, asset group '{task}')")
    return "\n".join(lines)


def _latest_run_steps(task: str) -> tuple[list[tuple[str, float | None]], float | None]:
    """Step wall times of the newest run that materialised one of ``task``'s assets."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    for record in instance.get_run_records(limit=20):
        run = record.dagster_run
        if not any(key.path[-1].startswith(task) for key in (run.asset_selection or ())):
            continue
        stats = instance.get_run_step_stats(run.run_id)
        steps = [(s.step_key, (s.end_time - s.start_time) if s.end_time and s.start_time else None)
                 for s in sorted(stats, key=lambda s: s.start_time or 0)]
        wall = (record.end_time - record.start_time) if record.end_time and record.start_time else None
        return steps, wall
    return [], None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the end-of-run summary of a task.")
    parser.add_argument("task")
    args = parser.parse_args(argv)
    from distil_platform.economics.costs import latest_cost_table
    from distil_platform.storage import paths
    from distil_platform.storage.store import ResultsStore

    rows = latest_cost_table(ResultsStore(), args.task)
    try:
        steps, wall = _latest_run_steps(args.task)
    except Exception as exc:  # noqa: BLE001 - the summary never fails a run that succeeded
        print(f"(step times unavailable: {type(exc).__name__})", file=sys.stderr)
        steps, wall = [], None
    report = Path(paths.reports_dir()) / "benchmark_report.md"
    print(format_summary(args.task, rows, steps=steps, run_wall_s=wall,
                         report_path=str(report) if report.exists() else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
