"""Datasets: the embedded offline dataset. Importing this package registers `glyph_pairs` with TFDS."""

from aa_keras.datasets.glyph_pairs import GlyphPairs

__all__ = ["GlyphPairs"]
