"""Pair two stored evaluations of a task on the same test items, across runs and results stores.

The distillation benchmark pairs the students it trains in one run. This pairs any two evaluations
that were stored (e.g. a student trained for 300 steps in one run against one trained for 150 steps
in an earlier run): the same difference, Newcombe interval, exact McNemar and verdict as the
platform's comparisons (``evaluation.paired_comparison``), on the items both scored.

    .venv/bin/python benchmarks/pair_runs.py --task git_assistant \\
        --a sqlite:////tmp/bench300/results.db@git_assistant-student-abc --a-label "distilled 300" \\
        --b sqlite:////tmp/bench_home/results.db@git_assistant-student-def --b-label "seed-only 150"

Each side is ``STORE_URL@MODEL`` (the served student name) or ``STORE_URL@run:RUN_ID``; the stage
defaults to ``student_eval``. Prints JSON; ``--out`` writes it too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distil_platform.economics.stats import DEFAULT_MARGIN, wilson_interval
from distil_platform.evaluation.evaluate import results_from_store_rows
from distil_platform.evaluation.summary import PAIRED_KEYS, paired_comparison
from distil_platform.storage.store import ResultsStore, predictions


def load_side(ref: str, task: str, stage: str) -> tuple[list, dict]:
    """The stored item results of one side (``URL@MODEL`` or ``URL@run:RUN_ID``)."""
    url, sep, who = ref.rpartition("@")
    if not sep or not url or not who:
        raise SystemExit(f"{ref!r}: expected STORE_URL@MODEL or STORE_URL@run:RUN_ID")
    where = {"run_id": who[4:]} if who.startswith("run:") else {"model": who}
    rows = ResultsStore(url).select(predictions, task=task, stage=stage, **where)
    if not rows:
        raise SystemExit(f"{ref!r}: no {stage} predictions of task {task!r} for {where}")
    runs = sorted({r["run_id"] for r in rows})
    if len(runs) > 1:
        raise SystemExit(f"{ref!r}: {len(runs)} runs stored for {where} ({runs}); name one with @run:RUN_ID")
    results = results_from_store_rows(rows)
    k = sum(1 for r in results if (r.score or 0.0) >= 1.0)
    lo, hi = wilson_interval(k, len(results))
    return results, {"ref": ref, "run_id": runs[0], "model": rows[0]["model"], "n": len(results), "correct": k,
                     "score": k / len(results), "ci": [lo, hi]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True)
    ap.add_argument("--a", required=True, help="STORE_URL@MODEL or STORE_URL@run:RUN_ID (the difference is a − b)")
    ap.add_argument("--b", required=True)
    ap.add_argument("--a-label", default="a")
    ap.add_argument("--b-label", default="b")
    ap.add_argument("--stage", default="student_eval")
    ap.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    a, a_info = load_side(args.a, args.task, args.stage)
    b, b_info = load_side(args.b, args.task, args.stage)
    cmp = paired_comparison(a, b, margin=args.margin)
    out = {"task": args.task, "stage": args.stage, args.a_label: a_info, args.b_label: b_info,
           "paired": {k: cmp.get(k) for k in PAIRED_KEYS if k in cmp}}
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
