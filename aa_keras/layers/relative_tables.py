"""Relative position tables: the rows a grid reads (`relative_offsets`), and tables for another
attention grid (`resample_relative_table`).

A table of `AttentionAugmentation2D` (`rel_height` or `rel_width`) built for a grid of length L
has 2L - 1 rows; row m embeds the offset (key - query) = m - (L - 1). For a grid of length L':

- L' <= L: the central 2L' - 1 rows, exact (the offsets a shorter grid needs, as the layer
  uses them at call time);
- L' > L, `method="linear"`: the offset axis is rescaled so that offset 0 stays 0 and the
  largest offsets, +-(L' - 1) and +-(L - 1), map onto each other; rows in between are
  interpolated linearly. Content scaled with the image (the same picture at a higher
  resolution) keeps the embedding of its relative position.
- L' > L, `method="edge"`: offsets keep their pixel meaning; rows within the trained range are
  the original rows, offsets beyond it take the outermost row of their side (content of the
  same scale on a larger canvas).
"""

import numpy as np

from aa_keras.validation import positive_int

RESAMPLE_METHODS = ("linear", "edge")


def table_length(table):
    """The largest length a (2 * max_length - 1, depth) table of relative embeddings serves."""
    return (table.shape[0] + 1) // 2


def offset_rows(positions, max_length):
    """Table rows of (query, key) pairs of 1D `positions` (a NumPy array or a tensor):
    O[i, j] = positions[j] - positions[i] + max_length - 1."""
    return positions[None, :] - positions[:, None] + (max_length - 1)


def relative_offsets(length, max_length):
    """(length, length) NumPy int table rows, O[i, j] = j - i + max_length - 1, of a static length.

    Used by both attention paths; a length above max_length raises a ValueError.
    """
    if length > max_length:
        raise ValueError(
            f"The attention grid is longer ({length}) than the {max_length} positions its relative "
            "embeddings were built for: build the layer with a larger max_size."
        )
    return offset_rows(np.arange(length), max_length)


def resample_relative_table(table, length, method="linear"):
    """A relative position table for an attention grid of `length` positions.

    Args:
        table: (2L - 1, depth) array (NumPy, a tensor or a variable): row m embeds the offset
            m - (L - 1).
        length: L', the new grid length, a positive int.
        method: "linear" or "edge", how a longer grid gets rows (see the module docstring);
            a grid of at most L positions gets the central rows with either.

    Returns:
        (2L' - 1, depth) NumPy array of the table's dtype.
    """
    table = np.asarray(table)
    if table.ndim != 2 or table.shape[0] % 2 != 1:
        raise ValueError(
            f"Invalid `table`: expected a (2L - 1, depth) array with an odd number of rows, received "
            f"shape {table.shape}."
        )
    length = positive_int("length", length)
    if method not in RESAMPLE_METHODS:
        raise ValueError(f"Invalid `method`: received method={method!r}, expected one of {RESAMPLE_METHODS}.")
    old = (table.shape[0] + 1) // 2
    if length <= old:
        return table[old - length : old + length - 1].copy()
    offsets = np.arange(-(length - 1), length, dtype=np.float64)
    if method == "edge":
        rows = np.clip(offsets, -(old - 1), old - 1).astype(np.int64) + old - 1
        return table[rows].copy()
    # Offset o of the new grid sits at o * (L - 1) / (L' - 1) of the old one, row position + L - 1.
    positions = offsets * (old - 1) / (length - 1) + (old - 1)
    below = np.floor(positions).astype(np.int64)
    above = np.minimum(below + 1, 2 * old - 2)
    weight = (positions - below)[:, None]
    values = table.astype(np.float64)
    return ((1.0 - weight) * values[below] + weight * values[above]).astype(table.dtype)
