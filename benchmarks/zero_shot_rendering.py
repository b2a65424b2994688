"""Zero-shot base model with each tool rendering on the same test items: does the compact
``signature`` rendering score worse than the raw ``json_schema`` one?

In-process ``transformers`` greedy decoding, batch 1 (bf16 batched decoding depends on batch
composition), the platform's prompts (``prompts.build_messages`` with the rendering overridden) and
scorer (``scoring.score_prediction``), ``max_new_tokens = spec.max_answer_tokens``. Reports per
rendering the score with its 95% bootstrap CI, and the paired difference with exact McNemar.
Run it alone on the machine (``flock /tmp/cpu-heavy.lock``).

```
.venv/bin/python benchmarks/zero_shot_rendering.py --task smart_home --items 20
```
Public data under ``../shared/benchmark`` when present, else the shipped sample. Writes
``benchmarks/results/zero_shot_rendering_<task>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prompt_tokens import PUBLIC_DATA, SHARED

REPO = Path(__file__).resolve().parents[1]
RENDERINGS = ("json_schema", "signature")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="smart_home")
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--model", default=None, help="model-store name (default: the local profile's base)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("DAGSTER_HOME", tempfile.mkdtemp(prefix="zs_home_"))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distil_platform.economics.stats import mcnemar_exact, paired_bootstrap_diff, score_interval
    from distil_platform.evaluation.scoring import score_prediction
    from distil_platform.storage.modelstore import resolve_model
    from distil_platform.tasks.prompts import build_messages
    from distil_platform.tasks.sources import load_local_dir, load_sample
    from distil_platform.tasks.spec import get_task

    spec = get_task(args.task)
    model_name = args.model or spec.student_base("local")
    if spec.name in PUBLIC_DATA and (SHARED / PUBLIC_DATA[spec.name]).is_dir():
        source, data = "public", load_local_dir(spec, SHARED / PUBLIC_DATA[spec.name])
    else:
        source, data = "sample", load_sample(spec)
    rows = data.test.to_dicts()[: args.items]
    model_dir = resolve_model(model_name)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    per_rendering: dict[str, dict] = {}
    for rendering in RENDERINGS:
        scores, prompt_tokens, outputs = {}, [], []
        start = time.time()
        for row in rows:
            enc = tok.apply_chat_template(build_messages(spec, row, tool_rendering=rendering),
                                          add_generation_prompt=True, return_tensors="pt", return_dict=True)
            prompt_tokens.append(int(enc["input_ids"].shape[1]))
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=spec.max_answer_tokens, do_sample=False)
            text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            scores[row["id"]] = float(score_prediction(spec, text, row).score)
            outputs.append({"id": row["id"], "output": text, "score": scores[row["id"]]})
        ci = score_interval(scores)
        per_rendering[rendering] = {"scores": scores, "mean": sum(scores.values()) / len(scores),
                                    "ci": [ci.low, ci.high], "ci_method": ci.method,
                                    "mean_prompt_tokens": sum(prompt_tokens) / len(prompt_tokens),
                                    "wall_s": round(time.time() - start, 1), "outputs": outputs}
        print(rendering, per_rendering[rendering]["mean"], per_rendering[rendering]["mean_prompt_tokens"],
              per_rendering[rendering]["wall_s"], flush=True)

    a, b = per_rendering["signature"]["scores"], per_rendering["json_schema"]["scores"]
    diff = paired_bootstrap_diff(a, b)
    mc = mcnemar_exact([a[k] >= 1.0 for k in a], [b[k] >= 1.0 for k in a])
    report = {"task": spec.name, "data": source, "items": len(rows), "model": model_name,
              "signature_minus_json_schema_ci": [diff.mean, diff.low, diff.high],
              "mcnemar_p": mc.p_value, "sig_only_correct": mc.a_only, "json_only_correct": mc.b_only,
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} {platform.node()}",
              "load_avg_after": os.getloadavg(), "renderings": per_rendering,
              "signature_minus_json_schema": repr(diff), "mcnemar": repr(mc)}
    out = Path(args.out or REPO / "benchmarks" / "results" / f"zero_shot_rendering_{spec.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "renderings"}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
