"""LLM client throughput against a local stub OpenAI-compatible server.

Measures requests/s of ``LLMClient`` (aiohttp fast path, and the litellm path) at concurrency 64
and 256, next to raw ``httpx.AsyncClient``, ``aiohttp`` and ``litellm.acompletion`` loops sending the
same requests, and (``--profile``) profiles the litellm path. The stub (aiohttp, its own process) answers at once, so the numbers are client overhead.

    .venv/bin/python benchmarks/client_throughput.py [--requests 3000] [--profile]

Every run uses fresh prompts (no cache hits) and a fresh SQLite results store, as a real first run
would. Benchmarks on shared 2-core machines are only valid when nothing else runs: the script
reports the CPU share taken by other processes during each measurement (from /proc/stat and our
own process times) and flags runs where it exceeds 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESPONSE = {
    "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "SELECT name FROM users WHERE id = 1;"}}],
    "usage": {"prompt_tokens": 150, "completion_tokens": 33, "total_tokens": 183},
}


# -- stub server (run in its own process) -----------------------------------------------------------


def run_stub(port: int) -> None:
    from aiohttp import web

    body = json.dumps(RESPONSE).encode()

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024)


def start_stub() -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    from distil_platform.serving.server import wait_until_healthy

    proc = subprocess.Popen([sys.executable, __file__, "--stub-server", str(port)])
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/health", 30, proc, interval_s=0.1)
    except Exception:
        proc.kill()
        raise
    return proc, f"http://127.0.0.1:{port}/v1"


# -- CPU accounting: how much of the machine did *other* processes use? --------------------------


def _busy_jiffies() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle, sum(fields[:8])


class CpuWatch:
    def __init__(self, pids: list[int]):
        import psutil

        self.procs = [psutil.Process(p) for p in pids]

    def __enter__(self):
        self.busy0, self.total0 = _busy_jiffies()
        self.ours0 = sum(sum(p.cpu_times()[:4]) for p in self.procs)
        return self

    def __exit__(self, *exc):
        busy1, total1 = _busy_jiffies()
        ours1 = sum(sum(p.cpu_times()[:4]) for p in self.procs)
        tick = os.sysconf("SC_CLK_TCK")
        total_s = (total1 - self.total0) / tick
        self.other_share = max(0.0, ((busy1 - self.busy0) / tick - (ours1 - self.ours0)) / total_s) if total_s else 0.0
        self.ours_cpu_s = ours1 - self.ours0
        return False


CONTENDED_SHARE = 0.10


def contended_flag(other_share: float) -> str:
    """" (contended)" when other processes took more than CONTENDED_SHARE of the CPU in a measurement."""
    return " (contended)" if other_share > CONTENDED_SHARE else ""


def write_record(path, record: dict) -> None:
    """A benchmark's raw JSON (``default=str`` for paths and settings), parents created."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")


# -- the contenders ---------------------------------------------------------------------------------


def _messages(tag: str, i: int) -> list[dict]:
    # ~150-token prompt, like the text2sql eval requests.
    schema = "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, city TEXT); " * 6
    return [{"role": "system", "content": "Translate the question into SQL for the schema. Return only SQL."},
            {"role": "user", "content": f"{schema}\nQuestion {tag}-{i}: what is the name of user {i}?"}]


async def raw_httpx(api_base: str, n: int, concurrency: int, tag: str) -> float:
    import httpx

    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        async def one(i: int) -> None:
            async with semaphore:
                response = await http.post(f"{api_base}/chat/completions", json={
                    "model": "stub", "messages": _messages(tag, i), "temperature": 0.0, "max_tokens": 64})
                response.raise_for_status()
                response.json()["choices"][0]["message"]["content"]

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0


async def raw_aiohttp(api_base: str, n: int, concurrency: int, tag: str) -> float:
    import aiohttp

    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def one(i: int) -> None:
            async with semaphore, http.post(f"{api_base}/chat/completions", json={
                    "model": "stub", "messages": _messages(tag, i), "temperature": 0.0, "max_tokens": 64}) as response:
                response.raise_for_status()
                (await response.json())["choices"][0]["message"]["content"]

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0


