"""Class names in the run folder and the export folder, and `training.evaluate`: a classifier's
accuracy and top-5 accuracy against a direct computation, a detector's COCO metrics, errors."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from aa_keras.applications import small_nets
from aa_keras.data import classification as data
from aa_keras.datasets import glyph_boxes
from aa_keras.export import saved_model
from aa_keras.programs import files
from aa_keras.training import detection, evaluate

GLYPH_PAIRS_NAMES = ["different", "same"]


def _evaluate_cli(*flags, entry="run"):
    """The results of `run` (errors as ValueError), or with entry="main" the command's exit."""
    argv = ["aa-evaluate", *flags]
    evaluate.FLAGS(argv)
    try:
        return getattr(evaluate, entry)(argv[:1])
    finally:
        evaluate.FLAGS.unparse_flags()


def test_trainer_stores_the_class_names_in_the_run_folder(classifier_run):
    assert (classifier_run / "labels.txt").read_text() == "different\nsame\n"
    assert files.stored_labels(str(classifier_run / "model.keras")) == GLYPH_PAIRS_NAMES


def test_labels_files_are_checked(tmp_path):
    with pytest.raises(ValueError, match="Invalid class names"):
        files.write_labels(str(tmp_path / "labels.txt"), ["a", "two\nlines"])
    assert not (tmp_path / "labels.txt").exists()
    (tmp_path / "labels.txt").write_text("a\n\nb\n")
    with pytest.raises(ValueError, match="labels.txt is damaged"):
        files.read_labels(str(tmp_path / "labels.txt"))
    with pytest.raises(ValueError, match="has 2 class names, but the model .* has 3 classes"):
        files.resolve_labels("m.keras", ["a", "b"], 3)
    assert files.resolve_labels("m.keras", None, 2, "glyph_pairs", GLYPH_PAIRS_NAMES) == GLYPH_PAIRS_NAMES
    assert files.resolve_labels("m.keras", None, 2) is None


def test_export_carries_the_class_names(classifier_export):
    output_dir = classifier_export
    assert (output_dir / "labels.txt").read_text() == "different\nsame\n"
    signatures = tf.saved_model.load(str(output_dir / "saved_model")).signatures
    assert saved_model.read_metadata(signatures) == ((32, 32, 3), None, GLYPH_PAIRS_NAMES)
    assert json.loads((output_dir / "export_report.json").read_text())["class_names"] == GLYPH_PAIRS_NAMES
    # The TFLite model keeps the single signature of the converter's source.
    assert sorted(os.listdir(output_dir)) == ["export_report.json", "labels.txt", "model_float32.tflite", "saved_model"]


def _direct_accuracies(model, images, labels, k):
    logits = np.asarray(model.predict(images, verbose=0))
    top = np.argsort(-logits, axis=-1)[:, :k]
    return float(np.mean(top[:, 0] == labels)), float(np.mean(np.any(top == labels[:, None], axis=-1)))


