"""The attention-augmented convolution (Bello et al., ICCV 2019).

TensorFlow, its attention path (`attention.py`) and the fused kernel (`aa_keras.ops`) are
imported inside the methods that run on the TensorFlow backend only, so that the layer imports
and runs without TensorFlow on the other backends.
"""

import contextlib
import math

import keras
import numpy as np
from keras import ops

from aa_keras.layers import attention_ops
from aa_keras.layers import position_encoding as pe
from aa_keras.layers.query_blocks import auto_query_block_size
from aa_keras.validation import is_int, positive_int, positive_pair

POSITION_ENCODINGS = ("relative", "none", "sine", "coordconv")
ATTENTION_IMPLEMENTATIONS = ("auto", "fused", "tf_ops")
# `return_attention_scores` holds Nh * (H * W)**2 float32 weights per example: at most this many
# (64 MiB), the size above which the TensorFlow-op path computes attention in query blocks.
MAX_ATTENTION_SCORES = 2**24


def _resolve_depth(name, value, filters, num_heads):
    """`depth_k` / `depth_v` as an int: an int as given, a float as a fraction of `filters`
    rounded to the nearest multiple of `num_heads`."""
    if not is_int(value) and not isinstance(value, float):
        raise ValueError(
            f"Invalid `{name}`: expected an int or a float fraction of filters, received {name}={value!r}."
        )
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise ValueError(
                f"Invalid `{name}`: a fraction of filters must be in (0, 1], received {name}={value!r}."
            )
        # Rounded half up: 0.2 * 20 filters with 8 heads gives 8, not 0.
        depth = math.floor(value * filters / num_heads + 0.5) * num_heads
    else:
        depth = int(value)
    if depth < num_heads:
        raise ValueError(
            f"Invalid `{name}`: {name}={value!r} gives {depth} channels for num_heads={num_heads}, "
            f"fewer than one channel per head; use at least {num_heads} channels."
        )
    if depth % num_heads:
        raise ValueError(
            f"Invalid `{name}`: {name}={value!r} is not divisible by num_heads={num_heads}; "
            f"use a multiple of {num_heads}."
        )
    return depth


