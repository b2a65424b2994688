"""The teacher gate (issue 33): ``<task>_teacher_eval`` scores the teacher on the test set with the
student's prompt and gives PROCEED / ITERATE / RETHINK by the task's thresholds (YAML ``teacher_gate``,
validated); ``<task>_teacher_data`` reads the verdict from Dagster's record, so a RETHINK asks the
teacher nothing even in a run that does not include the eval, unless ``override_teacher_gate`` says
so; the gap closed (student − base) / (teacher − base) with its paired bootstrap CI, and "not defined"
where the teacher is the student's base.

The teachers here are a loopback OpenAI-compatible endpoint (``tests/openai_fake.py``) that counts
every call, or a recorded file: no model is served, so these run in seconds."""

from __future__ import annotations

import json
import math
import os

import dagster as dg
import pytest
import yaml
from distil_platform.assets.seed import build_seed_set_asset
from distil_platform.assets.teacher import build_teacher_assets
from distil_platform.assets.teacher_eval import build_teacher_eval_asset, gate_check
from distil_platform.resources import (
    LLMResource,
    ModelStoreResource,
    ResultsStoreResource,
    ServingResource,
    TeacherEndpointResource,
)
from openai_fake import FakeOpenAI

from distil_platform.economics.stats import gap_closed
from distil_platform.evaluation.teacher_gate import (
    ITERATE,
    NOT_APPLICABLE,
    NOT_EVALUABLE,
    NOT_EVALUATED,
    PROCEED,
    RETHINK,
    TEACHER_IS_BASE,
    gap_closed_summary,
    gate_decision,
    thresholds_for,
    verdict_for,
)
from distil_platform.tasks.spec import TaskSpecError, get_task, load_task_file, tasks_dir

TASK = "git_assistant"


@pytest.fixture
def test_profile(monkeypatch):
    monkeypatch.setenv("DISTIL_PROFILE", "test")
    monkeypatch.delenv("DISTIL_TEACHER_API_KEY", raising=False)
    monkeypatch.delenv("DISTIL_TEACHER_API_BASE", raising=False)


def _spec(tmp_path, task: str = TASK, **update):
    raw = yaml.safe_load((tasks_dir() / f"{task}.yaml").read_text())
    raw.update(update)
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_task_file(path)


def _endpoint_spec(tmp_path, base: str, **update):
    teacher = {"test": {"model": "openai/garbage-teacher", "api_base": base, "tier": "teacher", "temperature": 0.8,
                        "response_format": "none"}}
    return _spec(tmp_path, teacher=teacher, **update)


def _resources():
    return {"llm": LLMResource(max_retries=0), "serving": ServingResource(backend="transformers"),
            "model_store": ModelStoreResource(), "results_store": ResultsStoreResource(),
            "teacher_endpoint": TeacherEndpointResource()}


def _assets(spec):
    return build_seed_set_asset(spec) + build_teacher_eval_asset(spec) + build_teacher_assets(spec)


def _md(result, key: str) -> dict:
    mats = result.asset_materializations_for_node(key)
    assert mats, f"{key} was not materialised"
    return {k: getattr(v, "value", v) for k, v in mats[-1].metadata.items()}


def _checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


# -- thresholds, verdicts, the YAML block ---------------------------------------------------------
def test_default_thresholds_per_metric_and_the_fallback_metric_says_so():
    text2sql, smart_home, hotpotqa = get_task("text2sql"), get_task("smart_home"), get_task("hotpotqa")
    t = thresholds_for(text2sql, "sql_execution_match")
    assert (t.proceed, t.rethink, t.source) == (0.8, 0.6, "default for sql_execution_match")
    assert thresholds_for(smart_home, "tool_call_equivalence").proceed == 0.7
    # A judge-scored task whose judge is unreachable is judged by token F1's own thresholds.
    fallback = thresholds_for(hotpotqa, "fallback:token_f1")
    assert fallback.metric == "token_f1" and (fallback.proceed, fallback.rethink) == (0.5, 0.3)
    assert thresholds_for(hotpotqa, "llm_judge:mistral/x").metric == "llm_judge"
    assert [verdict_for(s, t) for s in (0.8, 0.79, 0.6, 0.59)] == [PROCEED, ITERATE, ITERATE, RETHINK]
    assert verdict_for(None, t) == NOT_EVALUABLE


