"""The training loop: the tutorial's sample order, determinism, augmentation, and the accuracy bars."""

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.checkpoint import read_metadata
from models.events import StartEvent
from models.hyperparameters import DEFAULT_RECIPE, RECIPES
from training import outliers
from training.data import Mnist
from training.loop import (
    TrainConfig,
    TrainingDiverged,
    augment,
    bf16_native,
    epoch_order,
    run,
    to_model_input,
)


def test_epoch_order_is_the_dataloaders_order() -> None:
    dataset = TensorDataset(torch.arange(1000))
    torch.manual_seed(53113)
    loader = DataLoader(dataset, batch_size=32, shuffle=True)
    theirs = [torch.cat([batch[0] for batch in loader]) for _ in range(2)]
    torch.manual_seed(53113)
    ours = [epoch_order(1000) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(theirs, ours, strict=True))
    assert not torch.equal(ours[0], ours[1])


def quick(tmp_path: Path, mnist_dir: Path, name: str, **overrides) -> dict:
    defaults = {"epochs": 1, "limit_train": 640, "device": "cpu", "data_dir": str(mnist_dir)}
    config = TrainConfig(**{**defaults, "out": str(tmp_path / name), **overrides})
    return run(config)


def test_a_run_that_diverges_stops_saying_why_and_writes_nothing(tmp_path: Path, mnist_dir: Path) -> None:
    """Within every bound, yet the loss turns NaN: such weights must never become a checkpoint."""
    with pytest.raises(TrainingDiverged) as diverged:
        quick(
            tmp_path,
            mnist_dir,
            "nan.pt",
            recipe="tutorial",
            limit_train=200,
            lr=10.0,
            momentum=0.99,
            batch_size=1,
        )
    assert str(diverged.value) == (
        "training diverged in epoch 1: the training loss is nan (lr 10, momentum 0.99, batch size 1); "
        "no checkpoint was written: try a lower learning rate or momentum"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # several training runs
def test_same_seed_same_weights_bit_for_bit(tmp_path: Path, mnist_dir: Path) -> None:
    a = quick(tmp_path, mnist_dir, "a.pt")
    b = quick(tmp_path, mnist_dir, "b.pt")
    c = quick(tmp_path, mnist_dir, "c.pt", seed=1)
    decayed = quick(tmp_path, mnist_dir, "d.pt", weight_decay=0.05)
    assert a["sha256"] == b["sha256"]
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert c["sha256"] != a["sha256"]
    assert decayed["sha256"] != a["sha256"] and decayed["hyperparameters"]["weight_decay"] == 0.05


@pytest.mark.slow  # several training runs
def test_accurate_recipe_is_deterministic_too(tmp_path: Path, mnist_dir: Path) -> None:
    a = TrainConfig.from_recipe(
        "accurate",
        epochs=1,
        limit_train=512,
        device="cpu",
        data_dir=str(mnist_dir),
        out=str(tmp_path / "a.pt"),
    )
    b = TrainConfig.from_recipe(
        "accurate",
        epochs=1,
        limit_train=512,
        device="cpu",
        data_dir=str(mnist_dir),
        out=str(tmp_path / "b.pt"),
    )
    assert a.batch_size == 128 and a.epochs == 1
    assert run(a)["sha256"] == run(b)["sha256"]


def test_a_batch_normed_network_trains_a_last_batch_of_one_image_with_the_one_before(
    tmp_path: Path, mnist_dir: Path
) -> None:
    config = TrainConfig.from_recipe(
        "accurate", epochs=1, limit_train=129, device="cpu", data_dir=str(mnist_dir)
    )
    meta = run(dataclasses.replace(config, out=str(tmp_path / "a.pt")))  # 128 + 1 images
    assert meta["train_samples"] == 129
    with pytest.raises(ValueError, match="batch_size must be >= 2 for the deep network"):
        TrainConfig.from_recipe("accurate", batch_size=1)
    with pytest.raises(ValueError, match="limit_train must be >= 2 for the deep network"):
        TrainConfig(arch="deep", limit_train=1)


@pytest.mark.skipif(not bf16_native(torch.device("cpu")), reason="this CPU has no native bf16")
def test_the_accurate_recipe_computes_its_steps_in_bf16_where_the_cpu_has_it(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig.from_recipe(
        "accurate", epochs=1, limit_train=256, device="cpu", data_dir=str(mnist_dir)
    )
    config = dataclasses.replace(config, out=str(tmp_path / "a.pt"))
    mixed = run(config)
    assert mixed["data"]["mixed_precision"] == "bf16"
    accurate = RECIPES["accurate"]
    monkeypatch.setitem(RECIPES, "accurate", dataclasses.replace(accurate, mixed_precision=False))
    single = run(dataclasses.replace(config, out=str(tmp_path / "b.pt")))
    assert single["data"]["mixed_precision"] is None and single["sha256"] != mixed["sha256"]


@pytest.mark.slow  # a training run of its own
def test_metadata_records_what_was_trained(tmp_path: Path, mnist_dir: Path) -> None:
    meta = quick(tmp_path, mnist_dir, "m.pt")
    on_disk = read_metadata(tmp_path / "m.pt")
    assert on_disk == meta
    assert meta["hyperparameters"]["batch_size"] == 32
    assert meta["hyperparameters"]["limit_train"] == 640
    assert meta["device"] == "cpu"
    assert 10 < meta["test_accuracy"] <= 100


@pytest.mark.slow  # a training run of its own
def test_the_model_card_agrees_with_the_test_set(tmp_path: Path, mnist_dir: Path, mnist: Mnist) -> None:
    meta = quick(tmp_path, mnist_dir, "card.pt", epochs=2)
    confusion = torch.tensor(meta["confusion_matrix"])
    assert confusion.shape == (10, 10) and int(confusion.sum()) == 10000
    # Rows are the true digits: their sums are the test set's counts of each digit.
    assert confusion.sum(dim=1).tolist() == torch.bincount(mnist.test_labels.long(), minlength=10).tolist()
    assert 100 * int(confusion.diag().sum()) / 10000 == pytest.approx(meta["test_accuracy"], abs=0.005)
    per_class = 100 * confusion.diag().double() / confusion.sum(dim=1).double()
    assert meta["per_class_accuracy"] == pytest.approx(per_class.tolist(), abs=0.005)
    # The history has each epoch; its last test figures are the card's.
    assert [entry["epoch"] for entry in meta["history"]] == [1, 2]
    assert meta["history"][-1]["test_accuracy"] == meta["test_accuracy"]
    assert all(entry["train_loss"] > 0 for entry in meta["history"])
    assert meta["history"][1]["train_loss"] < meta["history"][0]["train_loss"]
    data = meta["data"]
    assert data["train_samples"] == 640 and data["test_samples"] == 10000 and len(data["train_sha256"]) == 64
    # The unsure-prediction table: a higher threshold flags more and catches more errors.
    table = meta["low_confidence"]
    assert [row["threshold"] for row in table] == sorted(row["threshold"] for row in table)
    for lower, higher in itertools.pairwise(table):
        assert lower["flagged_percent"] <= higher["flagged_percent"]
        assert lower["errors_caught_percent"] <= higher["errors_caught_percent"]


@pytest.mark.slow  # training runs of their own
def test_outlier_exposure_trains_on_the_families_named_and_the_card_says_which(
    tmp_path: Path, mnist_dir: Path
) -> None:
    """The default recipe draws non-digits from the families named (all by default) and the card
    marks which kinds it saw; the tutorial recipe has none, and its threshold is marked as chosen
    on the test set (it holds no digits out)."""
    some = quick(tmp_path, mnist_dir, "some.pt", limit_train=300, outlier_families=("speckle", "glyphs"))
    block = some["not_a_digit"]
    weight = RECIPES[DEFAULT_RECIPE].outlier_exposure
    assert block["outlier_exposure"] == {"weight": weight, "families": ["speckle", "glyphs"]}
    assert block["chosen_on"] == "validation" and block["chosen_samples"] == 2000
    assert {kind for kind, figures in block["kinds"].items() if figures["trained_on"]} == {
        "speckle",
        "glyphs",
    }
    every = quick(tmp_path, mnist_dir, "every.pt", limit_train=300)
    assert every["not_a_digit"]["outlier_exposure"]["families"] == list(outliers.FAMILIES)
    assert every["sha256"] != some["sha256"]
    tutorial = quick(tmp_path, mnist_dir, "tutorial.pt", limit_train=300, recipe="tutorial")
    plain = tutorial["not_a_digit"]
    assert plain["outlier_exposure"] == {"weight": 0.0, "families": []} and plain["chosen_on"] == "test"
    assert plain["chosen_flagged_percent"] == plain["test_flagged_percent"] <= 0.75
    assert not any(figures["trained_on"] for figures in plain["kinds"].values())


def test_augment_keeps_shape_and_background(mnist: Mnist) -> None:
    x = to_model_input(mnist.test_images[:64], torch.device("cpu"))
    moved = augment(x, RECIPES["accurate"], torch.Generator().manual_seed(0))
    assert moved.shape == x.shape
    background = -0.1307 / 0.3081
    assert torch.allclose(moved[:, :, 0, 0], torch.full((64, 1), background), atol=1e-5)
    assert not torch.allclose(moved, x)


class TutorialNet(nn.Module):
    """The tutorial's Net, verbatim, as a user would have it in their own script."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2, 2)
        x = x.view(-1, 4 * 4 * 50)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def tutorial_accuracy(path: Path, mnist: Mnist) -> float:
    """Load with the tutorial's code and evaluate with its ToTensor + Normalize transforms."""
    from torchvision import transforms  # seconds to import: only this (slow) test needs it

    model = TutorialNet()
    model.load_state_dict(torch.load(path))
    model.eval()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    images = torch.stack([transform(img.numpy()) for img in mnist.test_images])
    with torch.no_grad():
        predicted = torch.cat([model(images[i : i + 1000]).argmax(1) for i in range(0, 10000, 1000)])
    return 100.0 * (predicted == mnist.test_labels).sum().item() / 10000


@pytest.mark.slow
def test_default_training_reaches_the_tutorial_accuracy(trained_checkpoint: Path, mnist: Mnist) -> None:
    meta = read_metadata(trained_checkpoint)  # trained with every default (tests/conftest.py)
    assert meta is not None and meta["hyperparameters"] == TrainConfig.from_recipe().hyperparameters()
    assert meta["test_accuracy"] >= 98.5
    assert tutorial_accuracy(trained_checkpoint, mnist) == pytest.approx(meta["test_accuracy"], abs=0.02)
    # It knows what is not a digit, at a small cost in digits, and says so calibrated.
    block = meta["not_a_digit"]
    assert block["chosen_on"] == "validation" and block["test_flagged_percent"] <= 1.5
    for kind in ("strokes", "curves", "shapes", "glyphs", "typefaces", "pen_letters", "textures", "speckle"):
        assert block["kinds"][kind]["auroc"] >= 0.97, kind
    assert meta["calibration"]["ece_percent"] <= 1.0


@pytest.mark.slow
def test_accurate_recipe_reaches_99_4(accurate_checkpoint: Path) -> None:
    """Its temperature is fitted on the held-out images, and its calibration error on the test
    digits is at most 1%."""
    meta = read_metadata(accurate_checkpoint)
    assert meta is not None and meta["test_accuracy"] >= 99.4
    calibration = meta["calibration"]
    assert calibration["validation_samples"] == RECIPES["accurate"].validation
    assert meta["arch"] == "deep"
    assert meta["data"]["mixed_precision"] == ("bf16" if bf16_native(torch.device("cpu")) else None)
    assert calibration["ece_percent"] <= 1.0


@pytest.mark.gpu
def test_training_on_cuda_keeps_the_data_on_the_gpu(tmp_path: Path, mnist_dir: Path) -> None:
    config = TrainConfig(
        recipe="tutorial", epochs=1, device="cuda", data_dir=str(mnist_dir), out=str(tmp_path / "m.pt")
    )
    meta = run(config)
    assert meta["device"].startswith("cuda")
    assert meta["test_accuracy"] >= 97.5


def train_twice_on_cuda(
    tmp_path: Path, mnist_dir: Path, **config: Any
) -> list[tuple[dict[str, Any], StartEvent]]:
    """The same run with CUDA graph steps, then eager steps: (metadata, start event) of each."""
    results = []
    for graph in (True, False):
        starts: list[StartEvent] = []
        out = tmp_path / f"graph-{graph}.pt"
        meta = run(
            # The tutorial's recipe: a step with Outlier Exposure draws non-digits, so it runs eagerly.
            TrainConfig(
                recipe="tutorial",
                device="cuda",
                cuda_graph=graph,
                data_dir=str(mnist_dir),
                out=str(out),
                **config,
            ),
            lambda event: starts.append(event) if event["event"] == "start" else None,  # noqa: B023
        )
        results.append((meta, starts[0]))
    return results


@pytest.mark.gpu
def test_cuda_graph_steps_compute_what_eager_steps_compute(tmp_path: Path, mnist_dir: Path) -> None:
    # Deterministic cuDNN, so eager runs repeat exactly; 330 images = 10 graph replays, then a
    # partial batch of 10 that runs eagerly between them.
    deterministic, torch.backends.cudnn.deterministic = torch.backends.cudnn.deterministic, True
    try:
        (_, graph_start), (_, eager_start) = train_twice_on_cuda(
            tmp_path, mnist_dir, epochs=2, limit_train=330
        )
    finally:
        torch.backends.cudnn.deterministic = deterministic
    assert graph_start["cuda_graph"] is True and eager_start["cuda_graph"] is False, graph_start
    graphed = torch.load(tmp_path / "graph-True.pt", weights_only=True)
    eager = torch.load(tmp_path / "graph-False.pt", weights_only=True)
    for name, tensor in eager.items():
        torch.testing.assert_close(graphed[name], tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_cuda_graph_training_reaches_the_eager_accuracy(tmp_path: Path, mnist_dir: Path) -> None:
    (graphed, _), (eager, _) = train_twice_on_cuda(tmp_path, mnist_dir, epochs=1)
    assert graphed["test_accuracy"] >= 97.5
    assert graphed["test_accuracy"] == pytest.approx(eager["test_accuracy"], abs=0.3)
