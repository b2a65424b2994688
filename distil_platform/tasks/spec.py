"""Task registry: one YAML file per task, validated with pydantic on load.

A task YAML says what the task is (type, description, prompt template, labels or tools), how it
is scored, where its data comes from, and which models play which role under each profile.
Add a task by dropping ``<name>.yaml`` into ``distil_platform/tasks/`` (or the directory named by
env ``DISTIL_TASKS_DIR``) plus its data; see docs/tasks.md, "Adding a task".
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distil_platform.storage.paths import PACKAGE_DIR
from distil_platform.tasks.candidates import StudentCandidates

TaskType = Literal["classification", "tool_calling", "text2sql", "open_book_qa", "generation"]
MetricName = Literal[
    "exact_match", "tool_call_equivalence", "sql_execution_match", "llm_judge", "token_f1"
]

DEFAULT_METRIC: dict[str, str] = {
    "classification": "exact_match",
    "tool_calling": "tool_call_equivalence",
    "text2sql": "sql_execution_match",
    "open_book_qa": "llm_judge",
    "generation": "llm_judge",
}

TASK_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

TEMPERATURE_0_SUFFIX = " @ temperature 0"  # label of a comparison model's extra run at temperature 0


class TaskSpecError(ValueError):
    """A task YAML is malformed. The message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HFSource(_Strict):
    """A public Hugging Face dataset, loaded with ``datasets.load_dataset``."""

    path: str
    name: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    question_field: str = "question"
    answer_field: str = "answer"
    context_field: str | None = None
    # Integer labels are mapped to names through the dataset's ClassLabel feature.
    label_names_from_feature: bool = False
    # Keep only these labels (e.g. the benchmark's 8-class Banking77 subset); None keeps all.
    label_subset: list[str] | None = None
    # Cap rows per split (seed = train, test = test); per label for classification.
    max_seed_rows: int | None = None
    max_test_rows: int | None = None
    revision: str | None = None


