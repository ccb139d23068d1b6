"""Settings that name other systems: the database URL is checked at startup and never echoed whole."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.records.database import database_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://mnist:s3cret@db.internal:5432/mnist", "postgresql://db.internal:5432/mnist"),
        # libpq takes the password (and the user) as query parameters too, and so does SQLAlchemy
        ("postgresql://mnist@db.internal/mnist?password=s3cret", "postgresql://db.internal/mnist"),
        ("postgresql://db.internal/mnist?user=mnist&password=s3cret", "postgresql://db.internal/mnist"),
        (
            "postgresql:///mnist?host=/run/postgresql&user=mnist&password=s3cret&sslpassword=s3cret",
            "postgresql:///run/postgresql/mnist",
        ),
        (
            "postgresql+psycopg://mnist:s3cret@[::1]:6432/mnist?sslmode=require&passfile=/s3cret/pgpass",
            "postgresql://::1:6432/mnist",
        ),
        ("postgres://mnist:s3cret@db.internal/mnist?host=db.other&port=7", "postgres://db.other:7/mnist"),
        ("sqlite:////var/lib/s3cret/jobs.sqlite3", "sqlite:///jobs.sqlite3"),
    ],
)
def test_the_database_is_shown_by_its_location_alone(
    url: str, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MNIST_DATABASE_URL", raising=False)
    public = Settings(database_url=url).public()
    assert public["database_url"] == shown
    assert "s3cret" not in repr(public) and "mnist@" not in repr(public)


def test_no_database_is_shown_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNIST_DATABASE_URL", raising=False)
    assert Settings().public()["database_url"] is None


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "not a url at all"])
def test_an_unsupported_database_is_refused_at_startup(url: str) -> None:
    with pytest.raises(ValidationError, match="database_url"):
        Settings(database_url=url)


def test_urls_as_users_write_them_reach_our_driver(tmp_path: Path) -> None:
    assert database_url(None, tmp_path) == f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    assert database_url("postgresql://u:p@h:5432/db", tmp_path) == "postgresql+psycopg://u:p@h:5432/db"
    assert database_url("postgres://u:p@h/db", tmp_path) == "postgresql+psycopg://u:p@h/db"
