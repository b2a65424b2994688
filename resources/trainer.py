"""``TrainerResource``: where ``<task>_student`` runs its training job (``distil_platform.train_job``).

``launcher``:
- ``subprocess`` (default): Dagster Pipes' ``PipesSubprocessClient`` runs ``python -m
  distil_platform.train_job`` with this interpreter: the step process never imports torch/TRL.
- ``in_process``: the job runs inside the step (debugging; one process fewer).
- ``k8s``: Dagster Pipes' ``PipesK8sClient`` runs the same module in a pod of the GPU image that
  requests ``nvidia.com/gpu`` on GPU nodes (``DISTIL_K8S_GPU_*``, like the GPU op tags); the step
  itself stays on a CPU node. Artefacts must then be on an object store (``DISTIL_ARTIFACTS_URL``):
  the pod reads the rows and writes the checkpoint there.

Chosen per deployment by ``DISTIL_TRAIN_LAUNCHER`` (read once, when the Definitions are built).
"""

# No `from __future__ import annotations`: Dagster reads the resource field annotations at runtime.

import os
import subprocess
import sys
from typing import Any

import dagster as dg

LAUNCHERS = ("subprocess", "in_process", "k8s")
LAUNCHER_ENV = "DISTIL_TRAIN_LAUNCHER"
JOB_MODULE = "distil_platform.train_job"


def launcher_from_env() -> str:
    value = os.environ.get(LAUNCHER_ENV, "subprocess").strip().lower() or "subprocess"
    if value not in LAUNCHERS:
        raise ValueError(f"{LAUNCHER_ENV}={value!r}: expected one of {', '.join(LAUNCHERS)}")
    return value


class TrainingJobError(RuntimeError):
    """The training job ended without reporting a result."""


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
            from distil_platform.train_job import run_training

            def log(level: str, message: str) -> None:
                (context.log.warning if level == "warning" else context.log.info)(message)

            return run_training(params, log)
        if self.launcher == "subprocess":
            # Dagster's own Pipes session (what PipesSubprocessClient does), kept open here so the job's
            # error report is readable after a failed exit and becomes this step's error message.
            with dg.open_pipes_session(context=context, extras=params,
                                       context_injector=dg.PipesTempFileContextInjector(),
                                       message_reader=dg.PipesTempFileMessageReader()) as session:
                proc = subprocess.run([sys.executable, "-m", JOB_MODULE], check=False,
                                      env={**os.environ, **session.get_bootstrap_env_vars()})
            messages = session.get_custom_messages()
            if proc.returncode != 0:
                raise job_error(messages, f"the training job exited with code {proc.returncode}")
            return _result(messages, self.launcher)
        else:
            from distil_platform import paths

            if not paths.is_remote(paths.artifacts_base_url()):
                raise ValueError("DISTIL_TRAIN_LAUNCHER=k8s: the training pod shares no disk with this step; set "
                                 "DISTIL_ARTIFACTS_URL to an object store (s3://bucket/prefix)")
            from dagster_k8s import PipesK8sClient

            invocation = PipesK8sClient().run(context=context, extras=params, namespace=self.k8s_namespace,
                                              **k8s_pod_settings())
        return _result(invocation.get_custom_messages(), self.launcher)


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
