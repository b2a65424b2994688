"""The summary `make run` prints at its end: the numbers a newcomer needs, from one cost table."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from distil_platform.run_summary import format_summary

STUDENT = {"role": "student", "model": "text2sql-student-abc12345", "variant": "fp32", "metric": "sql_execution_match",
           "accuracy": 0.26, "n_items": 50, "ci_low": 0.159, "ci_high": 0.396, "sustained_rps": 4.0,
           "usd_per_million_requests": 6.94, "cost_source": "measured"}
ZERO = {"role": "baseline", "model": "smollm2-135m-instruct (zero-shot)", "variant": "zero_shot", "accuracy": 0.04,
        "n_items": 50, "ci_low": 0.011, "ci_high": 0.135, "diff_vs_student": 0.22, "diff_ci_low": 0.09,
        "diff_ci_high": 0.35, "mcnemar_p": 0.0018, "verdict_test": "exact McNemar", "student_result": "win"}


def test_summary_states_scores_verdict_rate_cost_and_where_to_look():
    text = format_summary("text2sql", [STUDENT, ZERO], steps=[("text2sql_student", 185.2), ("text2sql", 4.0),
                                                              ("text2sql_rows_valid", 0.3)],
                          run_wall_s=512.0, report_path="/h/reports/benchmark_report.md")
    assert "26.0% (13/50) [15.9%, 39.6%]" in text and "(fp32)" in text
    assert "4.0% (2/50)" in text
    assert "+22.0 points [+9.0, +35.0], p = 0.0018, exact McNemar: **win**" in text
    assert "sustained 4 req/s" in text and "$6.94 per million requests (measured)" in text
    assert "text2sql_student 3m05s, text2sql 4s (+1 steps < 1s); run 8m32s" in text
    assert "/h/reports/benchmark_report.md" in text and "make ui" in text
    assert "no API keys" in text  # no frontier row: says how to get one


def test_summary_without_a_sustained_rate_or_a_table_says_so():
    unpriced = {**STUDENT, "sustained_rps": None, "usd_per_million_requests": None}
    assert "no sustained rate measured; unpriced" in format_summary("t", [unpriced])
    assert "no cost table for t yet" in format_summary("t", [])


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_prints_the_summary_after_materialising():
    root = Path(__file__).resolve().parents[1]
    plan = subprocess.run(["make", "-n", "-B", "run"], cwd=root, capture_output=True, text=True, timeout=60,
                          check=True).stdout
    lines = plan.splitlines()
    materialise = next(i for i, line in enumerate(lines) if "asset materialize" in line)
    assert any(re.search(r"-m distil_platform\.run_summary text2sql", line) for line in lines[materialise + 1:])


def test_summary_states_the_teacher_gate_and_the_gap_closed():
    gated = {**STUDENT, "teacher_model": "smollm2-135m-instruct", "teacher_accuracy": 0.04, "teacher_ci_low": 0.011,
             "teacher_ci_high": 0.135, "gap_closed_note": "not defined: the teacher is the student's base model",
             "teacher_gate": "seed-only: the teacher failed its gate (0.040 < 0.6, sql_execution_match)"}
    text = format_summary("text2sql", [gated, ZERO])
    assert ("teacher   smollm2-135m-instruct: 4.0% [1.1%, 13.5%]; gap closed not defined: the teacher is the "
            "student's base model") in text
    assert "teacher data: seed-only: the teacher failed its gate (0.040 < 0.6, sql_execution_match)" in text
    assert "teacher " not in format_summary("text2sql", [STUDENT, ZERO])  # a table from before the gate
