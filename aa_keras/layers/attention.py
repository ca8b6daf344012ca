"""Multi-head 2D self-attention over all spatial positions, optionally in query blocks.

The logits are (B, Nh, HW, HW): at 56x56 and batch 8 one float32 copy is 2.5 GB. The blocked
path splits the queries into blocks, computes one block's logits, softmax and output at a
time, and recomputes a block's logits in the backward pass (`tf.recompute_grad`) instead of
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


def _weighted_values(logits, v):
    """softmax(logits) v, the softmax in float32: (B, Nh, Q, HW), (B, Nh, HW, dvh) -> (B, Nh, Q, dvh)."""
    weights = tf.cast(tf.nn.softmax(logits, axis=-1), v.dtype)
    return tf.einsum("bnqk,bnkd->bnqd", weights, v)


def _attend(q, k, v):
    """softmax(q k^T) v for one block of queries.

    Args:
        q: (B, Nh, Q, dkh) float32 queries.
        k: (B, Nh, HW, dkh) float32 keys.
        v: (B, Nh, HW, dvh) values, in the compute dtype.

    Returns:
        (B, Nh, Q, dvh) in the dtype of v.
    """
    return _weighted_values(tf.einsum("bnqd,bnkd->bnqk", q, k), v)


def _attend_relative(q, k, v, logits_h, logits_w):
    """softmax(q k^T + relative logits) v for one block of queries.

    Args:
        q, k, v: as in `_attend`.
        logits_h, logits_w: (B, Nh, Q, H, 1) and (B, Nh, Q, 1, W) float32 relative logits.

    Returns:
        (B, Nh, Q, dvh) in the dtype of v.
    """
    logits = tf.einsum("bnqd,bnkd->bnqk", q, k)
    batch, heads, queries, keys = dims(logits)
    height, width = dims(logits_h)[3], dims(logits_w)[4]
    logits = tf.reshape(logits, [batch, heads, queries, height, width]) + logits_h + logits_w
    return _weighted_values(tf.reshape(logits, [batch, heads, queries, keys]), v)


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
    attend = _attend
    if rel_height is not None:
        rel = relative_logits(q, rel_height, rel_width)
        attend = _attend_relative
    q = tf.reshape(q, [batch, heads, num_positions, q.shape[-1]])
    k = tf.reshape(k, [batch, heads, num_positions, k.shape[-1]])
    v = tf.reshape(v, [batch, heads, num_positions, v.shape[-1]])

    blocked = isinstance(num_positions, int) and query_block_size is not None
    if not blocked or query_block_size >= num_positions:
        return attend(q, k, v, *rel)

    attend_block = tf.recompute_grad(attend)
    outputs = []
    for start in range(0, num_positions, query_block_size):
        stop = min(start + query_block_size, num_positions)
        block_rel = [r[:, :, start:stop] for r in rel]
        outputs.append(attend_block(q[:, :, start:stop], k, v, *block_rel))
    return tf.concat(outputs, axis=2)
