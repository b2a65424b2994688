"""Teacher data quality: reply schemas per task type, the quality filters on planted good and bad rows,
the recorded-teacher source on small fixture files, and the teacher stage's wiring (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from jsonschema import Draft202012Validator

from distil_platform.tasks.sources import load_sample
from distil_platform.tasks.spec import load_task_file, tasks_dir
from distil_platform.tasks.validation import validate_row
from distil_platform.teacher import filters as qf
from distil_platform.teacher.recorded import RecordedTeacherError, load_recorded, recorded_path
from distil_platform.teacher.replies import parse_teacher_output
from distil_platform.teacher.schemas import reply_schema, response_format, use_structured_output
from distil_platform.teacher.synthesis import apply_filters, synthesize

DATA = Path(__file__).parent / "data"


def get_task(task):
    # One file, not the registry: a test of one task does not depend on the other YAMLs.
    return load_task_file(tasks_dir() / f"{task}.yaml")


def _sample(task):
    spec = get_task(task)
    d = load_sample(spec)
    return spec, d.seed.to_dicts(), d.test.to_dicts()


def _validator(spec, seeds=()):
    schema = reply_schema(spec, seeds)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _full(spec, item):
    """A reply that fills the request: ``examples_per_request`` copies of ``item``."""
    return [item] * spec.synthesis.examples_per_request


# -- schemas -------------------------------------------------------------------------------------
def test_classification_schema_is_the_label_enum_in_a_top_level_array():
    spec, seeds, _ = _sample("banking77")
    v = _validator(spec)
    label = next(iter(spec.labels))
    n = spec.synthesis.examples_per_request
    assert v.is_valid([{"question": "my card payment had a fee", "answer": label}] * n)
    assert not v.is_valid([{"question": "q", "answer": "not_a_label"}] * n)
    assert not v.is_valid({"examples": [{"question": "q", "answer": label}] * n})  # an object root is not read
    assert not v.is_valid([])  # at least one example
    too_many = [{"question": "q", "answer": label}] * (spec.synthesis.examples_per_request + 1)
    assert not v.is_valid(too_many)
    # every shipped seed, written as the teacher would, fits
    assert v.is_valid([{"question": s["question"], "answer": s["answer"]} for s in seeds[:4]])


def test_reply_must_fill_the_request_unless_the_task_allows_fewer():
    spec, _, _ = _sample("banking77")
    n = spec.synthesis.examples_per_request
    label = next(iter(spec.labels))
    row = {"question": "my card payment had a fee", "answer": label}
    v = _validator(spec)
    assert v.is_valid([row] * n)
    assert not v.is_valid([row] * (n - 1))  # default: minItems = examples_per_request
    lenient = spec.model_copy(update={"synthesis": spec.synthesis.model_copy(update={"min_examples_per_request": 1})})
    assert _validator(lenient).is_valid([row])
    assert reply_schema(spec, max_items=2)["minItems"] == 2  # never above the maximum


@pytest.mark.parametrize("low", [0, 5])
def test_min_examples_per_request_outside_one_to_n_is_a_clear_error(low):
    from pydantic import ValidationError

    from distil_platform.tasks.spec import SynthesisConfig

    with pytest.raises(ValidationError, match="min_examples_per_request must be between 1 and"):
        SynthesisConfig(examples_per_request=4, min_examples_per_request=low)


@pytest.mark.parametrize("task", ["git_assistant", "smart_home"])
def test_tool_schema_has_one_branch_per_tool_with_name_const_and_the_tools_parameters(task):
    spec, seeds, _ = _sample(task)
    v = _validator(spec)
    branches = reply_schema(spec)["items"]["properties"]["answer"]["anyOf"]
    assert [b["properties"]["name"]["const"] for b in branches] == spec.tool_names
    for s in seeds:  # each seed's call validates against its tool's branch
        assert v.is_valid(_full(spec, {"question": s["question"], "answer": json.loads(s["answer"])})), s["id"]
    call = json.loads(seeds[0]["answer"])
    assert not v.is_valid(_full(spec, {"question": "q", "answer": {"name": "no_such_tool", "parameters": {}}}))
    assert not v.is_valid(_full(spec, {"question": "q", "answer": {**call, "parameters": {**call["parameters"], "bogus": 1}}}))


def test_git_schema_rejects_arguments_the_tool_schema_forbids():
    spec = get_task("git_assistant")
    v = _validator(spec)
    assert v.is_valid(_full(spec, {"question": "hard reset", "answer": {"name": "git_reset", "parameters": {"mode": "hard"}}}))
    assert not v.is_valid(_full(spec, {"question": "q", "answer": {"name": "git_reset", "parameters": {"mode": "sideways"}}}))
    assert not v.is_valid(_full(spec, {"question": "q", "answer": {"name": "git_reset", "parameters": {}}}))  # mode required


def test_sql_qa_and_generation_schemas_are_strings_and_context_only_where_the_reply_carries_it():
    sql = get_task("text2sql")
    schema = reply_schema(sql)["items"]
    assert schema["properties"]["answer"]["type"] == "string"
    assert "context" not in schema["properties"]  # the schema DDL is fixed by the request
    assert _validator(sql).is_valid(_full(sql, {"question": "How many?", "answer": "SELECT COUNT(*) FROM t"}))
    assert not _validator(sql).is_valid(_full(sql, {"question": "How many?", "answer": {"sql": "SELECT 1"}}))

    doc, doc_seeds, _ = _sample("docstring")
    item = reply_schema(doc, doc_seeds)["items"]
    assert item["required"] == ["question", "answer", "context"]  # the code comes from the teacher
    pii, pii_seeds, _ = _sample("pii_redaction")
    assert "context" not in reply_schema(pii, pii_seeds)["items"]["properties"]
    qa = get_task("hotpotqa")
    assert reply_schema(qa)["items"]["properties"]["answer"] == {"type": "string", "minLength": 1}


def test_open_book_answers_are_constrained_to_spans_of_the_request_passage():
    """Unconstrained, the CPU teacher's 16 hotpotqa answers were all ``answer_not_in_context``: the
    reply schema now offers only what the validator accepts, plus yes/no."""
    from distil_platform.teacher.schemas import answer_spans

    spec, seeds, test = _sample("hotpotqa")
    context = seeds[0]["context"]
    item = reply_schema(spec, seeds, context=context)["items"]
    spans = item["properties"]["answer"]["enum"]
    assert spans[:2] == ["yes", "no"] and len(spans) == len(set(spans)) > 10
    assert "The" not in spans and "It" not in spans  # sentence openers are not answers
    assert not any(s.endswith(" J.") for s in spans)  # nor does a span end on an initial
    for span in spans:  # everything the schema allows, the validator accepts
        assert validate_row(spec, {"question": "Who wrote it?", "answer": span, "context": context}) is None, span
    covered = sum(r["answer"] in answer_spans(r["context"]) or r["answer"].lower() in ("yes", "no")
                  for r in seeds + test)
    assert covered >= 0.75 * len(seeds + test)  # the gold answers are mostly among the spans
    # Without a request context (the stage-wide schema) the answer stays a free string.
    assert reply_schema(spec)["items"]["properties"]["answer"] == {"type": "string", "minLength": 1}
    assert answer_spans("Kenya; Uganda.", limit=3) == ["yes", "no", "Kenya"]



def test_the_second_answer_is_held_to_the_answer_space_of_the_first():
    """Free text, the 135M teacher's re-answers agreed with none of 16 span answers; the agreement
    filter's second answer now chooses from the same spans (or labels), and is unwrapped for scoring."""
    from distil_platform.teacher.schemas import answer_spans, second_answer_format, unwrap_second_answer

    spec, seeds, _ = _sample("hotpotqa")
    row = {"question": "Which team?", "answer": "x", "context": seeds[0]["context"]}
    fmt = second_answer_format(spec, row)
    schema = fmt["json_schema"]["schema"]
    assert fmt["type"] == "json_schema" and schema["type"] == "object"  # an object root, as OpenAI requires
    assert schema["properties"]["answer"]["enum"] == answer_spans(row["context"])
    validator = Draft202012Validator(schema)
    span = answer_spans(row["context"])[5]
    assert validator.is_valid({"answer": span}) and not validator.is_valid({"answer": "Brasilia"})
    assert unwrap_second_answer(json.dumps({"answer": span})) == span
    assert unwrap_second_answer("Brasilia") == "Brasilia" and unwrap_second_answer(None) is None
    assert unwrap_second_answer('{"label": "x"}') == '{"label": "x"}'  # not this schema's reply: left as is
    # A passage-less row and a free-form task have no answer space to hold to.
    assert second_answer_format(spec, {**row, "context": " "}) is None
    sql, sql_seeds, _ = _sample("text2sql")
    assert second_answer_format(sql, sql_seeds[0]) is None
    bank, bank_seeds, _ = _sample("banking77")
    labels = second_answer_format(bank, bank_seeds[0])["json_schema"]["schema"]["properties"]["answer"]["enum"]
    assert labels == list(bank.labels) and bank_seeds[0]["answer"] in labels
    # Tool calling: a call of one of the tools, unwrapped to the JSON the student writes and scored as one.
    home, home_seeds, _ = _sample("smart_home")
    call_schema = Draft202012Validator(second_answer_format(home, home_seeds[0])["json_schema"]["schema"])
    seed_call = json.loads(home_seeds[0]["answer"]) if isinstance(home_seeds[0]["answer"], str) else home_seeds[0]["answer"]
    assert call_schema.is_valid({"answer": seed_call})
    assert not call_schema.is_valid({"answer": {"name": "open_garage", "parameters": {}}})
    reply = unwrap_second_answer(json.dumps({"answer": seed_call}))
    assert qf.answers_agree(home, home_seeds[0], reply)
    assert not qf.answers_agree(home, home_seeds[0], unwrap_second_answer(json.dumps(
        {"answer": {"name": "get_device_status", "parameters": {"device_type": "thermostat"}}})))

