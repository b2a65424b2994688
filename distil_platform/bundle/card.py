"""The bundle's model card: ``README.md`` in the Hugging Face card format (YAML front matter, then
Markdown), rendered from the figures and lineage of :mod:`distil_platform.bundle.figures`.

Front matter: ``base_model`` (the hub id, where the base model has one), ``license`` (where known),
``library_name``, ``pipeline_tag``, ``tags``, ``datasets`` (a hub dataset the seed set came from) and
``model-index`` with the eval score. Body: what the model does, the eval score and CI, sustained
requests/s and $ per million requests with the hardware and the price snapshot's date, the training
data's lineage, the files, and how to serve and query it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from distil_platform.bundle.commands import ServingCommand
from distil_platform.bundle.figures import Figures, Lineage
from distil_platform.tasks.spec import TaskSpec

# Model-store names of base models that have a hub id (distil_platform.storage.modelstore), with licenses.
KNOWN_BASES = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
KNOWN_LICENSES = {"HuggingFaceTB/SmolLM2-": "apache-2.0", "Qwen/Qwen3-": "apache-2.0", "Qwen/Qwen2.5-": "apache-2.0"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def base_hub_id(base_model: str) -> str | None:
    """The hub id of a base model name (a model-store name or a hub id), None for local-only models."""
    if base_model in KNOWN_BASES:
        return KNOWN_BASES[base_model]
    return base_model if _HUB_ID.match(base_model) else None


def base_license(hub_id: str | None) -> str | None:
    return next((lic for prefix, lic in KNOWN_LICENSES.items() if hub_id and hub_id.startswith(prefix)), None)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}%"


def _usd(value: Any) -> str:
    if value is None:
        return "–"
    value = float(value)
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def _score(figures: Figures) -> str:
    if figures.score is None:
        return "not measured"
    ci = f" (95% CI {_pct(figures.ci_low)}–{_pct(figures.ci_high)})" if figures.ci_low is not None else ""
    n = f" on {figures.n_items} test items" if figures.n_items else ""
    return f"{_pct(figures.score)}{ci}{n}"


def front_matter(spec: TaskSpec, served_name: str, figures: Figures, lineage: Lineage) -> dict[str, Any]:
    hub_id = base_hub_id(lineage.base_model)
    out: dict[str, Any] = {}
    if hub_id:
        out["base_model"] = hub_id
        out["base_model_relation"] = "finetune"
    if base_license(hub_id):
        out["license"] = base_license(hub_id)
    out["library_name"] = "transformers"
    out["pipeline_tag"] = "text-generation"
    tags = ["distil-platform", "distillation", spec.name, spec.type.replace("_", "-")] + (
        ["lora"] if lineage.method == "lora" else [])
    out["tags"] = list(dict.fromkeys(tags))
    if lineage.seed_source == "hf" and spec.data.hf is not None:
        out["datasets"] = [spec.data.hf.path]
    if figures.score is not None:
        metric = {"type": figures.metric, "name": figures.metric, "value": round(float(figures.score), 4)}
        out["model-index"] = [{"name": served_name, "results": [{
            "task": {"type": "text-generation", "name": spec.name},
            "dataset": {"name": f"{spec.name} test set", "type": spec.name, "split": "test"},
            "metrics": [metric]}]}]
    return out


def _comparison_table(figures: Figures) -> list[str]:
    rows = [r for r in figures.comparisons if r.get("accuracy") is not None or r.get("usd_per_million_requests")]
    if not rows:
        return []
    lines = ["", "Compared on the same test items (the task's cost table; verdict: this student vs the model):", "",
             "| model | role | score | 95% CI | $ / M requests | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['role']} | {_pct(r.get('accuracy'))} | {_pct(r.get('ci_low'))}–"
                     f"{_pct(r.get('ci_high'))} | {_usd(r.get('usd_per_million_requests'))} | "
                     f"{r.get('student_result') or '–'} |")
    return lines


def _results(figures: Figures, generation: dict[str, Any]) -> list[str]:
    throughput = "not measured"
    if figures.sustained_rps is not None:
        slo = f" with p95 latency within {figures.slo_s:g} s" if figures.slo_s else ""
        throughput = f"{figures.sustained_rps:g} requests/s sustained{slo}"
    where = figures.hardware or figures.hardware_key or "–"
    cost = "not priced"
    if figures.usd_per_million_requests is not None:
        cost = (f"{_usd(figures.usd_per_million_requests)} per million requests ({figures.cost_source}; "
                f"{_usd(figures.usd_per_hour)}/hour for `{figures.hardware_key}`)")
    lines = ["## Results", "", "| | |", "|---|---|",
             f"| {figures.metric} | {_score(figures)} |",
             f"| decoding | greedy (temperature {generation['temperature']:g}), at most {generation['max_tokens']} "
             "new tokens: what the evaluation sent |",
             f"| throughput | {throughput} |",
             f"| hardware | {where} (variant `{figures.variant or '–'}`) |",
             f"| cost | {cost} |",
             f"| prices as of | {figures.prices_as_of or '–'} |"]
    if figures.cost_note:
        lines.append(f"| cost basis | {figures.cost_note} |")
    lines += _comparison_table(figures)
    lines += [""] + [f"Note: {n}." for n in figures.notes]
    return lines


def _lineage(lineage: Lineage, adapter: bool) -> list[str]:
    def n(value: Any) -> str:
        return "unknown" if value is None else str(value)

    teacher = f"{n(lineage.teacher_rows)} rows accepted from the teacher stage"
    if lineage.teacher:
        teacher += f" ({lineage.teacher_source or 'teacher'}: `{lineage.teacher}`; validated, quality-filtered, " \
                   "deduplicated and decontaminated against the test set)"
    method = "full fine-tune" if lineage.method == "full" else (
        f"LoRA (r={lineage.lora.get('r')}, alpha={lineage.lora.get('alpha')}), merged into the weights"
        + ("; the adapter alone is in `adapter/`" if adapter else ""))
    return ["## Training data lineage", "",
            f"- seed rows: {n(lineage.seed_rows)} (seed set source: {lineage.seed_source or 'unknown'}); test rows held "
            f"out: {n(lineage.test_rows)}",
            f"- teacher rows: {teacher}",
            f"- base model: `{lineage.base_model}`; method: {method}",
            f"- {n(lineage.steps)} steps, max length {n(lineage.max_length)} tokens, compute dtype "
            f"{lineage.compute_dtype or 'unknown'}, final loss "
            f"{'unknown' if lineage.final_loss is None else f'{lineage.final_loss:.4f}'}",
            f"- trained by distil-platform run `{lineage.student_run_id}`; checkpoint fingerprint "
            f"`{lineage.checkpoint_fingerprint[:16]}`", ""]


def _serve(commands: list[ServingCommand], served_name: str) -> list[str]:
    lines = ["## Serve", "",
             f"Run from the directory that holds this bundle (its directory name, `{served_name}`, is the served "
             "model name), or `bash serve.sh <variant>` from anywhere:", ""]
    for c in commands:
        if not c.argv:
            continue
        lines += [f"**{c.name}**{' (measured)' if c.measured else ''}: {c.note}", "", "```bash", c.shell(), "```", ""]
    return lines


def _query(spec: TaskSpec, served_name: str) -> list[str]:
    context = ' --context "$(cat schema.sql)"' if "{context}" in spec.prompt_template else ""
    return ["## Query", "",
            "`client.py` (standard library only) renders the task's prompt from `task.json` and parses the answer "
            "exactly as the platform's evaluation does:", "",
            "```bash", f'python {served_name}/client.py "<question>"{context} --base-url http://127.0.0.1:8000/v1',
            "```", "", "```python", f"import sys; sys.path.insert(0, {served_name!r})  # the bundle's directory",
            "from client import Student", "",
            'student = Student("http://127.0.0.1:8000/v1")',
            'answer = student.ask("<question>"' + (", context=schema" if context else "") + ")",
            "print(answer.text, answer.value)", "```", "",
            "Any OpenAI-compatible client works too: send `client.render_messages(task, question, context)` with "
            "the `generation` settings of `task.json`.", ""]


def _prompt(task: dict[str, Any]) -> list[str]:
    system = task["system_prompt"]
    shown = system if len(system) <= 1500 else system[:1500] + "\n… (the whole prompt is in task.json)"
    return ["## Prompt", "", "System message (the same for every request):", "", "```text", shown, "```", "",
            "User message: the task's template, `{question}` and `{context}` filled in:", "", "```text",
            task["prompt_template"], "```", "",
            f"Answer rule: `{task['answer_rule']}` (client.py's docstring). The server applies the chat template in "
            "the tokenizer files (also in task.json).", ""]


def model_card(spec: TaskSpec, *, served_name: str, figures: Figures, lineage: Lineage, commands: list[ServingCommand],
               task: dict[str, Any], files: dict[str, int], adapter: bool) -> str:
    """The card's text (front matter + body)."""
    head = yaml.safe_dump(front_matter(spec, served_name, figures, lineage), sort_keys=False, allow_unicode=True)
    description = spec.description.strip().splitlines()[0] if spec.description.strip() else spec.name
    kind = f" ({spec.type})" if spec.type != spec.name else ""
    body = [f"# {served_name}", "",
            f"A `{lineage.base_model}` student distilled for the `{spec.name}` task{kind}: {description}", ""]
    body += _results(figures, task["generation"])
    body += [""] + _lineage(lineage, adapter) + _serve(commands, served_name) + _query(spec, served_name) + _prompt(task)
    body += ["## Files", "", "| file | bytes |", "|---|---|"] + [f"| `{k}` | {v:,} |" for k, v in sorted(files.items())]
    return f"---\n{head}---\n\n" + "\n".join(body) + "\n"


def card_for_display(card: str) -> str:
    """The card for a Markdown viewer that knows no front matter (the Dagster UI): the YAML as a code block."""
    if card.startswith("---\n"):
        end = card.find("\n---\n", 4)
        if end > 0:
            return f"```yaml\n{card[4:end + 1]}```\n" + card[end + 5:]
    return card
