"""What training and serving share: the networks, the checkpoint format, the hyperparameters it
records, the training events, and device choice."""
