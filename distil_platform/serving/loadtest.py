"""Serving throughput of a model: a guidellm load test with the task's real prompts, and the
sustained-RPS analysis the cost table prices self-hosted students with.

guidellm (the vLLM project's load generator) sends Poisson arrivals at each offered rate (or, with
no rates given, runs its adaptive sweep: synchronous, max-throughput, then rates in between) and
writes a JSON report with every request. This module writes the prompt file, builds the guidellm
scenario, runs ``guidellm run`` in a subprocess, parses the report and decides the sustained rate.

Two guidellm 0.8.1 behaviours this works around, both measured here:

- With several worker processes each process seeds its own ``random.Random`` identically, so the
  Poisson gaps repeat once per process (ten equal gaps in a row): arrivals are bursty, not Poisson.
  One worker process gives true Poisson arrivals (and keeps the load generator from competing with
  a CPU server for cores); :data:`DEFAULT_WORKER_PROCESSES`.
- A run stops when the prompt file is exhausted, so prompts are cycled to cover rate x duration.
- The Poisson strategy releases its worker before it sets the arrival clock (a race): a worker that
  wins it sends its first arrivals in one burst. guidellm runs through
  :mod:`distil_platform.serving.guidellm_cli`, which sets the clock first.

Rates are estimated from request timestamps, not from counts over the window: requests still in
flight when the window closes are cancelled, and counting would charge that edge (rate x latency)
to the server. Arrival rate = requests actually sent over their span; achieved = completions over
the completion span. An idle server completes requests as fast as they arrive (ratio ~1); a
saturated one completes them at its capacity.

A rate is reported as sustained only if the server really received it: the number of requests
sent in the window must be consistent with Poisson arrivals at the *configured* rate (one-sided
exact test, :data:`ARRIVAL_ALPHA`). A load generator that falls behind (or a concurrency cap that
holds requests back) sends fewer; such a rate is flagged ``arrivals_short`` and never counted, since
keeping up with the arrivals that did come says nothing about the configured rate.

Whether the server kept up is a test on the backlog, not on the completion/arrival ratio: the
requests still in flight when the window closes are compared with what a server that keeps up
leaves in flight, given the window's own arrival times and latencies (:attr:`LoadPoint.backlog_p_value`,
:data:`BACKLOG_ALPHA`). A server above capacity holds requests that arrived long before the close.
The ratio, which rests on the first and last latencies only, is reported but not decisive.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distil_platform.tasks.prompts import build_messages
from distil_platform.tasks.spec import TaskSpec

# Where a report has no per-request timings (so no backlog test): achieved throughput must reach
# this share of the arrivals for the rate to count as sustained.
MIN_ACHIEVED_RATIO = 0.97
# The backlog is "growing" when P(at least that many requests in flight at the window's close | a
# server that keeps up) is below this.
BACKLOG_ALPHA = 0.01
# Errored requests above this share disqualify a rate (an error is a request not served).
MAX_ERROR_SHARE = 0.03
DEFAULT_WORKER_PROCESSES = 1
# Arrivals are "short" when P(N <= sent | Poisson(configured rate x window)) is below this.
ARRIVAL_ALPHA = 0.01
DEFAULT_SWEEP_MAX_CONCURRENCY = 256


class ThroughputError(RuntimeError):
    """The load test could not run or produced no usable measurement (message says why)."""


@dataclass
class LoadPoint:
    """One benchmark of the sweep: one offered rate (or guidellm's synchronous/throughput probe)."""

    strategy: str  # poisson / constant / synchronous / throughput / concurrent
    offered_rps: float | None  # the configured rate; None for synchronous/throughput probes
    arrival_rps: float | None  # measured arrivals / arrival span
    achieved_rps: float  # measured completions / completion span
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttft_p99_s: float | None
    output_tokens_per_s: float | None
    requests: int  # arrivals in the window (successful + errored + incomplete)
    successful: int
    errors: int
    incomplete: int
    duration_s: float
    mean_prompt_tokens: float | None = None
    mean_output_tokens: float | None = None
    stopped_by: list[str] = field(default_factory=list)
    first_error: str | None = None
    # Requests a server that keeps up would still have in flight when the window closes: the sum,
    # over every arrival, of P(latency > time left in the window) under the window's own completed
    # latencies (None: the report has no per-request timings).
    backlog_expected: float | None = None
    # Requests of the report's request list still in flight at the close (what the backlog test
    # compares with ``backlog_expected``; guidellm's totals can differ from its lists by one or two).
    in_flight_at_close: int | None = None

    @property
    def achieved_ratio(self) -> float | None:
        """Completions per arrival actually sent (does the server keep up with what it got?)."""
        reference = self.arrival_rps or self.offered_rps
        if not reference:
            return None
        return self.achieved_rps / reference

    @property
    def achieved_vs_offered(self) -> float | None:
        """Completions per request of the *configured* rate."""
        return self.achieved_rps / self.offered_rps if self.offered_rps else None

    @property
    def expected_arrivals(self) -> float | None:
        """Requests Poisson arrivals at the configured rate bring over the window (None: no rate)."""
        if not self.offered_rps or self.duration_s <= 0:
            return None
        return self.offered_rps * self.duration_s

    @property
    def arrivals_p_value(self) -> float | None:
        """P(at most ``requests`` arrivals | Poisson at the configured rate over the window)."""
        if (expected := self.expected_arrivals) is None:
            return None
        from scipy.stats import poisson

        return float(poisson.cdf(self.requests, expected))

    @property
    def arrivals_short(self) -> bool:
        """Fewer requests were sent than the configured rate accounts for (beyond Poisson noise)."""
        p = self.arrivals_p_value
        return p is not None and p < ARRIVAL_ALPHA

    @property
    def arrivals_burst(self) -> bool:
        """More requests were sent than the configured rate accounts for (beyond Poisson noise): a
        load generator that fired a backlog at once (guidellm's start race, see
        :mod:`distil_platform.serving.guidellm_cli`). Neither that rate nor its completion rate (completions
        of a burst over a short span) says anything about the server at the configured rate."""
        if (expected := self.expected_arrivals) is None:
            return False
        from scipy.stats import poisson

        return float(poisson.sf(self.requests - 1, expected)) < ARRIVAL_ALPHA

    @property
    def completions_compressed(self) -> bool:
        """Completions over their span came out at more than twice the rate requests arrived: a
        server cannot keep that up, so the span is an artefact (a backlog drained at once, a window
        cut short), not a capacity."""
        return bool(self.arrival_rps and self.achieved_rps > 2.0 * self.arrival_rps)

    @property
    def unreliable(self) -> bool:
        """A measurement that says nothing about the configured rate (see the two properties)."""
        return self.arrivals_burst or self.completions_compressed

    @property
    def backlog_p_value(self) -> float | None:
        """P(at least ``in_flight_at_close`` requests in flight at the close | the server keeps up).

        A server that keeps up is, for its in-flight count, an infinite-server queue: each request
        is still in flight at the close with probability S(time left), S the survival function of
        its latency, so the count is a sum of independent Bernoullis with the mean
        ``backlog_expected``, which the Poisson law with that mean bounds from above in the tail
        used here (a conservative test). A server that falls behind holds requests that arrived
        long before the close, where S is ~0: the count exceeds the expectation."""
        if self.backlog_expected is None or self.in_flight_at_close is None:
            return None
        if self.backlog_expected <= 0.0:
            return 1.0 if self.in_flight_at_close == 0 else 0.0
        from scipy.stats import poisson

        return float(poisson.sf(self.in_flight_at_close - 1, self.backlog_expected))

    @property
    def backlog_growing(self) -> bool:
        """More requests were left in flight than a server keeping up leaves (beyond chance): the
        queue grew over the window, so the rate is above capacity however its p95 reads."""
        p = self.backlog_p_value
        return p is not None and p < BACKLOG_ALPHA

    @property
    def error_share(self) -> float:
        done = self.successful + self.errors
        return self.errors / done if done else 1.0

    def kept_up(self, min_ratio: float = MIN_ACHIEVED_RATIO) -> bool:
        """The server kept up with the arrivals: no growing backlog at the window's close.

        Only where a report lacks per-request timings does this fall back to the completion/arrival
        span ratio (>= ``min_ratio``). That ratio rests on two latencies, the first and the last:
        over a 60 s window at 0.5 req/s a 2 s difference between them moves it by 0.035, so an idle
        server read 0.968 and "not kept up" (the re-measure of 2026-12-02)."""
        if self.backlog_expected is not None:
            return not self.backlog_growing
        ratio = self.achieved_ratio
        return ratio is not None and ratio >= min_ratio

    def throughput_rps(self, min_ratio: float = MIN_ACHIEVED_RATIO) -> float:
        """Requests per second this point shows the server can serve.

        A server that kept up with its arrivals served them all: its throughput is the arrival rate,
        whatever the completions' span reads (that span starts one latency after the first arrival
        and ends before the requests still in flight at the close complete, so on a short window its
        rate reads low: 3.39 req/s for 3.76 req/s of arrivals served without backlog, make run of
        2026-12-02 04:05). A server that fell behind was busy throughout, and its completion rate is
        its capacity."""
        if self.arrival_rps and self.kept_up(min_ratio):
            return self.arrival_rps
        return self.achieved_rps

    def sustained(self, slo_s: float, min_ratio: float = MIN_ACHIEVED_RATIO) -> bool:
        """The configured rate was offered (arrivals not short of it) and kept up with (no growing
        backlog, few errors) within the p95 latency SLO."""
        if (self.offered_rps is None or self.successful < 2 or self.p95_s is None or self.arrivals_short
                or self.unreliable):
            return False
        return self.kept_up(min_ratio) and self.p95_s <= slo_s and self.error_share <= MAX_ERROR_SHARE


@dataclass
class ThroughputSummary:
    sustained_rps: float  # 0.0: no offered rate met the criterion
    max_achieved_rps: float  # the highest LoadPoint.throughput_rps of a reliable point
    slo_s: float
    points: list[LoadPoint]
    # Configured rates whose arrivals fell short of them (never counted as sustained).
    short_arrival_rates: list[float] = field(default_factory=list)
    # Configured rates measured unreliably: arrivals in a burst, or completions compressed into a
    # span too short for the arrivals (never sustained, never in max_achieved_rps).
    unreliable_rates: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"sustained_rps": self.sustained_rps, "max_achieved_rps": self.max_achieved_rps,
                "slo_s": self.slo_s, "short_arrival_rates": self.short_arrival_rates,
                "unreliable_rates": self.unreliable_rates, "points": [asdict(p) for p in self.points]}


