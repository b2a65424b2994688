"""benchmarks/distillation.py on the `test` profile: the numbers it writes into benchmarks/README.md
come from the runs it claims (full graph, seed-only ablation, grounding ablation)."""

from __future__ import annotations

import importlib.util
import os

import pytest
from conftest import REPO_ROOT

API_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")


def _offline_test_profile(monkeypatch, *data_overrides: str):
    """The test profile, no API keys, and the shipped samples (not the public data) for these tasks."""
    monkeypatch.setenv("DISTIL_PROFILE", "test")
    for key in API_KEYS:
        monkeypatch.delenv(key, raising=False)
    for task in data_overrides:
        monkeypatch.delenv(f"DISTIL_DATA_{task.upper()}", raising=False)


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("distillation_benchmark", REPO_ROOT / "benchmarks" / "distillation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_distillation_benchmark_runs_ablations_on_the_shipped_sample(monkeypatch):
    _offline_test_profile(monkeypatch, "banking77")  # the shipped sample, with unstructured rows
    bench = _load_benchmark()
    import dagster as dg

    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]):
        res = bench.run_task("banking77", literal_swap=False, teacher_target=8, grounding_ablation=True,
                             seed_only_mode="always", truncated_ablation=True)

    assert res["task"] == "banking77" and res["profile"] == "test" and res["n_unstructured"] > 0
    n_seed = res["n_seed"]
    # The seed-only student trains on the seeds alone; the student on seeds + accepted teacher rows.
    assert res["seed_only_student"]["train_examples"] == n_seed
    assert res["student"]["train_examples"] == n_seed + res["teacher"]["accepted"]
    assert res["teacher"]["requested"] == 8
    for model in (res["student"], res["seed_only_student"], *res["zero_shot"].values()):
        low, high = model["ci"]
        assert 0.0 <= low <= model["score"] <= high <= 1.0
    assert list(res["zero_shot"]) == ["tiny-qwen3 (zero-shot)"]
    assert res["zero_shot"]["tiny-qwen3 (zero-shot)"]["vs_student"]["verdict"]
    # banking77 grounds its teacher by default: the ablation flips it and trains on that data.
    grounding = res["grounding_ablation"]
    assert res["ground_in_unstructured"] is True
    assert grounding["task_setting"] is True and grounding["ablation_setting"] is False
    assert grounding["student"]["train_examples"] == n_seed + grounding["teacher"]["accepted"]
    assert set(res["wall_s"]) == {"full_graph", "seed_only", "steps"}
    # The pre-fix student: seeds only, fixed max_length 384, JSON-schema rendering, paired on the items.
    old = res["truncated_student"]
    assert old["train_examples"] == n_seed and old["max_length"] == 384 and old["rendering"] == "json_schema"
    assert old["student_vs_truncated"]["n"] == res["n_test"]
    assert "banking77_student" in res["wall_s"]["steps"]


@pytest.mark.slow
def test_self_training_benchmark_labels_with_the_seed_only_student(monkeypatch):
    """--teacher-source self_training: the seed-only student is trained first, its own checkpoint labels
    the unlabelled messages, and the second student is paired against it on the same items."""
    _offline_test_profile(monkeypatch, "banking77")
    bench = _load_benchmark()
    import dagster as dg

    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        res = bench.run_task("banking77", literal_swap=False, teacher_target=12, teacher_source="self_training",
                             labeller="seed_only", baselines=False)
        seed_run = instance.get_runs(limit=2)[-1]  # runs come newest first: the seed-only one is older
    assert res["teacher_source"] == "self_training"
    assert res["seed_only_student"]["train_examples"] == res["n_seed"]
    # The labeller is the seed-only student's checkpoint (trained in the first run), not the base model.
    assert res["labeller"] and seed_run.run_id in res["labeller"]
    assert res["teacher"]["teacher"] == res["labeller"]
    assert res["labelled_messages"] == 12
    assert res["student"]["train_examples"] == res["n_seed"] + res["teacher"]["accepted"]
    assert res["student_vs_seed_only"]["n"] == res["n_test"]
    assert res["wall_s"]["seed_only"] > 0


@pytest.mark.slow
def test_agreement_benchmark_serves_the_seed_only_student_as_second_answerer(monkeypatch):
    """--agreement-model seed_only: the seed-only student is trained first and its checkpoint, served
    for real, answers every teacher row that reaches the agreement filter."""
    _offline_test_profile(monkeypatch, "git_assistant")
    bench = _load_benchmark()
    import dagster as dg

    # Recorded rows reach the filter (the test profile's random tiny teacher writes none that parse).
    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        res = bench.run_task("git_assistant", literal_swap=False, teacher_target=None, teacher_source="recorded",
                             recorded_path=str(REPO_ROOT / "tests" / "data" / "recorded_git_assistant.jsonl"),
                             agreement_model="seed_only", baselines=False)
        seed_run = instance.get_runs(limit=2)[-1]
    assert res["agreement_model"] and seed_run.run_id in res["agreement_model"] and res["labeller"] is None
    funnel = {f["filter"]: f for f in res["teacher"]["filters"]}
    checked = funnel["answer_agreement"]["checked"]
    assert checked > 0 and funnel["answer_agreement"]["passed"] + funnel["answer_agreement"]["rejected"] == checked
    assert res["student"]["train_examples"] == res["n_seed"] + res["teacher"]["accepted"]
    assert res["student_vs_seed_only"]["n"] == res["n_test"]


@pytest.mark.slow
def test_teacher_yield_benchmark_reports_accepted_rows_per_request(monkeypatch):
    """benchmarks/teacher_yield.py tabulates what the teacher stage itself reported."""
    _offline_test_profile(monkeypatch)
    spec = importlib.util.spec_from_file_location("teacher_yield", REPO_ROOT / "benchmarks" / "teacher_yield.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import dagster as dg

    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]):
        row = module.task_yield("banking77", target=8)
    assert row["task"] == "banking77" and row["profile"] == "test" and row["requested"] == 8
    assert row["teacher_requests"] >= 1
    assert row["accepted_per_request"] == pytest.approx(row["teacher_accepted"] / row["teacher_requests"], abs=1e-3)
    assert 0 <= row["accepted"] <= row["generated"] and len(row["top_rejections"]) <= 3
