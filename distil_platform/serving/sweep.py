"""The throughput sweep on the platform's open-loop generator (:mod:`distil_platform.serving.loadgen`):
which rates to offer, each rate a run of its own, and the generator's own ceiling on this host.

Two kinds of sweep:

- **fixed rates** (``make run``'s short sweep: the profile's rates), slowest first; the sweep stops at
  the first rate that is not sustained (the claim can never exceed it, :func:`analyse`), so an
  over-saturated server is not loaded further;
- **saturation** (:class:`SaturationPlan`; the benchmark's and the gpu profile's): from a starting rate
  the rate grows by ``growth`` until one fails, then the interval between the highest rate that
  passed and the lowest that failed is bisected (geometric mean) ``refine_steps`` times. The result is
  the student's own knee, not the sweep's top rate. Bounded by ``max_rates`` runs and ``budget_s``.

Every rate runs in its own generator process (:func:`distil_platform.serving.loadgen.run_loadgen`),
pinned to the cores given, and its point carries the generator's verdict: a rate where the generator
fell behind its schedule is ``client_bound`` and never claimed.

:func:`generator_ceiling` measures what the generator itself can offer on the cores it ran on: the
stub (:mod:`distil_platform.serving.loadgen_stub`, streaming the task's reference answers with the
student's tokenizer, one chunk per token as vLLM does) on another core, the same prompts, rates
doubling from above the highest rate the sweep offered until the generator falls behind.
:func:`ceiling_flag` says when a claim is within 20% of that ceiling: such a claim may be the
generator's limit, not the server's.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distil_platform.serving.throughput import LoadPoint, ThroughputError

# A claim at or above this share of the generator's measured ceiling is flagged.
CEILING_MARGIN = 0.8


@dataclass(frozen=True)
class SaturationPlan:
    """How the saturation search runs (see the module docstring)."""

    start_rps: float | None = None  # None: half the idle server's requests per second (1 / service time)
    growth: float = 2.0
    refine_steps: int = 3  # bisections between the highest pass and the lowest failure
    min_gap: float = 0.1  # stop refining once the failing rate is within 10% of the passing one
    max_rates: int = 12
    min_rps: float = 0.05  # below this the search gives up looking for a rate the server sustains
    max_rps: float = 20000.0
    budget_s: float = 1800.0  # measurement time (windows) the search may spend

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def first_rate(plan: SaturationPlan, idle_latency_s: float) -> float:
    """The search's first rate: the plan's, else half what an idle server answers one at a time."""
    if plan.start_rps:
        return float(plan.start_rps)
    return _round_rate(max(plan.min_rps, 0.5 / max(idle_latency_s, 1e-3)))


def _round_rate(rate: float) -> float:
    """Two significant digits: rates a person reads in a table (0.37, 4.1, 230)."""
    if rate <= 0:
        return rate
    digits = 1 - math.floor(math.log10(rate))
    return round(rate, digits)


def next_rate(tried: Sequence[tuple[float, bool]], plan: SaturationPlan) -> float | None:
    """The next rate of the saturation search given ``(rate, sustained)`` so far (None: done).

    Grows by ``plan.growth`` while every rate passed; after the first failure, bisects between the
    highest rate that passed below it and the lowest that failed; with no rate passing, steps down
    by ``growth`` to ``min_rps``."""
    if not tried or len(tried) >= plan.max_rates:
        return None
    failed = [r for r, ok in tried if not ok]
    if not failed:
        top = max(r for r, _ in tried)
        nxt = _round_rate(top * plan.growth)
        return nxt if nxt <= plan.max_rps and nxt > top else None
    hi = min(failed)
    passed = [r for r, ok in tried if ok and r < hi]
    if not passed:
        nxt = _round_rate(hi / plan.growth)
        return nxt if nxt >= plan.min_rps and nxt < hi else None
    lo = max(passed)
    first_failure = next(i for i, (_r, ok) in enumerate(tried) if not ok)
    if len(tried) - 1 - first_failure >= plan.refine_steps or hi <= lo * (1 + plan.min_gap):
        return None
    mid = _round_rate(math.sqrt(lo * hi))
    return mid if lo < mid < hi and all(mid != r for r, _ in tried) else None


def run_rate(base_url: str, model: str, messages: Sequence[list[dict[str, Any]]], *, rate: float,
             window_s: float, workdir: Path, seed: int, max_tokens: int, cpus: set[int] | None,
             drain_timeout_s: float, max_dispatch_delay_s: float | None = None) -> tuple[LoadPoint, dict[str, Any]]:
    """One rate: the generator in its own process; its point and its result (per-request timings).
    ``max_dispatch_delay_s``: the p99 dispatch delay past which the run is client bound (None: 5 ms)."""
    from distil_platform.serving.loadgen import load_point, run_loadgen

    extra = ["--drain-timeout", repr(float(drain_timeout_s))]
    if max_dispatch_delay_s is not None:
        extra += ["--max-dispatch-delay-ms", repr(float(max_dispatch_delay_s) * 1e3)]
    result = run_loadgen(base_url, model, messages, rate=rate, duration_s=window_s, workdir=workdir, seed=seed,
                         max_tokens=max_tokens, cpus=cpus, extra_args=extra, timeout_s=window_s + drain_timeout_s + 120.0)
    if result["completed"] == 0 and result["sent"]:
        raise ThroughputError(f"every load-test request at {rate:g} req/s failed; first error: {result['first_error']}")
    return load_point(result), result


def sweep(base_url: str, model: str, messages: Sequence[list[dict[str, Any]]], *, slo_s: float,
          rates: Sequence[float] | None, plan: SaturationPlan | None, window_for: Callable[[float], float],
          workdir: Path, seed: int = 0, max_tokens: int = 256, cpus: set[int] | None = None,
          idle_latency_s: float = 1.0, max_dispatch_delay_s: float | None = None,
          log: Callable[[str], None] | None = None) -> tuple[list[LoadPoint], Path]:
    """Offer ``rates`` (slowest first; stops at the first not sustained) or, with ``rates`` None, the
    saturation search of ``plan``. ``window_for(rate)``: that rate's window in seconds. Returns the
    points and one JSON report (every run's summary and per-request timings)."""
    from distil_platform.serving.throughput import analyse

    workdir = Path(workdir)
    plan = plan or SaturationPlan()
    fixed = sorted(float(r) for r in rates) if rates else None
    drain = max(10.0, 4.0 * slo_s)
    points: list[LoadPoint] = []
    results: list[dict[str, Any]] = []
    tried: list[tuple[float, bool]] = []
    spent = 0.0
    rate: float | None = fixed[0] if fixed else first_rate(plan, idle_latency_s)
    started = time.monotonic()
    while rate is not None:
        window = window_for(rate)
        if not fixed and spent + window > plan.budget_s and tried:
            if log:
                log(f"saturation search: the next rate ({rate:g} req/s) would pass the {plan.budget_s:g} s budget; stopping")
            break
        i = len(tried)
        if log:
            left = (sum(window_for(r) + 5 for r in fixed[i:]) if fixed
                    else max(0.0, min(plan.budget_s - spent, (plan.max_rates - i) * (window + 5))))
            log(f"load test rate {i + 1}{'/' + str(len(fixed)) if fixed else ''}: {rate:g} req/s for {window:g} s"
                f" ({'fixed sweep' if fixed else 'saturation search'}); ETA at most {left:.0f}s")
        point, result = run_rate(base_url, model, messages, rate=rate, window_s=window, workdir=workdir / f"rate{i}",
                                 seed=seed + i, max_tokens=max_tokens, cpus=cpus, drain_timeout_s=drain,
                                 max_dispatch_delay_s=max_dispatch_delay_s)
        spent += window
        points.append(point)
        results.append(result)
        ok = point.sustained(slo_s)
        tried.append((rate, ok))
        if log:
            p95 = "–" if point.p95_s is None else f"{point.p95_s:.2f} s"
            why = ("client bound: " + "; ".join(point.client_bound_reasons)) if point.client_bound else \
                ("sustained" if ok else "not sustained")
            log(f"  {rate:g} req/s: p95 {p95}, {point.successful} ok, {point.errors} errors: {why}")
        if fixed:
            rate = fixed[i + 1] if ok and i + 1 < len(fixed) else None
            if not ok and i + 1 < len(fixed) and log:
                log(f"  the faster rates {fixed[i + 1:]} are not run: {rate_failed(point)}")
        else:
            rate = next_rate(tried, plan)
    report = workdir / "loadgen_report.json"
    workdir.mkdir(parents=True, exist_ok=True)
    summary = analyse(points, slo_s)
    report.write_text(json.dumps({
        "generator": "distil_platform.serving.loadgen (open-loop Poisson, aiohttp)",
        "sweep": "fixed" if fixed else "saturation", "plan": None if fixed else plan.as_dict(),
        "slo_s": slo_s, "sustained_rps": summary.sustained_rps, "wall_s": round(time.monotonic() - started, 1),
        "runs": results}, separators=(",", ":")), encoding="utf-8")
    return points, report


def rate_failed(point: LoadPoint) -> str:
    """Why a rate was not sustained, in words."""
    if point.client_bound:
        return "the load generator fell behind"
    if point.arrivals_short:
        return "arrivals fell short"
    if point.offered_rps is not None and point.backlog_expected is not None and point.backlog_growing:
        return "the server's backlog grew"
    if point.error_share > 0.03:
        return f"{point.errors} errors"
    return f"p95 {point.p95_s if point.p95_s is not None else float('nan'):.2f} s over the SLO"


def first_failure(points: Sequence[LoadPoint], slo_s: float) -> float | None:
    """The lowest offered rate that was not sustained (None: every rate offered was)."""
    failed = [p.offered_rps for p in points if p.offered_rps is not None and not p.sustained(slo_s)]
    return min(failed) if failed else None


# -- the generator's own ceiling ------------------------------------------------------------------
def generator_ceiling(messages: Sequence[list[dict[str, Any]]], answers: Sequence[str], *, workdir: Path,
                      generator_cpus: set[int] | None, tokenizer: str | None = None, start_rps: float = 250.0,
                      max_rps: float = 4000.0, window_s: float = 3.0, max_tokens: int = 256,
                      log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The highest rate the generator keeps on time against the stub on this host.

    The generator runs on ``generator_cpus`` (the cores it had in the sweep), the stub on another core
    where there is one. Rates double from ``start_rps`` until the generator is client-bound or
    ``max_rps`` passed. ``ceiling_rps``: the highest rate it kept (a lower bound when ``reached`` is
    False: it kept every rate probed)."""
    import os

    from distil_platform.serving.loadgen_stub import start_stub
    from distil_platform.serving.server import free_port, stop_process_group

    workdir = Path(workdir)
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    others = [c for c in allowed if c not in (generator_cpus or set())]
    stub_cpu = others[0] if others and generator_cpus else None
    port = free_port()
    started = time.monotonic()
    stub = start_stub(port, answers=answers, tokenizer=tokenizer, cpu=stub_cpu, workdir=workdir)
    probed: list[dict[str, Any]] = []
    try:
        rate = float(start_rps)
        while rate <= max_rps:
            point, _result = run_rate(f"http://127.0.0.1:{port}/v1", "stub", messages, rate=rate, window_s=window_s,
                                     workdir=workdir / f"ceiling{len(probed)}", seed=len(probed), max_tokens=max_tokens,
                                     cpus=generator_cpus, drain_timeout_s=10.0)
            probed.append({"offered_rps": rate, "client_bound": point.client_bound,
                           "reasons": point.client_bound_reasons,
                           "dispatch_delay_p99_ms": None if point.dispatch_delay_p99_s is None
                           else round(point.dispatch_delay_p99_s * 1e3, 3),
                           "cpu_share": None if point.generator_cpu_share is None
                           else round(point.generator_cpu_share, 3),
                           "e2e_p99_ms": None if point.p99_s is None else round(point.p99_s * 1e3, 2)})
            if log:
                log(f"generator ceiling: {rate:g} req/s against the stub: "
                    f"{'client bound (' + '; '.join(point.client_bound_reasons) + ')' if point.client_bound else 'on time'}")
            if point.client_bound:
                break
            rate *= 2
    finally:
        stop_process_group(stub, timeout_s=2.0)
    kept = [p["offered_rps"] for p in probed if not p["client_bound"]]
    failed = [p["offered_rps"] for p in probed if p["client_bound"]]
    return {"ceiling_rps": max(kept) if kept else 0.0, "reached": bool(failed),
            "first_client_bound_rps": min(failed) if failed else None, "probed": probed,
            "generator_cpus": sorted(generator_cpus) if generator_cpus else None, "stub_cpu": stub_cpu,
            "window_s": window_s, "wall_s": round(time.monotonic() - started, 1)}


def ceiling_start(offered: Sequence[float | None], floor: float = 250.0) -> float:
    """Where the ceiling probe starts: above every rate the sweep offered (x1.25), at least ``floor``."""
    top = max((r for r in offered if r), default=0.0)
    return max(floor, top / CEILING_MARGIN)


def ceiling_flag(claim_rps: float, ceiling: Mapping[str, Any] | None) -> str | None:
    """Why a claim must be read with care given the generator's ceiling (None: it is well below it).

    Flagged when the claim is at or above :data:`CEILING_MARGIN` (80%) of the measured ceiling, or
    when no ceiling was measured for a non-zero claim."""
    if not claim_rps:
        return None
    if not ceiling:
        return "the load generator's ceiling was not measured on this host"
    top = float(ceiling.get("ceiling_rps") or 0.0)
    if top <= 0:
        return "the load generator could not keep even the lowest probed rate against the stub"
    if claim_rps >= CEILING_MARGIN * top:
        bound = "" if ceiling.get("reached") else " (a lower bound: every probed rate was kept)"
        return (f"the claim ({claim_rps:g} req/s) is within {100 - CEILING_MARGIN * 100:.0f}% of the load "
                f"generator's ceiling on this host ({top:g} req/s{bound}): it may be the generator's limit")
    return None
