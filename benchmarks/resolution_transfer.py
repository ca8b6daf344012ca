"""A model trained at 32x32, used at 64x64: resampled relative tables and a short fine-tune.

    python -m benchmarks.resolution_transfer                         # trains the default aa_small first
    python -m benchmarks.resolution_transfer --source=runs/quick/aa_small/model.keras
    python -m benchmarks.resolution_transfer --finetune_steps=40 --detection_steps=5   # shorter

1. The source: `aa_small` trained on `glyph_pairs` at 32x32 with the default recipe (`quick`,
   the trainer's default run), or the model given by `--source`.
2. Two ways to be at 64x64: (a) `upsampled`: the same test images resized 2x (content scaled
   with the image); (b) `canvas64`: `glyph_pairs/canvas64`, 64x64 canvases with glyphs of the
   same pixel size placed at least 32 px apart (same content scale, larger canvas). For each,
   the test accuracy of the source resized with `resize_model(..., method="linear")`, with
   `"edge"`, and after a short fine-tune at 64 started from the source through the trainer's
   `init_from` (tables with `--finetune_method`, Adam at `--finetune_learning_rate`), next to
   the source's accuracy at 32x32. The resized models are also evaluated after re-estimating
   their BatchNormalization statistics at 64 (`resize_model(..., batch_norm_data=...)` over the
   first `--batch_norm_images` training images at 64) and, as a diagnostic, with the statistics of
   each test batch. The fine-tunes end with the trainer's re-estimation (their accuracy with the
   moving statistics is kept too).
3. ImageNet to COCO at small scale: `aa_resnet18` trained briefly on glyph_pairs at 64x64, then
   `aa_retinanet_r18` at 128x128 on `glyph_boxes` started from it through `init_from` (the
   detector takes the classifier's attention settings and its weights, tables resampled).

Results are printed as tables and written as JSON. Step counts are small (the development
machine is a shared 2-core CPU); the JSON records them.
"""

import json
import os
import time

import keras
import tensorflow as tf
from absl import app, flags, logging

from aa_keras.applications import resize_model
from aa_keras.data import classification as data
from aa_keras.training import classification, detection, recipes
from aa_keras.training.init_from import load_source
from aa_keras.training.settings import settings_for
from benchmarks.accuracy import accuracy

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "A .keras aa_small trained at 32x32 (or its run folder); default: train one.")
flags.DEFINE_string("work_dir", "runs/resolution_transfer", "Where the runs are written.")
flags.DEFINE_string("data_dir", None, "TFDS data directory.")
flags.DEFINE_integer("source_epochs", 4, "Epochs of the source run (the default run's 4).")
flags.DEFINE_integer("finetune_steps", None, "Steps of the 1-epoch fine-tune at 64 (default: the whole epoch).")
flags.DEFINE_list("finetune_method", ["linear", "edge"], "Table resampling of the fine-tunes of (a) and (b).")
flags.DEFINE_float(
    "finetune_learning_rate", 4e-4, "Peak Adam learning rate per 256 images of the fine-tunes (the recipe's / 10)."
)
flags.DEFINE_boolean("detection", True, "Run part 3 (classifier at 64 into a detector at 128).")
flags.DEFINE_integer("classifier_steps", 30, "Steps of the aa_resnet18 classifier at 64x64.")
flags.DEFINE_integer("detection_steps", 10, "Steps of the aa_retinanet_r18 detector at 128x128.")
flags.DEFINE_integer("detection_eval_examples", 40, "Evaluation images of the detector.")
flags.DEFINE_integer("batch_norm_images", 1000, "Training images at 64 over which the resized models' statistics are re-estimated.")
flags.DEFINE_string("output", "benchmarks/results/resolution_transfer.json", "Where to write the JSON.")

CASES = {"upsampled": "glyph_pairs", "canvas64": "glyph_pairs/canvas64"}


def _run(model_dir, model_name, **kwargs):
    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    settings = settings_for("classification", model_name, model_dir, data_dir=FLAGS.data_dir, verbose=False, **kwargs)
    _, metrics = classification.train(tf.distribute.get_strategy(), settings)
    return metrics, time.perf_counter() - started


