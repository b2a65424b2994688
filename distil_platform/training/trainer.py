"""Student training: TRL ``SFTTrainer`` on chat-formatted rows (LoRA via PEFT, or full fine-tuning).

Rows are rendered with :func:`distil_platform.tasks.prompts.build_training_messages` — the exact messages
the model is evaluated on — and trained with assistant-only loss (the chat template's
``{% generation %}`` markers, see ``modelstore``). The result is a standalone checkpoint (LoRA
merged) that ``serving.serve`` can load, with the loss curve saved beside it.

Sequence length comes from the data: every training row is tokenised with the base model's chat
template, ``max_length`` is the longest row (within a ceiling: profile ``max_length_ceiling``, the
task's ``training.max_length_ceiling``, the model's context), and a row that would not fit raises
``TrainingRowTooLongError`` naming the task, the row id and its token count — unless the task YAML
sets ``training.allow_truncation: true`` (see :mod:`distil_platform.training.lengths`). Rows are never cut silently. With ``tokens_per_step``
(the ``local`` profile) the batch size follows from it: ``tokens_per_step // max_length`` rows
(at most ``batch_size``), so a step costs about the same however long the task's prompts are.

The compute dtype follows the hardware the job runs on (:mod:`distil_platform.precision`): bf16 on
CPUs with native bf16 and on Ampere+ GPUs, fp16 on older GPUs, fp32 on CPUs without native bf16
(AVX2-only: bf16 is emulated there, ~24x slower per step). LoRA loads the base in that dtype (PEFT
keeps the adapters in fp32); full fine-tuning keeps fp32 weights with bf16/fp16 autocast. The
choice and its reason are in ``TrainResult.precision``. CPU specifics (measured, see the project's
cpu-notes): LoRA dropout 0, and a loss that applies the LM head only to the
labelled positions (TRL's default loss computes it over every position and dominates the step time).
torch, transformers, trl and peft are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distil_platform.precision import detect_precision, training_device
from distil_platform.tasks.spec import TaskSpec
from distil_platform.training.config import TrainConfig
from distil_platform.training.lengths import plan_max_length, row_token_lengths, to_chat_dataset_rows


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
    max_length: int = 0
    batch_size: int = 0
    length_plan: dict[str, Any] = field(default_factory=dict)
    # The compute dtype and why (distil_platform.precision.Precision.as_dict()).
    precision: dict[str, str] = field(default_factory=dict)
    # With a time budget: {"budget_s", "probe_s_per_step", "planned_steps", "steps"} (steps <= planned).
    time_budget: dict[str, float] = field(default_factory=dict)
    # What planned the steps ("epochs" or "max_steps"), the steps planned (before a time budget cut
    # them), the epochs asked for (None: steps were) and the passes over the rows the steps made.
    schedule: str = "max_steps"
    steps_planned: int = 0
    epochs_planned: float | None = None
    epochs: float = 0.0
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
            self.total_steps = total_steps

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            step = int(state.global_step)
            total_steps = self.total_steps
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


def check_training_device(config: TrainConfig, cuda_available: bool | None = None) -> str:
    """``"cuda"`` or ``"cpu"``: where this job trains (:func:`distil_platform.precision.training_device`);
    raises ``NoCudaError`` when the config requires CUDA (the gpu profile) and torch sees none.
    ``cuda_available`` None asks torch."""
    import torch

    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    return training_device(bool(available), require_cuda=config.require_cuda, torch_version=torch.__version__,
                           torch_cuda=torch.version.cuda)


def train_student(
    spec: TaskSpec,
    rows: Sequence[dict[str, Any]],
    base_model_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    base_model_name: str | None = None,
    progress: ProgressFn | None = None,
    cuda_available: bool | None = None,
) -> TrainResult:
    """Fine-tune ``base_model_dir`` on ``rows`` and write a standalone checkpoint to ``out_dir``.

    ``out_dir`` receives the merged model + tokenizer (servable as is), with LoRA the adapter alone in
    ``adapter/``, ``loss_curve.png``,
    ``train_summary.json`` and ``loss_history.json``. ``cuda_available`` (None: torch's answer) decides
    the device (:func:`check_training_device`: an error before anything is loaded when the config
    requires CUDA and there is none).
    """
    config = config or TrainConfig()
    on_cuda = check_training_device(config, cuda_available) == "cuda"
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
            "loss cannot find the answer tokens; resolve the model through distil_platform.storage.modelstore"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # Lengths first: an over-long row fails here, before the model is loaded.
    chat_rows = to_chat_dataset_rows(spec, rows)
    lengths = row_token_lengths(spec, rows, tokenizer)
    plan = plan_max_length(
        spec, [str(r.get("id", i)) for i, r in enumerate(rows)], lengths, config,
        model_context=_model_context(base_model_dir), tokenizer_name=f"the tokenizer of {base_model_name or base_model_dir}",
    )
    truncated = plan.truncated
    if truncated and progress:
        progress({"event": "warning", "message": f"{truncated}/{len(rows)} rows exceed max_length="
                  f"{plan.max_length} tokens (longest {plan.longest}); their prompt start is cut "
                  "(training.allow_truncation is set)"})
    batch_size = config.batch_size_for(plan.max_length)
    precision = detect_precision("cuda" if on_cuda else "cpu", config.dtype, setting_name="training dtype")
    compute_dtype = getattr(torch, precision.dtype)
    if progress:
        progress({"event": "precision", **precision.as_dict()})
    # LoRA: base weights in the compute dtype (adapters stay fp32 in PEFT). Full FT: fp32 master
    # weights + bf16/fp16 autocast.
    load_dtype = compute_dtype if config.use_lora else torch.float32
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

    dataset = Dataset.from_list(chat_rows)
    steps = steps_planned = config.steps_for(len(rows), batch_size)
    import warnings

    with warnings.catch_warnings():
        # keep_end is deprecated in TRL 1.x but is the mode that keeps the answer of an over-long row.
        warnings.filterwarnings("ignore", message=".*keep_end.*", category=FutureWarning)
        sft_args = _sft_config(SFTConfig, config, out_dir, steps, on_cuda, batch_size=batch_size,
                               max_length=plan.max_length if truncated else None, dtype=precision.dtype)
    history: list[dict[str, float]] = []
    callback = _progress_callback(steps, progress, history)
    trainer_cls = _trainer_class() if config.labelled_positions_loss else __import__("trl").SFTTrainer
    trainer = trainer_cls(
        model=model,
        args=sft_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[callback],
    )
    # disable_tqdm makes the Trainer print every log dict to stdout; progress goes through `progress`.
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    # TRL tokenises with the same chat template; a mismatch would mean the lengths above (and the
    # no-truncation guarantee) do not describe what is trained.
    seen = sorted(len(x) for x in trainer.train_dataset["input_ids"])
    expected = sorted(min(n, plan.max_length) for n in lengths)
    if seen != expected:
        raise RuntimeError(f"{spec.name}: TRL tokenised the rows to other lengths than measured "
                           f"(longest {seen[-1] if seen else 0} vs {expected[-1]}); the chat template differs")
    trained = trainer.model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trained.parameters())
    n_tokens = int(sum(min(n, plan.max_length) for n in lengths))
    budget: dict[str, float] = {}
    if config.time_budget_s and not config.epochs:
        # What the budget affords on this machine (a bf16 step is ~24x slower on a CPU without native
        # bf16): measured before the schedule is built, since a cut schedule ends at a high rate.
        per_step = _probe_step_seconds(trainer)
        affordable = max(1, min(steps, int(config.time_budget_s // per_step)))
        budget = {"budget_s": float(config.time_budget_s), "probe_s_per_step": round(per_step, 2),
                  "planned_steps": steps, "steps": affordable}
        if affordable < steps and progress:
            progress({"event": "warning", "message": f"time budget {config.time_budget_s:g} s at {per_step:.1f} s per "
                      f"step (measured here): {affordable} of {steps} steps; raise training.time_budget_s (run config "
                      "`time_budget_s`) for the full schedule"})
        steps = affordable
        trainer.args.max_steps = steps
        callback.total_steps = steps
    if progress:
        progress({"event": "start", "steps": steps, "examples": len(rows), "threads": threads,
                  "batch_size": batch_size, "max_length": plan.max_length, "longest_row": plan.longest,
                  "trainable_params": trainable, "total_params": total})

    start = time.monotonic()
    output = trainer.train()
    wall = time.monotonic() - start

    final = trainer.model
    if config.use_lora:
        # The adapter alone, kept beside the merged weights (the student bundle ships it).
        final.save_pretrained(out_dir / "adapter", safe_serialization=True)
        final = final.merge_and_unload()
    final = final.to(compute_dtype)
    final.config.use_cache = True
    final.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.padding_side = "left"  # serving batches prompts
    tokenizer.save_pretrained(out_dir)
    gen_cfg = base_model_dir / "generation_config.json"
    if gen_cfg.exists():
        # Stop tokens and defaults as the base has them; vLLM serves with `--generation-config vllm`,
        # so its sampling defaults (Qwen3: T=0.6, top-k 20) never apply to requests (serving.launch).
        (out_dir / "generation_config.json").write_text(gen_cfg.read_text())

    # Tokens seen: epochs over the tokenised data scaled by the fraction of it the steps covered.
    examples_seen = steps * batch_size * config.gradient_accumulation_steps
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
        max_length=plan.max_length,
        batch_size=batch_size,
        length_plan=plan.summary(),
        precision=precision.as_dict(),
        time_budget=budget,
        schedule=config.schedule(),
        steps_planned=steps_planned,
        epochs_planned=config.epochs or None,
        epochs=round(examples_seen / len(rows), 3),
        loss_history=history,
        loss_curve_png=png,
        config={**asdict(config), "threads": threads, "effective_batch_size": batch_size,
                "effective_max_length": plan.max_length},
    )
    (out_dir / "loss_history.json").write_text(json.dumps(history, indent=1))
    (out_dir / "train_summary.json").write_text(json.dumps(result.summary(), indent=1, default=str))
    import shutil

    shutil.rmtree(out_dir / "_trainer", ignore_errors=True)
    return result


def _probe_step_seconds(trainer, repeats: int = 2) -> float:
    """Seconds of one training step on this machine: forward + backward of the first batch (the
    faster of ``repeats`` tries: the first pays one-off start-up work), gradients discarded, plus 5%
    for the optimizer step and collation. The global RNG is restored, so the data order that trains
    is the one a run without a budget gets."""
    import torch

    rng = torch.get_rng_state()
    model = trainer.model
    model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    torch.set_rng_state(rng)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        times.append(time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
    return min(times) * 1.05


def _model_context(model_dir: Path) -> int | None:
    """The base model's context length (``max_position_embeddings``), if its config states one."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = cfg.get("max_position_embeddings") or (cfg.get("text_config") or {}).get("max_position_embeddings")
    return int(value) if value else None


def _sft_config(SFTConfig, config: TrainConfig, out_dir: Path, steps: int, on_cuda: bool, *, batch_size: int,
                max_length: int | None, dtype: str = "float32"):
    # Autocast only where the weights are fp32 (full FT; LoRA on a GPU): LoRA base weights already
    # are in the compute dtype on the CPU.
    autocast = on_cuda or not config.use_lora
    return SFTConfig(
        output_dir=str(out_dir / "_trainer"),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        # None unless truncation is allowed and needed: every row fits (plan_max_length checked it),
        # so TRL must not cut anything. Allowed over-long rows lose the start of the prompt rather
        # than the answer (keep_start would drop the row once the prompt alone fills max_length).
        max_length=max_length,
        truncation_mode="keep_end",
        assistant_only_loss=True,
        packing=False,
        bf16=bool(dtype == "bfloat16" and autocast),
        fp16=bool(dtype == "float16" and autocast),
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=not on_cuda,
        disable_tqdm=True,
        # transformers 5's name for gradient checkpointing. Non-reentrant: works with PEFT's frozen base
        # weights without marking the inputs as requiring grad.
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
    )
