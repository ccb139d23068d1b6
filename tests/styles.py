"""Digits as people's photos show them, built from MNIST's own digits: a style the tutorial's model
gets wrong, for the tests of learning from corrections. Images of MNIST's training digits teach;
images of its test digits judge."""

import numpy as np
import torch
from PIL import Image

# The digit's 28x28 drawn this many times larger, on a page of PAGE times that.
SCALE = 3
PAGE = 1.5


def ruled_paper(digit: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
    """One MNIST digit (28x28, light on dark) written in dark ink on ruled notebook paper and
    photographed: grey paper with a little noise and uneven light, with the page's ruled lines
    running across the whole picture, which the service's cropping takes for ink."""
    written = 28 * SCALE
    side = int(written * PAGE)
    ink = np.zeros((side, side), dtype=np.float32)
    top, left = (int(rng.integers(0, side - written + 1)) for _ in range(2))
    drawn = Image.fromarray(digit.numpy()).resize((written, written), Image.Resampling.BILINEAR)
    ink[top : top + written, left : left + written] = np.asarray(drawn, dtype=np.float32) / 255.0
    rows = np.arange(side, dtype=np.float32)[:, None]
    paper = 228.0 + 10.0 * rng.uniform(-1, 1) + 8.0 * (rows / side - 0.5) + rng.normal(0, 3.0, (side, side))
    spacing = int(rng.integers(24, 32))
    ruled = ((np.arange(side) - int(rng.integers(0, spacing))) % spacing) < 3
    paper[ruled, :] -= rng.uniform(60, 90)
    photo = paper * (1.0 - 0.8 * ink)
    return np.clip(photo, 0, 255).round().astype(np.uint8)
