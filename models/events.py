"""What a training run reports, one JSON object per line: the contract between `python -m training
--events` and the job runner that reads it, typed on both sides.

A run sends `start`, then `progress` every log interval and `epoch` after each evaluation, then
`saved`; or `error` with a one-line message when it cannot go on (bad data, bad flags). A crash
sends nothing more: the runner then keeps the child's last stderr lines instead.
"""

from typing import Any, Literal, NotRequired, TypedDict


class StartEvent(TypedDict):
    event: Literal["start"]
    device: str
    cuda_graph: bool
    cuda_graph_error: NotRequired[str]  # why the steps run eagerly on a GPU
    train_samples: int
    test_samples: int
    batches_per_epoch: int  # per rank
    hyperparameters: dict[str, Any]
    # world_size, nnodes, backend (None for one process), batch_size_per_rank, global_batch_size,
    # effective_lr: what the ranks of one run share (recorded in the metadata too).
    distributed: dict[str, Any]


class ProgressEvent(TypedDict):
    event: Literal["progress"]
    epoch: int
    epochs: int
    batch: int
    batches: int
    samples: int
    total: int
    fraction: float
    loss: float


class EpochEvent(TypedDict):
    event: Literal["epoch"]
    epoch: int
    epochs: int
    test_loss: float
    correct: int
    test_samples: int
    test_accuracy: float


class SavedEvent(TypedDict):
    event: Literal["saved"]
    path: str
    version: str
    test_accuracy: float
    metadata: dict[str, Any]


class ErrorEvent(TypedDict):
    event: Literal["error"]
    message: str


TrainingEvent = StartEvent | ProgressEvent | EpochEvent | SavedEvent | ErrorEvent
