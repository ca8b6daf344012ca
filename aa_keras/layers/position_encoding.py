"""Absolute position encodings for the position-encoding ablation (paper, table 5).

Each function returns a (1, H, W, P) float32 (or float64) tensor that the layer concatenates to
the attention input before the query/key/value projection. Written in `keras.ops`; on TensorFlow
`height` and `width` may be scalar tensors.
"""

import math

from keras import ops


def sine_encoding_channels(depth_k):
    """Channels of the 2D sine encoding used with key depth `depth_k`: a multiple of 4."""
    return 4 * math.ceil(depth_k / 4)


def sine_encoding(height, width, channels, dtype="float32"):
    """2D sinusoidal encoding (Vaswani et al., 2017, applied to rows and columns).

    With F = channels // 4 frequencies f_i = 10000 ** (-i / F), i = 0 .. F - 1, the channels are
    [sin(y f), cos(y f), sin(x f), cos(x f)], each a group of F, where (y, x) is the integer
    pixel position.

    Returns:
        (1, height, width, channels) tensor of `dtype`.
    """
    num_freqs = channels // 4
    freqs = ops.power(ops.convert_to_tensor(10000.0, dtype), -ops.arange(num_freqs, dtype=dtype) / num_freqs)
    rows = ops.cast(ops.arange(height), dtype)[:, None] * freqs  # (H, F)
    cols = ops.cast(ops.arange(width), dtype)[:, None] * freqs  # (W, F)
    row_enc = ops.concatenate([ops.sin(rows), ops.cos(rows)], axis=-1)  # (H, 2F)
    col_enc = ops.concatenate([ops.sin(cols), ops.cos(cols)], axis=-1)  # (W, 2F)
    row_enc = ops.broadcast_to(row_enc[:, None, :], [height, width, 2 * num_freqs])
    col_enc = ops.broadcast_to(col_enc[None, :, :], [height, width, 2 * num_freqs])
    return ops.expand_dims(ops.concatenate([row_enc, col_enc], axis=-1), 0)


def _normalized_positions(length, dtype):
    """Positions 0 .. length - 1 mapped linearly onto [-1, 1] (0 when length == 1)."""
    positions = ops.cast(ops.arange(length), dtype)
    denominator = ops.maximum(ops.cast(length, dtype) - 1.0, 1.0)
    return 2.0 * positions / denominator - ops.cast(length > 1, dtype)


def coordconv_encoding(height, width, dtype="float32"):
    """CoordConv (Liu et al., 2018): the normalised (y, x) coordinates in [-1, 1].

    Returns:
        (1, height, width, 2) tensor of `dtype`, channel 0 = y, channel 1 = x.
    """
    ys = ops.broadcast_to(_normalized_positions(height, dtype)[:, None], [height, width])
    xs = ops.broadcast_to(_normalized_positions(width, dtype)[None, :], [height, width])
    return ops.expand_dims(ops.stack([ys, xs], axis=-1), 0)
