"""Fault injection from outside (docs/reliability.md's matrix): a 429/503 storm from a loopback
OpenAI-compatible server, against the platform's real client and the real teacher stage."""

from __future__ import annotations

import json
import time

import dagster as dg
import pytest
import yaml
from distil_platform.assets.seed import build_seed_set_asset
from distil_platform.assets.teacher import build_teacher_assets
from distil_platform.resources import (
    LLMResource,
    ModelStoreResource,
    ResultsStoreResource,
    ServingResource,
    TeacherEndpointResource,
)
from openai_fake import FakeOpenAI

from distil_platform.llm import ChatRequest, LLMClient
from distil_platform.storage.store import ResultsStore
from distil_platform.tasks.spec import load_task_file, tasks_dir

# git_assistant's teacher reply: two tool-calling rows, one grounded.
REPLY = json.dumps([
    {"question": "push the release branch to upstream",
     "answer": {"name": "git_push", "parameters": {"remote": "upstream", "branch": "release"}}},
    {"question": "commit my work", "answer": {"name": "git_commit", "parameters": {"message": "Invented text"}}},
])


def test_a_429_503_storm_is_ridden_out_by_retries(tmp_path):
    """Half of all calls fail (429 or 503, Retry-After) for 2 s: every item still gets its answer,
    each asked successfully exactly once, with the client's default retry settings."""
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    with FakeOpenAI(delay_s=0.01) as fake:
        fake.storm(share=0.5, seconds=2.0)
        client = LLMClient("openai/fake", api_base=fake.api_base, concurrency=8, store=store, run_id="r1",
                           task="t", stage="eval", price_lookup=lambda model: (1e-6, 2e-6))
        t0 = time.monotonic()
        results = client.chat_batch([ChatRequest(messages=[{"role": "user", "content": f"q{i}"}], item_id=str(i))
                                     for i in range(60)])
        seconds = time.monotonic() - t0
    assert [r.text for r in results] == [f"answer: q{i}" for i in range(60)]
    assert all(r.error is None for r in results)
    assert fake.failures >= 10, fake.failures  # the storm happened
    assert fake.answered == 60  # each item answered once: retries re-ask only what failed
    assert sum(r.attempts - 1 for r in results) == fake.failures
    print(f"storm: {fake.failures} failed calls, 60/60 answered in {seconds:.1f}s")


def _spec(tmp_path, base: str):
    raw = yaml.safe_load((tasks_dir() / "git_assistant.yaml").read_text())
    raw["teacher"] = {"test": {"model": "openai/storm", "api_base": base, "tier": "teacher", "temperature": 0.8,
                               "response_format": "json_schema"}}
    path = tmp_path / "git_assistant.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_task_file(path)


def _teacher_stage(spec, llm: LLMResource, target: int):
    assets = build_seed_set_asset(spec) + build_teacher_assets(spec)
    resources = {"llm": llm, "serving": ServingResource(backend="transformers"),
                 "model_store": ModelStoreResource(), "results_store": ResultsStoreResource(),
                 "teacher_endpoint": TeacherEndpointResource()}
    return dg.materialize(assets, resources=resources, selection=[spec.name, f"{spec.name}_teacher_data"],
                          run_config={"ops": {f"{spec.name}_teacher_data": {"config": {"target": target}}}},
                          raise_on_error=False)


@pytest.fixture
def test_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTIL_PROFILE", "test")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))


def test_a_storm_past_max_error_rate_fails_the_teacher_stage(test_profile, tmp_path):
    """80% of calls fail and no retry is allowed: the teacher stage fails, naming the fault and the
    setting, instead of handing the student the rows that got through."""
    with FakeOpenAI(respond=lambda body: REPLY) as fake:
        fake.storm(share=0.8, seconds=120)
        result = _teacher_stage(_spec(tmp_path, fake.api_base), LLMResource(max_retries=0), target=40)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE"
                   and e.step_key == "git_assistant_teacher_data")
    text = str(failure.event_specific_data.error)
    assert "failed too many requests" in text and "max_error_rate" in text
    assert 0 < fake.answered < sum(fake.calls.values())  # some got through: it was a storm, not a dead endpoint
    assert not result.asset_materializations_for_node("git_assistant_teacher_data")


def test_a_storm_within_the_retries_leaves_the_teacher_stage_whole(test_profile, tmp_path):
    with FakeOpenAI(respond=lambda body: REPLY) as fake:
        fake.storm(share=0.5, seconds=1.5)
        result = _teacher_stage(_spec(tmp_path, fake.api_base), LLMResource(), target=40)
    assert result.success
    assert fake.failures > 0
    md = result.asset_materializations_for_node("git_assistant_teacher_data")[-1].metadata
    assert md["accepted"].value >= 1
