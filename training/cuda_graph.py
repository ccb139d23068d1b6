"""One training step captured as a CUDA graph, for the tutorial's small batches on a GPU.

At batch 32 the GPU finishes each kernel of a step in microseconds; what an eager step costs is
Python and the launch of some forty kernels. A CUDA graph launches the whole step (gather the batch,
forward, loss, backward, SGD update) as one unit. The maths is the eager step's: the same kernels
on the same tensors, and the warm-up that capture needs is undone, so the run's weights follow the
same trajectory as without the graph.

Only for plain SGD at a fixed learning rate without augmentation: a schedule or random jitter
would be frozen into the graph.
"""

import torch
import torch.nn.functional as F
from torch import nn


class GraphedStep:
    """`step(index)` trains on the rows `index` of the training set, like one eager step."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        batch_size: int,
    ) -> None:
        self.x_train, self.y_train, self.model = x_train, y_train, model
        self.index = torch.zeros(batch_size, dtype=torch.long, device=x_train.device)
        if optimizer.state or any(group.get("dampening", 0) != 0 for group in optimizer.param_groups):
            raise RuntimeError("a CUDA graph step needs a fresh SGD optimizer without dampening")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        saved = {name: value.detach().clone() for name, value in model.state_dict().items()}
        try:
            # Capture needs the step's allocations (gradients, momentum buffers) made on a side
            # stream first.
            side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    optimizer.zero_grad(set_to_none=True)
                    self._step(optimizer)
            torch.cuda.current_stream().wait_stream(side)
            optimizer.zero_grad(set_to_none=True)  # the graph's backward assigns fresh gradients
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss = self._step(optimizer)
        finally:
            # Undo the warm-up: weights and buffers as they were (copied in place: the graph holds
            # their addresses), momentum as before a first step (a zero buffer gives exactly the
            # first eager update, momentum * 0 + grad).
            with torch.no_grad():
                for name, value in model.state_dict().items():
                    value.copy_(saved[name])
                for param in params:
                    buffer = optimizer.state.get(param, {}).get("momentum_buffer")
                    if buffer is not None:
                        buffer.zero_()

    def _step(self, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        loss = F.nll_loss(self.model(self.x_train[self.index]), self.y_train[self.index])
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        return loss.detach()

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        """Run the step on these rows (exactly batch_size of them); returns the loss, on the GPU."""
        self.index.copy_(index)
        self.graph.replay()
        return self.loss


def supports(device: torch.device, random_steps: bool, scheduled: bool, full_batches: int) -> bool:
    """Whether a run can use the graph: CUDA, no per-step randomness, no per-step learning rate, and
    at least one full batch to replay it on."""
    return device.type == "cuda" and not random_steps and not scheduled and full_batches > 0
