"""Re-pricing all materialised tasks vs re-running their evals.

Setup (real, per task): serve the model with ``transformers serve``, answer the task's test rows
through the platform's LLM client and score them (the student-eval path: predictions and per-request
usage land in the results store), then a short guidellm load test for the throughput profile. The
eval part (server start + answering + scoring) is timed: that is what re-running an eval costs.

Re-pricing: edit the pricing file, then materialise ``pricing``, every ``<task>_cost_table`` and
``benchmark_report`` through Dagster, with every way of reaching a model (litellm, httpx, aiohttp,
``serving.serve``) counting calls. Timed over several repetitions (median).

    .venv/bin/python benchmarks/repricing.py                       # smollm2, 3 tasks, 30 rows
    .venv/bin/python benchmarks/repricing.py --model tiny-qwen3 --rows 10

Writes ``benchmarks/results/repricing.json`` (and prints a summary). Run alone: the numbers on a
shared 2-core machine are only meaningful without other CPU-heavy work (the load average is
recorded alongside).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def setup_task(spec, model_dir: Path, rows: int, threads: int, log, rates: list[float], duration_s: float) -> dict:
    """Real eval + throughput profile of ``model_dir`` on ``spec``'s sample test rows."""
    import polars as pl
    from distil_platform.resources.models import LLMResource

    from distil_platform.economics.hardware_keys import pricing_hardware_key
    from distil_platform.evaluation.evaluate import client_answer_fn, evaluate, prediction_rows
    from distil_platform.evaluation.summary import summarize
    from distil_platform.serving.loadtest import load_test
    from distil_platform.serving.server import serve
    from distil_platform.serving.throughput import analyse, point_rows
    from distil_platform.storage.lineage import record_student_lineage
    from distil_platform.storage.modelstore import chat_token_counter
    from distil_platform.storage.store import (
        ResultsStore,
        predictions,
        seed_sets,
        throughput_points,
        throughput_profiles,
    )

    store = ResultsStore()
    test = pl.read_ndjson(spec.sample_dir() / "test.jsonl").head(rows)
    if "context" not in test.columns:
        test = test.with_columns(pl.lit("").alias("context"))
    test = test.with_columns(pl.col("id").cast(pl.Utf8)).select("id", "question", "answer", "context")
    test_path = Path(os.environ["DAGSTER_HOME"]) / f"{spec.name}_test.parquet"
    test.write_parquet(test_path)
    store.insert(seed_sets, [dict(task=spec.name, run_id="bench", source="sample", n_seed=0, n_test=test.height,
                                  seed_path=str(test_path), test_path=str(test_path), content_hash="bench")])
    test_rows = test.to_dicts()
    served = f"{spec.name}-student"
    started = time.monotonic()
    with serve(model_dir, backend="transformers", served_model_name=served,
               env={"OMP_NUM_THREADS": str(threads)}, log=log) as server:
        server_start_s = time.monotonic() - started
        client = LLMResource().client(model=server.litellm_model, api_base=server.base_url, run_id="bench-eval",
                                      task=spec.name, stage="student_eval", concurrency=1,
                                      token_counter=chat_token_counter(model_dir))
        results = evaluate(spec, test_rows, client_answer_fn(client, 0.0, spec.max_answer_tokens,
                                                       [r["id"] for r in test_rows]))
        eval_s = time.monotonic() - started
        calls = client.http_calls
        store.insert(predictions, prediction_rows(results, task=spec.name, stage="student_eval", model=served,
                                                  run_id="bench-eval", variant="student"))
        # What the student-eval asset records: the checkpoint these scores belong to (the cost table
        # asset never prices an eval without it as the student).
        record_student_lineage(store, task=spec.name, stage="student_eval", run_id="bench-eval", model=served,
                               student={"run_id": "bench", "use_synthetic": True, "checkpoint_path": str(model_dir)},
                               variant="bf16")
        points, _ = load_test(spec, test_rows, base_url=server.base_url, model=server.model,
                              tokenizer=str(model_dir), rates=rates, duration_s=duration_s,
                              workdir=Path(os.environ["DAGSTER_HOME"]) / "load" / spec.name)
        summary = analyse(points, spec.latency_slo_s)
        peak = server.peak_memory_gb()
        common = dict(run_id="bench-tp", task=spec.name, model=served, variant="bf16", backend=server.backend,
                      hardware=server.hardware_description)
        store.insert(throughput_points, point_rows(points, peak_memory_gb=peak, **common))
        store.insert(throughput_profiles, [dict(common, hardware_key=pricing_hardware_key(server.hardware_key,
                                                                                        server.hardware_description),
                                                sustained_rps=summary.sustained_rps,
                                                max_achieved_rps=summary.max_achieved_rps, slo_s=summary.slo_s,
                                                peak_memory_gb=peak)])
    score = summarize(results).score
    log(f"{spec.name}: eval {eval_s:.1f}s ({calls} model calls, score {score:.3f}); "
        f"sustained {summary.sustained_rps:g} req/s, max {summary.max_achieved_rps:.3g} req/s")
    return {"task": spec.name, "eval_s": eval_s, "server_start_s": server_start_s,
            "answer_and_score_s": eval_s - server_start_s, "eval_model_calls": calls, "rows": len(test_rows), "score": score,
            "sustained_rps": summary.sustained_rps, "max_achieved_rps": summary.max_achieved_rps}


