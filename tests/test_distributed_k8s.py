"""Kubernetes, offline: the executor chosen by ``DISTIL_EXECUTOR``, the GPU step's Job spec as
dagster-k8s builds it from the assets' op tags, the Helm values against Dagster's config schemas,
and ``dagster definitions validate`` with the k8s executor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

pytest.importorskip("dagster_k8s")

from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config
from distil_platform.assets.deployment import FRONTIER_API_POOL, GPU_POOL, K8S_CONFIG_TAG
from kubernetes.client import ApiClient

from distil_platform.tasks.spec import load_tasks

REPO_ROOT = Path(__file__).resolve().parents[1]
HELM_VALUES = REPO_ROOT / "deploy" / "helm" / "values.yaml"
ORCHESTRATOR_IMAGE = "ghcr.io/example/distil-platform-orchestrator:test"
GPU_IMAGE = "ghcr.io/example/distil-platform-gpu:test"


def _defs(monkeypatch, **env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from distil_platform.definitions import build_definitions

    return build_definitions()


def _nodes(defs):
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_materializable:
            yield key.to_user_string(), node


def _op_tags(defs, asset_key: str) -> dict[str, str]:
    assets_def = defs.resolve_asset_graph().get(dg.AssetKey(asset_key)).assets_def
    return dict(assets_def.op.tags)


def _launcher_config() -> dict:
    """The chart's ``runLauncher.config.k8sRunLauncher`` values as the dagster.yaml it renders."""
    launcher = yaml.safe_load(HELM_VALUES.read_text())["runLauncher"]["config"]["k8sRunLauncher"]
    return {
        "instance_config_map": "distil-instance",
        "service_account_name": "distil-dagster",
        "dagster_home": "/opt/dagster/dagster_home",
        "job_namespace": "distil",
        "env_secrets": [s["name"] for s in launcher["envSecrets"]],
        "env_vars": launcher["envVars"],
        "volumes": launcher["volumes"],
        "volume_mounts": [
            {"name": m["name"], "mount_path": m["mountPath"], "sub_path": m["subPath"]}
            for m in launcher["volumeMounts"]
        ],
        "run_k8s_config": {"container_config": launcher["runK8sConfig"]["containerConfig"]},
    }


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    """A real K8sRunLauncher from the Helm values; its kubeconfig names a cluster nothing contacts."""
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher

    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "offline",
                "clusters": [{"name": "offline", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "offline", "user": {"token": "unused"}}],
                "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "offline"}}],
            }
        )
    )
    config = {**_launcher_config(), "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    result = process_config(K8sRunLauncher.config_type(), config)
    assert result.success, result.errors
    return K8sRunLauncher(**result.value)


def _render_step_job(launcher, tags: dict[str, str]) -> dict:
    """The step Job as K8sStepHandler.launch_step builds it (run launcher settings, then the step's
    ``dagster-k8s/config`` tag), minus the API call that would submit it."""
    run = dg.DagsterRun(job_name="__ASSET_JOB", run_id="0" * 32)
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False).merge(
        K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags))
    )
    job_config = context.get_k8s_job_config(None, launcher).with_image(ORCHESTRATOR_IMAGE)
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-test",
        pod_name="dagster-step-test",
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/op": "test"},
    )
    return ApiClient().sanitize_for_serialization(job)


def test_every_gpu_pool_asset_and_only_those_carry_the_gpu_pod_config(monkeypatch):
    defs = _defs(monkeypatch, DISTIL_PROFILE="test")
    gpu, other = [], []
    for key, node in _nodes(defs):
        tags = _op_tags(defs, key)
        (gpu if node.assets_def.op.pool == GPU_POOL else other).append((key, tags))
    assert {k for k, _ in gpu} >= {"text2sql_student", "text2sql_student_eval", "text2sql_throughput"}
    for key, tags in gpu:
        assert K8S_CONFIG_TAG in tags, f"{key} is in the gpu pool but requests no GPU on Kubernetes"
        assert (
            json.loads(tags[K8S_CONFIG_TAG])["container_config"]["resources"]["limits"]["nvidia.com/gpu"]
            == "1"
        )
    for key, tags in other:
        assert K8S_CONFIG_TAG not in tags, f"{key} is not in the gpu pool but would hold a GPU node"
    # Frontier-API calls wait on the network in their own pool, never holding a GPU slot or node.
    api = {k for k, node in _nodes(defs) if node.assets_def.op.pool == FRONTIER_API_POOL}
    assert api == {f"{task}_frontier_evals" for task in load_tasks()}
    assert "text2sql_baseline_evals" in {k for k, _ in gpu}  # the zero-shot base is served on the GPU


