"""Synthesis: teacher prompts, parsing, validators, dedup and decontamination on planted rows."""

from __future__ import annotations

import json

import pytest

from distil_platform.tasks.spec import get_task
from distil_platform.teacher.augment import literal_swap_augment
from distil_platform.teacher.dedup import decontaminate, deduplicate
from distil_platform.teacher.replies import parse_teacher_output
from distil_platform.teacher.requests import build_teacher_requests
from distil_platform.teacher.synthesis import answer_distribution, distribution_collapsed, synthesize

EMP = "CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT, department TEXT, salary INTEGER);"
PROD = "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL);"

SQL_SEEDS = [
    {"id": "s1", "question": "How many employees are in the Sales department?",
     "answer": "SELECT COUNT(*) FROM employees WHERE department = 'Sales';", "context": EMP},
    {"id": "s2", "question": "List the names of employees in the Marketing department.",
     "answer": "SELECT name FROM employees WHERE department = 'Marketing';", "context": EMP},
    {"id": "s3", "question": "Show the 5 most expensive products.",
     "answer": "SELECT name FROM products ORDER BY price DESC LIMIT 5;", "context": PROD},
    {"id": "s4", "question": "What is the average price of products in the Books category?",
     "answer": "SELECT AVG(price) FROM products WHERE category = 'Books';", "context": PROD},
]
SQL_TEST = [
    {"id": "t1", "question": "What is the highest salary among all employees working in the Engineering department?",
     "answer": "SELECT MAX(salary) FROM employees WHERE department = 'Engineering';", "context": EMP},
]


@pytest.fixture
def sql_spec():
    return get_task("text2sql")


def test_requests_vary_seeds_and_topics_and_fix_one_context(sql_spec):
    reqs = build_teacher_requests(sql_spec, SQL_SEEDS, 6, seeds_per_request=2, rng_seed=1)
    assert len(reqs) == 6
    assert len({r.topic for r in reqs}) > 1
    assert len({r.seed_ids for r in reqs}) > 1
    for r in reqs:
        assert r.context in (EMP, PROD)
        # context-bound task: the demonstrations come from the same schema as the request's context
        shown = [s for s in SQL_SEEDS if s["id"] in r.seed_ids]
        assert all(s["context"] == r.context for s in shown)
        assert r.context in r.messages[1]["content"]
        assert sql_spec.description.strip()[:40] in r.messages[0]["content"]
    # deterministic for a given seed
    again = build_teacher_requests(sql_spec, SQL_SEEDS, 6, seeds_per_request=2, rng_seed=1)
    assert [r.prompt_hash for r in again] == [r.prompt_hash for r in reqs]


def test_grounded_classification_requests_quote_real_messages():
    spec = get_task("banking77")
    label = next(iter(spec.labels))
    seeds = [{"id": f"s{i}", "question": f"message {i}", "answer": label, "context": ""} for i in range(5)]
    unstructured = [{"id": f"u{i}", "question": f"real customer text number {i}"} for i in range(10)]
    reqs = build_teacher_requests(spec, seeds, 3, unstructured=unstructured, ground_in_unstructured=True)
    for r in reqs:
        assert r.grounding_ids
        assert "real customer text number" in r.messages[1]["content"]
        assert label in r.messages[0]["content"]  # the label set is in the task prompt


def test_parse_teacher_output_handles_json_lines_lists_fences_and_prose(sql_spec):
    text = (
        "Sure! Here are examples:\n```json\n"
        '{"question": "How many products?", "answer": "SELECT COUNT(*) FROM products;"}\n'
        '{"question": "", "answer": "SELECT 1"}\n'
        "```\nand [{\"question\": \"Names?\", \"answer\": \"SELECT name FROM products;\"}] done {broken"
    )
    rows, dropped = parse_teacher_output(sql_spec, text, context=PROD)
    assert [r["question"] for r in rows] == ["How many products?", "Names?"]
    assert all(r["context"] == PROD for r in rows)
    assert dropped == {"missing_question_or_answer": 1}
    assert parse_teacher_output(sql_spec, "no json here", PROD)[1] == {"no_json_in_response": 1}
    assert parse_teacher_output(sql_spec, None, PROD)[1] == {"empty_response": 1}


def test_parse_tool_call_answers_as_objects_or_strings():
    spec = get_task("smart_home")
    text = ('{"question": "lights on in the kitchen", "answer": {"name": "toggle_lights", "parameters": {"room": "kitchen"}}}\n'
            '{"question": "lock it", "answer": "not json"}')
    rows, dropped = parse_teacher_output(spec, text)
    assert json.loads(rows[0]["answer"]) == {"name": "toggle_lights", "parameters": {"room": "kitchen"}}
    assert dropped == {"answer_not_json": 1}


def test_deduplicate_exact_near_and_against_seeds():
    rows = [
        {"question": "How many employees are in the Sales department?", "answer": "x", "context": EMP},  # seed dup
        {"question": "Count all products", "answer": "a", "context": PROD},
        {"question": "count ALL products!!", "answer": "b", "context": PROD},  # exact after normalising
        {"question": "Count all the products", "answer": "c", "context": PROD},  # near duplicate
        {"question": "Count all products", "answer": "d", "context": EMP},  # other schema: not a duplicate
        {"question": "Which product is cheapest?", "answer": "e", "context": PROD},
    ]
    res = deduplicate(rows, SQL_SEEDS, near_threshold=0.9)
    assert [r["answer"] for r in res.kept] == ["a", "d", "e"]
    assert res.exact_duplicates == 2 and res.near_duplicates == 1 and res.seed_duplicates == 1
    # near-duplicate pass off: the reworded row stays
    assert len(deduplicate(rows, SQL_SEEDS, near_threshold=1.0).kept) == 4


