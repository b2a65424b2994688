"""``<task>_student_bundle``: the trained student handed over as a directory and a tarball
(``distil_platform.bundle``): weights, adapter, prompt as data, client, serving commands, model card.

It takes the student, its eval and its throughput profile as inputs and reads the cost table of the
last successful ``<task>_cost_table`` materialisation from the results store (``assets/published.py``);
the training lineage comes from the materialisations that made the student. Cheap: files are linked
or copied, nothing is merged, served or called.
"""

# No `from __future__ import annotations`: Dagster reads the config/resource annotations at runtime.

import time
from typing import Any

import dagster as dg
from distil_platform.resources.hub import HubResource
from distil_platform.resources.store import ResultsStoreResource

from distil_platform.profiles import Profile, get_profile
from distil_platform.storage import paths
from distil_platform.tasks.spec import TaskSpec

from .common import answer_token_cap
from .keys import cost_table_key, task_key, teacher_data_key, throughput_key
from .metadata import location_metadata, table_metadata
from .published import HISTORY, published_runs


class StudentBundleConfig(dg.Config):
    """Run config of ``<task>_student_bundle``."""

    # Also pack the bundle as <served name>.tar beside it.
    tarball: bool = True
    # A hub model repo ("me/text2sql-student"): push the bundle there. Needs the `hub` resource's token
    # (env HF_TOKEN); without it the run fails saying so, after the bundle is written.
    push_to_hub: str | None = None
    hub_private: bool = True


def _record(instance: dg.DagsterInstance, key: dg.AssetKey, *, run_id: str | None = None,
            before: float | None = None) -> tuple[dict[str, Any], float | None]:
    """Metadata values of ``key``'s materialisation by ``run_id`` (or the newest at or before the
    timestamp ``before``), and its timestamp; ({}, None) when there is none."""
    for record in instance.fetch_materializations(key, limit=HISTORY).records:
        if run_id is not None and record.run_id != run_id:
            continue
        if before is not None and record.timestamp > before:
            continue
        mat = record.asset_materialization
        values = {k: getattr(v, "value", v) for k, v in (mat.metadata if mat else {}).items()}
        return values, record.timestamp
    return {}, None


