#!/usr/bin/env bash
# Container smoke test, on a machine with a Docker engine and Compose v2:
# build the image, `docker compose up -d`, wait for health, predict a real MNIST digit (over /predict,
# and with tritonclient over the v2 protocol's HTTP and gRPC ports), run a quick
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
GRPC_PORT=${SMOKE_GRPC_PORT:-18001}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-mnistsmoke}
export MNIST_DATA_HOST_DIR MNIST_PUBLISH=$PORT MNIST_GRPC_PUBLISH=$GRPC_PORT MNIST_TRAINER_ARGS="--epochs 1 --limit-train 5000"
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
"$PY" - "$URL" "$MNIST_DATA_DIR" "$JOB_FILE" "127.0.0.1:$GRPC_PORT" <<'PYEOF'
import io, sys, time
import httpx
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image
from training.data import load_mnist

url, data, job_file, grpc_url = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
mnist = load_mnist(data, download=False)
png = io.BytesIO()
Image.fromarray(mnist.test_images[0].numpy()).save(png, "PNG")
label = int(mnist.test_labels[0])

ready = httpx.get(f"{url}/readyz", timeout=10)
assert ready.status_code == 200, ready.text
answer = httpx.post(f"{url}/predict", files={"file": ("digit.png", png.getvalue(), "image/png")}, timeout=30).json()
assert answer["digit"] == label, answer
print(f"predicted {answer['digit']} (label {label}), model {answer['model_version']}")

# The v2 protocol, as tritonclient calls it: 16 digits as UINT8 pixels over HTTP and over gRPC.
pixels = mnist.test_images[:16].numpy()
for client_module, where in ((triton_http, url.removeprefix("http://")), (triton_grpc, grpc_url)):
    tensor = client_module.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    with client_module.InferenceServerClient(where) as client:
        assert client.is_model_ready("mnist")
        digits = client.infer("mnist", [tensor], outputs=[client_module.InferRequestedOutput("digit")])
        digits = digits.as_numpy("digit").tolist()
    assert sum(d == int(l) for d, l in zip(digits, mnist.test_labels[:16])) >= 14, digits
    print(f"v2 over {client_module.__name__}: {digits}")

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
