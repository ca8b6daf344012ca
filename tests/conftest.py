"""Test-session setup shared by every test file.

The host CPU is split into two logical devices, "/cpu:0" and "/cpu:1", at import time, so
that tests can run `tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])` without a GPU. This
must happen before any TensorFlow op runs (the runtime's devices are fixed once it starts),
which is why it is done here and not in a fixture. Code that does not name a device still
runs on "/cpu:0", exactly as without this file.
"""

import keras
import pytest
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over "/cpu:0" and "/cpu:1" for the whole session.

    Every MirroredStrategy of a process starts its collective-op keys at the same values, so a
    second one reuses the keys of the first and its all-reduces fail with "Shape mismatch in the
    collective instance" (TensorFlow 2.20). Tests share this one instead of creating their own.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The embedded glyph_pairs dataset, generated once per session (before any worker process
    of a test starts, so that those only read it)."""
    import tensorflow_datasets as tfds  # the datasets extra, which the layer's tests need not have

    path = tmp_path_factory.getbasetemp() / "tfds"
    tfds.builder("glyph_pairs", data_dir=str(path)).download_and_prepare()
    return str(path)


@pytest.fixture(scope="session")
def classifier_run(data_dir, tmp_path_factory):
    """The run folder of aa_small trained 5 steps on glyph_pairs by the trainer (model.keras,
    labels.txt, run_config.json), for the evaluate and predict tests."""
    from aa_keras.applications import small_nets
    from aa_keras.training import classification, recipes
    from aa_keras.training.settings import settings_for

    model_dir = tmp_path_factory.mktemp("classifier_run") / "aa_small"
    keras.utils.set_random_seed(0)
    recipe = recipes.get_recipe("quick", epochs=1, global_batch_size=32)
    classification.train(tf.distribute.get_strategy(), settings_for(
        "classification", "aa_small", str(model_dir), recipe, data_dir=data_dir, steps_per_epoch=5,
        verbose=False, model_fn=lambda name, shape, classes: small_nets.aa_small_net(shape, classes),
    ))  # fmt: skip
    return model_dir


@pytest.fixture(scope="session")
def make_glyph_boxes(tmp_path_factory):
    """A function (train, test) -> a new data_dir holding glyph_boxes with that many train and
    test images."""
    import tensorflow_datasets as tfds

    from aa_keras.datasets import glyph_boxes

    def make(train, test):
        path = str(tmp_path_factory.mktemp("glyph_boxes"))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(glyph_boxes, "SPLIT_SIZES", {"train": train, "test": test})
            tfds.builder("glyph_boxes", data_dir=path).download_and_prepare()
        return path

    return make


@pytest.fixture(scope="session")
def tiny_glyph_boxes(make_glyph_boxes):
    """glyph_boxes with 8 train and 4 test images."""
    return make_glyph_boxes(8, 4)


@pytest.fixture(scope="session")
def detector_run(tiny_glyph_boxes, tmp_path_factory):
    """The run folder of aa_retinanet_r18 (64 x 64 images) trained 1 step on glyph_boxes,
    evaluated on 2 test images, for the evaluate and predict tests."""
    from aa_keras.training import detection, recipes
    from aa_keras.training.settings import settings_for

    model_dir = tmp_path_factory.mktemp("detector_run") / "aa_retinanet_r18"
    keras.utils.set_random_seed(0)
    recipe = recipes.get_detection_recipe("quick_detection", image_size=64, max_instances=4, epochs=1)
    detection.train(tf.distribute.get_strategy(), settings_for(
        "detection", "aa_retinanet_r18", str(model_dir), recipe=recipe, data_dir=tiny_glyph_boxes,
        global_batch_size=4, steps_per_epoch=1, eval_examples=2, verbose=False,
    ))  # fmt: skip
    return model_dir


@pytest.fixture(scope="session")
def classifier_export(classifier_run, data_dir, tmp_path_factory):
    """The trained classifier's SavedModel and float32 TFLite model, exported with its names."""
    output_dir = tmp_path_factory.mktemp("export") / "export"
    argv = ["aa-export", f"--model={classifier_run / 'model.keras'}", f"--output_dir={output_dir}", "--baseline=none",
            "--formats=saved_model,tflite_float32", f"--data_dir={data_dir}", "--num_images=4", "--latency_runs=1"]  # fmt: skip
    from aa_keras.export import export as exporter

    exporter.FLAGS(argv)
    try:
        exporter.main(argv[:1])
    finally:
        exporter.FLAGS.unparse_flags()
    return output_dir
