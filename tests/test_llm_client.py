"""LLM client against a scripted stub OpenAI-compatible server: retries, timeouts, error-rate limit,
cache, repeats, budget cap, store rows. Both transports: the aiohttp fast path and litellm."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
from distil_platform.resources.models import LLMResource
from distil_platform.resources.store import ResultsStoreResource

from distil_platform.llm import (
    BudgetExceeded,
    ChatRequest,
    ErrorRateExceeded,
    LLMClient,
    UnknownPriceError,
    chain_price_lookups,
    litellm_price_lookup,
)
from distil_platform.storage.store import ResultsStore, llm_cache, llm_requests


class StubServer:
    """OpenAI-compatible /v1/chat/completions whose behaviour is chosen by the user message:

    ``429x<N>``: 429 with Retry-After for the first N calls of that prompt, then 200.
    ``500``: always 500.  ``hang``: sleeps longer than any test timeout.  ``nousage``: 200 without
    usage.  ``cached``: usage reports 4 of the 10 prompt tokens as cached.  anything else: 200 echoing
    the prompt, with usage (10 prompt, 5 completion tokens). A request with ``logprobs`` gets one
    logprob entry per word of the answer (``top_logprobs`` alternatives each).
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
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                if body.get("logprobs"):
                    words = (message["content"] or "").split()
                    choice["logprobs"] = {"content": [
                        {"token": w, "logprob": -0.1 * (k + 1), "bytes": list(w.encode()),
                         "top_logprobs": [{"token": w, "logprob": -0.1 * (k + 1), "bytes": list(w.encode())}]
                         * int(body.get("top_logprobs") or 0)}
                        for k, w in enumerate(words)]}
                response = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                            "choices": [choice]}
                if not prompt.startswith("nousage"):
                    response["usage"] = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
                    if prompt.startswith("cached"):
                        response["usage"]["prompt_tokens_details"] = {"cached_tokens": 4}
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


def test_logprobs_and_response_format_pass_through_and_survive_the_cache(stub, transport):
    store = ResultsStore()
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    request = _req("two words", extra={"logprobs": True, "top_logprobs": 2, "response_format": schema})
    (result,) = _client(stub, transport, store=store).chat_batch([request])
    sent = stub.calls[0]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2 and sent["response_format"] == schema
    assert [t["token"] for t in result.logprobs] == ["echo:", "two", "words"]
    assert result.logprobs[1]["logprob"] == pytest.approx(-0.2) and len(result.logprobs[1]["top_logprobs"]) == 2
    client = _client(stub, transport, store=store)
    (again,) = client.chat_batch([request])
    assert again.cache_hit and client.http_calls == 0 and again.logprobs == result.logprobs
    # Without logprobs asked for there are none (and it is a different cache entry).
    (plain,) = _client(stub, transport, store=store).chat_batch([_req("two words")])
    assert plain.logprobs is None and not plain.cache_hit


def test_cached_prompt_tokens_are_read_priced_and_stored(stub, transport):
    store = ResultsStore()
    # (input, output, cached input) per token: 6 fresh + 4 cached prompt tokens, 5 completion tokens.
    client = _client(stub, transport, store=store, run_id="cached-run", price_lookup=lambda m: (1e-3, 2e-3, 1e-4))
    (result,) = client.chat_batch([_req("cached prefix")])
    assert result.cached_prompt_tokens == 4 and result.prompt_tokens == 10
    assert result.cost_usd == pytest.approx(6 * 1e-3 + 4 * 1e-4 + 5 * 2e-3)
    (row,) = store.select(llm_requests, run_id="cached-run")
    assert row["cached_prompt_tokens"] == 4 and row["cost_usd"] == pytest.approx(result.cost_usd)
    (hit,) = _client(stub, transport, store=store, price_lookup=lambda m: (1e-3, 2e-3, 1e-4)).chat_batch(
        [_req("cached prefix")])
    assert hit.cache_hit and hit.cached_prompt_tokens == 4 and hit.cost_usd == pytest.approx(result.cost_usd)
    # A two-value price bills cached tokens at the full input price; no cache report means None.
    (plain,) = _client(stub, transport).chat_batch([_req("not cached")])
    assert plain.cached_prompt_tokens is None and plain.cost_usd == pytest.approx(10 * 1e-3 + 5 * 2e-3)


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


