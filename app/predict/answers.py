"""A prediction as the API answers it, from one row of the model's log-softmax output."""

import math
from typing import Any

import numpy as np
import torch

from app.predict.preprocess import png_data_url


def prediction(
    log_probs: torch.Tensor, version: str, unsure_below: float, image: np.ndarray | None = None
) -> dict[str, Any]:
    """One row of log-softmax output (a value per class; a class's index is its digit) as the API's
    prediction (plain floats: torch ops on a row this short would cost more than the list
    arithmetic); `low_confidence` when its probability is below `unsure_below` (MNIST_LOW_CONFIDENCE)."""
    logs: list[float] = log_probs.tolist()
    probs = [math.exp(value) for value in logs]
    digit = max(range(len(probs)), key=probs.__getitem__)
    result = {
        "digit": digit,
        "confidence": probs[digit],
        "low_confidence": probs[digit] < unsure_below,
        "log_probs": logs,
        "probs": probs,
        "model_version": version,
    }
    if image is not None:
        result["input_image"] = png_data_url(image)
    return result