def test_yaml_overrides_per_metric(tmp_path):
    spec = _spec(tmp_path, "hotpotqa", teacher_gate={"proceed": 0.9, "rethink": 0.7,
                                                      "by_metric": {"token_f1": {"proceed": 0.4, "rethink": 0.2}}})
    own = thresholds_for(spec, "llm_judge:mistral/mistral-large-2512")
    assert (own.proceed, own.rethink) == (0.9, 0.7) and "teacher_gate" in own.source
    assert str(tmp_path) in own.source  # where the thresholds came from: the file
    f1 = thresholds_for(spec, "fallback:token_f1")
    assert (f1.proceed, f1.rethink) == (0.4, 0.2) and f1.source.endswith("teacher_gate.by_metric.token_f1")


@pytest.mark.parametrize(("block", "message"), [
    ({"proceed": 0.5, "rethink": 0.7}, "rethink (0.7) must not be above proceed (0.5)"),
    ({"proceed": 0.8}, "give both `proceed` and `rethink`"),
    ({"by_metric": {"bleu": {"proceed": 0.5, "rethink": 0.3}}}, "unknown metric 'bleu'"),
    ({"by_metric": {"token_f1": {"proceed": 0.5, "rethink": 0.6}}}, "must not be above proceed"),
    ({"proceed": 1.5, "rethink": 0.6}, "teacher_gate.proceed"),
    ({"on_rethink": "abort"}, "teacher_gate.on_rethink"),
    ({"thresholds": 0.8}, "teacher_gate.thresholds"),
])
def test_teacher_gate_block_is_validated_naming_the_file_and_field(tmp_path, block, message):
    with pytest.raises(TaskSpecError) as err:
        _spec(tmp_path, "text2sql", teacher_gate=block)
    text = str(err.value)
    assert str(tmp_path / "text2sql.yaml") in text and "teacher_gate" in text and message in text


def test_gate_decision_on_recorded_verdicts():
    spec = get_task("text2sql")
    seen = {"teacher": "openai/t", "teacher_source": "teacher", "score": 0.1, "metric": "sql_execution_match"}
    assert gate_decision(spec, None, teacher="openai/t", source="teacher").status == NOT_EVALUATED
    other = gate_decision(spec, seen, teacher="openai/other", source="teacher")
    assert other.status == NOT_APPLICABLE and other.ask_teacher and "openai/t" in other.note
    rethink = gate_decision(spec, seen, teacher="openai/t", source="teacher")
    assert not rethink.ask_teacher and not rethink.stop
    assert rethink.note == "seed-only: the teacher failed its gate (0.100 < 0.6, sql_execution_match)"
    forced = gate_decision(spec, seen, teacher="openai/t", source="teacher", override=True)
    assert forced.ask_teacher and forced.overridden and "override_teacher_gate" in forced.note
    # The verdict follows the task's current thresholds, not the ones the eval ran with.
    assert gate_decision(spec, {**seen, "score": 0.7}, teacher="openai/t", source="teacher").status == ITERATE
    stop = spec.model_copy(update={"teacher_gate": spec.teacher_gate.model_copy(update={"on_rethink": "stop"})})
    assert gate_decision(stop, seen, teacher="openai/t", source="teacher").stop
    unscored = gate_decision(spec, {**seen, "score": None, "verdict": NOT_EVALUABLE, "reason": "no file"},
                             teacher="openai/t", source="teacher")
    assert unscored.ask_teacher and "no file" in unscored.note


def test_gate_check_severity():
    spec = get_task("text2sql")
    t = thresholds_for(spec, spec.metric_name)
    assert gate_check(spec, PROCEED, 0.9, t).passed
    soft = gate_check(spec, RETHINK, 0.1, t)
    assert not soft.passed and soft.severity == dg.AssetCheckSeverity.WARN and "seed-only" in soft.description
    stop = spec.model_copy(update={"teacher_gate": spec.teacher_gate.model_copy(update={"on_rethink": "stop"})})
    assert gate_check(stop, RETHINK, 0.1, t).severity == dg.AssetCheckSeverity.ERROR
    assert gate_check(stop, RETHINK, 0.1, t, override=True).severity == dg.AssetCheckSeverity.WARN
    assert gate_check(spec, ITERATE, 0.7, t).severity == dg.AssetCheckSeverity.WARN


