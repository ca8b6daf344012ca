"""What the paper's network builders share: `keras.applications`-style arguments, the
attention settings of an augmented convolution, the classifier head, and the multi-scale
feature extractor.

Every builder names the output of each of its stages `"C{level}"`, where `2 ** level` is the
stage's stride relative to the input (C3, C4, C5 = strides 8, 16, 32 in the ResNets), so a
detection neck can pick its inputs by name with `feature_extractor`.
"""

import dataclasses
import os
import re

import keras

from aa_keras.layers import POSITION_ENCODINGS, AttentionAugmentation2D
from aa_keras.validation import is_int, positive_int

_FEATURE_NAME = re.compile(r"C(\d+)")


@dataclasses.dataclass(frozen=True)
class AttentionSettings:
    """Settings of the augmented convolutions of a network.

    Attributes:
        depth_k: kappa, the key depth as a fraction of the conv's filters.
        depth_v: upsilon, the value depth as a fraction of the conv's filters.
        num_heads: Nh.
        min_key_depth_per_head: the key depth is raised to this many channels per head when
            `depth_k` gives fewer (the paper's "at least 20 dimensions per head for the keys").
        position_encoding: one of `aa_keras.layers.POSITION_ENCODINGS`.
    """

    depth_k: float
    depth_v: float
    num_heads: int = 8
    min_key_depth_per_head: int = 20
    position_encoding: str = "relative"

    def __post_init__(self):
        for name in ("depth_k", "depth_v"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, float) or not 0.0 < value <= 1.0:
                raise ValueError(
                    f"Invalid `{name}`: expected a float fraction of filters in (0, 1], "
                    f"received {name}={value!r}."
                )
        for name, least in (("num_heads", 1), ("min_key_depth_per_head", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"Invalid `{name}`: expected an int >= {least}, received {name}={value!r}.")
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(
                f"Invalid `position_encoding`: received {self.position_encoding!r}, expected one of "
                f"{POSITION_ENCODINGS}."
            )

    def layer(self, filters, strides, name, downsample_attention=False):
        """A 3x3 `AttentionAugmentation2D` with `filters` and these settings. Its projections
        keep their biases, as in the paper's appendix code."""
        min_keys = self.min_key_depth_per_head * self.num_heads
        depth_k = self.depth_k if self.depth_k * filters >= min_keys else min_keys
        return AttentionAugmentation2D(
            filters,
            3,
            strides=strides,
            depth_k=depth_k,
            depth_v=self.depth_v,
            num_heads=self.num_heads,
            position_encoding=self.position_encoding,
            kernel_initializer="he_normal",
            downsample_attention=downsample_attention,
            name=name,
        )


def check_input_shape(input_shape, default, min_size, attention):
    """The (H, W, C) input shape of a builder: `default` when None, validated otherwise."""
    if input_shape is None:
        return default
    shape = tuple(input_shape)
    valid = len(shape) == 3 and all(
        d is None or (is_int(d) and d > 0) for d in shape
    )
    if not valid or shape[2] is None:
        raise ValueError(
            "Invalid `input_shape`: expected (height, width, channels) with positive ints "
            f"(height and width may be None), received input_shape={input_shape!r}."
        )
    if any(d is not None and d < min_size for d in shape[:2]):
        raise ValueError(
            f"Invalid `input_shape`: height and width must be at least {min_size}, "
            f"received input_shape={input_shape!r}."
        )
    if attention and None in shape[:2]:
        raise ValueError(
            "Invalid `input_shape`: an attention-augmented network needs a fixed height and width "
            f"to size its relative position embeddings, received input_shape={input_shape!r}."
        )
    return shape


def check_head_arguments(weights, include_top, classes, pooling):
    """Validates the `keras.applications`-style arguments of a builder."""
    if weights is not None and not (isinstance(weights, str) and weights.endswith(".weights.h5")):
        raise ValueError(
            "Invalid `weights`: no pretrained weights are published for these networks; pass "
            f"weights=None or the path of a '.weights.h5' file, received weights={weights!r}."
        )
    if weights is not None and not os.path.isfile(weights):
        raise ValueError(f"Invalid `weights`: the file {weights!r} does not exist.")
    if not isinstance(include_top, bool):
        raise ValueError(f"Invalid `include_top`: expected a bool, received include_top={include_top!r}.")
    if include_top:
        positive_int("classes", classes)
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"Invalid `pooling`: expected None, 'avg' or 'max', received pooling={pooling!r}.")


def finish_model(inputs, x, name, weights, include_top, classes, pooling, classifier_activation):
    """Adds the head (`include_top`) or the final pooling, makes the model, loads `weights`."""
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model


def feature_extractor(model, levels=None):
    """A model mapping the input of a network built here to its multi-scale features.

    Args:
        model: a model from `ResNet`, `AAResNet`, `WideResNet` or `AAWideResNet` (any
            `include_top`), or any model whose stage outputs are layers named "C{level}".
        levels: names such as ("C3", "C4", "C5"); None for every "C{level}" layer, by level.

    Returns:
        A `keras.Model` whose output is a dict {level name: (B, H / 2**level, W / 2**level, C)}.
    """
    available = sorted(
        (layer.name for layer in model.layers if _FEATURE_NAME.fullmatch(layer.name)),
        key=lambda n: int(n[1:]),
    )
    if levels is None:
        levels = available
    missing = [level for level in levels if level not in available]
    if missing or not levels:
        raise ValueError(
            f"Invalid `levels`: {missing or list(levels)} not among the feature layers of model "
            f"{model.name!r}, which are {available}."
        )
    outputs = {level: model.get_layer(level).output for level in levels}
    return keras.Model(model.input, outputs, name=f"{model.name}_features")
