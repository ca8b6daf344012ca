"""The TensorFlow-op attention path: query blocking and the hand-written gradient.

Every layer here is built with attention_implementation="tf_ops" (the fused kernel replaces this
path where it applies); see test_fused_attention.py for the kernel.
"""

import numpy as np
import pytest
import tensorflow as tf

from aa_keras.layers import AttentionAugmentation2D
from aa_keras.layers.query_blocks import auto_query_block_size
from benchmarks.reference_layer import ReferenceAttentionAugmentation2D


def _layer_pair(layer_class, shape, **kwargs):
    """A built layer of `layer_class` with the weights of a reference AttentionAugmentation2D."""
    config = dict(filters=16, kernel_size=3, depth_k=8, depth_v=8, num_heads=2, attention_implementation="tf_ops")
    config.update(kwargs)
    source = AttentionAugmentation2D(**config)
    source.build(shape)
    other = layer_class(**config)
    other.build(shape)
    other.set_weights(source.get_weights())
    return source, other


def _outputs_and_gradients(layer, x):
    upstream = tf.random.stateless_normal(layer.compute_output_shape(x.shape), seed=(3, 4))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * upstream)
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    return [layer(x)] + [tf.convert_to_tensor(g) for g in grads]


def _assert_close(actual, expected, rtol):
    for a, e in zip(actual, expected):
        assert a is not None and e is not None
        scale = np.abs(e.numpy()).max()
        assert scale > 0
        np.testing.assert_array_less(np.abs(a.numpy() - e.numpy()).max() / scale, rtol)


@pytest.mark.parametrize("position_encoding", ["relative", "none"])
@pytest.mark.parametrize("block", [5, 16])
def test_blocked_matches_unblocked(position_encoding, block):
    shape = (2, 6, 7, 4)
    x = tf.random.stateless_normal(shape, seed=(1, 2))
    unblocked, blocked = _layer_pair(
        AttentionAugmentation2D, shape, position_encoding=position_encoding, query_block_size=None
    )
    blocked.query_block_size = block
    _assert_close(_outputs_and_gradients(blocked, x), _outputs_and_gradients(unblocked, x), 1e-5)


@pytest.mark.parametrize("strides", [1, 2])
def test_custom_gradient_matches_autodiff_reference(strides):
    """The reference layer differentiates the materialised logits with TF's own gradients."""
    shape = (2, 8, 6, 4)
    x = tf.random.stateless_normal(shape, seed=(5, 6))
    layer, reference = _layer_pair(ReferenceAttentionAugmentation2D, shape, strides=strides)
    _assert_close(_outputs_and_gradients(layer, x), _outputs_and_gradients(reference, x), 1e-5)


def test_auto_blocking_is_active_at_large_sizes_and_exact():
    assert auto_query_block_size(8, 14 * 14) is None
    shape = (1, 42, 42, 4)
    assert auto_query_block_size(8, 42 * 42) is not None
    x = tf.random.stateless_normal(shape, seed=(7, 8))
    auto, unblocked = _layer_pair(AttentionAugmentation2D, shape, num_heads=8, depth_k=8, depth_v=8)
    unblocked.query_block_size = 42 * 42
    _assert_close(_outputs_and_gradients(auto, x), _outputs_and_gradients(unblocked, x), 1e-5)
