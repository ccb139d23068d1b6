"""`python -m app`: the server as it should run in production (settings from MNIST_* variables)."""

import logging
import os
import shutil
import tempfile

import uvicorn

from app.config import LOG_FORMAT, Settings, available_cores


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    if settings.role == "trainer" and settings.workers != 1:
        # A trainer's port only answers probes and metrics: one process is plenty.
        os.environ["MNIST_WORKERS"] = "1"
        settings = Settings()
    # Server processes share the cores: give each its slice, so torch's threads don't fight.
    os.environ.setdefault("MNIST_TORCH_THREADS", str(max(1, available_cores() // settings.workers)))
    metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="mnist-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "app.main:app",
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            access_log=False,
            timeout_graceful_shutdown=30,
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
