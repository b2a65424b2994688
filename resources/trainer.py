"""``TrainerResource``: where ``<task>_student`` runs its training job (``distil_platform.training.job``).

``launcher``:
- ``subprocess`` (default): Dagster Pipes' ``PipesSubprocessClient`` runs ``python -m
  distil_platform.training.job`` with this interpreter: the step process never imports torch/TRL.
- ``in_process``: the job runs inside the step (debugging; one process fewer).
- ``k8s``: Dagster Pipes' ``PipesK8sClient`` runs the same module in a pod of the GPU image that
  requests ``nvidia.com/gpu`` on GPU nodes (``DISTIL_K8S_GPU_*``, like the GPU op tags); the step
  itself stays on a CPU node. Artefacts must then be on an object store (``DISTIL_ARTIFACTS_URL``):
  the pod reads the rows and writes the checkpoint there.

Chosen per deployment by ``DISTIL_TRAIN_LAUNCHER`` (read once, when the Definitions are built).

The ``subprocess`` job gets a scrubbed environment (:func:`training_env`: no API keys, no results-store
URL), runs in its own process group with a parent-death signal (a SIGKILLed step takes the job with
it, so the ``gpu`` pool slot is never freed while training still holds the card), and its whole group
is stopped when the step is interrupted.
"""

# No `from __future__ import annotations`: Dagster reads the resource field annotations at runtime.

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import dagster as dg

LAUNCHERS = ("subprocess", "in_process", "k8s")
LAUNCHER_ENV = "DISTIL_TRAIN_LAUNCHER"
JOB_MODULE = "distil_platform.training.job"


def launcher_from_env() -> str:
    value = os.environ.get(LAUNCHER_ENV, "subprocess").strip().lower() or "subprocess"
    if value not in LAUNCHERS:
        raise ValueError(f"{LAUNCHER_ENV}={value!r}: expected one of {', '.join(LAUNCHERS)}")
    return value


# What the training job reads from its environment besides server_env's allow-list (train_job,
# training, paths, modelstore, profiles, precision, taskspec): where artefacts, models and task files
# are, the profile and compute dtype, the hub's endpoint and cache settings.
_TRAINING_ENV = ("DAGSTER_HOME", "PYTHONPATH", "DISTIL_ARTIFACTS_URL", "DISTIL_MODELS_DIR", "DISTIL_COMPUTE_DTYPE",
                 "DISTIL_PROFILE", "DISTIL_TASKS_DIR", "HF_ENDPOINT", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT",
                 "HF_HUB_ENABLE_HF_TRANSFER", "HF_XET_HIGH_PERFORMANCE", "LITELLM_LOCAL_MODEL_COST_MAP")
_TRAINING_ENV_PREFIXES = ("DISTIL_DATA_", "PYTORCH_", "ACCELERATE_")
# Only when the hub is online: the job may download a gated base model.
_HUB_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# Only when artefacts are on an object store (the job reads its rows there and uploads the checkpoint):
# the credentials of that store's SDK, by the URL's protocol.
_OBJECT_STORE_ENV_PREFIXES = {
    "s3": ("AWS_",), "s3a": ("AWS_",),
    "gs": ("GOOGLE_", "GCLOUD_", "CLOUDSDK_"), "gcs": ("GOOGLE_", "GCLOUD_", "CLOUDSDK_"),
    "az": ("AZURE_",), "abfs": ("AZURE_",), "abfss": ("AZURE_",), "adl": ("AZURE_",),
}
# SIGTERM to the job's group, then SIGKILL after this many seconds, when the step is interrupted.
_STOP_TIMEOUT_S = 10.0


