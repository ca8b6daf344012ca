"""`export.predict` on PNG images of any size: the same top-1 class names from a `.keras` model,
its SavedModel and its TFLite file; a detector's named boxes, in pixels of the original image,
drawn with `--output`; where class names come from; errors."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from aa_keras.applications import retinanet
from aa_keras.data import classification as data
from aa_keras.data import detection as detection_data
from aa_keras.export import detection as export_detection
from aa_keras.export import predict
from aa_keras.programs import files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLYPH_PAIRS_NAMES = ["different", "same"]
DETECTOR_SIZE = 64
DETECTOR_NAMES = ["circle", "square", "cross"]


def _predict_cli(*arguments, entry="run"):
    """The results of `run` (errors as ValueError), or with entry="main" the command's exit."""
    argv = ["aa-predict", *arguments]
    remaining = predict.FLAGS(argv)
    try:
        return getattr(predict, entry)(remaining)
    finally:
        predict.FLAGS.unparse_flags()


def _write_png(path, image):
    with open(path, "wb") as f:
        f.write(tf.io.encode_png(image).numpy())
    return str(path)


@pytest.fixture(scope="module")
def glyph_pngs(data_dir, tmp_path_factory):
    """Four glyph_pairs test images as PNG files of other sizes than the model's 32 x 32."""
    folder = tmp_path_factory.mktemp("pngs")
    examples = tfds.builder("glyph_pairs", data_dir=data_dir).as_dataset(split="test[:4]")
    sizes = [(48, 40), (32, 32), (64, 64), (20, 28)]
    return [
        _write_png(folder / f"glyph_{i}.png", tf.cast(tf.image.resize(example["image"], size, "nearest"), tf.uint8))
        for i, (example, size) in enumerate(zip(examples, sizes))
    ]


def test_keras_saved_model_and_tflite_give_the_same_top1_names(classifier_run, classifier_export, glyph_pngs, capsys):
    models = [classifier_run / "model.keras", classifier_export / "saved_model", classifier_export / "model_float32.tflite"]
    results = [_predict_cli(f"--model={model}", *glyph_pngs) for model in models]
    printed = capsys.readouterr().out
    top1 = [[found[0]["class"] for found in result] for result in results]
    assert top1[0] == top1[1] == top1[2] and set(top1[0]) <= set(GLYPH_PAIRS_NAMES)
    for result in results[1:]:
        scores = [[item["score"] for item in found] for found in result]
        np.testing.assert_allclose(scores, [[item["score"] for item in found] for found in results[0]], atol=1e-4)
    # The .keras model's own answer on the images as its evaluation pipeline resizes them.
    model = keras.saving.load_model(str(models[0]))
    inputs = np.stack([data.evaluation_image(predict.read_image(path), 32).numpy() for path in glyph_pngs])
    probabilities = tf.nn.softmax(model(inputs)).numpy()
    assert top1[0] == [GLYPH_PAIRS_NAMES[i] for i in probabilities.argmax(-1)]
    for found, row in zip(results[0], probabilities):
        assert [item["class"] for item in found] == [GLYPH_PAIRS_NAMES[i] for i in np.argsort(-row)]
        np.testing.assert_allclose([item["score"] for item in found], np.sort(row)[::-1], atol=1e-5)
    assert glyph_pngs[0] in printed and f"1. {top1[0][0]}" in printed


def test_top_and_the_source_of_the_class_names(classifier_run, data_dir, glyph_pngs, tmp_path):
    result = _predict_cli(f"--model={classifier_run / 'model.keras'}", "--top=1", glyph_pngs[0])
    assert len(result[0]) == 1
    bare = tmp_path / "model.keras"  # No labels.txt next to it: indices, or the --dataset's names.
    keras.saving.load_model(str(classifier_run / "model.keras")).save(str(bare))
    by_index = _predict_cli(f"--model={bare}", glyph_pngs[0])
    assert {item["class"] for item in by_index[0]} == {"0", "1"}
    named = _predict_cli(f"--model={bare}", "--dataset=glyph_pairs", f"--data_dir={data_dir}", glyph_pngs[0])
    assert [item["class"] for item in named[0]] == [GLYPH_PAIRS_NAMES[item["index"]] for item in by_index[0]]


@pytest.fixture(scope="module")
def detector_files(tmp_path_factory):
    """A detector (low confidence threshold, so that it finds boxes) saved with its labels.txt,
    and its exported SavedModel."""
    folder = tmp_path_factory.mktemp("detector")
    keras.utils.set_random_seed(0)
    model = retinanet.build_detector("aa_retinanet_r18", input_shape=(DETECTOR_SIZE, DETECTOR_SIZE, 3),
                                     classes=len(DETECTOR_NAMES), confidence_threshold=0.005)  # fmt: skip
    model.save(str(folder / "model.keras"))
    files.write_labels(str(folder / files.LABELS), DETECTOR_NAMES)
    images = np.random.default_rng(0).random((1, DETECTOR_SIZE, DETECTOR_SIZE, 3)).astype(np.float32)
    export_detection.export_detector(model, str(folder / "export"), images, formats=["saved_model"],
                                     class_names=DETECTOR_NAMES)  # fmt: skip
    return folder, model