# -- prompts -----------------------------------------------------------------------------------
def requests_needed(rates: Sequence[float] | None, duration_s: float, floor: int = 200) -> int:
    """Prompts to write so no rate runs out of data (guidellm stops a run when the file ends)."""
    if not rates:
        return max(floor, 20000)  # sweep: its max-throughput probe can take many
    return max(floor, math.ceil(max(rates) * duration_s * 1.5) + 50)


def write_prompt_file(spec: TaskSpec, rows: Sequence[Mapping[str, Any]], path: Path, n_requests: int) -> Path:
    """The task's test prompts (the exact eval messages), cycled to ``n_requests`` lines of jsonl."""
    if not rows:
        raise ThroughputError(f"{spec.name}: no test rows to build load-test prompts from")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rendered = [json.dumps({"messages": build_messages(spec, dict(r))}, ensure_ascii=False) for r in rows]
    with path.open("w", encoding="utf-8") as fh:
        for i in range(max(n_requests, len(rendered))):
            fh.write(rendered[i % len(rendered)] + "\n")
    return path


# -- guidellm ----------------------------------------------------------------------------------
def guidellm_scenario(
    *,
    target: str,
    model: str,
    prompts_path: Path,
    tokenizer: str,
    rates: Sequence[float] | None,
    duration_s: float,
    max_tokens: int,
    report_path: Path,
    seed: int = 0,
    sweep_size: int = 8,
    max_concurrency: int | None = None,
) -> dict[str, Any]:
    """A guidellm scenario: Poisson arrivals at ``rates`` (or an adaptive sweep when None)."""
    if rates:
        profile: dict[str, Any] = {"kind": "poisson", "rate": [float(r) for r in sorted(rates)]}
    else:
        profile = {"kind": "sweep", "sweep_size": sweep_size, "strategy_type": "poisson"}
        # The sweep's max-throughput probe would otherwise open thousands of connections at once.
        max_concurrency = max_concurrency or DEFAULT_SWEEP_MAX_CONCURRENCY
    if max_concurrency:
        profile["max_concurrency"] = int(max_concurrency)
    base = target.rstrip("/")
    base = base.removesuffix("/v1")
    return {
        "spec": {
            "backend": {
                "kind": "openai_http",
                "target": base,
                "model": model,
                "request_format": "/v1/chat/completions",
                "max_tokens": int(max_tokens),
                "timeout": max(60.0, duration_s * 4),
            },
            "profile": profile,
            "data": [{"kind": "json_file", "path": str(prompts_path)}],
            "tokenizer": {"kind": "hf_auto", "model": tokenizer},
            "constraints": [
                {"kind": "max_duration", "seconds": float(duration_s)},
                # Once a rate over-saturates the server, higher rates only waste the machine's time.
                {"kind": "over_saturation", "mode": "enforce", "stopping_scope": "all",
                 "min_seconds": min(30.0, duration_s / 2)},
            ],
            "outputs": [{"kind": "json", "path": str(report_path)}],
            "seed": {"kind": "static", "value": int(seed)},
        }
    }


