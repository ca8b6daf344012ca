"""Re-estimated BatchNormalization statistics ("precise BN").

After a short run (tens of steps at momentum 0.99) a `BatchNormalization` layer's moving mean
and variance are still mostly their initial values, so the network used in inference is not
the one that learned. `recalibrate_batch_norm(model, data)` replaces them with exact averages
over `data`:

    model, _ = ...                                            # trained for a few steps
    summary = recalibrate_batch_norm(model, images.batch(32), steps=32)
    print(summary)                  # "Re-estimated 12 BatchNormalization layers over 1024 images"

While measuring, every measured layer normalizes with the statistics of its own batch (as in
training, so a deeper layer sees what it saw in training), the rest of the network runs in
inference (dropout off, frozen layers on their moving statistics). For each measured layer the
mean and (biased) variance of its input over all images are combined exactly from the
per-batch moments in float64, then written to `moving_mean` and `moving_variance`. The result
depends on the batch size of each forward pass (the per-replica batch under a strategy) only
through those batch statistics, as in training.

The measuring runs on every Keras backend (eagerly outside TensorFlow). On TensorFlow it runs
as a `tf.function`, and inside a `tf.distribute` strategy's scope each replica measures its part
of each batch and the moments of all replicas (and workers) are gathered and combined.
"""

import dataclasses

import keras
import numpy as np
from keras import ops


@dataclasses.dataclass(frozen=True)
class RecalibrationSummary:
    """What `recalibrate_batch_norm` did.

    Attributes:
        layers: paths ("outer/inner/name") of the layers re-estimated.
        kept: paths of the frozen layers whose statistics were kept.
        images: the number of images measured.
        batches: the number of batches (global batches under a strategy).
    """

    layers: tuple
    kept: tuple
    images: int
    batches: int

    def __str__(self):
        kept = f"; kept the statistics of {len(self.kept)} frozen ones" if self.kept else ""
        return (
            f"Re-estimated {len(self.layers)} BatchNormalization layers over {self.images} images "
            f"({self.batches} batches){kept}."
        )


