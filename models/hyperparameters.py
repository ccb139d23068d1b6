"""Training hyperparameters: the one list that `python -m training`'s flags, the `POST /train` body
and the checkpoint's recorded `hyperparameters` are all derived from, and the recipes that preset them.

It lives beside the checkpoint format because the metadata records it, and in `models` so that both
`training` and `app` may import it (the app never imports the training loop). Adding one is adding a
field to `Hyperparameters` (with its bounds) and using it in the loop.
"""

import dataclasses
import math
import operator
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self, Union, get_args, get_origin

from models.cnn import ARCHITECTURES, BATCH_NORMED


@dataclass(frozen=True)
class Recipe:
    """A preset: the hyperparameters it changes from the tutorial's, and the optimisation scheme
    and augmentation that go with them (which, with the values, determine the weights)."""

    presets: Mapping[str, Any]
    # "sgd": the tutorial's plain SGD at a constant rate.
    # "onecycle": SGD with Nesterov momentum under a one-cycle rate schedule.
    schedule: str = "sgd"
    # Random affine jitter of each training batch (rotation in degrees, scale, shift in pixels).
    augment: bool = False
    max_rotation: float = 0.0
    max_scale: float = 0.0
    max_shift: float = 0.0
    # Training images held out (never trained on) to fit the confidence's calibration and to
    # choose the not-a-digit threshold.
    validation: int = 0
    # Outlier Exposure (models/not_a_digit.py): beside each batch of digits, as many non-digits
    # (training/outliers.py) whose answers are pulled towards uniform with this weight (0: none).
    outlier_exposure: float = 0.0
    # Each training step's arithmetic in bfloat16 where the device has it natively (the weights,
    # the optimiser and every evaluation stay float32); float32 elsewhere.
    mixed_precision: bool = False


# What `python -m training`, `POST /train` and the quick start train when no recipe is named.
DEFAULT_RECIPE = "outlier_aware"
RECIPES: dict[str, Recipe] = {
    "tutorial": Recipe(presets={}),
    # The tutorial's hyperparameters, trained to know what is not a digit (for four epochs rather
    # than two: pulled towards uniform on as many non-digits as digits, the digits need the time).
    "outlier_aware": Recipe(presets={"epochs": 4}, validation=2000, outlier_exposure=1.5),
    # A deeper network with batch norm, for 15 epochs, its steps in bf16 where the device computes
    # in it natively (faster there; the reports say by how much).
    "accurate": Recipe(
        presets={
            "arch": "deep",
            "epochs": 15,
            "batch_size": 128,
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
        },
        schedule="onecycle",
        augment=True,
        max_rotation=10.0,
        max_scale=0.1,
        max_shift=2.0,
        validation=2000,
        mixed_precision=True,
    ),
}


@dataclass(frozen=True)
class Bounds:
    """What a hyperparameter may be. `server_max` is a tighter cap on jobs a server runs for its
    clients (on its own hardware), beyond what the training code itself accepts."""

    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    server_max: float | None = None
    choices: tuple[str, ...] = ()

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed, or None."""
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        for limit, sign, holds in (
            (self.ge, ">=", operator.ge),
            (self.gt, ">", operator.gt),
            (self.le, "<=", operator.le),
            (self.lt, "<", operator.lt),
        ):
            if limit is not None and not holds(value, limit):
                return f"must be {sign} {limit}, got {value!r}"
        return None


def hyperparameter(default: Any, help: str, **bounds: Any) -> Any:
    return field(default=default, metadata={"bounds": Bounds(help, **bounds)})


@dataclass(frozen=True)
class Hyperparameters:
    """What, with the data, determines the trained weights. The values' defaults are the tutorial's;
    a recipe's presets (the default recipe's too) apply through `from_recipe`, as the CLI, jobs and
    tests build them."""

    recipe: str = hyperparameter(DEFAULT_RECIPE, "preset of the values below", choices=tuple(RECIPES))
    arch: str = hyperparameter("net", "network", choices=tuple(ARCHITECTURES))
    epochs: int = hyperparameter(2, "epochs", ge=1, server_max=50)
    batch_size: int = hyperparameter(
        32, "training batch size, per rank when several processes train", ge=1, server_max=4096
    )
    lr: float = hyperparameter(
        0.01, "learning rate, the peak one under a one-cycle schedule", gt=0, server_max=10
    )
    momentum: float = hyperparameter(0.5, "SGD momentum", ge=0, lt=1)
    weight_decay: float = hyperparameter(0.0, "SGD weight decay, an L2 penalty", ge=0, lt=1)
    seed: int = hyperparameter(53113, "random seed", ge=0, le=2**31 - 1)
    limit_train: int | None = hyperparameter(
        None, "train on the first N training images only", ge=1, server_max=60000
    )
    # The largest weight the gate promoted at every seed tried (docs/guides/feedback.md#training-on-them).
    feedback_weight: int = hyperparameter(
        3,
        "times each correction of the training split is seen per epoch, when training on feedback",
        ge=1,
        server_max=100,  # each repeat is a copy in the training set's memory
    )

    def __post_init__(self) -> None:
        for spec in hyperparameter_fields():
            value = getattr(self, spec.name)
            if value is not None and (problem := bounds_of(spec).problem(value)):
                raise ValueError(f"{spec.name} {problem}")
        # Batch norm learns from the spread of a batch: one image has none.
        if self.arch in BATCH_NORMED and self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 for the {self.arch} network, got {self.batch_size}")
        if self.arch in BATCH_NORMED and self.limit_train is not None and self.limit_train < 2:
            raise ValueError(f"limit_train must be >= 2 for the {self.arch} network, got {self.limit_train}")

    @classmethod
    def from_recipe(cls, recipe: str | None = None, **overrides: Any) -> Self:
        """The recipe's values, then explicit overrides (None means 'not given'); any extra field
        of a subclass may be overridden too."""
        recipe = recipe or DEFAULT_RECIPE
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
        values = dict(RECIPES[recipe].presets)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(recipe=recipe, **values)

    def hyperparameters(self) -> dict[str, Any]:
        """The values recorded in the checkpoint's metadata."""
        return {spec.name: getattr(self, spec.name) for spec in hyperparameter_fields()}


def hyperparameter_fields() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(Hyperparameters)


def bounds_of(spec: dataclasses.Field[Any]) -> Bounds:
    bounds = spec.metadata["bounds"]
    assert isinstance(bounds, Bounds)
    return bounds


def value_type(spec: dataclasses.Field[Any]) -> type:
    """`int` for `int | None`, and so on."""
    if get_origin(spec.type) in (Union, types.UnionType):
        (inner,) = (arg for arg in get_args(spec.type) if arg is not type(None))
        return inner  # type: ignore[no-any-return]
    assert isinstance(spec.type, type)
    return spec.type


def cli_flag(name: str) -> str:
    """`batch_size` -> `--batch-size`, the flag `python -m training` takes it as."""
    return "--" + name.replace("_", "-")