def test_detector_boxes_are_named_scaled_to_the_image_and_drawn(detector_files, tmp_path):
    folder, model = detector_files
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (DETECTOR_SIZE, DETECTOR_SIZE, 3), dtype=np.uint8)
    small_path = _write_png(tmp_path / "small.png", small)
    large_path = _write_png(tmp_path / "large.png", np.kron(small, np.ones((2, 2, 1), np.uint8)))  # 128 x 128
    output = tmp_path / "drawn"
    found = _predict_cli(f"--model={folder / 'model.keras'}", f"--output={output}", small_path, large_path)
    direct = retinanet.detections(model, small[None].astype(np.float32) / 255.0)
    count = int(direct["num_detections"][0])
    assert count > 0 and len(found[0]) == count
    assert [item["class"] for item in found[0]] == [DETECTOR_NAMES[c] for c in np.asarray(direct["classes"][0][:count])]
    # Boxes reaching out of the image are clipped to it.
    expected = np.clip(np.asarray(direct["boxes"][0][:count]), 0, DETECTOR_SIZE)
    np.testing.assert_allclose([item["box"] for item in found[0]], expected, atol=1e-3)
    # The 128 x 128 image is resized to the model's 64 x 64: its boxes are the model's, doubled.
    resized, _ = detection_data.resize_for_evaluation(tf.constant(predict.read_image(large_path)), DETECTOR_SIZE)
    direct = retinanet.detections(model, resized[None])
    count = int(direct["num_detections"][0])
    assert len(found[1]) == count > 0
    expected = np.clip(2 * np.asarray(direct["boxes"][0][:count]), 0, 128)
    np.testing.assert_allclose([item["box"] for item in found[1]], expected, atol=1e-3)
    assert sorted(os.listdir(output)) == ["large.png", "predictions.json", "small.png"]
    drawn = predict.read_image(str(output / "large.png"))
    assert drawn.shape == (128, 128, 3) and not np.array_equal(drawn, np.kron(small, np.ones((2, 2, 1), np.uint8)))
    records = json.loads((output / "predictions.json").read_text())
    assert records["task"] == "detection" and records["images"][0]["predictions"] == json.loads(json.dumps(found[0]))
    # The exported SavedModel carries the names itself and finds the same best boxes (the
    # untrained detector's scores are near-ties further down, which the two graphs may order
    # differently; the first five are apart by 1e-4 or more).
    served = _predict_cli(f"--model={folder / 'export' / 'saved_model'}", small_path)
    assert len(served[0]) == len(found[0])
    assert [item["class"] for item in served[0][:5]] == [item["class"] for item in found[0][:5]]
    np.testing.assert_allclose([item["box"] for item in served[0][:5]], [item["box"] for item in found[0][:5]], atol=1e-2)
    np.testing.assert_allclose([item["score"] for item in served[0][:5]], [item["score"] for item in found[0][:5]], atol=1e-5)


def test_predict_errors_name_what_is_wrong(classifier_run, classifier_export, glyph_pngs, tmp_path):
    model = f"--model={classifier_run / 'model.keras'}"

    def fails(message, *arguments):
        with pytest.raises(SystemExit, match=message):
            _predict_cli(*arguments, entry="main")

    fails("No images", model)
    fails(r"Invalid image: .*nothing.png' does not exist", model, str(tmp_path / "nothing.png"))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    fails(r"Invalid image: .*notes.png' is not a PNG, JPEG, BMP or GIF image", model, str(text))
    fails(r"Invalid `--model`: .*missing.keras' does not exist", f"--model={tmp_path / 'missing.keras'}", glyph_pngs[0])
    fails(r"Invalid `--model`: the folder .* is not a SavedModel", f"--model={tmp_path}", glyph_pngs[0])
    fails(r"Invalid `--model`: .*notes.png' is not a `.keras` file, a SavedModel folder or a `.tflite` file",
          f"--model={text}", glyph_pngs[0])  # fmt: skip
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\0" * 64)
    fails(r"Invalid `--model`: .*broken.tflite' does not load as a TFLite model", f"--model={broken}", glyph_pngs[0])
    fails(r"Invalid `--output`: .* exists and is not a folder", model, f"--output={glyph_pngs[0]}", glyph_pngs[0])
    fails(r"several are named 'glyph_0.png'", model, f"--output={tmp_path / 'out'}", glyph_pngs[0], glyph_pngs[0])
    fails(r"would replace an input image", model, f"--output={os.path.dirname(glyph_pngs[0])}", glyph_pngs[0])
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    keras.saving.load_model(str(classifier_run / "model.keras")).save(str(wrong / "model.keras"))
    (wrong / "labels.txt").write_text("a\nb\nc\n")
    fails(r"labels.txt stored with .* has 3 class names, but the model .* has 2 classes", f"--model={wrong / 'model.keras'}",
          glyph_pngs[0])  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_the_command_exits_0_and_prints_the_names(classifier_export, glyph_pngs):
    completed = subprocess.run(
        [sys.executable, "-m", "aa_keras.export.predict", f"--model={classifier_export / 'model_float32.tflite'}", "--top=1",
         glyph_pngs[0]],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = completed.stdout.splitlines()
    assert lines[0] == glyph_pngs[0] and lines[1].split()[1] in GLYPH_PAIRS_NAMES and len(lines) == 2
