"""The training job behind ``<task>_student`` (``distil_platform.train_job``) and where it runs
(``TrainerResource``: in the step, a Dagster Pipes subprocess, or a Pipes Kubernetes pod)."""

# No `from __future__ import annotations`: Dagster reads the asset annotations below at runtime.

import json

import dagster as dg
import pytest
from distil_platform.resources.trainer import TrainerResource, k8s_pod_settings, launcher_from_env

from distil_platform.profiles import get_profile
from distil_platform.taskspec import TaskSpec, get_task
from distil_platform.train_job import format_progress, training_params
from distil_platform.training import TrainConfig


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
    assert container["command"] == ["python", "-m", "distil_platform.train_job"]
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
