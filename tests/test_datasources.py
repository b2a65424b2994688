"""Data sources: local dir (jsonl/csv, public layout) -> HF dataset -> shipped sample, and the
errors that name the file, row and field."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import polars as pl
import pytest
import yaml

from distil_platform.tasks import hf_hub
from distil_platform.tasks.hf_hub import hf_available
from distil_platform.tasks.sources import COLUMNS, DataSourceError, HubUnavailableError, load_seed_and_test
from distil_platform.tasks.spec import get_task, load_task_file, load_tasks
from distil_platform.tasks.validation import find_overlaps, validate_frame

DDL = "CREATE TABLE pets (\n  id INTEGER PRIMARY KEY,\n  name TEXT NOT NULL,\n  species TEXT\n);"


def _spec_with(tmp_path: Path, task: str, data: dict):
    """A copy of a shipped task whose `data` section is replaced (the YAML lives in tmp_path)."""
    raw = yaml.safe_load((Path(get_task(task).source_file)).read_text())
    raw["data"] = {**data, "sample": task}
    tasks = tmp_path / "tasks"
    tasks.mkdir(exist_ok=True)
    path = tasks / f"{task}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_task_file(path)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _t2s_public(question: str, sql: str) -> dict:
    return {"question": f"Schema:\n{DDL}\n\nQuestion: {question}", "answer": sql}


T2S_TRAIN = [_t2s_public("How many pets are there?", "SELECT COUNT(*) FROM pets;"),
             _t2s_public("List all cats.", "SELECT name FROM pets WHERE species = 'cat';")]
T2S_TEST = [_t2s_public("How many dogs are there?", "SELECT COUNT(*) FROM pets WHERE species = 'dog';")]


# -- sample route ------------------------------------------------------------------------------
def test_every_task_loads_its_shipped_sample():
    for spec in load_tasks().values():
        data = load_seed_and_test(spec)
        assert data.source == f"sample:{spec.sample_dir()}"
        for frame, minimum in ((data.seed, 20), (data.test, 30)):
            assert frame.columns == list(COLUMNS)
            assert all(dtype == pl.String for dtype in frame.dtypes)
            assert frame.height >= minimum
        assert data.files[:2] == [str(spec.sample_dir() / "train.jsonl"), str(spec.sample_dir() / "test.jsonl")]
    banking = load_seed_and_test(get_task("banking77"))
    assert banking.unstructured is not None and banking.unstructured.columns == ["id", "context"]
    assert banking.unstructured.height >= 30


# -- local route -------------------------------------------------------------------------------
def test_local_jsonl_in_public_text2sql_layout_is_split_into_context_and_question(tmp_path, monkeypatch):
    data_dir = tmp_path / "t2s"
    _write_jsonl(data_dir / "train.jsonl", T2S_TRAIN)
    _write_jsonl(data_dir / "test.jsonl", T2S_TEST)
    monkeypatch.setenv("DISTIL_DATA_TEXT2SQL", str(data_dir))
    spec = get_task("text2sql")
    data = load_seed_and_test(spec)  # automatic: the configured local dir comes first
    assert data.source == f"local:{data_dir.resolve()}"
    assert data.seed["question"].to_list() == ["How many pets are there?", "List all cats."]
    assert data.seed["context"].to_list() == [DDL, DDL]
    assert data.seed["id"].to_list() == ["seed-0001", "seed-0002"]
    assert data.test["answer"].to_list() == ["SELECT COUNT(*) FROM pets WHERE species = 'dog';"]
    assert validate_frame(spec, data.seed) == [] and validate_frame(spec, data.test) == []
    # Forcing the sample ignores the local dir.
    assert load_seed_and_test(spec, source="sample").source.startswith("sample:")


def test_local_csv_with_text2sql_split_and_multiline_context(tmp_path):
    t2s_dir = tmp_path / "t2s_csv"
    _write_csv(t2s_dir / "train.csv", T2S_TRAIN)
    _write_csv(t2s_dir / "test.csv", T2S_TEST)
    spec = _spec_with(tmp_path, "text2sql", {"local_dir": str(t2s_dir)})
    data = load_seed_and_test(spec, source="local")
    assert data.seed["context"].to_list() == [DDL, DDL]
    assert data.test["question"].to_list() == ["How many dogs are there?"]

    qa_dir = tmp_path / "qa_csv"
    context = "Lake Tahoe\nLake Tahoe is a lake on the border of California and Nevada.\n\nReno\nReno is a city in Nevada."
    row = {"question": "Which state is both Reno and Lake Tahoe in?", "answer": "Nevada", "context": context}
    _write_csv(qa_dir / "train.csv", [row])
    _write_csv(qa_dir / "test.csv", [{**row, "question": "Where is Reno?"}])
    _write_csv(qa_dir / "unstructured.csv", [{"context": "Carson City\nCarson City is the capital of Nevada."}])
    spec = _spec_with(tmp_path, "hotpotqa", {"local_dir": "../qa_csv"})  # relative to the YAML file
    data = load_seed_and_test(spec)
    assert data.source == f"local:{qa_dir.resolve()}"
    assert data.seed["context"].to_list() == [context]
    assert data.unstructured["context"].to_list() == ["Carson City\nCarson City is the capital of Nevada."]
    assert str(qa_dir.resolve() / "unstructured.csv") in data.files


def test_tool_call_answers_become_canonical_json(tmp_path):
    data_dir = tmp_path / "git"
    canonical = '{"name": "git_push", "parameters": {"force": true, "remote": "origin"}}'
    _write_jsonl(data_dir / "train.jsonl", [
        {"id": "a", "question": "force push", "answer": {"name": "git_push", "parameters": {"remote": "origin", "force": True}}},
        {"id": "b", "question": "force push it", "answer": '{"name":"git_push","arguments":"{\\"remote\\":\\"origin\\",\\"force\\":true}"}'},
        {"id": "c", "question": "broken", "answer": "git push --force"},
    ])
    _write_jsonl(data_dir / "test.jsonl", [{"question": "push", "answer": '{"parameters": {}, "name": "git_push"}'}])
    spec = _spec_with(tmp_path, "git_assistant", {"local_dir": str(data_dir)})
    data = load_seed_and_test(spec)
    assert data.seed["answer"].to_list()[:2] == [canonical, canonical]
    # Not a tool call: kept as written for validation to report with its row and field.
    assert data.seed["answer"][2] == "git push --force"
    assert validate_frame(spec, data.seed) == [(2, "c", "answer", "tool_call_unparseable")]
    assert data.test["answer"][0] == '{"name": "git_push", "parameters": {}}'


def test_forced_source_errors(tmp_path):
    spec = get_task("ecommerce")
    with pytest.raises(DataSourceError, match="`data.local_dir`") as err:
        load_seed_and_test(spec, source="local")
    assert "DISTIL_DATA_ECOMMERCE" in str(err.value) and spec.source_file in str(err.value)
    with pytest.raises(DataSourceError, match="`data.hf`"):
        load_seed_and_test(spec, source="hf")
    with pytest.raises(ValueError, match="source must be one of"):
        load_seed_and_test(spec, source="s3")


# -- HF route, exercised through local datasets -----------------------------------------------
@pytest.fixture(scope="module")
def banking_like_dataset(tmp_path_factory):
    import datasets

    names = sorted(get_task("banking77").labels) + ["card_arrival", "pin_blocked"]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})

    def split(n_per_label: int, tag: str):
        rows = [(f"{tag} message {i} about {name.replace('_', ' ')}", k)
                for i in range(n_per_label) for k, name in enumerate(names)]
        return datasets.Dataset.from_dict({"text": [r[0] for r in rows], "label": [r[1] for r in rows]},
                                          features=features)

    dd = datasets.DatasetDict({"train": split(8, "train"), "test": split(14, "test")})
    root = tmp_path_factory.mktemp("hf")
    dd.save_to_disk(str(root / "saved"))
    parquet_dir = root / "parquet"
    parquet_dir.mkdir()
    dd["train"].to_parquet(str(parquet_dir / "train.parquet"))
    dd["test"].to_parquet(str(parquet_dir / "test.parquet"))
    return root


@pytest.mark.parametrize("layout", ["saved", "parquet"])
def test_hf_route_maps_classlabels_subset_and_per_label_caps(tmp_path, banking_like_dataset, layout):
    hf = dict(get_task("banking77").data.hf.model_dump(exclude_none=True), path=str(banking_like_dataset / layout))
    spec = _spec_with(tmp_path, "banking77", {"hf": hf, "unstructured_file": "unstructured.jsonl"})
    data = load_seed_and_test(spec)  # the hub is offline in tests, but a local dataset path is usable
    assert data.source == f"hf:{banking_like_dataset / layout}"
    labels = set(spec.labels)
    for frame, cap in ((data.seed, 6), (data.test, 12)):
        counts = frame.group_by("answer").len()
        assert set(counts["answer"]) == labels  # ClassLabel ints -> names, subset only
        assert counts["len"].to_list() == [cap] * 8  # per-label cap
        assert frame["question"].str.contains("about").all()
    assert validate_frame(spec, data.seed) == []
    assert data.seed["id"][0] == "train-0"
    assert data.unstructured is not None  # the task's unstructured texts come from the sample


def test_hf_route_trec_like_parquet_with_total_caps_and_hotpot_context(tmp_path):
    import datasets

    coarse = datasets.ClassLabel(names=["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"])
    trec = datasets.Dataset.from_dict(
        {"text": [f"Question number {i} ?" for i in range(60)], "coarse_label": [i % 6 for i in range(60)],
         "fine_label": [0] * 60},
        features=datasets.Features({"text": datasets.Value("string"), "coarse_label": coarse,
                                    "fine_label": datasets.Value("int64")}),
    )
    trec_dir = tmp_path / "trec"
    trec_dir.mkdir()
    trec.to_parquet(str(trec_dir / "train.parquet"))
    trec.select(range(30)).to_parquet(str(trec_dir / "test.parquet"))
    hf = dict(get_task("trec").data.hf.model_dump(exclude_none=True), path=str(trec_dir), max_seed_rows=3)
    data = load_seed_and_test(_spec_with(tmp_path, "trec", {"hf": hf}), source="hf")
    assert data.seed.height == 18 and data.seed["answer"].value_counts()["count"].to_list() == [3] * 6
    assert data.test.height == 30

    hotpot = datasets.Dataset.from_dict({
        "id": ["5a8b57f25542995d1e6f1371", "5a8c7595554299585d9e36b6"],
        "question": ["Were Scott Derrickson and Ed Wood of the same nationality?", "Who directed Sinister?"],
        "answer": ["yes", "Scott Derrickson"],
        "context": [
            {"title": ["Scott Derrickson", "Ed Wood"],
             "sentences": [["Scott Derrickson is an American director.", " He lives in Los Angeles."],
                           ["Ed Wood was an American filmmaker."]]},
            {"title": ["Sinister (film)"], "sentences": [["Sinister is a 2012 film directed by Scott Derrickson."]]},
        ],
    })
    hotpot_dir = tmp_path / "hotpot"
    datasets.DatasetDict({"train": hotpot, "validation": hotpot}).save_to_disk(str(hotpot_dir))
    hf = dict(get_task("hotpotqa").data.hf.model_dump(exclude_none=True), path=str(hotpot_dir))
    spec = _spec_with(tmp_path, "hotpotqa", {"hf": hf})
    data = load_seed_and_test(spec, source="hf")
    assert data.seed["context"][0] == (
        "Scott Derrickson\nScott Derrickson is an American director. He lives in Los Angeles.\n\n"
        "Ed Wood\nEd Wood was an American filmmaker."
    )
    assert data.seed["id"][0] == "5a8b57f25542995d1e6f1371"
    assert validate_frame(spec, data.seed) == []


def test_hf_mapping_errors_name_the_field(tmp_path, banking_like_dataset):
    base = dict(get_task("banking77").data.hf.model_dump(exclude_none=True), path=str(banking_like_dataset / "saved"))
    cases = [
        ({"label_subset": ["card_payment_fee_charged", "no_such_intent"]}, "`data.hf.label_subset`"),
        ({"question_field": "utterance"}, "`data.hf.question_field`"),
        ({"answer_field": "text"}, "`data.hf.label_names_from_feature`"),
        ({"test_split": "validation"}, "split 'validation'"),
    ]
    for change, needle in cases:
        spec = _spec_with(tmp_path, "banking77", {"hf": {**base, **change}})
        with pytest.raises(DataSourceError) as err:
            load_seed_and_test(spec, source="hf")
        assert needle in str(err.value), (change, str(err.value))


@pytest.fixture
def fresh_hub_probe(monkeypatch):
    """An empty per-process probe cache, and a counter of the probe's connection attempts."""
    import socket

    monkeypatch.setattr(hf_hub, "_HUB_PROBES", {})
    attempts = []
    real = socket.create_connection

    def counting(address, *args, **kwargs):
        attempts.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return attempts


