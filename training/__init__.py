"""Training the digit networks: MNIST loading, the training loop and the `python -m training` CLI."""
