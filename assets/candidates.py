"""Wiring of the student candidates (``distil_platform/tasks/candidates.py``): which assets one
candidate gets and under which store run id its rows are written.

The first candidate keeps today's keys and writes under the Dagster run id; another candidate ``c``
gets ``<task>_student__c``, ``<task>_student_serving__c`` (``<task>_student_eval__c``,
``<task>_throughput__c``) from the same factories, and writes its rows, checkpoint and artefacts
under ``<run id>__c``, so two candidates materialised in one run never share rows in the results
store (readers take the id from the ``store_run_id`` metadata, ``assets/published.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

from distil_platform.tasks.candidates import StudentCandidate, selected_candidates, task_candidates

from .keys import candidate_key, student_serving_name


@dataclass(frozen=True)
class CandidateWiring:
    candidate: StudentCandidate
    first: bool

    @property
    def suffix(self) -> str | None:
        """The key suffix: None for the first candidate (today's keys)."""
        return None if self.first else self.candidate.name

    def key(self, task: str, stage: str) -> dg.AssetKey:
        return candidate_key(task, stage, self.suffix)

    def serving_name(self, task: str) -> str:
        return student_serving_name(task, self.suffix)

    def store_run_id(self, run_id: str) -> str:
        return run_id if self.first else f"{run_id}__{self.candidate.name}"

    def context(self, context: Any) -> Any:
        """``context`` for the stage bodies: itself for the first candidate, else one whose ``run_id``
        is this candidate's store run id (everything else is the asset's context)."""
        return context if self.first else CandidateRunContext(context, self.store_run_id(context.run_id))


class CandidateRunContext:
    """An asset context whose ``run_id`` is a candidate's store run id: the eval and throughput
    bodies write rows, lineage and artefacts under ``context.run_id``."""

    def __init__(self, context: Any, run_id: str):
        self._context = context
        self.run_id = run_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def default_wiring(spec: Any, profile: str) -> CandidateWiring:
    """The first candidate of ``spec`` under ``profile`` (today's keys)."""
    return CandidateWiring(task_candidates(spec, profile)[0], first=True)


def wirings(spec: Any, profile: str, selection: str | None = None) -> list[CandidateWiring]:
    """The candidates built into the Definitions (``selected_candidates``), first first."""
    return [CandidateWiring(c, first=i == 0) for i, c in enumerate(selected_candidates(spec, profile, selection))]
