"""The metrics on the public benchmark data in ../shared/benchmark (skipped when absent).

Every reference answer must score 1.0 against itself, and every text2sql reference must execute
on its own schema.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from distil_platform.evaluation.scoring import (
    exact_match,
    score_prediction,
    split_schema_question,
    sql_execution_match,
    sql_reference_error,
    token_f1,
    tool_call_equivalence,
    tool_call_staged,
    tool_call_strict,
)
from distil_platform.tasks.spec import TaskSpec

pytestmark = pytest.mark.shared

TOOL_TASKS = {
    "smart_home": "distil-labs__distil-smart-home/slm-finetuning/data",
    "git_assistant": "rampallishyam__distil-gitara/finetuning/data",
}
TEXT2SQL = "distil-labs__distil-text2sql/finetuning/data"
CLASSIFICATION = {
    "banking77": "distil-labs__distil-labs-examples/classification-tutorial/data-banking-routing",
    "ecommerce": "distil-labs__distil-labs-examples/classification-tutorial/data-ecommerce",
}
HOTPOTQA = "distil-labs__distil-labs-examples/question-answering-tutorial/data"
DOCSTRINGS = "distil-labs__distil-localdoc.py/finetuning/data"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("task", sorted(TOOL_TASKS))
def test_tool_call_references_score_one(shared_benchmark, task):
    folder = shared_benchmark / TOOL_TASKS[task]
    tools = json.loads((folder / "job_description.json").read_text())["tools"]
    spec = TaskSpec(name=task, type="tool_calling", description="d", tools=tools)
    rows = _jsonl(folder / "train.jsonl") + _jsonl(folder / "test.jsonl")
    assert len(rows) >= 90
    for row in rows:
        answer = row["answer"]
        assert tool_call_equivalence(answer, answer, tools) == 1.0, answer
        assert tool_call_strict(answer, answer, tools) == 1.0, answer
        assert tool_call_staged(answer, answer, tools) == 1.0, answer
        item = score_prediction(spec, answer, {"question": row["question"], "answer": answer, "context": ""})
        assert (item.score, item.strict, item.parse_ok) == (1.0, 1.0, True)


def test_text2sql_references_execute_and_score_one(shared_benchmark):
    folder = shared_benchmark / TEXT2SQL
    rows = _jsonl(folder / "train.jsonl") + _jsonl(folder / "test.jsonl")
    assert len(rows) == 100
    failures = []
    start = time.perf_counter()
    for row in rows:
        schema, question = split_schema_question(row["question"])
        assert schema.startswith("CREATE TABLE") and question
        error = sql_reference_error(row["answer"], schema)
        if error:
            failures.append(f"{row['answer']}: {error}")
        elif sql_execution_match(row["answer"], row["answer"], schema, suite=False) != 1.0:
            failures.append(f"{row['answer']}: does not match itself")
    elapsed = time.perf_counter() - start
    assert failures == [], "text2sql references that do not execute:\n" + "\n".join(failures)
    assert elapsed < 5.0, f"100 references x2 took {elapsed:.2f}s"


def test_text2sql_detects_wrong_filters_on_public_schemas(shared_benchmark):
    rows = _jsonl(shared_benchmark / TEXT2SQL / "test.jsonl")
    checked = caught = 0
    for row in rows:
        ref = row["answer"].rstrip(";")
        if "WHERE" not in ref or "'" not in ref:
            continue
        schema, _ = split_schema_question(row["question"])
        literal = ref.split("'")[1]
        wrong = ref.replace(f"'{literal}'", f"'{literal}_other'", 1)
        checked += 1
        caught += sql_execution_match(wrong, ref, schema) == 0.0
    assert checked >= 8 and caught == checked


@pytest.mark.parametrize("task", sorted(CLASSIFICATION))
def test_classification_references_score_one(shared_benchmark, task):
    folder = shared_benchmark / CLASSIFICATION[task]
    rows = _csv(folder / "train.csv") + _csv(folder / "test.csv")
    labels = json.loads((folder / "job_description.json").read_text())["classes_description"]
    spec = TaskSpec(name=task, type="classification", description="d", labels=labels)
    for row in rows:
        assert row["answer"] in labels
        assert exact_match(row["answer"], row["answer"]) == 1.0
        assert exact_match(json.dumps({"label": row["answer"]}), row["answer"]) == 1.0
        assert score_prediction(spec, row["answer"].upper() + ".", row).parse_ok


def test_open_book_and_docstring_references_score_one(shared_benchmark):
    rows = _csv(shared_benchmark / HOTPOTQA / "test.csv") + _jsonl(
        shared_benchmark / DOCSTRINGS / "test.jsonl"
    )
    spec = TaskSpec(name="qa", type="open_book_qa", description="d")
    for row in rows:
        assert token_f1(row["answer"], row["answer"]) == 1.0
        item = score_prediction(spec, row["answer"], row)
        assert (item.score, item.detail) == (1.0, "fallback:token_f1")
