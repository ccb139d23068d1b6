"""`python -m training --nproc-per-node N [--nnodes M ...]`: start the ranks of one run with
torchrun's own machinery (torch.distributed.run: elastic agent, c10d rendezvous), each rank being
`python -m training` with the same flags, and turn a failure into one line naming the rank.

The agent watches its ranks: when one dies or fails, it stops the others and the launch fails; no
restarts (a rank's work cannot be resumed from nothing). Only rank 0 writes the checkpoint, at the
end, atomically: a failed run leaves none.
"""

import argparse
import contextlib
import json
import logging
import math
import os
import signal
from collections.abc import Callable

import torch
from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.elastic.rendezvous.api import RendezvousError, RendezvousTimeoutError

from models.device import resolve_device
from models.events import ErrorEvent
from training.distributed import DEFAULT_RDZV_TIMEOUT_S, LAUNCHER_PID, LOST_PEER

# Flags that shape the launch; the ranks get every other flag as given.
LAUNCH_FLAGS = ("--nproc-per-node", "--nnodes", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id")


class LaunchError(Exception):
    """The run could not start, or one of its ranks failed: the one-line reason."""


def add_launch_flags(parser: argparse.ArgumentParser, positive_int: Callable[[str], int]) -> None:
    group = parser.add_argument_group(
        "several processes (torchrun's flags; the checkpoint is identical whether this module "
        "launches the ranks or torchrun does)"
    )
    group.add_argument(
        "--nproc-per-node",
        type=positive_int,
        default=1,
        help="ranks on this machine: one per GPU on CUDA, or CPU processes (default: 1, no launch)",
    )
    group.add_argument("--nnodes", type=positive_int, default=1, help="machines in the run (default: 1)")
    group.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="where the machines meet (one of them; its c10d store listens there); needed with --nnodes > 1",
    )
    group.add_argument(
        "--rdzv-id", default="mnist-training", help="the run's name, the same on every machine"
    )
    group.add_argument("--rdzv-backend", default="c10d", help="rendezvous backend (default: c10d)")
    group.add_argument(
        "--rdzv-timeout",
        type=float,
        default=DEFAULT_RDZV_TIMEOUT_S,
        metavar="SECONDS",
        help="how long the machines wait for each other to join, and a rank for the others at each "
        f"step, before the run fails (default: {DEFAULT_RDZV_TIMEOUT_S:.0f})",
    )


def wants_launch(args: argparse.Namespace) -> bool:
    return bool(args.nproc_per_node > 1 or args.nnodes > 1 or args.rdzv_endpoint)


def rank_argv(argv: list[str]) -> list[str]:
    """The command line minus the launch flags: what each rank runs with."""
    kept: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in LAUNCH_FLAGS:
            skip = "=" not in token
            continue
        kept.append(token)
    return kept


def check_devices(args: argparse.Namespace) -> None:
    """Refuse at once what the ranks would fail on one by one."""
    device = resolve_device(args.device)
    if device.index is not None and args.nproc_per_node > 1:
        raise LaunchError(
            f"--device {args.device} names one GPU, but each rank takes its own: use --device cuda"
        )
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if args.nproc_per_node > gpus:
            raise LaunchError(
                f"--nproc-per-node {args.nproc_per_node} needs {args.nproc_per_node} GPUs (one per rank); "
                f"this machine has {gpus}"
            )
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise LaunchError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT, the same on every machine")


def torchrun_args(args: argparse.Namespace, ranks_argv: list[str]) -> list[str]:
    """torchrun's own command line for this launch."""
    launch = ["--nproc-per-node", str(args.nproc_per_node), "--nnodes", str(args.nnodes)]
    launch += ["--max-restarts", "0"]  # a rank's work cannot be resumed: a failed rank fails the run
    if args.nnodes == 1 and not args.rdzv_endpoint:
        launch.append("--standalone")  # a rendezvous on a free local port
    else:
        launch += [
            "--rdzv-backend",
            args.rdzv_backend,
            "--rdzv-endpoint",
            args.rdzv_endpoint,
            "--rdzv-id",
            args.rdzv_id,
            "--rdzv-conf",
            # join: machines that never come; read: an endpoint that never answers.
            f"join_timeout={math.ceil(args.rdzv_timeout)},read_timeout={math.ceil(args.rdzv_timeout)}",
        ]
    return [*launch, "--module", "training", *ranks_argv]


