"""Relative position logits of 2D self-attention (Bello et al., 2019, section 3.2).

For a query at (hi, wi) and a key at (hj, wj) the relative logit is

    q_i . rel_width[wj - wi + W - 1]  +  q_i . rel_height[hj - hi + H - 1]

where the tables have 2W - 1 and 2H - 1 rows for the largest size the layer was built for.
It is computed as two 1D terms, each of size O(HW * (H + W)); the caller adds them to the
(HW x HW) content logits by broadcasting. No per-head (HW x HW x dkh) tensor is formed.
"""

import tensorflow as tf

from aa_keras.layers.relative_tables import offset_rows, relative_offsets, table_length
from aa_keras.layers.shapes import dims


def relative_embeddings_2d(table, length):
    """Gathers a table of relative embeddings into absolute (query, key) pairs.

    Args:
        table: (2 * max_length - 1, depth) tensor; row m embeds the offset
            (key - query) = m - (max_length - 1).
        length: the actual length (static int or scalar tensor), at most max_length.
            A shorter length uses the central rows of the table, which is exact; a longer
            one raises ValueError (static) or `tf.errors.InvalidArgumentError` (at run time).
            XLA drops run-time assertions: there a longer length gives embeddings that are all
            NaN, so the layer's output is NaN rather than a wrong finite answer.

    Returns:
        (length, length, depth) tensor E with E[i, j] = table[j - i + max_length - 1].
    """
    max_length = table_length(table)
    if isinstance(length, int):
        return tf.gather(table, relative_offsets(length, max_length))
    # A longer length would gather outside the table, which fails obscurely on CPU and
    # silently gives zeros on GPU; a length known only at run time is checked here.
    check = tf.debugging.assert_less_equal(
        length,
        max_length,
        message=f"The attention grid is longer than the {max_length} positions its relative "
        "embeddings were built for: build the layer with a larger max_size.",
    )
    with tf.control_dependencies([check]):  # before the gather, which would fail first
        positions = tf.range(length)
    # Where the check is dropped (XLA), the table is poisoned instead, and XLA's gather
    # clamps the out-of-range offsets.
    table = table + tf.cast(tf.where(length > max_length, float("nan"), 0.0), table.dtype)
    return tf.gather(table, offset_rows(positions, max_length))


def relative_logits(q, rel_height, rel_width):
    """The height and width relative logits of every query.

    Args:
        q: (B, Nh, H, W, dkh) queries, already scaled.
        rel_height: (2 * H_max - 1, dkh) table, H <= H_max.
        rel_width: (2 * W_max - 1, dkh) table, W <= W_max.

    Returns:
        (height_logits, width_logits) of shapes (B, Nh, H * W, H, 1) and (B, Nh, H * W, 1, W):
        broadcast-added to content logits reshaped to (B, Nh, H * W, H, W) they give the full
        relative term.
    """
    batch, heads, height, width, _ = dims(q)
    num_queries = height * width
    emb_h = relative_embeddings_2d(rel_height, height)
    emb_w = relative_embeddings_2d(rel_width, width)
    # logits_h[b, n, hi, wi, hj] = q[b, n, hi, wi] . emb_h[hi, hj]
    logits_h = tf.einsum("bnhwd,hgd->bnhwg", q, emb_h)
    # logits_w[b, n, hi, wi, wj] = q[b, n, hi, wi] . emb_w[wi, wj]
    logits_w = tf.einsum("bnhwd,wvd->bnhwv", q, emb_w)
    logits_h = tf.reshape(logits_h, [batch, heads, num_queries, height, 1])
    logits_w = tf.reshape(logits_w, [batch, heads, num_queries, 1, width])
    return logits_h, logits_w
