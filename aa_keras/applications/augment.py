"""Attention augmentation of an existing Keras model.

`augment(model)` returns a copy of a functional or Sequential model (a `keras.applications`
network, or your own) in which selected `Conv2D` layers are `AttentionAugmentation2D` layers
with the same filters, kernel size, strides, padding, activation, initializers, regularizers
and constraints, under the same names; everything else (graph, names, other weights) is kept.
"""

import dataclasses
import logging

import keras

from aa_keras.layers import AttentionAugmentation2D
from aa_keras.validation import positive_int

PRESETS = ("paper", "all")

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LastStages:
    """Selects the `Conv2D` layers of the `num_stages` lowest-resolution stages of a model.

    A stage is the set of `Conv2D` layers of a model whose outputs have one spatial size
    (H_out * W_out); the selected layers are those of the `num_stages` smallest sizes whose
    kernel is `kernel_size` x `kernel_size` (any kernel when `kernel_size` is None). Convs on
    1x1 maps (squeeze-excitation gates, heads) are no stage: attention over a single position
    is the identity. `LastStages(3, 3)` is the paper's choice, the preset `select="paper"`.
    """

    num_stages: int = 3
    kernel_size: int | None = 3

    def __post_init__(self):
        positive_int("num_stages", self.num_stages)
        positive_int("kernel_size", self.kernel_size, optional=True)

    def select(self, convs):
        """The names of the selected layers among `convs`, a list of built `Conv2D` layers."""
        sizes = {}
        for conv in convs:
            shape = _output_shape(conv)
            if shape is None or None in shape[1:3]:
                raise ValueError(
                    f"{self!r} needs the spatial output size of every Conv2D; layer {conv.name!r} has "
                    f"output shape {shape}. Build the model with a fixed input_shape, or select "
                    "layers by name or predicate."
                )
            sizes[conv.name] = shape[1] * shape[2]
        last = sorted(set(sizes.values()) - {1})[: self.num_stages]
        return [
            conv.name
            for conv in convs
            if sizes[conv.name] in last
            and (self.kernel_size is None or conv.kernel_size == (self.kernel_size, self.kernel_size))
        ]


@dataclasses.dataclass(frozen=True)
class Replacement:
    """One `Conv2D` replaced by an `AttentionAugmentation2D` of the same name."""

    name: str
    input_shape: tuple
    output_shape: tuple
    kernel_size: tuple
    strides: tuple
    depth_k: int
    depth_v: int
    params_before: int
    params_after: int


