"""Only successful materialisations are priced (issue 30, docs/reliability.md): a run that fails after
writing some rows leaves them in the results store, and the cost table, routing and report re-priced
afterwards are exactly those of the last successful materialisations.

A real Dagster sequence on one instance (the `test` profile): the real ``<task>_frontier_evals``
asking two models on loopback OpenAI-compatible servers, the real ``<task>_cost_table``,
``<task>_routing``, ``pricing`` and ``benchmark_report``. The seed set, student eval and throughput
profile are stand-in assets under the real keys that write what the real stages write (predictions,
lineage, profile rows) without serving a model. Faults come from outside the platform: a frontier
endpoint that answers 500 to everything, and stand-in steps that die after writing their rows (as
the real eval dies between its predictions and its lineage, or a load test after its profile rows).
"""

# No `from __future__ import annotations`: Dagster reads the stand-ins' context annotations at runtime.

import os
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from cost_fixtures import test_rows as fixture_rows
from distil_platform.assets.costs import build_shared_cost_assets, build_task_cost_assets
from distil_platform.assets.evals import build_eval_assets
from distil_platform.assets.keys import cost_table_key, task_key, throughput_key
from distil_platform.assets.published import store_run_id_metadata
from distil_platform.assets.routing import build_routing_asset
from distil_platform.resources import LLMResource, ResultsStoreResource
from openai_fake import FakeOpenAI

from distil_platform.economics.costs import latest_cost_table
from distil_platform.economics.routing_io import latest_routing
from distil_platform.profiles import get_profile
from distil_platform.storage.lineage import record_student_lineage
from distil_platform.storage.store import (
    ResultsStore,
    llm_requests,
    predictions,
    seed_sets,
    throughput_profiles,
)
from distil_platform.tasks.prompts import format_answer
from distil_platform.tasks.spec import ModelRef, get_task

KEY_ENV = "DISTIL_TEST_PUBLISHED_KEY"
NANO, MINI = "openai/gpt-5-nano", "openai/gpt-5-mini"  # priced in the shipped pricing file
STUDENT = "banking77-student-train-1"


def _answering(spec, rows, right: int) -> FakeOpenAI:
    """A loopback model right on the first ``right`` test items, wrong after."""

    def respond(body):
        user = body["messages"][-1]["content"]
        k = next(k for k, r in enumerate(rows) if r["question"] in user)
        return format_answer(spec, rows[k]["answer"]) if k < right else "not_a_label"

    return FakeOpenAI(respond=respond)


def _spec(nano: FakeOpenAI, mini: FakeOpenAI):
    refs = [ModelRef(model=NANO, api_base=nano.api_base, api_key_env=KEY_ENV, tier="mid_tier", max_tokens=16),
            ModelRef(model=MINI, api_base=mini.api_base, api_key_env=KEY_ENV, tier="mid_tier", max_tokens=16)]
    return get_task("banking77").model_copy(update={"comparison_models": refs, "frontier_temperature_0": False})


