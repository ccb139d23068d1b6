"""Network definitions and the checkpoint format shared by training and serving."""

from models.cnn import ARCHITECTURES, LeNet5, Net, build_model
from models.constants import IMAGE_SIZE, MNIST_MEAN, MNIST_STD, NUM_CLASSES

__all__ = [
    "ARCHITECTURES",
    "IMAGE_SIZE",
    "MNIST_MEAN",
    "MNIST_STD",
    "NUM_CLASSES",
    "LeNet5",
    "Net",
    "build_model",
]
