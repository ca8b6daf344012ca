"""A straightforward attention-augmented convolution, for comparison only.

It computes the same function as `aa_keras.layers.AttentionAugmentation2D` with the same
weights, the way the paper's appendix writes it: relative logits over the 2L - 1 offsets are
turned into absolute (query, key) logits by pad-and-reshape, then tiled to the full
(B, Nh, HW, HW) size before they are added, and the whole logits tensor is materialised for the
forward and kept for the backward pass. Benchmarks measure the library layer against it.
"""

import tensorflow as tf

from aa_keras.layers import AttentionAugmentation2D


def _relative_to_absolute(x):
    """(B, Nh, L, 2L - 1) logits over offsets -> (B, Nh, L, L) logits over key positions.

    Padding one column and reshaping shifts row i left by i, so that entry (i, j) of the result
    is entry (i, j - i + L - 1) of the input.
    """
    batch, heads, length = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    x = tf.concat([x, tf.zeros([batch, heads, length, 1], x.dtype)], axis=3)
    x = tf.reshape(x, [batch, heads, length * 2 * length])
    x = tf.concat([x, tf.zeros([batch, heads, length - 1], x.dtype)], axis=2)
    x = tf.reshape(x, [batch, heads, length + 1, 2 * length - 1])
    return x[:, :, :length, length - 1 :]


def _central_rows(table, length):
    """The 2 * length - 1 central rows of a relative table: offsets -(length - 1) .. length - 1."""
    center = (table.shape[0] - 1) // 2
    return table[center - (length - 1) : center + length]


def _tiled_relative_logits_1d(q, table, height, width, transpose):
    """Relative logits along the width of `q` (B, Nh, H, W, d), tiled to (B, Nh, HW, HW)."""
    heads = q.shape[1]
    logits = tf.einsum("bnhwd,md->bnhwm", q, table)
    logits = tf.reshape(logits, [-1, heads * height, width, 2 * width - 1])
    logits = tf.reshape(_relative_to_absolute(logits), [-1, heads, height, width, width])
    logits = tf.tile(tf.expand_dims(logits, 3), [1, 1, 1, height, 1, 1])
    logits = tf.transpose(logits, transpose)
    return tf.reshape(logits, [-1, heads, height * width, height * width])


class ReferenceAttentionAugmentation2D(AttentionAugmentation2D):
    """`AttentionAugmentation2D` with the materialised, tiled attention of the paper's appendix.

    Supports `position_encoding` "relative" and "none" with the input at the built size.
    """

    def _multi_head_attention(self, q, k, v):
        """(B, H, W, Nh, dkh) q, k and (B, H, W, Nh, dvh) v -> (B, H, W, Nh, dvh)."""
        _, height, width, heads, _ = q.shape
        q, k, v = [tf.transpose(t, [0, 3, 1, 2, 4]) for t in (q, k, v)]
        logits = tf.einsum("bnhwd,bnxyd->bnhwxy", q, k)
        logits = tf.reshape(logits, [-1, heads, height * width, height * width])
        if self.rel_height is not None:
            table_w = _central_rows(self.rel_width, width)
            table_h = _central_rows(self.rel_height, height)
            logits += _tiled_relative_logits_1d(q, table_w, height, width, [0, 1, 2, 4, 3, 5])
            q_t = tf.transpose(q, [0, 1, 3, 2, 4])
            logits += _tiled_relative_logits_1d(q_t, table_h, width, height, [0, 1, 4, 2, 5, 3])
        weights = tf.cast(tf.nn.softmax(logits, axis=-1), v.dtype)
        v = tf.reshape(v, [-1, heads, height * width, v.shape[-1]])
        out = tf.einsum("bnqk,bnkd->bnqd", weights, v)
        return tf.transpose(tf.reshape(out, [-1, heads, height, width, out.shape[-1]]), [0, 2, 3, 1, 4])
