"""Where model weights live: a folder under MNIST_STATE_DIR by default, an S3 bucket when
MNIST_MODEL_STORE is `s3://bucket/prefix` (several machines). Content-addressed by sha256.

Every read is verified: a server only loads weights whose sha256 is the one recorded for their
version, so a corrupted or tampered object is refused and the model being served stays. S3 objects
are downloaded once into a local cache (`<state>/cache/models/`) and served from there.
The metadata of a version lives in the database (app/records/versions.py); a local copy gets it beside the
weights (`<version>.json`, the checkpoint format), so `load_checkpoint` reads both as usual.
"""

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from app.errors import ModelObjectCorrupt, ModelStoreUnavailable
from models.checkpoint import VERSION_LENGTH, atomic_write_bytes, metadata_path, sha256_bytes

log = logging.getLogger("app.records.model_store")


def metadata_bytes(metadata: dict[str, Any]) -> bytes:
    return (json.dumps(metadata, indent=2) + "\n").encode()


def verified(data: bytes, sha256: str, where: str) -> bytes:
    """`data` if it hashes to `sha256`, else ModelObjectCorrupt naming the object (`where`: a name,
    never a server path, since the message reaches clients)."""
    found = sha256_bytes(data)
    if found != sha256:
        raise ModelObjectCorrupt(
            f"the weights at {where} do not match their recorded sha256 "
            f"({found[:VERSION_LENGTH]}... instead of {sha256[:VERSION_LENGTH]}...): refused"
        )
    return data


class ModelStore(Protocol):
    """What the service needs of a place that keeps weights."""

    description: str

    def put(self, weights: Path, metadata: dict[str, Any]) -> None:
        """Keep these weights under their sha256 (a no-op when they are there already)."""

    def local_copy(self, metadata: dict[str, Any]) -> Path:
        """A local checkpoint (weights and metadata) of this version, verified against its sha256."""


class LocalModelStore:
    """`<state>/models/<version>.pt` and `.json`: the single-machine layout, kept as it was."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.description = str(folder)  # made on the first write (atomic_write_bytes)

    def path(self, version: str) -> Path:
        return self.folder / f"{version}.pt"

    def put(self, weights: Path, metadata: dict[str, Any]) -> None:
        target = self.path(str(metadata["version"]))
        if not target.is_file():
            atomic_write_bytes(target, verified(weights.read_bytes(), str(metadata["sha256"]), weights.name))
        atomic_write_bytes(metadata_path(target), metadata_bytes(metadata))

    def local_copy(self, metadata: dict[str, Any]) -> Path:
        target = self.path(str(metadata["version"]))
        try:
            verified(target.read_bytes(), str(metadata["sha256"]), f"models/{target.name}")
        except FileNotFoundError:
            raise ModelObjectCorrupt(f"the weights of version {metadata['version']} are missing") from None
        if not metadata_path(target).is_file():
            atomic_write_bytes(metadata_path(target), metadata_bytes(metadata))
        return target


NO_KEY = ("NoSuchKey", "404", "NotFound")
NO_BUCKET = ("NoSuchBucket", "404", "NotFound")


class S3ModelStore:
    """`s3://bucket/prefix/sha256/<sha256>.pt` in any S3-compatible store, configured the standard
    way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION), cached locally."""

    def __init__(self, url: str, cache: Path) -> None:
        import boto3  # here: only a deployment with an S3 store loads the client
        from botocore.config import Config

        parsed = urlparse(url)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self.description = url
        self.cache = cache  # made on the first write (atomic_write_bytes)
        # Short timeouts and few retries: an outage must become a 503 soon, not hold a thread.
        config = Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"})
        self.client = boto3.client("s3", config=config)

    def key(self, sha256: str) -> str:
        return "/".join(part for part in (self.prefix, "sha256", f"{sha256}.pt") if part)

    @contextmanager
    def _calls(self, doing: str) -> Iterator[None]:
        """The client's errors as ModelStoreUnavailable: a 503 to clients, saying what failed."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            log.warning("model store %s: %s failed: %s", self.description, doing, exc)
            raise ModelStoreUnavailable(
                f"the model store cannot be used right now ({doing}); predictions are not affected"
            ) from exc

    def create_bucket(self) -> None:
        """Create the bucket when it does not exist yet, so a fresh store needs no setup step."""
        from botocore.exceptions import ClientError

        with self._calls(f"creating bucket {self.bucket}"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if error_code(exc) not in NO_BUCKET:
                    raise
            try:
                self.client.create_bucket(Bucket=self.bucket)
                log.info("created bucket %s for the model store", self.bucket)
            except ClientError as exc:  # a sibling replica created it a moment ago
                if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put(self, weights: Path, metadata: dict[str, Any]) -> None:
        sha256, version = str(metadata["sha256"]), str(metadata["version"])
        data = verified(weights.read_bytes(), sha256, weights.name)
        # Always a plain PUT: the key is the content's hash, so writing it again changes nothing,
        # and a HEAD first would need list permission to tell "missing" from "forbidden".
        with self._calls(f"uploading version {version}"):
            self.client.put_object(Bucket=self.bucket, Key=self.key(sha256), Body=data)
        self._cache(data, metadata)

    def local_copy(self, metadata: dict[str, Any]) -> Path:
        from botocore.exceptions import ClientError

        sha256, version = str(metadata["sha256"]), str(metadata["version"])
        cached = self.cache / f"{version}.pt"
        with suppress(FileNotFoundError, ModelObjectCorrupt):  # not cached yet, or the copy went bad
            verified(cached.read_bytes(), sha256, str(cached))
            return cached
        where = f"s3://{self.bucket}/{self.key(sha256)}"
        with self._calls(f"fetching version {version}"):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"].read()
            except ClientError as exc:
                if error_code(exc) in NO_KEY:  # NoSuchBucket is an outage (503), not a missing object
                    raise ModelObjectCorrupt(
                        f"the weights of version {version} are missing: {where}"
                    ) from None
                raise
        return self._cache(verified(body, sha256, where), metadata)

    def _cache(self, data: bytes, metadata: dict[str, Any]) -> Path:
        cached = self.cache / f"{metadata['version']}.pt"
        atomic_write_bytes(cached, data)
        atomic_write_bytes(metadata_path(cached), metadata_bytes(metadata))
        return cached


def error_code(exc: Any) -> str:
    """The S3 error code of a botocore ClientError ("404", "NoSuchKey", ...)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def open_model_store(url: str | None, state_dir: Path) -> ModelStore:
    """MNIST_MODEL_STORE: unset = the local folder, `s3://bucket/prefix` = an S3 bucket."""
    if not url:
        return LocalModelStore(state_dir / "models")
    return S3ModelStore(url, state_dir / "cache" / "models")
