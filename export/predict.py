"""Says what is in images with a saved model: the top-5 classes of a classifier, the boxes of a
detector, with class names and scores. The model is a `.keras` file, an exported SavedModel
folder or an exported `.tflite` file (run by the exporter's runners in export/).

    python -m aa_keras.export.predict --model=runs/quick/aa_small/model.keras a.png b.jpg
    python -m aa_keras.export.predict --model=runs/quick/export/model_float32.tflite --top=2 a.png
    python -m aa_keras.export.predict --model=runs/det/export/saved_model --output=found street.png

Images of any size are resized as the model's evaluation pipeline does (`aa_keras.data.classification`'s for
a classifier with the run's preprocessing, `aa_keras.data.detection.resize_for_evaluation` for
a detector); boxes are given in pixels of the original image. Class names come from the model:
the labels.txt in the folder that holds it (run folder or export folder) or a SavedModel's
`metadata` signature, else from `--dataset`, else classes are named by index (with a warning).
"""

import dataclasses
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from absl import flags
from ai_edge_litert.interpreter import Interpreter

from aa_keras.applications.retinanet import detections, is_detector
from aa_keras.data import classification as data
from aa_keras.data import detection as detection_data
from aa_keras.data.classification import PREPROCESSING
from aa_keras.datasets.image_files import undecodable_reason
from aa_keras.programs import files
from aa_keras.programs.command_line import program_main, run_program
from aa_keras.programs.files import load_keras_file
from aa_keras.programs.run_folder import RunFolder

from . import parity, saved_model, tflite
from .detection_runner import DetectionRunner, run_batched
from .detection_signatures import DETECTION_OUTPUTS

