"""AttentionAugmentation2D on JAX and PyTorch (the keras.ops path) against the TensorFlow layer.

This process is TensorFlow; one subprocess per backend (tests/backend_script.py) computes every
case's outputs, scores and gradients with the same weights, and the `.keras` files cross between
them. PyTorch's are skipped where torch is not installed (CI's environment has no torch;
scripts/test_torch.sh makes one that has).
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from aa_keras.applications import recalibrate_batch_norm
from aa_keras.layers import AttentionAugmentation2D

BASE = dict(filters=16, kernel_size=3, depth_k=8, depth_v=8, num_heads=2)
INPUT_SHAPE = (2, 7, 8, 5)
CASES = {
    "relative": dict(config=BASE, scores=True),
    "none": dict(config=dict(BASE, position_encoding="none")),
    "sine": dict(config=dict(BASE, depth_k=6, position_encoding="sine"), scores=True),
    "coordconv": dict(config=dict(BASE, position_encoding="coordconv")),
    "strided": dict(config=dict(BASE, strides=2)),
    "valid": dict(config=dict(BASE, strides=2, padding="valid")),
    "downsample": dict(config=dict(BASE, downsample_attention=True), scores=True),
    "fully_attentional": dict(config=dict(BASE, filters=8, activation="relu")),
    "central_rows": dict(config=dict(BASE, max_size=(10, 11)), build_shape=(None, None, None, 5), scores=True),
    "blocked": dict(config=dict(BASE, query_block_size=13)),
    # float16 convolutions, float32 softmax: (outputs, gradients, scores) agree to float16's precision
    # (gradients up to ~30 here: 0.1 is ~3e-3 of them; measured 5e-2).
    "mixed_float16": dict(config=dict(BASE, dtype="mixed_float16"), scores=True, atol=(1e-2, 1e-1, 1e-3)),
}
ATOL = (1e-5, 1e-4, 1e-6)
BACKENDS = [
    "jax",
    pytest.param(
        "torch",
        marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed"),
    ),
]


def _layer(name, case, weights=None):
    """The TensorFlow layer of a case, built, with `weights` or seeded random ones."""
    layer = AttentionAugmentation2D(**case["config"])
    layer.build(case.get("build_shape", (None, *INPUT_SHAPE[1:])))
    if weights is None:
        rng = np.random.default_rng(len(name))
        weights = [rng.normal(scale=0.3, size=w.shape).astype(w.dtype) for w in layer.get_weights()]
    layer.set_weights(weights)
    return layer


def _batch_norm_model():
    """An AA layer between BatchNormalizations, one in a nested model."""
    keras.utils.set_random_seed(3)
    inner_inputs = keras.Input((7, 8, 16))
    inner = keras.Model(inner_inputs, keras.layers.BatchNormalization()(inner_inputs), name="inner")
    inputs = keras.Input(INPUT_SHAPE[1:])
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(5, 1)(inputs))
    x = AttentionAugmentation2D(16, 3, depth_k=8, depth_v=8, num_heads=2)(x)
    return keras.Model(inputs, inner(x))


def _model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(INPUT_SHAPE[1:])
    x = AttentionAugmentation2D(16, 3, depth_k=8, depth_v=8, num_heads=2, position_encoding="coordconv")(inputs)
    x = AttentionAugmentation2D(8, 3, depth_k=8, depth_v=8, num_heads=2, downsample_attention=True)(x)
    return keras.Model(inputs, x)


def run_backend(backend, script, folder):
    """Runs tests/<script> on `folder` under Keras's `backend` (JAX on its CPU); its results
    (folder/<backend>.npz)."""
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    script = os.path.join(os.path.dirname(__file__), script)
    done = subprocess.run([sys.executable, script, str(folder)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    return dict(np.load(folder / f"{backend}.npz"))


@pytest.fixture(scope="module", params=BACKENDS)
def run(request, tmp_path_factory):
    """TensorFlow layers and inputs per case, and the other backend's subprocess's results."""
    backend = request.param
    folder = tmp_path_factory.mktemp(f"backends_{backend}")
    rng = np.random.default_rng(0)
    arrays, layers = {}, {}
    for name, case in CASES.items():
        layers[name] = layer = _layer(name, case)
        arrays[f"{name}/x"] = x = rng.normal(size=INPUT_SHAPE).astype("float32")
        arrays[f"{name}/cotangent"] = rng.normal(size=layer.compute_output_shape(x.shape)).astype("float32")
        for i, weight in enumerate(layer.get_weights()):
            arrays[f"{name}/w{i}"] = weight
    cases = {name: dict(case, config=layers[name].get_config()) for name, case in CASES.items()}
    for case, spec in zip(cases.values(), CASES.values()):
        case["build_shape"] = spec.get("build_shape", (None, *INPUT_SHAPE[1:]))
    arrays["model/x"] = rng.normal(size=INPUT_SHAPE).astype("float32")
    tf_model = _model(seed=2)
    tf_model.save(folder / "tf_model.keras")
    _batch_norm_model().save(folder / "tf_batch_norm_model.keras")
    with open(folder / "cases.json", "w") as f:
        json.dump(cases, f)
    np.savez(folder / "inputs.npz", **arrays)

    results = run_backend(backend, "backend_script.py", folder)
    return dict(backend=backend, folder=folder, arrays=arrays, layers=layers, tf_model=tf_model, results=results)


@pytest.mark.parametrize("name", CASES)
def test_outputs_and_gradients_match_tensorflow(run, name):
    layer, arrays, results = run["layers"][name], run["arrays"], run["results"]
    atol_outputs, atol_gradients, _ = CASES[name].get("atol", ATOL)
    x = tf.constant(arrays[f"{name}/x"])
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = tf.cast(layer(x), "float32")
        loss = tf.reduce_sum(outputs * arrays[f"{name}/cotangent"])
    d_x, *d_weights = tape.gradient(loss, [x] + layer.trainable_weights)
    assert results[f"{name}/outputs"].dtype == layer.compute_dtype
    np.testing.assert_allclose(results[f"{name}/outputs"].astype("float32"), outputs, atol=atol_outputs, rtol=0)
    np.testing.assert_allclose(results[f"{name}/eager"].astype("float32"), outputs, atol=atol_outputs, rtol=0)
    np.testing.assert_allclose(results[f"{name}/d_x"], d_x, atol=atol_gradients, rtol=0)
    assert len(d_weights) == len([k for k in results if k.startswith(f"{name}/d_w")])
    for i, grad in enumerate(d_weights):
        np.testing.assert_allclose(results[f"{name}/d_w{i}"], tf.convert_to_tensor(grad), atol=atol_gradients, rtol=0)


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.get("scores")])
def test_attention_scores_match_tensorflow(run, name):
    _, scores = run["layers"][name](run["arrays"][f"{name}/x"], return_attention_scores=True)
    assert run["results"][f"{name}/scores"].dtype == np.float32
    np.testing.assert_allclose(run["results"][f"{name}/scores"], scores, atol=CASES[name].get("atol", ATOL)[2], rtol=0)


@pytest.mark.parametrize("implementation", ["fused", "tf_ops"])
def test_tensorflow_only_implementations_are_refused_on_other_backends(run, implementation):
    message = str(run["results"][f"refusal/{implementation}"])
    assert f"attention_implementation={implementation!r}" in message and f"{run['backend']!r} backend" in message


def test_keras_file_from_tensorflow_runs_on_other_backends(run):
    images = run["arrays"]["model/x"]
    expected = run["tf_model"](images)
    np.testing.assert_allclose(run["results"]["tf_model/outputs"], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(run["results"]["tf_model/predict"], expected, atol=1e-5, rtol=0)


def test_batch_norm_statistics_re_estimated_on_other_backends_as_on_tensorflow(run):
    model = keras.saving.load_model(run["folder"] / "tf_batch_norm_model.keras")
    images = run["arrays"]["model/x"]
    recalibrate_batch_norm(model, [images[:1], images[1:]])
    found = [v.numpy() for v in model.non_trainable_weights if "moving" in v.path]
    assert len(found) == 4 and len([k for k in run["results"] if k.startswith("batch_norm/")]) == 4
    for i, want in enumerate(found):
        np.testing.assert_allclose(run["results"][f"batch_norm/{i}"], want, atol=1e-5, rtol=1e-5)


def test_keras_file_from_other_backends_runs_on_tensorflow(run):
    model = keras.saving.load_model(run["folder"] / f"{run['backend']}_model.keras")
    outputs = model(run["arrays"]["model/x"])
    np.testing.assert_allclose(outputs, run["results"]["model/outputs"], atol=1e-5, rtol=0)


def test_dropout_on_other_backends(run):
    """dropout=0.5 on the keras.ops path: inference as without dropout (and as TensorFlow),
    training calls differ, the same seed reproduces, a stateless step (jitted on JAX) advances
    the seed, about half the weights dropped, the scores returned before dropout."""
    results = run["results"]
    for i in range(2):
        np.testing.assert_array_equal(results[f"dropout/inference{i}"], results["relative/eager"])
    np.testing.assert_array_equal(results["dropout/training0"], results["dropout/training1"])
    first, second = results["dropout/training0"]
    inference = results["dropout/inference0"]
    assert np.abs(first - inference).max() > 1e-2 and np.abs(first - second).max() > 1e-2
    stateless_first, stateless_second = results["dropout/stateless"]
    assert np.abs(stateless_first - inference).max() > 1e-2
    assert np.abs(stateless_first - stateless_second).max() > 1e-2
    assert bool(results["dropout/stateless_grads_finite"])
    outputs = results["dropout/one_hot_outputs"]
    assert set(np.round(np.unique(outputs) * 8, 5)) <= {0.0, 1.0}
    assert abs(np.mean(outputs == 0) - 0.5) < 0.05
    np.testing.assert_allclose(results["dropout/one_hot_scores"], 1 / 16, rtol=1e-6)