def run_guidellm(
    scenario: dict[str, Any],
    workdir: Path,
    *,
    timeout_s: float,
    worker_processes: int = DEFAULT_WORKER_PROCESSES,
    cpu_affinity: set[int] | None = None,
) -> Path:
    """Run ``guidellm run`` on ``scenario``; returns the JSON report path (raises with its log tail).

    ``cpu_affinity``: the cores the load generator may run on (e.g. the ones a vLLM-CPU server
    leaves to its frontend, so the generator does not take the engine's core and inflate the very
    latencies it measures); None = anywhere."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scenario_path = workdir / "guidellm_scenario.json"
    scenario_path.write_text(json.dumps(scenario, indent=1), encoding="utf-8")
    report = Path(scenario["spec"]["outputs"][0]["path"])
    log_path = workdir / "guidellm.log"
    import signal

    from distil_platform.serving.server import parent_death_signal, server_env, stop_process_group

    # The load generator talks to a local server: it gets no API keys (server_env's allow-list).
    env = server_env({"GUIDELLM__MAX_WORKER_PROCESSES": str(int(worker_processes))})
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # guidellm through distil_platform.serving.guidellm_cli: its CLI with the Poisson start race fixed.
    cmd = [sys.executable, "-m", "distil_platform.serving.guidellm_cli", "run", "-c", str(scenario_path),
           "--disable-console-interactive"]
    # Its own process group (guidellm starts worker processes): a timeout or an interrupted step stops
    # the whole group; a SIGKILLed step takes guidellm with it (parent-death signal).
    pin, on_parent_death = _affinity_setter(cpu_affinity), parent_death_signal(signal.SIGTERM)

    def preexec() -> None:  # between fork and exec: one sched_setaffinity and one prctl call
        if pin is not None:
            pin()
        if on_parent_death is not None:
            on_parent_death()

    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=workdir, start_new_session=True, preexec_fn=preexec)  # noqa: PLW1509
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_process_group(proc)
            raise ThroughputError(f"guidellm did not finish within {timeout_s:.0f}s; log: {log_path}") from None
        except BaseException:
            stop_process_group(proc)
            raise
        stop_process_group(proc, timeout_s=1.0)  # worker processes left in the group after guidellm exited
    if returncode != 0 or not report.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        hint = ("; a measurement window completed no request (window shorter than the server's latency): "
                "lengthen duration_s" if "No measurement start or end times" in tail else "")
        raise ThroughputError(f"guidellm exited {returncode} without a report ({report}){hint}; log tail:\n{tail}")
    return report


def _affinity_setter(cpus: set[int] | None):
    """A ``preexec_fn`` that pins the child to ``cpus`` (None where not wanted or not supported)."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = set(cpus) & os.sched_getaffinity(0)
    if not allowed:
        return None
    return lambda: os.sched_setaffinity(0, allowed)


