"""Row validation per task type, leakage, and the quality of the shipped samples."""

from __future__ import annotations

import ast
import json
import re

import polars as pl
import pytest
from rapidfuzz import fuzz

from distil_platform.tasks.sources import load_seed_and_test
from distil_platform.tasks.spec import get_task, load_tasks
from distil_platform.tasks.validation import (
    REASON_FIELD,
    canonical_tool_call,
    find_overlaps,
    normalise_text,
    validate_frame,
    validate_row,
)

TASKS = sorted(load_tasks())


@pytest.fixture(scope="module")
def samples():
    return {name: load_seed_and_test(get_task(name), source="sample") for name in TASKS}


def _first(samples, task: str) -> dict:
    return samples[task].seed.row(0, named=True)


# -- the shipped samples ----------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_every_shipped_sample_row_is_valid_and_unique(samples, task):
    spec, data = get_task(task), samples[task]
    assert validate_frame(spec, data.seed) == []
    assert validate_frame(spec, data.test) == []
    assert find_overlaps(data.seed, data.test) == []
    for frame in (data.seed, data.test):
        assert frame["id"].n_unique() == frame.height
    assert set(data.seed["id"]).isdisjoint(set(data.test["id"]))


def _comparable(task: str, question: str, context: str) -> str:
    if task == "docstring":  # the question is a fixed instruction; the code is the example
        return context
    if question.startswith("["):  # chat history: its user turns
        return " | ".join(m["content"] for m in json.loads(question) if m["role"] == "user")
    return question


@pytest.mark.parametrize("task", TASKS)
def test_no_test_question_near_duplicates_a_seed_question(samples, task):
    data = samples[task]
    seeds = [normalise_text(_comparable(task, q, c)) for q, c in zip(data.seed["question"], data.seed["context"])]
    for test_id, q, c in zip(data.test["id"], data.test["question"], data.test["context"]):
        text = normalise_text(_comparable(task, q, c))
        best = max(seeds, key=lambda s: fuzz.ratio(text, s))
        assert fuzz.ratio(text, best) < 90, (test_id, text, best)


def test_classification_samples_cover_every_label(samples):
    for task in ("banking77", "ecommerce", "trec"):
        labels = set(get_task(task).labels)
        for frame in (samples[task].seed, samples[task].test):
            assert set(frame["answer"]) == labels, task


def test_tool_calling_samples_cover_every_tool_and_smart_home_is_multi_turn(samples):
    for task in ("smart_home", "git_assistant"):
        names = {json.loads(a)["name"] for a in pl.concat([samples[task].seed, samples[task].test])["answer"]}
        assert names == set(get_task(task).tool_names), task
    histories = [json.loads(q) for q in samples["smart_home"].test["question"]]
    assert sum(1 for h in histories if len(h) >= 3) >= 20
    assert all(h[-1]["role"] == "user" for h in histories)


def test_text2sql_samples_mix_query_shapes(samples):
    answers = " ".join(pl.concat([samples["text2sql"].seed, samples["text2sql"].test])["answer"]).upper()
    for construct in ("COUNT(", "AVG(", "SUM(", "GROUP BY", "ORDER BY", "LIMIT", "JOIN", "HAVING", "WHERE"):
        assert construct in answers, construct
    contexts = pl.concat([samples["text2sql"].seed, samples["text2sql"].test])["context"]
    assert all("PRIMARY KEY" in c and "NOT NULL" in c for c in contexts)
    assert sum("REFERENCES" in c for c in contexts) >= 20


def test_docstring_samples_document_every_parameter_and_raise(samples):
    for row in pl.concat([samples["docstring"].seed, samples["docstring"].test]).iter_rows(named=True):
        tree = ast.parse(row["context"])
        node = tree.body[0]
        if isinstance(node, ast.ClassDef):  # a class documents its __init__ arguments
            node = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        params = [a.arg for a in node.args.args + node.args.kwonlyargs if a.arg not in ("self", "cls")] if node else []
        documented = re.findall(r"^    (\w+): ", row["answer"].split("Args:")[-1], flags=re.MULTILINE) if params else []
        for name in params:
            assert name in documented, (row["id"], name)
        raised = {n.exc.func.id for n in ast.walk(tree)
                  if isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call) and isinstance(n.exc.func, ast.Name)}
        for exc in raised:
            assert f"{exc}:" in row["answer"], (row["id"], exc)


