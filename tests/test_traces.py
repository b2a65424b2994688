"""Production traces as a data source (issue 34): reading OpenAI and Langfuse logs, the rejections, PII
masking, dedup and decontamination, the seeded stratified split, the seed-set asset, the trace rows in
the teacher's funnel, and the production model's cost-table row priced from its logged usage.

Fixtures: tests/fixtures/traces/ (written for this project by make_fixtures.py there)."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from distil_platform.assets.seed import SeedSetConfig, build_seed_set_asset, load_task_data
from distil_platform.resources.store import ResultsStoreResource

from distil_platform.storage import paths
from distil_platform.storage.store import ResultsStore
from distil_platform.tasks.pii import luhn_ok, mask_text, mask_value
from distil_platform.tasks.sources import DataSourceError
from distil_platform.tasks.spec import TaskSpecError, TracesSource, get_task, load_task_file, tasks_dir
from distil_platform.tasks.traces import load_traces, stratified_split, traces_config
from distil_platform.tasks.validation import find_overlaps, validate_frame

FIXTURES = Path(__file__).parent / "fixtures" / "traces"
BANKING = FIXTURES / "banking77_openai.jsonl"
HOME = FIXTURES / "smart_home_openai.jsonl"
LANGFUSE = FIXTURES / "banking77_langfuse.jsonl"
PATTERN = r"^Customer message: (?P<question>.*)$"
PLANTED = json.loads((FIXTURES / "planted_pii.json").read_text())
MODEL = "gpt-5-mini-2025-08-07"


def _with_traces(task: str, path: Path, **kw) -> tuple:
    spec = get_task(task)
    cfg = TracesSource(path=str(path), question_pattern=PATTERN if task == "banking77" else None, **kw)
    return spec.model_copy(update={"data": spec.data.model_copy(update={"traces": cfg})}), cfg


def _load(task: str, path: Path, **kw):
    spec, cfg = _with_traces(task, path, **kw)
    return spec, load_traces(spec, cfg, path)


def _lines(path: Path) -> list[tuple[int, dict | None]]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = None
        out.append((n, value if isinstance(value, dict) else None))
    return out


def _raw_values() -> list[str]:
    values = [v for kind in PLANTED.values() for v in kind]
    return values + [re.sub(r"\D", "", c) for c in PLANTED["card"]]


def _cells(*frames: pl.DataFrame) -> list[str]:
    return [str(v) for df in frames for row in df.iter_rows() for v in row]


# -- reading and rejecting ---------------------------------------------------------------------
def test_openai_classification_traces_map_reject_and_count():
    spec, data = _load("banking77", BANKING)
    s = data.summary
    assert s["calls"] == 209
    assert s["rejections_by_reason"] == {"label_not_in_set": 8, "invalid_json": 2, "invalid_response": 1,
                                         "missing_messages": 1, "not_an_object": 1}
    assert s["rejected"] == 13 and s["duplicates"] == 10
    assert s["unlabelled_by_reason"] == {"truncated": 2, "no_reply": 2, "error": 1, "empty_reply": 1}
    # Every call is accounted for: labelled + unlabelled + rejected + duplicates.
    assert s["labelled"] + s["unlabelled"] + s["rejected"] + s["duplicates"] == s["calls"]
    # Each named rejection points at the file and the line that holds it.
    lines = dict(_lines(BANKING))
    for entry in s["rejected_examples"]:
        where, reason = entry.rsplit(": ", 1)
        file, line = where.rsplit(":", 1)
        assert file == str(BANKING)
        record = lines[int(line)]
        if reason in ("invalid_json", "not_an_object"):
            assert record is None
        if reason == "label_not_in_set":
            assert record["response"]["choices"][0]["message"]["content"] not in spec.labels
    # The production prompt is cut away; the labels are the task's own (casing mapped back).
    rows = pl.concat([data.seed, data.test])
    assert not any(q.startswith("Customer message:") for q in rows["question"])
    assert set(rows["answer"]) <= set(spec.labels) and not validate_frame(spec, rows)
    assert s["labels_are_production_answers"] and s["labels_note"] == f"labels are your production model's answers ({MODEL})"
    assert s["production_model"] == MODEL


def test_openai_tool_calling_traces_keep_the_history_and_reject_outside_the_tools():
    spec, data = _load("smart_home", HOME)
    s = data.summary
    assert s["calls"] == 203
    assert s["rejections_by_reason"] == {"tool_args_invalid": 2, "unknown_tool": 2, "multiple_tool_calls": 1,
                                         "no_tool_call": 1, "missing_user_message": 1, "missing_messages": 1,
                                         "invalid_json": 1, "not_an_object": 1}
    assert s["unlabelled_by_reason"] == {"error": 3} and s["duplicates"] == 10
    rows = pl.concat([data.seed, data.test])
    assert not validate_frame(spec, rows)
    histories = [json.loads(q) for q in rows["question"]]
    assert all(h[-1]["role"] == "user" and all(m["role"] != "system" for m in h) for h in histories)
    follow_ups = [h for h in histories if len(h) > 1]
    assert follow_ups, "the fixture's follow-up turns are kept as histories"
    call = follow_ups[0][1]["tool_calls"][0]["function"]
    assert call == {"name": "toggle_lights", "arguments": {"room": "kitchen", "state": "on"}}  # arguments parsed
    assert {json.loads(a)["name"] for a in rows["answer"]} <= set(spec.tool_names)


def test_langfuse_export_is_read_the_same_way():
    spec, data = _load("banking77", LANGFUSE)
    s = data.summary
    # 36 generations (4 of them inside trace records beside a span, which is skipped), a failed call, a
    # legacy observation (input {"messages"}, output a string, promptTokens), a cut-off line, no input.
    assert s["calls"] == 40
    assert s["rejections_by_reason"] == {"label_not_in_set": 3, "invalid_json": 1, "missing_messages": 1}
    assert s["unlabelled_by_reason"] == {"error": 1} and s["labelled"] == 34
    rows = pl.concat([data.seed, data.test])
    assert "why was I charged for taking out cash in Porto" in set(rows["question"])
    assert set(rows["answer"]) <= set(spec.labels)
    # Usage of the production model: usageDetails (with cached input) and the legacy promptTokens.
    usage, expected = s["usage"], []
    for _, rec in _lines(LANGFUSE):
        for obs in (rec or {}).get("observations", [rec]) if rec else []:
            if obs.get("type") != "GENERATION" or obs.get("model") != "gpt-5-nano-2025-08-07":
                continue
            u = obs.get("usageDetails") or {}
            if u:
                expected.append((u["input"], u["output"], u["input_cached_tokens"]))
            elif "promptTokens" in obs:
                expected.append((obs["promptTokens"], obs["completionTokens"], 0))
            elif obs.get("usage"):
                expected.append((obs["usage"]["input"], obs["usage"]["output"], 0))
    assert usage["n_requests"] == len(expected) == 38
    assert usage["mean_prompt_tokens"] == pytest.approx(sum(e[0] for e in expected) / len(expected))
    assert usage["mean_cached_tokens"] == pytest.approx(sum(e[2] for e in expected) / len(expected))


# -- personal data -----------------------------------------------------------------------------
def _planted_in_user_turns(path: Path, langfuse: bool = False) -> Counter:
    """Occurrences of each planted kind in the last user turn of every readable call (counted by
    hand from the raw file, independently of the masking code)."""
    found: Counter = Counter()
    for _, rec in _lines(path):
        if rec is None:
            continue
        records = rec.get("observations", [rec]) if langfuse else [rec]
        for r in records:
            messages = (r.get("input") if langfuse else (r.get("request") or r).get("messages"))
            if isinstance(messages, dict):
                messages = messages.get("messages")
            if not isinstance(messages, list) or not messages or messages[-1].get("role") != "user":
                continue
            text = messages[-1]["content"]
            for kind, values in PLANTED.items():
                found[kind] += sum(text.count(v) for v in values)
    return found


@pytest.mark.parametrize("task,path,langfuse", [("banking77", BANKING, False), ("smart_home", HOME, False),
                                                ("banking77", LANGFUSE, True)])
def test_pii_is_masked_in_every_stored_row_and_counted_per_kind(task, path, langfuse):
    _, data = _load(task, path)
    raw = _raw_values()
    for cell in _cells(data.seed, data.test, data.unlabelled):
        assert not any(v in cell for v in raw), cell
    assert not any(v in json.dumps(data.summary) for v in raw)
    expected = _planted_in_user_turns(path, langfuse)
    assert sum(expected.values()) > 0
    assert data.summary["pii_masked"] == {k: expected[k] for k in ("email", "phone", "card")}
    masked = " ".join(_cells(data.seed, data.test, data.unlabelled))
    assert "[EMAIL]" in masked and ("[PHONE]" in masked or "[CARD]" in masked)


def test_masking_can_be_switched_off_per_task():
    _, data = _load("banking77", BANKING, mask_pii=False)
    assert data.summary["pii_masked"] is None and data.summary["mask_pii"] is False
    cells = " ".join(_cells(data.seed, data.test, data.unlabelled))
    assert any(v in cells for v in _raw_values())


def test_pii_rules():
    counts: Counter = Counter()
    text = ("mail a.b+c@example.co.uk, card 4111 1111 1111 1111 or 4111-1111-1111-1111, not 4111111111111112, "
            "call +44 20 7946 0958 or (555) 123-4567; order 1234567890 on 2024-05-06 at 10:30 for $1,299.00, ip 10.0.0.1")
    assert mask_text(text, counts) == ("mail [EMAIL], card [CARD] or [CARD], not 4111111111111112, call [PHONE] or "
                                       "[PHONE]; order 1234567890 on 2024-05-06 at 10:30 for $1,299.00, ip 10.0.0.1")
    assert counts == {"email": 1, "card": 2, "phone": 2}
    assert luhn_ok("79927398713") and not luhn_ok("79927398710") and not luhn_ok("12a4")
    # JSON values are masked value by value (a card given as a number too); the JSON stays JSON.
    assert mask_value({"to": "x@y.org", "card": 4111111111111111, "n": 3}) == {"to": "[EMAIL]", "card": "[CARD]", "n": 3}


# -- dedup, decontamination, split ----------------------------------------------------------------
def test_split_is_deterministic_stratified_and_decontaminated():
    spec, first = _load("banking77", BANKING)
    _, again = _load("banking77", BANKING)
    assert first.seed.equals(again.seed) and first.test.equals(again.test)
    _, other = _load("banking77", BANKING, split_seed=1)
    assert set(other.test["id"]) != set(first.test["id"])
    assert not find_overlaps(first.seed, first.test)
    # Every label is in the test split about test_share of its rows (before decontamination of seeds).
    labelled = first.summary["n_test"] + first.summary["n_seed"] + first.summary["decontaminated"]
    assert first.summary["n_test"] == pytest.approx(0.2 * labelled, abs=len(spec.labels))
    assert set(first.test["answer"]) == set(spec.labels)
    rows = [{"answer": label, "question": f"q{i}"} for i, label in enumerate(["a"] * 10 + ["b"] * 5 + ["c"])]
    seed, test = stratified_split(spec.model_copy(update={"labels": {"a": "", "b": "", "c": ""}}), rows, 0.2, 0)
    assert Counter(r["answer"] for r in test) == {"a": 2, "b": 1}  # a single row stays in the seed split
    assert len(seed) + len(test) == len(rows)


def test_duplicates_and_near_copies_of_test_rows_are_removed(tmp_path):
    def line(text: str, label: str = "transfer_fee_charged") -> str:
        return json.dumps({"messages": [{"role": "user", "content": text}],
                           "response": {"model": "m", "choices": [{"message": {"content": label}}]}})

    long = "I sent money to my sister in Spain last week and was charged a fee for the transfer"
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([line(long), line(long + "!"), line(long + " again"),
                               line("charged twice at Tesco", "transaction_charged_twice"),
                               line("double payment at Zara", "transaction_charged_twice"),
                               line("the atm kept my card", "declined_cash_withdrawal"),
                               line("the cash machine declined me", "declined_cash_withdrawal")]))
    spec = get_task("banking77")
    data = load_traces(spec, TracesSource(path=str(path), test_share=0.5, split_seed=3), path)
    s = data.summary
    assert s["duplicates"] == 1  # the same question after normalisation (punctuation)
    assert s["labelled"] == 6 and s["n_seed"] + s["n_test"] + s["decontaminated"] == 6
    # The two long questions (one label: one to each split) share most 8-grams: the seed one is dropped.
    long_rows = [q for q in [*data.seed["question"], *data.test["question"]] if q.startswith("I sent money")]
    assert len(long_rows) == 1 and s["decontaminated"] == 1


def test_too_few_labelled_rows_fail_naming_the_file_and_the_reasons(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("not json\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}],
                                               "response": "no_such_label"}) + "\n")
    with pytest.raises(DataSourceError, match=re.escape(str(path))) as err:
        load_traces(get_task("banking77"), TracesSource(path=str(path)), path)
    assert "invalid_json" in str(err.value) and "label_not_in_set" in str(err.value)


# -- configuration ---------------------------------------------------------------------------
def test_traces_config_from_yaml_env_and_run_config(tmp_path, monkeypatch):
    spec = get_task("banking77")
    assert traces_config(spec) is None
    monkeypatch.setenv("DISTIL_TRACES_BANKING77", str(BANKING))
    cfg = traces_config(spec, {"test_share": 0.3, "mask_pii": None})
    assert cfg.test_share == 0.3 and cfg.mask_pii is True and cfg.labelled is True
    with pytest.raises(DataSourceError, match=r"data\.traces\.test_share"):
        traces_config(spec, {"test_share": 2.0})


@pytest.mark.parametrize("block,field", [
    ({"path": "t.jsonl", "format": "csv"}, "data.traces.format"),
    ({"path": "t.jsonl", "test_share": 1.5}, "data.traces.test_share"),
    ({"path": "t.jsonl", "question_pattern": "^Message: (.*)$"}, "data.traces.question_pattern"),
    ({"path": "t.jsonl", "question_pattern": "(?P<question>"}, "data.traces.question_pattern"),
    ({"path": "t.jsonl", "mask_pii": "sometimes"}, "data.traces.mask_pii"),
    ({"paht": "t.jsonl"}, "data.traces.paht"),
])
def test_malformed_traces_block_names_file_and_field(tmp_path, block, field):
    raw = yaml.safe_load((tasks_dir() / "banking77.yaml").read_text())
    raw["data"]["traces"] = block
    path = tmp_path / "banking77.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(TaskSpecError) as err:
        load_task_file(path)
    assert str(path) in str(err.value) and field in str(err.value)


# -- the seed-set asset ------------------------------------------------------------------------------
def _md(result, key: str) -> dict:
    from distil_platform.assets.metadata import materializations_of

    mat = materializations_of(result, key)[-1]
    return {k: v.value if hasattr(v, "value") else v for k, v in mat.metadata.items()}


def test_seed_set_asset_from_traces_writes_masked_splits_and_says_whose_labels_they_are():
    spec, _ = _with_traces("banking77", BANKING)
    result = dg.materialize(build_seed_set_asset(spec), resources={"results_store": ResultsStoreResource()})
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations())  # valid rows, no leakage, sizes
    value, md = result.output_for_node("banking77"), _md(result, "banking77")
    assert value["source"] == f"traces:{BANKING}" and md["source_note"] == md["labels_note"]
    assert md["labels_note"] == f"labels are your production model's answers ({MODEL})"
    assert "labels are your production model's answers" in md["traces"]
    assert md["trace_rows_rejected"] == 13 and md["trace_rejections_by_reason"]["label_not_in_set"] == 8
    assert md["n_test"] == md["trace_rows_labelled"] - md["n_seed"] - md["trace_decontaminated"]
    assert set(md["pii_masked"]) == {"email", "phone", "card"} and md["production_model"] == MODEL
    stored = [paths.read_parquet(value[k]) for k in ("seed_path", "test_path", "traces_unlabelled_path")]
    assert stored[2].height == 6
    raw = _raw_values()
    summary_text = paths.read_bytes(value["traces_summary_path"]).decode()
    for cell in _cells(*stored) + [summary_text, json.dumps({k: str(v) for k, v in md.items()})]:
        assert not any(v in cell for v in raw)


def test_unlabelled_traces_feed_the_teacher_beside_the_tasks_own_labels(monkeypatch):
    spec = get_task("smart_home")
    monkeypatch.setenv("DISTIL_TRACES_SMART_HOME", str(HOME))
    data, traces = load_task_data(spec, SeedSetConfig(traces_labelled=False))
    assert data.source.startswith("sample:")  # the labels are the task's own
    # 203 calls - 3 unreadable - 1 without a user turn - 10 duplicates; the answers are no matter here.
    assert traces.unlabelled.height == 189 and traces.summary["labelled"] == 0
    assert traces.summary["unlabelled_by_reason"] == {"not_labelled": 196, "error": 3}
    assert traces.summary["labels_note"].endswith("the traces' answers are not used as labels")


def test_trace_rows_go_through_the_teachers_filters_and_are_counted():
    from distil_platform.teacher.self_training import label_rows
    from distil_platform.teacher.synthesis import synthesize

    spec, data = _load("banking77", BANKING)
    seeds, test = data.seed.to_dicts(), data.test.to_dicts()
    texts = data.unlabelled.to_dicts()
    # A stand-in labeller: a valid label for all but one message, one answer outside the label set.
    answers = ["cash_withdrawal_charge"] * (len(texts) - 1) + ["no idea"]
    labelled = label_rows(spec, texts, answers, labeller="stand-in")
    report = synthesize(spec, seeds, test, lambda batch, formats: [], target=0, teacher_model="stand-in",
                        traced=labelled)
    summary = report.summary()
    assert summary["traces_candidates"] == len(texts) == 6
    assert summary["rejections_by_reason"].get("label_not_in_set") == 1
    assert summary["traces_accepted"] == len([r for r in report.accepted if r["origin"] == "traces"])
    assert 0 < summary["traces_accepted"] <= len(texts) - 1
    assert summary["requested"] == len(texts)


# -- the production model's cost row ------------------------------------------------------------------
def _logged_usage(path: Path, model: str) -> tuple[float, float, float, int]:
    rows = []
    for _, rec in _lines(path):
        resp = (rec or {}).get("response")
        if isinstance(resp, dict) and resp.get("model") == model and "usage" in resp:
            u = resp["usage"]
            rows.append((u["prompt_tokens"], u["completion_tokens"],
                         (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)))
    n = len(rows)
    return sum(r[0] for r in rows) / n, sum(r[1] for r in rows) / n, sum(r[2] for r in rows) / n, n


def _plant_with_traces(tmp_path, model: str = MODEL):
    from cost_fixtures import plant_task

    spec, data = _load("banking77", BANKING)
    store = ResultsStore()
    plant_task(store, spec, tmp_path)
    summary = dict(data.summary, production_model=model, usage=dict(data.summary["usage"], model=model))
    (tmp_path / "traces.json").write_text(json.dumps(summary))  # beside the planted seed set's test split
    return spec, store


def test_production_model_is_priced_from_its_logged_usage_at_snapshot_prices(tmp_path):
    from distil_platform.economics.cost_inputs import gather_cost_inputs
    from distil_platform.economics.costs import build_cost_table, cost_table_markdown
    from distil_platform.economics.pricing import build_snapshot

    spec, store = _plant_with_traces(tmp_path)
    snapshot = build_snapshot(models_needed=[r.model for r in spec.comparison_models])
    rows = build_cost_table(gather_cost_inputs(store, spec), snapshot)
    prod = next(r for r in rows if r["role"] == "production")
    assert prod["model"] == f"your current model: {MODEL}"
    prompt, completion, cached, n = _logged_usage(BANKING, MODEL)
    # pricing.yaml's openai/gpt-5-mini: $0.25 in, $2.00 out, $0.025 cached input per MTok.
    expected = (prompt - cached) * 0.25 + cached * 0.025 + completion * 2.00
    assert cached > 0 and prod["usd_per_million_requests"] == pytest.approx(expected)
    assert (prod["input_usd_per_mtok"], prod["output_usd_per_mtok"], prod["cached_input_usd_per_mtok"]) == (0.25, 2.0, 0.025)
    assert prod["price_origin"] == "pricing_file" and prod["cost_source"] == "measured"
    assert prod["mean_prompt_tokens"] == pytest.approx(prompt) and f"{n} calls" in prod["cost_note"]
    assert f"labels are your production model's answers ({MODEL})" in prod["cost_note"]
    student = next(r for r in rows if r["role"] == "student")
    assert prod["cost_ratio_vs_student"] == pytest.approx(expected / student["usd_per_million_requests"])
    assert prod["accuracy"] is None  # its answers are the labels: no score of its own
    assert f"your current model: {MODEL}" in cost_table_markdown(rows)


def test_an_unpriced_production_model_is_shown_not_fatal(tmp_path):
    from distil_platform.assets.costs import snapshot_with_production_models

    from distil_platform.economics.cost_inputs import gather_cost_inputs
    from distil_platform.economics.costs import build_cost_table

    spec, store = _plant_with_traces(tmp_path, model="acme-inhouse-llm-7")
    needed = [r.model for r in spec.comparison_models]
    snapshot, warning = snapshot_with_production_models(store, needed, ["banking77"])
    assert "acme-inhouse-llm-7" in warning
    prod = next(r for r in build_cost_table(gather_cost_inputs(store, spec), snapshot) if r["role"] == "production")
    assert prod["usd_per_million_requests"] is None and prod["cost_note"].startswith("price unknown: acme-inhouse-llm-7")


# -- the production model scored where the labels come from elsewhere (labelled: false) ---------------------
def _unlabelled_banking(tmp_path):
    """banking77 traces with ``labelled: false``, their production answers written like the seed set's,
    and a test set "from another source": 12 of the traced questions, the last 3 labelled differently
    from the production model's answer (it is wrong there), and one question no trace asks."""
    spec, data = _load("banking77", BANKING, labelled=False)
    answers = data.production_answers
    path = tmp_path / "traces_production_answers.parquet"
    answers.write_parquet(path)
    picked = answers.unique("question", keep="first", maintain_order=True).head(12).to_dicts()
    labels = sorted(spec.labels)
    test = [{"id": f"t{i}", "question": r["question"], "context": r["context"],
             "answer": r["answer"] if i < 9 else next(label for label in labels if label != r["answer"])}
            for i, r in enumerate(picked)]
    test.append({"id": "t-other", "question": "A question no production call asked?", "context": "",
                 "answer": labels[0]})
    return spec, data, test, path


