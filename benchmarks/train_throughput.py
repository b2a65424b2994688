"""Training throughput of the ``local`` profile's recipe per task: a few real SFT steps on the task's
seed rows with the batch size its token budget gives (``tokens_per_step // max_length``).

Reports per task: max_length (longest rendered row), rows per step, s/step and trained tokens/s
(non-padding tokens of the rows seen, ``TrainResult.tokens_per_s``). Run it alone on the machine
(``flock /tmp/cpu-heavy.lock``): two CPU-heavy processes slow each other 7-12x.

```
.venv/bin/python benchmarks/train_throughput.py --tasks text2sql,smart_home,git_assistant --steps 6
```
Public data under ``../shared/benchmark`` is used where present (``--data sample`` forces the shipped
sample). Writes ``benchmarks/results/train_throughput.json``.
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


def _load(spec, data: str):
    from distil_platform.tasks.sources import load_local_dir, load_sample

    if data != "sample" and spec.name in PUBLIC_DATA and (SHARED / PUBLIC_DATA[spec.name]).is_dir():
        return "public", load_local_dir(spec, SHARED / PUBLIC_DATA[spec.name])
    return "sample", load_sample(spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="text2sql,smart_home,git_assistant")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--profile", default="local")
    parser.add_argument("--data", choices=["auto", "sample"], default="auto")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_throughput.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("DAGSTER_HOME", tempfile.mkdtemp(prefix="train_tp_home_"))

    from distil_platform.profiles import get_profile
    from distil_platform.storage.modelstore import resolve_model
    from distil_platform.tasks.spec import get_task
    from distil_platform.training.config import TrainConfig
    from distil_platform.training.trainer import train_student

    profile = get_profile(args.profile)
    results = []
    for task in [t for t in args.tasks.split(",") if t]:
        spec = get_task(task)
        source, data = _load(spec, args.data)
        rows = data.seed.to_dicts()
        base = spec.student_base(profile.name)
        cfg = TrainConfig.for_task(spec, profile, max_steps=args.steps, logging_steps=1)
        with tempfile.TemporaryDirectory(prefix=f"tp_{task}_") as out:
            start = time.time()
            res = train_student(spec, rows, resolve_model(base), out, cfg, base_model_name=base)
            total = time.time() - start
        entry = {"task": task, "data": source, "rows": len(rows), "base_model": base,
                 "max_length": res.max_length, "median_row_tokens": res.length_plan["median"],
                 "batch_size": res.batch_size, "tokens_per_step_budget": cfg.tokens_per_step,
                 "steps": res.steps, "train_wall_s": res.wall_time_s,
                 "s_per_step": round(res.wall_time_s / res.steps, 2), "tokens_per_s": res.tokens_per_s,
                 "total_wall_s": round(total, 1)}
        print(json.dumps(entry), flush=True)
        results.append(entry)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} {platform.node()}",
              "cpus": len(os.sched_getaffinity(0)), "load_avg_after": os.getloadavg(), "profile": profile.name,
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
