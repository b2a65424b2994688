"""Serving launcher: command building and clear errors (fast), and real `transformers serve` runs of
tiny-qwen3 driven through the Dagster resources (slow): chat, tools, concurrency, memory, cleanup."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from distil_platform import serving
from distil_platform.llm import ChatRequest
from distil_platform.modelstore import resolve_model
from distil_platform.resources.models import LLMResource, ModelStoreResource, ServingResource
from distil_platform.serving import ServingError, build_transformers_command, build_vllm_command, serve
from distil_platform.store import ResultsStore, llm_requests


def _gone(pid: int, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def _port_closed(url: str) -> bool:
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) != 0


# -- command building and errors (no server) --------------------------------------------------


def test_vllm_command(monkeypatch):
    monkeypatch.setattr(serving, "_executable", lambda name: f"/opt/bin/{name}")
    cmd = build_vllm_command(Path("/m/qwen"), "student-1", 8011, dtype="bfloat16", quantization="fp8",
                             max_num_seqs=128, gpu_memory_utilization=0.9, max_model_len=4096)
    assert cmd[:3] == ["/opt/bin/vllm", "serve", "/m/qwen"]
    joined = " ".join(cmd)
    for part in ("--served-model-name student-1", "--port 8011", "--dtype bfloat16", "--quantization fp8",
                 "--max-num-seqs 128", "--gpu-memory-utilization 0.9", "--max-model-len 4096"):
        assert part in joined
    plain = build_vllm_command(Path("/m/qwen"), "s", 1, quantization=None)
    assert "--quantization" not in plain and "--max-num-seqs" not in plain
    with pytest.raises(ServingError, match="fp8"):
        build_vllm_command(Path("/m"), "s", 1, quantization="awq")


def test_vllm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(serving, "_executable", lambda name: None)
    with pytest.raises(ServingError, match=r"gpu\] ?|gpu` extra|distil-platform\[gpu\]"):
        build_vllm_command(Path("/m"), "s", 1)
    # serve(backend="vllm") here: no CUDA GPU (and no vllm) -> a clear error before anything starts.
    with pytest.raises(ServingError, match="vllm|vLLM|CUDA"), serve(resolve_model("tiny-qwen3"), backend="vllm"):
        pass


def test_transformers_command_flags():
    cmd = build_transformers_command("tiny-1", 9000, dtype="bfloat16", cb_num_blocks=80)
    assert cmd[1:3] == ["serve", "tiny-1"]
    joined = " ".join(cmd)
    assert "--continuous-batching --cb-num-blocks 80" in joined and "--dtype bfloat16" in joined
    assert "--port 9000" in joined and "--host 127.0.0.1" in joined
    plain = build_transformers_command("tiny-1", 9000, continuous_batching=False)
    assert "--no-continuous-batching" in plain and "--cb-num-blocks" not in plain
    with pytest.raises(ServingError, match="fp8 serving needs backend='vllm'"):
        build_transformers_command("tiny-1", 9000, quantization="fp8")
    # The flags exist in the installed CLI (guards against renamed options).
    help_text = subprocess.run([cmd[0], "serve", "--help"], capture_output=True, text=True, timeout=120,
                               check=True).stdout
    for flag in ("--continuous-batching", "--cb-num-blocks", "--dtype", "--port", "--host", "--device"):
        assert flag in help_text


def test_backend_choice_and_bad_inputs(tmp_path):
    assert serving.choose_backend("transformers") == "transformers"
    if not serving.cuda_available():
        assert serving.choose_backend("auto") == "transformers"
    with pytest.raises(ServingError, match="unknown serving backend"):
        serving.choose_backend("tgi")
    with pytest.raises(ServingError, match="no config.json"), serve(tmp_path):
        pass


def test_default_served_name_changes_with_the_weights(tmp_path):
    model = tmp_path / "student"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"a")
    first = serving.default_served_name(model)
    assert first.startswith("student-") and first == serving.default_served_name(model)
    (model / "model.safetensors").write_bytes(b"bb")
    assert serving.default_served_name(model) != first
    resource = ServingResource(backend="transformers")
    assert resource.litellm_model_for(model) == f"openai/{serving.default_served_name(model)}"


def test_hardware_info_cpu():
    description, key = serving.hardware_info(on_gpu=False)
    assert key == "cpu" and "cores" in description


# -- real servers (slow) -------------------------------------------------------------------------


@pytest.mark.slow
def test_transformers_serve_through_resources():
    model_dir = ModelStoreResource().resolve("tiny-qwen3")
    resource = ServingResource(backend="auto", dtype="bfloat16", server_threads=1)
    logs: list[str] = []
    with resource.serve(model_dir, log=logs.append) as server:
        assert server.backend == "transformers" and server.hardware_key == "cpu"
        assert server.litellm_model == f"openai/{server.model}" == resource.litellm_model_for(model_dir)
        client = LLMResource(concurrency=4).client(
            model=server.litellm_model, api_base=server.base_url, run_id="serve-test", task="t", stage="eval"
        )
        requests = [ChatRequest([{"role": "user", "content": f"question {i}"}], max_tokens=6, item_id=str(i))
                    for i in range(8)]
        results = client.chat_batch(requests)
        assert all(r.ok and isinstance(r.text, str) for r in results), [r.error for r in results]
        assert all(r.completion_tokens and 0 < r.completion_tokens <= 6 for r in results)
        assert not any(r.tokens_counted for r in results)  # the server reports usage
        tools = [{"type": "function", "function": {"name": "lookup_order", "description": "Find an order",
                                                   "parameters": {"type": "object"}}}]
        (plain, with_tools) = client.chat_batch([
            ChatRequest([{"role": "user", "content": "where is my order"}], max_tokens=4),
            ChatRequest([{"role": "user", "content": "where is my order"}], max_tokens=4, tools=tools),
        ])
        # The tool schemas reach the chat template (rendered into the system turn).
        assert with_tools.prompt_tokens > plain.prompt_tokens + 10
        assert 0.05 < server.peak_memory_gb() < 8
        rows = ResultsStore().select(llm_requests, run_id="serve-test")
        assert len(rows) == 10 and {r["model"] for r in rows} == {server.litellm_model}
        pid, url = server.pid, server.base_url
    assert _gone(pid) and _port_closed(url)
    assert any("ready" in line for line in logs)


@pytest.mark.slow
def test_server_is_stopped_after_an_exception():
    pid = None
    model_dir = resolve_model("tiny-qwen3")
    with pytest.raises(RuntimeError, match="boom"), serve(model_dir, continuous_batching=False) as server:
        pid, url = server.pid, server.base_url
        raise RuntimeError("boom")
    assert pid is not None and _gone(pid) and _port_closed(url)


@pytest.mark.slow
def test_startup_failure_shows_the_log_tail(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no_such_architecture_xyz"}))
    with pytest.raises(ServingError, match="log tail") as info, serve(broken, startup_timeout_s=120):
        pass
    assert "no_such_architecture_xyz" in str(info.value) or "exited with code" in str(info.value)


_CHILD = textwrap.dedent(
    """
    import signal, sys, time
    # A shell's background job inherits SIGINT ignored, and Python then keeps it ignored: restore
    # the KeyboardInterrupt handler so the test means the same however the suite is launched.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from distil_platform.serving import serve
    with serve(sys.argv[1], continuous_batching=False, env={"OMP_NUM_THREADS": "1"}) as server:
        print(server.pid, flush=True)
        time.sleep(120)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("parent_signal", [signal.SIGINT, signal.SIGKILL])
def test_no_orphan_when_the_parent_is_interrupted_or_killed(parent_signal):
    # SIGINT: cancellation unwinds through the context manager. SIGKILL: no cleanup code runs at all;
    # the kernel's parent-death signal stops the server.
    model_dir = resolve_model("tiny-qwen3")
    parent = subprocess.Popen([sys.executable, "-c", _CHILD, str(model_dir)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), parent.stderr.read()[-2000:]
        server_pid = int(line)
        assert psutil.pid_exists(server_pid)
        parent.send_signal(parent_signal)
        try:
            parent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            parent.kill()
            pytest.fail(f"parent did not exit after {parent_signal!r}; stderr: {parent.stderr.read()[-2000:]}")
        assert _gone(server_pid), "server outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
