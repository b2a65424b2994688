"""The serving commands of a bundle: the flags the throughput profile measured, on the bundle's weights.

The command lines are built by the platform's own builders (:func:`serving.launch.build_vllm_command`,
:func:`serving.launch.build_transformers_command`) from the settings the profiled server reported
(``Server.settings``, kept in ``<task>_throughput``'s value per variant), so the flags are the ones
that achieved the measured requests/s; only the model path (the bundle's directory, whose name is the
served name), the host and the port differ. The engine and device the profile did not measure get the
platform's defaults for that device, marked as not measured.

Every command runs in the directory that *holds* the bundle: ``transformers serve`` loads the model by
the name requests carry, so the directory's name is the served name for both engines.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distil_platform.serving.launch import (
    ServingError,
    VllmSettings,
    build_transformers_command,
    build_vllm_command,
    vllm_device_settings,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
VLLM_CPU, VLLM_GPU, TRANSFORMERS = "vllm-cpu", "vllm-gpu", "transformers"
_VLLM_FIELDS = ("enforce_eager", "max_model_len", "enable_prefix_caching", "quantization", "max_num_seqs",
                "gpu_memory_utilization", "kv_cache_gib", "threads_bind")


@dataclass(frozen=True)
class MeasuredServing:
    """The server of the throughput profile's reference variant (``<task>_throughput``'s value)."""

    backend: str  # "vllm" | "transformers"
    settings: dict[str, Any]  # Server.settings: the device flags and env actually passed, the dtype
    hardware: str = ""
    variant: str = ""
    sustained_rps: float | None = None
    on_gpu: bool = False

    @classmethod
    def from_throughput_value(cls, value: dict[str, Any] | None) -> MeasuredServing | None:
        variants = (value or {}).get("variants") or {}
        name = (value or {}).get("reference_variant") or next(iter(variants), None)
        ref = variants.get(name) if name else None
        if not ref or not ref.get("backend"):
            return None
        return cls(backend=str(ref["backend"]), settings=dict(ref.get("settings") or {}),
                   hardware=str(ref.get("hardware") or ""), variant=str(name),
                   sustained_rps=ref.get("sustained_rps"), on_gpu=bool(ref.get("on_gpu")))

    @property
    def name(self) -> str:
        """The bundle's command name for this server."""
        if self.backend == "vllm":
            return VLLM_GPU if self.on_gpu or self.settings.get("device") == "cuda" else VLLM_CPU
        return TRANSFORMERS


