"""Dagster wiring of the asset graph. One factory builds every task's pipeline from its TaskSpec;
each stage has its own module (``seed``, ``teacher``, ``student``, ``evals``, ``throughput``,
``costs``, ``routing``; ``student_serving`` runs the student eval and throughput on one server). Automation conditions, tags, owners and kinds that every task shares are
applied here, in one place (``assets/automation.py`` says what each condition does)."""

from __future__ import annotations

import dagster as dg

from distil_platform.profiles import Profile, get_profile
from distil_platform.tasks.spec import TaskSpec

from .automation import gpu_chain_condition, reprice_condition
from .keys import OWNERS, teacher_eval_key

# stage suffix -> (extra kinds, automation condition role)
_STAGES = {
    "": ({"polars", "parquet"}, None),
    # The teacher answering the test set: a local vLLM server or an endpoint (litellm); the chain's root.
    "_teacher_eval": ({"vllm", "litellm"}, "gpu_root"),
    "_teacher_data": ({"polars", "vllm"}, "gpu_gated"),
    "_student": ({"pytorch", "trl"}, "gpu"),
    "_student_eval": ({"vllm"}, "gpu"),
    "_baseline_evals": ({"vllm", "litellm"}, "gpu"),
    # API calls, not a GPU, but the same chain: re-asked when the seed set or prompt changes, never on re-pricing.
    "_frontier_evals": ({"litellm"}, "gpu"),
    "_throughput": ({"vllm", "aiohttp"}, "gpu"),
    "_cost_table": ({"polars", "parquet"}, "reprice"),
    "_routing": ({"polars"}, "reprice"),
    # Links and small files from the student and the store: rebuilt when any of them has a new version.
    "_student_bundle": ({"huggingface"}, "reprice"),
}


def _condition(role: str | None, seed_key: dg.AssetKey):
    if role == "gpu_root":
        return gpu_chain_condition(seed_key, root=True)
    if role == "gpu_gated":
        # The teacher data reads its gate from the teacher eval's record; a home from before that
        # asset (never materialised there) still re-distils on a prompt edit.
        return gpu_chain_condition(seed_key, root=True, optional=[teacher_eval_key(seed_key.path[-1])])
    if role == "gpu":
        return gpu_chain_condition(seed_key, root=False)
    if role == "reprice":
        return reprice_condition()
    return None


def task_asset_attributes(spec: TaskSpec, assets: list) -> list:
    """Tags (``task``, ``task_type``: ``tag:task_type=classification`` selects across tasks), owners,
    kinds and the automation condition of each of the task's assets; checks pass through."""
    seed_key = dg.AssetKey(spec.name)

    def attrs(asset_spec: dg.AssetSpec) -> dg.AssetSpec:
        suffix = asset_spec.key.path[-1][len(spec.name):].split("__")[0]  # a candidate's: <stage>__<candidate>
        kinds, role = _STAGES.get(suffix, (set(), None))
        out = asset_spec.merge_attributes(tags={"task": spec.name, "task_type": spec.type}, kinds=kinds)
        out = out.replace_attributes(owners=OWNERS)
        condition = _condition(role, seed_key)
        if condition is not None and asset_spec.automation_condition is None:
            out = out.replace_attributes(automation_condition=condition)
        return out

    return [a.map_asset_specs(attrs) if isinstance(a, dg.AssetsDefinition) and not isinstance(
        a, dg.AssetChecksDefinition) else a for a in assets]


def build_task_assets(spec: TaskSpec, profile: Profile | None = None) -> list:
    """All assets and asset checks of one task, in group ``spec.name``.

    Keys: ``<task>`` (seed set), ``<task>_teacher_eval``, ``<task>_teacher_data``, ``<task>_student``, ``<task>_student_eval``,
    ``<task>_baseline_evals``, ``<task>_frontier_evals``, ``<task>_throughput``, ``<task>_cost_table`` (and ``<task>_routing``),
    ``<task>_student_bundle``. Further student candidates (``assets/candidates.py``; env
    ``DISTIL_STUDENT_CANDIDATES``): ``<task>_student__<c>`` and ``<task>_student_serving__<c>``
    (``<task>_student_eval__<c>``, ``<task>_throughput__<c>``), from the same factories.

    ``profile`` (default: ``DISTIL_PROFILE``, read once here) is fixed when the graph is built and
    captured by the stage factories; no asset body reads the environment for it.
    """
    from .candidates import wirings
    from .checks import build_task_checks
    from .costs import build_task_cost_assets
    from .evals import build_eval_assets
    from .routing import build_routing_asset
    from .seed import build_seed_set_asset
    from .student import build_student_asset
    from .student_bundle import build_student_bundle_asset
    from .student_serving import build_student_serving_asset
    from .teacher import build_teacher_assets
    from .teacher_eval import build_teacher_eval_asset

    profile = profile or get_profile()
    candidates = wirings(spec, profile.name)
    extra = [a for c in candidates[1:] for a in build_student_asset(spec, profile, c)
             + build_student_serving_asset(spec, profile, c)]
    assets = (build_seed_set_asset(spec) + build_teacher_eval_asset(spec, profile) + build_teacher_assets(spec, profile)
              + build_student_asset(spec, profile)
              + build_student_serving_asset(spec, profile) + build_eval_assets(spec, profile)
              + build_task_cost_assets(spec, [c.candidate for c in candidates], profile) + build_routing_asset(spec)
              + build_student_bundle_asset(spec, profile) + extra)
    return task_asset_attributes(spec, assets) + build_task_checks(spec)


def build_task_pipeline_assets(spec: TaskSpec, profile: Profile | None = None) -> list:
    """The distillation stages without the seed set and cost stages: teacher eval, teacher data, student,
    student eval + throughput (one subsettable multi-asset: select the keys you want), baseline and frontier
    evals."""
    from .evals import build_eval_assets
    from .student import build_student_asset
    from .student_serving import build_student_serving_asset
    from .teacher import build_teacher_assets
    from .teacher_eval import build_teacher_eval_asset

    profile = profile or get_profile()
    return (build_teacher_eval_asset(spec, profile) + build_teacher_assets(spec, profile) + build_student_asset(spec, profile)
            + build_student_serving_asset(spec, profile) + build_eval_assets(spec, profile))
