"""The benchmark report from planted cost tables: summary rows, headline, plots, missing tasks."""

from __future__ import annotations

import pytest
from cost_fixtures import plant_task
from distil_platform.assets.costs import compute_cost_table

from distil_platform.economics.pricing import build_snapshot, store_snapshot
from distil_platform.economics.report import (
    RULES,
    TaskSummary,
    headline,
    is_mid_tier,
    summarise_task,
    write_report,
)
from distil_platform.economics.stats import TEST_BINARY
from distil_platform.storage.paths import reports_dir
from distil_platform.storage.store import ResultsStore
from distil_platform.tasks.spec import get_task


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
    assert "(1 win(s), 0 non-inferior within δ = 0.02; 0 inconclusive, 1 loss(es))" in report.headline
    assert t2s.verdict_test == TEST_BINARY and t2s.margin == 0.02
    assert report.path == reports_dir() / "benchmark_report.md"
    text = report.path.read_text()
    assert report.headline in text and "Tasks without a cost table yet: trec" in text
    # The rules and the margin are stated; each verdict names its test.
    assert RULES in text and "text2sql δ = 0.02" in text
    assert f"win ({TEST_BINARY}; Δ +0.500" in text
    assert "price unknown for xai/grok-4" in text  # declared unpriced models are listed, not dropped
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


def _row(model, role, variant, accuracy, cost, **kw):
    return {"model": model, "role": role, "variant": variant, "accuracy": accuracy, "ci_low": accuracy - 0.05,
            "ci_high": accuracy + 0.05, "usd_per_million_requests": cost, "margin": 0.02, **kw}


def _verdict(verdict, diff=0.0):
    return {"verdict": verdict, "diff": diff, "ci_low": diff - 0.01, "ci_high": diff + 0.01, "test": TEST_BINARY}


def test_fp8_tying_bf16_keeps_the_task_in_the_headline_with_the_named_variants_verdict():
    bf16 = _row("s", "student", "bf16", 0.80, 3.0, verdicts={"fp8": _verdict("inconclusive", 0.0)})
    fp8 = _row("s", "student", "fp8", 0.80, 2.5, verdicts={"bf16": _verdict("inconclusive", 0.0)})
    mid = _row("m", "mid_tier", "mid_tier", 0.78, 100.0, input_usd_per_mtok=0.1, student_result="non_inferior",
               verdict_test=TEST_BINARY, diff_vs_student=0.02, diff_ci_low=-0.01, diff_ci_high=0.05,
               verdicts={"bf16": _verdict("non_inferior", 0.02), "fp8": _verdict("win", 0.03)})
    # fp8 ties bf16 in accuracy and is cheaper, but is not shown non-inferior to it: bf16 is named.
    s = summarise_task("t", [bf16, fp8, mid])
    assert s.student is bf16 and s.verdict == "non_inferior" and s.cost_ratio == pytest.approx(100 / 3.0)
    # fp8 non-inferior to bf16 and cheaper: the report names fp8 and uses fp8's own verdict.
    bf16["verdicts"] = {"fp8": _verdict("non_inferior", 0.0)}
    s = summarise_task("t", [bf16, fp8, mid])
    assert s.student is fp8 and s.verdict == "win" and s.diff == pytest.approx((0.03, 0.02, 0.04))
    assert s.cost_ratio == pytest.approx(100 / 2.5)


def test_headline_counts_non_inferior_as_matches_and_reports_inconclusive():
    def summary(task, verdict):
        return TaskSummary(task=task, student={}, mid_tier={}, mid_tier_measured=True, verdict=verdict,
                           cost_ratio=10.0, snapshot_hash=None, margin=0.02)

    text = headline([summary("a", "win"), summary("b", "non_inferior"), summary("c", "inconclusive"),
                     summary("d", "loss"), summary("e", None)])
    assert "on 2 of 4 task(s)" in text
    assert "(1 win(s), 1 non-inferior within δ = 0.02; 1 inconclusive, 1 loss(es))" in text
    assert "cheaper per request on 2 of those" in text


def test_temperature_0_run_is_reported_beside_the_benchmark_setting():
    bf16 = _row("s", "student", "bf16", 0.80, 3.0, verdicts={})
    mid = _row("m", "mid_tier", "mid_tier", 0.78, 100.0, input_usd_per_mtok=0.1, student_result="win",
               verdict_test=TEST_BINARY, diff_vs_student=0.02, diff_ci_low=0.01, diff_ci_high=0.05)
    mid_t0 = _row("m @ temperature 0", "mid_tier", "mid_tier@t0", 0.90, 100.0, input_usd_per_mtok=0.1,
                  student_result="loss", verdict_test=TEST_BINARY, diff_vs_student=-0.1, diff_ci_low=-0.15,
                  diff_ci_high=-0.05)
    s = summarise_task("t", [bf16, mid, mid_t0])
    # The headline comparison stays at the benchmark's own setting; the greedy run sits beside it.
    assert s.mid_tier is mid and s.verdict == "win"
    assert s.mid_tier_t0 is mid_t0 and s.verdict_t0 == "loss"


def test_the_report_names_both_where_the_exact_test_and_the_interval_disagree(tmp_path):
    """The student 10/12 vs flash-lite 6/12: 4 discordant pairs, all the student's. No win (exact
    McNemar p = 0.125) though the interval lies above 0: the summary cell says both."""
    from distil_platform.economics.report import summary_row

    store = ResultsStore()
    store_snapshot(store, build_snapshot(), "prices")
    plant_task(store, get_task("text2sql"), tmp_path, api_models={"gemini/gemini-2.5-flash-lite": 6})
    compute_cost_table(get_task("text2sql"), store, "t2s-table")
    report = write_report(store, ["text2sql"], reports_dir())
    s = report.summaries[0]
    assert s.verdict == "non_inferior" and "exact McNemar does not reject (p = 0.125" in s.verdict_note
    assert s.verdict_note in summary_row(s)["student vs mid-tier (test)"]
    assert s.verdict_note in report.path.read_text()