@dataclasses.dataclass(frozen=True)
class AugmentSummary:
    """What `augment` did: the replaced layers, the skipped ones with the reason, and the
    parameter counts of the whole model before and after. `str()` gives a markdown table."""

    replaced: tuple
    skipped: tuple
    params_before: int
    params_after: int

    def __str__(self):
        lines = [
            "| layer | input | output | kernel | strides | dk | dv | params before | params after |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.replaced:
            lines.append(
                f"| {r.name} | {r.input_shape} | {r.output_shape} | {r.kernel_size} | {r.strides} | "
                f"{r.depth_k} | {r.depth_v} | {r.params_before:,} | {r.params_after:,} |"
            )
        lines.append(
            f"\n{len(self.replaced)} layers replaced, {len(self.skipped)} skipped; parameters "
            f"{self.params_before:,} -> {self.params_after:,} ({self.params_after - self.params_before:+,})."
        )
        lines.extend(f"skipped {name}: {reason}" for name, reason in self.skipped)
        return "\n".join(lines)


def is_functional(model):
    """Whether `model` is a functional `keras.Model` (one built from `keras.Input`s, keras-hub
    backbones included), not a `Sequential` or a subclassed one. Keras exports no class for it:
    a subclassed model has no `inputs`."""
    return isinstance(model, keras.Model) and not isinstance(model, keras.Sequential) and hasattr(model, "inputs")


def _output_shape(layer):
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return None


def _conv_layers(model):
    """Every `Conv2D` of `model`, including those of nested models, in graph order."""
    convs = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            convs.extend(_conv_layers(layer))
        elif isinstance(layer, keras.layers.Conv2D):
            convs.append(layer)
    return convs


def _augmented(conv, settings):
    """The `AttentionAugmentation2D` replacing `conv`, or the reason it cannot (a string)."""
    if conv.data_format != "channels_last":
        return f"data_format={conv.data_format!r}; AttentionAugmentation2D is channels_last only"
    if tuple(conv.dilation_rate) != (1, 1):
        return f"dilation_rate={tuple(conv.dilation_rate)}; only undilated convolutions can be augmented"
    if conv.groups != 1:
        return f"groups={conv.groups}; only ungrouped convolutions can be augmented"
    if len(conv._inbound_nodes) != 1:
        return f"it is called {len(conv._inbound_nodes)} times; only a conv called once can be replaced"
    input_shape = tuple(conv.input.shape)
    if None in input_shape[1:3]:
        return (
            f"its input shape {input_shape} has no fixed spatial size, which the relative embeddings "
            "need; build the model with a fixed input_shape"
        )
    try:
        return AttentionAugmentation2D(
            conv.filters,
            conv.kernel_size,
            strides=conv.strides,
            padding=conv.padding,
            activation=conv.activation,
            use_bias=conv.use_bias,
            kernel_initializer=conv.kernel_initializer,  # cloned per sub-layer by the layer
            bias_initializer=conv.bias_initializer,
            kernel_regularizer=conv.kernel_regularizer,
            bias_regularizer=conv.bias_regularizer,
            activity_regularizer=conv.activity_regularizer,
            kernel_constraint=conv.kernel_constraint,
            bias_constraint=conv.bias_constraint,
            dtype=conv.dtype_policy,
            trainable=conv.trainable,
            name=conv.name,
            **settings,
        )
    except ValueError as error:
        return str(error)


def _selected_names(model, convs, select):
    if isinstance(select, str):
        if select not in PRESETS:
            raise ValueError(
                f"Invalid `select`: unknown preset {select!r}; expected one of {PRESETS}, a list of "
                "layer names, a predicate `fn(layer) -> bool` or a `LastStages`."
            )
        return [c.name for c in convs] if select == "all" else LastStages(3, 3).select(convs)
    if isinstance(select, LastStages):
        return select.select(convs)
    if callable(select):
        return [c.name for c in convs if select(c)]
    if isinstance(select, (list, tuple, set)) and all(isinstance(n, str) for n in select):
        conv_names = {c.name for c in convs}
        others = {layer.name: type(layer).__name__ for layer in model.layers}
        wrong = [n for n in select if n not in conv_names]
        if wrong:
            described = ", ".join(
                f"{n!r} ({'a ' + others[n] + ', not a Conv2D' if n in others else 'no such layer'})" for n in wrong
            )
            raise ValueError(f"Invalid `select`: {described} in model {model.name!r}.")
        return [c.name for c in convs if c.name in select]
    raise ValueError(
        f"Invalid `select`: expected a preset in {PRESETS}, a list of layer names, a predicate "
        f"`fn(layer) -> bool` or a `LastStages`, received select={select!r}."
    )


def _transfer_weights(old_model, new_model, replaced):
    """Copies the weights of every untouched layer, and the first `filters - dv` filters of each
    replaced conv into the conv branch of its replacement."""
    new_layers = {layer.name: layer for layer in new_model.layers}
    for old in old_model.layers:
        if isinstance(old, keras.layers.InputLayer):
            continue  # renamed by the clone, and without weights
        new = new_layers[old.name]
        if isinstance(old, keras.Model):
            _transfer_weights(old, new, replaced)
        elif old.name in replaced:
            if new.conv is not None:
                keep = new.conv.filters
                new.conv.kernel.assign(old.kernel[..., :keep])
                if old.use_bias:
                    new.conv.bias.assign(old.bias[:keep])
        else:
            new.set_weights(old.get_weights())


def augment(
    model,
    select="paper",
    depth_k=0.2,
    depth_v=0.1,
    num_heads=8,
    position_encoding="relative",
    transfer_weights=True,
    skip_unfit=False,
    return_summary=False,
):
    """Replaces selected `Conv2D` layers of a model by `AttentionAugmentation2D` layers.

    Each replacement has the conv's filters, kernel size, strides, padding, activation,
    use_bias, initializers, regularizers, constraints, dtype policy and name, plus the
    attention settings below. The model is not modified; a new one is returned.

    A conv cannot be augmented when it is dilated, grouped, channels_first, shared (called more
    than once), has an input of unknown spatial size, or has too few filters for `depth_k` /
    `depth_v` and `num_heads`. Such a selected layer raises a `ValueError` naming it and the
    reason, or, with `skip_unfit=True`, is skipped with a log line (warning level) and listed in
    the summary: `select="all", skip_unfit=True` augments all convolutions that fit.

    Args:
        model: a built functional or `Sequential` Keras model, channels_last. Nested models
            are searched too.
        select: which `Conv2D` layers to replace: `"paper"` (default: the 3x3 convolutions of
            the three lowest-resolution stages, `LastStages(3, 3)`), `"all"`, a `LastStages`,
            a list of layer names, or a predicate `fn(layer) -> bool` called on every `Conv2D`.
        depth_k: key depth `dk` of every replacement: an int, or a float fraction of its
            filters (rounded to a multiple of `num_heads`).
        depth_v: value depth `dv` of every replacement, in the same form; the conv branch keeps
            `filters - dv` filters.
        num_heads: attention heads.
        position_encoding: one of `aa_keras.layers.POSITION_ENCODINGS`.
        transfer_weights: copy the weights of every untouched layer, and the first
            `filters - dv` filters (kernel and bias) of each replaced conv into the conv branch of
            its replacement, so a pretrained network can be fine-tuned with attention added; the
            attention projections start from their initializers. False: all weights are fresh.
        skip_unfit: skip (and log) selected layers that cannot be augmented instead of raising.
        return_summary: also return an `AugmentSummary` of the replaced layers (names, shapes,
            dk, dv, parameters) and of the skipped ones.

    Returns:
        The new model, of the same class and name, with the same inputs and outputs (shapes
        unchanged: each replacement returns the conv's (B, H_out, W_out, filters)); with
        `return_summary=True` the pair `(new_model, summary)`.

    Raises:
        ValueError: `model` is not a built functional or `Sequential` model, `select` is not one
            of the forms above or names no `Conv2D`, nothing was selected, or a selected layer
            cannot be augmented (without `skip_unfit`; with it, when none
            can); the message names the layer and why.

    Example:
        ```python
        import keras
        from aa_keras.applications import augment

        base = keras.applications.ResNet50(weights=None)   # or weights="imagenet"
        model, summary = augment(base, return_summary=True)
        print(summary)   # the replaced layers, their shapes and the parameter change
        model, _ = augment(base, select="all", skip_unfit=True, return_summary=True)
        ```
    """
    if not (isinstance(model, keras.Sequential) or is_functional(model)):
        raise ValueError(
            "Invalid `model`: expected a functional or Sequential keras.Model, received "
            f"{type(model).__name__}; subclassed models have no graph to rewrite."
        )
    if not model.built:
        raise ValueError(
            f"Invalid `model`: {model.name!r} is not built; give it an input shape (keras.Input) first."
        )
    convs = _conv_layers(model)
    names = _selected_names(model, convs, select)
    if not names:
        raise ValueError(
            f"`select`={select!r} matched no Conv2D layer of model {model.name!r} "
            f"({len(convs)} Conv2D layers); pass layer names, a predicate or another preset."
        )

    settings = dict(depth_k=depth_k, depth_v=depth_v, num_heads=num_heads, position_encoding=position_encoding)
    by_name = {conv.name: conv for conv in convs}
    replacements, skipped = {}, []
    for name in names:
        result = _augmented(by_name[name], settings)
        if isinstance(result, str):
            skipped.append((name, result))
        else:
            replacements[name] = result
    if skipped and (not skip_unfit or not replacements):
        reasons = "; ".join(f"{name!r}: {reason}" for name, reason in skipped)
        raise ValueError(
            f"Cannot augment {len(skipped)} of the {len(names)} selected layer(s) of model "
            f"{model.name!r}: {reasons}. Select other layers, change depth_k / depth_v / num_heads"
            f"{'' if skip_unfit else ', or pass skip_unfit=True to skip them'}."
        )
    for name, reason in skipped:
        _logger.warning("augment: skipping layer %r: %s", name, reason)

    def clone_layer(layer):
        if layer.name in replacements and isinstance(layer, keras.layers.Conv2D):
            return replacements[layer.name]
        return layer.__class__.from_config(layer.get_config())

    new_model = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    if transfer_weights:
        _transfer_weights(model, new_model, replacements)

    replaced = tuple(
        Replacement(
            name=name,
            input_shape=tuple(by_name[name].input.shape),
            output_shape=tuple(by_name[name].output.shape),
            kernel_size=tuple(layer.kernel_size),
            strides=tuple(layer.strides),
            depth_k=layer.dk,
            depth_v=layer.dv,
            params_before=by_name[name].count_params(),
            params_after=layer.count_params(),
        )
        for name, layer in replacements.items()
    )
    summary = AugmentSummary(replaced, tuple(skipped), model.count_params(), new_model.count_params())
    return (new_model, summary) if return_summary else new_model
