"""Users' accepted corrections as a dataset: which split each one falls in, and the export that the
server writes and training reads (a zip of IDX files, MNIST's own format, with a manifest).

Each item falls into the training split or the held-out split by a hash of its id, so the split
never changes as items come and go and no list of assignments has to be kept. The held-out split
is a second test set: no model trains on it. A set's `sha256` covers every id, image and label of
both splits, so a model's card can name the exact data it saw and anyone can check a rebuilt set.
"""

import hashlib
import io
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from models.idx import IdxError, decode_idx, encode_idx
from models.signature import SIGNATURE

SPLITS = ("train", "heldout")
# One item in HELDOUT_EVERY goes to the held-out split: about 80/20.
HELDOUT_EVERY = 5
EXPORT_FORMAT = 1
MANIFEST = "manifest.json"
# Fixed member times: the same items always export to the same bytes.
ZIP_TIME = (2020, 1, 1, 0, 0, 0)


class FeedbackSetError(ValueError):
    """An export that cannot be read, or whose contents do not match its manifest."""


def split_of(item_id: str) -> str:
    """`train` or `heldout`, decided by the id alone (a hash, so ids made in any order spread evenly)."""
    digest = hashlib.sha256(item_id.encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % HELDOUT_EVERY == 0 else "train"


@dataclass(frozen=True)
class Split:
    """One split's items, in id order: ids, images (N x height x width uint8, light digit on dark,
    as the model sees them) and labels (N uint8)."""

    ids: tuple[str, ...]
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls) -> "Split":
        return cls(
            (), torch.zeros((0, *SIGNATURE.input.size), dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8)
        )


@dataclass(frozen=True)
class FeedbackSet:
    """Both splits of a set of accepted corrections."""

    train: Split
    heldout: Split

    @classmethod
    def of_items(cls, items: Iterable[tuple[str, bytes, int]]) -> "FeedbackSet":
        """From (id, image as height x width uint8 bytes, label) triples, in any order."""
        parts: dict[str, list[tuple[str, bytes, int]]] = {split: [] for split in SPLITS}
        for item in sorted(items):
            parts[split_of(item[0])].append(item)
        return cls(*(cls._split(parts[split]) for split in SPLITS))

    @staticmethod
    def _split(items: list[tuple[str, bytes, int]]) -> Split:
        if not items:
            return Split.empty()
        images = torch.frombuffer(bytearray(b"".join(image for _, image, _ in items)), dtype=torch.uint8)
        return Split(
            tuple(item_id for item_id, _, _ in items),
            images.reshape(len(items), *SIGNATURE.input.size),
            torch.tensor([label for _, _, label in items], dtype=torch.uint8),
        )

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "heldout": self.heldout}

    def __len__(self) -> int:
        return len(self.train) + len(self.heldout)

    @cached_property
    def sha256(self) -> str:
        """Of every id, image and label, split by split: the set's identity."""
        digest = hashlib.sha256()
        for name, split in self.splits().items():
            digest.update(f"{name}:{len(split)}\n".encode())
            digest.update("\n".join(split.ids).encode())
            digest.update(split.images.contiguous().numpy().tobytes())
            digest.update(split.labels.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def manifest(self) -> dict[str, Any]:
        """What the card records of the set: its hash, its size, and every id by split."""
        return {
            "format": EXPORT_FORMAT,
            "sha256": self.sha256,
            "counts": {name: len(split) for name, split in self.splits().items()},
            "ids": {name: list(split.ids) for name, split in self.splits().items()},
        }

    def to_zip(self) -> bytes:
        """The export: `<split>-images-idx3-ubyte` and `<split>-labels-idx1-ubyte` for each split,
        and `manifest.json`."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, split in self.splits().items():
                for member, values in (
                    (idx_name(name, "images"), split.images),
                    (idx_name(name, "labels"), split.labels),
                ):
                    archive.writestr(
                        zipfile.ZipInfo(member, ZIP_TIME), encode_idx(values), zipfile.ZIP_DEFLATED
                    )
            manifest = json.dumps(self.manifest(), indent=1).encode()
            archive.writestr(zipfile.ZipInfo(MANIFEST, ZIP_TIME), manifest, zipfile.ZIP_DEFLATED)
        return buffer.getvalue()

    @classmethod
    def from_zip(cls, source: Path | bytes) -> "FeedbackSet":
        """An export read back and checked: sizes, labels and the manifest's ids and sha256."""
        try:
            with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
                manifest = json.loads(archive.read(MANIFEST))
                splits = {}
                for name in SPLITS:
                    images = decode_idx(archive.read(idx_name(name, "images")), 3)
                    labels = decode_idx(archive.read(idx_name(name, "labels")), 1)
                    ids = tuple(str(item_id) for item_id in manifest["ids"][name])
                    splits[name] = checked_split(name, ids, images, labels)
        except (OSError, zipfile.BadZipFile, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, FeedbackSetError):
                raise
            raise FeedbackSetError(f"not a feedback export: {exc}") from None
        found = cls(**splits)
        if found.sha256 != manifest.get("sha256"):
            raise FeedbackSetError("the export's contents do not match the sha256 its manifest records")
        return found


def idx_name(split: str, kind: str) -> str:
    return f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"


def checked_split(name: str, ids: tuple[str, ...], images: torch.Tensor, labels: torch.Tensor) -> Split:
    if tuple(images.shape[1:]) != SIGNATURE.input.size:
        raise IdxError(f"{name} images are {tuple(images.shape[1:])}, expected {SIGNATURE.input.size_text}")
    if not len(ids) == len(images) == len(labels):
        raise FeedbackSetError(f"{name}: {len(ids)} ids, {len(images)} images and {len(labels)} labels")
    if len(labels) and int(labels.max()) >= SIGNATURE.output.classes:
        raise FeedbackSetError(f"{name}: label {int(labels.max())} is not a class")
    return Split(ids, images, labels)
