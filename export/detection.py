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
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.tools import flatbuffer_utils

from aa_keras import files
from aa_keras.applications.retinanet import detections, is_detector
from aa_keras.validation import positive_int

from . import parity, report, saved_model, tflite
from .parity import ParityError
from .staging import REPORT_FILE, check_output_dir, staged_output

FORMATS = ("saved_model", "tflite_raw", "tflite", "tflite_int8")
TFLITE_FILES = {"tflite_raw": "model_raw.tflite", "tflite": "model.tflite", "tflite_int8": "model_int8.tflite"}
DETECTION_OUTPUTS = ("boxes", "scores", "classes", "num_detections")
RAW_OUTPUTS = ("bbox_regression", "cls_logits", "anchors")
# Bounds of the parity checks: decoded boxes in pixels, scores, raw head outputs.
BOX_TOLERANCE = 1e-2
SCORE_TOLERANCE = 1e-4
RAW_TOLERANCE = 1e-3
# The whole TFLite detector's check: this fraction of the reference detections with at least
# MATCH_MIN_SCORE found again with the same class and at least MATCH_MIN_IOU.
MATCH_FRACTION = 0.95
MATCH_MIN_SCORE = 0.3
MATCH_MIN_IOU = 0.9
# Name scope of the whole detector's decoding and suppression, which its int8 model keeps in float32.
POSTPROCESS_SCOPE = "decode_and_suppress"


def _serve_detections(model):
    def serve(images):
        found = detections(model, images)
        return {name: tf.cast(found[name], tf.int32) if name in ("classes", "num_detections") else found[name]
                for name in DETECTION_OUTPUTS}

    return serve


def _serve_builtin_detections(model, batch):
    """Like `_serve_detections`, with decoding and suppression from TFLite builtin ops (see the
    module docstring); `batch` is the static batch, one suppression per image. The decoding and
    suppression are built in the name scope `POSTPROCESS_SCOPE`."""

    def serve(images):
        raw = model(images, training=False)
        with tf.name_scope(POSTPROCESS_SCOPE):
            return _decode_and_suppress(model, images, raw, batch)

    return serve


def _decode_and_suppress(model, images, raw, batch):
    """The detections of `_serve_builtin_detections` from the network's raw outputs."""
    decoder = model.prediction_decoder
    count = decoder.max_detections
    anchors = tf.concat(list(model.anchor_generator(images).values()), axis=0)
    boxes = keras.utils.bounding_boxes.decode_deltas_to_boxes(
        anchors=anchors,
        boxes_delta=tf.cast(raw["bbox_regression"], tf.float32),
        encoded_format="center_xywh",
        anchor_format=model.anchor_generator.bounding_box_format,
        box_format="yxyx",
        image_shape=tuple(images.shape[1:]),
    )
    probabilities = tf.cast(raw["cls_logits"], tf.float32)
    if decoder.from_logits:
        probabilities = tf.sigmoid(probabilities)
    scores = tf.reduce_max(probabilities, axis=-1)
    classes = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    found = {name: [] for name in DETECTION_OUTPUTS}
    for i in range(batch):
        indices, valid = tf.image.non_max_suppression_padded(
            boxes[i], scores[i], count, decoder.iou_threshold, decoder.confidence_threshold,
            pad_to_max_output_size=True,
        )
        keep = tf.range(count) < valid
        found["boxes"].append(tf.where(keep[:, None], tf.gather(boxes[i], indices), 0.0))
        found["scores"].append(tf.where(keep, tf.gather(scores[i], indices), 0.0))
        found["classes"].append(tf.where(keep, tf.gather(classes[i], indices), 0))
        found["num_detections"].append(tf.cast(valid, tf.int32))
    return {name: tf.stack(values) for name, values in found.items()}


def _serve_raw(model):
    def serve(images):
        outputs = model(images, training=False)
        anchors = model.anchor_generator(images)
        return {
            "bbox_regression": tf.cast(outputs["bbox_regression"], tf.float32),
            "cls_logits": tf.cast(outputs["cls_logits"], tf.float32),
            "anchors": tf.concat(list(anchors.values()), axis=0),
        }

    return serve


