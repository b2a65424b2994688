"""Observable source assets (group ``config``): the pricing file and each task's prompt.

One observation reads every watched file and reports its content hash as the data version
(``distil_platform.confighash``). Downstream automation conditions (``assets/automation.py``) fire
on a *new* data version, so an unchanged file requests nothing, an edit requests what it
invalidates, and reverting a file to earlier content is a change too. A task file that no longer
parses keeps its last good data version (the observation is skipped for it and a warning says why).
"""

import os
from collections.abc import Mapping

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from distil_platform.confighash import PROMPT_FIELDS, pricing_content_hash, task_prompt_hash
from distil_platform.tasks.spec import TaskSpec

from .automation import observe_condition
from .keys import CONFIG_GROUP, PRICING_FILE_KEY, prompt_key

# How often the automation sensor observes the configuration files (env overrides, cron syntax).
OBSERVE_CRON_ENV = "DISTIL_CONFIG_OBSERVE_CRON"
DEFAULT_OBSERVE_CRON = "*/2 * * * *"


def observe_cron() -> str:
    return os.environ.get(OBSERVE_CRON_ENV, DEFAULT_OBSERVE_CRON)


def _observation(key: dg.AssetKey, digest: str, path: str) -> dg.AssetObservation:
    return dg.AssetObservation(asset_key=key, tags={DATA_VERSION_TAG: digest[:32]},
                               metadata={"path": dg.MetadataValue.path(path), "content_hash": digest[:16]})


def prompt_observation(spec: TaskSpec) -> dg.AssetObservation | None:
    """The ``<task>_prompt`` version a run used, logged by ``<task>_teacher_data`` when it starts: the
    next cron observation then finds no new version (no re-distillation of a task just materialised)."""
    try:
        return _observation(prompt_key(spec.name), task_prompt_hash(spec), spec.source_file or "")
    except (OSError, ValueError):
        return None


def pricing_file_observation() -> dg.AssetObservation | None:
    """The ``pricing_file`` version ``pricing`` snapshotted (same reason as ``prompt_observation``)."""
    from distil_platform.economics.pricing_file import pricing_file

    path = pricing_file()
    try:
        return _observation(PRICING_FILE_KEY, pricing_content_hash(path.read_bytes()), str(path))
    except OSError:
        return None


def build_config_sources(specs: Mapping[str, TaskSpec]) -> dg.AssetsDefinition:
    condition = observe_condition(observe_cron())
    asset_specs = [dg.AssetSpec(
        PRICING_FILE_KEY, group_name=CONFIG_GROUP, automation_condition=condition, kinds={"yaml"},
        description="The pricing file ($/MTok per model, hardware $/hour; env DISTIL_PRICING_FILE overrides the "
        "path). Data version: hash of its parsed content. A new version re-prices (pricing, cost tables, routing, "
        "report); nothing of the model pipeline runs.",
    )]
    for name, spec in sorted(specs.items()):
        asset_specs.append(dg.AssetSpec(
            prompt_key(name), group_name=CONFIG_GROUP, automation_condition=condition, kinds={"yaml"},
            tags={"task": name, "task_type": spec.type},
            description=f"The prompt of `{name}`: the fields {', '.join(PROMPT_FIELDS)} of "
            f"{spec.source_file or 'its task spec'}. A new version re-distils `{name}` (teacher data and "
            "everything downstream), nothing of other tasks.",
        ))

    @dg.multi_observable_source_asset(specs=asset_specs, name="config_files",
                                      description="Observes the pricing file and every task's prompt.")
    def config_files(context: dg.AssetExecutionContext):
        from distil_platform.economics.pricing_file import pricing_file

        path = pricing_file()
        try:
            digest = pricing_content_hash(path.read_bytes())
            yield dg.ObserveResult(asset_key=PRICING_FILE_KEY, data_version=dg.DataVersion(digest[:32]),
                                   metadata={"path": dg.MetadataValue.path(str(path)), "content_hash": digest[:16]})
        except OSError as exc:
            context.log.warning(f"pricing file {path}: cannot read ({exc}); its data version is unchanged")
        for name, spec in sorted(specs.items()):
            try:
                digest = task_prompt_hash(spec)
            except (OSError, ValueError) as exc:
                context.log.warning(f"{name}: {exc}; keeping the last good prompt version")
                continue
            yield dg.ObserveResult(asset_key=prompt_key(name), data_version=dg.DataVersion(digest[:32]),
                                   metadata={"path": dg.MetadataValue.path(spec.source_file or ""),
                                             "content_hash": digest[:16]})

    return config_files
