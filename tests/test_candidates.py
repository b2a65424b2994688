"""Student candidates (a base model + training settings per profile, ``tasks/candidates.py``): YAML
validation, which candidates the Definitions hold, the choice rule (``economics/candidates.py``),
and a test-profile run with two tiny-qwen3 sizes that prices both and chooses one."""

from __future__ import annotations

import os

import dagster as dg
import pytest
import yaml
from test_costs import model_call_counter as _model_call_counter  # noqa: F401  (fixture: refuses and counts model calls)

from distil_platform.economics.candidates import Candidate, CandidateChoice, PricedAPI, choose_candidate
from distil_platform.economics.cost_inputs import EvaluatedModel
from distil_platform.tasks.candidates import StudentCandidate, selected_candidates, task_candidates
from distil_platform.tasks.spec import TaskSpecError, get_task, load_task_file, tasks_dir


# -- the task YAML ---------------------------------------------------------------------------------
def _task_file(tmp_path, candidates) -> str:
    raw = yaml.safe_load((tasks_dir() / "text2sql.yaml").read_text())
    raw["student_candidates"] = candidates
    path = tmp_path / "text2sql.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_yaml_candidates_load_first_is_the_default(tmp_path):
    spec = load_task_file(_task_file(tmp_path, {"test": [
        {"name": "small", "base_model": "tiny-qwen3", "max_steps": 4},
        {"name": "large_full", "base_model": "tiny-qwen3-large", "use_lora": False}]}))
    names = [c.name for c in task_candidates(spec, "test")]
    assert names == ["small", "large_full"]
    assert task_candidates(spec, "test")[1].settings() == "full fine-tune"
    # Only the first unless asked: `make run` keeps its budget.
    assert [c.name for c in selected_candidates(spec, "test", "")] == ["small"]
    assert [c.name for c in selected_candidates(spec, "test", "all")] == ["small", "large_full"]
    assert [c.name for c in selected_candidates(spec, "test", "other_task_c, large_full")] == ["small", "large_full"]
    # A profile the YAML lists none for: one implicit candidate, the profile's base (today's behaviour).
    (implicit,) = task_candidates(spec, "gpu")
    assert implicit.base_model == spec.student_base("gpu") and implicit.max_steps is None


def test_task_without_candidates_has_one_named_after_its_base():
    (only,) = task_candidates(get_task("banking77"), "test")
    assert (only.name, only.base_model) == ("tiny_qwen3", "tiny-qwen3")


@pytest.mark.parametrize(("candidates", "field", "message"), [
    ({"test": [{"name": "Big-One", "base_model": "tiny-qwen3"}]}, "student_candidates.test.0.name", "pattern"),
    ({"test": [{"name": "a", "base_model": "x"}, {"name": "a", "base_model": "y"}]}, "student_candidates",
     "listed more than once"),
    ({"test": [{"name": "a", "base_model": "x", "steps": 3}]}, "student_candidates.test.0.steps", "Extra inputs"),
    ({"laptop": [{"name": "a", "base_model": "x"}]}, "student_candidates.laptop.[key]", "local"),
    ({"test": []}, "student_candidates", "lists no candidates"),
    ({"test": [{"name": "a", "base_model": "x", "max_steps": 0}]}, "student_candidates.test.0.max_steps", "greater"),
])
def test_bad_candidates_name_the_file_and_field(tmp_path, candidates, field, message):
    with pytest.raises(TaskSpecError) as err:
        load_task_file(_task_file(tmp_path, candidates))
    text = str(err.value)
    assert "text2sql.yaml" in text and f"field `{field}`" in text and message in text


def test_shipped_local_candidates_are_two_real_cpu_choices():
    for task in ("text2sql", "smart_home"):
        spec = get_task(task)
        first, second = task_candidates(spec, "local")
        assert first.base_model == second.base_model == spec.student_base("local")
        assert first.name != second.name and (first.max_steps, first.use_lora) != (second.max_steps, second.use_lora)


