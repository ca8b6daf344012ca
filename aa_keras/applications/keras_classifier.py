"""Pretrained `keras.applications` classifiers with attention added, for fine-tuning.

    model = keras_classifier("ResNet50", classes=5)                       # ImageNet weights, paper preset
    model = keras_classifier("MobileNetV2", classes=5, input_shape=(96, 96, 3),
                             augment="all", skip_unfit=True, weights="mnv2.weights.h5")
    set_backbone_trainable(model, False)  # train the head and the attention branches only

The model maps float images in [0, 1] (what the training pipelines give) to logits:

    image (B, H, W, 3) -> "preprocess" (ChannelAffine: the network's own `preprocess_input`
    on image * 255) -> "backbone" (the network without its top, `augment`ed) -> "avg_pool" ->
    "logits" (Dense, float32)

so a saved or exported model does its own preprocessing.
"""

import difflib
import os
import sys
import warnings

import keras
import numpy as np

from aa_keras.applications.augment import PRESETS, LastStages, _conv_layers
from aa_keras.applications.augment import augment as augment_model
from aa_keras.layers import AttentionAugmentation2D

AUGMENT = (*PRESETS, "none")
BACKBONE = "backbone"
PREPROCESS = "preprocess"


def keras_networks():
    """The names of the `keras.applications` classifiers (`"ResNet50"`, `"EfficientNetB0"`, ...)."""
    return tuple(sorted(n for n in dir(keras.applications) if n[:1].isupper() and callable(getattr(keras.applications, n))))


@keras.saving.register_keras_serializable(package="aa_keras")
class ChannelAffine(keras.layers.Layer):
    """A fixed affine map of the channels of every pixel: `outputs = inputs @ matrix + offset`.

    It holds a network's input preprocessing (channel order, scale, mean and standard
    deviation) as constants of its config; it has no weights.

    Args:
        matrix: (C_in, C_out) nested lists or array.
        offset: (C_out,) list or array.

    Call arguments:
        inputs: (..., C_in).

    Returns:
        (..., C_out).
    """

    def __init__(self, matrix, offset, **kwargs):
        super().__init__(**kwargs)
        matrix, offset = np.asarray(matrix, "float32"), np.asarray(offset, "float32")
        if matrix.ndim != 2 or offset.shape != matrix.shape[1:]:
            raise ValueError(
                "Invalid `matrix` / `offset`: expected shapes (C_in, C_out) and (C_out,), received "
                f"matrix.shape={matrix.shape}, offset.shape={offset.shape}."
            )
        self.matrix, self.offset = matrix, offset

    def call(self, inputs):
        matrix = keras.ops.convert_to_tensor(self.matrix, self.compute_dtype)
        offset = keras.ops.convert_to_tensor(self.offset, self.compute_dtype)
        # ...: any leading axes, c: input channel, d: output channel.
        return keras.ops.einsum("...c,cd->...d", inputs, matrix) + offset

    def compute_output_shape(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.matrix.shape[0]:
            raise ValueError(
                f"Invalid input shape {input_shape}: {self.name!r} expects {self.matrix.shape[0]} channels."
            )
        return (*input_shape[:-1], self.matrix.shape[1])

    def get_config(self):
        return {**super().get_config(), "matrix": self.matrix.tolist(), "offset": self.offset.tolist()}


def preprocessing_layer(name, channels=3):
    """A `ChannelAffine` that maps images in [0, 1] as `keras.applications` network `name`'s
    `preprocess_input` maps the same images in [0, 255].

    Every `preprocess_input` of `keras.applications` ("caffe": RGB to BGR minus the ImageNet
    mean; "tf": to [-1, 1]; "torch": ImageNet mean and standard deviation; or none, for networks
    that normalise inside) is an affine map of each pixel's channels; it is read off the
    function's answers on the black image and on one full-intensity image per channel, then
    checked on random images.
    """
    preprocess_input = sys.modules[getattr(keras.applications, name).__module__].preprocess_input
    probes = np.concatenate([np.zeros((1, channels), "float32"), 255.0 * np.eye(channels, dtype="float32")])
    answers = np.asarray(preprocess_input(probes[:, None, None, :].copy()), "float64")[:, 0, 0, :]
    offset, matrix = answers[0], answers[1:] - answers[0]
    images = np.random.default_rng(0).random((2, 4, 4, channels), dtype="float32")
    expected = np.asarray(preprocess_input(255.0 * images), "float64")
    if not np.allclose(images @ matrix + offset, expected, rtol=1e-5, atol=1e-3):
        raise ValueError(
            f"The preprocess_input of keras.applications.{name} is not an affine map of each pixel's "
            "channels, which ChannelAffine needs; preprocess the images outside the model instead."
        )
    return ChannelAffine(matrix, offset, name=PREPROCESS)


def _check_arguments(name, classes, input_shape, weights, augment, skip_unfit):
    networks = keras_networks()
    if name not in networks:
        close = difflib.get_close_matches(str(name), networks, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"Invalid `name`: received name={name!r}, expected a keras.applications classifier; {hint}"
            f"e.g. ResNet50, EfficientNetB0, MobileNetV2, ConvNeXtTiny (all {len(networks)}: {', '.join(networks)})."
        )
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"Invalid `classes`: expected an int >= 2, received classes={classes!r}.")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if len(shape) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape) or shape[2] != 3:
        raise ValueError(
            "Invalid `input_shape`: expected (height, width, 3) with positive ints (attention needs a fixed "
            f"size, and the networks' preprocessing three channels), received input_shape={input_shape!r}."
        )
    if weights not in ("imagenet", None) and not (isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights)):
        raise ValueError(
            f"Invalid `weights`: received weights={weights!r}, expected 'imagenet', None, or the path of an "
            "existing weights file."
        )
    if isinstance(augment, str) and augment not in AUGMENT:
        raise ValueError(
            f"Invalid `augment`: received augment={augment!r}, expected one of {AUGMENT} or another `select` of "
            "augment (layer names, a predicate, a LastStages)."
        )
    if not isinstance(skip_unfit, bool):
        raise ValueError(f"Invalid `skip_unfit`: expected a bool, received skip_unfit={skip_unfit!r}.")
    return shape