def test_pii_answers_change_nothing_but_the_placeholders(samples):
    allowed = get_task("pii_redaction").answer_placeholders
    n_redacted = 0
    for row in pl.concat([samples["pii_redaction"].seed, samples["pii_redaction"].test]).iter_rows(named=True):
        # The answer, with each placeholder as a wildcard, must reproduce the original text.
        parts = re.split(r"\[([A-Z_]+)\]", row["answer"])
        pattern = "".join(re.escape(p) if i % 2 == 0 else r"(.+?)" for i, p in enumerate(parts))
        match = re.fullmatch(pattern, row["question"], flags=re.DOTALL)
        assert match, row["id"]
        assert all(name in allowed for name in parts[1::2])
        assert all(span.strip() for span in match.groups())
        n_redacted += bool(match.groups())
    assert n_redacted >= 40


# -- planted bad rows, one per failure mode -----------------------------------------------------
def _bad(samples, task, **changes):
    return {**_first(samples, task), **changes}


PLANTED = [
    ("banking77", {"answer": "lost_or_stolen_card"}, "label_not_in_set"),
    ("trec", {"answer": "hum"}, "label_not_in_set"),
    ("ecommerce", {"answer": "  "}, "empty_answer"),
    ("trec", {"question": ""}, "empty_question"),
    ("git_assistant", {"answer": "git push --force"}, "tool_call_unparseable"),
    ("git_assistant", {"answer": '["git_push"]'}, "tool_call_unparseable"),
    ("git_assistant", {"answer": '{"name": "git_fetch", "parameters": {}}'}, "unknown_tool"),
    ("git_assistant", {"answer": '{"name": "git_reset", "parameters": {"target": "HEAD~1"}}'}, "tool_args_invalid"),
    ("git_assistant", {"answer": '{"name": "git_merge", "parameters": {"branch": "x", "strategy": "octopus"}}'},
     "tool_args_invalid"),
    ("git_assistant", {"answer": '{"name": "git_log", "parameters": {"limit": 0}}'}, "tool_args_invalid"),
    ("git_assistant", {"answer": '{"name": "git_add", "parameters": {"files": []}}'}, "tool_args_invalid"),
    ("git_assistant", {"answer": '{"name": "git_status", "parameters": {"colour": true}}'}, "tool_args_invalid"),
    ("smart_home", {"answer": '{"name": "toggle_lights", "parameters": {"room": "garden"}}'}, "tool_args_invalid"),
    ("smart_home", {"answer": '{"name": "set_thermostat", "parameters": {"temperature": 95}}'}, "tool_args_invalid"),
    ("smart_home", {"answer": '{"name": "set_thermostat", "parameters": {"temperature": "72"}}'}, "tool_args_invalid"),
    ("smart_home", {"question": '[{"role": "user", "content": "lights on"}, {"role": "assistant", "content": "ok"}]'},
     "chat_history_invalid"),
    ("smart_home", {"question": '[{"role": "user", "content": "lights on"'}, "chat_history_invalid"),
    ("text2sql", {"answer": "SELECT missing_column FROM nowhere"}, "sql_execution_error"),
    ("text2sql", {"answer": "SELECT COUNT(* FROM employees"}, "sql_unparseable"),
    ("text2sql", {"answer": "SELECT 'unterminated"}, "sql_unparseable"),
    ("text2sql", {"answer": "DELETE FROM employees"}, "sql_not_single_select"),
    ("text2sql", {"answer": "SELECT 1; SELECT 2"}, "sql_not_single_select"),
    ("text2sql", {"context": "CREATE TABLE broken ("}, "schema_ddl_invalid"),
    ("text2sql", {"context": ""}, "missing_context"),
    ("hotpotqa", {"answer": "Lyon"}, "answer_not_in_context"),
    ("hotpotqa", {"context": ""}, "missing_context"),
    ("pii_redaction", {"answer": "Patient [NAME], DOB [DATE]."}, "unknown_placeholder"),
    ("docstring", {"answer": ""}, "empty_answer"),
]


