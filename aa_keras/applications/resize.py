"""Models at another input size.

`resize_model(model, input_shape)` rebuilds a functional or Sequential model holding
`AttentionAugmentation2D` layers (the paper's networks, an `augment()`ed `keras.applications`
model, your own) for a new input size: every weight is carried over, and each layer's relative
tables are resampled for its new attention grid with `aa_keras.layers.resample_relative_table`.

`transfer_weights(source, target)` is the piece underneath: it copies the weights of one model
into another built at another size (or with another head) by weight path ("layer/weight",
e.g. "conv3_block1_1_conv/rel_height"), resampling relative tables, and reports what it
loaded, resampled and left to the target's initializers. The paths of a classifier built here
and of the backbone of a detector built here are the same, which is how an ImageNet-style
classifier gives its weights to `build_detector` (the trainer's `--init_from`).
"""

import dataclasses
from typing import Optional

import keras

from aa_keras.applications.augment import is_functional
from aa_keras.applications.batch_norm import RecalibrationSummary, recalibrate_batch_norm
from aa_keras.layers import AttentionAugmentation2D, attention_layers, resample_relative_table
from aa_keras.layers.relative_tables import RESAMPLE_METHODS
from aa_keras.validation import is_int


@dataclasses.dataclass(frozen=True)
class WeightTransfer:
    """What `transfer_weights` did, by weight path.

    Attributes:
        loaded: paths copied as they were.
        resampled: (path, source shape, target shape) of the relative tables resampled.
        initialised: (path, reason) of the target's weights left to their initializers: not in
            the source, or of another shape (a head with other classes).
        unused: paths of source weights that no target weight took.
    """

    loaded: tuple
    resampled: tuple
    initialised: tuple
    unused: tuple

    def __str__(self):
        lines = [
            f"{'weights':<13}{'count':>7}  examples",
            f"{'loaded':<13}{len(self.loaded):>7}  {_examples(self.loaded)}",
            f"{'resampled':<13}{len(self.resampled):>7}  "
            + _examples([f"{p} {tuple(a)}->{tuple(b)}" for p, a, b in self.resampled]),
            f"{'initialised':<13}{len(self.initialised):>7}  " + _examples([f"{p} ({r})" for p, r in self.initialised]),
            f"{'unused':<13}{len(self.unused):>7}  {_examples(self.unused)}",
        ]
        return "\n".join(lines)


def _examples(items, shown=3):
    items = list(items)
    more = f", ... (+{len(items) - shown})" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


@dataclasses.dataclass(frozen=True)
class GridChange:
    """One `AttentionAugmentation2D` of a resized model: its attention grid before and after
    ((H, W); None where the layer takes any size), and how its tables were obtained ("same",
    "central rows", "linear" or "edge"; "no tables" without relative encoding)."""

    layer: str
    old_grid: tuple
    new_grid: tuple
    tables: str


@dataclasses.dataclass(frozen=True)
class ResizeSummary:
    """What `resize_model` did. `str()` gives a markdown table."""

    old_input_shape: tuple
    new_input_shape: tuple
    method: str
    layers: tuple
    batch_norm: Optional[RecalibrationSummary] = None

    def __str__(self):
        lines = ["| layer | old grid | new grid | tables |", "|---|---|---|---|"]
        lines += [f"| {c.layer} | {c.old_grid} | {c.new_grid} | {c.tables} |" for c in self.layers]
        lines.append(
            f"\ninput {self.old_input_shape} -> {self.new_input_shape}; {len(self.layers)} attention layers, "
            f"method={self.method!r}."
        )
        if self.batch_norm is not None:
            lines.append(str(self.batch_norm))
        return "\n".join(lines)


def _check_method(method):
    if method not in RESAMPLE_METHODS:
        raise ValueError(f"Invalid `method`: received method={method!r}, expected one of {RESAMPLE_METHODS}.")


def _weights_by_path(model, role):
    weights = {}
    for variable in model.weights:
        if variable.path in weights:
            raise ValueError(
                f"Invalid `{role}`: model {model.name!r} has two weights with the path {variable.path!r}; "
                "weights are matched by path, so layer names must be unique."
            )
        weights[variable.path] = variable
    return weights


