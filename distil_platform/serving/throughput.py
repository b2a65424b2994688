"""The analysis of a guidellm load test: its report parsed into load points, the sustained rate a
server keeps up with within a latency SLO, and the points as store rows, a markdown table and a plot.

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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Where a report has no per-request timings (so no backlog test): achieved throughput must reach
# this share of the arrivals for the rate to count as sustained.
MIN_ACHIEVED_RATIO = 0.97
# The backlog is "growing" when P(at least that many requests in flight at the window's close | a
# server that keeps up) is below this.
BACKLOG_ALPHA = 0.01
# Errored requests above this share disqualify a rate (an error is a request not served).
MAX_ERROR_SHARE = 0.03
# Arrivals are "short" when P(N <= sent | Poisson(configured rate x window)) is below this.
ARRIVAL_ALPHA = 0.01


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
    # The load generator's own verdict on this rate (distil_platform.serving.loadgen): why it, not the
    # server, limited the run (empty: it kept its schedule), its p99 dispatch delay and CPU share.
    # guidellm reports none of these: its points rely on the arrivals test alone.
    client_bound_reasons: list[str] = field(default_factory=list)
    dispatch_delay_p99_s: float | None = None
    generator_cpu_share: float | None = None

    @property
    def client_bound(self) -> bool:
        return bool(self.client_bound_reasons)

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
                or self.unreliable or self.client_bound):
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
    # Configured rates at which the load generator fell behind its schedule (never counted).
    client_bound_rates: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"sustained_rps": self.sustained_rps, "max_achieved_rps": self.max_achieved_rps,
                "slo_s": self.slo_s, "short_arrival_rates": self.short_arrival_rates,
                "unreliable_rates": self.unreliable_rates, "client_bound_rates": self.client_bound_rates,
                "points": [asdict(p) for p in self.points]}


# -- the guidellm report ----------------------------------------------------------------------


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
        max_achieved_rps=max((p.throughput_rps(min_ratio) for p in points
                              if p.successful and not p.unreliable and not p.client_bound),
                             default=0.0),
        slo_s=float(slo_s),
        points=list(points),
        short_arrival_rates=[p.offered_rps for p in points if p.arrivals_short and p.offered_rps is not None],
        unreliable_rates=[p.offered_rps for p in points if p.unreliable and p.offered_rps is not None],
        client_bound_rates=[p.offered_rps for p in points if p.client_bound and p.offered_rps is not None],
    )


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
        verdict = ("no (client bound: the load generator fell behind)" if p.client_bound
                   else "no (arrivals short)" if p.arrivals_short else "no (arrivals in a burst)" if p.arrivals_burst
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
