"""Gathers what bench/gpu_check.sh's stages wrote into one JSON file and one text table.

Each goal of the GPU check is printed beside its figure, and the figures are drawn beside the tables
(gpu_check.svg). Standard library only, so it runs whatever else failed.

    python -m bench.gpu_report WORK_DIR RESULTS_DIR [--seconds N]
"""

import argparse
import json
from pathlib import Path
from typing import Any

from bench import plots

# The benchmark report's figure for `python -m app` at 64 clients (2-core CPU, wrk, 2026-11-27).
CPU_RPS_AT_64 = 4666
TRAINING_GOAL = 10.0  # our epoch at least this many times faster than the tutorial's pipeline


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def serving_rows(serve: dict[str, Any] | None) -> dict[tuple[str, int], dict[str, Any]]:
    return {(row["key"], row["concurrency"]): row for row in (serve or {}).get("rows", [])}


def goals(train: Any, serve: Any, model: Any, ddp: Any) -> list[tuple[str, str, str]]:
    """(goal, figure, verdict) for each goal of the check."""
    out = []
    if ddp and len(ddp.get("processes", [])) > 1:
        widest = ddp["processes"][-1]
        out.append(
            (
                f"DDP scaling, 1 -> {widest['procs']} processes ({ddp['device']}) reported",
                f"{widest['speedup']:.2f}x, efficiency {100 * widest['efficiency']:.0f}%",
                "reported",
            )
        )
    if train:
        speedup = train["speedup"]
        verdict = "met" if speedup >= TRAINING_GOAL else "not met"
        best = min([train["ours_s_per_epoch"]] + [x["s_per_epoch"] for x in train.get("extra_rows", [])])
        figure = f"{speedup:.2f}x ({train['tutorial_s_per_epoch']:.2f} s -> {best:.2f} s)"
        out.append((f"training epoch >= {TRAINING_GOAL:g}x the tutorial's pipeline", figure, verdict))
    rows = serving_rows(serve)
    if ("ours", 64) in rows:
        rps = rows[("ours", 64)]["rps"]
        verdict = "met" if rps > CPU_RPS_AT_64 else "not met"
        out.append(
            (
                f"serving at 64 clients above the CPU figure ({CPU_RPS_AT_64} req/s)",
                f"{rps:.0f} req/s",
                verdict,
            )
        )
        if ("ours-cpu", 64) in rows:
            cpu = rows[("ours-cpu", 64)]["rps"]
            out.append(
                (
                    "... and above the same machine's CPU serving",
                    f"{rps:.0f} vs {cpu:.0f} req/s",
                    "met" if rps > cpu else "not met",
                )
            )
    if model:
        at_1024 = [r for r in model["rows"] if r["batch"] == 1024 and r["path"] == "model"]
        if at_1024:
            out.append(
                (
                    "model-alone images/s at batch 1024 reported",
                    f"{at_1024[0]['images_per_s']:,.0f} images/s",
                    "reported",
                )
            )
    return out


def epoch_bars(train: dict[str, Any]) -> list[tuple[str, float]]:
    """A train_speed report's seconds per epoch, by pipeline (here, beside the GPU report that reads
    the same JSON with the standard library only; train_speed draws them too)."""
    bars = [("tutorial", train["tutorial_s_per_epoch"]), ("ours", train["ours_s_per_epoch"])]
    return bars + [
        (x["pipeline"].removeprefix("ours + "), x["s_per_epoch"]) for x in train.get("extra_rows", [])
    ]


