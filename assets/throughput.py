"""``<task>_throughput``'s body: load test (the platform's open-loop generator; guidellm by run config) of the served student at its compute dtype (the
reference variant, named after that dtype: ``bf16``, ``fp32``, ``fp16``), the same without prefix
caching, and fp8 where supported. The asset itself is wired in ``assets/student_serving.py``."""

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
from distil_platform.resources.models import LLMResource, ServingResource
from distil_platform.resources.store import ResultsStoreResource

from distil_platform.profiles import Profile
from distil_platform.storage import paths
from distil_platform.tasks.spec import TaskSpec

from .common import build_judge, eval_concurrency_for, evaluate_served
from .metadata import location_metadata, png_markdown
from .published import store_run_id_metadata


class ThroughputConfig(dg.Config):
    """Overrides for ``<task>_throughput`` (None = the profile's sweep)."""

    # The load generator: "loadgen" (the platform's open-loop Poisson generator on aiohttp: keeps
    # ~8,000 req/s on time on one core, benchmarks/README.md) or "guidellm" (one worker: behind from
    # ~100 req/s on one core; kept for comparison).
    load_generator: str = "loadgen"
    # Offered request rates (req/s, Poisson arrivals). None: the profile's; if that is None too, the
    # saturation search (loadgen) or guidellm's adaptive sweep.
    rates: list[float] | None = None
    # loadgen: search for the rate the student first fails (rates grow x2 from half the idle service
    # rate until one fails, then 3 bisections; distil_platform.serving.sweep). None: when the profile
    # has no fixed rates (gpu). `make run` keeps the local profile's short sweep; the benchmark sets it.
    saturation: bool | None = None
    saturation_start_rps: float | None = None
    saturation_max_rates: int = 12
    saturation_budget_s: float = 1800.0
    # loadgen: measure the generator's own ceiling on this host against a stub after the sweep (~20 s)
    # and flag a claim within 20% of it.
    generator_ceiling: bool = True
    duration_s: float | None = None
    # Each rate's window holds at least this many expected arrivals (slow rates get longer windows,
    # run as their own guidellm run). None: the profile's (local 30); 0: the duration alone.
    min_requests_per_rate: int | None = None
    # The reference variant (the server's compute dtype) always; fp8 additionally where vLLM runs on
    # an fp8-capable GPU.
    fp8: bool = True
    # vLLM: also measure the reference variant with automatic prefix caching off (the shared system
    # prompt is what prefix caching saves; the on/off pair shows what it is worth on this task and
    # machine). None: the profile's (local: off in `make run`, one run config away).
    prefix_caching_off: bool | None = None
    max_concurrency: int | None = None
    # guidellm worker processes (each now seeded differently; 1 keeps the generator off a CPU server's cores).
    worker_processes: int = 1
    # vLLM-CPU: run the load generator on the cores the server reserves for its frontend, off the
    # engine's compute core (on 2 cores it otherwise competes with the engine it measures).
    pin_load_generator: bool = True
    seed: int = 0


