"""``<task>_teacher_data`` against a real OpenAI-compatible HTTP endpoint (a small stdlib server in
this process that answers chat completions and records what it was sent): the reply schema goes out
as ``response_format`` where the teacher's setting says so, the key from ``DISTIL_TEACHER_API_KEY``
goes out as the bearer token, and a teacher that answers nothing fails the stage."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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

from distil_platform.tasks.spec import load_task_file, tasks_dir
from distil_platform.tasks.validation import normalise_text

REPLY = [
    {"question": "push the release branch to upstream",
     "answer": {"name": "git_push", "parameters": {"remote": "upstream", "branch": "release"}}},
    {"question": "commit my work", "answer": {"name": "git_commit", "parameters": {"message": "Invented text"}}},
]


class _Endpoint:
    def __init__(self, status: int = 200, respond=None):
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.bodies.append(body)
                endpoint.auth.append(self.headers.get("Authorization"))
                if status != 200:
                    payload = {"error": {"message": "invalid api key", "type": "auth"}}
                else:
                    content, logprobs = respond(body) if respond else (json.dumps(REPLY), None)
                    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                    if logprobs is not None:
                        choice["logprobs"] = {"content": logprobs}
                    payload = {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice],
                               "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _spec_with_teacher(tmp_path, base: str, response_format: str, task: str = "git_assistant"):
    raw = yaml.safe_load((tasks_dir() / f"{task}.yaml").read_text())
    raw["teacher"] = {"test": {"model": "openai/recorder", "api_base": base, "tier": "teacher",
                               "temperature": 0.8, "response_format": response_format}}
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_task_file(path)


def _materialize(spec, target: int = 8, **config):
    assets = build_seed_set_asset(spec) + build_teacher_assets(spec)
    resources = {"llm": LLMResource(max_retries=0), "serving": ServingResource(backend="transformers"),
                 "model_store": ModelStoreResource(), "results_store": ResultsStoreResource(),
                 "teacher_endpoint": TeacherEndpointResource()}
    return dg.materialize(assets, resources=resources, selection=[spec.name, f"{spec.name}_teacher_data"],
                          run_config={"ops": {f"{spec.name}_teacher_data": {"config": {"target": target, **config}}}},
                          raise_on_error=False)


def _serve_locally_at(monkeypatch, endpoint: _Endpoint, name: str) -> list[Path]:
    """``ServingResource.serve`` answered by ``endpoint`` (a stand-in for a local server of the
    checkpoint the stage asked for); returns the list of directories it was asked to serve."""
    import contextlib
    from types import SimpleNamespace

    served: list[Path] = []

    @contextlib.contextmanager
    def fake_serve(self, model_dir, **overrides):
        served.append(Path(model_dir))
        yield SimpleNamespace(base_url=endpoint.base, litellm_model=f"openai/{name}", model=name,
                              backend="vllm", identity={"served_model": name, "checkpoint_hash": "x"})

    monkeypatch.setattr(ServingResource, "serve", fake_serve)
    return served


def _checkpoint(tmp_path) -> Path:
    """Any HF-format directory with a tokenizer, standing for a seed-only student's checkpoint."""
    import shutil

    from distil_platform.storage.modelstore import TINY_QWEN3, resolve_model

    checkpoint = tmp_path / "seed_only_student"
    shutil.copytree(resolve_model(TINY_QWEN3), checkpoint)
    return checkpoint


@pytest.fixture
def test_profile(monkeypatch):
    monkeypatch.setenv("DISTIL_PROFILE", "test")
    monkeypatch.setenv("DISTIL_TEACHER_API_KEY", "sk-teacher-secret")


