"""Prompt tokens per task and tool rendering, with the student base's own tokenizer and chat template.

For every task: the shipped sample, and the public data under ``../shared/benchmark`` where present
(read in place). Per split and tool rendering (``json_schema``: the raw function schemas as JSON,
what the platform sent before; ``signature``: the compact rendering, the default now) it reports
the eval prompt tokens (system + user, generation prompt added) and the training-row tokens
(prompt + answer, what SFT sees): median, max, and how many rows exceed a given ``max_length``.
It also prints the ``max_length`` each task would derive on the local profile (see
``distil_platform.training.lengths.plan_max_length``). Tokenising only: no model is run, seconds of CPU.

```
.venv/bin/python benchmarks/prompt_tokens.py                       # smollm2-135m-instruct tokenizer
.venv/bin/python benchmarks/prompt_tokens.py --model tiny-qwen3 --old-max-length 256
```
Writes ``benchmarks/results/prompt_tokens.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "benchmark" / "related"
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Task -> public data directory (train/test files) inside the shared benchmark.
PUBLIC_DATA = {
    "text2sql": "distil-labs__distil-text2sql/finetuning/data",
    "smart_home": "distil-labs__distil-smart-home/slm-finetuning/data",
    "banking77": "distil-labs__distil-labs-examples/classification-tutorial/data-banking-routing",
    "ecommerce": "distil-labs__distil-labs-examples/classification-tutorial/data-ecommerce",
    "hotpotqa": "distil-labs__distil-labs-examples/question-answering-tutorial/data",
    "git_assistant": "rampallishyam__distil-gitara/finetuning/data",
    "docstring": "distil-labs__distil-localdoc.py/finetuning/data",
}


def _stats(values: list[int], limit: int) -> dict:
    return {"n": len(values), "median": statistics.median(values), "max": max(values),
            "over_limit": sum(v > limit for v in values)}


def measure(model: str, old_max_length: int, tasks: list[str] | None = None) -> dict:
    from transformers import AutoTokenizer

    from distil_platform.storage.modelstore import resolve_model
    from distil_platform.tasks.prompts import build_messages, format_answer
    from distil_platform.tasks.sources import load_local_dir, load_sample
    from distil_platform.tasks.spec import load_tasks

    tok = AutoTokenizer.from_pretrained(resolve_model(model))

    def n_prompt(messages):
        return len(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"])

    def n_train(messages):
        return len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    specs = load_tasks()
    results = []
    for name, spec in specs.items():
        if tasks and name not in tasks:
            continue
        sources = [("sample", lambda s=spec: load_sample(s))]
        if name in PUBLIC_DATA and (SHARED / PUBLIC_DATA[name]).is_dir():
            sources.append(("public", lambda s=spec, d=SHARED / PUBLIC_DATA[name]: load_local_dir(s, d)))
        renderings = ["json_schema", "signature"] if spec.type == "tool_calling" else [None]
        for source, load in sources:
            data = load()
            for rendering in renderings:
                entry = {"task": name, "source": source, "rendering": rendering or "-"}
                for split, frame in (("seed", data.seed), ("test", data.test)):
                    rows = frame.to_dicts()
                    prompts = [build_messages(spec, r, tool_rendering=rendering) for r in rows]
                    entry[f"{split}_prompt"] = _stats([n_prompt(m) for m in prompts], old_max_length)
                    if split == "seed":
                        train = [m + [{"role": "assistant", "content": format_answer(spec, r["answer"])}]
                                 for m, r in zip(prompts, rows)]
                        entry["seed_train"] = _stats([n_train(m) for m in train], old_max_length)
                results.append(entry)
    return {"model": model, "old_max_length": old_max_length, "results": results}


def markdown(report: dict) -> str:
    limit = report["old_max_length"]
    header = (f"| task | data | tool rendering | seed prompt tokens, median / max | seed rows (prompt + answer) "
              f"over {limit} | test prompt tokens, median / max |")
    lines = [header, "|---|---|---|---|---|---|"]
    for e in report["results"]:
        sp, st, tp = e["seed_prompt"], e["seed_train"], e["test_prompt"]
        lines.append(f"| {e['task']} | {e['source']} | {e['rendering']} | {sp['median']:g} / {sp['max']} | "
                     f"{st['over_limit']} of {st['n']} (longest {st['max']}) | {tp['median']:g} / {tp['max']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--old-max-length", type=int, default=384,
                        help="the local profile's former fixed max_length, for the 'over' column")
    parser.add_argument("--tasks", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "prompt_tokens.json"))
    args = parser.parse_args(argv)
    start = time.time()
    report = measure(args.model, args.old_max_length, [t for t in args.tasks.split(",") if t] or None)
    report.update(date=time.strftime("%Y-%m-%d"), machine=f"{platform.machine()} {platform.node()}",
                  wall_s=round(time.time() - start, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
