"""`AttentionAugmentation2D` against the naive NumPy reference in `tests/reference.py`."""

import numpy as np
import pytest
import tensorflow as tf

from aa_keras.layers import AttentionAugmentation2D
import reference

# (layer arguments, input shape the layer is built with, input shape it is called on).
CASES = {
    "square": (dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2), (6, 6), (6, 6)),
    "non_square": (dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2), (4, 7), (4, 7)),
    "rectangular_kernel": (
        dict(filters=6, kernel_size=(1, 3), depth_k=4, depth_v=2, num_heads=2),
        (5, 4),
        (5, 4),
    ),
    "stride_2": (
        dict(filters=8, kernel_size=3, strides=2, depth_k=4, depth_v=4, num_heads=2),
        (7, 6),
        (7, 6),
    ),
    "stride_2_1": (
        dict(filters=8, kernel_size=3, strides=(2, 1), depth_k=4, depth_v=4, num_heads=2),
        (5, 4),
        (5, 4),
    ),
    "valid": (
        dict(filters=8, kernel_size=3, padding="valid", depth_k=4, depth_v=4, num_heads=2),
        (6, 7),
        (6, 7),
    ),
    "valid_stride_2": (
        dict(filters=8, kernel_size=3, strides=2, padding="valid", depth_k=4, depth_v=4, num_heads=2),
        (7, 8),
        (7, 8),
    ),
    "dk_ne_dv": (dict(filters=10, kernel_size=3, depth_k=6, depth_v=4, num_heads=2), (5, 6), (5, 6)),
    "fractions": (dict(filters=20, kernel_size=1, depth_k=0.4, depth_v=0.2, num_heads=4), (4, 5), (4, 5)),
    "one_head": (dict(filters=6, kernel_size=3, depth_k=3, depth_v=2, num_heads=1), (4, 4), (4, 4)),
    "none": (
        dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, position_encoding="none"),
        (5, 6),
        (5, 6),
    ),
    "sine": (
        dict(filters=8, kernel_size=3, depth_k=6, depth_v=4, num_heads=2, position_encoding="sine"),
        (5, 6),
        (5, 6),
    ),
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
    "blocked": (
        dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, query_block_size=5),
        (6, 6),
        (6, 6),
    ),
    "blocked_none": (
        dict(
            filters=8,
            kernel_size=3,
            depth_k=4,
            depth_v=4,
            num_heads=2,
            query_block_size=4,
            position_encoding="none",
        ),
        (5, 3),
        (5, 3),
    ),
    "blocked_smaller_than_built": (
        dict(
            filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, query_block_size=5, max_size=(6, 7)
        ),
        (None, None),
        (4, 5),
    ),
    "downsample": (
        dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2, downsample_attention=True),
        (7, 6),
        (7, 6),
    ),
    "downsample_stride_2": (
        dict(
            filters=8, kernel_size=3, strides=2, depth_k=4, depth_v=4, num_heads=2, downsample_attention=True
        ),
        (9, 10),
        (9, 10),
    ),
    "downsample_smaller_than_built": (
        dict(
            filters=8,
            kernel_size=3,
            depth_k=4,
            depth_v=4,
            num_heads=2,
            downsample_attention=True,
            max_size=(9, 9),
        ),
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


def _central_difference(loss, variable, index, step=1e-3):
    """d loss() / d variable[index], by central differences of a float64 `loss`.

    The difference is divided by the change actually stored in the float32 variable, so the
    rounding of the perturbed entry does not enter the estimate.
    """
    original = variable.numpy()
    values = []
    for sign in (1, -1):
        perturbed = original.copy()
        perturbed[index] += sign * step
        variable.assign(perturbed)
        values.append((loss(), np.float64(perturbed[index])))
    variable.assign(original)
    (plus, w_plus), (minus, w_minus) = values
    return (plus - minus) / (w_plus - w_minus)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(query_block_size=3),
        dict(position_encoding="none", depth_v=8),
        dict(strides=2, downsample_attention=True, position_encoding="sine"),
    ],
    ids=["relative", "blocked", "none_fully_attentional", "stride_2_downsampled_sine"],
)
def test_gradients_match_reference_finite_differences(kwargs):
    """The layer's gradients (the attention's is hand-written) against numerical derivatives
    of the float64 reference, for the input and every weight."""
    layer = AttentionAugmentation2D(
        **{**dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2), **kwargs},
        bias_initializer="random_normal",
    )
    layer.build((None, 4, 5, 3))
    rng = np.random.default_rng(0)
    x = tf.Variable(rng.normal(size=(1, 4, 5, 3)).astype("float32"))
    target = rng.normal(size=layer.compute_output_shape(x.shape))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * tf.constant(target, tf.float32))
    variables = [x, *layer.trainable_weights]
    grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]

    def reference_loss():
        return np.sum(reference.attention_augmentation(layer, x.numpy()) * target)

    for variable, grad in zip(variables, grads):
        # The two entries with the largest gradient and one at random.
        flat = [*np.argsort(-np.abs(grad), axis=None)[:2], rng.integers(grad.size)]
        for index in (np.unravel_index(i, grad.shape) for i in flat):
            want = _central_difference(reference_loss, variable, index)
            name = getattr(variable, "path", "inputs")
            assert abs(grad[index] - want) <= 1e-4 + 1e-3 * abs(want), (name, index, grad[index], want)
