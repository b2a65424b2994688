"""Artefacts at a URL (``distil_platform.storage.paths``, fsspec): Parquet and checkpoint trees written to and
read from a real S3-API server (moto's standalone server on loopback) and the local default."""

from __future__ import annotations

import uuid

import polars as pl
import pytest
from distributed_services import s3_server

from distil_platform.storage import paths

pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server (DISTIL_TEST_S3_ENDPOINT, else one started for this module)."""
    yield from s3_server()


@pytest.fixture
def bucket_url(s3_endpoint, monkeypatch):
    import boto3

    # The standard AWS variables: what s3fs (botocore) reads on a real deployment too.
    for key, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    bucket = f"distil-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    monkeypatch.setenv(paths.ARTIFACTS_URL_ENV, f"s3://{bucket}/team-a/")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a fresh client reads this test's endpoint
    return bucket, client


def _keys(client, bucket: str) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_local_default_is_the_artifacts_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.ARTIFACTS_URL_ENV, raising=False)
    url = paths.artifact_url("text2sql", "seed_set", "run1", "seed.parquet")
    assert url == str(paths.artifacts_dir() / "text2sql" / "seed_set" / "run1" / "seed.parquet")
    assert not paths.is_remote(url)
    frame = pl.DataFrame({"id": ["a", "b"], "question": ["q1", "q2"]})
    paths.write_parquet(frame, url)
    assert pl.read_parquet(url).equals(frame) and paths.read_parquet(url).equals(frame)


def test_parquet_round_trip_on_s3(bucket_url):
    bucket, client = bucket_url
    url = paths.artifact_url("text2sql", "seed_set", "run1", "test.parquet")
    assert url == f"s3://{bucket}/team-a/text2sql/seed_set/run1/test.parquet" and paths.is_remote(url)
    frame = pl.DataFrame({"id": ["q1", "q2", "q3"], "sql": ["SELECT 1", "SELECT 2", None]})
    assert paths.write_parquet(frame, url) == url
    assert _keys(client, bucket) == {"team-a/text2sql/seed_set/run1/test.parquet"}  # on the server
    assert paths.read_parquet(url).equals(frame)
    with pytest.raises(FileNotFoundError, match="no such artefact"):
        paths.read_parquet(paths.artifact_url("text2sql", "seed_set", "missing.parquet"))


def test_checkpoint_tree_uploaded_and_fetched_elsewhere(bucket_url, tmp_path):
    bucket, client = bucket_url
    ckpt = tmp_path / "train" / "ckpt"
    (ckpt / "tokenizer").mkdir(parents=True)
    files = {
        "config.json": b'{"model_type": "qwen3"}',
        "model.safetensors": bytes(range(256)) * 64,
        "tokenizer/tokenizer.json": b'{"version": "1.0"}',
    }
    for name, data in files.items():
        (ckpt / name).write_bytes(data)
    url = paths.artifact_url("checkpoints", "text2sql", "run1")
    paths.upload_dir(ckpt, url)
    assert _keys(client, bucket) == {f"team-a/checkpoints/text2sql/run1/{n}" for n in files}
    # The serving step, on another machine: an empty local directory filled from the store.
    fetched = paths.download_dir(url, tmp_path / "serve" / "ckpt")
    assert {
        p.relative_to(fetched).as_posix(): p.read_bytes() for p in fetched.rglob("*") if p.is_file()
    } == files
    with pytest.raises(FileNotFoundError, match="nothing there"):
        paths.download_dir(paths.artifact_url("checkpoints", "text2sql", "never"), tmp_path / "x")


@pytest.mark.parametrize("part", ["", "..", "a/../b", "./x"])
def test_parts_that_escape_the_base_are_refused(part):
    with pytest.raises(ValueError, match="climbs out"):
        paths.artifact_url("text2sql", part)


def test_bad_storage_options_name_the_variable(bucket_url, monkeypatch):
    monkeypatch.setenv(paths.STORAGE_OPTIONS_ENV, "[1]")
    with pytest.raises(ValueError, match=paths.STORAGE_OPTIONS_ENV):
        paths.write_bytes(paths.artifact_url("x.bin"), b"1")


def test_publish_and_fetch_checkpoint_through_the_store(bucket_url, tmp_path, monkeypatch):
    """What the student step and the serving steps do: the trained tree goes to the store and leaves
    the training disk; a serving step gets a local copy, fetched once, byte-identical, config.json
    checked, with no marker file inside the served tree."""
    bucket, client = bucket_url
    with paths.checkpoint_artifact("text2sql", "run1") as out:  # where the training job writes
        ckpt = out.local
        (ckpt / "config.json").write_bytes(b'{"model_type": "qwen3"}')
        (ckpt / "model.safetensors").write_bytes(bytes(range(256)) * 16)
    url = out.url
    assert url == f"s3://{bucket}/team-a/checkpoints/text2sql/run1"
    assert not ckpt.exists()  # nothing on the training machine's disk is relied upon
    assert "team-a/checkpoints/text2sql/run1/config.json" in _keys(client, bucket)
    local = paths.local_checkpoint(url, what="text2sql_student")
    assert sorted(p.name for p in local.iterdir()) == ["config.json", "model.safetensors"]
    assert (local / "model.safetensors").read_bytes() == bytes(range(256)) * 16
    # Fetched once: a second call reuses the copy (the object is gone from the store, the copy is not).
    client.delete_object(Bucket=bucket, Key="team-a/checkpoints/text2sql/run1/model.safetensors")
    assert paths.local_checkpoint(url) == local and (local / "model.safetensors").exists()
    with pytest.raises(FileNotFoundError, match="re-materialise text2sql_student"):
        paths.local_checkpoint(paths.artifact_url("checkpoints", "text2sql", "gone"), what="text2sql_student")


def test_local_checkpoint_on_a_local_base_is_the_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.ARTIFACTS_URL_ENV, raising=False)
    with paths.checkpoint_artifact("text2sql", "run1") as out:
        ckpt = out.local
    assert out.url == str(ckpt) == str(paths.checkpoints_dir("text2sql", "run1")) and ckpt.is_dir()
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        paths.local_checkpoint(str(ckpt), what="text2sql_student")
    (ckpt / "config.json").write_text("{}")
    assert paths.local_checkpoint(str(ckpt)) == ckpt


def test_artifact_dir_publishes_on_success_and_drops_scratch_on_failure(bucket_url):
    bucket, client = bucket_url
    with paths.ArtifactDir("text2sql", "cost_table", "t1") as out:
        scratch = out.local
        (out.local / "cost_table.csv").write_text("model,usd\nstudent,3\n")
        assert out.url_for(out.local / "cost_table.csv") == f"s3://{bucket}/team-a/text2sql/cost_table/t1/cost_table.csv"
    assert not scratch.exists()
    assert paths.read_bytes(f"s3://{bucket}/team-a/text2sql/cost_table/t1/cost_table.csv").startswith(b"model,usd")
    with pytest.raises(RuntimeError), paths.ArtifactDir("text2sql", "cost_table", "t2") as out:
        scratch = out.local
        (out.local / "cost_table.csv").write_text("partial")
        raise RuntimeError("the step failed")
    assert not scratch.exists()
    assert not any(k.startswith("team-a/text2sql/cost_table/t2") for k in _keys(client, bucket))  # nothing half-written


def test_artifact_dir_on_a_local_base_writes_in_place(monkeypatch):
    monkeypatch.delenv(paths.ARTIFACTS_URL_ENV, raising=False)
    with paths.ArtifactDir("text2sql", "routing", "r1") as out:
        (out.local / "policies.csv").write_text("x")
    assert out.local == paths.artifacts_dir("text2sql", "routing", "r1")
    assert out.url_for(out.local / "policies.csv") == str(out.local / "policies.csv")
    assert (out.local / "policies.csv").read_text() == "x"  # not removed by publishing


def test_concurrent_fetches_of_one_checkpoint_take_turns(tmp_path):
    """Two serving steps on one machine need the same remote checkpoint at once: the fetch into the
    shared cache directory is locked, so each step gets the complete tree (before the lock, one step
    deleted the other's half-written copy or renamed over it)."""
    import threading

    ckpt = tmp_path / "train" / "ckpt"
    (ckpt / "shards").mkdir(parents=True)
    files = {"config.json": b'{"model_type": "qwen3"}'}
    for i in range(200):  # many files: the fetches overlap for long enough to collide without the lock
        files[f"shards/part-{i:03d}.bin"] = bytes([i % 256]) * 32_768
    for name, data in files.items():
        (ckpt / name).write_bytes(data)
    url = f"memory://distil-{uuid.uuid4().hex[:8]}/checkpoints/text2sql/run1"
    paths.upload_dir(ckpt, url)

    steps = 8
    barrier = threading.Barrier(steps)
    fetched: list = [None] * steps
    errors: list[BaseException] = []

    def fetch(i: int) -> None:
        barrier.wait()
        try:
            local = paths.local_checkpoint(url, what="text2sql_student")
            # What a server would load right away: the whole tree, as trained.
            fetched[i] = (local, {p.relative_to(local).as_posix(): p.read_bytes()
                                  for p in local.rglob("*") if p.is_file()})
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(steps)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert len({local for local, _ in fetched}) == 1
    assert all(tree == files for _, tree in fetched)
    cache = fetched[0][0]
    assert not list(cache.parent.glob("*.partial")) and (cache.parent / f"{cache.name}.complete").exists()