def _backbone(name, input_shape, weights):
    """`keras.applications.<name>` without its top, named "backbone", with `weights` loaded."""
    network = getattr(keras.applications, name)
    try:
        backbone = network(
            include_top=False, weights="imagenet" if weights == "imagenet" else None, input_shape=input_shape, name=BACKBONE
        )
    except ValueError as error:
        raise ValueError(
            f"Invalid `input_shape`: keras.applications.{name} refuses input_shape={input_shape} with "
            f"weights={'imagenet' if weights == 'imagenet' else None!r}: {error}"
        ) from error
    except Exception as error:  # noqa: BLE001  (keras.utils.get_file raises a bare Exception when offline)
        if weights != "imagenet":
            raise
        raise ValueError(
            f"Cannot fetch the ImageNet weights of keras.applications.{name}: {error}. Without network access, "
            "pass weights=PATH with a local copy of the weights file."
        ) from error
    if weights in ("imagenet", None):
        return backbone
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            backbone.load_weights(os.fspath(weights))
            problem = next((str(w.message) for w in caught if "Skipping" in str(w.message)), None)
        except ValueError as error:  # keras's first two lines: how many objects failed, and an example
            problem = " ".join([line for line in str(error).splitlines() if line.strip()][:2])
            problem = problem.split(" Target variable:")[0]  # keras then prints the variable's values
    if problem is not None:
        raise ValueError(
            f"Invalid `weights`: {os.fspath(weights)!r} does not fit keras.applications.{name}(include_top=False, "
            f"input_shape={input_shape}): {problem} Pass the weights of the same network without its top: a "
            "'.weights.h5' file saved from it with save_weights, or keras's '..._notop.h5' file."
        )
    return backbone


