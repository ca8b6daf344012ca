"""ResNet-18/34/50/101/152 for ImageNet and their attention-augmented twins (paper, section 4.2).

Both come from one builder: `ResNet(depth)` is the baseline, `AAResNet(depth)` the same network
with one 3x3 convolution of every residual block of the last three stages (28x28, 14x14 and
7x7 at a 224x224 input) replaced by an `AttentionAugmentation2D` of the same filters, followed
by the block's BatchNorm as before. The architecture is ResNet v1 with the stride on the 3x3
convolution ("v1.5", as in the TPU reference the paper trained): 4.1 G multiply-adds for
ResNet-50, the paper's 8.2 GFLOPs. Layer names follow `keras.applications`
("conv3_block1_2_conv"); an augmented layer keeps the name of the conv it replaces, and the
output of stage s (stride 2**s) is the layer "C{s}" (see `feature_extractor`).
"""

import keras

from aa_keras.applications._backbone import (
    AttentionSettings,
    check_head_arguments,
    check_input_shape,
    finish_model,
)

# depth: (residual block, blocks per stage of conv2..conv5)
_ARCHITECTURES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
DEPTHS = tuple(_ARCHITECTURES)
_WIDTHS = (64, 128, 256, 512)
_BN_EPSILON = 1.001e-5


def _conv(filters, kernel_size, strides, name):
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False,
        kernel_initializer="he_normal", name=name,
    )


def _bn(name):
    return keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=name)


def _spatial_conv(x, filters, strides, name, attention, downsample_attention):
    """The block's 3x3 convolution: plain, or augmented when `attention` is set."""
    if attention is None:
        layer = _conv(filters, 3, strides, name)
    else:
        layer = attention.layer(filters, strides, name, downsample_attention)
    return layer(x)


def _shortcut(x, filters, strides, name):
    if strides == 1 and x.shape[-1] == filters:
        return x
    x = _conv(filters, 1, strides, f"{name}_0_conv")(x)
    return _bn(f"{name}_0_bn")(x)


def _basic_block(x, filters, strides, name, out_name, attention, downsample_attention):
    """3x3, 3x3 with an identity or projection shortcut; the first 3x3 is the augmented one."""
    shortcut = _shortcut(x, filters, strides, name)
    x = _spatial_conv(x, filters, strides, f"{name}_1_conv", attention, downsample_attention)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(_bn(f"{name}_1_bn")(x))
    x = _bn(f"{name}_2_bn")(_conv(filters, 3, 1, f"{name}_2_conv")(x))
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=out_name)(x)


def _bottleneck_block(x, filters, strides, name, out_name, attention, downsample_attention):
    """1x1, 3x3 (strided, the augmented one), 1x1 expanding to 4 * filters."""
    shortcut = _shortcut(x, 4 * filters, strides, name)
    x = _bn(f"{name}_1_bn")(_conv(filters, 1, 1, f"{name}_1_conv")(x))
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _spatial_conv(x, filters, strides, f"{name}_2_conv", attention, downsample_attention)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(_bn(f"{name}_2_bn")(x))
    x = _bn(f"{name}_3_bn")(_conv(4 * filters, 1, 1, f"{name}_3_conv")(x))
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=out_name)(x)


def _build(depth, attention, augmented_stages, downsample_stages, include_top, weights, input_shape,
           pooling, classes, classifier_activation, name):
    if depth not in _ARCHITECTURES:
        raise ValueError(f"Invalid `depth`: expected one of {DEPTHS}, received depth={depth!r}.")
    check_head_arguments(weights, include_top, classes, pooling)
    input_shape = check_input_shape(input_shape, (224, 224, 3), 32, attention is not None)
    block_kind, blocks = _ARCHITECTURES[depth]
    block = _basic_block if block_kind == "basic" else _bottleneck_block

    inputs = keras.Input(input_shape, name="input")
    x = _bn("conv1_bn")(_conv(64, 7, 2, "conv1_conv")(inputs))
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="pool1_pool")(x)
    first_augmented = len(_WIDTHS) - augmented_stages
    for index, (filters, num_blocks) in enumerate(zip(_WIDTHS, blocks)):
        stage = index + 2
        stage_attention = attention if index >= first_augmented else None
        downsample = index < first_augmented + downsample_stages
        for b in range(num_blocks):
            block_name = f"conv{stage}_block{b + 1}"
            out_name = f"C{stage}" if b == num_blocks - 1 else f"{block_name}_out"
            strides = 2 if b == 0 and stage > 2 else 1
            x = block(x, filters, strides, block_name, out_name, stage_attention, downsample)
    return finish_model(inputs, x, name, weights, include_top, classes, pooling, classifier_activation)


