"""The compute dtype of training and serving, chosen from the hardware.

One function decides (:func:`choose_precision`), from the CPU's flags or the GPU's compute
capability, overridable by a setting:

- CUDA GPU: bf16 at compute capability >= 8.0 (Ampere and later); fp16 below (Volta, Turing: fp16
  is their tensor-core path, bf16 is emulated).
- x86 CPU: bf16 where the CPU has native bf16 (``avx512_bf16`` or ``amx_bf16`` in its flags);
  fp32 otherwise. Measured on a 2-core AMD EPYC Zen 3 (AVX2 only): a LoRA step of the make-run
  recipe took 340 s in bf16 and 14 s in fp32; vLLM-CPU served bf16 at a quarter of its fp32 rate.
  On AVX512-BF16 / AMX machines bf16 is the fast path (3.8-8.3 s per step).
- arm64 CPU: bf16 where the CPU reports ``bf16`` in its features (Armv8.6 BF16 instructions);
  fp32 otherwise.

The setting is env ``DISTIL_COMPUTE_DTYPE`` (``auto`` | ``bf16`` | ``fp16`` | ``fp32``, or torch's
names), a profile's ``dtype``, or the serving resource's ``dtype``; ``auto`` asks the hardware.
The decision travels with its reason: training and serving assets show both in their metadata, the
serving variant is named after it (``fp32``, ``bf16``, ...), and it is part of a server's identity
(the LLM cache key). Plain Python, no torch import: the flags come from ``/proc/cpuinfo`` and the
GPU's capability from ``nvidia-smi``, or from the caller.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

DTYPE_ENV = "DISTIL_COMPUTE_DTYPE"

# Canonical torch / vLLM names and the short names used for variants and labels.
_ALIASES = {
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "fp32": "float32", "float32": "float32", "float": "float32",
}
SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
NATIVE_BF16_X86 = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Precision:
    """A compute dtype and why it was chosen."""

    dtype: str  # bfloat16 | float16 | float32 (torch / vLLM ``--dtype`` names)
    reason: str
    # "setting" (an explicit choice), "cpu_flags", "cuda_capability"
    source: str
    device: str  # "cpu" | "cuda"

    @property
    def short(self) -> str:
        """``bf16`` / ``fp16`` / ``fp32``: the variant name and the label a user reads."""
        return SHORT[self.dtype]

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "short": self.short}


def normalise_dtype(value: str) -> str:
    """``bf16``/``bfloat16`` -> ``bfloat16`` etc.; ``auto`` stays ``auto``; anything else is an error."""
    key = str(value).strip().lower()
    if key == "auto":
        return "auto"
    if key not in _ALIASES:
        raise ValueError(f"compute dtype {value!r}: expected auto, bf16, fp16 or fp32 (or bfloat16, float16, float32)")
    return _ALIASES[key]


def parse_cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first CPU in a ``/proc/cpuinfo`` text (x86 ``flags``, arm64 ``Features``)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def read_cpu_flags(path: str | os.PathLike = "/proc/cpuinfo") -> set[str]:
    try:
        return parse_cpu_flags(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return set()


def cpu_model_name(path: str | os.PathLike = "/proc/cpuinfo") -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown CPU"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or "unknown CPU")


def _is_arm(machine: str) -> bool:
    return machine.lower() in ("aarch64", "arm64")


def choose_precision(
    *,
    device: str = "cpu",
    cpu_flags: Iterable[str] | None = None,
    machine: str | None = None,
    cuda_capability: tuple[int, int] | None = None,
    setting: str | None = None,
    setting_name: str = DTYPE_ENV,
) -> Precision:
    """The compute dtype for ``device`` ("cpu" or "cuda"), see the module docstring.

    ``setting`` (``auto`` or None: ask the hardware) wins when it names a dtype. ``cpu_flags`` /
    ``machine`` / ``cuda_capability`` describe the hardware; the caller passes what it read (tests
    pass recorded flag sets).
    """
    if setting is not None and normalise_dtype(setting) != "auto":
        dtype = normalise_dtype(setting)
        return Precision(dtype, f"set by {setting_name}={setting}", "setting", device)
    if device.startswith("cuda"):
        if cuda_capability is None:
            return Precision("bfloat16", "CUDA GPU of unknown compute capability: bf16 assumed", "cuda_capability",
                             "cuda")
        major, minor = cuda_capability
        if major >= 8:
            return Precision("bfloat16", f"CUDA compute capability {major}.{minor} >= 8.0: native bf16",
                             "cuda_capability", "cuda")
        return Precision("float16", f"CUDA compute capability {major}.{minor} < 8.0: no native bf16, fp16 is "
                         "the tensor-core path", "cuda_capability", "cuda")
    flags = set(cpu_flags or ())
    machine = machine or platform.machine()
    if _is_arm(machine):
        if "bf16" in flags:
            return Precision("bfloat16", "arm64 CPU with bf16 instructions", "cpu_flags", "cpu")
        return Precision("float32", "arm64 CPU without bf16 instructions: bf16 would be emulated", "cpu_flags", "cpu")
    native = [f for f in NATIVE_BF16_X86 if f in flags]
    if native:
        return Precision("bfloat16", f"CPU has native bf16 ({', '.join(native)})", "cpu_flags", "cpu")
    widest = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), None)
    return Precision("float32", f"CPU has no native bf16 (no avx512_bf16 / amx_bf16{'; ' + widest if widest else ''}"
                     "): bf16 would be emulated, fp32 is the fast path", "cpu_flags", "cpu")


def gpu_compute_capability() -> tuple[int, int] | None:
    """Compute capability of the first visible GPU from ``nvidia-smi`` (None without one; no torch import)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"\s*(\d+)\.(\d+)", out.stdout or "")
    return (int(match.group(1)), int(match.group(2))) if out.returncode == 0 and match else None