def postprocess_nodes(flatbuffer):
    """Output tensor names of what the int8 detector keeps in float32: the ops of the main
    subgraph built in `POSTPROCESS_SCOPE`, every op after them (the output reshapes), and the
    heads' output convolutions with the reshapes and concatenations that lead from them to it."""
    graph, ops, names, producer, consumers = tflite.operator_graph(flatbuffer)
    operators = graph.operators
    scope = [i for i, op in enumerate(operators) if any(names[t].startswith(f"{POSTPROCESS_SCOPE}/") for t in op.outputs)]
    kept = set(scope)
    heads = list(scope)
    while heads:
        for j in (producer[t] for t in operators[heads.pop()].inputs if t in producer):
            if j not in kept and ops[j] in ("RESHAPE", "CONCATENATION", "CONV_2D"):
                kept.add(j)
                if ops[j] != "CONV_2D":
                    heads.append(j)
    stack = list(scope)
    while stack:
        for j in (j for t in operators[stack.pop()].outputs for j in consumers.get(t, [])):
            if j not in kept:
                kept.add(j)
                stack.append(j)
    return [names[t] for i in sorted(kept) for t in operators[i].outputs]


def _convert_int8(source, calibration_batches):
    """The int8 whole detector: the network int8 as the classifier's recipe (`tflite.convert`
    with "int8": each attention block float32) up to its heads' output layers; those, the
    decoding and suppression (`postprocess_nodes`) float32; float32 images in and detections
    out. Measured on a trained aa_retinanet_r18 (`benchmarks/detector_tflite.py`): with the
    heads' output layers int8 too, 13 of the SavedModel's 19 detections with score >= 0.3 were
    found again."""
    calibrated = tflite.calibrate(tf.lite.TFLiteConverter.from_saved_model(source), calibration_batches)
    postprocess = postprocess_nodes(calibrated)
    if not postprocess:
        raise ValueError(f"No op of the detector's source is in the name scope {POSTPROCESS_SCOPE!r}.")
    # The quantizer still rounds a denylisted op's output through int8 where the tensor has a
    # calibrated range and a fixed-range or same-scale op reads it (LOGISTIC, SPLIT): the
    # class scores on a 1/256 grid, the boxes on a grid of several pixels. Without a range it
    # cannot.
    model = flatbuffer_utils.read_model_from_bytearray(calibrated)
    floats = set(postprocess)
    for tensor in model.subgraphs[0].tensors:
        if tensor.name.decode() in floats:
            tensor.quantization = None
    uncalibrated = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return tflite.quantize_int8(
        uncalibrated,
        denylisted_nodes=tflite.attention_block_nodes(calibrated) + postprocess,
        denylisted_ops=list(tflite.INT8_FLOAT_OPS),
        io_type=tf.float32,
    )


def _convert_builtin(source, what, calibration_batches=None):
    """A TFLite flatbuffer of `source` with builtin ops only, float32 or, given
    `calibration_batches`, int8 (`_convert_int8`), and its op names; a ValueError naming the
    offending TF ops otherwise."""
    try:
        flatbuffer = tflite.convert(source, "float32") if calibration_batches is None else _convert_int8(
            source, calibration_batches
        )
    except ValueError:
        raise
    except Exception as error:  # The converter raises its own ConverterError type.
        ops = sorted(set(re.findall(r"\btf\.[A-Z]\w*", str(error))))
        raise ValueError(
            f"The {what} cannot be converted to TFLite builtin ops: the converter rejected {ops or 'some ops'}. "
            "Export 'tflite_raw' (the network and its anchors, builtin ops) and decode on the host."
        ) from None
    ops = tflite.list_ops(flatbuffer)
    tflite.check_builtin_ops(ops, what=what)
    return flatbuffer, ops


def _max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0


def detection_parity(outputs, reference):
    """Parity of decoded detections (dicts of `DETECTION_OUTPUTS` arrays) with the reference:
    equal counts and classes, and the largest box and score differences over valid entries."""
    counts_equal = bool(np.array_equal(outputs["num_detections"], reference["num_detections"]))
    valid = np.arange(reference["scores"].shape[1])[None, :] < np.asarray(reference["num_detections"])[:, None]
    values = {
        "num_detections_equal": counts_equal,
        "classes_equal": counts_equal and bool(np.array_equal(outputs["classes"][valid], reference["classes"][valid])),
        "max_box_diff": _max_abs(outputs["boxes"][valid], reference["boxes"][valid]) if counts_equal else float("inf"),
        "max_score_diff": _max_abs(outputs["scores"][valid], reference["scores"][valid]) if counts_equal else float("inf"),
        "detections": int(np.sum(reference["num_detections"])),
    }
    values["passed"] = bool(
        values["classes_equal"] and values["max_box_diff"] <= BOX_TOLERANCE and values["max_score_diff"] <= SCORE_TOLERANCE
    )
    return values