def test_servers_of_one_name_share_cache_entries_only_with_one_identity(transport):
    """A bf16 and an fp8 server of one checkpoint answer to the same served name: only the same
    identity (checkpoint, backend, dtype/quantization) may reuse an answer."""
    from distil_platform.llm import cache_key, serving_identity

    store = ResultsStore()
    bf16_server, fp8_server = StubServer(), StubServer()
    try:
        request = _req("identity question")
        bf16 = serving_identity(served_model="stub-model", checkpoint_hash="abc123", backend="vllm", dtype="bfloat16")
        fp8 = {**bf16, "quantization": "fp8"}
        _client(bf16_server, transport, store=store, identity=bf16).chat_batch([request])
        fp8_client = _client(fp8_server, transport, store=store, identity=fp8)
        (fp8_answer,) = fp8_client.chat_batch([request])
        assert not fp8_answer.cache_hit and fp8_client.http_calls == 1 and len(fp8_server.calls) == 1
        # The same identity on another endpoint (a restarted server on a new port) reuses the answer.
        restarted = StubServer()
        try:
            again_client = _client(restarted, transport, store=store, identity=dict(reversed(list(fp8.items()))))
            (again,) = again_client.chat_batch([request])
            assert again.cache_hit and again_client.http_calls == 0 and restarted.calls == []
        finally:
            restarted.close()
        # Without an identity, the endpoint URL is the identity: two servers never share entries.
        first, second = _client(bf16_server, transport, store=store), _client(fp8_server, transport, store=store)
        first.chat_batch([_req("no identity")])
        (other,) = second.chat_batch([_req("no identity")])
        assert not other.cache_hit and second.http_calls == 1
        assert first.identity == bf16_server.api_base and second.identity == fp8_server.api_base
        identities = {row["identity"] for row in store.select(llm_cache)}
        assert {first.identity, second.identity} <= identities and len(identities) == 4
        assert cache_key("openai/stub-model", request, bf16) != cache_key("openai/stub-model", request, fp8)
    finally:
        bf16_server.close()
        fp8_server.close()


