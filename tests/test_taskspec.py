"""Task registry: the nine shipped tasks load and say what the benchmark needs; malformed YAML is
rejected with an error naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from distil_platform.tasks.prompts import build_messages, system_prompt
from distil_platform.tasks.spec import TaskSpecError, get_task, load_task_file, load_tasks, tasks_dir

NINE = {"text2sql", "smart_home", "git_assistant", "banking77", "ecommerce", "trec", "hotpotqa", "docstring",
        "pii_redaction"}
BANKING_SUBSET = {
    "balance_not_updated_after_cheque_or_cash_deposit", "card_payment_fee_charged", "cash_withdrawal_charge",
    "declined_cash_withdrawal", "direct_debit_payment_not_recognised", "transaction_charged_twice",
    "transfer_fee_charged", "wrong_amount_of_cash_received",
}


@pytest.fixture(scope="module")
def specs():
    return load_tasks()


def test_the_nine_tasks_load_with_their_types_and_metrics(specs):
    assert set(specs) == NINE
    expected = {
        "text2sql": ("text2sql", "sql_execution_match"),
        "smart_home": ("tool_calling", "tool_call_equivalence"),
        "git_assistant": ("tool_calling", "tool_call_equivalence"),
        "banking77": ("classification", "exact_match"),
        "ecommerce": ("classification", "exact_match"),
        "trec": ("classification", "exact_match"),
        "hotpotqa": ("open_book_qa", "llm_judge"),
        "docstring": ("generation", "llm_judge"),
        "pii_redaction": ("generation", "llm_judge"),
    }
    for name, (task_type, metric) in expected.items():
        assert (specs[name].type, specs[name].metric_name) == (task_type, metric), name
        assert Path(specs[name].source_file).parent == tasks_dir()
        assert len(specs[name].description) > 80, f"{name}: description too thin to be a real system prompt"


def test_label_sets(specs):
    assert set(specs["banking77"].labels) == BANKING_SUBSET
    assert set(specs["banking77"].data.hf.label_subset) == BANKING_SUBSET
    assert set(specs["ecommerce"].labels) == {"household", "books", "clothing_and_accessories", "electronics"}
    # TREC's coarse ClassLabel names, so HF rows map straight onto the label set.
    assert set(specs["trec"].labels) == {"ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"}
    for name in ("banking77", "ecommerce", "trec"):
        assert all(len(desc) > 20 for desc in specs[name].labels.values()), name


def _tool(spec, name):
    return next(t["function"] for t in spec.tools if t["function"]["name"] == name)


def test_tool_schemas_are_valid_json_schema_with_defaults(specs):
    for name in ("smart_home", "git_assistant"):
        for tool in specs[name].tools:
            Draft202012Validator.check_schema(tool["function"]["parameters"])
            assert tool["function"]["description"]
    git = specs["git_assistant"]
    assert len(git.tools) == 13
    push = _tool(git, "git_push")["parameters"]["properties"]
    assert push["remote"]["default"] == "origin" and push["force"]["default"] is False
    assert _tool(git, "git_log")["parameters"]["properties"]["limit"]["default"] == 10
    assert _tool(git, "git_restore")["parameters"]["properties"]["source"]["default"] == "HEAD"
    assert _tool(git, "git_stash")["parameters"]["properties"]["stash_ref"]["default"] == "stash@{0}"
    smart = specs["smart_home"]
    assert set(smart.tool_names) == {"toggle_lights", "set_thermostat", "lock_door", "get_device_status",
                                     "set_scene", "intent_unclear"}
    temp = _tool(smart, "set_thermostat")["parameters"]["properties"]["temperature"]
    assert (temp["minimum"], temp["maximum"]) == (60, 80)


def test_judged_tasks_have_rubrics_and_a_judge(specs):
    for name in ("hotpotqa", "docstring", "pii_redaction"):
        assert specs[name].judge_rubric and len(specs[name].judge_rubric) > 100
        assert specs[name].judge is not None and specs[name].judge.api_key_env


def test_models_per_profile_and_comparison_models(specs):
    assert specs["text2sql"].student_base("gpu") == "Qwen/Qwen3-4B-Instruct-2507"
    for spec in specs.values():
        assert spec.student_base("local") == "smollm2-135m-instruct"
        assert spec.student_base("test") == "tiny-qwen3"
        assert spec.student_base("gpu").startswith("Qwen/Qwen3-")
        tiers = {m.model: m.tier for m in spec.comparison_models}
        # The seed benchmark's ten frontier models (tiers vs prices: tests/test_pricing.py).
        assert tiers == {
            "openai/gpt-5-nano": "mid_tier", "openai/gpt-5-mini": "mid_tier", "openai/gpt-5.2": "frontier",
            "gemini/gemini-2.5-flash-lite": "mid_tier", "gemini/gemini-2.5-flash": "mid_tier",
            "anthropic/claude-haiku-4-5": "frontier", "anthropic/claude-sonnet-4-6": "frontier",
            "anthropic/claude-opus-4-6": "frontier", "xai/grok-4-1-fast-reasoning": "mid_tier",
            "xai/grok-4": "frontier",
        }, spec.name
        for model in spec.comparison_models:
            assert model.api_key_env in {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "XAI_API_KEY"}
            assert model.repeats == 3
        assert spec.margin == 0.02
        # The local zero-shot baseline is decided by the profile, never listed per task.
        assert not any("smollm" in m.model for m in spec.comparison_models)


def test_data_sources(specs):
    assert specs["banking77"].data.hf.path == "PolyAI/banking77"
    assert specs["banking77"].data.hf.label_names_from_feature
    assert specs["trec"].data.hf.path == "CogComp/trec"
    assert specs["trec"].data.hf.answer_field == "coarse_label"
    assert specs["hotpotqa"].data.hf.name == "distractor"
    assert specs["hotpotqa"].data.hf.context_field == "context"
    for name in ("banking77", "ecommerce"):
        assert specs[name].data.unstructured_file
    for spec in specs.values():
        for split, minimum in (("train", 20), ("test", 30)):
            path = spec.sample_dir() / f"{split}.jsonl"
            assert sum(1 for line in path.read_text().splitlines() if line.strip()) >= minimum, path


def test_max_answer_tokens_fit_the_task(specs):
    assert specs["text2sql"].max_answer_tokens == 128
    assert specs["docstring"].max_answer_tokens == 256
    assert all(specs[n].max_answer_tokens <= 24 for n in ("banking77", "ecommerce", "trec"))


def test_every_task_renders_a_row_into_messages(specs):
    for spec in specs.values():
        row = json.loads((spec.sample_dir() / "test.jsonl").read_text().splitlines()[0])
        messages = build_messages(spec, row)
        assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
        assert spec.description.strip()[:40] in system_prompt(spec)
    t2s = specs["text2sql"]
    row = json.loads((t2s.sample_dir() / "test.jsonl").read_text().splitlines()[0])
    assert build_messages(t2s, row)[-1]["content"].startswith("Schema:\nCREATE TABLE")


# -- malformed task files ---------------------------------------------------------------------
def _base_yaml() -> dict:
    return yaml.safe_load((tasks_dir() / "banking77.yaml").read_text())


def _write(tmp_path: Path, raw: dict | str, name: str = "banking77") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("mutate,field", [
    (lambda r: r.update(bogus_field=1), "bogus_field"),
    (lambda r: r["data"]["hf"].update(splitt="train"), "data.hf.splitt"),
    (lambda r: r.update(max_answer_tokens="lots"), "max_answer_tokens"),
    (lambda r: r.update(type="regression"), "type"),
    (lambda r: r.pop("labels"), "labels"),
    (lambda r: r.update(prompt_template="{question} -> {answer}"), "prompt_template"),
    (lambda r: r["comparison_models"][0].update(tier="premium"), "comparison_models.0.tier"),
    (lambda r: r.update(metric="llm_judge"), "judge_rubric"),
])
def test_malformed_yaml_names_file_and_field(tmp_path, mutate, field):
    raw = _base_yaml()
    mutate(raw)
    path = _write(tmp_path, raw)
    with pytest.raises(TaskSpecError) as err:
        load_task_file(path)
    message = str(err.value)
    assert str(path) in message
    assert field in message


def test_tool_calling_without_valid_tools_is_rejected(tmp_path):
    raw = yaml.safe_load((tasks_dir() / "git_assistant.yaml").read_text())
    raw["tools"][2] = {"type": "function", "function": {"description": "no name"}}
    path = _write(tmp_path, raw, "git_assistant")
    with pytest.raises(TaskSpecError, match=r"tools\[2\]") as err:
        load_task_file(path)
    assert str(path) in str(err.value)


def test_invalid_yaml_syntax_and_name_mismatch(tmp_path):
    bad = _write(tmp_path, "name: banking77\ntype: [classification\n")
    with pytest.raises(TaskSpecError, match="not valid YAML") as err:
        load_task_file(bad)
    assert str(bad) in str(err.value)
    raw = _base_yaml()
    renamed = _write(tmp_path, raw, "other_task")
    with pytest.raises(TaskSpecError, match="`name`"):
        load_task_file(renamed)


def test_adding_a_task_is_one_yaml_file(tmp_path, monkeypatch):
    raw = {
        "name": "sentiment",
        "type": "classification",
        "description": "Classify the sentiment of a product review.",
        "labels": {"positive": "The reviewer is satisfied.", "negative": "The reviewer is not satisfied."},
    }
    _write(tmp_path, raw, "sentiment")
    monkeypatch.setenv("DISTIL_TASKS_DIR", str(tmp_path))
    specs = load_tasks()
    assert list(specs) == ["sentiment"]
    assert specs["sentiment"].metric_name == "exact_match"
    assert get_task("sentiment", tmp_path).sample_dir().name == "sentiment"


def test_margin_repeats_and_judge_family(tmp_path):
    from pydantic import ValidationError

    from distil_platform.tasks.spec import ModelRef, TaskSpec, model_family

    base = {"name": "t", "type": "classification", "description": "d", "labels": {"a": "A", "b": "B"}}
    assert TaskSpec(**base).margin == 0.02 and TaskSpec(**base, margin=0.05).margin == 0.05
    with pytest.raises(ValidationError):
        TaskSpec(**base, margin=-0.01)
    assert ModelRef(model="m").repeats is None and ModelRef(model="m", repeats=1).repeats == 1
    with pytest.raises(ValidationError):
        ModelRef(model="m", repeats=0)
    assert model_family("anthropic/claude-haiku-4-5") == "anthropic" and model_family("xai/grok-4") == "xai"
    assert model_family("openai/gpt-5.2") == "openai" and model_family("mistral/mistral-large-2512") == "mistral"
    assert model_family("openai/deepseek-ai/DeepSeek-V3.1") == "deepseek" and model_family("x/unknown") is None
    judged = [{"model": "anthropic/claude-haiku-4-5"}, {"model": "openai/gpt-5-nano"}]
    with pytest.raises(ValidationError, match="judge anthropic/claude-sonnet-4-6 is of the anthropic family"):
        TaskSpec(**base, comparison_models=judged, judge={"model": "anthropic/claude-sonnet-4-6"})
    ok = TaskSpec(**base, comparison_models=judged, judge={"model": "anthropic/claude-sonnet-4-6"},
                  judge_same_family_ok=True)
    assert ok.judge.model == "anthropic/claude-sonnet-4-6"
    assert TaskSpec(**base, comparison_models=judged, judge={"model": "mistral/mistral-large-2512"}).judge


def test_every_task_has_the_local_slo_its_latency_measurement_gives(specs):
    # A 1 s GPU SLO would leave every CPU student "estimated": each task's `local` SLO comes from
    # benchmarks/local_slo.py (recorded in its results), so a YAML edit without a re-measure shows here.
    measured = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "local_slo.json").read_text())
    proposed = {row["task"]: row["proposed_local_slo_s"] for row in measured["tasks"]}
    assert set(proposed) == set(specs)
    for name, spec in specs.items():
        assert spec.latency_slo("local") == proposed[name], name
        assert spec.latency_slo("gpu") == spec.latency_slo_s  # the GPU benchmark's own SLO is untouched
        p95 = next(r["p95_s"] for r in measured["tasks"] if r["task"] == name)
        assert spec.latency_slo("local") >= 2 * p95  # met one request at a time, with room for queueing