def test_each_teacher_request_gets_the_schema_of_its_own_passage():
    spec, seeds, test = _sample("hotpotqa")
    seen: list[tuple[str, list[str]]] = []

    def generate(batch, formats):
        assert len(formats) == len(batch)
        out = []
        for messages, fmt in zip(batch, formats):
            enum = fmt["json_schema"]["schema"]["items"]["properties"]["answer"]["enum"]
            seen.append((messages[-1]["content"], enum))
            out.append(json.dumps([{"question": "Which one is named in the passage?", "answer": enum[-1]}]))
        return out

    assert spec.synthesis.filters.answer_agreement  # hotpotqa's YAML turns round-trip agreement on

    def second_answer(rows):  # the round trip: right for the first row only
        return [r["answer"] if i == 0 else "yes" for i, r in enumerate(rows)]

    report = synthesize(spec, seeds, test, generate, target=8, teacher_model="t", second_answer=second_answer,
                        reply_format=lambda req: response_format(spec, seeds, context=req.context))
    assert len(seen) == 2 and all(enum[-1] in prompt for prompt, enum in seen)  # each request's own passage
    assert report.rejections.get("answer_not_in_context", 0) == 0 and report.schema_valid == 2
    assert report.filter_stats["answer_agreement"].rejected == {"disagrees": 1} and len(report.accepted) == 1


