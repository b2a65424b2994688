"""Cost assets: ``<task>_throughput`` and ``<task>_cost_table`` per task; ``pricing`` and
``benchmark_report`` shared.

Logic lives in ``distil_platform.serving.loadtest`` / ``throughput`` / ``pricing`` / ``costs`` / ``report``;
this module wires it to resources, run config and metadata. ``<task>_cost_table`` and ``benchmark_report`` read
only the results store (never a model), so re-pricing is cheap and safe to trigger automatically.
"""


import json
from typing import Any

import dagster as dg
from distil_platform.resources.store import ResultsStoreResource

from distil_platform.profiles import get_profile
from distil_platform.storage import paths
from distil_platform.tasks.spec import TaskSpec

from .automation import refresh_condition
from .config_sources import pricing_file_observation
from .keys import (
    OWNERS,
    PRICING_FILE_KEY,
    PRICING_KEY,
    REPORT_KEY,
    candidate_key,
    cost_table_key,
    task_key,
    throughput_key,
)
from .metadata import inline_pngs, location_metadata, png_markdown, polars_column_schema, table_metadata
from .published import (
    cost_table_runs,
    report_runs,
    store_run_id_metadata,
    student_candidate_runs,
    student_gate_notes,
)


class PricingConfig(dg.Config):
    # Fetch litellm's hosted price map for models missing from the pricing file (the monthly
    # schedule sets this); otherwise the bundled copy is used. The pricing file always wins.
    refresh_hosted: bool = False




def build_task_cost_assets(spec: TaskSpec, candidates: list | None = None, profile=None) -> list:
    """``<task>_cost_table``. ``candidates`` (``tasks.candidates.StudentCandidate``, first = today's
    keys; None: the student alone): a row per candidate and the choice among them. A rehearsal's
    profile marks its frontier rows as stand-ins in the metadata."""
    task = spec.name
    candidates = list(candidates or [])
    stand_ins = (profile or get_profile()).frontier_stand_ins  # resolved once, when the Definitions are built

    @dg.asset(
        key=cost_table_key(task),
        group_name=task,
        deps=[task_key(task, "student_eval"), task_key(task, "baseline_evals"),
              task_key(task, "frontier_evals"), throughput_key(task),
              PRICING_KEY]  # (and the teacher eval's rows, for the gap closed, read like the evals')
        + [candidate_key(task, stage, c.name) for c in candidates[1:] for stage in ("student_eval", "throughput")],
        kinds={"polars", "parquet"},
        description=f"`{task}`: one row per model — accuracy ± std and CI, USD per million requests (APIs: measured "
        "tokens x snapshot prices; students: hardware $/h / sustained RPS), verdict and cost ratio vs the student, "
        "break-even daily volume. Computed from the results store only: re-pricing never calls a model.",
    )
    def cost_table(context: dg.AssetExecutionContext, results_store: ResultsStoreResource) -> dg.MaterializeResult:
        # No asset loads this value (its rows live in the results store, its table in the metadata),
        # so nothing is pickled through the IO manager. Only rows of the upstream assets' successful
        # materialisations are read (Dagster's record), never a failed run's.
        result = compute_cost_table(spec, results_store.store(), context.run_id,
                                    runs=cost_table_runs(context.instance, task),
                                    gate_notes=student_gate_notes(context.instance, task),
                                    candidates=student_candidate_runs(context.instance, task, candidates) or None,
                                    stand_ins=stand_ins)
        if stand_ins:  # the rehearsal: frontier rows answered by the provider fake, never results
            from distil_platform.economics.costs import cost_table_markdown
            from distil_platform.economics.report import mark_stand_ins

            from .evals import STAND_IN_NOTE

            result["metadata"]["stand_ins"] = dg.MetadataValue.md(STAND_IN_NOTE)
            result["metadata"]["cost_table"] = dg.MetadataValue.md(cost_table_markdown(mark_stand_ins(result["rows"])))
        for stage, runs in result["ignored_runs"].items():
            context.log.warning(f"{task}: not priced: {stage} rows of run(s) {', '.join(runs)}, newer than the "
                                "ones priced but never materialised successfully")
        context.log.info(f"{task}: cost table with {result['n_rows']} rows at prices {result['snapshot_hash'][:12]}")
        return dg.MaterializeResult(metadata=result["metadata"],
                                    data_version=dg.DataVersion(result["content_hash"][:32]))

    return [cost_table]