def test_shipped_gpu_candidates_are_the_benchmarks_qwen3_sizes_and_build(monkeypatch):
    from distil_platform.assets import build_task_assets

    from distil_platform.profiles import get_profile
    from distil_platform.tasks.spec import load_tasks

    sizes = {"Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-4B-Instruct-2507", "Qwen/Qwen3-8B"}
    for name, spec in load_tasks().items():
        listed = task_candidates(spec, "gpu")
        assert {c.base_model for c in listed} == sizes, name
        assert listed[0].base_model == spec.student_base("gpu"), name  # the default keeps today's student
        # 8B recomputes its activations (16 rows per step on one card); the smaller ones keep them.
        assert [c.name for c in listed if c.gradient_checkpointing] == ["qwen3_8b"], name
    monkeypatch.setenv("DISTIL_STUDENT_CANDIDATES", "all")
    spec = get_task("smart_home")
    keys = {k.to_user_string() for a in build_task_assets(spec, get_profile("gpu"))
            if isinstance(a, dg.AssetsDefinition) and not isinstance(a, dg.AssetChecksDefinition) for k in a.keys}
    assert {f"smart_home_{stage}__{c}" for stage in ("student", "student_eval", "throughput")
            for c in ("qwen3_1_7b", "qwen3_4b", "qwen3_8b")} <= keys
    assert "smart_home_student__qwen3_0_6b" not in keys  # the first: today's keys


def test_definitions_hold_further_candidates_only_when_asked(monkeypatch):
    from distil_platform.assets import build_task_assets

    from distil_platform.profiles import get_profile

    spec = get_task("text2sql").model_copy(update={"student_candidates": {"test": [
        StudentCandidate(name="small", base_model="tiny-qwen3"),
        StudentCandidate(name="large", base_model="tiny-qwen3-large")]}})

    def keys() -> set[str]:
        out = set()
        for a in build_task_assets(spec, get_profile("test")):
            if isinstance(a, dg.AssetsDefinition) and not isinstance(a, dg.AssetChecksDefinition):
                out |= {k.to_user_string() for k in a.keys}
        return out

    monkeypatch.delenv("DISTIL_STUDENT_CANDIDATES", raising=False)
    today = keys()
    assert {"text2sql_student", "text2sql_student_eval", "text2sql_throughput"} <= today
    assert not any("__" in k for k in today)
    monkeypatch.setenv("DISTIL_STUDENT_CANDIDATES", "all")
    assert keys() - today == {"text2sql_student__large", "text2sql_student_eval__large", "text2sql_throughput__large"}


# -- the choice rule -------------------------------------------------------------------------------
N = 400


def _model(label: str, correct: int) -> EvaluatedModel:
    """``correct`` of N items right (the same first items for every model: paired)."""
    scores = {f"i{i}": [1.0 if i < correct else 0.0] for i in range(N)}
    return EvaluatedModel(label=label, role="student", variant="fp32", run_id=label, scores=scores,
                          metrics=dict.fromkeys(scores, "exact_match"))


def _cand(name: str, correct: int, usd: float | None, training_s: float | None = None) -> Candidate:
    return Candidate(name, "m", _model(name, correct), accuracy=correct / N, ci_low=0.0, ci_high=1.0,
                     usd_per_million=usd, sustained_rps=1.0, training_s=training_s)


def test_choice_is_the_cheapest_non_inferior_candidate():
    big, small = _cand("big", 304, usd=10.0), _cand("small", 300, usd=2.0)
    api = PricedAPI("api", _model("api", 300), 0.75, 5.0)
    choice = choose_candidate([big, small], api, margin=0.05)
    assert choice.chosen == "small" and choice.best == "big"
    assert "cheapest candidate non-inferior" in choice.why and "**api**" in choice.why
    assert choice.verdicts["small"]["vs_api"] == "non_inferior"


def test_cheaper_but_worse_candidate_is_not_chosen():
    big, small = _cand("big", 320, usd=10.0), _cand("small", 200, usd=2.0)
    choice = choose_candidate([big, small], None, margin=0.05)
    assert choice.chosen == "big"
    assert choice.verdicts["small"]["eligible"] is False and "loss" in choice.verdicts["small"]["reason"]
    assert "No mid-tier API is priced" in choice.why


def test_same_cost_candidates_are_chosen_by_accuracy_then_training_time():
    # One base model (local): $/M within the load test's noise, so accuracy decides ...
    a, b = _cand("lora_40", 300, usd=10.0), _cand("lora_80", 304, usd=10.5)
    choice = choose_candidate([a, b], None, margin=0.05)
    assert choice.chosen == "lora_80" and "same cost" in choice.why and "then by training time" in choice.why
    # ... and at the same accuracy, the one cheaper to train.
    a, b = _cand("lora_40", 300, usd=10.0, training_s=60.0), _cand("lora_80", 300, usd=10.2, training_s=120.0)
    assert choose_candidate([b, a], None, margin=0.05).chosen == "lora_40"