def test_response_format_and_who_gets_it():
    spec = get_task("trec")
    fmt = response_format(spec)
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "trec_examples"
    assert fmt["json_schema"]["schema"]["type"] == "array"
    assert use_structured_output("auto", served_locally=True, backend="vllm")
    assert not use_structured_output("auto", served_locally=True, backend="transformers")  # ignores it
    assert not use_structured_output("auto", served_locally=False, backend=None)
    assert use_structured_output("json_schema", served_locally=False, backend=None)
    assert not use_structured_output("none", served_locally=True, backend="vllm")
    with pytest.raises(ValueError, match="response_format"):
        use_structured_output("sometimes", served_locally=True, backend="vllm")


def test_a_constrained_reply_parses_into_valid_rows_and_an_object_wrapper_too():
    spec = get_task("git_assistant")
    reply = _full(spec, {"question": "push to upstream",
                         "answer": {"name": "git_push", "parameters": {"remote": "upstream"}}})
    assert _validator(spec).is_valid(reply)
    for text in (json.dumps(reply), json.dumps({"examples": reply})):
        rows, dropped = parse_teacher_output(spec, text)
        assert not dropped and len(rows) == len(reply)
        assert validate_row(spec, rows[0]) is None


# -- question sanity -----------------------------------------------------------------------------
def test_question_sanity_drops_scaffolds_instructions_junk_and_keeps_real_questions():
    spec, seeds, test = _sample("text2sql")
    check = qf.QuestionSanity.from_seeds(spec, seeds).check
    good = "Which customers placed more than three orders in 2023?"
    assert check({"question": good}) is None
    assert check({"question": "Which orders were never shipped, and why..."}) is None  # an ellipsis is prose
    assert check({"question": "Question:"}) == "scaffold"
    assert check({"question": "Question: How many orders are there?"}) == "scaffold"  # template prefix copied
    assert check({"question": "..."}) == "scaffold"
    line = next(x for x in spec.description.splitlines() if len(x.split()) > 6)
    assert check({"question": line}) == "copies_instruction"
    assert check({"question": "Сколько заказов сделал каждый покупатель в прошлом году?"}) == "wrong_language"
    assert check({"question": "orders orders orders orders orders orders orders"}) == "repetitive"
    assert check({"question": "x" * 5000}) == "too_long"
    assert check({"question": "ab"}) == "too_short"
    assert all(check(r) is None for r in seeds + test)  # the real data passes


