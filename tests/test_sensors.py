"""The config-change sensor and the monthly re-pricing schedule, evaluated with Dagster's contexts.

The asset graph here has the real keys and edges of two tasks (stand-in bodies), so the tests pin
down exactly which assets each change requests.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from distil_platform.paths import PACKAGE_DIR
from distil_platform.sensors import MONTHLY_CRON, build_sensors_and_schedules
from distil_platform.sensors.config_watch import scan
from distil_platform.taskspec import load_tasks

TASKS = ("text2sql", "banking77")


def _noop(name: str, deps: list[str], group: str):
    @dg.asset(key=name, deps=[dg.AssetKey(d) for d in deps], group_name=group)
    def _a():
        return None

    return _a


def _graph_assets(tasks) -> list:
    assets = []
    for t in tasks:
        assets += [
            _noop(t, [], t),
            _noop(f"{t}_teacher_data", [t], t),
            _noop(f"{t}_student", [t, f"{t}_teacher_data"], t),
            _noop(f"{t}_student_eval", [t, f"{t}_student"], t),
            _noop(f"{t}_baseline_evals", [t, f"{t}_student_eval"], t),
            _noop(f"{t}_throughput", [t, f"{t}_student"], t),
            _noop(f"{t}_cost_table", [f"{t}_student_eval", f"{t}_baseline_evals", f"{t}_throughput", "pricing"], t),
        ]
    assets += [_noop("pricing", [], "costs"), _noop("benchmark_report", [f"{t}_cost_table" for t in tasks], "costs")]
    return assets


@pytest.fixture(scope="module")
def _instance():
    # One instance for the module (creating one per test dominates the runtime), wiped per test.
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def setup(tmp_path, monkeypatch, _instance):
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    for t in TASKS:
        shutil.copy(PACKAGE_DIR / "tasks" / f"{t}.yaml", tasks_dir / f"{t}.yaml")
    pricing = tmp_path / "pricing.yaml"
    shutil.copy(PACKAGE_DIR / "config" / "pricing.yaml", pricing)
    monkeypatch.setenv("DISTIL_PRICING_FILE", str(pricing))
    specs = load_tasks(tasks_dir)
    sensors, schedules, jobs = build_sensors_and_schedules(specs)
    defs = dg.Definitions(assets=_graph_assets(TASKS), sensors=sensors, schedules=schedules, jobs=jobs)
    _instance.wipe()
    return {"defs": defs, "sensor": sensors[0], "schedule": schedules[0], "instance": _instance,
            "pricing": pricing, "tasks_dir": tasks_dir}


def _tick(s, cursor):
    ctx = dg.build_sensor_context(instance=s["instance"], cursor=cursor, definitions=s["defs"])
    result = s["sensor"](ctx)
    return result, result.cursor


def _keys(request) -> set[str]:
    return {k.to_user_string() for k in request.asset_selection}


def _touch_edit(path: Path, old: str, new: str):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    # Guarantee a visible mtime change even on coarse-timestamp filesystems.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _materialize_cost_table(instance, task):
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=f"{task}_cost_table"))


def test_definitions_hold_sensor_schedule_and_jobs(setup):
    s = setup
    assert s["sensor"].default_status == dg.DefaultSensorStatus.RUNNING
    assert s["schedule"].default_status == dg.DefaultScheduleStatus.RUNNING
    assert s["schedule"].cron_schedule == MONTHLY_CRON == "0 6 1 * *"
    assert s["schedule"].execution_timezone == "UTC"
    s["defs"].resolve_all_job_defs()  # the jobs' selections resolve against the graph


def test_first_tick_records_baseline_and_no_change_requests_nothing(setup):
    result, cursor = _tick(setup, None)
    assert not result.run_requests
    assert set(json.loads(cursor)["files"]) == {"pricing", "task:text2sql", "task:banking77"}
    result2, cursor2 = _tick(setup, cursor)
    assert not result2.run_requests
    assert json.loads(cursor2)["files"] == json.loads(cursor)["files"]


def test_pricing_edit_requests_existing_cost_tables_and_report_only(setup):
    s = setup
    _materialize_cost_table(s["instance"], "text2sql")  # banking77 has no cost table yet
    _, cursor = _tick(s, None)
    _touch_edit(s["pricing"], "usd_per_hour: 2.40", "usd_per_hour: 2.10")
    result, cursor = _tick(s, cursor)
    assert len(result.run_requests) == 1
    req = result.run_requests[0]
    assert _keys(req) == {"pricing", "text2sql_cost_table", "benchmark_report"}
    assert req.job_name == "repricing"
    # Nothing further on the next tick.
    again, _ = _tick(s, cursor)
    assert not again.run_requests


def test_prompt_edit_requests_that_tasks_downstream_only(setup):
    s = setup
    _, cursor = _tick(s, None)
    _touch_edit(s["tasks_dir"] / "banking77.yaml", "description: ", "description: Be brief. ")
    result, cursor = _tick(s, cursor)
    assert len(result.run_requests) == 1
    keys = _keys(result.run_requests[0])
    assert keys == {"banking77_teacher_data", "banking77_student", "banking77_student_eval",
                    "banking77_baseline_evals", "banking77_throughput", "banking77_cost_table", "benchmark_report"}
    assert not any(k.startswith("text2sql") for k in keys)
    assert "pricing" not in keys and "banking77" not in keys


def test_revert_to_earlier_content_triggers_again(setup):
    s = setup
    path = s["tasks_dir"] / "text2sql.yaml"
    original = path.read_text()
    _, cursor = _tick(s, None)
    _touch_edit(path, "Question: {question}", "Q: {question}")
    first, cursor = _tick(s, cursor)
    assert len(first.run_requests) == 1
    path.write_text(original)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 3_000_000_000))
    reverted, cursor = _tick(s, cursor)
    assert len(reverted.run_requests) == 1
    assert "text2sql_teacher_data" in _keys(reverted.run_requests[0])
    assert reverted.run_requests[0].run_key != first.run_requests[0].run_key


def test_unrelated_yaml_edit_and_touch_do_not_trigger(setup):
    s = setup
    _, cursor = _tick(s, None)
    path = s["tasks_dir"] / "text2sql.yaml"
    _touch_edit(path, "max_answer_tokens: 128", "max_answer_tokens: 129")  # not part of the prompt
    result, cursor = _tick(s, cursor)
    assert not result.run_requests
    st = s["pricing"].stat()
    os.utime(s["pricing"], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched, same content
    result, _ = _tick(s, cursor)
    assert not result.run_requests


def test_only_files_with_new_mtime_or_size_are_hashed(setup):
    s = setup
    _, cursor = _tick(s, None)
    files = {"pricing": str(s["pricing"]), **{f"task:{t}": str(s["tasks_dir"] / f"{t}.yaml") for t in TASKS}}
    assert scan(json.loads(cursor), files).hashed == []
    _touch_edit(s["pricing"], "usd_per_hour: 2.40", "usd_per_hour: 2.50")
    assert scan(json.loads(cursor), files).hashed == ["pricing"]


def test_schedule_tick_requests_pricing_refresh_existing_cost_tables_and_report(setup):
    s = setup
    _materialize_cost_table(s["instance"], "banking77")
    ctx = dg.build_schedule_context(instance=s["instance"])
    request = s["schedule"].evaluate_tick(ctx).run_requests[0]
    assert _keys(request) == {"pricing", "banking77_cost_table", "benchmark_report"}
    assert request.run_config == {"ops": {"pricing": {"config": {"refresh_hosted": True}}}}
