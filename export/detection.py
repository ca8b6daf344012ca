"""Exports a RetinaNet / AA-RetinaNet detector (`aa_keras.applications.retinanet`) and proves
each artifact computes what the Keras model computes.

    from aa_keras.export.detection import export_detector
    export_detector(keras.saving.load_model("runs/det/model.keras"), "runs/det/export", images)

Artifacts:
    saved_model/           `serving_default`: images (batch, H, W, C) float32 in [0, 1] ->
                           boxes (B, K, 4) [ymin, xmin, ymax, xmax] pixels, scores (B, K),
                           classes (B, K) int32, num_detections (B,) int32; decoding and
                           non-maximum suppression included. The batch is static:
                           keras-hub's non-maximum suppression needs it.
                           `metadata`: image_shape, batch, class_names.
    model_raw.tflite       ("tflite_raw") batch `batch`: images -> bbox_regression (B, A, 4)
                           anchor deltas ("center_xywh"), cls_logits (B, A, classes), anchors
                           (A, 4) yxyx pixels: the network without decoding, TFLite builtin ops.
    model.tflite           ("tflite") the whole detector in float32, batch `batch`: images ->
                           boxes, scores, classes, num_detections as the SavedModel's, with
                           decoding and non-maximum suppression rebuilt from ops that have TFLite
                           builtins (keras-hub's own lowers to tf.BitwiseAnd, which has none):
                           keras's box decoding, the class-agnostic suppression keras-hub does
                           (best class's sigmoid score, its IoU and score thresholds, its
                           `max_detections`) as tf.image.non_max_suppression_padded per image
                           (NON_MAX_SUPPRESSION_V4), `tf.argmax` for the classes (ARG_MAX).
                           Entries past num_detections are zero. Checked by `detection_matching`
                           against the SavedModel's detections, not value by value: the two
                           suppressions may break near-ties differently.
    labels.txt             the class names, one a line in index order (when known), also in the
                           SavedModel's `metadata` signature (see export.saved_model).
    export_report.json     per artifact: size and parity metrics with their check, and their table.

Everything is written to a temporary directory next to `output_dir` and moved into place only
when every artifact passed its parity check and uses builtin ops only.
"""

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from aa_keras.applications.retinanet import is_detector
from aa_keras.programs import files
from aa_keras.validation import positive_int

from . import parity, report, saved_model, tflite
from .detection_conversion import convert_builtin
from .detection_checks import detection_check, detection_matching, detection_parity, format_table, raw_parity
from .detection_runner import DetectionRunner, run_batched
from .detection_signatures import serve_builtin_detections, serve_detections, serve_raw
from .parity import ParityError
from .staging import REPORT_FILE, check_output_dir, staged_output

FORMATS = ("saved_model", "tflite_raw", "tflite", "tflite_int8")
TFLITE_FILES = {"tflite_raw": "model_raw.tflite", "tflite": "model.tflite", "tflite_int8": "model_int8.tflite"}


def export_detector(
    model, output_dir, images, formats=("saved_model", "tflite_raw"), batch=1, overwrite=False, class_names=None,
    calibration_images=None,
):
    """Exports `model` to `output_dir` and checks every artifact against it on `images`.

    Args:
        model: a `keras_hub.models.RetinaNetObjectDetector` from `aa_keras.applications.retinanet`.
        output_dir: where the artifacts go; must be absent or empty unless `overwrite`.
        images: (N, H, W, C) float32 images in [0, 1] for the parity checks, N > 0.
        formats: names from `FORMATS`.
        batch: static batch of the artifacts and of their parity runs.
        overwrite: replace a non-empty `output_dir`.
        class_names: the names of the object classes, written to `labels.txt` and the SavedModel's
            `metadata` signature; None for none.
        calibration_images: for "tflite_int8", (M, H, W, C) float32 images in [0, 1] (M > 0,
            not the parity images) to calibrate the int8 ranges, in batches of `batch`.

    Returns:
        The report dict, also written to `output_dir/export_report.json`.

    Raises:
        ValueError: bad arguments, or a TFLite model with non-builtin ops; nothing is written.
        ParityError: an artifact failed its check; nothing is left in `output_dir`.
    """
    formats = [formats] if isinstance(formats, str) else list(formats)
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"Invalid `formats`: received {formats!r}, unknown {unknown or 'empty'}; use names from {FORMATS}.")
    output_dir = check_output_dir(output_dir, overwrite)
    positive_int("batch", batch)
    _check_detector(model, class_names)
    image_shape = tuple(model.inputs[0].shape[1:])
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != image_shape or len(images) == 0:
        raise ValueError(f"Invalid `images`: shape {images.shape}; the detector needs (N, *{image_shape}) with N > 0.")
    calibration = _calibration_batches(calibration_images, image_shape, batch) if "tflite_int8" in formats else None

    with staged_output(output_dir) as staging:
        rows = []
        if class_names is not None:
            files.write_labels(os.path.join(staging, files.LABELS), class_names)
        if "saved_model" in formats:
            rows.append(_export_saved_model(model, staging, images, batch, class_names))
        for kind in [name for name in formats if name.startswith("tflite")]:
            rows.append(_export_tflite(model, kind, staging, images, batch, calibration))
        rows = [
            report.artifact_row(
                "model", kind, path, runtime, values, detection_check(kind, values), ops=ops
            ) for kind, path, runtime, values, ops in rows
        ]
        for row in rows:
            row["file"] = os.path.join(output_dir, os.path.relpath(row["file"], staging))
        result = {
            "image_shape": list(image_shape),
            "batch": batch,
            "num_images": len(images),
            "class_names": class_names,
            "rows": rows,
            "table": format_table(rows),
        }
        failed = [row["artifact"] for row in rows if not row["check"]["passed"]]
        if failed:
            raise ParityError(
                f"Artifacts failed their parity check: {failed}; nothing was written to {output_dir!r}.\n{result['table']}"
            )
        report.write_json(os.path.join(staging, REPORT_FILE), result)
    return result