def test_hub_offline_falls_back_to_sample_and_forced_hf_says_why(monkeypatch, fresh_hub_probe):
    spec = get_task("banking77")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hf_available(spec.data.hf)
    data = load_seed_and_test(spec)
    assert data.source.startswith("sample:") and "HF_HUB_OFFLINE" in data.note
    with pytest.raises(HubUnavailableError, match="hf:PolyAI/banking77"):
        load_seed_and_test(spec, source="hf")
    assert fresh_hub_probe == []  # offline: the hub is never probed


def test_unreachable_hub_is_probed_once_and_never_retried(monkeypatch, fresh_hub_probe):
    """HF_HUB_OFFLINE unset (e.g. `dagster dev` by hand) and nothing listening at HF_ENDPOINT: one
    connection attempt for the whole process, no `datasets.load_dataset` call, the sample is used and
    the reason is recorded for the seed asset's metadata."""
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    hub_calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: hub_calls.append(a) or pytest.fail("hub tried"))
    for task in ("banking77", "trec", "hotpotqa", "banking77"):
        data = load_seed_and_test(get_task(task))
        assert data.source.startswith("sample:"), task
        assert "unreachable" in data.note and "127.0.0.1:9" in data.note, data.note
    assert fresh_hub_probe == [("127.0.0.1", 9)]
    assert hub_calls == []
    probe = hf_hub.probe_hub()
    assert not probe.reachable and probe.target == "127.0.0.1:9"
    # A task without `data.hf` never needs the hub, and says nothing about it.
    assert load_seed_and_test(get_task("smart_home")).note is None


