"""The settings of one training run: :class:`TrainConfig`, layered from the profile, the task YAML's
``training`` block and run-config overrides, with the step count and rows per step they imply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from distil_platform.tasks.spec import TaskSpec

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    max_steps: int = 60
    learning_rate: float = 5e-4
    # Rows per step; with ``tokens_per_step`` set, the most rows per step.
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    # Fixed sequence length; None derives it from the longest training row (see training.lengths).
    max_length: int | None = None
    # Upper bound for the derived max_length (also bounded by the model's context length).
    max_length_ceiling: int = 2048
    # Cut over-long rows from the start (keep_end) instead of failing (task ``training.allow_truncation``).
    allow_truncation: bool = False
    # Choose rows per step from a token budget: batch = clamp(tokens_per_step // max_length, 1, batch_size).
    tokens_per_step: int | None = None
    use_lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # dropout masks cost ~1.2 s/step on CPU and did not help
    lora_target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    # Recompute activations in the backward pass instead of keeping them: ~30% slower steps, a fraction
    # of the activation memory (a large student, e.g. Qwen3-8B at 16 rows per step on one GPU).
    gradient_checkpointing: bool = False
    # Epochs instead of steps when set (max_steps then derived from the data size).
    epochs: float | None = None
    # Fail at once when torch sees no CUDA GPU (the gpu profile) instead of training on the CPU.
    require_cuda: bool = False
    # Seconds the training loop may take (None or 0: no limit). With a budget, the step count is
    # what the budget affords at the step time measured on this machine before training (at most
    # max_steps), so the learning-rate schedule is planned for the steps that will run.
    time_budget_s: float | None = None
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    # Compute dtype: auto (from the hardware, distil_platform.precision), bf16, fp16 or fp32.
    dtype: str = "auto"
    seed: int = 0
    # Threads torch may use (None: all cores of this process's CPU affinity).
    num_threads: int | None = None
    logging_steps: int = 1
    # Apply the LM head only to labelled positions (same loss, ~2x faster steps on CPU).
    labelled_positions_loss: bool = True

    @classmethod
    def for_task(cls, spec: TaskSpec, profile, **overrides: Any) -> TrainConfig:
        """Profile defaults, then the task YAML's ``training`` overrides, then ``overrides``. A step
        count given by a layer replaces the epochs of the layers below it (the profile's
        ``train_epochs``, the task's ``epochs``), and epochs given by a layer replace its steps."""
        t = spec.training
        explicit_batch = t.batch_size or overrides.get("batch_size")
        epochs = t.epochs if t.epochs is not None else (None if t.max_steps else profile.train_epochs)
        if overrides.get("max_steps") is not None and overrides.get("epochs") is None:
            epochs = None  # the run config asks for steps
        cfg = cls(
            max_steps=t.max_steps or profile.max_steps,
            learning_rate=t.learning_rate or profile.learning_rate,
            batch_size=t.batch_size or profile.batch_size,
            max_length=t.max_length,
            max_length_ceiling=t.max_length_ceiling or profile.max_length_ceiling,
            allow_truncation=t.allow_truncation,
            # An explicit batch size (task YAML or run config) means rows per step, not a token budget.
            tokens_per_step=None if explicit_batch else profile.tokens_per_step,
            use_lora=profile.use_lora if t.use_lora is None else t.use_lora,
            lora_r=t.lora_r,
            lora_alpha=t.lora_alpha,
            lora_target_modules=tuple(t.lora_target_modules),
            epochs=epochs,
            require_cuda=profile.requires_cuda,
            dtype=profile.dtype,
            time_budget_s=t.time_budget_s if t.time_budget_s is not None else profile.train_time_budget_s,
        )
        for key, value in overrides.items():
            if value is not None:
                if not hasattr(cfg, key):
                    raise ValueError(f"unknown training option {key!r}")
                setattr(cfg, key, value)
        if not cfg.use_lora and t.learning_rate is None and overrides.get("learning_rate") is None:
            cfg.learning_rate = min(cfg.learning_rate, 5e-5)  # full FT needs a far smaller step
        return cfg

    def schedule(self) -> str:
        """What planned the step count: ``epochs`` or ``max_steps`` (a time budget may cut the latter)."""
        return "epochs" if self.epochs else "max_steps"

    def steps_for(self, n_examples: int, batch_size: int | None = None) -> int:
        if self.epochs:
            per_epoch = math.ceil(n_examples / ((batch_size or self.batch_size) * self.gradient_accumulation_steps))
            return max(1, math.ceil(per_epoch * self.epochs))
        return self.max_steps

    def batch_size_for(self, max_length: int) -> int:
        """Rows per step: ``batch_size``, or what ``tokens_per_step`` affords at ``max_length``."""
        if not self.tokens_per_step:
            return self.batch_size
        return max(1, min(self.batch_size, self.tokens_per_step // max(max_length, 1)))
