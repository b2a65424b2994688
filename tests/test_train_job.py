"""The training job behind ``<task>_student`` (``distil_platform.training.job``) and where it runs
(``TrainerResource``: in the step, a Dagster Pipes subprocess, or a Pipes Kubernetes pod)."""

# No `from __future__ import annotations`: Dagster reads the asset annotations below at runtime.

import contextlib
import json
import signal
from pathlib import Path

import dagster as dg
import pytest
from distil_platform.resources.trainer import TrainerResource, k8s_pod_settings, launcher_from_env

from distil_platform.profiles import get_profile
from distil_platform.tasks.spec import TaskSpec, get_task
from distil_platform.training.config import TrainConfig
from distil_platform.training.job import format_progress, training_params


def test_params_round_trip_through_json():
    """Pipes extras are JSON: the spec (with in-memory edits) and the config survive it exactly."""
    spec = get_task("smart_home").model_copy(update={"margin": 0.07})
    cfg = TrainConfig.for_task(spec, get_profile("test"), max_steps=3, seed=5)
    params = json.loads(json.dumps(training_params(spec, rows_url="/x/rows.parquet", test_url=None,
                                                   base_model="tiny-qwen3", train_config=cfg, run_id="r1")))
    assert TaskSpec.model_validate(params["spec"]) == spec
    rebuilt = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in params["train_config"].items()})
    assert rebuilt == cfg


def test_progress_lines():
    assert format_progress("t", {"step": 2, "total_steps": 8, "loss": 1.23456, "learning_rate": 1e-4,
                                 "elapsed_s": 10.2, "eta_s": 30.9}) == (
        "info", "t train step 2/8 loss 1.2346 lr 1.00e-04 elapsed 10s ETA 31s")
    assert format_progress("t", {"event": "warning", "message": "cut"}) == ("warning", "t: cut")


class _Handler:
    """What a Pipes message reader hands messages and its own errors to."""

    def __init__(self):
        self.messages, self.errors = [], []

    def handle_message(self, message):
        self.messages.append(message)

    def report_pipes_framework_exception(self, origin, exc_info):
        self.errors.append(exc_info[1])


def _read_while_writing(reader, pieces: list[str]) -> _Handler:
    """``reader`` reads while its file receives ``pieces``, 0.2 s apart (the reader polls every 10 ms)."""
    import time

    handler = _Handler()
    with reader.read_messages(handler) as params:
        with open(params["path"], "a", encoding="utf-8") as out:
            for piece in pieces:
                out.write(piece)
                out.flush()
                time.sleep(0.2)
    return handler  # the session has closed: its reader thread has been joined


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # Dagster's reader re-raises
def test_a_pipes_message_written_in_pieces_is_read_once_whole():
    """The training result reaches the message file in more than one write. Dagster's reader parsed the
    first piece (JSONDecodeError, every later message lost: "the training job ended without reporting a
    result" after it trained, CI of 2026-12-07); the step's reader waits for the newline."""
    from distil_platform.resources.trainer import WholeLineFileMessageReader

    result = {"method": "report_custom_message", "params": {"payload": {"loss_curve": list(range(3000))}}}
    line = json.dumps({"__dagster_pipes_version": "0.1", **result}) + "\n"
    log = json.dumps({"__dagster_pipes_version": "0.1", "method": "log", "params": {"message": "hi"}}) + "\n"
    pieces = [log + line[:100], line[100:5000], line[5000:]]
    ours = _read_while_writing(WholeLineFileMessageReader(), pieces)
    assert ours.errors == [] and [m["method"] for m in ours.messages] == ["log", "report_custom_message"]
    assert ours.messages[1]["params"]["payload"]["loss_curve"] == list(range(3000))
    # Why the step does not use Dagster's own reader (dagster 1.13.27): it reads the half line. If this
    # fails after an upgrade, Dagster's reader waits for whole lines and WholeLineFileMessageReader can go.
    theirs = _read_while_writing(dg.PipesTempFileMessageReader(), pieces)
    assert [type(e) for e in theirs.errors] == [json.JSONDecodeError]
    assert [m["method"] for m in theirs.messages] == ["log"]


