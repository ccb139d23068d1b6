"""The predict path stands apart from the records and the jobs: an outage there degrades training
and the version routes, never a prediction (docs: one machine and many), so no module under
app/predict imports them, not even through another module."""

from pathlib import Path

from tests.tools import python_json

REPO = Path(__file__).resolve().parents[2]
APART_FROM = ("app.records", "app.jobs")

# Imports each module named in turn and says, for each, what of APART_FROM it brought in.
IMPORT_EACH = """
import importlib, json, sys

apart = tuple(sys.argv[1].split(","))
brought = {}
for name in sys.argv[2:]:
    importlib.import_module(name)
    loaded = sorted(m for m in sys.modules if any(m == a or m.startswith(a + ".") for a in apart))
    brought[name] = [m for m in loaded if not any(m in earlier for earlier in brought.values())]
print(json.dumps(brought))
"""


def predict_path() -> list[str]:
    modules = sorted(f"app.predict.{path.stem}" for path in (REPO / "app" / "predict").glob("*.py"))
    return [name.removesuffix(".__init__") for name in modules]


def imported_by_each(modules: list[str]) -> dict[str, list[str]]:
    brought: dict[str, list[str]] = python_json(IMPORT_EACH, ",".join(APART_FROM), *modules)
    return brought


def test_the_predict_path_never_imports_the_records_or_the_jobs() -> None:
    """Each module of app/predict is imported in turn, then the service's assembly, which imports
    all of it: the check sees what that brought in through other modules, and the predict path
    brought in none of it."""
    modules = predict_path()
    core = {"app.predict", "app.predict.preprocess", "app.predict.batching", "app.predict.uploads"}
    assert core <= set(modules)
    brought = imported_by_each([*modules, "app.services"])
    offenders = {name: found for name in modules if (found := brought[name])}
    assert not offenders, f"the predict path imports the records or the jobs: {offenders}"
    for package in APART_FROM:  # the assembly's imports were seen, through the modules it imports
        assert any(name.startswith(package + ".") for name in brought["app.services"]), package
