"""Where steps run: the executor, chosen by configuration, and the Kubernetes spec of GPU steps.

- ``DISTIL_EXECUTOR`` (read here only): ``multiprocess`` (default; one machine) or ``k8s``
  (``dagster_k8s.k8s_job_executor``: every step its own Kubernetes Job; the run itself is launched
  by the instance's ``K8sRunLauncher``, see deploy/). Same Definitions, same assets.
- ``gpu_op_tags()``: the ``dagster-k8s/config`` tag every asset in the ``gpu`` pool carries. The k8s
  executor turns it into the step pod's GPU request, node selector, tolerations and image; other
  executors ignore it. Per-deployment settings come from the environment of the code location:

  ``DISTIL_K8S_GPUS_PER_STEP`` (default 1), ``DISTIL_K8S_GPU_NODE_SELECTOR`` (JSON object, default
  ``{"nvidia.com/gpu.present": "true"}``, the label NVIDIA's GPU operator sets),
  ``DISTIL_K8S_GPU_TOLERATIONS`` (JSON list, default: tolerate the ``nvidia.com/gpu`` taint),
  ``DISTIL_K8S_GPU_IMAGE`` (the CUDA image with vLLM/TRL; default: the code location's image),
  ``DISTIL_K8S_GPU_MEMORY`` (memory request/limit of a GPU step, default ``48Gi``).

Dagster's ``gpu`` pool still applies on the cluster: ``dagster instance concurrency set gpu <N>``
keeps at most N GPU steps scheduled however many runs are in flight.
"""

from __future__ import annotations

import json
import os
from typing import Any

import dagster as dg

EXECUTOR_ENV = "DISTIL_EXECUTOR"
EXECUTORS = ("multiprocess", "k8s")
GPU_POOL = "gpu"
# Frontier-API-bound steps: they wait on the network, never on a card.
FRONTIER_API_POOL = "frontier_api"
K8S_CONFIG_TAG = "dagster-k8s/config"

DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def executor_kind() -> str:
    value = os.environ.get(EXECUTOR_ENV, "multiprocess").strip().lower() or "multiprocess"
    if value not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={value!r}: expected one of {', '.join(EXECUTORS)}")
    return value


def k8s_executor() -> dg.ExecutorDefinition:
    """Each step a Kubernetes Job; namespace, image, env and secrets are inherited from the
    ``K8sRunLauncher`` (the Helm chart's ``runLauncher`` values) and can be overridden in run config
    (``execution: config: ...``)."""
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:  # pragma: no cover - dagster-k8s is a dependency
        raise ImportError(
            f"{EXECUTOR_ENV}=k8s needs dagster-k8s (pip install 'distil-platform[cluster]')"
        ) from exc
    return k8s_job_executor


def _json_env(name: str, default: Any, kind: type) -> Any:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a JSON {kind.__name__}, got {type(value).__name__}")  # noqa: TRY004
    return value


def gpu_k8s_config() -> dict[str, Any]:
    """The ``dagster-k8s/config`` value of a GPU step (container resources, node placement, image)."""
    gpus = os.environ.get("DISTIL_K8S_GPUS_PER_STEP", "1")
    if not gpus.isdigit() or int(gpus) < 1:
        raise ValueError(f"DISTIL_K8S_GPUS_PER_STEP must be a positive integer, got {gpus!r}")
    memory = os.environ.get("DISTIL_K8S_GPU_MEMORY", "48Gi")
    container: dict[str, Any] = {
        "resources": {
            # Extended resources are requested through limits (requests default to them).
            "requests": {"cpu": "4", "memory": memory, "nvidia.com/gpu": gpus},
            "limits": {"memory": memory, "nvidia.com/gpu": gpus},
        },
    }
    image = os.environ.get("DISTIL_K8S_GPU_IMAGE")
    if image:
        container["image"] = image
    return {
        "container_config": container,
        "pod_spec_config": {
            "node_selector": _json_env("DISTIL_K8S_GPU_NODE_SELECTOR", DEFAULT_GPU_NODE_SELECTOR, dict),
            "tolerations": _json_env("DISTIL_K8S_GPU_TOLERATIONS", DEFAULT_GPU_TOLERATIONS, list),
        },
    }


def gpu_op_tags() -> dict[str, Any]:
    """Op tags of every asset in the ``gpu`` pool."""
    return {K8S_CONFIG_TAG: gpu_k8s_config()}
