"""The networks, all ending in log_softmax: the tutorial's `Net` (the classic CNN) and `LeNet5`, and
`DeepNet` (four 3x3 convolutions with batch norm), which the accurate recipe trains."""

import torch
import torch.nn.functional as F
from torch import nn

from models.signature import SIGNATURE


class Net(nn.Module):
    """conv 1->20 5x5, pool, conv 20->50 5x5, pool, fc 800->500, fc 500->classes, log_softmax.

    Parameter names match the tutorial's, so state_dicts load both ways.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(SIGNATURE.input.channels, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, SIGNATURE.output.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2, 2)
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        # In float32 even where training computes in bf16 (a no-op in float32).
        return F.log_softmax(x.float(), dim=1)


class LeNet5(nn.Module):
    """conv 1->6 5x5, pool, conv 6->16 5x5, pool, fc 256->120->84->classes, log_softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(SIGNATURE.input.channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, SIGNATURE.output.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return F.log_softmax(x.float(), dim=1)


def conv_bn(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()]


class DeepNet(nn.Module):
    """conv 1->32->32 3x3, pool, conv 32->64->64 3x3, pool (each conv with batch norm), fc 1024->256
    with batch norm and dropout, fc 256->classes, log_softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(SIGNATURE.input.channels, 32), *conv_bn(32, 32), nn.MaxPool2d(2),
            *conv_bn(32, 64), *conv_bn(64, 64), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 256, bias=False),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(256, SIGNATURE.output.classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(self.features(x)).float(), dim=1)


ARCHITECTURES: dict[str, type[nn.Module]] = {"net": Net, "lenet5": LeNet5, "deep": DeepNet}
# The networks with batch norm, which cannot train on a batch of one image.
BATCH_NORMED = frozenset({"deep"})


def build_model(arch: str) -> nn.Module:
    """A freshly initialised network of the named architecture ('net' or 'lenet5')."""
    try:
        return ARCHITECTURES[arch]()
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {arch!r} (known: {known})") from None