@pytest.mark.parametrize("task,changes,reason", PLANTED)
def test_planted_bad_row_is_caught_with_its_field(samples, task, changes, reason):
    spec = get_task(task)
    row = _bad(samples, task, **changes)
    assert validate_row(spec, row) == reason
    frame = pl.concat([samples[task].seed, pl.DataFrame([row], schema=samples[task].seed.schema)])
    assert validate_frame(spec, frame) == [(frame.height - 1, row["id"], REASON_FIELD[reason], reason)]


def test_valid_variants_are_accepted(samples):
    git = get_task("git_assistant")
    # OpenAI-style "arguments" (even as a JSON string) and spelled-out defaults are valid calls.
    assert validate_row(git, {"question": "push", "answer": '{"name": "git_push", "arguments": "{\\"remote\\": \\"origin\\"}"}'}) is None
    assert validate_row(git, {"question": "status", "answer": '{"name": "git_status"}'}) is None
    t2s = _first(samples, "text2sql")
    assert validate_row(get_task("text2sql"), {**t2s, "answer": "WITH e AS (SELECT * FROM employees) SELECT COUNT(*) FROM e"}) is None
    hotpot = _first(samples, "hotpotqa")
    assert validate_row(get_task("hotpotqa"), {**hotpot, "answer": "Yes"}) is None
    assert validate_row(get_task("hotpotqa"), {**hotpot, "answer": hotpot["answer"].upper() + "."}) is None


def test_row_that_cannot_be_rendered_into_the_prompt_is_reported():
    git = get_task("git_assistant")
    # A prior assistant turn whose tool_calls entry is not an object breaks prompt rendering.
    history = [{"role": "assistant", "content": "", "tool_calls": [1]}, {"role": "user", "content": "push it"}]
    row = {"id": "r", "question": json.dumps(history), "answer": '{"name": "git_push", "parameters": {}}', "context": ""}
    assert validate_row(git, row) == "template_render_error"
    assert REASON_FIELD["template_render_error"] == "question"
    history[0]["tool_calls"] = [{"type": "function", "function": {"name": "git_add", "arguments": {"files": ["."]}}}]
    assert validate_row(git, {**row, "question": json.dumps(history)}) is None


# -- normalisation and leakage ----------------------------------------------------------------
def test_normalise_text():
    assert normalise_text("  What does NASA   stand for?\n") == "what does nasa stand for"
    assert normalise_text("Ｆｕｌｌ－width, ÀCCENTS!") == normalise_text("full width àccents")
    assert normalise_text(None) == ""


def test_find_overlaps_is_exact_after_normalisation_and_context_aware():
    seed = pl.DataFrame({"id": ["s1", "s2", "s3"], "question": ["Who wrote Hamlet?", "Where is Oslo?", "Count rows"],
                         "answer": ["HUM", "LOC", "SELECT 1"], "context": ["", "", "CREATE TABLE a (id INTEGER)"]})
    test = pl.DataFrame({"id": ["t1", "t2", "t3", "t4"],
                         "question": ["WHO wrote hamlet", "Who wrote Macbeth?", "count rows", "count rows"],
                         "answer": ["HUM", "HUM", "SELECT 1", "SELECT 1"],
                         "context": ["", "", "CREATE TABLE a (id INTEGER)", "CREATE TABLE b (id INTEGER)"]})
    assert find_overlaps(seed, test) == [("s1", "t1"), ("s3", "t3")]
    # Frames without a context column compare questions only.
    assert find_overlaps(seed.drop("context"), test.drop("context")) == [("s1", "t1"), ("s3", "t3"), ("s3", "t4")]


def test_canonical_tool_call():
    assert canonical_tool_call('{"parameters": {"b": 1, "a": 2}, "name": "f"}') == (
        '{"name": "f", "parameters": {"a": 2, "b": 1}}')
    with pytest.raises(ValueError):
        canonical_tool_call("f(a=2)")
