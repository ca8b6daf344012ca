"""The exporter's command line (`aa-export`): a Keras image classifier to SavedModel, TFLite and
ONNX (`export.classification`), or with `--task=detection` a RetinaNet detector
(`export.detection`), each artifact checked against the Keras model.

    python -m aa_keras.export.export --model=runs/aa_small/model.keras --output_dir=runs/aa_small/export
    python -m aa_keras.export.export --model=aa_small --image_size=32 --formats=saved_model,tflite,onnx \
        --output_dir=/tmp/aa_small_export
    python -m aa_keras.export.export --task=detection --model=runs/quick_detection/aa_retinanet_r18/model.keras \
        --output_dir=/tmp/aa_retinanet_export

The artifacts and the report are described in `export.classification` and `export.detection`.
Nothing is written to `--output_dir` unless every artifact of the model passed its parity check
(`export.staging`).
"""

import os
import sys

import numpy as np
from absl import app, flags, logging

from aa_keras.applications import DETECTOR_NAMES, build_detector
from aa_keras.data import TASKS
from aa_keras.data import classification as data
from aa_keras.data import detection as detection_data
from aa_keras.programs import field_flags, files
from aa_keras.programs.command_line import run_program
from aa_keras.validation import positive_int

from . import classification, model_source
from .parity import ParityError
from .settings import ExportSettings
from .staging import REPORT_FILE, check_output_dir


def dataset_images(name, split, image_shape, count, data_dir=None, task="classification"):
    """The first `count` images of `split` of the dataset `name`, through the evaluation input
    pipeline of `task`: `aa_keras.data.classification.build_dataset` for classification,
    `aa_keras.data.detection.build_dataset` for detection (float32 in [0, 1])."""
    height, width, _ = image_shape
    if height != width:
        raise ValueError(f"The input pipeline makes square images; the model's input is {(height, width)}.")
    pipeline = detection_data if task == "detection" else data
    dataset = pipeline.build_dataset(name, split, height, global_batch_size=None, data_dir=data_dir, training=False)
    images = [np.asarray(image) for image, _ in dataset.take(count).as_numpy_iterator()]
    if not images:
        raise ValueError(f"Invalid `--dataset`: split {split!r} of {name!r} gave no images.")
    return np.stack(images).astype(np.float32)


# The CLI's own flags, added to absl's global flags by run_main only, so that the trainer's and
# the exporter's flags (both have --model, --dataset, ...) can be imported into one process.
FLAGS = flags.FlagValues()
DEFAULT_DATASETS = {"classification": "glyph_pairs", "detection": "glyph_boxes"}
DEFAULT_FORMATS = {"classification": ["saved_model", "tflite"], "detection": ["saved_model", "tflite_raw"]}
flags.DEFINE_enum("task", "classification", TASKS, "Export an image classifier, or a RetinaNet detector.", flag_values=FLAGS)
flags.DEFINE_string(
    "model", None, "A `.keras` model file, or a builder name for a randomly initialised model with the classes of "
    "--dataset: a name of aa_keras.applications.MODEL_NAMES (e.g. aa_small), or of DETECTOR_NAMES with "
    "--task=detection."
, flag_values=FLAGS)
flags.DEFINE_string("output_dir", None, "Directory for the artifacts and export_report.json.", flag_values=FLAGS)
flags.DEFINE_list(
    "formats", None, f"Artifacts to write. Classification: from {classification.FORMATS}, default saved_model,tflite. Detection: "
    "from saved_model, tflite_raw, tflite, tflite_int8 (the whole detector, float32 or int8), default "
    "saved_model,tflite_raw.",
    flag_values=FLAGS,
)
flags.DEFINE_string("baseline", "conv_small", "Model exported alongside for comparison (file or builder name); 'none' for none.", flag_values=FLAGS)
flags.DEFINE_string(
    "dataset", None, "Dataset of the task's input pipeline for calibration and parity images (a TFDS name, "
    "image_folder:PATH or coco_json:PATH); default glyph_pairs (classification) or glyph_boxes (detection). Given "
    "explicitly, it also names the classes of a model that has no labels.txt next to it (when the numbers of classes "
    "agree).", flag_values=FLAGS,
)
flags.DEFINE_string("data_dir", None, "TFDS data_dir of the dataset.", flag_values=FLAGS)
flags.DEFINE_integer("num_images", 200, "Test-split images for the parity checks.", flag_values=FLAGS)
flags.DEFINE_integer("calibration_images", 100, "Train-split images for int8 calibration.", flag_values=FLAGS)
# --image_size, --batch, --threads, --latency_runs, --uint8_input, --overwrite: from the fields of
# `ExportSettings` (`aa_keras.programs.field_flags`).
field_flags.define_flags(ExportSettings, FLAGS)
flags.DEFINE_bool(
    "safe_mode", True, "Keras's safe mode for loading .keras files: --nosafe_mode allows Lambda layers, whose Python "
    "code stored in the file runs on load; only for files you trust.", flag_values=FLAGS,
)
flags.mark_flags_as_required(["model", "output_dir"], flag_values=FLAGS)
# Flags that only the classification export reads; giving one with --task=detection is an error.
CLASSIFICATION_FLAGS = ("baseline", *(field_flags.flag_name(field) for field in field_flags.flag_fields(ExportSettings)
                                      if field.metadata.get("task") == "classification"))  # fmt: skip