def plot(report: dict[str, Any], path: Path, caption: str) -> Path | None:
    """Training per epoch, the model alone against batch size, and serving against clients."""
    panels = []
    train, model, serve = report.get("train_speed"), report.get("model_speed"), report.get("serve")
    if train:
        panels.append(plots.bars("Training, one epoch", "seconds", epoch_bars(train)))
    if model:
        paths: dict[str, list[tuple[float, float]]] = {}
        for row in model["rows"]:
            paths.setdefault(row["path"], []).append((row["batch"], row["images_per_s"]))
        panels.append(plots.lines("The model alone", "batch", "images/s", paths, log_x=True, log_y=True))
    if serve:
        servers: dict[str, list[tuple[float, float]]] = {}
        for row in serve["rows"]:
            servers.setdefault(row["server"], []).append((row["concurrency"], row["rps"]))
        panels.append(
            plots.lines("Serving /predict", "concurrent clients", "requests/s", servers, log_x=True)
        )
    return plots.write(path, panels, caption) if panels else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("--seconds", type=int, default=0)
    args = parser.parse_args()
    stages = []
    if (args.work / "stages.tsv").exists():
        for line in (args.work / "stages.tsv").read_text().splitlines():
            name, result, seconds = line.split("\t")
            stages.append({"stage": name, "result": result, "seconds": int(seconds)})
    env = read_json(args.work / "env.json")
    model = read_json(args.work / "model_speed.json")
    train = read_json(args.work / "train_speed.json")
    serve = read_json(args.work / "serve.json")
    ddp = read_json(args.work / "ddp.json")
    checked = goals(train, serve, model, ddp)
    report = {
        "env": env,
        "stages": stages,
        "seconds": args.seconds,
        "model_speed": model,
        "train_speed": train,
        "serve": serve,
        "ddp": ddp,
        "goals": [{"goal": g, "figure": f, "verdict": v} for g, f, v in checked],
    }
    (args.results / "gpu_check.json").write_text(json.dumps(report, indent=2))

    lines = [f"GPU check: {json.dumps(env)}", f"whole run: {args.seconds} s", ""]
    lines += ["| stage | result | seconds |", "| --- | --- | ---: |"]
    lines += [f"| {s['stage']} | {s['result']} | {s['seconds']} |" for s in stages]
    if model:
        lines += ["", f"model alone ({model['device']}, {model['name']}), fp32, channels-last:", ""]
        lines += ["| path | batch | images/s | ms per batch |", "| --- | ---: | ---: | ---: |"]
        lines += [
            f"| {r['path']} | {r['batch']} | {r['images_per_s']:,.0f} | {r['ms_per_batch']:.3f} |"
            for r in model["rows"]
        ]
    if train:
        lines += [
            "",
            f"training, one epoch ({train['device']}, {train['name']}), medians of {train['repeats']}:",
            "",
        ]
        lines += ["| pipeline | s/epoch | test accuracy |", "| --- | ---: | ---: |"]
        pipelines = [
            ("tutorial (DataLoader)", train["tutorial_s_per_epoch"], train["tutorial_accuracy"]),
            ("ours (tensor on device)", train["ours_s_per_epoch"], train["ours_accuracy"]),
        ]
        pipelines += [(x["pipeline"], x["s_per_epoch"], x["accuracy"]) for x in train.get("extra_rows", [])]
        lines += [f"| {name} | {seconds:.2f} | {accuracy:.2f}% |" for name, seconds, accuracy in pipelines]
    if ddp and ddp.get("processes"):
        lines += [
            "",
            f"DDP training, python -m training --nproc-per-node N ({ddp['device']}), one epoch:",
            "",
        ]
        lines += [
            "| processes | images/s | s/epoch | speed-up | scaling efficiency | test accuracy |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['procs']} | {r['images_per_s']:,.0f} | {r['s_per_epoch']:.2f} | {r['speedup']:.2f}x "
            f"| {100 * r['efficiency']:.0f}% | {r['accuracy']:.2f}% |"
            for r in ddp["processes"]
        ]
    if serve:
        lines += ["", f"serving ({serve['client']}, {serve['duration_s']} s per cell):", ""]
        lines += [
            "| server | clients | req/s | p50 ms | p99 ms | errors | mean batch |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in serve["rows"]:
            batch = f"{r['mean_batch']:.1f}" if r["mean_batch"] is not None else "-"
            lines.append(
                f"| {r['server']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} "
                f"| {r['p99_ms']:.2f} | {r['errors']} | {batch} |"
            )
    lines += ["", "| goal | figure | verdict |", "| --- | --- | --- |"]
    lines += [f"| {g} | {f} | {v} |" for g, f, v in checked]
    text = "\n".join(lines) + "\n"
    (args.results / "gpu_check.txt").write_text(text)
    print(text)
    gpus = (env or {}).get("gpus") or ["no GPU"]
    caption = plots.caption(f"{gpus[0]}, {(env or {}).get('cpus')} CPUs")
    try:  # the tables above stand whatever a half-written stage does to the picture
        print(f"plot: {plot(report, args.results / 'gpu_check.svg', caption)}")
    except (KeyError, TypeError, ValueError) as exc:
        print(f"plot: not drawn ({exc!r})")


if __name__ == "__main__":
    main()
