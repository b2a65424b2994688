"""The Definitions load, hold every task's graph, and selections pick exactly one task's pipeline."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import pytest

from distil_platform.tasks.spec import load_tasks

NINE = {"text2sql", "smart_home", "git_assistant", "banking77", "ecommerce", "trec", "hotpotqa",
        "docstring", "pii_redaction"}
STAGES = ["", "_teacher_eval", "_teacher_data", "_student", "_student_eval", "_baseline_evals", "_frontier_evals", "_throughput",
          "_cost_table", "_routing", "_student_bundle"]


def test_key_module_matches_the_documented_stages():
    from distil_platform.assets.keys import TASK_STAGES, task_key

    assert list(TASK_STAGES) == STAGES
    assert task_key("text2sql", "student").to_user_string() == "text2sql_student"
    assert task_key("text2sql").to_user_string() == "text2sql"
    with pytest.raises(ValueError):
        task_key("text2sql", "students")


@pytest.fixture(scope="module")
def defs():
    from distil_platform.definitions import build_definitions

    return build_definitions()


def _keys(defs) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


def test_every_task_has_its_full_pipeline(defs):
    keys = _keys(defs)
    for task in NINE:
        for stage in STAGES:
            assert f"{task}{stage}" in keys
    assert {"pricing", "benchmark_report"} <= keys


def test_each_task_is_its_own_group(defs):
    graph = defs.resolve_asset_graph()
    for task in NINE:
        for stage in STAGES:
            assert graph.get(dg.AssetKey(f"{task}{stage}")).group_name == task


def _select(defs, selection: str) -> set[str]:
    graph = defs.resolve_asset_graph()
    sel = dg.AssetSelection.from_string(selection)
    return {k.to_user_string() for k in sel.resolve(graph)}


def test_downstream_selection_picks_one_task_plus_shared_report(defs):
    selected = _select(defs, "text2sql*")
    assert {f"text2sql{s}" for s in STAGES} <= selected
    assert selected - {f"text2sql{s}" for s in STAGES} == {"benchmark_report"}
    # smart_home shares the text2sql prefix with nothing; banking77 etc. never leak in.
    assert not any(k.startswith(("smart_home", "banking77", "git_assistant")) for k in selected)


def test_group_and_key_prefix_selections(defs):
    expected = {f"text2sql{s}" for s in STAGES}
    assert _select(defs, "group:text2sql") == expected
    assert _select(defs, 'key:"text2sql*"') == expected


def test_definitions_import_no_ml_libraries():
    code = (
        "import sys; import distil_platform.definitions as d; "
        "bad=[m for m in ('torch','transformers','vllm','trl','peft','litellm','datasets') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"heavy modules imported at Definitions load: {out.stdout} {out.stderr[-2000:]}"


def test_dagster_cli_validates_definitions():
    exe = [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "distil_platform.definitions"]
    out = subprocess.run(exe, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_tasks_yaml_matches_definitions(defs):
    """Every task file is a group of the Definitions with its full pipeline, and nothing else is."""
    tasks = set(load_tasks())
    assert tasks >= NINE
    graph = defs.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert groups == tasks | {"costs", "config"}
    for task in tasks:
        assert dg.AssetKey(f"{task}_cost_table") in graph.get_all_asset_keys()
        assert dg.AssetKey(["config", f"{task}_prompt"]) in graph.get_all_asset_keys()


def test_tags_kinds_and_owners_select_across_tasks(defs):
    classification = {t for t, s in load_tasks().items() if s.type == "classification"}
    selected = _select(defs, "tag:task_type=classification")
    graph = defs.resolve_asset_graph()
    assert {graph.get(dg.AssetKey.from_user_string(k)).tags["task"] for k in selected} == classification
    assert {f"{t}_student" for t in classification} <= selected
    for task in NINE:
        for stage in STAGES:
            node = graph.get(dg.AssetKey(f"{task}{stage}"))
            assert node.owners, f"{task}{stage} has no owner"
            assert any(t.startswith("dagster/kind/") for t in node.tags), f"{task}{stage} has no kind"
            assert node.tags.get("task") == task


def test_dg_cli_checks_and_lists_the_definitions():
    """`dg check defs` and `dg list defs` (the dg project in pyproject) load the same Definitions."""
    import json
    import shutil
    from pathlib import Path

    dg_exe = shutil.which("dg", path=str(Path(sys.executable).parent))
    assert dg_exe, "dagster-dg-cli is a dependency: its `dg` script must be in the venv"
    root = Path(__file__).resolve().parents[1]
    check = subprocess.run([dg_exe, "check", "defs"], cwd=root, capture_output=True, text=True, timeout=300,
                           check=False)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    listed = subprocess.run([dg_exe, "list", "defs", "--json"], cwd=root, capture_output=True, text=True, timeout=300,
                            check=False)
    assert listed.returncode == 0, listed.stderr[-2000:]
    keys = {a["asset_key"] for a in json.loads(listed.stdout)["assets"]}
    assert {"text2sql_student", "benchmark_report", "config/pricing_file"} <= keys


def test_results_store_url_is_an_env_var_field(monkeypatch):
    """The results-store URL is a resource field fed by ``dg.EnvVar`` (shown by name on the UI's
    resources page; a Postgres URL's password never reaches metadata), shared with the LLM client."""
    from distil_platform.definitions import build_definitions

    monkeypatch.setenv("DISTIL_DB_URL", "sqlite:////tmp/not-shown.db")
    resources = build_definitions().resources
    url = resources["results_store"].url
    assert isinstance(url, dg.EnvVar) and url.env_var_name == "DISTIL_DB_URL"
    assert resources["llm"].results_store is resources["results_store"]
    monkeypatch.delenv("DISTIL_DB_URL")
    assert build_definitions().resources["results_store"].url is None  # default: $DAGSTER_HOME/results.db


def test_no_asset_body_reads_the_profile_from_the_environment():
    """The profile is resolved once, when the graph is built, and captured by the stage factories:
    an asset or check body that calls ``get_profile()`` or reads ``os.environ`` for it would make a
    step's behaviour depend on its worker's environment rather than on the Definitions."""
    import ast

    from conftest import REPO_ROOT

    offenders = []
    for path in sorted((REPO_ROOT / "assets").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            decorators = [ast.unparse(d) for d in node.decorator_list]
            if not any(d.startswith(("dg.asset", "dg.multi_asset", "dg.asset_check", "dg.multi_asset_check"))
                       for d in decorators):
                continue
            for inner in ast.walk(node):
                text = ast.unparse(inner) if isinstance(inner, ast.Call) else ""
                if text.startswith(("get_profile(", "current_profile_name(")) or "DISTIL_PROFILE" in text:
                    offenders.append(f"{path.name}:{inner.lineno} {node.name}: {text}")
    assert not offenders, offenders


def test_eval_concurrency_follows_the_given_profile_not_the_environment(monkeypatch):
    """A graph built for the ``test`` profile keeps it when the environment later says otherwise."""
    from distil_platform.assets.common import _has_cuda, eval_concurrency_for
    from distil_platform.assets.evals import BaselineConfig
    from distil_platform.resources import ServingResource

    from distil_platform.profiles import get_profile

    monkeypatch.setenv("DISTIL_PROFILE", "gpu")
    serving = ServingResource(backend="transformers")
    assert eval_concurrency_for(BaselineConfig(), serving, get_profile("test")) == 8
    assert eval_concurrency_for(BaselineConfig(), serving, get_profile("local")) == (16 if _has_cuda() else 1)


def _teacher_node(defs, task: str):
    return defs.resolve_asset_graph().get(dg.AssetKey(f"{task}_teacher_data")).assets_def


@pytest.mark.parametrize(("profile", "in_pool"), [("test", True), ("gpu", False)])
def test_the_teacher_step_is_in_the_gpu_pool_exactly_when_its_teacher_is_served_locally(monkeypatch, profile,
                                                                                        in_pool):
    """A local teacher is a model server (on a GPU it holds the card): its step takes a `gpu` pool slot and
    the GPU pod config, like the student's steps. The gpu profile's teacher is a remote endpoint: no slot."""
    from distil_platform.assets.deployment import GPU_POOL, K8S_CONFIG_TAG

    from distil_platform.definitions import build_definitions

    monkeypatch.setenv("DISTIL_PROFILE", profile)
    defs = build_definitions()
    for task in NINE:
        op = _teacher_node(defs, task).op
        assert (op.pool == GPU_POOL) is in_pool, (profile, task, op.pool)
        assert (K8S_CONFIG_TAG in op.tags) is in_pool, (profile, task)


def test_a_recorded_teacher_or_a_remote_endpoint_keeps_the_step_out_of_the_gpu_pool():
    from distil_platform.assets.deployment import GPU_POOL
    from distil_platform.assets.teacher import build_teacher_assets

    from distil_platform.profiles import get_profile
    from distil_platform.tasks.spec import ModelRef, PerProfile, get_task

    profile = get_profile("test")
    spec = get_task("text2sql")

    def pool(s):
        (asset, *_checks) = build_teacher_assets(s, profile)
        return asset.op.pool

    assert pool(spec) == GPU_POOL  # the test profile's teacher, tiny-qwen3, is served by the step
    recorded = spec.synthesis.model_copy(update={"source": PerProfile(test="recorded")})
    assert pool(spec.model_copy(update={"synthesis": recorded})) is None  # a file: no server
    # ... unless the agreement filter re-asks the (local) teacher.
    agreeing = recorded.model_copy(update={"filters": recorded.filters.model_copy(update={"answer_agreement": True})})
    assert pool(spec.model_copy(update={"synthesis": agreeing})) == GPU_POOL
    remote = {**spec.teacher, "test": ModelRef(model="openai/teacher", api_base="https://teacher.example/v1")}
    assert pool(spec.model_copy(update={"teacher": remote})) is None
