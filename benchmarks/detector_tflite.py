"""The whole detector's TFLite files (float32 and int8) against its SavedModel, on a trained
detector and the glyph_boxes test images.

    python -m aa_keras.training.train --task=detection --model=aa_retinanet_r18 --epochs=5 --eval_examples=20 --model_dir=runs/det
    python -m benchmarks.detector_tflite --detector=runs/det/aa_retinanet_r18/model.keras

`export.detection.export_detector` writes `saved_model`, `tflite` and `tflite_int8` (int8
calibrated on `--calibration_images` train images) and checks each TFLite file with
`detection_matching`: at least 95% of the SavedModel's detections with score >= 0.3 on the
`--num_images` test images found again (same class, IoU >= 0.9). A detector whose scores stay
under 0.3 gives the check nothing to compare, and the export fails: train longer. Prints the
export's table and the number of the SavedModel's detections at or above the cut-off, and
writes them with the versions to `--output`; exits with status 1 if a check failed.
"""

import argparse
import os
import sys
import tempfile

import numpy as np

from aa_keras.applications.retinanet import detections
from aa_keras.export import detection, detection_checks, export, model_source, report
from benchmarks.bench_tflite import versions

DEFAULT_OUTPUT = os.path.join(os.path.dirname(__file__), "results", "detector_tflite.json")
FORMATS = ("saved_model", "tflite", "tflite_int8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", default="runs/det/aa_retinanet_r18/model.keras", help="a trained detector's .keras file")
    parser.add_argument("--num_images", type=int, default=200, help="glyph_boxes test images for the parity checks")
    parser.add_argument("--calibration_images", type=int, default=100, help="glyph_boxes train images for int8")
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    model = model_source.load_keras_file(args.detector, name="--detector")
    shape = model_source.image_shape(model, None)
    images = export.dataset_images("glyph_boxes", "test", shape, args.num_images, task="detection")
    calibration = export.dataset_images("glyph_boxes", "train", shape, args.calibration_images, task="detection")
    result = {"versions": versions(), "detector": args.detector, "formats": list(FORMATS)}
    with tempfile.TemporaryDirectory() as directory:
        try:
            exported = detection.export_detector(
                model, os.path.join(directory, "export"), images, FORMATS, calibration_images=calibration
            )
            result |= {"rows": exported["rows"], "table": exported["table"], "passed": True}
        except export.ParityError as error:
            result |= {"error": str(error), "table": str(error).split("\n", 1)[-1], "passed": False}
    scores = np.concatenate(
        [np.asarray(detections(model, images[i : i + 16])["scores"]) for i in range(0, len(images), 16)]
    )
    result["reference_detections_at_min_score"] = int(np.sum(scores >= detection_checks.MATCH_MIN_SCORE))
    result["reference_top_score"] = float(scores.max())
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    report.write_json(args.output, result)
    print(result["table"])
    print(
        f"The Keras detector's detections with score >= {detection_checks.MATCH_MIN_SCORE} on {len(images)} test images: "
        f"{result['reference_detections_at_min_score']} (top score {result['reference_top_score']:.3f})."
    )
    print(f"Wrote {args.output}")
    if not result["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
