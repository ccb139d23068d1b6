"""The served model's signature: MNIST's input and classes, and the one normalisation that training
and serving both apply."""

import re
from pathlib import Path

import pytest
import torch

from models.signature import SIGNATURE
from tests.tools import python_json
from training import outliers
from training.data import Mnist

INPUT, OUTPUT = SIGNATURE.input, SIGNATURE.output
REPO = Path(__file__).resolve().parents[2]


def test_it_describes_mnist() -> None:
    assert (INPUT.height, INPUT.width, INPUT.channels, INPUT.grey_levels) == (28, 28, 1, 256)
    assert (INPUT.mean, INPUT.std) == (0.1307, 0.3081)
    assert OUTPUT.labels == ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
    assert OUTPUT.classes == 10 and OUTPUT.labels_text == "0-9"


def test_what_callers_derive_from_it() -> None:
    assert INPUT.pixels == 784 and INPUT.values == 784
    assert INPUT.size == (28, 28) and INPUT.size_text == "28x28"
    assert INPUT.shape(5) == (5, 1, 28, 28) and INPUT.shape(-1) == (-1, 1, 28, 28)
    assert INPUT.brightest == 255.0
    assert INPUT.normalization() == {"mean": 0.1307, "std": 0.3081}


def test_normalize_is_the_tutorials_to_tensor_and_normalize_in_place(mnist: Mnist) -> None:
    """The tutorial's ToTensor (x / 255), then Normalize((0.1307,), (0.3081,)), as torchvision
    computes them (a 1-element mean and std); to the bit what serving computed before it was moved
    here (a division, a subtraction and a division by Python floats)."""
    grey = mnist.test_images[:50].unsqueeze(1).float()
    tutorial = (
        grey.div(255).sub_(torch.tensor([0.1307]).view(-1, 1, 1)).div_(torch.tensor([0.3081]).view(-1, 1, 1))
    )
    before = grey.div(255.0).sub_(0.1307).div_(0.3081)
    x = grey.clone()
    assert INPUT.normalize(x) is x  # in place: a training set is not copied
    assert torch.allclose(x, tutorial, rtol=0, atol=1e-6)
    assert torch.equal(x, before)


def test_a_normalized_level_is_what_normalize_makes_of_it() -> None:
    """The background (0) and the brightest level, as the network sees them: exactly the values
    `normalize` gives those pixels, so training's augmentation fills with the background itself."""
    levels = torch.tensor([0.0, 255.0])
    low, high = INPUT.normalize(levels.clone()).tolist()
    assert INPUT.normalized(0.0) == low == pytest.approx(-0.1307 / 0.3081)
    assert INPUT.normalized(255.0) == high == pytest.approx((1 - 0.1307) / 0.3081)


# 28 or 784 as a number of its own (28x28 and N,1,28,28 included), not a part of another number,
# a name or a decimal (2048, 0.28, x_784).
SHAPE_NUMBER = re.compile(r"(?<![0-9A-Za-wyz_.])(?:28|784)(?![0-9A-Za-wyz_]|\.[0-9])")


def sources() -> list[Path]:
    """The service's and the models' Python source, but for the signature and generated code."""
    found = [path for folder in ("app", "models") for path in sorted((REPO / folder).rglob("*.py"))]
    return [path for path in found if "_pb2" not in path.name and path != REPO / "models" / "signature.py"]


@pytest.mark.parametrize(
    ("line", "shape"),
    [
        ("torch.empty((n, 1, 28, 28))", True),
        ('"a 28x28 image"', True),
        ("ge=784,", True),
        ("uint8 N x 28 x 28.", True),
        ("IMAGE = 28", True),
        ("2048 * 2048", False),
        ("0.28", False),
        ("1280 or 128", False),
        ("size_784 = x28a", False),
    ],
)
def test_the_scan_finds_the_input_size_and_nothing_else(line: str, shape: bool) -> None:
    assert bool(SHAPE_NUMBER.search(line)) is shape


def test_only_the_signature_writes_the_input_size() -> None:
    """Preprocessing, the engine, the API's text, v2, the settings' bounds and the networks read
    the input's size from models/signature.py; none writes it again."""
    scanned = sources()
    assert REPO / "app" / "predict" / "preprocess.py" in scanned and len(scanned) > 40
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in scanned
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if SHAPE_NUMBER.search(line)
    ]
    assert not found, "the input's size belongs to models/signature.py alone:\n" + "\n".join(found)


