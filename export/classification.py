"""Exports a Keras image classifier to SavedModel, TFLite and ONNX and proves that each artifact
computes what the Keras model computes (`export`); `export.detection` is its sibling for
RetinaNet detectors, and `export.export` the command line of both.

Artifacts (for the model, and under `baseline/` for the baseline model):
    saved_model/          `serving_default`: images (B, H, W, C) float32 in [0, 1], or uint8 in
                          [0, 255] with `uint8_input`, -> predictions (B, classes)
                          `metadata`: image_shape, batch, class_names (see export.saved_model)
    labels.txt            the class names, one a line in index order (when known)
    model_float32.tflite, model_float16.tflite, model_dynamic.tflite, model_int8.tflite
                          batch `batch`; int8 takes int8 images and gives int8 scores, each
                          attention block as `export.mobile_attention`'s graph (the same function)
    model.onnx            images (B, H, W, C) float32 -> predictions
    export_report.json    per artifact (`export.report.artifact_row`): size, median latency,
                          parity metrics and check, ops

Everything is written to a temporary directory next to `output_dir` and moved into place only
when every artifact of the model passed its parity check (see `export.parity`; the baseline's
checks are reported, not required) and every TFLite model uses builtin ops only.
"""

import os
import shutil
import tempfile

import numpy as np

from aa_keras.programs import files

from . import mobile_attention, model_source, parity, report, saved_model, tflite
from .parity import ParityError
from .settings import ExportSettings
from .staging import REPORT_FILE, check_output_dir, staged_output

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


def write_artifacts(
    model, directory, kinds, image_shape, batch, uint8_input, calibration_images, class_names=None,
    attention_steps=mobile_attention.DEFAULT_STEPS,
):
    """Writes the artifacts `kinds` of `model` into `directory`, and `labels.txt` with
    `class_names` unless they are None. The int8 TFLite file is converted from
    `mobile_attention.rebuild(model, attention_steps)` (`()`: the layer's own graph), the
    other TFLite kinds from the layer's own graph (where the rebuilt one measured no faster).

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
        sources = {}
        calibration = parity.batches(calibration_images, batch)[0] if "tflite_int8" in tflite_kinds else None
        for kind in tflite_kinds:
            steps = tuple(attention_steps) if kind == "tflite_int8" else ()
            if steps not in sources:
                sources[steps] = tempfile.mkdtemp(prefix=".tflite_source-", dir=directory)
                source_model = mobile_attention.rebuild(model, steps)
                saved_model.write_saved_model(source_model, sources[steps], image_shape, batch=batch)
            flatbuffer = tflite.convert(sources[steps], kind.removeprefix("tflite_"), calibration)
            ops = tflite.list_ops(flatbuffer)
            tflite.check_builtin_ops(ops, what=f"{kind} model")
            path = _artifact_path(directory, kind)
            with open(path, "wb") as f:
                f.write(flatbuffer)
            artifacts[kind] = {"path": path, "ops": ops}
        for source in sources.values():
            shutil.rmtree(source)
    if "onnx" in kinds:
        from . import onnx_model  # tf2onnx and onnxruntime load only when ONNX is asked for.

        path = _artifact_path(directory, "onnx")
        onnx_model.write_onnx(model, path, image_shape)
        artifacts["onnx"] = {"path": path, "ops": onnx_model.list_ops(path)}
    return artifacts


def _runner(kind, path, threads):
    if kind == "saved_model":
        return saved_model.SavedModelRunner(path)
    if kind == "onnx":
        from . import onnx_model

        return onnx_model.OnnxRunner(path, threads)
    return tflite.TFLiteRunner(path, threads)


def evaluate(model, artifacts, images, batch, threads, latency_runs, label="model"):
    """One report row per artifact (`export.report.artifact_row`, its `model` field `label`):
    parity with `model` on `images`, size and latency."""
    reference = parity.predict(lambda x: np.asarray(model(x, training=False)), images, batch)
    rows = []
    for kind, artifact in artifacts.items():
        runner = _runner(kind, artifact["path"], threads)
        values = parity.metrics(parity.predict(runner, images, batch), reference)
        rows.append(report.artifact_row(
            label, kind, artifact["path"], runner.runtime, values, parity.check(kind, values),
            latency_ms=report.median_latency_ms(runner, images[:batch], latency_runs), ops=artifact.get("ops"),
        ))
    return rows


def snap_to_8_bit(images):
    """Float images in [0, 1] rounded to the 8-bit grid, so that float and uint8 inputs carry
    the same values."""
    return (np.round(np.clip(images, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def export(model, output_dir, formats, eval_images, calibration_images=None, baseline=None, class_names=None,
           settings=None):
    """Exports `model` (and `baseline`) to `output_dir` and checks every artifact.

    Args:
        model, baseline: Keras models from (B, H, W, C) float32 images in [0, 1] to
            (B, classes); `baseline` (optional) is exported the same way under `baseline/`.
        output_dir: where the artifacts go; must be absent or empty unless `settings.overwrite`.
        formats: names from `FORMATS` (comma-separated string or list).
        eval_images: (N, H, W, C) float32 images for parity and latency.
        calibration_images: (M, H, W, C) float32 images for int8 calibration, M > 0; used
            (and required) only when `formats` has tflite_int8.
        class_names: the names of the classes, one per output, written to `labels.txt` and the
            SavedModel's `metadata` signature (of the model and the baseline); None for none.
        settings: an `export.settings.ExportSettings` (batch, threads, latency runs, uint8
            input, overwrite, image size, description); None for its defaults.

    Returns:
        The report dict, also written to `output_dir/export_report.json`.

    Raises:
        ValueError: bad arguments (before anything is written).
        ParityError: an artifact of `model` failed its check; nothing is left in `output_dir`.
    """
    settings = settings or ExportSettings()
    batch, threads, latency_runs = settings.batch, settings.threads, settings.latency_runs
    kinds = parse_formats(formats)
    output_dir = check_output_dir(output_dir, settings.overwrite)
    settings.check()
    image_shape, models = _check_models(
        model, baseline, settings.image_size, class_names, kinds, eval_images, calibration_images
    )
    eval_images = snap_to_8_bit(eval_images)

    with staged_output(output_dir) as staging:
        rows = []
        for label, network in models:
            directory = staging if label == "model" else os.path.join(staging, "baseline")
            artifacts = write_artifacts(
                network, directory, kinds, image_shape, batch, settings.uint8_input, calibration_images, class_names
            )
            for row in evaluate(network, artifacts, eval_images, batch, threads, latency_runs, label):
                row["file"] = os.path.join(output_dir, os.path.relpath(row["file"], staging))
                rows.append(row)
        report.add_baseline_ratios(rows)
        result = {
            "description": settings.description or {},
            "image_shape": list(image_shape),
            "batch": batch,
            "threads": threads,
            "latency_runs": latency_runs,
            "num_eval_images": len(eval_images),
            "num_calibration_images": 0 if calibration_images is None else len(calibration_images),
            "uint8_input": settings.uint8_input,
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


def _check_models(model, baseline, image_size, class_names, kinds, eval_images, calibration_images):
    """(the model's image shape, [(label, model)] of the model and the baseline); a ValueError
    for class names not one per class, images that are not (N, *image shape) with N > 0 (the
    evaluation images, and the calibration images for tflite_int8), or a baseline that takes
    other images."""
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
    return image_shape, models
