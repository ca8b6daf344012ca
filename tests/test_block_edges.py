"""Query blocks of the TensorFlow-op attention compared by value, at block edges that fall in
the middle of a row: `_blocked_attention` against `_attention` and a float64 NumPy softmax,
outputs and every gradient (q, k, v and both relative terms)."""

import numpy as np
import pytest
import tensorflow as tf

from aa_keras.layers.attention import _attention, _blocked_attention

BATCH, HEADS, HEIGHT, WIDTH, DK, DV = 2, 2, 3, 5, 4, 3


def _inputs(seed):
    rng = np.random.default_rng(seed)
    positions = HEIGHT * WIDTH
    shapes = [
        (BATCH, HEADS, positions, DK),  # q
        (BATCH, HEADS, positions, DK),  # k
        (BATCH, HEADS, positions, DV),  # v
        (BATCH, HEADS, positions, HEIGHT, 1),  # height logits of every query
        (BATCH, HEADS, positions, 1, WIDTH),  # width logits of every query
    ]
    # Logits of order 1 to 10: the softmax is far from uniform, so a wrong row shows.
    return [tf.constant(1.5 * rng.normal(size=shape), tf.float32) for shape in shapes]


def _numpy_attention(q, k, v, rel_h, rel_w):
    q, k, v, rel_h, rel_w = (np.asarray(t, np.float64) for t in (q, k, v, rel_h, rel_w))
    logits = q @ np.swapaxes(k, -1, -2) + (rel_h + rel_w).reshape(*q.shape[:3], -1)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v


def _output_and_gradients(attend, inputs, upstream):
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = attend(*inputs)
        loss = tf.reduce_sum(out * upstream)
    return [out, *tape.gradient(loss, inputs)]


# 15 queries in rows of 5; edges at multiples of the block, mostly mid-row (4, 8, 12; 7; 14).
@pytest.mark.parametrize("block", [2, 4, 7, 14])
def test_blocked_attention_equals_unblocked_at_mid_row_edges(block):
    inputs = _inputs(seed=block)
    upstream = tf.constant(np.random.default_rng(100 + block).normal(size=(BATCH, HEADS, HEIGHT * WIDTH, DV)), tf.float32)
    blocked = _output_and_gradients(_blocked_attention(block), inputs, upstream)
    unblocked = _output_and_gradients(_attention, inputs, upstream)
    np.testing.assert_allclose(blocked[0].numpy(), _numpy_attention(*inputs), rtol=0, atol=1e-5)
    names = ["out", "d_q", "d_k", "d_v", "d_rel_height", "d_rel_width"]
    for name, got, want in zip(names, blocked, unblocked):
        want = want.numpy()
        assert got.shape == want.shape, name
        scale = np.abs(want).max()
        assert scale > 0.1, name
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5 * scale, err_msg=name)