def batch_norm_layers(model):
    """`(path, layer)` of every `BatchNormalization` layer of `model`, nested models included,
    in graph order; a path joins the names of the enclosing models and the layer with "/"."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append((layer.name, layer))
        elif hasattr(layer, "layers"):
            found.extend((f"{layer.name}/{path}", inner) for path, inner in batch_norm_layers(layer))
    return found


class _Moments:
    """Exact running mean and variance of per-channel values, merged from batches' moments
    (count, mean, biased variance) in float64 (Chan et al.'s pairwise update)."""

    def __init__(self, channels):
        self.count = 0.0
        self.mean = np.zeros(channels)
        self.squares = np.zeros(channels)  # Sum of squared deviations from the mean.

    def add(self, count, mean, variance):
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.squares = self.squares + variance * count + delta**2 * (self.count * count / total)
        self.count = total

    @property
    def variance(self):
        return self.squares / self.count


def _measuring_call(layer, found):
    """A `call` for the `BatchNormalization` `layer` that normalizes with its batch's moments
    (computed in float32) and records (count per channel, mean, variance) in `found[layer]`."""
    axis = layer.axis

    def call(inputs, training=None, mask=None):
        x = ops.cast(inputs, "float32")
        axes = [i for i in range(len(x.shape)) if i != axis % len(x.shape)]
        mean, variance = ops.moments(x, axes)
        count = ops.cast(ops.prod(ops.take(ops.shape(x), axes)), "float32")
        found[id(layer)] = (count, mean, variance)
        outputs = ops.batch_normalization(
            x,
            mean,
            variance,
            axis=axis,
            offset=None if layer.beta is None else ops.cast(layer.beta, "float32"),
            scale=None if layer.gamma is None else ops.cast(layer.gamma, "float32"),
            epsilon=layer.epsilon,
        )
        return ops.cast(outputs, layer.compute_dtype)

    return call


def _images(batch):
    """The images of a batch that is images or an (images, ...) tuple."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _measure_function(model, layers):
    """`(images) -> [(count, mean, variance) per layer]`: one forward pass of `model` in
    inference with `layers` measuring (their `call` replaced while it runs)."""
    found = {}

    def measure(images):
        try:
            for layer in layers:
                layer.call = _measuring_call(layer, found)
            model(images, training=False)
        finally:
            for layer in layers:
                del layer.call  # The class's `call` again.
        return [found[id(layer)] for layer in layers]

    return measure


def _tensorflow_strategy():
    """The `tf.distribute` strategy of the current scope on the TensorFlow backend, or None
    (another backend, or the default strategy)."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None


def _batch_moments(model, layers):
    """`(batch) -> (images, [(counts, means, variances) per layer])`: the number of images and,
    per layer, NumPy arrays with one row per replica (one row outside a strategy)."""
    measure = _measure_function(model, layers)
    strategy = _tensorflow_strategy()
    if keras.backend.backend() != "tensorflow":
        def moments(batch):
            images = _images(batch)
            found = measure(images) if ops.shape(images)[0] else []
            rows = [tuple(np.reshape(ops.convert_to_numpy(v).astype(np.float64), (1, -1)) for v in m) for m in found]
            return int(ops.shape(images)[0]), rows

        return moments
    import tensorflow as tf

    channels = [int(layer.moving_mean.shape[0]) for layer in layers]

    def replica_step(batch):
        # An empty batch (a replica's share of a short last batch) skips the model: TensorFlow
        # 2.20's oneDNN Conv2D returns a batch of 0 with the input's channels.
        images = _images(batch)
        size = tf.shape(images)[0]

        def measured():
            return [[tf.reshape(v, (1, -1)) for v in m] for m in measure(images)]

        def empty():
            return [[tf.zeros((1, 1)), tf.zeros((1, c)), tf.zeros((1, c))] for c in channels]

        return tf.reshape(size, (1,)), tf.cond(size > 0, measured, empty)

    if strategy is None:
        step = tf.function(replica_step, reduce_retracing=True)
    else:
        @tf.function
        def step(batch):
            sizes, found = strategy.run(replica_step, args=(batch,))
            gather = lambda value: strategy.gather(value, axis=0)  # noqa: E731
            return gather(sizes), [[gather(v) for v in m] for m in found]

    def moments(batch):
        sizes, found = step(batch)
        return int(np.sum(sizes)), [tuple(np.asarray(v, np.float64) for v in m) for m in found]

    return moments


def recalibrate_batch_norm(model, data, steps=None, include_frozen=False, verbose=0):
    """Resets and re-estimates the moving statistics of `model`'s `BatchNormalization` layers.

    Each layer's `moving_mean` and `moving_variance` become the exact per-channel mean and
    biased variance of its input over all images of `data`, measured in one forward pass per
    batch with the measured layers normalizing by their batch's statistics and the rest of the
    network in inference (see the module docstring). Layers with `trainable=False` (frozen by a
    fine-tuning recipe; Keras runs them in inference) keep theirs unless `include_frozen`.

    Args:
        model: a built Keras model; nested models are searched.
        data: an iterable of batches: (B, H, W, C) image arrays or tuples whose first element
            is one (labels are ignored), e.g. a batched `tf.data.Dataset`. Inside a
            `tf.distribute` strategy's scope a `tf.data.Dataset` of global batches is
            distributed over the replicas (a distributed dataset is taken as it is).
        steps: at most this many batches; None for all of `data`.
        include_frozen: also re-estimate the layers with `trainable=False`.
        verbose: 1 for a progress bar, 0 for none.

    Returns:
        A `RecalibrationSummary`.

    Raises:
        ValueError: `model` has no `BatchNormalization` layer to re-estimate, a bad `steps`,
            `data` gave no images, or a layer's input is not finite over them (nothing is
            changed).

    Example:
        After a short run the moving statistics are still mostly their initial values:

        ```python
        model.fit(images, labels, epochs=3)
        summary = recalibrate_batch_norm(model, tf.data.Dataset.from_tensor_slices(images).batch(64))
        print(summary)                             # each layer and the images it was measured on
        model.evaluate(test_images, test_labels)   # as accurate as the network that trained
        ```
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0):
        raise ValueError(f"Invalid `steps`: received steps={steps!r}, expected a positive integer or None.")
    found = batch_norm_layers(model)
    chosen = [(path, layer) for path, layer in found if include_frozen or layer.trainable]
    kept = tuple(path for path, layer in found if not (include_frozen or layer.trainable))
    if not chosen:
        raise ValueError(
            f"Invalid `model`: {model.name!r} has no BatchNormalization layer to re-estimate "
            f"({len(found)} found, {len(kept)} frozen; pass include_frozen=True to re-estimate frozen ones)."
        )
    layers = [layer for _, layer in chosen]
    strategy = _tensorflow_strategy()
    if strategy is not None:
        import tensorflow as tf

        if isinstance(data, tf.data.Dataset):
            data = strategy.experimental_distribute_dataset(data)
    moments = _batch_moments(model, layers)
    totals = [_Moments(int(layer.moving_mean.shape[0])) for layer in layers]
    progbar = keras.utils.Progbar(steps, verbose=verbose, unit_name="batch")
    images = batches = 0
    for batch in data:
        if steps is not None and batches == steps:
            break
        size, found_moments = moments(batch)
        for total, (counts, means, variances) in zip(totals, found_moments):
            for count, mean, variance in zip(counts.reshape(-1), means, variances):
                total.add(float(count), mean, variance)
        images += size
        batches += 1
        progbar.update(batches)
    if images == 0:
        raise ValueError("Invalid `data`: it gave no images; nothing was re-estimated.")
    for layer, total in zip(layers, totals):
        if not (np.all(np.isfinite(total.mean)) and np.all(np.isfinite(total.variance))):
            raise ValueError(
                f"Invalid `data`: the input of layer {layer.name!r} is not finite over the images "
                "(NaN or Inf); nothing was re-estimated."
            )
    for layer, total in zip(layers, totals):
        layer.moving_mean.assign(ops.cast(total.mean, layer.moving_mean.dtype))
        layer.moving_variance.assign(ops.cast(total.variance, layer.moving_variance.dtype))
    return RecalibrationSummary(tuple(path for path, _ in chosen), kept, images, batches)
