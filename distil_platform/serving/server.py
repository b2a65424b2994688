"""Start an OpenAI-compatible server for a checkpoint, measure its memory, always clean it up:
:func:`serve` and the :class:`Server` handle it yields (readiness, warm-up, process-group stop).
What the server is launched with (backends, command lines, environment) is in
:mod:`distil_platform.serving.launch`; the hardware it runs on in :mod:`distil_platform.serving.hardware`.

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
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from distil_platform.precision import Precision
from distil_platform.serving.hardware import hardware_info, server_on_gpu, serving_precision
from distil_platform.serving.launch import (
    ServingError,
    build_transformers_command,
    build_vllm_command,
    choose_backend,
    default_served_name,
    model_max_len,
    parse_cpu_binding,
    server_env,
    server_identity,
    vllm_device_settings,
    vllm_python,
)
from distil_platform.serving.memory import (
    MemorySampler,
    server_peak_memory,
    vllm_memory_report,
    vllm_reserved_gib,
    weights_gib,
)


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
    # The log as it stood when the server became ready: its start-up lines (vLLM's "Model loading
    # took", "Available KV cache memory", CPU binding) survive however long the log grows after.
    startup_log: str = ""
    _sampler: MemorySampler | None = field(default=None, repr=False)
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def precision_label(self) -> str:
        """``bf16`` / ``fp16`` / ``fp32``: what the reference serving variant is named."""
        return self.precision.short if self.precision else "bf16"

    @property
    def litellm_model(self) -> str:
        return f"openai/{self.model}"

    def peak_memory(self) -> tuple[float | None, str]:
        """``(peak GiB, source)``: on a GPU the memory of the server's processes, else the device's
        used memory, else vLLM's own figures; on the CPU the process tree's RSS
        (:func:`distil_platform.serving.memory.server_peak_memory`)."""
        if self._sampler is None:
            return 0.0, "not sampled"
        self._sampler.sample()
        return server_peak_memory(
            self.on_gpu, process_gpu_bytes=self._sampler.peak_gpu_bytes,
            device_gpu_bytes=self._sampler.peak_device_bytes, rss_bytes=self._sampler.peak_rss_bytes,
            vllm_gib=vllm_reserved_gib(self.log_text()) if self.on_gpu and self.backend == "vllm" else None)

    def peak_memory_gb(self) -> float:
        """Peak memory (GiB) as :meth:`peak_memory` reads it; NaN when a GPU server's could not be read."""
        gib, _source = self.peak_memory()
        return float("nan") if gib is None else gib

    def log_text(self, tail_lines: int = 100000) -> str:
        """The start-up lines captured at readiness followed by the log's last lines."""
        return "\n".join(part for part in (self.startup_log, _tail(self.log_path, tail_lines)) if part)

    def peak_rss_gb(self) -> float:
        return 0.0 if self._sampler is None else self._sampler.peak_rss_bytes / 1024**3

    def exit_reason(self) -> str | None:
        """None while the server process runs; once it exited, what happened (exit code, log tail).
        LLM clients of this server poll it (``abort_check``) to stop a batch at once when it dies."""
        return None if self._proc is None else _died_in_use(self._proc, self.backend, self.log_path)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def engine_cpus(self) -> tuple[set[int], set[int]] | None:
        """vLLM-CPU's thread binding as its log reports it: (cores its engine computes on, cores it
        reserves for the frontend). None for other backends, GPUs, or when the log does not say."""
        if self.backend != "vllm" or self.on_gpu:
            return None
        return parse_cpu_binding(self.log_text())

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
        peak, source = self.peak_memory()
        if self.backend != "vllm":
            return {"process_peak_gib": peak, "process_rss_peak_gib": rss, "process_peak_source": source}
        report = vllm_memory_report(self.log_text(), self.metrics(),
                                    self._sampler.peak_kv_usage if self._sampler else None,
                                    process_peak_gib=peak, process_rss_peak_gib=rss,
                                    weights_estimate_gib=self.weights_estimate_gib)
        return {**report, "process_peak_source": source}


