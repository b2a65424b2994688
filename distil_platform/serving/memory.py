"""What a running server holds in memory: its process tree's RSS and GPU memory sampled while it
runs, vLLM's Prometheus metrics (KV-cache usage, prefix-cache hits), the weights' size from the
checkpoint, and the report of weights and KV cache reserved vs used.

GPU memory is read with ``nvidia-smi``: the server's own processes (``--query-compute-apps``, matched
by PID). Inside a container the driver reports host PIDs (or none), so no PID matches; the device's
used memory (``--query-gpu=memory.used``) is then the reading, and without any reading vLLM's own
figures from its log (weights + KV cache reserved). :func:`server_peak_memory` chooses, and says
which source it used; a server on a GPU is never reported by its process RSS (host memory)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# nvidia-smi queries: the compute processes with their memory; each device's used memory.
COMPUTE_APPS_QUERY = ("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
DEVICE_USED_QUERY = ("--query-gpu=index,memory.used", "--format=csv,noheader,nounits")
SmiRunner = Callable[[Sequence[str]], str]  # nvidia-smi arguments -> its stdout ("" when it failed)

GIB = 1024**3


def nvidia_smi_runner() -> SmiRunner | None:
    """Runs this machine's ``nvidia-smi`` with the given arguments (None when there is none)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None

    def run(args: Sequence[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run([smi, *args], capture_output=True, text=True, timeout=10, check=True).stdout
        return ""

    return run


def compute_apps_bytes(smi_output: str, pids: set[int]) -> int:
    """GPU memory of the processes in ``pids`` from ``nvidia-smi --query-compute-apps=pid,used_memory``
    (MiB per line; 0 when none of them is listed, e.g. in a container that sees host PIDs)."""
    total = 0
    for line in smi_output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in pids:
            with contextlib.suppress(ValueError):
                total += int(float(parts[1])) * 1024 * 1024
    return total


def visible_devices(env: Mapping[str, str] | None = None) -> set[int] | None:
    """The GPU indices ``CUDA_VISIBLE_DEVICES`` selects (None: all, or it names devices by UUID)."""
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if value is None or not value.strip():
        return None
    ids = [p.strip() for p in value.split(",") if p.strip()]
    return {int(i) for i in ids} if all(i.isdigit() for i in ids) else None


def device_used_bytes(smi_output: str, devices: set[int] | None = None) -> int:
    """Used memory of the ``devices`` (None: every device listed) from ``nvidia-smi
    --query-gpu=index,memory.used`` (MiB per line)."""
    total = 0
    for line in smi_output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and (devices is None or int(parts[0]) in devices):
            with contextlib.suppress(ValueError):
                total += int(float(parts[1])) * 1024 * 1024
    return total


SOURCE_CPU = "process tree RSS (the server runs on the CPU)"
SOURCE_GPU_PROCESSES = "GPU memory of the server's processes (nvidia-smi --query-compute-apps, PID match)"
SOURCE_GPU_DEVICE = ("GPU device memory used (nvidia-smi --query-gpu=memory.used): nvidia-smi lists none of the "
                     "server's PIDs here (a container's PID namespace); includes any other process on the device")
SOURCE_VLLM = ("vLLM's own figures from its log (weights + KV cache reserved): nvidia-smi gave no reading; "
               "activations and CUDA graphs not included")
SOURCE_NONE = "not measured: nvidia-smi gave no reading and the server's log states no memory figures"


def server_peak_memory(on_gpu: bool, *, process_gpu_bytes: int = 0, device_gpu_bytes: int = 0,
                       vllm_gib: float | None = None, rss_bytes: int = 0) -> tuple[float | None, str]:
    """``(peak GiB, source)`` of a server: on the CPU its process tree's RSS; on a GPU the memory of its
    processes, else the device's used memory, else vLLM's own figures (:func:`vllm_reserved_gib`), else
    None — never the process RSS, which on a GPU is host memory."""
    if not on_gpu:
        return rss_bytes / GIB, SOURCE_CPU
    if process_gpu_bytes:
        return process_gpu_bytes / GIB, SOURCE_GPU_PROCESSES
    if device_gpu_bytes:
        return device_gpu_bytes / GIB, SOURCE_GPU_DEVICE
    if vllm_gib:
        return vllm_gib, SOURCE_VLLM
    return None, SOURCE_NONE


class MemorySampler(threading.Thread):
    """Samples the server's process-tree RSS (psutil) and its GPU memory (nvidia-smi) until stopped.

    On a GPU: the memory of the server's processes (PID match); while none of its PIDs is listed,
    the visible devices' used memory instead (``peak_device_bytes``). ``smi`` runs nvidia-smi
    (default: this machine's, :func:`nvidia_smi_runner`)."""

    def __init__(self, pid: int, on_gpu: bool, interval_s: float = 0.5, metrics_url: str | None = None,
                 smi: SmiRunner | None = None):
        super().__init__(name=f"memory-sampler-{pid}", daemon=True)
        self.pid, self.on_gpu, self.interval_s = pid, on_gpu, interval_s
        self.peak_rss_bytes = 0
        self.peak_gpu_bytes = 0  # the server's processes, by PID
        self.peak_device_bytes = 0  # the visible devices' used memory, sampled while no PID matched
        # vLLM's /metrics: the peak share of the preallocated KV cache that held tokens.
        self.metrics_url = metrics_url
        self.peak_kv_usage: float | None = None
        self._stop_event = threading.Event()
        self._smi = (smi or nvidia_smi_runner()) if on_gpu else None

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self.sample_metrics()
            self._stop_event.wait(self.interval_s)

    def sample_metrics(self) -> dict[str, list[tuple[dict[str, str], float]]] | None:
        if not self.metrics_url:
            return None
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2.0) as response:
                metrics = parse_prometheus(response.read().decode("utf-8", "replace"))
        except (urllib.error.URLError, OSError, ValueError):
            return None
        usage = metric_value(metrics, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
        if usage is not None:
            self.peak_kv_usage = max(self.peak_kv_usage or 0.0, usage)
        return metrics

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss, pids = 0, set()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                rss += proc.memory_info().rss
                pids.add(proc.pid)
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        if self._smi:
            matched = compute_apps_bytes(self._smi(COMPUTE_APPS_QUERY), pids)
            if matched:
                self.peak_gpu_bytes = max(self.peak_gpu_bytes, matched)
            else:
                used = device_used_bytes(self._smi(DEVICE_USED_QUERY), visible_devices())
                self.peak_device_bytes = max(self.peak_device_bytes, used)

    def stop(self) -> None:
        self._stop_event.set()


_PROM_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+([-+0-9.eEinfINFNa]+)(\s+\d+)?$')
_PROM_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition -> ``{name: [(labels, value), ...]}`` (comments skipped)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _PROM_LINE.match(line)
        if not match:
            continue
        labels = dict(_PROM_LABEL.findall(match.group(3) or ""))
        out.setdefault(match.group(1), []).append((labels, float(match.group(4))))
    return out


def metric_value(metrics: Mapping[str, list[tuple[dict[str, str], float]]], *names: str) -> float | None:
    """The first of ``names`` present, summed over its label sets (one model per server)."""
    for name in names:
        if metrics.get(name):
            return sum(value for _, value in metrics[name])
    return None


_WEIGHTS_RE = re.compile(r"Model loading took ([0-9.]+) ?GiB")
_KV_AVAILABLE_RE = re.compile(r"Available KV cache memory: ([0-9.]+) ?GiB")
_KV_TOKENS_RE = re.compile(r"KV cache size: ([0-9,]+) tokens")
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "auto": 2}


def checkpoint_parameters(model_dir: Path) -> int | None:
    """Parameter count from the safetensors headers (no tensor is read)."""
    total, found = 0, False
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with contextlib.suppress(OSError, ValueError):
            with file.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(size))
            for name, info in header.items():
                if name != "__metadata__":
                    total += math.prod(info.get("shape") or [1])
            found = True
    return total if found else None


