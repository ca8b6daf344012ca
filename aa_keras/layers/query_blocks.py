"""When attention runs in query blocks: the rule both attention paths share (TensorFlow's
`attention.py` and the `keras.ops` path of `attention_ops.py`).

The logits are (B, Nh, HW, HW): at 56x56 and batch 8 one float32 copy is 2.5 GB. Blocking starts
when one example's logits (Nh * HW * HW values) exceed _BLOCKING_THRESHOLD elements; a block then
holds about _BLOCK_LOGITS of them per example, in at most _MAX_BLOCKS blocks (each block adds ops
to the graph).
"""

import math

_BLOCKING_THRESHOLD = 2**24
_BLOCK_LOGITS = 2**22
_MAX_BLOCKS = 64


def auto_query_block_size(num_heads, num_positions):
    """Queries per block chosen from the size: None (unblocked) below the threshold."""
    if num_positions is None or num_heads * num_positions**2 <= _BLOCKING_THRESHOLD:
        return None
    return max(_BLOCK_LOGITS // (num_heads * num_positions), math.ceil(num_positions / _MAX_BLOCKS))
