"""An open-loop Poisson load generator for OpenAI-compatible servers (issue 31): one event loop, one
aiohttp session, streaming chat completions, per-request timings only.

Arrivals are a seeded Poisson process (exponential gaps from ``random.Random(seed)``), drawn before
the run starts. Open loop: each request is sent at its scheduled time whether or not the earlier
ones finished. The only cap on requests in flight is a high safety limit
(:data:`DEFAULT_CONCURRENCY_CAP`); hitting it is recorded and makes the run ``client_bound``.

Scheduling: sleep until ``spin_s`` (1 ms) before a request is due, then yield to the loop
(``asyncio.sleep(0)``, so responses keep being read) until it is. The generator then *measures
itself*: each request's dispatch delay (sent - scheduled; sent is when its coroutine starts, so the
loop's own lag is in it), the process's CPU seconds over the run, the arrivals actually sent. A run
is ``client_bound`` (the generator, not the server, limited it) when the p99 dispatch delay exceeds
``max_dispatch_delay_s`` (5 ms; at low rates a twentieth of the mean arrival gap, :func:`dispatch_delay_limit`), when the requests sent are short of the offered rate beyond Poisson
noise (:attr:`distil_platform.serving.throughput.LoadPoint.arrivals_short`, the test every load
point gets), when scheduled requests were never sent within the window, or when the cap was hit.
Such a run says nothing about the server at the offered rate and must never be claimed.

The CPU share includes the yield-wait before each arrival (up to ``spin_s`` per request), so at
modest rates it overstates the work; the dispatch delay, not the CPU share, is the verdict.

Reading a stream is minimal: body bytes as they arrive; the first bytes holding an SSE ``data:``
line are the first token (vLLM sends the role chunk with the first token); ``data:`` lines are
counted with ``bytes.count``; only the final usage chunk is parsed as JSON. The output tokens are the
usage's ``completion_tokens`` or, without a usage chunk, the number of content chunks (vLLM sends
one token per chunk, plus a role and a finish chunk).

Run it in its own process so its CPU figure is its own: ``python -m distil_platform.serving.loadgen
--base-url URL/v1 --model M --prompts prompts.jsonl --rate R --duration D --seed S --out result.json``,
or :func:`run_loadgen` (a subprocess pinned to given CPUs). The result JSON holds the run's summary
and per-request columns (times in seconds from the run's start); never prompts or outputs.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distil_platform.serving.throughput import LoadPoint, ThroughputError

DEFAULT_MAX_DISPATCH_DELAY_S = 0.005
DISPATCH_GAP_SHARE = 0.05  # or this share of the mean arrival gap, where longer (dispatch_delay_limit)
DEFAULT_CONCURRENCY_CAP = 4096
DEFAULT_SPIN_S = 0.001
DEFAULT_GRACE_S = 0.5  # a late scheduler may still send the window's arrivals this long after it
DEFAULT_DRAIN_TIMEOUT_S = 60.0
_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
_TAIL_BYTES = 4096  # enough for the usage chunk and [DONE]
_FINISHED = re.compile(rb'"finish_reason":\s*"')  # a finish chunk (null while the stream runs)


def poisson_schedule(rate: float, duration_s: float, seed: int) -> list[float]:
    """Arrival times (seconds from the start) of a Poisson process at ``rate`` over ``duration_s``."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be positive, got {rate} and {duration_s}")
    rng = random.Random(seed)
    out, t = [], rng.expovariate(rate)
    while t < duration_s:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def request_bodies(model: str, messages: Sequence[list[dict[str, Any]]], max_tokens: int,
                   temperature: float | None = 0.0) -> list[bytes]:
    """One encoded streaming chat request per prompt (encoded once, before the run). Temperature 0 by
    default: the student is evaluated greedy, so it is load-tested greedy (a server started with
    ``--generation-config vllm`` would otherwise sample at 1.0); None leaves it to the server."""
    if not messages:
        raise ThroughputError("no prompts to send")
    sampling = {} if temperature is None else {"temperature": float(temperature)}
    return [json.dumps({"model": model, "messages": list(m), "max_tokens": int(max_tokens), **sampling,
                        "stream": True, "stream_options": {"include_usage": True}}, ensure_ascii=False).encode()
            for m in messages]


def read_prompts(path: Path | str) -> list[list[dict[str, Any]]]:
    """The ``messages`` of each line of a prompt file (``{"messages": [...]}`` per line)."""
    out = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line)["messages"])
    return out


