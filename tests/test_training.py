"""Training: config merging, the labelled-positions loss, and a real (tiny) LoRA / full fine-tune."""

from __future__ import annotations

import json

import pytest

from distil_platform.profiles import get_profile
from distil_platform.tasks.spec import get_task
from distil_platform.training.config import TrainConfig
from distil_platform.training.lengths import TrainingRowTooLongError, plan_max_length, to_chat_dataset_rows
from distil_platform.training.trainer import train_student

ROWS = [
    {"id": f"r{i}", "question": f"How many rows are in t{i}?", "answer": f"SELECT COUNT(*) FROM t{i};",
     "context": f"CREATE TABLE t{i} (id INTEGER);"}
    for i in range(12)
]


def test_config_layers_profile_task_and_overrides():
    spec = get_task("text2sql")
    local = TrainConfig.for_task(spec, get_profile("local"))
    assert (local.batch_size, local.use_lora, local.dtype) == (8, True, "auto")
    assert local.time_budget_s == get_profile("local").train_time_budget_s > 0  # `make run` fits its minutes
    assert TrainConfig.for_task(spec, get_profile("gpu")).time_budget_s is None
    # Sequence length from the data (within the profile's ceiling); rows per step from a token budget.
    assert local.max_length is None and local.max_length_ceiling == 2048 and local.tokens_per_step == 3072
    assert not local.allow_truncation
    explicit = TrainConfig.for_task(spec, get_profile("local"), batch_size=2, max_length=700)
    assert (explicit.batch_size, explicit.tokens_per_step, explicit.max_length) == (2, None, 700)
    assert TrainConfig.for_task(spec, get_profile("gpu")).tokens_per_step is None
    assert local.lora_dropout == 0.0 and local.lora_r == spec.training.lora_r
    full = TrainConfig.for_task(spec, get_profile("local"), use_lora=False, max_steps=7)
    assert not full.use_lora and full.max_steps == 7 and full.learning_rate <= 5e-5
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.for_task(spec, get_profile("test"), bogus=1)
    assert TrainConfig(epochs=2, batch_size=4).steps_for(10) == 6
    assert TrainConfig(epochs=2, batch_size=4).steps_for(10, batch_size=2) == 10


def test_task_yaml_training_section_sets_truncation_and_ceiling(tmp_path):
    from pathlib import Path

    import yaml

    from distil_platform.tasks.spec import load_task_file

    raw = yaml.safe_load(Path(get_task("smart_home").source_file).read_text())
    raw["training"] = {"allow_truncation": True, "max_length_ceiling": 512, "batch_size": 3}
    path = tmp_path / "smart_home.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = TrainConfig.for_task(load_task_file(path), get_profile("local"))
    assert cfg.allow_truncation and cfg.max_length_ceiling == 512
    assert cfg.batch_size == 3 and cfg.tokens_per_step is None  # an explicit batch size is rows per step


def test_batch_size_follows_the_token_budget():
    cfg = TrainConfig(batch_size=8, tokens_per_step=3072)
    assert [cfg.batch_size_for(n) for n in (200, 384, 800, 1150, 5000)] == [8, 8, 3, 2, 1]
    assert TrainConfig(batch_size=8).batch_size_for(5000) == 8  # no budget: rows per step