def _pct(metric: Mapping[str, Any] | None, key: str, scale: float = 1.0) -> float | None:
    if not metric:
        return None
    stats = metric.get("successful") or {}
    if not stats.get("count"):
        return None
    value = (stats.get("percentiles") or {}).get(key)
    return None if value is None else float(value) * scale


def _mean(metric: Mapping[str, Any] | None) -> float | None:
    stats = (metric or {}).get("successful") or {}
    return float(stats["mean"]) if stats.get("count") and stats.get("mean") is not None else None


def _span_rate(times: Sequence[float]) -> float | None:
    times = sorted(t for t in times if t is not None)
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


def _backlog_expected(bench: Mapping[str, Any], arrivals: Sequence[float | None],
                      ok: Sequence[Mapping[str, Any]]) -> float | None:
    """Expected requests in flight at the window's close for a server that keeps up: the sum over
    arrivals of the empirical P(latency > close - arrival), from this window's completed requests
    (which, if anything, understate long latencies: the test errs towards "falling behind")."""
    import bisect

    latencies = sorted(e - s for s, e in ((_timing(r, "request_start"), _timing(r, "request_end")) for r in ok)
                       if s is not None and e is not None)
    if len(latencies) < 2 or len(latencies) < len(ok) or any(a is None for a in arrivals):
        return None
    close = bench.get("end_time")
    if close is None:
        ends = [_timing(r, "request_end") for r in ok]
        close = max([a for a in arrivals if a is not None] + [e for e in ends if e is not None])
    close = float(close)
    n = len(latencies)
    return sum((n - bisect.bisect_right(latencies, close - a)) / n for a in arrivals if a is not None and a <= close)


