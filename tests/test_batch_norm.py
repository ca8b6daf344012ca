"""`recalibrate_batch_norm`: exact statistics (checked in NumPy), nested models, frozen layers,
MirroredStrategy, mixed precision, the trainable state and the errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aa_keras.applications import recalibrate_batch_norm
from aa_keras.layers import AttentionAugmentation2D

IMAGES = np.random.RandomState(0).normal(3.0, 2.0, (20, 6, 6, 3)).astype("float32")


def small_model():
    """conv -> bn1 -> relu -> nested(conv -> bn2) -> pool, with bn1's affine not the identity."""
    inner_inputs = keras.Input((6, 6, 4))
    h = keras.layers.Conv2D(5, 3, padding="same", name="c2")(inner_inputs)
    inner = keras.Model(inner_inputs, keras.layers.BatchNormalization(name="bn2")(h), name="inner")
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = inner(keras.layers.ReLU()(h))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))
    bn1 = model.get_layer("bn1")
    rng = np.random.RandomState(1)
    bn1.gamma.assign(rng.uniform(0.5, 1.5, 4))
    bn1.beta.assign(rng.uniform(-0.5, 0.5, 4))
    return model


def expected_statistics(model, batch):
    """{name: (mean, variance)} of bn1's and bn2's inputs over IMAGES in NumPy, bn1 normalizing
    each batch of `batch` images with that batch's moments."""
    bn1, inner = model.get_layer("bn1"), model.get_layer("inner")
    first = np.asarray(model.get_layer("c1")(IMAGES), np.float64)
    second = []
    for start in range(0, len(IMAGES), batch):
        part = first[start:start + batch]
        mean, variance = part.mean((0, 1, 2)), part.var((0, 1, 2))
        normal = (part - mean) / np.sqrt(variance + bn1.epsilon) * bn1.gamma.numpy() + bn1.beta.numpy()
        second.append(np.asarray(inner.get_layer("c2")(np.maximum(normal, 0).astype("float32")), np.float64))
    second = np.concatenate(second)
    return {"bn1": (first.mean((0, 1, 2)), first.var((0, 1, 2))), "bn2": (second.mean((0, 1, 2)), second.var((0, 1, 2)))}


def statistics(model):
    layers = {"bn1": model.get_layer("bn1"), "bn2": model.get_layer("inner").get_layer("bn2")}
    return {name: (l.moving_mean.numpy(), l.moving_variance.numpy()) for name, l in layers.items()}


def assert_statistics(found, expected, rtol=1e-5):
    for name in expected:
        for got, want in zip(found[name], expected[name]):
            np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-5, err_msg=name)


def test_exact_mean_and_variance_of_each_input_nested_model_included():
    model = small_model()
    summary = recalibrate_batch_norm(model, tf.data.Dataset.from_tensor_slices(IMAGES).batch(8))
    assert summary.layers == ("bn1", "inner/bn2")
    assert (summary.images, summary.batches, summary.kept) == (20, 3, ())
    assert "2 BatchNormalization layers over 20 images" in str(summary)
    assert_statistics(statistics(model), expected_statistics(model, 8))
    # The layers' own `call` is back: inference uses the new moving statistics.
    bn1 = model.get_layer("bn1")
    assert "call" not in vars(bn1)
    x = np.ones((1, 6, 6, 4), "float32")
    want = (x - bn1.moving_mean.numpy()) / np.sqrt(bn1.moving_variance.numpy() + bn1.epsilon)
    np.testing.assert_allclose(bn1(x, training=False), want * bn1.gamma.numpy() + bn1.beta.numpy(), rtol=1e-5, atol=1e-5)


def test_numpy_batches_with_labels_and_steps():
    model = small_model()
    batches = [(IMAGES[i:i + 5], np.zeros(5)) for i in range(0, 20, 5)]
    summary = recalibrate_batch_norm(model, batches, steps=2)
    assert (summary.images, summary.batches) == (10, 2)
    bn1 = model.get_layer("bn1")
    first = np.asarray(model.get_layer("c1")(IMAGES[:10]))
    np.testing.assert_allclose(bn1.moving_mean.numpy(), first.mean((0, 1, 2)), rtol=1e-5, atol=1e-5)