def test_a_question_that_is_a_tool_or_label_name_is_dropped():
    """The CPU teacher, made to fill 4 examples, wrote the question "git_commit" for a git_commit
    call; banking77 questions that are a label name say as little."""
    git, git_seeds, _ = _sample("git_assistant")
    check = qf.QuestionSanity.from_seeds(git, git_seeds).check
    assert check({"question": "git_commit"}) == "names_an_answer"
    assert check({"question": "Git commit"}) == "names_an_answer"
    assert check({"question": "commit my changes with the message 'fix typo'"}) is None
    bank, bank_seeds, _ = _sample("banking77")
    label = next(iter(bank.labels))
    assert qf.QuestionSanity.from_seeds(bank, bank_seeds).check({"question": label}) == "names_an_answer"
    _, _, git_test = _sample("git_assistant")
    assert all(check(r) is None for r in git_seeds + git_test)  # the real data passes


def test_where_every_seed_asks_a_question_a_statement_is_not_one():
    """Two hotpotqa rows the CPU teacher wrote passed every other check: a question cut off at a
    comma and a ramble ending "So I just answer you."; every seed there ends with "?"."""
    spec, seeds, test = _sample("hotpotqa")
    check = qf.QuestionSanity.from_seeds(spec, seeds).check
    assert check({"question": "Who is the first person to die in the Louisiana Purchase,"}) == "not_a_question"
    assert check({"question": "The answer has been provided to the question. So I just answer you."}) == "not_a_question"
    assert check({"question": "Which city hosts the company founded by Steve Jobs?"}) is None
    assert all(check(r) is None for r in seeds + test)
    # Where seeds are commands or a mix (smart_home, text2sql), no question mark is required.
    home, home_seeds, _ = _sample("smart_home")
    assert qf.QuestionSanity.from_seeds(home, home_seeds).check({"question": "Turn off the kitchen lights"}) is None
    sql, sql_seeds, _ = _sample("text2sql")
    assert qf.QuestionSanity.from_seeds(sql, sql_seeds).check({"question": "List every customer in Paris"}) is None


def test_question_sanity_reads_the_last_user_turn_of_a_chat_history():
    spec, seeds, _ = _sample("smart_home")
    check = qf.QuestionSanity.from_seeds(spec, seeds).check
    junk = json.dumps([{"role": "user", "content": "Question:"}])
    real = json.dumps([{"role": "user", "content": "turn on the kitchen lights"}])
    assert check({"question": junk}) == "scaffold"
    assert check({"question": real}) is None


def test_fixed_instruction_tasks_keep_the_instruction_and_nothing_else():
    spec, seeds, _ = _sample("docstring")
    check = qf.QuestionSanity.from_seeds(spec, seeds).check
    assert check({"question": seeds[0]["question"]}) is None
    assert check({"question": "Write a poem about this code."}) == "not_the_fixed_instruction"


# -- text2sql: sandboxed execution ---------------------------------------------------------------
SCHEMA = "CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT, department TEXT, salary INTEGER);"
RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"


def test_sql_filter_keeps_rows_with_results_and_drops_empty_broken_and_runaway_sql():
    assert qf.sql_nonempty("SELECT name FROM employees", SCHEMA) is None
    assert qf.sql_nonempty("SELECT name FROM employees WHERE 1 = 0", SCHEMA) == "sql_empty_result"
    assert qf.sql_nonempty("SELECT nope FROM employees", SCHEMA) == "sql_sandbox_error"
    # Never ends without the sandbox's time limit; with it, the filter returns a reason.
    assert qf.sql_nonempty(RUNAWAY, SCHEMA, timeout_s=0.3, n_databases=1) == "sql_timeout"


def test_validation_runs_teacher_sql_in_the_sandbox():
    spec = get_task("text2sql")
    row = {"question": "Count forever", "answer": RUNAWAY, "context": SCHEMA}
    assert validate_row(spec, row) == "sql_timeout"  # used to hang the stage
    attach = {"question": "q", "answer": "SELECT * FROM pragma_database_list", "context": SCHEMA}
    assert validate_row(spec, attach) in (None, "sql_execution_error")  # read-only authorizer decides
    ok = {"question": "q", "answer": "SELECT name FROM employees", "context": SCHEMA}
    assert validate_row(spec, ok) is None


# -- tool calls: grounded arguments ---------------------------------------------------------------
def _call(name, **params):
    return json.dumps({"name": name, "parameters": params})


