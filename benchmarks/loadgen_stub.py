"""A stub OpenAI-compatible streaming server, for measuring a load generator alone (issue 31).

``POST /v1/chat/completions`` with ``"stream": true`` answers the way vLLM streams a chat completion:
a role chunk, then one ``data: {...}`` chunk per token with that token's text as the delta, then a
chunk with ``finish_reason``, then (with ``stream_options.include_usage``) a usage chunk with empty
``choices``, then ``data: [DONE]`` — every chunk at once, with no artificial delay, so every latency
a client measures against it is the client's own. Non-streaming requests get one
``chat.completion`` object (guidellm may send them). ``GET /v1/models`` and ``/health`` answer too.

Answers are the task's real reference answers (``--task``, the shipped sample's test split), one
drawn per request with a seeded ``random.Random``, cut at the request's ``max_tokens`` /
``max_completion_tokens``. Their tokens: with ``--tokenizer`` (a model-store name such as
``tiny-qwen3``, or a directory; needs ``DAGSTER_HOME`` for a store name) the tokenizer's own tokens,
each decoded to its text; without it, 4-character slices (a token is ~4 characters of English or SQL).
Usage's ``prompt_tokens`` is the request body's length / 4.

``--fail-every N`` answers HTTP 500 to every N-th chat request (for tests of error recording).

    .venv/bin/python benchmarks/loadgen_stub.py --port 8123 --cpu 0 [--tokenizer tiny-qwen3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CREATED = 1_700_000_000
_ID = "chatcmpl-stub"


def answer_texts(task: str) -> list[str]:
    """The task's reference answers (test split of the shipped sample), as the model would write them."""
    from distil_platform.tasks.prompts import format_answer
    from distil_platform.tasks.sources import load_seed_and_test
    from distil_platform.tasks.spec import get_task

    spec = get_task(task)
    rows = load_seed_and_test(spec, source="sample").test.to_dicts()
    return [format_answer(spec, r["answer"]) for r in rows]


def token_pieces(texts: list[str], tokenizer: str | None) -> list[list[str]]:
    """Each answer split into its tokens' texts (the tokenizer's, or 4-character slices)."""
    if not tokenizer:
        return [[t[i:i + 4] for i in range(0, len(t), 4)] or [""] for t in texts]
    from transformers import AutoTokenizer

    path = Path(tokenizer)
    if not path.is_dir():
        from distil_platform.storage.modelstore import resolve_model

        path = resolve_model(tokenizer)
    tok = AutoTokenizer.from_pretrained(path)
    return [[tok.decode([i]) for i in tok(t, add_special_tokens=False)["input_ids"]] or [""] for t in texts]


def _chunk(model: str, choices: list, **extra) -> bytes:
    body = {"id": _ID, "object": "chat.completion.chunk", "created": CREATED, "model": model, "choices": choices}
    body.update(extra)
    return b"data: " + json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def sse_body(pieces: list[str], model: str, prompt_tokens: int, include_usage: bool) -> bytes:
    """The whole SSE stream of one answer, as vLLM sends it (one chunk per token)."""
    def choice(delta: dict, finish: str | None = None) -> list:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    parts = [_chunk(model, choice({"role": "assistant", "content": ""}))]
    parts += [_chunk(model, choice({"content": p})) for p in pieces]
    parts.append(_chunk(model, [{"index": 0, "delta": {"content": ""}, "logprobs": None, "finish_reason": "stop",
                                 "stop_reason": None}]))
    if include_usage:
        n = len(pieces)
        parts.append(_chunk(model, [], usage={"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + n,
                                              "completion_tokens": n}))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def completion_body(pieces: list[str], model: str, prompt_tokens: int) -> bytes:
    n = len(pieces)
    return json.dumps({
        "id": _ID, "object": "chat.completion", "created": CREATED, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + n, "completion_tokens": n},
    }, separators=(",", ":")).encode()


def make_app(answers: list[list[str]], *, seed: int = 0, fail_every: int = 0, model_name: str = "stub"):
    from aiohttp import web

    rng = random.Random(seed)
    pick = rng.randrange
    n_answers = len(answers)
    cache: dict[tuple, bytes] = {}
    state = {"chat": 0}

    async def chat(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        state["chat"] += 1
        if fail_every and state["chat"] % fail_every == 0:
            return web.json_response({"error": {"message": "stub: injected failure", "code": 500}}, status=500)
        req = json.loads(raw)
        idx = pick(n_answers)
        limit = req.get("max_completion_tokens") or req.get("max_tokens") or 1 << 30
        pieces = answers[idx][:max(1, int(limit))]
        model = str(req.get("model") or model_name)
        prompt_tokens = len(raw) // 4
        stream = bool(req.get("stream"))
        usage = bool((req.get("stream_options") or {}).get("include_usage"))
        key = (idx, len(pieces), model, prompt_tokens, stream, usage)
        body = cache.get(key)
        if body is None:
            body = (sse_body(pieces, model, prompt_tokens, usage) if stream
                    else completion_body(pieces, model, prompt_tokens))
            if len(cache) < 100_000:
                cache[key] = body
        if not stream:
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model_name, "object": "model",
                                                              "owned_by": "stub"}]})

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


async def serve(app, host: str, port: int) -> None:
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    print(f"stub listening on http://{host}:{port}/v1", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cpu", type=int, default=None, help="pin the stub to this CPU")
    parser.add_argument("--task", default="text2sql")
    parser.add_argument("--tokenizer", default=None, help="model-store name or directory (default: 4-char slices)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fail-every", type=int, default=0, help="answer 500 to every N-th chat request")
    parser.add_argument("--model-name", default="stub")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    answers = token_pieces(answer_texts(args.task), args.tokenizer)
    lengths = sorted(len(a) for a in answers)
    print(f"stub: {len(answers)} {args.task} answers, tokens {'by ' + args.tokenizer if args.tokenizer else '~chars/4'}:"
          f" median {lengths[len(lengths) // 2]}, max {lengths[-1]}", flush=True)
    app = make_app(answers, seed=args.seed, fail_every=args.fail_every, model_name=args.model_name)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(app, args.host, args.port))
    else:
        uvloop.run(serve(app, args.host, args.port))


if __name__ == "__main__":
    main()
