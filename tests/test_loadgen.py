"""The open-loop load generator (distil_platform.serving.loadgen, issue 31) against the streaming stub
(distil_platform.serving.loadgen_stub, a subprocess): arrivals on time and Poisson, every request timed, tokens
counted, errors recorded, and a rate far above what the generator can send flagged ``client_bound``
(the verdict is asserted, never a timing of this machine). Also guidellm's per-worker seeding fix.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from distil_platform.serving import loadgen, loadgen_stub
from distil_platform.serving.server import free_port, stop_process_group
from distil_platform.tasks.prompts import build_messages
from distil_platform.tasks.sources import load_seed_and_test
from distil_platform.tasks.spec import get_task

REPO = Path(__file__).resolve().parents[1]
TWO_CPUS = hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2
CLIENT_CPUS = {sorted(os.sched_getaffinity(0))[1]} if TWO_CPUS else None
STUB_CPU = min(os.sched_getaffinity(0)) if TWO_CPUS else None


def _start_stub(**kwargs):
    port = free_port()
    proc = loadgen_stub.start_stub(port, cpu=STUB_CPU, **kwargs)
    return proc, f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def stub_url():
    proc, url = _start_stub()
    yield url
    stop_process_group(proc, timeout_s=5)


@pytest.fixture(scope="module")
def failing_stub_url():
    proc, url = _start_stub(fail_every=4)
    yield url
    stop_process_group(proc, timeout_s=5)


@pytest.fixture(scope="module")
def messages():
    spec = get_task("text2sql")
    return [build_messages(spec, dict(r)) for r in load_seed_and_test(spec, source="sample").test.to_dicts()]


def test_the_schedule_is_seeded_poisson():
    a, b = loadgen.poisson_schedule(200, 2, seed=5), loadgen.poisson_schedule(200, 2, seed=6)
    assert a == loadgen.poisson_schedule(200, 2, seed=5) and a != b
    assert all(0 < x < y < 2 for x, y in itertools.pairwise(a))


def test_a_modest_rate_is_sent_on_time_as_poisson_arrivals(stub_url, messages, tmp_path):
    from scipy.stats import poisson

    res = loadgen.run_loadgen(stub_url, "stub", messages, rate=200, duration_s=2, seed=5, max_tokens=128,
                              cpus=CLIENT_CPUS, workdir=tmp_path, extra_args=["--max-dispatch-delay-ms", "20"])
    scheduled = loadgen.poisson_schedule(200, 2, seed=5)
    assert res["scheduled"] == len(scheduled) and res["sent"] == len(scheduled) and res["unsent"] == 0
    # Poisson-consistent both ways: not short of the offered rate, not a burst above it.
    assert res["arrivals_p_value"] > 0.01 and poisson.sf(res["sent"] - 1, 400) > 0.01
    req = res["requests"]
    sent = sorted(s for s in req["sent_s"] if s is not None)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    mean = sum(gaps) / len(gaps)
    cv = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean
    assert 0.75 < cv < 1.3, f"send gaps' coefficient of variation {cv:.2f}: not exponential"
    assert not res["client_bound"], res["client_bound_reasons"]
    assert res["dispatch_delay_p99_s"] < 0.020
    # Every request timed: sent after its schedule, first token, end, no error.
    for c, s, f, e, err in zip(req["scheduled_s"], req["sent_s"], req["first_token_s"], req["end_s"], req["error"]):
        assert err is None and s is not None and f is not None and e is not None
        assert c <= s + 1e-6 and s <= f <= e
    assert res["completed"] == res["sent"] and res["errors"] == 0
    assert res["ttft_p50_s"] is not None and res["e2e_p99_s"] >= res["e2e_p50_s"] > 0
    # Tokens from the usage chunk: each one of the stub's answer lengths (text2sql answers, chars/4).
    stub = loadgen_stub
    lengths = {min(len(p), 128) for p in stub.token_pieces(stub.answer_texts("text2sql"), None)}
    assert res["output_tokens_from"] == "usage"
    assert set(req["output_tokens"]) <= lengths and res["output_tokens"] == sum(req["output_tokens"])
    assert len(set(req["output_tokens"])) > 3  # drawn from the answers, not one fixed length
    # The result holds no prompt or answer text.
    assert "SELECT" not in str(res) and "CREATE TABLE" not in str(res)
    # The verdict reads the measurements: arrivals short or late dispatches flip it.
    short = dict(res, sent=res["sent"] // 2)
    assert any("arrivals short" in r for r in loadgen.client_bound_reasons(short))
    late = dict(res, dispatch_delay_p99_s=0.021)
    assert any("dispatch delay" in r for r in loadgen.client_bound_reasons(late))


def test_errors_are_recorded_per_request(failing_stub_url, messages):
    res = loadgen.run(failing_stub_url, "stub", messages, rate=100, duration_s=1, seed=2, warmup=0)
    req = res["requests"]
    failed = [i for i, e in enumerate(req["error"]) if e is not None]
    assert res["sent"] >= 50
    assert res["errors"] == len(failed) == res["sent"] // 4  # the stub fails every 4th request it gets
    assert res["completed"] == res["sent"] - res["errors"]
    assert all(req["error"][i].startswith("HTTP 500") for i in failed)
    assert all(req["end_s"][i] is not None and req["output_tokens"][i] is None for i in failed)
    assert res["first_error"].startswith("HTTP 500")


def test_the_dispatch_tolerance_is_5_ms_or_a_twentieth_of_the_arrival_gap():
    """At 1,000 req/s the 5 ms floor; at 4 req/s (250 ms gaps) 12.5 ms: a 5.4 ms late request there
    changes nothing the server sees (it flagged make run's 4 req/s on a 2-core host), 20 ms does."""
    assert loadgen.dispatch_delay_limit(0.005, 1000) == 0.005
    assert loadgen.dispatch_delay_limit(0.005, 4) == pytest.approx(0.0125)
    base = {"max_dispatch_delay_s": 0.005, "offered_rps": 4.0, "sent": 60, "duration_s": 15.0, "unsent": 0,
            "concurrency_cap_hits": 0, "concurrency_cap": 4096}

    class Point:  # only the arrivals test is read besides the result's own fields
        arrivals_short, arrivals_p_value = False, 0.5

    assert loadgen.client_bound_reasons(dict(base, dispatch_delay_p99_s=0.0054), Point()) == []
    assert "12.5 ms" in loadgen.client_bound_reasons(dict(base, dispatch_delay_p99_s=0.020), Point())[0]


def test_a_refused_connection_is_an_error_not_a_crash(messages):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = loadgen.run(f"http://127.0.0.1:{port}/v1", "stub", messages, rate=50, duration_s=0.3, seed=1, warmup=0)
    assert res["sent"] > 0 and res["completed"] == 0 and res["errors"] == res["sent"]
    assert all(e and "Connect" in e for e in res["requests"]["error"] if e is not None)


def test_a_rate_far_above_the_generators_ceiling_is_client_bound(stub_url, messages, tmp_path):
    res = loadgen.run_loadgen(stub_url, "stub", messages, rate=50_000, duration_s=0.5, seed=3, max_tokens=128,
                              cpus=CLIENT_CPUS, workdir=tmp_path)
    assert res["client_bound"], res
    assert any("dispatch delay" in r for r in res["client_bound_reasons"])
    assert res["dispatch_delay_p99_s"] > res["max_dispatch_delay_s"]
    # Such a rate is never claimed as sustained by the throughput analysis.
    assert not loadgen.load_point(res).sustained(slo_s=60.0)


def test_guidellm_workers_get_their_own_seeds(monkeypatch):
    import asyncio
    import multiprocessing

    from guidellm.scheduler.strategies import AsyncPoissonStrategy

    from distil_platform.serving.guidellm_cli import fix_poisson_seeds

    monkeypatch.setattr(AsyncPoissonStrategy, "next_request_time", AsyncPoissonStrategy.next_request_time)

    def arrivals(worker: int) -> list[float]:
        strategy = AsyncPoissonStrategy(rate=100.0, random_seed=7)
        strategy.init_processes_timings(worker_count=2, max_concurrency=8,
                                        mp_context=multiprocessing.get_context("spawn"))
        strategy.init_processes_start(1000.0)

        async def draw() -> list[float]:
            return [await strategy.next_request_time(worker) for _ in range(3)]

        return asyncio.run(draw())

    unpatched = arrivals(0), arrivals(1)
    assert unpatched[0] == unpatched[1]  # guidellm 0.8.1: every worker draws the same gaps
    assert fix_poisson_seeds()
    assert arrivals(0) == unpatched[0]  # worker 0 keeps the configured seed
    assert arrivals(1) != arrivals(0) and arrivals(1) == arrivals(1)


def test_guidellm_worker_processes_apply_the_seed_fix():
    """guidellm spawns its workers, which import the main module as ``__mp_main__``: the fix must
    be applied by that import alone."""
    code = ("import runpy; runpy.run_module('distil_platform.serving.guidellm_cli', run_name='__mp_main__'); "
            "from guidellm.scheduler.strategies import AsyncPoissonStrategy as S; "
            "print(getattr(S.next_request_time, '_distil_seeded', False))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"
