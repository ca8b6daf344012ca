#!/usr/bin/env bash
# Checks the library (layer, fused kernel, networks, backends) on another TensorFlow release, in
# a second environment: bash scripts/check_tf_version.sh [VERSION] [PYTEST ARGS...]
#
# VERSION is a release or a prefix (default 2.21: the latest 2.21.x on the index); arguments
# from the first one starting with "-" go to pytest. The
# environment .venv-tf<VERSION> (git-ignored; kept, so a second run reuses it) gets that
# TensorFlow and the lock's (requirements.txt) keras, numpy, jax, jaxlib and pytest, plus
# matplotlib (aa_keras.visualize) and absl-py (benchmarks.param_table, which
# tests/test_applications.py imports); no tf-models-official (it pins TensorFlow 2.20),
# tensorflow-datasets, keras-hub or ai-edge-litert. This package goes in with --no-deps, its fused
# kernel is compiled for that TensorFlow, and the tests that need none of those extras run. The
# lock stays what CI installs.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=2.21
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
  VERSION="$1"
  shift
fi
VENV=".venv-tf${VERSION}"
source scripts/second_env.sh

make_env "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "tensorflow==${VERSION}.*" \
  $(pinned keras numpy jax jaxlib pytest absl-py matplotlib setuptools wheel)
install_package "$VENV"
"$VENV/bin/python" -c "import tensorflow as tf, keras, numpy, jax; print('tensorflow', tf.__version__, \
'keras', keras.__version__, 'numpy', numpy.__version__, 'jax', jax.__version__)"
"$VENV/bin/python" -m aa_keras.ops

# The layer, the fused kernel (also compiled from an installed wheel), the networks,
# augment/resize/BatchNormalization and the JAX backend. Not run: the test files importing
# aa_keras.training, aa_keras.data or aa_keras.export (tf-models-official), ai_edge_litert
# (test_layer_tflite, test_empty_batch, the exporter's) or keras-hub (test_detection), the
# packaging test that imports the trainer and the TFLite export of the model fitted on JAX.
TESTS=(
  tests/test_layer.py
  tests/test_layer_reference.py
  tests/test_fused_attention.py
  tests/test_blocked_attention.py
  tests/test_block_edges.py
  tests/test_applications.py
  tests/test_feature_strides.py
  tests/test_augment_bias.py
  tests/test_batch_norm.py
  tests/test_backends.py
  tests/test_backends_models.py
  tests/test_packaging.py
)
"$VENV/bin/python" -m pytest -q "${TESTS[@]}" \
  --deselect tests/test_packaging.py::test_wheel_installs_the_trainer_and_exporter_under_aa_keras \
  --deselect tests/test_backends_models.py::test_aa_small_fitted_on_other_backends_exports_to_tflite_with_parity "$@"