def test_grounded_arguments_drop_invented_values_and_keep_stated_or_default_ones():
    spec = get_task("git_assistant")
    assert qf.ungrounded_arguments(spec, {"question": "commit with message 'fix login bug'",
                                          "answer": _call("git_commit", message="fix login bug")}) == []
    assert qf.ungrounded_arguments(spec, {"question": "commit my work",
                                          "answer": _call("git_commit", message="Refactor the parser")}) == ["message"]
    # defaults need not be stated; booleans and enums are left to the agreement filter
    assert qf.ungrounded_arguments(spec, {"question": "push my branch",
                                          "answer": _call("git_push", remote="origin", force=False)}) == []
    assert qf.ungrounded_arguments(spec, {"question": "show 7 commits",
                                          "answer": _call("git_log", limit=7, oneline=True)}) == []
    assert qf.ungrounded_arguments(spec, {"question": "show some commits",
                                          "answer": _call("git_log", limit=7)}) == ["limit"]
    assert qf.ungrounded_arguments(spec, {"question": "stage a.py", "answer": _call("git_add", files=["a.py", "b.py"])}) == ["files"]
    # a file named by its stem, a path by its parts; an invented file is still ungrounded
    assert qf.ungrounded_arguments(spec, {"question": "stage the README and the docs folder",
                                          "answer": _call("git_add", files=["README.md", "docs/"])}) == []
    assert qf.ungrounded_arguments(spec, {"question": "stage the package file and the lock file",
                                          "answer": _call("git_add", files=["package.json", "yarn.lock"])}) == ["files"]


def test_grounding_in_a_chat_history_uses_earlier_turns():
    spec = get_task("smart_home")
    history = json.dumps([
        {"role": "user", "content": "what's on in the bedroom?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "get_device_status", "arguments": json.dumps({"device_type": "all", "room": "bedroom"})}}]},
        {"role": "user", "content": "and the lights there?"},
    ])
    ok = {"question": history, "answer": _call("get_device_status", device_type="lights", room="bedroom")}
    bad = {"question": history, "answer": _call("get_device_status", device_type="lights", room="garden shed")}
    assert qf.ungrounded_arguments(spec, ok) == []
    assert qf.ungrounded_arguments(spec, bad) == ["room"]


def test_an_enum_value_the_request_contradicts_is_rejected_and_one_it_does_not_name_is_left_alone():
    spec = get_task("smart_home")
    assert qf.contradicted_enums(spec, {"question": "Unlock the back door please",
                                        "answer": _call("lock_door", door="front", state="unlock")}) == ["door"]
    assert qf.contradicted_enums(spec, {"question": "Unlock the back door please",
                                        "answer": _call("lock_door", door="back", state="lock")}) == ["state"]
    # "living_room" is named as "living room"; naming several values keeps any of them.
    assert qf.contradicted_enums(spec, {"question": "Lights off in the living room and on in the office",
                                        "answer": _call("toggle_lights", room="living_room", state="off")}) == []
    assert qf.contradicted_enums(spec, {"question": "Turn on the living room lights",
                                        "answer": _call("toggle_lights", room="kitchen", state="on")}) == ["room"]
    # A value the request does not name at all ("lights out" means off) is not judged here.
    assert qf.contradicted_enums(spec, {"question": "Lights out in the kitchen",
                                        "answer": _call("toggle_lights", room="kitchen", state="off")}) == []
    # In a chat history only the latest request counts: earlier turns name earlier calls' values.
    history = json.dumps([
        {"role": "user", "content": "I'm home, unlock the front door"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "lock_door", "arguments": {"door": "front", "state": "unlock"}}}]},
        {"role": "user", "content": "What's the status of everything?"}])
    assert qf.contradicted_enums(spec, {"question": history, "answer": _call("get_device_status", device_type="all")}) == []
    # Through the stage's filters: its own reason, after grounding.
    from distil_platform.teacher.synthesis import apply_filters

    rows = [{"question": "Please unlock the back door for me now", "answer": _call("lock_door", door="front", state="unlock"),
             "origin": "teacher"},
            {"question": "Please unlock the back door for me now", "answer": _call("lock_door", door="back", state="unlock"),
             "origin": "teacher"}]
    kept, rejected, stats = apply_filters(spec, rows, _sample("smart_home")[1])
    assert [json.loads(r["answer"])["parameters"]["door"] for r in kept] == ["back"]
    assert rejected[0]["rejected_by"] == "enum_consistency: contradicted_enum (door)"
    assert dict(stats["enum_consistency"].rejected) == {"contradicted_enum (door)": 1}


