"""Student training: TRL ``SFTTrainer`` on chat-formatted rows (LoRA via PEFT, or full fine-tuning).

Rows are rendered with :func:`distil_platform.prompts.build_training_messages` — the exact messages
the model is evaluated on — and trained with assistant-only loss (the chat template's
``{% generation %}`` markers, see ``modelstore``). The result is a standalone checkpoint (LoRA
merged) that ``serving.serve`` can load, with the loss curve saved beside it.

CPU specifics (measured, see the project's cpu-notes): bf16 weights for LoRA (fp32 weights + bf16
autocast for full fine-tuning), LoRA dropout 0, and a loss that applies the LM head only to the
labelled positions (TRL's default loss computes it over every position and dominates the step time).
torch, transformers, trl and peft are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distil_platform.prompts import build_training_messages
from distil_platform.taskspec import TaskSpec

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    max_steps: int = 60
    learning_rate: float = 5e-4
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 384
    use_lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # dropout masks cost ~1.2 s/step on CPU and did not help
    lora_target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    # Epochs instead of steps when set (max_steps then derived from the data size).
    epochs: float | None = None
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    bf16: bool = True
    seed: int = 0
    # Threads torch may use (None: all cores of this process's CPU affinity).
    num_threads: int | None = None
    logging_steps: int = 1
    # Apply the LM head only to labelled positions (same loss, ~2x faster steps on CPU).
    labelled_positions_loss: bool = True

    @classmethod
    def for_task(cls, spec: TaskSpec, profile, **overrides: Any) -> TrainConfig:
        """Profile defaults, then the task YAML's ``training`` overrides, then ``overrides``."""
        t = spec.training
        cfg = cls(
            max_steps=t.max_steps or profile.max_steps,
            learning_rate=t.learning_rate or profile.learning_rate,
            batch_size=t.batch_size or profile.batch_size,
            max_length=t.max_length or profile.max_length,
            use_lora=profile.use_lora if t.use_lora is None else t.use_lora,
            lora_r=t.lora_r,
            lora_alpha=t.lora_alpha,
            lora_target_modules=tuple(t.lora_target_modules),
            epochs=t.epochs,
            bf16=profile.bf16,
        )
        for key, value in overrides.items():
            if value is not None:
                if not hasattr(cfg, key):
                    raise ValueError(f"unknown training option {key!r}")
                setattr(cfg, key, value)
        if not cfg.use_lora and t.learning_rate is None and overrides.get("learning_rate") is None:
            cfg.learning_rate = min(cfg.learning_rate, 5e-5)  # full FT needs a far smaller step
        return cfg

    def steps_for(self, n_examples: int) -> int:
        if self.epochs:
            per_epoch = math.ceil(n_examples / (self.batch_size * self.gradient_accumulation_steps))
            return max(1, math.ceil(per_epoch * self.epochs))
        return self.max_steps


@dataclass
class TrainResult:
    checkpoint_dir: Path
    base_model: str
    train_examples: int
    steps: int
    wall_time_s: float
    train_tokens: int
    tokens_per_s: float
    final_loss: float | None
    trainable_params: int
    total_params: int
    truncated_examples: int = 0
    loss_history: list[dict[str, float]] = field(default_factory=list)
    loss_curve_png: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["checkpoint_dir"] = str(self.checkpoint_dir)
        out["loss_curve_png"] = str(self.loss_curve_png) if self.loss_curve_png else None
        out.pop("loss_history")
        return out


ProgressFn = Callable[[dict[str, Any]], None]


