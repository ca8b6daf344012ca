"""Datasets: the embedded offline datasets, and builders of the user's own files. Importing this
package registers `glyph_pairs` (classification) and `glyph_boxes` (detection) with TFDS;
`ImageFolder` (`image_folder:PATH`) and `CocoJson` (`coco_json:PATH`) read folders of images."""

from aa_keras.datasets.coco_json import CocoJson
from aa_keras.datasets.glyph_boxes import GlyphBoxes
from aa_keras.datasets.glyph_pairs import GlyphPairs
from aa_keras.datasets.image_folder import ImageFolder

__all__ = ["CocoJson", "GlyphBoxes", "GlyphPairs", "ImageFolder"]
