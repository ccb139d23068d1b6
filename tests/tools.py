"""Programs the tests start (PostgreSQL, SeaweedFS, kubectl, mount): where they are, and what a test
does without one: skipped, saying why, except in CI, which installs them (a silent skip there would
hide a broken setup). And a full disk in miniature, the processes a run left (and their memory, and
a server's workers), open files, sockets, and `polled`: the one way a test waits for something to
happen, to a deadline; and a script run in a Python process of its own."""

import asyncio
import inspect
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import pytest

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


def installed(name: str) -> str | None:
    """`name` on PATH, else beside this interpreter (pip puts scripts there; a venv's python may
    run without its bin folder on PATH)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def not_installed(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def small_disk(path: Path, size: str = "256k") -> Iterator[Path]:
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


def processes_with(marker: str) -> dict[int, dict[str, str]]:
    """Live processes whose command line contains `marker` (a job's or run's own output path, say),
    each with its environment where readable: how a test finds every rank of a run, and proves none
    is left."""
    found: dict[int, dict[str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited, not yet reaped by its parent
            raw = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        found[int(entry.name)] = env
    return found


def polled(
    fetch: Callable[[], T],
    done: Callable[[T], object] = bool,
    timeout_s: float = 10,
    every_s: float = 0.1,
    what: str = "",
) -> T:
    """What `fetch()` returns once `done` holds for it (by default, once it is truthy), fetched again
    every `every_s`; if `timeout_s` passes first, fails with `what` ("v2 not served": what did not
    happen) and the last answer (a response's body). The one way a test waits for something."""
    deadline = time.monotonic() + timeout_s
    while not done(answer := fetch()):
        assert time.monotonic() < deadline, shown(answer, timeout_s, what)
        time.sleep(every_s)
    return answer


async def polled_async(
    fetch: Callable[[], Awaitable[T] | T],
    done: Callable[[T], object] = bool,
    timeout_s: float = 10,
    every_s: float = 0.1,
    what: str = "",
) -> T:
    """`polled` for a test on the event loop: `fetch` may be a coroutine function (a request to an app
    served on this loop), and the waits let the loop run."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = fetch()
        if inspect.isawaitable(answer):
            answer = await answer
        if done(answer):
            return answer
        assert time.monotonic() < deadline, shown(answer, timeout_s, what)
        await asyncio.sleep(every_s)


def shown(answer: object, timeout_s: float, what: str) -> str:
    said = answer.text if isinstance(answer, httpx.Response) else answer
    return f"{what or 'not there'} within {timeout_s} s; last: {said}"


def gone(marker: str, timeout_s: float = 30, what: str = "") -> None:
    """Wait until every process with `marker` in its command line has ended; past `timeout_s`, fail
    naming the ones left."""
    polled(
        lambda: sorted(processes_with(marker)),
        lambda left: not left,
        timeout_s,
        what=what or f"processes of {marker} not ended",
    )


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def workers_of(pid: int) -> list[int]:
    """uvicorn's server processes under `pid` (spawned by multiprocessing; not its resource tracker)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                command = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in command:
                found.append(int(entry))
    return found


def enough_open_files(wanted: int) -> None:
    """Raise this process's soft limit on open files to `wanted` (as far as the hard limit allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def listening_sockets(port: int) -> int:
    """Sockets listening on `port`, from the kernel's tables (gRPC listens on IPv6 sockets, IPv4
    addresses mapped): one per process that binds it with SO_REUSEPORT."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            count += local.endswith(f":{port:04X}") and state == "0A"
    return count


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends on `sock` until it closes it (or resets it, or `sock`'s own
    timeout passes)."""
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except OSError:
        pass
    return answer


def python_json(script: str, *args: str) -> Any:
    """Run `script` in a Python process of its own, on this checkout, with `args` as its sys.argv[1:]
    (nothing imported before it, no state of this process): the JSON its last line prints."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])