def _timing(request: Mapping[str, Any], key: str) -> float | None:
    info = request.get("info") or {}
    value = (info.get("timings") or {}).get(key)
    return float(value) if value is not None else None


def _strategy(bench: Mapping[str, Any]) -> tuple[str, float | None]:
    strategy = (bench.get("config") or {}).get("strategy") or {}
    kind = str(strategy.get("type_") or strategy.get("type") or "unknown")
    rate = strategy.get("rate")
    return kind, (float(rate) if rate is not None and kind in ("poisson", "constant") else None)


def parse_guidellm_report(report: Path | str | Mapping[str, Any]) -> list[LoadPoint]:
    """One :class:`LoadPoint` per benchmark in a guidellm 0.8 JSON report."""
    data = report if isinstance(report, Mapping) else json.loads(Path(report).read_text(encoding="utf-8"))
    benches = data.get("benchmarks")
    if not isinstance(benches, list) or not benches:
        raise ThroughputError(f"guidellm report {report if not isinstance(report, Mapping) else ''} has no benchmarks")
    points = []
    for bench in benches:
        kind, offered = _strategy(bench)
        metrics = bench.get("metrics") or {}
        totals = metrics.get("request_totals") or {}
        reqs = bench.get("requests") or {}
        ok = list(reqs.get("successful") or [])
        bad = list(reqs.get("errored") or [])
        incomplete = list(reqs.get("incomplete") or [])
        n_ok = int(totals.get("successful", len(ok)))
        n_err = int(totals.get("errored", len(bad)))
        n_inc = int(totals.get("incomplete", len(incomplete)))
        duration = float(bench.get("duration") or 0.0)
        # When requests were actually sent (a lagging generator or a concurrency cap delays them past
        # their targeted start): what the server saw.
        arrivals = [_timing(r, "request_start") or _timing(r, "targeted_start") for r in ok + bad + incomplete]
        completions = [_timing(r, "request_end") for r in ok]
        backlog = _backlog_expected(bench, arrivals, ok) if len(arrivals) >= n_ok + n_err else None
        achieved = _span_rate(completions)
        if achieved is None or len(ok) < n_ok:  # samples missing: fall back to guidellm's aggregate
            achieved = _mean(metrics.get("requests_per_second")) or (n_ok / duration if duration else 0.0)
        arrival_rps = _span_rate(arrivals) if len(arrivals) >= n_ok + n_err else None
        first_error = None
        for r in bad:
            err = (r.get("info") or {}).get("error")
            if err:
                first_error = str(err)[:500]
                break
        stopped = sorted(((bench.get("scheduler_state") or {}).get("end_processing_constraints") or {}).keys())
        points.append(LoadPoint(
            strategy=kind,
            offered_rps=offered,
            arrival_rps=arrival_rps if kind != "throughput" else None,
            achieved_rps=float(achieved),
            p50_s=_pct(metrics.get("request_latency"), "p50"),
            p95_s=_pct(metrics.get("request_latency"), "p95"),
            p99_s=_pct(metrics.get("request_latency"), "p99"),
            ttft_p50_s=_pct(metrics.get("time_to_first_token_ms"), "p50", 1e-3),
            ttft_p95_s=_pct(metrics.get("time_to_first_token_ms"), "p95", 1e-3),
            ttft_p99_s=_pct(metrics.get("time_to_first_token_ms"), "p99", 1e-3),
            output_tokens_per_s=_mean(metrics.get("output_tokens_per_second")),
            requests=n_ok + n_err + n_inc,
            successful=n_ok,
            errors=n_err,
            incomplete=n_inc,
            duration_s=duration,
            mean_prompt_tokens=_mean(metrics.get("prompt_token_count")),
            mean_output_tokens=_mean(metrics.get("output_token_count")),
            stopped_by=stopped,
            first_error=first_error,
            backlog_expected=backlog,
            in_flight_at_close=len(incomplete) if backlog is not None else None,
        ))
    if all(p.successful == 0 for p in points):
        errors = next((p.first_error for p in points if p.first_error), "no request completed")
        raise ThroughputError(f"every load-test request failed; first error: {errors}")
    return points