# -- gap closed -----------------------------------------------------------------------------------
def _planted(n_right: dict[str, int], n: int = 40) -> dict[str, list[float]]:
    return {m: [1.0 if i < k else 0.0 for i in range(n)] for m, k in n_right.items()}


def test_gap_closed_point_and_interval_on_a_planted_case():
    # base 10/40, teacher 30/40, student 20/40 on nested items: gap (0.5 - 0.25) / (0.75 - 0.25) = 0.5.
    p = _planted({"s": 20, "b": 10, "t": 30})
    g = gap_closed(p["s"], p["b"], p["t"])
    assert g.value == pytest.approx(0.5) and g.n == 40 and g.method == "paired percentile bootstrap"
    assert g.low < 0.5 < g.high and 0.2 < g.high - g.low < 0.8
    assert gap_closed(p["s"], p["b"], p["t"]) == g  # seeded: the same interval every time
    # Four times the items (same proportions): the same point, a narrower interval (~1/2 the width).
    p4 = {k: v * 4 for k, v in p.items()}
    g4 = gap_closed(p4["s"], p4["b"], p4["t"])
    assert g4.value == pytest.approx(0.5) and (g4.high - g4.low) < 0.65 * (g.high - g.low)
    # Paired, not independent: the student matching the teacher on every item closes exactly all of it.
    full = gap_closed(p["t"], p["b"], p["t"])
    assert (full.value, full.low, full.high) == (1.0, 1.0, 1.0)
    none = gap_closed(p["b"], p["b"], p["t"])
    assert (none.value, none.low, none.high) == (0.0, 0.0, 0.0)


def test_gap_closed_is_undefined_where_the_teacher_does_not_beat_the_base():
    p = _planted({"s": 20, "b": 30, "t": 30})
    assert gap_closed(p["s"], p["b"], p["t"]).method == "undefined"
    summary = gap_closed_summary(dict(enumerate(p["s"])), dict(enumerate(p["b"])), dict(enumerate(p["t"])),
                                 same_model=False)
    assert not summary["defined"] and "does not beat the base" in summary["note"]
    # A teacher barely ahead on few items: too many resamples undefined to bound the ratio.
    shaky = gap_closed([1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 0, 0])
    assert shaky.method == "unbounded" and math.isnan(shaky.low)
    same = gap_closed_summary({"a": 1.0}, {"a": 0.0}, {"a": 1.0}, same_model=True)
    assert same == {"defined": False, "note": TEACHER_IS_BASE}
    planted = _planted({"s": 20, "b": 10, "t": 30})
    reading = gap_closed_summary(*(dict(enumerate(planted[k])) for k in "sbt"), same_model=False)
    assert reading["defined"] and reading["reading"].startswith("retune") and "n=40" in reading["note"]


