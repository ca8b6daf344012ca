"""Draws where each head of a saved model's attention-augmented layers looks from one pixel.

    python -m aa_keras.visualize --model=runs/quick/aa_small/model.keras --image=0 --query=12,9 \
        --output=attention.png
    aa-visualize --model=model.keras --image=photo.png --query=100,80 --layer=block3_aa --output=a.png

`--image` is an image file (PNG, JPEG, BMP, GIF) or the index of an example of `--split` of the
TFDS dataset `--dataset` (the embedded glyph_pairs is generated on first use). The image is
resized to the model's input size and scaled to [0, 1], as the trainer's evaluation does for
its plain-resize recipes; `--query=Y,X` is a pixel of that resized image. The picture has one
row per AA layer (or the `--layer` ones): the image with the query marked, each head's map over
the image, and the mean of the heads (see `aa_keras.visualize.attention_figure`).
"""

import os
import sys

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags

import aa_keras.datasets  # noqa: F401  (registers glyph_pairs with TFDS)
from aa_keras.visualize.figure import attention_figure, save_png
from aa_keras.visualize.maps import attention_maps, check_queries
from aa_keras.command_line import run_program

# The CLI's own flags, added to absl's global flags by run_main only (as training.train does).
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "Path of a .keras model with AttentionAugmentation2D layers.", flag_values=FLAGS)
flags.DEFINE_string("image", None, "An image file, or the index of an example of --split of --dataset.", flag_values=FLAGS)
flags.DEFINE_list("query", None, "Y,X: the query pixel in the image resized to the model's input.", flag_values=FLAGS)
flags.DEFINE_list("layer", None, "AA layers to draw, by name (default: all, one row each).", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Path of the PNG to write.", flag_values=FLAGS)
flags.DEFINE_string("dataset", "glyph_pairs", "TFDS dataset of an --image index.", flag_values=FLAGS)
flags.DEFINE_string("split", "test", "Split of --dataset of an --image index.", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data directory; default: TFDS's (~/tensorflow_datasets).", flag_values=FLAGS)


def load_model(path):
    """The `.keras` model at `path` (its AA layers registered by importing aa_keras)."""
    if not path or not os.path.isfile(path):
        raise ValueError(f"Invalid `--model`: {path!r} does not exist or is not a file.")
    if not path.endswith(".keras"):
        raise ValueError(f"Invalid `--model`: {path!r} is not a Keras 3 `.keras` file.")
    return keras.saving.load_model(path, compile=False)


def _dataset_image(index, dataset, split, data_dir):
    """The uint8 image of example `index` of `split` of the TFDS `dataset`."""
    builder = tfds.builder(dataset, data_dir=data_dir)
    if dataset == "glyph_pairs":
        builder.download_and_prepare()  # generated offline, in seconds
    size = builder.info.splits[split].num_examples
    if index >= size:
        raise ValueError(f"Invalid `--image`: index {index} is past the {size} examples of {dataset!r} {split!r}.")
    example = next(iter(builder.as_dataset(split=f"{split}[{index}:{index + 1}]")))
    return example["image"]


def load_image(spec, image_size, channels, dataset="glyph_pairs", split="test", data_dir=None):
    """The image of `spec` (a file path, or an index into `dataset`) as a float32
    (height, width, channels) array in [0, 1] of the (height, width) `image_size`."""
    if spec is not None and spec.isdigit():
        image = _dataset_image(int(spec), dataset, split, data_dir)
    elif spec and os.path.isfile(spec):
        try:
            image = tf.io.decode_image(tf.io.read_file(spec), channels=channels, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            raise ValueError(f"Invalid `--image`: {spec!r} is not a PNG, JPEG, BMP or GIF image.") from None
    else:
        raise ValueError(f"Invalid `--image`: {spec!r} is neither an image file nor a dataset index.")
    image = tf.cast(image, tf.float32)
    if tuple(image.shape[:2]) != tuple(image_size):
        image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    return np.clip(image.numpy() / 255.0, 0.0, 1.0)


def parse_query(values, image_size):
    """`--query` (["Y", "X"]) as an int (y, x) inside the image."""
    try:
        query = [int(v) for v in values or ()]
    except ValueError:
        query = []
    if len(query) != 2:
        raise ValueError(f"Invalid `--query`: received --query={','.join(values or ())}, expected Y,X pixel integers.")
    try:
        return tuple(check_queries([query], image_size)[0])
    except ValueError as error:
        raise ValueError(str(error).replace("`queries`", "`--query`")) from None


def run(argv):
    """Writes the picture of `--output`; returns its path."""
    if len(argv) > 1:
        raise ValueError(f"Unexpected positional arguments {argv[1:]}; all options are --flags (see --help).")
    if not FLAGS.output or not FLAGS.output.lower().endswith(".png"):
        raise ValueError(f"Invalid `--output`: received --output={FLAGS.output!r}, expected a path ending in .png.")
    model = load_model(FLAGS.model)
    height, width, channels = model.inputs[0].shape[1:]
    if height is None or width is None:
        raise ValueError(f"Invalid `--model`: its input size {(height, width)} is not fixed; save it with a fixed one.")
    image = load_image(FLAGS.image, (height, width), channels, FLAGS.dataset, FLAGS.split, FLAGS.data_dir)
    query = parse_query(FLAGS.query, (height, width))
    maps = attention_maps(model, image[None], [query], layers=FLAGS.layer)
    figure = attention_figure(image, query, {name: m[0, 0] for name, m in maps.items()})
    save_png(figure, FLAGS.output)
    return FLAGS.output


def main(argv):
    FLAGS.mark_as_parsed()
    try:
        print(run(argv))
    except ValueError as error:
        sys.exit(f"aa_keras.visualize: {error}")


def run_main():
    """Entry point of `python -m aa_keras.visualize` and the `aa-visualize` console script."""
    run_program(FLAGS, main)
