"""/predict through nginx to three replicas, against one replica directly, in the same run.

Three `python -m app` processes (MNIST_ROLE=api, one worker each, sharing one machine's records)
and nginx in front of them with the upstream of deploy/nginx/mnist.conf (keep-alive, retry on
another replica). Each round measures "one replica, direct" and "nginx -> 3 replicas" at each
concurrency, alternating, so drift in machine load hits both alike; medians are shown.

    MNIST_DATA_DIR=../shared/mnist python -m bench.balanced_load [--duration 5] [--repeats 3]

Needs nginx (Debian: apt-get install nginx) and, for the load, wrk (else bench/loadgen.py).
"""

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.serve_load import LoadClient, Result, Server, median_result, plot, prepared, running

NGINX_CONF = """
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    upstream mnist_api {{
{servers}
        keepalive 64;
        keepalive_timeout 4s;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 17m;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_next_upstream error timeout http_502 http_503 non_idempotent;
        location / {{ proxy_pass http://mnist_api; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(folder: Path, port: int, upstream_ports: list[int]) -> Iterator[None]:
    """nginx on `port`, balancing over the replicas on `upstream_ports` (round robin)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=3 fail_timeout=5s;" for p in upstream_ports)
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(folder=folder, servers=servers, port=port))
    process = subprocess.Popen([binary, "-p", str(folder), "-c", str(conf), "-g", "daemon off;"])
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (
                    httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1, trust_env=False).status_code
                    == 200
                ):
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"nginx did not come up: {(folder / 'error.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description="load balancer benchmark (not a test)")
    parser.add_argument("--model", help="checkpoint to serve (default: train a quick one)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians shown")
    parser.add_argument("--concurrency", default="16,64,256")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto", help="load generator")
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("artifacts/bench/balanced_load.svg"),
        help="where to draw req/s and p99 against clients, direct and through nginx (SVG)",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model, client_name, client = prepared(tmp, args.model, args.client)
        ports = [8031, 8032, 8033]
        replicas = [
            Server(
                f"replica {n}",
                [sys.executable, "-m", "app"],
                {
                    "MNIST_MODEL_PATH": str(model),
                    "MNIST_STATE_DIR": str(tmp / "state"),
                    "MNIST_PORT": str(port),
                    "MNIST_WORKERS": "1",
                    "MNIST_ROLE": "api",
                    "MNIST_DEVICE": "cpu",
                },
                port,
                "/readyz",
            )
            for n, port in enumerate(ports, 1)
        ]
        balancer = 8030
        runs: dict[str, dict[int, list[Result]]] = {
            "direct": {c: [] for c in levels},
            "nginx": {c: [] for c in levels},
        }
        quiet: LoadClient = lambda port, concurrency, duration: Result(0, 0, 0, 0, None)  # noqa: E731
        with contextlib.ExitStack() as stack:
            for replica in replicas:  # no warm-up load of their own: the rounds warm them
                stack.enter_context(running(replica, quiet))
            (tmp / "nginx").mkdir()
            stack.enter_context(nginx(tmp / "nginx", balancer, ports))
            client(balancer, 16, 2)  # warm-up through nginx, reaching every replica
            for _ in range(args.repeats):
                for concurrency in levels:
                    runs["direct"][concurrency].append(client(ports[0], concurrency, args.duration))
                    runs["nginx"][concurrency].append(client(balancer, concurrency, args.duration))
                    print(
                        f"  {concurrency} clients: direct {runs['direct'][concurrency][-1].rps:.0f}, "
                        f"nginx {runs['nginx'][concurrency][-1].rps:.0f} req/s",
                        file=sys.stderr,
                        flush=True,
                    )
        print(f"\n{args.repeats} rounds x {args.duration} s per cell, medians; load from {client_name}\n")
        print("| path | clients | req/s | p50 ms | p99 ms | errors |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        labels = {"direct": "one replica, direct", "nginx": "nginx -> 3 replicas"}
        medians = {
            key: {c: median_result(rs) for c, rs in by_level.items()} for key, by_level in runs.items()
        }
        for key in ("direct", "nginx"):
            for c in levels:
                r = medians[key][c]
                print(f"| {labels[key]} | {c} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |")
        print()
        for c in levels:
            ratio = medians["nginx"][c].rps / medians["direct"][c].rps
            print(f"at {c} clients: nginx -> 3 replicas gives {ratio:.2f}x one replica's throughput")
        print(f"plot: {plot(args.plot, {labels[key]: by_c for key, by_c in medians.items()}, client_name)}")


if __name__ == "__main__":
    main()