def training_env(bootstrap: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the ``subprocess`` training job: ``base`` (default ``os.environ``) cut to
    what the job needs - the model servers' allow-list (``serving.launch.server_env``: PATH, locale, CUDA,
    threads, HF cache ...), ``_TRAINING_ENV`` and ``DISTIL_DATA_*`` / ``PYTORCH_*`` / ``ACCELERATE_*``,
    the hub token only when the hub is online, the object store's credentials
    (``DISTIL_ARTIFACTS_STORAGE_OPTIONS`` and the SDK's variables) only when ``DISTIL_ARTIFACTS_URL``
    is remote - plus the Dagster Pipes ``bootstrap`` variables. API keys, ``DISTIL_DB_URL`` and the
    teacher endpoint's settings stay in the step."""
    from distil_platform.serving.launch import server_env

    base = os.environ if base is None else base
    picked = {k: v for k, v in base.items() if k in _TRAINING_ENV or k.startswith(_TRAINING_ENV_PREFIXES)}
    offline = base.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    if not offline:
        picked.update({k: base[k] for k in _HUB_TOKEN_ENV if base.get(k)})
    artifacts = base.get("DISTIL_ARTIFACTS_URL", "").strip()
    if artifacts:
        import fsspec.utils

        protocol = fsspec.utils.get_protocol(artifacts)
        if protocol not in ("file", "local"):
            prefixes = _OBJECT_STORE_ENV_PREFIXES.get(protocol, ())
            picked.update({k: v for k, v in base.items()
                           if k == "DISTIL_ARTIFACTS_STORAGE_OPTIONS" or (prefixes and k.startswith(prefixes))})
    return server_env({**picked, **bootstrap}, base=base)


class TrainingJobError(RuntimeError):
    """The training job ended without reporting a result."""


def complete_lines(path: str, should_stop: Callable[[], bool], poll_s: float = 0.01) -> Iterator[str]:
    """The lines appended to ``path`` while a writer runs, each only once it is whole (ends in a
    newline); after ``should_stop()`` the file is read to its end. A line its writer never finished
    raises ``ValueError`` (the writer died in the middle of a message)."""
    pending = ""
    with open(path, encoding="utf-8") as stream:
        while True:
            chunk = stream.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    yield pending
                    pending = ""
            elif should_stop():
                break
            else:
                time.sleep(poll_s)
    if pending.strip():
        raise ValueError(f"{path}: the last Pipes message was never finished ({len(pending)} characters, no newline)")


class WholeLineFileMessageReader(dg.PipesMessageReader):
    """Dagster Pipes' temporary-file message reader, parsing a message only once its line is whole.

    Dagster 1.13's ``PipesTempFileMessageReader`` tails the file with ``readline()`` and parses what
    it returns, which is half a line when the reader catches the writer between two writes of one
    message (the job's result, with its loss curve, is written in several): ``JSONDecodeError`` in
    the reader thread, every later message lost and the step failed with "ended without reporting a
    result" though the job had trained (CI of 2026-12-07). Same protocol, same writer
    (``dagster_pipes``' default file writer); the job's stdout and stderr stay on the step's."""

    @contextlib.contextmanager
    def read_messages(self, handler: Any) -> Iterator[dict[str, Any]]:
        from dagster_pipes import PipesDefaultMessageWriter

        with tempfile.TemporaryDirectory(prefix="distil-pipes-") as tempdir:
            path = os.path.join(tempdir, "messages")
            open(path, "w", encoding="utf-8").close()
            closed = threading.Event()
            thread = threading.Thread(target=self._read, args=(path, handler, closed.is_set), daemon=True)
            thread.start()
            try:
                yield {PipesDefaultMessageWriter.FILE_PATH_KEY: path,
                       PipesDefaultMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: False}
            finally:
                closed.set()
                thread.join()

    @staticmethod
    def _read(path: str, handler: Any, should_stop: Callable[[], bool]) -> None:
        try:
            for line in complete_lines(path, should_stop):
                handler.handle_message(json.loads(line))
        except Exception:
            handler.report_pipes_framework_exception(f"{WholeLineFileMessageReader.__name__} reader thread",
                                                     sys.exc_info())
            raise

    def no_messages_debug_text(self) -> str:
        return "Attempted to read messages from a temporary file (whole lines only)."


def k8s_pod_settings() -> dict[str, Any]:
    """Image, command and base pod spec of the training pod (``PipesK8sClient.run`` arguments):
    the GPU image, GPU requests/limits, node selector and tolerations of the GPU op tags."""
    from distil_platform.assets.deployment import gpu_k8s_config

    config = gpu_k8s_config()
    container = dict(config["container_config"])
    image = container.pop("image", None) or os.environ.get("DISTIL_K8S_GPU_IMAGE")
    if not image:
        raise ValueError("DISTIL_TRAIN_LAUNCHER=k8s needs DISTIL_K8S_GPU_IMAGE (the CUDA image with TRL)")
    pod = config["pod_spec_config"]
    return {
        "image": image,
        "command": ["python", "-m", JOB_MODULE],
        "base_pod_spec": {
            "containers": [{"resources": container["resources"]}],
            "nodeSelector": pod["node_selector"],
            "tolerations": pod["tolerations"],
        },
    }


class TrainerResource(dg.ConfigurableResource):
    """Runs the training job (see the module docstring)."""

    launcher: str = "subprocess"
    # k8s: the namespace of the training pods (None: the client's default / in-cluster namespace).
    k8s_namespace: str | None = None

    def train(self, context: dg.AssetExecutionContext, params: dict[str, Any]) -> dict[str, Any]:
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"TrainerResource.launcher={self.launcher!r}: expected one of {', '.join(LAUNCHERS)}")
        if self.launcher == "in_process":
            from distil_platform.training.job import run_training

            def log(level: str, message: str) -> None:
                (context.log.warning if level == "warning" else context.log.info)(message)

            return run_training(params, log)
        if self.launcher == "subprocess":
            # Dagster's own Pipes session (what PipesSubprocessClient does), kept open here so the job's
            # error report is readable after a failed exit and becomes this step's error message.
            with dg.open_pipes_session(context=context, extras=params,
                                       context_injector=dg.PipesTempFileContextInjector(),
                                       message_reader=WholeLineFileMessageReader()) as session:
                returncode = _run_job([sys.executable, "-m", JOB_MODULE],
                                      training_env(session.get_bootstrap_env_vars()))
            messages = session.get_custom_messages()
            if returncode != 0:
                raise job_error(messages, f"the training job exited with code {returncode}")
            return _result(messages, self.launcher)
        else:
            from distil_platform.storage import paths

            if not paths.is_remote(paths.artifacts_base_url()):
                raise ValueError("DISTIL_TRAIN_LAUNCHER=k8s: the training pod shares no disk with this step; set "
                                 "DISTIL_ARTIFACTS_URL to an object store (s3://bucket/prefix)")
            from dagster_k8s import PipesK8sClient

            invocation = PipesK8sClient().run(context=context, extras=params, namespace=self.k8s_namespace,
                                              **k8s_pod_settings())
        return _result(invocation.get_custom_messages(), self.launcher)


