"""Multi-head 2D self-attention over all spatial positions, optionally in query blocks.

The logits are (B, Nh, HW, HW): at 56x56 and batch 8 one float32 copy is 2.5 GB. The blocked
path splits the queries into blocks, computes one block's logits, softmax and output at a
time, one block after another, and recomputes a block's logits in the backward pass (a custom
gradient) instead of keeping them, so peak memory grows with the block and not with (HW)^2.
Both paths compute the same function, from standard TensorFlow ops only. The layer
(`attention_augmentation.py`) chooses between them and the fused CPU kernel
(`aa_keras.ops.fused_attention`), which makes one pass over each query's logits and never
stores them.
"""

import tensorflow as tf

from aa_keras.layers.relative_logits import relative_embeddings_2d, relative_logits
from aa_keras.layers.shapes import dims

def _probabilities(q, k, rel):
    """Attention weights softmax(q k^T [+ relative logits]) in the dtype of q.

    Args:
        q: (B, Nh, Q, dkh) queries, float32 (float64 for a float64 layer).
        k: (B, Nh, HW, dkh) keys, the dtype of q.
        rel: () or the (B, Nh, Q, H, 1) and (B, Nh, Q, 1, W) relative logits, the dtype of q.

    Returns:
        (B, Nh, Q, HW) in the dtype of q.
    """
    logits = tf.matmul(q, k, transpose_b=True)
    if rel:
        logits_h, logits_w = rel
        # Summing the two small terms first and adding that without broadcasting is faster than
        # broadcasting each into the (Q, H, W) logits.
        logits += tf.reshape(logits_h + logits_w, dims(logits))
    return tf.nn.softmax(logits, axis=-1)


def _weighted_values(probs, v):
    """probs v in the dtype of v: (B, Nh, Q, HW) weights, (B, Nh, HW, dvh) -> (B, Nh, Q, dvh)."""
    return tf.matmul(tf.cast(probs, v.dtype), v)


def _gradients(q, k, v, rel, probs, out, d_out):
    """Gradients of out = probs v, probs = softmax(q k^T + rel), for one block of queries.

    dLogits = P * (dP - rowsum(dP * P)) with rowsum(dP * P) = rowsum(dO * O); the subtraction is
    folded into one small-depth matmul, [dO, -rowsum(dO * O)] [v, 1]^T, so the (Q, HW) weights
    are read by one product and three matmuls only.

    Args:
        q, k, v, rel: the block's inputs, as in `_probabilities` (v (B, Nh, HW, dvh)).
        probs: (B, Nh, Q, HW) attention weights of the block, in the dtype of q.
        out, d_out: (B, Nh, Q, dvh) block output and its gradient.

    Returns:
        [d_q, d_k, d_v] followed by the gradients of the relative logits, if any.
    """
    d_out = tf.cast(d_out, probs.dtype)
    row = tf.reduce_sum(d_out * tf.cast(out, probs.dtype), axis=-1, keepdims=True)
    values_and_one = tf.concat([tf.cast(v, probs.dtype), tf.ones_like(v[..., :1], probs.dtype)], axis=-1)
    d_logits = probs * tf.matmul(tf.concat([d_out, -row], axis=-1), values_and_one, transpose_b=True)
    d_v = tf.cast(tf.matmul(probs, d_out, transpose_a=True), v.dtype)
    grads = [tf.matmul(d_logits, k), tf.matmul(d_logits, q, transpose_a=True), d_v]
    if rel:
        batch, heads, queries, _ = dims(d_logits)
        height, width = dims(rel[0])[3], dims(rel[1])[4]
        d_logits = tf.reshape(d_logits, [batch, heads, queries, height, width])
        grads += [tf.reduce_sum(d_logits, axis=4, keepdims=True), tf.reduce_sum(d_logits, axis=3, keepdims=True)]
    return grads


@tf.custom_gradient
def _attention(q, k, v, *rel):
    """softmax(q k^T + rel) v in one piece; the weights are kept for the backward pass.

    Takes q (B, Nh, HW, dkh), k (B, Nh, HW, dkh), v (B, Nh, HW, dvh) and the relative logits, if
    any (see `_probabilities`); returns (B, Nh, HW, dvh) in the dtype of v.
    """
    probs = _probabilities(q, k, rel)
    out = _weighted_values(probs, v)

    def grad(d_out):
        return _gradients(q, k, v, rel, probs, out, d_out)

    return out, grad


def _blocked_attention(block_size):
    """`_attention` computed `block_size` queries at a time, the blocks one after another.

    Only the output is kept for the backward pass, which recomputes each block's weights. The
    blocks are chained by control dependencies, forward and backward, so that the runtime does
    not run them side by side and hold every block's (Q, HW) weights at once.
    """

    @tf.custom_gradient
    def attend(q, k, v, *rel):
        num_positions = q.shape[2]
        blocks = [(start, min(start + block_size, num_positions)) for start in range(0, num_positions, block_size)]

        def block_inputs(start, stop):
            return q[:, :, start:stop], [r[:, :, start:stop] for r in rel]

        outputs = []
        for start, stop in blocks:
            with tf.control_dependencies(outputs[-1:]):
                q_block, rel_block = block_inputs(start, stop)
                outputs.append(_weighted_values(_probabilities(q_block, k, rel_block), v))
        out = tf.concat(outputs, axis=2)

        def grad(d_out):
            d_k, d_v = tf.zeros_like(k), tf.zeros_like(v)
            d_q, d_rel = [], [[] for _ in rel]
            for start, stop in blocks:
                with tf.control_dependencies([d_k, d_v]):
                    q_block, rel_block = block_inputs(start, stop)
                    block_grads = _gradients(
                        q_block,
                        k,
                        v,
                        rel_block,
                        _probabilities(q_block, k, rel_block),
                        out[:, :, start:stop],
                        d_out[:, :, start:stop],
                    )
                d_q.append(block_grads[0])
                d_k += block_grads[1]
                d_v += block_grads[2]
                for d, g in zip(d_rel, block_grads[3:]):
                    d.append(g)
            return [tf.concat(d_q, axis=2), d_k, d_v] + [tf.concat(d, axis=2) for d in d_rel]

        return out, grad

    return attend