def test_none_is_chosen_when_no_candidate_matches_the_api():
    api = PricedAPI("api", _model("api", 390), 0.975, 5.0)
    choice = choose_candidate([_cand("big", 300, usd=10.0), _cand("small", 250, usd=2.0)], api, margin=0.02)
    assert choice.chosen is None and choice.why.startswith("**None is chosen**")
    assert all(not v["eligible"] for v in choice.verdicts.values())
    # Unpriced or unevaluated candidates are never chosen, and say why.
    unpriced = choose_candidate([_cand("a", 300, usd=None)], None, margin=0.02)
    assert unpriced.chosen is None and "no $/M" in unpriced.why
    missing = Candidate("b", "m", None, note="no successfully materialised student evaluation")
    assert "none was evaluated" in choose_candidate([missing], None, margin=0.02).why


# -- the cost table over planted candidates (store only) ------------------------------------------
def test_cost_table_prices_each_candidate_and_chooses_without_a_model_call(tmp_path, _model_call_counter):  # noqa: F811
    from cost_fixtures import DISTILLED, plant_student_eval, plant_task, plant_throughput, publish_planted
    from distil_platform.assets.costs import build_task_cost_assets
    from distil_platform.assets.keys import candidate_key
    from distil_platform.assets.published import store_run_id_metadata
    from distil_platform.resources.store import ResultsStoreResource

    from distil_platform.economics.costs import latest_cost_table
    from distil_platform.storage.store import ResultsStore

    spec = get_task("text2sql")
    store = ResultsStore()
    # The first candidate: 10/12 right at 222 req/s; a mid-tier API with 4/12 (priced); the second
    # candidate: as accurate, at 444 req/s on the same hardware (half the $/M requests).
    info = plant_task(store, spec, tmp_path, api_models={"gemini/gemini-2.5-flash-lite": 4}, student_lineage=DISTILLED)
    instance = dg.DagsterInstance.ephemeral()
    publish_planted(instance, "text2sql", info["runs"])
    large = {"student_run_id": "train-2", "use_synthetic": True, "checkpoint_fingerprint": "f" * 64}
    plant_student_eval(store, spec, "eval-large", "text2sql-student-large-abc", 10, lineage=large)
    plant_throughput(store, spec, "tp-large", "text2sql-student-large-abc", sustained_rps=444.0, lineage=large)
    for stage, run in (("student_eval", "eval-large"), ("throughput", "tp-large")):
        instance.report_runless_asset_event(dg.AssetMaterialization(candidate_key("text2sql", stage, "large"),
                                                                    metadata=store_run_id_metadata(run)))
    candidates = [StudentCandidate(name="small", base_model="tiny-qwen3"),
                  StudentCandidate(name="large", base_model="tiny-qwen3-large")]
    (cost_table,) = build_task_cost_assets(spec, candidates)
    result = dg.materialize([cost_table], resources={"results_store": ResultsStoreResource()}, instance=instance)
    assert result.success and _model_call_counter.n == 0
    md = result.asset_materializations_for_node("text2sql_cost_table")[0].metadata
    rows = {r["candidate"]: r for r in latest_cost_table(store, "text2sql") if r["candidate"]}
    assert set(rows) == {"small", "large"} and rows["large"]["role"] == "candidate"
    assert rows["large"]["usd_per_million_requests"] == pytest.approx(rows["small"]["usd_per_million_requests"] / 2)
    assert rows["large"]["cost_ratio_vs_student"] == pytest.approx(0.5)
    assert md["chosen_candidate"].value == "large"
    assert "gemini/gemini-2.5-flash-lite" in md["chosen_candidate_why"].value
    assert md["candidate_verdicts"].value["large"]["vs_api"] == "win"
    assert "data:image/png;base64," in md["candidates_plot"].value
    assert md["ignored_runs"].value == {}
    assert {r["candidate"]: r["candidate_choice"] for r in rows.values()} == {"small": "not chosen", "large": "chosen"}

    # Routing and the report name the chosen candidate, from the stored rows alone (no model call).
    from distil_platform.assets.routing import compute_task_routing

    from distil_platform.economics.report import write_report
    from distil_platform.economics.routing_io import gather_routing_inputs

    inputs = gather_routing_inputs(store, spec)
    assert inputs.student.label == "text2sql-student-large-abc"
    assert "the student is candidate large (chosen by the cost table)" in inputs.notes
    assert "text2sql-student-abc" not in [m.label for m in inputs.models]  # the other candidate is no route
    routed = compute_task_routing(spec, store, "routing-run")
    assert routed["result"].policies[0].model == "text2sql-student-large-abc" and _model_call_counter.n == 0
    report = write_report(store, ["text2sql"], tmp_path / "report")
    (summary,) = report.summaries
    assert summary.student["candidate"] == "large" and summary.verdict == "win"  # its own verdict vs the API
    assert summary.cost_ratio == pytest.approx(summary.mid_tier["usd_per_million_requests"]
                                               / rows["large"]["usd_per_million_requests"])
    assert "candidate large)" in report.markdown and "Student candidates: **large**" in report.markdown

    # A rehearsal's cost table marks the API it compared the candidates with as a stand-in.
    from distil_platform.assets.costs import compute_cost_table
    from distil_platform.assets.published import student_candidate_runs

    rehearsed = compute_cost_table(spec, store, "table-rehearsal", stand_ins=True,
                                   candidates=student_candidate_runs(instance, "text2sql", candidates))
    assert "**gemini/gemini-2.5-flash-lite [stand-in]**" in rehearsed["metadata"]["chosen_candidate_why"].value