def test_unlabelled_traces_keep_the_production_answers_masked(tmp_path):
    spec, data, _, _ = _unlabelled_banking(tmp_path)
    answers = data.production_answers
    assert answers is not None and answers.columns == ["question", "context", "answer", "not_scored"]
    assert answers.height == data.summary["production_answers"] > 100
    assert not any(v in cell for cell in _cells(answers) for v in _raw_values())
    # Answered with a label, in or out of the label set: what the production model said.
    assert set(answers["answer"]) & set(spec.labels)
    _, labelled = _load("banking77", BANKING)
    assert labelled.production_answers is None  # its answers are the labels: nothing to score


def test_a_production_answer_changed_by_masking_is_stored_masked_and_never_scored(tmp_path):
    from distil_platform.assets.evals import production_answers

    def call(message: str, reply: str) -> str:
        return json.dumps({"request": {"model": "gpt-5-mini", "messages": [
            {"role": "system", "content": "Route it."}, {"role": "user", "content": f"Customer message: {message}"}]},
            "response": {"model": MODEL, "choices": [{"message": {"role": "assistant", "content": reply},
                                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 30, "completion_tokens": 3}}})

    leaked = "write to anna.kowalski@example.com"
    path = tmp_path / "calls.jsonl"
    path.write_text("\n".join([call("my card never arrived", "card_arrival"),
                               call("why was I charged twice", leaked)]) + "\n")
    spec, data = _load("banking77", path, labelled=False)
    answers = data.production_answers.to_dicts()
    assert "anna.kowalski@example.com" not in json.dumps(answers) and data.summary["production_answers_masked"] == 1
    assert [a["not_scored"] for a in answers] == ["", "answer changed by PII masking"]
    stored = tmp_path / "answers.parquet"
    data.production_answers.write_parquet(stored)
    test = [{"id": "a", "question": "my card never arrived", "context": "", "answer": "card_arrival"},
            {"id": "b", "question": "why was I charged twice", "context": "", "answer": "transaction_charged_twice"}]
    _, results, note = production_answers(spec, {"traces_production_answers_path": str(stored),
                                                 "production_model": MODEL}, test, judge=None)
    assert [(r.item_id, r.score, r.outcome) for r in results] == [("a", 1.0, ""), ("b", None, "not_scored")]
    assert "2 of 2" in note and "1 not scored: the answer was changed by PII masking" in note


def test_production_answers_are_scored_against_the_test_sets_labels(tmp_path):
    from distil_platform.assets.evals import production_answers

    spec, _, test, path = _unlabelled_banking(tmp_path)
    label, results, note = production_answers(
        spec, {"traces_production_answers_path": str(path), "production_model": MODEL}, test, judge=None)
    assert label == f"your current model: {MODEL}"
    assert [r.item_id for r in results] == [f"t{i}" for i in range(12)]
    assert [r.score for r in results] == [1.0] * 9 + [0.0] * 3
    assert "12 of 13 test question(s)" in note
    assert production_answers(spec, {}, test, judge=None) is None  # no trace answers: nothing to score
    # A test set labelled from the raw traffic still matches the masked traces: its questions are masked alike.
    raw = "Tesco took the payment twice, call me on (555) 201-3344"
    masked = {"traces_production_answers_path": str(path), "production_model": MODEL, "traces_masked": True}
    row = {"id": "t-raw", "question": raw, "context": "", "answer": "transaction_charged_twice"}
    _, results, note = production_answers(spec, masked, [row], judge=None)
    assert [r.item_id for r in results] == ["t-raw"] and "1 of 1" in note
    assert production_answers(spec, {**masked, "traces_masked": False}, [row], judge=None)[1] == []


def test_frontier_evals_store_the_scored_production_answers_and_the_cost_row_shows_them(tmp_path, monkeypatch):
    from cost_fixtures import plant_student_eval, plant_task
    from distil_platform.assets.evals import build_eval_assets
    from distil_platform.assets.keys import task_key
    from distil_platform.resources import LLMResource

    from distil_platform.economics.cost_inputs import gather_cost_inputs
    from distil_platform.economics.costs import build_cost_table
    from distil_platform.economics.pricing import build_snapshot
    from distil_platform.profiles import get_profile
    from distil_platform.storage.store import predictions

    spec, data, test, path = _unlabelled_banking(tmp_path)
    store = ResultsStore()
    info = plant_task(store, spec, tmp_path, api_models={})
    # The student, scored by the same metric (only such items pair): the first 10 planted items right.
    plant_student_eval(store, spec, "student-run-2", info["student"], 10, metric="exact_match")
    # The test set is this one (its ids are the student's): planted rows' ids on the traced questions.
    ids = [r["id"] for r in info["rows"]]
    test = [{**row, "id": i} for row, i in zip(test[:12], ids)]  # the 12 traced questions
    assert len(test) == 12
    test_path = tmp_path / "banking77_test.parquet"
    pl.DataFrame(test).select("id", "question", "answer", "context").write_parquet(test_path)
    (tmp_path / "traces.json").write_text(json.dumps(data.summary))  # labels_are_production_answers: false
    seed_value = {"test_path": str(test_path), "seed_path": str(test_path),
                  "traces_production_answers_path": str(path), "production_model": MODEL}
    student_value = {"run_id": "student-run", "model": info["student"], "score": 0.5, "ci": [0.2, 0.8]}

    @dg.asset(key=dg.AssetKey("banking77"))
    def seed_set():
        return seed_value

    @dg.asset(key=task_key("banking77", "student_eval"))
    def student_eval():
        return student_value

    (_, frontier) = build_eval_assets(spec, get_profile("test"))
    _without_api_keys(monkeypatch)
    result = dg.materialize([seed_set, student_eval, frontier],
                            resources={"llm": LLMResource(), "results_store": ResultsStoreResource()})
    assert result.success
    md = result.asset_materializations_for_node("banking77_frontier_evals")[0].metadata
    assert md["new_model_calls"].value == 0 and "12 of 12" in md["production_model_scored"].value
    label = f"your current model: {MODEL}"
    stored = store.select(predictions, task="banking77", stage="frontier_evals", model=label)
    assert sorted(r["score"] for r in stored) == [0.0] * 3 + [1.0] * 9

    snapshot = build_snapshot(models_needed=[r.model for r in spec.comparison_models])
    rows = build_cost_table(gather_cost_inputs(store, spec), snapshot)
    prod = next(r for r in rows if r["role"] == "production")
    assert prod["model"] == label and prod["n_items"] == 12 and prod["accuracy"] == pytest.approx(0.75)
    assert prod["ci_low"] < 0.75 < prod["ci_high"] and prod["usd_per_million_requests"] > 0
    # Paired with the student on the 12 items both answered (the student: the first 10 right).
    assert prod["n_paired"] == 12 and prod["diff_vs_student"] == pytest.approx(10 / 12 - 9 / 12)
    assert "scored on the 12 test question(s) its traces asked" in prod["cost_note"]
    assert not any(r["model"] == label for r in rows if r["role"] != "production")  # not a baseline too


# -- end to end on the test profile ---------------------------------------------------------------------
def _without_api_keys(monkeypatch) -> None:
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "XAI_API_KEY",
                "MISTRAL_API_KEY"):
        monkeypatch.delenv(key, raising=False)