def ResNet(
    depth=50,
    include_top=True,
    weights=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
):
    """The baseline ResNet of the paper's ImageNet table, twin of `AAResNet`.

    Args:
        depth: 18, 34 (basic blocks), 50, 101 or 152 (bottleneck blocks).
        include_top: whether to end with global average pooling and a `classes`-way Dense.
        weights: None, or the path of a `.weights.h5` file to load.
        input_shape: (H, W, C), default (224, 224, 3); H and W at least 32 (may be None).
        pooling: without the top, None (the (B, H/32, W/32, C) map), "avg" or "max".
        classes: number of classes of the top.
        classifier_activation: activation of the top's Dense.
        name: model name, default "resnet{depth}".

    Returns:
        A functional `keras.Model`; stage outputs are the layers "C2" .. "C5".
    """
    return _build(depth, None, 0, 0, include_top, weights, input_shape, pooling, classes,
                  classifier_activation, name or f"resnet{depth}")


def AAResNet(
    depth=50,
    include_top=True,
    weights=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    depth_k=None,
    depth_v=None,
    num_heads=8,
    min_key_depth_per_head=20,
    position_encoding="relative",
    augmented_stages=3,
    downsample_attention_stages=1,
    name=None,
):
    """The attention-augmented ResNet of the paper (Bello et al., 2019, table 3).

    One 3x3 convolution per residual block of the last `augmented_stages` stages is an
    `AttentionAugmentation2D`: the 3x3 of each bottleneck block, the first 3x3 of each basic
    block. Defaults are the paper's: kappa = 2 upsilon = 0.2 and kappa = upsilon = 0.25 for
    ResNet-34, Nh = 8, relative position logits, and attention run on a 3x3/stride-2 pooled
    map only in the first augmented stage ("downsample only during the first stage").

    Readings of the paper, chosen because they reproduce its parameter table (see
    `benchmarks/param_table.py`): (1) the key depth is at least 20 channels per head, as the
    paper states for its CIFAR networks: with kappa = 0.2 alone every replaced 3x3 conv loses
    parameters, while the table shows AA-ResNet-50/101/152 larger than their baselines;
    (2) in basic blocks (ResNet-18/34) the first 3x3 conv of each block is augmented, once per
    block as in the WRN experiments.

    Args:
        depth: as in `ResNet`.
        include_top: as in `ResNet`.
        weights: as in `ResNet`.
        input_shape: (H, W, C) with a fixed H and W (at least 32), default (224, 224, 3).
        pooling: as in `ResNet`.
        classes: as in `ResNet`.
        classifier_activation: as in `ResNet`.
        depth_k: kappa, the key depth as a fraction of each augmented conv's filters; None
            for the paper's value at this depth.
        depth_v: upsilon, the value depth in the same form.
        num_heads: attention heads of every augmented conv.
        min_key_depth_per_head: lower bound of the key depth per head (0 to disable).
        position_encoding: one of `aa_keras.layers.POSITION_ENCODINGS`.
        augmented_stages: how many of the last stages (of conv2..conv5) are augmented, 0..4.
        downsample_attention_stages: how many of the augmented stages, from the first, run
            attention at half resolution (`downsample_attention=True`).
        name: model name, default "aa_resnet{depth}".

    Returns:
        A functional `keras.Model`; stage outputs are the layers "C2" .. "C5".
    """
    paper = (0.25, 0.25) if depth == 34 else (0.2, 0.1)
    attention = AttentionSettings(
        paper[0] if depth_k is None else depth_k,
        paper[1] if depth_v is None else depth_v,
        num_heads,
        min_key_depth_per_head,
        position_encoding,
    )
    for arg, value in (("augmented_stages", augmented_stages),
                       ("downsample_attention_stages", downsample_attention_stages)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= len(_WIDTHS):
            raise ValueError(f"Invalid `{arg}`: expected an int in [0, {len(_WIDTHS)}], received {arg}={value!r}.")
    return _build(depth, attention, augmented_stages, downsample_attention_stages, include_top, weights,
                  input_shape, pooling, classes, classifier_activation, name or f"aa_resnet{depth}")