def _export_classifier(formats, dataset):
    classes = None
    if not model_source.is_model_file(FLAGS.model):
        classes = data.num_classes(dataset, FLAGS.data_dir)
    model = model_source.load_model(FLAGS.model, FLAGS.image_size, classes=classes, safe_mode=FLAGS.safe_mode)
    image_shape = model_source.image_shape(model, FLAGS.image_size)
    baseline = None
    if FLAGS.baseline.lower() != "none":
        baseline = model_source.load_model(
            FLAGS.baseline, image_shape[0], image_shape[2], model.outputs[0].shape[-1], flag="--baseline",
            safe_mode=FLAGS.safe_mode,
        )
    class_names = _class_names(model.outputs[0].shape[-1], dataset, data.class_names)
    eval_images = dataset_images(dataset, "test", image_shape, FLAGS.num_images, FLAGS.data_dir)
    calibration_images = None
    if "tflite_int8" in classification.parse_formats(formats):
        if FLAGS.calibration_images <= 0:
            raise ValueError(
                f"Invalid `--calibration_images`: received {FLAGS.calibration_images}; the int8 TFLite model needs "
                "at least 1 calibration image (default 100)."
            )
        calibration_images = dataset_images(dataset, "train", image_shape, FLAGS.calibration_images, FLAGS.data_dir)
    settings = ExportSettings(
        **field_flags.flag_values(ExportSettings, FLAGS),
        description={"model": FLAGS.model, "baseline": FLAGS.baseline, "dataset": dataset},
    )
    return classification.export(
        model, FLAGS.output_dir, formats, eval_images, calibration_images, baseline, class_names, settings
    )


def _class_names(classes, dataset, dataset_class_names):
    """The class names that the export carries: those stored with a `.keras` model (its run
    folder's labels.txt), else those of the dataset when `--dataset` was given (and has the
    model's number of classes: otherwise it gives the parity images only) or the model was built
    from a name with its classes; None (with a warning) otherwise."""
    from_file = model_source.is_model_file(FLAGS.model)
    stored = files.stored_labels(FLAGS.model) if from_file else None
    names = None
    if stored is None and (FLAGS["dataset"].present or not from_file):
        names = dataset_class_names(dataset, FLAGS.data_dir)
        if len(names) != classes:
            logging.warning(f"--dataset={dataset} has {len(names)} classes and the model {classes}: its names are not the "
                            "model's, and its images serve the parity checks only.")  # fmt: skip
            names = None
    return files.resolve_labels(FLAGS.model, stored, classes, dataset, names)


