"""Reply outcomes end to end against a loopback OpenAI-compatible fake: ``finish_reason`` and
reasoning tokens recorded, cached and replayed; empty and length-truncated replies counted and never
scored as answers; per-model ``reasoning_effort`` and timeouts; a poisonous reply that makes a scorer
raise is an unscorable item; the LLM judge batched with real concurrency."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from distil_platform.assets.common import BatchJudge, api_client, build_judge, reply_outcome_metadata
from distil_platform.resources.models import LLMResource

from distil_platform.evaluation.evaluate import (
    Answer,
    client_answer_fn,
    evaluate,
    prediction_rows,
    results_from_store_rows,
    score_answers,
)
from distil_platform.evaluation.summary import summarize
from distil_platform.llm import ChatRequest, LLMClient
from distil_platform.llm import chat as chat_module
from distil_platform.storage.store import ResultsStore, llm_cache, llm_requests, predictions
from distil_platform.tasks.spec import ModelRef, get_task


class Fake:
    """``/v1/chat/completions`` whose reply is chosen by the last user message:

    ``truncate <text>``: ``<text>`` with finish_reason length and 100 reasoning tokens.
    ``empty``: no content, finish_reason length, 2048 reasoning tokens (budget spent thinking).
    ``blocked``: no content, finish_reason content_filter.  ``sleep <s> ...``: answers after ``s`` s.
    ``hang``: sleeps 5 s.  Judge prompts (system prompt of the LLM judge): after 0.2 s, GOOD when
    the model answer equals the reference, else BAD.  Anything else: ``answer: <prompt>``, stop.
    Records every body and the largest number of requests in flight at once."""

    def __init__(self, route=None):
        self.route = route  # body -> (content, finish_reason, reasoning tokens): overrides the rules above
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.bodies.append(body)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    self._answer(body)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def _answer(self, body):
                prompt = body["messages"][-1]["content"]
                content, finish, reasoning = f"answer: {prompt}", "stop", None
                if fake.route is not None:
                    content, finish, reasoning = fake.route(body)
                elif "GOOD or BAD" in body["messages"][0]["content"]:
                    time.sleep(0.2)
                    model = prompt.split("Model answer:\n", 1)[1].split("\n\nVerdict", 1)[0].strip()
                    reference = prompt.split("Reference answer:\n", 1)[1].split("\n\nModel answer", 1)[0].strip()
                    content = "GOOD" if model == reference else "BAD"
                elif prompt.startswith("truncate "):
                    content, finish, reasoning = prompt.removeprefix("truncate "), "length", 100
                elif prompt == "empty":
                    content, finish, reasoning = None, "length", 2048
                elif prompt == "blocked":
                    content, finish = None, "content_filter"
                elif prompt.startswith("sleep "):
                    time.sleep(float(prompt.split()[1]))
                elif prompt == "hang":
                    time.sleep(5)
                usage = {"prompt_tokens": 10, "completion_tokens": 5 + (reasoning or 0), "total_tokens": 15}
                if reasoning is not None:
                    usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
                payload = {"id": "x", "object": "chat.completion", "model": body["model"], "usage": usage,
                           "choices": [{"index": 0, "finish_reason": finish,
                                        "message": {"role": "assistant", "content": content}}]}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128  # the default backlog of 5 drops connects of a concurrent burst

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = Fake()
    yield server
    server.close()


@pytest.fixture(params=["fast", "litellm"])
def transport(request):
    return request.param


def _client(fake, transport="fast", **kw) -> LLMClient:
    kw = {"api_base": fake.base, "api_key": "sk-x", "concurrency": 8, "timeout_s": 5.0, "max_retries": 3,
          "retry_base_s": 0.01, "retry_max_s": 0.05, "fast_path": transport == "fast",
          "price_lookup": lambda model: (1e-3, 2e-3), **kw}
    return LLMClient("openai/fake-model", **kw)


def _req(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **kw)


def test_finish_reason_and_reasoning_tokens_are_recorded_cached_and_replayed(fake, transport):
    store = ResultsStore()
    client = _client(fake, transport, store=store, run_id="r1", task="t", stage="frontier")
    prompts = ["plain", "truncate SELECT name FROM", "empty", "blocked"]
    results = client.chat_batch([_req(p) for p in prompts])
    assert [r.finish_reason for r in results] == ["stop", "length", "length", "content_filter"]
    assert [r.reasoning_tokens for r in results] == [None, 100, 2048, None]
    assert [r.truncated for r in results] == [False, True, True, False]
    assert [r.empty for r in results] == [False, False, True, True]
    assert all(r.ok for r in results)  # billed outcomes, not failures
    # Billed: the empty reply's reasoning tokens are paid for.
    assert results[2].cost_usd == pytest.approx(10 * 1e-3 + 2053 * 2e-3)
    assert client.reply_counts() == {"answered": 4, "truncated": 2, "empty": 2, "content_filter": 1, "failed": 0,
                                     "timeouts": 0, "retries": 0, "reasoning_tokens": 2148}
    rows = {r["cache_key"]: r for r in store.select(llm_requests, run_id="r1")}
    cached = {r["key"]: r["response"] for r in store.select(llm_cache)}
    assert sorted(r["finish_reason"] for r in rows.values()) == ["content_filter", "length", "length", "stop"]
    assert sorted(c["finish_reason"] for c in cached.values()) == ["content_filter", "length", "length", "stop"]
    assert sorted(r["reasoning_tokens"] or 0 for r in rows.values()) == [0, 0, 100, 2048]

    # A rerun pays nothing and sees the same outcome.
    calls = len(fake.bodies)
    again = _client(fake, transport, store=store, run_id="r2", task="t", stage="frontier")
    replay = again.chat_batch([_req(p) for p in prompts])
    assert len(fake.bodies) == calls and all(r.cache_hit for r in replay)
    assert [(r.text, r.finish_reason, r.reasoning_tokens) for r in replay] == \
        [(r.text, r.finish_reason, r.reasoning_tokens) for r in results]
    assert again.reply_counts()["truncated"] == 2 and again.reply_counts()["empty"] == 2
    assert {r["finish_reason"] for r in store.select(llm_requests, run_id="r2")} == {"stop", "length", "content_filter"}


def test_request_timeout_scales_with_max_tokens_and_a_fixed_one_overrides_it(fake, monkeypatch):
    from distil_platform.llm.chat import request_timeout_s

    assert request_timeout_s(256) == 60.0  # short answers keep the 60 s floor
    assert request_timeout_s(1700) == pytest.approx(30 + 1700 / 20)  # a teacher reply: 115 s
    assert request_timeout_s(4096) == pytest.approx(234.8)  # a reasoning model's budget
    assert LLMResource().timeout_s is None and LLMResource().max_timeout_retries == 2
    assert _client(fake, timeout_s=None).request_timeout(_req("x", max_tokens=4096)) == pytest.approx(234.8)
    assert _client(fake, timeout_s=7.0).request_timeout(_req("x", max_tokens=4096)) == 7.0

    # Through the wire: with the floor and rate scaled down, a request that may write 200 tokens
    # gets 2 s and outlives a 1 s answer; one that may write 10 gets 0.3 s and times out.
    monkeypatch.setattr(chat_module, "MIN_TIMEOUT_S", 0.3)
    monkeypatch.setattr(chat_module, "TIMEOUT_BASE_S", 0.0)
    monkeypatch.setattr(chat_module, "TIMEOUT_TOKENS_PER_S", 100.0)
    client = _client(fake, timeout_s=None, max_timeout_retries=0, max_error_rate=1.0)
    long, short = client.chat_batch([_req("sleep 1 long", max_tokens=200), _req("sleep 1 short", max_tokens=10)])
    assert long.ok and long.text == "answer: sleep 1 long" and long.timeouts == 0
    assert not short.ok and "timeout after 0.3s" in short.error and short.timeouts == 1


def test_timeouts_are_retried_at_most_max_timeout_retries_and_counted(fake, transport):
    store = ResultsStore()
    client = _client(fake, transport, store=store, timeout_s=0.3, max_retries=5, max_error_rate=1.0, run_id="r")
    result, fine = client.chat_batch([_req("hang"), _req("fine")])
    hang_calls = sum(1 for b in fake.bodies if b["messages"][-1]["content"] == "hang")
    assert hang_calls == 3  # 1 + max_timeout_retries (2), not 1 + max_retries (5): each may be billed
    assert not result.ok and result.timeouts == 3 and "3 timed-out attempts" in result.error
    assert fine.ok and fine.timeouts == 0
    assert client.reply_counts()["timeouts"] == 3 and client.reply_counts()["failed"] == 1
    row = next(r for r in store.select(llm_requests, run_id="r") if r["error"])
    assert row["timeouts"] == 3


def test_reasoning_effort_per_model_is_sent_and_keys_the_cache(fake, transport):
    store = ResultsStore()
    low = ModelRef(model="openai/fake-model", api_base=fake.base, reasoning_effort="low", timeout_s=9.0)
    plain = ModelRef(model="openai/fake-model", api_base=fake.base)
    ctx = SimpleNamespace(run_id="r", log=SimpleNamespace(info=lambda m: None, warning=lambda m: None))
    llm = LLMResource(fast_path=transport == "fast")
    client = api_client(ctx, llm, low, stage="frontier", task="t", concurrency=4)
    assert client.timeout_s == 9.0 and client.request_extra == {"reasoning_effort": "low"}
    assert client.chat_batch([_req("q")])[0].ok
    assert fake.bodies[-1]["reasoning_effort"] == "low"
    # Another effort is another answer: not served from the "low" entry.
    other = api_client(ctx, llm, plain, stage="frontier", task="t", concurrency=4)
    assert other.timeout_s is None and not other.chat_batch([_req("q")])[0].cache_hit
    assert "reasoning_effort" not in fake.bodies[-1] and len(fake.bodies) == 2
    # The same effort again is a cache hit; client_for_ref carries the same settings.
    again = llm.client_for_ref(low, run_id="r2", store=store)
    assert again.request_extra == {"reasoning_effort": "low"} and again.timeout_s == 9.0
    assert again.chat_batch([_req("q")])[0].cache_hit and len(fake.bodies) == 2


def test_gpt5_small_models_think_at_low_effort_in_every_task():
    from distil_platform.tasks.spec import load_tasks

    tasks = load_tasks()
    assert len(tasks) == 9
    for spec in tasks.values() if isinstance(tasks, dict) else tasks:
        efforts = {ref.model: ref.reasoning_effort for ref in spec.comparison_models}
        assert efforts.get("openai/gpt-5-nano") == "low" and efforts.get("openai/gpt-5-mini") == "low", spec.name


def _rows(n=4):
    return [{"id": f"i{k}", "question": f"q{k}", "answer": "refund", "context": ""} for k in range(n)]


def test_empty_replies_are_never_scored_as_answers_truncated_ones_flagged_and_both_counted(fake):
    """Through the client: a reasoning model that spent its budget thinking returns no text. For a
    comparison model (``empty_reply="unscorable"``) the item is unscorable, not a 0; for the model
    under test (the default) it is a 0 that is never left out; either way it is counted per model
    and stored with its finish reason, and the scorer never sees it."""
    spec = get_task("banking77")
    rows = [{"id": "a", "question": "plain", "answer": "answer: plain", "context": ""},
            {"id": "b", "question": "empty", "answer": "card_arrival", "context": ""},
            {"id": "c", "question": "truncate card_arr", "answer": "card_arrival", "context": ""}]
    client = _client(fake, store=ResultsStore(), run_id="e1")
    ask = client_answer_fn(client, 0.0, 64, [r["id"] for r in rows])

    def answer(messages_list, repeat):  # the fake reads the bare question (not the rendered prompt)
        return ask([[{"role": "user", "content": r["question"]}] for r in rows], repeat)

    as_student = {r.item_id: r for r in evaluate(spec, rows, answer)}
    assert as_student["b"].score == 0.0 and as_student["b"].outcome == "empty"
    assert as_student["b"].detail == "empty reply (finish_reason=length): billed, no answer; scored 0"
    assert summarize(list(as_student.values())).n == 3 and summarize(list(as_student.values())).empty == 1

    results = evaluate(spec, rows, answer, empty_reply="unscorable")
    by_id = {r.item_id: r for r in results}
    assert by_id["b"].score is None and by_id["b"].outcome == "empty" and not by_id["b"].parse_ok
    assert "empty reply (finish_reason=length)" in by_id["b"].detail and by_id["b"].reasoning_tokens == 2048
    assert by_id["c"].outcome == "truncated" and by_id["c"].score == 0.0 and "truncated" in by_id["c"].detail
    assert by_id["a"].outcome == "" and by_id["a"].finish_reason == "stop"
    summary = summarize(results)
    assert summary.n == 2  # the empty item is left out of the mean, like a missing judge verdict
    # Both replies were cut off at max_tokens (truncated counts them, text or not); one had no text.
    assert (summary.empty, summary.truncated, summary.unscorable, summary.request_errors) == (1, 2, 1, 0)
    assert summary.finish_reasons == {"length": 2, "stop": 1}
    assert summary.mean_reasoning_tokens == pytest.approx((2048 + 100) / 2)
    md = reply_outcome_metadata(summary)
    assert md["empty_replies"] == 1 and md["truncated"] == 2 and md["finish_reasons"].data == {"length": 2, "stop": 1}
    # The per-model dict the baseline/frontier evals publish carries the counts.
    assert {"truncated", "empty", "timeouts", "scoring_errors", "finish_reasons"} <= set(summary.as_dict())

    store = ResultsStore()
    store.insert(predictions, prediction_rows(results, task="t", stage="frontier_evals", model="m", run_id="e1"))
    stored = results_from_store_rows(store.select(predictions, run_id="e1"))
    assert [(r.item_id, r.outcome, r.finish_reason) for r in sorted(stored, key=lambda r: r.item_id)] == \
        [("a", "", "stop"), ("b", "empty", "length"), ("c", "truncated", "length")]


def test_an_eval_whose_every_reply_is_empty_says_so():
    spec = get_task("banking77")
    results = score_answers(spec, _rows(3), [Answer(text="", finish_reason="length")] * 3, empty_reply="unscorable")
    with pytest.raises(ValueError, match=r"3 empty, 3 cut off at max_tokens.*reasoning_effort"):
        summarize(results)


def test_poison_predictions_are_scored_wrong_and_a_scorer_that_raises_makes_one_item_unscorable(monkeypatch):
    """The issue's poison through the real scorers (SQL nested 3,000 parentheses deep, a tool call
    nested 2,000 brackets deep): each scores 0, nothing raises. A scorer that does raise on a reply
    (here the tool-call scorer recursing without end, a real RecursionError) makes that one item
    unscorable with the reason; the eval goes on and counts it."""
    from distil_platform.evaluation import scoring

    sql = get_task("text2sql")
    ddl = "CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT, salary REAL);"
    gold = "SELECT MAX(salary) FROM employees;"
    rows = [{"id": k, "question": "Highest salary?", "answer": gold, "context": ddl} for k in ("p", "g")]
    poison = "SELECT " + "(" * 3000 + "1" + ")" * 3000 + " FROM employees;"
    results = score_answers(sql, rows, [Answer(text=poison), Answer(text=gold)])
    assert [r.score for r in results] == [0.0, 1.0] and "parser stack overflow" in results[0].detail

    tools = get_task("smart_home")
    call = {"name": "toggle_lights", "parameters": {"room": "kitchen", "state": "on"}}
    row = {"id": "t", "question": "kitchen lights on", "answer": json.dumps(call), "context": ""}
    deep = [Answer(text="[" * 2000), Answer(text='{"name": ' + "[" * 2000 + "]" * 2000 + "}")]
    assert [r.score for r in score_answers(tools, [row, row], deep)] == [0.0, 0.0]

    real = scoring.tool_call_equivalence

    def recursing(prediction, reference, tools_):
        def down(depth):
            return down(depth + 1)
        return down(0) if prediction.startswith("[") else real(prediction, reference, tools_)

    monkeypatch.setattr(scoring, "tool_call_equivalence", recursing)
    rows3 = [dict(row, id=f"t{k}") for k in range(3)]
    out = score_answers(tools, rows3, [Answer(text="[" * 2000), Answer(text=json.dumps(call)), Answer(text="no")])
    assert out[0].score is None and out[0].outcome == "scoring_error" and not out[0].parse_ok
    assert out[0].detail.startswith("scoring_error: RecursionError")
    assert [r.score for r in out[1:]] == [1.0, 0.0]
    summary = summarize(out)
    assert (summary.scoring_errors, summary.unscorable, summary.n) == (1, 1, 2)


def test_a_failing_judge_call_and_a_broken_reference_still_raise():
    """Not the reply's fault, so not an unscorable item: a judge endpoint that fails, and a test row
    the scorer cannot score (a text2sql row with no schema)."""
    from distil_platform.evaluation.scoring import SQLSchemaError

    spec = get_task("hotpotqa")
    rows = [{"id": "a", "question": "Who?", "answer": "Tolkien", "context": "Tolkien wrote it."}]

    def broken_judge(messages):
        raise ConnectionError("judge endpoint down")

    with pytest.raises(ConnectionError, match="judge endpoint down"):
        score_answers(spec, rows, [Answer(text="Tolkien")], judge=broken_judge)
    no_schema = [{"id": "b", "question": "Who earns most?", "answer": "SELECT 1", "context": ""}]
    with pytest.raises(SQLSchemaError):
        score_answers(get_task("text2sql"), no_schema, [Answer(text="SELECT 1")])


def test_the_judge_runs_every_item_of_a_pass_concurrently_with_the_same_scores(fake):
    spec = get_task("hotpotqa")
    n = 12
    rows = [{"id": f"i{k}", "question": f"Question {k}?", "answer": f"Answer {k}", "context": f"Answer {k} is it."}
            for k in range(n)]
    answers = [Answer(text=f"Answer {k}" if k % 3 else "something else") for k in range(n)]
    ref = ModelRef(model="openai/judge", api_base=fake.base, tier="judge", max_tokens=16)
    ctx = SimpleNamespace(run_id="j", log=SimpleNamespace(info=lambda m: None, warning=lambda m: None))
    judge = build_judge(spec.model_copy(update={"judge": ref}), LLMResource(concurrency=16), ctx)
    assert isinstance(judge, BatchJudge) and judge.client.concurrency == 16
    start = time.monotonic()
    batched = score_answers(spec, rows, answers, judge=judge)
    wall = time.monotonic() - start
    assert len(fake.bodies) == n and fake.max_in_flight >= 8  # concurrent, one request per item
    assert wall < n * 0.2  # 12 sequential calls would take >= 2.4 s

    # One call at a time (what build_judge did before), on a fresh cache: the same scores.
    fake.max_in_flight = 0
    one_at_a_time = _client(fake, concurrency=1, store=ResultsStore())

    def sequential(messages):
        return one_at_a_time.chat_batch([ChatRequest(messages=messages, temperature=0.0, max_tokens=16)])[0].text

    sequential.model = ref.model
    before = score_answers(spec, rows, answers, judge=sequential)
    assert fake.max_in_flight == 1
    assert [r.score for r in batched] == [r.score for r in before] == [0.0 if k % 3 == 0 else 1.0 for k in range(n)]
    assert [r.metric for r in batched] == [r.metric for r in before] == ["llm_judge:openai/judge"] * n
    # Empty predictions never reach the judge; a second pass is served from the judge's batch.
    calls = len(fake.bodies)
    score_answers(spec, rows[:2], [Answer(text="", finish_reason="length"), Answer(text="Answer 1")], judge=judge)
    assert len(fake.bodies) == calls


def test_frontier_eval_counts_truncated_and_empty_replies_per_model_and_a_rerun_pays_nothing(monkeypatch, tmp_path):
    """``<task>_frontier_evals`` with a reasoning model that spends its whole budget thinking on some
    items: those are counted in the model's metadata with the truncations and reasoning tokens and
    stored with their finish reason; its ``reasoning_effort`` goes out with every request; a rerun
    is all cache. The empty items are no answer the model gave: unscorable (left out of its mean and of
    the pairing, counted), not 0s."""
    import dagster as dg
    import polars as pl
    from cost_fixtures import test_rows as fixture_rows
    from distil_platform.assets.evals import BaselineConfig, build_eval_assets
    from distil_platform.resources import ResultsStoreResource

    from distil_platform.profiles import get_profile
    from distil_platform.tasks.prompts import format_answer

    monkeypatch.setenv("DISTIL_PROFILE", "test")
    spec = get_task("banking77")
    rows = fixture_rows(spec)

    def route(body):
        user = body["messages"][-1]["content"]
        k = next(k for k, r in enumerate(rows) if r["question"] in user)
        if k in (8, 9):
            return None, "length", 2048  # thought through the whole budget: no answer
        if k == 10:
            return format_answer(spec, rows[k]["answer"])[:4], "length", 1500  # cut off mid-answer
        return (format_answer(spec, rows[k]["answer"]) if k < 8 else "not_a_label"), "stop", 300

    server = Fake(route=route)
    try:
        spec = spec.model_copy(update={"frontier_temperature_0": False, "comparison_models": [
            ModelRef(model="openai/thinker", api_base=server.base, tier="mid_tier", temperature=1.0, repeats=2,
                     max_tokens=2048, reasoning_effort="low", supports_temperature_0=False)]})
        test_path = tmp_path / "test.parquet"
        pl.DataFrame(rows).select("id", "question", "answer", "context").write_parquet(test_path)
        store = ResultsStore()
        store.insert(predictions, [{"run_id": "stu-run", "task": spec.name, "stage": "student_eval", "model": "stu",
                                        "variant": "student", "item_id": r["id"], "repeat": 0, "score": 1.0,
                                        "metric": "exact_match"} for r in rows])
        student_eval = {"run_id": "stu-run", "model": "stu", "score": 1.0, "ci": [0.7, 1.0]}

        def run():
            frontier_evals = build_eval_assets(spec, get_profile("test"))[1]
            context = dg.build_asset_context()
            out = frontier_evals(context, config=BaselineConfig(), seed_set={"test_path": str(test_path)},
                                 student_eval=student_eval, llm=LLMResource(max_retries=0),
                                 results_store=ResultsStoreResource())
            return out, context.run_id

        out, run_id = run()
        assert len(server.bodies) == 24 and {b.get("reasoning_effort") for b in server.bodies} == {"low"}
        model = out.metadata["per_model"].value["openai/thinker"]
        assert model["empty"] == 4 and model["truncated"] == 6 and model["scoring_errors"] == 0
        assert model["finish_reasons"] == {"length": 6, "stop": 18} and model["request_errors"] == 0
        assert model["mean_reasoning_tokens"] == pytest.approx((18 * 300 + 4 * 2048 + 2 * 1500) / 24)
        assert model["n"] == 10 and model["score"] == pytest.approx(8 / 10) and model["unscorable"] == 4
        assert out.metadata["per_model"].value["openai/thinker"]["vs_student"]["n_paired"] == 10
        stored = store.select(predictions, run_id=run_id, stage="frontier_evals")
        empty = [r for r in stored if not r["prediction"]]
        assert len(empty) == 4 and {r["finish_reason"] for r in empty} == {"length"}
        assert {r["reasoning_tokens"] for r in empty} == {2048}
        assert {r.outcome for r in results_from_store_rows(empty)} == {"empty"}

        again, _ = run()
        assert len(server.bodies) == 24 and again.metadata["new_model_calls"].value == 0
        assert again.metadata["per_model"].value["openai/thinker"]["empty"] == 4
    finally:
        server.close()


def test_a_judge_verdict_cut_off_at_max_tokens_is_no_verdict():
    """A judge that thinks past its budget ("... so GOOD" cut off): the item is unscorable, not a
    verdict read out of a truncated reply, and not a 0."""
    server = Fake(route=lambda body: ("The model answer matches. Verdict: GOOD", "length", None))
    try:
        spec = get_task("hotpotqa")
        ref = ModelRef(model="openai/judge", api_base=server.base, tier="judge", max_tokens=16)
        judge = BatchJudge(_client(server, store=ResultsStore()), ref)
        rows = [{"id": "a", "question": "Who?", "answer": "Tolkien", "context": "Tolkien wrote it."}]
        result = score_answers(spec, rows, [Answer(text="Tolkien")], judge=judge)[0]
        assert result.score is None and result.detail == "judge verdict unparseable" and len(server.bodies) == 1
    finally:
        server.close()
