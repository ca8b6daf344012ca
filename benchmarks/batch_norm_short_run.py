"""A short run on a small image folder: test accuracy with BatchNormalization's moving
statistics as training left them, after re-estimating them, and with batch statistics.

    python -m benchmarks.batch_norm_short_run                     # glyph_pairs, 1500 train / 400 test images
    python -m benchmarks.batch_norm_short_run --source=digits     # scikit-learn's 1797 handwritten digits
    python -m benchmarks.batch_norm_short_run --source=/path/to/folder --epochs=3

`--source` is `glyph_pairs` (the embedded dataset written as an image folder by
`scripts/make_image_folder.py`, `--train_images` / `--test_images` of it), `digits` (the 8x8
handwritten digits that scikit-learn ships, scaled 4x to 32x32 grey PNGs, 1,400 train and 397
test images, shuffled with seed 0) or the path of an image folder PATH/<split>/<label>/<image>.
Each of `--model` trains for `--epochs` with the `quick` recipe and re-estimation off
(`batch_norm_images=0`), then the table shows: the last epoch's training accuracy; the test
accuracy with the moving statistics; after `recalibrate_batch_norm` over the first
`--batch_norm_images` training images (evaluation preprocessing, the run's batch size: what the
trainer does at the end of a run); and with each test batch's own statistics (batches of the
run's size). Results go to `--output` as JSON.
"""

import importlib.util
import json
import os

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from aa_keras.applications import recalibrate_batch_norm
from aa_keras.data import classification as data
from aa_keras.programs.files import load_keras_file
from aa_keras.training import classification, recipes
from aa_keras.training.settings import settings_for
from benchmarks.accuracy import accuracy

FLAGS = flags.FLAGS
flags.DEFINE_string("source", "glyph_pairs", "glyph_pairs, digits, or the path of an image folder.")
flags.DEFINE_integer("train_images", 1500, "glyph_pairs: training images written to the folder.")
flags.DEFINE_integer("test_images", 400, "glyph_pairs: test images written to the folder.")
flags.DEFINE_list("model", ["aa_small", "conv_small"], "Networks to train.")
flags.DEFINE_integer("epochs", 3, "Epochs of each run.")
flags.DEFINE_integer("batch_size", None, "Global batch size (default: the quick recipe's 128).")
flags.DEFINE_integer("batch_norm_images", 1000, "Training images the statistics are re-estimated over.")
flags.DEFINE_string("work_dir", "runs/batch_norm_short_run", "Where the folders and runs are written.")
flags.DEFINE_string("data_dir", None, "TFDS data directory of glyph_pairs.")
flags.DEFINE_string("output", None, "JSON output (default: benchmarks/results/batch_norm_short_run_<source>.json).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def glyph_pairs_folder(out):
    """The embedded glyph_pairs written as an image folder (scripts/make_image_folder.py)."""
    spec = importlib.util.spec_from_file_location("make_image_folder", os.path.join(REPO, "scripts", "make_image_folder.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.write_image_folder(out, FLAGS.train_images, FLAGS.data_dir, test_limit=FLAGS.test_images)


def digits_folder(out):
    """scikit-learn's handwritten digits as an image folder (4x nearest-neighbour, grey as RGB)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise app.UsageError("--source=digits needs scikit-learn (pip install scikit-learn).") from None
    digits = load_digits()
    order = np.random.RandomState(0).permutation(len(digits.images))
    for split, indices in (("train", order[:1400]), ("test", order[1400:])):
        for index in indices:
            pixels = np.kron(digits.images[index] / 16.0 * 255.0, np.ones((4, 4))).round().astype(np.uint8)
            path = os.path.join(out, split, str(digits.target[index]), f"{index:04d}.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tf.io.write_file(path, tf.io.encode_png(np.repeat(pixels[..., None], 3, axis=-1)))


def image_folder():
    """The image folder of `--source`, written into `--work_dir` on first use."""
    if FLAGS.source not in ("glyph_pairs", "digits"):
        return FLAGS.source
    out = os.path.join(FLAGS.work_dir, f"{FLAGS.source}_folder")
    if not os.path.isdir(out):
        (glyph_pairs_folder if FLAGS.source == "glyph_pairs" else digits_folder)(out)
    return out


def measure(name, dataset, recipe):
    """Trains `name` with re-estimation off; its accuracies with the three kinds of statistics."""
    model_dir = os.path.join(FLAGS.work_dir, os.path.basename(os.path.normpath(FLAGS.source)), name)
    keras.utils.set_random_seed(0)
    _, metrics = classification.train(
        tf.distribute.get_strategy(), settings_for("classification", name, model_dir, recipe, verbose=False)
    )
    model = load_keras_file(os.path.join(model_dir, "model.keras"))
    batch, size = recipe.global_batch_size, recipe.image_size
    row = {
        "train_accuracy": metrics["history"][-1]["train_accuracy"],
        "steps": metrics["steps"],
        "moving": metrics["test_accuracy"],
        "batch_statistics": accuracy(model, dataset, size, batch_statistics=True, batch_size=batch),
    }
    count = min(FLAGS.batch_norm_images, data.split_size(dataset, "train"))
    images = data.build_dataset(dataset, f"train[:{count}]", size, global_batch_size=batch)
    summary = recalibrate_batch_norm(model, images)
    row["re_estimated"] = accuracy(model, dataset, size, batch_size=batch)
    row["re_estimated_over"] = summary.images
    print(f"{name}: {row}", flush=True)
    return row


def table(rows):
    lines = [
        "| network | steps | last training accuracy | test, moving statistics | test, re-estimated | test, batch statistics |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['steps']} | {row['train_accuracy']:.2%} | {row['moving']:.2%} | "
            f"{row['re_estimated']:.2%} | {row['batch_statistics']:.2%} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    dataset = f"image_folder:{os.path.abspath(image_folder())}"
    recipe = recipes.get_recipe(
        "quick", dataset=dataset, epochs=FLAGS.epochs, global_batch_size=FLAGS.batch_size, batch_norm_images=0
    )
    rows = {name: measure(name, dataset, recipe) for name in FLAGS.model}
    print(table(rows), flush=True)
    output = FLAGS.output or os.path.join(REPO, "benchmarks", "results", f"batch_norm_short_run_{FLAGS.source}.json")
    if FLAGS.source not in ("glyph_pairs", "digits"):
        output = FLAGS.output or os.path.join(FLAGS.work_dir, "batch_norm_short_run.json")
    result = {"source": FLAGS.source, "epochs": FLAGS.epochs, "global_batch_size": recipe.global_batch_size,
              "batch_norm_images": FLAGS.batch_norm_images, "models": rows}  # fmt: skip
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"written to {output}")


if __name__ == "__main__":
    app.run(main)
