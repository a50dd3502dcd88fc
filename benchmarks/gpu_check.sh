#!/usr/bin/env bash
# The GPU check: for a machine with a CUDA GPU, Python 3.12, PyTorch, transformers, peft and
# safetensors, and no network. Two steps:
#
#   bash benchmarks/gpu_check.sh prepare   # on a CPU machine that reaches PyPI: the rest of
#                                          # cycleqd's dependencies, and cycleqd, as wheels in .gpu-deps/
#   bash benchmarks/gpu_check.sh run       # on the GPU machine, in a copy of the repository that
#                                          # holds .gpu-deps/: at most 8 minutes
#
# `run` installs the wheels into a temporary folder (never the machine's own packages), runs the
# CUDA tests (tests/test_cuda.py: a child materialised on the GPU equals the CPU one, the bases
# placed on the GPU or streamed from host memory, a short demo run with device=cuda), then prints
# evaluation throughput and materialisation time at SmolLM2-135M's shape, GPU against CPU
# (benchmarks/gpu_check.py). GPU_PYTHON_VERSION sets the target's Python for `prepare` (3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DEPS=$REPO/.gpu-deps
PY=${PYTHON:-python3}
[ "${1:-}" = prepare ] && [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python

case "${1:-}" in
prepare)
  PYV=${GPU_PYTHON_VERSION:-3.12}
  rm -rf "$DEPS" && mkdir -p "$DEPS"
  # pure Python, built here: cycleqd itself (configs, task plugins and the demo's weights inside)
  # and hydra's parser runtime, which PyPI has only as a source archive
  $PY -m pip wheel -q --no-deps -w "$DEPS" . antlr4-python3-runtime==4.9.3
  # what the GPU machine's image lacks (its packages: numpy, pandas, scipy, scikit-learn, numba,
  # matplotlib, tqdm, pyyaml, pytest and the rest are there), at the versions this environment tests
  pins=$($PY -c "import importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in
    ('hydra-core', 'omegaconf', 'ribs', 'array-api-compat', 'numpy-groupies', 'moocore', 'cffi', 'pycparser', 'platformdirs')))")
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEPS" $pins
  du -sh "$DEPS"
  ;;
run)
  [ -d "$DEPS" ] || { echo "no $DEPS: run 'bash benchmarks/gpu_check.sh prepare' where PyPI is reachable, and copy it here"; exit 2; }
  start=$(date +%s)
  SITE=$(mktemp -d)
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$DEPS"/*.whl
  export PYTHONPATH=$SITE WANDB_MODE=disabled PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  $PY -c "import torch, transformers, cycleqd; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(), 'cycleqd from', cycleqd.__file__)"
  # Outside the repository, so the installed cycleqd (with cycleqd.conf and cycleqd.tasks) is the one imported.
  cd "$SITE"
  status=0
  timeout 300 $PY -m pytest -q -p no:cacheprovider --noconftest --import-mode=importlib --rootdir "$SITE" \
    "$REPO/tests/test_cuda.py" -rs || status=$?
  timeout 240 $PY "$REPO/benchmarks/gpu_check.py" || status=$?
  echo "gpu check: $(( $(date +%s) - start )) s, exit $status"
  exit $status
  ;;
*)
  echo "usage: bash benchmarks/gpu_check.sh prepare|run"; exit 2
  ;;
esac
