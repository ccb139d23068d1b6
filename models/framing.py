"""MNIST's framing of a digit: cropped to its ink, scaled so its longer side is 20 px, and centred
by its centre of mass in the network's input frame. The service frames every upload this way
(app/predict/preprocess.py); anything built to look like what it serves is framed the same way.
"""

import numpy as np
from PIL import Image

from models.signature import SIGNATURE

INPUT = SIGNATURE.input
DIGIT_BOX = 20  # MNIST scaled each digit so its longer side is 20 px


def to_mnist_frame(digit: np.ndarray) -> np.ndarray:
    """Crop to the ink, scale the longer side to 20 px, centre by centre of mass in the input's frame."""
    rows, cols = np.nonzero(digit > 0.25 * float(digit.max()))
    crop = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = crop.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    small = np.clip(small, 0.0, 255.0)
    mass = small.sum()
    ys, xs = np.indices(small.shape)
    centre_y, centre_x = (ys * small).sum() / mass, (xs * small).sum() / mass
    top = int(np.clip(round(INPUT.height / 2 - centre_y), 0, INPUT.height - small.shape[0]))
    left = int(np.clip(round(INPUT.width / 2 - centre_x), 0, INPUT.width - small.shape[1]))
    frame = np.zeros(INPUT.size, dtype=np.float32)
    frame[top : top + small.shape[0], left : left + small.shape[1]] = small
    return frame
