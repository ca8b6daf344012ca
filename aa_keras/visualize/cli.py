"""Draws where each head of a saved model's attention-augmented layers looks from one pixel.

    python -m aa_keras.visualize --model=runs/quick/aa_small/model.keras --image=0 --query=12,9 \
        --output=attention.png
    aa-visualize --model=model.keras --image=photo.png --query=100,80 --layer=block3_aa --output=a.png

`--model` is a classifier or a RetinaNet detector (`aa_keras.applications`); the AA layers
may sit in nested models (a `keras:<Name>` classifier's "backbone", a detector's backbone),
and `--layer` names those by path, e.g. `--layer=backbone/conv5_block1_2_conv` (the names are
listed when one is wrong). `--image` is an image file (PNG, JPEG, BMP, GIF) or the index of an
example of `--split` of `--dataset`, any dataset the trainer reads for the model's task (TFDS,
the embedded glyph_pairs / glyph_boxes, generated on first use, `image_folder:PATH` or
`coco_json:PATH`). The image is resized to the model's input size and scaled to [0, 1], as the
trainer's evaluation does for its plain-resize recipes; `--query=Y,X` is a pixel of that
resized image. The picture has one row per AA layer (or the `--layer` ones): the image with the
query marked, each head's map over the image, and the mean of the heads (see
`aa_keras.visualize.attention_figure`); its folder is created if missing.
"""

import os

import numpy as np
import tensorflow as tf
from absl import flags

from aa_keras.applications.retinanet import is_detector  # importing it registers the detector classes
from aa_keras.data import classification as classification_data
from aa_keras.data import detection as detection_data
from aa_keras.datasets.image_files import undecodable_reason
from aa_keras.programs.command_line import program_main, run_program
from aa_keras.programs.files import load_keras_file
from aa_keras.visualize.figure import attention_figure, save_png
from aa_keras.visualize.maps import attention_maps, check_queries

# The CLI's own flags, added to absl's global flags by run_main only (as training.train does).
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "Path of a .keras model with AttentionAugmentation2D layers.", flag_values=FLAGS)
flags.DEFINE_string("image", None, "An image file, or the index of an example of --split of --dataset.", flag_values=FLAGS)
flags.DEFINE_list("query", None, "Y,X: the query pixel in the image resized to the model's input.", flag_values=FLAGS)
flags.DEFINE_list(
    "layer", None, "AA layers to draw, by name; nested ones by path, e.g. backbone/conv5_block1_2_conv (default: all, "
    "one row each).", flag_values=FLAGS,
)
flags.DEFINE_string("output", None, "Path of the PNG to write.", flag_values=FLAGS)
flags.DEFINE_string(
    "dataset", None, "Dataset of an --image index, as the trainer names it (TFDS name, image_folder:PATH, "
    "coco_json:PATH); default: glyph_pairs for a classifier, glyph_boxes for a detector.", flag_values=FLAGS,
)
flags.DEFINE_string("split", "test", "Split of --dataset of an --image index.", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data directory; default: TFDS's (~/tensorflow_datasets).", flag_values=FLAGS)


def _dataset_image(index, dataset, split, data_dir, task):
    """The uint8 image of example `index` of `split` of `dataset`, opened as the input pipelines
    of `task` ("classification" or "detection", see `aa_keras.data`) open it."""
    if task == "detection":
        dataset = dataset or detection_data.EMBEDDED_DATASETS[0]
        builder = detection_data.builder(dataset, data_dir)
        size = detection_data.split_size(dataset, split, data_dir)
    else:
        dataset = dataset or classification_data.EMBEDDED_DATASETS[0]
        builder = classification_data.prepare(dataset, data_dir)
        size = classification_data.split_size(dataset, split, data_dir)
    if index >= size:
        raise ValueError(f"Invalid `--image`: index {index} is past the {size} examples of {dataset!r} {split!r}.")
    example = next(iter(builder.as_dataset(split=f"{split}[{index}:{index + 1}]")))
    return example["image"]


def load_image(spec, image_size, channels, dataset=None, split="test", data_dir=None, task="classification"):
    """The image of `spec` (a file path, or an index into `dataset` of `task`, see
    `_dataset_image`) as a float32 (height, width, channels) array in [0, 1] of the
    (height, width) `image_size`."""
    if spec is not None and spec.isdigit():
        image = _dataset_image(int(spec), dataset, split, data_dir, task)
    elif spec and os.path.isfile(spec):
        try:
            image = tf.io.decode_image(tf.io.read_file(spec), channels=channels, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            raise ValueError(f"Invalid `--image`: {spec!r} {undecodable_reason(spec)}.") from None
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
    """Writes the picture of `--output` and prints its path; returns the path."""
    if len(argv) > 1:
        raise ValueError(f"Unexpected positional arguments {argv[1:]}; all options are --flags (see --help).")
    if not FLAGS.output or not FLAGS.output.lower().endswith(".png"):
        raise ValueError(f"Invalid `--output`: received --output={FLAGS.output!r}, expected a path ending in .png.")
    model = load_keras_file(FLAGS.model, name="--model")
    height, width, channels = model.inputs[0].shape[1:]
    if height is None or width is None:
        raise ValueError(f"Invalid `--model`: its input size {(height, width)} is not fixed; save it with a fixed one.")
    task = "detection" if is_detector(model) else "classification"
    image = load_image(FLAGS.image, (height, width), channels, FLAGS.dataset, FLAGS.split, FLAGS.data_dir, task)
    query = parse_query(FLAGS.query, (height, width))
    maps = attention_maps(model, image[None], [query], layers=FLAGS.layer)
    figure = attention_figure(image, query, {name: m[0, 0] for name, m in maps.items()})
    try:
        save_png(figure, FLAGS.output)
    except OSError as error:
        where = f"{error.strerror}: {error.filename!r}" if error.filename else str(error)
        raise ValueError(
            f"Invalid `--output`: cannot write {FLAGS.output!r} ({where}); pass a .png path in a folder you can write."
        ) from None
    print(FLAGS.output)
    return FLAGS.output


main = program_main(FLAGS, run, "aa-visualize: error: ")


def run_main():
    """Entry point of `python -m aa_keras.visualize` and the `aa-visualize` console script."""
    run_program(FLAGS, main)
