#!/usr/bin/env bash
# Creates the virtual environment .venv (if missing), installs the pinned requirements and this
# package (editable) into it, checks them with `pip check`, and compiles the fused attention
# kernel. Safe to run again.
# Sourced by train.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
# Editable (PEP 660), with the environment's setuptools: training/ and export/ import as
# aa_keras.training and aa_keras.export (see setup.py).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
# The lock and the package's own ranges must agree (fails on a broken or conflicting requirement).
.venv/bin/python -m pip check --disable-pip-version-check
# The fused CPU attention kernel, compiled once per machine and cached (see README). Without a
# compiler the layer still works, on standard TensorFlow ops, so this only warns.
.venv/bin/python -m aa_keras.ops >/dev/null ||
  echo "warning: the fused attention kernel did not compile; attention will use TensorFlow ops" >&2
