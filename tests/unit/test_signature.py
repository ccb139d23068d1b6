"""The served model's signature: MNIST's input and classes, and the one normalisation that training
and serving both apply."""

import pytest
import torch

from models.signature import SIGNATURE
from training.data import Mnist

INPUT, OUTPUT = SIGNATURE.input, SIGNATURE.output


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
