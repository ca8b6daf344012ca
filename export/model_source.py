"""The model to export: a `.keras` file, or a builder name for a randomly initialised model."""

import os

from aa_keras.applications import MODEL_NAMES, build_model
from aa_keras.programs.files import load_keras_file


def is_model_file(spec):
    """Whether `spec` names a file (a path or a `.keras` name) rather than a builder."""
    return spec.endswith(".keras") or os.sep in spec or os.path.exists(spec)


def build_named_model(name, image_size, channels, classes, flag="--model"):
    """A randomly initialised model from `aa_keras.applications.build_model`."""
    if name not in MODEL_NAMES:
        raise ValueError(
            f"Invalid `{flag}`: {name!r} is neither an existing `.keras` file nor a builder name; "
            f"builder names are {', '.join(MODEL_NAMES)}."
        )
    if image_size is None:
        raise ValueError(f"`--image_size` is required to build the model {name!r}.")
    return build_model(name, input_shape=(image_size, image_size, channels), classes=classes)


def load_model(spec, image_size=None, channels=3, classes=None, flag="--model", safe_mode=True):
    """The model named by `spec` (a `.keras` path, loaded with Keras's `safe_mode`, or a builder
    name with `image_size`, `channels` and `classes`); errors name `flag`.

    Returns:
        A single-input, single-output Keras model whose input is (B, H, W, C) with H and W known.
    """
    if is_model_file(spec):
        model = load_keras_file(spec, flag, safe_mode)
    else:
        model = build_named_model(spec, image_size, channels, classes, flag)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"Invalid `{flag}`: {spec!r} has {len(model.inputs)} inputs and {len(model.outputs)} "
            "outputs; the exporter handles image classifiers with one input and one output."
        )
    if len(model.inputs[0].shape) != 4 or len(model.outputs[0].shape) != 2:
        raise ValueError(
            f"Invalid `{flag}`: {spec!r} maps {model.inputs[0].shape} to {model.outputs[0].shape}; "
            "expected (B, H, W, C) images to (B, classes) scores."
        )
    return model


def image_shape(model, image_size):
    """The (H, W, C) input of `model`, with `image_size` filling unknown spatial dims and
    checked against known ones."""
    height, width, channels = model.inputs[0].shape[1:]
    if image_size is not None:
        if height not in (None, image_size) or width not in (None, image_size):
            raise ValueError(
                f"Invalid `--image_size`: {image_size} does not match the model's input size "
                f"{(height, width)}; leave it unset or pass {height}."
            )
        height = height or image_size
        width = width or image_size
    if height is None or width is None:
        raise ValueError(
            f"The model's input size is {(height, width)}; pass `--image_size` to fix it for export."
        )
    return height, width, channels