@pytest.mark.parametrize("setting", ["json_schema", "auto"])
def test_endpoint_teacher_gets_the_schema_when_configured_and_the_key(test_profile, tmp_path, setting):
    with _Endpoint() as endpoint:
        result = _materialize(_spec_with_teacher(tmp_path, endpoint.base, setting))
    assert result.success
    assert len(endpoint.bodies) == 2  # 8 requested, 4 per request
    assert set(endpoint.auth) == {"Bearer sk-teacher-secret"}
    formats = [b.get("response_format") for b in endpoint.bodies]
    if setting == "json_schema":
        assert all(f["type"] == "json_schema" and f["json_schema"]["schema"]["type"] == "array" for f in formats)
    else:  # auto: only a locally served vLLM gets it
        assert formats == [None, None]
    md = result.asset_materializations_for_node("git_assistant_teacher_data")[-1].metadata
    assert md["structured_output"].value is (setting == "json_schema")
    assert md["generated"].value == 4 and md["accepted"].value == 1  # the same two rows twice
    assert md["rejected_by_grounded_arguments"].value == 2  # the invented commit message, both times
    assert "sk-teacher-secret" not in json.dumps({k: str(v.value) for k, v in md.items()})


def test_a_teacher_that_answers_nothing_fails_the_stage(test_profile, tmp_path):
    with _Endpoint(status=401) as endpoint:
        result = _materialize(_spec_with_teacher(tmp_path, endpoint.base, "json_schema"))
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE"
                   and e.step_key == "git_assistant_teacher_data")
    text = str(failure.event_specific_data.error)
    assert "answered none of its 2 requests" in text and "DISTIL_TEACHER_API_KEY" in text


def test_self_training_labels_real_messages_and_keeps_confident_labels(test_profile, tmp_path):
    def respond(body):
        # The labeller is asked with the student's prompt (no demonstrations), greedy, with logprobs.
        assert body["temperature"] == 0.0 and body.get("logprobs") is True
        message = body["messages"][-1]["content"].lower()
        if "twice" in message or "double" in message:
            return "transaction_charged_twice", [{"token": "transaction", "logprob": -0.05},
                                                 {"token": "_charged_twice", "logprob": -0.05}]
        return "card_payment_fee_charged", [{"token": "card", "logprob": -1.5}, {"token": "_fee", "logprob": -0.8}]

    with _Endpoint(respond=respond) as endpoint:
        spec = _spec_with_teacher(tmp_path, endpoint.base, "auto", task="banking77")
        result = _materialize(spec, target=40, source="self_training")
    assert result.success
    md = result.asset_materializations_for_node("banking77_teacher_data")[-1].metadata
    assert md["source"].value == "self_training" and md["confidence_available"].value is True
    n = md["labelled_messages"].value
    assert n == len(endpoint.bodies) > 0
    confident = sum("twice" in b["messages"][-1]["content"].lower() or "double" in b["messages"][-1]["content"].lower()
                    for b in endpoint.bodies)
    assert md["rejected_by_min_confidence"].value == n - confident  # p = exp(-2.3) = 0.10 < 0.5
    assert md["distribution"].value == ({"transaction_charged_twice": md["accepted"].value} if md["accepted"].value else {})
    assert 0 < md["accepted"].value <= confident


def test_self_training_labeller_checkpoint_is_the_model_served(test_profile, tmp_path, monkeypatch):
    """Run config ``labeller`` (e.g. a seed-only student's checkpoint) is what the stage serves and
    labels with: the served directory is that checkpoint, the rows name it as their labeller, and
    the teacher key never reaches that local server."""
    checkpoint = _checkpoint(tmp_path)

    def respond(body):
        assert body["model"] == "labeller" and body["temperature"] == 0.0
        return "transaction_charged_twice", [{"token": "transaction_charged_twice", "logprob": -0.01}]

    with _Endpoint(respond=respond) as endpoint:
        served = _serve_locally_at(monkeypatch, endpoint, "labeller")
        spec = _spec_with_teacher(tmp_path, endpoint.base, "auto", task="banking77")
        result = _materialize(spec, target=6, source="self_training", labeller=str(checkpoint))
    assert result.success
    assert served == [checkpoint]
    assert len(endpoint.bodies) == 6 and set(endpoint.auth) == {None}  # no key to a local server
    md = result.asset_materializations_for_node("banking77_teacher_data")[-1].metadata
    assert md["teacher"].value == str(checkpoint) and md["labelled_messages"].value == 6
    assert md["accepted"].value >= 1 and md["distribution"].value == {"transaction_charged_twice": md["accepted"].value}


