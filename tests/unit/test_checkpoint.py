"""The checkpoint format: round trip, the tutorial's interoperability, and every refusal."""

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from models.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    metadata_path,
    read_metadata,
    save_checkpoint,
    sha256_bytes,
)
from models.cnn import ARCHITECTURES, LeNet5, Net, build_model

REQUIRED_KEYS = {"arch", "version", "sha256", "normalize", "torch_version", "created_at"}


def test_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    path = tmp_path / "mnist_cnn.pt"
    written = save_checkpoint(model, path, arch="net", extra={"test_accuracy": 12.5})
    assert written.keys() >= REQUIRED_KEYS
    assert written["sha256"] == sha256_bytes(path.read_bytes())
    assert written["version"] == written["sha256"][:12]
    assert written["normalize"] == {"mean": 0.1307, "std": 0.3081}
    assert metadata_path(path).read_text() == json.dumps(written, indent=2) + "\n"  # for people too
    assert datetime.fromisoformat(written["created_at"]).utcoffset() == timedelta(0)  # in UTC, saying so

    loaded = load_checkpoint(path)
    assert loaded.version == written["version"]
    assert loaded.metadata["test_accuracy"] == 12.5
    assert not loaded.model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_tutorial_loads_our_file_and_we_load_the_tutorials(tmp_path: Path) -> None:
    ours = tmp_path / "ours.pt"
    save_checkpoint(Net(), ours, arch="net")
    Net().load_state_dict(torch.load(ours))  # what the tutorial does

    theirs = tmp_path / "theirs.pt"
    model = Net()
    torch.save(model.state_dict(), theirs)  # what the tutorial saves: no metadata beside it
    loaded = load_checkpoint(theirs)
    assert loaded.arch == "net"
    assert loaded.metadata["metadata_missing"] is True
    assert torch.equal(loaded.model.state_dict()["fc2.bias"], model.state_dict()["fc2.bias"])


def test_lenet5_is_recognised_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "lenet.pt"
    torch.save(LeNet5().state_dict(), path)
    assert load_checkpoint(path).arch == "lenet5"


def test_stale_metadata_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "mnist_cnn.pt"
    save_checkpoint(Net(), path, arch="net", extra={"test_accuracy": 99.0})
    torch.save(LeNet5().state_dict(), path)  # replaced behind the metadata's back
    loaded = load_checkpoint(path)
    assert loaded.arch == "lenet5"
    assert "test_accuracy" not in loaded.metadata
    assert loaded.metadata["sha256"] == sha256_bytes(path.read_bytes())


def good_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "good.pt"
    torch.save(Net().state_dict(), path)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: b"", "is empty"),
        (lambda tmp: good_bytes(tmp)[:5000], "corrupt or truncated"),
        (lambda tmp: b"this is not a checkpoint" * 10, "corrupt or truncated"),
        (lambda tmp: good_bytes(tmp)[:-100], "corrupt or truncated"),
    ],
)
def test_unreadable_files_are_refused(tmp_path: Path, make, message) -> None:
    path = tmp_path / "mnist_cnn.pt"
    path.write_bytes(make(tmp_path))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_wrong_shapes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mnist_cnn.pt"
    state = Net().state_dict()
    state["fc2.weight"] = torch.zeros(11, 500)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert str(refused.value) == (
        "the weights match no known architecture (deep, lenet5, net): wrong parameter names or shapes"
    )


