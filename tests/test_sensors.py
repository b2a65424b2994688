"""Declarative automation, tested against the real Definitions (``build_definitions()``).

The configuration files are the observable source assets ``pricing_file`` and ``<task>_prompt``;
``config_change_sensor`` is the automation-condition sensor. Each test records materialisations
(runless events, as a finished run would leave them), observes the files with the real observation
function, and asks Dagster's own evaluator which assets the sensor would request.
"""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
from dagster._core.definitions.observe import observe
from distil_platform.assets.config_sources import pricing_file_observation, prompt_observation
from distil_platform.assets.keys import PRICING_FILE_KEY, TASK_STAGES
from distil_platform.sensors import MONTHLY_CRON, SENSOR_NAME

from distil_platform.storage.paths import PACKAGE_DIR
from distil_platform.tasks.spec import load_tasks

TASKS = ("text2sql", "banking77")


def _stages(task: str) -> set[str]:
    return {f"{task}{s}" for s in TASK_STAGES}


@pytest.fixture(scope="module")
def _instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def env(tmp_path, monkeypatch, _instance):
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    for t in TASKS:
        shutil.copy(PACKAGE_DIR / "tasks" / f"{t}.yaml", tasks_dir / f"{t}.yaml")
    pricing = tmp_path / "pricing.yaml"
    shutil.copy(PACKAGE_DIR / "config" / "pricing.yaml", pricing)
    monkeypatch.setenv("DISTIL_TASKS_DIR", str(tasks_dir))
    monkeypatch.setenv("DISTIL_PRICING_FILE", str(pricing))
    # The tests observe the files themselves; a cron tick of the observation during a test would
    # add a (correct, but time-dependent) observation request. Its own test is below.
    monkeypatch.setenv("DISTIL_CONFIG_OBSERVE_CRON", "0 0 1 1 *")
    from distil_platform.definitions import build_definitions

    _instance.wipe()
    defs = build_definitions()
    return _Env(defs, _instance, tasks_dir, pricing)


class _Env:
    def __init__(self, defs, instance, tasks_dir, pricing):
        self.defs, self.instance, self.tasks_dir, self.pricing = defs, instance, tasks_dir, pricing
        self.cursor = None
        self.keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}

    def materialise(self, *keys: str) -> None:
        """What a finished run leaves: materialisations, and the config versions the run used."""
        specs = load_tasks(self.tasks_dir)
        for key in keys:
            if key.endswith(("_teacher_eval", "_teacher_data")):  # both log the prompt version they read
                self.instance.report_runless_asset_event(prompt_observation(specs[key.rsplit("_teacher_", 1)[0]]))
            if key == "pricing":
                self.instance.report_runless_asset_event(pricing_file_observation())
            self.instance.report_runless_asset_event(dg.AssetMaterialization(key))

    def materialise_task(self, task: str) -> None:
        self.materialise(*sorted(_stages(task), key=lambda k: TASK_STAGES.index(k[len(task):])))

    def observe(self) -> None:
        result = observe([self.defs.get_assets_def(PRICING_FILE_KEY)], instance=self.instance)
        assert result.success

    def tick(self) -> set[str]:
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return {r.key.to_user_string() for r in result.results
                if isinstance(r.key, dg.AssetKey) and r.true_subset.size}

    def edit(self, path, old: str, new: str) -> None:
        text = path.read_text()
        assert old in text, f"{old!r} not in {path}"
        path.write_text(text.replace(old, new, 1))


@pytest.fixture
def settled(env):
    """text2sql fully materialised (with pricing and the report), banking77 never run; the config
    observed after the run, and the evaluator has seen that state."""
    env.tick()
    env.materialise("pricing")
    env.materialise_task("text2sql")
    env.materialise("benchmark_report")
    env.observe()
    assert env.tick() == set(), "a config observation right after a run must request nothing"
    return env


def test_sensor_is_the_automation_condition_sensor_and_schedule_stays(env):
    sensor = env.defs.get_sensor_def(SENSOR_NAME)
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    schedule = env.defs.get_schedule_def("monthly_repricing")
    assert schedule.cron_schedule == MONTHLY_CRON == "0 6 1 * *"
    assert schedule.execution_timezone == "UTC"
    assert {"config/pricing_file", "config/text2sql_prompt", "config/banking77_prompt"} <= env.keys


