"""The FastAPI service."""

__version__ = "0.1.0"  # as in pyproject.toml and the k8s image tag; a test keeps them equal
