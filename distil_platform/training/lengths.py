"""Sequence length from the data: training rows rendered as SFT sees them, their token counts, the
``max_length`` a run uses (:func:`plan_max_length`, which refuses rows that would be cut unless the
task allows truncation) and the context an eval server needs (:func:`serving_context_length`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from distil_platform.tasks.prompts import build_training_messages
from distil_platform.tasks.spec import TaskSpec
from distil_platform.training.config import TrainConfig


class TrainingRowTooLongError(ValueError):
    """A training row (rendered prompt + answer) does not fit ``max_length`` and truncation is not
    allowed. The message names the task, the rows and their token counts."""



@dataclass(frozen=True)
class LengthPlan:
    """The sequence length a training run uses and the token lengths it was derived from."""

    max_length: int
    # "derived" (longest row, within the ceiling) or "fixed" (task YAML / run config).
    source: str
    ceiling: int
    n_rows: int
    median: float
    p90: float
    longest: int
    shortest: int
    # Rows longer than max_length (non-zero only when truncation is allowed).
    truncated: int

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def to_chat_dataset_rows(spec: TaskSpec, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"messages": [...]}`` per row, rendered exactly as for evaluation (plus the answer)."""
    out = []
    for row in rows:
        out.append({"messages": build_training_messages(spec, row)})
    return out


def row_token_lengths(spec: TaskSpec, rows: Sequence[dict[str, Any]], tokenizer) -> list[int]:
    """Tokens of each row as SFT sees it: the chat template over the eval messages plus the answer."""
    return [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
            for r in to_chat_dataset_rows(spec, rows)]


def plan_max_length(
    spec: TaskSpec,
    row_ids: Sequence[str],
    lengths: Sequence[int],
    config: TrainConfig,
    *,
    model_context: int | None = None,
    tokenizer_name: str = "the base model's tokenizer",
) -> LengthPlan:
    """``max_length`` for these rows; raises :class:`TrainingRowTooLongError` for rows that would be cut
    unless ``config.allow_truncation``."""
    if not lengths:
        raise ValueError(f"{spec.name}: no training rows")
    ceiling = config.max_length_ceiling
    if model_context:
        ceiling = min(ceiling, int(model_context))
    longest = max(lengths)
    if config.max_length is not None:
        limit, source = int(config.max_length), "fixed"
    else:
        limit, source = min(longest, ceiling), "derived"
    over = [(rid, n) for rid, n in zip(row_ids, lengths) if n > limit]
    if over and not config.allow_truncation:
        over.sort(key=lambda item: -item[1])
        shown = ", ".join(f"id {rid!r}: {n} tokens" for rid, n in over[:10])
        more = f" and {len(over) - 10} more" if len(over) > 10 else ""
        where = (f"max_length={limit} (set by the task YAML or run config)" if source == "fixed"
                 else f"the max_length ceiling {limit} (profile/task `max_length_ceiling`"
                 + (f", model context {model_context}" if model_context else "") + ")")
        raise TrainingRowTooLongError(
            f"{spec.name}: {len(over)} of {len(lengths)} training row(s) are longer than {where}, counting the "
            f"rendered prompt + answer with {tokenizer_name}: {shown}{more}. Training would cut the start of "
            f"their prompt (the system prompt with the task description) while evaluation sends all of it. "
            f"Raise the limit, shorten or drop those rows, or set `training.allow_truncation: true` in "
            f"{spec.source_file or 'the task YAML'} to train on truncated rows knowingly."
        )
    ordered = sorted(lengths)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return LengthPlan(max_length=limit, source=source, ceiling=ceiling, n_rows=len(lengths),
                      median=float(statistics.median(lengths)), p90=float(p90), longest=longest,
                      shortest=min(lengths), truncated=len(over))


def serving_context_length(spec: TaskSpec, test_rows: Sequence[dict[str, Any]], tokenizer,
                           train_max_length: int) -> int:
    """Context an eval server needs for this task: the longest test prompt (eval rendering, generation
    prompt added) plus ``spec.max_answer_tokens``, and never less than the training length."""
    from distil_platform.tasks.prompts import build_messages

    longest_prompt = max((len(tokenizer.apply_chat_template(build_messages(spec, dict(r)), add_generation_prompt=True,
                                                            tokenize=True, return_dict=True)["input_ids"])
                          for r in test_rows), default=0)
    return max(int(train_max_length), longest_prompt + int(spec.max_answer_tokens))