class TracesSource(_Strict):
    """``data.traces``: production traces as the task's data (``tasks/traces.py``, docs/traces.md)."""

    path: str | None = None  # a file, or a directory of *.jsonl / *.json files; relative to the YAML
    path_env: str | None = None  # env var overriding path; default DISTIL_TRACES_<TASK>
    format: Literal["auto", "openai", "langfuse"] = "auto"
    test_share: float = Field(default=0.2, gt=0.0, lt=1.0)  # of the labelled rows, stratified
    split_seed: int = 0
    mask_pii: bool = True  # e-mail addresses, phone and card numbers masked before anything is stored
    labelled: bool = True  # the traces' answers are the labels (else every trace row goes to the teacher)
    # A regex with a named group `question` (and optionally `context`) cutting the message out of the
    # production prompt's last user turn; None: the whole turn is the question.
    question_pattern: str | None = None

    @field_validator("question_pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                groups = re.compile(v).groupindex
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
            if "question" not in groups:
                raise ValueError("needs a named group `question`, e.g. '^Message: (?P<question>.*)$'")
        return v


class DataSources(_Strict):
    # (1) local directory in the question/answer(/context) jsonl-or-csv layout (train/test files).
    local_dir: str | None = None
    # env var overriding local_dir; default DISTIL_DATA_<TASK> (upper-case task name).
    local_dir_env: str | None = None
    # (2) public dataset on the Hugging Face hub.
    hf: HFSource | None = None
    # (3) sample shipped in the package: distil_platform/data/<sample>/{train,test}.jsonl
    sample: str | None = None
    # Unlabelled in-domain text (a csv/jsonl with a `question` or `context` column) that the
    # teacher may ground generation in.
    unstructured_file: str | None = None
    # Production traces (OpenAI chat-completions JSONL or a Langfuse export); with `labelled` they are
    # the seed and test sets, and rows without a usable answer go to the teacher.
    traces: TracesSource | None = None


class ModelRef(_Strict):
    """A model as the platform calls it (litellm model string, or a model-store name when served)."""

    model: str
    # OpenAI-compatible endpoint; when None and the model is a model-store name it is served locally.
    api_base: str | None = None
    # Env var holding the API key (never the key itself).
    api_key_env: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    # Runs per test item (mean ± std over runs). None: 1 at temperature 0 (greedy decoding repeats
    # itself), else the baseline asset's ``default_repeats``; an explicit value is used as given.
    repeats: int | None = Field(default=None, ge=1)
    # False for models that reject temperature 0 (the gpt-5 family accepts only 1): they are never
    # run at temperature 0, whatever ``TaskSpec.frontier_temperature_0`` says.
    supports_temperature_0: bool = True
    # "mid-tier" frontier models (< $1/MTok input) are what the report compares students against.
    tier: Literal["frontier", "mid_tier", "baseline", "teacher", "judge"] = "frontier"
    # Teachers: send the task's example JSON schema as `response_format` (structured outputs)?
    # auto = only to a model served locally by vLLM; json_schema = always; none = never.
    response_format: Literal["auto", "json_schema", "none"] = "auto"
    # Reasoning models: how much of `max_tokens` they may spend thinking, sent as litellm's
    # `reasoning_effort` (OpenAI's parameter; litellm maps it to Gemini's thinking budget and
    # Anthropic's extended thinking). None: not sent (the provider's default, e.g. gpt-5's "medium",
    # can spend the whole budget thinking and return an empty reply). Part of the cache key.
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    # Seconds one request may take. None: derived from max_tokens, max(60, 30 + max_tokens / 20)
    # (distil_platform.llm.chat.request_timeout_s), unless the llm resource sets a fixed timeout_s.
    timeout_s: float | None = Field(default=None, gt=0)


class PerProfile(_Strict):
    local: str | None = None
    gpu: str | None = None
    test: str | None = None
    rehearsal: str | None = None  # the gpu graph on a CPU with stand-in endpoints (distil_platform.profiles)

    def for_profile(self, profile: str) -> str | None:
        return getattr(self, profile)


class TrainingOverrides(_Strict):
    max_steps: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    max_length: int | None = None
    use_lora: bool | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    epochs: float | None = None
    # A training row whose rendered prompt + answer is longer than max_length fails the student
    # (naming the row) unless this is true; then it is cut from the start (keep_end) and counted.
    allow_truncation: bool = False
    # Upper bound for the max_length derived from the data (None: the profile's ceiling).
    max_length_ceiling: int | None = None
    # Seconds the training loop may take (None: the profile's; 0: no limit). The step count is what
    # the budget affords at the step time measured before training, at most max_steps.
    time_budget_s: float | None = None


class QualityFilters(_Strict):
    """Content filters applied to teacher rows after validation (each one switchable)."""

    # A real sentence in the task's language and length range; not a scaffold ("Question:"),
    # not the task instruction. Length range: None = derived from the seed questions.
    question_sanity: bool = True
    min_question_chars: int | None = None
    max_question_chars: int | None = None
    # An independent second answer (the teacher re-asked at temperature 0 with the student's
    # prompt, no demonstrations) must score as correct against the row's answer.
    answer_agreement: bool = False
    # text2sql: the SQL must run in the scoring sandbox and return rows on >= 1 generated database.
    sql_nonempty: bool = True
    # tool calling: string/number argument values must appear in the question (or be the default).
    grounded_arguments: bool = True
    # tool calling: no enum argument may be a value where the latest request names only other values
    # of it ("unlock the back door" with door: front; filters.contradicted_enums). On gold rows it
    # rejects ~1% (values that are common words: "lock it back up", "remove it from the list").
    enum_consistency: bool = True
    # Rows that carry a confidence (self-training: the labeller's answer probability from token
    # logprobs) are kept only at or above this; None = no confidence filter.
    min_confidence: float | None = 0.5
    # Which field is compared with the test set: auto = the context for generation tasks with a
    # context (their question is a fixed instruction), else the question.
    decontaminate_on: Literal["auto", "question", "context", "both"] = "auto"


class RecordedTeacher(_Strict):
    """A file of examples another teacher already wrote (jsonl / csv / parquet, public layout
    question, answer[, context]); used when ``synthesis.source`` says ``recorded``."""

    path: str | None = None
    # Env var overriding path; default DISTIL_RECORDED_<TASK>.
    path_env: str | None = None
    # Keep a random sample of this many rows (None: all).
    max_rows: int | None = None
    sample_seed: int = 0
    # Who wrote the file (reported as the rows' teacher_model).
    teacher_model: str = "recorded"


class SynthesisConfig(_Strict):
    target: PerProfile = Field(default_factory=PerProfile)
    seeds_per_request: int = 4
    examples_per_request: int = 4
    # The fewest examples a constrained reply may hold (JSON schema `minItems`). Default: exactly
    # `examples_per_request`, so a teacher under structured outputs cannot stop after one row.
    min_examples_per_request: int | None = None
    topics: list[str] = Field(default_factory=list)
    # text2sql, per profile: "subset" holds a constrained teacher's SQL to a pattern over the
    # request's schema (teacher_schemas.sql_answer_pattern: no subqueries/CTEs, real names only);
    # "free" (the default) any string.
    constrain_sql: PerProfile = Field(default_factory=PerProfile)
    ground_in_unstructured: bool = False
    near_duplicate_threshold: float = 0.9
    decontamination_ngram: int = 8
    decontamination_threshold: float = 0.5
    min_accepted: PerProfile = Field(default_factory=PerProfile)
    temperature: float = 0.8
    # The teacher's frequency penalty (OpenAI semantics): > 0 discourages a reply from repeating
    # its own tokens, i.e. the same example twice in one array. 0 = not sent.
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    filters: QualityFilters = Field(default_factory=QualityFilters)
    # Per profile: "teacher" (a model writes the rows; the default), "recorded" (read `recorded`) or
    # "self_training" (the teacher labels the task's unlabelled messages, data.unstructured_file).
    source: PerProfile = Field(default_factory=PerProfile)
    recorded: RecordedTeacher | None = None

    @model_validator(mode="after")
    def _sources(self) -> SynthesisConfig:
        if self.examples_per_request < 1:
            raise ValueError(f"examples_per_request must be >= 1, got {self.examples_per_request}")
        low = self.min_examples_per_request
        if low is not None and not 1 <= low <= self.examples_per_request:
            raise ValueError(f"min_examples_per_request must be between 1 and examples_per_request "
                             f"({self.examples_per_request}), got {low}")
        for profile in ("local", "gpu", "test", "rehearsal"):
            if self.constrain_sql.for_profile(profile) not in (None, "free", "subset"):
                raise ValueError(f"constrain_sql.{profile} must be free or subset, "
                                 f"got {self.constrain_sql.for_profile(profile)!r}")
            value = self.source.for_profile(profile)
            if value not in (None, "teacher", "recorded", "self_training"):
                raise ValueError(f"source.{profile} must be teacher, recorded or self_training, got {value!r}")
        return self


GATE_METRICS = ("exact_match", "tool_call_equivalence", "sql_execution_match", "llm_judge", "token_f1")


class GateThresholds(_Strict):
    """One metric's teacher-gate thresholds: PROCEED at or above ``proceed``, RETHINK below
    ``rethink``, ITERATE in between (``evaluation.teacher_gate``)."""

    proceed: float = Field(ge=0.0, le=1.0)
    rethink: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> GateThresholds:
        if self.rethink > self.proceed:
            raise ValueError(f"rethink ({self.rethink:g}) must not be above proceed ({self.proceed:g})")
        return self


class TeacherGate(_Strict):
    """``teacher_gate:`` in a task YAML: the thresholds ``<task>_teacher_eval`` judges the teacher by
    and what a RETHINK does (docs/tasks.md). Unset fields take the defaults per metric."""

    # Thresholds of the task's own metric (both or neither).
    proceed: float | None = Field(default=None, ge=0.0, le=1.0)
    rethink: float | None = Field(default=None, ge=0.0, le=1.0)
    # Thresholds of another metric the teacher may be scored by (the judge's token-F1 fallback).
    by_metric: dict[str, GateThresholds] = Field(default_factory=dict)
    # seed_only: the teacher data asks nothing and the student trains on the seeds (the run goes on);
    # stop: the gate's blocking check fails with ERROR, stopping what is downstream.
    on_rethink: Literal["seed_only", "stop"] = "seed_only"

    @model_validator(mode="after")
    def _consistent(self) -> TeacherGate:
        if (self.proceed is None) != (self.rethink is None):
            raise ValueError("give both `proceed` and `rethink` (or neither)")
        if self.proceed is not None and self.rethink is not None and self.rethink > self.proceed:
            raise ValueError(f"rethink ({self.rethink:g}) must not be above proceed ({self.proceed:g})")
        unknown = sorted(set(self.by_metric) - set(GATE_METRICS))
        if unknown:
            raise ValueError(f"by_metric: unknown metric {unknown[0]!r} (one of {', '.join(GATE_METRICS)})")
        return self


class TaskSpec(_Strict):
    name: str
    type: TaskType
    description: str
    # Rendered with str.format(question=..., context=...); see prompts.render_user_prompt.
    prompt_template: str = "{question}"
    labels: dict[str, str] | None = None
    tools: list[dict[str, Any]] | None = None
    # How tool schemas appear in the prompt (the same for every model): "signature" = compact
    # function signatures with types, enums, defaults, constraints and descriptions (see
    # prompts.render_tools); "json_schema" = the raw OpenAI function schemas as JSON.
    tool_rendering: Literal["signature", "json_schema"] = "signature"
    metric: MetricName | None = None
    judge_rubric: str | None = None
    # Generation tasks whose answers mark spans with typed placeholders ("[PERSON]", ...): the
    # allowed names, without brackets. Validation rejects answers using any other "[UPPER_CASE]".
    answer_placeholders: list[str] | None = None
    data: DataSources = Field(default_factory=DataSources)
    student_base_model: PerProfile = Field(default_factory=PerProfile)
    student_candidates: StudentCandidates = Field(default_factory=dict)  # profile -> candidates (tasks/candidates.py)
    teacher: dict[str, ModelRef] = Field(default_factory=dict)  # profile -> teacher
    judge: ModelRef | None = None
    # The judge may share a family (Anthropic, OpenAI, Google, xAI, ...) with a judged comparison
    # model only when this says so: an LLM judge prefers its own family's answers.
    judge_same_family_ok: bool = False
    comparison_models: list[ModelRef] = Field(default_factory=list)
    # Non-inferiority margin δ on the score scale (0.02 = 2 points): the student "matches" a model
    # when the CI lower bound of (student − model) is above −δ. Printed in every verdict.
    margin: float = Field(default=0.02, ge=0.0, lt=1.0)
    # Also run every API comparison model at temperature 0 (one run), beside its own setting: a
    # like-for-like comparison with the greedy student. Reported as "<model> @ temperature 0".
    frontier_temperature_0: bool = False
    training: TrainingOverrides = Field(default_factory=TrainingOverrides)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    teacher_gate: TeacherGate = Field(default_factory=TeacherGate)
    max_answer_tokens: int = 128
    latency_slo_s: float = 1.0
    # p95 latency SLO per profile (seconds), overriding latency_slo_s there: a 2-core CPU serving a
    # 135M model cannot meet a GPU's 1 s, and the CPU student still deserves a measured sustained RPS.
    latency_slo_by_profile: dict[Literal["local", "gpu", "test", "rehearsal"], float] = Field(default_factory=dict)
    min_seed_rows: int = 10
    min_test_rows: int = 20
    source_file: str | None = None  # where the YAML came from (set by the loader, not by the file)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TASK_NAME_RE.match(v):
            raise ValueError(f"task name {v!r} must be lower snake_case (it becomes an asset key prefix)")
        return v

    @model_validator(mode="after")
    def _by_type(self) -> TaskSpec:
        if self.type == "classification" and not self.labels:
            raise ValueError("classification tasks need `labels` (name -> description)")
        if self.type == "tool_calling":
            if not self.tools:
                raise ValueError("tool_calling tasks need `tools` (OpenAI function schemas)")
            for i, tool in enumerate(self.tools):
                fn = tool.get("function") if isinstance(tool, dict) else None
                if tool.get("type") != "function" or not isinstance(fn, dict) or "name" not in fn:
                    raise ValueError(f"tools[{i}] must be {{type: function, function: {{name, parameters}}}}")
                params = fn.get("parameters", {})
                if params.get("type", "object") != "object":
                    raise ValueError(f"tools[{i}].function.parameters must be a JSON-schema object")
        if self.metric == "llm_judge" and not self.judge_rubric:
            raise ValueError("metric llm_judge needs a `judge_rubric`")
        if self.judge is not None and not self.judge_same_family_ok:
            family = model_family(self.judge.model)
            judged = [ref.model for ref in self.comparison_models if model_family(ref.model) == family]
            if family is not None and judged:
                raise ValueError(
                    f"judge {self.judge.model} is of the {family} family, like judged model(s) {', '.join(judged)}: "
                    "an LLM judge favours its own family; pick another judge or set judge_same_family_ok: true"
                )
        try:
            self.prompt_template.format(question="q", context="c")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"prompt_template may only use {{question}} and {{context}} (escape braces as {{{{ }}}}): {exc}"
            ) from exc
        return self

    # -- derived -----------------------------------------------------------------------------
    @property
    def metric_name(self) -> str:
        return self.metric or DEFAULT_METRIC[self.type]

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools or []]

    def latency_slo(self, profile: str) -> float:
        """The p95 latency SLO (s) the throughput profile judges sustained rates by under ``profile``."""
        return float(self.latency_slo_by_profile.get(profile, self.latency_slo_s))

    def student_base(self, profile: str) -> str:
        from distil_platform.profiles import get_profile

        return self.student_base_model.for_profile(profile) or get_profile(profile).default_student_base

    def teacher_for(self, profile: str) -> ModelRef:
        from distil_platform.profiles import get_profile

        if profile in self.teacher:
            return self.teacher[profile]
        return ModelRef(model=get_profile(profile).default_teacher, tier="teacher", temperature=0.8)

    def local_data_dir(self) -> Path | None:
        env = self.data.local_dir_env or f"DISTIL_DATA_{self.name.upper()}"
        value = os.environ.get(env) or self.data.local_dir
        if not value:
            return None
        path = Path(value)
        if not path.is_absolute() and self.source_file:
            path = Path(self.source_file).parent / path
        return path

    def sample_dir(self) -> Path:
        return PACKAGE_DIR / "data" / (self.data.sample or self.name)


