"""Datasets: the embedded offline datasets. Importing this package registers `glyph_pairs`
(classification) and `glyph_boxes` (detection) with TFDS."""

from aa_keras.datasets.glyph_boxes import GlyphBoxes
from aa_keras.datasets.glyph_pairs import GlyphPairs

__all__ = ["GlyphBoxes", "GlyphPairs"]