def compute_cost_table(spec: TaskSpec, store, table_id: str, runs=None, gate_notes=None,
                       candidates=None, stand_ins: bool = False) -> dict[str, Any]:
    """Build, write (Parquet, CSV, store) and describe one task's cost table at the current prices.
    ``runs``: each upstream stage's successful runs (``gather_cost_inputs``); None reads the newest
    rows (offline callers: tests, benchmarks; the asset always passes them). ``gate_notes``: student
    run id -> what the teacher gate did to that student's data (``published.student_gate_notes``).
    ``candidates``: the student candidates' runs (``published.student_candidate_runs``; first = the
    student above): a ``candidate`` row per further one and the choice (``economics.candidates``)."""
    import hashlib

    from distil_platform.economics.cost_inputs import gather_cost_inputs
    from distil_platform.economics.costs import (
        build_cost_table,
        cost_rows_for_store,
        cost_table_markdown,
        teacher_lines,
        write_cost_table,
    )
    from distil_platform.economics.pricing import current_snapshot
    from distil_platform.storage.store import cost_rows
    from distil_platform.tasks.prompts import rendering_label

    snapshot = current_snapshot(store)
    if snapshot is None:
        # First run on a fresh DAGSTER_HOME (e.g. `--select 'text2sql*'`, which does not select the
        # upstream `pricing`): take the snapshot `pricing` would take, from the pricing file and the
        # bundled price map, and store it so later re-pricings compare against it.
        from distil_platform.economics.pricing import store_snapshot
        from distil_platform.tasks.spec import load_tasks

        tasks = load_tasks()
        needed = [ref.model for s in tasks.values() for ref in s.comparison_models]
        snapshot, _ = snapshot_with_production_models(store, needed, list(tasks))
        store_snapshot(store, snapshot, table_id)
    inputs = gather_cost_inputs(store, spec, runs=runs)
    inputs.table_id = table_id
    inputs.gate_notes = dict(gate_notes or {})
    rows = build_cost_table(inputs, snapshot)
    section = None
    candidates = candidates if candidates and len(candidates) > 1 else None  # one student: no choice to make
    if candidates:
        from distil_platform.economics.candidates import price_candidates

        priced, extra_rows = price_candidates(store, spec, snapshot, runs, candidates, inputs, rows)
        for row in rows:
            row["candidate"] = candidates[0]["name"] if row["role"] == "student" else None
        rows += extra_rows
        # Another candidate's rows are its own, not a failed run of this table's student.
        published_elsewhere = {r for c in candidates for found in c["runs"].values() for r in found}
        inputs.ignored_runs = {stage: kept for stage, found in inputs.ignored_runs.items()
                               if (kept := [r for r in found if r not in published_elsewhere])}
    import polars as pl

    with paths.ArtifactDir(spec.name, "cost_table", table_id) as out:  # published on leaving the block
        if candidates:
            section = candidate_metadata(spec, priced, inputs, rows, out.local, stand_ins=stand_ins)
        parquet, csv = write_cost_table(rows, out.local)
        column_schema = polars_column_schema(pl.read_parquet(parquet, n_rows=0))
        parquet, csv = out.url_for(parquet), out.url_for(csv)
    store.insert(cost_rows, cost_rows_for_store(rows))
    content_hash = hashlib.sha256(json.dumps([{k: v for k, v in r.items() if k != "table_id"} for r in rows],
                                             sort_keys=True, default=str).encode()).hexdigest()
    md = cost_table_markdown(rows)
    metadata = {
        "dagster/row_count": len(rows),
        "dagster/column_schema": column_schema,
        "rows": len(rows),
        "cost_rows": table_metadata(rows, ["model", "role", "candidate", "variant", "accuracy", "ci_low", "ci_high",
                                           "usd_per_million_requests", "cost_source", "student_result",
                                           "cost_ratio_vs_student"], max_rows=40),
        "snapshot_hash": snapshot.hash[:16],
        "prices_as_of": snapshot.as_of,
        "parquet_path": location_metadata(parquet),
        "csv_path": location_metadata(csv),
        "cost_table": dg.MetadataValue.md(md),
        # Teacher, student and zero-shot base side by side; the gap closed with its CI and reading.
        "teacher_student_base": dg.MetadataValue.md("\n".join(f"- {line}" for line in teacher_lines(rows)) or "–"),
        "gap_closed": dg.MetadataValue.json({f"{r['model']} ({r['variant']})": r.get("gap_closed_note")
                                             for r in rows if r["role"] == "student"}),
        "model_calls": 0,
        # How the task's prompt (same for every model) renders tools/labels: the token counts priced here.
        "prompt_rendering": rendering_label(spec),
        "margin": spec.margin,
        "verdicts": dg.MetadataValue.json({r["model"]: r["student_result"] for r in rows if r.get("student_result")}),
        "student_lineage": dg.MetadataValue.json({f"{r['model']} ({r['variant']})": r.get("lineage")
                                                  for r in rows if r["role"] == "student"}),
        # The eval runs priced, and newer runs left out because they never materialised successfully.
        "eval_runs": dg.MetadataValue.json({r["model"]: r.get("eval_run_id") for r in rows if r.get("eval_run_id")}),
        "ignored_runs": dg.MetadataValue.json(inputs.ignored_runs),
        **(section or {}),
        **store_run_id_metadata(table_id),
    }
    value = {"table_id": table_id, "parquet_path": str(parquet), "csv_path": str(csv), "snapshot_hash": snapshot.hash}
    return {"value": value, "metadata": metadata, "content_hash": content_hash, "n_rows": len(rows),
            "snapshot_hash": snapshot.hash, "rows": rows, "ignored_runs": inputs.ignored_runs}