def _clean(data: bytes) -> list[str]:
    # Progress bars redraw with \r; keep only each line's final state.
    return [line.rsplit("\r", 1)[-1] for line in data.decode("utf-8", "replace").splitlines()]


def _tail(path: Path, lines: int) -> str:
    try:
        data = path.read_bytes()[-20000:]
    except OSError:
        return ""
    return "\n".join(_clean(data)[-lines:])


# The start-up log kept per server (its head: a CUDA-graph capture's progress bars are the bulk of it).
STARTUP_LOG_MAX_BYTES = 4 * 1024 * 1024


def read_startup_log(path: Path, max_bytes: int = STARTUP_LOG_MAX_BYTES) -> str:
    """The server log from its start (at most ``max_bytes``), read once the server is ready: every
    start-up line, whatever a long run writes after it."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes)
    except OSError:
        return ""
    return "\n".join(_clean(data))


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now. Another process may take it before the server binds: :func:`serve`
    detects that bind failure and retries on a new port (:data:`_PORT_ATTEMPTS`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


_PORT_ATTEMPTS = 3
_BIND_FAILURE = re.compile(r"address already in use|errno 98|eaddrinuse", re.IGNORECASE)


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


def _command_text(proc: subprocess.Popen) -> str:
    return proc.args if isinstance(proc.args, str) else " ".join(map(str, proc.args))


def wait_until_healthy(url: str, timeout_s: float, proc: subprocess.Popen | None = None, *,
                       log_path: Path | None = None, ready: Callable[[], str | None] | None = None,
                       interval_s: float = 0.25) -> None:
    """Poll ``url`` until it answers 2xx (and ``ready()``, if given, returns None; else the text it
    returns says what is missing). Raises :class:`ServingError` naming the URL when ``timeout_s``
    passes, or, at once, with ``proc``'s exit code and command when that process exits first; either
    error ends with the tail of ``log_path`` where one is given."""
    def failure(what: str) -> ServingError:
        command = f"\ncommand: {_command_text(proc)}" if proc is not None else ""
        tail = f"\nlog tail ({log_path}):\n{_tail(log_path, 40)}" if log_path is not None else ""
        return ServingError(f"{what}{command}{tail}")

    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if proc is not None and (code := proc.poll()) is not None:
            raise failure(f"the server for {url} exited with code {code} during start-up.")
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                response.read()
            last_error = ready() if ready is not None else None
            if last_error is None:
                return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(interval_s)
    raise failure(f"no healthy server at {url} after {timeout_s:.0f}s ({last_error}).")


def _wait_ready(proc: subprocess.Popen, base: str, served_name: str, timeout_s: float, log_path: Path) -> None:
    """Healthy, and ``/v1/models`` lists ``served_name`` (or nothing)."""
    def serves_the_model() -> str | None:
        status, models = _get_json(f"{base}/v1/models")
        ids = [m.get("id") for m in (models or {}).get("data", [])]
        return None if status == 200 and (served_name in ids or not ids) else f"/v1/models lists {ids}, not {served_name!r}"

    wait_until_healthy(f"{base}/health", timeout_s, proc, log_path=log_path, ready=serves_the_model)


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
                            log_path=log_path, on_gpu=on_gpu, settings=settings, _sampler=sampler, _proc=proc,
                            weights_estimate_gib=weights_gib(model_dir, dtype, quantization), identity=identity,
                            precision=precision)
            try:
                _wait_ready(proc, base, served_name, startup_timeout_s - (time.monotonic() - started), log_path)
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
        server.startup_log = read_startup_log(log_path)
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
            peak, source = server.peak_memory()
            log(f"{chosen} server (pid {proc.pid}) stopped; peak memory "
                f"{'unknown' if peak is None else f'{peak:.2f} GiB'} ({source})")
        if log_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                (workdir / served_name).unlink()