def _iou(box, boxes):
    """IoU of one [ymin, xmin, ymax, xmax] box with each of `boxes` (K, 4)."""
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=-1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1)
    return intersection / np.maximum(area + areas - intersection, 1e-9)


def detection_matching(outputs, reference):
    """How many of the reference's detections with a score of at least `MATCH_MIN_SCORE` the
    outputs find again: a detection of the same image and class with IoU >= `MATCH_MIN_IOU`,
    each output detection matched once. Passes when the matched fraction is at least
    `MATCH_FRACTION` of at least one compared detection: with no reference detection that
    confident (an untrained or weak detector) the check has nothing to compare and fails, with
    `matched_fraction` None."""
    compared = matched = 0
    for i, count in enumerate(np.asarray(reference["num_detections"])):
        found = int(outputs["num_detections"][i])
        boxes, classes = np.asarray(outputs["boxes"][i][:found], np.float64), np.asarray(outputs["classes"][i][:found])
        free = np.ones(found, bool)
        for j in range(int(count)):
            if reference["scores"][i][j] < MATCH_MIN_SCORE:
                continue
            compared += 1
            candidates = free & (classes == reference["classes"][i][j])
            if candidates.any():
                ious = np.where(candidates, _iou(np.asarray(reference["boxes"][i][j], np.float64), boxes), -1.0)
                best = int(np.argmax(ious))
                if ious[best] >= MATCH_MIN_IOU:
                    free[best] = False
                    matched += 1
    fraction = matched / compared if compared else None
    return {
        "compared": compared,
        "matched": matched,
        "matched_fraction": fraction,
        "passed": compared > 0 and fraction >= MATCH_FRACTION,
    }


def detection_check(kind, values):
    """The check of the detector artifact `kind` from its parity `values`, as a dict of
    `export.parity.check`'s form (metric, value, bound, direction, passed): the criterion that
    decides. The SavedModel must meet several: the first it misses, else the box or score
    difference nearer its tolerance; the raw network: its largest difference."""
    if kind == "tflite_raw":
        metric = max((name for name in values if name.startswith("max_abs_diff_")), key=values.get)
        bound, direction = RAW_TOLERANCE, "max"
    elif kind == "saved_model":
        missed = [name for name in ("num_detections_equal", "classes_equal") if not values[name]]
        if missed:
            metric, bound, direction = missed[0], True, "min"
        else:
            tolerances = {"max_box_diff": BOX_TOLERANCE, "max_score_diff": SCORE_TOLERANCE}
            metric = max(tolerances, key=lambda name: values[name] / tolerances[name])
            bound, direction = tolerances[metric], "max"
    else:
        metric, bound, direction = "matched_fraction", MATCH_FRACTION, "min"
    return {"metric": metric, "value": values[metric], "bound": bound, "direction": direction, "passed": values["passed"]}


def raw_parity(outputs, reference):
    """Parity of the raw heads and anchors: the largest absolute difference of each."""
    values = {f"max_abs_diff_{name}": _max_abs(outputs[name], reference[name]) for name in RAW_OUTPUTS}
    values["passed"] = all(value <= RAW_TOLERANCE for value in values.values())
    return values


def _matching_text(values):
    if not values["compared"]:
        return (f"no reference detection with score >= {MATCH_MIN_SCORE}: nothing to compare "
                "(train the detector further, or check it on images with objects)")
    return f"{values['matched']} of {values['compared']} detections with score >= {MATCH_MIN_SCORE} matched"


def format_table(rows):
    """A text table of report rows: artifact, size, the largest differences from the Keras
    model, and the check."""
    lines = [f"{'artifact':<14}{'size':>12}  {'check':<8}largest differences"]
    for row in rows:
        differences = ", ".join(
            f"{name.removeprefix('max_')}={value:.2e}" for name, value in row["parity"].items() if name.startswith("max_")
        ) or (_matching_text(row["parity"]) if "matched" in row["parity"] else "")
        check = "passed" if row["parity"]["passed"] else "FAILED"
        lines.append(f"{row['artifact']:<14}{row['size_bytes'] / 2**20:>10.2f}MB  {check:<8}{differences}")
    return "\n".join(lines)


