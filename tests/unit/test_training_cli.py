"""`python -m training` as a user runs it: real processes, real MNIST, real files (refusals that need
no process are checked through `main` itself)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from tests.datasets import unreadable_mnist
from tests.server import REPO
from training.__main__ import main


def train(*args: str, mnist_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MNIST_DATA_DIR": str(mnist_dir), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_quick_run_writes_a_checkpoint_and_tutorial_lines(tmp_path: Path, mnist_dir: Path) -> None:
    result = train(
        "--limit-train",
        "1000",
        "--epochs",
        "1",
        "--log-interval",
        "10",
        "--events",
        "events.jsonl",
        mnist_dir=mnist_dir,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Train Epoch: 1 [320/1000 (31%)]\tLoss: " in result.stdout
    assert "Test set: Average loss: " in result.stdout
    loaded = load_checkpoint(tmp_path / "mnist_cnn.pt")
    assert loaded.metadata["hyperparameters"]["limit_train"] == 1000
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds[0] == "start" and kinds[-1] == "saved" and "epoch" in kinds
    assert events[-1]["version"] == loaded.version


@pytest.mark.slow
def test_events_on_stdout_are_pure_json(tmp_path: Path, mnist_dir: Path) -> None:
    result = train(
        "--limit-train",
        "300",
        "--epochs",
        "1",
        "--events",
        "-",
        "--out",
        "m.pt",
        mnist_dir=mnist_dir,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["event"] == "saved"
    assert "Test set" in result.stderr
    quiet = train(
        "--limit-train", "300", "--epochs", "1", "--events", "-", "--quiet", mnist_dir=mnist_dir, cwd=tmp_path
    )
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert [json.loads(line)["event"] for line in quiet.stdout.splitlines()][-1] == "saved"


@pytest.mark.slow  # a real training process
def test_a_failure_is_an_error_event_for_programs(tmp_path: Path, mnist_dir: Path) -> None:
    bad = unreadable_mnist(tmp_path / "bad")
    result = train("--data-dir", str(bad), "--events", "-", "--quiet", mnist_dir=mnist_dir, cwd=tmp_path)
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [event["event"] for event in events] == ["error"]
    assert str(bad) in events[0]["message"]
    assert result.stderr == f"error: {events[0]['message']}\n"  # and --quiet printed nothing else


@pytest.mark.parametrize(
    "args",
    [
        ["--epochs", "-1"],
        ["--epochs", "0"],
        ["--lr", "0"],
        ["--lr", "-0.1"],
        ["--arch", "resnet"],
        ["--batch-size", "zero"],
        ["--momentum", "1.5"],
        ["--lr", "inf"],
        ["--seed", "2147483648"],
        ["--weight-decay", "-1"],
        ["--recipe", "magic"],
        ["--outlier-families", "faces"],
        ["--outlier-families", "glyphs,glyphs"],
        ["--outlier-families", ","],
    ],
)
def test_bad_flags_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(tmp_path / "m.pt")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("python -m training: error: argument ")
    assert not (tmp_path / "m.pt").exists()


def test_outlier_families_need_a_recipe_with_outlier_exposure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--recipe", "tutorial", "--outlier-families", "glyphs", "--out", str(tmp_path / "m.pt")])
    assert exit_.value.code == 2
    said = capsys.readouterr().err.splitlines()[-1]
    expected = "--outlier-families needs a recipe with Outlier Exposure: tutorial has none"
    assert said == f"python -m training: error: {expected}"


@pytest.mark.slow  # a real training process
def test_a_bad_flag_in_a_real_process_has_no_traceback(tmp_path: Path, mnist_dir: Path) -> None:
    result = train("--epochs", "0", mnist_dir=mnist_dir, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.splitlines()[-1] == "python -m training: error: argument --epochs: must be >= 1, got 0"
    )
    assert not (tmp_path / "mnist_cnn.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_without_cuda_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mnist_dir: Path
) -> None:
    assert main(["--device", "cuda", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "m.pt")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --device cuda was requested but CUDA is not available on this machine"
    ]


def test_corrupt_data_is_a_one_line_error(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for path in mnist_dir.glob("*-ubyte.gz"):
        (data / path.name).write_bytes(path.read_bytes())
    (data / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    assert main(["--data-dir", str(data), "--out", str(tmp_path / "m.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "train-labels-idx1-ubyte.gz" in err[0]
    assert not (tmp_path / "m.pt").exists()