# -- answer agreement ----------------------------------------------------------------------------
def test_agreement_filter_drops_the_mislabelled_row():
    spec, seeds, _ = _sample("banking77")
    good = {"question": "I was charged twice for the same taxi ride, please refund one",
            "answer": "transaction_charged_twice", "context": "", "origin": "teacher"}
    wrong = {"question": "The ATM only gave me 20 of the 100 I asked for but took the full amount",
             "answer": "card_payment_fee_charged", "context": "", "origin": "teacher"}
    truth = {good["question"]: "transaction_charged_twice", wrong["question"]: "wrong_amount_of_cash_received"}
    asked = []

    def second(rows):
        asked.extend(r["question"] for r in rows)
        return [truth[r["question"]] for r in rows]

    cfg = spec.synthesis.filters.model_copy(update={"answer_agreement": True})
    kept, rejected, stats = apply_filters(spec, [good, wrong], seeds, filters=cfg, second_answer=second)
    assert [r["question"] for r in kept] == [good["question"]]
    assert rejected[0]["rejected_by"] == "answer_agreement: disagrees"
    assert stats["answer_agreement"].as_dict() == {"checked": 2, "passed": 1, "rejected": {"disagrees": 1}}
    assert sorted(asked) == sorted(truth)
    with pytest.raises(ValueError, match="answer_agreement"):
        apply_filters(spec, [good], seeds, filters=cfg, second_answer=None)


def test_agreement_uses_the_tasks_metric():
    git = get_task("git_assistant")
    row = {"question": "push", "answer": _call("git_push")}
    assert qf.answers_agree(git, row, _call("git_push", remote="origin"))  # defaults filled: equivalent
    assert not qf.answers_agree(git, row, _call("git_pull"))
    assert not qf.answers_agree(git, row, None)
    sql = get_task("text2sql")
    srow = {"question": "names", "answer": "SELECT name FROM employees", "context": SCHEMA}
    assert qf.answers_agree(sql, srow, "SELECT e.name FROM employees AS e")
    assert not qf.answers_agree(sql, srow, "SELECT department FROM employees")


# -- docstring: decontaminate the code, not the instruction --------------------------------------
def test_docstring_copy_of_a_test_function_is_dropped_and_a_new_function_kept():
    spec, seeds, test = _sample("docstring")
    instruction = seeds[0]["question"]
    copy = {"question": instruction, "answer": "Return something.", "context": test[0]["context"]}
    new_code = "def add_tax(price, rate=0.2):\n    if rate < 0:\n        raise ValueError('negative rate')\n    return price * (1 + rate)\n"
    new = {"question": instruction, "answer": "Add tax to a price.\n\nArgs:\n    price: Net price.\n    rate: Tax rate.\n\n"
           "Returns:\n    The gross price.\n\nRaises:\n    ValueError: If rate is negative.", "context": new_code}
    reply = json.dumps([copy, new])
    report = synthesize(spec, seeds, test, lambda batch, formats: [reply] * len(batch), target=1, teacher_model="t")
    assert report.decontaminated == 1
    assert [r["context"] for r in report.accepted] == [new_code]
    assert report.summary()["decontaminated_on"] == "context"


# -- recorded teacher ----------------------------------------------------------------------------
def _git_recorded_report(path):
    spec, seeds, test = _sample("git_assistant")
    rows = load_recorded(spec, path, teacher_model="fixture-teacher")
    return synthesize(spec, seeds, test, lambda batch, formats: pytest.fail("no model is asked"), target=0,
                      teacher_model="fixture-teacher", recorded=rows)


def test_recorded_jsonl_goes_through_validation_filters_dedup_and_decontamination():
    report = _git_recorded_report(DATA / "recorded_git_assistant.jsonl")
    s = report.summary()
    assert s["source"] == "recorded" and s["teacher_requests"] == 0
    assert s["funnel"] == {"requested": 10, "generated": 10, "schema_valid": 8, "passed_question_sanity": 7,
                           "passed_grounded_arguments": 6, "passed_enum_consistency": 6, "deduplicated": 4,
                           "decontaminated": 3, "accepted": 3}
    assert s["rejections_by_reason"] == {"unknown_tool": 1, "empty_answer": 1, "question_sanity: scaffold": 1,
                                         "grounded_arguments: ungrounded_argument (message)": 1}
    assert s["duplicates_of_seeds"] == 1 and s["exact_duplicates"] == 2
    assert {r["question"] for r in report.accepted} == {
        "push the hotfix branch to upstream", "show the last 5 commits as one line each",
        "create and switch to branch feature/login"}
    assert {r["origin"] for r in report.accepted} == {"recorded"}
    assert {r["teacher_model"] for r in report.accepted} == {"fixture-teacher"}
    assert report.teacher_accepted == 3
    fates = {a["status"].split(":")[0].split(" (")[0] for a in report.audit}
    assert fates == {"accepted", "invalid", "rejected", "duplicate", "contaminated"}


