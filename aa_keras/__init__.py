"""aa_keras: attention-augmented convolutional networks (Bello et al., ICCV 2019) for Keras 3."""

from aa_keras import layers
from aa_keras.layers import AttentionAugmentation2D

__version__ = "0.1.0"
__all__ = ["layers", "AttentionAugmentation2D"]
