"""Assemble a student bundle from a trained checkpoint: links and small files, never a re-merge.

Layout (the directory is named after the served name, which is what requests carry)::

    <served name>/
      README.md              model card (Hugging Face format: YAML front matter + Markdown)
      config.json, model.safetensors, generation_config.json, tokenizer files, chat template
                             the merged weights as trained (weights hard-linked to the checkpoint where
                             it is on the same file system, else copied)
      adapter/               the LoRA adapter alone (adapter_config.json, adapter_model.safetensors),
                             where the student was trained with LoRA
      task.json              the prompt pieces, answer rule, generation settings and served name
      client.py              the standard-library client (renders, requests, parses)
      serving.json, serve.sh the serving commands: the measured flags, vLLM on CPU and GPU, transformers
      bundle.json            manifest: lineage, figures, files and sizes

``write_tarball`` packs it as ``<served name>.tar`` beside it (uncompressed: safetensors barely
compress, and gzip would cost more time than the rest of the bundle).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distil_platform.bundle.card import base_hub_id, model_card
from distil_platform.bundle.commands import (
    VLLM_CPU,
    MeasuredServing,
    ServingCommand,
    serve_script,
    serving_commands,
)
from distil_platform.bundle.figures import Figures, Lineage
from distil_platform.bundle.taskfile import task_file
from distil_platform.serving.launch import model_max_len
from distil_platform.tasks.spec import TaskSpec

BUNDLE_FORMAT = 1
CLIENT_SOURCE = Path(__file__).resolve().with_name("client.py")
ADAPTER_DIR = "adapter"
# What the trainer writes beside the weights that is no part of the model (lineage is in bundle.json).
_TRAINING_ONLY = {"train_summary.json", "loss_history.json", "loss_curve.png", "distil_model.json"}
_MODEL_SUFFIXES = {".safetensors", ".json", ".jinja", ".txt", ".model"}
_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class BundleError(RuntimeError):
    """The checkpoint cannot be bundled (with the reason)."""


@dataclass
class Bundle:
    path: Path
    served_name: str
    files: dict[str, int]  # relative path -> bytes
    commands: list[ServingCommand]
    card: str
    adapter: bool
    linked: int = 0  # files hard-linked from the checkpoint (the others copied)
    tarball: Path | None = None
    tarball_bytes: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(self.files.values())

    def command(self, name: str) -> ServingCommand | None:
        return next((c for c in self.commands if c.name == name), None)

    @property
    def measured_command(self) -> ServingCommand | None:
        return next((c for c in self.commands if c.measured), None)


_LINK_MIN_BYTES = 1 << 20  # weights are linked; small files are copied, so editing one never edits the checkpoint


def _link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` to ``dst`` (a large file on the same file system), else copy it; True when linked."""
    if src.stat().st_size >= _LINK_MIN_BYTES:
        try:
            os.link(src, dst)
            return True
        except OSError:
            pass
    shutil.copy2(src, dst)
    return False


def model_files(checkpoint: Path) -> list[Path]:
    """The checkpoint's files that make the model: weights, config, tokenizer, chat template."""
    return sorted(p for p in Path(checkpoint).iterdir()
                  if p.is_file() and p.suffix in _MODEL_SUFFIXES and p.name not in _TRAINING_ONLY)


def chat_template_of(checkpoint: Path) -> str | None:
    """The chat template the tokenizer applies (``chat_template.jinja``, else tokenizer_config's)."""
    jinja = Path(checkpoint) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        config = json.loads((Path(checkpoint) / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template")
    return template if isinstance(template, str) else None


def _copy_adapter(checkpoint: Path, out: Path, base_model: str) -> int:
    """The LoRA adapter beside the merged weights, its config naming the base by its hub id where it
    has one (the trainer records the local directory it loaded). Returns files linked."""
    source = Path(checkpoint) / ADAPTER_DIR
    weights = next((source / n for n in _ADAPTER_FILES if (source / n).is_file()), None)
    if weights is None or not (source / "adapter_config.json").is_file():
        return 0
    target = out / ADAPTER_DIR
    target.mkdir()
    config = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_hub_id(base_model) or base_model
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return int(_link_or_copy(weights, target / weights.name))


def assemble_bundle(spec: TaskSpec, checkpoint: str | Path, out_dir: str | Path, *, served_name: str, max_tokens: int,
                    figures: Figures, lineage: Lineage, measured: MeasuredServing | None = None,
                    compute_dtype: str | None = None) -> Bundle:
    """Write the bundle of ``checkpoint`` to ``out_dir/<served_name>/`` (module docstring)."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise BundleError(f"{checkpoint}: no checkpoint (config.json missing)")
    if "/" in served_name or served_name.startswith("."):
        raise BundleError(f"served name {served_name!r} cannot name a directory")
    path = Path(out_dir) / served_name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    linked = 0
    for src in model_files(checkpoint):
        linked += _link_or_copy(src, path / src.name)
    linked += _copy_adapter(checkpoint, path, lineage.base_model)
    adapter = (path / ADAPTER_DIR).is_dir()

    dtype = compute_dtype or lineage.compute_dtype or "bfloat16"
    task = task_file(spec, served_name=served_name, max_tokens=max_tokens, chat_template=chat_template_of(checkpoint))
    commands = serving_commands(served_name, measured=measured, compute_dtype=dtype,
                                model_context=model_max_len(checkpoint))
    default = next((c.name for c in commands if c.measured), VLLM_CPU)
    _write_json(path / "task.json", task)
    shutil.copyfile(CLIENT_SOURCE, path / "client.py")
    _write_json(path / "serving.json", {"default": default, "run_in": "the directory that holds the bundle",
                                        "commands": [c.as_dict() for c in commands if c.argv]})
    script = path / "serve.sh"
    script.write_text(serve_script(commands, default), encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    files = _sizes(path)
    card = model_card(spec, served_name=served_name, figures=figures, lineage=lineage, commands=commands, task=task,
                      files=files, adapter=adapter)
    (path / "README.md").write_text(card, encoding="utf-8")
    manifest = {"format": BUNDLE_FORMAT, "task": spec.name, "task_type": spec.type, "served_name": served_name,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "lineage": lineage.as_dict(), "figures": figures.as_dict(), "adapter": adapter,
                "default_command": default, "files": files}
    _write_json(path / "bundle.json", manifest)
    return Bundle(path=path, served_name=served_name, files=_sizes(path), commands=commands, card=card, adapter=adapter,
                  linked=linked, manifest=manifest)


def write_tarball(bundle: Bundle, dest: str | Path | None = None) -> Path:
    """``<served name>.tar`` of the bundle (its one top-level directory), beside it by default."""
    dest = Path(dest) if dest is not None else bundle.path.with_name(bundle.served_name + ".tar")
    with tarfile.open(dest, "w") as tar:
        tar.add(bundle.path, arcname=bundle.served_name)
    bundle.tarball, bundle.tarball_bytes = dest, dest.stat().st_size
    return dest


def _sizes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
