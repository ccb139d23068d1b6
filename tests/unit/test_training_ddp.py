"""Training across processes as users run it: `python -m training --nproc-per-node 2`, and torchrun
itself, with gloo on loopback: real processes, real MNIST, real checkpoints."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint, sha256_bytes
from models.cnn import Net
from tests.datasets import unreadable_mnist
from tests.server import REPO, free_port
from tests.tools import gone, installed, polled, processes_with

SMALL = ["--device", "cpu", "--epochs", "1", "--limit-train", "2000"]


def environment(mnist_dir: Path) -> dict[str, str]:
    # One thread per rank in every run, so that runs of different shapes may be compared bit for bit.
    return {**os.environ, "MNIST_DATA_DIR": str(mnist_dir), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def start(command: list[str], mnist_dir: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=environment(mnist_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def training(*args: str) -> list[str]:
    return [sys.executable, "-m", "training", *args]


def finish(process: subprocess.Popen[str], timeout_s: float = 300) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout_s)
    return process.returncode, stderr


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def assert_running(launcher: subprocess.Popen[str]) -> None:
    """Fail at once, with its error, if the launcher has exited: nothing waited for can come then."""
    assert launcher.poll() is None, launcher.communicate()


def progressed(events: Path, launcher: subprocess.Popen[str]) -> bool:
    assert_running(launcher)
    return '"progress"' in (events.read_text() if events.exists() else "")


def ranks_of(out: Path, launcher: subprocess.Popen[str]) -> list[int]:
    """The pids of the ranks writing `out`."""
    assert_running(launcher)
    return [pid for pid, env in processes_with(str(out)).items() if "RANK" in env]


@pytest.mark.slow
def test_two_ranks_are_reproducible_and_two_machines_train_the_same_weights(
    tmp_path: Path, mnist_dir: Path
) -> None:
    code, stderr = finish(
        start(training("--nproc-per-node", "2", *SMALL, "--out", "first.pt"), mnist_dir, tmp_path)
    )
    assert code == 0, stderr
    first = sha256_bytes((tmp_path / "first.pt").read_bytes())

    meta = load_checkpoint(tmp_path / "first.pt").metadata
    assert meta["distributed"] == {
        "world_size": 2,
        "nnodes": 1,
        "backend": "gloo",
        "batch_size_per_rank": 32,
        "global_batch_size": 64,
        "effective_lr": 0.02,
    }
    assert meta["hyperparameters"]["batch_size"] == 32 and meta["hyperparameters"]["lr"] == 0.01
    # A plain state_dict (no DDP `module.` prefixes): the tutorial's own Net loads it as it is.
    Net().load_state_dict(torch.load(tmp_path / "first.pt", weights_only=True), strict=True)

    # The same seed and world size again, as two machines of one rank each on loopback: torchrun
    # itself on one, this module's launcher on the other, meeting at one c10d endpoint. Ranks 0 and
    # 1 get the same shares as above, and the average of two gradients does not depend on where
    # they came from: the same weights, bit for bit.
    torchrun = installed("torchrun")
    assert torchrun is not None, "torchrun comes with torch"
    endpoint = f"127.0.0.1:{free_port()}"
    meet = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-endpoint", endpoint, "--rdzv-id", "loopback"]
    by_torchrun = [torchrun, *meet, "--rdzv-backend", "c10d", "-m", "training", *SMALL, "--out", "two.pt"]
    machines = [
        start(by_torchrun, mnist_dir, tmp_path),
        start(training(*meet, *SMALL, "--out", "two.pt"), mnist_dir, tmp_path),
    ]
    for machine in machines:
        code, stderr = finish(machine)
        assert code == 0, stderr
    two = load_checkpoint(tmp_path / "two.pt")
    assert two.metadata["distributed"]["nnodes"] == 2 and two.metadata["distributed"]["world_size"] == 2
    assert two.metadata["sha256"] == first


@pytest.mark.slow
def test_a_killed_rank_stops_the_run_with_one_line_naming_it(tmp_path: Path, mnist_dir: Path) -> None:
    out, events = tmp_path / "killed.pt", tmp_path / "events.jsonl"
    args = ["--nproc-per-node", "2", "--device", "cpu", "--epochs", "2", "--log-interval", "5"]
    launcher = start(training(*args, "--events", str(events), "--out", str(out)), mnist_dir, tmp_path)
    polled(lambda: progressed(events, launcher), timeout_s=120, what="no progress")
    ranks = {env.get("RANK"): pid for pid, env in processes_with(str(out)).items() if "RANK" in env}
    assert set(ranks) == {"0", "1"}, ranks
    os.kill(ranks["1"], signal.SIGKILL)

    code, stderr = finish(launcher, timeout_s=60)
    assert code == 1
    assert last_line(stderr) == (
        f"error: rank 1 of 2 (pid {ranks['1']}) was killed by SIGKILL; every rank was stopped"
    )
    reported = json.loads(events.read_text().splitlines()[-1])
    assert reported["event"] == "error" and reported["message"].startswith("rank 1 of 2")
    gone(str(out), what="a rank outlived the run")
    assert not out.exists() and list(tmp_path.glob("*.tmp")) == []


@pytest.mark.slow
def test_ranks_die_with_a_launcher_killed_outright(tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / "orphaned.pt"
    launcher = start(
        training("--nproc-per-node", "2", *SMALL, "--quiet", "--out", str(out)), mnist_dir, tmp_path
    )
    polled(lambda: ranks_of(out, launcher), lambda ranks: len(ranks) == 2, 120, what="the ranks not started")
    launcher.kill()  # no chance to stop its ranks itself
    launcher.wait()
    gone(str(out), what="ranks outlived their launcher")
    assert not out.exists()


@pytest.mark.slow  # torchrun and its ranks, as real processes
def test_a_failing_rank_is_named_with_its_own_reason(tmp_path: Path, mnist_dir: Path) -> None:
    bad = unreadable_mnist(tmp_path / "bad")
    launcher = start(
        training("--nproc-per-node", "2", "--device", "cpu", "--data-dir", str(bad), "--out", "m.pt"),
        mnist_dir,
        tmp_path,
    )
    code, stderr = finish(launcher, timeout_s=120)
    assert code == 1
    assert re.fullmatch(
        r"error: rank [01] of 2 \(pid \d+\) exited with status 1: \S*/train-images-idx3-ubyte: only 15 "
        r"bytes, shorter than an IDX header; every rank was stopped",
        last_line(stderr),
    ), stderr
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.slow  # torchrun and its ranks, as real processes
def test_a_rendezvous_nobody_joins_times_out_with_a_clear_error(tmp_path: Path, mnist_dir: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    launcher = start(
        training("--nnodes", "2", "--rdzv-endpoint", endpoint, "--rdzv-timeout", "2", *SMALL),
        mnist_dir,
        tmp_path,
    )
    code, stderr = finish(launcher, timeout_s=120)
    assert code == 1
    assert last_line(stderr) == (
        f"error: the rendezvous at {endpoint} timed out after 2 s: fewer than 2 machines joined "
        "(start the same command on each, or raise --rdzv-timeout)"
    )


@pytest.mark.gpu
def test_a_gpu_rank_under_torchrun_trains_over_nccl(tmp_path: Path, mnist_dir: Path) -> None:
    # One rank is enough to run the NCCL process group and DDP on a machine with a single GPU.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1"]
    args = ["--device", "cuda", "--epochs", "1", "--limit-train", "2000", "--out", "nccl.pt"]
    code, stderr = finish(start([*torchrun, "-m", "training", *args], mnist_dir, tmp_path))
    assert code == 0, stderr
    meta = load_checkpoint(tmp_path / "nccl.pt").metadata
    assert meta["distributed"]["backend"] == "nccl" and meta["distributed"]["world_size"] == 1
    assert meta["device"] == "cuda:0" and meta["test_accuracy"] > 80


@pytest.mark.slow  # torchrun and its ranks, as real processes
def test_a_run_that_diverges_stops_every_rank_saying_why(tmp_path: Path, mnist_dir: Path) -> None:
    """The ranks add up their losses before judging: all stop together, with the reason."""
    # The tutorial's recipe: with Outlier Exposure each step's pull towards uniform can hold these
    # weights finite past the first epoch.
    diverging = [
        "--recipe",
        "tutorial",
        "--lr",
        "10",
        "--momentum",
        "0.99",
        "--batch-size",
        "1",
        "--limit-train",
        "400",
    ]
    launcher = start(
        training("--nproc-per-node", "2", "--device", "cpu", "--epochs", "1", *diverging, "--out", "m.pt"),
        mnist_dir,
        tmp_path,
    )
    code, stderr = finish(launcher, timeout_s=120)
    assert code == 1
    assert re.search(r"training diverged in epoch 1: the training loss is (nan|inf)", last_line(stderr)), (
        stderr
    )
    assert not (tmp_path / "m.pt").exists()
