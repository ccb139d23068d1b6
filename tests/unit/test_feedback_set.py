"""Corrections as a dataset: the split by id, the export's round trip and its checks, and training
and measuring on it (the CLI, `training.evaluate` and the card)."""

import io
import json
import secrets
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from models.feedback_set import FeedbackSet, FeedbackSetError, split_of
from models.idx import IdxError, decode_idx, encode_idx
from tests.tools import REPO
from training.data import DataError, Mnist
from training.evaluate import evaluation
from training.loop import TrainConfig, run


def corrections(mnist: Mnist, count: int, label_shift: int = 0) -> FeedbackSet:
    """`count` MNIST training digits as corrections (labelled `label_shift` off their truth)."""
    return FeedbackSet.of_items(
        (
            secrets.token_hex(8),
            mnist.train_images[i].numpy().tobytes(),
            (int(mnist.train_labels[i]) + label_shift) % 10,
        )
        for i in range(count)
    )


def test_the_split_is_by_id_about_one_in_five_held_out() -> None:
    ids = [secrets.token_hex(8) for _ in range(5000)]
    held_out = sum(split_of(item_id) == "heldout" for item_id in ids)
    assert 900 < held_out < 1100  # 1000 expected; 5 standard deviations is about 140
    # Pinned: an item never moves, not even across releases (a change of hash would leak held-out
    # items into training sets).
    pinned = {"0" * 16: "train", "7" * 16: "heldout", "8" * 16: "train", "9" * 16: "heldout"}
    assert {item_id: split_of(item_id) for item_id in pinned} == pinned


def test_idx_round_trip_and_refusals() -> None:
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    assert torch.equal(decode_idx(encode_idx(images), 3), images)
    assert decode_idx(encode_idx(torch.zeros(0, dtype=torch.uint8)), 1).shape == (0,)
    for raw, ndim in ((encode_idx(images), 1), (encode_idx(images)[:-1], 3), (b"\0\0", 3)):
        with pytest.raises(IdxError):
            decode_idx(raw, ndim)
    with pytest.raises(IdxError):
        encode_idx(torch.zeros(3, dtype=torch.int64))


def test_the_export_round_trips_and_is_checked(mnist: Mnist, tmp_path: Path) -> None:
    found = corrections(mnist, 40)
    data = found.to_zip()
    assert data == FeedbackSet.of_items(reversed(list(items_of(found)))).to_zip()  # order does not matter
    back = FeedbackSet.from_zip(data)
    assert back.sha256 == found.sha256 and len(back) == 40
    for name, split in back.splits().items():
        assert all(split_of(item_id) == name for item_id in split.ids)
        assert torch.equal(split.images, found.splits()[name].images)
    with (
        zipfile.ZipFile(io.BytesIO(data)) as original,
        zipfile.ZipFile(tmp_path / "tampered.zip", "w") as tampered,
    ):
        for info in original.infolist():
            content = original.read(info)
            if info.filename == "train-labels-idx1-ubyte":
                content = content[:-1] + bytes([(content[-1] + 1) % 10])  # one label changed
            tampered.writestr(info, content)
    with pytest.raises(FeedbackSetError, match="do not match the sha256"):
        FeedbackSet.from_zip(tmp_path / "tampered.zip")
    for broken in (b"not a zip", b""):
        with pytest.raises(FeedbackSetError):
            FeedbackSet.from_zip(broken)


def items_of(found: FeedbackSet) -> list[tuple[str, bytes, int]]:
    return [
        (item_id, image.numpy().tobytes(), int(label))
        for split in found.splits().values()
        for item_id, image, label in zip(split.ids, split.images, split.labels, strict=True)
    ]


def test_training_on_corrections_records_them_and_measures_the_held_out(
    tmp_path: Path, mnist_dir: Path, mnist: Mnist
) -> None:
    found = corrections(mnist, 50)
    export = tmp_path / "feedback.zip"
    export.write_bytes(found.to_zip())
    common = {
        "epochs": 1,
        "limit_train": 640,
        "device": "cpu",
        "data_dir": str(mnist_dir),
        "feedback": str(export),
    }
    used = run(TrainConfig(**common, out=str(tmp_path / "used.pt"), use_feedback=True, feedback_weight=4))
    assert used is not None
    assert used["train_samples"] == 640 + 4 * len(found.train)
    assert used["data"]["feedback"] == {**found.manifest(), "weight": 4}  # the frozen dataset version
    heldout = used["feedback_heldout"]
    assert (heldout["sha256"], heldout["count"]) == (found.sha256, len(found.heldout))
    assert sum(map(sum, heldout["confusion_matrix"])) == len(found.heldout)
    correct = sum(heldout["confusion_matrix"][i][i] for i in range(10))
    assert heldout["accuracy"] == round(100 * correct / len(found.heldout), 2)
    measured = run(TrainConfig(**common, out=str(tmp_path / "measured.pt")))  # measured only
    assert measured is not None and "feedback" not in measured["data"]
    assert measured["train_samples"] == 640 and measured["feedback_heldout"]["sha256"] == found.sha256
    again = evaluation(tmp_path / "used.pt", str(mnist_dir), "cpu", feedback=str(export))
    assert again["feedback_heldout"] == heldout  # the champion's measurement is the same sum
    export.write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a feedback export"):
        run(TrainConfig(**common, out=str(tmp_path / "bad.pt")))


def test_the_cli_takes_an_export(tmp_path: Path, mnist_dir: Path, mnist: Mnist) -> None:
    export = tmp_path / "feedback.zip"
    export.write_bytes(corrections(mnist, 20).to_zip())
    base = [sys.executable, "-m", "training", "--quiet", "--epochs", "1", "--limit-train", "300"]
    base += ["--data-dir", str(mnist_dir), "--device", "cpu", "--out", str(tmp_path / "m.pt")]
    alone = subprocess.run([*base, "--use-feedback"], cwd=REPO, capture_output=True, text=True)
    assert alone.returncode == 2 and "--use-feedback needs --feedback" in alone.stderr
    subprocess.run([*base, "--feedback", str(export), "--use-feedback"], cwd=REPO, check=True)
    metadata = json.loads((tmp_path / "m.json").read_text())
    assert metadata["data"]["feedback"]["weight"] == 3 and metadata["hyperparameters"]["feedback_weight"] == 3
