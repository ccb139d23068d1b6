"""Programs the tests start (PostgreSQL, SeaweedFS, kubectl): where they are, and what a test does
without one: skipped, saying why, except in CI, which installs them (a silent skip there would
hide a broken setup)."""

import os
import shutil
import sys
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