def test_evaluate_prints_and_writes_the_accuracies_of_the_split(classifier_run, data_dir, tmp_path, capsys):
    model_file = str(classifier_run / "model.keras")
    output = tmp_path / "eval.json"
    result = _evaluate_cli(f"--model={model_file}", "--dataset=glyph_pairs", "--split=test[:300]",
                           f"--data_dir={data_dir}", "--batch_size=64", f"--output={output}")  # fmt: skip
    split = data.build_dataset("glyph_pairs", "test[:300]", 32, data_dir=data_dir)
    images, labels = (np.stack(part) for part in zip(*split.as_numpy_iterator()))
    accuracy, _ = _direct_accuracies(keras.saving.load_model(model_file), images, labels, 1)
    assert result["examples"] == 300 and result["metrics"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert result["metrics"]["top5_accuracy"] == 1.0  # 2 classes: the label is always among the top 5.
    assert json.loads(output.read_text()) == json.loads(json.dumps(result))
    printed = capsys.readouterr().out
    assert f"accuracy{accuracy * 100:>17.2f}%" in printed and "top-5 accuracy" in printed and "(test[:300], 300 images)" in printed


def test_top5_accuracy_on_ten_classes_matches_a_direct_computation():
    keras.utils.set_random_seed(1)
    model = small_nets.conv_small_net((24, 24, 3), 10)
    with tfds.testing.mock_data(num_examples=40):
        result = evaluate.evaluate_classifier(model, "cifar10", "test", 24, batch_size=16)
        split = data.build_dataset("cifar10", "test", 24)
        images, labels = (np.stack(part) for part in zip(*split.as_numpy_iterator()))
    accuracy, top5 = _direct_accuracies(model, images, labels, 5)
    assert result == {"examples": 40, "accuracy": pytest.approx(accuracy), "top5_accuracy": pytest.approx(top5)}
    assert accuracy < top5 < 1.0  # The two figures differ: a test of the top-5 count, not of a tie.


def test_detector_run_stores_names_and_evaluates_to_the_trainers_coco_metrics(detector_run, tiny_glyph_boxes, tmp_path):
    names = (detector_run / "labels.txt").read_text().splitlines()
    assert names == [f"glyph_{i}" for i in range(glyph_boxes.NUM_GLYPHS)]
    output = tmp_path / "det.json"
    # The trainer evaluated on the first 2 test images (eval_examples=2), in batches of 4.
    result = _evaluate_cli(f"--model={detector_run / 'model.keras'}", "--dataset=glyph_boxes", "--split=test[:2]",
                           f"--data_dir={tiny_glyph_boxes}", "--batch_size=1", f"--output={output}")  # fmt: skip
    assert result["task"] == "detection" and result["examples"] == 2 and result["class_names"] == names
    assert set(result["metrics"]) == set(detection.COCO_METRICS)
    trainer = json.loads((detector_run / "metrics.json").read_text())["coco"]
    assert result["metrics"] == pytest.approx(trainer, abs=1e-6)
    assert json.loads(output.read_text())["metrics"] == result["metrics"]


def test_evaluate_errors_name_what_is_wrong(classifier_run, data_dir, tmp_path):
    def fails(message, *flags):
        with pytest.raises(SystemExit, match=message):
            _evaluate_cli(*flags, f"--data_dir={data_dir}", entry="main")

    missing = tmp_path / "missing.keras"
    fails(r"Invalid `--model`: .*missing.keras' does not exist", f"--model={missing}", "--dataset=glyph_pairs")
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    fails(r"Invalid `--model`: .*notes.keras' is not a Keras 3 `.keras` archive", f"--model={text}", "--dataset=glyph_pairs")
    (tmp_path / "three").mkdir()
    three = tmp_path / "three" / "model.keras"
    small_nets.conv_small_net((32, 32, 3), 3).save(str(three))
    fails(r"Invalid `--dataset`: 'glyph_pairs' has 2 classes and the model .* predicts 3", f"--model={three}",
          "--dataset=glyph_pairs")  # fmt: skip
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    keras.saving.load_model(str(classifier_run / "model.keras")).save(str(renamed / "model.keras"))
    (renamed / "labels.txt").write_text("cat\ndog\n")
    fails(r"trained on the classes \['cat', 'dog'\].*'glyph_pairs' has \['different', 'same'\]",
          f"--model={renamed / 'model.keras'}", "--dataset=glyph_pairs")  # fmt: skip
    model_flag = f"--model={classifier_run / 'model.keras'}"
    fails(r"Invalid `--output`: .* is a folder", model_flag, "--dataset=glyph_pairs", f"--output={tmp_path}")
    fails(r"Invalid `--batch_size`: expected a positive int", model_flag, "--dataset=glyph_pairs", "--batch_size=0")
    fails(r"Unknown dataset: received dataset='no_such_set'", model_flag, "--dataset=no_such_set")
    assert sorted(os.listdir(tmp_path)) == ["notes.keras", "renamed", "three"]


def test_cocos_minus_one_is_shown_as_na():
    result = {"model": "m.keras", "dataset": "d", "split": "test", "examples": 2, "metrics": {"AP": 0.25, "APs": -1.0}}
    lines = evaluate.format_table(result).splitlines()
    assert [line.split() for line in lines[2:]] == [["AP", "25.00%"], ["APs", "n/a"]]
