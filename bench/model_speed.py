"""The model alone: images per second of forward passes in a loop, the floor under any serving path.

Rows per batch size: the forward pass on inputs already on the device ("model"), the same as the
engine runs it (inputs staged in page-locked memory, copied, forward, answer copied back: "engine
path"), and on CUDA a CUDA graph replay of the forward ("graph"). Weights are channels-last, as
the engine serves them.

    python -m bench.model_speed [--device cuda] [--batches 1,64,256,1024] [--seconds 1] [--json F]
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from models.cnn import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def images_per_second(step: Callable[[], object], batch: int, device: torch.device, seconds: float) -> float:
    """Median over 5 timed slices of `seconds / 5` each, after a warm-up."""
    for _ in range(3):
        step()
    sync(device)
    rates = []
    for _ in range(5):
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 5:
            step()
            calls += 1
            if device.type == "cuda" and calls % 64 == 0:
                sync(device)  # keep the launch queue short, so the clock measures work done
        sync(device)
        rates.append(calls * batch / (time.perf_counter() - started))
    return statistics.median(rates)


def graphed(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Capture one forward pass on a static input into a CUDA graph; return its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        out = model(x)

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def measure_batch(
    model: torch.nn.Module, device: torch.device, batch: int, seconds: float
) -> list[dict[str, object]]:
    x = torch.randn(batch, 1, 28, 28, device=device)
    host = torch.randn(batch, 1, 28, 28)
    if device.type == "cuda":
        host = host.pin_memory()

    @torch.inference_mode()
    def forward() -> torch.Tensor:
        return model(x)  # type: ignore[no-any-return]

    @torch.inference_mode()
    def engine_path() -> torch.Tensor:
        return model(host.to(device, non_blocking=True)).float().cpu()  # type: ignore[no-any-return]

    paths: list[tuple[str, Callable[[], object]]] = [("model", forward)]
    if device.type == "cuda":
        paths.append(("engine path", engine_path))
        try:
            paths.append(("graph", graphed(model, x)))
        except RuntimeError as exc:  # report and go on: the other rows still count
            print(f"CUDA graph capture failed at batch {batch}: {exc}")
    rows: list[dict[str, object]] = []
    for name, step in paths:
        rate = images_per_second(step, batch, device, seconds)
        rows.append({"path": name, "batch": batch, "images_per_s": rate, "ms_per_batch": 1e3 * batch / rate})
    return rows


def measure(device: torch.device, batches: list[int], seconds: float, arch: str) -> list[dict[str, object]]:
    model = build_model(arch).to(device).eval().to(memory_format=torch.channels_last)
    return [row for batch in batches for row in measure_batch(model, device, batch, seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="1,64,256,1024")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per row")
    parser.add_argument("--arch", default="net")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the rows to this file as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    )
    rows = measure(device, [int(b) for b in args.batches.split(",")], args.seconds, args.arch)
    print(f"model alone: {args.arch}, {device} ({name}), torch {torch.__version__}, fp32, channels-last")
    print()
    print("| path | batch | images/s | ms per batch |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['path']} | {row['batch']} | {row['images_per_s']:,.0f} | {row['ms_per_batch']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "name": name, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
