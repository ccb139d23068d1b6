"""The FastAPI service."""

__version__ = "0.1.0"  # pyproject.toml's version; a test keeps the two equal