def multi_head_attention_2d(
    q, k, v, rel_height=None, rel_width=None, query_block_size=None, return_weights=False, dropout=None
):
    """Self-attention of every position of a feature map to every other.

    Args:
        q: (B, H, W, Nh, dkh) queries, already scaled by dkh ** -0.5: float32, or float64 for
            float64 attention (the logits and softmax are computed in this dtype).
        k: (B, H, W, Nh, dkh) keys, the dtype of q.
        v: (B, H, W, Nh, dvh) values in the compute dtype.
        rel_height, rel_width: relative embedding tables (see `relative_logits`), or None for
            no relative term.
        query_block_size: queries per block, or None for the unblocked computation. Blocking
            needs a static H * W; with a dynamic size the unblocked computation runs.
        return_weights: also return the attention weights; the output is then computed from
            them, unblocked.
        dropout: None, or a function applied to the (B, Nh, HW, HW) weights before their
            product with v (the layer's dropout in training). The attention then runs unblocked,
            differentiated by TensorFlow (not by the hand-written gradient): the weights and the
            dropout mask, B * Nh * (H * W)**2 values each, are kept for the backward pass.

    Returns:
        (B, H, W, Nh, dvh) attention output, in the dtype of v; with `return_weights`, also the
        (B, Nh, H, W, H, W) softmax weights in the dtype of q, query position first (before
        `dropout`, as `keras.layers.MultiHeadAttention` returns them).
    """
    batch, height, width, heads, _ = dims(q)
    num_positions = height * width
    # Head-major for the batched matmuls: (B, Nh, H, W, d).
    q, k, v = [tf.transpose(t, [0, 3, 1, 2, 4]) for t in (q, k, v)]
    rel = ()
    if rel_height is not None:
        rel = relative_logits(q, rel_height, rel_width)
    q = tf.reshape(q, [batch, heads, num_positions, q.shape[-1]])
    k = tf.reshape(k, [batch, heads, num_positions, k.shape[-1]])
    v = tf.reshape(v, [batch, heads, num_positions, v.shape[-1]])

    blocked = isinstance(num_positions, int) and query_block_size is not None
    if return_weights or dropout is not None:
        probs = _probabilities(q, k, rel)
        out = _weighted_values(probs if dropout is None else dropout(probs), v)
    elif not blocked or query_block_size >= num_positions:
        out = _attention(q, k, v, *rel)
    else:
        out = _blocked_attention(query_block_size)(q, k, v, *rel)
    out = tf.reshape(out, [batch, heads, height, width, out.shape[-1]])
    out = tf.transpose(out, [0, 2, 3, 1, 4])
    if return_weights:
        return out, tf.reshape(probs, [batch, heads, height, width, height, width])
    return out


def query_attention_weights(q, k, rows, cols, rel_height=None, rel_width=None):
    """The attention weights of chosen queries only, from standard TensorFlow ops.

    Only the chosen rows of the logits are formed: memory O(Nh * H * W) per query, however
    large the map. The weights equal those of `multi_head_attention_2d` at these queries.

    Args:
        q: (B, H, W, Nh, dkh) queries, already scaled by dkh ** -0.5 (float32, or float64).
        k: (B, H, W, Nh, dkh) keys, the dtype of q.
        rows, cols: (B, Q) int grid positions of each example's queries.
        rel_height, rel_width: relative embedding tables, or None for no relative term.

    Returns:
        (B, Nh, Q, H, W) softmax weights of each query over the key positions, the dtype of q.
    """
    batch, height, width, heads, depth = dims(k)
    k = tf.reshape(tf.transpose(k, [0, 3, 1, 2, 4]), [batch, heads, height * width, depth])
    # q_rows[b, n, i] = q[b, rows[b, i], cols[b, i], n]
    q_rows = tf.gather_nd(q, tf.stack([rows, cols], axis=-1), batch_dims=1)
    q_rows = tf.transpose(q_rows, [0, 2, 1, 3])
    rel = ()
    if rel_height is not None:
        # emb_h[b, i, hj] = rel_height[hj - rows[b, i] + H_max - 1], likewise emb_w.
        emb_h = tf.gather(relative_embeddings_2d(rel_height, height), rows)
        emb_w = tf.gather(relative_embeddings_2d(rel_width, width), cols)
        # logits_h[b, n, i, hj] = q_rows[b, n, i] . emb_h[b, i, hj]
        logits_h = tf.einsum("bnid,bigd->bnig", q_rows, emb_h)
        # logits_w[b, n, i, wj] = q_rows[b, n, i] . emb_w[b, i, wj]
        logits_w = tf.einsum("bnid,bivd->bniv", q_rows, emb_w)
        rel = (tf.expand_dims(logits_h, 4), tf.expand_dims(logits_w, 3))
    probs = _probabilities(q_rows, k, rel)
    return tf.reshape(probs, [batch, heads, dims(probs)[2], height, width])
