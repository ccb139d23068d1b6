#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU: the gpu-marked tests, then training speed and
# serving load on CUDA. Prints the figures the README quotes. Takes about 5 minutes.
#
#   MNIST_DATA_DIR=/path/to/mnist bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
: "${MNIST_DATA_DIR:?set MNIST_DATA_DIR to the folder with the MNIST IDX files}"
export MNIST_DATA_DIR PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print('torch', torch.__version__, torch.cuda.get_device_name())"
"$PY" -m pytest -m gpu -q -p no:cacheprovider
"$PY" -m bench.train_speed --device cuda --repeats 3
command -v wrk >/dev/null && "$PY" -m bench.serve_load --device cuda --servers ours,ours-1proc,naive --repeats 1 --duration 5 \
  || echo "wrk not installed: serving load skipped (apt-get install wrk)"