class StudentProfiler:
    """The body of ``<task>_throughput``: guidellm against the student, one variant per server —
    the reference variant at the serving resource's compute dtype (named after it: ``bf16``,
    ``fp32``, ...; on a server the caller may share with the student eval), then the same without
    prefix caching (vLLM) and fp8 (vLLM on fp8 GPUs), each on its own server. ``result()`` is the
    asset's ``(value, metadata)``."""

    def __init__(self, context, spec: TaskSpec, profile: Profile, config: ThroughputConfig, test: list[dict],
                 student: dict, ckpt: Path, serving: ServingResource, llm: LLMResource,
                 results_store: ResultsStoreResource):
        self.context, self.spec, self.config, self.test, self.profile = context, spec, config, test, profile
        self.student, self.ckpt, self.serving, self.llm = student, ckpt, serving, llm
        self.slo = spec.latency_slo(profile.name)
        self.rates = config.rates if config.rates is not None else profile.throughput_rates
        self.duration = config.duration_s or profile.throughput_duration_s
        self.min_requests = (config.min_requests_per_rate if config.min_requests_per_rate is not None
                             else profile.throughput_min_requests)
        self.prefix_caching_off = (config.prefix_caching_off if config.prefix_caching_off is not None
                                   else profile.throughput_prefix_caching_off)
        self.reference: str | None = None  # the first variant measured (the server's dtype)
        # Load-test reports, plot and summary: published at <artefacts>/<task>/throughput/<run id>/.
        self.out = paths.ArtifactDir(spec.name, "throughput", context.run_id)
        self.store = results_store.store()
        self.variants: dict[str, dict[str, Any]] = {}
        self.series: dict[str, Any] = {}
        self.notes: list[str] = []
        if config.load_generator not in ("loadgen", "guidellm"):
            raise ValueError(f"{spec.name}_throughput config: load_generator={config.load_generator!r} is not "
                             "'loadgen' or 'guidellm'")
        self.saturation = (config.load_generator == "loadgen"
                           and (config.saturation if config.saturation is not None else not self.rates))

    def eval_concurrency(self) -> int:
        """A variant's accuracy eval runs at the student eval's concurrency (run config, else per backend)."""
        config = SimpleNamespace(concurrency=getattr(self.config, "eval_concurrency", None))
        return eval_concurrency_for(config, self.serving, self.profile)

    def serve(self, **serve_kw: Any):
        """A server of the student (``with profiler.serve() as server``)."""
        return serve_student(self.serving, self.ckpt, self.student, log=self.context.log.info, **serve_kw)

    def measure(self, server, variant: str | None = None) -> None:
        """Load-test ``server`` (already serving the student with this variant's settings). The first
        variant measured is the reference, named after the server's dtype unless ``variant`` says."""
        variant = variant or server.precision_label
        if self.reference is None:
            self.reference = variant
        from distil_platform.economics.cost_inputs import STAGE_THROUGHPUT
        from distil_platform.economics.hardware_keys import pricing_hardware_key
        from distil_platform.serving.loadtest import load_test
        from distil_platform.serving.sweep import first_failure
        from distil_platform.serving.throughput import analyse, point_rows, points_markdown
        from distil_platform.storage.lineage import record_student_lineage  # which checkpoint this measured
        from distil_platform.storage.store import throughput_points, throughput_profiles

        context, spec, config, task, student = self.context, self.spec, self.config, self.spec.name, self.student
        started = time.monotonic()
        binding = server.engine_cpus() if config.pin_load_generator and hasattr(server, "engine_cpus") else None
        affinity = binding[1] if binding and binding[1] else None
        if affinity:
            context.log.info(f"{task} {variant}: vLLM computes on cores {sorted(binding[0])}; the load "
                             f"generator runs on {sorted(affinity)}")
        if config.load_generator == "guidellm":
            points, report = load_test(
                spec, self.test, base_url=server.base_url, model=server.model, tokenizer=str(self.ckpt),
                rates=self.rates, duration_s=self.duration, workdir=self.out.local / variant, seed=config.seed,
                max_concurrency=config.max_concurrency, worker_processes=config.worker_processes,
                cpu_affinity=affinity, min_requests=self.min_requests, log=context.log.info,
            )
        else:
            points, report = self.loadgen_sweep(server, variant, affinity)
        summary = analyse(points, self.slo)
        accuracy = accuracy_metric = None
        if variant == "fp8":
            from distil_platform.economics.cost_inputs import STAGE_FP8_EVAL

            accuracy, accuracy_metric = evaluate_variant(
                context, spec, self.profile, self.llm, server, self.ckpt, self.test, self.store, variant=variant,
                stage=STAGE_FP8_EVAL, concurrency=self.eval_concurrency())
        peak = server.peak_memory_gb()  # NaN: a GPU server's memory could not be read (memory_report says)
        stored_peak = None if math.isnan(peak) else peak
        memory = server.memory_report() if hasattr(server, "memory_report") else {}
        settings = dict(getattr(server, "settings", {}) or {})
        backend = server.backend
        on_gpu = bool(getattr(server, "on_gpu", False))
        hardware = server.hardware_description
        hw_key = pricing_hardware_key(server.hardware_key, hardware)
        common = dict(run_id=context.run_id, task=task, model=student["served_name"], variant=variant,
                      backend=backend, hardware=hardware)
        self.store.insert(throughput_points, point_rows(points, peak_memory_gb=stored_peak, **common))
        self.store.insert(throughput_profiles, [dict(common, hardware_key=hw_key, sustained_rps=summary.sustained_rps,
                                                     max_achieved_rps=summary.max_achieved_rps,
                                                     slo_s=summary.slo_s, peak_memory_gb=stored_peak,
                                                     accuracy=accuracy)])
        record_student_lineage(self.store, task=task, stage=STAGE_THROUGHPUT, run_id=context.run_id,
                               model=student["served_name"], student=student, variant=variant, local_dir=self.ckpt)
        self.series[variant] = points
        self.variants[variant] = {
            "sustained_rps": summary.sustained_rps, "max_achieved_rps": summary.max_achieved_rps,
            "peak_memory_gb": peak, "accuracy": accuracy, "accuracy_metric": accuracy_metric, "backend": backend,
            "hardware": hardware,
            "hardware_key": hw_key, "report": self.out.url_for(report), "wall_s": round(time.monotonic() - started, 1),
            "memory": memory, "settings": settings, "on_gpu": on_gpu,
            "short_arrival_rates": summary.short_arrival_rates,
            "unreliable_rates": summary.unreliable_rates,
            "client_bound_rates": summary.client_bound_rates,
            "offered_rates": [p.offered_rps for p in points if p.offered_rps is not None],
            "first_failed_rps": first_failure(points, self.slo),
            "load_generator_cpus": sorted(affinity) if affinity else None,
            "precision": server.precision.as_dict() if getattr(server, "precision", None) else None,
            "points_md": points_markdown(points, self.slo, summary.sustained_rps)}
        if summary.unreliable_rates:
            context.log.warning(f"{task} {variant}: unreliable measurement at {summary.unreliable_rates} req/s "
                                "(arrivals in a burst, or completions compressed); those rates are not counted")
        if summary.client_bound_rates:
            context.log.warning(f"{task} {variant}: the load generator fell behind its schedule at "
                                f"{summary.client_bound_rates} req/s (client bound); those rates are never claimed")
        if summary.short_arrival_rates:
            context.log.warning(f"{task} {variant}: arrivals fell short of the offered rate at "
                                f"{summary.short_arrival_rates} req/s (load generator behind or capped); "
                                "those rates are not counted as sustained")
        context.log.info(f"{task} {variant}: sustained {summary.sustained_rps:g} req/s, max achieved "
                         f"{summary.max_achieved_rps:.3g} req/s, peak memory {peak:.2f} GiB")

    def loadgen_sweep(self, server, variant: str, affinity: set[int] | None):
        """The platform's generator against ``server``: the fixed rates, or the saturation search."""
        from distil_platform.serving.loadtest import rate_windows, warm_up
        from distil_platform.serving.sweep import SaturationPlan, sweep
        from distil_platform.tasks.prompts import build_messages

        config, spec = self.config, self.spec
        messages = [build_messages(spec, dict(r)) for r in self.test]
        idle = warm_up(server.base_url, server.model, messages[:2], spec.max_answer_tokens)
        plan = SaturationPlan(start_rps=config.saturation_start_rps, max_rates=config.saturation_max_rates,
                              budget_s=config.saturation_budget_s)
        return sweep(server.base_url, server.model, messages, slo_s=self.slo,
                     rates=None if self.saturation else self.rates, plan=plan,
                     window_for=lambda rate: rate_windows([rate], self.duration, idle, self.min_requests)[0][0],
                     workdir=self.out.local / variant, seed=config.seed, max_tokens=spec.max_answer_tokens,
                     cpus=affinity, idle_latency_s=idle, log=self.context.log.info)

    def generator_ceiling(self) -> dict[str, Any] | None:
        """The generator's ceiling on this host, on the cores it had (None: guidellm, or switched off)."""
        if self.config.load_generator != "loadgen" or not self.config.generator_ceiling:
            return None
        from distil_platform.serving.sweep import ceiling_start, generator_ceiling
        from distil_platform.tasks.prompts import build_messages, format_answer

        ref = self.variants[self.reference]
        offered = [r for v in self.variants.values() for r in v.get("offered_rates") or []]
        cpus = set(ref["load_generator_cpus"]) if ref.get("load_generator_cpus") else None
        return generator_ceiling(
            [build_messages(self.spec, dict(r)) for r in self.test],
            [format_answer(self.spec, r["answer"]) for r in self.test], workdir=self.out.local / "generator_ceiling",
            generator_cpus=cpus, tokenizer=str(self.ckpt), start_rps=ceiling_start(offered),
            max_tokens=self.spec.max_answer_tokens, log=self.context.log.info)

    def measure_served(self, variant: str | None = None, **serve_kw: Any) -> None:
        with self.serve(**serve_kw) as server:
            self.measure(server, variant)

    def measure_other_variants(self) -> None:
        """After the reference (and with its server stopped): no prefix caching (vLLM), fp8 (where
        supported), both at the reference's dtype."""
        from distil_platform.serving.hardware import fp8_supported

        ref = self.variants[self.reference]
        same_dtype = {"dtype": (ref.get("precision") or {}).get("dtype") or self.serving.dtype}
        if ref["backend"] == "vllm":
            if self.prefix_caching_off:
                self.measure_served(no_prefix_cache_variant(self.reference), **same_dtype, enable_prefix_caching=False)
            else:
                self.notes.append("prefix caching off not measured (run config `prefix_caching_off: true` adds it; "
                                  "the benchmark measures it)")
        if self.config.fp8:
            ok, why = fp8_supported(ref["backend"], ref["on_gpu"])
            if ok:
                self.measure_served("fp8", **same_dtype, quantization="fp8")
            else:
                note = f"fp8 not measured: {why}"
                self.context.log.info(note)
                self.notes.append(note)

    def result(self, *, shared_with_eval: bool = False) -> tuple[dict, dict[str, Any]]:
        from distil_platform.serving.sweep import ceiling_flag
        from distil_platform.serving.throughput import plot_latency_vs_load

        variants, slo, out, task = self.variants, self.slo, self.out, self.spec.name
        name = self.reference
        ref = variants[name]
        backend = ref["backend"]
        ceiling = self.generator_ceiling()  # every server is stopped by now: the host is quiet
        flags = {k: ceiling_flag(v["sustained_rps"], ceiling) for k, v in variants.items()}
        if self.config.load_generator == "guidellm":
            flags = dict.fromkeys(variants)  # no ceiling measured for guidellm: its arrivals test stands
        for k, flag in flags.items():
            if flag:
                self.context.log.warning(f"{task} {k}: {flag}")
        plot = plot_latency_vs_load(self.series, slo, out.local / "latency_vs_load.png",
                                    title=f"{task} student: latency vs offered load ({backend}, {name})")
        (out.local / "summary.json").write_text(json.dumps(variants, indent=1, default=str), encoding="utf-8")
        variant_md = ["| variant | sustained req/s | max achieved req/s | peak memory GiB | accuracy |",
                      "|---|---|---|---|---|"]
        for vname, v in variants.items():
            acc = "–" if v["accuracy"] is None else f"{v['accuracy']:.3f}"
            if v.get("accuracy_metric"):
                acc += f" ({v['accuracy_metric']})"  # the reference's is the student eval's, same metric
            variant_md.append(f"| {vname} | {v['sustained_rps']:g} | {v['max_achieved_rps']:.3g} "
                              f"| {v['peak_memory_gb']:.2f} | {acc} |")
        if "fp8" in variants:
            # Peak process memory on vLLM is its preallocation (--gpu-memory-utilization): compare
            # what the weights and the KV cache actually used.
            used = {k: (variants[k]["memory"] or {}).get("weights_plus_kv_used_gib") for k in (name, "fp8")}
            ratio = f"x{used['fp8'] / used[name]:.2f} (weights + KV used)" if used[name] and used["fp8"] else "–"
            variant_md.append(f"\nfp8 vs {name}: throughput x{variants['fp8']['max_achieved_rps'] / max(ref['max_achieved_rps'], 1e-9):.2f}, "
                              f"memory {ratio}")
        off_name = no_prefix_cache_variant(name)
        if off_name in variants:
            off = variants[off_name]
            variant_md.append(f"\nprefix caching on vs off: max achieved {ref['max_achieved_rps']:.3g} vs "
                              f"{off['max_achieved_rps']:.3g} req/s (x{ref['max_achieved_rps'] / max(off['max_achieved_rps'], 1e-9):.2f}), "
                              f"sustained {ref['sustained_rps']:g} vs {off['sustained_rps']:g} req/s; prefix-cache hit "
                              f"rate {_pct((ref['memory'] or {}).get('prefix_cache_hit_rate'))}")
        notes = list(self.notes)
        if shared_with_eval:
            notes.append(f"{name} was measured on the server that answered the student eval just before (one start "
                         "for both; its prefix cache was warm with the test prompts the load test replays)")
        precision = ref.get("precision") or {}
        metadata: dict[str, Any] = {
            "sustained_rps": ref["sustained_rps"],
            "max_achieved_rps": round(ref["max_achieved_rps"], 4),
            "slo_p95_s": slo,
            "min_requests_per_rate": self.min_requests,
            "peak_memory_gb": round(ref["peak_memory_gb"], 3),
            # What the peak is (GPU: the server's processes, else the device's used memory, else vLLM's figures).
            "peak_memory_source": (ref["memory"] or {}).get("process_peak_source") or "not reported by the server",
            "backend": backend,
            "reference_variant": name,
            "compute_dtype": precision.get("dtype", "unknown"),
            "compute_dtype_reason": precision.get("reason", "not reported by the server"),
            "serving_settings": dg.MetadataValue.json(jsonable(ref["settings"])),
            "memory": dg.MetadataValue.md(memory_markdown(variants)),
            "short_arrival_rates": dg.MetadataValue.json(ref["short_arrival_rates"]),
            "unreliable_rates": dg.MetadataValue.json(ref["unreliable_rates"]),
            "hardware": ref["hardware"],
            "hardware_key": ref["hardware_key"],
            "server_shared_with_eval": shared_with_eval,
            "load_generator": self.generator_description(ref),
            "sweep": "saturation search" if self.saturation else "fixed rates",
            "first_failed_rps": ref.get("first_failed_rps"),
            "client_bound_rates": dg.MetadataValue.json(ref.get("client_bound_rates") or []),
            "generator_ceiling_rps": (float(ceiling["ceiling_rps"]) if ceiling else None),
            "generator_ceiling": dg.MetadataValue.json(ceiling) if ceiling else "not measured (guidellm, or "
            "generator_ceiling: false)",
            "claim_near_generator_ceiling": bool(flags.get(name)),
            "claim_check": flags.get(name) or ("the claim is below 80% of the generator's measured ceiling"
                                               if ceiling else "no generator ceiling measured"),
            "variants": dg.MetadataValue.md("\n".join(variant_md) + "".join(f"\n\n{n}" for n in notes)),
            "load_points": dg.MetadataValue.md(f"**{name}**\n\n" + ref["points_md"]),
            "latency_vs_load": png_markdown(plot, "latency vs offered load"),
            **store_run_id_metadata(self.context.run_id),  # the rows readers may use (assets/published.py)
        }
        plot_url = out.url_for(plot)
        out.publish()  # object store: the reports, plot and summary leave this machine
        metadata["plot_path"] = location_metadata(plot_url)
        metadata["artifacts"] = location_metadata(out.url)
        value = {"run_id": self.context.run_id, "plot": plot_url, "reference_variant": name,
                 "generator_ceiling": ceiling, "claim_flags": flags,
                 "variants": {k: {kk: vv for kk, vv in v.items() if kk != "points_md"} for k, v in variants.items()}}
        return value, metadata


    def generator_description(self, ref: dict[str, Any]) -> str:
        pinned = f", pinned to cores {ref['load_generator_cpus']}" if ref.get("load_generator_cpus") else ""
        if self.config.load_generator == "guidellm":
            return f"guidellm (Poisson arrivals, {self.config.worker_processes} worker process(es){pinned})"
        return f"distil_platform.serving.loadgen (open-loop Poisson, aiohttp, one process per rate{pinned})"


