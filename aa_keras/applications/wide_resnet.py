"""Wide ResNets for CIFAR (Zagoruyko & Komodakis, 2016) and their attention-augmented twins
(paper, section 4.1).

`WideResNet(depth, width)` is WRN-depth-width with pre-activation blocks (BN, ReLU, conv);
`AAWideResNet` is the same network with the first 3x3 convolution of every residual block
replaced by an `AttentionAugmentation2D` of the same filters, followed by the block's BatchNorm
as before. Groups run at strides 1, 2 and 4 of the input; the sum closing group g is the layer
"C{g - 1}" (C0, C1, C2; see `feature_extractor`).
"""

import keras

from aa_keras.applications._backbone import (
    AttentionSettings,
    check_head_arguments,
    check_input_shape,
    finish_model,
)
from aa_keras.validation import positive_int

_BASE_WIDTHS = (16, 32, 64)


def _conv(filters, kernel_size, strides, name):
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False,
        kernel_initializer="he_normal", name=name,
    )


def _bn_relu(x, name):
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def _block(x, filters, strides, name, out_name, attention):
    """Pre-activation block: BN, ReLU, 3x3 (strided, the augmented one), BN, ReLU, 3x3; the
    shortcut is a 1x1 conv of the pre-activated input when the shape changes."""
    preact = _bn_relu(x, f"{name}_0")
    if strides == 1 and x.shape[-1] == filters:
        shortcut = x
    else:
        shortcut = _conv(filters, 1, strides, f"{name}_0_conv")(preact)
    if attention is None:
        first = _conv(filters, 3, strides, f"{name}_1_conv")
    else:
        first = attention.layer(filters, strides, f"{name}_1_conv")
    x = _bn_relu(first(preact), f"{name}_1")
    x = _conv(filters, 3, 1, f"{name}_2_conv")(x)
    return keras.layers.Add(name=out_name)([shortcut, x])


def _build(depth, width, attention, include_top, weights, input_shape, pooling, classes,
           classifier_activation, name):
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"Invalid `depth`: expected 6n + 4 with n >= 1 (10, 16, 22, 28, ...), received depth={depth!r}.")
    positive_int("width", width)
    check_head_arguments(weights, include_top, classes, pooling)
    input_shape = check_input_shape(input_shape, (32, 32, 3), 4, attention is not None)
    blocks = (depth - 4) // 6

    inputs = keras.Input(input_shape, name="input")
    x = _conv(_BASE_WIDTHS[0], 3, 1, "conv1_conv")(inputs)
    for g, base in enumerate(_BASE_WIDTHS):
        for b in range(blocks):
            block_name = f"group{g + 1}_block{b + 1}"
            out_name = f"C{g}" if b == blocks - 1 else f"{block_name}_add"
            strides = 2 if b == 0 and g > 0 else 1
            x = _block(x, base * width, strides, block_name, out_name, attention)
    x = _bn_relu(x, "post")
    return finish_model(inputs, x, name, weights, include_top, classes, pooling, classifier_activation)


def WideResNet(
    depth=28,
    width=10,
    include_top=True,
    weights=None,
    input_shape=None,
    pooling=None,
    classes=100,
    classifier_activation="softmax",
    name=None,
):
    """The baseline WRN of the paper's CIFAR table, twin of `AAWideResNet`.

    Args:
        depth: 6n + 4, n blocks per group (28: 4 blocks).
        width: widening factor k; groups have 16k, 32k and 64k filters.
        include_top: whether to end with global average pooling and a `classes`-way Dense.
        weights: None, or the path of a `.weights.h5` file to load.
        input_shape: (H, W, C), default (32, 32, 3); H and W at least 4 (may be None).
        pooling: without the top, None (the final (B, H/4, W/4, 64k) map), "avg" or "max".
        classes: number of classes of the top, default 100 (CIFAR-100, the paper's table).
        classifier_activation: activation of the top's Dense.
        name: model name, default "wrn{depth}_{width}".

    Returns:
        A functional `keras.Model`; group outputs are the layers "C0", "C1", "C2".
    """
    return _build(depth, width, None, include_top, weights, input_shape, pooling, classes,
                  classifier_activation, name or f"wrn{depth}_{width}")


def AAWideResNet(
    depth=28,
    width=10,
    include_top=True,
    weights=None,
    input_shape=None,
    pooling=None,
    classes=100,
    classifier_activation="softmax",
    depth_k=0.2,
    depth_v=0.1,
    num_heads=8,
    min_key_depth_per_head=20,
    position_encoding="relative",
    name=None,
):
    """The attention-augmented WRN of the paper (Bello et al., 2019, table 1).

    The first convolution of every residual block is an `AttentionAugmentation2D` with the
    paper's settings: kappa = 0.2, upsilon = 0.1, Nh = 8 and at least 20 key dimensions per
    head (so dk = 160 in every layer of WRN-28-10), relative position logits. A strided first
    conv runs its attention on the input average-pooled to its output size.

    Args:
        depth: as in `WideResNet`.
        width: as in `WideResNet`.
        include_top: as in `WideResNet`.
        weights: as in `WideResNet`.
        input_shape: (H, W, C) with a fixed H and W (at least 4), default (32, 32, 3).
        pooling: as in `WideResNet`.
        classes: as in `WideResNet`.
        classifier_activation: as in `WideResNet`.
        depth_k: kappa, the key depth as a fraction of each augmented conv's filters.
        depth_v: upsilon, the value depth in the same form.
        num_heads: attention heads of every augmented conv.
        min_key_depth_per_head: lower bound of the key depth per head (0 to disable).
        position_encoding: one of `aa_keras.layers.POSITION_ENCODINGS`.
        name: model name, default "aa_wrn{depth}_{width}".

    Returns:
        A functional `keras.Model`; group outputs are the layers "C0", "C1", "C2".
    """
    attention = AttentionSettings(depth_k, depth_v, num_heads, min_key_depth_per_head, position_encoding)
    return _build(depth, width, attention, include_top, weights, input_shape, pooling, classes,
                  classifier_activation, name or f"aa_wrn{depth}_{width}")
