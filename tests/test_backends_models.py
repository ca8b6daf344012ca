"""The networks, `augment`, `resize_model`, attention maps and a fit on JAX and PyTorch, against
TensorFlow; the model fitted there exported to float32 TFLite.

This process is TensorFlow; one subprocess per backend (tests/backend_models_script.py) builds
each network with a fixed seed and saves it, augments a model saved here, resizes and maps its
`aa_small`, and fits another two steps; here the `.keras` files are loaded under TensorFlow and
the same operations repeated on the same weights: outputs within 1e-5. PyTorch's are skipped
where torch is not installed.
"""

import keras
import numpy as np
import pytest
from test_backends import BACKENDS, run_backend

from aa_keras.applications import augment, resize_model
from aa_keras.visualize import attention_maps

ATOL = 1e-5
NETWORKS = ("aa_small", "conv_small", "aa_resnet18", "aa_wrn10_2")


def _source_model():
    """A small plain functional model for `augment`, with seeded weights."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name="source")


@pytest.fixture(scope="module", params=BACKENDS)
def run(request, tmp_path_factory):
    """The folder of the other backend's subprocess's files, the inputs, and its results."""
    folder = tmp_path_factory.mktemp(f"backend_models_{request.param}")
    rng = np.random.default_rng(0)
    inputs = {
        "images": rng.normal(size=(2, 32, 32, 3)).astype("float32"),
        "images_48": rng.normal(size=(2, 48, 48, 3)).astype("float32"),
        "queries": np.array([[0, 0], [13, 21], [31, 30]]),
        "train_x": rng.normal(size=(8, 32, 32, 3)).astype("float32"),
        "train_y": rng.integers(0, 3, size=(8,)),
    }
    np.savez(folder / "inputs.npz", **inputs)
    _source_model().save(folder / "source.keras")
    return folder, inputs, run_backend(request.param, "backend_models_script.py", folder)


def _load(folder, name):
    return keras.saving.load_model(folder / f"{name}.keras")


def _load_fitted(folder, results):
    """The model fitted by the subprocess. Keras 3.15 saves a model compiled under torch with the
    torch backend's own optimizer class (keras.src.backend.torch.optimizers.torch_sgd.SGD), which
    other backends cannot import: that file loads elsewhere without its compile state only."""
    compile = str(results["backend"]) != "torch"
    return keras.saving.load_model(folder / "fitted.keras", compile=compile)


@pytest.mark.parametrize("name", NETWORKS)
def test_network_built_on_other_backends_runs_the_same_on_tensorflow(run, name):
    folder, inputs, results = run
    outputs = _load(folder, name)(inputs["images"], training=False)
    np.testing.assert_allclose(results[name], outputs, atol=ATOL)


def test_augment_on_other_backends_matches_tensorflow(run):
    folder, inputs, results = run
    from_backend = _load(folder, "augmented")
    np.testing.assert_allclose(results["augmented"], from_backend(inputs["images"], training=False), atol=ATOL)
    # The same augmentation here: the same graph and weight layout; the transferred weights equal.
    source = _load(folder, "source")
    augmented, summary = augment(source, select="all", depth_k=8, depth_v=8, num_heads=2, return_summary=True)
    assert [r.name for r in summary.replaced] == ["conv1", "conv2"]
    assert [w.path for w in augmented.weights] == [w.path for w in from_backend.weights]
    for path in ("bn1/moving_variance", "logits/kernel", "conv1/conv/kernel", "conv2/conv/bias"):
        np.testing.assert_array_equal(*(keras.ops.convert_to_numpy(_weight(m, path)) for m in (augmented, from_backend)))
    augmented.set_weights(from_backend.get_weights())
    np.testing.assert_allclose(results["augmented"], augmented(inputs["images"], training=False), atol=ATOL)


def _weight(model, path):
    return next(w for w in model.weights if w.path == path)


def test_resize_model_on_other_backends_matches_tensorflow(run):
    folder, inputs, results = run
    resized = resize_model(_load(folder, "aa_small"), (48, 48, 3))
    np.testing.assert_allclose(results["resized"], resized(inputs["images_48"], training=False), atol=ATOL)


def test_attention_maps_on_other_backends_match_tensorflow(run):
    folder, inputs, results = run
    maps = attention_maps(_load(folder, "aa_small"), inputs["images"], inputs["queries"])
    assert sorted(maps) == sorted(name[len("maps/") :] for name in results if name.startswith("maps/"))
    for name, value in maps.items():
        np.testing.assert_allclose(results[f"maps/{name}"], value, atol=ATOL)


def test_aa_small_fitted_on_other_backends_loads_on_tensorflow(run):
    folder, inputs, results = run
    assert results["fitted/loss"].shape == (1,) and np.isfinite(results["fitted/loss"]).all()
    outputs = _load_fitted(folder, results)(inputs["images"], training=False)
    np.testing.assert_allclose(results["fitted"], outputs, atol=ATOL)


def test_aa_small_fitted_on_other_backends_exports_to_tflite_with_parity(run, tmp_path):
    """Build and fit on JAX or PyTorch, save; load under TensorFlow and export float32 TFLite with
    the exporter: the file's outputs equal those of the model on that backend (1e-4)."""
    from ai_edge_litert.interpreter import Interpreter

    from aa_keras.export.classification import write_artifacts

    folder, inputs, results = run
    images = inputs["images"]
    artifacts = write_artifacts(
        _load_fitted(folder, results), tmp_path, ["tflite_float32"], images.shape[1:], batch=len(images),
        uint8_input=False, calibration_images=None,
    )
    interpreter = Interpreter(model_path=artifacts["tflite_float32"]["path"])
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    outputs = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(results["fitted"], outputs, rtol=0, atol=1e-4)
