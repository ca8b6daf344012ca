"""Keras's layer-test harness (tests/keras_harness.py) on TensorFlow here, and on the other
backends in a subprocess each (TensorFlow unimportable there)."""

import importlib.util
import os
import subprocess
import sys

import pytest

from keras_harness import AttentionAugmentation2DHarness  # noqa: F401  (collected here, on TensorFlow)

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_keras_harness_passes_on_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed in this environment")
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        JAX_PLATFORMS="cpu",
        JAX_ENABLE_X64="1",  # float64 on JAX (keras's float32 layers stay float32)
        PYTHONPATH=os.pathsep.join([TESTS, os.path.dirname(TESTS)]),
    )
    command = [sys.executable, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider", "-c", os.devnull,
               "--rootdir", TESTS, os.path.join(TESTS, "keras_harness.py")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "5 passed" in done.stdout, done.stdout[-2000:]
