"""Start an OpenAI-compatible server for a checkpoint, measure its memory, always clean it up.

Backends:
- ``vllm``: ``vllm serve`` (needs the ``gpu`` extra and a CUDA GPU); bf16, or fp8 weights via
  ``--quantization fp8``; ``--max-num-seqs``, ``--gpu-memory-utilization``, ``--max-model-len``.
- ``transformers``: ``transformers serve`` (CPU or CUDA). Continuous batching is on by default with
  a capped KV cache (``--cb-num-blocks``): measured on a 2-core CPU it gave ~2.5x the requests/s of
  plain mode, and the uncapped cache reserved ~13 GB for a 135M model (see docs and cpu-notes).
- ``auto``: ``vllm`` when vllm and a CUDA GPU are present, else ``transformers``.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None or shutil.which("vllm") is not None


def hardware_info(on_gpu: bool) -> tuple[str, str]:
    """``(description, key)``, e.g. ``("1x NVIDIA H100 80GB HBM3", "h100")`` or ``("AMD EPYC, 2 cores", "cpu")``."""
    if on_gpu:
        names = _gpu_names()
        if names:
            key = next((k for k in _HARDWARE_KEYS if k in names[0].lower().replace(" ", "")), None)
            key = key or re.sub(r"[^a-z0-9]+", "-", names[0].lower()).strip("-")
            return f"{len(names)}x {names[0]}", key
    cpu = "CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
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


# ---------------------------------------------------------------------------------------------
# Memory sampling


class MemorySampler(threading.Thread):
    """Samples the server's process-tree RSS (psutil) and its GPU memory (nvidia-smi) until stopped."""

    def __init__(self, pid: int, on_gpu: bool, interval_s: float = 0.5):
        super().__init__(name=f"memory-sampler-{pid}", daemon=True)
        self.pid, self.on_gpu, self.interval_s = pid, on_gpu, interval_s
        self.peak_rss_bytes = 0
        self.peak_gpu_bytes = 0
        self._stop_event = threading.Event()
        self._smi = shutil.which("nvidia-smi") if on_gpu else None

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval_s)

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
    _sampler: MemorySampler | None = field(default=None, repr=False)

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


def _tail(path: Path, lines: int) -> str:
    try:
        data = path.read_bytes()[-20000:].decode("utf-8", "replace")
    except OSError:
        return ""
    # Progress bars redraw with \r; keep only each line's final state.
    cleaned = [line.rsplit("\r", 1)[-1] for line in data.splitlines()]
    return "\n".join(cleaned[-lines:])


# ---------------------------------------------------------------------------------------------
# Commands


