"""The same Definitions on the distributed configuration, on real servers: the Dagster instance on
PostgreSQL (config/dagster-postgres.yaml: dagster-postgres storage, queued run coordinator, pools)
and the results store on PostgreSQL (DISTIL_DB_URL).

- the `test` profile's ``text2sql*`` graph through the real CLI (``dagster asset materialize``, the
  Definitions' multiprocess executor: every step its own process, all sharing the database),
  then a re-pricing run selected the way the monthly schedule selects it, then an automation tick
  (the config-change sensor's evaluation) against the same instance;
- two concurrent runs whose step is in the ``gpu`` pool, serialised by the pool (from the event log).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml
from distributed_services import postgres_server, s3_server

from distil_platform.storage.paths import PACKAGE_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).parent / "dagster")
PG_YAML = PACKAGE_DIR / "config" / "dagster-postgres.yaml"
API_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")


@pytest.fixture(scope="module")
def pg():
    """A real PostgreSQL server (DISTIL_TEST_PG_URL, else one started for this module)."""
    yield from postgres_server()


@pytest.fixture
def pg_home(pg, tmp_path, monkeypatch):
    """$DAGSTER_HOME with the Postgres dagster.yaml; instance and results store in fresh databases."""
    home = tmp_path / "pg_home"
    home.mkdir()
    shutil.copy(PG_YAML, home / "dagster.yaml")
    results_url = pg.create_database("results")
    env = {
        **pg.dagster_env(pg.create_database("dagster")),
        "DAGSTER_HOME": str(home),
        "DISTIL_DB_URL": results_url,
        "DISTIL_PROFILE": "test",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in API_KEYS:
        monkeypatch.delenv(key, raising=False)
    return env


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server (DISTIL_TEST_S3_ENDPOINT, else one started for this module)."""
    yield from s3_server()


@pytest.fixture
def s3_artifacts(s3_endpoint, monkeypatch):
    """Artefacts on the S3-API server: a fresh bucket, DISTIL_ARTIFACTS_URL and the standard AWS
    variables (what s3fs reads on a real deployment too). Returns (bucket, boto3 client)."""
    pytest.importorskip("s3fs")
    import boto3

    for key, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    bucket = f"distil-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    monkeypatch.setenv("DISTIL_ARTIFACTS_URL", f"s3://{bucket}/team")
    return bucket, client


def _dagster(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [DAGSTER, *args],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"dagster {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


def _step_events(instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType):
    return list(instance.all_logs(run_id, of_type=event_type))


def test_postgres_instance_config_loads_dagster_postgres_queue_and_pools(pg_home):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        config = instance.get_concurrency_config()
        assert config.run_queue_config.max_concurrent_runs == 8
        assert config.pool_config.default_pool_limit == 1
        assert config.pool_config.pool_granularity.value == "op"
    # The per-deployment pool sizes, set the way docs/deploy.md says.
    _dagster("instance", "concurrency", "set", "gpu", "4")
    _dagster("instance", "concurrency", "set", "frontier_api", "16")
    with dg.DagsterInstance.get() as instance:
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 4
        assert instance.event_log_storage.get_concurrency_info("frontier_api").slot_count == 16


def test_two_concurrent_runs_are_serialised_by_the_gpu_pool(pg_home):
    group = uuid.uuid4().hex
    cmd = [
        DAGSTER,
        "job",
        "execute",
        "-f",
        str(REPO_ROOT / "tests" / "distributed_pool_jobs.py"),
        "-j",
        "gpu_pool_job",
        "--tags",
        f'{{"distil/test-group": "{group}"}}',
    ]
    # Dagster creates a pool's default-limit row lazily, on its first claim: two runs claiming at
    # once on a fresh database can both insert it (a unique violation, seen once in CI). Create it
    # first, from the configured default, as the first run would.
    with dg.DagsterInstance.get() as instance:
        instance.event_log_storage.initialize_concurrency_limit_to_default("gpu")
    procs = [
        subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"distil/test-group": group}))
        assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        windows, blocked = [], []
        for run in runs:
            start = _step_events(instance, run.run_id, dg.DagsterEventType.STEP_START)
            success = _step_events(instance, run.run_id, dg.DagsterEventType.STEP_SUCCESS)
            assert len(start) == len(success) == 1
            windows.append((start[0].timestamp, success[0].timestamp))
            blocked.append(
                any(
                    "blocked by limit for pool gpu" in (r.user_message or "")
                    for r in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
                )
            )
        (_, a_end), (b_start, _) = sorted(windows)
        assert a_end <= b_start, f"gpu steps overlapped: {windows}"
        assert sorted(blocked) == [False, True]  # the second run's step waited for the slot
        # The slot is free again once both finished.
        assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 0