def threads_per_rank(nproc: int) -> str:
    """Share the cores this process may use among this machine's ranks, unless OMP_NUM_THREADS
    says otherwise."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, cores // nproc))


def consequence(failure: ProcessFailure) -> bool:
    """A rank that failed because another went away: it lost contact, the agent stopped it
    (SIGTERM), or NCCL's watchdog aborted it (SIGABRT) while it waited for a rank gone."""
    data = failure.error_file_data
    lost = isinstance(data, dict) and bool(data.get(LOST_PEER))
    return lost or failure.exitcode in (-signal.SIGTERM, -signal.SIGABRT)


def failed_at(failure: ProcessFailure) -> float:
    """When a rank failed: its error file's time (torch keeps whole seconds only), else when the
    agent noticed."""
    try:
        return os.path.getmtime(failure.error_file)
    except OSError:
        return float(failure.timestamp)


def describe_failure(error: ChildFailedError, world_size: int) -> str:
    """`rank 1 of 2 (pid 4242) was killed by SIGKILL; ...`: the rank that failed first of its own
    accord, and its own one-line reason where it left one (distributed.py `report_to_launcher`)."""
    rank, failure = min(error.failures.items(), key=lambda item: (consequence(item[1]), failed_at(item[1])))
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
    else:
        how = f"exited with status {failure.exitcode}"
    left_one = os.path.isfile(failure.error_file) and isinstance(failure.message, str)
    reason = failure.message if left_one else ""
    return (
        f"rank {rank} of {world_size} (pid {failure.pid}) {how}{': ' + reason if reason else ''}; "
        "every rank was stopped"
    )


def launch(args: argparse.Namespace, argv: list[str]) -> None:
    """Run the ranks to the end, or raise LaunchError saying which failed and why."""
    check_devices(args)
    os.environ["OMP_NUM_THREADS"] = threads_per_rank(args.nproc_per_node)
    os.environ[LAUNCHER_PID] = str(os.getpid())  # the ranks' parent: torchrun's agent runs here
    # torchrun's INFO and WARNING lines are for debugging it (each SIGTERM it sends, say); its
    # errors still show, before the one line below that says which rank failed. Its loggers set
    # their own levels, so each one is told.
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if args.events and args.events != "-":
        open(args.events, "w").close()  # this run's events only, the launcher's error included
    parsed = torchrun.parse_args(torchrun_args(args, rank_argv(argv)))  # type: ignore[no-untyped-call]
    try:
        torchrun.run(parsed)  # type: ignore[no-untyped-call]
    except ChildFailedError as exc:
        raise LaunchError(describe_failure(exc, args.nproc_per_node * args.nnodes)) from None
    except RendezvousTimeoutError:
        raise LaunchError(
            f"the rendezvous at {args.rdzv_endpoint} timed out after {args.rdzv_timeout:g} s: "
            f"fewer than {args.nnodes} machines joined (start the same command on each, or raise "
            "--rdzv-timeout)"
        ) from None
    except RendezvousError as exc:
        raise LaunchError(f"the rendezvous at {args.rdzv_endpoint} failed: {exc}") from None
    except SignalException as exc:
        raise LaunchError(f"stopped by {signal.Signals(exc.sigval).name}: every rank was stopped") from None
    except (OSError, RuntimeError) as exc:  # the store's port taken, an endpoint unreachable...
        raise LaunchError(
            f"the launch failed: {str(exc).strip().splitlines()[0] if str(exc) else exc!r}"
        ) from None


def report_launch_error(events_target: str | None, message: str) -> None:
    """The launcher's own error event, after every rank's: the one a program should read."""
    if not events_target:
        return
    line = json.dumps(ErrorEvent(event="error", message=message)) + "\n"
    if events_target == "-":
        print(line, end="", flush=True)
        return
    with contextlib.suppress(OSError), open(events_target, "a") as file:
        file.write(line)
