"""`AttentionAugmentation2D` against the naive NumPy reference in `tests/reference.py`."""

import numpy as np
import pytest

from aa_keras.layers import AttentionAugmentation2D
import reference

# (layer arguments, input shape the layer is built with, input shape it is called on).
CASES = {
    "square": (dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2), (6, 6), (6, 6)),
    "non_square": (dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2), (4, 7), (4, 7)),
    "rectangular_kernel": (dict(filters=6, kernel_size=(1, 3), depth_k=4, depth_v=2, num_heads=2), (5, 4), (5, 4)),
    "stride_2": (dict(filters=8, kernel_size=3, strides=2, depth_k=4, depth_v=4, num_heads=2), (7, 6), (7, 6)),
    "stride_2_1": (dict(filters=8, kernel_size=3, strides=(2, 1), depth_k=4, depth_v=4, num_heads=2), (5, 4), (5, 4)),
    "valid": (dict(filters=8, kernel_size=3, padding="valid", depth_k=4, depth_v=4, num_heads=2), (6, 7), (6, 7)),
    "valid_stride_2": (
        dict(filters=8, kernel_size=3, strides=2, padding="valid", depth_k=4, depth_v=4, num_heads=2),
        (7, 8),
        (7, 8),
    ),
    "dk_ne_dv": (dict(filters=10, kernel_size=3, depth_k=6, depth_v=4, num_heads=2), (5, 6), (5, 6)),
    "fractions": (dict(filters=20, kernel_size=1, depth_k=0.4, depth_v=0.2, num_heads=4), (4, 5), (4, 5)),
    "one_head": (dict(filters=6, kernel_size=3, depth_k=3, depth_v=2, num_heads=1), (4, 4), (4, 4)),
    "none": (dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, position_encoding="none"), (5, 6), (5, 6)),
    "sine": (dict(filters=8, kernel_size=3, depth_k=6, depth_v=4, num_heads=2, position_encoding="sine"), (5, 6), (5, 6)),
    "coordconv": (
        dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, position_encoding="coordconv"),
        (5, 6),
        (5, 6),
    ),
    "coordconv_one_row": (
        dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, position_encoding="coordconv"),
        (1, 5),
        (1, 5),
    ),
    "fully_attentional": (dict(filters=8, kernel_size=3, depth_k=4, depth_v=8, num_heads=2), (5, 6), (5, 6)),
    "smaller_than_built": (dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2), (7, 8), (4, 6)),
    "max_size": (
        dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, max_size=(7, 8)),
        (None, None),
        (5, 3),
    ),
    "max_size_stride_2": (
        dict(filters=8, kernel_size=3, strides=2, depth_k=4, depth_v=4, num_heads=2, max_size=(9, 8)),
        (None, None),
        (6, 5),
    ),
    "blocked": (dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, query_block_size=5), (6, 6), (6, 6)),
    "blocked_none": (
        dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, query_block_size=4, position_encoding="none"),
        (5, 3),
        (5, 3),
    ),
    "blocked_smaller_than_built": (
        dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, query_block_size=5, max_size=(6, 7)),
        (None, None),
        (4, 5),
    ),
    "downsample": (
        dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, downsample_attention=True),
        (7, 6),
        (7, 6),
    ),
    "downsample_stride_2": (
        dict(filters=8, kernel_size=3, strides=2, depth_k=4, depth_v=4, num_heads=2, downsample_attention=True),
        (9, 10),
        (9, 10),
    ),
    "downsample_smaller_than_built": (
        dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, downsample_attention=True, max_size=(9, 9)),
        (None, None),
        (6, 5),
    ),
    "relu_no_bias": (
        dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, activation="relu", use_bias=False),
        (5, 5),
        (5, 5),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_naive_reference(name):
    kwargs, built_size, call_size = CASES[name]
    channels, batch = 3, 2
    layer = AttentionAugmentation2D(bias_initializer="random_normal", **kwargs)
    layer.build((None, *built_size, channels))
    x = np.random.default_rng(0).normal(size=(batch, *call_size, channels)).astype("float32")

    got = layer(x).numpy()
    want = reference.attention_augmentation(layer, x)

    assert got.dtype == np.float32
    assert got.shape == want.shape == layer.compute_output_shape(x.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
