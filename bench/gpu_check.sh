#!/usr/bin/env bash
# GPU check: every figure the GPU report (docs/reports/gpu.md) quotes for an NVIDIA GPU, in one run
# of about 5 minutes (each stage is bounded; 11 minutes at worst).
#
# Made for a GPU machine that has Python, PyTorch and nothing of our web stack: the wheels that
# `make gpu-wheels` put in .whl/ are installed with `pip install --target` (no network, no editable
# install) and the repository goes on PYTHONPATH. MNIST comes from $MNIST_DATA_DIR, else ./data.
# Stages, each bounded by its own timeout; a stage that fails is reported and the next one runs:
#   env          GPU, driver, torch, and that the service imports
#   gpu-tests    the `gpu`-marked tests
#   model-speed  the model alone: images/s at batch 1, 64, 256, 1024
#   train-speed  one epoch of the tutorial's pipeline against ours, same seed
#   ddp          python -m training --nproc-per-node N: 1 GPU against all GPUs, images/s and scaling
#                efficiency (only where there are several; 1 against 2 processes in a CPU rehearsal)
#   serve        `python -m app` on CUDA under 1, 16, 64 and 256 clients (load from bench/loadgen.py)
# Writes gpu_check.json, gpu_check.txt (the tables), gpu_check.svg (drawn) and gpu_check.log to
# $OUT when it is set, else to artifacts/gpu_check/. GPU_CHECK_ALLOW_CPU=1 runs it on the CPU,
# skipping only what needs CUDA (that is `make gpu-rehearsal`).
#
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
RESULTS=${OUT:-$REPO/artifacts/gpu_check}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$RESULTS"
exec > >(tee "$RESULTS/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 MNIST_DATA_DIR=${MNIST_DATA_DIR:-$REPO/data}
STARTED=$SECONDS

if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=${GPU_CHECK_SITE:-$WORK/site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "installing the carried wheels failed"; exit 1; }
  export PYTHONPATH="$SITE:$REPO"
else
  export PYTHONPATH="$REPO"
fi

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$GPUS" -gt 0 ]; then
  DEVICE=cuda
elif [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ]; then
  DEVICE=cpu
  echo "rehearsal: no CUDA here, every stage runs on the CPU and CUDA-only parts are skipped"
else
  echo "no CUDA device visible to $PY (set GPU_CHECK_ALLOW_CPU=1 to rehearse on the CPU)"
  exit 1
fi

# stage NAME SECONDS COMMAND...: run it bounded, keep its output, record how it ended.
stage() {
  local name=$1 limit=$2 began=$SECONDS status
  shift 2
  echo
  echo "=== $name (at most ${limit} s)"
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
  status=${PIPESTATUS[0]}
  case $status in
    0) result=ok ;;
    124 | 137) result=timeout ;;
    *) result="failed ($status)" ;;
  esac
  printf '%s\t%s\t%s\n' "$name" "$result" "$((SECONDS - began))" >>"$WORK/stages.tsv"
  echo "=== $name: $result in $((SECONDS - began)) s"
}

stage env 30 bash -c '
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: none"
  "$0" -c "
import json, platform, sys, torch, fastapi, pydantic, uvicorn
import app.main  # the whole service imports with the carried wheels
cuda = torch.cuda.is_available()
info = {\"python\": platform.python_version(), \"torch\": torch.__version__, \"cuda\": torch.version.cuda,
        \"gpus\": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        \"cpus\": len(__import__(\"os\").sched_getaffinity(0)), \"fastapi\": fastapi.__version__,
        \"pydantic\": pydantic.__version__, \"uvicorn\": uvicorn.__version__}
print(json.dumps(info))
json.dump(info, open(sys.argv[1], \"w\"))
" "$1"' "$PY" "$WORK/env.json"

# Only the modules that hold gpu-marked tests: the browser tests need Playwright, which is not carried.
stage gpu-tests 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider -W ignore::pytest.PytestConfigWarning \
  tests/unit/test_training.py tests/unit/test_distributed.py tests/unit/test_training_ddp.py \
  tests/e2e/test_lifecycle.py

stage model-speed 45 "$PY" -m bench.model_speed --device "$DEVICE" --batches 1,64,256,1024 --seconds 1 \
  --json "$WORK/model_speed.json"

if [ "$DEVICE" = cuda ]; then TRAIN_REPEATS=2; else TRAIN_REPEATS=1; fi
stage train-speed 120 "$PY" -m bench.train_speed --device "$DEVICE" --epochs 1 --repeats "$TRAIN_REPEATS" \
  --procs "" --json "$WORK/train_speed.json"

# DDP (NCCL, one rank per GPU): each row is a whole `python -m training --nproc-per-node N` run.
if [ "$GPUS" -gt 1 ]; then
  stage ddp 150 "$PY" -m bench.train_speed --device cuda --no-pipelines --procs "1,$GPUS" --repeats 1 \
    --json "$WORK/ddp.json"
elif [ "$DEVICE" = cpu ]; then
  stage ddp 240 "$PY" -m bench.train_speed --device cpu --no-pipelines --procs 1,2 --repeats 1 \
    --json "$WORK/ddp.json"
else
  echo
  echo "=== ddp: skipped ($GPUS GPU visible; scaling needs several)"
  printf 'ddp\tskipped\t0\n' >>"$WORK/stages.tsv"
fi

# The served model is trained here first: a real checkpoint, one epoch of the tutorial's recipe.
if [ "$DEVICE" = cuda ]; then
  SERVERS=ours,ours-1proc,ours-cpu DURATION=5
else
  SERVERS=ours DURATION=2
fi
stage serve 150 bash -c '
  "$0" -m training --recipe tutorial --epochs 1 --device "$1" --out "$2/mnist_cnn.pt" >"$2/train.log" 2>&1 || { tail -5 "$2/train.log"; exit 1; }
  tail -1 "$2/train.log"
  "$0" -m bench.serve_load --client python --device "$1" --servers "$3" --concurrency 1,16,64,256 \
    --repeats 1 --duration "$4" --no-training-row --model "$2/mnist_cnn.pt" --json "$2/serve.json"
' "$PY" "$DEVICE" "$WORK" "$SERVERS" "$DURATION"

echo
"$PY" -m bench.gpu_report "$WORK" "$RESULTS" --seconds "$((SECONDS - STARTED))" || printf 'report\tfailed\t0\n' >>"$WORK/stages.tsv"
failed=$(cut -f2 "$WORK/stages.tsv" | grep -c -E '^(failed|timeout)')
# Non-zero when a stage failed, so a rehearsal or a CI-style caller sees it.
[ "$failed" -eq 0 ] || { echo "$failed stage(s) failed"; exit 1; }
