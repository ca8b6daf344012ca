#!/usr/bin/env bash
# The backend tests of the layer and the networks and the Keras harness under PyTorch, in a second
# environment: bash scripts/test_torch.sh [PYTEST ARGS...]
#
# The environment .venv-torch (git-ignored; kept, so a second run reuses it) gets torch 2.14.1
# (TORCH_VERSION for another) from the package index (PyPI's wheel pulls CUDA libraries: 3 GB to download, 5.3 GB installed;
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes the CPU-only wheel from PyTorch's
# own index instead), then the lock's (requirements.txt) tensorflow (the reference side of the
# tests; their torch subprocess runs with TensorFlow unimportable), keras, numpy, pytest,
# matplotlib, ai-edge-litert (the TFLite export of the model fitted under torch) and jax (so that
# benchmarks/backend_speed.py finds all three backends here), and this package with --no-deps
# (built with the setuptools torch brings: it needs a newer one than the lock's). The tests run
# for torch only (`-k torch`); JAX's run in the main environment.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-torch
source scripts/second_env.sh

make_env "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
  "torch==${TORCH_VERSION:-2.14.1}"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  $(pinned tensorflow keras numpy pytest matplotlib ai-edge-litert jax jaxlib)
install_package "$VENV"
"$VENV/bin/python" -c "import torch, keras; print('torch', torch.__version__, 'keras', keras.__version__)"
"$VENV/bin/python" -m pytest -q tests/test_backends.py tests/test_backends_models.py tests/test_keras_harness.py -k torch "$@"