def _test_profile_resources(monkeypatch) -> dict:
    """The test profile, no API key, and the resources a whole task graph needs."""
    from distil_platform.resources import (
        LLMResource,
        ModelStoreResource,
        ServingResource,
        TeacherEndpointResource,
        TrainerResource,
    )

    from distil_platform.profiles import get_profile

    monkeypatch.setenv("DISTIL_PROFILE", "test")
    _without_api_keys(monkeypatch)
    return {"llm": LLMResource(), "serving": ServingResource(backend="transformers", dtype=get_profile("test").dtype),
            "model_store": ModelStoreResource(), "results_store": ResultsStoreResource(),
            "teacher_endpoint": TeacherEndpointResource(), "trainer": TrainerResource()}


@pytest.mark.slow
def test_a_task_driven_by_traces_end_to_end_on_the_test_profile(monkeypatch):
    from distil_platform.assets import build_task_pipeline_assets
    from distil_platform.assets.costs import compute_cost_table

    resources = _test_profile_resources(monkeypatch)
    spec, _ = _with_traces("banking77", BANKING)
    # The random tiny teacher fails its gate; the override makes it label the trace rows anyway.
    run_config = {"ops": {"banking77_teacher_data": {"config": {"override_teacher_gate": True, "target": 4}}}}
    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        result = dg.materialize(build_seed_set_asset(spec) + build_task_pipeline_assets(spec), resources=resources,
                                instance=instance, run_config=run_config)
        assert result.success
        seed = _md(result, "banking77")
        assert seed["source"] == f"traces:{BANKING}" and seed["trace_rows_unlabelled"] == 6
        teacher = _md(result, "banking77_teacher_data")
        # Every trace row went to the teacher, and each came out accepted or rejected with a reason.
        assert teacher["traces_candidates"] == 6 and teacher["traces_labelled"] >= 1
        assert teacher["generated"] >= teacher["traces_candidates"]
        accepted = pl.read_parquet(teacher["accepted_path"])
        assert accepted.filter(pl.col("origin") == "traces").height == teacher["traces_accepted"]
        student = _md(result, "banking77_student")
        assert student["seed_examples"] == seed["n_seed"]
        evaluation = _md(result, "banking77_student_eval")
        assert evaluation["n"] == seed["n_test"]
        table = compute_cost_table(spec, ResultsStore(), "table-1")
        prod = next(r for r in table["rows"] if r["role"] == "production")
        prompt, completion, cached, _ = _logged_usage(BANKING, MODEL)
        assert prod["usd_per_million_requests"] == pytest.approx((prompt - cached) * 0.25 + cached * 0.025
                                                                 + completion * 2.0)
        assert "labels are your production model's answers" in prod["cost_note"]