def test_decontaminate_drops_leaked_and_keeps_unrelated():
    rows = [
        {"question": "What is the highest salary among all employees working in the Engineering department?",
         "answer": "x", "context": EMP},  # verbatim test question
        {"question": "Tell me the highest salary among all employees working in the Engineering department please",
         "answer": "y", "context": EMP},  # heavy n-gram overlap
        {"question": "Which employees earn more than 50000?", "answer": "z", "context": EMP},
    ]
    res = decontaminate(rows, SQL_TEST, n=4, threshold=0.5, seeds=SQL_SEEDS)
    assert [r["answer"] for r in res.kept] == ["z"]
    assert len(res.dropped) == 2 and all(d["test_overlap"] > 0.5 or d["answer"] == "x" for d in res.dropped)


def test_decontamination_ignores_boilerplate_shared_with_seeds():
    boiler = "Answer using the database below and be precise about it: "
    seeds = [{"question": boiler + "how many staff?", "answer": "", "context": ""}]
    test = [{"question": boiler + "what is the top salary?", "answer": "", "context": ""}]
    rows = [{"question": boiler + "list every department name", "answer": "", "context": ""}]
    assert len(decontaminate(rows, test, n=3, threshold=0.5, seeds=seeds).kept) == 1
    assert len(decontaminate(rows, test, n=3, threshold=0.5).kept) == 0  # without seeds it looks leaked


def test_literal_swap_makes_valid_new_rows(sql_spec):
    from distil_platform.tasks.validation import validate_row

    rows = literal_swap_augment(sql_spec, SQL_SEEDS, per_seed=3)
    assert rows, "seeds with shared literals must yield augmented rows"
    questions = {s["question"] for s in SQL_SEEDS}
    for r in rows:
        assert r["origin"] == "literal_swap" and r["question"] not in questions
        assert validate_row(sql_spec, r) is None
    swapped = {r["question"] for r in rows}
    assert "How many employees are in the Marketing department?" in swapped
    assert literal_swap_augment(get_task("banking77"), SQL_SEEDS) == []


def test_synthesize_counts_every_drop_reason(sql_spec):
    """Planted teacher replies: valid, invalid SQL, non-executing SQL, duplicate of a seed, leaked."""
    replies = {
        EMP: "\n".join(json.dumps(x) for x in [
            {"question": "Who earns more than 60000?", "answer": "SELECT name FROM employees WHERE salary > 60000;"},
            {"question": "Broken one", "answer": "SELEC name FROM employees"},
            {"question": "Unknown table", "answer": "SELECT * FROM staff;"},
            {"question": "How many employees are in the Sales department?",
             "answer": "SELECT COUNT(*) FROM employees WHERE department = 'Sales';"},
            {"question": "What is the highest salary among all employees working in the Engineering department?",
             "answer": "SELECT MAX(salary) FROM employees WHERE department = 'Engineering';"},
            {"question": "Who earns more than 60000?", "answer": "SELECT name FROM employees WHERE salary > 60000;"},
        ]),
        PROD: "I cannot help with that.",
    }
    calls = []

    def generate(batch, formats):
        calls.append(len(batch))
        out = []
        for messages in batch:
            ctx = EMP if EMP in messages[1]["content"] else PROD
            out.append(replies[ctx])
        return out

    report = synthesize(sql_spec, SQL_SEEDS, SQL_TEST, generate, target=8, teacher_model="teacher-x", rng_seed=3)
    s = report.summary()
    assert calls == [report.n_requests] and report.n_requests == 2  # 8 examples / 4 per request
    parse_level = {"no_json_in_response", "empty_response", "missing_question_or_answer", "answer_not_json"}
    invalid = sum(v for k, v in s["rejections_by_reason"].items() if k not in parse_level)
    # every parsed candidate is accounted for exactly once
    assert s["generated"] == invalid + s["exact_duplicates"] + s["near_duplicates"] + s["decontaminated"] \
        + s["accepted"]
    assert s["generated"] % 6 == 0 and s["generated"] > 0
    assert s["rejections_by_reason"].get("sql_unparseable", 0) >= 1
    assert s["rejections_by_reason"].get("sql_execution_error", 0) >= 1
    assert s["duplicates_of_seeds"] >= 1 and s["decontaminated"] >= 1
    assert {r["question"] for r in report.accepted} == {"Who earns more than 60000?"}
    row = report.accepted[0]
    assert row["origin"] == "teacher" and row["teacher_model"] == "teacher-x" and row["seed_ids"]
    assert row["prompt_hash"] and row["context"] == EMP


def test_synthesize_literal_swap_is_counted_separately(sql_spec):
    report = synthesize(sql_spec, SQL_SEEDS, SQL_TEST, lambda b, f: [None] * len(b), target=4,
                        teacher_model="t", literal_swap=True)
    s = report.summary()
    assert s["failed_requests"] == 1 and s["teacher_accepted"] == 0
    assert s["augmented_accepted"] == s["accepted"] > 0
    assert all(r["origin"] == "literal_swap" for r in report.accepted)


def test_label_distribution_and_collapse():
    spec = get_task("banking77")
    labels = list(spec.labels)
    rows = [{"answer": labels[0]}] * 9 + [{"answer": labels[1]}]
    dist = answer_distribution(spec, rows)
    assert dist == {labels[0]: 9, labels[1]: 1}
    assert distribution_collapsed(dist)
    assert not distribution_collapsed({labels[0]: 5, labels[1]: 5})
    tool = get_task("smart_home")
    assert answer_distribution(tool, [{"answer": '{"name": "lock_door", "parameters": {}}'}]) == {"lock_door": 1}