@dataclass
class ServingCommand:
    name: str  # vllm-cpu | vllm-gpu | transformers
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    measured: bool = False
    note: str = ""

    def shell(self) -> str:
        """One line to paste in the directory that holds the bundle."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv)

    def script_line(self) -> str:
        """The line ``serve.sh`` runs: the executable, host and port from the environment, extra flags appended."""
        out = []
        for i, token in enumerate(self.argv):
            previous = self.argv[i - 1] if i else ""
            if i == 0:
                out.append('"${PYTHON:-python}"' if self.name != TRANSFORMERS else '"${TRANSFORMERS:-transformers}"')
            elif previous == "--host":
                out.append('"$HOST"')
            elif previous == "--port":
                out.append('"$PORT"')
            else:
                out.append(shlex.quote(token))
        return "exec " + " ".join(out) + ' "$@"'

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shell": self.shell()}


def _vllm_settings(settings: dict[str, Any], on_gpu: bool) -> VllmSettings:
    return VllmSettings(device="cuda" if on_gpu else "cpu", **{k: settings.get(k) for k in _VLLM_FIELDS})


def _vllm(served_name: str, settings: VllmSettings, dtype: str) -> list[str]:
    return build_vllm_command("python", Path(served_name), served_name, DEFAULT_PORT, settings, dtype=dtype,
                              host=DEFAULT_HOST)


def _transformers(served_name: str, settings: dict[str, Any], dtype: str) -> list[str]:
    argv = build_transformers_command(
        served_name, DEFAULT_PORT, dtype=dtype, device=str(settings.get("device") or "auto"),
        continuous_batching=bool(settings.get("continuous_batching", True)),
        cb_num_blocks=settings.get("cb_num_blocks", 80), quantization=settings.get("quantization"), host=DEFAULT_HOST)
    return ["transformers", *argv[1:]]  # the CLI of whatever environment serves it, not this machine's path


def serving_commands(served_name: str, *, measured: MeasuredServing | None, compute_dtype: str,
                     model_context: int | None = None) -> list[ServingCommand]:
    """vLLM on CPU, vLLM on GPU and ``transformers serve``: the measured one with the profiled flags,
    the others with the platform's defaults for their device (``compute_dtype``: the dtype the student
    was trained and evaluated in, for the CPU; bf16 on GPUs)."""
    how = ""
    if measured is not None:
        rps = f": {measured.sustained_rps:g} req/s sustained" if measured.sustained_rps is not None else ""
        how = f"the flags of the throughput profile ({measured.variant}{rps} on {measured.hardware or 'its machine'})"
    commands: list[ServingCommand] = []
    for name in (VLLM_CPU, VLLM_GPU, TRANSFORMERS):
        is_measured = measured is not None and measured.name == name
        dtype = str(measured.settings.get("dtype") or compute_dtype) if is_measured else (
            "bfloat16" if name == VLLM_GPU else compute_dtype)
        note = how if is_measured else "not measured here: the platform's defaults for this device"
        if name == TRANSFORMERS:
            settings = measured.settings if is_measured else {"device": "auto", "continuous_batching": True,
                                                              "cb_num_blocks": 80}
            try:
                commands.append(ServingCommand(name, _transformers(served_name, settings, dtype), measured=is_measured,
                                               note=note))
            except ServingError as exc:  # no `transformers` CLI where the bundle is assembled
                commands.append(ServingCommand(name, [], note=f"not available: {exc}"))
            continue
        on_gpu = name == VLLM_GPU
        vsettings = (_vllm_settings(measured.settings, on_gpu) if is_measured
                     else vllm_device_settings(on_gpu, model_context=model_context))
        env = dict(measured.settings.get("env") or {}) if is_measured else vsettings.env()
        commands.append(ServingCommand(name, _vllm(served_name, vsettings, dtype), env=env, measured=is_measured,
                                       note=note))
    return commands


def serve_script(commands: list[ServingCommand], default: str) -> str:
    """``serve.sh``: ``bash serve.sh [variant] [more engine flags]``, from anywhere."""
    lines = [
        "#!/usr/bin/env bash",
        "# Serve this student: bash serve.sh [" + "|".join(c.name for c in commands if c.argv) + "] [more engine flags]",
        f"# (default {default}). The engine runs in the directory that holds this bundle: the bundle's directory",
        "# name is the served model name. PYTHON (the Python with vLLM), TRANSFORMERS (the `transformers` CLI),",
        f"# HOST ({DEFAULT_HOST}) and PORT ({DEFAULT_PORT}) override. Flags given after the variant win, e.g.",
        "# `bash serve.sh vllm-cpu --no-enable-prefix-caching`.",
        "set -euo pipefail",
        'bundle="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        'cd "$(dirname "$bundle")"',
        f'HOST="${{HOST:-{DEFAULT_HOST}}}"',
        f'PORT="${{PORT:-{DEFAULT_PORT}}}"',
        f'variant="${{1:-{default}}}"',
        "[ $# -gt 0 ] && shift",
        'case "$variant" in',
    ]
    for command in commands:
        if not command.argv:
            continue
        lines.append(f"  {command.name})  # {'measured' if command.measured else 'not measured'}")
        lines += [f'    export {k}="${{{k}:-{v}}}"' for k, v in command.env.items()]
        lines.append(f"    {command.script_line()} ;;")
    lines += ['  *) echo "unknown variant $variant" >&2; exit 2 ;;', "esac", ""]
    return "\n".join(lines)