def _export_detector(export_detection, formats, dataset):
    if model_source.is_model_file(FLAGS.model):
        model = model_source.load_keras_file(FLAGS.model, "--model", safe_mode=FLAGS.safe_mode)
        if not export_detection.is_detector(model):
            raise ValueError(
                f"Invalid `--model`: {FLAGS.model!r} is not a RetinaNet detector; export it with "
                "--task=classification, or pass a detector's `.keras` file."
            )
    else:
        if FLAGS.model not in DETECTOR_NAMES:
            raise ValueError(
                f"Invalid `--model`: {FLAGS.model!r} is neither an existing `.keras` file nor a detector name; "
                f"with --task=detection builder names are {', '.join(DETECTOR_NAMES)}."
            )
        if FLAGS.image_size is None:
            raise ValueError(f"`--image_size` is required to build the detector {FLAGS.model!r}.")
        model = build_detector(
            FLAGS.model,
            input_shape=(FLAGS.image_size, FLAGS.image_size, 3),
            classes=detection_data.num_classes(dataset, FLAGS.data_dir),
        )
    image_shape = model_source.image_shape(model, FLAGS.image_size)
    class_names = _class_names(model.num_classes, dataset, detection_data.class_names)
    images = dataset_images(dataset, "test", image_shape, FLAGS.num_images, FLAGS.data_dir, task="detection")
    calibration = None
    if "tflite_int8" in formats:
        positive_int("--calibration_images", FLAGS.calibration_images)
        calibration = dataset_images(
            dataset, "train", image_shape, FLAGS.calibration_images, FLAGS.data_dir, task="detection"
        )
    return export_detection.export_detector(
        model, FLAGS.output_dir, images, formats=formats, batch=FLAGS.batch, overwrite=FLAGS.overwrite,
        class_names=class_names,
        calibration_images=calibration,
    )


def main(argv):
    FLAGS.mark_as_parsed()
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from . import detection as export_detection  # keras-hub loads only when a detector is exported.

    task = FLAGS.task
    formats = DEFAULT_FORMATS[task] if FLAGS.formats is None else FLAGS.formats
    dataset = FLAGS.dataset or DEFAULT_DATASETS[task]
    try:
        valid = export_detection.FORMATS if task == "detection" else classification.FORMATS
        misplaced = [name for name in formats if name not in valid]
        if misplaced or not formats:
            problem = f"{misplaced} do not apply to --task={task}" if misplaced else "no format given"
            raise ValueError(f"Invalid `--formats`: {problem}; use names from {valid}.")
        if task == "detection":
            given = [name for name in CLASSIFICATION_FLAGS if FLAGS[name].present]
            if given:
                raise ValueError(
                    f"Invalid flags for --task=detection: {', '.join('--' + name for name in given)} apply to "
                    "--task=classification only."
                )
        positive_int("--num_images", FLAGS.num_images)
        sources = [spec for spec in (FLAGS.model, FLAGS.baseline) if model_source.is_model_file(spec)]
        check_output_dir(FLAGS.output_dir, FLAGS.overwrite, sources)
        if not FLAGS.safe_mode:
            logging.warning("--nosafe_mode: loading .keras files runs the Python code of their Lambda layers.")
        if task == "detection":
            result = _export_detector(export_detection, formats, dataset)
        else:
            result = _export_classifier(formats, dataset)
    except (ValueError, ParityError) as error:
        sys.exit(f"aa-export: error: {error}")
    print(result["table"])
    print(f"Wrote {os.path.join(os.path.abspath(FLAGS.output_dir), REPORT_FILE)}")


def run_main():
    """Entry point of the `aa-export` console script."""
    run_program(FLAGS, main)


if __name__ == "__main__":
    run_main()