def _conv_output_length(length, kernel, stride, padding):
    if length is None:
        return None
    if padding == "same":
        return -(-length // stride)
    return (length - kernel) // stride + 1


def same_padding(length, window, stride):
    """(before, after): the zeros that a 'same' pool or convolution of `window` and `stride`
    pads along an axis of `length`, as TensorFlow pads them (the odd one after)."""
    total = max((-(-length // stride) - 1) * stride + window - length, 0)
    return total // 2, total - total // 2


def _on_tensorflow():
    return keras.backend.backend() == "tensorflow"


def _average_pool_same(x, pool_size, strides):
    """`ops.average_pool(x, pool_size, strides, "same")` of a (B, H, W, C) x: each window's mean
    over its positions inside x, as TensorFlow and JAX compute it. Keras 3.15's torch backend
    pads an uneven "same" window with copies of the edge values, which enter the mean (fixed in
    keras-team/keras#23233): there the windows are summed over zero padding and divided by their
    counts instead."""
    if keras.backend.backend() != "torch":
        return ops.average_pool(x, pool_size, strides, "same", "channels_last")
    pads = [(0, 0)]
    for length, pool, stride in zip(ops.shape(x)[1:3], pool_size, strides):
        pads.append(same_padding(length, pool, stride))
    pads.append((0, 0))
    sums = ops.average_pool(ops.pad(x, pads), pool_size, strides, "valid", "channels_last")
    inside = ops.pad(ops.ones((1, *ops.shape(x)[1:3], 1), x.dtype), pads)
    return sums / ops.average_pool(inside, pool_size, strides, "valid", "channels_last")


def _clone_initializer(initializer):
    """A fresh copy, so that sub-layers sharing one initializer do not get identical weights."""
    return initializer.__class__.from_config(initializer.get_config())


@keras.saving.register_keras_serializable(package="aa_keras")
class AttentionAugmentation2D(keras.layers.Layer):
    """Attention-augmented 2D convolution (Bello et al., "Attention Augmented Convolutional
    Networks", ICCV 2019).

    The output concatenates, along channels, a convolution with `filters - depth_v` filters and
    a multi-head self-attention over all spatial positions with `depth_v` channels:

        output = activation(concat([conv(x), attn_out(MHA(x))], axis=-1))

    One 1x1 projection `qkv` gives the channels [q | k | v]; each is split into `num_heads`
    contiguous heads; q is scaled by (depth_k / num_heads) ** -0.5; the logits of query i and
    key j are q_i . k_j plus, with `position_encoding="relative"`, the 2D relative logits
    q_i . rel_width[wj - wi + W - 1] + q_i . rel_height[hj - hi + H - 1] (computed as two
    1D terms added by broadcast); the softmax (in float32, also under mixed precision; in
    float64 for a float64 layer) weights v; the heads, concatenated head-major, are mixed by a
    1x1 projection `attn_out`. On TensorFlow, `attention_implementation` chooses how the
    attention runs: on the fused CPU kernel of `aa_keras.ops.fused_attention` or on standard
    TensorFlow ops (`aa_keras.layers.attention`). On other backends (JAX, PyTorch) it runs on
    `keras.ops` (`aa_keras.layers.attention_ops`). All compute the same function.

    With `strides > 1` (or `padding="valid"`) the attention branch runs on the input
    average-pooled to the convolution's output size: pool `strides` with padding "same", or pool
    `kernel_size` with stride `strides` and padding "valid". With `downsample_attention=True`
    attention runs on that map further average-pooled 3x3 / stride 2 and its output is
    resized back bilinearly (the paper's lever for its largest layers; TensorFlow's bilinear
    resize computes in float32, also for a float64 layer).

    Args:
        filters: int, output channels, `F_out`.
        kernel_size: int or pair, the convolution's kernel size.
        strides: int or pair, the convolution's strides.
        depth_k: int, or float fraction of `filters` rounded to a multiple of `num_heads`:
            the total key (and query) depth `dk`.
        depth_v: same form, the total value depth `dv`, at most `filters`. `depth_v == filters`
            makes the layer fully attentional (no convolution branch).
        num_heads: int, `Nh`; `dk` and `dv` must be multiples of it.
        position_encoding: `"relative"` (the paper's), `"none"`, `"sine"` (2D sinusoidal
            encoding concatenated to the attention input) or `"coordconv"` (normalised (y, x)
            coordinates concatenated).
        padding: `"same"` or `"valid"`, of the convolution.
        activation: applied to the concatenated output; None for linear.
        use_bias: whether the `conv`, `qkv` and `attn_out` projections have biases.
        kernel_initializer: as in `keras.layers.Conv2D`, for the `conv`, `qkv` and `attn_out`
            kernels.
        bias_initializer: likewise, for their biases.
        kernel_regularizer: likewise, for their kernels.
        bias_regularizer: likewise, for their biases.
        kernel_constraint: likewise, for their kernels.
        bias_constraint: likewise, for their biases.
        max_size: (H, W) input size the relative embeddings are built for when the input's
            spatial dims are None. Any input up to the built size works exactly; larger ones
            need resampled tables (`aa_keras.applications.resize_model`). The other position
            encodings have no tables and take any size.
        query_block_size: queries per block of the memory-bounded TensorFlow-op and `keras.ops`
            attention paths; None picks it from the size (unblocked below 2^24 logits per
            example; unblocked, the `keras.ops` path holds B * Nh * (H * W)**2 weights for the
            backward pass). The fused kernel ignores it.
        downsample_attention: bool, run attention at half resolution (see above).
        attention_implementation: how the attention runs, the one switch (per layer; for a whole
            model, `use_attention_implementation`). `"auto"`: on TensorFlow the fused kernel
            where it can run at trace time (a CPU, no XLA, the kernel built:
            `aa_keras.ops.fused_attention.applies()`), else TensorFlow ops, always TensorFlow ops
            for a float64 layer; on another backend the `keras.ops` path. `"fused"`: the fused
            kernel, float32 only, an error where it cannot run. `"tf_ops"`: standard TensorFlow
            ops only, as the exporters trace. Read when a call is traced. On a backend other than
            TensorFlow only `"auto"` is valid; the others raise a ValueError.
        data_format: only `"channels_last"` (or None with that global setting).
        dropout: float in [0, 1), the rate at which attention weights (the softmax output, before
            the product with v) are dropped in training calls, as in
            `keras.layers.MultiHeadAttention`; 0 (the default, the paper's) adds nothing.
            Inference calls never drop. The fused kernel never stores the weights and cannot drop
            them: a training call with dropout runs on TensorFlow ops (also with "auto"; inference
            calls keep the fused kernel), unblocked whatever `query_block_size` says (the weights
            and the dropout mask, B * Nh * (H * W)**2 values each, kept for the backward pass),
            and `attention_implementation="fused"` with dropout is a ValueError. On the other
            backends the `keras.ops` path drops, likewise unblocked in training.
        seed: int or None, the seed of the dropout (a `keras.random.SeedGenerator` held by the
            layer, created only with dropout > 0).

    Call arguments:
        - `inputs`: (B, H, W, C) tensor.
        - `return_attention_scores`: bool, also return the attention weights (as
          `keras.layers.MultiHeadAttention` does: the softmax before dropout, while the output
          is computed from the dropped weights in a training call). The attention then runs
          unblocked (on TensorFlow, on the TensorFlow-op path whatever
          `attention_implementation` says), for grids of at most `MAX_ATTENTION_SCORES` (2**24)
          weights per example; `aa_keras.visualize.attention_maps` gives chosen rows of larger
          ones.
        - `training`: bool or None; dropout applies only when True.

    Returns:
        (B, H_out, W_out, filters) tensor, the convolution's channels first; with
        `return_attention_scores`, the tuple (outputs, scores), scores the (B, Nh, Ha, Wa, Ha, Wa)
        softmax weights (float32, float64 for a float64 layer) over the (Ha, Wa) attention grid,
        query position first. An empty batch (B = 0) gives empty outputs and zero gradients.

    Raises:
        ValueError: at construction, an invalid argument (the message names it and what it
            accepts): depths that are not multiples of `num_heads` or exceed `filters`, an
            unknown `position_encoding`, `attention_implementation` or `padding`,
            `"channels_first"`, `"fused"` with dropout, with a float64 dtype or on a backend other
            than TensorFlow; at build, an input that is not (B, H, W, C) with a known C, an input
            of unknown spatial size with relative position encoding and no `max_size`, or an
            input larger than `max_size`.
        RuntimeError: `attention_implementation="fused"` traced where the kernel cannot run (a
            GPU or TPU, XLA, a kernel that did not compile); the message says which.

    Example:
        ```python
        import keras
        from aa_keras.layers import AttentionAugmentation2D

        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(inputs)
        # 128 channels: 104 from a 3x3 convolution, 24 from 8-head self-attention.
        x = AttentionAugmentation2D(128, 3, depth_k=0.2, depth_v=0.2, num_heads=8)(x)
        outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
        model = keras.Model(inputs, outputs)
        ```
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        depth_k=0.2,
        depth_v=0.2,
        num_heads=8,
        position_encoding="relative",
        padding="same",
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        max_size=None,
        query_block_size=None,
        downsample_attention=False,
        attention_implementation="auto",
        data_format=None,
        dropout=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters = positive_int("filters", filters)
        self.num_heads = num_heads = positive_int("num_heads", num_heads)
        self.kernel_size = positive_pair("kernel_size", kernel_size)
        self.strides = positive_pair("strides", strides)
        self.depth_k = depth_k
        self.depth_v = depth_v
        self.dk = _resolve_depth("depth_k", depth_k, filters, num_heads)
        self.dv = _resolve_depth("depth_v", depth_v, filters, num_heads)
        if self.dv > filters:
            raise ValueError(
                f"Invalid `depth_v`: depth_v={depth_v!r} gives {self.dv} value channels, more than "
                f"filters={filters}; use at most {filters} (== filters is fully attentional)."
            )
        if position_encoding not in POSITION_ENCODINGS:
            raise ValueError(
                f"Invalid `position_encoding`: received {position_encoding!r}, expected one of "
                f"{POSITION_ENCODINGS}."
            )
        self.position_encoding = position_encoding
        padding = padding.lower() if isinstance(padding, str) else padding
        if padding not in ("same", "valid"):
            raise ValueError(f"Invalid `padding`: received {padding!r}, expected 'same' or 'valid'.")
        self.padding = padding
        data_format = data_format or keras.config.image_data_format()
        if data_format != "channels_last":
            raise ValueError(
                f"Invalid `data_format`: received {data_format!r}; AttentionAugmentation2D supports "
                "only 'channels_last' (B, H, W, C) inputs."
            )
        self.max_size = None if max_size is None else positive_pair("max_size", max_size)
        if query_block_size is not None:
            query_block_size = positive_int("query_block_size", query_block_size)
        self.query_block_size = query_block_size
        self.downsample_attention = bool(downsample_attention)
        if attention_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"Invalid `attention_implementation`: received {attention_implementation!r}, expected one "
                f"of {ATTENTION_IMPLEMENTATIONS}."
            )
        self.attention_implementation = attention_implementation
        self._check_backend_implementation()
        self._check_fused_dtype()
        if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, (int, float, np.integer, np.floating)):
            raise ValueError(f"Invalid `dropout`: expected a float in [0, 1), received dropout={dropout!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"Invalid `dropout`: the rate of dropped attention weights must be in [0, 1), "
                f"received dropout={dropout!r}."
            )
        self.dropout = float(dropout)
        if seed is not None and not is_int(seed):
            raise ValueError(f"Invalid `seed`: expected an int or None, received seed={seed!r}.")
        self.seed = None if seed is None else int(seed)
        self._check_fused_dropout()
        if self.dropout > 0:
            # As keras.layers.Dropout: the generator (a non-trainable state variable) only with dropout.
            self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.activation = keras.activations.get(activation)
        if not isinstance(use_bias, (bool, np.bool_)):
            raise ValueError(f"Invalid `use_bias`: expected True or False, received use_bias={use_bias!r}.")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.dkh = self.dk // num_heads
        self.dvh = self.dv // num_heads
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def _projection(self, name, filters, kernel_size, strides=1, padding="same"):
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format="channels_last",
            use_bias=self.use_bias,
            kernel_initializer=_clone_initializer(self.kernel_initializer),
            bias_initializer=_clone_initializer(self.bias_initializer),
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            kernel_constraint=self.kernel_constraint,
            bias_constraint=self.bias_constraint,
            dtype=self.dtype_policy,
            name=name,
        )

    def _attention_size(self, height, width):
        """Spatial size of the attention grid for an input of (height, width)."""
        sizes = []
        for length, kernel, stride in zip((height, width), self.kernel_size, self.strides):
            length = _conv_output_length(length, kernel, stride, self.padding)
            if self.downsample_attention and length is not None:
                length = -(-length // 2)
            sizes.append(length)
        return tuple(sizes)

    def _encoding_channels(self):
        if self.position_encoding == "sine":
            return pe.sine_encoding_channels(self.dk)
        if self.position_encoding == "coordconv":
            return 2
        return 0

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"AttentionAugmentation2D expects a rank-4 (B, H, W, C) input, received shape {input_shape}."
            )
        height, width, channels = input_shape[1:]
        if channels is None:
            raise ValueError(f"The channel dimension of the input must be known, received shape {input_shape}.")
        if self.max_size is not None:
            if (height is not None and height > self.max_size[0]) or (width is not None and width > self.max_size[1]):
                raise ValueError(
                    f"Input spatial size {(height, width)} exceeds max_size={self.max_size}; "
                    "raise max_size to at least the input size."
                )
            height, width = self.max_size
        relative = self.position_encoding == "relative"
        if relative and (height is None or width is None):
            raise ValueError(
                f"AttentionAugmentation2D needs the input's spatial size to build its relative "
                f"embeddings, received shape {input_shape}; pass max_size=(H, W) for inputs of "
                "unknown or varying size."
            )
        # Only relative tables bound the input size; the other encodings take any size.
        self.built_size = (height, width) if relative else (None, None)
        attn_h, attn_w = self._attention_size(height, width)
        if any(size is not None and size <= 0 for size in (attn_h, attn_w)):
            raise ValueError(
                f"Input spatial size {(height, width)} is smaller than kernel_size={self.kernel_size} "
                "with padding='valid'."
            )
        self.conv = None
        if self.dv < self.filters:
            self.conv = self._projection(
                "conv", self.filters - self.dv, self.kernel_size, self.strides, self.padding
            )
            self.conv.build(input_shape)
        self.qkv = self._projection("qkv", 2 * self.dk + self.dv, 1)
        self.qkv.build((None, None, None, channels + self._encoding_channels()))
        self.attn_out = self._projection("attn_out", self.dv, 1)
        self.attn_out.build((None, None, None, self.dv))
        self.rel_height = self.rel_width = None
        if relative:
            rel_init = keras.initializers.RandomNormal(stddev=self.dkh**-0.5)
            self.rel_height = self.add_weight(
                name="rel_height", shape=(2 * attn_h - 1, self.dkh), initializer=rel_init, autocast=False
            )
            self.rel_width = self.add_weight(
                name="rel_width",
                shape=(2 * attn_w - 1, self.dkh),
                initializer=_clone_initializer(rel_init),
                autocast=False,
            )

    def _check_spatial_size(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        too_large = [
            (name, size, limit)
            for name, size, limit in zip(("height", "width"), (height, width), self.built_size)
            if size is not None and limit is not None and size > limit
        ]
        if too_large:
            name, size, limit = too_large[0]
            raise ValueError(
                f"Input {name} {size} exceeds the {name} {limit} this AttentionAugmentation2D was "
                f"built for (input shape {tuple(inputs.shape)}); build it with max_size >= the "
                "largest input size."
            )

    def _convolve(self, projection, x):
        """projection(x) for one of the `conv`, `qkv`, `attn_out` sub-layers, also for an empty batch.

        On TensorFlow only: its oneDNN CPU convolution (TF 2.20; on by default, off with
        `TF_ENABLE_ONEDNN_OPTS=0`) returns a tensor shaped like its input, not its output, when the
        batch is empty. A batch that may be empty is therefore padded with one example of zeros
        when it is empty, and the convolution's output cut back to the batch: no output, and zero
        gradients from the padding. For a non-empty batch the pad and the slice add nothing and
        forward their input without a copy; a batch known statically to be non-empty (as in
        TFLite exports) is convolved as is.

        Args:
            projection: a `keras.layers.Conv2D` of this layer.
            x: (B, H, W, C) input of it.

        Returns:
            (B, H', W', F) its output.
        """
        batch = ops.shape(x)[0]
        if not _on_tensorflow() or (isinstance(batch, int) and batch > 0):
            return projection(x)
        import tensorflow as tf

        padding = 1 if isinstance(batch, int) else tf.cast(tf.equal(batch, 0), tf.int32)
        # The reshape restores the static (H, W, C), which a pad by a run-time amount loses.
        padded = tf.reshape(tf.pad(x, [[0, padding], [0, 0], [0, 0], [0, 0]]), [-1, *ops.shape(x)[1:]])
        outputs = projection(padded)
        return tf.slice(outputs, [0, 0, 0, 0], [batch, *ops.shape(outputs)[1:]])

    def _pool_to_output_size(self, inputs):
        """The input average-pooled to the convolution's output size (see the class docstring)."""
        if self.padding == "same" and self.strides != (1, 1):
            return _average_pool_same(inputs, self.strides, self.strides)
        if self.padding == "valid" and (self.kernel_size != (1, 1) or self.strides != (1, 1)):
            return ops.average_pool(inputs, self.kernel_size, self.strides, "valid", "channels_last")
        return inputs

    @staticmethod
    def _resize_bilinear(x, size):
        """(B, H, W, C) x resized bilinearly to `size`, in float32 on TensorFlow."""
        if _on_tensorflow():  # `size` may hold scalar tensors, which keras.ops.image.resize refuses
            import tensorflow as tf

            return tf.image.resize(x, size, "bilinear")
        return ops.image.resize(x, size, "bilinear", data_format="channels_last")

    def _add_position_encoding(self, x):
        if self.position_encoding not in ("sine", "coordconv"):
            return x
        batch, height, width, _ = ops.shape(x)
        if self.position_encoding == "sine":
            encoding = pe.sine_encoding(height, width, self._encoding_channels(), self._attention_dtype)
        else:
            encoding = pe.coordconv_encoding(height, width, self._attention_dtype)
        encoding = ops.broadcast_to(ops.cast(encoding, x.dtype), [batch, height, width, encoding.shape[-1]])
        return ops.concatenate([x, encoding], axis=-1)

    def _split_heads(self, x, depth):
        """(B, H, W, Nh * d) -> (B, H, W, Nh, d), channel c in head c // d."""
        batch, height, width, _ = ops.shape(x)
        return ops.reshape(x, [batch, height, width, self.num_heads, depth])

    @property
    def _attention_dtype(self):
        """The dtype of q, k, the logits, the softmax and the position encodings: float64 for a
        float64 layer, else float32 (also under mixed precision)."""
        return "float64" if self.compute_dtype == "float64" else "float32"

    def _check_backend_implementation(self):
        """Raises a ValueError for 'fused' or 'tf_ops' on a backend other than TensorFlow."""
        if self.attention_implementation != "auto" and not _on_tensorflow():
            raise ValueError(
                f"Invalid `attention_implementation`: layer {self.name!r} has attention_implementation="
                f"{self.attention_implementation!r}, which runs on the TensorFlow backend only; the "
                f"{keras.backend.backend()!r} backend runs the keras.ops path: use "
                "attention_implementation='auto'."
            )

    def _check_fused_dtype(self):
        """Raises a ValueError for attention_implementation='fused' with a dtype the kernel lacks."""
        if self.attention_implementation == "fused" and self._attention_dtype != "float32":
            raise ValueError(
                f"Invalid `attention_implementation`: layer {self.name!r} has "
                f"attention_implementation='fused' and dtype {self.compute_dtype!r}, but the fused kernel "
                "computes in float32 only; use attention_implementation='auto' or 'tf_ops' (which compute "
                "in float64), or a float32 or mixed-precision dtype."
            )

    def _check_fused_dropout(self):
        """Raises a ValueError for attention_implementation='fused' with dropout."""
        if self.attention_implementation == "fused" and self.dropout > 0:
            raise ValueError(
                f"Invalid `attention_implementation`: layer {self.name!r} has attention_implementation="
                f"'fused' and dropout={self.dropout!r}, but the fused kernel never stores the attention "
                "weights and cannot drop them; use attention_implementation='auto' (the fused kernel in "
                "inference, TensorFlow ops in training) or 'tf_ops', or dropout=0."
            )

    def _weights_dropout(self, training):
        """None, or the function dropping attention weights in a training call with dropout."""
        if not (training and self.dropout > 0):
            return None

        def drop(weights):
            return keras.random.dropout(weights, self.dropout, seed=self.seed_generator)

        return drop

    def _uses_fused_kernel(self):
        """Whether this trace runs the fused kernel, by `attention_implementation` and the dtype."""
        self._check_fused_dtype()
        if self.attention_implementation == "tf_ops" or self._attention_dtype != "float32":
            return False
        from aa_keras.ops import fused_attention

        if self.attention_implementation == "auto":
            return fused_attention.applies()
        reason = fused_attention.unavailable_reason()
        if reason is not None:
            raise RuntimeError(
                f"Layer {self.name!r} has attention_implementation='fused', but the fused kernel cannot run "
                f"here: {reason}. Use attention_implementation='auto' (the kernel where it can run) or "
                "'tf_ops'."
            )
        return True

    def _dropped_attention(self, q, k, v, dropout):
        """`_multi_head_attention` with `dropout` applied to the weights: unblocked, on TensorFlow
        ops (never the fused kernel) or on `keras.ops` off TensorFlow."""
        self._check_backend_implementation()
        if not _on_tensorflow():
            return attention_ops.multi_head_attention_2d(q, k, v, self.rel_height, self.rel_width, dropout=dropout)
        self._check_fused_dropout()  # also when `use_attention_implementation` set 'fused'
        from aa_keras.layers.attention import multi_head_attention_2d

        return multi_head_attention_2d(q, k, v, self.rel_height, self.rel_width, dropout=dropout)

    def _multi_head_attention(self, q, k, v):
        """(B, H, W, Nh, dkh) q, k and (B, H, W, Nh, dvh) v -> (B, H, W, Nh, dvh)."""
        self._check_backend_implementation()
        if not _on_tensorflow():
            return attention_ops.multi_head_attention_2d(
                q, k, v, self.rel_height, self.rel_width, self.query_block_size
            )
        if self._uses_fused_kernel():
            from aa_keras.ops.fused_attention import fused_attention

            return fused_attention(q, k, v, self.rel_height, self.rel_width)
        from aa_keras.layers.attention import multi_head_attention_2d

        block_size = self.query_block_size
        if block_size is None:
            positions = q.shape[1] * q.shape[2] if None not in q.shape[1:3] else None
            block_size = auto_query_block_size(self.num_heads, positions)
        return multi_head_attention_2d(q, k, v, self.rel_height, self.rel_width, block_size)

    def _check_scores_size(self, height, width):
        """Raises a ValueError when the weights of an (height, width) attention grid (the
        largest grid the layer accepts, if the size is not static) exceed MAX_ATTENTION_SCORES."""
        if not isinstance(height, int) or not isinstance(width, int):
            height, width = self._attention_size(*self.built_size)
        size = self.num_heads * (height * width) ** 2
        if size > MAX_ATTENTION_SCORES:
            raise ValueError(
                f"Invalid `return_attention_scores`: the attention weights of layer {self.name!r} would "
                f"hold num_heads * (H * W)**2 = {self.num_heads} * ({height} * {width})**2 = {size} values "
                f"per example, more than MAX_ATTENTION_SCORES={MAX_ATTENTION_SCORES}; use "
                "`aa_keras.visualize.attention_maps(model, images, queries)`, which computes the rows of "
                "chosen query pixels only."
            )

    def _attention_inputs(self, inputs):
        """The attention branch up to its heads.

        Args:
            inputs: (B, H, W, C) layer input.

        Returns:
            (q, k, v, output_size): q and k (B, Ha, Wa, Nh, dkh) over the attention grid in
            `_attention_dtype`, q scaled by dkh ** -0.5; v (B, Ha, Wa, Nh, dvh); the layer
            output's (H_out, W_out).
        """
        self._check_spatial_size(inputs)
        x = self._pool_to_output_size(inputs)
        output_size = ops.shape(x)[1:3]
        if self.downsample_attention:
            x = _average_pool_same(x, (3, 3), (2, 2))
        x = self._add_position_encoding(x)
        q, k, v = ops.split(self._convolve(self.qkv, x), [self.dk, 2 * self.dk], axis=-1)
        q = self._split_heads(ops.cast(q, self._attention_dtype), self.dkh) * (self.dkh**-0.5)
        k = self._split_heads(ops.cast(k, self._attention_dtype), self.dkh)
        v = self._split_heads(v, self.dvh)
        return q, k, v, output_size

    def call(self, inputs, return_attention_scores=False, training=None):
        q, k, v, output_size = self._attention_inputs(inputs)
        batch, height, width = ops.shape(q)[:3]
        dropout = self._weights_dropout(training)
        if return_attention_scores:
            self._check_scores_size(height, width)
            attend = attention_ops.multi_head_attention_2d
            if _on_tensorflow():
                from aa_keras.layers.attention import multi_head_attention_2d as attend
            attn, scores = attend(q, k, v, self.rel_height, self.rel_width, return_weights=True, dropout=dropout)
        elif dropout is not None:
            attn = self._dropped_attention(q, k, v, dropout)
        else:
            attn = self._multi_head_attention(q, k, v)
        # (B, H, W, Nh, dvh) -> (B, H, W, Nh * dvh), head-major.
        attn = ops.reshape(attn, [batch, height, width, self.dv])
        attn = self._convolve(self.attn_out, attn)
        if self.downsample_attention:
            attn = ops.cast(self._resize_bilinear(attn, output_size), attn.dtype)
        outputs = [attn] if self.conv is None else [self._convolve(self.conv, inputs), attn]
        outputs = self.activation(ops.concatenate(outputs, axis=-1))
        return (outputs, scores) if return_attention_scores else outputs

    def compute_output_shape(self, input_shape):
        sizes = [
            _conv_output_length(length, kernel, stride, self.padding)
            for length, kernel, stride in zip(input_shape[1:3], self.kernel_size, self.strides)
        ]
        return (input_shape[0], *sizes, self.filters)

    def compute_output_spec(self, inputs, return_attention_scores=False, training=None):
        output_shape = self.compute_output_shape(inputs.shape)
        outputs = keras.KerasTensor(output_shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return outputs
        grid = self._attention_size(*inputs.shape[1:3])
        scores_shape = (inputs.shape[0], self.num_heads, *grid, *grid)
        return outputs, keras.KerasTensor(scores_shape, dtype=self._attention_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "depth_k": self.depth_k,
                "depth_v": self.depth_v,
                "num_heads": self.num_heads,
                "position_encoding": self.position_encoding,
                "padding": self.padding,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
                "max_size": self.max_size,
                "query_block_size": self.query_block_size,
                "downsample_attention": self.downsample_attention,
                "attention_implementation": self.attention_implementation,
                "data_format": "channels_last",
                "dropout": self.dropout,
                "seed": self.seed,
            }
        )
        return config


def attention_layers(model):
    """Every `AttentionAugmentation2D` in `model` (a layer or model), those of nested models
    included (a keras-hub detector's backbone), in graph order, as a list."""
    if isinstance(model, AttentionAugmentation2D):
        return [model]
    return [found for layer in getattr(model, "layers", ()) for found in attention_layers(layer)]


@contextlib.contextmanager
def use_attention_implementation(model, implementation):
    """Traces within this context run every `AttentionAugmentation2D` of `model` with
    `attention_implementation=implementation`; each layer's own setting is restored on exit.

    The exporters trace with "tf_ops", so that their files hold standard ops only. Functions
    traced before the context (e.g. a compiled `predict_function`) keep what they traced.

    Args:
        model: a layer or model; its `AttentionAugmentation2D` layers, nested ones included.
        implementation: one of `ATTENTION_IMPLEMENTATIONS`: "auto", "fused" or "tf_ops".

    Yields:
        `model`.

    Raises:
        ValueError: an unknown `implementation`.

    Example:
        ```python
        with use_attention_implementation(model, "tf_ops"):
            converter = tf.lite.TFLiteConverter.from_keras_model(model)  # standard ops only
            tflite_model = converter.convert()
        ```
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"Invalid `implementation`: received {implementation!r}, expected one of {ATTENTION_IMPLEMENTATIONS}."
        )
    layers = attention_layers(model)
    previous = [layer.attention_implementation for layer in layers]
    try:
        for layer in layers:
            layer.attention_implementation = implementation
        yield model
    finally:
        for layer, setting in zip(layers, previous):
            layer.attention_implementation = setting