def detect_precision(device: str = "cpu", setting: str | None = None, *, setting_name: str | None = None) -> Precision:
    """:func:`choose_precision` for this machine. ``setting`` None falls back to env ``DISTIL_COMPUTE_DTYPE``."""
    name = setting_name or "setting"
    if setting is None or normalise_dtype(setting) == "auto":
        env = os.environ.get(DTYPE_ENV, "").strip()
        if env and normalise_dtype(env) != "auto":
            setting, name = env, DTYPE_ENV
    if device.startswith("cuda"):
        return choose_precision(device="cuda", cuda_capability=gpu_compute_capability(), setting=setting, setting_name=name)
    return choose_precision(device="cpu", cpu_flags=read_cpu_flags(), setting=setting, setting_name=name)


class NoCudaError(RuntimeError):
    """Training needs a CUDA GPU (the gpu profile) and torch sees none."""


def training_device(cuda_available: bool, *, require_cuda: bool = False, torch_version: str = "",
                    torch_cuda: str | None = None, profile: str = "gpu") -> str:
    """``"cuda"`` or ``"cpu"`` for a training job, from what torch reports (``torch.cuda.is_available()``,
    ``torch.__version__``, ``torch.version.cuda``). With ``require_cuda`` (the gpu profile) and no CUDA
    GPU visible it raises :class:`NoCudaError` naming the likely cause, instead of training on the CPU."""
    if cuda_available:
        return "cuda"
    if not require_cuda:
        return "cpu"
    if torch_version and not torch_cuda:
        cause = (f"this torch ({torch_version}) is a CPU build: install a CUDA one, e.g. "
                 "`make TORCH_SPEC='torch' venv` on the GPU machine")
    else:
        cause = (f"torch {torch_version or '(unknown version)'} (CUDA {torch_cuda or '?'}) finds no usable GPU: "
                 "check `nvidia-smi`, the driver, and CUDA_VISIBLE_DEVICES")
    raise NoCudaError(f"the {profile} profile trains on a CUDA GPU and torch sees none ({cause}); training on the "
                      "CPU instead would take days. On a machine without a GPU use DISTIL_PROFILE=local.")