def to_chat_dataset_rows(spec: TaskSpec, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"messages": [...]}`` per row, rendered exactly as for evaluation (plus the answer)."""
    out = []
    for row in rows:
        out.append({"messages": build_training_messages(spec, row)})
    return out


def _set_threads(num_threads: int | None) -> int:
    import torch

    if num_threads is None:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            num_threads = os.cpu_count() or 1
    torch.set_num_threads(max(1, num_threads))
    return torch.get_num_threads()


def labelled_positions_loss(model, inputs: dict[str, Any]):
    """Mean next-token cross-entropy over labelled positions, with the LM head applied only there.

    Equivalent to the usual causal-LM loss (labels shifted by one, -100 ignored), but it never builds
    logits for prompt or padding positions.
    """
    import torch.nn.functional as F

    labels = inputs["labels"]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    head = base.get_output_embeddings()
    kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
    hidden = decoder(**kwargs, use_cache=False).last_hidden_state
    shift_labels = labels[:, 1:]
    mask = shift_labels != -100
    if not bool(mask.any()):
        return hidden.sum() * 0.0
    picked = hidden[:, :-1][mask]
    logits = head(picked).float()
    return F.cross_entropy(logits, shift_labels[mask], reduction="mean")


def _trainer_class():
    from trl import SFTTrainer

    class LabelledPositionsSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss applies the LM head to labelled positions only (see module doc)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not self.model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return labelled_positions_loss(model, inputs)

    return LabelledPositionsSFTTrainer


def _progress_callback(total_steps: int, progress: ProgressFn | None, history: list[dict[str, float]]):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self):
            self.start = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            step = int(state.global_step)
            elapsed = time.monotonic() - self.start
            eta = elapsed / max(step, 1) * max(total_steps - step, 0)
            entry = {"step": step, "loss": float(logs["loss"]), "learning_rate": float(logs.get("learning_rate", 0.0)),
                     "elapsed_s": round(elapsed, 1), "eta_s": round(eta, 1)}
            history.append(entry)
            if progress:
                progress({**entry, "total_steps": total_steps})

    return ProgressCallback()


def plot_loss_curve(history: Sequence[dict[str, float]], out_path: Path, title: str = "training loss") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], marker="." if len(steps) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def train_student(
    spec: TaskSpec,
    rows: Sequence[dict[str, Any]],
    base_model_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    base_model_name: str | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Fine-tune ``base_model_dir`` on ``rows`` and write a standalone checkpoint to ``out_dir``.

    ``out_dir`` receives the merged model + tokenizer (servable as is), ``loss_curve.png``,
    ``train_summary.json`` and ``loss_history.json``.
    """
    config = config or TrainConfig()
    if not rows:
        raise ValueError(f"{spec.name}: no training rows")
    base_model_dir = Path(base_model_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    threads = _set_threads(config.num_threads)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    if "{% generation %}" not in (tokenizer.chat_template or "") and "{%- generation %}" not in (
        tokenizer.chat_template or ""
    ):
        raise ValueError(
            f"{base_model_dir}: the chat template has no {{% generation %}} markers, so assistant-only "
            "loss cannot find the answer tokens; resolve the model through distil_platform.modelstore"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    on_cuda = torch.cuda.is_available()
    # LoRA: bf16 base weights (adapters stay fp32 in PEFT). Full FT: fp32 master weights + bf16 autocast.
    load_dtype = torch.bfloat16 if (config.bf16 and config.use_lora) else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=load_dtype)

    peft_config = None
    if config.use_lora:
        from peft import LoraConfig

        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = [t for t in config.lora_target_modules if t in names]
        if not targets:
            raise ValueError(
                f"none of the LoRA target modules {list(config.lora_target_modules)} exist in {base_model_dir}"
            )
        peft_config = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=targets, bias="none", task_type="CAUSAL_LM",
        )

    chat_rows = to_chat_dataset_rows(spec, rows)
    lengths = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
               for r in chat_rows]
    truncated = sum(n > config.max_length for n in lengths)
    if truncated and progress:
        progress({"event": "warning", "message": f"{truncated}/{len(rows)} rows exceed max_length="
                  f"{config.max_length} tokens (longest {max(lengths)}); their prompt start is cut"})
    dataset = Dataset.from_list(chat_rows)
    steps = config.steps_for(len(rows))
    import warnings

    with warnings.catch_warnings():
        # keep_end is deprecated in TRL 1.x but is the mode that keeps the answer of an over-long row.
        warnings.filterwarnings("ignore", message=".*keep_end.*", category=FutureWarning)
        sft_args = _sft_config(SFTConfig, config, out_dir, steps, on_cuda)
    history: list[dict[str, float]] = []
    trainer_cls = _trainer_class() if config.labelled_positions_loss else __import__("trl").SFTTrainer
    trainer = trainer_cls(
        model=model,
        args=sft_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_progress_callback(steps, progress, history)],
    )
    # disable_tqdm makes the Trainer print every log dict to stdout; progress goes through `progress`.
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trained = trainer.model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trained.parameters())
    n_tokens = int(sum(min(n, config.max_length) for n in lengths))
    if progress:
        progress({"event": "start", "steps": steps, "examples": len(rows), "threads": threads,
                  "trainable_params": trainable, "total_params": total})

    start = time.monotonic()
    output = trainer.train()
    wall = time.monotonic() - start

    final = trainer.model
    if config.use_lora:
        final = final.merge_and_unload()
    final = final.to(torch.bfloat16 if config.bf16 else torch.float32)
    final.config.use_cache = True
    final.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.padding_side = "left"  # serving batches prompts
    tokenizer.save_pretrained(out_dir)
    gen_cfg = base_model_dir / "generation_config.json"
    if gen_cfg.exists():
        (out_dir / "generation_config.json").write_text(gen_cfg.read_text())

    # Tokens seen: epochs over the tokenised data scaled by the fraction of it the steps covered.
    examples_seen = steps * config.batch_size * config.gradient_accumulation_steps
    tokens_seen = int(n_tokens * examples_seen / max(len(rows), 1))
    final_loss = history[-1]["loss"] if history else float(output.training_loss)
    png = plot_loss_curve(history, out_dir / "loss_curve.png", f"{spec.name}: {base_model_name or base_model_dir.name}") \
        if history else None
    result = TrainResult(
        checkpoint_dir=out_dir,
        base_model=base_model_name or str(base_model_dir),
        train_examples=len(rows),
        steps=steps,
        wall_time_s=round(wall, 2),
        train_tokens=tokens_seen,
        tokens_per_s=round(tokens_seen / wall, 1) if wall > 0 else 0.0,
        final_loss=final_loss,
        trainable_params=int(trainable),
        total_params=int(total),
        truncated_examples=int(truncated),
        loss_history=history,
        loss_curve_png=png,
        config={**asdict(config), "threads": threads},
    )
    (out_dir / "loss_history.json").write_text(json.dumps(history, indent=1))
    (out_dir / "train_summary.json").write_text(json.dumps(result.summary(), indent=1, default=str))
    import shutil

    shutil.rmtree(out_dir / "_trainer", ignore_errors=True)
    return result


def _sft_config(SFTConfig, config: TrainConfig, out_dir: Path, steps: int, on_cuda: bool):
    return SFTConfig(
        output_dir=str(out_dir / "_trainer"),
        max_steps=steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_length=config.max_length,
        # Over-long rows lose the start of the prompt rather than the answer (keep_start would drop
        # the row entirely once the prompt alone fills max_length); counted in the summary.
        truncation_mode="keep_end",
        assistant_only_loss=True,
        packing=False,
        # bf16 autocast only where the weights are fp32 (full FT); LoRA weights are already bf16.
        bf16=bool(config.bf16 and (on_cuda or not config.use_lora)),
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=not on_cuda,
        disable_tqdm=True,
        gradient_checkpointing=False,
    )
