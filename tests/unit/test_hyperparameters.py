"""One list of hyperparameters: a value given to `POST /train` reaches the CLI and the checkpoint's
metadata unchanged, and every place that takes them takes exactly that list."""

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.jobs.children import Commands
from app.schemas import TrainRequest
from models.hyperparameters import DEFAULT_RECIPE, RECIPES, Hyperparameters, hyperparameter_fields
from training.__main__ import parse_args
from training.loop import TrainConfig

# A value other than the tutorial's for every hyperparameter; a new one needs its line here.
CHOSEN = {
    "recipe": "accurate",
    "arch": "lenet5",
    "epochs": 3,
    "batch_size": 64,
    "lr": 0.05,
    "momentum": 0.8,
    "weight_decay": 1e-4,
    "seed": 7,
    "limit_train": 500,
    "feedback_weight": 30,
}
NAMES = [spec.name for spec in hyperparameter_fields()]


def test_every_hyperparameter_has_a_chosen_value_unlike_the_tutorials() -> None:
    assert sorted(CHOSEN) == sorted(NAMES)
    assert all(CHOSEN[name] != getattr(Hyperparameters(), name) for name in NAMES)


def test_a_request_reaches_the_recorded_hyperparameters_unchanged(tmp_path: Path) -> None:
    request = {**CHOSEN, "min_accuracy": 90, "nproc_per_node": 2, "use_feedback": True}
    body = TrainRequest.model_validate(request).model_dump(exclude_none=True)
    command = Commands.of_python("cpu", None).training(body, tmp_path / "new.pt", tmp_path / "fb.zip")
    assert command[1:3] == ["-m", "training"]
    args = parse_args(command[3:])
    assert args.nproc_per_node == 2  # the child launches two ranks
    assert args.feedback == str(tmp_path / "fb.zip") and args.use_feedback
    without = {**body, "use_feedback": False}
    assert not parse_args(
        Commands.of_python("cpu", None).training(without, tmp_path / "n.pt", None)[3:]
    ).feedback
    config = TrainConfig.from_recipe(
        **{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(TrainConfig)}
    )
    assert config.hyperparameters() == CHOSEN
    assert config.out == str(tmp_path / "new.pt") and config.device == "cpu"


def test_every_preset_names_a_hyperparameter_within_its_bounds() -> None:
    for recipe in RECIPES:
        assert set(RECIPES[recipe].presets) <= set(NAMES), recipe
        Hyperparameters.from_recipe(recipe)  # raises if a preset is out of bounds


def test_left_out_values_come_from_the_recipe() -> None:
    config = TrainConfig.from_recipe("accurate", epochs=1, lr=None)
    assert config.epochs == 1
    assert config.lr == RECIPES["accurate"].presets["lr"]
    assert config.weight_decay == RECIPES["accurate"].presets["weight_decay"]
    # The default recipe: the tutorial's values but for its own presets.
    expected = {**Hyperparameters().hyperparameters(), **RECIPES[DEFAULT_RECIPE].presets}
    assert TrainConfig.from_recipe().hyperparameters() == expected


def test_the_request_takes_the_hyperparameters_and_the_jobs_own_fields_only() -> None:
    properties = TrainRequest.model_json_schema()["properties"]
    assert list(properties) == [*NAMES, "min_accuracy", "promote", "use_feedback", "nproc_per_node"]
    with pytest.raises(ValidationError):
        TrainRequest.model_validate({"weight_decays": 0.1})


@pytest.mark.parametrize(
    ("name", "value"),
    [("epochs", 0), ("lr", 0.0), ("momentum", 1.0), ("weight_decay", -0.1), ("seed", -1), ("arch", "vgg")],
)
def test_out_of_bounds_values_are_refused_everywhere(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        TrainConfig(**{name: value})  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        TrainRequest.model_validate({name: value})
    with pytest.raises(SystemExit):
        parse_args([f"--{name.replace('_', '-')}", str(value)])


def test_a_server_caps_what_its_clients_may_ask_for_but_the_cli_does_not() -> None:
    assert parse_args(["--epochs", "51"]).epochs == 51
    with pytest.raises(ValidationError):
        TrainRequest.model_validate({"epochs": 51})
    with pytest.raises(ValidationError):
        TrainRequest.model_validate({"lr": float("nan")})