def test_provider_models_keep_their_cache_keys():
    """A provider model (no api_base) has no default identity, so answers cached before identities
    existed (paid for) are still found."""
    import hashlib
    import json as _json

    from distil_platform.llm import cache_key

    request = _req("hello", temperature=0.5, repeat=2)
    legacy = hashlib.sha256(_json.dumps(
        {"model": "gpt-5-nano", "messages": request.messages, "tools": None, "temperature": 0.5, "max_tokens": 256,
         "extra": {}, "repeat": 2}, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()
    client = LLMClient("gpt-5-nano", price_lookup=lambda m: None)
    assert client.identity is None and cache_key(client.model, request, client.identity) == legacy
    assert cache_key("gpt-5-nano", request, "gpt-5-nano@2025-08-07") != legacy
    with pytest.raises(ValueError, match="identity"):
        LLMClient("openai/x", api_base="http://h/v1", identity="  ")


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


def test_default_per_run_cap_stops_a_batch_priced_above_it(stub):
    """No max_usd set anywhere: the resource's default per-run cap (50 USD) still stops a batch that
    would pass it, names the setting to raise, and counts what the run already spent."""
    from distil_platform.resources.models import DEFAULT_MAX_USD_PER_RUN

    assert LLMResource().max_usd is None and LLMResource().max_usd_per_run == DEFAULT_MAX_USD_PER_RUN == 50.0
    store = ResultsStore()
    resource = LLMResource(model="openai/stub-model", api_base=stub.api_base, concurrency=1)

    def expensive(model):  # $1 per input and $2 per output token: each stub answer costs $20
        return (1.0, 2.0)

    requests = [_req(f"q{i}", max_tokens=5) for i in range(10)]
    client = resource.client(store=store, run_id="run-1", price_lookup=expensive)
    with pytest.raises(BudgetExceeded, match=r"max_usd_per_run=\$50") as info:
        client.chat_batch(requests)
    assert "raise max_usd_per_run" in str(info.value)
    assert len(stub.calls) == 2 and client.spent_usd == pytest.approx(40.0)  # a third could pass $50
    assert len(info.value.results) == 2  # what completed is kept (and cached)
    # The same run's next client gets what is left ($10): not enough for one more call.
    again = resource.client(store=store, run_id="run-1", price_lookup=expensive)
    with pytest.raises(BudgetExceeded, match=r"had spent \$40"):
        again.chat_batch([_req("q-next", max_tokens=5)])
    assert len(stub.calls) == 2
    # Cached answers bill nothing and pass; another run has its own cap; raising the cap on purpose
    # (or an explicit max_usd) lets the batch through.
    assert [r.cache_hit for r in again.chat_batch(requests[:2])] == [True, True]
    other = resource.client(store=store, run_id="run-2", price_lookup=expensive)
    with pytest.raises(BudgetExceeded):
        other.chat_batch(requests[2:])
    assert len(stub.calls) == 4
    raised = LLMResource(model="openai/stub-model", api_base=stub.api_base, concurrency=1, max_usd_per_run=1000.0)
    assert len(raised.client(store=store, run_id="run-3", price_lookup=expensive).chat_batch(requests)) == 10
    # A model with no known price (a local server) is not capped by default, and not an error.
    free = resource.client(store=store, run_id="run-1", price_lookup=lambda model: None)
    assert free.max_usd is None and free.chat_batch([_req("local model")])[0].ok


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

    from distil_platform.tasks.spec import ModelRef

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


def test_llm_resource_records_into_the_configured_results_store(stub, tmp_path):
    """Cache and usage rows go to the configured ResultsStoreResource (one store per Definitions),
    also when its url is given at launch; never to the default database."""
    default_before = len(ResultsStore().select(llm_requests))
    url = f"sqlite:///{tmp_path / 'configured.db'}"
    store_resource = ResultsStoreResource(url=url)
    resource = LLMResource(model="openai/stub-model", api_base=stub.api_base, results_store=store_resource)
    with dg.build_resources({"llm": resource, "results_store": store_resource}) as resources:
        resources.llm.client(run_id="configured").chat_batch([_req("to the configured store")])
    configured = ResultsStore(url)
    assert [r["run_id"] for r in configured.select(llm_requests)] == ["configured"]
    assert len(configured.select(llm_cache)) == 1
    assert len(ResultsStore().select(llm_requests)) == default_before

    # A launch-time url (configure_at_launch, as the Definitions bind it) reaches the LLM client too.
    launch_url = f"sqlite:///{tmp_path / 'at-launch.db'}"
    partial = ResultsStoreResource.configure_at_launch()
    seen = {}

    @dg.asset
    def ask(llm: LLMResource, results_store: ResultsStoreResource):
        client = llm.client(run_id="launched")
        client.chat_batch([_req("launched question")])
        seen["urls"] = (client.store.url, results_store.store().url)

    defs = dg.Definitions(assets=[ask], resources={
        "llm": LLMResource(model="openai/stub-model", api_base=stub.api_base, results_store=partial),
        "results_store": partial})
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        run_config={"resources": {"results_store": {"config": {"url": launch_url}}}})
    assert result.success and seen["urls"] == (launch_url, launch_url)
    assert [r["run_id"] for r in ResultsStore(launch_url).select(llm_requests)] == ["launched"]
    # An explicit store still wins, and the resource's identity belongs to its own endpoint only.
    explicit = ResultsStore(f"sqlite:///{tmp_path / 'explicit.db'}")
    assert LLMResource(identity="ckpt-1").client(model="openai/m", api_base="http://h/v1", store=explicit).store is explicit
    configured_identity = LLMResource(model="openai/m", api_base="http://h/v1", identity="ckpt-1")
    assert configured_identity.client().identity == "ckpt-1"
    assert configured_identity.client(api_base="http://other/v1").identity == "http://other/v1"


def test_definitions_share_one_results_store_with_the_llm_resource():
    from distil_platform.definitions import defs

    llm = defs.resources["llm"]
    assert llm.results_store is defs.resources["results_store"]


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