def test_recorded_parquet_and_csv_and_sampling(tmp_path):
    src = DATA / "recorded_git_assistant.jsonl"
    parquet = tmp_path / "rows.parquet"
    pl.read_ndjson(src).write_parquet(parquet)
    assert _git_recorded_report(parquet).summary()["funnel"] == _git_recorded_report(src).summary()["funnel"]
    spec = get_task("git_assistant")
    sample = load_recorded(spec, src, max_rows=4, sample_seed=1)
    assert len(sample) == 4 and sample == load_recorded(spec, src, max_rows=4, sample_seed=1)

    bank, seeds, test = _sample("banking77")
    rows = load_recorded(bank, DATA / "recorded_banking77.csv")
    report = synthesize(bank, seeds, test, lambda b, f: [], target=0, teacher_model="r", recorded=rows)
    assert report.summary()["rejections_by_reason"] == {"label_not_in_set": 1, "question_sanity: scaffold": 1}
    assert [r["answer"] for r in report.accepted] == ["cash_withdrawal_charge"]


def test_recorded_errors_name_the_file(tmp_path, monkeypatch):
    spec = get_task("git_assistant")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n")
    with pytest.raises(RecordedTeacherError, match=r"bad\.jsonl: missing column `question`"):
        load_recorded(spec, bad)
    with pytest.raises(RecordedTeacherError, match="not found"):
        load_recorded(spec, tmp_path / "absent.jsonl")
    (tmp_path / "rows.xlsx").write_bytes(b"PK")
    with pytest.raises(RecordedTeacherError, match="unsupported"):
        load_recorded(spec, tmp_path / "rows.xlsx")
    monkeypatch.delenv("DISTIL_RECORDED_GIT_ASSISTANT", raising=False)
    with pytest.raises(RecordedTeacherError, match="DISTIL_RECORDED_GIT_ASSISTANT"):
        recorded_path(spec, None)
    monkeypatch.setenv("DISTIL_RECORDED_GIT_ASSISTANT", str(bad))
    assert recorded_path(spec, None) == bad
    assert recorded_path(spec, None, override="/x/y.jsonl") == Path("/x/y.jsonl")