class CallCounter:
    """Counts (and refuses) every model call during re-pricing."""

    def __init__(self):
        self.calls = 0
        self._undo = []

    def __enter__(self):
        import aiohttp
        import httpx
        import litellm

        from distil_platform.serving import server as serving

        def refuse(*a, **k):
            self.calls += 1
            raise RuntimeError("model call during re-pricing")

        targets = [(litellm, n) for n in ("completion", "acompletion", "text_completion", "atext_completion")]
        targets += [(httpx.Client, "send"), (httpx.AsyncClient, "send"), (aiohttp.ClientSession, "_request"),
                    (serving, "serve")]
        for obj, name in targets:
            self._undo.append((obj, name, getattr(obj, name)))
            setattr(obj, name, refuse)
        return self

    def __exit__(self, *exc):
        for obj, name, orig in reversed(self._undo):
            setattr(obj, name, orig)


def reprice(specs, pricing_path: Path, output_per_mtok: float) -> tuple[float, int, bool]:
    """Edit one price, then materialise pricing + cost tables + report. Returns (seconds, calls, ok)."""
    import dagster as dg
    import yaml
    from distil_platform.assets.costs import build_shared_cost_assets, build_task_cost_assets
    from distil_platform.assets.keys import task_key
    from distil_platform.assets.published import store_run_id_metadata
    from distil_platform.resources.store import ResultsStoreResource

    data = yaml.safe_load(pricing_path.read_text())
    data["models"]["anthropic/claude-haiku-4-5"]["output_per_mtok"] = output_per_mtok
    pricing_path.write_text(yaml.safe_dump(data))
    assets = [a for s in specs for a in build_task_cost_assets(s) if a.key.path[0].endswith("_cost_table")]
    assets += build_shared_cost_assets([s.name for s in specs])
    instance = dg.DagsterInstance.ephemeral()
    for s in specs:  # what the measuring runs would leave in Dagster: the asset reads only these rows
        for stage, run_id in (("student_eval", "bench-eval"), ("throughput", "bench-tp")):
            instance.report_runless_asset_event(dg.AssetMaterialization(task_key(s.name, stage),
                                                                        metadata=store_run_id_metadata(run_id)))
    with CallCounter() as counter:
        start = time.monotonic()
        result = dg.materialize(assets, resources={"results_store": ResultsStoreResource()}, instance=instance)
        elapsed = time.monotonic() - start
    return elapsed, counter.calls, result.success


