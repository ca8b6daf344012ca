"""Multi-head 2D self-attention over all spatial positions, optionally in query blocks.

The logits are (B, Nh, HW, HW): at 56x56 and batch 8 one float32 copy is 2.5 GB. The blocked
path splits the queries into blocks, computes one block's logits, softmax and output at a
time, and recomputes a block's logits in the backward pass (a custom gradient) instead of
keeping them, so peak memory grows with the block and not with (HW)^2. Both paths compute the
same function.
"""

import tensorflow as tf

from aa_keras.layers.relative_logits import relative_logits
from aa_keras.layers.shapes import dims

# Blocking starts when one example's logits (Nh * HW * HW float32 values) exceed this many
# elements, and a block then holds about _BLOCK_LOGITS of them per example.
_BLOCKING_THRESHOLD = 2**24
_BLOCK_LOGITS = 2**21


def auto_query_block_size(num_heads, num_positions):
    """Queries per block chosen from the size: None (unblocked) below the threshold."""
    if num_positions is None or num_heads * num_positions**2 <= _BLOCKING_THRESHOLD:
        return None
    return max(1, _BLOCK_LOGITS // (num_heads * num_positions))


def _probabilities(q, k, rel):
    """Attention weights softmax(q k^T [+ relative logits]) in float32.

    Args:
        q: (B, Nh, Q, dkh) float32 queries.
        k: (B, Nh, HW, dkh) float32 keys.
        rel: () or the (B, Nh, Q, H, 1) and (B, Nh, Q, 1, W) float32 relative logits.

    Returns:
        (B, Nh, Q, HW) float32.
    """
    logits = tf.matmul(q, k, transpose_b=True)
    if rel:
        logits_h, logits_w = rel
        # Summing the two small terms first and adding that without broadcasting is faster than
        # broadcasting each into the (Q, H, W) logits.
        logits += tf.reshape(logits_h + logits_w, dims(logits))
    return tf.nn.softmax(logits, axis=-1)


def _attention(recompute):
    """softmax(q k^T + relative logits) v for one block of queries, with a hand-written gradient.

    The gradient uses rowsum(dP * P) = rowsum(dO * O), so the backward pass makes few passes over
    the (Q, HW) weights. With `recompute=True` the weights are not kept for the backward pass
    but recomputed from q, k and the relative logits there, so memory does not grow with the
    number of blocks.

    The returned function takes q (B, Nh, Q, dkh), k (B, Nh, HW, dkh), v (B, Nh, HW, dvh) and
    optionally the relative logits (see `_probabilities`) and returns (B, Nh, Q, dvh) in the
    dtype of v.
    """

    @tf.custom_gradient
    def attend(q, k, v, *rel):
        probs = _probabilities(q, k, rel)
        out = tf.matmul(tf.cast(probs, v.dtype), v)
        saved_probs = None if recompute else probs

        def grad(d_out):
            p = _probabilities(q, k, rel) if saved_probs is None else saved_probs
            d_v = tf.matmul(tf.cast(p, v.dtype), d_out, transpose_a=True)
            d_p = tf.cast(tf.matmul(d_out, v, transpose_b=True), tf.float32)
            row = tf.reduce_sum(tf.cast(d_out, tf.float32) * tf.cast(out, tf.float32), -1, keepdims=True)
            d_logits = p * (d_p - row)
            d_q = tf.matmul(d_logits, k)
            d_k = tf.matmul(d_logits, q, transpose_a=True)
            if not rel:
                return d_q, d_k, d_v
            batch, heads, queries, _ = dims(d_logits)
            height, width = dims(rel[0])[3], dims(rel[1])[4]
            d_logits = tf.reshape(d_logits, [batch, heads, queries, height, width])
            d_h = tf.reduce_sum(d_logits, axis=4, keepdims=True)
            d_w = tf.reduce_sum(d_logits, axis=3, keepdims=True)
            return d_q, d_k, d_v, d_h, d_w

        return out, grad

    return attend


def multi_head_attention_2d(q, k, v, rel_height=None, rel_width=None, query_block_size=None):
    """Self-attention of every position of a feature map to every other.

    Args:
        q: (B, Nh, H, W, dkh) float32 queries, already scaled by dkh ** -0.5.
        k: (B, Nh, H, W, dkh) float32 keys.
        v: (B, Nh, H, W, dvh) values in the compute dtype.
        rel_height, rel_width: relative embedding tables (see `relative_logits`), or None for
            no relative term.
        query_block_size: queries per block, or None for the unblocked path. Blocking needs
            a static H * W; with a dynamic size the unblocked path runs.

    Returns:
        (B, Nh, H * W, dvh) attention output, in the dtype of v.
    """
    batch, heads, height, width, _ = dims(q)
    num_positions = height * width
    rel = ()
    if rel_height is not None:
        rel = relative_logits(q, rel_height, rel_width)
    q = tf.reshape(q, [batch, heads, num_positions, q.shape[-1]])
    k = tf.reshape(k, [batch, heads, num_positions, k.shape[-1]])
    v = tf.reshape(v, [batch, heads, num_positions, v.shape[-1]])

    blocked = isinstance(num_positions, int) and query_block_size is not None
    if not blocked or query_block_size >= num_positions:
        return _attention(recompute=False)(q, k, v, *rel)

    attend_block = _attention(recompute=True)
    outputs = []
    for start in range(0, num_positions, query_block_size):
        stop = min(start + query_block_size, num_positions)
        block_rel = [r[:, :, start:stop] for r in rel]
        outputs.append(attend_block(q[:, :, start:stop], k, v, *block_rel))
    return tf.concat(outputs, axis=2)
