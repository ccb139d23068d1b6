"""Network definitions, device choice and the checkpoint format shared by training and serving."""
