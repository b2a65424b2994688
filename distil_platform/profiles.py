"""Model plans. One setting (env ``DISTIL_PROFILE``) selects how every task is run.

- ``local`` (default): CPU, offline. Teacher, student base and zero-shot baseline are all
  ``smollm2-135m-instruct`` served by ``transformers serve``.
- ``gpu``: Qwen3 students as the task YAML says, vLLM serving, an open-weight teacher behind an
  OpenAI-compatible endpoint (``DISTIL_TEACHER_API_BASE``).
- ``test``: ``tiny-qwen3`` everywhere; seconds per stage, for the test suite.

Frontier models are used under any profile whenever their API key is set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

ProfileName = Literal["local", "gpu", "test"]
PROFILES: tuple[ProfileName, ...] = ("local", "gpu", "test")


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
    # Training defaults (a task YAML may override per profile).
    max_steps: int
    learning_rate: float
    batch_size: int
    max_length: int
    use_lora: bool
    bf16: bool
    # Throughput sweep: offered request rates (req/s); None = derive from a probe.
    throughput_rates: tuple[float, ...] | None
    throughput_duration_s: float


PROFILE_DEFAULTS: dict[str, Profile] = {
    "local": Profile(
        name="local",
        default_student_base="smollm2-135m-instruct",
        default_teacher="smollm2-135m-instruct",
        serving_backend="transformers",
        # 4 teacher requests: a 135M CPU teacher writes ~20 tok/s and mostly invalid rows (cpu-notes).
        synthetic_target=16,
        max_steps=60,
        learning_rate=5e-4,
        batch_size=8,
        max_length=384,
        use_lora=True,
        bf16=True,  # bf16 is ~10x faster than fp32 on AVX512-BF16 CPUs (see cpu-notes).
        throughput_rates=(0.25, 0.5, 1.0, 2.0),
        throughput_duration_s=20.0,
    ),
    "gpu": Profile(
        name="gpu",
        default_student_base="Qwen/Qwen3-0.6B",
        default_teacher="openai/deepseek-ai/DeepSeek-V3.1",
        serving_backend="auto",
        synthetic_target=2000,
        max_steps=1000,
        learning_rate=2e-4,
        batch_size=16,
        max_length=1024,
        use_lora=True,
        bf16=True,
        throughput_rates=None,
        throughput_duration_s=60.0,
    ),
    "test": Profile(
        name="test",
        default_student_base="tiny-qwen3",
        default_teacher="tiny-qwen3",
        serving_backend="transformers",
        synthetic_target=8,
        max_steps=4,
        learning_rate=1e-3,
        batch_size=4,
        max_length=256,
        use_lora=True,
        bf16=False,
        throughput_rates=(2.0, 4.0),
        throughput_duration_s=3.0,
    ),
}


def current_profile_name() -> ProfileName:
    name = os.environ.get("DISTIL_PROFILE", "local").strip().lower()
    if name not in PROFILES:
        raise ValueError(f"DISTIL_PROFILE={name!r} is not one of {', '.join(PROFILES)}")
    return name  # type: ignore[return-value]


def get_profile(name: str | None = None) -> Profile:
    name = name or current_profile_name()
    if name not in PROFILE_DEFAULTS:
        raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    return PROFILE_DEFAULTS[name]
