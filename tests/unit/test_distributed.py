"""The pieces of a run across processes that need no second process: each rank's share of an epoch,
the world torchrun describes, and what the launcher passes on or refuses."""

import argparse
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.utils.data import DistributedSampler

from training.__main__ import parse_args
from training.distributed import LOST_PEER, World, lost_contact, rank_device, shard, world_from_environment
from training.launch import (
    LaunchError,
    check_devices,
    describe_failure,
    rank_argv,
    torchrun_args,
    wants_launch,
)


@pytest.mark.parametrize("n", [10, 11, 60000, 3])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_each_rank_takes_the_share_distributed_sampler_would(n: int, world_size: int) -> None:
    # DistributedSampler shuffles with seed + epoch; given the same permutation, shares must match.
    for epoch in (0, 1):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(7 + epoch))
        for rank in range(world_size):
            sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, seed=7)
            sampler.set_epoch(epoch)
            world = World(rank=rank, world_size=world_size)
            assert shard(order, world).tolist() == list(sampler)


def test_a_world_of_one_keeps_the_whole_order_in_place() -> None:
    order = torch.randperm(100)
    assert shard(order, World()) is order


def test_the_shares_cover_the_epoch() -> None:
    order = torch.randperm(60001)
    shares = [shard(order, World(rank=r, world_size=4)) for r in range(4)]
    assert len({len(share) for share in shares}) == 1
    assert set(torch.cat(shares).tolist()) == set(range(60001))


def test_the_world_comes_from_torchruns_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert world_from_environment() == World()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "r")
    for name, value in {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_WORLD_SIZE": "2",
    }.items():
        monkeypatch.setenv(name, value)
    world = world_from_environment()
    assert world == World(rank=3, local_rank=1, world_size=4, nnodes=2, launched=True)
    assert not world.is_main and world.distributed and world.label() == "rank 3 of 4"


def test_ranks_get_every_flag_but_the_launch_flags() -> None:
    argv = [
        "--nproc-per-node",
        "2",
        "--epochs",
        "1",
        "--nnodes=2",
        "--rdzv-endpoint",
        "127.0.0.1:29400",
        "--rdzv-timeout",
        "9",
        "--out",
        "m.pt",
    ]
    assert rank_argv(argv) == ["--epochs", "1", "--rdzv-timeout", "9", "--out", "m.pt"]
    # Abbreviations would slip past that filter: the parser takes none.
    with pytest.raises(SystemExit):
        parse_args(["--nproc", "2"])


def test_which_command_lines_launch() -> None:
    assert not wants_launch(parse_args([]))
    assert not wants_launch(parse_args(["--nproc-per-node", "1"]))
    assert wants_launch(parse_args(["--nproc-per-node", "2"]))
    assert wants_launch(parse_args(["--nnodes", "2", "--rdzv-endpoint", "h:1"]))


def test_one_machine_meets_on_a_free_port_and_many_at_the_endpoint() -> None:
    single = torchrun_args(parse_args(["--nproc-per-node", "2"]), ["--epochs", "1"])
    assert "--standalone" in single and single[-4:] == ["--module", "training", "--epochs", "1"]
    assert single[single.index("--max-restarts") + 1] == "0"  # a failed rank fails the run
    many = torchrun_args(
        parse_args(["--nnodes", "2", "--rdzv-endpoint", "h:29400", "--rdzv-timeout", "7"]), []
    )
    assert "--standalone" not in many
    assert many[many.index("--rdzv-endpoint") + 1] == "h:29400"
    assert many[many.index("--rdzv-conf") + 1] == "join_timeout=7,read_timeout=7"


def test_several_machines_need_an_endpoint() -> None:
    with pytest.raises(LaunchError, match="--rdzv-endpoint"):
        check_devices(parse_args(["--nnodes", "2", "--device", "cpu"]))


def failure(
    tmp_path: Path, rank: int, exitcode: int, report: dict[str, object] | None, at: float
) -> ProcessFailure:
    """What torchrun's agent hands the launcher for one failed rank, with the error file the rank
    left (training/distributed.py `report_to_launcher`), if any, written at time `at`."""
    error_file = tmp_path / f"error{rank}.json"
    error_file.unlink(missing_ok=True)
    if report is not None:
        error_file.write_text(json.dumps({**report, "timestamp": int(at)}))
        os.utime(error_file, (at, at))
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(error_file))


def test_the_rank_that_failed_of_its_own_accord_is_named(tmp_path: Path) -> None:
    now = time.time()
    # Rank 1 ran out of memory; rank 0 then lost contact with it, in the same second but earlier.
    own = {"message": "CUDA out of memory", LOST_PEER: False}
    lost = {"message": "lost contact with the other ranks (Connection reset by peer)", LOST_PEER: True}
    failures = {0: failure(tmp_path, 0, 1, lost, now), 1: failure(tmp_path, 1, 1, own, now + 0.2)}
    assert describe_failure(ChildFailedError("training", failures), 2) == (
        "rank 1 of 2 (pid 1001) exited with status 1: CUDA out of memory; every rank was stopped"
    )
    # Killed outright: no error file; the ranks the agent stopped (SIGTERM) or NCCL aborted
    # (SIGABRT) come after it, whenever they ended.
    failures = {
        0: failure(tmp_path, 0, -signal.SIGTERM, None, now),
        1: failure(tmp_path, 1, -signal.SIGKILL, None, now),
        2: failure(tmp_path, 2, -signal.SIGABRT, None, now),
    }
    assert describe_failure(ChildFailedError("training", failures), 3) == (
        "rank 1 of 3 (pid 1001) was killed by SIGKILL; every rank was stopped"
    )
    # Two failures of their own: the earlier, to the fraction of a second.
    first, second = {"message": "disk full", LOST_PEER: False}, {"message": "bad data", LOST_PEER: False}
    failures = {0: failure(tmp_path, 0, 1, second, now + 0.6), 1: failure(tmp_path, 1, 1, first, now + 0.3)}
    assert "rank 1 of 2 (pid 1001) exited with status 1: disk full" in describe_failure(
        ChildFailedError("training", failures), 2
    )


def test_only_a_vanished_peer_counts_as_lost_contact() -> None:
    gloo = "[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:1: Connection reset by peer"
    assert lost_contact(RuntimeError(gloo))
    assert lost_contact(RuntimeError("NCCL communicator was aborted on rank 0"))
    assert not lost_contact(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not lost_contact(ValueError("Connection reset by peer"))  # ours, not a collective's


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_ranks_on_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        check_devices(parse_args(["--nproc-per-node", "2", "--device", "cuda"]))


def test_one_named_gpu_cannot_hold_several_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="names one GPU"):
        rank_device("cuda:1", World(rank=1, local_rank=1, world_size=2, launched=True))


@pytest.mark.gpu
def test_more_ranks_than_gpus_is_refused_before_launching() -> None:
    gpus = torch.cuda.device_count()
    args = argparse.Namespace(**{**vars(parse_args([])), "nproc_per_node": gpus + 1, "device": "cuda"})
    with pytest.raises(LaunchError, match=f"needs {gpus + 1} GPUs"):
        check_devices(args)
    with pytest.raises(ValueError, match=f"local rank {gpus} has no GPU"):
        rank_device("cuda", World(rank=gpus, local_rank=gpus, world_size=gpus + 1, launched=True))