def test_labeller_is_rejected_outside_self_training_and_must_exist(test_profile, tmp_path):
    with _Endpoint() as endpoint:
        spec = _spec_with_teacher(tmp_path, endpoint.base, "auto", task="banking77")
        wrong_source = _materialize(spec, target=2, source="teacher", labeller="tiny-qwen3")
        missing = _materialize(spec, target=2, source="self_training", labeller=str(tmp_path / "gone"))
    for result, needle in ((wrong_source, "applies to source self_training"),
                           (missing, "the checkpoint of run config `labeller`")):
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert needle in str(failure.event_specific_data.error)
    assert endpoint.bodies == []


def test_agreement_model_gives_the_second_answer_and_drops_the_rows_it_disagrees_with(test_profile, tmp_path,
                                                                                    monkeypatch):
    """Run config ``agreement_model`` (e.g. the seed-only student's checkpoint): the stage serves that
    checkpoint for the agreement filter, asks it each teacher question with the student's own prompt
    (greedy, no schema, no key), and keeps exactly the rows whose label it gives too; the teacher
    endpoint only writes rows."""
    import itertools

    checkpoint = _checkpoint(tmp_path)
    truth = {"I was charged twice for the same coffee this morning, why?": "transaction_charged_twice",
             "The ATM at the station would not give me any cash today.": "declined_cash_withdrawal",
             "Why is there an extra fee on the shoes I bought with my card?": "card_payment_fee_charged",
             "My cheque from Monday still is not in my balance.": "balance_not_updated_after_cheque_or_cash_deposit"}
    batches = itertools.count()

    def teacher(body):
        # Two requests: the first labels all four right, the second swaps two labels.
        rows = [{"question": q, "answer": a} for q, a in truth.items()]
        if next(batches) == 1:
            rows = [{"question": q + " Please help.", "answer": a} for q, a in truth.items()]
            rows[0]["answer"], rows[1]["answer"] = rows[1]["answer"], rows[0]["answer"]
        return json.dumps(rows), None

    def judge(body):
        question = body["messages"][-1]["content"]
        return next(label for q, label in truth.items() if q in question), None

    with _Endpoint(respond=teacher) as endpoint, _Endpoint(respond=judge) as judge_endpoint:
        served = _serve_locally_at(monkeypatch, judge_endpoint, "judge")
        spec = _spec_with_teacher(tmp_path, endpoint.base, "auto", task="banking77")
        result = _materialize(spec, target=8, agreement_model=str(checkpoint))
        conflicting = _materialize(spec, target=8, agreement_model=str(checkpoint), answer_agreement=False)
    assert result.success and served == [checkpoint]
    assert len(endpoint.bodies) == 2  # the teacher: generation requests only
    assert len(judge_endpoint.bodies) == 8 and set(judge_endpoint.auth) == {None}
    for body in judge_endpoint.bodies:
        assert body["temperature"] == 0.0 and "response_format" not in body
        assert body["messages"][0]["role"] == "system"  # the student's prompt, not the teacher's
    md = result.asset_materializations_for_node("banking77_teacher_data")[-1].metadata
    assert md["agreement_answerer"].value == str(checkpoint)
    assert md["rejections_by_reason"].value.get("answer_agreement: disagrees") == 2
    assert md["accepted"].value == 6 - md["near_duplicates"].value - md["exact_duplicates"].value
    assert not conflicting.success
    failure = next(e for e in conflicting.all_events if e.event_type_value == "STEP_FAILURE")
    assert "`answer_agreement` is false" in str(failure.event_specific_data.error)


