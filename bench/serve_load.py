"""Serving load: real HTTP against our server, a naive FastAPI endpoint and LitServe.

For each server and concurrency it prints requests/s, p50 and p99 latency, errors and the mean
batch size, then the ratios the serving targets are stated in. Every server gets the same real
MNIST digit as a multipart PNG upload. The load comes from `wrk` (C, one thread) where it is
installed, else from `bench/loadgen.py` (Python, several processes); `--client` chooses.

    MNIST_DATA_DIR=../shared/mnist python -m bench.serve_load [--duration 10] [--repeats 3] [--json F]
        [--baseline DIR]   # also serve another checkout's code, side by side in the same rounds

LitServe is measured when it is installed (`pip install -e .[bench]`). Without --model it trains a
quick model into a temporary folder.
"""

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

import httpx
from PIL import Image

from bench import plots
from training.data import load_mnist
from training.loop import TrainConfig, run

BOUNDARY = "mnistservebenchboundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
LUA = f"""
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "{CONTENT_TYPE}"
"""


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    mean_batch: float | None


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    batch_metric: bool = False
    code: Path | None = None  # another checkout's code, served instead of this one (--baseline)


# (port, concurrency, seconds) -> one measurement of POST /predict
LoadClient = Callable[[int, int, int], Result]


def multipart_png(path: Path) -> None:
    digit = load_mnist().test_images[0].numpy()
    png = io.BytesIO()
    Image.fromarray(digit).save(png, "PNG")
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png.getvalue()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    path.write_bytes(body)


