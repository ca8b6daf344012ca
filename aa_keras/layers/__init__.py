"""Layers: the attention-augmented convolution and its pieces."""

from aa_keras.layers.attention_augmentation import POSITION_ENCODINGS, AttentionAugmentation2D

__all__ = ["AttentionAugmentation2D", "POSITION_ENCODINGS"]