def transfer_weights(source, target, method="linear"):
    """Copies the weights of `source` into `target`, matched by path ("layer/weight").

    A weight of the same shape is copied. A relative table of an `AttentionAugmentation2D` of
    `target` whose source has another number of rows is resampled for the target's grid
    (`resample_relative_table` with `method`). Any other target weight (no source weight of
    that path, or one of another shape) keeps its initial value and is reported.

    Args:
        source: a built `keras.Model` to take weights from.
        target: a built `keras.Model` to write into.
        method: "linear" or "edge", for tables of a larger grid.

    Returns:
        A `WeightTransfer`.
    """
    _check_method(method)
    for role, model in (("source", source), ("target", target)):
        if not isinstance(model, keras.Model) or not model.built:
            raise ValueError(f"Invalid `{role}`: expected a built keras.Model, received {model!r}.")
    sources = _weights_by_path(source, "source")
    targets = _weights_by_path(target, "target")
    tables = {
        table.path
        for layer in attention_layers(target)
        if layer.rel_height is not None
        for table in (layer.rel_height, layer.rel_width)
    }
    loaded, resampled, initialised = [], [], []
    for path, variable in targets.items():
        value = sources.get(path)
        if value is None:
            initialised.append((path, "not in the source"))
        elif tuple(value.shape) == tuple(variable.shape):
            variable.assign(value)
            loaded.append(path)
        elif path in tables and tuple(value.shape[1:]) == tuple(variable.shape[1:]):
            rows = resample_relative_table(keras.ops.convert_to_numpy(value), (variable.shape[0] + 1) // 2, method)
            variable.assign(rows)
            resampled.append((path, tuple(value.shape), tuple(variable.shape)))
        else:
            initialised.append((path, f"shape {tuple(value.shape)} in the source, {tuple(variable.shape)} here"))
    unused = tuple(path for path in sources if path not in targets)
    return WeightTransfer(tuple(loaded), tuple(resampled), tuple(initialised), unused)


def _check_arguments(model, input_shape):
    if not (isinstance(model, keras.Sequential) or is_functional(model)):
        raise ValueError(
            "Invalid `model`: expected a functional or Sequential keras.Model, received "
            f"{type(model).__name__}; subclassed models have no graph to rebuild."
        )
    if not model.built or len(model.inputs or ()) != 1:
        raise ValueError(
            f"Invalid `model`: {model.name!r} must be built (from a keras.Input) with exactly one input."
        )
    old_shape = tuple(model.inputs[0].shape[1:])
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    valid = len(shape) == 3 and all(is_int(d) and d > 0 for d in shape)
    if not valid or len(old_shape) != 3 or shape[2] != old_shape[2]:
        raise ValueError(
            f"Invalid `input_shape`: expected (height, width, {old_shape[-1]}) with positive ints, as the "
            f"model's input {old_shape}, received input_shape={input_shape!r}."
        )
    return old_shape, shape


def _rebuild(model, inputs, max_sizes):
    """`model` cloned onto `inputs`, attention layers with `max_size` given `max_sizes[name]`.
    A functional or Sequential model nested in a functional one is rebuilt, the same way, onto
    the inputs it gets in the new graph (once, if it is called more than once)."""
    if isinstance(model, keras.Sequential):
        nested = [f"{layer.name} in {outer.name}" for outer in model.layers if isinstance(outer, keras.Model)
                  for layer in attention_layers(outer)]  # fmt: skip
        if nested:
            raise ValueError(
                f"Invalid `model`: {nested[:3]} sit in nested models of the Sequential model {model.name!r}, which "
                "resize_model cannot rebuild at another size (it rebuilds models nested in functional ones); build "
                "it as a functional model, keras.Model(inputs, outputs), or use `transfer_weights` into a model built "
                "at the new size."
            )
    in_graph = is_functional(model)
    rebuilt = {}

    def clone_layer(layer):
        if in_graph and (is_functional(layer) or isinstance(layer, keras.Sequential)):
            return layer  # rebuilt by call_layer, which sees its new inputs
        config = layer.get_config()
        if isinstance(layer, AttentionAugmentation2D) and layer.max_size is not None:
            config["max_size"] = max_sizes.get(layer.name)
        return layer.__class__.from_config(config)

    def call_layer(layer, *args, **kwargs):
        if is_functional(layer) or isinstance(layer, keras.Sequential):
            if id(layer) not in rebuilt:
                like = keras.tree.map_structure(lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype), args[0])
                rebuilt[id(layer)] = _rebuild(layer, like, max_sizes)
            layer = rebuilt[id(layer)]
        return layer(*args, **kwargs)

    if not in_graph:  # a Sequential: clone_model takes no call_function
        return keras.models.clone_model(model, input_tensors=inputs, clone_function=clone_layer)
    return keras.models.clone_model(model, input_tensors=inputs, clone_function=clone_layer, call_function=call_layer)


