"""The getting-started page and the guides run as written: every console block's commands against
a real `python -m app` serving a real checkpoint, their printed output compared with the page."""

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.docs.console import PAGE_HTTP, examples, matches, run
from tests.server import REPO, ServerProcess, free_port, fresh_deployment

DOCS = REPO / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if examples(p.read_text()))


def test_the_pages_that_teach_have_examples_that_run() -> None:
    """Getting started and every guide but the page's (a browser, not a shell) show runnable blocks."""
    expected = {"getting-started.md", "guides/predicting.md", "guides/training.md", "guides/jobs.md"}
    expected |= {"guides/versions.md"}
    assert expected <= {str(p.relative_to(DOCS)) for p in PAGES}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_runs_as_written(page: Path, tmp_path: Path, trained_checkpoint: Path, mnist_dir: Path) -> None:
    shown = examples(page.read_text())
    work = tmp_path / "work"
    shutil.copytree(DOCS / "examples", work)
    # `python` is this environment's, as it is for a reader who ran `make install`.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = str(REPO)
    env["MNIST_DATA_DIR"] = str(mnist_dir)  # as a reader who set it up: no download
    if any(PAGE_HTTP in example.command for example in shown):
        grpc_port = free_port()
        settings = {**fresh_deployment(tmp_path, trained_checkpoint), "MNIST_GRPC_PORT": str(grpc_port)}
        with ServerProcess(settings, production=True, ready_path="/readyz") as server:
            outcomes = run(shown, work, env, f"127.0.0.1:{server.port}", f"127.0.0.1:{grpc_port}")
    else:
        outcomes = run(shown, work, env)
    wrong = []
    if len(outcomes) < len(shown):
        last = outcomes[-1].output if outcomes else ""
        wrong.append(
            f"the shell stopped after {len(outcomes)} of {len(shown)} commands; the last printed:\n{last}"
        )
    for outcome in outcomes:
        where = f"{page.relative_to(REPO)}:{outcome.example.line}: $ {outcome.example.command}"
        if outcome.status != 0:
            wrong.append(f"{where}\nexited {outcome.status}, printing:\n{outcome.output}")
        elif not matches(outcome.example.expected, outcome.output):
            wrong.append(
                f"{where}\nthe page shows:\n{outcome.example.expected}\nit printed:\n{outcome.output}"
            )
    assert not wrong, "\n\n".join(wrong)
