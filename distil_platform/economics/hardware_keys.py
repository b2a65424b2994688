"""Hardware keys of the pricing file: which serving hardware the platform can price (``KNOWN_GPUS``,
``cpu-<N>core``) and how a server's GPU name or CPU core count resolves to one of those keys.
"""

from __future__ import annotations

import os
import re

# Serving hardware the platform knows how to describe; a typo ("h10") must fail loudly rather
# than silently leave a student unpriced.
KNOWN_GPUS = ("h100", "h200", "gh200", "b200", "a100", "a100-40gb", "a100-80gb", "l4", "l40s", "a10g", "t4", "v100",
              "mi300x")
CPU_KEY_RE = re.compile(r"^cpu-(\d+)core$")


def is_known_hardware(key: str) -> bool:
    return key in KNOWN_GPUS or bool(CPU_KEY_RE.match(key))


def gpu_hardware_key(gpu_name: str) -> str | None:
    """The pricing key of a GPU by **exact** token match of its name (``"NVIDIA GH200 480GB"`` ->
    ``gh200``, never ``h200``; ``"NVIDIA A100-SXM4-80GB"`` -> ``a100``); None when no token is a known GPU."""
    tokens = [t for t in re.split(r"[\s_/(),-]+", gpu_name.lower()) if t]
    for token in tokens:
        if token in KNOWN_GPUS:
            return token
    return None


def cpu_hardware_key(cores: int) -> str:
    """Hardware key of a CPU instance with ``cores`` cores (what the local profile is priced as)."""
    return f"cpu-{int(cores)}core"


def pricing_hardware_key(server_key: str, description: str = "") -> str:
    """The pricing-file key for a server's hardware: GPU keys pass through; a CPU server (``cpu``)
    is priced as an instance with as many cores as the description (``"..., 2 cores"``) or this
    process's CPU affinity says."""
    if server_key != "cpu":
        # The description names the GPU ("1x NVIDIA GH200 480GB"): it wins over a key guessed by substring.
        name = re.sub(r"^\d+x\s+", "", description or "")
        return gpu_hardware_key(name) or server_key
    match = re.search(r"(\d+)\s+cores?\b", description or "")
    if match:
        return cpu_hardware_key(int(match.group(1)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpu_hardware_key(cores)