@pytest.mark.slow
def test_traces_beside_labels_of_your_own_score_the_production_model_end_to_end(monkeypatch, tmp_path):
    """``labelled: false`` with a hand-labelled test set of the same traffic: the whole test-profile graph
    runs, and the cost table's production row is scored on the test questions its traces asked."""
    import shutil

    from distil_platform.assets import build_task_pipeline_assets
    from distil_platform.assets.costs import compute_cost_table

    resources = _test_profile_resources(monkeypatch)
    spec, data = _load("banking77", BANKING, labelled=False)
    # 24 traced questions (the task's minimum test size is 20), labelled by hand: 18 as the production model
    # answered them, 6 otherwise.
    picked = data.production_answers.unique("question", keep="first", maintain_order=True).head(24).to_dicts()
    labels = sorted(spec.labels)
    data_dir = tmp_path / "labelled"
    data_dir.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "distil_platform/data/banking77/train.jsonl", data_dir)
    (data_dir / "test.jsonl").write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"] if i < 18
                                                             else next(x for x in labels if x != r["answer"])}) + "\n"
                                                 for i, r in enumerate(picked)))
    monkeypatch.setenv("DISTIL_DATA_BANKING77", str(data_dir))
    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        result = dg.materialize(build_seed_set_asset(spec) + build_task_pipeline_assets(spec), resources=resources,
                                instance=instance)
        assert result.success
        seed = _md(result, "banking77")
        assert seed["source"] == f"local:{data_dir}" and seed["n_test"] == 24 and seed["production_answers"] > 100
        frontier = _md(result, "banking77_frontier_evals")
        assert "24 of 24 test question(s)" in frontier["production_model_scored"] and frontier["new_model_calls"] == 0
        table = compute_cost_table(spec, ResultsStore(), "table-1")
        prod = next(r for r in table["rows"] if r["role"] == "production")
        assert prod["model"] == f"your current model: {MODEL}" and prod["accuracy"] == pytest.approx(0.75)
        assert prod["n_paired"] == 24 and prod["student_result"] is not None
        assert "labels are your production model's answers" not in prod["cost_note"]