def test_frozen_layers_keep_their_statistics_unless_asked():
    model = small_model()
    bn2 = model.get_layer("inner").get_layer("bn2")
    bn2.trainable = False
    summary = recalibrate_batch_norm(model, [IMAGES])
    assert (summary.layers, summary.kept) == (("bn1",), ("inner/bn2",))
    np.testing.assert_array_equal(bn2.moving_mean.numpy(), np.zeros(5))
    np.testing.assert_array_equal(bn2.moving_variance.numpy(), np.ones(5))
    assert not bn2.trainable and model.get_layer("bn1").trainable
    summary = recalibrate_batch_norm(model, [IMAGES], include_frozen=True)
    assert summary.layers == ("bn1", "inner/bn2") and not bn2.trainable
    assert np.abs(bn2.moving_mean.numpy()).max() > 1e-3


def test_mirrored_strategy_gives_the_statistics_of_one_device(mirrored_strategy):
    # Two replicas of a global batch of 10 measure the same batches of 5 as one device with batch 5.
    model = small_model()
    with mirrored_strategy.scope():
        mirrored = small_model()
    mirrored.set_weights(model.get_weights())
    recalibrate_batch_norm(model, tf.data.Dataset.from_tensor_slices(IMAGES).batch(5))
    with mirrored_strategy.scope():
        summary = recalibrate_batch_norm(mirrored, tf.data.Dataset.from_tensor_slices(IMAGES).batch(10))
    assert (summary.images, summary.batches) == (20, 2)
    assert_statistics(statistics(mirrored), statistics(model))
    assert_statistics(statistics(mirrored), expected_statistics(model, 5))
    # A last global batch of one image leaves one replica empty.
    with mirrored_strategy.scope():
        summary = recalibrate_batch_norm(mirrored, tf.data.Dataset.from_tensor_slices(IMAGES[:11]).batch(10))
    assert (summary.images, summary.batches) == (11, 2)
    first = np.asarray(model.get_layer("c1")(IMAGES[:11]), np.float64)
    np.testing.assert_allclose(mirrored.get_layer("bn1").moving_mean.numpy(), first.mean((0, 1, 2)), rtol=1e-5, atol=1e-5)


def test_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = small_model()
    finally:
        keras.config.set_dtype_policy(previous)
    recalibrate_batch_norm(model, tf.data.Dataset.from_tensor_slices(IMAGES).batch(10))
    bn1 = model.get_layer("bn1")
    assert bn1.moving_mean.dtype == "float32"
    first = np.asarray(model.get_layer("c1")(IMAGES), np.float64)  # float16 convolution.
    np.testing.assert_allclose(bn1.moving_mean.numpy(), first.mean((0, 1, 2)), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), first.var((0, 1, 2)), rtol=1e-3, atol=1e-3)


def test_model_with_attention_and_dropout_in_inference():
    # Dropout before a BatchNormalization stays off while measuring: the statistics are exact.
    inputs = keras.Input((6, 6, 3))
    h = AttentionAugmentation2D(8, 3, depth_k=4, depth_v=4, num_heads=2, name="aa")(inputs)
    h = keras.layers.Dropout(0.5)(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(inputs, h)
    recalibrate_batch_norm(model, [IMAGES[:10], IMAGES[10:]])
    aa = np.asarray(model.get_layer("aa")(IMAGES), np.float64)
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(), aa.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.get_layer("bn").moving_variance.numpy(), aa.var((0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_errors_change_nothing():
    model = small_model()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="gave no images"):
        recalibrate_batch_norm(model, [])
    with pytest.raises(ValueError, match="`steps`"):
        recalibrate_batch_norm(model, [IMAGES], steps=0)
    with pytest.raises(ValueError, match="not finite"):
        recalibrate_batch_norm(model, [np.full_like(IMAGES, np.nan)])
    for layer in model.layers:
        layer.trainable = False
    with pytest.raises(ValueError, match="include_frozen=True"):
        recalibrate_batch_norm(model, [IMAGES])
    plain = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(2, 1)])
    with pytest.raises(ValueError, match="no BatchNormalization"):
        recalibrate_batch_norm(plain, [IMAGES])
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)
