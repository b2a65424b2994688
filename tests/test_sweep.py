"""The throughput sweep on the platform's generator (distil_platform.serving.sweep, issue 31): the
saturation search's rates, a search against a stub with a known capacity that finds the knee below
it, the generator's ceiling against the streaming stub, and the flag on a claim near that ceiling.
Verdicts are asserted, never timings of this machine."""

from __future__ import annotations

import json
import os

import pytest

from distil_platform.serving import loadgen_stub
from distil_platform.serving.server import free_port, stop_process_group
from distil_platform.serving.sweep import (
    SaturationPlan,
    ceiling_flag,
    ceiling_start,
    first_failure,
    first_rate,
    generator_ceiling,
    next_rate,
    sweep,
)
from distil_platform.tasks.prompts import build_messages, format_answer
from distil_platform.tasks.sources import load_seed_and_test
from distil_platform.tasks.spec import get_task

TWO_CPUS = hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2
CLIENT_CPUS = {sorted(os.sched_getaffinity(0))[1]} if TWO_CPUS else None
STUB_CPU = min(os.sched_getaffinity(0)) if TWO_CPUS else None


def _search(capacity_rps: float, plan: SaturationPlan, start: float) -> list[tuple[float, bool]]:
    """The rates the search offers to a server that sustains exactly ``capacity_rps``."""
    tried: list[tuple[float, bool]] = []
    rate: float | None = start
    while rate is not None:
        tried.append((rate, rate <= capacity_rps))
        rate = next_rate(tried, plan)
    return tried


def test_the_search_grows_until_a_rate_fails_then_bisects_towards_the_knee():
    plan = SaturationPlan(refine_steps=3)
    tried = _search(13.0, plan, start=1.0)
    rates = [r for r, _ in tried]
    assert rates[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]  # x2 until 16 fails
    assert len(tried) == 5 + 3  # then three bisections between the highest pass and the lowest failure
    passed = max(r for r, ok in tried if ok)
    failed = min(r for r, ok in tried if not ok)
    assert passed <= 13.0 < failed and failed / passed < 16 / 8  # the interval shrank around the knee
    # A server that fails the first rate: the search steps down until one passes.
    down = _search(0.3, plan, start=2.0)
    assert [r for r, _ in down][:4] == [2.0, 1.0, 0.5, 0.25] and down[3][1]
    # Bounded: never more than max_rates, never above max_rps, never below min_rps.
    assert len(_search(1e9, SaturationPlan(max_rates=6), start=1.0)) == 6
    assert max(r for r, _ in _search(1e9, SaturationPlan(max_rps=100), start=1.0)) <= 100
    assert min(r for r, _ in _search(0.0, SaturationPlan(min_rps=0.1), start=1.0)) >= 0.1
    assert first_rate(SaturationPlan(), idle_latency_s=0.25) == 2.0
    assert first_rate(SaturationPlan(start_rps=7), idle_latency_s=0.25) == 7.0


def test_a_claim_near_the_generator_ceiling_is_flagged():
    measured = {"ceiling_rps": 1000.0, "reached": True}
    assert ceiling_flag(222.0, measured) is None
    assert "within 20%" in ceiling_flag(850.0, measured)
    assert "lower bound" in ceiling_flag(900.0, {"ceiling_rps": 1000.0, "reached": False})
    assert "not measured" in ceiling_flag(5.0, None)
    assert ceiling_flag(0.0, None) is None  # nothing claimed, nothing to flag
    # The probe starts above what the sweep offered, so a kept start rate clears every claim.
    assert ceiling_start([1.0, 2.0, 4.0]) == 250.0 and ceiling_start([400.0]) == 500.0


@pytest.fixture(scope="module")
def text2sql():
    spec = get_task("text2sql")
    rows = load_seed_and_test(spec, source="sample").test.to_dicts()
    return spec, rows, [build_messages(spec, dict(r)) for r in rows]


