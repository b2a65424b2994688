"""A stub OpenAI-compatible streaming server, for measuring a load generator alone (issue 31): the
throughput asset measures its generator's ceiling against it (:func:`start_stub`,
:func:`distil_platform.serving.sweep.generator_ceiling`), and so does ``benchmarks/loadgen_ceiling.py``.

``POST /v1/chat/completions`` with ``"stream": true`` answers the way vLLM streams a chat completion:
a role chunk, then one ``data: {...}`` chunk per token with that token's text as the delta, then a
chunk with ``finish_reason``, then (with ``stream_options.include_usage``) a usage chunk with empty
``choices``, then ``data: [DONE]`` — every chunk at once, with no artificial delay, so every latency
a client measures against it is the client's own. Non-streaming requests get one
``chat.completion`` object (guidellm may send them). ``GET /v1/models`` and ``/health`` answer too.

Answers are the task's real reference answers (``--task``, the shipped sample's test split; or
``--answers FILE``, a JSON list of answer texts, e.g. the test split the asset measures), one
drawn per request with a seeded ``random.Random``, cut at the request's ``max_tokens`` /
``max_completion_tokens``. Their tokens: with ``--tokenizer`` (a model-store name such as
``tiny-qwen3``, or a directory; needs ``DAGSTER_HOME`` for a store name) the tokenizer's own tokens,
each decoded to its text; without it, 4-character slices (a token is ~4 characters of English or SQL).
Usage's ``prompt_tokens`` is the request body's length / 4.

``--fail-every N`` answers HTTP 500 to every N-th chat request (for tests of error recording).
``--service-s S --capacity C`` make it a server with a capacity: each answer takes ``S`` seconds and at
most ``C`` are served at once (the rest queue), so it saturates at ``C / S`` req/s (for tests of the
saturation search; by default it answers at once, with no limit).

    .venv/bin/python -m distil_platform.serving.loadgen_stub --port 8123 --cpu 0 [--tokenizer tiny-qwen3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

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


def make_app(answers: list[list[str]], *, seed: int = 0, fail_every: int = 0, model_name: str = "stub",
             service_s: float = 0.0, capacity: int = 0):
    from aiohttp import web

    slots = asyncio.Semaphore(capacity) if capacity > 0 else None

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
        if service_s > 0 or slots is not None:
            if slots is not None:
                async with slots:
                    await asyncio.sleep(service_s)
            else:
                await asyncio.sleep(service_s)
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
    parser.add_argument("--answers", type=Path, default=None, help="a JSON list of answer texts (instead of --task)")
    parser.add_argument("--tokenizer", default=None, help="model-store name or directory (default: 4-char slices)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fail-every", type=int, default=0, help="answer 500 to every N-th chat request")
    parser.add_argument("--model-name", default="stub")
    parser.add_argument("--service-s", type=float, default=0.0, help="seconds each answer takes")
    parser.add_argument("--capacity", type=int, default=0, help="answers served at once (0: no limit)")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    texts = json.loads(args.answers.read_text(encoding="utf-8")) if args.answers else answer_texts(args.task)
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise SystemExit(f"{args.answers}: expected a non-empty JSON list of answer texts")
    answers = token_pieces(texts, args.tokenizer)
    lengths = sorted(len(a) for a in answers)
    print(f"stub: {len(answers)} {args.task} answers, tokens {'by ' + args.tokenizer if args.tokenizer else '~chars/4'}:"
          f" median {lengths[len(lengths) // 2]}, max {lengths[-1]}", flush=True)
    app = make_app(answers, seed=args.seed, fail_every=args.fail_every, model_name=args.model_name,
                   service_s=args.service_s, capacity=args.capacity)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(app, args.host, args.port))
    else:
        uvloop.run(serve(app, args.host, args.port))


def start_stub(port: int, *, answers: Sequence[str] | None = None, task: str = "text2sql",
               tokenizer: str | None = None, cpu: int | None = None, workdir: Path | None = None,
               fail_every: int = 0, service_s: float = 0.0, capacity: int = 0,
               startup_timeout_s: float = 120.0) -> subprocess.Popen:
    """Start the stub as its own process (``python -m distil_platform.serving.loadgen_stub``) and wait
    until it answers ``/health``; the caller stops it (``stop_process_group``). ``answers``: the texts to
    stream (written to ``workdir``), else ``task``'s sample answers."""
    from distil_platform.serving.launch import ServingError, server_env
    from distil_platform.serving.server import wait_until_healthy
    from distil_platform.serving.throughput import ThroughputError

    cmd = [sys.executable, "-m", "distil_platform.serving.loadgen_stub", "--port", str(port),
           "--fail-every", str(fail_every), "--task", task, "--service-s", repr(float(service_s)),
           "--capacity", str(int(capacity))]
    if answers is not None:
        path = Path(workdir or ".") / "stub_answers.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(list(answers), ensure_ascii=False), encoding="utf-8")
        cmd += ["--answers", str(path)]
    if tokenizer:
        cmd += ["--tokenizer", str(tokenizer)]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    # No secrets; DAGSTER_HOME where set (a model-store name as ``tokenizer`` resolves through it).
    env = server_env({"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                      **({"DAGSTER_HOME": os.environ["DAGSTER_HOME"]} if "DAGSTER_HOME" in os.environ else {})})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, env=env, start_new_session=True)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/health", startup_timeout_s, proc, interval_s=0.1)
    except ServingError as exc:
        output = f"; its output: {proc.stdout.read()[-2000:]}" if proc.poll() is not None else ""
        proc.kill()
        raise ThroughputError(f"the load generator's stub did not start: {exc}{output}") from exc
    return proc


if __name__ == "__main__":
    main()
