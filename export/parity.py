"""Parity of an artifact's outputs with the Keras model's, and the check each artifact must pass.

Metrics, on the same N images:
    max_abs_diff:   max |artifact - keras|
    max_rel_diff:   max |artifact - keras| / max |keras|   (relative to the output's scale, so
                    that near-zero scores do not blow it up)
    top1_agreement: fraction of images whose arg-max class is the same
"""

import numpy as np


class ParityError(RuntimeError):
    """An exported artifact does not compute what the Keras model computes."""


# Artifact kind -> (metric that decides, bound, "max" or "min").
CHECKS = {
    "saved_model": ("max_abs_diff", 1e-4, "max"),
    "tflite_float32": ("max_abs_diff", 1e-4, "max"),
    "onnx": ("max_abs_diff", 1e-4, "max"),
    "tflite_float16": ("max_rel_diff", 1e-2, "max"),
    "tflite_dynamic": ("top1_agreement", 0.95, "min"),
    "tflite_int8": ("top1_agreement", 0.95, "min"),
}


def metrics(outputs, reference):
    """The three parity metrics of `outputs` against `reference`, both (N, classes)."""
    if outputs.shape != reference.shape:
        raise ValueError(f"Output shape {outputs.shape} differs from the Keras model's {reference.shape}.")
    outputs = outputs.astype(np.float64)
    reference = reference.astype(np.float64)
    diff = np.abs(outputs - reference).max()
    scale = np.abs(reference).max()
    return {
        "max_abs_diff": float(diff),
        "max_rel_diff": float(diff / scale) if scale > 0 else float(diff),
        "top1_agreement": float(np.mean(outputs.argmax(-1) == reference.argmax(-1))),
    }


def check(kind, values):
    """The check of artifact `kind` on its `metrics`: a dict with metric, value, bound, passed."""
    metric, bound, direction = CHECKS[kind]
    value = values[metric]
    passed = value <= bound if direction == "max" else value >= bound
    return {"metric": metric, "value": value, "bound": bound, "direction": direction, "passed": bool(passed)}


def batches(images, batch):
    """`images` in batches of exactly `batch`, the last one padded by repeating its first
    image; returns (list of batches, number of real images)."""
    pieces = []
    for start in range(0, len(images), batch):
        piece = images[start : start + batch]
        if len(piece) < batch:
            piece = np.concatenate([piece, np.repeat(piece[:1], batch - len(piece), axis=0)])
        pieces.append(piece)
    return pieces, len(images)


def predict(runner, images, batch):
    """`runner` (a callable on one batch) applied to all `images`, batch by batch."""
    pieces, count = batches(images, batch)
    return np.concatenate([runner(piece) for piece in pieces])[:count]