def _run_job(command: list[str], env: dict[str, str]) -> int:
    """Runs the job to its end in its own process group, with SIGKILL as its parent-death signal;
    if the step is interrupted (Dagster's termination, Ctrl-C) the whole group is stopped first."""
    from distil_platform.serving.server import parent_death_signal, stop_process_group

    proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                            # a single pre-resolved prctl call between fork and exec
                            preexec_fn=parent_death_signal(signal.SIGKILL))  # noqa: PLW1509
    try:
        return proc.wait()
    except BaseException:
        stop_process_group(proc, _STOP_TIMEOUT_S)
        raise


def _result(messages: list[Any], launcher: str) -> dict[str, Any]:
    results = [m for m in messages if isinstance(m, dict) and "error" not in m]
    if not results:
        raise job_error(messages, f"the training job ({launcher}) ended without reporting a result")
    return results[-1]


def job_error(messages: list[Any], fallback: str) -> Exception:
    """The job's own error (type and message as it reported them) or ``fallback``."""
    for m in reversed(messages):
        if isinstance(m, dict) and isinstance(m.get("error"), dict):
            err = m["error"]
            kinds = {"FileNotFoundError": FileNotFoundError, "ValueError": ValueError}
            return kinds.get(err.get("type"), TrainingJobError)(f"training job: {err.get('message')}")
    return TrainingJobError(fallback)
