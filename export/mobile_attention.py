"""An export-time graph of the attention-augmented convolution for TFLite (TensorFlow only).

`rebuild(model)` returns a model computing the same function in which every
`AttentionAugmentation2D` that it can rebuild is replaced by a `MobileAttention2D` holding the
same weights, rearranged for a phone's runtime (LiteRT's XNNPACK delegate); the layer's training
math in `aa_keras` is untouched. The rearrangements, each optional (`STEPS`):

- `scale`: the query scale dkh ** -0.5 is folded into the q columns of the qkv kernel and bias
  (no MUL in the graph);
- `split`: q, k and v are three projections with their own kernels instead of one projection
  and an unequal SPLIT_V (which XNNPACK does not take);
- `pool`: the average pool of a strided layer (2x2 / stride 2 'same' on an even grid, or any
  'valid' pool) is folded into the q, k, v projections: a k x k / stride-s convolution with the
  1x1 kernel divided by k^2 over the window computes the same sums as pool-then-project (no
  AVERAGE_POOL_2D, which XNNPACK refuses in int8); with `downsample_attention` the further
  3x3 / stride-2 'same' pool joins it (a 3k x 3k / stride-2s convolution, padded as that pool
  pads, its edge windows scaled by 9 / the positions inside);
- `depthwise_pool`, instead of `pool`: the same pools as zero-padded depthwise convolutions with
  weights 1 / window area (their edge windows rescaled), before 1x1 projections: k^2 MACs per
  input channel instead of k^2 times the projection's;
- `fold`: the relative logits enter the content product through the exact fold of
  `../shared/DESIGN.md`: logit(i, j) = [q_i ; a_i ; b_i] . [k_j ; onehot_W(wj) ; onehot_H(hj)]
  with a_i[x] = q_i . rel_width[x - wi + W - 1] and b_i[y] = q_i . rel_height[y - hi + H - 1]:
  one BATCH_MATMUL of depth dkh + W + H, no broadcast ADDs over the (HW x HW) logits, which
  `tflite.convert` runs in int8 (zero point 0 on the extended keys).

A layer with a sine or coordconv encoding, or a dtype other than float32, is kept as it is. A
`MobileAttention2D` is for tracing an export only: it is not serializable.
"""

import keras
import numpy as np
import tensorflow as tf

from aa_keras.layers import AttentionAugmentation2D
from aa_keras.layers.attention_augmentation import same_padding
from aa_keras.layers.relative_tables import relative_offsets, table_length

STEPS = ("scale", "split", "pool", "depthwise_pool", "fold")
# What the exporter applies to int8 (`classification.write_artifacts`), by
# benchmarks/results/attention_graph_steps_*.json: `depthwise_pool` rather than `pool` (the
# folded 6x6 and 3x3 windows multiplied AAResNet-50's projections: 32.0 against 30.9 ms for the
# layer's graph, 29.2 with depthwise pools); `fold`, with the logits in int8 (`tflite.convert`):
# 27.8 against 29.7 ms at 224, 0.322 against 0.339 ms on the trained small pair (with float
# logits it was slower there).
DEFAULT_STEPS = ("scale", "split", "depthwise_pool", "fold")


def _pool_window(layer, height, width):
    """(window, strides) of the average pool that `layer` applies before attention when it can
    be folded into a VALID convolution (no padded window), (1, 1) windows when it pools nothing,
    or None when the pool pads ('same' on a grid its strides do not divide)."""
    if layer.padding == "same" and layer.strides != (1, 1):
        if height % layer.strides[0] or width % layer.strides[1]:
            return None
        return layer.strides, layer.strides
    if layer.padding == "valid" and (layer.kernel_size != (1, 1) or layer.strides != (1, 1)):
        return layer.kernel_size, layer.strides
    return (1, 1), (1, 1)


