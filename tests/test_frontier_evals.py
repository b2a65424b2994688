"""``<task>_frontier_evals``: API models asked over their OpenAI-compatible endpoint with the key from
their ``api_key_env``, in the ``frontier_api`` pool; rows stored as stage ``frontier_evals`` and
paired with the student. The endpoint is a real HTTP server on loopback that answers like a model
(right on the first 8 of 12 test items)."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest
from cost_fixtures import test_rows as fixture_rows
from distil_platform.assets.evals import BaselineConfig, build_eval_assets
from distil_platform.resources import LLMResource, ResultsStoreResource
from test_teacher_endpoint import _Endpoint

from distil_platform.profiles import get_profile
from distil_platform.storage.store import ResultsStore, llm_requests, predictions
from distil_platform.tasks.prompts import format_answer
from distil_platform.tasks.spec import ModelRef, get_task

SECRET = "sk-frontier-secret-123"
KEY_ENV = "DISTIL_TEST_FRONTIER_KEY"


def _frontier(rows, spec, right: int) -> _Endpoint:
    """An OpenAI-compatible endpoint on loopback: right on the first ``right`` items, wrong after."""

    def respond(body):
        user = body["messages"][-1]["content"]
        k = next(k for k, r in enumerate(rows) if r["question"] in user)
        return (format_answer(spec, rows[k]["answer"]) if k < right else "not_a_label"), None

    return _Endpoint(respond=respond)


@pytest.fixture
def setup(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTIL_PROFILE", "test")
    spec = get_task("banking77")
    rows = fixture_rows(spec)
    frontier = _frontier(rows, spec, right=8).__enter__()
    spec = spec.model_copy(update={"frontier_temperature_0": False, "comparison_models": [
        ModelRef(model="openai/frontier-stub", api_base=frontier.base, api_key_env=KEY_ENV, tier="mid_tier",
                 temperature=0.7, repeats=2, max_tokens=16)]})
    test_path = tmp_path / "test.parquet"
    pl.DataFrame(rows).select("id", "question", "answer", "context").write_parquet(test_path)
    store = ResultsStore()
    student_run = "student-run-frontier"
    store.insert(predictions, [dict(run_id=student_run, task=spec.name, stage="student_eval", model="stu",
                                    variant="student", item_id=r["id"], repeat=0, score=float(k < 4),
                                    metric="exact_match") for k, r in enumerate(rows)])
    student_eval = {"run_id": student_run, "model": "stu", "score": 4 / 12, "ci": [0.1, 0.6]}
    yield spec, frontier, {"test_path": str(test_path)}, student_eval, store
    frontier.__exit__(None, None, None)


def _run(spec, seed_set, student_eval):
    frontier_evals = build_eval_assets(spec, get_profile("test"))[1]
    assert frontier_evals.key == dg.AssetKey("banking77_frontier_evals")
    assert frontier_evals.op.pool == "frontier_api"
    context = dg.build_asset_context()
    out = frontier_evals(context, config=BaselineConfig(), seed_set=seed_set, student_eval=student_eval,
                         llm=LLMResource(max_retries=0), results_store=ResultsStoreResource())
    return out, context.run_id


def test_frontier_model_is_asked_with_its_key_stored_and_paired(setup, monkeypatch):
    spec, frontier, seed_set, student_eval, store = setup
    monkeypatch.setenv(KEY_ENV, SECRET)
    out, run_id = _run(spec, seed_set, student_eval)
    md = {k: v.value if hasattr(v, "value") else v for k, v in out.metadata.items()}
    assert md["stage"] == "frontier_evals" and md["models_evaluated"] == 1 and md["models_skipped"] == 0
    model = md["per_model"]["openai/frontier-stub"]
    assert model["score"] == pytest.approx(8 / 12) and model["repeats"] == 2
    assert model["vs_student"]["n_paired"] == 12
    assert model["vs_student"]["diff"] == pytest.approx(4 / 12 - 8 / 12)
    assert len(frontier.auth) == 24 and set(frontier.auth) == {f"Bearer {SECRET}"}  # 12 items x 2 repeats
    rows = store.select(predictions, run_id=run_id, stage="frontier_evals")
    assert len(rows) == 24 and {r["variant"] for r in rows} == {"mid_tier"}
    assert sum(r["score"] for r in rows) == 16
    assert len(store.select(llm_requests, run_id=run_id, stage="frontier_evals")) == 24
    assert SECRET not in json.dumps(md, default=str)  # the key reaches the endpoint only


def test_a_frontier_model_without_its_key_is_skipped_and_never_called(setup, monkeypatch):
    spec, frontier, seed_set, student_eval, store = setup
    monkeypatch.delenv(KEY_ENV, raising=False)
    out, run_id = _run(spec, seed_set, student_eval)
    assert out.value["models"] == {} and out.value["skipped"] == [
        {"model": "openai/frontier-stub", "reason": f"env {KEY_ENV} not set"}]
    assert frontier.auth == [] and store.select(predictions, run_id=run_id, stage="frontier_evals") == []
