"""AttentionAugmentation2D through Keras's own layer-test harness (`run_layer_test`, which Keras's
layers are tested with): config round trip, build, eager and symbolic calls, a training step,
mixed precision, serialization, the counts of weights and seed generators; and a float64 layer
against the float64 NumPy reference (tests/reference.py).

Collected by tests/test_keras_harness.py on TensorFlow, and run there under the other backends in
a subprocess: `KERAS_BACKEND=jax python -m pytest --noconftest tests/keras_harness.py`.
"""

import os

if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    import without_tensorflow  # noqa: F401  (the other backends run without TensorFlow)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import reference  # noqa: E402
from keras.src import testing  # noqa: E402  (Keras's harness: not in Keras's public API)

from aa_keras.layers import AttentionAugmentation2D  # noqa: E402

INPUT_SHAPE = (2, 6, 5, 3)
SMALL = dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2)


class AttentionAugmentation2DHarness(testing.TestCase):
    def _check(self, output_shape, trainable_weights, seed_generators=0, **kwargs):
        self.run_layer_test(
            AttentionAugmentation2D,
            init_kwargs={**SMALL, **kwargs},
            input_shape=INPUT_SHAPE,
            expected_output_shape=output_shape,
            expected_num_trainable_weights=trainable_weights,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=seed_generators,
            expected_num_losses=0,
            supports_masking=False,
        )

    def test_relative(self):
        # conv, qkv and attn_out kernels and biases, and the two relative tables.
        self._check((2, 6, 5, 8), 8)

    def test_sine_strided(self):
        self._check((2, 3, 3, 8), 6, position_encoding="sine", strides=2)

    def test_fully_attentional_downsampled(self):
        self._check((2, 6, 5, 4), 6, filters=4, downsample_attention=True, activation="relu")

    def test_dropout(self):
        self._check((2, 6, 5, 8), 8, seed_generators=1, dropout=0.2, seed=3)

    def test_float64_matches_the_reference(self):
        # On JAX float64 needs JAX_ENABLE_X64=1 (set by test_keras_harness.py), else JAX computes in float32.
        layer = AttentionAugmentation2D(**SMALL, dtype="float64")
        x = np.random.default_rng(0).normal(size=INPUT_SHAPE)
        outputs = layer(x)
        self.assertEqual(keras.backend.standardize_dtype(outputs.dtype), "float64")  # torch.float64 on torch
        self.assertAllClose(outputs, reference.attention_augmentation(layer, x), atol=1e-10, rtol=0)
