"""`augment()` on a model whose convolutions have non-zero biases: the conv branch of each
replacement takes the first `filters - dv` filters of the conv, kernel and bias, so its channels
compute what the conv's first channels computed."""

import keras
import numpy as np

from aa_keras.applications import augment
from aa_keras.layers import AttentionAugmentation2D


def _model_with_biases():
    keras.utils.set_random_seed(11)
    conv = dict(padding="same", bias_initializer=keras.initializers.RandomNormal(stddev=1.0))
    inputs = keras.Input((10, 10, 4))
    x = keras.layers.Conv2D(16, 3, activation="relu", name="first", **conv)(inputs)
    x = keras.layers.Conv2D(24, 3, strides=2, name="second", **conv)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, bias_initializer="ones", name="head")(x))


def test_augment_transfers_non_zero_conv_biases():
    base = _model_with_biases()
    assert all(np.abs(base.get_layer(n).bias.numpy()).min() > 0 for n in ("first", "second"))
    model = augment(base, select=["first", "second"], depth_k=8, depth_v=8, num_heads=2)
    for name in ("first", "second"):
        old, new = base.get_layer(name), model.get_layer(name)
        assert isinstance(new, AttentionAugmentation2D)
        keep = new.conv.filters
        assert keep == old.filters - 8
        np.testing.assert_array_equal(new.conv.kernel.numpy(), old.kernel.numpy()[..., :keep])
        np.testing.assert_array_equal(new.conv.bias.numpy(), old.bias.numpy()[:keep])
    np.testing.assert_array_equal(model.get_layer("head").bias.numpy(), base.get_layer("head").bias.numpy())
    # The first layer's conv channels are the old conv's first channels, biases included.
    x = np.random.default_rng(0).normal(size=(2, 10, 10, 4)).astype("float32")
    old_out = keras.Model(base.input, base.get_layer("first").output)(x).numpy()
    new_out = keras.Model(model.input, model.get_layer("first").output)(x).numpy()
    np.testing.assert_allclose(new_out[..., :8], old_out[..., :8], rtol=1e-5, atol=1e-5)