# -- YAML switches -------------------------------------------------------------------------------
def test_filters_and_sources_are_switchable_in_the_task_yaml(tmp_path):
    import yaml

    from distil_platform.tasks.spec import TaskSpecError
    from distil_platform.teacher.synthesis import active_filters

    raw = yaml.safe_load((tasks_dir() / "text2sql.yaml").read_text())
    assert active_filters(load_task_file(tasks_dir() / "text2sql.yaml")) == ["question_sanity", "sql_nonempty"]
    raw["synthesis"]["filters"] = {"question_sanity": False, "sql_nonempty": False, "answer_agreement": True}
    raw["synthesis"]["source"] = {"local": "recorded"}
    raw["synthesis"]["recorded"] = {"path": "rows.jsonl"}
    path = tmp_path / "text2sql.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_task_file(path)
    assert active_filters(spec) == ["answer_agreement"]
    assert spec.synthesis.source.for_profile("local") == "recorded"
    assert recorded_path(spec, spec.synthesis.recorded) == tmp_path / "rows.jsonl"  # relative to the YAML
    raw["synthesis"]["source"] = {"gpu": "oracle"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(TaskSpecError, match=r"(?s)text2sql\.yaml.*synthesis.*source.gpu"):
        load_task_file(path)
    raw["synthesis"]["source"] = {}
    raw["synthesis"]["filters"] = {"question_sanity": "maybe"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(TaskSpecError, match=r"synthesis\.filters\.question_sanity"):
        load_task_file(path)


# -- self-training -------------------------------------------------------------------------------
def test_self_training_rows_map_labels_and_carry_confidence():
    from distil_platform.teacher.self_training import answer_confidence, label_rows, unlabelled_texts

    spec, seeds, test = _sample("banking77")
    texts = unlabelled_texts([{"question": "I was charged twice for one coffee"}, {"question": "  "},
                              {"context": "the ATM kept my card and gave no cash"}, {"question": "my transfer had a fee"}])
    assert [t["question"] for t in texts] == ["I was charged twice for one coffee", "the ATM kept my card and gave no cash",
                                              "my transfer had a fee"]
    assert answer_confidence([{"logprob": -0.1}, {"logprob": -0.2}]) == pytest.approx(0.7408, abs=1e-4)
    assert answer_confidence(None) is None and answer_confidence([{"token": "x"}]) is None
    answers = ["`Transaction_Charged_Twice`.", "declined_cash_withdrawal", "no idea"]
    rows = label_rows(spec, texts, answers, [0.9, 0.2, None], labeller="m")
    assert [r["answer"] for r in rows] == ["transaction_charged_twice", "declined_cash_withdrawal", "no idea"]
    report = synthesize(spec, seeds, test, lambda b, f: [], target=0, teacher_model="m", recorded=rows,
                        source_name="self_training")
    s = report.summary()
    assert s["source"] == "self_training"
    assert s["rejections_by_reason"] == {"label_not_in_set": 1, "min_confidence: low_confidence": 1}
    assert [r["answer"] for r in report.accepted] == ["transaction_charged_twice"]
    with pytest.raises(ValueError, match="self-training applies"):
        label_rows(get_task("text2sql"), texts, answers)


def test_teacher_budget_has_room_for_the_code_a_docstring_teacher_writes():
    """Docstring examples carry their code: 4 of them did not fit the answer-sized budget (2 of 4
    local replies were cut off mid-array, ``no_json_in_response``)."""
    from distil_platform.assets.common import teacher_max_tokens

    from distil_platform.profiles import get_profile

    local = get_profile("local")
    doc, doc_seeds, _ = _sample("docstring")
    sql, sql_seeds, _ = _sample("text2sql")
    per_request = doc.synthesis.examples_per_request
    mean_context_chars = sum(len(s["context"]) for s in doc_seeds) / len(doc_seeds)
    assert teacher_max_tokens(doc, local, doc_seeds) >= teacher_max_tokens(doc, local) + per_request * mean_context_chars / 3
    # A context the request fixes (text2sql's schema) is not written by the teacher: no extra room.
    assert teacher_max_tokens(sql, local, sql_seeds) == teacher_max_tokens(sql, local)


def test_sql_subset_pattern_holds_the_teacher_to_the_request_schema():
    import re

    from distil_platform.teacher.schemas import schema_columns, sql_answer_pattern, sql_subset_for

    spec, seeds, test = _sample("text2sql")
    rows = seeds + test
    # The subset covers what the task asks: nearly every shipped gold query matches its own schema.
    matched = sum(bool(re.fullmatch(sql_answer_pattern(r["context"]), r["answer"].strip())) for r in rows)
    assert matched >= 0.95 * len(rows)
    ddl = seeds[0]["context"]
    by_table = schema_columns(ddl)
    assert "salary" in by_table["employees"] and "budget" not in by_table["employees"]
    pattern = sql_answer_pattern(ddl)
    assert re.fullmatch(pattern, "SELECT AVG(e.salary) FROM employees e WHERE e.is_manager = 1;")
    assert not re.fullmatch(pattern, "SELECT AVG(wage) FROM employees;")  # no such column
    assert not re.fullmatch(pattern, "SELECT budget FROM employees;")  # a column of another table
    assert re.fullmatch(pattern, "SELECT d.budget FROM employees e JOIN departments d ON e.department_id = d.id;")
    assert not re.fullmatch(pattern, "SELECT * FROM staff;")  # no such table
    assert not re.fullmatch(pattern, "DELETE FROM employees;")
    assert not re.fullmatch(pattern, "SELECT salary FROM employees; DROP TABLE employees;")
    assert sql_answer_pattern("not sql at all") is None
    # Per profile: the local teacher is held to it, gpu writes free SQL; the schema says so.
    assert sql_subset_for(spec, "local") and not sql_subset_for(spec, "gpu")
    local = reply_schema(spec, seeds, context=ddl, sql_subset=True)["items"]["properties"]["answer"]
    assert local == {"type": "string", "pattern": pattern}
    assert "pattern" not in reply_schema(spec, seeds, context=ddl)["items"]["properties"]["answer"]
    v = Draft202012Validator(reply_schema(spec, seeds, context=ddl, sql_subset=True))
    good = {"question": "What is the average manager salary?", "answer": "SELECT AVG(salary) FROM employees;"}
    assert v.is_valid(_full(spec, good))
    assert not v.is_valid(_full(spec, {**good, "answer": "SELECT DISTINCT DISTINCT salary FROM employees"}))


def test_constrain_sql_accepts_only_free_or_subset():
    from pydantic import ValidationError

    from distil_platform.tasks.spec import SynthesisConfig

    with pytest.raises(ValidationError, match="constrain_sql.local must be free or subset"):
        SynthesisConfig(constrain_sql={"local": "strict"})


def test_a_fixed_instruction_is_a_constant_question_in_the_teacher_schema():
    """docstring's seeds all ask one instruction: 4 of 9 teacher rows rewrote it and were dropped
    (``not_the_fixed_instruction``). The schema now fixes it; the teacher writes the code."""
    doc, doc_seeds, _ = _sample("docstring")
    (instruction,) = {s["question"] for s in doc_seeds}
    item = reply_schema(doc, doc_seeds)["items"]
    assert item["properties"]["question"] == {"type": "string", "const": instruction}
    trec, trec_seeds, _ = _sample("trec")
    assert reply_schema(trec, trec_seeds)["items"]["properties"]["question"] == {"type": "string", "minLength": 1}