def test_the_saturation_search_finds_a_capacity_bound_servers_knee(text2sql, tmp_path):
    """A stub serving 2 requests at a time, 50 ms each (capacity 40 req/s), SLO 0.5 s: the search
    claims a rate below the capacity, fails one above it, and writes one small report. The generator's
    dispatch tolerance is 50 ms here (5 ms by default): the verdict under test is the server's, and
    the suite may share the machine."""
    _spec, _rows, messages = text2sql
    port = free_port()
    stub = loadgen_stub.start_stub(port, cpu=STUB_CPU, service_s=0.05, capacity=2, workdir=tmp_path)
    logged: list[str] = []
    try:
        points, report = sweep(f"http://127.0.0.1:{port}/v1", "stub", messages, slo_s=0.5, rates=None,
                               plan=SaturationPlan(start_rps=5, refine_steps=2, budget_s=60),
                               window_for=lambda rate: 3.0, workdir=tmp_path / "sweep", cpus=CLIENT_CPUS,
                               max_tokens=64, log=logged.append, max_dispatch_delay_s=0.05)
    finally:
        stop_process_group(stub, timeout_s=5)
    from distil_platform.serving.throughput import analyse

    summary = analyse(points, 0.5)
    offered = [p.offered_rps for p in points]
    assert offered[:3] == [5.0, 10.0, 20.0]
    assert 10.0 <= summary.sustained_rps <= 40.0 and summary.max_achieved_rps < 48.0, offered
    failed = first_failure(points, 0.5)
    assert failed is not None and summary.sustained_rps < failed <= 80.0
    assert not summary.client_bound_rates, [p.client_bound_reasons for p in points]  # the server failed, not the generator
    data = json.loads(report.read_text())
    assert data["sweep"] == "saturation" and len(data["runs"]) == len(points)
    assert data["sustained_rps"] == summary.sustained_rps
    assert "SELECT" not in report.read_text()  # timings only, no prompts or answers
    assert any("ETA" in line for line in logged)


def test_a_fixed_sweep_stops_at_the_first_rate_the_server_fails(text2sql, tmp_path):
    _spec, _rows, messages = text2sql
    port = free_port()
    stub = loadgen_stub.start_stub(port, cpu=STUB_CPU, service_s=0.05, capacity=1, workdir=tmp_path)
    try:
        points, _report = sweep(f"http://127.0.0.1:{port}/v1", "stub", messages, slo_s=0.5,
                                rates=[40.0, 5.0, 80.0], plan=None, window_for=lambda rate: 2.0,
                                workdir=tmp_path / "fixed", cpus=CLIENT_CPUS, max_tokens=64, max_dispatch_delay_s=0.05)
    finally:
        stop_process_group(stub, timeout_s=5)
    assert [p.offered_rps for p in points] == [5.0, 40.0]  # 40 fails (capacity 20): 80 is not run


def test_the_generator_ceiling_against_the_stub_and_a_rate_beyond_it(text2sql, tmp_path):
    """The probe doubles from its start rate to its maximum (50, 100 req/s) against the stub on the
    other core, each probe carrying the generator's own verdict; the ceiling is the highest rate kept
    (a lower bound while no probe fell behind). That a rate far above the ceiling is flagged client
    bound is tests/test_loadgen.py's."""
    spec, rows, messages = text2sql
    ceiling = generator_ceiling(messages[:20], [format_answer(spec, r["answer"]) for r in rows],
                                workdir=tmp_path, generator_cpus=CLIENT_CPUS, start_rps=50, max_rps=100,
                                window_s=1.0, max_tokens=64)
    assert [p["offered_rps"] for p in ceiling["probed"]][:1] == [50.0]
    assert ceiling["ceiling_rps"] in (0.0, 50.0, 100.0)
    for probe in ceiling["probed"]:
        assert probe["client_bound"] == bool(probe["reasons"])
        assert probe["dispatch_delay_p99_ms"] is not None and probe["cpu_share"] is not None
    if ceiling["reached"]:
        assert ceiling["first_client_bound_rps"] > ceiling["ceiling_rps"]
    else:
        assert ceiling["ceiling_rps"] == 100.0 and ceiling["first_client_bound_rps"] is None
    assert ceiling["stub_cpu"] == STUB_CPU and ceiling["generator_cpus"] == (sorted(CLIENT_CPUS) if CLIENT_CPUS else None)
