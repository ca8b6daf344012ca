"""Layers: the attention-augmented convolution and its pieces."""

from aa_keras.layers.attention_augmentation import (
    ATTENTION_IMPLEMENTATIONS,
    POSITION_ENCODINGS,
    AttentionAugmentation2D,
    attention_layers,
    use_attention_implementation,
)
from aa_keras.layers.relative_tables import RESAMPLE_METHODS, resample_relative_table

__all__ = [
    "ATTENTION_IMPLEMENTATIONS",
    "AttentionAugmentation2D",
    "POSITION_ENCODINGS",
    "RESAMPLE_METHODS",
    "attention_layers",
    "resample_relative_table",
    "use_attention_implementation",
]
