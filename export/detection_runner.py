"""Running an exported detector (a SavedModel folder or a whole-detector `.tflite` file) on
images, in batches of its static batch size."""

import os

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from . import parity, saved_model
from .detection_signatures import DETECTION_OUTPUTS


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