class DetectionRunner:
    """Runs an exported detector, a SavedModel folder or a whole-detector `.tflite` file (not
    `model_raw.tflite`, which does not decode): (N, H, W, C) float32 images in [0, 1] -> the
    `DETECTION_OUTPUTS` arrays, in batches of the artifact's static `batch`. `image_shape` is
    its input's (H, W, C); `class_names` those of the SavedModel's `metadata` (None for TFLite)."""

    def __init__(self, path):
        self.class_names = None
        if os.path.isdir(path):
            signatures = tf.saved_model.load(path).signatures
            served = signatures[saved_model.SIGNATURE]
            metadata = saved_model.read_metadata(signatures)
            if metadata is None:
                raise ValueError(
                    f"The SavedModel {path!r} has no {saved_model.METADATA_SIGNATURE!r} signature (its input size "
                    "and class names): it was exported by an older aa-export; export the detector again."
                )
            self.image_shape, self.batch, self.class_names = metadata
            self._run = lambda x: served(**{saved_model.INPUT_NAME: tf.constant(x)})
            outputs = served.structured_outputs
        else:
            runner = Interpreter(model_path=path).get_signature_runner(saved_model.SIGNATURE)
            shape = runner.get_input_details()[saved_model.INPUT_NAME]["shape"]
            self.batch, self.image_shape = int(shape[0]), tuple(int(size) for size in shape[1:])
            self._run = lambda x: runner(**{saved_model.INPUT_NAME: x})
            outputs = runner.get_output_details()
        if set(outputs) != set(DETECTION_OUTPUTS):
            raise ValueError(
                f"{path!r} gives {sorted(outputs)}, not the decoded detections {list(DETECTION_OUTPUTS)}: run the "
                "SavedModel or model.tflite of a detector export (model_raw.tflite needs decoding on the host)."
            )

    def __call__(self, images):
        return run_batched(self._run, np.asarray(images, np.float32), self.batch)


def run_batched(function, images, batch):
    """`function` (a batch of exactly `batch` images -> dict of arrays) over all `images`, the
    last batch padded; outputs without a batch axis ("anchors") are taken from the first run."""
    pieces, count = parity.batches(images, batch)
    runs = [{k: np.asarray(v) for k, v in function(piece).items()} for piece in pieces]
    return {
        name: runs[0][name] if name == "anchors" else np.concatenate([run[name] for run in runs])[:count]
        for name in runs[0]
    }


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
    image_shape = tuple(model.inputs[0].shape[1:])
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != image_shape or len(images) == 0:
        raise ValueError(f"Invalid `images`: shape {images.shape}; the detector needs (N, *{image_shape}) with N > 0.")
    calibration = None
    if "tflite_int8" in formats:
        calibration_images = np.asarray([] if calibration_images is None else calibration_images, np.float32)
        if calibration_images.ndim != 4 or calibration_images.shape[1:] != image_shape or not len(calibration_images):
            raise ValueError(
                f"Invalid `calibration_images`: shape {calibration_images.shape}; 'tflite_int8' needs "
                f"(M, *{image_shape}) with M > 0 (train images, not the parity images)."
            )
        calibration = parity.batches(calibration_images, batch)[0]

    with staged_output(output_dir) as staging:
        rows = []
        if class_names is not None:
            files.write_labels(os.path.join(staging, files.LABELS), class_names)
        if "saved_model" in formats:
            path = os.path.join(staging, "saved_model")
            saved_model.write_signature(
                model, _serve_detections(model), path, image_shape, batch, check_input=True, class_names=class_names
            )
            outputs = DetectionRunner(path)(images)
            reference = run_batched(tf.function(_serve_detections(model)), images, batch)
            rows.append(("saved_model", path, saved_model.SavedModelRunner.runtime, detection_parity(outputs, reference), None))
        for kind in [name for name in formats if name.startswith("tflite")]:
            source = tempfile.mkdtemp(prefix=".tflite_source-", dir=staging)
            raw = kind == "tflite_raw"
            serve = _serve_raw(model) if raw else _serve_builtin_detections(model, batch)
            saved_model.write_signature(model, serve, source, image_shape, batch)
            flatbuffer, ops = _convert_builtin(
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
                check = raw_parity(outputs, run_batched(tf.function(serve), images, batch))
            else:
                outputs = DetectionRunner(path)(images)
                check = detection_matching(outputs, run_batched(tf.function(_serve_detections(model)), images, batch))
            rows.append((kind, path, tflite.TFLiteRunner.runtime, check, ops))
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
