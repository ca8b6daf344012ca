"""A small attention-augmented network and its matched-parameter convolutional baseline.

Both share one body for 32x32-ish inputs: a two-conv stem down to 1/2 resolution, then three
3x3 blocks (the middle one strided) to 1/4 resolution, global average pooling and a linear
classifier. In `aa_small_net` the blocks are `AttentionAugmentation2D` (relative position
logits, 2 heads, depth_k = depth_v = filters / 4); in `conv_small_net` they are plain Conv2D,
with widths chosen so that both networks have the same number of parameters to within 1%.
Every block is followed by BatchNormalization and ReLU, as in the paper's networks.
"""

import keras

from aa_keras.layers import AttentionAugmentation2D

AA_BLOCK_WIDTHS = (64, 128, 128)
CONV_BLOCK_WIDTHS = (64, 114, 114)


def _conv_bn_relu(x, filters, strides, name):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _aa_bn_relu(x, filters, strides, name):
    x = AttentionAugmentation2D(
        filters, 3, strides=strides, depth_k=0.25, depth_v=0.25, num_heads=2, use_bias=False, name=f"{name}_aa"
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _small_net(input_shape, classes, block, widths, name):
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"Invalid `classes`: expected an int >= 2, received classes={classes!r}.")
    if len(input_shape) != 3 or any(d is None for d in input_shape[:2]):
        raise ValueError(
            f"Invalid `input_shape`: expected a known (height, width, channels), received "
            f"input_shape={input_shape!r}."
        )
    inputs = keras.Input(shape=input_shape, name="image")
    x = _conv_bn_relu(inputs, 32, 1, "stem1")
    x = _conv_bn_relu(x, 64, 2, "stem2")
    for index, (filters, strides) in enumerate(zip(widths, (1, 2, 1))):
        x = block(x, filters, strides, f"block{index + 1}")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def aa_small_net(input_shape=(32, 32, 3), classes=2):
    """The small attention-augmented network.

    Args:
        input_shape: (H, W, C) of the images.
        classes: number of classes.

    Returns:
        A functional `keras.Model` mapping (B, H, W, C) images to (B, classes) float32 logits.
    """
    return _small_net(input_shape, classes, _aa_bn_relu, AA_BLOCK_WIDTHS, "aa_small")


def conv_small_net(input_shape=(32, 32, 3), classes=2):
    """The convolutional baseline of `aa_small_net`, with the same body and parameter count.

    Args:
        input_shape: (H, W, C) of the images.
        classes: number of classes.

    Returns:
        A functional `keras.Model` mapping (B, H, W, C) images to (B, classes) float32 logits.
    """
    return _small_net(input_shape, classes, _conv_bn_relu, CONV_BLOCK_WIDTHS, "conv_small")