def test_max_length_is_the_longest_row_and_an_over_long_row_is_an_error():
    spec = get_task("git_assistant")
    ids, lengths = ["a", "b", "c", "d"], [900, 1150, 1000, 700]
    plan = plan_max_length(spec, ids, lengths, TrainConfig(max_length_ceiling=2048))
    assert (plan.max_length, plan.source, plan.longest, plan.shortest, plan.truncated) == (1150, "derived", 1150, 700, 0)
    assert plan.median == 950 and plan.p90 == 1150
    # The model's context bounds the ceiling too.
    with pytest.raises(TrainingRowTooLongError) as err:
        plan_max_length(spec, ids, lengths, TrainConfig(max_length_ceiling=2048), model_context=1024)
    msg = str(err.value)
    assert msg.startswith("git_assistant: 1 of 4 training row(s)") and "id 'b': 1150 tokens" in msg
    assert "model context 1024" in msg and "allow_truncation" in msg and "id 'a'" not in msg
    # A fixed max_length (task YAML / run config) below the data: every longer row is named, longest first.
    with pytest.raises(TrainingRowTooLongError, match=r"3 of 4 .* max_length=800 .*id 'b': 1150 tokens, "
                                                       r"id 'c': 1000 tokens, id 'a': 900 tokens"):
        plan_max_length(spec, ids, lengths, TrainConfig(max_length=800))
    # Allowed truncation: no error, the cut rows are counted.
    plan = plan_max_length(spec, ids, lengths, TrainConfig(max_length=800, allow_truncation=True))
    assert (plan.max_length, plan.source, plan.truncated) == (800, "fixed", 3)


def test_training_rows_are_the_eval_rendering_plus_the_answer():
    from distil_platform.tasks.prompts import build_messages

    spec = get_task("text2sql")
    chat = to_chat_dataset_rows(spec, ROWS[:1])[0]["messages"]
    assert chat[:-1] == build_messages(spec, ROWS[0])
    assert chat[-1] == {"role": "assistant", "content": ROWS[0]["answer"]}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    import os

    os.environ.setdefault("DAGSTER_HOME", str(tmp_path_factory.mktemp("home")))
    from distil_platform.storage.modelstore import resolve_model

    return resolve_model("tiny-qwen3")