def _stand_ins(spec, faults: dict) -> list:
    """Seed set, student eval and throughput under the real keys, writing what the real stages write.
    ``faults``: "student_eval" dies after its predictions (before its lineage); "no_lineage" succeeds
    without a lineage row (an eval from before lineage was recorded); "throughput" dies after its
    profile rows; "rps": the sustained rate this throughput run measures."""
    task = spec.name
    rows = fixture_rows(spec)

    @dg.asset(key=dg.AssetKey(task))
    def seed_set(context: dg.AssetExecutionContext) -> dict:
        path = Path(os.environ["DAGSTER_HOME"]) / f"{task}_test.parquet"
        pl.DataFrame(rows).select("id", "question", "answer", "context").write_parquet(path)
        ResultsStore().insert(seed_sets, [dict(task=task, run_id=context.run_id, source="sample", n_seed=0,
                                               n_test=len(rows), seed_path=str(path), test_path=str(path),
                                               content_hash="x")])
        return {"test_path": str(path)}

    @dg.asset(key=task_key(task, "student_eval"), ins={"seed_set": dg.AssetIn(dg.AssetKey(task))})
    def student_eval(context: dg.AssetExecutionContext, seed_set: dict) -> dg.Output:
        store = ResultsStore()
        right = faults.get("student_right", 9)
        store.insert(predictions, [dict(run_id=context.run_id, task=task, stage="student_eval", model=STUDENT,
                                        variant="student", item_id=str(r["id"]), repeat=0, score=float(k < right),
                                        metric="exact_match", confidence=0.9 if k < right else 0.2)
                                   for k, r in enumerate(rows)])
        if faults.get("student_eval"):
            raise RuntimeError("injected: the eval step died after writing its predictions")
        if not faults.get("no_lineage"):
            record_student_lineage(store, task=task, stage="student_eval", run_id=context.run_id, model=STUDENT,
                                   student={"run_id": "train-1", "use_synthetic": True}, variant="bf16")
        return dg.Output({"run_id": context.run_id, "model": STUDENT, "score": right / len(rows), "ci": [0.4, 0.9]},
                         metadata=store_run_id_metadata(context.run_id))

    @dg.asset(key=throughput_key(task), deps=[task_key(task, "student_eval")])
    def throughput(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        store = ResultsStore()
        store.insert(throughput_profiles, [dict(run_id=context.run_id, task=task, model=STUDENT, variant="bf16",
                                                backend="vllm", hardware="1x NVIDIA H100 80GB HBM3",
                                                hardware_key="h100", sustained_rps=faults.get("rps", 222.0),
                                                max_achieved_rps=250.0, slo_s=1.0, peak_memory_gb=20.0)])
        record_student_lineage(store, task=task, stage="throughput", run_id=context.run_id, model=STUDENT,
                               student={"run_id": "train-1", "use_synthetic": True}, variant="bf16")
        if faults.get("throughput"):
            raise RuntimeError("injected: the load test died after writing its profile rows")
        return dg.MaterializeResult(metadata=store_run_id_metadata(context.run_id))

    return [seed_set, student_eval, throughput]


def _graph(spec, faults: dict) -> list:
    frontier = build_eval_assets(spec, get_profile("test"))[1]
    assert frontier.key == task_key(spec.name, "frontier_evals")
    cost = [a for a in build_task_cost_assets(spec) if a.key == cost_table_key(spec.name)]
    return [*_stand_ins(spec, faults), frontier, *cost, *build_routing_asset(spec),
            *build_shared_cost_assets([spec.name])]


def _run(assets, instance, selection=None):
    resources = {"results_store": ResultsStoreResource(), "llm": LLMResource(max_retries=0)}
    return dg.materialize(assets, resources=resources, instance=instance, selection=selection,
                          raise_on_error=False)


def _table(store, task) -> dict[str, dict]:
    """The cost table by model, without what differs between two computations of the same table."""
    return {r["model"]: {k: v for k, v in r.items() if k != "table_id"} for r in latest_cost_table(store, task)}


def _routing(store, task) -> dict:
    return {k: v for k, v in latest_routing(store, task).items() if k != "cost_table_id"}


def _report(result) -> str:
    return result.asset_materializations_for_node("benchmark_report")[0].metadata["report"].value


@pytest.fixture
def endpoints(monkeypatch):
    monkeypatch.setenv("DISTIL_PROFILE", "test")
    monkeypatch.setenv(KEY_ENV, "sk-test")
    rows = fixture_rows(get_task("banking77"))
    spec = get_task("banking77")
    with _answering(spec, rows, 10) as nano, _answering(spec, rows, 6) as mini, FakeOpenAI() as down:
        down.storm(1.0, 3600, statuses=(500,))  # answers 500 to everything
        yield nano, mini, down


def test_a_run_that_fails_after_writing_rows_is_never_priced(endpoints):
    nano, mini, down = endpoints
    spec = _spec(nano, mini)
    task = spec.name
    faults: dict = {}
    store = ResultsStore()
    everything = [cost_table_key(task), task_key(task, "routing"), dg.AssetKey("benchmark_report")]
    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        # (1) Everything succeeds: the cost table C1, its routing and report.
        first = _run(_graph(spec, faults), instance)
        assert first.success
        c1, r1, report1 = _table(store, task), _routing(store, task), _report(first)
        assert set(c1) == {STUDENT, NANO, MINI} and c1[MINI]["cost_source"] == "measured"
        assert c1[NANO]["accuracy"] == pytest.approx(10 / 12) and c1[MINI]["accuracy"] == pytest.approx(6 / 12)

        # (2) T_frontier_evals again, with gpt-5-mini's endpoint answering 500 to everything: gpt-5-nano
        # (asked first, from the cache) writes its rows, then the step fails.
        failing = _spec(nano, down)
        frontier_run = _run(_graph(failing, faults), instance, [task_key(task, "frontier_evals")])
        assert not frontier_run.success
        written = store.select(predictions, task=task, stage="frontier_evals", run_id=frontier_run.run_id)
        assert {r["model"] for r in written} == {NANO} and len(written) == 12
        errors = store.select(llm_requests, task=task, model=MINI, run_id=frontier_run.run_id)
        assert errors and all(r["error"] for r in errors) and down.failures >= len(errors)

        # (3) T_throughput dies after writing a profile 4.5x faster than the one measured.
        faults.update(throughput=True, rps=999.0)
        throughput_run = _run(_graph(spec, faults), instance, [throughput_key(task)])
        assert not throughput_run.success
        assert store.select(throughput_profiles, task=task, run_id=throughput_run.run_id)

        # (4) T_student_eval dies after writing predictions of a worse student, before its lineage.
        faults.update(throughput=False, student_eval=True, student_right=2)
        eval_run = _run(_graph(spec, faults), instance, [task_key(task, "student_eval")])
        assert not eval_run.success
        assert len(store.select(predictions, task=task, stage="student_eval", run_id=eval_run.run_id)) == 12

        # (5) Re-price: T_cost_table alone, then routing and the report. Same models, same numbers,
        # nobody "skipped"; the failed runs' rows are still in the store, named as not priced.
        reprice = _run(_graph(spec, faults), instance, [cost_table_key(task)])
        assert reprice.success
        assert _table(store, task) == c1
        md = reprice.asset_materializations_for_node(f"{task}_cost_table")[0].metadata
        assert md["ignored_runs"].value == {"frontier_evals": [frontier_run.run_id],
                                            "throughput": [throughput_run.run_id],
                                            "student_eval": [eval_run.run_id]}
        assert md["store_run_id"].value == reprice.run_id
        rest = _run(_graph(spec, faults), instance, everything[1:])
        assert rest.success
        assert _routing(store, task) == r1
        assert _report(rest) == report1
        for run in (frontier_run, eval_run):
            assert store.select(predictions, task=task, run_id=run.run_id)
        assert store.select(throughput_profiles, task=task, run_id=throughput_run.run_id)

        # The store's newest rows are the failed runs': a table computed from them (offline, without
        # Dagster's record) is what the old rule published. Routing and the report do not read it.
        from distil_platform.assets.costs import compute_cost_table

        compute_cost_table(spec, store, "offline-newest-rows")
        newest = {r["model"]: r for r in latest_cost_table(store, task)}
        assert newest[STUDENT]["table_id"] == "offline-newest-rows"
        assert newest[MINI]["cost_source"] == "estimated" and newest[STUDENT]["sustained_rps"] == 999.0
        assert newest[STUDENT]["accuracy"] == pytest.approx(2 / 12)
        again = _run(_graph(spec, faults), instance, everything[1:])
        assert again.success and _routing(store, task) == r1 and _report(again) == report1


def test_a_successful_student_eval_without_lineage_fails_the_cost_table_naming_the_run(endpoints):
    nano, mini, _down = endpoints
    spec = _spec(nano, mini)
    task = spec.name
    faults: dict = {}
    store = ResultsStore()
    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        assert _run(_graph(spec, faults), instance).success
        before = _table(store, task)
        # An eval that materialised but recorded no lineage (written by a platform before lineage):
        # whether it measured the distilled student or the seed-only ablation is unknown.
        faults.update(no_lineage=True)
        legacy = _run(_graph(spec, faults), instance, [task_key(task, "student_eval")])
        assert legacy.success
        failed = _run(_graph(spec, faults), instance, [cost_table_key(task)])
        assert not failed.success
        message = failed.get_step_failure_events()[0].step_failure_data.error.cause.message
        assert legacy.run_id in message and "no lineage record" in message
        assert _table(store, task) == before  # the last successful table stays what readers see
