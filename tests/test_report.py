"""The benchmark report from planted cost tables: summary rows, headline, plots, missing tasks."""

from __future__ import annotations

import pytest
from cost_fixtures import plant_task

from distil_platform.assets.costs import compute_cost_table
from distil_platform.paths import reports_dir
from distil_platform.pricing import build_snapshot, store_snapshot
from distil_platform.report import is_mid_tier, summarise_task, write_report
from distil_platform.store import ResultsStore
from distil_platform.taskspec import get_task


@pytest.fixture
def store_with_tables(tmp_path):
    store = ResultsStore()
    store_snapshot(store, build_snapshot(), "prices")
    # text2sql: the student (10/12) beats gemini flash-lite (4/12) and ties haiku (10/12).
    plant_task(store, get_task("text2sql"), tmp_path)
    compute_cost_table(get_task("text2sql"), store, "t2s-table")
    # banking77: the student (3/12) loses to gemini flash-lite (12/12).
    plant_task(store, get_task("banking77"), tmp_path, student_correct=3,
               api_models={"gemini/gemini-2.5-flash-lite": 12})
    compute_cost_table(get_task("banking77"), store, "b77-table")
    return store


def test_report_summarises_tasks_with_cost_tables_and_lists_missing(store_with_tables):
    report = write_report(store_with_tables, ["text2sql", "banking77", "trec"], reports_dir())
    assert report.tasks == ["text2sql", "banking77"] and report.missing == ["trec"]
    by = {s.task: s for s in report.summaries}
    t2s = by["text2sql"]
    # Best mid-tier (< $1/MTok input) measured model is flash-lite ($0.10); haiku ($1.00) is not mid-tier.
    assert t2s.mid_tier["model"] == "gemini/gemini-2.5-flash-lite" and t2s.mid_tier_measured
    assert t2s.verdict == "win"
    assert t2s.cost_ratio == pytest.approx(102.0 / (2.40 / (3600 * 222) * 1e6))
    assert by["banking77"].verdict == "loss"
    assert "matches or beats the best mid-tier frontier model on 1 of 2 task(s)" in report.headline
    assert report.path == reports_dir() / "benchmark_report.md"
    text = report.path.read_text()
    assert report.headline in text and "Tasks without a cost table yet: trec" in text
    for task in ("text2sql", "banking77"):
        png = reports_dir() / f"{task}_cost_vs_accuracy.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
        assert f"({png.name})" in text


def test_mid_tier_without_evaluation_is_reported_with_estimated_cost_only(tmp_path):
    store = ResultsStore()
    store_snapshot(store, build_snapshot(), "prices")
    plant_task(store, get_task("text2sql"), tmp_path, api_models={})  # no API key: nothing evaluated
    compute_cost_table(get_task("text2sql"), store, "t")
    report = write_report(store, ["text2sql"], reports_dir())
    s = report.summaries[0]
    assert not s.mid_tier_measured and s.verdict is None
    assert s.mid_tier["cost_source"] == "estimated"
    # Cheapest estimated mid-tier model per request is reported, with its cost ratio.
    assert s.mid_tier["model"] in {"openai/gpt-5-nano", "gemini/gemini-2.5-flash-lite"}
    assert s.cost_ratio is not None
    assert "on 0 of 0 task(s)" in report.headline
    assert "(cost estimated)" in report.markdown


def test_is_mid_tier_uses_input_price():
    assert is_mid_tier({"role": "mid_tier", "input_usd_per_mtok": 0.99})
    assert not is_mid_tier({"role": "frontier", "input_usd_per_mtok": 1.0})
    assert not is_mid_tier({"role": "student", "input_usd_per_mtok": None})
    assert summarise_task("x", []).student is None