def candidate_metadata(spec: TaskSpec, priced: list, inputs, rows: list[dict[str, Any]], out_dir, *,
                       stand_ins: bool = False) -> dict[str, Any]:
    """The choice among the student candidates as metadata: ``chosen_candidate`` ("none" when none
    is good enough), ``chosen_candidate_why``, a table of candidates and a plot of accuracy vs $/M.
    ``stand_ins`` (a rehearsal): the API's name is marked a stand-in wherever it is shown."""
    import dataclasses

    from distil_platform.economics.candidates import (
        best_mid_tier_api,
        candidates_markdown,
        choose_candidate,
        mark_choice,
        plot_candidates,
    )
    from distil_platform.economics.report import STAND_IN_MARK

    mark = STAND_IN_MARK if stand_ins else ""
    api = best_mid_tier_api(inputs, rows)
    if api is not None and mark:
        api = dataclasses.replace(api, name=api.name + mark)
    choice = choose_candidate(priced, api, spec.margin)
    mark_choice(rows, choice)  # the report and routing read it from the stored rows
    apis = [(r["model"] + mark, r.get("usd_per_million_requests"), r.get("accuracy")) for r in rows
            if r.get("cost_basis") == "api"]
    plot = plot_candidates(priced, apis, out_dir / "candidates.png", spec.name)
    return {"chosen_candidate": choice.chosen or "none",
            "chosen_candidate_why": dg.MetadataValue.md(choice.why),
            "candidates": dg.MetadataValue.md(candidates_markdown(priced, choice, spec.margin)),
            "candidate_verdicts": dg.MetadataValue.json(choice.verdicts),
            "candidates_plot": png_markdown(plot, "accuracy vs $/M requests") if plot is not None
            else dg.MetadataValue.md("no candidate is both evaluated and priced")}


def snapshot_with_production_models(store, needed: list[str], task_names: list[str], **kw):
    """``(snapshot, warning)``: the price snapshot of ``needed`` plus the production models the tasks'
    traces logged (``cost_inputs.production_models``) that the pricing file does not name. A production
    model nobody prices does not fail the snapshot: it is left out (its cost row says "price unknown")
    and ``warning`` says so."""
    from distil_platform.economics.cost_inputs import production_models
    from distil_platform.economics.pricing import build_snapshot
    from distil_platform.economics.pricing_file import PricingError, pricing_file
    from distil_platform.economics.production import production_price

    base = build_snapshot(pricing_file(), needed, **kw)
    extra = [m for m in production_models(store, task_names) if production_price(base, m) is None]
    if not extra:
        return base, None
    try:
        return build_snapshot(pricing_file(), needed + extra, **kw), None
    except PricingError as exc:
        return base, f"production model(s) {', '.join(extra)} left unpriced: {exc}"


