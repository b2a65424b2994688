"""The rehearsal (profile ``rehearsal``, docs/gpu.md): what a GPU user with keys gets, shown on this CPU
with every provider replaced by the provider fake on loopback (``distil_platform.llm.provider_fake``).

The fast test runs the real ``<task>_frontier_evals`` asset for a judge-scored task (hotpotqa) with
the task YAML's ten frontier models and its LLM judge, each provider reached through litellm's own
wire format (OpenAI chat, Anthropic messages, Gemini generateContent, xAI, Mistral), every model
served a 429, a 503, a timeout, an empty reply and a truncated one; then the pricing, cost table,
routing and report assets on what it stored. The whole graph with served models is ``make
rehearsal`` (the slow test at the end)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from distil_platform.assets.costs import build_shared_cost_assets, build_task_cost_assets
from distil_platform.assets.evals import BaselineConfig, build_eval_assets
from distil_platform.assets.routing import build_routing_asset
from distil_platform.resources import ResultsStoreResource
from distil_platform.resources.models import LLMResource

from distil_platform.economics.costs import latest_cost_table
from distil_platform.economics.pricing_file import price_lookup
from distil_platform.economics.report import STAND_IN_MARK, STAND_IN_TITLE
from distil_platform.llm.provider_fake import Behaviour, ProviderFake, judge_verdict, provider_env
from distil_platform.profiles import REHEARSAL_DEFAULT_TEACHER, get_profile
from distil_platform.storage.store import ResultsStore, llm_requests, predictions, student_lineage
from distil_platform.tasks.spec import get_task

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ["429", "503", "timeout", "empty", "truncated"]
JUDGE = "mistral/mistral-large-2512"


def _answer_for(rows):
    """The stand-in answer: the reference, wrong on a quarter of (model, item, repeat) draws."""

    def answer(model, messages, occurrence):
        user = messages[-1]["content"]
        row = next(r for r in rows if r["question"] in user)
        draw = hashlib.sha256(f"{model}|{row['id']}|{occurrence}".encode()).digest()[0]
        return "I could not tell." if draw % 4 == 0 else row["answer"]

    return answer


def test_the_rehearsal_profile_is_the_gpu_graph_on_a_cpu_with_stand_ins(monkeypatch):
    gpu, rehearsal = get_profile("gpu"), get_profile("rehearsal")
    assert rehearsal.frontier_stand_ins and not gpu.frontier_stand_ins and not rehearsal.requires_cuda
    assert rehearsal.default_teacher == REHEARSAL_DEFAULT_TEACHER and rehearsal.default_teacher.startswith("openai/")
    monkeypatch.setenv("DISTIL_TEACHER_MODEL", "openai/my-local-teacher")  # as a user points the gpu profile
    assert get_profile("rehearsal").default_teacher == "openai/my-local-teacher"
    for name in ("text2sql", "hotpotqa"):  # the ten frontier models of the gpu benchmark, 3 repeats each
        spec = get_task(name)
        assert len(spec.comparison_models) == 10 and {r.repeats for r in spec.comparison_models} == {3}
        assert spec.student_base("rehearsal") == "smollm2-135m-instruct"
    assert get_task("text2sql").latency_slo("rehearsal") == 5.0  # a CPU's SLO, stated in the task YAML
    env = provider_env("http://127.0.0.1:1")
    assert env["ANTHROPIC_API_BASE"] == "http://127.0.0.1:1/anthropic"
    assert all(v.startswith("rehearsal-dummy-") for k, v in env.items() if k.endswith("_API_KEY"))


def test_the_fake_wants_a_key_and_judges_like_the_platforms_prompt():
    import json
    import urllib.error
    import urllib.request

    from distil_platform.evaluation.scoring.judge import build_judge_messages

    with ProviderFake(lambda m, msgs, k: "x") as fake:
        request = urllib.request.Request(f"{fake.base_url}/openai/v1/chat/completions",
                                         data=json.dumps({"model": "gpt-5-nano", "messages": []}).encode())
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=5)
        assert err.value.code == 401 and fake.stats() == {}
    good = build_judge_messages("Paris.", "paris", "Capital of France?", "Same city.")
    bad = build_judge_messages("Lyon", "Paris", "Capital of France?", "Same city.")
    assert judge_verdict(good) == "GOOD" and judge_verdict(bad) == "BAD"
    assert judge_verdict([{"role": "user", "content": "hi"}]) is None


def test_ten_frontier_models_through_the_fake_count_every_misbehaviour_and_the_spend_is_their_usage_priced(
        tmp_path, monkeypatch):
    from cost_fixtures import DISTILLED, plant_task, publish_planted

    monkeypatch.setenv("DISTIL_PROFILE", "rehearsal")
    profile = get_profile("rehearsal")
    spec = get_task("hotpotqa")
    models = [r.model for r in spec.comparison_models]
    store = ResultsStore()
    info = plant_task(store, spec, tmp_path, api_models={}, student_lineage=DISTILLED)
    rows = info["rows"]
    # The student: right from the fourth item on, confident there; wrong and unsure on the first three.
    store.insert(predictions, [{"run_id": "stu-j", "task": spec.name, "stage": "student_eval", "model": info["student"],
                                "variant": "student", "item_id": r["id"], "repeat": 0, "score": float(k >= 3),
                                "metric": f"llm_judge:{JUDGE}", "confidence": 0.95 if k >= 3 else 0.2}
                               for k, r in enumerate(rows)])
    store.insert(student_lineage, [{"run_id": "stu-j", "task": spec.name, "stage": "student_eval",
                                    "model": info["student"], **DISTILLED}])
    behaviours = {m: Behaviour(reasoning_tokens=11 * (k + 1), cached_prompt_tokens=40 + k, faults=FAULTS, hang_s=1.6)
                  for k, m in enumerate(models)}
    with ProviderFake(_answer_for(rows), behaviours=behaviours) as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        frontier_evals = build_eval_assets(spec, profile)[1]
        context = dg.build_asset_context()
        out = frontier_evals(context, config=BaselineConfig(), seed_set={"test_path": str(tmp_path / "hotpotqa_test.parquet")},
                             student_eval={"run_id": "stu-j", "model": info["student"], "score": 0.75, "ci": [0.5, 0.9]},
                             llm=LLMResource(timeout_s=1.0, max_retries=4), results_store=ResultsStoreResource())
        stats = fake.stats()
    run_id = context.run_id
    per_model = out.metadata["per_model"].value
    assert out.metadata["models_evaluated"].value == 10 and out.metadata["models_skipped"].value == 0
    assert "stand-in" in out.metadata["stand_ins"].value and "[stand-in]" in out.metadata["comparison"].value
    assert stats[JUDGE]["requests"] >= 1 and not stats[JUDGE]["injected"]  # the judge, through the fake too
    stored = store.select(predictions, run_id=run_id, stage="frontier_evals")
    assert {r["metric"] for r in stored} == {f"llm_judge:{JUDGE}"}  # judge-scored, never the token-F1 fallback
    for model in models:
        m, s = per_model[model], stats[model]
        # Each fault injected once per model, and each a counted outcome, never a silent 0.
        assert s["injected"] == dict.fromkeys(FAULTS, 1), model
        assert m["retries"] == 3 and m["timeouts"] == 1, model  # 429, 503 and the timeout: retried
        assert m["empty"] == 1 and m["truncated"] == 2, model  # the empty reply was cut at max_tokens too
        assert m["unscorable"] >= 1 and m["request_errors"] == 0 and m["failed_requests"] == 0, model
        assert m["repeats"] == 3 and m["repeat_std"] > 0 and m["stand_in"] is True, model
        assert s["delivered"] == 3 * len(rows) and s["requests"] == 3 * len(rows) + 3, model
        # The spend: every delivered reply's reported usage at the snapshot's prices, cached rate included.
        billed = [r for r in store.select(llm_requests, run_id=run_id, stage="frontier_evals", model=model)
                  if not r["cache_hit"]]
        assert sorted((r["prompt_tokens"], r["cached_prompt_tokens"], r["completion_tokens"]) for r in billed) == \
            sorted((p, c, o) for p, c, o, _ in s["usage"])
        price = price_lookup()(model)
        if model.startswith("xai/"):
            assert price is None and {r["cost_usd"] for r in billed} == {None}  # declared unpriced: no silent $0
            continue
        expected = sum((p - c) * price[0] + c * price[2] + o * price[1] for p, c, o, _ in s["usage"])
        assert sum(r["cost_usd"] for r in billed) == pytest.approx(expected, rel=1e-9)
        assert price[2] < price[0]  # a cached rate below the input rate: the test would see it billed wrong

    # Downstream: pricing, cost table, routing and the report, from what the run stored.
    instance = dg.DagsterInstance.ephemeral()
    publish_planted(instance, spec.name, {**info["runs"], "student_eval": "stu-j", "frontier_evals": run_id})
    pricing, report = build_shared_cost_assets([spec.name], profile)
    cost_table = [a for a in build_task_cost_assets(spec, profile=profile) if a.key.path[0].endswith("_cost_table")]
    result = dg.materialize([pricing, *cost_table, *build_routing_asset(spec, profile)],
                            resources={"results_store": ResultsStoreResource()}, instance=instance)
    assert result.success
    table = {r["model"]: r for r in latest_cost_table(store, spec.name)}
    for k, model in enumerate(models):
        row, usage = table[model], stats[model]["usage"]
        assert row["repeats"] == 3 and row["accuracy_std"] is not None, model
        if model.startswith("xai/"):
            assert row["usd_per_million_requests"] is None, model
            continue
        price = price_lookup()(model)
        mean = sum((p - c) * price[0] + c * price[2] + o * price[1] for p, c, o, _ in usage) / len(usage)
        assert row["usd_per_million_requests"] == pytest.approx(mean * 1e6, rel=1e-6), model
        assert row["mean_cached_prompt_tokens"] == pytest.approx(40 + k), model
    cost_md = result.asset_materializations_for_node("hotpotqa_cost_table")[0].metadata
    assert "stand-in" in cost_md["stand_ins"].value
    assert all(f"{m}{STAND_IN_MARK}" in cost_md["cost_table"].value for m in models)
    routing = result.asset_materializations_for_node("hotpotqa_routing")[0].metadata
    assert "stand-in" in routing["stand_ins"].value and "stand-ins" in routing["recommendation"].value
    assert routing["confidence_available"].value is True and "cascade" in routing["policies"].value

    rep = dg.materialize([report], resources={"results_store": ResultsStoreResource()}, instance=instance)
    md = rep.asset_materializations_for_node("benchmark_report")[0].metadata
    text = md["report"].value
    assert text.startswith(STAND_IN_TITLE) and md["headline"].value.startswith("REHEARSAL")
    assert Path(md["report_path"].value).name == "rehearsal_report.md"  # never benchmark_report.md
    assert "student vs mid-tier (test)" in text  # the verdict table

    for model in models:  # every frontier row is marked
        assert re.search(re.escape(model) + r"(?!" + re.escape(STAND_IN_MARK) + ")[^\\w\\-.]", text.replace(
            model + STAND_IN_MARK, "")) is None, model
        assert model + STAND_IN_MARK in text, model


@pytest.mark.slow
def test_make_rehearsal_runs_the_graph_end_to_end(tmp_path):
    """``make rehearsal``'s driver on hotpotqa: a teacher endpoint and the provider fake on loopback,
    the whole graph under the rehearsal profile (minutes: training and serving on the CPU)."""
    if not (ROOT / ".venv-vllm" / "bin" / "python").exists() and not shutil.which("transformers"):
        pytest.skip("no serving environment")
    (tmp_path / "home").mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "distil_platform.rehearsal", "--task", "hotpotqa"], check=False, env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "home" / "reports" / "rehearsal_report.md").read_text()
    assert report.startswith(STAND_IN_TITLE) and not (tmp_path / "home" / "reports" / "benchmark_report.md").exists()
