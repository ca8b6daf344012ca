"""SavedModel with a `serving_default` signature (named image input, named output) and a
`metadata` signature (no input; the input shape, the batch and the class names)."""

import keras
import numpy as np
import tensorflow as tf

from aa_keras.layers import use_attention_implementation

INPUT_NAME = "images"
OUTPUT_NAME = "predictions"
SIGNATURE = "serving_default"
METADATA_SIGNATURE = "metadata"


def write_saved_model(model, path, image_shape, batch=None, uint8_input=False, check_input=False, class_names=None):
    """Writes `model` as a SavedModel with one `serving_default` signature.

    Args:
        model: Keras model from (B, H, W, C) float32 images in [0, 1] to (B, classes).
        path: directory to write.
        image_shape: (H, W, C) of the signature's input.
        batch: static batch size of the signature, or None for any batch.
        uint8_input: take uint8 images in [0, 255] and scale them to [0, 1] inside the graph.
        check_input: check the input's shape at run time (see `write_signature`): for a
            SavedModel to serve; a converter's source leaves it out (TFLite has no such check).
        class_names: the class names, for the `metadata` signature (see `write_signature`).

    The signature maps `images` (B, H, W, C) float32 (or uint8) to `predictions` (B, classes).
    """

    def serve(images):
        if uint8_input:
            images = tf.cast(images, tf.float32) / 255.0
        return {OUTPUT_NAME: model(images, training=False)}

    dtype = tf.uint8 if uint8_input else tf.float32
    write_signature(model, serve, path, image_shape, batch, dtype, check_input, class_names)


def checked_images(images, expected_shape):
    """`images` after a run-time check that its shape is `expected_shape` (None: any size),
    which raises `InvalidArgumentError` saying what the signature expects; with that shape set."""
    shape = tf.shape(images)
    # The first len(expected) dims, padded with -1 when the rank is lower: comparable whatever it is.
    padded = tf.concat([shape, -tf.ones([len(expected_shape)], tf.int32)], axis=0)[: len(expected_shape)]
    matches = [tf.equal(tf.size(shape), len(expected_shape))]
    matches += [tf.equal(padded[i], size) for i, size in enumerate(expected_shape) if size is not None]
    described = ", ".join("batch" if size is None else str(size) for size in expected_shape)
    check = tf.debugging.Assert(
        tf.reduce_all(tf.stack(matches)),
        [f"{SIGNATURE} expects `{INPUT_NAME}` of shape ({described}) {images.dtype.name}; received shape:", shape],
        summarize=8,
    )
    with tf.control_dependencies([check]):
        return tf.ensure_shape(tf.identity(images), expected_shape)


def write_signature(model, serve, path, image_shape, batch=None, dtype=tf.float32, check_input=False,
                    class_names=None):
    """Writes `model` as a SavedModel whose `serving_default` signature is `serve`, a function of
    `images` (batch, *image_shape) of `dtype`.

    With `check_input`, the signature takes `images` of any shape and checks it at run time
    (`checked_images`): a signature with a shaped input does not check it, and a wrong rank
    could abort the serving process. Without it (a source for a converter), the input is
    declared (batch, *image_shape).

    A SavedModel to serve (`check_input`) also gets the `metadata` signature, without input:
    `image_shape` int32 (3,), `batch` int32 (0 for any batch) and, with `class_names`,
    `class_names` string (classes,); the converter's source has only `serving_default` (every
    signature would become one of the TFLite model).

    The model is traced with standard ops only: a file holding the fused attention kernel's
    custom op would not load without aa_keras and would not convert to TFLite or ONNX.
    """
    expected_shape = (batch, *image_shape)
    if check_input:
        spec = tf.TensorSpec(None, dtype, name=INPUT_NAME)
        endpoint = lambda images: serve(checked_images(images, expected_shape))  # noqa: E731
    else:
        spec, endpoint = tf.TensorSpec(expected_shape, dtype, name=INPUT_NAME), serve
    with use_attention_implementation(model, "tf_ops"):
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(SIGNATURE, endpoint, input_signature=[spec])
        if check_input:
            metadata = {"image_shape": tf.constant(image_shape, tf.int32), "batch": tf.constant(batch or 0, tf.int32)}
            if class_names is not None:
                metadata["class_names"] = tf.constant([str(name) for name in class_names])
            archive.add_endpoint(METADATA_SIGNATURE, lambda: metadata, input_signature=[])
        archive.write_out(path, verbose=False)


def read_metadata(signatures):
    """(image_shape (H, W, C), batch or None for any, class names or None) from the `metadata`
    signature among a loaded SavedModel's `signatures`; None for a SavedModel without one (an
    older export)."""
    if METADATA_SIGNATURE not in signatures:
        return None
    metadata = {name: value.numpy() for name, value in signatures[METADATA_SIGNATURE]().items()}
    names = [name.decode() for name in metadata["class_names"]] if "class_names" in metadata else None
    return tuple(int(size) for size in metadata["image_shape"]), int(metadata["batch"]) or None, names


class SavedModelRunner:
    """Serves images through a reloaded SavedModel's `serving_default` signature; `metadata` is
    what its `metadata` signature says (`read_metadata`)."""

    runtime = "tf.saved_model"

    def __init__(self, path):
        signatures = tf.saved_model.load(path).signatures
        self._function = signatures[SIGNATURE]
        self._dtype = self._function.structured_input_signature[1][INPUT_NAME].dtype
        self.metadata = read_metadata(signatures)

    def prepare(self, images):
        """(B, H, W, C) float32 images in [0, 1] -> the signature's input tensor."""
        if self._dtype == tf.uint8:
            images = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
        return tf.constant(images)

    def run(self, prepared):
        return self._function(**{INPUT_NAME: prepared})[OUTPUT_NAME].numpy()

    def __call__(self, images):
        return self.run(self.prepare(images))