def test_cost_table_gap_closed_columns_and_teacher_is_base(tmp_path):
    from cost_fixtures import DISTILLED, plant_student_eval, plant_task

    from distil_platform.economics.cost_inputs import gather_cost_inputs
    from distil_platform.economics.costs import build_cost_table, teacher_lines
    from distil_platform.economics.pricing import build_snapshot
    from distil_platform.storage.store import ResultsStore

    store, spec = ResultsStore(), get_task("text2sql")
    plant_task(store, spec, tmp_path, student_lineage=DISTILLED)  # student 10/12, zero-shot base 1/12
    plant_student_eval(store, spec, "teacher-run", "openai/teacher", 11, stage="teacher_eval", variant="teacher")
    inputs = gather_cost_inputs(store, spec)
    inputs.gate_notes = {"train-1": "teacher gate PROCEED: ..."}
    rows = build_cost_table(inputs, build_snapshot(models_needed=[r.model for r in spec.comparison_models]))
    student = next(r for r in rows if r["role"] == "student")
    assert student["gap_closed"] == pytest.approx((10 / 12 - 1 / 12) / (11 / 12 - 1 / 12))  # 0.9
    assert student["gap_closed_ci_low"] <= 0.9 <= student["gap_closed_ci_high"]
    assert "deploy" in student["gap_closed_note"] and student["teacher_model"] == "openai/teacher"
    assert student["teacher_accuracy"] == pytest.approx(11 / 12) and student["teacher_gate"].startswith("teacher gate")
    line = teacher_lines(rows)[0]
    assert "teacher openai/teacher 0.917" in line and "student" in line and "(zero-shot) 0.083" in line
    assert all(r.get("gap_closed_note") is None for r in rows if r["role"] != "student")
    from distil_platform.economics.report import summarise_task, summary_row

    cells = summary_row(summarise_task("text2sql", rows))  # the report: teacher, student and base side by side
    assert cells["teacher · student · base"] == "0.917 · 0.833 · 0.083" and "deploy" in cells["gap closed"]
    assert cells["teacher gate"].startswith("teacher gate")
    # The teacher eval of a teacher that is the student's base: "not defined", with that reason.
    plant_student_eval(store, spec, "teacher-run-2", "smollm2-135m-instruct", 11, stage="teacher_eval",
                       variant="teacher_is_base")
    rows = build_cost_table(gather_cost_inputs(store, spec), build_snapshot(
        models_needed=[r.model for r in spec.comparison_models]))
    student = next(r for r in rows if r["role"] == "student")
    assert student["gap_closed"] is None and student["gap_closed_note"] == TEACHER_IS_BASE


# -- the assets, through Dagster --------------------------------------------------------------------
def _garbage(body):
    return "I cannot help with that."


def test_rethink_teacher_is_not_asked_in_a_run_without_the_eval_and_the_override_asks(test_profile, tmp_path):
    with FakeOpenAI(respond=_garbage) as fake, dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        spec = _endpoint_spec(tmp_path, fake.api_base)
        assets = _assets(spec)
        evaluated = dg.materialize(assets, resources=_resources(), instance=instance,
                                   selection=[TASK, f"{TASK}_teacher_eval"])
        assert evaluated.success  # a RETHINK is an outcome, not a failed run
        md = _md(evaluated, f"{TASK}_teacher_eval")
        n_test = md["n_test"]
        assert md["verdict"] == RETHINK and md["score"] == 0.0 and md["n"] == n_test
        assert md["metric"] == "tool_call_equivalence" and md["thresholds"] == {
            "proceed": 0.7, "rethink": 0.6, "metric": "tool_call_equivalence"}
        assert md["thresholds_source"] == "default for tool_call_equivalence"
        assert md["teacher"] == "openai/garbage-teacher" and md["teacher_is_student_base"] is False
        assert md["ci_low"] == 0.0 and 0.0 < md["ci_high"] < 0.3  # Wilson: 0/n is never [0, 0]
        gate = _checks(evaluated)["teacher_gate"]
        assert not gate.passed and gate.severity == dg.AssetCheckSeverity.WARN
        asked = sum(fake.calls.values())
        assert asked == n_test  # one greedy answer per test question

        # A run that does not include the eval: the gate is read from Dagster's record.
        gated = dg.materialize(assets, resources=_resources(), instance=instance, selection=[f"{TASK}_teacher_data"],
                               run_config={"ops": {f"{TASK}_teacher_data": {"config": {"target": 8}}}})
        assert gated.success
        data = _md(gated, f"{TASK}_teacher_data")
        assert sum(fake.calls.values()) == asked, "the teacher was asked despite its RETHINK"
        assert data["teacher_gate"] == ("seed-only: the teacher failed its gate (0.000 < 0.6, "
                                        "tool_call_equivalence)")
        assert data["seed_only_by_gate"] is True and data["teacher_gate_status"] == RETHINK
        assert data["accepted"] == 0 and data["teacher_requests"] == 0
        assert _checks(gated)["accepted_minimum"].passed  # no rows is the intended outcome here

        forced = dg.materialize(assets, resources=_resources(), instance=instance, selection=[f"{TASK}_teacher_data"],
                                run_config={"ops": {f"{TASK}_teacher_data": {"config": {
                                    "target": 8, "override_teacher_gate": True}}}})
        assert forced.success
        data = _md(forced, f"{TASK}_teacher_data")
        assert sum(fake.calls.values()) == asked + 2  # 8 examples, 4 per request
        assert data["override_teacher_gate"] is True and data["seed_only_by_gate"] is False
        assert "overridden by run config override_teacher_gate: true" in data["teacher_gate"]


