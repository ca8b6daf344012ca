"""aa_keras: attention-augmented convolutional networks (Bello et al., ICCV 2019) for Keras 3."""

from aa_keras import applications, layers
from aa_keras.layers import AttentionAugmentation2D

__version__ = "0.1.0"
__all__ = ["applications", "layers", "AttentionAugmentation2D"]
