"""Tensors against image files: images per second through POST /predict (one PNG per request, 64
clients) and through the v2 protocol's binary tensors (`pixels`, UINT8, 64 images per request, 8
clients), both against `python -m app` in the same run, beside the model-alone floor: forward
passes of 64 in a loop, in as many processes and threads as the server runs.

    MNIST_DATA_DIR=../shared/mnist python -m bench.v2_load [--duration 10] [--repeats 3] [--model F]

Needs wrk. Prints each round as it goes, then the medians and the ratios the goal is stated in:
v2 images/s >= 3x /predict's, and >= 70% of the floor.
"""

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from app.config import available_cores, default_workers
from app.predict.batching import for_serving
from bench import plots
from bench.model_speed import images_per_second
from bench.serve_load import Server, prepared, running, wrk
from models.checkpoint import load_checkpoint
from training.data import load_mnist

IMAGES_PER_REQUEST = 64
V2_LUA = """
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = os.getenv("WRK_HEADER_LENGTH")
"""


def v2_body(path: Path, images: int) -> int:
    """A binary v2 request for `images` real test digits; the length of its JSON part."""
    pixels = load_mnist().test_images[:images].numpy()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "UINT8",
                    "shape": [images, 28, 28],
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ],
            "outputs": [{"name": "digit", "parameters": {"binary_data": True}}],
        }
    ).encode()
    path.write_bytes(head + pixels.tobytes())
    return len(head)


def floor_worker(model: str, threads: int, seconds: float, rates: "multiprocessing.Queue[float]") -> None:
    torch.set_num_threads(threads)
    loaded = for_serving(load_checkpoint(Path(model)))
    x = torch.randn(IMAGES_PER_REQUEST, 1, 28, 28)

    @torch.inference_mode()
    def forward() -> torch.Tensor:
        return loaded.model(x)  # type: ignore[no-any-return]

    rates.put(images_per_second(forward, IMAGES_PER_REQUEST, torch.device("cpu"), seconds))


def model_floor(model: str, processes: int, threads: int, seconds: float) -> float:
    """Images/s of forward passes of 64 in `processes` processes at once, `threads` each."""
    context = multiprocessing.get_context("spawn")
    rates: multiprocessing.Queue[float] = context.Queue()
    workers = [
        context.Process(target=floor_worker, args=(model, threads, seconds, rates)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    total = sum(rates.get(timeout=seconds + 120) for _ in workers)
    for worker in workers:
        worker.join()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description="v2 binary tensors against /predict (not a test)")
    parser.add_argument("--model", help="checkpoint to serve (default: train a quick one)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians shown")
    parser.add_argument("--json", help="also write the results to this file as JSON")
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("artifacts/bench/v2_load.svg"),
        help="where to draw the images/s of each path (SVG)",
    )
    args = parser.parse_args()
    workers = int(os.environ.get("MNIST_WORKERS", default_workers()))
    threads = max(1, available_cores() // workers)  # what python -m app gives each process
    rows: dict[str, list[float]] = {"predict": [], "v2": [], "floor": []}
    errors = 0
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model, _, predict_client = prepared(tmp, args.model, "wrk")
        script, body = tmp / "v2.lua", tmp / "v2.bin"
        script.write_text(V2_LUA)
        os.environ["WRK_HEADER_LENGTH"] = str(v2_body(body, IMAGES_PER_REQUEST))
        env = {
            "MNIST_MODEL_PATH": str(model),
            "MNIST_DEVICE": "cpu",
            "MNIST_STATE_DIR": str(tmp / "state"),
            "MNIST_PORT": "8021",
            "MNIST_GRPC_PORT": "0",
            "MNIST_WORKERS": str(workers),
        }
        server = Server("python -m app", [sys.executable, "-m", "app"], env, 8021, "/readyz")
        for round_ in range(args.repeats):
            with running(server, predict_client):
                predict = predict_client(8021, 64, args.duration)
                v2 = wrk(8021, 8, args.duration, script, body, "/v2/models/mnist/infer")
            floor = model_floor(str(model), workers, threads, args.duration)
            errors += predict.errors + v2.errors
            rows["predict"].append(predict.rps)
            rows["v2"].append(v2.rps * IMAGES_PER_REQUEST)
            rows["floor"].append(floor)
            print(
                f"round {round_ + 1}: /predict {predict.rps:.0f} images/s, v2 {rows['v2'][-1]:.0f} images/s "
                f"({v2.rps:.0f} req/s, p50 {v2.p50_ms:.1f} ms), floor {floor:.0f} images/s",
                file=sys.stderr,
                flush=True,
            )
    median = {name: statistics.median(values) for name, values in rows.items()}
    print(
        f"\n{workers} server processes x {threads} torch threads, {args.duration} s per run, "
        f"medians of {args.repeats}"
    )
    print(f"{'path':<48}{'images/s':>10}")
    print(f"{'POST /predict (one PNG per request, c=64)':<48}{median['predict']:>10.0f}")
    print(f"{'v2 binary pixels (64 per request, c=8)':<48}{median['v2']:>10.0f}")
    print(f"{'model alone (forward of 64 in a loop)':<48}{median['floor']:>10.0f}")
    print(f"\nv2 / /predict: {median['v2'] / median['predict']:.2f}x (goal >= 3x)")
    print(f"v2 / model alone: {median['v2'] / median['floor']:.0%} (goal >= 70%)")
    print(f"errors (non-2xx or socket): {errors}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"workers": workers, "threads": threads, "runs": rows, "median": median})
        )
    paths = [
        ("/predict, PNG", median["predict"]),
        ("v2 pixels", median["v2"]),
        ("model alone", median["floor"]),
    ]
    panel = plots.bars("Images per second", "images/s", paths)
    print(f"plot: {plots.write(args.plot, [panel], plots.caption(plots.machine()))}")


if __name__ == "__main__":
    main()
