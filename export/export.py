"""Exports a Keras image classifier to SavedModel, TFLite and ONNX and proves each artifact
computes what the Keras model computes; with `--task=detection`, a RetinaNet detector (see
`export.detection` for its artifacts).

    python -m export.export --model=runs/aa_small/model.keras --output_dir=runs/aa_small/export
    python -m export.export --model=aa_small --image_size=32 --formats=saved_model,tflite,onnx \
        --output_dir=/tmp/aa_small_export
    python -m export.export --task=detection --model=runs/quick_detection/aa_retinanet_r18/model.keras \
        --output_dir=/tmp/aa_retinanet_export

Artifacts (for the model, and under `baseline/` for the `--baseline` model):
    saved_model/          `serving_default`: images (B, H, W, C) float32 in [0, 1], or uint8 in
                          [0, 255] with `--uint8_input`, -> predictions (B, classes)
                          `metadata`: image_shape, batch, class_names (see export.saved_model)
    labels.txt            the class names, one a line in index order (when known: see
                          `training.files.resolve_labels`)
    model_float32.tflite, model_float16.tflite, model_dynamic.tflite, model_int8.tflite
                          batch `--batch`; int8 takes int8 images and gives int8 scores
    model.onnx            images (B, H, W, C) float32 -> predictions
    export_report.json    per artifact: size, median latency, parity metrics and check, ops

Everything is written to a temporary directory next to `--output_dir` and moved into place only
when every artifact of the model passed its parity check (see `export.parity`; the baseline's
checks are reported, not required) and every TFLite model uses builtin ops only.
"""

import os
import shutil
import sys
import tempfile

import numpy as np
from absl import app, flags, logging

from aa_keras import files
from aa_keras.applications import DETECTOR_NAMES, build_detector
from aa_keras.command_line import run_program
from aa_keras.data import classification as data
from aa_keras.data import detection as detection_data
from aa_keras.validation import is_int
from export import model_source, parity, report, saved_model, tflite
from export.parity import ParityError
from export.staging import REPORT_FILE, check_output_dir, staged_output

TFLITE_KINDS = tuple(f"tflite_{mode}" for mode in tflite.MODES)
ARTIFACT_KINDS = ("saved_model", *TFLITE_KINDS, "onnx")
FORMATS = ("saved_model", "tflite", *TFLITE_KINDS, "onnx")


def parse_formats(formats):
    """`formats` (comma-separated names, or a list) as artifact kinds in `ARTIFACT_KINDS` order;
    `tflite` stands for all four TFLite modes."""
    names = [name.strip() for name in (formats.split(",") if isinstance(formats, str) else formats)]
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise ValueError(
            f"Invalid `--formats`: received {formats!r}, unknown {unknown or 'empty'}; use names from {FORMATS}."
        )
    kinds = {kind for name in names for kind in (TFLITE_KINDS if name == "tflite" else (name,))}
    return [kind for kind in ARTIFACT_KINDS if kind in kinds]


def _artifact_path(directory, kind):
    if kind == "saved_model":
        return os.path.join(directory, "saved_model")
    if kind == "onnx":
        return os.path.join(directory, "model.onnx")
    return os.path.join(directory, f"model_{kind.removeprefix('tflite_')}.tflite")


