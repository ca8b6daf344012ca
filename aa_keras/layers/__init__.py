"""Layers: the attention-augmented convolution and its pieces."""

from aa_keras.layers.attention_augmentation import POSITION_ENCODINGS, AttentionAugmentation2D
from aa_keras.layers.relative_tables import RESAMPLE_METHODS, resample_relative_table

__all__ = ["AttentionAugmentation2D", "POSITION_ENCODINGS", "RESAMPLE_METHODS", "resample_relative_table"]
