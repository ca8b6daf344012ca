"""The parity checks of a detector's artifacts against the Keras model: decoded detections value
by value (the SavedModel), detections matched by class and IoU (the whole TFLite detector), the
raw heads (model_raw.tflite); the deciding check of each, and their table."""

import numpy as np

from .detection_signatures import RAW_OUTPUTS

# Bounds of the parity checks: decoded boxes in pixels, scores, raw head outputs.
BOX_TOLERANCE = 1e-2
SCORE_TOLERANCE = 1e-4
RAW_TOLERANCE = 1e-3
# The whole TFLite detector's check: this fraction of the reference detections with at least
# MATCH_MIN_SCORE found again with the same class and at least MATCH_MIN_IOU.
MATCH_FRACTION = 0.95
MATCH_MIN_SCORE = 0.3
MATCH_MIN_IOU = 0.9


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