def analyse(points: Sequence[LoadPoint], slo_s: float, min_ratio: float = MIN_ACHIEVED_RATIO) -> ThroughputSummary:
    """Sustained RPS = highest offered rate kept up with within the p95 latency SLO **at which every
    lower offered rate was too**: a rate that misses the SLO caps the claim, even if a higher one
    then passes (a p95 from a few dozen requests is noisy; a capacity claim above a measured miss
    is not one a user can rely on)."""
    sustained = 0.0
    for point in sorted((p for p in points if p.offered_rps is not None), key=lambda p: p.offered_rps):
        if not point.sustained(slo_s, min_ratio):
            break
        sustained = point.offered_rps
    return ThroughputSummary(
        sustained_rps=sustained,
        max_achieved_rps=max((p.throughput_rps(min_ratio) for p in points if p.successful and not p.unreliable),
                             default=0.0),
        slo_s=float(slo_s),
        points=list(points),
        short_arrival_rates=[p.offered_rps for p in points if p.arrivals_short and p.offered_rps is not None],
        unreliable_rates=[p.offered_rps for p in points if p.unreliable and p.offered_rps is not None],
    )


def warm_up(base_url: str, model: str, messages: Sequence[list[dict[str, str]]], max_tokens: int,
            timeout_s: float = 300.0) -> float:
    """Send a few requests before measuring: the first request to a fresh server pays for lazy
    initialisation (seconds on CPU) and would otherwise be charged to the lowest offered rate.
    Returns the last request's latency (seconds): an idle server's service time."""
    import time

    import httpx

    url = base_url.rstrip("/")
    url = url if url.endswith("/v1") else url + "/v1"
    latency = 0.0
    with httpx.Client(timeout=timeout_s) as client:
        for msgs in messages:
            start = time.monotonic()
            response = client.post(f"{url}/chat/completions",
                                   json={"model": model, "messages": msgs, "max_tokens": max_tokens})
            latency = time.monotonic() - start
            if response.status_code != 200:
                raise ThroughputError(
                    f"warm-up request to {url} failed with HTTP {response.status_code}: {response.text[:500]}")
    return latency


def window_seconds(duration_s: float, rates: Sequence[float] | None, idle_latency_s: float) -> float:
    """Measurement window per rate: at least the configured duration, long enough for the slowest
    rate to send a few requests, and several idle service times (guidellm 0.8.1 aborts the whole run
    when a window completes no request at all)."""
    slowest = min(rates) if rates else None
    return max(duration_s, 4.0 * idle_latency_s, 3.0 / slowest if slowest else 0.0)


def rate_windows(rates: Sequence[float], duration_s: float, idle_latency_s: float,
                 min_requests: int = 0) -> list[tuple[float, list[float]]]:
    """``(window_s, rates)`` groups, slowest rates first: each rate's window is
    :func:`window_seconds` for that rate, lengthened to hold ``min_requests`` expected arrivals, so
    that a low rate's p95 comes from enough requests to be a tail estimate (at 0.5 req/s a 20 s
    window holds ~10, and their p95 is in effect the slowest one). guidellm 0.8.1 has one duration
    for all rates of a run, so each group is its own run."""
    groups: dict[float, list[float]] = {}
    for rate in sorted(float(r) for r in rates):
        window = window_seconds(duration_s, [rate], idle_latency_s)
        if min_requests > 0:
            window = max(window, math.ceil(min_requests / rate))
        groups.setdefault(float(window), []).append(rate)
    return sorted(groups.items(), key=lambda item: min(item[1]))


def _over_saturated(report: Path) -> bool:
    """Whether guidellm's over-saturation constraint stopped a benchmark of this report."""
    data = json.loads(Path(report).read_text(encoding="utf-8"))
    return any("over_saturation" in ((b.get("scheduler_state") or {}).get("end_processing_constraints") or {})
               for b in data.get("benchmarks") or [])


