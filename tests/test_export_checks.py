"""The exporter's checks fail on a wrong artifact: runners whose outputs are shifted just past
each bound are refused, and shifted to half of it are accepted; the bounds are pinned. int8:
the dequantization of `TFLiteRunner` against a model with a known scale and zero point, and the
relative error of a trained model's int8 file."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from test_export import quadrant_images, trained

from aa_keras.export import classification as export_classification
from aa_keras.export import export as exporter
from aa_keras.export.settings import ExportSettings
from aa_keras.export import parity, saved_model, tflite

SIZE = 8
CLASSES = 4


def test_bounds_are_pinned():
    assert parity.CHECKS == {
        "saved_model": ("max_abs_diff", 1e-4, "max"),
        "tflite_float32": ("max_abs_diff", 1e-4, "max"),
        "onnx": ("max_abs_diff", 1e-4, "max"),
        "tflite_float16": ("max_rel_diff", 1e-2, "max"),
        "tflite_dynamic": ("top1_agreement", 0.95, "min"),
        "tflite_int8": ("top1_agreement", 0.95, "min"),
    }


@pytest.fixture(scope="module")
def scorer():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = keras.layers.Dense(CLASSES)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


class KerasRunner:
    """Serves the Keras model itself, with the interface of the exporter's runners."""

    runtime = "keras"

    def __init__(self, model):
        self._model = model

    def prepare(self, images):
        return images

    def run(self, prepared):
        return np.asarray(self._model(prepared, training=False))


class ShiftedRunner:
    """Serves `runner`'s scores changed by `change(scores) -> scores`: an artifact that computes
    something else than the Keras model."""

    runtime = "shifted"

    def __init__(self, runner, change):
        self._runner, self._change = runner, change

    def prepare(self, images):
        return self._runner.prepare(images)

    def run(self, prepared):
        return self._change(self._runner.run(prepared))

    def __call__(self, images):
        return self.run(self.prepare(images))


def _shift(amount):
    return lambda scores: scores + amount


def _shift_relative(fraction):
    return lambda scores: scores + fraction * np.abs(scores).max()


def _flip_top1(rows):
    """Negates the scores of the first `rows` images: their arg-max class changes."""

    def change(scores):
        scores = scores.copy()
        scores[:rows] *= -1.0
        return scores

    return change


# (artifact kind, a change the check must refuse, a change it must accept); 100 images.
CASES = [
    ("saved_model", _shift(2e-4), _shift(5e-5)),
    ("tflite_float32", _shift(2e-4), _shift(5e-5)),
    ("onnx", _shift(2e-4), _shift(5e-5)),
    ("tflite_float16", _shift_relative(2e-2), _shift_relative(5e-3)),
    ("tflite_dynamic", _flip_top1(6), _flip_top1(5)),
    ("tflite_int8", _flip_top1(6), _flip_top1(5)),
]


@pytest.mark.parametrize("kind, wrong, close", CASES, ids=[case[0] for case in CASES])
def test_evaluate_refuses_an_artifact_shifted_past_its_bound(scorer, tmp_path, monkeypatch, kind, wrong, close):
    images = np.random.default_rng(2).uniform(size=(100, SIZE, SIZE, 3)).astype(np.float32)
    path = tmp_path / "artifact"
    path.write_bytes(b"stand-in")
    checks = {}
    for name, change in (("wrong", wrong), ("close", close)):
        runner = ShiftedRunner(KerasRunner(scorer), change)
        monkeypatch.setattr(export_classification, "_runner", lambda kind, path, threads: runner)
        (row,) = export_classification.evaluate(scorer, {kind: {"path": str(path)}}, images, 100, 1, 1)
        checks[name] = row["check"]
    assert not checks["wrong"]["passed"], checks["wrong"]
    assert checks["close"]["passed"], checks["close"]
    assert checks["wrong"]["metric"] == parity.CHECKS[kind][0]