def test_weights_of_another_architecture_than_the_metadata_says_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mnist_cnn.pt"
    save_checkpoint(LeNet5(), path, arch="lenet5")
    meta = read_metadata(path)
    assert meta is not None
    metadata_path(path).write_text(json.dumps({**meta, "arch": "net"}))
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert (
        str(refused.value) == "mnist_cnn.json says arch 'net', but mnist_cnn.pt holds the weights of 'lenet5'"
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_weights_that_are_not_finite_are_never_saved_or_loaded(tmp_path: Path, value: float) -> None:
    """A diverged training run's weights answer NaN for every image: refused on both sides."""
    model = Net()
    with torch.no_grad():
        model.fc1.weight[3, 7] = value
        model.conv2.bias[0] = value
    path = tmp_path / "mnist_cnn.pt"
    with pytest.raises(CheckpointError) as refused:
        save_checkpoint(model, path, arch="net")
    assert str(refused.value) == (
        "the model holds weights that are not finite numbers (NaN or infinity) in conv2.bias, "
        "fc1.weight: the training that made it diverged"
    )
    assert not path.exists() and not metadata_path(path).exists()
    torch.save(model.state_dict(), path)  # written by other code, with metadata that matches
    digest = sha256_bytes(path.read_bytes())
    metadata_path(path).write_text(json.dumps({"arch": "net", "sha256": digest, "version": digest[:12]}))
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert str(refused.value).startswith("mnist_cnn.pt holds weights that are not finite numbers")


def test_a_model_with_many_non_finite_tensors_names_four_and_counts_the_rest(tmp_path: Path) -> None:
    model = Net()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(CheckpointError) as refused:
        save_checkpoint(model, tmp_path / "mnist_cnn.pt", arch="net")
    assert "conv1.weight, conv1.bias, conv2.weight, conv2.bias and 4 more:" in str(refused.value)
    for count, named in ((4, "conv2.bias: "), (5, "conv2.bias and 1 more: ")):  # the edges of "more"
        model = Net()
        with torch.no_grad():
            for parameter in list(model.parameters())[:count]:
                parameter.fill_(float("nan"))
        with pytest.raises(CheckpointError) as refused:
            save_checkpoint(model, tmp_path / "mnist_cnn.pt", arch="net")
        assert f"in conv1.weight, conv1.bias, conv2.weight, {named}" in str(refused.value)


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    """weights_only=True: a file that would run code on load is never unpickled."""
    path = tmp_path / "mnist_cnn.pt"
    torch.save({"model": Net()}, path)  # a whole module object, not a state_dict
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    torch.save({"fc1.weight": 3}, path)
    with pytest.raises(CheckpointError, match="state_dict of tensors"):
        load_checkpoint(path)


def test_save_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "mnist_cnn.pt"
    first = save_checkpoint(Net(), path, arch="net")
    second = save_checkpoint(build_model("net"), path, arch="net")
    assert first["version"] != second["version"]
    assert load_checkpoint(path).version == second["version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist_cnn.json", "mnist_cnn.pt"]


def test_networks_output_log_probabilities() -> None:
    for arch in ARCHITECTURES:
        out = build_model(arch).eval()(torch.randn(3, 1, 28, 28))
        assert out.shape == (3, 10)
        assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet")


def test_an_unknown_architecture_is_not_saved(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as refused:
        save_checkpoint(Net(), tmp_path / "m.pt", arch="resnet")
    assert str(refused.value) == "unknown architecture 'resnet'"
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_saved_on_a_gpu_loads_on_a_cpu_only_machine(tmp_path: Path, monkeypatch) -> None:
    """Storages tagged `cuda:0`, as a GPU trainer writes them, are mapped to the CPU on load."""
    path = tmp_path / "mnist_cnn.pt"
    model = Net()
    with monkeypatch.context() as saving_on_a_gpu:
        saving_on_a_gpu.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        save_checkpoint(model, path, arch="net")
    assert b"cuda:0" in path.read_bytes()
    loaded = load_checkpoint(path)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name])


def test_the_model_is_put_on_the_device_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "mnist_cnn.pt"
    save_checkpoint(Net(), path, arch="net")
    assert {p.device.type for p in load_checkpoint(path, device="meta").model.parameters()} == {"meta"}


@pytest.mark.parametrize("torch_told_to_unpickle_anything", [False, True])
def test_a_pickle_that_runs_code_is_never_run(
    tmp_path: Path, monkeypatch, torch_told_to_unpickle_anything
) -> None:
    """Not even where the environment tells torch to drop `weights_only` when a caller leaves it out."""
    if torch_told_to_unpickle_anything:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "ran"),)

    path = tmp_path / "mnist_cnn.pt"
    torch.save({"fc1.weight": Payload()}, path)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert str(refused.value) == "mnist_cnn.pt is corrupt or truncated (not a readable PyTorch state_dict)"
    assert not (tmp_path / "ran").exists()


def test_a_folder_in_place_of_the_file_is_refused_saying_why(tmp_path: Path) -> None:
    (tmp_path / "mnist_cnn.pt").mkdir()
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path / "mnist_cnn.pt")
    assert str(refused.value) == "cannot read mnist_cnn.pt: Is a directory"


