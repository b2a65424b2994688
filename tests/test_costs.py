"""Cost formulas against hand-computed values, cost tables from a planted store, price sensitivity,
estimated rows for skipped frontier models, and a full re-pricing that makes zero model calls."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest
import yaml
from cost_fixtures import CACHED, COMPLETION, PROMPT, plant_task

from distil_platform.costs import (
    api_usd_per_request,
    break_even_requests_per_day,
    build_cost_table,
    gather_cost_inputs,
    latest_cost_table,
    self_hosted_usd_per_million_requests,
)
from distil_platform.pricing import DEFAULT_PRICING_FILE, build_snapshot, store_snapshot
from distil_platform.prompts import build_messages, format_answer
from distil_platform.store import ResultsStore
from distil_platform.taskspec import get_task

HAIKU = "anthropic/claude-haiku-4-5"
FLASH_LITE = "gemini/gemini-2.5-flash-lite"


def test_benchmark_self_hosted_figure():
    # The benchmark's own numbers: one H100 at $2.40/h serving 222 req/s sustained.
    assert round(self_hosted_usd_per_million_requests(2.40, 222), 2) == 3.00
    assert self_hosted_usd_per_million_requests(2.40, 222) == pytest.approx(2.40 / (3600 * 222) * 1e6)
    with pytest.raises(ValueError):
        self_hosted_usd_per_million_requests(2.40, 0)


def test_api_cost_hand_computed():
    # 800 uncached x $1/MTok + 200 cached x $0.10/MTok + 50 out x $5/MTok = $0.00107 per request.
    per_request = api_usd_per_request(1000, 50, 200, 1.00, 5.00, 0.10)
    assert per_request == pytest.approx(0.00107)
    assert per_request * 1e6 == pytest.approx(1070.0)
    assert api_usd_per_request(1000, 50, 0, 3.0, 15.0, 0.3) == pytest.approx(0.00375)


def test_break_even_volume():
    # A dedicated H100 costs 24 x 2.40 = $57.60/day; at $1070 per M requests the API costs that much
    # at 53,832 requests/day.
    assert break_even_requests_per_day(2.40, 1070.0, 3.0) == pytest.approx(57.6 / 0.00107)
    assert break_even_requests_per_day(2.40, 2.0, 3.0) is None  # API cheaper even at full load


@pytest.fixture
def planted(tmp_path):
    store = ResultsStore()
    spec = get_task("text2sql")
    info = plant_task(store, spec, tmp_path)
    return store, spec, info


def _by_model(rows):
    return {r["model"]: r for r in rows}


def _count_tokens(model, messages=None, text=None):
    import litellm

    return litellm.token_counter(model=model, messages=messages) if messages else litellm.token_counter(
        model=model, text=text)


def test_cost_table_from_store(planted):
    store, spec, info = planted
    snapshot = build_snapshot(models_needed=[r.model for r in spec.comparison_models])
    rows = build_cost_table(gather_cost_inputs(store, spec), snapshot)
    by = _by_model(rows)
    student = by[info["student"]]
    assert student["role"] == "student" and student["cost_source"] == "measured"
    assert student["usd_per_million_requests"] == pytest.approx(2.40 / (3600 * 222) * 1e6)
    assert student["accuracy"] == pytest.approx(10 / 12)
    assert student["ci_low"] <= student["accuracy"] <= student["ci_high"]
    haiku = by[HAIKU]
    assert haiku["cost_source"] == "measured" and haiku["cost_basis"] == "api"
    assert (haiku["mean_prompt_tokens"], haiku["mean_completion_tokens"], haiku["mean_cached_prompt_tokens"]) == (
        PROMPT, COMPLETION, CACHED)  # the errored request is not a usage sample
    assert haiku["usd_per_million_requests"] == pytest.approx(1070.0)
    assert haiku["cost_ratio_vs_student"] == pytest.approx(1070.0 / student["usd_per_million_requests"])
    assert haiku["break_even_requests_per_day"] == pytest.approx(57.6 / 0.00107)
    assert haiku["student_result"] == "tie" and haiku["accuracy_std"] == 0.0
    flash = by[FLASH_LITE]
    # 800 x 0.10 + 200 x 0.01 + 50 x 0.40 = 102 USD per million requests.
    assert flash["usd_per_million_requests"] == pytest.approx(102.0)
    assert flash["student_result"] == "win"  # 10/12 vs 4/12 on the same items
    zero = by["smollm2-135m-instruct (zero-shot)"]
    assert zero["role"] == "baseline" and zero["cost_source"] == "estimated"
    assert zero["usd_per_million_requests"] == pytest.approx(student["usd_per_million_requests"])
    assert all(r["snapshot_hash"] == snapshot.hash for r in rows)


def test_skipped_frontier_models_get_estimated_rows(planted):
    store, spec, info = planted
    snapshot = build_snapshot(models_needed=[r.model for r in spec.comparison_models])
    rows = build_cost_table(gather_cost_inputs(store, spec), snapshot)
    by = _by_model(rows)
    skipped = {"anthropic/claude-sonnet-4-5", "openai/gpt-5-nano"}  # in the YAML, not evaluated
    assert skipped <= set(by)
    sonnet = by["anthropic/claude-sonnet-4-5"]
    assert sonnet["cost_source"] == "estimated" and sonnet["accuracy"] is None and sonnet["n_items"] == 0
    prompts = [_count_tokens("anthropic/claude-sonnet-4-5", messages=build_messages(spec, r)) for r in info["rows"]]
    answers = [_count_tokens("anthropic/claude-sonnet-4-5", text=format_answer(spec, r["answer"])) for r in info["rows"]]
    assert sonnet["mean_prompt_tokens"] == pytest.approx(sum(prompts) / len(prompts))
    assert sonnet["mean_completion_tokens"] == pytest.approx(sum(answers) / len(answers))
    expected = (sum(prompts) / len(prompts) * 3.0 + sum(answers) / len(answers) * 15.0)
    assert sonnet["usd_per_million_requests"] == pytest.approx(expected)
    assert sonnet["student_result"] is None


def test_doubling_one_api_price_doubles_only_that_models_cost(planted, tmp_path):
    store, spec, _ = planted
    needed = [r.model for r in spec.comparison_models]
    data = yaml.safe_load(DEFAULT_PRICING_FILE.read_text())
    before = build_cost_table(gather_cost_inputs(store, spec), build_snapshot(models_needed=needed))
    for key in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok"):
        data["models"][HAIKU][key] *= 2
    path = tmp_path / "doubled.yaml"
    path.write_text(yaml.safe_dump(data))
    after = build_cost_table(gather_cost_inputs(store, spec), build_snapshot(path, needed))
    b, a = _by_model(before), _by_model(after)
    assert a[HAIKU]["usd_per_million_requests"] == pytest.approx(2 * b[HAIKU]["usd_per_million_requests"])
    assert a[HAIKU]["cost_ratio_vs_student"] == pytest.approx(2 * b[HAIKU]["cost_ratio_vs_student"])
    assert a[HAIKU]["break_even_requests_per_day"] == pytest.approx(b[HAIKU]["break_even_requests_per_day"] / 2)
    changed_cols = {"usd_per_million_requests", "cost_ratio_vs_student", "break_even_requests_per_day",
                    "input_usd_per_mtok", "output_usd_per_mtok", "snapshot_hash"}
    for model, row in b.items():
        for col, value in row.items():
            if col == "snapshot_hash" or (model == HAIKU and col in changed_cols):
                continue
            assert a[model][col] == value, (model, col)


def test_cpu_student_without_sustained_rate_is_priced_at_max_throughput_as_estimate(tmp_path):
    store = ResultsStore()
    spec = get_task("text2sql")
    plant_task(store, spec, tmp_path, sustained_rps=0.0, max_achieved_rps=0.5, hardware_key="cpu-2core")
    rows = build_cost_table(gather_cost_inputs(store, spec), build_snapshot())
    student = next(r for r in rows if r["role"] == "student")
    assert student["cost_source"] == "estimated" and "SLO" in student["cost_note"]
    # $0.10/h for a 2-core instance at 0.5 req/s.
    assert student["usd_per_million_requests"] == pytest.approx(0.10 / (3600 * 0.5) * 1e6)
    assert student["hardware_key"] == "cpu-2core"


# -- Dagster: full re-pricing makes zero model calls ------------------------------------------
class _Calls:
    def __init__(self):
        self.n = 0


@pytest.fixture
def model_call_counter(monkeypatch):
    """Counts (and refuses) every way this code base could reach a model."""
    import aiohttp
    import httpx
    import litellm

    from distil_platform import serving

    calls = _Calls()

    def refuse(*args, **kwargs):
        calls.n += 1
        raise AssertionError("a model was called during re-pricing")

    for name in ("completion", "acompletion", "text_completion", "atext_completion"):
        monkeypatch.setattr(litellm, name, refuse)
    monkeypatch.setattr(httpx.Client, "send", refuse)
    monkeypatch.setattr(httpx.AsyncClient, "send", refuse)
    monkeypatch.setattr(aiohttp.ClientSession, "_request", refuse)  # the LLM client's fast path
    monkeypatch.setattr(serving, "serve", refuse)
    return calls


def test_full_repricing_of_materialised_tasks_makes_zero_model_calls(tmp_path, model_call_counter, monkeypatch):
    from distil_platform.assets.costs import build_shared_cost_assets, build_task_cost_assets
    from distil_platform.resources.store import ResultsStoreResource

    store = ResultsStore()
    specs = [get_task("text2sql"), get_task("banking77")]
    for spec in specs:
        plant_task(store, spec, tmp_path, api_models={r.model: 6 for r in spec.comparison_models[:2]})
    assets = []
    for spec in specs:
        assets += [a for a in build_task_cost_assets(spec) if a.key.path[0].endswith("_cost_table")]
    assets += build_shared_cost_assets([s.name for s in specs])
    result = dg.materialize(assets, resources={"results_store": ResultsStoreResource()})
    assert result.success
    assert model_call_counter.n == 0
    for spec in specs:
        rows = latest_cost_table(store, spec.name)
        assert rows and all(r["snapshot_hash"] for r in rows)
        mats = result.asset_materializations_for_node(f"{spec.name}_cost_table")
        md = mats[0].metadata
        assert md["model_calls"].value == 0
        df = pl.read_parquet(md["parquet_path"].value)
        assert df.height == len(rows)
        assert pl.read_csv(md["csv_path"].value).height == len(rows)

    # Re-price after a price edit: only the store is read; the haiku rows change, nothing is called.
    data = yaml.safe_load(DEFAULT_PRICING_FILE.read_text())
    data["models"][HAIKU]["output_per_mtok"] = 50.0
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DISTIL_PRICING_FILE", str(edited))
    before = {r["model"]: r for r in latest_cost_table(store, "text2sql")}
    result = dg.materialize(assets, resources={"results_store": ResultsStoreResource()})
    assert result.success and model_call_counter.n == 0
    after = {r["model"]: r for r in latest_cost_table(store, "text2sql")}
    assert after[HAIKU]["usd_per_million_requests"] > before[HAIKU]["usd_per_million_requests"]
    assert after[HAIKU]["snapshot_hash"] != before[HAIKU]["snapshot_hash"]
    report = json.dumps(result.asset_materializations_for_node("benchmark_report")[0].metadata["report"].value)
    assert "text2sql" in report and "banking77" in report


def test_invalid_pricing_fails_the_run_and_keeps_the_previous_snapshot(tmp_path, monkeypatch):
    from distil_platform.assets.costs import build_shared_cost_assets
    from distil_platform.pricing import current_snapshot
    from distil_platform.resources.store import ResultsStoreResource

    store = ResultsStore()
    good = build_snapshot()
    store_snapshot(store, good, "earlier")
    data = yaml.safe_load(DEFAULT_PRICING_FILE.read_text())
    data["models"][HAIKU]["input_per_mtok"] = "free"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DISTIL_PRICING_FILE", str(bad))
    pricing = build_shared_cost_assets([])[0]
    result = dg.materialize([pricing], resources={"results_store": ResultsStoreResource()}, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert f"models.{HAIKU}.input_per_mtok" in failure and str(bad) in failure
    assert current_snapshot(store).hash == good.hash


def test_cost_table_ci_is_the_student_eval_ci():
    """The report and cost table must show the interval `<task>_student_eval` showed for the
    same scores, whatever order the store returns items in."""
    from distil_platform.costs import EvaluatedModel, _summary
    from distil_platform.evaluation import ItemResult, summarize

    scores = {f"q{i:02d}": float(i % 3 == 0) for i in range(40)}
    results = [ItemResult(item_id=k, repeat=0, prediction="p", reference="r", score=v, score_strict=v, parse_ok=True)
               for k, v in reversed(scores.items())]
    model = EvaluatedModel(label="student", role="student", variant="bf16", run_id="r1",
                           scores={k: [v] for k, v in scores.items()})
    evaluated, tabled = summarize(results), _summary(model)
    assert evaluated.score == pytest.approx(tabled["accuracy"])
    assert (evaluated.ci_low, evaluated.ci_high) == (tabled["ci_low"], tabled["ci_high"])
    assert evaluated.ci_low < evaluated.score < evaluated.ci_high
