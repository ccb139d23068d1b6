"""The served model's signature: what it takes and what it gives.

It takes one grey image of a fixed size, its levels normalised as in training; it gives the
log-probabilities of its classes. Preprocessing, the batching engine, the answers, the v2 tensor
specs, the API's schemas, the networks, training's normalisation, the checkpoint's metadata and the
model card all read this one description: a model of another size or with other classes is
described here, not in each of them (the networks' inner layers, sized for 28x28 inputs, would be
the one other place to change).
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageInput:
    """One image in: `channels` x `height` x `width` grey levels from 0 to `grey_levels - 1`, which
    the network sees scaled to [0, 1], then less `mean` and over `std` (torchvision's ToTensor and
    Normalize, as training applies them)."""

    height: int
    width: int
    channels: int
    grey_levels: int
    mean: float
    std: float

    @property
    def pixels(self) -> int:
        """Pixels in one image (of each channel)."""
        return self.height * self.width

    @property
    def values(self) -> int:
        """Numbers in one image's input: channels x height x width."""
        return self.channels * self.pixels

    @property
    def size(self) -> tuple[int, int]:
        """(height, width): an image's array shape."""
        return self.height, self.width

    @property
    def size_text(self) -> str:
        """Its size as people write it: `28x28`."""
        return f"{self.height}x{self.width}"

    @property
    def brightest(self) -> float:
        """The largest grey level, which scales to 1."""
        return float(self.grey_levels - 1)

    def shape(self, rows: int) -> tuple[int, int, int, int]:
        """The network's input for `rows` images: rows x channels x height x width."""
        return rows, self.channels, self.height, self.width

    def normalize(self, grey: torch.Tensor) -> torch.Tensor:
        """Grey levels (a floating tensor of any shape) as the network sees them, in place: a
        training set of 60,000 images is not copied. Returns `grey`."""
        return grey.div_(self.brightest).sub_(self.mean).div_(self.std)

    def levels(self, normalized: torch.Tensor) -> torch.Tensor:
        """The inverse of `normalize`: the network's input back as uint8 grey levels (rounded, so an
        image that came from grey levels comes back exactly)."""
        grey = (normalized.float() * self.std + self.mean) * self.brightest
        return grey.round_().clamp_(0, self.brightest).to(torch.uint8)

    def normalized(self, level: float) -> float:
        """One grey level as the network sees it: exactly what `normalize` makes of it (0, the dark
        background, becomes about -0.42)."""
        return float(self.normalize(torch.tensor(level, dtype=torch.float32)))

    def normalization(self) -> dict[str, float]:
        """`mean` and `std`, as the checkpoint's metadata records them."""
        return {"mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class ClassOutput:
    """Log-probabilities out, one per class, in the order of `labels` (what each class means)."""

    labels: tuple[str, ...]

    @property
    def classes(self) -> int:
        return len(self.labels)

    @property
    def labels_text(self) -> str:
        """The labels as people write a range of them: `0-9`."""
        return f"{self.labels[0]}-{self.labels[-1]}"


@dataclass(frozen=True)
class Signature:
    """What the served model takes and what it gives."""

    input: ImageInput
    output: ClassOutput


# MNIST: 28x28 light digits on a dark background; the tutorial's Normalize((0.1307,), (0.3081,)),
# the mean and std of the training set's pixels; the ten digits.
SIGNATURE = Signature(
    input=ImageInput(height=28, width=28, channels=1, grey_levels=256, mean=0.1307, std=0.3081),
    output=ClassOutput(labels=tuple("0123456789")),
)