# Another model described: 32x32 images normalised otherwise, three classes. Run before anything
# else reads the signature, in a process of its own.
ANOTHER_MODEL = """
import models.signature as signature

signature.SIGNATURE = signature.Signature(
    signature.ImageInput(height=32, width=32, channels=1, grey_levels=256, mean=0.5, std=0.25),
    signature.ClassOutput(labels=("a", "b", "c")),
)
import json, sys

import numpy, pydantic, torch
from app.config import Settings
from app.predict.preprocess import preprocess
from app.schemas import Prediction
from app.v2 import protocol
from app.v2.routes import INFER_DESCRIPTION
from models.card import confusion_matrix
from models.checkpoint import save_checkpoint
from models.cnn import DeepNet, LeNet5, Net
from tests.images import encode
from training import outliers
from training.loop import BACKGROUND, to_model_input

def settles(**values):
    try:
        Settings(**values)
    except pydantic.ValidationError:
        return False
    return True


digit = numpy.zeros((28, 28), dtype=numpy.uint8)
digit[4:24, 12:16] = 255
schema = Prediction.model_json_schema()["properties"]
print(json.dumps({
    "log_probs": [schema["log_probs"]["minItems"], schema["log_probs"]["maxItems"]],
    "probs": [schema["probs"]["minItems"], schema["probs"]["maxItems"]],
    "digit_maximum": schema["digit"]["maximum"],
    "log_probs_text": schema["log_probs"]["description"],
    "input_image_text": schema["input_image"]["description"],
    "v2_inputs": [list(spec.shape) for spec in protocol.INPUTS.values()],
    "v2_outputs": [list(spec.shape) for spec in protocol.OUTPUTS.values()],
    "v2_text": INFER_DESCRIPTION,
    "image_pixels_settle": [settles(max_image_pixels=n) for n in (32 * 32 - 1, 32 * 32)],
    "request_pixels_settle": [settles(max_request_pixels=n) for n in (32 * 32 - 1, 32 * 32)],
    "preprocessed": list(preprocess(encode(digit)).shape),
    "normalised_black": float(preprocess(encode(digit)).min()),
    "training_input": list(to_model_input(torch.zeros(2, 32, 32, dtype=torch.uint8), "cpu").shape),
    "background": BACKGROUND,
    "networks": [Net().fc2.out_features, LeNet5().fc3.out_features, DeepNet().head[-1].out_features],
    "outliers": [list(outliers.drawn(name, 2, 0, torch.full((3, 32, 32), 200, dtype=torch.uint8)).shape)
                 for name in outliers.FAMILIES],
    "card": list(confusion_matrix(torch.tensor([0, 2]), torch.tensor([1, 2])).shape),
    "normalize": save_checkpoint(Net(), sys.argv[1], arch="net")["normalize"],
}))
"""


def test_another_signature_reaches_every_place_that_reads_it(tmp_path: Path) -> None:
    """The seam: describe another model, and the API's schemas, v2's tensors and text, the
    settings' bounds, preprocessing, training's normalisation, the networks' outputs and the model
    card follow it."""
    seen = python_json(ANOTHER_MODEL, str(tmp_path / "mnist_cnn.pt"))
    assert seen["log_probs"] == seen["probs"] == [3, 3] and seen["digit_maximum"] == 2
    assert seen["log_probs_text"] == "the network's own log-softmax output, digits a-c"
    assert "preprocessed 32x32 image" in seen["input_image_text"]
    assert seen["v2_inputs"] == [[-1, 1, 32, 32], [-1, 32, 32], [-1]]
    assert seen["v2_outputs"] == [[-1, 3], [-1, 3], [-1], [-1], [-1]]
    assert seen["outliers"] == [[2, 32, 32]] * len(outliers.FAMILIES)
    assert "FP32 `input` [N,1,32,32] normalised, UINT8 `pixels` [N,32,32]" in seen["v2_text"]
    assert seen["image_pixels_settle"] == seen["request_pixels_settle"] == [False, True]
    assert seen["preprocessed"] == [1, 32, 32] and seen["normalised_black"] == -2.0
    assert seen["training_input"] == [2, 1, 32, 32] and seen["background"] == -2.0
    assert seen["networks"] == [3, 3, 3] and seen["card"] == [3, 3]
    assert seen["normalize"] == {"mean": 0.5, "std": 0.25}