# Model families by name (the provider prefix of an OpenAI-compatible endpoint says nothing).
_FAMILIES = (
    ("anthropic", ("claude",)), ("openai", ("gpt-", "o1-", "o3-", "o4-", "chatgpt")),
    ("google", ("gemini", "gemma")), ("xai", ("grok",)), ("mistral", ("mistral", "mixtral", "magistral", "codestral")),
    ("deepseek", ("deepseek",)), ("qwen", ("qwen", "qwq")), ("meta", ("llama",)),
)


def model_family(model: str) -> str | None:
    """The family of a model string (``anthropic/claude-haiku-4-5`` -> ``anthropic``), None if unknown."""
    name = model.lower().rsplit("/", 1)[-1]
    for family, needles in _FAMILIES:
        if any(name.startswith(n) or f"-{n}" in name for n in needles):
            return family
    return None


def tasks_dir() -> Path:
    return Path(os.environ.get("DISTIL_TASKS_DIR") or PACKAGE_DIR / "tasks")


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid task definition"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  field `{loc}`: {err['msg']}")
    return "\n".join(lines)


def load_task_file(path: str | Path) -> TaskSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskSpecError(f"{path}: task file not found") from None
    except yaml.YAMLError as exc:
        raise TaskSpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TaskSpecError(f"{path}: a task file must be a mapping, got {type(raw).__name__}")
    if "source_file" in raw:
        raise TaskSpecError(f"{path}: field `source_file` is set by the loader, not by the file")
    raw.setdefault("name", path.stem)
    if raw["name"] != path.stem:
        raise TaskSpecError(f"{path}: field `name` ({raw['name']!r}) must match the file name ({path.stem!r})")
    try:
        return TaskSpec(**raw, source_file=str(path.resolve()))
    except ValidationError as exc:
        raise TaskSpecError(_format_validation_error(path, exc)) from None


def load_tasks(directory: str | Path | None = None) -> dict[str, TaskSpec]:
    """All tasks in ``directory`` (default: :func:`tasks_dir`), keyed by name, sorted."""
    directory = Path(directory) if directory else tasks_dir()
    if not directory.is_dir():
        raise TaskSpecError(f"{directory}: task directory does not exist")
    specs = {}
    for path in sorted(directory.glob("*.yaml")):
        spec = load_task_file(path)
        specs[spec.name] = spec
    if not specs:
        raise TaskSpecError(f"{directory}: no *.yaml task files")
    return specs


@lru_cache(maxsize=8)
def _cached(directory: str) -> dict[str, TaskSpec]:
    return load_tasks(directory)


def get_task(name: str, directory: str | Path | None = None) -> TaskSpec:
    specs = _cached(str(Path(directory) if directory else tasks_dir()))
    if name not in specs:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(specs)}")
    return specs[name]