def merge_reports(reports: Sequence[Path], path: Path) -> Path:
    """One guidellm report of several runs' benchmarks, in run order (the first run's other fields)."""
    merged: dict[str, Any] | None = None
    for report in reports:
        data = json.loads(Path(report).read_text(encoding="utf-8"))
        if merged is None:
            merged = dict(data)
            merged["benchmarks"] = list(data.get("benchmarks") or [])
        else:
            merged["benchmarks"].extend(data.get("benchmarks") or [])
    if merged is None:
        raise ThroughputError("no guidellm report to merge")
    Path(path).write_text(json.dumps(merged), encoding="utf-8")
    return Path(path)


def load_test(
    spec: TaskSpec,
    rows: Sequence[Mapping[str, Any]],
    *,
    base_url: str,
    model: str,
    tokenizer: str,
    rates: Sequence[float] | None,
    duration_s: float,
    workdir: Path,
    max_tokens: int | None = None,
    seed: int = 0,
    max_concurrency: int | None = None,
    worker_processes: int = DEFAULT_WORKER_PROCESSES,
    cpu_affinity: set[int] | None = None,
    min_requests: int = 0,
    log=None,
) -> tuple[list[LoadPoint], Path]:
    """Load-test a running OpenAI-compatible server with ``spec``'s test prompts. Returns the points
    and the guidellm JSON report path (one report, whatever the number of guidellm runs).

    With fixed ``rates``, rates whose windows differ (``min_requests``, :func:`rate_windows`) run as
    separate guidellm runs, slowest first; once a run stops on over-saturation the faster rates are
    not run (as guidellm itself does within a run)."""
    workdir = Path(workdir)
    max_tokens = max_tokens or spec.max_answer_tokens
    idle_latency = warm_up(base_url, model, [build_messages(spec, dict(r)) for r in rows[:2]], max_tokens)
    if not rates:
        groups: list[tuple[float, list[float] | None]] = [(window_seconds(duration_s, None, idle_latency), None)]
    else:
        groups = list(rate_windows(rates, duration_s, idle_latency, min_requests))
    report_path = workdir / "guidellm_report.json"
    reports: list[Path] = []
    for i, (window, group) in enumerate(groups):
        run_dir = workdir if len(groups) == 1 else workdir / f"run{i}"
        prompts = write_prompt_file(spec, rows, run_dir / "prompts.jsonl", requests_needed(group, window))
        run_report = report_path if len(groups) == 1 else run_dir / "guidellm_report.json"
        scenario = guidellm_scenario(
            target=base_url, model=model, prompts_path=prompts, tokenizer=tokenizer, rates=group,
            duration_s=window, max_tokens=max_tokens, report_path=run_report, seed=seed,
            max_concurrency=max_concurrency,
        )
        if log is not None:
            # Measurement windows left (this run's and the later ones'), plus ~10 s of start-up per run.
            left = sum(w * (len(g) if g else 8) + 10 for w, g in groups[i:])
            log(f"guidellm run {i + 1}/{len(groups)}: {group or 'sweep'} req/s, {window:g} s each; "
                f"ETA {left:.0f}s for the load test")
        n_benchmarks = len(group) if group else 8
        timeout = n_benchmarks * (window + 60) + 180  # + guidellm start-up and server drain
        run_guidellm(scenario, run_dir, timeout_s=timeout, worker_processes=worker_processes,
                     cpu_affinity=cpu_affinity)
        reports.append(run_report)
        if len(groups) > 1 and _over_saturated(run_report):
            if log is not None and i + 1 < len(groups):
                log(f"over-saturated at {group} req/s: the faster rates are not run")
            break
    if len(reports) > 1:
        merge_reports(reports, report_path)
    return parse_guidellm_report(report_path), report_path


# -- outputs -----------------------------------------------------------------------------------
def point_rows(points: Sequence[LoadPoint], **common: Any) -> list[dict[str, Any]]:
    """Rows for the store's ``throughput_points`` table (``common``: run_id, task, model, ...)."""
    return [
        dict(common, offered_rps=p.offered_rps, achieved_rps=p.achieved_rps, p50_s=p.p50_s, p95_s=p.p95_s,
             p99_s=p.p99_s, ttft_p50_s=p.ttft_p50_s, ttft_p95_s=p.ttft_p95_s, ttft_p99_s=p.ttft_p99_s,
             output_tokens_per_s=p.output_tokens_per_s, requests=p.requests, errors=p.errors)
        for p in points
    ]