def resolution_transfer():
    """Part 1 and 2: the accuracies at 32 and at 64 (resized and fine-tuned) of each case."""
    source_path = FLAGS.source
    result = {}
    if source_path is None:
        source_path = os.path.join(FLAGS.work_dir, "aa_small_32")
        recipe = recipes.get_recipe("quick", epochs=FLAGS.source_epochs)
        metrics, seconds = _run(source_path, model_name="aa_small", recipe=recipe)
        result["source_run"] = {"epochs": recipe.epochs, "steps": metrics["steps"], "seconds": round(seconds)}
    source = load_source(source_path)
    result["source"] = source_path
    result["accuracy_32"] = accuracy(source, "glyph_pairs", 32, FLAGS.data_dir)
    for (case, dataset), method in zip(CASES.items(), FLAGS.finetune_method):
        data.prepare(dataset, FLAGS.data_dir)
        # Fresh models per case: a call with training=True updates the BatchNormalization averages.
        resized = {name: resize_model(source, (64, 64, 3), name) for name in ("linear", "edge")}
        row = {name: accuracy(model, dataset, 64, FLAGS.data_dir) for name, model in resized.items()}
        row.update({
            f"{name}_batch_statistics": accuracy(model, dataset, 64, FLAGS.data_dir, batch_statistics=True)
            for name, model in resized.items()
        })
        # The trainer's end-of-run re-estimation, offered by resize_model: its first training images at 64.
        images = data.build_dataset(dataset, f"train[:{FLAGS.batch_norm_images}]", 64, global_batch_size=128,
                                    data_dir=FLAGS.data_dir)  # fmt: skip
        row.update({
            f"{name}_re_estimated": accuracy(
                resize_model(source, (64, 64, 3), name, batch_norm_data=images), dataset, 64, FLAGS.data_dir
            )
            for name in ("linear", "edge")
        })
        recipe = recipes.get_recipe(
            "quick", dataset=dataset, image_size=64, epochs=1, learning_rate=FLAGS.finetune_learning_rate
        )
        metrics, seconds = _run(os.path.join(FLAGS.work_dir, f"finetune_{case}"), model_name="aa_small",
                                recipe=recipe, steps_per_epoch=FLAGS.finetune_steps, init_from=source_path,
                                init_method=method)  # fmt: skip
        before = metrics.get("batch_norm", {}).get("before", {}).get("test_accuracy")
        row.update(finetuned=metrics["test_accuracy"], finetuned_moving_statistics=before,
                   finetune_method=method, finetune_steps=metrics["steps"],
                   finetune_learning_rate=recipe.learning_rate, finetune_seconds=round(seconds))  # fmt: skip
        result[case] = row
        print(f"{case}: {row}", flush=True)
    return result


def imagenet_to_coco():
    """Part 3: a classifier at 64 gives its weights to a detector at 128 through init_from."""
    classifier_dir = os.path.join(FLAGS.work_dir, "aa_resnet18_64")
    recipe = recipes.get_recipe("quick", image_size=64, epochs=1, global_batch_size=32)
    classifier, seconds = _run(classifier_dir, model_name="aa_resnet18", recipe=recipe,
                               steps_per_epoch=FLAGS.classifier_steps)  # fmt: skip
    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    _, detector = detection.train(tf.distribute.get_strategy(), settings_for(
        "detection", "aa_retinanet_r18", os.path.join(FLAGS.work_dir, "aa_retinanet_r18_128"),
        recipe=recipes.get_detection_recipe("quick_detection", epochs=1), data_dir=FLAGS.data_dir,
        steps_per_epoch=FLAGS.detection_steps, eval_examples=FLAGS.detection_eval_examples, verbose=False,
        init_from=classifier_dir,
    ))  # fmt: skip
    return {
        "classifier": {"steps": classifier["steps"], "test_accuracy": classifier["test_accuracy"], "seconds": round(seconds)},
        "detector": {"steps": detector["steps"], "AP": detector["coco"]["AP"], "AP50": detector["coco"]["AP50"],
                     "eval_examples": FLAGS.detection_eval_examples, "seconds": round(time.perf_counter() - started)},
    }  # fmt: skip


def table(result):
    lines = [
        "| 64x64 test images | 32x32 model at 32 | resized, linear / edge | re-estimated at 64, linear / edge | "
        "BN on batch statistics, linear / edge | fine-tuned at 64, re-estimated (moving) |",
        "|---|---|---|---|---|---|",
    ]
    for case in CASES:
        row = result[case]
        moving = row["finetuned_moving_statistics"]
        lines.append(
            f"| {case} | {result['accuracy_32']:.2%} | {row['linear']:.2%} / {row['edge']:.2%} | "
            f"{row['linear_re_estimated']:.2%} / {row['edge_re_estimated']:.2%} | "
            f"{row['linear_batch_statistics']:.2%} / {row['edge_batch_statistics']:.2%} | "
            f"{row['finetuned']:.2%} ({'n/a' if moving is None else f'{moving:.2%}'}; "
            f"{row['finetune_steps']} steps from {row['finetune_method']}) |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    result = resolution_transfer()
    print(table(result), flush=True)
    if FLAGS.detection:
        result["imagenet_to_coco"] = imagenet_to_coco()
        print(json.dumps(result["imagenet_to_coco"], indent=2), flush=True)
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"written to {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
