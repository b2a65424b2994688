"""Poison replies never crash the teacher stage, and billed non-answers never become rows.

Through the real code paths (``synthesis.synthesize`` and the ``<task>_teacher_data`` asset against a
loopback OpenAI-compatible teacher): a reply of 2,000 nested brackets, SQL nested 3,000 parentheses
deep (both raise ``RecursionError`` in the parsers), a reply cut off at ``max_tokens`` and an empty one
are rejected with their reasons; the replies are cached, and a rerun makes no call and rejects them
the same way instead of crashing on them again."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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

from distil_platform.tasks.spec import get_task, load_task_file, tasks_dir
from distil_platform.teacher.replies import Reply
from distil_platform.teacher.synthesis import synthesize

DEEP_JSON = "[" * 2000
DEEP_SQL = "SELECT " + "(" * 3000 + "1" + ")" * 3000 + " FROM employees;"
EMP = "CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT, department TEXT, salary REAL);"
SEEDS = [{"id": f"s{i}", "question": q, "answer": a, "context": EMP} for i, (q, a) in enumerate([
    ("How many employees are there?", "SELECT COUNT(*) FROM employees;"),
    ("What is the highest salary?", "SELECT MAX(salary) FROM employees;"),
    ("List all employee names.", "SELECT name FROM employees;"),
])]
TEST = [{"id": "t0", "question": "What is the average salary?", "answer": "SELECT AVG(salary) FROM employees;",
         "context": EMP}]


def _rows(*pairs):
    return json.dumps([{"question": q, "answer": a} for q, a in pairs])


def test_synthesize_rejects_poison_and_billed_non_answers_with_reasons():
    spec = get_task("text2sql")
    valid = _rows(("Which employees earn more than 50000?", "SELECT name FROM employees WHERE salary > 50000;"))
    replies = [
        Reply(DEEP_JSON, "stop"),
        Reply(_rows(("What is the deepest value?", DEEP_SQL)), "stop"),
        Reply(valid, "length"),  # complete JSON, but the reply was cut off: never a row
        Reply(None, "length"),  # a reasoning teacher that spent the whole budget thinking
        Reply("", "stop"),
        Reply(valid, "stop"),
        Reply(None, None, error="HTTP 500"),  # a failed request stays a failed request
    ]

    def generate(batch, formats):
        assert len(batch) == len(replies)
        return replies

    per_request = spec.synthesis.examples_per_request
    report = synthesize(spec, SEEDS, TEST, generate, target=per_request * len(replies), teacher_model="t")
    reasons = report.summary()["rejections_by_reason"]
    assert reasons["parse_error (RecursionError)"] == 1
    assert reasons["validation_error (RecursionError)"] == 1
    assert reasons["truncated_reply"] == 2 and reasons["empty_reply"] == 1
    assert reasons["empty_response"] == 1 and report.failed_requests == 1
    assert [r["question"] for r in report.accepted] == ["Which employees earn more than 50000?"]
    statuses = [a["status"] for a in report.audit]
    assert "unparsed: truncated_reply" in statuses and "unparsed: parse_error (RecursionError)" in statuses


def test_a_filter_that_raises_on_one_row_rejects_that_row():
    """A recorded file's malformed confidence makes the min_confidence comparison raise TypeError."""
    spec = get_task("banking77")
    seeds = [{"id": "s", "question": "I was charged twice for my coffee, why?", "answer": "transaction_charged_twice",
              "context": ""}]
    rows = [{"question": "Why was my card payment charged twice today?", "answer": "transaction_charged_twice",
             "context": "", "confidence": "n/a"},
            {"question": "Why is there a fee on the shoes I paid for by card?", "answer": "card_payment_fee_charged",
             "context": "", "confidence": 0.9}]
    report = synthesize(spec, seeds, [], lambda b, f: [], target=0, teacher_model="m", recorded=rows)
    reasons = report.summary()["rejections_by_reason"]
    assert reasons == {"min_confidence: filter_error (TypeError)": 1}
    assert [r["answer"] for r in report.accepted] == ["card_payment_fee_charged"]


def test_truncated_or_empty_second_answers_are_no_agreement_verdict():
    spec = get_task("banking77")
    seeds = [{"id": "s", "question": "I was charged twice for my coffee, why?", "answer": "transaction_charged_twice",
              "context": ""}]
    rows = [{"question": q, "answer": "card_payment_fee_charged", "context": "", "origin": "teacher"} for q in (
        "Why is there a fee on the shoes I paid for by card?", "What is this extra charge on my card purchase?",
        "The shop added a fee when I paid with my card, why?", "How come paying by card cost me a fee today?")]
    seconds = [Reply("card_payment_fee_charged", "stop"), Reply("card_payment_fee_charged", "length"),
               Reply(None, "content_filter"), Reply(DEEP_JSON, "stop")]
    filters = spec.synthesis.filters.model_copy(update={"answer_agreement": True})
    report = synthesize(spec, seeds, [], lambda b, f: [], target=0, teacher_model="m", recorded=rows,
                        second_answer=lambda todo: seconds[: len(todo)], filters=filters)
    assert report.filter_stats["answer_agreement"].rejected == {
        "second_answer_truncated": 1, "second_answer_empty": 1, "disagrees": 1}
    assert len(report.accepted) == 1


