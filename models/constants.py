"""Numbers that training and serving must agree on."""

# The tutorial's Normalize((0.1307,), (0.3081,)): mean and std of the MNIST training pixels.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
IMAGE_SIZE = 28
NUM_CLASSES = 10
