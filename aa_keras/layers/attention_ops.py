"""Multi-head 2D self-attention in `keras.ops`: the layer's attention on backends other than
TensorFlow (JAX, PyTorch).

The same function as `aa_keras.layers.attention` (TensorFlow's path): content logits q k^T plus
the 2D relative logits as two 1D terms added by broadcast, a softmax in the dtype of q (float32
under mixed precision), the weighted sum of v. Spatial sizes are static (as they are on JAX and
PyTorch). Above the TensorFlow path's threshold (2^24 logits per example) the queries run in
blocks, one `keras.remat` call per block, so that a backward pass recomputes a block's logits
instead of keeping them; how far blocks share memory is then the backend's (XLA's) schedule.
"""

import keras
from keras import ops

from aa_keras.layers.query_blocks import auto_query_block_size
from aa_keras.layers.relative_tables import relative_offsets, table_length


def relative_logits(q, rel_height, rel_width):
    """The height and width relative logits of every query (see `relative_logits.relative_logits`).

    Args:
        q: (B, Nh, H, W, dkh) queries, already scaled; H, W static.
        rel_height: (2 * H_max - 1, dkh) table, H <= H_max.
        rel_width: (2 * W_max - 1, dkh) table, W <= W_max.

    Returns:
        (B, Nh, H * W, H, 1) and (B, Nh, H * W, 1, W) logits.
    """
    batch, heads, height, width, _ = ops.shape(q)
    # emb_h[hi, hj] = rel_height[hj - hi + H_max - 1], likewise emb_w.
    emb_h = ops.take(rel_height, relative_offsets(height, table_length(rel_height)), axis=0)
    emb_w = ops.take(rel_width, relative_offsets(width, table_length(rel_width)), axis=0)
    # logits_h[b, n, hi, wi, hj] = q[b, n, hi, wi] . emb_h[hi, hj]
    logits_h = ops.einsum("bnhwd,hgd->bnhwg", q, ops.cast(emb_h, q.dtype))
    # logits_w[b, n, hi, wi, wj] = q[b, n, hi, wi] . emb_w[wi, wj]
    logits_w = ops.einsum("bnhwd,wvd->bnhwv", q, ops.cast(emb_w, q.dtype))
    return (
        ops.reshape(logits_h, (batch, heads, height * width, height, 1)),
        ops.reshape(logits_w, (batch, heads, height * width, 1, width)),
    )


def _probabilities(q, k, *rel):
    """softmax(q k^T [+ relative logits]) in the dtype of q.

    Args:
        q: (B, Nh, Q, dkh) queries; k: (B, Nh, HW, dkh) keys, the dtype of q.
        rel: nothing, or the (B, Nh, Q, H, 1) and (B, Nh, Q, 1, W) relative logits.

    Returns:
        (B, Nh, Q, HW) weights.
    """
    # einsum, not matmul: Keras 3.15's torch matmul computes float64 operands in float32.
    logits = ops.einsum("bnqd,bnkd->bnqk", q, k)
    if rel:
        logits_h, logits_w = rel
        logits = logits + ops.reshape(logits_h + logits_w, ops.shape(logits))
    return ops.softmax(logits, axis=-1)


def _attention(q, k, v, *rel):
    """(B, Nh, Q, HW) weights times (B, Nh, HW, dvh) v -> (B, Nh, Q, dvh) in the dtype of v."""
    return _weighted_values(_probabilities(q, k, *rel), v)


def _weighted_values(weights, v):
    """(B, Nh, Q, HW) weights times (B, Nh, HW, dvh) v, in the dtype of v (einsum as above)."""
    return ops.einsum("bnqk,bnkd->bnqd", ops.cast(weights, v.dtype), v)


def _blocked_attention(q, k, v, rel, block_size):
    """`_attention` for `block_size` queries at a time, each block rematerialised."""
    attend = keras.remat(_attention)
    outputs = []
    for start in range(0, q.shape[2], block_size):
        stop = start + block_size
        outputs.append(attend(q[:, :, start:stop], k, v, *[r[:, :, start:stop] for r in rel]))
    return ops.concatenate(outputs, axis=2)


