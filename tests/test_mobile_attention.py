"""The export-time attention graph (`export.mobile_attention`): the rebuilt model computes the
original's function in float32, with each rearrangement alone and all together."""

import keras
import numpy as np
import pytest

from aa_keras.export import mobile_attention
from aa_keras.layers import AttentionAugmentation2D


def _model(position_encoding, strides, padding="same", filters=16, use_bias=True, size=8, downsample=False):
    """A random two-layer AA model: a stride-1 layer, then one with `strides`, `padding` and
    `downsample_attention=downsample`, 4 heads."""
    inputs = keras.Input((size, size, 3))
    x = AttentionAugmentation2D(
        filters, 3, depth_k=8, depth_v=8, num_heads=4, position_encoding=position_encoding, use_bias=use_bias,
        bias_initializer="random_normal", name="aa1",
    )(inputs)
    x = keras.layers.ReLU()(x)
    x = AttentionAugmentation2D(
        filters, 3, strides=strides, padding=padding, depth_k=12, depth_v=filters, num_heads=4,
        position_encoding=position_encoding, use_bias=use_bias, bias_initializer="random_normal",
        downsample_attention=downsample, name="aa2",
    )(x)
    outputs = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


STEP_SETS = [
    ("scale",), ("split",), ("pool",), ("depthwise_pool",), ("fold",), ("scale", "split", "depthwise_pool"),
    ("scale", "split", "pool", "fold"), mobile_attention.DEFAULT_STEPS,
]


@pytest.mark.parametrize("position_encoding", ["relative", "none"])
@pytest.mark.parametrize(
    "strides,padding,size,downsample",
    [(2, "same", 8, False), (2, "same", 7, False), (2, "valid", 8, False), (1, "same", 6, False),
     (2, "same", 12, True), (1, "same", 7, True), (1, "same", 8, True), (2, "valid", 9, True)],
)
def test_rebuilt_model_matches_the_original_in_float32(position_encoding, strides, padding, size, downsample):
    keras.utils.set_random_seed(0)
    model = _model(position_encoding, strides, padding, size=size, downsample=downsample)
    images = np.random.default_rng(1).random((2, size, size, 3), dtype=np.float32)
    reference = np.asarray(model(images, training=False))
    assert mobile_attention.rebuild(model, ()) is model
    for steps in STEP_SETS:
        rebuilt = mobile_attention.rebuild(model, steps)
        replaced = [layer for layer in rebuilt.layers if isinstance(layer, mobile_attention.MobileAttention2D)]
        assert len(replaced) == 2
        outputs = np.asarray(rebuilt(images, training=False))
        np.testing.assert_allclose(outputs, reference, atol=1e-4, rtol=0, err_msg=f"steps={steps}")


def test_pool_is_folded_only_where_no_window_is_padded():
    keras.utils.set_random_seed(0)
    folded = {
        (padding, size): mobile_attention.rebuild(_model("relative", 2, padding, size=size), ("pool",)).get_layer("aa2").pool_folded
        for padding, size in (("same", 8), ("same", 7), ("valid", 7))
    }
    assert folded == {("same", 8): True, ("same", 7): False, ("valid", 7): True}
    # With downsampling, a 'valid' 3x3 / stride-2 pool's overlapping windows are not folded.
    layer = mobile_attention.rebuild(_model("relative", 2, "valid", size=9, downsample=True), ("pool",)).get_layer("aa2")
    assert not layer.pool_folded
    layer = mobile_attention.rebuild(_model("relative", 2, "same", size=12, downsample=True), ("pool",)).get_layer("aa2")
    assert layer.pool_folded and layer.window == (6, 6) and layer.inverse_counts is not None


def test_layers_it_cannot_rebuild_are_kept():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = AttentionAugmentation2D(8, 3, depth_k=4, depth_v=4, num_heads=2, position_encoding="sine")(inputs)
    model = keras.Model(inputs, x)
    assert mobile_attention.rebuild(model) is model


def test_unknown_or_exclusive_steps_are_an_error():
    keras.utils.set_random_seed(0)
    with pytest.raises(ValueError, match="unknown \\['softmax'\\]"):
        mobile_attention.rebuild(_model("relative", 2), ("scale", "softmax"))
    with pytest.raises(ValueError, match="exclude each other"):
        mobile_attention.rebuild(_model("relative", 2), ("pool", "depthwise_pool"))