# Distinctive secrets, so a search of the event log for them cannot match anything else.
S3_SECRET = "s3-secret-5b1e0c7d9a"
TEACHER_KEY = "sk-teacher-secret-83f2a6"


def _secrets_in_event_log(instance, run_id: str, secrets: list[str]) -> list[str]:
    """The secrets found anywhere in a run's event log: messages, metadata, errors, as stored."""
    from dagster._serdes import serialize_value

    found = []
    for record in instance.all_logs(run_id):
        text = serialize_value(record)
        found += [f"{record.dagster_event_type or 'log'}: {s[:4]}..." for s in secrets if s in text]
    return found


@pytest.mark.slow
def test_text2sql_graph_repricing_and_automation_tick_on_postgres(pg_home, s3_artifacts, tmp_path, monkeypatch):
    """Instance and results store on PostgreSQL, artefacts (seed splits, teacher data, checkpoint,
    load-test reports, cost table, routing, report) on the S3-API server."""
    from distil_platform.sensors import repricing_keys
    from sqlalchemy import func, select

    from distil_platform.definitions import build_definitions
    from distil_platform.economics.costs import latest_cost_table
    from distil_platform.storage.store import ResultsStore, llm_cache, llm_requests, predictions
    from distil_platform.tasks.spec import load_tasks

    # One long load-test rate instead of the profile's two 3-second ones: on a shared 2-core machine a
    # 3 s window can end before the first request of a freshly started server completes.
    throughput = {"ops": {"text2sql_student_serving": {"config": {"rates": [0.5], "duration_s": 30}}}}
    monkeypatch.setenv("DISTIL_TEACHER_API_KEY", TEACHER_KEY)  # set, not needed by the test profile's teacher
    _dagster("asset", "materialize", "-m", "distil_platform.definitions", "--select", "pricing,text2sql*",
             "--config-json", json.dumps(throughput))

    store = ResultsStore(pg_home["DISTIL_DB_URL"])
    assert store.engine.dialect.name == "postgresql"
    assert not (Path(pg_home["DAGSTER_HOME"]) / "results.db").exists(), "wrote a SQLite store beside Postgres"
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        # No secret in the event log as a whole (every message, metadata value and error): the results
        # store's password, the object store's secret key, a key the run did not need.
        from sqlalchemy.engine import make_url

        secrets = [make_url(pg_home["DISTIL_DB_URL"]).password, S3_SECRET, TEACHER_KEY]
        assert all(secrets) and _secrets_in_event_log(instance, run.run_id, secrets) == []
        assert _secrets_in_event_log(instance, run.run_id, ["trainable_params"])  # the scan reads metadata
        stages = [
            "text2sql",
            "text2sql_teacher_data",
            "text2sql_student",
            "text2sql_student_eval",
            "text2sql_baseline_evals",
            "text2sql_frontier_evals",
            "text2sql_throughput",
            "text2sql_cost_table",
            "pricing",
            "benchmark_report",
        ]
        for key in stages:
            event = instance.get_latest_materialization_event(dg.AssetKey(key))
            assert event is not None and event.run_id == run.run_id, key
        # The multiprocess executor ran the steps in their own processes, all writing one event log.
        starts = _step_events(instance, run.run_id, dg.DagsterEventType.STEP_START)
        assert len({r.dagster_event.pid for r in starts}) == len(starts) >= len(stages)

        # Artefacts: on the object store, not on the steps' shared disk.
        bucket, client = s3_artifacts
        home = Path(pg_home["DAGSTER_HOME"])
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, MaxKeys=1000).get("Contents", [])}
        prefix = "team/text2sql"
        for expected in (f"{prefix}/seed_set/{run.run_id}/seed.parquet", f"{prefix}/seed_set/{run.run_id}/test.parquet",
                         f"{prefix}/teacher_data/{run.run_id}/accepted.parquet",
                         f"team/checkpoints/text2sql/{run.run_id}/config.json",
                         f"team/checkpoints/text2sql/{run.run_id}/model.safetensors",
                         f"{prefix}/throughput/{run.run_id}/latency_vs_load.png", "team/reports/benchmark_report.md"):
            assert expected in keys, f"{expected} not on the object store: {sorted(keys)[:40]}"
        assert any(k.startswith(f"{prefix}/cost_table/") and k.endswith("cost_table.parquet") for k in keys)
        # The values steps hand each other: Dagster's FilesystemIOManager on the store's universal path.
        assert {"team/storage/text2sql", "team/storage/text2sql_student", "team/storage/text2sql_student_eval"} <= keys
        assert not (home / "storage" / "text2sql_student").exists()
        assert any(k.startswith(f"{prefix}/routing/") and k.endswith(".parquet") for k in keys)
        assert not list(home.glob("artifacts/**/*.parquet")), "artefacts written to local disk"
        assert not list((home / "checkpoints").rglob("config.json")), "the trained checkpoint stayed on local disk"
        student_md = instance.get_latest_materialization_event(
            dg.AssetKey("text2sql_student")).asset_materialization.metadata
        assert student_md["checkpoint_path"].value == f"s3://{bucket}/team/checkpoints/text2sql/{run.run_id}"
        from distil_platform.storage.store import student_lineage

        # The serving steps fetched the checkpoint from the store, byte-identical to what was trained.
        lineage = store.select(student_lineage, run_id=run.run_id)
        assert {r["stage"] for r in lineage} >= {"student_eval", "throughput"}
        trained = student_md["checkpoint_fingerprint"].value
        assert all(len(r["checkpoint_fingerprint"]) == 64 and r["checkpoint_fingerprint"].startswith(trained)
                   for r in lineage), (trained, lineage)

        eval_md = instance.get_latest_materialization_event(
            dg.AssetKey("text2sql_student_eval")
        ).asset_materialization
        n_test = eval_md.metadata["n"].value
        rows = store.select(predictions, run_id=run.run_id, stage="student_eval")
        assert len(rows) == n_test > 0
        assert sum(r["score"] for r in rows) / n_test == pytest.approx(eval_md.metadata["score"].value)
        with store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(llm_cache)).scalar() > 0
            calls_before = conn.execute(select(func.count()).select_from(llm_requests)).scalar()
        before = latest_cost_table(store, "text2sql")
        assert before

        # Re-pricing: new hardware prices, the selection the monthly schedule computes from this instance.
        selection = [k.to_user_string() for k in repricing_keys(instance, sorted(load_tasks()))]
    assert {"pricing", "text2sql_cost_table", "benchmark_report"} <= set(selection)
    assert not any(k.startswith("banking77") for k in selection)  # never materialised: not re-priced
    pricing = yaml.safe_load((PACKAGE_DIR / "config" / "pricing.yaml").read_text())
    for hw in pricing["hardware"].values():
        hw["usd_per_hour"] = hw["usd_per_hour"] * 2
    edited = tmp_path / "pricing.yaml"
    edited.write_text(yaml.safe_dump(pricing))
    monkeypatch.setenv("DISTIL_PRICING_FILE", str(edited))
    _dagster("asset", "materialize", "-m", "distil_platform.definitions", "--select", ",".join(selection))

    after = latest_cost_table(store, "text2sql")
    assert {r["snapshot_hash"] for r in after} != {r["snapshot_hash"] for r in before}
    with store.engine.connect() as conn:
        assert (
            conn.execute(select(func.count()).select_from(llm_requests)).scalar() == calls_before
        )  # no calls

    # An automation tick against the same instance: a pricing edit requests re-pricing, nothing on a GPU.
    defs = build_definitions()
    with dg.DagsterInstance.get() as instance:
        _, cursor = _observe_and_tick(defs, instance, None)
        _, cursor = _observe_and_tick(defs, instance, cursor)
        pricing["hardware"][next(iter(pricing["hardware"]))]["usd_per_hour"] += 1.0
        edited.write_text(yaml.safe_dump(pricing))
        requested, _ = _observe_and_tick(defs, instance, cursor)
    assert {"pricing", "text2sql_cost_table"} <= requested
    assert not requested & {
        "text2sql_teacher_data",
        "text2sql_student",
        "text2sql_student_eval",
        "text2sql_throughput",
    }


