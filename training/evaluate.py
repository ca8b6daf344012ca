"""Evaluates a saved `.keras` model on a split of a dataset: accuracy and top-5 accuracy of a
classifier, the COCO metrics of a RetinaNet detector (`training.detection.evaluate_detector`,
the trainer's own evaluation).

    python -m aa_keras.training.evaluate --model=runs/quick/aa_small/model.keras --dataset=glyph_pairs
    python -m aa_keras.training.evaluate --model=runs/quick_detection/aa_retinanet_r18/model.keras \
        --dataset=glyph_boxes --output=runs/aa_retinanet_r18_test.json

The images go through the evaluation pipeline of the run that trained the model: the
run_config.json next to the model gives its preprocessing (classification) and its objects
per image (detection); without one, a plain resize and 100 objects. The class names stored
with the model (the labels.txt next to it) must be the dataset's.
"""

import os

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from aa_keras.applications.retinanet import is_detector
from aa_keras.data import classification as data
from aa_keras.data import detection as detection_data
from aa_keras.programs import files
from aa_keras.programs.command_line import program_main, run_program
from aa_keras.programs.files import load_keras_file
from aa_keras.programs.run_folder import RunFolder
from aa_keras.validation import positive_int

from . import detection

TOP_K = 5
DEFAULT_MAX_INSTANCES = 100

