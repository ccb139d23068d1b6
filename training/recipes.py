"""Named training recipes: the tutorial's, and a more accurate one for the same network."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """Default hyperparameters and the optimisation scheme that goes with them."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    # "sgd": the tutorial's plain SGD at a constant rate.
    # "onecycle": SGD with Nesterov momentum and weight decay under a one-cycle rate schedule.
    schedule: str
    weight_decay: float = 0.0
    # Random affine jitter of each training batch (rotation in degrees, scale, shift in pixels).
    augment: bool = False
    max_rotation: float = 0.0
    max_scale: float = 0.0
    max_shift: float = 0.0


RECIPES: dict[str, Recipe] = {
    "tutorial": Recipe(epochs=2, batch_size=32, lr=0.01, momentum=0.5, schedule="sgd"),
    "accurate": Recipe(
        epochs=8,
        batch_size=128,
        lr=0.1,
        momentum=0.9,
        schedule="onecycle",
        weight_decay=5e-4,
        augment=True,
        max_rotation=10.0,
        max_scale=0.1,
        max_shift=2.0,
    ),
}
