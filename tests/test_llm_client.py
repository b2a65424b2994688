"""LLM client against a scripted stub OpenAI-compatible server: retries, timeouts, error-rate limit,
cache, repeats, budget cap, store rows. Both transports: the aiohttp fast path and litellm."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from distil_platform.llm import (
    BudgetExceeded,
    ChatRequest,
    ErrorRateExceeded,
    LLMClient,
    UnknownPriceError,
    chain_price_lookups,
    litellm_price_lookup,
)
from distil_platform.store import ResultsStore, llm_cache, llm_requests


class StubServer:
    """OpenAI-compatible /v1/chat/completions whose behaviour is chosen by the user message:

    ``429x<N>``: 429 with Retry-After for the first N calls of that prompt, then 200.
    ``500``: always 500.  ``hang``: sleeps longer than any test timeout.  ``nousage``: 200 without
    usage.  anything else: 200 echoing the prompt, with usage (10 prompt, 5 completion tokens).
    """

    def __init__(self):
        self.calls: list[dict] = []
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    self.rfile.read(int(self.headers["Content-Length"]))
                    return self._send(404, {"error": "not found"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with stub.lock:
                    stub.calls.append({**body, "authorization": self.headers.get("Authorization")})
                    count = stub.seen[prompt] = stub.seen.get(prompt, 0) + 1
                if prompt.startswith("429x") and count <= int(prompt[4:].split()[0]):
                    return self._send(429, {"error": "slow down"}, {"Retry-After": "0.05"})
                if prompt.startswith("500"):
                    return self._send(500, {"error": "boom"})
                if prompt.startswith("hang"):
                    time.sleep(3)
                    return self._send(200, {"choices": [{"message": {"content": "late"}}]})
                message = {"role": "assistant", "content": f"echo: {prompt}"}
                if body.get("tools"):
                    message = {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "c1", "type": "function",
                         "function": {"name": body["tools"][0]["function"]["name"], "arguments": "{\"x\": 1}"}}]}
                response = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
                if not prompt.startswith("nousage"):
                    response["usage"] = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
                self._send(200, response)

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # client timed out and left
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.api_base = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    server = StubServer()
    yield server
    server.close()


@pytest.fixture(params=["fast", "litellm"])
def transport(request):
    return request.param


def _client(stub, transport="fast", **kw) -> LLMClient:
    defaults = {"api_base": stub.api_base, "api_key": "sk-test-secret", "concurrency": 8, "timeout_s": 2.0,
                    "max_retries": 3, "retry_base_s": 0.01, "retry_max_s": 0.05, "fast_path": (transport == "fast"),
                    "price_lookup": lambda model: (1e-3, 2e-3)}
    defaults.update(kw)
    return LLMClient("openai/stub-model", **defaults)


def _req(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **kw)


def test_batch_answers_in_order_with_usage_and_cost(stub, transport):
    store = ResultsStore()
    logs: list[str] = []
    client = _client(stub, transport, store=store, log=logs.append, run_id="r1", task="t", stage="eval")
    results = client.chat_batch([_req(f"q{i}", item_id=str(i)) for i in range(20)])
    assert [r.text for r in results] == [f"echo: q{i}" for i in range(20)]
    assert all(r.ok and not r.cache_hit and r.prompt_tokens == 10 and r.completion_tokens == 5 for r in results)
    assert results[0].cost_usd == pytest.approx(10 * 1e-3 + 5 * 2e-3)
    assert all(call["model"] == "stub-model" for call in stub.calls)
    assert {call["authorization"] for call in stub.calls} == {"Bearer sk-test-secret"}
    rows = store.select(llm_requests, run_id="r1")
    assert len(rows) == 20 and {r["stage"] for r in rows} == {"eval"} and not any(r["cache_hit"] for r in rows)
    assert len(store.select(llm_cache)) == 20
    assert logs and "20/20 done" in logs[-1]
    assert all("sk-test-secret" not in line for line in logs) and "sk-test" not in repr(client)


def test_tools_pass_through_and_tool_calls_come_back(stub, transport):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    (result,) = _client(stub, transport).chat_batch([_req("weather?", tools=tools)])
    assert stub.calls[0]["tools"] == tools
    assert result.tool_calls[0]["function"] == {"name": "get_weather", "arguments": '{"x": 1}'}


def test_429_then_200_is_retried_honouring_retry_after(stub, transport):
    client = _client(stub, transport, retry_base_s=0.0)
    t0 = time.perf_counter()
    (result,) = client.chat_batch([_req("429x2 please")])
    assert result.ok and result.text == "echo: 429x2 please" and result.attempts == 3
    assert time.perf_counter() - t0 >= 0.1  # two Retry-After: 0.05 waits
    assert stub.seen["429x2 please"] == 3


def test_persistent_500_is_an_item_error_not_a_batch_failure(stub, transport):
    client = _client(stub, transport, max_retries=2)
    results = client.chat_batch([_req("500 broken")] + [_req(f"ok{i}") for i in range(9)])
    assert results[0].error and "500" in results[0].error and results[0].attempts == 3
    assert stub.seen["500 broken"] == 3
    assert all(r.ok for r in results[1:])


def test_hang_times_out_and_is_retried_then_recorded(stub):
    store = ResultsStore()
    client = _client(stub, timeout_s=0.3, max_retries=1, store=store)
    t0 = time.perf_counter()
    results = client.chat_batch([_req("hang forever")] + [_req(f"ok{i}") for i in range(3)])
    assert time.perf_counter() - t0 < 2.5
    assert "timeout" in results[0].error and stub.seen["hang forever"] == 2
    assert [r.ok for r in results[1:]] == [True] * 3
    errors = [r for r in store.select(llm_requests) if r["error"]]
    assert len(errors) == 1
    assert len(store.select(llm_cache)) == 3  # errors are never cached


def test_litellm_timeout_is_retried(stub):
    client = _client(stub, "litellm", timeout_s=0.3, max_retries=1, max_error_rate=1.0)
    (result,) = client.chat_batch([_req("hang litellm")])
    assert result.error and stub.seen["hang litellm"] == 2


def test_error_rate_limit_stops_the_batch_and_keeps_completed(stub):
    store = ResultsStore()
    client = _client(stub, store=store, concurrency=2, max_retries=0, max_error_rate=0.3, min_items_for_error_rate=4)
    requests = [_req(f"500 #{i}") if i % 2 else _req(f"fine {i}") for i in range(40)]
    with pytest.raises(ErrorRateExceeded, match="max_error_rate") as info:
        client.chat_batch(requests)
    assert 4 <= len(info.value.results) < 40
    assert len(stub.calls) < 40
    ok = [r for r in info.value.results if r.ok]
    assert ok and len(store.select(llm_cache)) == len(ok)
    # The completed answers are not asked again on the rerun.
    stub.calls.clear()
    with pytest.raises(ErrorRateExceeded):
        client.chat_batch(requests)
    assert not any(call["messages"][0]["content"] in {r.request.messages[0]["content"] for r in ok}
                   for call in stub.calls)


def test_cache_second_run_makes_no_http_calls_and_repeats_are_distinct(stub, transport):
    store = ResultsStore()
    requests = [_req(f"q{i}") for i in range(5)]
    first = _client(stub, transport, store=store).chat_batch(requests)
    assert len(stub.calls) == 5
    second_client = _client(stub, transport, store=store)
    second = second_client.chat_batch(requests)
    assert len(stub.calls) == 5 and second_client.http_calls == 0
    assert all(r.cache_hit for r in second) and [r.text for r in second] == [r.text for r in first]
    assert second[0].cost_usd == first[0].cost_usd and second_client.spent_usd == 0.0
    repeats = [_req("same prompt", temperature=0.7, repeat=k) for k in range(3)]
    _client(stub, transport, store=store).chat_batch(repeats)
    assert stub.seen["same prompt"] == 3
    # Changing a decoding parameter is a different request too.
    _client(stub, transport, store=store).chat_batch([_req("q0", max_tokens=7)])
    assert stub.seen["q0"] == 2
    rows = store.select(llm_requests)
    assert sum(r["cache_hit"] for r in rows) == 5


def test_identical_requests_in_one_batch_are_sent_once(stub):
    results = _client(stub).chat_batch([_req("dup")] * 3)
    assert stub.seen["dup"] == 1 and [r.text for r in results] == ["echo: dup"] * 3
    assert [r.cache_hit for r in results] == [False, True, True]


def test_budget_cap_stops_before_passing_max_usd(stub):
    store = ResultsStore()
    # Each call costs 10 * 1e-3 + 5 * 2e-3 = 0.02; the pre-call worst case is ~0.022, so the 5th call
    # (0.08 spent) would risk passing 0.1 and is never sent.
    client = _client(stub, store=store, concurrency=1, max_usd=0.1)
    requests = [_req(f"q{i}", max_tokens=5) for i in range(20)]
    with pytest.raises(BudgetExceeded, match="max_usd") as info:
        client.chat_batch(requests)
    done = info.value.results
    assert len(done) == 4 and len(stub.calls) == 4
    assert client.spent_usd <= 0.1 + 1e-12
    assert sum(r.cost_usd for r in done) == pytest.approx(client.spent_usd)
    assert len(store.select(llm_cache)) == len(done)


def test_budget_needs_a_price(stub):
    client = _client(stub, max_usd=1.0, price_lookup=lambda model: None)
    with pytest.raises(UnknownPriceError, match="openai/stub-model"):
        client.chat_batch([_req("x")])
    assert stub.calls == []


def test_tokens_are_counted_when_the_server_reports_none(stub):
    client = _client(stub, token_counter=lambda messages, text: (len(messages[0]["content"]), len(text)))
    (result,) = client.chat_batch([_req("nousage here")])
    assert result.tokens_counted and result.prompt_tokens == len("nousage here")
    assert result.completion_tokens == len("echo: nousage here")
    # Without a tokenizer, litellm's counter is the fallback.
    (fallback,) = _client(stub).chat_batch([_req("nousage again")])
    assert fallback.tokens_counted and fallback.prompt_tokens > 0 and fallback.completion_tokens > 0


def test_fatal_4xx_is_not_retried(stub):
    client = _client(stub, api_base=stub.api_base.replace("/v1", "/nope"), max_error_rate=1.0)
    (result,) = client.chat_batch([_req("x")])
    assert result.error and result.attempts == 1


def test_price_lookups():
    price = litellm_price_lookup("gpt-5-nano")
    assert price is not None and price[0] > 0
    assert litellm_price_lookup("openai/no-such-model-xyz") is None
    lookup = chain_price_lookups(lambda m: (1.0, 2.0) if m == "mine" else None, litellm_price_lookup)
    assert lookup("mine") == (1.0, 2.0) and lookup("gpt-5-nano") == price


def test_async_api_and_sync_api_inside_a_running_loop(stub):
    import asyncio

    client = _client(stub)

    async def main():
        results = await client.achat_batch([_req("a"), _req("b")])
        # The sync API also works inside a running loop (it runs the batch on its own thread).
        return results, client.chat_batch([_req("c")])

    results, nested = asyncio.run(main())
    assert [r.text for r in results] == ["echo: a", "echo: b"] and nested[0].text == "echo: c"


def test_llm_resource_reads_the_key_from_env_and_never_shows_it(stub, monkeypatch):
    import dagster as dg

    from distil_platform.resources.models import LLMResource
    from distil_platform.taskspec import ModelRef

    monkeypatch.setenv("STUB_KEY", "sk-env-secret")
    resource = LLMResource(model="openai/stub-model", api_base=stub.api_base, api_key=dg.EnvVar("STUB_KEY"))
    with dg.build_resources({"llm": resource}) as resources:
        client = resources.llm.client(run_id="res", stage="judge")
        assert [r.text for r in client.chat_batch([_req("via resource")])] == ["echo: via resource"]
        assert stub.calls[-1]["authorization"] == "Bearer sk-env-secret"
        assert "sk-env-secret" not in repr(client) and "sk-env-secret" not in repr(resources.llm)
        # Another model through the same resource does not inherit the configured key or endpoint.
        other = resources.llm.client(model="gpt-5-nano")
        assert other.api_base is None and other._api_key is None
    ref = ModelRef(model="openai/stub-model", api_base=stub.api_base, api_key_env="REF_KEY")
    with pytest.raises(ValueError, match="REF_KEY"):
        LLMResource().client_for_ref(ref)
    monkeypatch.setenv("REF_KEY", "sk-ref")
    client = LLMResource().client_for_ref(ref, stage="frontier")
    client.chat_batch([_req("ref call")])
    assert stub.calls[-1]["authorization"] == "Bearer sk-ref"
    assert ResultsStore().select(llm_requests, stage="frontier")


def test_cancelled_batch_keeps_what_completed(stub):
    import asyncio

    store = ResultsStore()
    client = _client(stub, store=store, concurrency=4, timeout_s=10.0)
    requests = [_req(f"quick {i}") for i in range(4)] + [_req(f"hang {i}") for i in range(4)]

    async def main():
        task = asyncio.create_task(client.achat_batch(requests))
        await asyncio.sleep(1.0)  # the quick ones are done, the hanging ones are in flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    cached = {row["response"]["text"] for row in store.select(llm_cache)}
    assert cached == {f"echo: quick {i}" for i in range(4)}
    # Rerunning only asks for what is missing.
    stub.calls.clear()
    client.chat_batch(requests[:4])
    assert stub.calls == []