def test_on_rethink_stop_blocks_downstream_in_the_run_unless_overridden(test_profile, tmp_path):
    with FakeOpenAI(respond=_garbage) as fake, dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        spec = _endpoint_spec(tmp_path, fake.api_base, teacher_gate={"on_rethink": "stop"})
        assets = _assets(spec)
        stopped = dg.materialize(assets, resources=_resources(), instance=instance, raise_on_error=False,
                                 run_config={"ops": {f"{TASK}_teacher_data": {"config": {"target": 8}}}})
        assert not stopped.success
        gate = _checks(stopped)["teacher_gate"]
        assert not gate.passed and gate.severity == dg.AssetCheckSeverity.ERROR
        assert not stopped.asset_materializations_for_node(f"{TASK}_teacher_data")
        n_test = sum(fake.calls.values())
        # A later run of the teacher data alone fails the same way, asking nothing.
        alone = dg.materialize(assets, resources=_resources(), instance=instance, raise_on_error=False,
                               selection=[f"{TASK}_teacher_data"])
        assert not alone.success and sum(fake.calls.values()) == n_test
        failure = next(e for e in alone.all_events if e.event_type_value == "STEP_FAILURE")
        assert "teacher_gate.on_rethink is stop" in str(failure.event_specific_data.error)
        forced = dg.materialize(assets, resources=_resources(), instance=instance, run_config={"ops": {
            f"{TASK}_teacher_data": {"config": {"target": 8, "override_teacher_gate": True}}}})
        assert forced.success and _checks(forced)["teacher_gate"].severity == dg.AssetCheckSeverity.WARN
        # The eval's answers come from the response cache; the teacher is asked for data (2 requests).
        assert sum(fake.calls.values()) == n_test + 2
        assert _md(forced, f"{TASK}_teacher_data")["override_teacher_gate"] is True


def test_a_capable_local_teacher_proceeds_and_shares_the_zero_shot_base_requests(test_profile, tmp_path, monkeypatch):
    """The test profile's teacher is a model-store model served locally (here answered by the fake, standing
    in for the server): it answers with the zero-shot base eval's exact request, so where teacher and base
    are one model the base eval finds every answer cached. The teacher is the base: no gap closed."""
    import contextlib
    from types import SimpleNamespace

    from distil_platform.assets.common import all_cached, answer_token_cap
    from distil_platform.assets.common import read_asset_rows as rows_of

    from distil_platform.evaluation.evaluate import eval_messages
    from distil_platform.llm import ChatRequest
    from distil_platform.profiles import get_profile
    from distil_platform.storage.store import ResultsStore

    spec = get_task(TASK)
    test = {}

    def respond(body):  # the reference answer of the question asked: a perfect teacher
        return test.get(body["messages"][-1]["content"], "?")

    with FakeOpenAI(respond=respond) as fake:
        identity = {"served_model": "tiny-qwen3", "checkpoint_hash": "x"}

        @contextlib.contextmanager
        def fake_serve(self, model_dir, **overrides):
            yield SimpleNamespace(base_url=fake.api_base, litellm_model="openai/tiny-qwen3", model="tiny-qwen3",
                                  backend="transformers", identity=identity)

        monkeypatch.setattr(ServingResource, "serve", fake_serve)
        with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
            seeded = dg.materialize(_assets(spec), resources=_resources(), instance=instance, selection=[TASK])
            rows = rows_of(seeded.output_for_node(TASK)["test_path"])
            messages = eval_messages(spec, rows)
            test.update({m[-1]["content"]: r["answer"] for m, r in zip(messages, rows)})
            result = dg.materialize(_assets(spec), resources=_resources(), instance=instance,
                                    selection=[f"{TASK}_teacher_eval"])
    assert result.success
    md = _md(result, f"{TASK}_teacher_eval")
    assert md["verdict"] == PROCEED and md["score"] == 1.0 and md["teacher_is_student_base"] is True
    assert md["answered_by"] == "local transformers server" and md["teacher"] == "tiny-qwen3"
    assert _checks(result)["teacher_gate"].passed
    base_requests = [ChatRequest(messages=m, repeat=0, item_id=str(r["id"]), temperature=0.0,
                                 max_tokens=answer_token_cap(get_profile("test"), spec.max_answer_tokens))
                     for m, r in zip(messages, rows)]  # what <task>_baseline_evals sends the zero-shot base
    assert all_cached(ResultsStore(), "openai/tiny-qwen3", base_requests, identity)


