"""Teacher yield on every task: `<task>` + `<task>_teacher_data` on the shipped samples.

For each task (default: all nine in ``distil_platform/tasks``) this materialises the seed set and the
teacher stage in-process on the current profile (``DISTIL_PROFILE``, default ``local``: the served
SmolLM2-135M teacher with each task's JSON reply schema) and tabulates requests, generated,
schema-valid, accepted, accepted per request and the top rejection reasons. The target of the
teacher-data issue is >= 1 accepted row per teacher request on every task.

    DAGSTER_HOME=/tmp/yield_home .venv/bin/python benchmarks/teacher_yield.py --out benchmarks/results/teacher_yield.json

``--gate`` also materialises ``<task>_teacher_eval`` first (the teacher gate: the teacher answers the
test set; verdict PROCEED / ITERATE / RETHINK with its score and interval) and then asks the teacher
anyway (run config ``override_teacher_gate: true``), so the table shows whether the gate's verdict
predicts what the teacher data then yields.

One task at a time (each starts and stops its own teacher server); run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _md(result, key: str) -> dict:
    mat = result.asset_materializations_for_node(key)[-1]
    return {k: v.value if hasattr(v, "value") else v for k, v in mat.metadata.items()}


def task_yield(task: str, target: int | None = None, frequency_penalty: float | None = None,
               answer_agreement: bool | None = None, gate: bool = False) -> dict:
    import dagster as dg
    from distil_platform.assets.seed import build_seed_set_asset
    from distil_platform.assets.teacher import build_teacher_assets

    from distil_platform.profiles import get_profile
    from distil_platform.tasks.spec import get_task

    sys.path.insert(0, str(REPO / "benchmarks"))
    from distillation import local_resources  # the same resources as the distillation benchmark

    spec = get_task(task)
    profile = get_profile()
    assets = build_seed_set_asset(spec) + build_teacher_assets(spec, profile)
    selection = [task, f"{task}_teacher_data"]
    if gate:
        from distil_platform.assets.teacher_eval import build_teacher_eval_asset

        assets += build_teacher_eval_asset(spec, profile)
        selection.insert(1, f"{task}_teacher_eval")
    resources = local_resources(profile)
    config = {} if target is None else {"target": target}
    if gate:
        config["override_teacher_gate"] = True  # ask the teacher whatever the verdict: yield vs gate
    if frequency_penalty is not None:
        config["frequency_penalty"] = frequency_penalty
    if answer_agreement is not None:
        config["answer_agreement"] = answer_agreement
    start = time.monotonic()
    result = dg.materialize(assets, resources=resources, instance=dg.DagsterInstance.get(),
                            selection=selection,
                            run_config={"ops": {f"{task}_teacher_data": {"config": config}}})
    wall = round(time.monotonic() - start, 1)
    md = _md(result, f"{task}_teacher_data")
    summary = result.output_for_node(f"{task}_teacher_data")["summary"]
    requests = md.get("teacher_requests") or 0
    reasons = md.get("rejections_by_reason") or {}
    top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
    return {"task": task, "profile": profile.name, "teacher": md.get("teacher"), "source": md.get("source"),
            "teacher_requests": requests, "requested": md.get("requested"), "generated": md.get("generated"),
            "schema_valid": md.get("schema_valid"), "accepted": md.get("accepted"),
            "teacher_accepted": md.get("teacher_accepted"), "accepted_per_request": md.get("accepted_per_request"),
            "top_rejections": dict(top), "funnel": summary.get("funnel"),
            "frequency_penalty": md.get("frequency_penalty"),
            "answer_agreement": "answer_agreement" in (summary.get("filters") or {}),
            "rejected_by_filter": {name: st["rejected"] for name, st in (summary.get("filters") or {}).items()},
            "wall_s": wall, **(_gate(result, task) if gate else {})}


def _gate(result, task: str) -> dict:
    md = _md(result, f"{task}_teacher_eval")
    return {"gate": {k: md.get(k) for k in ("verdict", "score", "ci_low", "ci_high", "metric", "thresholds",
                                             "n_test", "teacher", "verdict_line", "wall_time_s")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=None, help="comma-separated (default: every task YAML)")
    parser.add_argument("--target", type=int, default=None, help="examples asked per task (default: the profile's)")
    parser.add_argument("--frequency-penalty", type=float, default=None,
                        help="the teacher's frequency penalty (default: each task YAML's)")
    parser.add_argument("--answer-agreement", choices=["on", "off"], default=None,
                        help="override every task's round-trip agreement filter (default: each task YAML's)")
    parser.add_argument("--gate", action="store_true", help="evaluate the teacher first (T_teacher_eval), then ask it anyway")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "teacher_yield.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("DISTIL_PROFILE", "local")
    if not os.environ.get("DAGSTER_HOME"):
        parser.error("set DAGSTER_HOME (an absolute directory)")
    from distil_platform.tasks.spec import load_tasks

    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else list(load_tasks())
    rows = []
    for task in tasks:
        print(f"== {task}", file=sys.stderr, flush=True)
        agreement = None if args.answer_agreement is None else args.answer_agreement == "on"
        rows.append(task_yield(task, args.target, args.frequency_penalty, agreement, gate=args.gate))
        Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1) + "\n")
    gate_head = ("| gate verdict | teacher score [CI] |", "|---|---|") if args.gate else ("", "")
    print(f"| task {gate_head[0]} requests | generated | schema-valid | accepted | accepted / request | top rejections |")
    print(f"|---{gate_head[1]}---|---|---|---|---|---|")
    for r in rows:
        top = ", ".join(f"`{k}` {v}" for k, v in r["top_rejections"].items()) or "–"
        g = r.get("gate") or {}
        gate_cells = ""
        if args.gate:
            score = "–" if g.get("score") is None else (f"{g['score']:.3f} [{g.get('ci_low') or 0:.3f}, "
                                                        f"{g.get('ci_high') or 0:.3f}] ({g.get('metric')})")
            gate_cells = f" {g.get('verdict')} | {score} |"
        print(f"| {r['task']} |{gate_cells} {r['teacher_requests']} | {r['generated']} | {r['schema_valid']} "
              f"| {r['accepted']} | {r['accepted_per_request']} | {top} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
