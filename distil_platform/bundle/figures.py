"""What a bundle's model card states, each figure from a record of *this* checkpoint.

The cost table's student row of the checkpoint (matched by its fingerprint, the row the cost table
itself ties to one checkpoint through the lineage records) gives the eval score and CI, the sustained
requests/s, the $ per million requests with the hardware's $/hour and the price snapshot's date. Without
such a row the student eval (when it served this checkpoint) still gives the score, and the throughput
profile (when it measured this checkpoint) the requests/s; what is missing is said, never guessed.
The training lineage (base, method, seed and teacher rows) comes from the student's own record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_COMPARISON_COLUMNS = ("model", "role", "variant", "accuracy", "ci_low", "ci_high", "usd_per_million_requests",
                       "cost_source", "student_result")


@dataclass
class Figures:
    metric: str
    score: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_items: int | None = None
    variant: str | None = None  # the student variant priced (the throughput profile's reference)
    sustained_rps: float | None = None
    slo_s: float | None = None
    usd_per_million_requests: float | None = None
    cost_source: str | None = None  # measured / estimated (cost table)
    cost_note: str = ""
    hardware: str | None = None
    hardware_key: str | None = None
    usd_per_hour: float | None = None
    prices_as_of: str | None = None  # the price snapshot's date
    hardware_price_as_of: str | None = None
    eval_run_id: str | None = None
    throughput_run_id: str | None = None
    cost_table_id: str | None = None
    comparisons: list[dict[str, Any]] = field(default_factory=list)  # the cost table's other rows
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Lineage:
    base_model: str
    student_run_id: str
    checkpoint_fingerprint: str
    method: str = "lora"  # lora | full
    seed_rows: int | None = None
    teacher_rows: int | None = None
    seed_source: str | None = None  # local / hf / sample
    teacher: str | None = None
    teacher_source: str | None = None  # teacher / recorded / self_training
    test_rows: int | None = None
    steps: int | None = None
    final_loss: float | None = None
    max_length: int | None = None
    compute_dtype: str | None = None
    lora: dict[str, Any] = field(default_factory=dict)  # r, alpha, target modules

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_train_summary(checkpoint: Path) -> dict[str, Any]:
    """``train_summary.json`` the trainer wrote beside the weights ({} when absent)."""
    try:
        return json.loads((Path(checkpoint) / "train_summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def lineage_from(student: dict[str, Any], summary: dict[str, Any], record: dict[str, Any] | None = None,
                 seed: dict[str, Any] | None = None, teacher: dict[str, Any] | None = None) -> Lineage:
    """The student's lineage: ``student`` its asset value, ``summary`` the checkpoint's train summary,
    ``record``/``seed``/``teacher`` the metadata of the materialisations that made it (None: unknown)."""
    record, seed, teacher = record or {}, seed or {}, teacher or {}
    config = summary.get("config") or {}
    use_lora = config.get("use_lora")
    lora = ({"r": config.get("lora_r"), "alpha": config.get("lora_alpha"),
             "target_modules": list(config.get("lora_target_modules") or [])} if use_lora else {})
    return Lineage(
        base_model=str(student.get("base_model") or summary.get("base_model") or "unknown"),
        student_run_id=str(student.get("run_id") or ""),
        checkpoint_fingerprint=str(student.get("checkpoint_fingerprint") or ""),
        method="full" if use_lora is False else "lora",
        seed_rows=_int(record.get("seed_examples")),
        teacher_rows=_int(record.get("synthetic_examples")) if student.get("use_synthetic", True) else 0,
        seed_source=seed.get("source"), teacher=teacher.get("teacher"), teacher_source=teacher.get("source"),
        test_rows=_int(seed.get("n_test")), steps=_int(summary.get("steps")),
        final_loss=summary.get("final_loss"), max_length=_int(summary.get("max_length") or student.get("max_length")),
        compute_dtype=(summary.get("precision") or {}).get("dtype") or student.get("compute_dtype"), lora=lora)


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _student_row(cost_rows: list[dict[str, Any]], fingerprint: str, variant: str | None) -> dict[str, Any] | None:
    mine = [r for r in cost_rows if r.get("role") == "student" and fingerprint
            and r.get("checkpoint_fingerprint") == fingerprint]
    return next((r for r in mine if r.get("variant") == variant), mine[0] if mine else None)


def select_figures(*, metric: str, served_name: str, fingerprint: str, cost_rows: list[dict[str, Any]],
                   eval_value: dict[str, Any] | None, throughput_value: dict[str, Any] | None,
                   throughput_fingerprint: str | None, slo_s: float | None = None) -> Figures:
    """The card's figures for the checkpoint with ``fingerprint`` (module docstring)."""
    figures = Figures(metric=metric, slo_s=slo_s)
    reference = (throughput_value or {}).get("reference_variant")
    profiled = throughput_value is not None and bool(fingerprint) and throughput_fingerprint == fingerprint
    row = _student_row(cost_rows, fingerprint, reference)
    if row is not None:
        figures.score, figures.ci_low, figures.ci_high = row.get("accuracy"), row.get("ci_low"), row.get("ci_high")
        figures.n_items, figures.variant, figures.metric = _int(row.get("n_items")), row.get("variant"), \
            row.get("metric") or metric
        figures.sustained_rps, figures.usd_per_million_requests = row.get("sustained_rps"), row.get(
            "usd_per_million_requests")
        figures.cost_source, figures.cost_note = row.get("cost_source"), str(row.get("cost_note") or "")
        figures.hardware_key, figures.usd_per_hour = row.get("hardware_key"), row.get("usd_per_hour")
        figures.prices_as_of = row.get("snapshot_as_of") or row.get("price_as_of")
        figures.hardware_price_as_of = row.get("price_as_of")
        figures.eval_run_id, figures.cost_table_id = row.get("eval_run_id"), row.get("table_id")
        figures.comparisons = [{k: r.get(k) for k in _COMPARISON_COLUMNS} for r in cost_rows
                               if r.get("role") != "student"]
    else:
        figures.notes.append("no cost table prices this checkpoint yet: no $ per million requests "
                             "(materialise the task's cost table)")
        if eval_value and eval_value.get("model") == served_name:
            ci = eval_value.get("ci") or [None, None]
            figures.score, figures.ci_low, figures.ci_high = eval_value.get("score"), ci[0], ci[1]
            figures.n_items, figures.eval_run_id = _int(eval_value.get("n")), eval_value.get("run_id")
        else:
            figures.notes.append("no student eval of this checkpoint: no score")
    if profiled:
        ref = ((throughput_value or {}).get("variants") or {}).get(reference) or {}
        figures.hardware = ref.get("hardware") or figures.hardware
        figures.throughput_run_id = throughput_value.get("run_id")
        if figures.sustained_rps is None:
            figures.sustained_rps = ref.get("sustained_rps")
        figures.variant = figures.variant or reference
    elif throughput_value is not None:
        figures.notes.append("the serving flags are those the latest throughput profile measured, on another "
                             "checkpoint of this task")
    else:
        figures.notes.append("no throughput profile: the serving commands are the platform's defaults")
    return figures
