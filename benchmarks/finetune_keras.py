"""Fine-tuning a keras.applications network with and without attention, side by side.

    python -m benchmarks.finetune_keras                                   # keras:ResNet50, glyph_pairs, 64x64
    python -m benchmarks.finetune_keras --dataset=image_folder:PATH --image_size=224 --weights=imagenet

Trains `keras:<Name>` with `--augment=paper` and with `--augment=none` through the trainer
(`training.classification.train`, the `finetune` recipe with the overrides below) for the same
number of steps from the same weights, and prints and writes, for each, the test accuracy (on
the first `--eval_examples` test images), the training time (`train_seconds` of metrics.json:
the time in training steps, the first step's tracing included) and the wall time of the run.
`--weights=none` (the default) trains from random weights, because nothing may be downloaded
here; ImageNet weights are the intended use.
"""

import json
import os
import time

import keras
import tensorflow as tf
from absl import app, flags, logging

from aa_keras.data import classification as data
from aa_keras.training import classification, recipes
from aa_keras.training.settings import settings_for

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "ResNet50", "The keras.applications network.")
flags.DEFINE_string("dataset", "glyph_pairs", "Dataset (TFDS name).")
flags.DEFINE_string("data_dir", None, "TFDS data directory.")
flags.DEFINE_string("weights", "none", "imagenet, none, or the path of a weights file (see --weights of the trainer).")
flags.DEFINE_integer("image_size", 64, "Image side (at 64 the paper's preset augments ResNet50's conv3-conv5).")
flags.DEFINE_integer("steps", 100, "Training steps (one epoch of this many steps).")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_float("learning_rate", None, "Peak learning rate per 256 images; default: the finetune recipe's.")
flags.DEFINE_integer("freeze_backbone_epochs", 0, "Frozen first epochs (0: a random backbone gains nothing frozen).")
flags.DEFINE_integer("eval_examples", 500, "Evaluate on the first this many test images.")
flags.DEFINE_string("work_dir", "runs/finetune_keras", "Where the runs are written (a new folder per run).")
flags.DEFINE_string("output", "benchmarks/results/finetune_keras.json", "Where to write the JSON.")

AUGMENT = ("paper", "none")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    data.prepare(FLAGS.dataset, FLAGS.data_dir)
    recipe = recipes.get_recipe(
        "finetune",
        dataset=FLAGS.dataset,
        image_size=FLAGS.image_size,
        epochs=1,
        global_batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        freeze_backbone_epochs=FLAGS.freeze_backbone_epochs,
        eval_split=f"{recipes.RECIPES['finetune'].eval_split}[:{FLAGS.eval_examples}]",
    )
    weights = None if FLAGS.weights == "none" else FLAGS.weights
    run_dir = os.path.join(FLAGS.work_dir, time.strftime("%Y%m%d-%H%M%S"))
    rows = []
    for augment in AUGMENT:
        keras.utils.set_random_seed(0)
        started = time.perf_counter()
        settings = settings_for(
            "classification",
            f"keras:{FLAGS.model}",
            os.path.join(run_dir, augment),
            recipe,
            data_dir=FLAGS.data_dir,
            steps_per_epoch=FLAGS.steps,
            verbose=False,
            model_options=dict(weights=weights, augment=augment, augment_skip_unfit=False),
        )
        _, metrics = classification.train(tf.distribute.get_strategy(), settings)
        rows.append(
            {
                "augment": augment,
                "params": metrics["params"],
                "steps": metrics["steps"],
                "test_accuracy": metrics["test_accuracy"],
                "train_seconds": metrics["train_seconds"],
                "wall_seconds": time.perf_counter() - started,
            }
        )
    print(f"keras:{FLAGS.model} on {FLAGS.dataset} at {FLAGS.image_size}x{FLAGS.image_size}, weights={FLAGS.weights}, "
          f"{FLAGS.steps} steps of {FLAGS.batch_size}, accuracy on {FLAGS.eval_examples} test images")  # fmt: skip
    print(f"{'augment':<10}{'params':>12}{'test accuracy':>16}{'train s':>10}{'wall s':>10}")
    for row in rows:
        print(f"{row['augment']:<10}{row['params']:>12,}{row['test_accuracy'] * 100:>15.2f}%"
              f"{row['train_seconds']:>10.0f}{row['wall_seconds']:>10.0f}")  # fmt: skip
    ratio = rows[0]["train_seconds"] / rows[1]["train_seconds"]
    print(f"training time paper / none: {ratio:.2f}")
    settings = {name: FLAGS[name].value for name in (
        "model", "dataset", "weights", "image_size", "steps", "batch_size", "freeze_backbone_epochs", "eval_examples")}  # fmt: skip
    result = {"settings": {**settings, "learning_rate": recipe.learning_rate, "optimizer": recipe.optimizer},
              "rows": rows, "train_time_ratio_paper_over_none": ratio}  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"Written to {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
