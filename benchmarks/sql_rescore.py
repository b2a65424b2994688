"""Re-score stored text2sql predictions with the databases before and after distinguishing databases.

The students' and baselines' execution-match scores recorded before the distinguishing databases
(``evaluation/scoring/sql/suite.py``) were measured on 3 generated databases only. This benchmark takes the
per-item predictions a run left in the results store (``$DAGSTER_HOME/results.db`` or
``DISTIL_DB_URL``) — the student eval and every baseline model of the latest (or a given) run — and
scores each prediction against its gold twice, on the same items:

- **before**: ``sql_execution_match(..., suite=False)`` (the 3 generated databases);
- **after**: ``suite=True`` (the 3 databases plus the gold's distinguishing databases), the scoring
  every eval uses now.

Per model it reports both scores, and every item whose verdict changed with its prediction and gold,
so each change can be explained (a near-miss the old databases passed, or — never expected — a right
answer the new databases fail). The schema of each item comes from the run's test split (the seed
set's ``test_path``, read from the Dagster instance's latest ``<task>`` materialisation).

    DAGSTER_HOME=/tmp/bench_home .venv/bin/python benchmarks/sql_rescore.py --out benchmarks/results/sql_rescore_public.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def _test_rows(task: str, test_path: str | None = None) -> dict[str, dict]:
    import dagster as dg
    import polars as pl

    if test_path:
        return {str(r["id"]): r for r in pl.read_parquet(test_path).to_dicts()}
    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey(task))
    if event is None or event.asset_materialization is None:
        raise SystemExit(f"{task}: no materialisation in DAGSTER_HOME={instance.root_directory}")
    md = event.asset_materialization.metadata
    if "test_path" not in md:
        raise SystemExit(f"{task}: its latest materialisation has no `test_path` metadata")
    path = md["test_path"].value
    return {str(r["id"]): r for r in pl.read_parquet(path).to_dicts()}


def rescore(task: str = "text2sql", student_run: str | None = None, baseline_run: str | None = None,
            test_path: str | None = None) -> dict:
    from distil_platform.evaluation.scoring import sql_schema_for
    from distil_platform.evaluation.scoring.sql.matching import sql_match_details
    from distil_platform.storage.store import ResultsStore, predictions

    store = ResultsStore()
    tests = _test_rows(task, test_path)
    runs = {"student_eval": student_run or store.latest_run_id(predictions, task=task, stage="student_eval"),
            "baseline_evals": baseline_run or store.latest_run_id(predictions, task=task, stage="baseline_evals")}
    out: dict = {"task": task, "runs": runs, "models": {}}
    for stage, run_id in runs.items():
        if run_id is None:
            continue
        rows = store.select(predictions, task=task, stage=stage, run_id=run_id)
        by_model: dict[str, list[dict]] = {}
        for r in rows:
            by_model.setdefault(f"{r['model']} ({r['variant']})", []).append(r)
        for model, items in sorted(by_model.items()):
            before, after, changed, stored = [], [], [], []
            t_before = t_after = 0.0
            for r in sorted(items, key=lambda x: (str(x["item_id"]), x.get("repeat") or 0)):
                test = tests.get(str(r["item_id"]))
                if test is None:
                    raise SystemExit(f"{task}: item {r['item_id']} of run {run_id} is not in the test split")
                schema = sql_schema_for(test)
                start = time.perf_counter()
                old = sql_match_details(r["prediction"], r["reference"], schema, suite=False)
                t_before += time.perf_counter() - start
                start = time.perf_counter()
                new = sql_match_details(r["prediction"], r["reference"], schema, suite=True)
                t_after += time.perf_counter() - start
                before.append(old.score)
                after.append(new.score)
                stored.append(float(r["score"]))
                if old.score != new.score:
                    changed.append({"item_id": r["item_id"], "before": old.score, "after": new.score,
                                    "reason_after": new.reason, "prediction": r["prediction"],
                                    "gold": r["reference"]})
            n = len(before)
            out["models"][model] = {
                "stage": stage, "run_id": run_id, "n": n,
                "before": sum(before), "after": sum(after), "stored_score_sum": sum(stored),
                "score_before": sum(before) / n, "score_after": sum(after) / n,
                "changed": changed,
                "ms_per_item_before": round(1000 * t_before / n, 2), "ms_per_item_after": round(1000 * t_after / n, 2),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="text2sql")
    parser.add_argument("--student-run", default=None)
    parser.add_argument("--baseline-run", default=None)
    parser.add_argument("--test-path", default=None, help="test split parquet (default: the instance's latest)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = rescore(args.task, args.student_run, args.baseline_run, args.test_path)
    result.update({"machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
                   "date": time.strftime("%Y-%m-%d")})
    for model, m in result["models"].items():
        print(f"{model}: before {m['before']:g}/{m['n']} after {m['after']:g}/{m['n']} "
              f"(stored {m['stored_score_sum']:g}); {len(m['changed'])} changed", file=sys.stderr)
        for c in m["changed"]:
            print(f"  {c['item_id']}: {c['before']:g} -> {c['after']:g}  pred={c['prediction']!r}\n"
                  f"      gold={c['gold']!r} ({c['reason_after']})", file=sys.stderr)
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
