"""``<task>_student``: TRL SFT of the base model on seeds + accepted teacher rows."""

# No `from __future__ import annotations`: Dagster reads the config/resource annotations at runtime.

from typing import Any

import dagster as dg
from distil_platform.resources.trainer import TrainerResource, launcher_from_env

from distil_platform.profiles import Profile, get_profile
from distil_platform.storage import paths
from distil_platform.tasks.prompts import rendering_label
from distil_platform.tasks.spec import TaskSpec

from .candidates import CandidateWiring, default_wiring
from .common import read_asset_rows
from .deployment import gpu_op_tags
from .keys import task_key
from .metadata import location_metadata, png_base64_markdown


class StudentConfig(dg.Config):
    """Overrides for ``<task>_student`` (None = task YAML ``training``, else profile default)."""

    max_steps: int | None = None
    # Epochs over the training rows (None: the task's / profile's: gpu 2; local plans steps). A
    # max_steps given here replaces the profile's epochs.
    epochs: float | None = None
    learning_rate: float | None = None
    # Rows per step (overrides the profile's tokens_per_step budget).
    batch_size: int | None = None
    # Fixed sequence length (None: derived from the longest training row, within the ceiling).
    max_length: int | None = None
    use_lora: bool | None = None
    # Recompute activations in the backward pass (less memory, slower steps); None: the candidate's, else off.
    gradient_checkpointing: bool | None = None
    # False trains on the seeds alone (the "seed-only" ablation of the benchmark).
    use_synthetic: bool = True
    # Seconds the training loop may take (None: the task's / profile's, local 240; 0: no limit): the
    # step count is what it affords at the step time measured on this machine, at most max_steps.
    time_budget_s: float | None = None
    seed: int = 0



