"""Serving throughput of a model with guidellm: the task's real prompts against a running server. The
platform's default load path is its own open-loop generator (:mod:`distil_platform.serving.loadgen`,
swept by :mod:`distil_platform.serving.sweep`): on one core it keeps ~8,000 req/s on time where
guidellm (one worker) falls behind from ~100 req/s (benchmarks/README.md). guidellm stays one run
config away (``load_generator: guidellm``) for comparison; :func:`warm_up`, :func:`window_seconds` and
:func:`rate_windows` serve both. The analysis of its report is :mod:`distil_platform.serving.throughput`.

guidellm (the vLLM project's load generator) sends Poisson arrivals at each offered rate (or, with
no rates given, runs its adaptive sweep: synchronous, max-throughput, then rates in between) and
writes a JSON report with every request. This module writes the prompt file, builds the guidellm
scenario, runs ``guidellm run`` in a subprocess and parses its report into load points.

guidellm 0.8.1 behaviours this works around, all measured here:

- Every worker process seeded its ``random.Random`` identically, so with N processes each Poisson gap
  repeated N times (bursts, not Poisson). :mod:`distil_platform.serving.guidellm_cli` now seeds each
  worker differently; one worker (:data:`DEFAULT_WORKER_PROCESSES`) remains the default, since it keeps
  the generator off a CPU server's cores.
- A run stops when the prompt file is exhausted, so prompts are cycled to cover rate x duration.
- The Poisson strategy releases its worker before it sets the arrival clock (a race): a worker that
  wins it sends its first arrivals in one burst. ``guidellm_cli`` sets the clock first.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distil_platform.serving.throughput import LoadPoint, ThroughputError, parse_guidellm_report
from distil_platform.tasks.prompts import build_messages
from distil_platform.tasks.spec import TaskSpec

DEFAULT_WORKER_PROCESSES = 1
DEFAULT_SWEEP_MAX_CONCURRENCY = 256


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

    from distil_platform.serving.launch import server_env
    from distil_platform.serving.server import parent_death_signal, stop_process_group

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
