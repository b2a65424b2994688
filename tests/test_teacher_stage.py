"""``<task>_teacher_data`` wiring that needs no model: the recorded-teacher source through Dagster
(typed metadata, accepted parquet), teacher endpoint/key resolution, and the failed-teacher error."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from distil_platform.assets.seed import build_seed_set_asset
from distil_platform.assets.teacher import (
    TEACHER_API_KEY_ENV,
    build_teacher_assets,
    check_teacher_answered,
    resolve_teacher,
    teacher_source,
)
from distil_platform.resources import (
    LLMResource,
    ModelStoreResource,
    ResultsStoreResource,
    ServingResource,
    TeacherEndpointResource,
)

from distil_platform.profiles import get_profile
from distil_platform.tasks.spec import ModelRef, load_task_file, tasks_dir
from distil_platform.teacher.synthesis import SynthesisReport

FIXTURE = Path(__file__).parent / "data" / "recorded_git_assistant.jsonl"


def _spec(task):
    return load_task_file(tasks_dir() / f"{task}.yaml")


def test_recorded_teacher_through_the_asset_with_typed_metadata(monkeypatch):
    monkeypatch.setenv("DISTIL_PROFILE", "test")
    spec = _spec("git_assistant")
    assets = build_seed_set_asset(spec) + build_teacher_assets(spec)
    resources = {"llm": LLMResource(), "serving": ServingResource(backend="transformers"),
                 "model_store": ModelStoreResource(), "results_store": ResultsStoreResource(),
                 "teacher_endpoint": TeacherEndpointResource()}
    result = dg.materialize(
        assets, resources=resources, selection=["git_assistant", "git_assistant_teacher_data"],
        run_config={"ops": {"git_assistant_teacher_data": {"config": {
            "source": "recorded", "recorded_path": str(FIXTURE)}}}},
    )
    assert result.success
    md = result.asset_materializations_for_node("git_assistant_teacher_data")[-1].metadata
    assert md["source"].value == "recorded" and md["structured_output"].value is False
    assert md["accepted"].value == 3 and md["schema_valid"].value == 8
    assert md["rejected"].value == sum(md["rejections_by_reason"].value.values()) == 4
    assert md["rejected_by_grounded_arguments"].value == 1
    funnel = md["funnel"].value
    assert {c.name: c.type for c in funnel.schema.columns} == {"step": "string", "rows": "int"}
    assert [r.data["rows"] for r in funnel.records] == [10, 10, 8, 7, 6, 6, 4, 3, 3]  # .., grounded, enum consistency, ..
    sample = md["sample"].value
    assert {"origin", "status", "verdicts"} <= {c.name for c in sample.schema.columns}
    statuses = {r.data["status"].split(":")[0].split(" (")[0] for r in sample.records}
    assert {"accepted", "invalid", "rejected", "duplicate", "contaminated"} <= statuses
    dist = md["distribution_table"].value
    assert {c.name: c.type for c in dist.schema.columns} == {"class": "string", "count": "int", "share": "float"}
    accepted = pl.read_parquet(md["accepted_path"].value)
    assert accepted.height == 3 and set(accepted["origin"]) == {"recorded"}
    assert all("question_sanity=pass" in v for v in accepted["verdicts"])


def test_teacher_source_per_profile_and_override():
    spec = _spec("git_assistant")
    assert teacher_source(spec, get_profile("local"), None) == "teacher"
    assert teacher_source(spec, get_profile("local"), "recorded") == "recorded"
    assert teacher_source(spec, get_profile("local"), "self_training") == "self_training"
    with pytest.raises(ValueError, match="teacher, recorded or self_training"):
        teacher_source(spec, get_profile("local"), "oracle")


def test_teacher_endpoint_and_key_come_from_env_and_never_reach_a_local_model(monkeypatch):
    spec = _spec("text2sql")
    gpu = get_profile("gpu")
    monkeypatch.delenv("DISTIL_TEACHER_API_BASE", raising=False)
    monkeypatch.delenv(TEACHER_API_KEY_ENV, raising=False)
    with pytest.raises(RuntimeError, match="DISTIL_TEACHER_API_BASE"):
        resolve_teacher(spec, gpu)
    monkeypatch.setenv("DISTIL_TEACHER_API_BASE", "http://teacher.internal/v1")
    ref = resolve_teacher(spec, gpu)
    assert ref.api_base == "http://teacher.internal/v1" and ref.api_key_env is None
    monkeypatch.setenv(TEACHER_API_KEY_ENV, "sk-teacher")
    ref = resolve_teacher(spec, gpu)
    assert ref.api_key_env == TEACHER_API_KEY_ENV
    assert "sk-teacher" not in ref.model_dump_json()  # the name of the env var, never the key
    local = resolve_teacher(spec, get_profile("local"))  # a model-store teacher: served here, no key
    assert local.api_key_env is None and local.api_base is None
    named = spec.model_copy(update={"teacher": {"gpu": ModelRef(model="openai/x", api_base="http://h/v1",
                                                                api_key_env="MY_TEACHER_KEY")}})
    monkeypatch.delenv("MY_TEACHER_KEY", raising=False)
    with pytest.raises(RuntimeError, match="MY_TEACHER_KEY"):
        resolve_teacher(named, gpu)


def _report(n_requests, failed):
    from collections import Counter

    return SynthesisReport(accepted=[], requested=4 * n_requests, n_requests=n_requests, generated=0,
                           rejections=Counter(), exact_duplicates=0, near_duplicates=0, seed_duplicates=0,
                           decontaminated=0, failed_requests=failed)


def test_a_teacher_that_answers_nothing_fails_the_stage_with_its_error():
    with pytest.raises(dg.Failure, match="answered none of its 3 requests.*Connection refused"):
        check_teacher_answered("text2sql", "openai/t", _report(3, 3), ["", "APIConnectionError: Connection refused"])
    check_teacher_answered("text2sql", "openai/t", _report(3, 2), [])  # partial answers: rows get judged
    check_teacher_answered("text2sql", "openai/t", _report(0, 0), [])  # target 0: nothing asked


def test_teacher_endpoint_resource_supplies_endpoint_and_key(monkeypatch):
    """The resource (fed by dg.EnvVar in the Definitions) is the source; the key is used, never copied."""
    spec = _spec("text2sql")
    monkeypatch.delenv("DISTIL_TEACHER_API_BASE", raising=False)
    monkeypatch.delenv(TEACHER_API_KEY_ENV, raising=False)
    endpoint = TeacherEndpointResource(api_base="http://teacher.internal/v1", api_key="sk-resource")
    ref = resolve_teacher(spec, get_profile("gpu"), endpoint)
    assert ref.api_base == "http://teacher.internal/v1" and ref.api_key_env == TEACHER_API_KEY_ENV
    assert "sk-resource" not in ref.model_dump_json() and "sk-resource" not in repr(endpoint)
    with pytest.raises(RuntimeError, match="DISTIL_TEACHER_API_BASE"):
        resolve_teacher(spec, get_profile("gpu"), TeacherEndpointResource())


def test_definitions_feed_the_teacher_endpoint_from_env_vars(monkeypatch):
    monkeypatch.setenv("DISTIL_TEACHER_API_BASE", "http://teacher.internal/v1")
    monkeypatch.setenv(TEACHER_API_KEY_ENV, "sk-secret")
    from distil_platform.definitions import build_definitions

    resource = build_definitions().resources["teacher_endpoint"]
    assert isinstance(resource.api_key, dg.EnvVar) and resource.api_key.env_var_name == TEACHER_API_KEY_ENV
    assert isinstance(resource.api_base, dg.EnvVar)