def points_markdown(points: Sequence[LoadPoint], slo_s: float, claimed: float | None = None) -> str:
    """The load points as a markdown table with each rate's verdict; ``claimed`` is the summary's
    sustained RPS (computed here when not given)."""
    def f(v: float | None, nd: int = 2) -> str:
        return "–" if v is None else f"{v:.{nd}f}"

    lines = [("| strategy | offered rps | arrivals rps | achieved rps | achieved / offered | p50 s | p95 s | p99 s "
              "| TTFT p50 s | out tok/s | ok | err | in flight at close (expected) | window s | sustained |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if claimed is None:
        claimed = analyse(points, slo_s).sustained_rps
    for p in points:
        verdict = ("no (arrivals short)" if p.arrivals_short else "no (arrivals in a burst)" if p.arrivals_burst
                   else "no (completions compressed)" if p.completions_compressed
                   else "no (backlog growing)" if p.offered_rps is not None and p.backlog_growing
                   else "no" if not p.sustained(slo_s)
                   else "met, not claimed (a lower rate missed)" if (p.offered_rps or 0.0) > claimed else "yes")
        lines.append(
            f"| {p.strategy} | {f(p.offered_rps)} | {f(p.arrival_rps)} | {f(p.achieved_rps)} "
            f"| {f(p.achieved_vs_offered)} | {f(p.p50_s)} "
            f"| {f(p.p95_s)} | {f(p.p99_s)} | {f(p.ttft_p50_s, 3)} | {f(p.output_tokens_per_s, 1)} "
            f"| {p.successful} | {p.errors} | {p.incomplete if p.in_flight_at_close is None else p.in_flight_at_close}"
            f"{'' if p.backlog_expected is None else f' ({p.backlog_expected:.1f})'} | {f(p.duration_s, 0)} | {verdict} |"
        )
    return "\n".join(lines)


def plot_latency_vs_load(series: Mapping[str, Sequence[LoadPoint]], slo_s: float, path: Path, title: str = "") -> Path:
    """p50/p95 latency and achieved throughput against offered rate, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, points in series.items():
        pts = sorted((p for p in points if p.offered_rps is not None), key=lambda p: p.offered_rps)
        if not pts:
            continue
        x = [p.offered_rps for p in pts]
        ax_lat.plot(x, [p.p50_s for p in pts], marker="o", label=f"{name} p50")
        ax_lat.plot(x, [p.p95_s for p in pts], marker="^", linestyle="--", label=f"{name} p95")
        ax_tp.plot(x, [p.achieved_rps for p in pts], marker="o", label=f"{name} achieved")
    ax_lat.axhline(slo_s, color="red", linewidth=0.8, label=f"SLO {slo_s:g}s")
    ax_lat.set_xlabel("offered load (requests/s)")
    ax_lat.set_ylabel("end-to-end latency (s)")
    ax_lat.legend(fontsize=8)
    ax_lat.grid(alpha=0.3)
    lim = max([p.offered_rps or 0 for pts in series.values() for p in pts] + [1e-9])
    ax_tp.plot([0, lim], [0, lim], color="grey", linewidth=0.8, linestyle=":", label="achieved = offered")
    ax_tp.set_xlabel("offered load (requests/s)")
    ax_tp.set_ylabel("achieved throughput (requests/s)")
    ax_tp.legend(fontsize=8)
    ax_tp.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fp8_supported(backend: str, on_gpu: bool = True) -> tuple[bool, str]:
    """fp8 weights need vLLM on a GPU with fp8 tensor cores (compute capability >= 8.9: Ada, Hopper).
    Read with ``nvidia-smi`` (the serving env's CUDA build is never imported here)."""
    if backend != "vllm":
        return False, f"backend {backend!r} has no fp8 path (vLLM only)"
    if not on_gpu:
        return False, "the server runs on the CPU (vLLM's fp8 weights need a CUDA GPU)"
    from distil_platform.precision import gpu_compute_capability

    capability = gpu_compute_capability()
    if capability is None:
        return False, "no CUDA GPU (nvidia-smi reports none)"
    major, minor = capability
    if (major, minor) < (8, 9):
        return False, f"GPU compute capability {major}.{minor} < 8.9 (no fp8 tensor cores)"
    return True, f"GPU compute capability {major}.{minor}"