def test_config_files_are_observed_on_their_cron(env, monkeypatch):
    import datetime

    from distil_platform.assets.config_sources import DEFAULT_OBSERVE_CRON

    monkeypatch.setenv("DISTIL_CONFIG_OBSERVE_CRON", DEFAULT_OBSERVE_CRON)
    from distil_platform.definitions import build_definitions

    defs = build_definitions()
    start = datetime.datetime(2026, 12, 1, 12, 0, 30, tzinfo=datetime.timezone.utc)
    first = dg.evaluate_automation_conditions(defs=defs, instance=env.instance, evaluation_time=start)
    later = dg.evaluate_automation_conditions(defs=defs, instance=env.instance, cursor=first.cursor,
                                              evaluation_time=start + datetime.timedelta(minutes=2))
    requested = {r.key.to_user_string() for r in later.results if r.true_subset.size}
    assert requested == {"config/pricing_file", "config/text2sql_prompt", "config/banking77_prompt"}


def test_no_change_requests_nothing(settled):
    settled.observe()
    assert settled.tick() == set()
    settled.edit(settled.pricing, "hardware:", "# a comment only\nhardware:")  # same parsed content
    settled.edit(settled.tasks_dir / "text2sql.yaml", "max_answer_tokens: 128", "max_answer_tokens: 129")
    settled.observe()
    assert settled.tick() == set()


def test_pricing_edit_requests_pricing_materialised_cost_tables_and_report_only(settled):
    settled.edit(settled.pricing, "usd_per_hour: 2.40", "usd_per_hour: 2.10")
    settled.observe()
    requested = settled.tick()
    # The student bundle follows its cost table: its card states $ per million requests (no model call).
    repriced = {f"text2sql{s}" for s in ("_cost_table", "_routing", "_student_bundle") if f"text2sql{s}" in settled.keys}
    assert requested == {"pricing", "benchmark_report", *repriced}
    assert settled.tick() == set()  # requested once, not again on the next tick


def test_prompt_edit_requests_that_tasks_teacher_data_and_downstream_only(settled):
    settled.edit(settled.tasks_dir / "text2sql.yaml", "Question: {question}", "Q: {question}")
    settled.observe()
    requested = settled.tick()
    assert requested == (_stages("text2sql") - {"text2sql"}) | {"benchmark_report"}
    assert not any(k.startswith("banking77") for k in requested)
    assert "pricing" not in requested


def test_a_home_without_a_teacher_eval_still_re_distils_on_a_prompt_edit(env):
    """A task materialised before ``<task>_teacher_eval`` existed: a prompt edit requests its teacher data
    (which then says the gate was not evaluated), never a first teacher eval."""
    env.tick()
    env.materialise("pricing")
    env.materialise(*sorted(_stages("text2sql") - {"text2sql_teacher_eval"},
                            key=lambda k: TASK_STAGES.index(k[len("text2sql"):])))
    env.materialise("benchmark_report")
    env.observe()
    assert env.tick() == set()
    env.edit(env.tasks_dir / "text2sql.yaml", "Question: {question}", "Q: {question}")
    env.observe()
    requested = env.tick()
    assert "text2sql_teacher_data" in requested and "text2sql_teacher_eval" not in requested


def test_revert_to_earlier_content_triggers_again(settled):
    path = settled.tasks_dir / "text2sql.yaml"
    original = path.read_text()
    settled.edit(path, "Question: {question}", "Q: {question}")
    settled.observe()
    assert "text2sql_teacher_data" in settled.tick()
    settled.materialise_task("text2sql")  # the requested run finished
    settled.observe()
    assert settled.tick() == set()
    path.write_text(original)
    settled.observe()
    assert "text2sql_teacher_data" in settled.tick()


def test_a_task_never_materialised_is_not_started(settled):
    settled.edit(settled.tasks_dir / "banking77.yaml", "description: ", "description: Be brief. ")
    settled.observe()
    assert not any(k.startswith("banking77") for k in settled.tick())


def test_rebuilding_a_seed_set_never_starts_training(settled):
    settled.materialise("text2sql")
    requested = settled.tick()
    assert not requested & {"text2sql_teacher_data", "text2sql_student", "text2sql_student_eval",
                            "text2sql_baseline_evals", "text2sql_frontier_evals", "text2sql_throughput"}


def test_schedule_requests_pricing_refresh_materialised_tasks_and_report(settled):
    ctx = dg.build_schedule_context(instance=settled.instance)
    request = settled.defs.get_schedule_def("monthly_repricing").evaluate_tick(ctx).run_requests[0]
    repriced = {f"text2sql{s}" for s in ("_cost_table", "_routing") if f"text2sql{s}" in settled.keys}
    assert {k.to_user_string() for k in request.asset_selection} == {"pricing", "benchmark_report", *repriced}
    assert request.run_config == {"ops": {"pricing": {"config": {"refresh_hosted": True}}}}
