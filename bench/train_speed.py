"""Training speed: the tutorial's pipeline against ours, same model, optimizer, seed and sample order.

The tutorial reads MNIST through torchvision `datasets.MNIST` + `ToTensor` + `Normalize` and a
`DataLoader` (batch 32); ours keeps the normalised set in one tensor on the device. Both draw the
same shuffled order from the same seed, so their models should agree in accuracy. Also splits the
tutorial's epoch into its data pipeline alone and model steps alone, to show where time goes.

Then `python -m training --nproc-per-node N` itself for each N of `--procs` (DDP: gloo on the CPU,
NCCL on GPUs), timed from its own events: images per second over the epoch's steps (start-up,
loading and evaluation left out), and the scaling efficiency against one process.

    MNIST_DATA_DIR=../shared/mnist python -m bench.train_speed [--epochs 1] [--repeats 3] [--device cpu]
        [--procs 1,2] [--no-pipelines] [--json F]
"""

import argparse
import gzip
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from bench import plots
from bench.gpu_report import epoch_bars
from models.cnn import Net
from models.device import resolve_device
from models.events import TrainingEvent
from models.signature import SIGNATURE
from training.cuda_graph import GraphedStep
from training.data import FILES, _find_file, load_mnist
from training.loop import TrainConfig, evaluate, to_model_input, train_epoch


