"""`--init_from`: a run that starts from the weights of another model instead of its
initializers (fine-tuning at another image size, a head with other classes, a classifier's
weights in a detector's backbone).

Weights are matched by path ("layer/weight", see `aa_keras.applications.transfer_weights`):
equal shapes are copied, relative tables of `AttentionAugmentation2D` layers are resampled for
the new attention grid, and every other weight (a head with other classes, a detector's FPN and
heads) keeps its initial value. A table of counts says which was which.
"""

import os

from aa_keras.applications import ResNetEncoder, transfer_weights  # importing them registers the aa_keras models
from aa_keras.applications.retinanet import backbone_attention
from aa_keras.programs.files import load_keras_file
from aa_keras.programs.run_folder import RunFolder


def model_file(path):
    """The `.keras` file of `path`: `path` itself, or `path/model.keras` for a run folder."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"Invalid `init_from`: expected the path of a .keras model or a run folder, received {path!r}.")
    path = os.fspath(path)
    if os.path.isdir(path):
        file = RunFolder(path).model
        if not os.path.isfile(file):
            raise ValueError(
                f"Invalid `init_from`: the folder {path!r} holds no {RunFolder.MODEL}; pass a .keras file, or the "
                "folder of a finished run (training writes model.keras at its end)."
            )
        return file
    if not os.path.exists(path):
        raise ValueError(f"Invalid `init_from`: {path!r} does not exist.")
    if not path.endswith(".keras"):
        raise ValueError(f"Invalid `init_from`: {path!r} is not a .keras model file or a run folder.")
    return path


class InitSource:
    """The model that `--init_from` names (a .keras file, or a run folder holding model.keras),
    checked and read on first use and only once: a run that sizes its detector from it and then
    copies its weights reads the file once.

    Attributes:
        path: the path as given, for messages.
    """

    def __init__(self, path):
        self.path = path
        self._model = None

    @property
    def file(self):
        """The `.keras` file (`model_file`)."""
        return model_file(self.path)

    @property
    def model(self):
        """The saved model, uncompiled."""
        if self._model is None:
            self._model = load_keras_file(self.file, name="init_from")
        return self._model


def init_source(init_from):
    """`init_from` as an `InitSource`: a path, an `InitSource` (returned as is), or None (also
    for an empty path: no source)."""
    if not init_from or isinstance(init_from, InitSource):
        return init_from or None
    return InitSource(init_from)


def load_source(path):
    """The model saved at `path` (a .keras file or a run folder), uncompiled."""
    return init_source(path).model


def initialize_from(model, source, method="linear", verbose=True):
    """Sets the weights of `model` from the model saved at `source`, matched by path.

    Args:
        model: the built model of the new run.
        source: a .keras model file, a run folder holding model.keras, or an `InitSource`.
        method: "linear" or "edge", how relative tables of a larger attention grid are filled
            (`aa_keras.layers.resample_relative_table`).
        verbose: print the table of loaded / resampled / initialised weights.

    Returns:
        The `aa_keras.applications.WeightTransfer`.

    Raises:
        ValueError: a bad path, a file that is not a Keras model, or another network: fewer
            than half of the weights of `model` are found in it (same path and shape, or a table).
    """
    source = init_source(source)
    transfer = transfer_weights(source.model, model, method)
    fitting = len(transfer.loaded) + len(transfer.resampled)
    if 2 * fitting < len(model.weights):
        raise ValueError(
            f"Invalid `init_from`: {source.model.name!r} ({source.file}) is another network than {model.name!r}: "
            f"only {fitting} of its {len(model.weights)} weights have a weight of the same path and shape "
            f"there. Start from a model of the same network (or, for a detector, its classifier backbone).\n{transfer}"
        )
    if verbose:
        print(f"{model.name}: initialised from {source.file} (tables: {method})\n{transfer}", flush=True)
    return transfer


def detector_attention(source):
    """The attention arguments of `aa_keras.applications.AARetinaNet` that give a detector the
    backbone layers of the model saved at `source` (a path or an `InitSource`): a detector's own,
    recorded in its backbone's config, or a classifier's (`backbone_attention`); {} for a model
    without attention layers."""
    source = init_source(source).model
    encoder = getattr(getattr(source, "backbone", None), "image_encoder", None)
    if isinstance(encoder, ResNetEncoder):
        return dict(encoder.attention)
    return backbone_attention(source) or {}