def write_artifacts(model, directory, kinds, image_shape, batch, uint8_input, calibration_images, class_names=None):
    """Writes the artifacts `kinds` of `model` into `directory`, and `labels.txt` with
    `class_names` unless they are None.

    Returns:
        {kind: {"path": ..., "ops": sorted op names}} (ops only for TFLite and ONNX).
    """
    os.makedirs(directory, exist_ok=True)
    if class_names is not None:
        files.write_labels(os.path.join(directory, files.LABELS), class_names)
    artifacts = {}
    if "saved_model" in kinds:
        path = _artifact_path(directory, "saved_model")
        saved_model.write_saved_model(
            model, path, image_shape, uint8_input=uint8_input, check_input=True, class_names=class_names
        )
        artifacts["saved_model"] = {"path": path}
    tflite_kinds = [kind for kind in kinds if kind in TFLITE_KINDS]
    if tflite_kinds:
        source = tempfile.mkdtemp(prefix=".tflite_source-", dir=directory)
        saved_model.write_saved_model(model, source, image_shape, batch=batch)
        calibration = parity.batches(calibration_images, batch)[0] if "tflite_int8" in tflite_kinds else None
        for kind in tflite_kinds:
            flatbuffer = tflite.convert(source, kind.removeprefix("tflite_"), calibration)
            ops = tflite.list_ops(flatbuffer)
            tflite.check_builtin_ops(ops, what=f"{kind} model")
            path = _artifact_path(directory, kind)
            with open(path, "wb") as f:
                f.write(flatbuffer)
            artifacts[kind] = {"path": path, "ops": ops}
        shutil.rmtree(source)
    if "onnx" in kinds:
        from export import onnx_model  # tf2onnx and onnxruntime load only when ONNX is asked for.

        path = _artifact_path(directory, "onnx")
        onnx_model.write_onnx(model, path, image_shape)
        artifacts["onnx"] = {"path": path, "ops": onnx_model.list_ops(path)}
    return artifacts


def _runner(kind, path, threads):
    if kind == "saved_model":
        return saved_model.SavedModelRunner(path)
    if kind == "onnx":
        from export import onnx_model

        return onnx_model.OnnxRunner(path, threads)
    return tflite.TFLiteRunner(path, threads)


def evaluate(model, artifacts, images, batch, threads, latency_runs):
    """One report row per artifact: parity with `model` on `images`, size and latency."""
    reference = parity.predict(lambda x: np.asarray(model(x, training=False)), images, batch)
    rows = []
    for kind, artifact in artifacts.items():
        runner = _runner(kind, artifact["path"], threads)
        values = parity.metrics(parity.predict(runner, images, batch), reference)
        rows.append({
            "artifact": kind,
            "file": artifact["path"],
            "runtime": runner.runtime,
            "size_bytes": report.size_bytes(artifact["path"]),
            "latency_ms": report.median_latency_ms(runner, images[:batch], latency_runs),
            "parity": values,
            "check": parity.check(kind, values),
            **({"ops": artifact["ops"]} if "ops" in artifact else {}),
        })
    return rows


