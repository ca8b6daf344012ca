#!/usr/bin/env bash
# The layer's and the networks' backend tests under Keras's PyTorch backend, in a second
# environment: bash scripts/test_torch.sh [PYTEST ARGS...]
#
# The environment .venv-torch (git-ignored; kept, so a second run reuses it) gets torch, then the
# lock's (requirements.txt) tensorflow, keras, numpy, pytest, matplotlib, ai-edge-litert (the
# TFLite export of the model fitted under torch) and jax (so that
# benchmarks/backend_speed.py finds all three backends here), and this package with --no-deps
# (built with torch's setuptools: torch needs a newer one than the lock's). torch comes from the package index (PyPI's wheel pulls CUDA libraries: about
# 3 GB to download, 5.4 GB installed); TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# takes the CPU-only wheel from PyTorch's own index instead. TensorFlow is the reference side of
# tests/test_backends*.py (and `import aa_keras` needs it). The tests run for torch only
# (`-k torch`); JAX's run in the main environment.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-torch
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

pinned() {  # the lock's requirement line for each named package
  for name in "$@"; do
    grep -E "^${name}==" requirements.txt | cut -d' ' -f1
  done
}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  $(pinned tensorflow keras numpy pytest matplotlib ai-edge-litert jax jaxlib)
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
"$VENV/bin/python" -m pip check --disable-pip-version-check
"$VENV/bin/python" -c "import torch, keras; print('torch', torch.__version__, 'keras', keras.__version__)"
"$VENV/bin/python" -m pytest -q tests/test_backends.py tests/test_backends_models.py -k torch "$@"