def test_reachable_hub_endpoint_is_used(monkeypatch, fresh_hub_probe):
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        port = server.getsockname()[1]
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert hf_available(get_task("banking77").data.hf)
        assert hf_available(get_task("trec").data.hf)
        assert fresh_hub_probe == [("127.0.0.1", port)]
    finally:
        server.close()


def test_hub_probe_goes_to_the_proxy_when_one_applies(monkeypatch, fresh_hub_probe):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    probe = hf_hub.probe_hub()
    assert not probe.reachable and fresh_hub_probe == [("127.0.0.1", 9)]


# -- structural errors name file, row and field ------------------------------------------------
def test_missing_files_and_dirs(tmp_path):
    data_dir = tmp_path / "only_train"
    _write_jsonl(data_dir / "train.jsonl", [{"question": "q", "answer": "ENTY"}])
    spec = _spec_with(tmp_path, "trec", {"local_dir": str(data_dir)})
    with pytest.raises(DataSourceError, match=r"only_train: missing data file `test.jsonl` \(or `test.csv`\)"):
        load_seed_and_test(spec)
    spec = _spec_with(tmp_path, "trec", {"local_dir": str(tmp_path / "nowhere")})
    with pytest.raises(DataSourceError, match="nowhere: local data directory for task 'trec' does not exist"):
        load_seed_and_test(spec)
    spec = _spec_with(tmp_path, "ecommerce", {"local_dir": str(data_dir), "unstructured_file": "texts.csv"})
    _write_jsonl(data_dir / "test.jsonl", [{"question": "q2", "answer": "books"}])
    with pytest.raises(DataSourceError, match="`data.unstructured_file`: texts.csv not found"):
        load_seed_and_test(spec)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("rows,needle", [
    ([{"question": "Who wrote Hamlet?", "label": "HUM"}], "row 1: missing column `answer`"),
    ([{"question": "Who wrote Hamlet?", "answer": "HUM"}, {"question": "Where is Oslo?", "answer": "LOC"},
      {"question": "Why?", "answer": ""}], "row 3: field `answer` is empty"),
    ([{"question": "", "answer": "HUM"}], "row 1: field `question` is empty"),
    ([{"id": "x", "question": "Who?", "answer": "HUM"}, {"id": "x", "question": "Where?", "answer": "LOC"}],
     "row 2: field `id` 'x' repeats row 1"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, fmt, rows, needle):
    data_dir = tmp_path / "trec_bad"
    writer = _write_jsonl if fmt == "jsonl" else _write_csv
    train = writer(data_dir / f"train.{fmt}", rows)
    writer(data_dir / f"test.{fmt}", [{"question": "How far is Mars?", "answer": "NUM"}])
    spec = _spec_with(tmp_path, "trec", {"local_dir": str(data_dir)})
    with pytest.raises(DataSourceError) as err:
        load_seed_and_test(spec)
    assert f"{train}: {needle}" in str(err.value)


def test_invalid_json_line_and_empty_file(tmp_path):
    data_dir = tmp_path / "broken"
    data_dir.mkdir()
    (data_dir / "train.jsonl").write_text('{"question": "a", "answer": "NUM"}\n\n{"question": "b", answer}\n')
    (data_dir / "test.jsonl").write_text("")
    spec = _spec_with(tmp_path, "trec", {"local_dir": str(data_dir)})
    with pytest.raises(DataSourceError, match=r"train.jsonl: row 2 \(line 3\): not valid JSON"):
        load_seed_and_test(spec)
    (data_dir / "train.jsonl").write_text('{"question": "a", "answer": "NUM"}\n')
    with pytest.raises(DataSourceError, match=r"test.jsonl: no data rows"):
        load_seed_and_test(spec)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_byte_order_mark_is_accepted(tmp_path, fmt):
    """Files saved by Excel / Notepad start with a UTF-8 BOM: the first column is still `question`."""
    data_dir = tmp_path / "bom"
    writer = _write_jsonl if fmt == "jsonl" else _write_csv
    for name, rows in (("train", [{"question": "Who wrote Hamlet?", "answer": "HUM"}]),
                       ("test", [{"question": "How far is Mars?", "answer": "NUM"}])):
        path = writer(data_dir / f"{name}.{fmt}", rows)
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    spec = _spec_with(tmp_path, "trec", {"local_dir": str(data_dir)})
    data = load_seed_and_test(spec, source="local")
    assert data.seed["question"].to_list() == ["Who wrote Hamlet?"]
    assert data.test["answer"].to_list() == ["NUM"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_file_that_is_not_utf8_names_the_file_byte_offset_and_line(tmp_path, fmt):
    data_dir = tmp_path / "latin1"
    writer = _write_jsonl if fmt == "jsonl" else _write_csv
    train = writer(data_dir / f"train.{fmt}", [{"question": "Who wrote Hamlet?", "answer": "HUM"},
                                              {"question": "Who painted the Mona Lisa?", "answer": "HUM"}])
    writer(data_dir / f"test.{fmt}", [{"question": "How far is Mars?", "answer": "NUM"}])
    text = train.read_text(encoding="utf-8")
    train.write_bytes(text.replace("Mona Lisa", "Joconde, café").encode("cp1252"))  # é is 0xE9 in cp1252
    offset = text.replace("Mona Lisa", "Joconde, café").encode("utf-8").index("é".encode())
    line = text[:text.index("Mona Lisa")].count("\n") + 1
    spec = _spec_with(tmp_path, "trec", {"local_dir": str(data_dir)})
    with pytest.raises(DataSourceError) as err:
        load_seed_and_test(spec, source="local")
    message = str(err.value)
    assert message.startswith(f"{train}: not UTF-8 text: byte e9 at byte offset {offset} (line {line})"), message
    assert "re-save the file as UTF-8" in message
    assert not isinstance(err.value, UnicodeDecodeError)


# -- the public benchmark data (../shared, skipped when absent) --------------------------------
PUBLIC_DIRS = {
    "text2sql": ("distil-labs__distil-text2sql/finetuning/data", 50, 50),
    "smart_home": ("distil-labs__distil-smart-home/slm-finetuning/data", 50, 50),
    "git_assistant": ("rampallishyam__distil-gitara/finetuning/data", 43, 116),
    "docstring": ("distil-labs__distil-localdoc.py/finetuning/data", 28, 253),
    "banking77": ("distil-labs__distil-labs-examples/classification-tutorial/data-banking-routing", 48, 96),
    "ecommerce": ("distil-labs__distil-labs-examples/classification-tutorial/data-ecommerce", 48, 96),
    "hotpotqa": ("distil-labs__distil-labs-examples/question-answering-tutorial/data", 50, 100),
}


@pytest.mark.shared
@pytest.mark.parametrize("task", sorted(PUBLIC_DIRS))
def test_public_benchmark_tasks_load_through_the_local_route(shared_benchmark, monkeypatch, task):
    subdir, n_seed, n_test = PUBLIC_DIRS[task]
    monkeypatch.setenv(f"DISTIL_DATA_{task.upper()}", str(shared_benchmark / subdir))
    spec = get_task(task)
    data = load_seed_and_test(spec)
    assert data.source == f"local:{(shared_benchmark / subdir).resolve()}"
    assert (data.seed.height, data.test.height) == (n_seed, n_test)
    assert validate_frame(spec, data.seed) == [] and validate_frame(spec, data.test) == []
    assert find_overlaps(data.seed, data.test) == []
    if task == "text2sql":
        assert data.seed["context"].str.starts_with("CREATE TABLE").all()
        assert not data.seed["question"].str.contains("Schema:").any()
    if task in ("banking77", "ecommerce", "hotpotqa"):
        assert data.unstructured is not None and data.unstructured.height == 1000
    assert os.path.isabs(data.files[0])
