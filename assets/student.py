"""``<task>_student``: TRL SFT of the base model on seeds + accepted teacher rows."""

# No `from __future__ import annotations`: Dagster reads the config/resource annotations at runtime.

from pathlib import Path
from typing import Any

import dagster as dg
from distil_platform.resources.models import ModelStoreResource

from distil_platform import paths
from distil_platform.profiles import Profile, get_profile
from distil_platform.prompts import rendering_label
from distil_platform.taskspec import TaskSpec

from .common import (
    _read_rows,
)
from .deployment import gpu_op_tags
from .keys import task_key
from .metadata import location_metadata, png_markdown


class StudentConfig(dg.Config):
    """Overrides for ``<task>_student`` (None = task YAML ``training``, else profile default)."""

    max_steps: int | None = None
    learning_rate: float | None = None
    # Rows per step (overrides the profile's tokens_per_step budget).
    batch_size: int | None = None
    # Fixed sequence length (None: derived from the longest training row, within the ceiling).
    max_length: int | None = None
    use_lora: bool | None = None
    # False trains on the seeds alone (the "seed-only" ablation of the benchmark).
    use_synthetic: bool = True
    seed: int = 0



def build_student_asset(spec: TaskSpec, profile: Profile | None = None) -> list:
    """``<task>_student``."""
    profile = profile or get_profile()  # resolved once, when the Definitions are built
    task = spec.name
    seed_key = dg.AssetKey(task)
    teacher_key = task_key(task, "teacher_data")
    student_key = task_key(task, "student")

    @dg.asset(
        key=student_key,
        group_name=task,
        ins={"seed_set": dg.AssetIn(seed_key), "teacher_data": dg.AssetIn(teacher_key)},
        kinds={"pytorch"},
        pool="gpu",
        op_tags=gpu_op_tags(),  # GPU request / placement of the step pod on Kubernetes
        description=f"The `{task}` student: SFT (LoRA merged, or full) of the profile's base model on seeds + "
        "accepted synthetic rows; checkpoint under $DAGSTER_HOME/checkpoints/<task>/<run id>/ (uploaded to "
        "<DISTIL_ARTIFACTS_URL>/checkpoints/<task>/<run id>/ when artefacts are on an object store).",
    )
    def student(
        context: dg.AssetExecutionContext,
        config: StudentConfig,
        seed_set: dict,
        teacher_data: dict,
        model_store: ModelStoreResource,
    ) -> dg.Output[dict]:
        from distil_platform.training import TrainConfig, train_student

        base_name = spec.student_base(profile.name)
        base_dir = model_store.resolve(base_name)
        seeds = _read_rows(seed_set["seed_path"])
        synthetic = _read_rows(teacher_data["path"]) if config.use_synthetic else []
        rows = [{k: r[k] for k in ("id", "question", "answer", "context")} for r in seeds + synthetic]
        train_cfg = TrainConfig.for_task(
            spec, profile, max_steps=config.max_steps, learning_rate=config.learning_rate,
            batch_size=config.batch_size, max_length=config.max_length, use_lora=config.use_lora, seed=config.seed,
        )
        out_dir = paths.checkpoints_dir(task, context.run_id)
        context.log.info(f"{task}: training {base_name} on {len(seeds)} seeds + {len(synthetic)} synthetic rows "
                         f"({'LoRA' if train_cfg.use_lora else 'full'}, {train_cfg.steps_for(len(rows))} steps)")

        def progress(event: dict) -> None:
            if "step" in event:
                context.log.info(f"{task} train step {event['step']}/{event['total_steps']} loss {event['loss']:.4f} "
                                 f"lr {event['learning_rate']:.2e} elapsed {event['elapsed_s']:.0f}s "
                                 f"ETA {event['eta_s']:.0f}s")
            elif event.get("event") == "warning":
                context.log.warning(f"{task}: {event['message']}")
            elif event.get("event") == "start":
                context.log.info(f"{task}: {event['steps']} steps x {event['batch_size']} rows, max_length "
                                 f"{event['max_length']} (longest row {event['longest_row']} tokens), "
                                 f"{event['threads']} threads")
            else:
                context.log.info(f"{task}: {event}")

        result = train_student(spec, rows, base_dir, out_dir, train_cfg, base_model_name=base_name,
                               progress=progress)
        served_name = f"{task}-student-{context.run_id[:8]}"
        plan = result.length_plan
        max_model_len = _eval_context_length(spec, seed_set, result.checkpoint_dir, result.max_length)
        loss_curve_md = png_markdown(result.loss_curve_png, "loss curve") if result.loss_curve_png else None
        from distil_platform.costs import checkpoint_fingerprint

        fingerprint = checkpoint_fingerprint(result.checkpoint_dir)
        # Local base: the directory itself. Object store: uploaded, and the local copy removed, so the
        # serving steps fetch it from the store (they may run on another machine).
        checkpoint = paths.publish_checkpoint(result.checkpoint_dir, task, context.run_id)
        if checkpoint != str(result.checkpoint_dir):
            context.log.info(f"{task}: checkpoint uploaded to {checkpoint}")
        value = {"checkpoint_path": checkpoint, "checkpoint_fingerprint": fingerprint, "base_model": base_name,
                 "served_name": served_name, "run_id": context.run_id, "use_synthetic": config.use_synthetic,
                 # Training sequence length (longest rendered row unless fixed) and the context an eval
                 # server needs: the longest test prompt + max_answer_tokens, at least max_length.
                 "max_length": result.max_length, "max_model_len": max_model_len}
        metadata: dict[str, Any] = {
            "checkpoint_path": location_metadata(checkpoint),
            "checkpoint_fingerprint": fingerprint[:16],
            "base_model": base_name,
            "method": "lora (merged)" if train_cfg.use_lora else "full fine-tune",
            "trainable_params": result.trainable_params,
            "total_params": result.total_params,
            "train_examples": result.train_examples,
            "seed_examples": len(seeds),
            "synthetic_examples": len(synthetic),
            "steps": result.steps,
            "wall_time_s": result.wall_time_s,
            "tokens_per_s": result.tokens_per_s,
            "final_loss": float(result.final_loss) if result.final_loss is not None else float("nan"),
            "truncated_examples": result.truncated_examples,
            "max_length": result.max_length,
            "max_length_source": f"{plan['source']} (ceiling {plan['ceiling']})" if plan["source"] == "derived"
            else "fixed (task YAML / run config)",
            "max_model_len": max_model_len,
            "train_row_tokens_median": plan["median"],
            "train_row_tokens_p90": plan["p90"],
            "train_row_tokens_max": plan["longest"],
            "train_row_tokens_min": plan["shortest"],
            "batch_size": result.batch_size,
            "tokens_per_step": train_cfg.tokens_per_step or 0,
            "prompt_rendering": rendering_label(spec),
            "config": dg.MetadataValue.json({k: (list(v) if isinstance(v, tuple) else v)
                                             for k, v in result.config.items()}),
        }
        if loss_curve_md is not None:
            metadata["loss_curve"] = loss_curve_md
            metadata["loss_curve_path"] = location_metadata(
                f"{checkpoint}/{Path(result.loss_curve_png).relative_to(result.checkpoint_dir).as_posix()}")
        return dg.Output(value, metadata=metadata)

    return [student]


def _eval_context_length(spec: TaskSpec, seed_set: dict, checkpoint_dir, train_max_length: int) -> int:
    """``training.serving_context_length`` over the seed set's test split, with the student's tokenizer."""
    from transformers import AutoTokenizer

    from distil_platform.training import serving_context_length

    test_rows = _read_rows(seed_set["test_path"]) if seed_set.get("test_path") else []
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    return serving_context_length(spec, test_rows, tokenizer, train_max_length)