def test_metadata_naming_an_unknown_network_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mnist_cnn.pt"
    written = save_checkpoint(Net(), path, arch="net")
    metadata_path(path).write_text(json.dumps({**written, "arch": "resnet"}))
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert str(refused.value) == "mnist_cnn.json names unknown arch 'resnet'"


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_weights_that_fit_only_in_part_are_refused_even_with_metadata(tmp_path: Path, change) -> None:
    """The metadata's hash matches, so the shapes are not guessed: loading itself must be strict."""
    path = tmp_path / "mnist_cnn.pt"
    state = Net().state_dict()
    if change == "missing":
        del state["fc2.bias"]
    else:
        state["fc3.weight"] = torch.zeros(1)
    torch.save(state, path)
    digest = sha256_bytes(path.read_bytes())
    metadata_path(path).write_text(json.dumps({"arch": "net", "sha256": digest, "version": digest[:12]}))
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert str(refused.value) == (
        "mnist_cnn.pt does not fit architecture 'net': wrong parameter names or shapes"
    )


def test_a_file_without_metadata_is_named_by_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "theirs.pt"
    torch.save(Net().state_dict(), path)
    digest = sha256_bytes(path.read_bytes())
    loaded = load_checkpoint(path)
    assert (loaded.version, loaded.metadata["sha256"]) == (digest[:12], digest)


@pytest.mark.parametrize("content", ["[1, 2]", '"net"', "3", "null", "{not json"])
def test_metadata_that_is_not_an_object_counts_as_missing(tmp_path: Path, content) -> None:
    path = tmp_path / "mnist_cnn.pt"
    save_checkpoint(Net(), path, arch="net")
    metadata_path(path).write_text(content)
    assert read_metadata(path) is None
    assert load_checkpoint(path).metadata["metadata_missing"] is True


def test_a_write_stopped_before_its_rename_leaves_the_old_file_whole(tmp_path: Path, monkeypatch) -> None:
    """Until the rename, the new bytes sit complete in a hidden `.NAME.*.tmp` beside the target,
    a name no reader of `NAME` or of `*.pt` picks up; a failed write removes it."""
    path = tmp_path / "mnist_cnn.pt"
    path.write_bytes(b"old")
    seen: dict[str, bytes] = {}

    def rename_fails(source, target) -> None:
        seen.update({p.name: p.read_bytes() for p in tmp_path.iterdir()})
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", rename_fails)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(path, b"new bytes")
    (temporary,) = set(seen) - {"mnist_cnn.pt"}
    assert temporary.startswith(".mnist_cnn.pt.") and temporary.endswith(".tmp")
    assert seen[temporary] == b"new bytes"
    assert [(p.name, p.read_bytes()) for p in tmp_path.iterdir()] == [("mnist_cnn.pt", b"old")]


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), "high", [0.5]])
def test_a_not_a_digit_threshold_outside_0_to_1_is_refused(tmp_path: Path, threshold: Any) -> None:
    path = tmp_path / "mnist_cnn.pt"
    save_checkpoint(Net(), path, arch="net", extra={"not_a_digit": {"threshold": threshold}})
    with pytest.raises(
        CheckpointError, match="names a not-a-digit threshold that is not a number from 0 to 1"
    ):
        load_checkpoint(path)
    save_checkpoint(Net(), path, arch="net", extra={"not_a_digit": {"threshold": 0.25}})
    assert load_checkpoint(path).not_a_digit_threshold == 0.25
    save_checkpoint(Net(), path, arch="net")
    assert load_checkpoint(path).not_a_digit_threshold is None


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), "hot", [1.0]])
def test_a_temperature_that_is_no_positive_number_is_refused(tmp_path: Path, temperature: Any) -> None:
    """Every answer divides by it: a file that names a bad one is refused when loaded, not at the
    first prediction."""
    path = tmp_path / "mnist_cnn.pt"
    save_checkpoint(Net(), path, arch="net", extra={"calibration": {"temperature": temperature}})
    with pytest.raises(CheckpointError, match="names a temperature that is not a positive number"):
        load_checkpoint(path)
    save_checkpoint(Net(), path, arch="net", extra={"calibration": {"temperature": 0.5}})
    assert load_checkpoint(path).temperature == 0.5