def torchvision_root(source: Path, into: Path) -> Path:
    """torchvision expects uncompressed files in <root>/MNIST/raw."""
    raw = into / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem, _ in FILES.values():
        found = _find_file(source, stem)
        assert found is not None
        opener = gzip.open if found.suffix == ".gz" else open
        with opener(found, "rb") as src, open(raw / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return into


def tutorial_loader(root: Path, train: bool, batch_size: int, device: torch.device) -> DataLoader:
    normalize = transforms.Normalize((SIGNATURE.input.mean,), (SIGNATURE.input.std,))
    transform = transforms.Compose([transforms.ToTensor(), normalize])
    extra = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    dataset = datasets.MNIST(str(root), train=train, download=False, transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, **extra)


def tutorial_epochs(root: Path, epochs: int, device: torch.device) -> tuple[list[float], float]:
    """The tutorial's train() as written; returns seconds per epoch and final test accuracy."""
    torch.manual_seed(53113)
    train_loader = tutorial_loader(root, True, 32, device)
    test_loader = tutorial_loader(root, False, 1000, device)
    model = Net().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    times = []
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        model.train()
        for batch_idx, (data, target) in enumerate(train_loader):
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
            if batch_idx % 100 == 0:
                loss.item()
        sync(device)
        times.append(time.perf_counter() - start)
    model.eval()
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            output = model(data.to(device))
            correct += int((output.argmax(1) == target.to(device)).sum())
    return times, 100.0 * correct / len(test_loader.dataset)


def ours_epochs(epochs: int, device: torch.device, graph: bool = False) -> tuple[list[float], float, float]:
    """Our train_epoch (each step a CUDA graph replay with `graph`); returns seconds per epoch, test
    accuracy and the one-off setup time (loading the set, and capturing the graph)."""
    sync(device)
    setup_start = time.perf_counter()
    config = TrainConfig(recipe="tutorial", epochs=epochs, device=str(device))
    torch.manual_seed(config.seed)
    mnist = load_mnist()
    x_train, y_train = to_model_input(mnist.train_images, device), mnist.train_labels.long().to(device)
    x_test, y_test = to_model_input(mnist.test_images, device), mnist.test_labels.long().to(device)
    model = Net().to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    jitter = torch.Generator(device=device).manual_seed(config.seed)
    graphed = GraphedStep(model, optimizer, x_train, y_train, config.batch_size) if graph else None
    sync(device)
    setup = time.perf_counter() - setup_start
    times = []

    def ignore(event: TrainingEvent) -> None:
        pass

    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train_epoch(model, optimizer, None, x_train, y_train, config, epoch, jitter, ignore, graphed)
        sync(device)
        times.append(time.perf_counter() - start)
    _, correct = evaluate(model, x_test, y_test, 1000)
    return times, 100.0 * correct / len(x_test), setup


def tutorial_parts(root: Path, device: torch.device, batches: int) -> tuple[float, float]:
    """Seconds per batch of the tutorial's data pipeline alone, and of its model step alone."""
    loader = tutorial_loader(root, True, 32, device)
    start = time.perf_counter()
    for i, (data, _) in enumerate(loader):
        data.to(device)
        if i + 1 == batches:
            break
    data_only = (time.perf_counter() - start) / batches
    model = Net().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    x, y = torch.randn(32, 1, 28, 28, device=device), torch.randint(0, 10, (32,), device=device)
    for _ in range(20):  # warm-up
        optimizer.zero_grad()
        F.nll_loss(model(x), y).backward()
        optimizer.step()
    sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        optimizer.zero_grad()
        F.nll_loss(model(x), y).backward()
        optimizer.step()
    sync(device)
    return data_only, (time.perf_counter() - start) / batches


def launched_epoch(procs: int, device: torch.device, out: Path) -> dict[str, float]:
    """One epoch of the tutorial's recipe by `python -m training --nproc-per-node procs`: images per
    second between the first and the last step's progress events, and the test accuracy. Eager
    steps in every row (DDP steps cannot be CUDA graphs), so the rows compare like with like."""
    command = [sys.executable, "-m", "training", "--recipe", "tutorial", "--nproc-per-node", str(procs)]
    command += ["--device", device.type]
    command += ["--epochs", "1", "--log-interval", "1000000", "--events", "-", "--quiet", "--out", str(out)]
    command += ["--no-cuda-graph"]
    began = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    steps: list[tuple[float, dict[str, Any]]] = []
    accuracy, per_rank_batch = 0.0, 0
    for line in child.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # not an event: stdout is the events' own, but be lenient
        if event["event"] == "progress":
            steps.append((time.perf_counter(), event))
        elif event["event"] == "epoch":
            accuracy = event["test_accuracy"]
        elif event["event"] == "start":
            per_rank_batch = event["distributed"]["batch_size_per_rank"]
    if child.wait() != 0 or len(steps) < 2 or not per_rank_batch:
        raise RuntimeError(f"python -m training --nproc-per-node {procs} failed (exit {child.returncode})")
    (first_at, first), (last_at, last) = steps[0], steps[-1]
    images = (last["batch"] - first["batch"]) * per_rank_batch * procs
    return {
        "images_per_s": images / (last_at - first_at),
        "s_per_epoch": (last_at - first_at) * last["batches"] / (last["batch"] - first["batch"]),
        "wall_s": time.perf_counter() - began,
        "accuracy": accuracy,
    }


def processes_table(procs: list[int], device: torch.device, repeats: int) -> list[dict[str, Any]]:
    """Rows for 1..N processes, runs interleaved; medians, and scaling against the first row."""
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in procs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for n in procs:
                runs[n].append(launched_epoch(n, device, Path(tmp) / f"ddp{n}.pt"))
    rows = []
    for n in procs:
        rate = statistics.median(run["images_per_s"] for run in runs[n])
        rows.append(
            {
                "procs": n,
                "images_per_s": rate,
                "s_per_epoch": statistics.median(run["s_per_epoch"] for run in runs[n]),
                "wall_s": statistics.median(run["wall_s"] for run in runs[n]),
                "accuracy": runs[n][-1]["accuracy"],
                "runs": [round(run["images_per_s"]) for run in runs[n]],
            }
        )
    base = rows[0]["images_per_s"] / rows[0]["procs"]
    for row in rows:
        row["speedup"] = row["images_per_s"] / rows[0]["images_per_s"]
        row["efficiency"] = row["images_per_s"] / (base * row["procs"])
    print(
        f"python -m training --nproc-per-node N on {device.type} (tutorial recipe, batch 32 per rank), "
        f"{repeats} run(s) each, medians"
    )
    print()
    print(
        "| processes | images/s | s/epoch (steps) | whole run, s | speed-up | scaling efficiency "
        "| accuracy, 1 epoch |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['procs']} | {row['images_per_s']:.0f} | {row['s_per_epoch']:.2f} "
            f"| {row['wall_s']:.1f} | {row['speedup']:.2f}x | {100 * row['efficiency']:.0f}% "
            f"| {row['accuracy']:.2f}% |"
        )
    return rows


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each pipeline; medians are shown")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the figures to this file as JSON")
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("artifacts/bench/train_speed.svg"),
        help="where to draw the seconds per epoch of each pipeline and process count (SVG)",
    )
    parser.add_argument("--procs", default="1,2", help="process counts for the DDP rows ('' for none)")
    parser.add_argument(
        "--no-pipelines", action="store_true", help="only the DDP rows, not the tutorial-against-ours table"
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    procs = [int(n) for n in args.procs.split(",") if n]
    report: dict[str, Any] = {"device": str(device), "torch": torch.__version__}
    if not args.no_pipelines:
        report.update(pipelines(args, device))
    if procs:
        print()
        report["processes"] = processes_table(procs, device, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\nplot: {plot(args.plot, report, device)}")


def plot(path: Path, report: dict[str, Any], device: torch.device) -> Path:
    """Seconds per epoch: the tutorial's pipeline against ours, and one process against several."""
    panels = []
    if "tutorial_s_per_epoch" in report:
        panels.append(plots.bars("One epoch, batch 32", "seconds", epoch_bars(report)))
    if report.get("processes"):
        procs = [(f"{row['procs']} proc", row["s_per_epoch"]) for row in report["processes"]]
        panels.append(plots.bars("python -m training, one epoch's steps", "seconds", procs))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else plots.machine()
    return plots.write(path, panels, plots.caption(where))


def pipelines(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The tutorial's pipeline against ours in one process, printed; returns the figures."""
    source = load_mnist().source
    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_root(source, Path(tmp))
        tutorial, ours, setups, graphed, g_acc = [], [], [], [], 0.0
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            t_times, t_acc = tutorial_epochs(root, args.epochs, device)
            o_times, o_acc, setup = ours_epochs(args.epochs, device)
            tutorial.append(statistics.median(t_times))
            ours.append(statistics.median(o_times))
            setups.append(setup)
            if device.type == "cuda":
                try:
                    g_times, g_acc, _ = ours_epochs(args.epochs, device, graph=True)
                    graphed.append(statistics.median(g_times))
                except RuntimeError as exc:  # report it; the other rows still count
                    print(f"CUDA graph run failed: {exc}")
        data_only, step_only = tutorial_parts(root, device, batches=300)

    t_med, o_med = statistics.median(tutorial), statistics.median(ours)
    print(
        f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{args.epochs} epoch(s) per run, {args.repeats} runs, medians"
    )
    print()
    print(f"| pipeline | s/epoch (median) | all runs | test accuracy after {args.epochs} epoch(s) |")
    print("| --- | ---: | --- | ---: |")
    print(
        f"| tutorial (DataLoader) | {t_med:.2f} | {', '.join(f'{t:.2f}' for t in tutorial)} | {t_acc:.2f}% |"
    )
    print(f"| ours (tensor on device) | {o_med:.2f} | {', '.join(f'{t:.2f}' for t in ours)} | {o_acc:.2f}% |")
    g_med = statistics.median(graphed) if graphed else None
    if g_med is not None:
        runs = ", ".join(f"{t:.2f}" for t in graphed)
        print(f"| ours + CUDA graph | {g_med:.2f} | {runs} | {g_acc:.2f}% |")
    best = min(o_med, g_med or o_med)
    print()
    print(
        f"speed-up per epoch: {t_med / best:.2f}x  (ours also spends {statistics.median(setups):.2f} s "
        "once per run loading and normalising the whole set)"
    )
    print()
    print("where the tutorial's epoch goes (per batch of 32):")
    print(f"  data pipeline alone: {data_only * 1e3:.2f} ms   model step alone: {step_only * 1e3:.2f} ms")
    return {
        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "epochs": args.epochs,
        "repeats": args.repeats,
        "tutorial_s_per_epoch": t_med,
        "tutorial_runs": tutorial,
        "tutorial_accuracy": t_acc,
        "ours_s_per_epoch": o_med,
        "ours_runs": ours,
        "ours_accuracy": o_acc,
        "speedup": t_med / best,
        "extra_rows": (
            [{"pipeline": "ours + CUDA graph", "s_per_epoch": g_med, "accuracy": g_acc, "runs": graphed}]
            if g_med is not None
            else []
        ),
        "ours_setup_s": statistics.median(setups),
        "tutorial_data_ms_per_batch": data_only * 1e3,
        "tutorial_step_ms_per_batch": step_only * 1e3,
    }


if __name__ == "__main__":
    main()
