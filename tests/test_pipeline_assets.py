"""The distillation graph end to end on the `test` profile (tiny-qwen3, local `transformers serve`):
teacher data -> student -> student eval -> baseline evals, artefacts, metadata, store rows, checks,
and a cached rerun of the baselines that makes no model call."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from distil_platform.assets import build_task_pipeline_assets
from distil_platform.assets.evals import plan_baselines
from distil_platform.assets.seed import build_seed_set_asset
from distil_platform.assets.teacher import check_accepted_minimum, check_distribution
from distil_platform.resources import (
    LLMResource,
    ModelStoreResource,
    ResultsStoreResource,
    ServingResource,
    TeacherEndpointResource,
    TrainerResource,
)

from distil_platform.profiles import get_profile
from distil_platform.storage.store import ResultsStore, llm_requests, predictions
from distil_platform.tasks.spec import get_task

API_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")


@pytest.fixture
def test_profile(monkeypatch):
    monkeypatch.setenv("DISTIL_PROFILE", "test")
    for key in API_KEYS:
        monkeypatch.delenv(key, raising=False)


def _resources():
    return {
        "llm": LLMResource(),
        "serving": ServingResource(backend="transformers", dtype=get_profile("test").dtype),  # as the Definitions
        "model_store": ModelStoreResource(),
        "results_store": ResultsStoreResource(),
        "teacher_endpoint": TeacherEndpointResource(),
        "trainer": TrainerResource(),  # the training job under Dagster Pipes, as deployed
    }


def _assets(spec):
    return build_seed_set_asset(spec) + build_task_pipeline_assets(spec)


def _md(result, key: str) -> dict:
    from distil_platform.assets.metadata import materializations_of

    mats = materializations_of(result, key)
    assert mats, f"{key} was not materialised"
    return {k: v.value if hasattr(v, "value") else v for k, v in mats[-1].metadata.items()}


# -- plain functions ---------------------------------------------------------------------------
def test_baseline_plan_skips_models_without_keys(test_profile, monkeypatch):
    spec = get_task("text2sql")
    plan, skipped = plan_baselines(spec, get_profile("test"))
    assert [p["label"] for p in plan] == ["tiny-qwen3 (zero-shot)"]
    assert {s["model"] for s in skipped} == {m.model for m in spec.comparison_models}
    assert all("not set" in s["reason"] for s in skipped)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    plan, skipped = plan_baselines(spec, get_profile("local"))
    anthropic = [p for p in plan if p["label"].startswith("anthropic/")]
    assert len(anthropic) == 3 and all(p["repeats"] == 3 and not p["local"] for p in anthropic)
    assert plan[-1]["label"] == "smollm2-135m-instruct (zero-shot)" and plan[-1]["repeats"] == 1


def test_baseline_plan_repeats_and_temperature_0_option(test_profile, monkeypatch):
    from distil_platform.tasks.spec import ModelRef

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    refs = [ModelRef(model="anthropic/claude-haiku-4-5", api_key_env="ANTHROPIC_API_KEY", temperature=0.7, repeats=1),
            ModelRef(model="anthropic/claude-opus-4-6", api_key_env="ANTHROPIC_API_KEY", temperature=0.7),
            ModelRef(model="openai/gpt-5-nano", api_key_env="OPENAI_API_KEY", temperature=1.0, repeats=3,
                     supports_temperature_0=False)]
    spec = get_task("text2sql").model_copy(update={"comparison_models": refs})
    plan, _ = plan_baselines(spec, get_profile("test"), include_zero_shot_base=False, default_repeats=5)
    # The YAML's 1 at temperature > 0 is kept; no value means the config default.
    assert [(p["label"], p["repeats"]) for p in plan] == [
        ("anthropic/claude-haiku-4-5", 1), ("anthropic/claude-opus-4-6", 5), ("openai/gpt-5-nano", 3)]
    greedy = spec.model_copy(update={"frontier_temperature_0": True})
    plan, _ = plan_baselines(greedy, get_profile("test"), include_zero_shot_base=False)
    extra = [p for p in plan if p["label"].endswith(" @ temperature 0")]
    # Beside each model's own setting, one greedy run; never for a model that rejects temperature 0.
    assert [p["label"] for p in extra] == ["anthropic/claude-haiku-4-5 @ temperature 0",
                                           "anthropic/claude-opus-4-6 @ temperature 0"]
    assert all(p["ref"].temperature == 0.0 and p["repeats"] == 1 and p["variant"] == "frontier@t0" for p in extra)


def test_teacher_data_checks_on_planted_values(test_profile):
    spec = get_task("banking77")
    labels = list(spec.labels)
    low = check_accepted_minimum(spec, {"n_accepted": 0, "summary": {"generated": 5}})
    assert not low.passed and low.metadata["minimum"].value >= 1
    assert check_accepted_minimum(spec, {"n_accepted": 3}).passed
    collapsed = check_distribution(spec, {"distribution": {labels[0]: 19, labels[1]: 1}})
    assert not collapsed.passed
    assert check_distribution(spec, {"distribution": {labels[0]: 5, labels[1]: 5}}).passed
    assert check_distribution(get_task("text2sql"), {"distribution": {}}).passed


# -- whole graphs --------------------------------------------------------------------------------
@pytest.mark.slow
def test_text2sql_graph_end_to_end_and_cached_baseline_rerun(test_profile, tmp_path):
    # A margin other than the 0.02 default, so a verdict computed with the default is caught.
    spec = get_task("text2sql").model_copy(update={"margin": 0.07})
    assets = _assets(spec)
    # The random tiny teacher fails its gate (RETHINK): the override makes it write rows anyway, so the
    # teacher's path stays covered end to end (tests/test_teacher_gate.py covers the seed-only path).
    run_config = {"ops": {"text2sql_teacher_data": {"config": {"literal_swap": True, "override_teacher_gate": True}}}}
    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        result = dg.materialize(assets, resources=_resources(), instance=instance, run_config=run_config)
        assert result.success
        run_id = result.run_id

        gate = _md(result, "text2sql_teacher_eval")
        assert gate["verdict"] == "RETHINK" and gate["teacher"] == "tiny-qwen3" and gate["teacher_is_student_base"]
        assert gate["thresholds"] == {"proceed": 0.8, "rethink": 0.6, "metric": "sql_execution_match"}
        teacher = _md(result, "text2sql_teacher_data")
        assert teacher["override_teacher_gate"] is True and "overridden" in teacher["teacher_gate"]
        for key in ("teacher", "requested", "teacher_requests", "accepted_per_request", "generated", "accepted", "rejections_by_reason", "exact_duplicates",
                    "near_duplicates", "decontaminated", "sample", "accepted_path", "teacher_accepted", "augmented_accepted"):
            assert key in teacher, key
        accepted = pl.read_parquet(teacher["accepted_path"])
        assert accepted.height == teacher["accepted"]
        assert teacher["augmented_accepted"] > 0  # literal swap on: the text2sql seeds share literals
        assert set(accepted["origin"].unique()) <= {"teacher", "literal_swap"}
        assert teacher["teacher"] == "tiny-qwen3"
        assert teacher["accepted_per_request"] == pytest.approx(
            teacher["teacher_accepted"] / teacher["teacher_requests"], abs=1e-3)
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert {"accepted_minimum", "distribution_not_collapsed"} <= set(checks)
        assert checks["accepted_minimum"].passed

        student = _md(result, "text2sql_student")
        ckpt = Path(student["checkpoint_path"])
        assert ckpt.is_dir() and ckpt.parent.name == "text2sql" and run_id in str(ckpt)
        for name in ("model.safetensors", "config.json", "loss_curve.png"):
            assert (ckpt / name).exists()
        for key in ("base_model", "trainable_params", "total_params", "train_examples", "steps", "wall_time_s",
                    "tokens_per_s", "final_loss", "loss_curve"):
            assert key in student, key
        assert student["base_model"] == "tiny-qwen3" and student["steps"] == get_profile("test").max_steps
        assert student["training_launcher"] == "subprocess"  # the job ran under Dagster Pipes
        assert pl.read_parquet(student["train_rows_path"]).height == student["train_examples"]
        assert student["train_examples"] == student["seed_examples"] + student["synthetic_examples"]
        assert "data:image/png;base64," in student["loss_curve"]
        # The compute dtype and why: the test profile pins fp32 (a setting), shown on the asset.
        assert student["compute_dtype"] == "float32" and student["compute_dtype_reason"] == "set by training dtype=float32"

        evaluation = _md(result, "text2sql_student_eval")
        for key in ("score", "ci_low", "ci_high", "n", "parse_failures", "worst_items", "model"):
            assert key in evaluation, key
        # Served in the profile's dtype; the eval's variant is named after it (the cost table's student row).
        assert evaluation["compute_dtype"] == "float32" and evaluation["variant"] == "fp32"
        n_test = pl.read_parquet(result.output_for_node("text2sql")["test_path"]).height
        assert evaluation["n"] == n_test
        assert evaluation["ci_low"] <= evaluation["score"] <= evaluation["ci_high"]
        # On the test profile the teacher is the student's base: no gap to close.
        assert evaluation["gap_closed_note"] == "not defined: the teacher is the student's base model"

        store = ResultsStore()
        student_rows = store.select(predictions, run_id=run_id, stage="student_eval")
        assert len(student_rows) == n_test and {r["model"] for r in student_rows} == {evaluation["model"]}
        assert sum(r["score"] for r in student_rows) / n_test == pytest.approx(evaluation["score"])
        assert len(store.select(llm_requests, run_id=run_id, stage="student_eval")) == n_test
        from distil_platform.storage.store import student_lineage  # the checkpoint these scores belong to

        lineage = store.select(student_lineage, run_id=run_id, stage="student_eval")
        assert len(lineage) == 1 and lineage[0]["student_run_id"] == run_id and lineage[0]["use_synthetic"] is True
        assert lineage[0]["checkpoint_path"] == str(ckpt) and len(lineage[0]["checkpoint_fingerprint"]) == 64
        assert lineage[0]["variant"] == "fp32"

        baselines = _md(result, "text2sql_baseline_evals")
        assert baselines["models_evaluated"] == 1 and baselines["models_skipped"] == 0
        frontier = _md(result, "text2sql_frontier_evals")  # no API key here: every API model is listed as skipped
        assert frontier["models_evaluated"] == 0 and frontier["models_skipped"] == len(spec.comparison_models)
        assert "tiny-qwen3 (zero-shot)" in baselines["per_model"]
        base = baselines["per_model"]["tiny-qwen3 (zero-shot)"]
        assert base["n"] == n_test and base["vs_student"]["n_paired"] == n_test
        assert base["vs_student"]["margin"] == 0.07  # the task's δ, not the default
        header = baselines["comparison"].splitlines()[0]  # every model column, not just the student row's
        assert "verdict" in header and "McNemar p" in header and "student − model" in header
        base_rows = store.select(predictions, run_id=run_id, stage="baseline_evals")
        assert len(base_rows) == n_test and {r["variant"] for r in base_rows} == {"zero_shot"}
        # The teacher eval asked the same model the same requests on the same server type: the zero-shot
        # base's answers all came from the response cache, and no server was started for it.
        first_calls = [r for r in store.select(llm_requests, stage="baseline_evals") if not r["cache_hit"]]
        assert first_calls == [] and baselines["new_model_calls"] == 0
        assert len([r for r in store.select(llm_requests, stage="teacher_eval") if not r["cache_hit"]]) == n_test
        first_hits = sum(1 for r in store.select(llm_requests, stage="baseline_evals") if r["cache_hit"])
        assert first_hits == n_test

        # Rerun the baselines alone: every answer comes from the response cache, no server starts.
        rerun = dg.materialize(assets, resources=_resources(), instance=instance,
                               selection=["text2sql_baseline_evals"])
        assert rerun.success
        again = _md(rerun, "text2sql_baseline_evals")
        assert again["new_model_calls"] == 0
        after = store.select(llm_requests, stage="baseline_evals")
        assert [r for r in after if not r["cache_hit"]] == first_calls
        assert sum(1 for r in after if r["cache_hit"]) == first_hits + n_test
        assert again["per_model"]["tiny-qwen3 (zero-shot)"]["score"] == base["score"]


@pytest.mark.slow
def test_smart_home_graph_end_to_end(test_profile, tmp_path):
    spec = get_task("smart_home")
    # A recorded teacher (4 valid, new rows): a random tiny teacher accepts 0 rows, and then the
    # "every accepted row is trained on" assertions below would hold vacuously.
    recorded = Path(__file__).parent / "data" / "recorded_smart_home.jsonl"
    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        result = dg.materialize(_assets(spec), resources=_resources(), instance=instance, run_config={
            "ops": {"smart_home_teacher_data": {"config": {"source": "recorded", "recorded_path": str(recorded)}}}})
        assert result.success
        teacher = _md(result, "smart_home_teacher_data")
        assert teacher["accepted"] == 4, teacher["rejections_by_reason"]
        assert teacher["rejected"] == sum(teacher["rejections_by_reason"].values())
        student = _md(result, "smart_home_student")
        # Every accepted synthetic row is trained on, next to every seed.
        assert student["synthetic_examples"] == teacher["accepted"]
        assert student["train_examples"] == student["seed_examples"] + teacher["accepted"]
        assert Path(student["checkpoint_path"], "model.safetensors").exists()
        evaluation = _md(result, "smart_home_student_eval")
        assert "score_strict" in evaluation  # tool calling reports the strict companion metric
        n_test = evaluation["n"]
        store = ResultsStore()
        assert len(store.select(predictions, run_id=result.run_id, stage="student_eval")) == n_test
        assert len(store.select(predictions, run_id=result.run_id, stage="baseline_evals")) == n_test
        checks = {e.check_name for e in result.get_asset_check_evaluations()}
        assert {"accepted_minimum", "distribution_not_collapsed"} <= checks
