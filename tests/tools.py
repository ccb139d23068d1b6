"""Programs the tests start (PostgreSQL, SeaweedFS, kubectl, mount): where they are, and what a test
does without one: skipped, saying why, except in CI, which installs them (a silent skip there would
hide a broken setup). And a full disk in miniature."""

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest


def installed(name: str) -> str | None:
    """`name` on PATH, else beside this interpreter (pip puts scripts there; a venv's python may
    run without its bin folder on PATH)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def not_installed(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def small_disk(path: Path, size: str = "64k") -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (a full disk in miniature); needs root."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=False)
    if mounted.returncode != 0:
        not_installed("mounting a small tmpfs needs root (mount -t tmpfs)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> None:
    """Write into `folder` until its disk is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