def serve_student(serving: ServingResource, ckpt: Path, student: dict, *, log, **serve_kw: Any):
    """A server of the student's checkpoint under its served name, its context bounded by what the task
    needs (``max_model_len`` of ``<task>_student``: the longest test prompt + the answer budget, at least
    the training length) unless the serving resource sets one: a checkpoint's own context (262k tokens
    for Qwen3-4B-2507) would size vLLM's KV cache for sequences no request sends."""
    context = getattr(serving, "max_model_len", None) or student.get("max_model_len")
    settings = {"max_model_len": int(context)} if context else {}
    return serving.serve(ckpt, served_model_name=student["served_name"], log=log, **{**settings, **serve_kw})


def no_prefix_cache_variant(reference: str) -> str:
    """The reference variant without automatic prefix caching, e.g. ``fp32_no_prefix_cache``."""
    return f"{reference}_no_prefix_cache"
_MEMORY_COLUMNS = (("process_peak_gib", "process peak GiB"), ("weights_gib", "weights GiB"),
                   ("kv_reserved_gib", "KV reserved GiB"), ("kv_used_peak_gib", "KV used (peak) GiB"),
                   ("kv_usage_peak", "KV used share"), ("prefix_cache_hit_rate", "prefix-cache hit rate"))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def memory_markdown(variants: dict[str, dict[str, Any]]) -> str:
    """Memory per variant: what the server holds (its preallocation) next to what it used."""
    lines = ["| variant | " + " | ".join(label for _, label in _MEMORY_COLUMNS) + " |",
             "|---|" + "---|" * len(_MEMORY_COLUMNS)]
    for name, v in variants.items():
        memory = v.get("memory") or {}
        cells = []
        for key, _ in _MEMORY_COLUMNS:
            value = memory.get(key)
            if key in ("kv_usage_peak", "prefix_cache_hit_rate"):
                cells.append(_pct(value))
            else:
                cells.append("–" if value is None else f"{value:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def evaluate_variant(context, spec: TaskSpec, profile: Profile, llm, server, ckpt: Path, test: list[dict], store,
                     *, variant: str, stage: str, concurrency: int) -> tuple[float, str]:
    """A serving variant's accuracy on the test set (fp8: stage ``throughput_fp8``), evaluated exactly as
    the reference variant's ``<task>_student_eval`` is (``common.evaluate_served``: same prompts, greedy,
    token logprobs, the task's LLM judge where its metric is one), so the two variants' scores are of
    one metric and pair. Rows stored under ``stage``; returns ``(score, metric)``."""
    from distil_platform.evaluation.evaluate import eval_metric, prediction_rows
    from distil_platform.evaluation.summary import summarize
    from distil_platform.storage.store import predictions

    judge = build_judge(spec, llm, context)
    results = evaluate_served(context, spec, profile, llm, server, ckpt, test, stage=stage, concurrency=concurrency,
                              judge=judge)
    store.insert(predictions, prediction_rows(results, task=spec.name, stage=stage, model=server.model,
                                              run_id=context.run_id, variant=variant))
    return summarize(results).score, eval_metric(spec, judge)