async def raw_litellm(api_base: str, n: int, concurrency: int, tag: str) -> float:
    import litellm

    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            await litellm.acompletion(model="openai/stub", api_base=api_base, api_key="none", messages=_messages(tag, i),
                                      temperature=0.0, max_tokens=64, num_retries=0, max_retries=0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0


async def llm_client(api_base: str, n: int, concurrency: int, tag: str, fast_path: bool, store) -> float:
    from distil_platform.llm import ChatRequest, LLMClient

    client = LLMClient("openai/stub", api_base=api_base, store=store, concurrency=concurrency, fast_path=fast_path,
                       price_lookup=lambda model: None, max_error_rate=0.0)
    requests = [ChatRequest(messages=_messages(tag, i), max_tokens=64, item_id=str(i)) for i in range(n)]
    t0 = time.perf_counter()
    results = await client.achat_batch(requests)
    elapsed = time.perf_counter() - t0
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} errors, e.g. {errors[0]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--litellm-requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--profile", action="store_true", help="cProfile the litellm client path")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--stub-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stub_server:
        run_stub(args.stub_server)
        return

    from distil_platform.storage.store import ResultsStore

    stub, api_base = start_stub()
    rows = []
    try:
        asyncio.run(raw_httpx(api_base, 200, 16, "warmup"))  # imports, connection set-up
        asyncio.run(raw_litellm(api_base, 50, 16, "warmup"))
        with tempfile.TemporaryDirectory() as tmp:
            store = ResultsStore(f"sqlite:///{tmp}/bench.db")
            for concurrency in args.concurrency:
                contenders = [
                    ("raw httpx loop", args.requests, lambda n, c, t: raw_httpx(api_base, n, c, t)),
                    ("raw aiohttp loop", args.requests, lambda n, c, t: raw_aiohttp(api_base, n, c, t)),
                    ("LLMClient fast path (aiohttp) + store", args.requests,
                     lambda n, c, t: llm_client(api_base, n, c, t, True, store)),
                    ("raw litellm.acompletion loop", args.litellm_requests,
                     lambda n, c, t: raw_litellm(api_base, n, c, t)),
                    ("LLMClient litellm path + store", args.litellm_requests,
                     lambda n, c, t: llm_client(api_base, n, c, t, False, store)),
                ]
                for name, n, run in contenders:
                    cpu0 = time.process_time()
                    with CpuWatch([os.getpid(), stub.pid]) as watch:
                        elapsed = asyncio.run(run(n, concurrency, f"{name}-{concurrency}-{time.time()}"))
                    # Client CPU per request (all threads of this process): robust to other load.
                    cpu_ms = 1000 * (time.process_time() - cpu0) / n
                    rows.append({"contender": name, "concurrency": concurrency, "requests": n,
                                 "seconds": round(elapsed, 3), "req_per_s": round(n / elapsed, 1),
                                 "client_cpu_ms_per_request": round(cpu_ms, 3),
                                 "other_cpu_share": round(watch.other_share, 3)})
                    print(json.dumps(rows[-1]), flush=True)
            raw = {(r["concurrency"]): r["req_per_s"] for r in rows if r["contender"] == "raw httpx loop"}
            for row in rows:
                row["time_vs_raw_httpx"] = round(raw[row["concurrency"]] / row["req_per_s"], 2)
            print("\n| contender | concurrency | requests | req/s | time vs raw httpx | client CPU ms/req | other CPU |")
            print("|---|---|---|---|---|---|---|")
            for r in rows:
                flag = " (contended)" if r["other_cpu_share"] > 0.10 else ""
                print(f"| {r['contender']} | {r['concurrency']} | {r['requests']} | {r['req_per_s']} | "
                      f"{r['time_vs_raw_httpx']}x | {r['client_cpu_ms_per_request']:.2f} | "
                      f"{r['other_cpu_share']:.0%}{flag} |")
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                asyncio.run(llm_client(api_base, 500, 64, f"profile-{time.time()}", False, store))
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
                print("\n## litellm path, 500 requests, top functions by own time\n", out.getvalue()[:8000])
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    finally:
        stub.terminate()
        stub.wait(timeout=10)


if __name__ == "__main__":
    main()