def default_served_name(model_dir: Path) -> str:
    """``<dir name>-<8 hex>``: the hash covers the path and weight files' size/mtime, so a retrained
    checkpoint in the same directory gets a new name (and so new LLM-cache keys)."""
    digest = hashlib.sha256(str(model_dir.resolve()).encode())
    for item in sorted(model_dir.iterdir()):
        if item.suffix in (".safetensors", ".bin", ".json") and item.is_file():
            stat = item.stat()
            digest.update(f"{item.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_dir.resolve().name).strip("-.") or "model"
    return f"{name}-{digest.hexdigest()[:8]}"


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


def build_vllm_command(
    model_dir: Path,
    served_name: str,
    port: int,
    *,
    dtype: str = "bfloat16",
    quantization: str | None = None,
    max_num_seqs: int | None = None,
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    host: str = "127.0.0.1",
    extra_args: list[str] | None = None,
) -> list[str]:
    exe = _executable("vllm")
    if exe is None:
        raise ServingError(
            "backend 'vllm' needs vLLM, which is in the optional `gpu` extra: pip install 'distil-platform[gpu]' "
            "(on a machine with a CUDA GPU); or use backend='transformers'"
        )
    cmd = [exe, "serve", str(model_dir), "--served-model-name", served_name, "--host", host, "--port", str(port),
           "--dtype", dtype, "--disable-uvicorn-access-log"]
    if quantization not in (None, "", "none"):
        if quantization != "fp8":
            raise ServingError(f"quantization={quantization!r}: only 'fp8' (or None) is supported with vllm")
        cmd += ["--quantization", "fp8"]
    for flag, value in (("--max-num-seqs", max_num_seqs), ("--gpu-memory-utilization", gpu_memory_utilization),
                        ("--max-model-len", max_model_len)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + list(extra_args or [])


def choose_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ServingError(f"unknown serving backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "vllm" if vllm_available() and cuda_available() else "transformers"
    return backend


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _parent_death_signal(sig: int) -> Callable[[], None] | None:
    """preexec_fn: the kernel sends ``sig`` to the server if our process dies (Linux only)."""
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
    psutil.wait_procs([p for p in tree[1:]], timeout=5)


@contextlib.contextmanager
def serve(
    model_dir: str | Path,
    *,
    backend: str = "auto",
    served_model_name: str | None = None,
    dtype: str = "bfloat16",
    quantization: str | None = None,
    max_num_seqs: int | None = None,
    gpu_memory_utilization: float | None = 0.85,
    max_model_len: int | None = None,
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

    ``continuous_batching``/``cb_*`` apply to ``transformers``; ``max_num_seqs``,
    ``gpu_memory_utilization``, ``max_model_len`` and ``quantization='fp8'`` to ``vllm``.
    ``env`` is added to the server's environment (e.g. ``OMP_NUM_THREADS``, ``CUDA_VISIBLE_DEVICES``).
    ``warmup`` sends one 1-token request before yielding, so the first measured request does not
    pay for start-up work.
    """
    log = log or (lambda message: None)
    model_dir = Path(model_dir).expanduser()
    if not (model_dir / "config.json").is_file():
        raise ServingError(f"{model_dir} is not an HF-format model directory (no config.json)")
    model_dir = model_dir.resolve()
    chosen = choose_backend(backend)
    served_name = served_model_name or default_served_name(model_dir)
    if "/" in served_name or served_name.startswith("."):
        raise ServingError(f"served_model_name {served_name!r} must not contain '/' or start with '.'")

    workdir = Path(tempfile.mkdtemp(prefix="distil-serve-", dir=str(log_dir) if log_dir else None))
    log_path = workdir / "server.log"
    port = free_port()
    if chosen == "vllm":
        if not cuda_available():
            raise ServingError("backend 'vllm' needs a CUDA GPU, and none is visible (torch.cuda.is_available() is False)")
        command = build_vllm_command(model_dir, served_name, port, dtype=dtype, quantization=quantization,
                                     max_num_seqs=max_num_seqs, gpu_memory_utilization=gpu_memory_utilization,
                                     max_model_len=max_model_len, extra_args=extra_args)
        on_gpu, death_signal = True, signal.SIGTERM  # vLLM tears down its engine workers on SIGTERM
    else:
        command = build_transformers_command(
            served_name, port, dtype=dtype, device=device, continuous_batching=continuous_batching,
            cb_num_blocks=cb_num_blocks, cb_max_batch_tokens=cb_max_batch_tokens,
            cb_max_memory_percent=cb_max_memory_percent, quantization=quantization,
        ) + list(extra_args or [])
        # The served name is a symlink in the working directory: requests then carry a short name.
        os.symlink(model_dir, workdir / served_name)
        on_gpu = device.startswith("cuda") or (device == "auto" and cuda_available())
        death_signal = signal.SIGKILL  # a single process; SIGTERM would drain its queue first

    description, key = hardware_info(on_gpu)
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    log(f"starting {chosen} server for {model_dir} as {served_name!r} on port {port} ({description})")
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        command, cwd=workdir, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        # preexec_fn is a single pre-resolved prctl call, safe alongside our threads.
        start_new_session=True, preexec_fn=_parent_death_signal(death_signal),  # noqa: PLW1509
    )
    sampler = MemorySampler(proc.pid, on_gpu)
    sampler.start()
    server = Server(base_url=f"http://127.0.0.1:{port}/v1", model=served_name, backend=chosen, pid=proc.pid,
                    hardware_description=description, hardware_key=key, command=command, log_path=log_path,
                    on_gpu=on_gpu, _sampler=sampler)
    try:
        started = time.monotonic()
        _wait_ready(proc, f"http://127.0.0.1:{port}", served_name, startup_timeout_s, log_path, command)
        if warmup:
            _warm_up(server.base_url, served_name, max(30.0, startup_timeout_s - (time.monotonic() - started)),
                     log_path)
        log(f"{chosen} server ready in {time.monotonic() - started:.1f}s at {server.base_url} (pid {proc.pid})")
        yield server
    finally:
        stop_process_group(proc, stop_timeout_s)
        sampler.stop()
        log_file.close()
        log(f"{chosen} server (pid {proc.pid}) stopped; peak memory {server.peak_memory_gb():.2f} GiB")
        with contextlib.suppress(OSError):
            (workdir / served_name).unlink()