def keras_classifier(
    name,
    classes,
    input_shape=(224, 224, 3),
    weights="imagenet",
    augment="paper",
    skip_unfit=False,
    return_summary=False,
    **augment_options,
):
    """A `keras.applications` network, attention-augmented, with its preprocessing and a new head.

    The network is built without its top and with `weights`; `augment` then replaces the
    selected `Conv2D` layers by `AttentionAugmentation2D` layers, keeping every pretrained
    weight (each replaced conv's first filters become its conv branch; the attention branches
    start from their initializers). A `ChannelAffine` in front applies the network's own
    `preprocess_input` to images in [0, 1] (scaled to [0, 255]), and global average pooling
    with a `classes`-way Dense gives float32 logits.

    Args:
        name: a `keras.applications` classifier, one of `keras_networks()`: "ResNet50",
            "EfficientNetB0", "MobileNetV2", ...
        classes: number of classes of the new head, at least 2.
        input_shape: (H, W, 3), fixed; keras refuses some sizes (most networks need H, W >= 32).
        weights: "imagenet" (keras downloads them on first use), None (random), or the path of
            a weights file of the same network without its top (a `.weights.h5` saved from
            `keras.applications.<name>(include_top=False, ...)`, or keras's `..._notop.h5`).
        augment: "paper" (the 3x3 convolutions of the three lowest-resolution stages), "all"
            (every Conv2D), "none", or any other `select` of `augment` (a list of layer names of
            the network, a predicate, a `LastStages`).
        skip_unfit: skip selected convolutions that cannot be augmented (too few filters,
            grouped, dilated, ...) instead of raising; see `augment`.
        return_summary: also return the `AugmentSummary` of `augment` (None for "none").
        **augment_options: further arguments of `augment` (`depth_k`, `depth_v`, `num_heads`,
            `position_encoding`).

    Returns:
        A functional `keras.Model` mapping (B, H, W, 3) images in [0, 1] to (B, classes)
        logits, with the layers "preprocess", "backbone" (the nested network), "avg_pool" and
        "logits"; with `return_summary=True` the pair `(model, summary)`.

    Raises:
        ValueError: an unknown name, a bad argument, an input shape keras refuses, a weights
            file that does not fit the network, or selected layers that cannot be augmented.
    """
    input_shape = _check_arguments(name, classes, input_shape, weights, augment, skip_unfit)
    backbone = _backbone(name, input_shape, weights)
    summary = None
    if augment == "paper" and not LastStages(3, 3).select(_conv_layers(backbone)):
        raise ValueError(
            f"Invalid `augment`: keras.applications.{name} has no 3x3 Conv2D in its three lowest-resolution "
            "stages, which augment='paper' replaces (its 3x3 convolutions are depthwise); use augment='all' "
            "with skip_unfit=True."
        )
    if not (isinstance(augment, str) and augment == "none"):
        try:
            backbone, summary = augment_model(
                backbone, select=augment, skip_unfit=skip_unfit, return_summary=True, **augment_options
            )
        except ValueError as error:
            raise ValueError(f"Cannot augment keras.applications.{name} with augment={augment!r}: {error}") from error
    inputs = keras.Input(input_shape, name="image")
    x = preprocessing_layer(name, input_shape[2])(inputs)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(classes, dtype="float32", name="logits")(x)
    prefix = "" if summary is None else "aa_"
    model = keras.Model(inputs, outputs, name=f"{prefix}{name.lower()}")
    return (model, summary) if return_summary else model


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def set_backbone_trainable(model, trainable):
    """Freezes (`trainable=False`) or unfreezes the pretrained weights of a `keras_classifier` model.

    Frozen are the layers of the nested "backbone" model, except the attention branches of its
    `AttentionAugmentation2D` layers (`qkv`, `attn_out`, the relative tables; their `conv` branch
    holds pretrained filters and is frozen); the head stays trainable. Frozen
    `BatchNormalization` layers run in inference mode and keep their statistics (Keras's rule
    for layers with `trainable=False`).

    Raises:
        ValueError: `model` has no nested model named "backbone".
    """
    backbone = next((l for l in model.layers if l.name == BACKBONE and isinstance(l, keras.Model)), None)
    if backbone is None:
        raise ValueError(
            f"Invalid `model`: {model.name!r} has no nested model named {BACKBONE!r}; only models of "
            "keras_classifier have a pretrained backbone to freeze."
        )
    backbone.trainable = True
    for layer in _leaf_layers(backbone):
        if isinstance(layer, AttentionAugmentation2D):
            layer.trainable = True
            if layer.conv is not None:
                layer.conv.trainable = trainable
        else:
            layer.trainable = trainable