def _recorded_spec(tmp_path, lines: list[dict]):
    path = tmp_path / "recorded.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    synthesis = yaml.safe_load((tasks_dir() / f"{TASK}.yaml").read_text())["synthesis"]
    synthesis["source"] = {"test": "recorded"}
    synthesis["recorded"] = {"path": str(path), "teacher_model": "gpt-oss-120b (recorded)"}
    return _spec(tmp_path, synthesis=synthesis)


def test_a_recorded_teacher_is_scored_on_the_test_questions_its_file_answers(test_profile, tmp_path):
    from distil_platform.assets.common import read_asset_rows as rows_of

    spec = get_task(TASK)
    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        seeded = dg.materialize(build_seed_set_asset(spec), resources=_resources(), instance=instance)
        rows = rows_of(seeded.output_for_node(TASK)["test_path"])
        wrong = json.dumps({"name": "git_status", "parameters": {}})
        # Five test questions (re-cased and re-punctuated: matched by normalised question), three right.
        lines = [{"question": r["question"].upper() + " ", "answer": r["answer"] if k < 3 else wrong}
                 for k, r in enumerate(rows[:5])] + [{"question": "an unrelated question", "answer": wrong}]
        spec = _recorded_spec(tmp_path, lines)
        result = dg.materialize(_assets(spec), resources=_resources(), instance=instance,
                                selection=[f"{TASK}_teacher_eval"])
        assert result.success
        md = _md(result, f"{TASK}_teacher_eval")
        assert md["n"] == 5 and md["score"] == pytest.approx(0.6) and md["verdict"] == ITERATE
        assert md["teacher"] == "gpt-oss-120b (recorded)" and md["teacher_source"] == "recorded"
        assert f"5 of {len(rows)} test questions" in md["answered_by"] and md["new_model_calls"] == 0

        spec = _recorded_spec(tmp_path, [{"question": "nothing from the test set", "answer": wrong}])
        result = dg.materialize(_assets(spec), resources=_resources(), instance=instance,
                                selection=[f"{TASK}_teacher_eval"])
        md = _md(result, f"{TASK}_teacher_eval")
        assert md["verdict"] == NOT_EVALUABLE and "answers none of the" in md["reason"]
        check = _checks(result)["teacher_gate"]
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
        data = dg.materialize(_assets(spec), resources=_resources(), instance=instance,
                              selection=[f"{TASK}_teacher_data"])
        assert _md(data, f"{TASK}_teacher_data")["teacher_gate"].startswith(
            "gate not evaluated: the teacher was not evaluable (the recorded file")


def test_a_recorded_answer_for_another_context_is_not_an_answer_to_this_item():
    from distil_platform.evaluation.teacher_gate import match_recorded

    recorded = [{"question": "How many users?", "context": "CREATE TABLE a (id INT);", "answer": "SELECT 1"}]
    same = {"id": "1", "question": "how many users?", "context": "CREATE TABLE a (id INT);"}
    other = {"id": "2", "question": "How many users?", "context": "CREATE TABLE b (id INT);"}
    bare = {"id": "3", "question": "How many users?", "context": ""}
    rows, matched = match_recorded([same, other, bare], recorded)
    assert [r["id"] for r in rows] == ["1", "3"] and [m["answer"] for m in matched] == ["SELECT 1", "SELECT 1"]
