"""The gpu profile's training plan and set-up decisions, checked on this CPU with the inputs a GPU host
gives (issue 32, findings 6, 7 and 8): no device is needed, nothing of the platform is patched; where
torch's answer matters it is passed in (``cuda_available``).

- Training fails at once, saying why, when the gpu profile's torch sees no CUDA (a CPU fallback would
  train a billion-parameter student for days), before the base model is downloaded.
- The gpu profile trains for epochs over the training rows (2), not a fixed 1,000 steps, and
  ``T_student`` records the plan; the local profile's time-budgeted steps are unchanged.
- The gpu profile's teacher model is a setting (env ``DISTIL_TEACHER_MODEL``).
"""

from __future__ import annotations

import math

import pytest

from distil_platform.precision import NoCudaError, training_device
from distil_platform.profiles import GPU_DEFAULT_TEACHER, TEACHER_MODEL_ENV, get_profile
from distil_platform.tasks.spec import get_task
from distil_platform.training.config import TrainConfig
from distil_platform.training.job import run_training
from distil_platform.training.trainer import check_training_device, train_student

ROWS = [{"id": f"r{i}", "question": f"q{i}", "answer": "SELECT 1;", "context": ""} for i in range(4)]


def test_training_device_from_what_torch_reports():
    assert training_device(True, require_cuda=True, torch_version="2.13.0+cu128", torch_cuda="12.8") == "cuda"
    assert training_device(False, require_cuda=False, torch_version="2.13.0+cpu") == "cpu"  # local, test
    with pytest.raises(NoCudaError, match=r"CPU build.*TORCH_SPEC"):
        training_device(False, require_cuda=True, torch_version="2.13.0+cpu", torch_cuda=None)
    with pytest.raises(NoCudaError, match=r"no usable GPU.*nvidia-smi.*CUDA_VISIBLE_DEVICES"):
        training_device(False, require_cuda=True, torch_version="2.13.0+cu128", torch_cuda="12.8")


def test_only_the_gpu_profile_requires_cuda():
    spec = get_task("text2sql")
    assert TrainConfig.for_task(spec, get_profile("gpu")).require_cuda
    assert not TrainConfig.for_task(spec, get_profile("local")).require_cuda
    assert not TrainConfig.for_task(spec, get_profile("test")).require_cuda
    gpu = TrainConfig.for_task(spec, get_profile("gpu"))
    assert check_training_device(gpu, cuda_available=True) == "cuda"
    with pytest.raises(NoCudaError):
        check_training_device(gpu, cuda_available=False)


def test_gpu_profile_training_fails_fast_without_cuda(tmp_path):
    spec = get_task("text2sql")
    config = TrainConfig.for_task(spec, get_profile("gpu"))
    # Before anything is read or loaded: the base "model" here does not even exist.
    with pytest.raises(NoCudaError, match="the gpu profile trains on a CUDA GPU"):
        train_student(spec, ROWS, tmp_path / "no-such-model", tmp_path / "out", config, cuda_available=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this host has CUDA")
def test_the_training_job_fails_before_downloading_the_base_model(tmp_path):
    """The job's first act: with no CUDA here, a gpu-profile job stops before it reads its rows or
    resolves ``Qwen/Qwen3-0.6B`` (which, offline, would be a different error)."""
    import dataclasses

    spec = get_task("text2sql")
    config = TrainConfig.for_task(spec, get_profile("gpu"))
    params = {"spec": spec.model_dump(mode="json"), "rows_url": str(tmp_path / "missing.parquet"), "test_url": None,
              "base_model": "Qwen/Qwen3-0.6B", "run_id": "r",
              "train_config": {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in dataclasses.asdict(config).items()}}
    with pytest.raises(NoCudaError):
        run_training(params, lambda level, message: None)


def test_gpu_profile_trains_for_epochs_and_local_keeps_its_time_budgeted_steps():
    spec = get_task("text2sql")
    gpu = TrainConfig.for_task(spec, get_profile("gpu"))
    assert gpu.epochs == 2.0 and gpu.schedule() == "epochs"
    # ~2,100 rows (2,000 synthetic + seeds) at 16 rows per step: 2 passes, not 1,000 steps (8 passes).
    assert gpu.steps_for(2100, 16) == 2 * math.ceil(2100 / 16) == 264
    # A run config's max_steps replaces the profile's epochs; its epochs replace the task's steps.
    assert TrainConfig.for_task(spec, get_profile("gpu"), max_steps=300).epochs is None
    assert TrainConfig.for_task(spec, get_profile("gpu"), max_steps=300).steps_for(2100, 16) == 300
    assert TrainConfig.for_task(spec, get_profile("gpu"), epochs=3.0).steps_for(2100, 16) == 396
    # The local profile (make run's timing depends on it): max_steps under a time budget, no epochs.
    local = TrainConfig.for_task(spec, get_profile("local"))
    assert (local.epochs, local.max_steps, local.time_budget_s) == (None, 40, 240.0)
    assert local.schedule() == "max_steps" and local.steps_for(100, 8) == 40
    assert TrainConfig.for_task(spec, get_profile("test")).epochs is None


def test_the_gpu_profiles_teacher_is_a_setting(monkeypatch):
    monkeypatch.delenv(TEACHER_MODEL_ENV, raising=False)
    spec = get_task("text2sql")
    assert get_profile("gpu").default_teacher == GPU_DEFAULT_TEACHER
    monkeypatch.setenv(TEACHER_MODEL_ENV, "openai/Qwen/Qwen3-235B-A22B-Instruct-2507")
    assert get_profile("gpu").default_teacher == "openai/Qwen/Qwen3-235B-A22B-Instruct-2507"
    assert "gpu" not in spec.teacher  # (a task YAML's own gpu teacher would win over the profile's)
    assert spec.teacher_for("gpu").model == "openai/Qwen/Qwen3-235B-A22B-Instruct-2507"
    # The local and test profiles serve their own teacher; the setting is the gpu profile's.
    assert get_profile("local").default_teacher == "smollm2-135m-instruct"
    assert get_profile("test").default_teacher == "tiny-qwen3"
