"""Student candidates of a task: a base model plus training settings, listed per profile in the task
YAML (``student_candidates``); each is trained, evaluated, load-tested and priced, and the cost table
names the cheapest one that is good enough (``economics/candidates.py``).

::

    student_candidates:
      local:
        - {name: lora_40, base_model: smollm2-135m-instruct, max_steps: 40, use_lora: true}
        - {name: lora_80, base_model: smollm2-135m-instruct, max_steps: 80, use_lora: true}

The **first** candidate keeps the task's historical asset keys (``<task>_student``, ...); a profile
the YAML lists no candidates for has one implicit candidate: the profile's student base model with
the task's ``training`` settings, named after the base model. Which further candidates are built
into the Definitions: env ``DISTIL_STUDENT_CANDIDATES`` (``all`` or a comma list of names; unset: the
first only, so ``make run`` keeps its time budget).
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

CANDIDATES_ENV = "DISTIL_STUDENT_CANDIDATES"
CANDIDATE_NAME_PATTERN = r"^[a-z0-9_]+$"
Profile = Literal["local", "gpu", "test", "rehearsal"]


class StudentCandidate(BaseModel):
    """One candidate: ``None`` settings fall back to the task's ``training`` (then the profile's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Slug-safe: it becomes an asset-key suffix (``<task>_student__<name>``) and part of a served name.
    name: str = Field(pattern=CANDIDATE_NAME_PATTERN, min_length=1, max_length=48)
    base_model: str = Field(min_length=1)
    max_steps: int | None = Field(default=None, gt=0)
    learning_rate: float | None = Field(default=None, gt=0)
    use_lora: bool | None = None
    # Recompute activations in the backward pass (a large base model on one card); None: the task's.
    gradient_checkpointing: bool | None = None

    def settings(self) -> str:
        """``lora, 40 steps`` (what differs from the task's training settings)."""
        parts = [] if self.use_lora is None else ["lora" if self.use_lora else "full fine-tune"]
        parts += [f"{self.max_steps} steps"] if self.max_steps else []
        parts += [f"lr {self.learning_rate:g}"] if self.learning_rate else []
        parts += ["gradient checkpointing"] if self.gradient_checkpointing else []
        return ", ".join(parts) or "task training settings"


def _unique_names(candidates: dict[str, list[StudentCandidate]]) -> dict[str, list[StudentCandidate]]:
    for profile, listed in candidates.items():
        if not listed:
            raise ValueError(f"profile {profile!r} lists no candidates: list at least one, or leave the profile out")
        names = [c.name for c in listed]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"profile {profile!r}: candidate name(s) {', '.join(repeated)} listed more than once "
                             "(names must be unique: they become asset keys)")
    return candidates


# The ``TaskSpec.student_candidates`` field: profile -> candidates, first = the task's default.
StudentCandidates = Annotated[dict[Profile, list[StudentCandidate]], AfterValidator(_unique_names)]


def candidate_slug(model: str) -> str:
    """A slug-safe name for a model name (``smollm2-135m-instruct`` -> ``smollm2_135m_instruct``)."""
    return re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:48] or "default"


def task_candidates(spec: Any, profile: str) -> list[StudentCandidate]:
    """``spec``'s candidates under ``profile``, first = the default (the implicit one when none are
    listed: the profile's student base model with the task's training settings)."""
    listed = spec.student_candidates.get(profile)
    if listed:
        return list(listed)
    base = spec.student_base(profile)
    return [StudentCandidate(name=candidate_slug(base), base_model=base)]


def selected_candidates(spec: Any, profile: str, selection: str | None = None) -> list[StudentCandidate]:
    """The candidates built into the Definitions: the first always; the others when ``selection``
    (default: env ``DISTIL_STUDENT_CANDIDATES``) is ``all`` or a comma list naming them (names of
    other tasks' candidates are ignored here)."""
    candidates = task_candidates(spec, profile)
    value = (os.environ.get(CANDIDATES_ENV, "") if selection is None else selection).strip()
    if value == "all":
        return candidates
    names = {n.strip() for n in value.split(",") if n.strip()}
    return candidates[:1] + [c for c in candidates[1:] if c.name in names]