def _usage_tokens(tail: bytes) -> int | None:
    """``completion_tokens`` of the last ``"usage":`` object in the stream's tail (None: none)."""
    at = tail.rfind(b'"usage":')
    if at < 0:
        return None
    start, end = tail.rfind(b"data:", 0, at), tail.find(b"\n", at)
    if start < 0:
        return None
    try:
        usage = json.loads(tail[start + 5:end if end >= 0 else None]).get("usage")
    except (ValueError, AttributeError):
        return None
    return int(usage["completion_tokens"]) if isinstance(usage, dict) and "completion_tokens" in usage else None


class _Run:
    """One run's state: the schedule, the per-request columns, the in-flight bookkeeping."""

    def __init__(self, url: str, bodies: list[bytes], schedule: list[float], cap: int):
        n = len(schedule)
        self.url, self.bodies, self.schedule, self.cap = url, bodies, schedule, cap
        self.sent: list[float | None] = [None] * n
        self.first: list[float | None] = [None] * n
        self.end: list[float | None] = [None] * n
        self.tokens: list[int | None] = [None] * n
        self.error: list[str | None] = [None] * n
        self.usage_seen = 0
        self.in_flight = self.max_in_flight = self.cap_hits = 0
        self.slot: asyncio.Future | None = None
        self.session: Any = None

    async def one(self, i: int) -> None:
        clock = time.perf_counter
        self.sent[i] = clock()
        try:
            async with self.session.post(self.url, data=self.bodies[i % len(self.bodies)],
                                         headers=_HEADERS) as resp:
                if resp.status != 200:
                    text = (await resp.content.read(300)).decode("utf-8", "replace")
                    self.error[i] = f"HTTP {resp.status}: {text}"
                    return
                first, lines, carry, tail = None, 0, b"\n", b""
                async for chunk in resp.content.iter_any():
                    if first is None and b"data:" in chunk:
                        first = clock()
                    lines += (carry + chunk).count(b"\ndata:")
                    carry = chunk[-5:]  # shorter than the pattern: never counted twice
                    tail = (tail + chunk)[-_TAIL_BYTES:]
                self.first[i] = first
                # Complete: vLLM ends with ``data: [DONE]``; `transformers serve` ends with the finish
                # chunk and the usage chunk, without it. A stream cut short has neither.
                if b"data: [DONE]" not in tail and not _FINISHED.search(tail):
                    self.error[i] = "stream ended before data: [DONE] or a finish_reason"
                    return
                tokens = _usage_tokens(tail)
                if tokens is None:
                    self.tokens[i] = max(0, lines - 1)  # chunks (role and finish ones included)
                else:
                    self.tokens[i] = tokens
                    self.usage_seen += 1
        except asyncio.CancelledError:
            self.error[i] = "unfinished at the drain deadline"
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is this request's error, recorded
            self.error[i] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self.end[i] = clock()
            self.in_flight -= 1
            if self.slot is not None and not self.slot.done() and self.in_flight < self.cap:
                self.slot.set_result(None)

    async def dispatch(self, t0: float, stop_at: float, spin_s: float, tasks: set) -> int:
        """Send every scheduled request at its time; returns how many were never sent (late past
        ``stop_at``)."""
        clock, sleep, loop = time.perf_counter, asyncio.sleep, asyncio.get_running_loop()
        for i, offset in enumerate(self.schedule):
            due = t0 + offset
            now = clock()
            if now < due:
                if due - now > spin_s:
                    await sleep(due - now - spin_s)
                while clock() < due:
                    await sleep(0)
            elif now > stop_at:
                return len(self.schedule) - i
            if self.in_flight >= self.cap:
                self.cap_hits += 1
                self.slot = loop.create_future()
                await self.slot
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            task = loop.create_task(self.one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return 0


async def run_async(base_url: str, model: str, messages: Sequence[list[dict[str, Any]]], *, rate: float,
                    duration_s: float, seed: int = 0, max_tokens: int = 256, warmup: int = 8,
                    max_dispatch_delay_s: float = DEFAULT_MAX_DISPATCH_DELAY_S,
                    concurrency_cap: int = DEFAULT_CONCURRENCY_CAP, spin_s: float = DEFAULT_SPIN_S,
                    grace_s: float = DEFAULT_GRACE_S, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
                    freeze_gc: bool = True) -> dict[str, Any]:
    """One open-loop run (see the module docstring); returns the result dict (:func:`summarise`)."""
    import aiohttp

    url = base_url.rstrip("/")
    url = (url if url.endswith("/v1") else url + "/v1") + "/chat/completions"
    run = _Run(url, request_bodies(model, messages, max_tokens), poisson_schedule(rate, duration_s, seed),
               concurrency_cap)
    connector = aiohttp.TCPConnector(limit=concurrency_cap, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        run.session = session
        warm = _Run(url, run.bodies, [0.0] * warmup, concurrency_cap)
        warm.session = session
        warm.in_flight = warmup
        await asyncio.gather(*(warm.one(i) for i in range(warmup)))  # connections opened, server warm
        tasks: set[asyncio.Task] = set()
        if freeze_gc:
            gc.collect()
            gc.freeze()
            gc.disable()
        try:
            cpu0, t0 = time.process_time(), time.perf_counter() + 0.01
            t0_unix = time.time() + 0.01
            unsent = await run.dispatch(t0, t0 + duration_s + grace_s, spin_s, tasks)
            dispatched_at = time.perf_counter()
            if tasks:
                _done, pending = await asyncio.wait(set(tasks), timeout=drain_timeout_s)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        finally:
            if freeze_gc:
                gc.enable()
                gc.unfreeze()
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return summarise(run, t0=t0, t0_unix=t0_unix, rate=rate, duration_s=duration_s, seed=seed, unsent=unsent, wall_s=wall,
                     cpu_s=cpu, dispatch_s=dispatched_at - t0, max_dispatch_delay_s=max_dispatch_delay_s,
                     event_loop=loop_name, warmup_errors=sum(e is not None for e in warm.error))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated ``q``-quantile (0..1) of ``values`` (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _rel(values: Sequence[float | None], t0: float) -> list[float | None]:
    return [None if v is None else round(v - t0, 6) for v in values]


def summarise(run: _Run, *, t0: float, t0_unix: float, rate: float, duration_s: float, seed: int, unsent: int, wall_s: float,
              cpu_s: float, dispatch_s: float, max_dispatch_delay_s: float, event_loop: str,
              warmup_errors: int = 0) -> dict[str, Any]:
    """The run's result: summary figures, the ``client_bound`` verdict and per-request columns."""
    sent_idx = [i for i, s in enumerate(run.sent) if s is not None]
    ok = [i for i in sent_idx if run.error[i] is None]
    delays = [run.sent[i] - (t0 + run.schedule[i]) for i in sent_idx]
    ttft = [run.first[i] - run.sent[i] for i in ok if run.first[i] is not None]
    e2e = [run.end[i] - run.sent[i] for i in ok]
    errors = [run.error[i] for i in sent_idx if run.error[i] is not None]
    incomplete = sum(e == "unfinished at the drain deadline" for e in errors)
    tokens = [run.tokens[i] for i in ok if run.tokens[i] is not None]
    sent_times = sorted(run.sent[i] - t0 for i in sent_idx)
    result: dict[str, Any] = {
        "offered_rps": float(rate), "duration_s": float(duration_s), "seed": int(seed), "t0_unix": t0_unix,
        "scheduled": len(run.schedule), "sent": len(sent_idx), "unsent": int(unsent),
        "completed": len(ok), "errors": len(errors) - incomplete, "incomplete": incomplete,
        "first_error": errors[0] if errors else None, "warmup_errors": warmup_errors,
        "arrival_rps": _span_rate(sent_times),
        "dispatch_delay_p50_s": percentile(delays, 0.5), "dispatch_delay_p99_s": percentile(delays, 0.99),
        "dispatch_delay_max_s": max(delays, default=None),
        "ttft_p50_s": percentile(ttft, 0.5), "ttft_p95_s": percentile(ttft, 0.95),
        "ttft_p99_s": percentile(ttft, 0.99),
        "e2e_p50_s": percentile(e2e, 0.5), "e2e_p95_s": percentile(e2e, 0.95), "e2e_p99_s": percentile(e2e, 0.99),
        "output_tokens": sum(tokens), "output_tokens_mean": sum(tokens) / len(tokens) if tokens else None,
        "output_tokens_from": "usage" if run.usage_seen == len(ok) else "chunks" if run.usage_seen == 0 else "mixed",
        "cpu_s": cpu_s, "wall_s": wall_s, "dispatch_s": dispatch_s, "cpu_share": cpu_s / wall_s if wall_s else None,
        "max_in_flight": run.max_in_flight, "concurrency_cap": run.cap, "concurrency_cap_hits": run.cap_hits,
        "max_dispatch_delay_s": max_dispatch_delay_s, "event_loop": event_loop,
        "requests": {"scheduled_s": [round(s, 6) for s in run.schedule], "sent_s": _rel(run.sent, t0),
                     "first_token_s": _rel(run.first, t0), "end_s": _rel(run.end, t0),
                     "output_tokens": run.tokens, "error": run.error},
    }
    point = load_point(result)
    result["arrivals_p_value"] = point.arrivals_p_value
    result["client_bound_reasons"] = client_bound_reasons(result, point)
    result["client_bound"] = bool(result["client_bound_reasons"])
    return result


def _span_rate(times: Sequence[float]) -> float | None:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) >= 2 and times[-1] > times[0] else None


def dispatch_delay_limit(max_dispatch_delay_s: float, rate: float) -> float:
    """The p99 dispatch delay past which a run is client bound: ``max_dispatch_delay_s`` (5 ms), or a
    twentieth of the mean gap between arrivals where that is longer. A delay that is small against the
    gaps leaves the offered process as it was: at 4 req/s (250 ms gaps) a 5.4 ms late request on a
    2-core host, whose generator shares a core with vLLM's frontend, changed nothing the server saw, yet
    flagged the rate (make run, 2026-12-07); at 1,000 req/s the 5 ms floor applies."""
    return max(float(max_dispatch_delay_s), DISPATCH_GAP_SHARE / float(rate)) if rate > 0 else float(max_dispatch_delay_s)


def client_bound_reasons(result: dict[str, Any], point: LoadPoint | None = None) -> list[str]:
    """Why the generator, not the server, limited this run (empty: it kept its schedule)."""
    point = point or load_point(result)
    reasons = []
    limit, p99 = dispatch_delay_limit(result["max_dispatch_delay_s"], result["offered_rps"]), result["dispatch_delay_p99_s"]
    if p99 is not None and p99 > limit:
        reasons.append(f"p99 dispatch delay {p99 * 1e3:.1f} ms > {limit * 1e3:.3g} ms")
    if point.arrivals_short:
        reasons.append(f"arrivals short: {result['sent']} sent for {result['offered_rps']:g} req/s x "
                       f"{result['duration_s']:g} s (Poisson p = {point.arrivals_p_value:.2g})")
    if result["unsent"]:
        reasons.append(f"{result['unsent']} scheduled requests never sent (the scheduler fell behind)")
    if result["concurrency_cap_hits"]:
        reasons.append(f"concurrency cap {result['concurrency_cap']} reached {result['concurrency_cap_hits']} times")
    return reasons


def load_point(result: dict[str, Any]) -> LoadPoint:
    """The run as a :class:`LoadPoint` (what :func:`distil_platform.serving.throughput.analyse` reads),
    with the backlog test's inputs computed from every request's timings (the run drains them all)."""
    req = result["requests"]
    duration = result["duration_s"]
    sent = [(s, e, err) for s, e, err in zip(req["sent_s"], req["end_s"], req["error"]) if s is not None]
    ok = [(s, e) for s, e, err in sent if err is None and e is not None]
    # The backlog test's latencies are those completed within the window, as in a guidellm report
    # (which cancels the rest): the drained requests' latencies hold the queue of an overloaded
    # server, and with them "in flight at the close" reads as expected (110 vs 106 at twice a stub's
    # capacity, a 3 s window).
    latencies = sorted(e - s for s, e in ok if e <= duration)
    arrivals = [s for s, _e, _err in sent if s <= duration]
    backlog = in_flight = None
    if len(latencies) >= 2:
        n = len(latencies)
        backlog = sum((n - bisect.bisect_right(latencies, duration - a)) / n for a in arrivals)
        in_flight = sum(1 for s, e, _err in sent if s <= duration and (e is None or e > duration))
    ends = sorted(e for _s, e in ok)
    return LoadPoint(
        strategy="poisson", offered_rps=result["offered_rps"], arrival_rps=result["arrival_rps"],
        achieved_rps=_span_rate(ends) or 0.0, p50_s=result["e2e_p50_s"], p95_s=result["e2e_p95_s"],
        p99_s=result["e2e_p99_s"], ttft_p50_s=result["ttft_p50_s"], ttft_p95_s=result["ttft_p95_s"],
        ttft_p99_s=result["ttft_p99_s"],
        output_tokens_per_s=result["output_tokens"] / result["wall_s"] if result["wall_s"] else None,
        requests=result["sent"], successful=result["completed"], errors=result["errors"],
        incomplete=result["incomplete"], duration_s=duration, mean_output_tokens=result["output_tokens_mean"],
        first_error=result["first_error"], backlog_expected=backlog, in_flight_at_close=in_flight,
        client_bound_reasons=list(result.get("client_bound_reasons") or []),
        dispatch_delay_p99_s=result["dispatch_delay_p99_s"], generator_cpu_share=result["cpu_share"])


def run(base_url: str, model: str, messages: Sequence[list[dict[str, Any]]], *, use_uvloop: bool = True,
        **kwargs: Any) -> dict[str, Any]:
    """:func:`run_async` on a fresh event loop (uvloop's when installed and ``use_uvloop``)."""
    coro = run_async(base_url, model, messages, **kwargs)
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distil_platform.serving.loadgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="OpenAI-compatible base URL (.../v1)")
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True, type=Path, help='jsonl, {"messages": [...]} per line (cycled)')
    p.add_argument("--rate", required=True, type=float, help="offered arrivals per second")
    p.add_argument("--duration", required=True, type=float, help="seconds of arrivals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--warmup", type=int, default=8, help="requests sent at once before the run, not recorded")
    p.add_argument("--max-dispatch-delay-ms", type=float, default=DEFAULT_MAX_DISPATCH_DELAY_S * 1e3)
    p.add_argument("--concurrency-cap", type=int, default=DEFAULT_CONCURRENCY_CAP)
    p.add_argument("--spin-ms", type=float, default=DEFAULT_SPIN_S * 1e3)
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE_S)
    p.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S)
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--no-gc-freeze", action="store_true")
    p.add_argument("--cpus", default="", help="pin this process to these CPUs, e.g. 1 or 0,1")
    args = p.parse_args(argv)
    if args.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",") if c.strip()})
    result = run(args.base_url, args.model, read_prompts(args.prompts), use_uvloop=not args.no_uvloop,
                 rate=args.rate, duration_s=args.duration, seed=args.seed, max_tokens=args.max_tokens,
                 warmup=args.warmup, max_dispatch_delay_s=args.max_dispatch_delay_ms / 1e3,
                 concurrency_cap=args.concurrency_cap, spin_s=args.spin_ms / 1e3, grace_s=args.grace,
                 drain_timeout_s=args.drain_timeout, freeze_gc=not args.no_gc_freeze)
    if hasattr(os, "sched_getaffinity"):
        result["cpus"] = sorted(os.sched_getaffinity(0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, separators=(",", ":")), encoding="utf-8")
    summary = {k: v for k, v in result.items() if k != "requests"}
    print(json.dumps(summary, default=str), flush=True)
    return 0


