"""Test-session setup shared by every test file.

The host CPU is split into two logical devices, "/cpu:0" and "/cpu:1", at import time, so
that tests can run `tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])` without a GPU. This
must happen before any TensorFlow op runs (the runtime's devices are fixed once it starts),
which is why it is done here and not in a fixture. Code that does not name a device still
runs on "/cpu:0", exactly as without this file.
"""

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over "/cpu:0" and "/cpu:1" for the whole session.

    Every MirroredStrategy of a process starts its collective-op keys at the same values, so a
    second one reuses the keys of the first and its all-reduces fail with "Shape mismatch in the
    collective instance" (TensorFlow 2.20). Tests share this one instead of creating their own.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The embedded glyph_pairs dataset, generated once per session (before any worker process
    of a test starts, so that those only read it)."""
    path = tmp_path_factory.getbasetemp() / "tfds"
    tfds.builder("glyph_pairs", data_dir=str(path)).download_and_prepare()
    return str(path)
