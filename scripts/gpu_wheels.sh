#!/usr/bin/env bash
# Downloads into .whl/ the CPython 3.12 manylinux x86-64 wheels listed in bench/gpu-wheels.txt: the
# runtime packages a GPU machine with its own PyTorch lacks. bench/gpu_check.sh installs them there.
# Prints the wheels and their total size; fails if the set would not fit the 64 MiB carry limit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
rm -rf .whl && mkdir -p .whl
grep -v '^\s*#' bench/gpu-wheels.txt | grep -v '^\s*$' | grep -v '# built here' >.whl/requirements.txt || true
# Pure-Python packages published only as source: built into (py3-none-any) wheels here.
grep '# built here' bench/gpu-wheels.txt | sed 's/\s*#.*//' >.whl/built.txt || true
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl -r .whl/requirements.txt 2> >(grep -v "^WARNING: Location" >&2)
if [ -s .whl/built.txt ]; then
  "$PY" -m pip wheel -q --no-deps -w .whl -r .whl/built.txt 2> >(grep -v "^WARNING: Location" >&2)
fi
wanted=$(cat .whl/requirements.txt .whl/built.txt | wc -l)
got=$(ls .whl/*.whl | wc -l)
[ "$got" -eq "$wanted" ] || { echo "expected $wanted wheels, got $got" >&2; exit 1; }
ls -1 .whl/*.whl | xargs -n1 basename
bytes=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "$got wheels, $((bytes / 1024)) KiB in .whl/"
[ "$bytes" -lt $((48 * 1024 * 1024)) ] || { echo "the wheels leave too little of the 64 MiB carry limit" >&2; exit 1; }
