"""Settings that name other systems: the database URL is checked at startup and never echoed whole."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.db import database_url


def test_the_database_password_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNIST_DATABASE_URL", raising=False)
    settings = Settings(database_url="postgresql://mnist:s3cret@db.internal:5432/mnist")
    shown = settings.public()["database_url"]
    assert "s3cret" not in str(shown) and "db.internal:5432/mnist" in str(shown)
    assert Settings().public()["database_url"] is None


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "not a url at all"])
def test_an_unsupported_database_is_refused_at_startup(url: str) -> None:
    with pytest.raises(ValidationError, match="database_url"):
        Settings(database_url=url)


def test_urls_as_users_write_them_reach_our_driver(tmp_path: Path) -> None:
    assert database_url(None, tmp_path) == f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    assert database_url("postgresql://u:p@h:5432/db", tmp_path) == "postgresql+psycopg://u:p@h:5432/db"
    assert database_url("postgres://u:p@h/db", tmp_path) == "postgresql+psycopg://u:p@h/db"