def run_loadgen(base_url: str, model: str, messages: Sequence[list[dict[str, Any]]], *, rate: float,
                duration_s: float, workdir: Path, seed: int = 0, max_tokens: int = 256,
                cpus: set[int] | None = None, timeout_s: float | None = None,
                extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Run the generator as its own process (pinned to ``cpus`` where given and allowed) and return
    its parsed result; raises :class:`ThroughputError` with the log tail if it fails. ``extra_args``:
    further command-line options (e.g. ``["--warmup", "0"]``)."""
    import signal
    import subprocess

    from distil_platform.serving.launch import server_env
    from distil_platform.serving.server import parent_death_signal, stop_process_group

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    prompts, out, log_path = workdir / "prompts.jsonl", workdir / "loadgen_result.json", workdir / "loadgen.log"
    prompts.write_text("".join(json.dumps({"messages": list(m)}, ensure_ascii=False) + "\n" for m in messages),
                       encoding="utf-8")
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "distil_platform.serving.loadgen", "--base-url", base_url, "--model", model,
           "--prompts", str(prompts), "--rate", repr(float(rate)), "--duration", repr(float(duration_s)),
           "--seed", str(int(seed)), "--max-tokens", str(int(max_tokens)), "--out", str(out), *extra_args]
    allowed = set(cpus or ()) & (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set())
    on_parent_death = parent_death_signal(signal.SIGTERM)

    def preexec() -> None:  # between fork and exec: one sched_setaffinity and one prctl call
        if allowed:
            os.sched_setaffinity(0, allowed)
        if on_parent_death is not None:
            on_parent_death()

    timeout_s = timeout_s or duration_s + DEFAULT_DRAIN_TIMEOUT_S + 60.0
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=server_env(), start_new_session=True, preexec_fn=preexec)  # noqa: PLW1509
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_process_group(proc)
            raise ThroughputError(f"load generator did not finish within {timeout_s:.0f}s; log: {log_path}") from None
        except BaseException:
            stop_process_group(proc)
            raise
    if code != 0 or not out.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise ThroughputError(f"load generator exited {code} without a result; log tail:\n{tail}")
    return json.loads(out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    raise SystemExit(main())
