"""MNIST data folders that tests make on purpose."""

from pathlib import Path

from training.data import FILES


def unreadable_mnist(folder: Path) -> Path:
    """A data folder whose four files are there but are not IDX files."""
    folder.mkdir()
    for stem, _ in FILES.values():
        (folder / stem).write_bytes(b"not an IDX file")
    return folder