def test_gpu_step_job_spec_requests_a_gpu_on_gpu_nodes_in_the_gpu_image(monkeypatch, launcher):
    defs = _defs(
        monkeypatch,
        DISTIL_PROFILE="gpu",
        DISTIL_K8S_GPU_IMAGE=GPU_IMAGE,
        DISTIL_K8S_GPUS_PER_STEP="2",
        DISTIL_K8S_GPU_NODE_SELECTOR='{"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}',
    )
    spec = _render_step_job(launcher, _op_tags(defs, "text2sql_student"))
    pod = spec["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == GPU_IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert container["args"] == ["dagster", "api", "execute_step"]
    # From the run launcher (Helm values): secrets as env, artefacts on the object store (no shared
    # artefact volume: steps share nothing on disk), the base-model cache volume, the namespace.
    assert {"secretRef": {"name": "distil-platform-env"}} in container["envFrom"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DISTIL_ARTIFACTS_URL"].startswith("s3://")
    mounts = {m["mountPath"]: m["subPath"] for m in container["volumeMounts"] if m["name"] == "distil-data"}
    assert mounts == {"/mnt/distil/models": "models"}
    assert spec["metadata"]["name"] == "dagster-step-test"

    # A CPU step (the seed set, pricing) stays on the orchestrator image with no GPU and no GPU placement.
    cpu = _render_step_job(launcher, _op_tags(defs, "text2sql"))["spec"]["template"]["spec"]
    assert cpu["containers"][0]["image"] == ORCHESTRATOR_IMAGE
    assert "nvidia.com/gpu" not in json.dumps(cpu)


def test_bad_gpu_settings_fail_at_load_naming_the_variable(monkeypatch):
    with pytest.raises(ValueError, match="DISTIL_K8S_GPU_NODE_SELECTOR"):
        _defs(monkeypatch, DISTIL_K8S_GPU_NODE_SELECTOR="[1, 2]")
    monkeypatch.delenv("DISTIL_K8S_GPU_NODE_SELECTOR")
    with pytest.raises(ValueError, match="DISTIL_K8S_GPUS_PER_STEP"):
        _defs(monkeypatch, DISTIL_K8S_GPUS_PER_STEP="0")


def test_executor_is_chosen_by_distil_executor(monkeypatch):
    defs = _defs(monkeypatch, DISTIL_PROFILE="test")
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "multiprocess"
    defs = _defs(monkeypatch, DISTIL_EXECUTOR="k8s")
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "k8s"
    with pytest.raises(ValueError, match="DISTIL_EXECUTOR"):
        _defs(monkeypatch, DISTIL_EXECUTOR="celery")


def test_helm_values_map_onto_valid_dagster_instance_config():
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config_schema
    from dagster_k8s import K8sRunLauncher

    values = yaml.safe_load(HELM_VALUES.read_text())
    assert values["postgresql"]["enabled"] is False
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["DISTIL_EXECUTOR"] == "k8s" and json.loads(env["DISTIL_K8S_GPU_NODE_SELECTOR"])
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "distil_platform.definitions"]

    # The chart renders these into dagster.yaml; Dagster's own schemas must accept them.
    result = process_config(K8sRunLauncher.config_type(), _launcher_config())
    assert result.success, result.errors
    conc = values["concurrency"]
    instance = {
        "concurrency": {
            "runs": {
                "max_concurrent_runs": conc["runs"]["maxConcurrentRuns"],
                "tag_concurrency_limits": conc["runs"]["tagConcurrencyLimits"],
            },
            "pools": {
                "granularity": conc["pools"]["granularity"],
                "default_limit": conc["pools"]["defaultLimit"],
            },
        }
    }
    result = process_config(dagster_instance_config_schema(), instance)
    assert result.success, result.errors


def test_postgres_instance_yaml_matches_the_helm_concurrency():
    local = yaml.safe_load((REPO_ROOT / "distil_platform" / "config" / "dagster-postgres.yaml").read_text())
    values = yaml.safe_load(HELM_VALUES.read_text())["concurrency"]
    assert local["concurrency"]["pools"]["granularity"] == values["pools"]["granularity"] == "op"
    assert local["concurrency"]["pools"]["default_limit"] == values["pools"]["defaultLimit"]
    assert local["concurrency"]["runs"]["max_concurrent_runs"] == values["runs"]["maxConcurrentRuns"]


def test_dagster_definitions_validate_with_the_k8s_executor(tmp_path):
    env = {
        **os.environ,
        "DISTIL_EXECUTOR": "k8s",
        "DISTIL_PROFILE": "gpu",
        "DISTIL_K8S_GPU_IMAGE": GPU_IMAGE,
        "DAGSTER_HOME": str(tmp_path),
    }
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-m",
            "distil_platform.definitions",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Validation successful" in proc.stdout + proc.stderr
