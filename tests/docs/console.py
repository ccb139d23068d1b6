"""The documentation's runnable examples: every ```console block of a page, its `$ ` commands and
the output printed under them, run in one shell per page (so a variable set by one command is there
for the next) and compared with the page. `...` in the printed output stands for any text, as in
doctest."""

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

BLOCK = re.compile(r"^```console\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# Any fence that says console, however written: each must be one BLOCK takes, or it would never run.
ANY_CONSOLE_FENCE = re.compile(r"^[ \t]*(```|~~~)[ \t]*\{?\.?console\b.*$", re.MULTILINE)
# The address the pages use, and the gRPC port beside it.
PAGE_HTTP, PAGE_GRPC = "localhost:8000", "localhost:8001"


@dataclass
class Example:
    """One command as the page shows it, with the output the page says it prints."""

    command: str
    expected: str
    line: int  # where the command starts on the page, for failure messages


def examples(markdown: str) -> list[Example]:
    """The commands of a page's console blocks, in order. A console block written any other way
    (indented, with a title, between tildes) is an error: it would silently never run."""
    odd = [m.group(0) for m in ANY_CONSOLE_FENCE.finditer(markdown) if m.group(0) != "```console"]
    if odd:
        raise ValueError(f"console blocks must open with a bare ```console at the start of a line: {odd}")
    found: list[Example] = []
    for block in BLOCK.finditer(markdown):
        first_line = markdown.count("\n", 0, block.start()) + 2
        command: list[str] = []
        output: list[str] = []
        start = 0
        for offset, line in enumerate(block.group(1).splitlines()):
            continued = bool(command) and command[-1].endswith("\\") and not output
            if line.startswith("$ ") or continued:
                if output or (command and not continued):
                    found.append(Example("\n".join(command), "\n".join(output), start))
                    command, output = [], []
                if not command:
                    start = first_line + offset
                command.append(line.removeprefix("$ "))
            else:
                output.append(line)
        if command:
            found.append(Example("\n".join(command), "\n".join(output), start))
    return found


def matches(expected: str, got: str) -> bool:
    """Whether the output is what the page shows, `...` standing for any text (also none)."""
    pieces = [re.escape(piece) for piece in normalised(expected).split("...")]
    return re.fullmatch(".*?".join(pieces), normalised(got), re.DOTALL) is not None


def normalised(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


@dataclass
class Outcome:
    example: Example
    output: str
    status: int


def run(
    page: list[Example],
    cwd: Path,
    env: dict[str, str],
    http: str = "",
    grpc: str = "",
    timeout_s: float = 300,
) -> list[Outcome]:
    """Run a page's commands in one bash, each with its output and exit status kept apart; the pages'
    addresses are replaced by the server's."""
    marker = "@@docs-example@@"
    # As a reader's shell runs them: no pipefail (`curl ... | grep -q` would fail when grep stops
    # reading first); the pages end their pipelines in a command that fails on empty input.
    script = []
    for i, example in enumerate(page):
        command = example.command
        if http:
            command = command.replace(PAGE_HTTP, http)
        if grpc:
            command = command.replace(PAGE_GRPC, grpc)
        script.append(f"printf '%s\\n' '{marker} {i}'\n{command}\nprintf '\\n%s\\n' \"{marker} status $?\"")
    try:
        printed = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,  # a command that waits for input fails instead of hanging
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
        ).stdout
    except subprocess.TimeoutExpired as expired:  # what ran so far, and the command that hung
        out = expired.stdout
        printed = (out.decode(errors="replace") if isinstance(out, bytes) else out or "") + (
            f"\n{marker} status 124\n"
        )
    outcomes = []
    parts = re.split(rf"^{marker} (\d+)\n", printed, flags=re.MULTILINE)
    for index, body in zip(parts[1::2], parts[2::2], strict=True):
        output, found, status = body.rpartition(f"\n{marker} status ")
        if not found:  # the shell ended inside this command (an `exit`, a fatal error)
            output, status = body, "-1"
        outcomes.append(Outcome(page[int(index)], output, int(status.strip())))
    return outcomes
