"""The model stores on real storage: a local folder and a real S3 server (SeaweedFS). Weights are
content-addressed, verified on every read, cached locally, and a store that is down is a clear error."""

import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from app.errors import ModelObjectCorrupt, ModelStoreUnavailable
from app.records.model_store import LocalModelStore, S3ModelStore
from models.checkpoint import load_checkpoint
from tests.checkpoints import flipped
from tests.s3 import S3Server


def metadata_of(checkpoint: Path) -> dict[str, Any]:
    return load_checkpoint(checkpoint).metadata


def fresh_bucket_store(tmp_path: Path) -> S3ModelStore:
    store = S3ModelStore(f"s3://models-{uuid.uuid4().hex[:8]}/team/mnist", tmp_path / "cache")
    store.create_bucket()
    return store


def test_s3_objects_are_content_addressed_and_cached(
    s3: S3Server, tmp_path: Path, small_checkpoint: Path
) -> None:
    store = fresh_bucket_store(tmp_path)
    store.create_bucket()  # a second replica doing the same at startup: fine
    metadata = metadata_of(small_checkpoint)
    store.put(small_checkpoint, metadata)
    store.put(small_checkpoint, metadata)  # already there: nothing changes
    client = boto3.client("s3")
    listed = client.list_objects_v2(Bucket=store.bucket)["Contents"]
    assert [entry["Key"] for entry in listed] == [f"team/mnist/sha256/{metadata['sha256']}.pt"]

    elsewhere = S3ModelStore(store.description, tmp_path / "replica-b-cache")  # an empty cache
    copy = elsewhere.local_copy(metadata)
    assert copy.read_bytes() == small_checkpoint.read_bytes()
    assert load_checkpoint(copy).metadata["test_accuracy"] == metadata["test_accuracy"]  # metadata beside
    client.delete_object(Bucket=store.bucket, Key=listed[0]["Key"])
    assert elsewhere.local_copy(metadata) == copy  # served from the cache, not fetched again


def test_a_corrupted_object_is_refused_and_a_bad_cached_copy_fetched_again(
    s3: S3Server, tmp_path: Path, small_checkpoint: Path
) -> None:
    store = fresh_bucket_store(tmp_path)
    metadata = metadata_of(small_checkpoint)
    store.put(small_checkpoint, metadata)
    cached = store.local_copy(metadata)
    cached.write_bytes(flipped(cached.read_bytes()))  # the local disk went bad: fetched again
    assert store.local_copy(metadata).read_bytes() == small_checkpoint.read_bytes()

    client = boto3.client("s3")
    key = store.key(metadata["sha256"])
    client.put_object(Bucket=store.bucket, Key=key, Body=flipped(small_checkpoint.read_bytes()))
    replica = S3ModelStore(store.description, tmp_path / "other-cache")
    with pytest.raises(ModelObjectCorrupt, match="do not match their recorded sha256"):
        replica.local_copy(metadata)
    assert not any(replica.cache.glob("*.pt"))  # nothing unverified is kept
    client.delete_object(Bucket=store.bucket, Key=key)
    with pytest.raises(ModelObjectCorrupt, match="missing"):
        replica.local_copy(metadata)


def test_a_store_that_is_down_is_unavailable_not_an_error(
    tmp_path: Path, small_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    for key, value in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    store = S3ModelStore("s3://models/prefix", tmp_path / "cache")
    metadata = metadata_of(small_checkpoint)
    with pytest.raises(ModelStoreUnavailable, match="cannot be used right now"):
        store.put(small_checkpoint, metadata)
    with pytest.raises(ModelStoreUnavailable):
        store.local_copy({**metadata, "version": "0" * 12})


def test_the_local_store_verifies_what_it_reads(tmp_path: Path, small_checkpoint: Path) -> None:
    store = LocalModelStore(tmp_path / "models")
    metadata = metadata_of(small_checkpoint)
    store.put(small_checkpoint, metadata)
    kept = store.local_copy(metadata)
    assert kept == tmp_path / "models" / f"{metadata['version']}.pt"
    kept.write_bytes(flipped(kept.read_bytes()))
    with pytest.raises(ModelObjectCorrupt):
        store.local_copy(metadata)
    kept.unlink()
    with pytest.raises(ModelObjectCorrupt, match="missing"):
        store.local_copy(metadata)
