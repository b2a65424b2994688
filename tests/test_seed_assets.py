"""Seed-set assets: materialisation, metadata, store rows, and every check failing on planted data."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from distil_platform.assets.seed import (
    InvalidSeedSetError,
    build_seed_set_asset,
    check_minimum_sizes,
    check_no_leakage,
    check_rows_valid,
)
from distil_platform.resources.store import ResultsStoreResource

from distil_platform.storage.store import ResultsStore, seed_sets
from distil_platform.tasks.spec import get_task, load_task_file


def _materialize(spec, instance=None, raise_on_error=True):
    return dg.materialize(
        build_seed_set_asset(spec),
        resources={"results_store": ResultsStoreResource()},
        instance=instance,
        raise_on_error=raise_on_error,
    )


def _task_with_local_dir(tmp_path: Path, base: str, rows_train: list[dict], rows_test: list[dict]):
    """A copy of a shipped task whose data comes from a local directory we control."""
    data_dir = tmp_path / f"{base}_data"
    data_dir.mkdir()
    for name, rows in (("train", rows_train), ("test", rows_test)):
        (data_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = get_task(base)
    raw = spec.model_dump(exclude={"source_file"}, exclude_none=True)
    raw["data"] = {"local_dir": str(data_dir)}
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir(exist_ok=True)
    path = tasks_dir / f"{base}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_task_file(path), data_dir


def _sample_rows(task: str, split: str) -> list[dict]:
    spec = get_task(task)
    return [json.loads(line) for line in (spec.sample_dir() / f"{split}.jsonl").read_text().splitlines() if line]


def test_text2sql_seed_set_materialises_with_metadata_and_store_row():
    spec = get_task("text2sql")
    result = _materialize(spec)
    assert result.success
    mat = result.asset_materializations_for_node("text2sql")[0]
    md = mat.metadata
    for key in ("source", "n_seed", "n_test", "seed_path", "test_path", "seed_sample"):
        assert key in md
    assert md["n_seed"].value >= 20 and md["n_test"].value >= 30
    assert md["source"].value.startswith("sample:")
    seed = pl.read_parquet(md["seed_path"].value)
    assert set(seed.columns) >= {"id", "question", "answer", "context"}
    assert seed.height == md["n_seed"].value
    rows = ResultsStore().select(seed_sets, task="text2sql")
    assert len(rows) == 1 and rows[0]["n_test"] == md["n_test"].value
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"rows_valid": True, "no_seed_test_leakage": True, "minimum_sizes": True}


def test_classification_metadata_has_label_distribution():
    result = _materialize(get_task("banking77"))
    md = result.asset_materializations_for_node("banking77")[0].metadata
    dist = md["seed_label_distribution"].value
    assert sum(dist.values()) == md["n_seed"].value
    assert set(dist) <= set(get_task("banking77").labels)


def test_invalid_row_fails_naming_file_row_field_and_last_good_materialisation_stays(tmp_path):
    train, test = _sample_rows("banking77", "train"), _sample_rows("banking77", "test")
    spec, data_dir = _task_with_local_dir(tmp_path, "banking77", train, test)
    instance = dg.DagsterInstance.ephemeral()
    good = _materialize(spec, instance)
    good_path = good.asset_materializations_for_node("banking77")[0].metadata["seed_path"].value

    bad_train = [dict(r) for r in train]
    bad_train[3]["answer"] = "not_a_real_label"
    (data_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad_train))
    with pytest.raises(InvalidSeedSetError) as err:
        _materialize(spec, instance)
    message = str(err.value)
    assert "row 4" in message and "`answer`" in message and str(data_dir / "train.jsonl") in message

    latest = instance.get_latest_materialization_event(dg.AssetKey("banking77"))
    assert latest.asset_materialization.metadata["seed_path"].value == good_path
    assert Path(good_path).exists()


def _planted_seed_set(tmp_path: Path, seed: list[dict], test: list[dict]) -> dict:
    seed_path, test_path = tmp_path / "seed.parquet", tmp_path / "test.parquet"
    pl.DataFrame(seed).write_parquet(seed_path)
    pl.DataFrame(test).write_parquet(test_path)
    return {"seed_path": str(seed_path), "test_path": str(test_path)}


@pytest.mark.parametrize("task,field,bad", [
    ("banking77", "answer", "no_such_label"),
    ("smart_home", "answer", json.dumps({"name": "toggle_lights", "parameters": {"room": "garden"}})),
    ("git_assistant", "answer", "not json at all"),
    ("text2sql", "answer", "SELECT missing_column FROM nowhere"),
])
def test_rows_valid_check_fails_on_planted_bad_row(tmp_path, task, field, bad):
    spec = get_task(task)
    seed, test = _sample_rows(task, "train"), _sample_rows(task, "test")
    assert check_rows_valid(spec, _planted_seed_set(tmp_path, seed, test)).passed
    seed[0] = {**seed[0], field: bad}
    result = check_rows_valid(spec, _planted_seed_set(tmp_path, seed, test))
    assert not result.passed
    assert result.metadata["n_invalid"].value == 1


def test_leakage_check_fails_on_planted_leak(tmp_path):
    seed, test = _sample_rows("trec", "train"), _sample_rows("trec", "test")
    assert check_no_leakage(_planted_seed_set(tmp_path, seed, test)).passed
    # Same question, different whitespace and case: still a leak after normalisation.
    test[5] = {**test[5], "question": "  " + seed[2]["question"].upper() + "  "}
    result = check_no_leakage(_planted_seed_set(tmp_path, seed, test))
    assert not result.passed and result.metadata["n_overlapping_pairs"].value == 1


def test_minimum_sizes_check_fails_when_too_small(tmp_path):
    spec = get_task("ecommerce")
    seed, test = _sample_rows("ecommerce", "train"), _sample_rows("ecommerce", "test")
    assert check_minimum_sizes(spec, _planted_seed_set(tmp_path, seed, test)).passed
    result = check_minimum_sizes(spec, _planted_seed_set(tmp_path, seed[: spec.min_seed_rows - 1], test))
    assert not result.passed


def test_blocking_check_stops_downstream(tmp_path):
    """A failed blocking check on the seed set keeps downstream assets from running."""
    train, test = _sample_rows("trec", "train"), _sample_rows("trec", "test")
    test[0] = {**test[0], "question": train[0]["question"]}  # planted leak
    spec, _ = _task_with_local_dir(tmp_path, "trec", train, test)
    ran = []

    @dg.asset(key=dg.AssetKey("trec_downstream"), deps=[dg.AssetKey("trec")])
    def downstream():
        ran.append(True)

    result = dg.materialize(
        [*build_seed_set_asset(spec), downstream],
        resources={"results_store": ResultsStoreResource()},
        raise_on_error=False,
    )
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["no_seed_test_leakage"] is False
    assert not ran