def vllm_reserved_gib(log_text: str) -> float | None:
    """What vLLM says it holds on the device: "Model loading took X GiB" + "Available KV cache memory:
    Y GiB" (the last of each in its log; None unless both are there)."""
    weights, kv = _WEIGHTS_RE.findall(log_text), _KV_AVAILABLE_RE.findall(log_text)
    return float(weights[-1]) + float(kv[-1]) if weights and kv else None


def weights_gib(model_dir: Path, dtype: str, quantization: str | None = None) -> float | None:
    """Weights in memory when served: parameters x bytes of the serving dtype (fp8: 1 byte)."""
    params = checkpoint_parameters(model_dir)
    if params is None:
        return None
    return params * (1 if quantization == "fp8" else _DTYPE_BYTES.get(dtype, 2)) / 1024**3


def vllm_memory_report(log_text: str, metrics: Mapping[str, list[tuple[dict[str, str], float]]],
                       peak_kv_usage: float | None, *, process_peak_gib: float | None = None,
                       process_rss_peak_gib: float | None = None,
                       weights_estimate_gib: float | None = None) -> dict[str, float | None]:
    """Weights, KV cache reserved vs actually used, and prefix-cache hits, from the server's log
    and ``/metrics``: what ``--gpu-memory-utilization`` (or ``VLLM_CPU_KVCACHE_SPACE``) preallocates
    says nothing about what a model needs, so both are reported.

    - ``weights_gib``: "Model loading took X GiB" in the log (GPU), else ``weights_estimate_gib``
      (parameters x dtype bytes, :func:`weights_gib`).
    - ``kv_reserved_gib``: ``kv_cache_memory_bytes`` of ``vllm:cache_config_info``, else
      "Available KV cache memory: X GiB" in the log.
    - ``kv_used_peak_gib``: reserved x the peak of ``vllm:kv_cache_usage_perc`` (a 0-1 share,
      sampled every 0.5 s while the server ran).
    - ``prefix_cache_hit_rate``: ``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries`` (tokens).
    """
    def last(regex: re.Pattern[str]) -> float | None:
        found = regex.findall(log_text)
        return float(found[-1].replace(",", "")) if found else None

    weights = last(_WEIGHTS_RE) or weights_estimate_gib
    kv_reserved = None
    for labels, _ in metrics.get("vllm:cache_config_info", []):
        with contextlib.suppress(KeyError, ValueError):
            kv_reserved = int(labels["kv_cache_memory_bytes"]) / 1024**3
    if kv_reserved is None:
        kv_reserved = last(_KV_AVAILABLE_RE)
    queries = metric_value(metrics, "vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries")
    hits = metric_value(metrics, "vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits")
    return {
        "process_peak_gib": process_peak_gib,
        "process_rss_peak_gib": process_rss_peak_gib,
        "weights_gib": weights,
        "kv_reserved_gib": kv_reserved,
        "kv_reserved_tokens": last(_KV_TOKENS_RE),
        "kv_usage_peak": peak_kv_usage,
        "kv_used_peak_gib": kv_reserved * peak_kv_usage if kv_reserved is not None and peak_kv_usage is not None
        else None,
        "weights_plus_kv_used_gib": weights + kv_reserved * peak_kv_usage
        if None not in (weights, kv_reserved, peak_kv_usage) else None,
        "prefix_cache_queries_tokens": queries,
        "prefix_cache_hits_tokens": hits,
        "prefix_cache_hit_rate": hits / queries if queries else None,
    }