def multi_head_attention_2d(
    q, k, v, rel_height=None, rel_width=None, query_block_size=None, return_weights=False, dropout=None
):
    """Self-attention of every position of a feature map to every other, in `keras.ops`.

    Memory: unblocked, the logits and weights hold B * Nh * (H * W)**2 values of q's dtype (kept
    for the backward pass); in blocks, B * Nh * block * H * W per block.

    Args:
        q: (B, H, W, Nh, dkh) queries, already scaled by dkh ** -0.5, float32 (float64 for
            float64 attention); H and W static.
        k: (B, H, W, Nh, dkh) keys, the dtype of q.
        v: (B, H, W, Nh, dvh) values in the compute dtype.
        rel_height, rel_width: relative embedding tables, or None for no relative term.
        query_block_size: queries per block; None picks it from the size
            (`query_blocks.auto_query_block_size`: unblocked below 2^24 logits per example).
        return_weights: also return the attention weights (computed unblocked).
        dropout: None, or a function applied to the (B, Nh, HW, HW) weights before their
            product with v (the layer's dropout in training); the attention then runs unblocked
            (the weights and the mask, B * Nh * (H * W)**2 values each, kept for the backward
            pass).

    Returns:
        (B, H, W, Nh, dvh) output in the dtype of v; with `return_weights`, also the
        (B, Nh, H, W, H, W) softmax weights in the dtype of q, query position first (before
        `dropout`, as `keras.layers.MultiHeadAttention` returns them).
    """
    batch, height, width, heads, _ = ops.shape(q)
    positions = height * width
    # Head-major for the batched matmuls: (B, Nh, H, W, d).
    q, k, v = [ops.transpose(t, (0, 3, 1, 2, 4)) for t in (q, k, v)]
    rel = () if rel_height is None else relative_logits(q, rel_height, rel_width)
    q, k, v = [ops.reshape(t, (batch, heads, positions, t.shape[-1])) for t in (q, k, v)]
    if query_block_size is None:
        query_block_size = auto_query_block_size(heads, positions)
    if return_weights or dropout is not None:
        probs = _probabilities(q, k, *rel)
        out = _weighted_values(probs if dropout is None else dropout(probs), v)
    elif query_block_size is None or query_block_size >= positions:
        out = _attention(q, k, v, *rel)
    else:
        out = _blocked_attention(q, k, v, rel, query_block_size)
    out = ops.transpose(ops.reshape(out, (batch, heads, height, width, out.shape[-1])), (0, 2, 3, 1, 4))
    if return_weights:
        return out, ops.reshape(probs, (batch, heads, height, width, height, width))
    return out


def query_attention_weights(q, k, rows, cols, rel_height=None, rel_width=None):
    """The attention weights of chosen queries only (as `attention.query_attention_weights`).

    Only the chosen rows of the logits are formed: memory O(Nh * H * W) per query. The weights
    equal those of `multi_head_attention_2d` at these queries.

    Args:
        q: (B, H, W, Nh, dkh) queries, already scaled by dkh ** -0.5 (float32, or float64).
        k: (B, H, W, Nh, dkh) keys, the dtype of q.
        rows, cols: (B, Q) int grid positions of each example's queries.
        rel_height, rel_width: relative embedding tables, or None for no relative term.

    Returns:
        (B, Nh, Q, H, W) softmax weights of each query over the key positions, the dtype of q.
    """
    batch, height, width, heads, depth = ops.shape(k)
    k = ops.reshape(ops.transpose(k, (0, 3, 1, 2, 4)), (batch, heads, height * width, depth))
    # q_rows[b, n, i] = q[b, rows[b, i], cols[b, i], n]
    index = ops.reshape(rows * width + cols, (batch, -1, 1, 1))
    flat = ops.reshape(q, (batch, height * width, heads, depth))
    q_rows = ops.take_along_axis(flat, ops.broadcast_to(index, (batch, index.shape[1], heads, depth)), axis=1)
    q_rows = ops.transpose(q_rows, (0, 2, 1, 3))
    rel = ()
    if rel_height is not None:
        # emb_h[b, i, hj] = rel_height[hj - rows[b, i] + H_max - 1], likewise emb_w.
        emb_h = ops.take(ops.take(rel_height, relative_offsets(height, table_length(rel_height)), axis=0), rows, axis=0)
        emb_w = ops.take(ops.take(rel_width, relative_offsets(width, table_length(rel_width)), axis=0), cols, axis=0)
        # logits_h[b, n, i, hj] = q_rows[b, n, i] . emb_h[b, i, hj], likewise logits_w.
        logits_h = ops.einsum("bnid,bigd->bnig", q_rows, ops.cast(emb_h, q.dtype))
        logits_w = ops.einsum("bnid,bivd->bniv", q_rows, ops.cast(emb_w, q.dtype))
        rel = (ops.expand_dims(logits_h, 4), ops.expand_dims(logits_w, 3))
    probs = _probabilities(q_rows, k, *rel)
    return ops.reshape(probs, (batch, heads, probs.shape[2], height, width))
