"""Content hashes of the configuration that invalidates results (plain Python, no Dagster).

- The pricing file: its parsed content, so comment or whitespace edits do not re-price. A file that
  does not parse hashes its bytes, so the re-pricing run happens and fails loudly (the previous
  snapshot stays current).
- A task's prompt: the fields of its YAML that make up every rendered prompt (``PROMPT_FIELDS``).
  Other fields (training steps, comparison models, ...) do not change what a model is asked.

These hashes are the data versions of the observable source assets ``pricing_file`` and
``<task>_prompt``; a new data version is what the declarative automation reacts to.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

PROMPT_FIELDS = ("description", "prompt_template", "labels", "tools", "tool_rendering")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def pricing_content_hash(data: bytes) -> str:
    try:
        return hashlib.sha256(_canonical(yaml.safe_load(data.decode("utf-8"))).encode()).hexdigest()
    except (yaml.YAMLError, UnicodeDecodeError):
        return hashlib.sha256(data).hexdigest()


def prompt_fields_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: fields.get(k) for k in PROMPT_FIELDS}).encode()).hexdigest()


def prompt_content_hash(data: bytes, path: str | Path) -> str:
    """Hash of the prompt-defining fields of a task YAML; ValueError naming the file if it does not parse."""
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a task file must be a mapping")  # noqa: TRY004 - bad file content, not a bad argument
    return prompt_fields_hash(raw)


def task_prompt_hash(spec: Any) -> str:
    """The prompt hash of a task as it is on disk now (its YAML), or of the loaded spec when it has
    no source file (a spec built in code)."""
    if getattr(spec, "source_file", None):
        path = Path(spec.source_file)
        return prompt_content_hash(path.read_bytes(), path)
    dumped = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else dict(spec)
    return prompt_fields_hash(dumped)
