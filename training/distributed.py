"""One training run across several processes: where this process stands in it (torchrun's
environment), its device and process group, and its share of each epoch.

A process started by torchrun (or by `python -m training --nproc-per-node N`, which uses torchrun's
machinery) is one rank of `world_size` (even a world of one: `torchrun --nproc-per-node 1` is DDP
over one GPU); any other process trains exactly as it always did: no process group, no DDP
wrapper, every sample in the tutorial's order.
"""

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from models.device import resolve_device

# How long machines wait for each other to join, and a rank for the others at a step.
DEFAULT_RDZV_TIMEOUT_S = 300.0
# A rank waits at least this long for the others at a step (rank 0 evaluates meanwhile), however
# short the rendezvous timeout.
MIN_STEP_WAIT_S = 60.0
# Set by our launcher for its ranks: the pid that must outlive them (see die_with_parent).
LAUNCHER_PID = "MNIST_LAUNCHER_PID"
# Errors of a collective whose peer went away (gloo and NCCL raise plain RuntimeErrors).
LOST_CONTACT_SIGNS = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "transport/tcp",
    "NCCL communicator was aborted",
    "remote process exited",
)


@dataclass(frozen=True)
class World:
    """This process's place in the run. The default is a run of one process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    nnodes: int = 1
    launched: bool = False  # by torchrun: a DDP rank, however many there are

    @property
    def is_main(self) -> bool:
        """Rank 0 alone evaluates, reports and saves."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.launched

    def label(self) -> str:
        """`rank 1 of 2` in messages (empty for a run of one)."""
        return f"rank {self.rank} of {self.world_size}" if self.distributed else ""


ONE_PROCESS = World()
# In a rank's error file: it failed because another rank went away.
LOST_PEER = "lost_peer"


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def world_from_environment() -> World:
    """The world torchrun describes in this process's environment, or a world of one."""
    if not launched_by_torchrun():
        return World()
    env = os.environ
    world_size = int(env["WORLD_SIZE"])
    local_world = int(env.get("LOCAL_WORLD_SIZE", world_size))
    return World(
        rank=int(env["RANK"]),
        local_rank=int(env.get("LOCAL_RANK", 0)),
        world_size=world_size,
        nnodes=int(env.get("GROUP_WORLD_SIZE", max(1, world_size // local_world))),
        launched=True,
    )


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(requested: str, world: World) -> torch.device:
    """The device this rank trains on: `--device` as always for a run of one; with several ranks,
    CUDA device LOCAL_RANK (one GPU per rank) or the CPU."""
    device = resolve_device(requested)
    if not world.distributed or device.type == "cpu":
        return device
    if device.index is not None:
        raise ValueError(
            f"--device {requested} names one GPU, but each of several ranks takes its own: "
            "use --device cuda (rank N on this host uses GPU N)"
        )
    gpus = torch.cuda.device_count()
    if world.local_rank >= gpus:
        raise ValueError(
            f"local rank {world.local_rank} has no GPU: this host has {gpus}; "
            f"run at most {gpus} processes per node here, or train on the CPU (--device cpu)"
        )
    device = torch.device("cuda", world.local_rank)
    torch.cuda.set_device(device)  # before anything touches CUDA: no stray context on GPU 0
    return device


@contextlib.contextmanager
def process_group(world: World, device: torch.device, timeout_s: float) -> Iterator[str | None]:
    """Join the run's process group (NCCL on CUDA, gloo on CPU) for the duration; yields the
    backend, or None when not launched. `timeout_s` (at least MIN_STEP_WAIT_S) bounds every wait
    for another rank."""
    if not world.distributed:
        yield None
        return
    backend = backend_for(device)
    dist.init_process_group(
        backend,
        timeout=timedelta(seconds=max(timeout_s, MIN_STEP_WAIT_S)),
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield backend
    finally:
        dist.destroy_process_group()


def shard(order: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's share of an epoch's sample order, by `DistributedSampler`'s rule: pad the order
    with its own first entries to a multiple of the world size, then take every world_size-th entry
    from position `rank`. A world of one takes the whole order unchanged."""
    if world.world_size == 1:
        return order
    per_rank = -(-len(order) // world.world_size)
    padding = per_rank * world.world_size - len(order)
    if padding:
        order = torch.cat([order, order.repeat(-(-padding // len(order)))[:padding]])
    return order[world.rank :: world.world_size]


def die_with_parent() -> None:
    """A rank must not outlive its launcher: if that is killed outright (SIGKILL, no chance to
    stop its workers), Linux kills this process too. A launcher that died before this was asked
    (while the rank imported torch) is noticed by its pid, which our launcher hands down."""
    if sys.platform != "linux":
        return
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher and launcher.isdigit() and os.getppid() != int(launcher):
        os._exit(1)  # orphaned already: nobody is left to read anything we would say


def lost_contact(exc: BaseException) -> bool:
    """Whether a rank's error is another rank going away (its connection reset, its group aborted)
    rather than a failure of its own."""
    if isinstance(exc, dist.DistNetworkError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(sign in text for sign in LOST_CONTACT_SIGNS)


def report_to_launcher(message: str, lost_peer: bool = False) -> None:
    """Leave this rank's one-line reason where torchrun's agent looks for it (the error file it
    names), so the launcher can say which rank failed and why; `lost_peer` marks a rank that failed
    only because another one went away."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    with contextlib.suppress(OSError), open(path, "w") as file:
        json.dump({"message": message, "timestamp": int(time.time()), LOST_PEER: lost_peer}, file)


def loss_everywhere(loss: float, world: World, device: torch.device) -> float:
    """The sum of every rank's loss (just `loss` in one process): NaN on one rank is NaN on all, so
    that all ranks stop together when training diverges."""
    if not world.distributed:
        return loss
    shared = torch.tensor([loss], dtype=torch.float64, device=device)
    dist.all_reduce(shared)
    return float(shared.item())