def _same_pool_counts(length, window=3, stride=2):
    """(padding before, padding after, positions inside each window) of a 'same' average pool
    along one axis of `length`, as TensorFlow pads it."""
    before, after = same_padding(length, window, stride)
    starts = np.arange(-(-length // stride)) * stride - before
    inside = np.minimum(starts + window, length) - np.maximum(starts, 0)
    return before, after, inside


def _folded_pool(layer, height, width):
    """The pools that `layer` applies before attention as one convolution, or None where they
    cannot be folded: {"window", "strides", "padding" ([before, after] per spatial axis),
    "area" (the first pool's window size), "counts" (None, or the (H, W, 1) positions inside each
    window of the downsampling 3x3 / stride-2 pool when they vary)}."""
    first = _pool_window(layer, height, width)
    if first is None:
        return None
    window, strides = first
    plan = {"window": window, "strides": strides, "padding": [[0, 0], [0, 0]], "area": window[0] * window[1], "counts": None}
    if not layer.downsample_attention:
        return plan
    if window != strides:  # a 'valid' pool with overlapping or gapped windows
        return None
    # A 3x3 / stride-2 'same' pool of the pooled grid: 3 cells of `window` pixels, stride 2 cells.
    pooled = (height // strides[0], width // strides[1]) if layer.padding == "same" else (
        (height - window[0]) // strides[0] + 1, (width - window[1]) // strides[1] + 1
    )
    axes = [_same_pool_counts(length) for length in pooled]
    plan["window"] = (3 * window[0], 3 * window[1])
    plan["strides"] = (2 * strides[0], 2 * strides[1])
    plan["padding"] = [[before * step, after * step] for (before, after, _), step in zip(axes, strides)]
    counts = np.outer(axes[0][2], axes[1][2]).astype(np.float32)[:, :, None]
    plan["area"] *= 9
    if np.any(counts != 9):
        plan["counts"] = counts
    return plan


def _depthwise_pool_stages(layer, height, width):
    """The average pools that `layer` applies before attention as [(window, strides, paddings
    ([before, after] per spatial axis), (H, W, 1) window area / positions inside, or None where
    every window is whole)], for `MobileAttention2D._pool`."""
    stages = []
    if layer.padding == "same" and layer.strides != (1, 1):
        axes = [_same_pool_counts(length, stride, stride) for length, stride in zip((height, width), layer.strides)]
        stages.append((layer.strides, layer.strides, axes))
        height, width = (len(axis[2]) for axis in axes)
    elif layer.padding == "valid" and (layer.kernel_size != (1, 1) or layer.strides != (1, 1)):
        stages.append((layer.kernel_size, layer.strides, None))
        height, width = ((length - k) // s + 1 for length, k, s in zip((height, width), layer.kernel_size, layer.strides))
    if layer.downsample_attention:
        stages.append(((3, 3), (2, 2), [_same_pool_counts(length) for length in (height, width)]))
    result = []
    for window, strides, axes in stages:
        paddings, scale = [[0, 0], [0, 0]], None
        if axes is not None:
            paddings = [[before, after] for before, after, _ in axes]
            counts = np.outer(axes[0][2], axes[1][2]).astype(np.float32)[:, :, None]
            if np.any(counts != window[0] * window[1]):
                scale = window[0] * window[1] / counts
        result.append((window, strides, paddings, scale))
    return result


def can_rebuild(layer):
    """Whether `rebuild` replaces `layer`, an `AttentionAugmentation2D`."""
    return (
        layer.position_encoding in ("relative", "none")
        and layer.compute_dtype == "float32"
        and None not in layer.input.shape[1:3]
    )


class MobileAttention2D(keras.layers.Layer):
    """The function of an `AttentionAugmentation2D` on a fixed input size, as an export graph.

    Args:
        source: the built `AttentionAugmentation2D` whose weights it takes (its `conv` and
            `attn_out` sub-layers are shared, the others copied and rearranged).
        input_shape: (H, W, C) of the layer's input.
        steps: the rearrangements of the module docstring to apply, a subset of `STEPS`.

    Call arguments:
        inputs: (B, H, W, C) float32 tensor.

    Returns:
        (B, H_out, W_out, filters), as `source` returns.
    """

    def __init__(self, source, input_shape, steps=STEPS, **kwargs):
        super().__init__(name=source.name, **kwargs)
        unknown = sorted(set(steps) - set(STEPS))
        if unknown:
            raise ValueError(f"Invalid `steps`: received {sorted(steps)}, unknown {unknown}; expected a subset of {STEPS}.")
        self.steps = tuple(step for step in STEPS if step in steps)
        if "pool" in steps and "depthwise_pool" in steps:
            raise ValueError(f"Invalid `steps`: received {sorted(steps)}; 'pool' and 'depthwise_pool' exclude each other.")
        self.source = source
        self.heads, self.dkh, self.dvh = source.num_heads, source.dkh, source.dvh
        height, width, _ = input_shape
        self.pool_stages = _depthwise_pool_stages(source, height, width) if "depthwise_pool" in steps else None
        plan = _folded_pool(source, height, width) if "pool" in steps else None
        self.pool_folded = plan is not None
        if plan is None:
            plan = {"window": (1, 1), "strides": (1, 1), "padding": [[0, 0], [0, 0]], "area": 1, "counts": None}
        self.window, self.pool_strides, self.inverse_counts = plan["window"], plan["strides"], None
        self.padding = [[0, 0], *plan["padding"], [0, 0]]
        if plan["counts"] is not None:
            # The window sums over area / 9 pixels per cell, the mean over the cells inside: x 9 / counts.
            self.inverse_counts = 9.0 / plan["counts"]
        self.grid = source._attention_size(height, width)
        self.output_size = tuple(source.compute_output_shape((None, height, width, None))[1:3])
        kernel = np.asarray(source.qkv.kernel)[0, 0]
        bias = np.asarray(source.qkv.bias) if source.use_bias else np.zeros(kernel.shape[-1], np.float32)
        if "scale" in steps:
            kernel, bias = kernel.copy(), bias.copy()
            kernel[:, : source.dk] *= source.dkh**-0.5
            bias[: source.dk] *= source.dkh**-0.5
        kernel = np.broadcast_to(kernel / plan["area"], (*self.window, *kernel.shape)).astype(np.float32)
        bounds = [0, source.dk, 2 * source.dk, 2 * source.dk + source.dv]
        names = ("q", "k", "v") if "split" in steps else ("qkv",)
        parts = list(zip(bounds[:-1], bounds[1:])) if "split" in steps else [(0, bounds[-1])]
        self.projections = []
        for name, (start, stop) in zip(names, parts):
            w = self.add_weight(name=f"{name}_kernel", shape=kernel[..., start:stop].shape, trainable=False)
            b = self.add_weight(name=f"{name}_bias", shape=(stop - start,), trainable=False)
            w.assign(kernel[..., start:stop])
            b.assign(bias[start:stop])
            self.projections.append((w, b))
        self.tables = None
        if source.position_encoding == "relative":
            # emb_h[hi, y] = rel_height[y - hi + H_max - 1], emb_w likewise: (H, H, dkh), (W, W, dkh).
            self.tables = [
                np.asarray(table)[relative_offsets(length, table_length(table))].astype(np.float32)
                for table, length in ((source.rel_height, self.grid[0]), (source.rel_width, self.grid[1]))
            ]

    def _heads(self, x, depth):
        """(B, H, W, Nh * d) -> (B, Nh, H * W, d), channel c in head c // d."""
        x = tf.reshape(x, [-1, self.grid[0] * self.grid[1], self.heads, depth])
        return tf.transpose(x, [0, 2, 1, 3])

    def _qkv(self, inputs):
        x = inputs
        if self.pool_stages is not None:
            x = self._pool(x)
        elif not self.pool_folded:
            x = self.source._pool_to_output_size(inputs)
            if self.source.downsample_attention:
                x = tf.nn.avg_pool2d(x, 3, 2, "SAME")
        outputs = []
        for w, b in self.projections:
            y = tf.nn.conv2d(x, w, self.pool_strides, self.padding)
            if self.inverse_counts is not None:
                y = y * tf.constant(self.inverse_counts)
            outputs.append(y + b)
        if len(outputs) == 1:
            outputs = tf.split(outputs[0], [self.source.dk, self.source.dk, self.source.dv], axis=-1)
        q, k, v = outputs
        if "scale" not in self.steps:
            q = q * (self.dkh**-0.5)
        return self._heads(q, self.dkh), self._heads(k, self.dkh), self._heads(v, self.dvh)

    def _pool(self, x):
        """The layer's average pools as zero-padded depthwise convolutions (XNNPACK takes them in
        int8, where it refuses AVERAGE_POOL_2D), windows cut by the padding rescaled."""
        for window, strides, paddings, scale in self.pool_stages:
            if any(before or after for before, after in paddings):
                x = tf.pad(x, [[0, 0], *paddings, [0, 0]])
            mean = np.full((*window, x.shape[-1], 1), 1.0 / (window[0] * window[1]), np.float32)
            x = tf.nn.depthwise_conv2d(x, tf.constant(mean), [1, *strides, 1], "VALID")
            if scale is not None:
                x = x * tf.constant(scale)
        return x

    def _logits(self, q, k):
        """(B, Nh, HW, HW) logits of (B, Nh, HW, dkh) q and k."""
        if self.tables is None:
            return tf.matmul(q, k, transpose_b=True)
        height, width = self.grid
        emb_h, emb_w = (tf.constant(table) for table in self.tables)
        grid_q = tf.reshape(q, [-1, self.heads, height, width, self.dkh])
        # a[b, n, hi, wi, x] = q[b, n, hi, wi] . emb_w[wi, x]; b[b, n, hi, wi, y] = q[b, n, hi, wi] . emb_h[hi, y]
        rel_w = tf.einsum("bnhwd,wxd->bnhwx", grid_q, emb_w)
        rel_h = tf.einsum("bnhwd,hyd->bnhwy", grid_q, emb_h)
        positions = height * width
        if "fold" in self.steps:
            rel = tf.reshape(tf.concat([rel_w, rel_h], axis=-1), [-1, self.heads, positions, width + height])
            # Key j = (hj, wj): [onehot_W(wj) ; onehot_H(hj)].
            rows, cols = np.divmod(np.arange(positions), width)
            keys = np.concatenate([np.eye(width, dtype=np.float32)[cols], np.eye(height, dtype=np.float32)[rows]], 1)
            keys = tf.broadcast_to(tf.constant(keys), [tf.shape(k)[0], self.heads, positions, width + height])
            return tf.matmul(tf.concat([q, rel], axis=-1), tf.concat([k, keys], axis=-1), transpose_b=True)
        logits = tf.matmul(q, k, transpose_b=True)
        relative = tf.reshape(rel_h, [-1, self.heads, positions, height, 1]) + tf.reshape(
            rel_w, [-1, self.heads, positions, 1, width]
        )
        return logits + tf.reshape(relative, [-1, self.heads, positions, positions])

    def _attend(self, logits, v):
        """(B, Nh, HW, dvh) softmax(logits) v."""
        return tf.matmul(tf.nn.softmax(logits, axis=-1), v)

    def call(self, inputs):
        q, k, v = self._qkv(inputs)
        attn = tf.transpose(self._attend(self._logits(q, k), v), [0, 2, 1, 3])
        attn = self.source.attn_out(tf.reshape(attn, [-1, *self.grid, self.source.dv]))
        if self.source.downsample_attention:
            attn = tf.image.resize(attn, self.output_size, "bilinear")
        outputs = [attn] if self.source.conv is None else [self.source.conv(inputs), attn]
        return self.source.activation(tf.concat(outputs, axis=-1))

    def compute_output_shape(self, input_shape):
        return self.source.compute_output_shape(input_shape)


def rebuild(model, steps=DEFAULT_STEPS, layer_class=MobileAttention2D):
    """`model` with every `AttentionAugmentation2D` that `can_rebuild` as a `MobileAttention2D`
    (the other layers shared, not copied); `model` itself when it has none or `steps` is empty.

    Args:
        model: a functional or Sequential Keras model.
        steps: the rearrangements to apply, a subset of `STEPS`.
        layer_class: `MobileAttention2D` or a subclass of it (a benchmark's variant).
    """

    def clone(layer):
        if isinstance(layer, AttentionAugmentation2D) and can_rebuild(layer):
            return layer_class(layer, layer.input.shape[1:], steps)
        return layer

    if not steps or not any(
        isinstance(layer, AttentionAugmentation2D) and can_rebuild(layer) for layer in model._flatten_layers()
    ):
        return model
    return keras.models.clone_model(model, clone_function=clone, recursive=True)
