"""The reference pages are generated from the code, and nothing the docs name is stale: every
setting the server reads is on the settings page with its default and meaning, every `MNIST_*`
variable a page mentions is one the code or the compose files know, and a page asking for a
generated section that does not exist fails the build."""

import re
from pathlib import Path

import pytest
from pydantic_core import PydanticUndefined

from app.config import Settings
from scripts import mkdocs_hooks
from tests.server import REPO

VARIABLE = re.compile(r"MNIST_[A-Z0-9_]*[A-Z0-9]")
CODE = ("app", "training", "models")


def names_in(paths: list[Path]) -> set[str]:
    return {name for path in paths for name in VARIABLE.findall(path.read_text())}


def compose_variables() -> set[str]:
    """What the compose files take from the environment for themselves (ports, image tags...)."""
    text = "".join(path.read_text() for path in REPO.glob("docker-compose*.yml"))
    return set(re.findall(r"\$\{(MNIST_[A-Z0-9_]+)", text))


def settings_page() -> str:
    return mkdocs_hooks.expand((REPO / "docs" / "reference" / "settings.md").read_text())


def test_every_setting_is_on_its_page_with_its_default_and_meaning() -> None:
    page = settings_page()
    for name, field in Settings.model_fields.items():
        row = next(
            (line for line in page.splitlines() if line.startswith(f"| `MNIST_{name.upper()}` |")), None
        )
        assert row is not None, f"MNIST_{name.upper()} is not on the settings page"
        assert field.description and mkdocs_hooks.cell(field.description) in row
        if field.default not in (None, PydanticUndefined) and not isinstance(field.json_schema_extra, dict):
            assert f"`{field.default}`" in row


def test_every_variable_the_server_reads_is_on_the_settings_page() -> None:
    read = names_in([p for folder in CODE for p in (REPO / folder).rglob("*.py")])
    page = settings_page()
    missing = {name for name in read if f"`{name}`" not in page}
    assert not missing, f"read by the code but not on docs/reference/settings.md: {sorted(missing)}"


def test_no_page_names_a_variable_that_does_not_exist() -> None:
    known = {f"MNIST_{name.upper()}" for name in Settings.model_fields}
    known |= set(mkdocs_hooks.INTERNAL_VARIABLES) | compose_variables()
    pages = [*(REPO / "docs").rglob("*.md"), REPO / "README.md", REPO / ".env.example"]
    stale = names_in(pages) - known
    assert not stale, f"the docs name variables nothing reads: {sorted(stale)}"


def test_a_setting_without_a_description_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    field = Settings.model_fields["queue_size"]
    monkeypatch.setattr(field, "description", None)
    with pytest.raises(ValueError, match=r"Settings\.queue_size has no description"):
        mkdocs_hooks.settings()


def test_every_flag_of_the_training_cli_is_on_its_page() -> None:
    from training.__main__ import build_parser

    page = mkdocs_hooks.training_cli()
    flags = [a.option_strings[0] for a in build_parser()._actions if a.option_strings and a.dest != "help"]
    assert flags and all(f"`{flag}" in page for flag in flags)


def test_the_http_page_has_every_route_of_the_app() -> None:
    from app.main import create_app

    page = mkdocs_hooks.http_api()
    for path, operations in create_app(Settings()).openapi()["paths"].items():
        for method in operations:
            assert f"### `{method.upper()} {path}`" in page


def test_the_metrics_page_has_every_series_of_the_registry() -> None:
    from app.metrics import Metrics

    page = mkdocs_hooks.metrics()
    for family in Metrics().registry.collect():
        assert f"`{family.name}" in page


def test_an_unknown_or_malformed_generated_section_fails_the_build() -> None:
    with pytest.raises(ValueError, match="unknown generated section 'setings'"):
        mkdocs_hooks.expand("text\n<!-- generated: setings -->\n")
    for typo in ("<!-- generated: http_api -->", "<!--generated: settings-->", "  <!-- generated: metrics"):
        with pytest.raises(ValueError, match="alone on a line"):
            mkdocs_hooks.expand(f"text\n{typo}\n")


def test_the_reference_describes_the_defaults_whatever_the_shell_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trainer's environment (only the health routes) must not make `make docs` publish its API."""
    monkeypatch.setenv("MNIST_ROLE", "trainer")
    assert "### `POST /predict`" in mkdocs_hooks.http_api()


def test_the_readme_is_a_landing_page_that_starts_with_the_quick_start() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    first_section = readme.split("\n## ", 2)[1]
    assert first_section.startswith("Quick start\n")
    assert QUICK_START in first_section
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme):
        assert (REPO / target).exists(), f"the README links to {target}, which is not there"


# The two commands of the quick start, as they have always read.
QUICK_START = """```sh
make run     # creates .venv, installs, trains mnist_cnn.pt when there is none, serves on 127.0.0.1:8000
make test    # creates .venv, installs, runs ruff, mypy and the whole test suite (all but GPU tests)
```"""


def test_a_default_restated_in_prose_is_the_default() -> None:
    """Pages say "`MNIST_BODY_IDLE_S` (10 s)" where a reader needs it; such a figure must be the
    setting's default (an HTTP status in brackets, "(504)", is not one)."""
    units = {"": 1, "s": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
    said = re.compile(r"`(MNIST_[A-Z0-9_]+)` \(([0-9][0-9.,]*) ?(s|KiB|MiB|GiB)?(?=[),;])")
    defaults = {f"MNIST_{name.upper()}": field.default for name, field in Settings.model_fields.items()}
    checked, wrong = 0, []
    for page in [*(REPO / "docs").rglob("*.md"), REPO / "README.md"]:
        for name, number, unit in said.findall(page.read_text()):
            value = float(number.replace(",", "")) * units[unit or ""]
            if name not in defaults or (not unit and 400 <= value < 600 and "." not in number):
                continue
            checked += 1
            if value != defaults[name]:
                wrong.append(
                    f"{page.relative_to(REPO)}: {name} ({number} {unit}) but the default is {defaults[name]}"
                )
    assert checked >= 8 and not wrong, wrong
