"""Training: config merging, the labelled-positions loss, and a real (tiny) LoRA / full fine-tune."""

from __future__ import annotations

import json

import pytest

from distil_platform.profiles import get_profile
from distil_platform.taskspec import get_task
from distil_platform.training import TrainConfig, to_chat_dataset_rows, train_student

ROWS = [
    {"id": f"r{i}", "question": f"How many rows are in t{i}?", "answer": f"SELECT COUNT(*) FROM t{i};",
     "context": f"CREATE TABLE t{i} (id INTEGER);"}
    for i in range(12)
]


def test_config_layers_profile_task_and_overrides():
    spec = get_task("text2sql")
    local = TrainConfig.for_task(spec, get_profile("local"))
    assert (local.max_steps, local.batch_size, local.max_length, local.use_lora, local.bf16) == (60, 8, 384, True, True)
    assert local.lora_dropout == 0.0 and local.lora_r == spec.training.lora_r
    full = TrainConfig.for_task(spec, get_profile("local"), use_lora=False, max_steps=7)
    assert not full.use_lora and full.max_steps == 7 and full.learning_rate <= 5e-5
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.for_task(spec, get_profile("test"), bogus=1)
    assert TrainConfig(epochs=2, batch_size=4).steps_for(10) == 6


def test_training_rows_are_the_eval_rendering_plus_the_answer():
    from distil_platform.prompts import build_messages

    spec = get_task("text2sql")
    chat = to_chat_dataset_rows(spec, ROWS[:1])[0]["messages"]
    assert chat[:-1] == build_messages(spec, ROWS[0])
    assert chat[-1] == {"role": "assistant", "content": ROWS[0]["answer"]}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    import os

    os.environ.setdefault("DAGSTER_HOME", str(tmp_path_factory.mktemp("home")))
    from distil_platform.modelstore import resolve_model

    return resolve_model("tiny-qwen3")


@pytest.mark.slow
def test_labelled_positions_loss_matches_the_standard_causal_lm_loss(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from distil_platform.training import labelled_positions_loss

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    input_ids = torch.randint(3, 200, (3, 20))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :4] = 0  # left padding
    labels = input_ids.clone()
    labels[:, :12] = -100  # prompt positions
    labels[0, :4] = -100
    ref = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    ours = labelled_positions_loss(model, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    assert torch.allclose(ref, ours, atol=1e-5)


@pytest.mark.slow
def test_lora_training_writes_a_servable_checkpoint_and_is_seeded(tiny_dir, tmp_path):
    spec = get_task("text2sql")
    cfg = TrainConfig(max_steps=3, batch_size=4, max_length=512, bf16=False, learning_rate=1e-3, seed=7)
    events = []
    a = train_student(spec, ROWS, tiny_dir, tmp_path / "a", cfg, base_model_name="tiny-qwen3", progress=events.append)
    for name in ("model.safetensors", "config.json", "tokenizer_config.json", "loss_curve.png",
                 "train_summary.json", "loss_history.json"):
        assert (tmp_path / "a" / name).exists(), name
    assert not (tmp_path / "a" / "adapter_config.json").exists()  # LoRA merged, not an adapter
    assert a.steps == 3 and a.train_examples == len(ROWS) and a.final_loss is not None
    assert 0 < a.trainable_params < a.total_params
    steps = [e["step"] for e in events if "step" in e]
    assert steps == [1, 2, 3] and all("eta_s" in e for e in events if "step" in e)
    summary = json.loads((tmp_path / "a" / "train_summary.json").read_text())
    assert summary["base_model"] == "tiny-qwen3" and summary["steps"] == 3
    # same seed, same data -> same losses
    b = train_student(spec, ROWS, tiny_dir, tmp_path / "b", cfg)
    assert [h["loss"] for h in a.loss_history] == pytest.approx([h["loss"] for h in b.loss_history], rel=1e-5)

    # the merged checkpoint loads and generates with the chat template
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
def test_full_fine_tune_option(tiny_dir, tmp_path):
    spec = get_task("text2sql")
    cfg = TrainConfig(max_steps=2, batch_size=4, max_length=512, bf16=False, use_lora=False, learning_rate=1e-4)
    res = train_student(spec, ROWS, tiny_dir, tmp_path / "full", cfg)
    assert res.trainable_params == res.total_params
    assert (tmp_path / "full" / "model.safetensors").exists()