def _grid(layer):
    if layer.rel_height is not None:
        return ((layer.rel_height.shape[0] + 1) // 2, (layer.rel_width.shape[0] + 1) // 2)
    return layer._attention_size(*layer.input.shape[1:3])


def resize_model(
    model, input_shape, method="linear", batch_norm_data=None, batch_norm_steps=None, return_summary=False
):
    """Rebuilds a model with `AttentionAugmentation2D` layers for another input size.

    The new model has the same graph, layer names and weights; the relative tables of each
    attention layer are resampled for its attention grid at the new size (which depends on its
    strides, padding and `downsample_attention`): the central rows for a smaller grid (exact),
    `method` for a larger one. A layer built with `max_size` gets the size of its input at
    `input_shape`; if the model's input has no fixed spatial size it keeps none. Other layers
    must accept the new size (a `Flatten` before a `Dense` does not).

    Args:
        model: a built functional or `Sequential` model with one (B, H, W, C) input; its
            attention layers in its graph or in functional or `Sequential` models nested in a
            functional model, any depth (a `keras_classifier` model's "backbone").
        input_shape: (H, W, C), the new size, C as before.
        method: "linear" (content scaled with the image) or "edge" (same content scale on a
            larger canvas), see `aa_keras.layers.resample_relative_table`.
        batch_norm_data: images at the new size (batches, as `recalibrate_batch_norm` takes
            them) over which the new model's BatchNormalization statistics are re-estimated: the
            statistics gathered at the old size are off at another (the convolutions see other
            content scales, the pooling more positions). None keeps them.
        batch_norm_steps: at most this many batches of `batch_norm_data`; None for all.
        return_summary: also return a `ResizeSummary` listing each attention layer with its old
            and new grid (and, with `batch_norm_data`, the `RecalibrationSummary`).

    Returns:
        The new model, of the same class and name, taking (B, H, W, C) images of `input_shape`;
        with `return_summary=True` the pair `(new_model, summary)`.

    Raises:
        ValueError: an unknown `method`, an `input_shape` that is not (H, W, C) with the model's
            C, a model that is not a built functional or `Sequential` model with one image input,
            attention layers in models nested in a `Sequential` one, or a weight that cannot be
            carried over. A layer that refuses the new size raises its own error.

    Example:
        ```python
        from aa_keras.applications import resize_model

        model_64, summary = resize_model(model_32, (64, 64, 3), return_summary=True)
        print(summary)   # each attention layer: old grid, new grid, how its tables were obtained
        # Also re-estimate BatchNormalization's statistics at the new size:
        model_64 = resize_model(model_32, (64, 64, 3), batch_norm_data=images_64.batch(128))
        ```
    """
    _check_method(method)
    old_shape, shape = _check_arguments(model, input_shape)
    dtype = model.inputs[0].dtype
    max_sizes = {}
    if any(layer.max_size is not None for layer in attention_layers(model)):
        # A first rebuild at the fixed size tells each layer's input size.
        probe = _rebuild(model, keras.Input(shape, dtype=dtype), {})
        max_sizes = {layer.name: tuple(layer.input.shape[1:3]) for layer in attention_layers(probe)}
    new_shape = (*(s if o is not None else None for s, o in zip(shape[:2], old_shape[:2])), shape[2])
    new_model = _rebuild(model, keras.Input(new_shape, dtype=dtype), max_sizes)
    transfer = transfer_weights(model, new_model, method)
    if transfer.initialised or transfer.unused:
        raise ValueError(
            f"Cannot carry every weight of {model.name!r} over to input_shape={shape}:\n{transfer}"
        )
    changes = []
    new_layers = {layer.name: layer for layer in attention_layers(new_model)}
    for old in attention_layers(model):
        new = new_layers[old.name]
        before, after = _grid(old), _grid(new)
        if old.rel_height is None:
            tables = "no tables"
        elif before == after:
            tables = "same"
        elif all(a <= b for a, b in zip(after, before)):
            tables = "central rows"
        else:
            tables = method
        changes.append(GridChange(old.name, before, after, tables))
    batch_norm = None
    if batch_norm_data is not None:
        batch_norm = recalibrate_batch_norm(new_model, batch_norm_data, steps=batch_norm_steps)
    summary = ResizeSummary(old_shape, new_shape, method, tuple(changes), batch_norm)
    return (new_model, summary) if return_summary else new_model