@pytest.mark.slow
def test_labelled_positions_loss_matches_the_standard_causal_lm_loss(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from distil_platform.training.trainer import labelled_positions_loss

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
def test_planted_over_long_row_fails_before_training(tiny_dir, tmp_path):
    """The real tokenizer and chat template count the rendered prompt + answer; one long row among
    short ones is named (task, id, tokens) and nothing is trained or written."""
    from transformers import AutoTokenizer

    from distil_platform.training.lengths import row_token_lengths

    spec = get_task("smart_home")
    rows = [{"id": f"ok-{i}", "question": "Turn on the kitchen lights", "context": "",
             "answer": '{"name": "toggle_lights", "parameters": {"room": "kitchen", "state": "on"}}'} for i in range(4)]
    rows.append({**rows[0], "id": "planted-long", "question": "Turn on the lights " + "please " * 400})
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    lengths = row_token_lengths(spec, rows, tok)
    assert lengths[-1] > max(lengths[:-1]) + 1000
    # The eval server's context: the longest test prompt + max_answer_tokens (here the long row's prompt).
    from distil_platform.tasks.prompts import build_messages
    from distil_platform.training.lengths import serving_context_length

    prompt = len(tok.apply_chat_template(build_messages(spec, rows[-1]), add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"])
    assert prompt < lengths[-1]
    assert serving_context_length(spec, rows, tok, 10) == prompt + spec.max_answer_tokens
    assert serving_context_length(spec, rows, tok, 99_999) == 99_999
    cfg = TrainConfig(max_steps=1, batch_size=2, dtype="float32", max_length_ceiling=max(lengths[:-1]) + 10)
    with pytest.raises(TrainingRowTooLongError, match=rf"smart_home: 1 of 5 .*id 'planted-long': {lengths[-1]} tokens"):
        train_student(spec, rows, tiny_dir, tmp_path / "out", cfg)
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_lora_training_writes_a_servable_checkpoint_and_is_seeded(tiny_dir, tmp_path):
    spec = get_task("text2sql")
    cfg = TrainConfig(max_steps=3, batch_size=4, dtype="float32", learning_rate=1e-3, seed=7)
    events = []
    a = train_student(spec, ROWS, tiny_dir, tmp_path / "a", cfg, base_model_name="tiny-qwen3", progress=events.append)
    for name in ("model.safetensors", "config.json", "tokenizer_config.json", "loss_curve.png",
                 "train_summary.json", "loss_history.json"):
        assert (tmp_path / "a" / name).exists(), name
    assert not (tmp_path / "a" / "adapter_config.json").exists()  # LoRA merged, not an adapter
    assert (tmp_path / "a" / "adapter" / "adapter_config.json").exists()  # the adapter alone, kept beside it
    assert a.steps == 3 and a.train_examples == len(ROWS) and a.final_loss is not None
    # max_length derived from the data: exactly the longest rendered row, nothing truncated.
    from transformers import AutoTokenizer as _Tok

    from distil_platform.training.lengths import row_token_lengths

    lengths = row_token_lengths(spec, ROWS, _Tok.from_pretrained(tiny_dir))
    assert a.max_length == max(lengths) and a.truncated_examples == 0 and a.batch_size == 4
    assert a.length_plan["source"] == "derived" and a.length_plan["n_rows"] == len(ROWS)
    assert 0 < a.trainable_params < a.total_params
    steps = [e["step"] for e in events if "step" in e]
    assert steps == [1, 2, 3] and all("eta_s" in e for e in events if "step" in e)
    # The dtype the job trained in, and why, travel with the result (T_student's metadata).
    assert (a.precision["dtype"], a.precision["short"], a.precision["source"]) == ("float32", "fp32", "setting")
    assert next(e for e in events if e.get("event") == "precision")["dtype"] == "float32"
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


def test_gradient_checkpointing_trains_the_same_student_with_less_memory(tiny_dir, tmp_path, monkeypatch):
    """A large candidate (Qwen3-8B on one card) recomputes activations: the option reaches TRL
    (non-reentrant, so PEFT's frozen base needs no input grads), and the seeded losses are those of a
    run that keeps its activations."""
    from trl import SFTConfig

    from distil_platform.training.trainer import _sft_config

    spec = get_task("text2sql")
    cfg = TrainConfig(max_steps=2, batch_size=4, dtype="float32", learning_rate=1e-3, seed=7)
    checkpointed = TrainConfig(**{**cfg.__dict__, "gradient_checkpointing": True})
    args = _sft_config(SFTConfig, checkpointed, tmp_path, 2, False, batch_size=4, max_length=None)
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert not _sft_config(SFTConfig, cfg, tmp_path, 2, False, batch_size=4, max_length=None).activation_checkpointing
    from transformers import PreTrainedModel

    enabled = []
    original = PreTrainedModel.activation_checkpointing_enable

    def spy(self, *args, **kwargs):
        enabled.append(kwargs.get("activation_checkpointing_kwargs", args[0] if args else None))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "activation_checkpointing_enable", spy)
    with_ckpt = train_student(spec, ROWS, tiny_dir, tmp_path / "ckpt", checkpointed)
    assert enabled and enabled[-1] == {"use_reentrant": False}  # the trainer turned it on for the model
    enabled.clear()
    plain = train_student(spec, ROWS, tiny_dir, tmp_path / "plain", cfg)
    assert not enabled
    assert [h["loss"] for h in with_ckpt.loss_history] == pytest.approx([h["loss"] for h in plain.loss_history],
                                                                        rel=1e-4)


@pytest.mark.slow
def test_time_budget_plans_the_steps_it_affords(tiny_dir, tmp_path):
    """A budget below one measured step trains one step (and warns); an ample one changes nothing and
    the data order is the one a run without a budget gets (the probe restores the RNG)."""
    spec = get_task("text2sql")
    events = []
    cut = train_student(spec, ROWS, tiny_dir, tmp_path / "cut",
                        TrainConfig(max_steps=5, batch_size=4, dtype="fp32", time_budget_s=1e-9),
                        progress=events.append)
    assert cut.steps == 1 and cut.time_budget["planned_steps"] == 5 and cut.time_budget["steps"] == 1
    assert cut.time_budget["probe_s_per_step"] > 0
    assert any(e.get("event") == "warning" and "1 of 5 steps" in e["message"] for e in events)
    assert [e["total_steps"] for e in events if "step" in e] == [1]
    ample = train_student(spec, ROWS, tiny_dir, tmp_path / "ample",
                          TrainConfig(max_steps=3, batch_size=4, dtype="fp32", time_budget_s=1e6))
    plain = train_student(spec, ROWS, tiny_dir, tmp_path / "plain", TrainConfig(max_steps=3, batch_size=4, dtype="fp32"))
    assert ample.steps == plain.steps == 3 and ample.time_budget["steps"] == 3 and plain.time_budget == {}
    assert [h["loss"] for h in ample.loss_history] == pytest.approx([h["loss"] for h in plain.loss_history], rel=1e-5)


@pytest.mark.slow
def test_checkpoint_is_saved_in_the_chosen_dtype(tiny_dir, tmp_path):
    """bf16 where chosen (by setting here; by the CPU's flags with dtype auto), fp32 otherwise: the
    merged checkpoint is written in the dtype that trained, which is what the server then loads."""
    import torch
    from safetensors import safe_open

    spec = get_task("text2sql")
    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        res = train_student(spec, ROWS[:4], tiny_dir, tmp_path / dtype, TrainConfig(max_steps=1, batch_size=2, dtype=dtype))
        assert res.precision["dtype"] == str(torch_dtype).removeprefix("torch.")
        with safe_open(str(tmp_path / dtype / "model.safetensors"), "pt") as fh:
            name = next(iter(fh.keys()))
            assert fh.get_tensor(name).dtype == torch_dtype


@pytest.mark.slow
def test_full_fine_tune_option(tiny_dir, tmp_path):
    spec = get_task("text2sql")
    # A token budget of two rows at this data's length -> batch 2; allowed truncation at a fixed length.
    cfg = TrainConfig(max_steps=2, batch_size=4, dtype="float32", use_lora=False, learning_rate=1e-4)
    res = train_student(spec, ROWS, tiny_dir, tmp_path / "full", cfg)
    assert res.trainable_params == res.total_params
    budget = TrainConfig(max_steps=1, batch_size=8, tokens_per_step=2 * res.max_length, dtype="float32",
                         max_length=res.max_length - 5, allow_truncation=True)
    cut = train_student(spec, ROWS, tiny_dir, tmp_path / "cut", budget)
    assert cut.batch_size == 2 and cut.max_length == res.max_length - 5 and cut.truncated_examples >= 1
    assert (tmp_path / "full" / "model.safetensors").exists()


@pytest.mark.slow
def test_an_epoch_schedule_is_planned_from_the_rows_and_recorded(tiny_dir, tmp_path):
    """The gpu profile's plan (issue 32, finding 7): epochs over the rows set the steps, and the result
    says so (``T_student``'s metadata: schedule, steps planned, epochs planned and made)."""
    spec = get_task("text2sql")
    res = train_student(spec, ROWS, tiny_dir, tmp_path / "epochs", TrainConfig(epochs=2, batch_size=4, dtype="fp32"))
    assert res.steps == res.steps_planned == 6 and res.schedule == "epochs"  # 12 rows / 4 per step x 2
    assert res.epochs_planned == 2.0 and res.epochs == pytest.approx(2.0)
    summary = json.loads((tmp_path / "epochs" / "train_summary.json").read_text())
    assert (summary["schedule"], summary["steps_planned"], summary["epochs"]) == ("epochs", 6, 2.0)
    steps = train_student(spec, ROWS, tiny_dir, tmp_path / "steps", TrainConfig(max_steps=3, batch_size=4, dtype="fp32"))
    assert (steps.schedule, steps.steps_planned, steps.epochs_planned, steps.epochs) == ("max_steps", 3, None, 1.0)