PREDICTIONS = "predictions.json"

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "model", None, "A `.keras` model file, an exported SavedModel folder, or an exported `.tflite` file (for a detector "
    "the whole detector, model.tflite).", flag_values=FLAGS,
)
flags.DEFINE_integer("top", 5, "Classes shown per image (classification).", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_string(
    "output", None, f"Folder for {PREDICTIONS} and, for a detector, each image with its boxes drawn (<name>.png).",
    flag_values=FLAGS,
)
flags.DEFINE_string("dataset", None, "Dataset whose class names to use when none are stored with the model.", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data directory of --dataset.", flag_values=FLAGS)
flags.DEFINE_enum(
    "preprocessing", None, PREPROCESSING, "Classification: the evaluation preprocessing (default: the run's, from the "
    "run_config.json next to a .keras model; else a plain resize).", flag_values=FLAGS,
)
flags.mark_flags_as_required(["model"], flag_values=FLAGS)


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A loaded model of any kind.

    Attributes:
        task: "classification" or "detection".
        image_shape: (H, W, C) of the model's input.
        run: (N, H, W, C) float32 images in [0, 1] -> (N, classes) scores (classification), or
            {"boxes", "scores", "classes", "num_detections"} arrays (detection).
        classes: the number of classes; None when the artifact does not say (exported detector).
        stored_names: the class names stored with the model, or None.
        preprocessing: the run's evaluation preprocessing for a `.keras` classifier, or None.
    """

    task: str
    image_shape: tuple
    run: Callable
    classes: Optional[int]
    stored_names: Optional[list]
    preprocessing: Optional[str] = None


def _keras_predictor(path):
    model = load_keras_file(path, name="--model")
    shape = tuple(model.inputs[0].shape[1:])
    config = RunFolder.of_model(path).read_run_config({})
    stored = files.stored_labels(path)
    if is_detector(model):
        def run(images):
            return run_batched(lambda x: {k: np.asarray(v) for k, v in detections(model, x).items()}, images, 1)

        return Predictor("detection", shape, run, model.num_classes, stored)
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise ValueError(f"Invalid `--model`: {path!r} is neither an image classifier (one (B, classes) output) nor a detector.")
    run = lambda images: np.asarray(model(images, training=False))  # noqa: E731
    return Predictor("classification", shape, run, model.outputs[0].shape[-1], stored, config.get("preprocessing"))


def _saved_model_predictor(path):
    signature = tf.saved_model.load(path).signatures.get(saved_model.SIGNATURE)
    if signature is None:
        raise ValueError(f"Invalid `--model`: the SavedModel {path!r} has no {saved_model.SIGNATURE!r} signature.")
    if set(signature.structured_outputs) == set(DETECTION_OUTPUTS):
        runner = DetectionRunner(path)
        return Predictor("detection", runner.image_shape, runner, None, runner.class_names or files.stored_labels(path))
    runner = saved_model.SavedModelRunner(path)
    if runner.metadata is None:
        raise ValueError(
            f"The SavedModel {path!r} has no {saved_model.METADATA_SIGNATURE!r} signature (its input size and class "
            "names): it was exported by an older aa-export; export the model again."
        )
    image_shape, batch, names = runner.metadata
    classes = signature.structured_outputs[saved_model.OUTPUT_NAME].shape[-1]
    run = lambda images: parity.predict(runner, images, batch or len(images))  # noqa: E731
    return Predictor("classification", image_shape, run, classes, names or files.stored_labels(path))


def _tflite_predictor(path):
    interpreter = Interpreter(model_path=path)
    outputs = interpreter.get_signature_list().get(saved_model.SIGNATURE, {}).get("outputs", [])
    if set(outputs) == set(DETECTION_OUTPUTS) or "cls_logits" in outputs:
        runner = DetectionRunner(path)  # Explains why model_raw.tflite does not predict.
        return Predictor("detection", runner.image_shape, runner, None, files.stored_labels(path))
    runner = tflite.TFLiteRunner(path)
    run = lambda images: parity.predict(runner, images, runner.batch)  # noqa: E731
    classes = int(interpreter.get_output_details()[0]["shape"][-1])
    return Predictor("classification", runner.image_shape, run, classes, files.stored_labels(path))


def load_predictor(path):
    """The `Predictor` of a `.keras` file, an exported SavedModel folder or a `.tflite` file;
    a ValueError naming `--model` for anything else."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"Invalid `--model`: the folder {path!r} is not a SavedModel (it has no saved_model.pb).")
        return _saved_model_predictor(path)
    if not os.path.isfile(path):
        raise ValueError(f"Invalid `--model`: {path!r} does not exist.")
    if path.endswith(".tflite"):
        try:
            return _tflite_predictor(path)
        except (ValueError, RuntimeError) as error:
            if str(error).startswith(("Invalid `--model`", f"{path!r}")):
                raise
            raise ValueError(f"Invalid `--model`: {path!r} does not load as a TFLite model: {error}") from None
    if path.endswith(".keras"):
        return _keras_predictor(path)
    raise ValueError(f"Invalid `--model`: {path!r} is not a `.keras` file, a SavedModel folder or a `.tflite` file.")


def read_image(path):
    """The image file `path` as uint8 (H, W, 3); a ValueError naming the file when it is
    missing, damaged, or not an image TensorFlow decodes."""
    if not os.path.isfile(path):
        raise ValueError(f"Invalid image: {path!r} does not exist or is not a file.")
    with open(path, "rb") as f:
        encoded = f.read()
    try:
        return data.decode_image(encoded).numpy()
    except tf.errors.InvalidArgumentError:
        raise ValueError(f"Invalid image: {path!r} {undecodable_reason(path)}.") from None


def model_inputs(predictor, images, preprocessing="none"):
    """The uint8 `images` (each (H, W, 3), any size) as `predictor` takes them: (N, S, S, 3)
    float32, and for a detector each image's scale (y, x) from its pixels to the input's."""
    height, width, channels = predictor.image_shape
    if height != width or channels != 3:
        raise ValueError(f"The model takes {predictor.image_shape} images; predict handles square RGB inputs.")
    if predictor.task == "detection":
        resized = [detection_data.resize_for_evaluation(tf.constant(image), height) for image in images]
        return np.stack([image.numpy() for image, _ in resized]), np.stack([info[2].numpy() for _, info in resized])
    return np.stack([data.evaluation_image(image, height, preprocessing).numpy() for image in images]), None


def as_probabilities(scores):
    """Class probabilities from a classifier's scores: a softmax of logits, or the scores as
    they are when each row already is a distribution (a softmax head)."""
    scores = np.asarray(scores, np.float64)
    if np.all(scores >= 0) and np.allclose(scores.sum(-1), 1.0, atol=1e-3):
        return scores
    shifted = np.exp(scores - scores.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def _name(names, index):
    return names[index] if names is not None and 0 <= index < len(names) else str(index)


def predict(predictor, images, names=None, top=5, preprocessing="none"):
    """What `predictor` finds in the uint8 `images`.

    Returns:
        One list per image: for a classifier the `top` classes, best first, as {"class",
        "index", "score"} (softmax probability); for a detector each detection as {"class",
        "index", "score", "box": [ymin, xmin, ymax, xmax] in pixels of the original image}.
    """
    inputs, scales = model_inputs(predictor, images, preprocessing)
    if predictor.task == "classification":
        probabilities = as_probabilities(predictor.run(inputs))
        order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top]
        return [
            [{"class": _name(names, int(i)), "index": int(i), "score": float(row[i])} for i in indices]
            for row, indices in zip(probabilities, order)
        ]
    found = predictor.run(inputs)
    results = []
    for i, (image, scale) in enumerate(zip(images, scales)):
        limit = np.array([image.shape[0], image.shape[1]] * 2, np.float64)
        results.append([
            {
                "class": _name(names, int(found["classes"][i][j])),
                "index": int(found["classes"][i][j]),
                "score": float(found["scores"][i][j]),
                "box": np.clip(np.asarray(found["boxes"][i][j], np.float64) / np.tile(scale, 2), 0, limit).tolist(),
            }
            for j in range(int(found["num_detections"][i]))
        ])
    return results


def format_predictions(paths, results, task):
    """The predictions as text: each image's path, then one line per class or box."""
    lines = []
    for path, found in zip(paths, results):
        lines.append(path if task == "classification" else f"{path}: {len(found)} objects")
        for rank, item in enumerate(found, 1):
            if task == "classification":
                lines.append(f"  {rank}. {item['class']:<24}{item['score']:.4f}")
            else:
                box = ", ".join(f"{v:.1f}" for v in item["box"])
                lines.append(f"  {item['class']:<24}{item['score']:.4f}  [ymin, xmin, ymax, xmax] = [{box}]")
    return "\n".join(lines)


def draw_boxes(image, found):
    """A matplotlib figure of the uint8 `image` with the detections `found` (from `predict`)
    drawn: each box, its class and score."""
    from matplotlib.figure import Figure  # matplotlib loads only for --output of a detector.
    from matplotlib.patches import Rectangle

    height, width = image.shape[:2]
    figure = Figure(figsize=(width / 100, height / 100), dpi=100)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(image)
    axes.set_axis_off()
    for item in found:
        top, left, bottom, right = item["box"]
        axes.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor="yellow", linewidth=1.5))
        axes.text(left, top, f"{item['class']} {item['score']:.2f}", color="black", fontsize=7, va="bottom",
                  bbox={"facecolor": "yellow", "edgecolor": "none", "pad": 1})  # fmt: skip
    return figure