def _check_detector(model, class_names):
    """A ValueError unless `model` is a RetinaNet detector with one of `class_names` (or None)
    per class."""
    if not is_detector(model):
        raise ValueError(
            f"Invalid `model`: {getattr(model, 'name', model)!r} is not a RetinaNet detector (it needs "
            "`decode_predictions` and `anchor_generator`); build one with aa_keras.applications.retinanet."
        )
    if class_names is not None and len(class_names) != model.num_classes:
        raise ValueError(
            f"Invalid `class_names`: received {len(class_names)} names, expected one per class of the detector "
            f"({model.num_classes})."
        )


def _calibration_batches(calibration_images, image_shape, batch):
    """The int8 calibration images in batches of `batch`; a ValueError unless they are
    (M, *image_shape) with M > 0."""
    calibration_images = np.asarray([] if calibration_images is None else calibration_images, np.float32)
    if calibration_images.ndim != 4 or calibration_images.shape[1:] != image_shape or not len(calibration_images):
        raise ValueError(
            f"Invalid `calibration_images`: shape {calibration_images.shape}; 'tflite_int8' needs "
            f"(M, *{image_shape}) with M > 0 (train images, not the parity images)."
        )
    return parity.batches(calibration_images, batch)[0]


def _reference_detections(model, images, batch):
    """The Keras detector's decoded detections of `images`, the reference of every check."""
    return run_batched(tf.function(serve_detections(model)), images, batch)


def _export_saved_model(model, staging, images, batch, class_names):
    """Writes the SavedModel into `staging` and checks it: (kind, path, runtime, parity, ops)."""
    path = os.path.join(staging, "saved_model")
    image_shape = tuple(model.inputs[0].shape[1:])
    saved_model.write_signature(
        model, serve_detections(model), path, image_shape, batch, check_input=True, class_names=class_names
    )
    outputs = DetectionRunner(path)(images)
    values = detection_parity(outputs, _reference_detections(model, images, batch))
    return "saved_model", path, saved_model.SavedModelRunner.runtime, values, None


def _export_tflite(model, kind, staging, images, batch, calibration):
    """Writes the TFLite artifact `kind` into `staging` (converted from a SavedModel of its serving
    function) and checks it: (kind, path, runtime, parity, ops)."""
    source = tempfile.mkdtemp(prefix=".tflite_source-", dir=staging)
    raw = kind == "tflite_raw"
    serve = serve_raw(model) if raw else serve_builtin_detections(model, batch)
    saved_model.write_signature(model, serve, source, tuple(model.inputs[0].shape[1:]), batch)
    flatbuffer, ops = convert_builtin(
        source,
        "detector's raw network" if raw else "full detector",
        calibration if kind == "tflite_int8" else None,
    )
    shutil.rmtree(source)
    path = os.path.join(staging, TFLITE_FILES[kind])
    with open(path, "wb") as f:
        f.write(flatbuffer)
    if raw:
        runner = Interpreter(model_path=path).get_signature_runner(saved_model.SIGNATURE)
        outputs = run_batched(lambda x: runner(**{saved_model.INPUT_NAME: x}), images, batch)
        values = raw_parity(outputs, run_batched(tf.function(serve), images, batch))
    else:
        values = detection_matching(DetectionRunner(path)(images), _reference_detections(model, images, batch))
    return kind, path, tflite.TFLiteRunner.runtime, values, ops