def wait_ready(server: Server, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {process.returncode}")
        try:
            if (
                httpx.get(
                    f"http://127.0.0.1:{server.port}{server.ready_path}", timeout=1, trust_env=False
                ).status_code
                == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} was not ready within {timeout_s} s")


def batch_totals(port: int) -> tuple[float, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    total = re.search(r"^mnist_batch_size_sum (\S+)", text, re.M)
    count = re.search(r"^mnist_batch_size_count (\S+)", text, re.M)
    return (float(total.group(1)) if total else 0.0), (float(count.group(1)) if count else 0.0)


def to_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(
    port: int, concurrency: int, duration: int, script: Path, body: Path, path: str = "/predict"
) -> Result:
    """One `wrk -t1` run POSTing `body` to `path`; its latency percentiles are over every request."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "WRK_BODY": str(body)},
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, socket.groups())) if socket else 0)
    return Result(rps, p50, p99, errors, None)


def make_client(kind: str, script: Path, body: Path) -> tuple[str, LoadClient]:
    """`wrk` if asked for (or, with 'auto', if installed), else the Python load generator."""
    if kind == "wrk" or (kind == "auto" and shutil.which("wrk")):
        return "wrk -t1", lambda port, concurrency, duration: wrk(port, concurrency, duration, script, body)

    def python_load(port: int, concurrency: int, duration: int) -> Result:
        # Its own process: the generator's workers then start without importing torch.
        command = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--body", str(body)]
        command += ["--content-type", CONTENT_TYPE, "-c", str(concurrency), "-d", str(duration)]
        out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)
        if out.returncode != 0:
            raise RuntimeError(f"bench.loadgen failed: {out.stderr[-2000:]}")
        r = json.loads(out.stdout)
        return Result(r["rps"], r["p50_ms"], r["p99_ms"], r["errors"], None)

    return "bench/loadgen.py", python_load


def prepared(tmp: Path, model: str | None, client_kind: str) -> tuple[Path, str, LoadClient]:
    """The checkpoint to serve (`model`, else a quick one trained into `tmp`) and a load client
    posting a real MNIST digit, with its name."""
    served = Path(model) if model else tmp / "mnist_cnn.pt"
    if not model:
        run(TrainConfig(recipe="tutorial", epochs=1, limit_train=5000, device="cpu", out=str(served)))
    script, body = tmp / "post.lua", tmp / "body.bin"
    script.write_text(LUA)
    multipart_png(body)
    client_name, client = make_client(client_kind, script, body)
    return served, client_name, client


@contextlib.contextmanager
def running(server: Server, client: LoadClient) -> Iterator[None]:
    """The server started in its own process group, ready; on exit the whole group is gone."""
    output = tempfile.TemporaryFile()  # noqa: SIM115 - a file, so a chatty server never blocks
    code = {"PYTHONPATH": str(server.code)} if server.code is not None else {}
    process = subprocess.Popen(
        server.command,
        env={**os.environ, **server.env, **code},
        cwd=server.code,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        started = time.monotonic()
        wait_ready(server, process)
        print(f"{server.name}: ready in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        client(server.port, 16, 2)  # warm-up
        yield
    except Exception:
        output.seek(0)
        print(
            f"{server.name} failed; the end of its output:\n{output.read()[-3000:].decode(errors='replace')}"
        )
        raise
    finally:
        output.close()
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        # Whatever the server left behind in its process group (LitServe's inference workers
        # outlive their parent) must not keep a core busy during the next measurement.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        time.sleep(1)


def measure(server: Server, levels: list[int], duration: int, client: LoadClient) -> dict[int, Result]:
    results = {}
    with running(server, client):
        for concurrency in levels:
            before = batch_totals(server.port) if server.batch_metric else (0.0, 0.0)
            result = client(server.port, concurrency, duration)
            print(f"  {concurrency} clients: {result.rps:.0f} req/s", file=sys.stderr, flush=True)
            if server.batch_metric:
                after = batch_totals(server.port)
                rows, batches = after[0] - before[0], after[1] - before[1]
                result.mean_batch = rows / batches if batches else None
            results[concurrency] = result
    return results


def measure_during_training(server: Server, duration: int, client: LoadClient) -> tuple[Result, Result]:
    """/predict at concurrency 16 on an idle server, then while a training job runs on it."""
    url = f"http://127.0.0.1:{server.port}"
    with running(server, client):
        idle = client(server.port, 16, duration)
        job = httpx.post(f"{url}/train", json={"epochs": 20}).json()  # outlasts the measurement
        deadline = time.monotonic() + 60
        while not httpx.get(f"{url}/train/{job['id']}").json()["progress"].get("fraction"):
            if time.monotonic() > deadline:
                raise RuntimeError("the training job did not start")
            time.sleep(0.2)
        during = client(server.port, 16, duration)
        state = httpx.get(f"{url}/train/{job['id']}").json()
        if state["status"] != "running":
            raise RuntimeError(f"the training job was not running throughout: {state['status']}")
        httpx.delete(f"{url}/train/{job['id']}", timeout=30)
    return idle, during


def litserve_installed() -> bool:
    try:
        import litserve  # noqa: F401
    except ImportError:
        return False
    return True


def median_result(runs: list[Result]) -> Result:
    batches = [r.mean_batch for r in runs if r.mean_batch is not None]
    return Result(
        statistics.median(r.rps for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        sum(r.errors for r in runs),
        statistics.median(batches) if batches else None,
    )


def plot(path: Path, table: dict[str, dict[int, Result]], client_name: str) -> Path:
    """Throughput and p99 against clients, a line per server, side by side."""
    rps = {name: [(c, r.rps) for c, r in by_c.items()] for name, by_c in table.items()}
    p99 = {name: [(c, r.p99_ms) for c, r in by_c.items()] for name, by_c in table.items()}
    log_x = min(c for by_c in table.values() for c in by_c) > 0
    return plots.write(
        path,
        [
            plots.lines("Throughput", "concurrent clients", "requests/s", rps, log_x=log_x),
            plots.lines("Latency, p99", "concurrent clients", "ms", p99, log_x=log_x, log_y=True),
        ],
        plots.caption(f"{plots.machine()}, {client_name}, POST /predict of one 28x28 PNG"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="HTTP load benchmark (not a test)")
    parser.add_argument("--model", help="checkpoint to serve (default: train a quick one)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all servers; medians shown")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--servers", default="ours,ours-1proc,naive,litserve")
    parser.add_argument("--device", default="cpu", help="MNIST_DEVICE for our servers but ours-cpu")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto", help="load generator")
    parser.add_argument("--no-training-row", action="store_true", help="skip the 'during training' row")
    parser.add_argument("--json", help="also write the table to this file as JSON")
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("artifacts/bench/serve_load.svg"),
        help="where to draw req/s and p99 against clients for each server (SVG)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of other code (git worktree add DIR REV) served as the 'baseline' server, "
        "beside 'ours' in the same rounds: a change measured against the code before it",
    )
    args = parser.parse_args()
    names = args.servers.split(",")
    if args.baseline is not None and "baseline" not in names:
        names.insert(names.index("ours") + 1 if "ours" in names else 0, "baseline")
    if "baseline" in names and args.baseline is None:
        parser.error("the baseline server needs --baseline DIR")

    # A SIGTERM (a stage timeout) says where it found us, then unwinds normally, so every server's
    # process group is stopped.
    def stop(signum: int, frame: FrameType | None) -> None:
        traceback.print_stack(frame)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    levels = [int(c) for c in args.concurrency.split(",")]
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model, client_name, client = prepared(tmp, args.model, args.client)
        env = {
            "MNIST_MODEL_PATH": str(model),
            "MNIST_DEVICE": args.device,
            "MNIST_STATE_DIR": str(tmp / "state"),
        }

        def ours(name: str, port: int, **settings: str) -> Server:
            """`python -m app` on `port`, with these MNIST_* settings on top of the shared ones."""
            server_env = {**env, "MNIST_PORT": str(port), **settings}
            return Server(name, [python, "-m", "app"], server_env, port, "/readyz", batch_metric=True)

        servers = {
            "ours": ours("ours (python -m app)", 8011),
            "baseline": Server(
                f"baseline: python -m app of {args.baseline}",
                [python, "-m", "app"],
                {**env, "MNIST_PORT": "8016"},
                8016,
                "/readyz",
                batch_metric=True,
                code=args.baseline.resolve() if args.baseline else None,
            ),
            "ours-cpu": ours("ours (python -m app) on the CPU", 8015, MNIST_DEVICE="cpu"),
            "ours-1proc": ours("ours, 1 process", 8012, MNIST_WORKERS="1"),
            "naive": Server(
                "naive FastAPI",
                [python, "-m", "uvicorn", "bench.naive_server:app", "--port", "8013", "--no-access-log"],
                env,
                8013,
                "/docs",
            ),
            "litserve": Server(
                "LitServe (batch 64, 5 ms)",
                [python, "-m", "bench.litserve_server", "--port", "8014"],
                env,
                8014,
                "/health",
            ),
        }
        training_rows: list[tuple[Result, Result]] = []
        chosen = [name for name in names if name != "litserve" or litserve_installed()]
        runs: dict[str, dict[int, list[Result]]] = {name: {c: [] for c in levels} for name in chosen}
        for _ in range(args.repeats):  # rounds, so drift in machine load hits every server alike
            for name in chosen:
                for concurrency, result in measure(servers[name], levels, args.duration, client).items():
                    runs[name][concurrency].append(result)
            if "ours" in chosen and not args.no_training_row:
                training_rows.append(measure_during_training(servers["ours"], args.duration, client))

    table = {name: {c: median_result(rs) for c, rs in by_c.items()} for name, by_c in runs.items()}
    print(f"{args.repeats} rounds x {args.duration} s per cell, medians; {client_name}; device {args.device}")
    print()
    print("| server | concurrency | req/s | p50 ms | p99 ms | errors | mean batch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, by_c in table.items():
        for concurrency, r in by_c.items():
            batch = f"{r.mean_batch:.1f}" if r.mean_batch is not None else "-"
            print(
                f"| {servers[name].name} | {concurrency} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
                f"| {r.errors} | {batch} |"
            )
    if training_rows:
        idle = median_result([i for i, _ in training_rows])
        during = median_result([d for _, d in training_rows])
        print()
        print("| ours (python -m app), concurrency 16 | req/s | p50 ms | p99 ms | errors |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for label, r in (("idle", idle), ("during training", during)):
            print(f"| {label} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |")
        print(f"\np99 during training / idle: {during.p99_ms / idle.p99_ms:.2f}x")
    if args.json:
        report = {
            "device": args.device,
            "client": client_name,
            "duration_s": args.duration,
            "repeats": args.repeats,
            "rows": [
                {"server": servers[name].name, "key": name, "concurrency": c, **asdict(r)}
                for name, by_c in table.items()
                for c, r in by_c.items()
            ],
        }
        Path(args.json).write_text(json.dumps(report, indent=2))
    plotted = plot(args.plot, {servers[name].name: by_c for name, by_c in table.items()}, client_name)
    print(f"\nplot: {plotted}")
    if "ours" in table:
        ours = table["ours"]
        top, low = max(levels), min(levels)
        for other in ("naive", "litserve", "ours-cpu"):
            if other in table:
                theirs = table[other]
                print(
                    f"vs {other}: throughput at c={top} {ours[top].rps / theirs[top].rps:.2f}x, "
                    f"p99 at c={top} {ours[top].p99_ms / theirs[top].p99_ms:.2f}x theirs, "
                    f"p50 at c={low} {ours[low].p50_ms - theirs[low].p50_ms:+.2f} ms"
                )


if __name__ == "__main__":
    main()