def test_when_no_candidate_is_good_enough_the_report_names_the_default_and_says_so():
    from distil_platform.economics.candidates import mark_choice
    from distil_platform.economics.report import summarise_task

    small = {"model": "s", "role": "student", "variant": "bf16", "candidate": "small", "accuracy": 0.5,
             "usd_per_million_requests": 2.0}
    large = {"model": "l", "role": "candidate", "variant": "bf16", "candidate": "large", "accuracy": 0.6,
             "usd_per_million_requests": 1.0, "versus": {}}
    rows = [small, large]
    mark_choice(rows, CandidateChoice(None, "**None is chosen**: no priced candidate is non-inferior.", "large"))
    summary = summarise_task("t", rows)
    assert summary.student is small and summary.candidates.startswith("**None is chosen**")
    mark_choice(rows, CandidateChoice("large", "**large** ...", "large"))
    assert summarise_task("t", rows).student is large
    # The chosen candidate is named even where the table's own student has no accuracy (not evaluated).
    mid = {"model": "api", "role": "mid_tier", "variant": "mid_tier", "accuracy": 0.55, "input_usd_per_mtok": 0.1,
           "usd_per_million_requests": 50.0}
    large["versus"] = {"api": {"verdict": "win", "test": "mcnemar", "diff": 0.05, "ci_low": 0.01, "ci_high": 0.09}}
    summary = summarise_task("t", [{**small, "accuracy": None}, large, mid])
    assert summary.student is large and summary.verdict == "win" and summary.cost_ratio == pytest.approx(50.0)


