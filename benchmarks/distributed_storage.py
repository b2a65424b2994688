"""What the distributed storage costs on one machine: the `test` profile's ``pricing,text2sql*`` run
(``dagster asset materialize``, the Definitions' multiprocess executor) with

- ``local``: SQLite instance (config/dagster.yaml) and SQLite results store, and
- ``distributed``: the instance on PostgreSQL (config/dagster-postgres.yaml), the results store on
  PostgreSQL (``DISTIL_DB_URL``) and every artefact (seed splits, teacher data, checkpoint, load-test
  reports, cost table, routing, report, and the IO manager's step outputs) on an S3-API server
  (``DISTIL_ARTIFACTS_URL=s3://...``): real servers (PostgreSQL from Debian's packages, moto's S3
  server) started by ``.ci/services.sh`` on loopback.

Each configuration runs in a fresh ``$DAGSTER_HOME`` with the same base-model cache, alternating, ``--repeats``
times. Per step: wall time from the event log (STEP_START -> STEP_SUCCESS); per run: the CLI's wall time.

    .venv/bin/python benchmarks/distributed_storage.py --repeats 1

Writes ``benchmarks/results/distributed_storage.json``. Run alone (flock /tmp/cpu-heavy.lock on a
shared machine); the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).parent / "dagster")
SELECT = "pricing,text2sql*"


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _start_services(state: Path) -> tuple[str, str]:
    """PostgreSQL and moto's S3 server; returns (admin URL, S3 endpoint)."""
    out = subprocess.run(
        [str(REPO / ".ci" / "services.sh"), "start", "all", str(state)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        for name in ("DISTIL_TEST_PG_URL", "DISTIL_TEST_S3_ENDPOINT"):
            if line.startswith(f"export {name}="):
                found[name] = shlex.split(line.split("=", 1)[1])[0]
    if len(found) != 2:
        raise RuntimeError(f"services did not start: {out}")
    return found["DISTIL_TEST_PG_URL"], found["DISTIL_TEST_S3_ENDPOINT"]


def _bucket(endpoint: str, name: str) -> str:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket=name)
    return name


def _create_db(admin_url: str, name: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _run(kind: str, services: tuple[str, str], models_dir: Path, index: int, select: str = SELECT) -> dict:
    admin_url, s3_endpoint = services
    home = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "DISTIL_PROFILE": "test",
            "DISTIL_MODELS_DIR": str(models_dir),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    for name in ("DISTIL_DB_URL", "DISTIL_ARTIFACTS_URL"):
        env.pop(name, None)
    if kind == "local":
        shutil.copy(REPO / "distil_platform" / "config" / "dagster.yaml", home / "dagster.yaml")
    else:
        from sqlalchemy.engine import make_url

        shutil.copy(REPO / "distil_platform" / "config" / "dagster-postgres.yaml", home / "dagster.yaml")
        u = make_url(_create_db(admin_url, f"bench_dagster_{index}"))
        env.update(
            {
                "DAGSTER_PG_HOST": u.host,
                "DAGSTER_PG_PORT": str(u.port),
                "DAGSTER_PG_USER": u.username,
                "DAGSTER_PG_PASSWORD": u.password,
                "DAGSTER_PG_DB": u.database,
                "DISTIL_DB_URL": _create_db(admin_url, f"bench_results_{index}"),
                "DISTIL_ARTIFACTS_URL": f"s3://{_bucket(s3_endpoint, f'bench-{index}')}/distil",
                "AWS_ENDPOINT_URL": s3_endpoint,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
    start = time.monotonic()
    # One 30 s load-test rate (as tests/test_distributed_pipeline.py): the profile's 3 s windows can
    # end before a fresh server's first request completes on a shared machine.
    config = {"ops": {"text2sql_student_serving": {"config": {"rates": [0.5], "duration_s": 30}}}}
    cmd = [
        DAGSTER,
        "asset",
        "materialize",
        "-m",
        "distil_platform.definitions",
        "--select",
        select,
        "--config-json",
        json.dumps(config),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{proc.stderr[-4000:]}")
    steps = _step_times(env)
    shutil.rmtree(home, ignore_errors=True)
    return {"kind": kind, "wall_s": round(wall, 2), "steps_s": steps}


def _step_times(env: dict) -> dict[str, float]:
    code = (
        "import json, dagster as dg\n"
        "with dg.DagsterInstance.get() as i:\n"
        "    (run,) = i.get_runs()\n"
        "    t = {}\n"
        "    for r in i.all_logs(run.run_id):\n"
        "        e = r.dagster_event\n"
        "        if e and e.event_type_value in ('STEP_START', 'STEP_SUCCESS'):\n"
        "            t.setdefault(e.step_key, {})[e.event_type_value] = r.timestamp\n"
        "    print(json.dumps({k: round(v['STEP_SUCCESS'] - v['STEP_START'], 2) for k, v in t.items()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--select", default=SELECT, help="asset selection (default: %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "distributed_storage.json"
    )
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-services-"))
    models_dir = Path(os.environ.get("DISTIL_MODELS_DIR") or tempfile.mkdtemp(prefix="bench-models-"))
    load_before = _loadavg()
    runs = []
    try:
        services = _start_services(state)
        if not any(models_dir.iterdir()):
            # Warm-up (not recorded): builds the base models once, so neither configuration pays for it.
            _run("local", services, models_dir, 0, args.select)
        for i in range(1, args.repeats + 1):
            for kind in ("local", "distributed"):
                runs.append(_run(kind, services, models_dir, i, args.select))
                print(json.dumps(runs[-1]), flush=True)
    finally:
        subprocess.run(
            [str(REPO / ".ci" / "services.sh"), "stop", str(state)], check=False, capture_output=True
        )
    load_after = _loadavg()
    summary = {}
    for kind in ("local", "distributed"):
        mine = [r for r in runs if r["kind"] == kind]
        steps = sorted({k for r in mine for k in r["steps_s"]})
        summary[kind] = {
            "wall_s_median": statistics.median(r["wall_s"] for r in mine),
            "steps_s_median": {k: statistics.median(r["steps_s"][k] for r in mine) for k in steps},
        }
    summary["ratio_wall_distributed_over_local"] = round(
        summary["distributed"]["wall_s_median"] / summary["local"]["wall_s_median"], 3
    )
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "selection": args.select,
        "profile": "test",
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "runs": runs,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
