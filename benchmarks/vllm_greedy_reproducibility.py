"""Are greedy answers on vLLM reproducible at a given concurrency?

One vLLM server (``serving.serve(backend="vllm")``) answers the task's test prompts (the exact eval
messages of the shipped sample) in four passes: concurrency 16 twice, then 1 twice, temperature 0;
the answers of each pair are compared as strings and scored with the task's metric.

    .venv/bin/python benchmarks/vllm_greedy_reproducibility.py --rows 25 --prefix-caching off
    .venv/bin/python benchmarks/vllm_greedy_reproducibility.py --rows 50 --prefix-caching on --batch-invariant

Results: ``benchmarks/results/vllm_greedy_reproducibility_<options>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", default="text2sql")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--prefix-caching", choices=["on", "off"], default="off")
    parser.add_argument("--batch-invariant", action="store_true", help="VLLM_BATCH_INVARIANT=1 on the server")
    args = parser.parse_args()

    import httpx
    import polars as pl

    from distil_platform.evaluation.evaluate import Answer, evaluate
    from distil_platform.evaluation.summary import summarize
    from distil_platform.serving.hardware import hardware_info
    from distil_platform.serving.server import serve
    from distil_platform.storage.modelstore import resolve_model
    from distil_platform.tasks.prompts import build_messages
    from distil_platform.tasks.spec import get_task

    spec = get_task(args.task)
    rows = pl.read_ndjson(spec.sample_dir() / "test.jsonl").head(args.rows).to_dicts()
    messages = [build_messages(spec, r) for r in rows]
    model_dir = Path(args.model) if Path(args.model).is_dir() else resolve_model(args.model)
    env = {"VLLM_BATCH_INVARIANT": "1"} if args.batch_invariant else None
    passes: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    load_before = os.getloadavg()
    with serve(model_dir, backend="vllm", served_model_name="m", enable_prefix_caching=args.prefix_caching == "on",
               env=env, log=print) as server:
        client = httpx.Client(timeout=900)

        def ask(msgs):
            r = client.post(f"{server.base_url}/chat/completions",
                            json={"model": "m", "messages": msgs, "max_tokens": args.max_tokens, "temperature": 0})
            r.raise_for_status()
            return r.json()["choices"][0]["message"]["content"]

        for name, concurrency in (("c16a", 16), ("c16b", 16), ("c1a", 1), ("c1b", 1)):
            t0 = time.monotonic()
            with ThreadPoolExecutor(concurrency) as pool:
                passes[name] = list(pool.map(ask, messages))
            seconds[name] = round(time.monotonic() - t0, 1)
            print(name, seconds[name], "s", flush=True)
        settings = server.settings
    n = len(messages)
    scores = {}
    for name, answers in passes.items():
        summary = summarize(evaluate(spec, rows, lambda _m, _r, a=answers: [Answer(text=t) for t in a]))
        scores[name] = round(summary.score * n)
    identical = {f"{a} vs {b}": sum(x == y for x, y in zip(passes[a], passes[b]))
                 for a, b in (("c1a", "c1b"), ("c16a", "c16b"), ("c1a", "c16a"))}
    record = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": hardware_info(False)[0],
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "model": str(model_dir),
              "rows": n, "prefix_caching": args.prefix_caching, "batch_invariant": args.batch_invariant,
              "settings": settings, "seconds": seconds, "identical": identical, "scores": scores}
    out = REPO / "benchmarks" / "results" / (
        f"vllm_greedy_reproducibility_prefix-{args.prefix_caching}{'_bi' if args.batch_invariant else ''}.json")
    out.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    print(json.dumps({"identical": identical, "scores": scores, "n": n}, indent=1))


if __name__ == "__main__":
    main()
