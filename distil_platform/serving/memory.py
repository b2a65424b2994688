"""What a running server holds in memory: its process tree's RSS and GPU memory sampled while it
runs, vLLM's Prometheus metrics (KV-cache usage, prefix-cache hits), the weights' size from the
checkpoint, and the report of weights and KV cache reserved vs used."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path


class MemorySampler(threading.Thread):
    """Samples the server's process-tree RSS (psutil) and its GPU memory (nvidia-smi) until stopped."""

    def __init__(self, pid: int, on_gpu: bool, interval_s: float = 0.5, metrics_url: str | None = None):
        super().__init__(name=f"memory-sampler-{pid}", daemon=True)
        self.pid, self.on_gpu, self.interval_s = pid, on_gpu, interval_s
        self.peak_rss_bytes = 0
        self.peak_gpu_bytes = 0
        # vLLM's /metrics: the peak share of the preallocated KV cache that held tokens.
        self.metrics_url = metrics_url
        self.peak_kv_usage: float | None = None
        self._stop_event = threading.Event()
        self._smi = shutil.which("nvidia-smi") if on_gpu else None

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
            self.peak_gpu_bytes = max(self.peak_gpu_bytes, self._gpu_bytes(pids))

    def _gpu_bytes(self, pids: set[int]) -> int:
        with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
            out = subprocess.run(
                [self._smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout
            total = 0
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in pids:
                    total += int(float(parts[1])) * 1024 * 1024
            return total
        return 0

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