# The CLI's own flags, added to absl's global flags by run_main only (see training.train).
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "A `.keras` model file (a classifier, or a detector of training.detection).", flag_values=FLAGS)
flags.DEFINE_string("dataset", None, "TFDS dataset to evaluate on, with the model's classes.", flag_values=FLAGS)
flags.DEFINE_string("split", "test", "TFDS split, e.g. test, validation, test[:10%].", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data directory; default: TFDS's (~/tensorflow_datasets).", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 64, "Images per prediction batch.", flag_values=FLAGS)
flags.DEFINE_integer("image_size", None, "Input size, for a model whose input size is not fixed (default: the run's).", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Also write the results to this JSON file.", flag_values=FLAGS)
flags.mark_flags_as_required(["model", "dataset"], flag_values=FLAGS)


def input_size(model, image_size=None, config=None):
    """The square input size of `model`: its own, else `image_size`, else the run's."""
    height, width = model.inputs[0].shape[1:3]
    if height is not None and height != width:
        raise ValueError(f"The model takes {height}x{width} images; the input pipelines make square images.")
    if height is not None:
        if image_size not in (None, height):
            raise ValueError(f"Invalid `--image_size`: received {image_size}, and the model takes {height}x{height} images.")
        return height
    size = image_size or (config or {}).get("image_size")
    if size is None:
        raise ValueError("The model's input size is not fixed and its run folder has none: pass --image_size.")
    return size


def check_classes(model_path, classes, dataset, dataset_names):
    """Raises a ValueError unless the dataset has the model's `classes` classes and the names
    stored with the model (if any) are the dataset's."""
    if len(dataset_names) != classes:
        raise ValueError(
            f"Invalid `--dataset`: {dataset!r} has {len(dataset_names)} classes and the model {model_path!r} "
            f"predicts {classes}; evaluate it on the dataset it was trained on."
        )
    stored = files.stored_labels(model_path)
    if stored is not None and stored != list(dataset_names):
        raise ValueError(
            f"Invalid `--dataset`: the model {model_path!r} was trained on the classes {stored[:10]} (its "
            f"{files.LABELS}), and {dataset!r} has {list(dataset_names)[:10]}; evaluate it on the dataset it was "
            "trained on."
        )


def evaluate_classifier(model, dataset, split, image_size, data_dir=None, batch_size=64, preprocessing="none",
                        verbose=False):
    """Accuracy and top-5 accuracy of the classifier `model` on `split` of `dataset`.

    Args:
        model: Keras model from (B, image_size, image_size, 3) float32 images in [0, 1] to
            (B, classes) scores.
        dataset, split, data_dir: the TFDS data (see `aa_keras.data.classification.build_dataset`).
        image_size: side of the square images.
        batch_size: images per prediction batch.
        preprocessing: the evaluation preprocessing of the recipe ("inception", "cifar", "none").
        verbose: show a progress bar over the images.

    Returns:
        {"examples": N, "accuracy": top-1 fraction, "top5_accuracy": fraction of images whose
        label is among the 5 highest scores (among all of them with fewer than 5 classes)}.
    """
    k = min(TOP_K, model.outputs[0].shape[-1])
    images = data.build_dataset(
        dataset, split, image_size, global_batch_size=batch_size, data_dir=data_dir, preprocessing=preprocessing
    )
    total = data.split_size(dataset, split, data_dir)
    progbar = keras.utils.Progbar(total, verbose=1 if verbose else 0, unit_name="image")

    @tf.function
    def top_k(batch):
        return tf.math.top_k(tf.cast(model(batch, training=False), tf.float32), k).indices

    count, correct, correct_k = 0, 0, 0
    for batch, labels in images:
        found = top_k(batch).numpy()
        labels = labels.numpy()
        correct += int(np.sum(found[:, 0] == labels))
        correct_k += int(np.sum(np.any(found == labels[:, None], axis=-1)))
        count += len(labels)
        progbar.add(len(labels))
    if count == 0:
        raise ValueError(f"Invalid `--split`: {split!r} of {dataset!r} has no images.")
    return {"examples": count, "accuracy": correct / count, "top5_accuracy": correct_k / count}


def format_table(result):
    """The results as a text table: one metric a line (accuracies and AP in percent, COCO's -1 as
    "n/a")."""
    lines = [
        f"{result['model']} on {result['dataset']} ({result['split']}, {result['examples']} images)",
        f"{'metric':<16}{'value':>10}",
    ]
    names = {"accuracy": "accuracy", "top5_accuracy": "top-5 accuracy"}
    for name, value in result["metrics"].items():
        lines.append(f"{names.get(name, name):<16}{detection.percent(value):>10}")
    return "\n".join(lines)


def evaluate(model_path, dataset, split="test", data_dir=None, batch_size=64, image_size=None, verbose=True):
    """Evaluates the `.keras` model `model_path` on `split` of `dataset` (classifier or detector,
    told from the model).

    Returns:
        {"model", "task", "dataset", "split", "examples", "metrics": {name: value},
        "class_names"}: accuracy and top5_accuracy for a classifier, the COCO metrics of
        `training.detection.COCO_METRICS` (AP in [0, 1], -1 where COCO has no objects of a size)
        for a detector.

    Raises:
        ValueError: a missing or unloadable model, an unknown dataset or split, or a dataset
            whose classes are not the model's.
    """
    positive_int("--batch_size", batch_size)
    positive_int("--image_size", image_size, optional=True)
    model = load_keras_file(model_path, name="--model")
    config = RunFolder.of_model(model_path).read_run_config({})
    size = input_size(model, image_size, config)
    if is_detector(model):
        task, names = "detection", detection_data.class_names(dataset, data_dir)
        check_classes(model_path, model.num_classes, dataset, names)
        metrics = detection.evaluate_detector(
            model, dataset, split, size, data_dir=data_dir, batch_size=batch_size,
            max_instances=config.get("max_instances", DEFAULT_MAX_INSTANCES), verbose=verbose,
        )
        examples = detection_data.split_size(dataset, split, data_dir)
    else:
        if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
            raise ValueError(
                f"Invalid `--model`: {model_path!r} maps {model.inputs[0].shape} to "
                f"{[output.shape for output in model.outputs]}; expected an image classifier (one (B, classes) "
                "output) or a RetinaNet detector."
            )
        task, names = "classification", data.class_names(dataset, data_dir)
        check_classes(model_path, model.outputs[0].shape[-1], dataset, names)
        metrics = evaluate_classifier(
            model, dataset, split, size, data_dir=data_dir, batch_size=batch_size,
            preprocessing=config.get("preprocessing", "none"), verbose=verbose,
        )
        examples = metrics.pop("examples")
    return {
        "model": os.path.abspath(model_path),
        "task": task,
        "dataset": dataset,
        "split": split,
        "examples": examples,
        "metrics": metrics,
        "class_names": names,
    }


def check_output(path):
    """Raises a ValueError unless `path` can take the results file (checked before evaluating)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder):
        problem = "is a folder" if os.path.isdir(path) else f"is in {folder!r}, which is not a folder"
        raise ValueError(f"Invalid `--output`: {path!r} {problem}; pass a JSON file name in an existing folder.")


def run(argv):
    """Evaluates `--model` as the flags say, prints the table, writes `--output`; returns the
    results (see `evaluate`)."""
    if len(argv) > 1:
        raise ValueError(f"Unexpected positional arguments {argv[1:]}; all options are --flags (see --help).")
    if FLAGS.output:
        check_output(FLAGS.output)
    result = evaluate(FLAGS.model, FLAGS.dataset, FLAGS.split, FLAGS.data_dir, FLAGS.batch_size, FLAGS.image_size)
    print(format_table(result), flush=True)
    if FLAGS.output:
        files.write_json(FLAGS.output, result)
        print(f"Wrote {os.path.abspath(FLAGS.output)}")
    return result


main = program_main(FLAGS, run, "aa-evaluate: error: ")


def run_main():
    """Entry point of the `aa-evaluate` console script."""
    run_program(FLAGS, main)


if __name__ == "__main__":
    run_main()