def test_a_pipes_message_its_writer_never_finished_is_an_error_not_a_message(tmp_path):
    from distil_platform.resources.trainer import complete_lines

    path = tmp_path / "messages"
    path.write_text('{"method": "log"}\n{"method": "report_cus', encoding="utf-8")
    lines = complete_lines(str(path), lambda: True)
    assert json.loads(next(lines)) == {"method": "log"}
    with pytest.raises(ValueError, match="never finished"):
        next(lines)


def _fail_context():
    return dg.build_asset_context()


def _step_error(launcher: str, params: dict) -> str:
    """The error message of a step that runs the training job with ``launcher``."""

    @dg.asset
    def train(context: dg.AssetExecutionContext, trainer: TrainerResource) -> dict:
        return trainer.train(context, params)

    result = dg.materialize([train], resources={"trainer": TrainerResource(launcher=launcher)}, raise_on_error=False)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    return failure.step_failure_data.error.to_string()


def test_a_failing_job_names_the_missing_rows_in_every_launcher(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTIL_PROFILE", "test")
    spec = get_task("text2sql")
    cfg = TrainConfig.for_task(spec, get_profile("test"))
    missing = str(tmp_path / "never-written.parquet")
    params = training_params(spec, rows_url=missing, test_url=None, base_model="tiny-qwen3", train_config=cfg,
                             run_id="r1")
    for launcher in ("in_process", "subprocess"):
        # Under Pipes the job's own error is the step's error (not just an exit code).
        error = _step_error(launcher, params)
        assert "FileNotFoundError" in error and "never-written.parquet" in error, (launcher, error)
        assert "re-materialise text2sql_student" in error


def test_unknown_launcher_is_refused(monkeypatch):
    monkeypatch.setenv("DISTIL_TRAIN_LAUNCHER", "slurm")
    with pytest.raises(ValueError, match="DISTIL_TRAIN_LAUNCHER"):
        launcher_from_env()


def test_k8s_launcher_needs_an_object_store(monkeypatch):
    monkeypatch.delenv("DISTIL_ARTIFACTS_URL", raising=False)
    with pytest.raises(ValueError, match="DISTIL_ARTIFACTS_URL"):
        TrainerResource(launcher="k8s").train(_fail_context(), {})


def test_k8s_training_pod_requests_a_gpu_in_the_gpu_image(monkeypatch):
    pytest.importorskip("dagster_k8s")
    from dagster_k8s.pipes import build_pod_body
    from kubernetes.client import ApiClient

    monkeypatch.setenv("DISTIL_K8S_GPU_IMAGE", "ghcr.io/acme/distil-gpu:1")
    monkeypatch.setenv("DISTIL_K8S_GPUS_PER_STEP", "2")
    settings = k8s_pod_settings()
    pod = ApiClient().sanitize_for_serialization(build_pod_body(
        pod_name="dagster-train", image=settings["image"], command=settings["command"],
        env_vars={"DAGSTER_PIPES_CONTEXT": "x"}, base_pod_meta=None, base_pod_spec=settings["base_pod_spec"]))
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "ghcr.io/acme/distil-gpu:1"
    assert container["command"] == ["python", "-m", "distil_platform.training.job"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    assert pod["spec"]["restartPolicy"] == "Never"
    monkeypatch.delenv("DISTIL_K8S_GPU_IMAGE")
    with pytest.raises(ValueError, match="DISTIL_K8S_GPU_IMAGE"):
        k8s_pod_settings()


def test_with_the_k8s_launcher_the_student_step_holds_the_pool_but_no_gpu_node(monkeypatch):
    from distil_platform.assets.student import build_student_asset

    monkeypatch.setenv("DISTIL_TRAIN_LAUNCHER", "k8s")
    (asset,) = build_student_asset(get_task("text2sql"), get_profile("test"))
    assert asset.op.pool == "gpu" and "dagster-k8s/config" not in asset.op.tags
    monkeypatch.setenv("DISTIL_TRAIN_LAUNCHER", "subprocess")
    (asset,) = build_student_asset(get_task("text2sql"), get_profile("test"))
    assert "nvidia.com/gpu" in asset.op.tags["dagster-k8s/config"]


# -- the subprocess job: scrubbed environment, own process group, no orphan ------------------------
# Injected from outside the platform: a `sitecustomize` on PYTHONPATH runs in every Python the test's
# processes start; in the training job (the only one with Dagster Pipes' bootstrap variables) it
# records the job's environment, session and parent-death signal, then, when asked by a file, starts
# a grandchild and sleeps like a long training run.
_SITECUSTOMIZE = '''
import json, os, subprocess, time
from pathlib import Path

_DIR = Path({directory!r})
if "DAGSTER_PIPES_CONTEXT" in os.environ:
    import ctypes

    sig = ctypes.c_int(0)
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
    info = {{"env": dict(os.environ), "pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
             "pdeathsig": sig.value}}
    if (_DIR / "grandchild").exists():
        info["grandchild"] = subprocess.Popen(["sleep", "120"]).pid
    (_DIR / "job.tmp").write_text(json.dumps(info))
    os.replace(_DIR / "job.tmp", _DIR / "job.json")
    if (_DIR / "sleep").exists():
        time.sleep(120)
'''

_STEP = '''
import dagster as dg
from distil_platform.resources.trainer import TrainerResource


@dg.asset
def train(context: dg.AssetExecutionContext, trainer: TrainerResource) -> dict:
    return trainer.train(context, {"spec": "never read: the job sleeps"})


dg.materialize([train], resources={"trainer": TrainerResource(launcher="subprocess")})
'''

_SECRETS = {
    "OPENAI_API_KEY": "sk-test-openai",
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "DISTIL_TEACHER_API_KEY": "teacher-key-test",
    "DISTIL_TEACHER_API_BASE": "https://teacher.example/v1",
    "DISTIL_DB_URL": "postgresql://distil:hunter2@db.internal/results",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-test",  # artefacts are local: the job needs no object store
    "HF_TOKEN": "hf_test_token",  # the hub is offline: the job downloads nothing
    "GITHUB_TOKEN": "ghp_test",
    "SOME_SERVICE_PASSWORD": "pw-test",
}


def _inject(tmp_path, monkeypatch) -> Path:
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(directory=str(inject)))
    monkeypatch.setenv("PYTHONPATH", str(inject))
    return inject


def _job_info(inject, timeout_s: float = 120.0) -> dict:
    import time

    deadline = time.monotonic() + timeout_s
    while not (inject / "job.json").exists():
        assert time.monotonic() < deadline, "the training job never started"
        time.sleep(0.05)
    return json.loads((inject / "job.json").read_text())


def _gone_within(pid: int, timeout_s: float) -> float | None:
    """Seconds until ``pid`` is gone (or a zombie no one has reaped yet); None if it outlives the timeout."""
    import time

    import psutil

    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return time.monotonic() - start
        except psutil.NoSuchProcess:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def test_the_training_job_sees_no_secrets_only_what_it_needs(tmp_path, monkeypatch):
    import os

    inject = _inject(tmp_path, monkeypatch)
    for key, value in _SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DISTIL_PROFILE", "test")
    monkeypatch.setenv("DISTIL_DATA_TEXT2SQL", str(tmp_path / "data"))
    monkeypatch.delenv("DISTIL_ARTIFACTS_URL", raising=False)
    _step_error("subprocess", {"spec": "the job fails after the sitecustomize ran"})
    info = _job_info(inject, timeout_s=5)
    env = info["env"]
    leaked = {k for k in _SECRETS if k in env} | {k for k, v in env.items() if v in _SECRETS.values()}
    assert not leaked, f"the training job saw {sorted(leaked)}"
    assert not any("hunter2" in v for v in env.values())
    # What it needs: Dagster Pipes, where artefacts, models and task data are, the profile, the hub mode.
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES", "PATH", "PYTHONPATH"} <= set(env)
    for key in ("DAGSTER_HOME", "DISTIL_MODELS_DIR", "DISTIL_PROFILE", "DISTIL_DATA_TEXT2SQL", "HF_HUB_OFFLINE"):
        assert env[key] == os.environ[key], key
    # Its own session and process group, and the kernel kills it if the step dies.
    assert info["sid"] == info["pid"] == info["pgid"] != os.getsid(0)
    assert info["pdeathsig"] == signal.SIGKILL


def test_object_store_credentials_and_the_hub_token_reach_the_job_only_when_it_needs_them():
    from distil_platform.resources.trainer import training_env

    base = {"PATH": "/usr/bin", "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://s3",
            "GOOGLE_APPLICATION_CREDENTIALS": "/gcp.json", "DISTIL_ARTIFACTS_STORAGE_OPTIONS": '{"anon": false}',
            "HF_TOKEN": "hf_x", "OPENAI_API_KEY": "sk-x", "DISTIL_DB_URL": "postgresql://u:p@h/d"}
    bootstrap = {"DAGSTER_PIPES_CONTEXT": "c", "DAGSTER_PIPES_MESSAGES": "m"}
    local = training_env(bootstrap, {**base, "HF_HUB_OFFLINE": "1"})
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS",
                "DISTIL_ARTIFACTS_STORAGE_OPTIONS", "HF_TOKEN", "OPENAI_API_KEY", "DISTIL_DB_URL"} & set(local)
    assert local["DAGSTER_PIPES_CONTEXT"] == "c" and local["PATH"] == "/usr/bin"
    s3 = training_env(bootstrap, {**base, "DISTIL_ARTIFACTS_URL": "s3://bucket/team"})
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "DISTIL_ARTIFACTS_STORAGE_OPTIONS",
            "DISTIL_ARTIFACTS_URL", "HF_TOKEN"} <= set(s3)  # uploads the checkpoint; the hub is online
    assert not {"GOOGLE_APPLICATION_CREDENTIALS", "OPENAI_API_KEY", "DISTIL_DB_URL"} & set(s3)
    gcs = training_env(bootstrap, {**base, "DISTIL_ARTIFACTS_URL": "gs://bucket/team", "HF_HUB_OFFLINE": "1"})
    assert "GOOGLE_APPLICATION_CREDENTIALS" in gcs and "AWS_SECRET_ACCESS_KEY" not in gcs and "HF_TOKEN" not in gcs


