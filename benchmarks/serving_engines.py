"""vLLM vs ``transformers serve``: the same checkpoint, the same prompts, the same client.

Each engine is started through ``distil_platform.serving.server.serve`` (vLLM from the serving environment,
``make serving-venv``; ``transformers serve`` with continuous batching and its capped KV cache) and
answers the text2sql test prompts (the exact eval messages of the shipped sample) with a closed-loop
client at each concurrency: requests/s over the batch, p50/p95 latency, completion tokens, and a
ratio column (vLLM / transformers). Greedy answers of the two engines are compared at concurrency 1.

    .venv/bin/python benchmarks/serving_engines.py                               # SmolLM2-135M, c = 1, 8, 32
    .venv/bin/python benchmarks/serving_engines.py --model /path/to/student --concurrency 1 8 32 64

Results go to ``benchmarks/results/serving_engines.json``. The machine is shared: the script records
the CPU share other processes took during each measurement (/proc/stat minus the server tree and
this process) and flags rows above 10% as contended.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from client_throughput import CpuWatch, contended_flag, write_record  # noqa: E402 - after the path set-up


def _pctl(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure_engine(backend: str, model_dir: Path, messages: list, concurrencies: list[int], max_tokens: int,
                   log, threads_bind: str | None = None) -> dict:
    import httpx
    import psutil

    from distil_platform.serving.server import serve

    rows, answers = [], {}
    started = time.monotonic()
    with serve(model_dir, backend=backend, served_model_name="bench", log=log, cpu_threads_bind=threads_bind) as server:
        startup_s = time.monotonic() - started
        client = httpx.Client(timeout=1800, limits=httpx.Limits(max_connections=max(concurrencies) + 4))

        def ask(msgs):
            t0 = time.monotonic()
            r = client.post(f"{server.base_url}/chat/completions",
                            json={"model": server.model, "messages": msgs, "max_tokens": max_tokens, "temperature": 0})
            r.raise_for_status()
            body = r.json()
            return time.monotonic() - t0, body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"]

        ask(messages[0])  # warm-up
        tree = [server.pid, *(p.pid for p in psutil.Process(server.pid).children(recursive=True)), os.getpid()]
        for c in concurrencies:
            with CpuWatch(tree) as watch:
                t0 = time.monotonic()
                with ThreadPoolExecutor(c) as pool:
                    out = list(pool.map(ask, messages))
                wall = time.monotonic() - t0
            latencies = [o[0] for o in out]
            answers[c] = [o[1] for o in out]
            rows.append({"engine": backend, "concurrency": c, "requests": len(out), "wall_s": round(wall, 2),
                         "rps": round(len(out) / wall, 3), "p50_s": round(statistics.median(latencies), 3),
                         "p95_s": round(_pctl(latencies, 0.95), 3),
                         "mean_completion_tokens": round(statistics.mean(o[2] for o in out), 1),
                         "other_cpu_share": round(watch.other_share, 3)})
            log(f"{backend} c={c}: {rows[-1]['rps']} req/s, p50 {rows[-1]['p50_s']} s, "
                f"other CPU {watch.other_share:.0%}")
        memory = server.memory_report()
        settings = server.settings
    return {"rows": rows, "answers": answers, "startup_s": round(startup_s, 1), "memory": memory,
            "settings": settings, "command": server.command}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model-store name or checkpoint dir")
    parser.add_argument("--task", default="text2sql")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serving_engines.json")
    parser.add_argument("--threads-bind", default=None,
                        help="instead of vLLM vs transformers: vLLM with VLLM_CPU_OMP_THREADS_BIND=auto (one "
                             "compute core on 2 cores) vs this binding (e.g. 0-1), same prompts and client")
    args = parser.parse_args()

    import polars as pl

    from distil_platform.serving.hardware import hardware_info
    from distil_platform.serving.launch import vllm_python
    from distil_platform.storage.modelstore import resolve_model
    from distil_platform.tasks.prompts import build_messages
    from distil_platform.tasks.spec import get_task

    if vllm_python() is None:
        sys.exit("no vLLM serving environment: run `make serving-venv` first")
    spec = get_task(args.task)
    model_dir = Path(args.model) if Path(args.model).is_dir() else resolve_model(args.model)
    test = pl.read_ndjson(spec.sample_dir() / "test.jsonl").head(args.rows).to_dicts()
    for row in test:
        row.setdefault("context", "")
    messages = [build_messages(spec, r) for r in test]
    load_before = os.getloadavg()
    if args.threads_bind:
        return compare_threads_bind(model_dir, messages, args, load_before)
    results = {}
    for backend in ("vllm", "transformers"):
        results[backend] = measure_engine(backend, model_dir, messages, args.concurrency, args.max_tokens, print)
    load_after = os.getloadavg()

    by = {(r["engine"], r["concurrency"]): r for e in results.values() for r in e["rows"]}
    table = []
    for c in args.concurrency:
        v, t = by[("vllm", c)], by[("transformers", c)]
        table.append({"concurrency": c, "vllm_rps": v["rps"], "transformers_rps": t["rps"],
                      "ratio": round(v["rps"] / t["rps"], 2) if t["rps"] else None,
                      "vllm_p50_s": v["p50_s"], "vllm_p95_s": v["p95_s"], "transformers_p50_s": t["p50_s"],
                      "transformers_p95_s": t["p95_s"],
                      "other_cpu_share_max": max(v["other_cpu_share"], t["other_cpu_share"])})
    c1 = min(args.concurrency)
    same = sum(a == b for a, b in zip(results["vllm"]["answers"][c1], results["transformers"]["answers"][c1]))
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": hardware_info(False)[0],
        "model": str(model_dir), "task": args.task, "rows": len(messages), "max_tokens": args.max_tokens,
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "table": table, "identical_greedy_answers_at_c1": f"{same}/{len(messages)}",
        "engines": {k: {kk: vv for kk, vv in v.items() if kk != "answers"} for k, v in results.items()},
    }
    write_record(args.out, record)
    print("\n| concurrency | vLLM req/s (p50 / p95 s) | transformers serve req/s (p50 / p95 s) | ratio | other CPU |")
    print("|---|---|---|---|---|")
    for r in table:
        print(f"| {r['concurrency']} | {r['vllm_rps']} ({r['vllm_p50_s']} / {r['vllm_p95_s']}) | {r['transformers_rps']} "
              f"({r['transformers_p50_s']} / {r['transformers_p95_s']}) | {r['ratio']}x | "
              f"{r['other_cpu_share_max']:.0%}{contended_flag(r['other_cpu_share_max'])} |")
    print(f"identical greedy answers at c={c1}: {same}/{len(messages)}; load {load_before} -> {load_after}")
    print(f"wrote {args.out}")


def compare_threads_bind(model_dir: Path, messages: list, args, load_before) -> None:
    from distil_platform.serving.hardware import hardware_info

    runs = {"auto": measure_engine("vllm", model_dir, messages, args.concurrency, args.max_tokens, print),
            args.threads_bind: measure_engine("vllm", model_dir, messages, args.concurrency, args.max_tokens, print,
                                              threads_bind=args.threads_bind)}
    by = {(k, r["concurrency"]): r for k, v in runs.items() for r in v["rows"]}
    table = []
    for c in args.concurrency:
        a, b = by[("auto", c)], by[(args.threads_bind, c)]
        table.append({"concurrency": c, "auto_rps": a["rps"], "bind_rps": b["rps"],
                      "ratio": round(b["rps"] / a["rps"], 2) if a["rps"] else None,
                      "auto_p50_s": a["p50_s"], "auto_p95_s": a["p95_s"], "bind_p50_s": b["p50_s"],
                      "bind_p95_s": b["p95_s"], "other_cpu_share_max": max(a["other_cpu_share"], b["other_cpu_share"])})
    c1 = min(args.concurrency)
    same = sum(x == y for x, y in zip(runs["auto"]["answers"][c1], runs[args.threads_bind]["answers"][c1]))
    record = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": hardware_info(False)[0],
              "model": str(model_dir), "task": args.task, "rows": len(messages), "max_tokens": args.max_tokens,
              "threads_bind": args.threads_bind, "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()], "table": table,
              "identical_greedy_answers_at_c1": f"{same}/{len(messages)}",
              "runs": {k: {kk: vv for kk, vv in v.items() if kk != "answers"} for k, v in runs.items()}}
    write_record(args.out, record)
    print(f"\n| concurrency | auto req/s (p50 / p95 s) | bind {args.threads_bind} req/s (p50 / p95 s) | ratio | other CPU |")
    print("|---|---|---|---|---|")
    for r in table:
        print(f"| {r['concurrency']} | {r['auto_rps']} ({r['auto_p50_s']} / {r['auto_p95_s']}) | {r['bind_rps']} "
              f"({r['bind_p50_s']} / {r['bind_p95_s']}) | {r['ratio']}x | {r['other_cpu_share_max']:.0%} |")
    print(f"identical greedy answers at c={c1}: {same}/{len(messages)}; wrote {args.out}")


if __name__ == "__main__":
    main()
