"""``<task>_throughput``: guidellm load test of the served student (bf16, and fp8 where supported)."""

import json
import time
from pathlib import Path
from typing import Any

import dagster as dg
from distil_platform.resources.models import LLMResource, ServingResource
from distil_platform.resources.store import ResultsStoreResource

from distil_platform import paths
from distil_platform.profiles import get_profile
from distil_platform.taskspec import TaskSpec

from .keys import task_key, throughput_key
from .metadata import png_markdown


class ThroughputConfig(dg.Config):
    """Overrides for ``<task>_throughput`` (None = the profile's sweep)."""

    # Offered request rates (req/s, Poisson arrivals). None: the profile's; if that is None too,
    # guidellm's adaptive sweep (synchronous, max throughput, rates in between).
    rates: list[float] | None = None
    duration_s: float | None = None
    # bf16 always; fp8 additionally where vLLM runs on an fp8-capable GPU.
    fp8: bool = True
    max_concurrency: int | None = None
    # guidellm worker processes: 1 keeps arrivals truly Poisson (see distil_platform.throughput).
    worker_processes: int = 1
    seed: int = 0




def _read_rows(path: str) -> list[dict[str, Any]]:
    import polars as pl

    return pl.read_parquet(path).to_dicts()


def build_throughput_asset(spec: TaskSpec) -> list:
    task = spec.name
    seed_key = dg.AssetKey(task)
    student_key = task_key(task, "student")

    @dg.asset(
        key=throughput_key(task),
        group_name=task,
        ins={"seed_set": dg.AssetIn(seed_key), "student": dg.AssetIn(student_key)},
        pool="gpu",
        kinds={"guidellm"},
        description=f"Serving profile of the `{task}` student: guidellm load test with the task's real test "
        f"prompts at rising Poisson rates; sustained RPS (>= 97% of offered, p95 <= {spec.latency_slo_s:g} s), "
        "max throughput, latency/TTFT percentiles, peak server memory; bf16 and (vLLM on fp8 GPUs) fp8.",
    )
    def throughput(
        context: dg.AssetExecutionContext,
        config: ThroughputConfig,
        seed_set: dict,
        student: dict,
        serving: ServingResource,
        llm: LLMResource,
        results_store: ResultsStoreResource,
    ) -> dg.Output[dict]:
        from distil_platform.pricing import pricing_hardware_key
        from distil_platform.store import throughput_points, throughput_profiles
        from distil_platform.throughput import (
            analyse,
            fp8_supported,
            load_test,
            plot_latency_vs_load,
            point_rows,
            points_markdown,
        )

        profile = get_profile()
        rates = config.rates if config.rates is not None else profile.throughput_rates
        duration = config.duration_s or profile.throughput_duration_s
        test = _read_rows(seed_set["test_path"])
        ckpt = Path(student["checkpoint_path"])
        if not (ckpt / "config.json").exists():
            raise FileNotFoundError(f"{ckpt}: no checkpoint (config.json missing); re-materialise {task}_student")
        out_dir = paths.artifacts_dir(task, "throughput", context.run_id)
        store = results_store.store()

        variants: dict[str, dict[str, Any]] = {}
        series = {}
        fp8_note = ""

        def measure(variant: str, **serve_kw: Any) -> None:
            with serving.serve(ckpt, served_model_name=student["served_name"], log=context.log.info,
                               **serve_kw) as server:
                started = time.monotonic()
                points, report = load_test(
                    spec, test, base_url=server.base_url, model=server.model, tokenizer=str(ckpt), rates=rates,
                    duration_s=duration, workdir=out_dir / variant, seed=config.seed,
                    max_concurrency=config.max_concurrency, worker_processes=config.worker_processes,
                )
                summary = analyse(points, spec.latency_slo_s)
                accuracy = None
                if variant == "fp8":
                    accuracy = _evaluate_fp8(context, spec, llm, server, ckpt, test, store)
                peak = server.peak_memory_gb()
                backend = server.backend
                hardware = server.hardware_description
                hw_key = pricing_hardware_key(server.hardware_key, hardware)
            common = dict(run_id=context.run_id, task=task, model=student["served_name"], variant=variant,
                          backend=backend, hardware=hardware)
            store.insert(throughput_points, point_rows(points, peak_memory_gb=peak, **common))
            store.insert(throughput_profiles, [dict(common, hardware_key=hw_key, sustained_rps=summary.sustained_rps,
                                                    max_achieved_rps=summary.max_achieved_rps,
                                                    slo_s=summary.slo_s, peak_memory_gb=peak, accuracy=accuracy)])
            series[variant] = points
            variants[variant] = {"sustained_rps": summary.sustained_rps, "max_achieved_rps": summary.max_achieved_rps,
                                 "peak_memory_gb": peak, "accuracy": accuracy, "backend": backend,
                                 "hardware": hardware, "hardware_key": hw_key, "report": str(report),
                                 "wall_s": round(time.monotonic() - started, 1),
                                 "points_md": points_markdown(points, spec.latency_slo_s)}
            context.log.info(f"{task} {variant}: sustained {summary.sustained_rps:g} req/s, max achieved "
                             f"{summary.max_achieved_rps:.3g} req/s, peak memory {peak:.2f} GiB")

        measure("bf16", dtype="bfloat16")
        backend = variants["bf16"]["backend"]
        if config.fp8:
            ok, why = fp8_supported(backend)
            if ok:
                measure("fp8", dtype="bfloat16", quantization="fp8")
            else:
                fp8_note = f"fp8 not measured: {why}"
                context.log.info(fp8_note)

        plot = plot_latency_vs_load(series, spec.latency_slo_s, out_dir / "latency_vs_load.png",
                                    title=f"{task} student: latency vs offered load ({backend})")
        (out_dir / "summary.json").write_text(json.dumps(variants, indent=1, default=str), encoding="utf-8")
        bf16 = variants["bf16"]
        variant_md = ["| variant | sustained req/s | max achieved req/s | peak memory GiB | accuracy |",
                      "|---|---|---|---|---|"]
        for name, v in variants.items():
            acc = "–" if v["accuracy"] is None else f"{v['accuracy']:.3f}"
            variant_md.append(f"| {name} | {v['sustained_rps']:g} | {v['max_achieved_rps']:.3g} "
                              f"| {v['peak_memory_gb']:.2f} | {acc} |")
        if "fp8" in variants:
            variant_md.append(f"\nfp8 vs bf16: throughput x{variants['fp8']['max_achieved_rps'] / max(bf16['max_achieved_rps'], 1e-9):.2f}, "
                              f"memory x{variants['fp8']['peak_memory_gb'] / max(bf16['peak_memory_gb'], 1e-9):.2f}")
        metadata: dict[str, Any] = {
            "sustained_rps": bf16["sustained_rps"],
            "max_achieved_rps": round(bf16["max_achieved_rps"], 4),
            "slo_p95_s": spec.latency_slo_s,
            "peak_memory_gb": round(bf16["peak_memory_gb"], 3),
            "backend": backend,
            "hardware": bf16["hardware"],
            "hardware_key": bf16["hardware_key"],
            "load_generator": "guidellm (Poisson arrivals, 1 worker process)",
            "variants": dg.MetadataValue.md("\n".join(variant_md) + (f"\n\n{fp8_note}" if fp8_note else "")),
            "load_points_bf16": dg.MetadataValue.md(bf16["points_md"]),
            "latency_vs_load": png_markdown(plot, "latency vs offered load"),
            "plot_path": dg.MetadataValue.path(str(plot)),
        }
        value = {"run_id": context.run_id, "variants": {k: {kk: vv for kk, vv in v.items() if kk != "points_md"}
                                                        for k, v in variants.items()}, "plot": str(plot)}
        return dg.Output(value, metadata=metadata)

    return [throughput]


def _evaluate_fp8(context, spec: TaskSpec, llm, server, ckpt: Path, test: list[dict], store) -> float:
    """The fp8 student's accuracy on the test set (same prompts, greedy), rows stored as stage
    ``throughput_fp8``."""
    from distil_platform.costs import STAGE_FP8_EVAL
    from distil_platform.evaluation import client_answer_fn, evaluate, prediction_rows, summarize
    from distil_platform.modelstore import chat_token_counter
    from distil_platform.store import predictions

    client = llm.client(model=server.litellm_model, api_base=server.base_url, run_id=context.run_id, task=spec.name,
                        stage=STAGE_FP8_EVAL, concurrency=16, log=context.log.info,
                        token_counter=chat_token_counter(ckpt))
    results = evaluate(spec, test, client_answer_fn(client, 0.0, spec.max_answer_tokens, [str(r["id"]) for r in test]))
    store.insert(predictions, prediction_rows(results, task=spec.name, stage=STAGE_FP8_EVAL, model=server.model,
                                              run_id=context.run_id, variant="fp8"))
    return summarize(results).score