def _start_step(tmp_path, inject, *, grandchild: bool):
    import os
    import subprocess
    import sys

    (inject / "sleep").touch()
    if grandchild:
        (inject / "grandchild").touch()
    step_py = tmp_path / "step.py"
    step_py.write_text(_STEP)
    step = subprocess.Popen([sys.executable, str(step_py)], env=dict(os.environ), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return step, _job_info(inject)
    except BaseException:
        step.kill()
        raise


@pytest.mark.timeout(180)
def test_a_sigkilled_step_leaves_no_training_job_behind(tmp_path, monkeypatch):
    """kill -9 of the step process (what an OOM kill or a lost node does): the kernel's parent-death
    signal ends the training job, so the `gpu` slot the step held is not freed under a live job."""
    import os

    inject = _inject(tmp_path, monkeypatch)
    step, info = _start_step(tmp_path, inject, grandchild=False)
    try:
        os.kill(step.pid, signal.SIGKILL)
        step.wait(timeout=30)
        seconds = _gone_within(info["pid"], timeout_s=30)
        assert seconds is not None, "the training job outlived its SIGKILLed step"
        print(f"training job gone {seconds:.2f}s after its step was SIGKILLed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info["pid"], signal.SIGKILL)


@pytest.mark.timeout(180)
def test_an_interrupted_step_stops_the_jobs_whole_process_group(tmp_path, monkeypatch):
    """Ctrl-C / Dagster's termination of the step: the job and what it started are stopped."""
    import os

    inject = _inject(tmp_path, monkeypatch)
    step, info = _start_step(tmp_path, inject, grandchild=True)
    try:
        os.kill(step.pid, signal.SIGINT)
        for pid in (info["pid"], info["grandchild"]):
            seconds = _gone_within(pid, timeout_s=30)
            assert seconds is not None, f"process {pid} of the training job's group outlived the interrupted step"
        print(f"training job group gone {seconds:.2f}s after the step was interrupted")
        step.wait(timeout=60)
    finally:
        for pid in (info["pid"], info.get("grandchild"), step.pid):
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(pid, signal.SIGKILL)
