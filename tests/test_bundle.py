"""The student bundle (``distil_platform.bundle``, ``<task>_student_bundle``): its layout, the model card's
front matter and figures, the serving commands, a client that imports nothing from the platform, and
the client's prompt rendering and answer parsing equal to the platform's on every shipped sample."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from cost_fixtures import plant_student_eval, plant_task, plant_throughput, publish_planted

from distil_platform.bundle import client
from distil_platform.bundle.assemble import CLIENT_SOURCE, assemble_bundle, write_tarball
from distil_platform.bundle.card import card_for_display
from distil_platform.bundle.commands import MeasuredServing
from distil_platform.bundle.figures import Figures, Lineage, lineage_from, read_train_summary, select_figures
from distil_platform.bundle.hub import HubTokenMissingError, push_bundle
from distil_platform.bundle.taskfile import task_file
from distil_platform.evaluation.scoring import exact_match, extract_sql, matches_known_label, normalize_label
from distil_platform.evaluation.scoring import parse_tool_call as platform_parse_tool_call
from distil_platform.serving.launch import VllmSettings, build_vllm_command
from distil_platform.storage.store import ResultsStore
from distil_platform.tasks.prompts import build_messages
from distil_platform.tasks.spec import get_task, load_tasks

FINGERPRINT = "a" * 64
CPU_SETTINGS = {"device": "cpu", "enforce_eager": True, "max_model_len": 2048, "enable_prefix_caching": True,
                "kv_cache_gib": 2.0, "env": {"VLLM_CPU_KVCACHE_SPACE": "2"}, "dtype": "bfloat16",
                "dtype_reason": "the CPU has native bf16"}
THROUGHPUT = {"run_id": "tp-run", "reference_variant": "bf16",
              "variants": {"bf16": {"backend": "vllm", "settings": CPU_SETTINGS, "hardware": "2-core AMD EPYC",
                                    "sustained_rps": 2.0, "on_gpu": False}}}
SUMMARY = {"base_model": "smollm2-135m-instruct", "steps": 40, "final_loss": 0.5, "max_length": 300,
           "precision": {"dtype": "bfloat16"},
           "config": {"use_lora": True, "lora_r": 16, "lora_alpha": 32, "lora_target_modules": ["q_proj"]}}
STDLIB_IMPORTS = {"__future__", "argparse", "json", "re", "sqlite3", "sys", "urllib.error", "urllib.request",
                  "dataclasses", "pathlib", "typing"}


def fake_checkpoint(root: Path, *, lora: bool = True) -> Path:
    """A checkpoint directory as the trainer writes it (weights large enough to be linked)."""
    ckpt = root / "ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 8192}))
    (ckpt / "model.safetensors").write_bytes(b"\0" * (2 << 20))
    (ckpt / "tokenizer.json").write_text("{}")
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (ckpt / "generation_config.json").write_text("{}")
    (ckpt / "train_summary.json").write_text(json.dumps(SUMMARY))
    (ckpt / "loss_history.json").write_text("[]")
    (ckpt / "loss_curve.png").write_bytes(b"png")
    if lora:
        (ckpt / "adapter").mkdir()
        (ckpt / "adapter" / "adapter_config.json").write_text(json.dumps(
            {"base_model_name_or_path": "/somewhere/models/smollm2-135m-instruct", "r": 16, "peft_type": "LORA"}))
        (ckpt / "adapter" / "adapter_model.safetensors").write_bytes(b"\1" * (1 << 21))
        (ckpt / "adapter" / "README.md").write_text("peft card")
    return ckpt


def _student(ckpt: Path, run_id: str = "train-1") -> dict:
    return {"checkpoint_path": str(ckpt), "checkpoint_fingerprint": FINGERPRINT, "base_model": "smollm2-135m-instruct",
            "served_name": "text2sql-student-train-1", "run_id": run_id, "use_synthetic": True, "max_length": 300,
            "max_model_len": 700, "compute_dtype": "bfloat16"}


COST_ROWS = [
    {"role": "student", "model": "text2sql-student-train-1", "variant": "bf16", "accuracy": 0.28, "ci_low": 0.17,
     "ci_high": 0.42, "n_items": 50, "metric": "sql_execution_match", "sustained_rps": 2.0,
     "usd_per_million_requests": 66.6667, "cost_source": "measured", "cost_note": "vllm on 2-core AMD EPYC",
     "hardware_key": "cpu-2core", "usd_per_hour": 0.48, "snapshot_as_of": "2026-12-01", "price_as_of": "2026-11-30",
     "eval_run_id": "eval-run", "table_id": "table-1", "checkpoint_fingerprint": FINGERPRINT},
    {"role": "student", "model": "text2sql-student-old", "variant": "bf16", "accuracy": 0.9,
     "checkpoint_fingerprint": "b" * 64},
    {"role": "zero_shot", "model": "smollm2-135m-instruct (zero-shot)", "variant": "zero_shot", "accuracy": 0.06,
     "ci_low": 0.02, "ci_high": 0.16, "usd_per_million_requests": 66.6667, "student_result": "win"},
]


def _bundle(tmp_path, spec=None, **kw):
    spec = spec or get_task("text2sql")
    ckpt = fake_checkpoint(tmp_path)
    student = _student(ckpt)
    figures = select_figures(metric=spec.metric_name, served_name=student["served_name"], fingerprint=FINGERPRINT,
                             cost_rows=COST_ROWS, eval_value=None, throughput_value=THROUGHPUT,
                             throughput_fingerprint=FINGERPRINT, slo_s=5.0)
    lineage = lineage_from(student, read_train_summary(ckpt), {"seed_examples": 50, "synthetic_examples": 16},
                           {"source": "sample", "n_test": 50}, {"teacher": "smollm2-135m-instruct", "source": "teacher"})
    bundle = assemble_bundle(spec, ckpt, tmp_path / "out", served_name=student["served_name"], max_tokens=128,
                             figures=figures, lineage=lineage, measured=MeasuredServing.from_throughput_value(THROUGHPUT),
                             **kw)
    return spec, ckpt, bundle


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card[4:card.index("\n---\n", 4)])


# -- the bundle ----------------------------------------------------------------------------------
def test_bundle_layout_links_the_weights_and_keeps_the_adapter(tmp_path):
    spec, ckpt, bundle = _bundle(tmp_path)
    path = bundle.path
    assert path.name == "text2sql-student-train-1"
    for name in ("README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "task.json", "client.py", "serving.json", "serve.sh", "bundle.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (path / name).is_file(), name
    for name in ("train_summary.json", "loss_history.json", "loss_curve.png", "adapter/README.md"):
        assert not (path / name).exists(), name  # training artefacts stay with the checkpoint
    # No re-merge, no copy of the weights: the same file (same file system).
    assert os.path.samefile(path / "model.safetensors", ckpt / "model.safetensors")
    assert not os.path.samefile(path / "config.json", ckpt / "config.json")  # small files are copies
    assert bundle.linked == 2 and bundle.adapter
    adapter = json.loads((path / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and adapter["r"] == 16
    assert (path / "client.py").read_bytes() == CLIENT_SOURCE.read_bytes()
    task = json.loads((path / "task.json").read_text())
    assert task == task_file(spec, served_name=bundle.served_name, max_tokens=128, chat_template="{{ messages }}")
    assert task["generation"] == {"temperature": 0.0, "max_tokens": 128} and task["answer_rule"] == "sql"
    manifest = json.loads((path / "bundle.json").read_text())
    assert manifest["lineage"]["seed_rows"] == 50 and manifest["figures"]["sustained_rps"] == 2.0
    assert manifest["files"]["model.safetensors"] == 2 << 20

    tar = write_tarball(bundle)
    assert tar == path.with_name("text2sql-student-train-1.tar") and bundle.tarball_bytes > 2 << 20
    with tarfile.open(tar) as archive:
        names = set(archive.getnames())
    assert {f"{bundle.served_name}/{k}" for k in bundle.files} <= names


def test_a_full_fine_tune_has_no_adapter(tmp_path):
    spec = get_task("banking77")
    ckpt = fake_checkpoint(tmp_path, lora=False)
    lineage = Lineage(base_model="tiny-qwen3", student_run_id="r", checkpoint_fingerprint=FINGERPRINT, method="full")
    bundle = assemble_bundle(spec, ckpt, tmp_path / "out", served_name="banking77-student-r", max_tokens=32,
                             figures=Figures(metric="exact_match"), lineage=lineage)
    assert not bundle.adapter and not (bundle.path / "adapter").exists()
    front = _front_matter(bundle.card)
    # A local-only base has no hub id: no base_model or license is claimed; nothing measured, nothing stated.
    assert "base_model" not in front and "license" not in front and "model-index" not in front
    assert "full fine-tune" in bundle.card and "not measured" in bundle.card


def test_model_card_front_matter_and_figures(tmp_path):
    _, _, bundle = _bundle(tmp_path)
    card = (bundle.path / "README.md").read_text()
    assert card == bundle.card
    front = _front_matter(card)
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["license"] == "apache-2.0"
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-generation"
    assert {"distil-platform", "text2sql", "lora"} <= set(front["tags"])
    assert "datasets" not in front  # the seed set came from the shipped sample, no hub dataset
    metric = front["model-index"][0]["results"][0]["metrics"][0]
    assert metric == {"type": "sql_execution_match", "name": "sql_execution_match", "value": 0.28}
    for figure in ("28.0% (95% CI 17.0%–42.0%) on 50 test items", "2 requests/s sustained with p95 latency within 5 s",
                   "$66.67 per million requests (measured; $0.4800/hour for `cpu-2core`)", "| prices as of | 2026-12-01 |",
                   "2-core AMD EPYC", "seed rows: 50", "teacher rows: 16 rows", "`smollm2-135m-instruct`",
                   "LoRA (r=16, alpha=32)", "at most 128 new tokens", "smollm2-135m-instruct (zero-shot) | zero_shot | 6.0%"):
        assert figure in card, figure
    assert "text2sql-student-old" not in card  # another checkpoint's row is not this model's
    display = card_for_display(card)
    assert display.startswith("```yaml\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct") and "# text2sql-student" in display


def test_hub_datasets_and_no_cost_row(tmp_path):
    spec = get_task("banking77")
    figures = select_figures(metric="exact_match", served_name="s", fingerprint=FINGERPRINT, cost_rows=[],
                             eval_value={"model": "s", "score": 0.5, "ci": [0.4, 0.6], "n": 80, "run_id": "e"},
                             throughput_value=None, throughput_fingerprint=None)
    assert (figures.score, figures.n_items, figures.usd_per_million_requests) == (0.5, 80, None)
    assert any("no cost table" in n for n in figures.notes) and any("no throughput" in n for n in figures.notes)
    other = select_figures(metric="exact_match", served_name="s", fingerprint=FINGERPRINT, cost_rows=COST_ROWS[1:],
                           eval_value={"model": "another", "score": 0.9}, throughput_value=THROUGHPUT,
                           throughput_fingerprint="c" * 64)
    assert other.score is None and other.sustained_rps is None and len(other.notes) == 3
    lineage = Lineage(base_model="Qwen/Qwen3-0.6B", student_run_id="r", checkpoint_fingerprint=FINGERPRINT,
                      seed_source="hf")
    bundle = assemble_bundle(spec, fake_checkpoint(tmp_path), tmp_path / "out", served_name="b-student", max_tokens=16,
                             figures=figures, lineage=lineage)
    front = _front_matter(bundle.card)
    assert front["datasets"] == [spec.data.hf.path] and front["base_model"] == "Qwen/Qwen3-0.6B"
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.5


def test_serving_commands_are_the_profiled_flags(tmp_path):
    _, _, bundle = _bundle(tmp_path)
    name = bundle.served_name
    cpu = bundle.command("vllm-cpu")
    assert cpu.measured and bundle.measured_command is cpu
    settings = VllmSettings(device="cpu", enforce_eager=True, max_model_len=2048, enable_prefix_caching=True,
                            kv_cache_gib=2.0)
    assert cpu.argv == build_vllm_command("python", Path(name), name, 8000, settings, dtype="bfloat16")
    assert {"--enforce-eager", "--enable-prefix-caching"} <= set(cpu.argv) and cpu.env == {"VLLM_CPU_KVCACHE_SPACE": "2"}
    gpu = bundle.command("vllm-gpu")
    assert not gpu.measured and "--gpu-memory-utilization" in gpu.argv and "--enforce-eager" not in gpu.argv
    assert "--dtype" in gpu.argv and gpu.argv[gpu.argv.index("--dtype") + 1] == "bfloat16"
    served = json.loads((bundle.path / "serving.json").read_text())
    assert served["default"] == "vllm-cpu" and [c["name"] for c in served["commands"]][:2] == ["vllm-cpu", "vllm-gpu"]
    assert "VLLM_CPU_KVCACHE_SPACE=2 python -m vllm.entrypoints.openai.api_server --model " + name in cpu.shell()

    # serve.sh runs the measured command in the directory holding the bundle, extra flags last.
    script = bundle.path / "serve.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    fake = tmp_path / "fake-python"
    fake.write_text('#!/bin/sh\necho "$PWD|$VLLM_CPU_KVCACHE_SPACE|$*"\n')
    fake.chmod(0o755)
    out = subprocess.run(["bash", str(script), "vllm-cpu", "--no-enable-prefix-caching"], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHON": str(fake), "PORT": "8123"}).stdout
    cwd, kv, args = out.strip().split("|")
    assert Path(cwd) == bundle.path.parent and kv == "2"
    assert args.startswith(f"-m vllm.entrypoints.openai.api_server --model {name} --served-model-name {name}")
    assert "--port 8123" in args and args.endswith("--no-enable-prefix-caching")


def test_transformers_serve_measured_on_the_test_profile(tmp_path):
    value = {"run_id": "t", "reference_variant": "fp32", "variants": {"fp32": {
        "backend": "transformers", "hardware": "cpu", "sustained_rps": 0.0, "on_gpu": False,
        "settings": {"device": "cpu", "continuous_batching": True, "cb_num_blocks": 80, "quantization": None,
                     "dtype": "float32"}}}}
    spec = get_task("trec")
    lineage = Lineage(base_model="tiny-qwen3", student_run_id="r", checkpoint_fingerprint=FINGERPRINT,
                      compute_dtype="float32")
    bundle = assemble_bundle(spec, fake_checkpoint(tmp_path), tmp_path / "out", served_name="trec-student-r",
                             max_tokens=32, figures=Figures(metric="exact_match"), lineage=lineage,
                             measured=MeasuredServing.from_throughput_value(value))
    tf = bundle.command("transformers")
    assert tf.measured and tf.argv[:3] == ["transformers", "serve", "trec-student-r"]
    assert tf.argv[tf.argv.index("--dtype") + 1] == "float32" and "--continuous-batching" in tf.argv
    assert "--cb-num-blocks" in tf.argv and tf.argv[tf.argv.index("--device") + 1] == "cpu"
    cpu = bundle.command("vllm-cpu")
    assert not cpu.measured and cpu.argv[cpu.argv.index("--dtype") + 1] == "float32"  # the student's dtype
    assert json.loads((bundle.path / "serving.json").read_text())["default"] == "transformers"


def test_push_without_a_token_is_a_clear_error(tmp_path):
    with pytest.raises(HubTokenMissingError, match="HF_TOKEN"):
        push_bundle(tmp_path, "me/student", token=None)


# -- the client ----------------------------------------------------------------------------------
def test_the_client_imports_only_the_standard_library():
    import ast

    tree = ast.parse(CLIENT_SOURCE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    # sqlglot only inside sql_parses, optional (SQLite's parser otherwise).
    assert imported - {"sqlglot"} <= STDLIB_IMPORTS, imported
    assert not any(m.startswith("distil_platform") for m in imported)


def test_the_client_runs_isolated_from_a_copied_bundle(tmp_path):
    spec, _, bundle = _bundle(tmp_path / "made")
    fresh = tmp_path / "elsewhere"
    shutil.copytree(bundle.path, fresh / bundle.served_name)
    shutil.rmtree(tmp_path / "made")
    row = {"question": "How many orders were placed in May?", "context": "CREATE TABLE orders (id INTEGER);"}
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": ""}
    # -I: no PYTHONPATH, no user site, no script directory games; -S: no site-packages at all (stdlib only).
    out = subprocess.run([sys.executable, "-I", "-S", "client.py", "--messages", row["question"], "--context",
                          row["context"]], cwd=fresh / bundle.served_name, env=env, capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == build_messages(spec, row)
    code = ("import sys; sys.path.insert(0, '.'); import client; t = client.load_task(); "
            "print(client.parse_answer(t, 'Here:\\n```sql\\nSELECT 1;\\n```')); "
            "print(sorted(m for m in sys.modules if m.startswith(('distil_platform', 'sqlglot', 'openai', 'httpx'))))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=fresh / bundle.served_name, env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["SELECT 1", "[]"]


def _rows(spec) -> list[dict]:
    rows = []
    for split in ("train", "test"):
        path = spec.sample_dir() / f"{split}.jsonl"
        rows += pl.read_ndjson(path).to_dicts() if path.exists() else []
    return rows


@pytest.mark.parametrize("task", sorted(load_tasks()))
def test_client_renders_every_sample_as_the_platform(task):
    spec = get_task(task)
    data = task_file(spec, served_name="x", max_tokens=8)
    rows = _rows(spec)
    assert rows
    for row in rows:
        assert client.render_messages(data, row["question"], row.get("context")) == build_messages(spec, row), row["id"]


def _replies(answer: str) -> list[str]:
    """Model replies built around a reference answer: bare, fenced, wrapped, in prose, damaged."""
    return [answer, f"{answer}.", f" `{answer}` ", f'"{answer}"', answer.upper(), f"```\n{answer}\n```",
            f"```sql\n{answer};\n```\nThis query counts them.", f"Sure! Here it is:\n{answer}\n\nIt works because...",
            f"{answer}; DROP TABLE x;", f'{{"label": "{answer}"}}', f"<answer>{answer}</answer>",
            f'<tool_call>{answer}</tool_call>', f'[{{"type": "function", "function": {answer}}}]',
            f"select {answer.lower()}", answer[: len(answer) // 2], "", "I cannot answer that.", "{not json"]


def _tool_shapes(answer: str) -> list[str]:
    call = json.loads(answer)
    args = json.dumps(call.get("parameters", {}))
    return [json.dumps({"tool_calls": [{"function": {"name": call["name"], "arguments": args}}]}),
            json.dumps({"function": {"name": call["name"], "arguments": args}}),
            json.dumps({"name": call["name"], "arguments": args}), json.dumps({"name": call["name"]}),
            json.dumps({"name": call["name"], "parameters": "not an object"})]


@pytest.mark.parametrize("task", sorted(load_tasks()))
def test_client_parses_every_sample_as_the_platform(task, monkeypatch):
    spec = get_task(task)
    data = task_file(spec, served_name="x", max_tokens=8)
    for row in _rows(spec):
        replies = _replies(str(row["answer"]))
        if spec.type == "tool_calling":
            replies += _tool_shapes(str(row["answer"]))
        for reply in replies:
            value = client.parse_answer(data, reply)
            if spec.type == "classification":
                assert client.normalize_label(reply) == normalize_label(reply), reply
                assert (value is not None) == matches_known_label(reply, spec.labels), reply
                if value is not None:
                    assert exact_match(reply, value) == 1.0 and value in spec.labels
            elif spec.type == "tool_calling":
                assert value == platform_parse_tool_call(reply), reply
            elif spec.type == "text2sql":
                assert value == extract_sql(reply), reply
                monkeypatch.setattr(client, "USE_SQLGLOT", False)  # the stdlib-only path: SQLite's parser
                assert client.parse_answer(data, reply) == extract_sql(reply), reply
                monkeypatch.setattr(client, "USE_SQLGLOT", True)
            else:
                assert value == reply


def test_client_requests_what_the_eval_sends(monkeypatch):
    """The request body: the rendered messages, the served name, greedy, the eval's max tokens."""
    spec = get_task("banking77")
    data = task_file(spec, served_name="banking77-student-x", max_tokens=24)
    sent = {}

    class Reply:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return json.dumps({"choices": [{"message": {"content": " Transaction_Charged_Twice."}, "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 3}}).encode()

    def urlopen(request, timeout):
        sent.update(url=request.full_url, body=json.loads(request.data))
        return Reply()

    monkeypatch.setattr(client.urllib.request, "urlopen", urlopen)
    row = {"question": "Where is my card?", "context": ""}
    answer = client.Student("http://h:1/v1/", task=data).ask(row["question"])
    assert sent["url"] == "http://h:1/v1/chat/completions"
    assert sent["body"] == {"model": "banking77-student-x", "messages": build_messages(spec, row), "temperature": 0.0,
                            "max_tokens": 24}
    assert answer.value == "transaction_charged_twice" and answer.text == " Transaction_Charged_Twice." and answer.finish_reason == "stop"


# -- the asset -----------------------------------------------------------------------------------
def test_student_bundle_asset_reads_the_published_records(tmp_path, monkeypatch):
    from distil_platform.assets.costs import build_task_cost_assets
    from distil_platform.assets.keys import task_key, teacher_data_key, throughput_key
    from distil_platform.assets.published import store_run_id_metadata
    from distil_platform.assets.student_bundle import build_student_bundle_asset
    from distil_platform.resources import HubResource, ResultsStoreResource

    from distil_platform.profiles import get_profile

    monkeypatch.setenv("DISTIL_PROFILE", "test")
    spec = get_task("text2sql")
    task = spec.name
    store = ResultsStore()
    lineage = {"student_run_id": "will-be-the-run", "checkpoint_fingerprint": FINGERPRINT, "use_synthetic": True}
    info = plant_task(store, spec, tmp_path)
    plant_student_eval(store, spec, "eval-run", "text2sql-student-x", 6, lineage=lineage)
    plant_throughput(store, spec, "tp-run-2", "text2sql-student-x", sustained_rps=4.0, lineage=lineage)
    ckpt = fake_checkpoint(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    publish_planted(instance, task, {k: v for k, v in info["runs"].items() if k not in ("student_eval", "throughput")})

    @dg.asset(key=dg.AssetKey(task))
    def seed():
        return dg.Output({}, metadata={"source": "sample", "n_test": 12})

    @dg.asset(key=teacher_data_key(task))
    def teacher():
        return dg.Output({}, metadata={"teacher": "tiny-qwen3", "source": "teacher"})

    @dg.asset(key=task_key(task, "student"), deps=[seed, teacher])
    def student(context):
        value = {**_student(ckpt, run_id=context.run_id), "served_name": "text2sql-student-x",
                 "base_model": "tiny-qwen3"}
        return dg.Output(value, metadata={"seed_examples": 30, "synthetic_examples": 8})

    @dg.asset(key=task_key(task, "student_eval"), deps=[student])
    def student_eval():
        return dg.Output({"model": "text2sql-student-x", "score": 0.5, "ci": [0.2, 0.8], "n": 12, "run_id": "eval-run"},
                         metadata=store_run_id_metadata("eval-run"))

    @dg.asset(key=throughput_key(task), deps=[student])
    def throughput():
        value = {**THROUGHPUT, "run_id": "tp-run-2"}
        return dg.Output(value, metadata=store_run_id_metadata("tp-run-2"))

    cost = [a for a in build_task_cost_assets(spec) if a.key.path[0].endswith("_cost_table")]
    bundle_assets = build_student_bundle_asset(spec, get_profile("test"))
    result = dg.materialize([seed, teacher, student, student_eval, throughput, *cost, *bundle_assets], instance=instance,
                            resources={"results_store": ResultsStoreResource(), "hub": HubResource()})
    assert result.success
    md = {k: getattr(v, "value", v) for k, v in
          result.asset_materializations_for_node(f"{task}_student_bundle")[0].metadata.items()}
    value = result.output_for_node(f"{task}_student_bundle")
    path = Path(value["bundle_path"])
    assert path == Path(os.environ["DAGSTER_HOME"]) / "artifacts" / task / "student_bundle" / result.run_id / \
        "text2sql-student-x"
    assert Path(value["tarball_path"]).is_file() and md["tarball_size_mb"] > 2
    assert md["served_name"] == "text2sql-student-x" and md["adapter_included"] and md["weights_linked"] == 2
    assert md["score"] == pytest.approx(0.5) and md["sustained_rps"] == 4.0
    assert md["usd_per_million_requests"] > 0 and md["prices_as_of"] not in ("", "–")
    card = md["model_card"]
    assert card.startswith("```yaml\n") and "seed rows: 30" in card and "teacher rows: 8 rows" in card
    assert "`tiny-qwen3`" in card and "(teacher: `tiny-qwen3`" in card and "test rows held out: 12" in card
    assert "**vllm-cpu** (measured)" in md["serving_command"] and "--enforce-eager" in md["serving_command"]
    readme = (path / "README.md").read_text()
    assert _front_matter(readme)["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.5
    assert json.loads((path / "task.json").read_text())["generation"]["max_tokens"] == 32  # the test profile's cap
