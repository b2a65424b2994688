"""Student lineage: which checkpoint a stage measured. A checkpoint's fingerprint, the
``student_lineage`` row each student eval and throughput run records, and :class:`Lineage`, the
checkpoint behind a run as read back from those rows (the cost table ties every student row to one
checkpoint with it and refuses throughput measured on another).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class LineageError(RuntimeError):
    """A checkpoint cannot be fingerprinted (the message says which path)."""


def checkpoint_fingerprint(checkpoint: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 over every file of a checkpoint directory: relative name, size, and the first and
    last ``chunk`` bytes (whole small files). Cheap on multi-GB weights, and a retrained checkpoint
    (other weights) or an edited config gets another fingerprint."""
    import hashlib

    root = Path(checkpoint)
    if not root.is_dir():
        raise LineageError(f"{root}: not a checkpoint directory")
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root).as_posix()}\0{size}\0".encode())
        with path.open("rb") as fh:
            digest.update(fh.read(chunk))
            if size > 2 * chunk:
                fh.seek(size - chunk)
                digest.update(fh.read(chunk))
            elif size > chunk:
                digest.update(fh.read())
    return digest.hexdigest()


def record_student_lineage(store: Any, *, task: str, stage: str, run_id: str, model: str,
                           student: Mapping[str, Any], variant: str,
                           local_dir: str | Path | None = None) -> dict[str, Any]:
    """Record which checkpoint a stage measured (``student`` is the ``<task>_student`` output:
    checkpoint_path (a directory or an object-store URL), run_id, use_synthetic). The fingerprint
    is taken from the files served (``local_dir``: the fetched copy of a remote checkpoint)."""
    from distil_platform.storage.store import student_lineage

    ckpt = student.get("checkpoint_path")
    files = Path(local_dir) if local_dir is not None else (Path(ckpt) if ckpt else None)
    row = {"run_id": run_id, "task": task, "stage": stage, "variant": variant, "model": model,
           "student_run_id": student.get("run_id"), "checkpoint_path": str(ckpt) if ckpt else None,
           "checkpoint_fingerprint": checkpoint_fingerprint(files) if files is not None and files.is_dir() else None,
           "use_synthetic": student.get("use_synthetic")}
    store.insert(student_lineage, [row])
    return row


@dataclass(frozen=True)
class Lineage:
    """The checkpoint behind a student eval or throughput run (fields None when not recorded)."""

    model: str
    student_run_id: str | None = None
    fingerprint: str | None = None
    use_synthetic: bool | None = None
    recorded: bool = False

    def same_checkpoint(self, other: Lineage) -> bool:
        if self.recorded and other.recorded:
            if self.fingerprint and other.fingerprint:
                return self.fingerprint == other.fingerprint
            return self.student_run_id == other.student_run_id and self.student_run_id is not None
        return self.model == other.model  # the served name carries the student run id

    def describe(self) -> str:
        if not self.recorded:
            return f"unrecorded (matched by served name {self.model})"
        text = f"student run {(self.student_run_id or '?')[:8]}"
        if self.fingerprint:
            text += f", checkpoint {self.fingerprint[:12]}"
        return text + (" (seed-only ablation)" if self.use_synthetic is False else "")


def read_lineage_rows(store: Any, task: str) -> dict[tuple[str, str, str], dict]:
    """``task``'s lineage rows by (stage, run id, variant); a run's first row also under variant ""."""
    from distil_platform.storage.store import student_lineage

    lineage_rows: dict[tuple[str, str, str], dict] = {}
    for r in sorted(store.select(student_lineage, task=task), key=lambda r: r["id"]):
        lineage_rows[(r["stage"], r["run_id"], r.get("variant") or "")] = r
        lineage_rows.setdefault((r["stage"], r["run_id"], ""), r)
    return lineage_rows


def lineage(rows_by_key: Mapping[tuple[str, str], Mapping[str, Any]], stage: str, run_id: str, model: str,
            variant: str | None = None) -> Lineage:
    """The checkpoint behind one run, from :func:`read_lineage_rows`' rows: the variant's row, else the
    run's; unrecorded (matched by served name ``model``) when the run has none."""
    row = rows_by_key.get((stage, run_id, variant or "")) or rows_by_key.get((stage, run_id, ""))
    if row is None:
        return Lineage(model=model)
    return Lineage(model=row["model"], student_run_id=row.get("student_run_id"),
                   fingerprint=row.get("checkpoint_fingerprint"), use_synthetic=row.get("use_synthetic"),
                   recorded=True)