def test_self_training_labels_cut_off_empty_or_poisonous_are_rejected():
    from distil_platform.teacher.self_training import label_rows

    spec = get_task("smart_home")
    texts = [{"id": f"u{k}", "question": f"turn on the kitchen lights please {k}"} for k in range(3)]
    rows = label_rows(spec, texts, ["{\"name\": \"x\"", None, "[" * 2000], [None] * 3,
                      unusable=["truncated_reply", "empty_reply", None])
    assert [r.get("reject_reason") for r in rows][:2] == ["truncated_reply", "empty_reply"]
    report = synthesize(spec, [], [], lambda b, f: [], target=0, teacher_model="m", recorded=rows,
                        source_name="self_training")
    reasons = report.summary()["rejections_by_reason"]
    assert reasons["truncated_reply"] == 1 and reasons["empty_reply"] == 1 and report.accepted == []
    assert sum(reasons.values()) == 3  # the bracket bomb too, whatever the parser made of it


class _Teacher:
    """A loopback OpenAI-compatible teacher answering each request with the next scripted reply."""

    def __init__(self, script):
        self.script = list(script)
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with teacher.lock:
                    teacher.bodies.append(body)
                    make = teacher.script[(len(teacher.bodies) - 1) % len(teacher.script)]
                content, finish = make(body["messages"][-1]["content"])
                payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": finish,
                                        "message": {"role": "assistant", "content": content}}],
                           "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}}
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _count_query(prompt: str):
    table = re.search(r"CREATE TABLE (\w+)", prompt).group(1)
    return _rows((f"How many rows does the {table} table have?", f"SELECT COUNT(*) FROM {table};")), "stop"


@pytest.fixture
def teacher():
    server = _Teacher([
        lambda p: (DEEP_JSON, "stop"),
        lambda p: (_rows(("What is the deepest value?", DEEP_SQL)), "stop"),
        lambda p: (_count_query(p)[0], "length"),
        lambda p: (None, "length"),
        _count_query,
    ])
    yield server
    server.close()


def test_teacher_stage_survives_poison_and_a_rerun_pays_nothing(monkeypatch, tmp_path, teacher):
    monkeypatch.setenv("DISTIL_PROFILE", "test")
    raw = yaml.safe_load((tasks_dir() / "text2sql.yaml").read_text())
    raw["teacher"] = {"test": {"model": "openai/poisoned", "api_base": teacher.base, "tier": "teacher",
                               "response_format": "none"}}
    path = tmp_path / "text2sql.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_task_file(path)
    target = 5 * spec.synthesis.examples_per_request

    def materialize():
        resources = {"llm": LLMResource(max_retries=0), "serving": ServingResource(backend="transformers"),
                     "model_store": ModelStoreResource(), "results_store": ResultsStoreResource(),
                     "teacher_endpoint": TeacherEndpointResource()}
        return dg.materialize(build_seed_set_asset(spec) + build_teacher_assets(spec), resources=resources,
                              selection=["text2sql", "text2sql_teacher_data"],
                              run_config={"ops": {"text2sql_teacher_data": {"config": {"target": target}}}},
                              raise_on_error=False)

    first = materialize()
    assert first.success, [str(e.event_specific_data.error) for e in first.all_events
                           if e.event_type_value == "STEP_FAILURE"]
    assert len(teacher.bodies) == 5
    md = first.asset_materializations_for_node("text2sql_teacher_data")[-1].metadata
    reasons = md["rejections_by_reason"].value
    assert reasons["parse_error (RecursionError)"] == 1
    assert reasons["validation_error (RecursionError)"] == 1
    assert reasons["truncated_reply"] == 2  # the cut-off one and the empty one cut at max_tokens
    assert md["truncated_replies"].value == 2 and md["failed_requests"].value == 0
    counts = md["teacher_reply_counts"].value
    assert counts["answered"] == 5 and counts["truncated"] == 2 and counts["empty"] == 1
    assert md["schema_valid"].value >= 1  # the healthy reply's row went on through the funnel

    second = materialize()
    assert second.success
    assert len(teacher.bodies) == 5  # every reply, poison included, came from the cache
    again = second.asset_materializations_for_node("text2sql_teacher_data")[-1].metadata
    assert again["rejections_by_reason"].value == reasons