def build_shared_cost_assets(task_names: list[str], profile=None) -> list:
    task_names = list(task_names)
    # A rehearsal's report marks its frontier rows as stand-ins (distil_platform.economics.report).
    stand_ins = (profile or get_profile()).frontier_stand_ins

    @dg.asset(
        key=PRICING_KEY,
        group_name="costs",
        deps=[PRICING_FILE_KEY],
        automation_condition=refresh_condition(),
        owners=OWNERS,
        kinds={"yaml", "litellm"},
        description="Price snapshot: the pricing file (env DISTIL_PRICING_FILE overrides the path), validated, with "
        "models it lacks priced from litellm's map (marked as such); stored with its hash and date. A file that "
        "fails validation fails this run and the previous snapshot stays current.",
    )
    def pricing(context: dg.AssetExecutionContext, config: PricingConfig,
                results_store: ResultsStoreResource) -> dg.Output[dict]:
        from distil_platform.economics.pricing import store_snapshot
        from distil_platform.tasks.spec import load_tasks

        if (observation := pricing_file_observation()) is not None:
            context.log_event(observation)  # the pricing-file version this snapshot is taken from
        tasks = load_tasks()
        needed = [ref.model for spec in tasks.values() for ref in spec.comparison_models]
        # And the production models the tasks' traces logged (their cost rows: "your current model").
        snapshot, unpriced_note = snapshot_with_production_models(results_store.store(), needed, list(tasks),
                                                                  refresh_hosted=config.refresh_hosted)
        if unpriced_note:
            context.log.warning(f"pricing: {unpriced_note}")
        store_snapshot(results_store.store(), snapshot, context.run_id)
        fallback = {k: v.origin for k, v in snapshot.models.items() if v.origin != "pricing_file"}
        for warning in snapshot.warnings:
            context.log.warning(f"pricing: {warning}")
        lines = ["| model | $/MTok in | $/MTok out | $/MTok cached | origin | source | as of |",
                 "|---|---|---|---|---|---|---|"]
        for name, p in sorted(snapshot.models.items()):
            lines.append(f"| {name} | {p.input_per_mtok:g} | {p.output_per_mtok:g} | {p.cached_input_per_mtok:g} "
                         f"| {p.origin} | {p.source} | {p.as_of or 'undated'} |")
        for name, reason in sorted(snapshot.declared_unpriced.items()):
            lines.append(f"| {name} | – | – | – | unpriced | {reason} | – |")
        hw = ["| hardware | $/hour | source |", "|---|---|---|"] + [
            f"| {k} | {h.usd_per_hour:g} | {h.source} |" for k, h in sorted(snapshot.hardware.items())]
        metadata = {
            "snapshot_hash": snapshot.hash,
            "as_of": snapshot.as_of,
            "pricing_file": dg.MetadataValue.path(snapshot.source),
            "models_priced": len(snapshot.models),
            "litellm_fallbacks": dg.MetadataValue.json(fallback),
            "unpriced_models": dg.MetadataValue.json(snapshot.declared_unpriced),
            # A refresh that fell back to the bundled map, or file prices the hosted map disagrees with.
            "warnings": dg.MetadataValue.json(list(snapshot.warnings)),
            "refresh_fell_back": any("fell back" in w for w in snapshot.warnings),
            "model_prices": dg.MetadataValue.md("\n".join(lines)),
            "hardware_prices": dg.MetadataValue.md("\n".join(hw)),
        }
        return dg.Output({"hash": snapshot.hash, "as_of": snapshot.as_of}, metadata=metadata,
                         data_version=dg.DataVersion(snapshot.hash[:32]))

    @dg.asset(
        key=REPORT_KEY,
        group_name="costs",
        deps=[cost_table_key(t) for t in task_names] + [task_key(t, "routing") for t in task_names],
        automation_condition=refresh_condition(),
        owners=OWNERS,
        kinds={"markdown"},
        description="Across every task with a cost table: best student vs best mid-tier frontier model (< $1/MTok "
        "input), scores with CIs, win / non-inferior (δ) / inconclusive / loss, $/M requests, cost ratio; headline counts; a cost-vs-accuracy "
        "plot per task. Written to $DAGSTER_HOME/reports/benchmark_report.md.",
    )
    def benchmark_report(context: dg.AssetExecutionContext, results_store: ResultsStoreResource) -> dg.MaterializeResult:
        from distil_platform.economics.report import write_report

        # $DAGSTER_HOME/reports, or <DISTIL_ARTIFACTS_URL>/reports
        with paths.ArtifactDir("reports", local_dir=paths.reports_dir()) as out:
            # Each task's cost table and routing of its last successful materialisation (Dagster's record).
            report = write_report(results_store.store(), task_names, out.local,
                                  runs=report_runs(context.instance, task_names), stand_ins=stand_ins)
            report_path = out.url_for(report.path)
            # Inline while the plots are on this disk (a remote artefact store removes the scratch dir on leaving).
            ui_markdown = inline_pngs(report.markdown, report.plots.values())
        context.log.info(report.headline)
        metadata = {
            "headline": report.headline,
            "tasks_with_cost_tables": len(report.tasks),
            "report_path": location_metadata(report_path),
            "report": dg.MetadataValue.md(ui_markdown),
        }
        metadata["tasks"] = dg.MetadataValue.json(list(report.tasks))
        return dg.MaterializeResult(metadata=metadata)  # the report is the file; nothing loads a value

    return [pricing, benchmark_report]