def build_student_asset(spec: TaskSpec, profile: Profile | None = None, candidate: CandidateWiring | None = None) -> list:
    """``<task>_student`` (a further candidate ``c``: ``<task>_student__c``, its base model and
    training settings where the run config leaves them unset)."""
    profile = profile or get_profile()  # resolved once, when the Definitions are built
    candidate = candidate or default_wiring(spec, profile.name)
    task = spec.name
    seed_key = dg.AssetKey(task)
    teacher_key = task_key(task, "teacher_data")
    student_key = candidate.key(task, "student")
    cand = candidate.candidate

    @dg.asset(
        key=student_key,
        group_name=task,
        ins={"seed_set": dg.AssetIn(seed_key), "teacher_data": dg.AssetIn(teacher_key)},
        kinds={"pytorch"},
        pool="gpu",  # held while the job trains, wherever it runs
        # GPU request / placement of the step pod on Kubernetes; with DISTIL_TRAIN_LAUNCHER=k8s the step
        # only orchestrates (Pipes) and the training pod requests the GPU instead.
        op_tags={} if launcher_from_env() == "k8s" else gpu_op_tags(),
        description=f"The `{task}` student (candidate `{cand.name}`: {cand.base_model}, {cand.settings()}): SFT (LoRA merged, or full) of the profile's base model on seeds + "
        "accepted synthetic rows; checkpoint under $DAGSTER_HOME/checkpoints/<task>/<run id>/ (uploaded to "
        "<DISTIL_ARTIFACTS_URL>/checkpoints/<task>/<run id>/ when artefacts are on an object store).",
    )
    def student(
        context: dg.AssetExecutionContext,
        config: StudentConfig,
        seed_set: dict,
        teacher_data: dict,
        trainer: TrainerResource,
    ) -> dg.Output[dict]:
        import polars as pl

        from distil_platform.training.config import TrainConfig
        from distil_platform.training.job import training_params

        base_name = cand.base_model
        run_id = candidate.store_run_id(context.run_id)  # checkpoint and rows of this candidate
        seeds = read_asset_rows(seed_set["seed_path"])
        synthetic = read_asset_rows(teacher_data["path"]) if config.use_synthetic else []
        rows = [{k: str(r[k] or "") for k in ("id", "question", "answer", "context")} for r in seeds + synthetic]
        train_cfg = TrainConfig.for_task(
            spec, profile, max_steps=config.max_steps if config.max_steps is not None else cand.max_steps,
            learning_rate=config.learning_rate if config.learning_rate is not None else cand.learning_rate,
            batch_size=config.batch_size, max_length=config.max_length,
            use_lora=config.use_lora if config.use_lora is not None else cand.use_lora, seed=config.seed,
            time_budget_s=config.time_budget_s, epochs=config.epochs,
            gradient_checkpointing=config.gradient_checkpointing if config.gradient_checkpointing is not None
            else cand.gradient_checkpointing,
        )
        # The exact rows trained on, beside the other artefacts (the training job reads them from here).
        rows_url = paths.write_parquet(pl.DataFrame(rows, schema=dict.fromkeys(rows[0], pl.String) if rows else None),
                                       paths.artifact_url(task, "student", run_id, "train_rows.parquet"))
        context.log.info(f"{task}: training {base_name} on {len(seeds)} seeds + {len(synthetic)} synthetic rows "
                         f"({'LoRA' if train_cfg.use_lora else 'full'}, {train_cfg.steps_for(len(rows))} steps"
                         + (f" = {train_cfg.epochs:g} epochs" if train_cfg.epochs else "")
                         + (f" within {train_cfg.time_budget_s:g} s" if train_cfg.time_budget_s else "") + "; "
                         f"job launcher: {trainer.launcher})")
        job = trainer.train(context, training_params(spec, rows_url=rows_url, test_url=seed_set.get("test_path"),
                                                     base_model=base_name, train_config=train_cfg,
                                                     run_id=run_id))
        result = job["summary"]
        checkpoint = job["checkpoint"]
        fingerprint = job["fingerprint"]
        max_model_len = job["max_model_len"]
        served_name = f"{task}-student-" + ("" if candidate.first else f"{cand.name}-") + context.run_id[:8]
        plan = result["length_plan"]
        value = {"checkpoint_path": checkpoint, "checkpoint_fingerprint": fingerprint, "base_model": base_name,
                 "served_name": served_name, "run_id": run_id, "candidate": cand.name, "use_synthetic": config.use_synthetic,
                 # Training sequence length (longest rendered row unless fixed) and the context an eval
                 # server needs: the longest test prompt + max_answer_tokens, at least max_length.
                 "max_length": result["max_length"], "max_model_len": max_model_len,
                 "compute_dtype": (result.get("precision") or {}).get("dtype")}
        final_loss = result["final_loss"]
        metadata: dict[str, Any] = {
            "checkpoint_path": location_metadata(checkpoint),
            "checkpoint_fingerprint": fingerprint[:16],
            "train_rows_path": location_metadata(rows_url),
            "training_launcher": trainer.launcher,
            "base_model": base_name,
            "candidate": cand.name,
            "method": "lora (merged)" if train_cfg.use_lora else "full fine-tune",
            "gradient_checkpointing": train_cfg.gradient_checkpointing,
            "trainable_params": result["trainable_params"],
            "total_params": result["total_params"],
            "train_examples": result["train_examples"],
            "seed_examples": len(seeds),
            "synthetic_examples": len(synthetic),
            "steps": result["steps"],
            # The steps the schedule planned (epochs over the rows, or max_steps) before a time budget
            # cut them to what it afforded at the step time measured before training.
            "steps_planned": result.get("steps_planned") or (result.get("time_budget") or {}).get(
                "planned_steps", result["steps"]),
            "schedule": result.get("schedule", "max_steps"),
            "epochs_planned": result.get("epochs_planned") or 0.0,  # 0: steps were planned, not epochs
            "epochs": result.get("epochs", 0.0),  # passes over the training rows the steps made
            "time_budget_s": (result.get("time_budget") or {}).get("budget_s") or 0.0,
            "step_time_probe_s": (result.get("time_budget") or {}).get("probe_s_per_step") or 0.0,
            "wall_time_s": result["wall_time_s"],
            "tokens_per_s": result["tokens_per_s"],
            "final_loss": float(final_loss) if final_loss is not None else float("nan"),
            "truncated_examples": result["truncated_examples"],
            "max_length": result["max_length"],
            "max_length_source": f"{plan['source']} (ceiling {plan['ceiling']})" if plan["source"] == "derived"
            else "fixed (task YAML / run config)",
            "max_model_len": max_model_len,
            "train_row_tokens_median": plan["median"],
            "train_row_tokens_p90": plan["p90"],
            "train_row_tokens_max": plan["longest"],
            "train_row_tokens_min": plan["shortest"],
            "batch_size": result["batch_size"],
            "tokens_per_step": train_cfg.tokens_per_step or 0,
            "prompt_rendering": rendering_label(spec),
            # The compute dtype the job trained in (the hardware's native one unless set) and why.
            "compute_dtype": (result.get("precision") or {}).get("dtype", "unknown"),
            "compute_dtype_reason": (result.get("precision") or {}).get("reason", "not reported by the job"),
            "config": dg.MetadataValue.json(result["config"]),
        }
        gate = teacher_data.get("teacher_gate") or {}
        if gate.get("note"):
            # What the teacher gate did to this student's data ("seed-only: the teacher failed its gate
            # (...)"): read back by the cost table and the report.
            metadata["teacher_gate"] = gate["note"]
        if job.get("loss_curve"):
            curve = job["loss_curve"]
            metadata["loss_curve"] = png_base64_markdown(curve["png_base64"], "loss curve")
            metadata["loss_curve_path"] = location_metadata(f"{checkpoint}/{curve['name']}")
        return dg.Output(value, metadata=metadata)

    return [student]