def check_output(output, image_paths):
    """Raises a ValueError unless the folder `output` can take the outputs of `image_paths`
    without replacing one of them or one another (checked before predicting)."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"Invalid `--output`: {output!r} exists and is not a folder.")
    drawn = [os.path.splitext(os.path.basename(path))[0] + ".png" for path in image_paths]
    repeated = sorted({name for name in drawn if drawn.count(name) > 1})
    if repeated:
        raise ValueError(f"Invalid images: several are named {repeated[0]!r} (whatever the folder or extension); "
                         f"--output writes one <name>.png each. Rename or copy them apart.")  # fmt: skip
    inputs = {os.path.realpath(path) for path in image_paths}
    clash = [name for name in drawn if os.path.realpath(os.path.join(output, name)) in inputs]
    if clash:
        raise ValueError(f"Invalid `--output`: writing {clash[0]!r} there would replace an input image; choose another folder.")


def run(argv):
    """Predicts on the images `argv[1:]` as the flags say, prints the predictions, writes
    `--output`; returns them (see `predict`)."""
    paths = argv[1:]
    if not paths:
        raise ValueError("No images: pass one or more image files after the flags.")
    if FLAGS.output:
        check_output(FLAGS.output, paths)
    images = [read_image(path) for path in paths]
    predictor = load_predictor(FLAGS.model)
    dataset_names = None
    if FLAGS.dataset:
        pipeline = detection_data if predictor.task == "detection" else data
        dataset_names = pipeline.class_names(FLAGS.dataset, FLAGS.data_dir)
    names = files.resolve_labels(FLAGS.model, predictor.stored_names, predictor.classes, FLAGS.dataset, dataset_names)
    preprocessing = FLAGS.preprocessing or predictor.preprocessing or "none"
    results = predict(predictor, images, names, FLAGS.top, preprocessing)
    print(format_predictions(paths, results, predictor.task), flush=True)
    if FLAGS.output:
        from aa_keras.visualize.figure import save_png

        os.makedirs(FLAGS.output, exist_ok=True)
        if predictor.task == "detection":
            for path, image, found in zip(paths, images, results):
                name = os.path.splitext(os.path.basename(path))[0] + ".png"
                save_png(draw_boxes(image, found), os.path.join(FLAGS.output, name))
        records = [{"image": os.path.abspath(path), "predictions": found} for path, found in zip(paths, results)]
        files.write_json(os.path.join(FLAGS.output, PREDICTIONS), {"model": os.path.abspath(FLAGS.model),
                                                                      "task": predictor.task, "images": records})
        print(f"Wrote {os.path.abspath(FLAGS.output)}")
    return results


main = program_main(FLAGS, run, "aa-predict: error: ")


def run_main():
    """Entry point of the `aa-predict` console script."""
    run_program(FLAGS, main)


if __name__ == "__main__":
    run_main()