def _observe_and_tick(defs, instance, cursor):
    from dagster._core.definitions.observe import observe
    from distil_platform.assets.keys import PRICING_FILE_KEY

    assert observe([defs.get_assets_def(PRICING_FILE_KEY)], instance=instance).success
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    requested = {
        r.key.to_user_string()
        for r in result.results
        if isinstance(r.key, dg.AssetKey) and r.true_subset.size
    }
    return requested, result.cursor


def test_repricing_run_and_automation_tick_on_postgres_from_planted_results(pg_home, tmp_path, monkeypatch):
    """Measured results (planted, as the eval and throughput stages write them) in the Postgres
    store; cost table, re-pricing and the automation tick through the CLI and the Postgres instance."""
    from cost_fixtures import DISTILLED, plant_task
    from distil_platform.assets.published import store_run_id_metadata
    from distil_platform.sensors import repricing_keys

    from distil_platform.definitions import build_definitions
    from distil_platform.economics.costs import latest_cost_table
    from distil_platform.storage.store import ResultsStore
    from distil_platform.tasks.spec import get_task, load_tasks

    pricing = yaml.safe_load((PACKAGE_DIR / "config" / "pricing.yaml").read_text())
    edited = tmp_path / "pricing.yaml"
    edited.write_text(yaml.safe_dump(pricing))
    monkeypatch.setenv("DISTIL_PRICING_FILE", str(edited))
    store = ResultsStore(pg_home["DISTIL_DB_URL"])
    # student: 222 req/s on one h100
    info = plant_task(store, get_task("text2sql"), tmp_path, student_lineage=DISTILLED)
    with dg.DagsterInstance.get() as instance:  # what the runs that measured those results leave
        for stage in ("", "_teacher_data", "_student", "_student_eval", "_baseline_evals", "_frontier_evals",
                      "_throughput"):
            run_id = info["runs"].get(stage.lstrip("_"))  # the store rows each one wrote (assets/published.py)
            instance.report_runless_asset_event(dg.AssetMaterialization(
                f"text2sql{stage}", metadata=store_run_id_metadata(run_id) if run_id else None))
    _dagster(
        "asset",
        "materialize",
        "-m",
        "distil_platform.definitions",
        "--select",
        "pricing,text2sql_cost_table,benchmark_report",
    )
    student = next(r for r in latest_cost_table(store, "text2sql") if r["model"] == info["student"])
    assert student["usd_per_million_requests"] == pytest.approx(2.40 / (3600 * 222) * 1e6)  # ~ $3.00

    defs = build_definitions()
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        _, cursor = _observe_and_tick(defs, instance, None)
        requested, cursor = _observe_and_tick(defs, instance, cursor)
        assert requested == set()  # nothing changed since the run
        pricing["hardware"]["h100"]["usd_per_hour"] = 4.80
        edited.write_text(yaml.safe_dump(pricing))
        requested, cursor = _observe_and_tick(defs, instance, cursor)
        # The automation sensor asks for re-pricing only: nothing that trains or serves.
        assert {"pricing", "text2sql_cost_table", "benchmark_report"} <= requested
        assert not any(
            k.startswith("text2sql_")
            and k.split("_", 1)[1]
            in ("teacher_data", "student", "student_eval", "baseline_evals", "frontier_evals", "throughput")
            for k in requested
        )
        # What the monthly schedule would select on this instance: only what was materialised.
        selection = [k.to_user_string() for k in repricing_keys(instance, sorted(load_tasks()))]
    assert {"pricing", "text2sql_cost_table", "benchmark_report"} <= set(selection)
    assert not any(k.startswith("banking77") for k in selection)
    _dagster("asset", "materialize", "-m", "distil_platform.definitions", "--select", ",".join(selection))
    repriced = next(r for r in latest_cost_table(store, "text2sql") if r["model"] == info["student"])
    assert repriced["usd_per_million_requests"] == pytest.approx(2 * student["usd_per_million_requests"])
    assert repriced["snapshot_hash"] != student["snapshot_hash"]
