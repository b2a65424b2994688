"""The training job of ``<task>_student``: one function, run where the trainer resource says.

- ``in_process``: in the step's own process (``run_training``).
- ``subprocess`` (default): ``python -m distil_platform.training.job`` under Dagster Pipes
  (``PipesSubprocessClient``): torch, TRL and CUDA are imported by the job, never by the step.
- ``k8s``: the same module in a GPU pod (``PipesK8sClient``), the step itself on a CPU node.

The job reads everything from its parameters (Pipes extras; JSON): the task spec, the training rows
and test split by URL (local path or object store), the base model name, the training config, the run
id. It trains into ``paths.checkpoint_artifact`` and publishes the checkpoint (on an object store it
is uploaded and the local copy removed), and returns / reports one JSON message with what the asset
records. Progress goes to Dagster's log line by line (``format_progress``).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

LogFn = Callable[[str, str], None]  # (level, message); level "info" or "warning"


def format_progress(task: str, event: dict[str, Any]) -> tuple[str, str]:
    """A training progress event as a (level, log line)."""
    if "step" in event:
        return "info", (f"{task} train step {event['step']}/{event['total_steps']} loss {event['loss']:.4f} "
                        f"lr {event['learning_rate']:.2e} elapsed {event['elapsed_s']:.0f}s ETA {event['eta_s']:.0f}s")
    if event.get("event") == "warning":
        return "warning", f"{task}: {event['message']}"
    if event.get("event") == "precision":
        return "info", f"{task}: compute dtype {event['short']} ({event['reason']})"
    if event.get("event") == "start":
        return "info", (f"{task}: {event['steps']} steps x {event['batch_size']} rows, max_length "
                        f"{event['max_length']} (longest row {event['longest_row']} tokens), {event['threads']} threads")
    return "info", f"{task}: {event}"


def training_params(spec, *, rows_url: str, test_url: str | None, base_model: str, train_config, run_id: str
                    ) -> dict[str, Any]:
    """The job's parameters (JSON-serialisable: they travel as Pipes extras)."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(train_config).items()}
    return {"spec": spec.model_dump(mode="json"), "rows_url": rows_url, "test_url": test_url,
            "base_model": base_model, "train_config": config, "run_id": run_id}


def run_training(params: dict[str, Any], log: LogFn) -> dict[str, Any]:
    """Train, publish the checkpoint, return what the asset records."""
    from distil_platform.storage import paths
    from distil_platform.storage.lineage import checkpoint_fingerprint
    from distil_platform.storage.modelstore import resolve_model
    from distil_platform.tasks.spec import TaskSpec
    from distil_platform.training.config import TrainConfig
    from distil_platform.training.lengths import serving_context_length
    from distil_platform.training.trainer import check_training_device, train_student

    spec = TaskSpec.model_validate(params["spec"])
    task = spec.name
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(params["train_config"]) - fields)
    if unknown:
        raise ValueError(f"{task}: unknown training option(s) {unknown} in the job parameters")
    config = TrainConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in params["train_config"].items()})
    # The device first: a gpu-profile job where torch sees no CUDA fails here, saying why, before the
    # base model is downloaded (precision.NoCudaError).
    check_training_device(config)
    rows = paths.read_rows(params["rows_url"], what=f"{task}_student (its training rows)")
    base_dir = resolve_model(params["base_model"])
    test_rows = paths.read_rows(params.get("test_url"), what=task)

    from transformers import AutoTokenizer

    with paths.checkpoint_artifact(task, params["run_id"]) as out:  # published when the block ends
        result = train_student(spec, rows, base_dir, out.local, config, base_model_name=params["base_model"],
                               progress=lambda event: log(*format_progress(task, event)))
        # The context an eval server needs: the longest test prompt + max_answer_tokens, at least max_length.
        max_model_len = serving_context_length(spec, test_rows, AutoTokenizer.from_pretrained(result.checkpoint_dir),
                                               result.max_length)
        png = Path(result.loss_curve_png) if result.loss_curve_png else None
        loss_curve = None
        if png is not None and png.exists():
            loss_curve = {"name": png.relative_to(result.checkpoint_dir).as_posix(),
                          "png_base64": base64.b64encode(png.read_bytes()).decode()}
        fingerprint = checkpoint_fingerprint(result.checkpoint_dir)
    checkpoint = out.url
    if out.remote:
        log("info", f"{task}: checkpoint uploaded to {checkpoint}")
    summary = result.summary()
    summary["final_loss"] = None if result.final_loss is None else float(result.final_loss)
    return {"checkpoint": checkpoint, "fingerprint": fingerprint, "max_model_len": int(max_model_len),
            "summary": summary, "loss_curve": loss_curve}


def main() -> None:
    """Entry point under Dagster Pipes (subprocess or Kubernetes pod)."""
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        def log(level: str, message: str) -> None:
            (pipes.log.warning if level == "warning" else pipes.log.info)(message)

        try:
            result = run_training(pipes.extras, log)
        except Exception as exc:
            # Readable by the step as its error message; Pipes also records the traceback on close.
            pipes.report_custom_message({"error": {"type": type(exc).__name__, "message": str(exc)}})
            raise
        pipes.report_custom_message(result)


if __name__ == "__main__":
    main()