# -- two tiny sizes, trained, served, priced -------------------------------------------------------
@pytest.mark.slow
def test_two_tiny_candidates_get_cost_rows_a_choice_and_a_plot(monkeypatch):
    from distil_platform.assets import build_task_assets
    from distil_platform.resources import (
        LLMResource,
        ModelStoreResource,
        ResultsStoreResource,
        ServingResource,
        TeacherEndpointResource,
        TrainerResource,
    )

    from distil_platform.economics.costs import latest_cost_table
    from distil_platform.profiles import get_profile
    from distil_platform.storage.store import ResultsStore

    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DISTIL_PROFILE", "test")
    monkeypatch.setenv("DISTIL_STUDENT_CANDIDATES", "all")
    spec = get_task("text2sql").model_copy(update={"student_candidates": {"test": [
        StudentCandidate(name="small", base_model="tiny-qwen3"),
        StudentCandidate(name="large", base_model="tiny-qwen3-large")]}})
    profile = get_profile("test")
    resources = {"llm": LLMResource(), "serving": ServingResource(backend="transformers", dtype=profile.dtype),
                 "model_store": ModelStoreResource(), "results_store": ResultsStoreResource(),
                 "teacher_endpoint": TeacherEndpointResource(), "trainer": TrainerResource()}
    selection = ["text2sql", "text2sql_teacher_eval", "text2sql_teacher_data", "text2sql_student",
                 "text2sql_student__large", "text2sql_student_eval", "text2sql_throughput",
                 "text2sql_student_eval__large", "text2sql_throughput__large", "text2sql_cost_table",
                 "text2sql_routing"]
    serving = {"config": {"generator_ceiling": False}}
    run_config = {"ops": {"text2sql_student_serving": serving, "text2sql_student_serving__large": serving}}
    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        assets = [a for a in build_task_assets(spec, profile) if isinstance(a, dg.AssetsDefinition)
                  and not isinstance(a, dg.AssetChecksDefinition) and {k.to_user_string() for k in a.keys} & set(selection)]
        result = dg.materialize(assets, selection=selection, resources=resources,
                                instance=instance, run_config=run_config)
        assert result.success
        run_id = result.run_id
        # One run, two candidates: each wrote under its own store run id (no shared rows).
        large = result.asset_materializations_for_node("text2sql_student__large")[0].metadata
        assert large["candidate"].value == "large" and large["base_model"].value == "tiny-qwen3-large"
        assert f"{run_id}__large" in large["checkpoint_path"].value
        serving_md = {m.asset_key.path[-1]: m.metadata
                      for m in result.asset_materializations_for_node("text2sql_student_serving__large")}
        assert serving_md["text2sql_student_eval__large"]["store_run_id"].value == f"{run_id}__large"

        md = result.asset_materializations_for_node("text2sql_cost_table")[0].metadata
        rows = latest_cost_table(ResultsStore(), "text2sql")
        by_candidate = {r["candidate"]: r for r in rows if r["role"] in ("student", "candidate") and r["candidate"]}
        assert set(by_candidate) == {"small", "large"}
        assert by_candidate["small"]["role"] == "student" and by_candidate["large"]["role"] == "candidate"
        # Each candidate priced from its own load test: the hardware's $/h over its own sustained rate. The
        # two sizes serve at different rates on a loaded machine and may not on a quiet one (both keep up
        # with the test profile's 4 req/s): the rule's handling of different costs is the fast tests'.
        from distil_platform.economics.costs import self_hosted_usd_per_million_requests
        from distil_platform.storage.store import throughput_profiles

        profiles = {p["run_id"]: p for p in ResultsStore().select(throughput_profiles, task="text2sql")}
        assert set(profiles) == {run_id, f"{run_id}__large"}
        for name, store_run in (("small", run_id), ("large", f"{run_id}__large")):
            row, measured = by_candidate[name], profiles[store_run]
            # Its sustained rate, or (no rate sustained: a 3 s window of six requests may be flagged as
            # bunched on a loaded machine) the max achieved, which the row says it estimated from.
            rate = measured["sustained_rps"] or measured["max_achieved_rps"]
            assert rate > 0 and row["usd_per_hour"], (measured, row)
            assert row["cost_source"] == ("measured" if measured["sustained_rps"] else "estimated")
            assert row["usd_per_million_requests"] == pytest.approx(
                self_hosted_usd_per_million_requests(row["usd_per_hour"], rate))
        assert by_candidate["large"]["eval_run_id"] == f"{run_id}__large"
        # Routing routes with the candidate the cost table chose (the default when none is chosen).
        chosen = md["chosen_candidate"].value
        routed = chosen if chosen in by_candidate else "small"
        routing = result.asset_materializations_for_node("text2sql_routing")[0].metadata
        assert f"the student is candidate {routed}" in routing["notes"].value
        assert not {r["model"] for r in by_candidate.values()} & set(routing["comparison_models"].value)
        assert md["chosen_candidate"].value in ("small", "large")
        assert md["chosen_candidate"].value in md["chosen_candidate_why"].value
        assert "No mid-tier API is priced" in md["chosen_candidate_why"].value  # no API key in this test
        table = md["candidates"].value
        assert "| small |" in table and "| large |" in table and "**yes**" in table
        assert "data:image/png;base64," in md["candidates_plot"].value
        assert md["ignored_runs"].value == {}  # the other candidate's rows are not a failed run's