def snap_to_8_bit(images):
    """Float images in [0, 1] rounded to the 8-bit grid, so that float and uint8 inputs carry
    the same values."""
    return (np.round(np.clip(images, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def export(
    model,
    output_dir,
    formats,
    eval_images,
    calibration_images=None,
    baseline=None,
    batch=1,
    threads=1,
    latency_runs=50,
    uint8_input=False,
    overwrite=False,
    image_size=None,
    description=None,
    class_names=None,
):
    """Exports `model` (and `baseline`) to `output_dir` and checks every artifact.

    Args:
        model, baseline: Keras models from (B, H, W, C) float32 images in [0, 1] to
            (B, classes); `baseline` (optional) is exported the same way under `baseline/`.
        output_dir: where the artifacts go; must be absent or empty unless `overwrite`.
        formats: names from `FORMATS` (comma-separated string or list).
        eval_images: (N, H, W, C) float32 images for parity and latency.
        calibration_images: (M, H, W, C) float32 images for int8 calibration, M > 0; used
            (and required) only when `formats` has tflite_int8.
        batch: static batch of the TFLite models, and the batch of parity and latency runs.
        threads: interpreter / onnxruntime threads.
        latency_runs: timed runs per artifact (the median is reported).
        uint8_input: SavedModel signature takes uint8 images and scales them inside.
        image_size: fixes an unknown spatial input size (see `model_source.image_shape`).
        description: free-form dict recorded in the report (e.g. the command line flags).
        class_names: the names of the classes, one per output, written to `labels.txt` and the
            SavedModel's `metadata` signature (of the model and the baseline); None for none.

    Returns:
        The report dict, also written to `output_dir/export_report.json`.

    Raises:
        ValueError: bad arguments (before anything is written).
        ParityError: an artifact of `model` failed its check; nothing is left in `output_dir`.
    """
    kinds = parse_formats(formats)
    output_dir = check_output_dir(output_dir, overwrite)
    for name, value in (("batch", batch), ("threads", threads), ("latency_runs", latency_runs)):
        if not is_int(value) or value <= 0:
            raise ValueError(f"Invalid `--{name}`: expected a positive int, received {value!r}.")
    image_shape = model_source.image_shape(model, image_size)
    classes = model.outputs[0].shape[-1]
    if class_names is not None and len(class_names) != classes:
        raise ValueError(
            f"Invalid `class_names`: received {len(class_names)} names, expected one per class of the model ({classes})."
        )
    checked = [("evaluation", eval_images)]
    if "tflite_int8" in kinds:
        if calibration_images is None or len(calibration_images) == 0:
            raise ValueError(
                "Invalid `--calibration_images`: the int8 TFLite model needs at least one calibration image; "
                "pass --calibration_images=N with N > 0 (default 100), or leave tflite_int8 out of --formats."
            )
        checked.append(("calibration", calibration_images))
    for name, images in checked:
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape) or len(images) == 0:
            raise ValueError(
                f"The {name} images have shape {images.shape}; the model needs (N, *{image_shape}) "
                "with N > 0. Check `--dataset`, `--image_size` and the model's input channels."
            )
    models = [("model", model)]
    if baseline is not None:
        if tuple(model_source.image_shape(baseline, image_size)) != tuple(image_shape):
            raise ValueError(
                f"Invalid `--baseline`: its input {baseline.inputs[0].shape} differs from the model's "
                f"{image_shape}; the baseline must take the same images."
            )
        models.append(("baseline", baseline))
    eval_images = snap_to_8_bit(eval_images)

    with staged_output(output_dir) as staging:
        rows = []
        for label, network in models:
            directory = staging if label == "model" else os.path.join(staging, "baseline")
            artifacts = write_artifacts(
                network, directory, kinds, image_shape, batch, uint8_input, calibration_images, class_names
            )
            for row in evaluate(network, artifacts, eval_images, batch, threads, latency_runs):
                row["model"] = label
                row["file"] = os.path.join(output_dir, os.path.relpath(row["file"], staging))
                rows.append(row)
        report.add_baseline_ratios(rows)
        result = {
            "description": description or {},
            "image_shape": list(image_shape),
            "batch": batch,
            "threads": threads,
            "latency_runs": latency_runs,
            "num_eval_images": len(eval_images),
            "num_calibration_images": 0 if calibration_images is None else len(calibration_images),
            "uint8_input": uint8_input,
            "class_names": class_names,
            "rows": rows,
            "table": report.format_table(rows),
        }
        # The baseline is there for comparison: its rows report their checks but only the
        # model's artifacts, the ones to deploy, must pass.
        failed = [row["artifact"] for row in rows if row["model"] == "model" and not row["check"]["passed"]]
        if failed:
            raise ParityError(
                f"Artifacts failed their parity check: {failed}; nothing was written to "
                f"{output_dir!r}.\n{result['table']}"
            )
        report.write_json(os.path.join(staging, REPORT_FILE), result)
    return result


def dataset_images(name, split, image_shape, count, data_dir=None, task="classification"):
    """The first `count` images of `split` of the dataset `name`, through the evaluation input
    pipeline of `task`: `training.data.build_dataset` for classification,
    `training.detection_data.build_dataset` for detection (float32 in [0, 1])."""
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
TASKS = ("classification", "detection")
DEFAULT_DATASETS = {"classification": "glyph_pairs", "detection": "glyph_boxes"}
DEFAULT_FORMATS = {"classification": ["saved_model", "tflite"], "detection": ["saved_model", "tflite_raw"]}
# Flags that only the classification export reads; giving one with --task=detection is an error.
CLASSIFICATION_FLAGS = ("baseline", "threads", "latency_runs", "uint8_input")
flags.DEFINE_enum("task", "classification", TASKS, "Export an image classifier, or a RetinaNet detector.", flag_values=FLAGS)
flags.DEFINE_string(
    "model", None, "A `.keras` model file, or a builder name for a randomly initialised model with the classes of "
    "--dataset: a name of aa_keras.applications.MODEL_NAMES (e.g. aa_small), or of DETECTOR_NAMES with "
    "--task=detection."
, flag_values=FLAGS)
flags.DEFINE_string("output_dir", None, "Directory for the artifacts and export_report.json.", flag_values=FLAGS)
flags.DEFINE_list(
    "formats", None, f"Artifacts to write. Classification: from {FORMATS}, default saved_model,tflite. Detection: "
    "from saved_model, tflite_raw, tflite, tflite_int8 (the whole detector, float32 or int8), default "
    "saved_model,tflite_raw.",
    flag_values=FLAGS,
)
flags.DEFINE_integer("image_size", None, "Input height and width; required for builder names.", flag_values=FLAGS)
flags.DEFINE_integer("batch", 1, "Batch size of the TFLite models and of the parity and latency runs.", flag_values=FLAGS)
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
flags.DEFINE_integer("threads", 1, "Threads of the LiteRT interpreter and onnxruntime.", flag_values=FLAGS)
flags.DEFINE_integer("latency_runs", 50, "Timed runs per artifact; the median is reported.", flag_values=FLAGS)
flags.DEFINE_bool("uint8_input", False, "SavedModel takes uint8 images in [0, 255] and scales them to [0, 1] inside.", flag_values=FLAGS)
flags.DEFINE_bool(
    "overwrite", False, "Replace a previous export in --output_dir (a folder holding export_report.json and the "
    "exporter's artifacts only; any other folder is refused).", flag_values=FLAGS,
)
flags.DEFINE_bool(
    "safe_mode", True, "Keras's safe mode for loading .keras files: --nosafe_mode allows Lambda layers, whose Python "
    "code stored in the file runs on load; only for files you trust.", flag_values=FLAGS,
)
flags.mark_flags_as_required(["model", "output_dir"], flag_values=FLAGS)


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
    if "tflite_int8" in parse_formats(formats):
        if FLAGS.calibration_images <= 0:
            raise ValueError(
                f"Invalid `--calibration_images`: received {FLAGS.calibration_images}; the int8 TFLite model needs "
                "at least 1 calibration image (default 100)."
            )
        calibration_images = dataset_images(dataset, "train", image_shape, FLAGS.calibration_images, FLAGS.data_dir)
    return export(
        model,
        FLAGS.output_dir,
        formats,
        eval_images,
        calibration_images,
        baseline=baseline,
        batch=FLAGS.batch,
        threads=FLAGS.threads,
        latency_runs=FLAGS.latency_runs,
        uint8_input=FLAGS.uint8_input,
        overwrite=FLAGS.overwrite,
        image_size=FLAGS.image_size,
        description={"model": FLAGS.model, "baseline": FLAGS.baseline, "dataset": dataset},
        class_names=class_names,
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
        model = model_source.load_keras_file(FLAGS.model, safe_mode=FLAGS.safe_mode)
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
            num_classes=detection_data.num_classes(dataset, FLAGS.data_dir),
        )
    image_shape = model_source.image_shape(model, FLAGS.image_size)
    class_names = _class_names(model.num_classes, dataset, detection_data.class_names)
    images = dataset_images(dataset, "test", image_shape, FLAGS.num_images, FLAGS.data_dir, task="detection")
    calibration = None
    if "tflite_int8" in formats:
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
    from export import detection as export_detection  # keras-hub loads only when a detector is exported.

    task = FLAGS.task
    formats = DEFAULT_FORMATS[task] if FLAGS.formats is None else FLAGS.formats
    dataset = FLAGS.dataset or DEFAULT_DATASETS[task]
    try:
        valid = export_detection.FORMATS if task == "detection" else FORMATS
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
