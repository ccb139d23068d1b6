"""The FastAPI service."""

NAME = "mnist-serve"  # the API's title, and the server's name in the v2 protocol's metadata
__version__ = "0.1.0"  # as in pyproject.toml and the k8s image tag; a test keeps them equal
