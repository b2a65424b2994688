"""The Dagster Definitions: every task's asset graph, shared cost/report assets, sensor, schedule.

Loading this module reads the task YAMLs and builds the graph; it imports no ML library
(torch, transformers, vllm, litellm are imported inside the assets that use them).
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

# No price map is fetched over the network at import (litellm would otherwise try).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from distil_platform.assets import build_task_assets
from distil_platform.assets.config_sources import build_config_sources
from distil_platform.assets.costs import build_shared_cost_assets
from distil_platform.profiles import get_profile
from distil_platform.resources import (
    HubResource,
    LLMResource,
    ModelStoreResource,
    ResultsStoreResource,
    ServingResource,
    TeacherEndpointResource,
    TrainerResource,
)
from distil_platform.resources.trainer import launcher_from_env
from distil_platform.sensors import build_sensors_and_schedules
from distil_platform.tasks.spec import load_tasks


def build_definitions() -> dg.Definitions:
    specs = load_tasks()
    profile = get_profile()
    assets_and_checks: list = [build_config_sources(specs)]
    for spec in specs.values():
        assets_and_checks += build_task_assets(spec, profile)
    assets_and_checks += build_shared_cost_assets(list(specs))
    assets = [a for a in assets_and_checks if isinstance(a, dg.AssetsDefinition) and not _is_check_only(a)]
    checks = [a for a in assets_and_checks if _is_check_only(a)]
    sensors, schedules, jobs = build_sensors_and_schedules(specs)
    # The URL is an EnvVar field (shown by name on the UI's resources page, its value never: it may
    # carry a password); unset, the store is $DAGSTER_HOME/results.db.
    results_store = ResultsStoreResource(url=_env_setting("DISTIL_DB_URL"))
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        sensors=sensors,
        schedules=schedules,
        jobs=jobs,
        executor=_executor(profile.name),
        resources={
            # One results store: the LLM client's cache/usage rows land where predictions do.
            "llm": LLMResource(results_store=results_store),
            "serving": ServingResource(backend=profile.serving_backend, dtype=profile.dtype),
            "model_store": ModelStoreResource(),
            # Where the training job runs (DISTIL_TRAIN_LAUNCHER: subprocess via Dagster Pipes by default).
            "trainer": TrainerResource(launcher=launcher_from_env()),
            "results_store": results_store,
            "teacher_endpoint": TeacherEndpointResource(api_base=_env_setting("DISTIL_TEACHER_API_BASE"),
                                                        api_key=_env_setting("DISTIL_TEACHER_API_KEY")),
            # The token a bundle is pushed to the hub with (only when a run asks for a push).
            "hub": HubResource(token=_env_setting("HF_TOKEN")),
            **_io_manager(),
        },
    )


def _io_manager() -> dict[str, Any]:
    """The values steps hand each other (small dicts: URLs, run ids, scores) go where the artefacts
    go. Local base: Dagster's default (``$DAGSTER_HOME/storage``). Object store
    (``DISTIL_ARTIFACTS_URL``): Dagster's own ``FilesystemIOManager`` on a universal-pathlib path,
    ``<base>/storage`` — so no step relies on another's disk."""
    from distil_platform.storage.paths import ARTIFACTS_URL_ENV, is_remote

    base = os.environ.get(ARTIFACTS_URL_ENV, "").strip().rstrip("/")
    if not base or not is_remote(base):
        return {}
    return {"io_manager": dg.FilesystemIOManager(base_dir=f"{base}/storage")}


def _env_setting(name: str) -> dg.EnvVar | None:
    """``dg.EnvVar(name)`` when the variable is set (the UI shows the variable, never its value), else
    None: an optional setting left unset is not an error at resource initialisation."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def _executor(profile_name: str) -> dg.ExecutorDefinition:
    """On a CPU profile every heavy step (training, serving, load tests) wants all cores: two at once
    each run 7-12x slower, and a load test beside a training job measures nothing. So steps run one
    at a time, each in its own process (memory is returned after training). On the GPU profile steps
    run in parallel and the `gpu` concurrency pool keeps two off one card. `DISTIL_EXECUTOR=k8s`: each
    step a Kubernetes Job (assets/deployment.py; GPU steps request a card via their op tags)."""
    from distil_platform.assets.deployment import executor_kind, k8s_executor

    if executor_kind() == "k8s":
        return k8s_executor()
    if profile_name in ("local", "test"):
        return dg.multiprocess_executor.configured({"max_concurrent": 1})
    return dg.multiprocess_executor


def _is_check_only(obj) -> bool:
    return isinstance(obj, dg.AssetChecksDefinition)


defs = build_definitions()