def test_export_refuses_a_saved_model_whose_outputs_are_shifted(scorer, tmp_path, monkeypatch):
    real_runner = export_classification._runner

    def shifted_runner(kind, path, threads):
        return ShiftedRunner(real_runner(kind, path, threads), _shift(2e-4))

    monkeypatch.setattr(export_classification, "_runner", shifted_runner)
    images = np.random.default_rng(3).uniform(size=(8, SIZE, SIZE, 3)).astype(np.float32)
    with pytest.raises(exporter.ParityError, match=r"failed their parity check: \['saved_model'\]"):
        export_classification.export(scorer, str(tmp_path / "out"), "saved_model", images, images, settings=ExportSettings(latency_runs=1))
    assert os.listdir(tmp_path) == []


class _Affine(tf.Module):
    """y = 2 x - 0.5 on (1, 4, 4, 3) images in [0, 1]: outputs in [-0.5, 1.5]."""

    @tf.function(input_signature=[tf.TensorSpec((1, 4, 4, 3), tf.float32, name=saved_model.INPUT_NAME)])
    def serve(self, images):
        return {saved_model.OUTPUT_NAME: 2.0 * images - 0.5}


@pytest.fixture(scope="module")
def affine_int8(tmp_path_factory):
    directory = tmp_path_factory.mktemp("affine")
    module = _Affine()
    tf.saved_model.save(module, str(directory / "saved_model"), signatures={"serving_default": module.serve})
    rng = np.random.default_rng(4)
    calibration = [rng.uniform(size=(1, 4, 4, 3)).astype(np.float32) for _ in range(16)]
    calibration[0][0, 0, 0] = [0.0, 1.0, 0.5]  # the whole range [0, 1] is seen
    path = str(directory / "affine_int8.tflite")
    with open(path, "wb") as f:
        f.write(tflite.convert(str(directory / "saved_model"), "int8", calibration))
    return path


def test_tflite_runner_quantizes_and_dequantizes_with_the_files_scale_and_zero_point(affine_int8):
    interpreter = Interpreter(model_path=affine_int8)
    (scale_in, zero_in), (scale_out, zero_out) = [
        d[0]["quantization"] for d in (interpreter.get_input_details(), interpreter.get_output_details())
    ]
    # [0, 1] on 256 levels from -128; [-0.5, 1.5] on 256 levels, 0.0 at level -64.
    assert scale_in == pytest.approx(1 / 255, rel=1e-3) and zero_in == -128
    assert scale_out == pytest.approx(2 / 255, rel=1e-3) and zero_out == -64
    runner = tflite.TFLiteRunner(affine_int8)
    pixels = np.array([0.0, 1 / 255, 0.25, 1.0] * 12, np.float32).reshape(1, 4, 4, 3)
    prepared = runner.prepare(pixels)
    assert prepared.dtype == np.int8
    np.testing.assert_array_equal(prepared.ravel()[:4], [-128, -127, -64, 127])
    images = np.random.default_rng(5).uniform(size=(1, 4, 4, 3)).astype(np.float32)
    outputs = runner(images)
    assert outputs.dtype == np.float32
    # Within one input and one output step of the exact value (a dropped zero point is 0.5 off).
    np.testing.assert_allclose(outputs, 2.0 * images - 0.5, rtol=0, atol=2 * scale_in + scale_out)


def test_int8_relative_error_of_a_trained_model_is_bounded(tmp_path):
    model = trained(attention=True)
    calibration, _ = quadrant_images(64, seed=2)
    images, _ = quadrant_images(64, seed=1)
    images = export_classification.snap_to_8_bit(images)
    (artifact,) = export_classification.write_artifacts(
        model, str(tmp_path), ["tflite_int8"], (16, 16, 3), 8, False, calibration
    ).values()
    outputs = parity.predict(tflite.TFLiteRunner(artifact["path"]), images, 8)
    values = parity.metrics(outputs, np.asarray(model(images)))
    assert values["max_rel_diff"] <= 0.05, values
    assert values["top1_agreement"] == 1.0, values