def reprice_computation(specs) -> tuple[float, int]:
    """The same re-pricing without Dagster's run machinery: snapshot, cost tables, report."""
    from distil_platform.assets.costs import compute_cost_table

    from distil_platform.economics.pricing import build_snapshot, store_snapshot
    from distil_platform.economics.pricing_file import pricing_file
    from distil_platform.economics.report import write_report
    from distil_platform.storage.paths import reports_dir
    from distil_platform.storage.store import ResultsStore

    store = ResultsStore()
    with CallCounter() as counter:
        start = time.monotonic()
        store_snapshot(store, build_snapshot(pricing_file(), [r.model for s in specs for r in s.comparison_models]),
                       "bench")
        for spec in specs:
            compute_cost_table(spec, store, f"bench-{time.monotonic_ns()}")
        write_report(store, [s.name for s in specs], reports_dir())
        elapsed = time.monotonic() - start
    return elapsed, counter.calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tasks", default="text2sql,banking77,trec")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rates", default="0.5,2", help="load-test rates (req/s) for the throughput profiles")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load-test rate")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "repricing.json"))
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="distil-repricing-"))
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.pop("DISTIL_DB_URL", None)
    pricing_path = home / "pricing.yaml"
    pricing_path.write_text((REPO / "distil_platform" / "config" / "pricing.yaml").read_text())
    os.environ["DISTIL_PRICING_FILE"] = str(pricing_path)

    from distil_platform.storage.modelstore import resolve_model
    from distil_platform.tasks.spec import get_task

    def log(msg: str) -> None:
        print(msg, flush=True)

    model_dir = resolve_model(args.model)
    specs = [get_task(t) for t in args.tasks.split(",")]
    load_before = _loadavg()
    rates = [float(r) for r in args.rates.split(",")]
    setups = [setup_task(spec, model_dir, args.rows, args.threads, log, rates, args.duration) for spec in specs]

    # The first run pays Dagster's one-off imports; then re-price with a new price each time.
    first = reprice(specs, pricing_path, 20.0)
    runs = [reprice(specs, pricing_path, 20.0 + i) for i in range(1, args.repeats + 1)]
    times = [r[0] for r in runs]
    computation = [reprice_computation(specs) for _ in range(args.repeats)]
    calls = sum(r[1] for r in [first, *runs]) + sum(c[1] for c in computation)
    ok = all(r[2] for r in [first, *runs])
    eval_total = sum(s["eval_s"] for s in setups)
    median = statistics.median(times)
    record = {
        "model": args.model, "tasks": [s.name for s in specs], "rows_per_task": args.rows,
        "server_threads": args.threads, "loadavg_before": load_before, "loadavg_after": _loadavg(),
        "per_task": setups, "eval_total_s": eval_total, "eval_model_calls": sum(s["eval_model_calls"] for s in setups),
        "repricing_first_s": first[0], "repricing_s": times, "repricing_median_s": median,
        "repricing_model_calls": calls, "repricing_all_succeeded": ok,
        "speedup_vs_eval": eval_total / median if median else None,
        "repricing_computation_s": [c[0] for c in computation],
        "repricing_computation_median_s": statistics.median(c[0] for c in computation),
    }
    record["speedup_computation_vs_eval"] = eval_total / record["repricing_computation_median_s"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k != "per_task"}, indent=1))
    answer_total = sum(s["answer_and_score_s"] for s in setups)
    record["answer_and_score_total_s"] = answer_total
    record["speedup_vs_answering_only"] = answer_total / median if median else None
    out.write_text(json.dumps(record, indent=1))
    print(f"re-pricing computation alone (no Dagster run): {record['repricing_computation_median_s']:.3f}s median "
          f"-> {record['speedup_computation_vs_eval']:.0f}x faster than the evals")
    print(f"re-pricing {len(specs)} task(s): {median:.2f}s median, {calls} model calls; re-running their evals: "
          f"{eval_total:.1f}s ({answer_total:.1f}s without server start-up) -> {eval_total / median:.0f}x "
          f"({answer_total / median:.0f}x) faster")


if __name__ == "__main__":
    main()
