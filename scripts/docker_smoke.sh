#!/usr/bin/env bash
# Container smoke test, on a machine with a Docker engine and Compose v2:
# build the image, `docker compose up -d`, wait for health, predict a real MNIST digit, run a quick
# training job that is worse than the first model (rejected, not served), activate it by hand and
# see /model change version, restart the api and find the job record and the model still there,
# then `docker compose down -v`. Exits non-zero on any failure and always cleans up.
#
#   MNIST_DATA_DIR=/path/to/mnist scripts/docker_smoke.sh
#
# TORCH_INDEX_URL picks where PyTorch comes from at build time (see Dockerfile); PYTHON is a Python
# with Pillow and httpx for the client side (default: the project's .venv); SMOKE_REMOVE_IMAGE=1
# also removes the image at the end (CI: it is several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MNIST_DATA_DIR:?set MNIST_DATA_DIR to the folder with the MNIST IDX files}"
PY=${PYTHON:-.venv/bin/python}
PORT=${SMOKE_PORT:-18000}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-mnistsmoke}
export MNIST_DATA_HOST_DIR MNIST_PUBLISH=$PORT MNIST_TRAINER_ARGS="--epochs 1 --limit-train 5000"
MNIST_DATA_HOST_DIR=$(mktemp -d)
cp "$MNIST_DATA_DIR"/*-ubyte* "$MNIST_DATA_HOST_DIR"/
chmod -R a+rX "$MNIST_DATA_HOST_DIR"
URL=http://127.0.0.1:$PORT
JOB_FILE=$(mktemp)

cleanup() {
  status=$?
  if [ $status -ne 0 ]; then
    echo "--- smoke test failed (exit $status); service logs:" >&2
    docker compose logs --no-color --tail 60 >&2 || true
  fi
  docker compose down -v --remove-orphans ${SMOKE_REMOVE_IMAGE:+--rmi all} >/dev/null 2>&1 || true
  rm -rf "$MNIST_DATA_HOST_DIR" "$JOB_FILE"
  exit $status
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "up: builds the image, the trainer trains a first model, then the api starts"
docker compose up -d --build --wait --wait-timeout 900
docker compose ps

step "checks over HTTP"
"$PY" - "$URL" "$MNIST_DATA_DIR" "$JOB_FILE" <<'PYEOF'
import io, sys, time
import httpx
from PIL import Image
from training.data import load_mnist

url, data, job_file = sys.argv[1], sys.argv[2], sys.argv[3]
mnist = load_mnist(data, download=False)
png = io.BytesIO()
Image.fromarray(mnist.test_images[0].numpy()).save(png, "PNG")
label = int(mnist.test_labels[0])

ready = httpx.get(f"{url}/readyz", timeout=10)
assert ready.status_code == 200, ready.text
answer = httpx.post(f"{url}/predict", files={"file": ("digit.png", png.getvalue(), "image/png")}, timeout=30).json()
assert answer["digit"] == label, answer
print(f"predicted {answer['digit']} (label {label}), model {answer['model_version']}")

before = httpx.get(f"{url}/model", timeout=10).json()["model_version"]
job = httpx.post(f"{url}/train", json={"epochs": 1, "limit_train": 2000, "seed": 7}, timeout=30)
assert job.status_code == 202, job.text
job_id = job.json()["id"]
deadline = time.monotonic() + 300
while True:
    state = httpx.get(f"{url}/train/{job_id}", timeout=10).json()
    if state["status"] not in ("queued", "running"):
        break
    assert time.monotonic() < deadline, state
    time.sleep(1)
# 2,000 images against the first model's 5,000: worse, so kept but not promoted.
assert state["status"] == "rejected", state
assert "points below the active model's" in state["error"], state
assert httpx.get(f"{url}/model", timeout=10).json()["model_version"] == before
new = state["model_version"]
activated = httpx.post(f"{url}/model/versions/{new}/activate", timeout=30)
assert activated.status_code == 200, activated.text
deadline = time.monotonic() + 15  # the other server processes follow within MNIST_MODEL_POLL_S
while (after := httpx.get(f"{url}/model", timeout=10).json()["model_version"]) != new:
    assert time.monotonic() < deadline, (before, after, state)
    time.sleep(0.2)
assert new != before, (before, state)
print(f"job {job_id} rejected ({state['error'].split(':')[0]}); activated by hand: model {before} -> {after}")
open(job_file, "w").write(job_id)
PYEOF

step "restart the api: the job record survives"
docker compose restart api
docker compose up -d --wait --wait-timeout 300 api
"$PY" - "$URL" "$(cat "$JOB_FILE")" <<'PYEOF'
import sys
import httpx
url, job_id = sys.argv[1], sys.argv[2]
job = httpx.get(f"{url}/train/{job_id}", timeout=10)
assert job.status_code == 200 and job.json()["status"] == "rejected", job.text
assert httpx.get(f"{url}/model", timeout=10).json()["model_version"] == job.json()["model_version"]
print(f"after restart: job {job_id} is still {job.json()['status']}, model {job.json()['model_version']} served")
PYEOF

step "down -v"
echo "docker smoke test passed"