def build_student_bundle_asset(spec: TaskSpec, profile: Profile | None = None) -> list:
    """``<task>_student_bundle``."""
    profile = profile or get_profile()  # resolved once, when the Definitions are built
    task = spec.name
    student_key = task_key(task, "student")

    @dg.asset(
        key=task_key(task, "student_bundle"),
        group_name=task,
        ins={"student": dg.AssetIn(student_key), "student_eval": dg.AssetIn(task_key(task, "student_eval")),
             "throughput": dg.AssetIn(throughput_key(task))},
        deps=[cost_table_key(task)],
        description=f"The `{task}` student handed over: merged safetensors + tokenizer + chat template, the LoRA "
        "adapter, the task's prompt as data (task.json), a standard-library client that renders the prompt and "
        "parses answers as the evaluation does, the serving commands with the profiled flags (vLLM CPU/GPU, "
        "transformers serve) and a model card (README.md); under $DAGSTER_HOME/artifacts/<task>/student_bundle/"
        "<run id>/<served name>/ with a tarball beside it. Optionally pushed to the Hugging Face hub.",
    )
    def student_bundle(
        context: dg.AssetExecutionContext,
        config: StudentBundleConfig,
        student: dict,
        student_eval: dict,
        throughput: dict,
        results_store: ResultsStoreResource,
        hub: HubResource,
    ) -> dg.Output[dict]:
        from distil_platform.bundle.assemble import assemble_bundle, write_tarball
        from distil_platform.bundle.card import card_for_display
        from distil_platform.bundle.commands import MeasuredServing
        from distil_platform.bundle.figures import lineage_from, read_train_summary, select_figures
        from distil_platform.economics.costs import latest_cost_table
        from distil_platform.storage.store import student_lineage

        started = time.monotonic()
        ckpt = paths.local_checkpoint(student["checkpoint_path"], what=f"{task}_student")  # fetched if remote
        store = results_store.store()
        cost_rows = latest_cost_table(store, task, published_runs(context.instance, cost_table_key(task)))
        profiled = [r for r in store.select(student_lineage, run_id=throughput.get("run_id"), task=task)
                    if r["stage"] == "throughput"]
        record, when = _record(context.instance, student_key, run_id=student.get("run_id"))
        seed, _ = _record(context.instance, dg.AssetKey(task), before=when)
        teacher, _ = _record(context.instance, teacher_data_key(task), before=when)
        lineage = lineage_from(student, read_train_summary(ckpt), record, seed, teacher)
        figures = select_figures(metric=spec.metric_name, served_name=student["served_name"],
                                 fingerprint=str(student.get("checkpoint_fingerprint") or ""), cost_rows=cost_rows,
                                 eval_value=student_eval, throughput_value=throughput,
                                 throughput_fingerprint=profiled[0]["checkpoint_fingerprint"] if profiled else None,
                                 slo_s=spec.latency_slo(profile.name))
        with paths.ArtifactDir(task, "student_bundle", context.run_id) as out:  # published on leaving the block
            bundle = assemble_bundle(spec, ckpt, out.local, served_name=student["served_name"],
                                     max_tokens=answer_token_cap(profile, spec.max_answer_tokens), figures=figures,
                                     lineage=lineage, measured=MeasuredServing.from_throughput_value(throughput),
                                     compute_dtype=student.get("compute_dtype"))
            if config.tarball:
                write_tarball(bundle)
            bundle_url = out.url_for(bundle.path)
            tar_url = out.url_for(bundle.tarball) if bundle.tarball else None
        for note in figures.notes:
            context.log.warning(f"{task}: {note}")
        command = bundle.measured_command or bundle.command("vllm-cpu")
        metadata: dict[str, Any] = {
            "model_card": dg.MetadataValue.md(card_for_display(bundle.card)),
            "bundle_path": location_metadata(bundle_url),
            "served_name": bundle.served_name,
            "bundle_size_mb": round(bundle.size_bytes / 2**20, 2),
            "files": table_metadata([{"file": k, "bytes": v} for k, v in bundle.files.items()],
                                    [("file", "string"), ("bytes", "int")], max_rows=60),
            "weights_linked": bundle.linked,
            "adapter_included": bundle.adapter,
            "serving_command": dg.MetadataValue.md(
                "\n\n".join(f"**{c.name}**{' (measured)' if c.measured else ''}\n\n```bash\n{c.shell()}\n```"
                            for c in bundle.commands if c.argv)),
            "default_command": command.name if command else "–",
            "score": figures.score if figures.score is not None else float("nan"),
            "sustained_rps": figures.sustained_rps if figures.sustained_rps is not None else float("nan"),
            "usd_per_million_requests": (figures.usd_per_million_requests
                                         if figures.usd_per_million_requests is not None else float("nan")),
            "prices_as_of": figures.prices_as_of or "–",
            "notes": dg.MetadataValue.json(figures.notes),
        }
        if tar_url:
            metadata["tarball_path"] = location_metadata(tar_url)
            metadata["tarball_size_mb"] = round(bundle.tarball_bytes / 2**20, 2)
        value = {"bundle_path": bundle_url, "tarball_path": tar_url, "served_name": bundle.served_name,
                 "run_id": context.run_id, "checkpoint_fingerprint": student.get("checkpoint_fingerprint")}
        if config.push_to_hub:
            local = paths.local_checkpoint(bundle_url, what=f"{task}_student_bundle") if out.remote else bundle.path
            value["hub_url"] = hub.push(local, config.push_to_hub, private=config.hub_private)
            metadata["hub_url"] = dg.MetadataValue.url(value["hub_url"])
            context.log.info(f"{task}: bundle pushed to {value['hub_url']}")
        metadata["wall_time_s"] = round(time.monotonic() - started, 2)
        context.log.info(f"{task}: bundle {bundle.served_name} ({metadata['bundle_size_mb']} MiB) at {bundle_url}")
        return dg.Output(value, metadata=metadata)

    return [student_bundle]
