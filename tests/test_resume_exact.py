"""A run interrupted mid-epoch and resumed ends where the uninterrupted run ends: same steps,
same weights. The data a resumed run uses comes from `skip_batches`; its arithmetic is checked
batch by batch, with and without replicas."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from aa_keras.data import classification as data
from aa_keras.training import classification, recipes
from aa_keras.training.settings import settings_for

# The mutation check (scripts/mutation_check.py) points this at a glyph_pairs it generated once,
# so that each of its runs does not generate the dataset again.
DATA_DIR_VARIABLE = "AA_KERAS_TEST_DATA_DIR"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = os.environ.get(DATA_DIR_VARIABLE) or str(tmp_path_factory.getbasetemp() / "tfds")
    tfds.builder("glyph_pairs", data_dir=path).download_and_prepare()
    return path


def _tiny_net(name, input_shape, classes):
    """A network small enough to train and evaluate in a moment, with BatchNormalization, whose
    moving statistics a resumed run must restore too."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x), name=name)


class Interrupted(Exception):
    """Stands for a kill right after a checkpoint was written."""


def _train(model_dir, data_dir):
    # 2 epochs of 3 steps; Adam at a peak of 0.1 * 64 / 256 = 0.025 so that one batch more or
    # less moves the weights far beyond float32 rounding.
    recipe = recipes.get_recipe("quick", epochs=2, global_batch_size=64, learning_rate=0.1)
    keras.utils.set_random_seed(7)  # the same initial weights for every run
    model, metrics = classification.train(tf.distribute.get_strategy(), settings_for(
        "classification", "tiny", str(model_dir), recipe, data_dir=data_dir,
        checkpoint_steps=4, steps_per_epoch=3, seed=5, verbose=False,
        model_fn=_tiny_net,
    ))  # fmt: skip
    return model, metrics


def test_resumed_mid_epoch_ends_with_the_uninterrupted_weights(tmp_path, data_dir, monkeypatch):
    uninterrupted, expected = _train(tmp_path / "uninterrupted", data_dir)

    save = tf.train.CheckpointManager.save

    def save_then_interrupt(manager, checkpoint_number=None, **kwargs):
        path = save(manager, checkpoint_number=checkpoint_number, **kwargs)
        if checkpoint_number == 4:  # the first step of the second epoch is done
            raise Interrupted(path)
        return path

    with monkeypatch.context() as patch:
        patch.setattr(tf.train.CheckpointManager, "save", save_then_interrupt)
        with pytest.raises(Interrupted):
            _train(tmp_path / "resumed", data_dir)
    resumed, metrics = _train(tmp_path / "resumed", data_dir)

    assert metrics["resumed_at_steps"] == [4]
    assert metrics["steps"] == expected["steps"] == 6
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    timeless = [{k: v for k, v in h.items() if k != "images_per_second"} for h in (metrics["history"][0], expected["history"][0])]
    assert timeless[0] == timeless[1]
    keras.utils.set_random_seed(7)
    initial = _tiny_net("tiny", (32, 32, 3), 2)
    moved = max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(uninterrupted.weights, initial.weights))
    assert moved > 1e-2  # training moved the weights: equality below is not trivial
    for a, b in zip(resumed.weights, uninterrupted.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6, err_msg=a.path)
    assert metrics["test_accuracy"] == expected["test_accuracy"]


def _first_images(dataset, count):
    return [images.numpy() for images, _ in dataset.take(count)]


@pytest.mark.parametrize(
    "context",
    [None, tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)],
    ids=["one_replica", "two_replicas_one_pipeline"],
)
def test_skip_batches_resumes_at_the_next_unseen_batch(data_dir, context):
    def dataset(skip):
        return data.build_dataset(
            "glyph_pairs", "train", 32, global_batch_size=8, data_dir=data_dir, training=True,
            input_context=context, seed=3, skip_batches=skip, shuffle_buffer=64,
        )  # fmt: skip

    replicas = 1 if context is None else context.num_replicas_in_sync
    # Per-replica batches in the order the replicas take them: one step takes `replicas` batches.
    full = _first_images(dataset(0), 5 * replicas)
    for skip in (1, 2):
        resumed = _first_images(dataset(skip), replicas)
        for index, images in enumerate(resumed):
            np.testing.assert_array_equal(images, full[skip * replicas + index])