def test_a_local_teacher_is_released_before_the_agreement_model_is_served(test_profile, tmp_path, monkeypatch):
    """Both served locally (a model-store teacher and a checkpoint judge): the teacher's server stops
    before the judge's starts, so the two never hold memory (one GPU's share) at the same time."""
    import contextlib
    from types import SimpleNamespace

    checkpoint = _checkpoint(tmp_path)
    events: list[tuple[str, str]] = []

    def judge(body):
        return "transaction_charged_twice", None

    with _Endpoint() as teacher_endpoint, _Endpoint(respond=judge) as judge_endpoint:
        @contextlib.contextmanager
        def fake_serve(self, model_dir, **overrides):
            who = "judge" if Path(model_dir) == checkpoint else "teacher"
            endpoint = judge_endpoint if who == "judge" else teacher_endpoint
            events.append(("start", who))
            yield SimpleNamespace(base_url=endpoint.base, litellm_model=f"openai/{who}", model=who, backend="vllm",
                                  identity={"served_model": who, "checkpoint_hash": "x"})
            events.append(("stop", who))

        monkeypatch.setattr(ServingResource, "serve", fake_serve)
        raw = yaml.safe_load((tasks_dir() / "git_assistant.yaml").read_text())
        raw["teacher"] = {"test": {"model": "tiny-qwen3", "tier": "teacher"}}  # a model-store name: served here
        path = tmp_path / "git_assistant.yaml"
        path.write_text(yaml.safe_dump(raw))
        result = _materialize(load_task_file(path), agreement_model=str(checkpoint))
    assert result.success
    assert events == [("start", "teacher"), ("stop", "teacher"), ("start", "judge"), ("stop", "judge")]
    assert len(teacher_endpoint.bodies) == 2 and judge_endpoint.bodies  # rows reached the filter
    md = result.asset_materializations_for_node("git_assistant_teacher_data")[-1].metadata
    # Both requests wrote the same push row: two rows answered, one HTTP request (the client's cache).
    assert md["agreement_answered"].value == 2 and len(judge_endpoint.bodies) == 1


def test_each_request_gets_its_passage_schema_and_the_configured_sampling(test_profile, tmp_path):
    """hotpotqa: every request's ``response_format`` offers the spans of that request's own passage
    (the context shown in its prompt), the run's frequency penalty goes out with it, and the stage
    shows the first request's schema in its metadata."""
    def respond(body):
        enum = body["response_format"]["json_schema"]["schema"]["items"]["properties"]["answer"]["enum"]
        reply = [{"question": f"Which name appears in the passage, number {i}?", "answer": enum[-1 - i]}
                 for i in range(4)]
        return json.dumps(reply), None

    with _Endpoint(respond=respond) as endpoint:
        result = _materialize(_spec_with_teacher(tmp_path, endpoint.base, "json_schema", task="hotpotqa"),
                              frequency_penalty=0.4, answer_agreement=False)
    assert result.success
    assert len(endpoint.bodies) == 2
    for body in endpoint.bodies:
        enum = body["response_format"]["json_schema"]["schema"]["items"]["properties"]["answer"]["enum"]
        prompt = normalise_text(body["messages"][-1]["content"])
        assert enum[:2] == ["yes", "no"] and all(normalise_text(span) in prompt for span in enum[2:])  # its passage
        assert body["frequency_penalty"] == 0.4
    md = result.asset_materializations_for_node("hotpotqa_teacher_data")[-1].metadata
    assert md["rejections_by_reason"].value.get("answer_not_in_context", 0) == 0
    assert md["schema_valid"].value == 8 and md["frequency_penalty"].value == 0.4
    assert md["reply_schema"].value["minItems"] == 4 and md["sql_subset"].value is False
