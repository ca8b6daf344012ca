"""Models at other resolutions: resampled relative tables, `resize_model`, layers without
tables on any size, `build_detector(backbone=...)` and the trainer's `--init_from`."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from aa_keras.applications import (
    AAResNet,
    augment,
    build_detector,
    build_model,
    keras_classifier,
    recalibrate_batch_norm,
    resize_model,
    small_nets,
    transfer_weights,
)
from aa_keras.layers import AttentionAugmentation2D, resample_relative_table
from aa_keras.training import classification, init_from, recipes, train
from aa_keras.training.settings import settings_for

SMALL = dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2)


def _table(length, depth=3, seed=0):
    return np.random.default_rng(seed).normal(size=(2 * length - 1, depth)).astype("float32")


def _images(shape, seed=1):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _run_at(model, x):
    """The original model on an input of another size: its graph run directly (calling the
    model itself checks the input shape)."""
    return model.call(x, training=False)


# Resampling.


@pytest.mark.parametrize("method", ["linear", "edge"])
def test_same_length_is_the_identity(method):
    table = _table(5)
    np.testing.assert_array_equal(resample_relative_table(table, 5, method), table)


@pytest.mark.parametrize("method", ["linear", "edge"])
def test_shorter_grid_takes_the_central_rows(method):
    table = _table(6)
    for length in (1, 3, 5):
        np.testing.assert_array_equal(resample_relative_table(table, length, method), table[6 - length : 6 + length - 1])


def test_linear_keeps_offset_zero_and_the_largest_offsets():
    table = _table(4)
    for length in (5, 7, 13):
        rows = resample_relative_table(table, length, "linear")
        assert rows.shape == (2 * length - 1, 3) and rows.dtype == np.float32
        for old, new in ((0, 0), (3, length - 1), (6, 2 * length - 2)):  # offsets -3, 0, +3 -> -(L'-1), 0, L'-1
            np.testing.assert_allclose(rows[new], table[old], rtol=1e-6)
    # Offsets in between lie on the segments between the original rows: 4 -> 7 doubles the scale.
    rows = resample_relative_table(table, 7, "linear")
    np.testing.assert_allclose(rows[1], 0.5 * (table[0] + table[1]), rtol=1e-6)


def test_edge_keeps_pixel_offsets_and_repeats_the_outermost_rows():
    table = _table(3)
    rows = resample_relative_table(table, 6, "edge")
    np.testing.assert_array_equal(rows[3:8], table)  # offsets -2 .. 2 unchanged
    np.testing.assert_array_equal(rows[:3], np.repeat(table[:1], 3, axis=0))
    np.testing.assert_array_equal(rows[8:], np.repeat(table[-1:], 3, axis=0))


@pytest.mark.parametrize(
    "table, length, method, message",
    [
        (np.zeros((4, 2)), 3, "linear", "odd number of rows"),
        (np.zeros((5,)), 3, "linear", "odd number of rows"),
        (np.zeros((5, 2)), 0, "linear", "length=0"),
        (np.zeros((5, 2)), True, "linear", "length=True"),
        (np.zeros((5, 2)), 4, "bicubic", "method='bicubic'"),
    ],
)
def test_resampling_rejects_bad_arguments(table, length, method, message):
    with pytest.raises(ValueError, match=message):
        resample_relative_table(table, length, method)


# Layers without relative tables.


@pytest.mark.parametrize("encoding", ["none", "sine", "coordconv"])
@pytest.mark.parametrize("options", [{}, {"strides": 2}, {"downsample_attention": True}])
def test_layers_without_relative_tables_run_on_any_size(encoding, options):
    layer = AttentionAugmentation2D(**SMALL, position_encoding=encoding, **options)
    model = keras.Sequential([keras.Input((None, None, 3)), layer])
    run = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, 3))])
    stride = options.get("strides", 1)
    for shape in [(1, 5, 7, 3), (2, 12, 9, 3)]:
        x = _images(shape)
        expected = (shape[0], -(-shape[1] // stride), -(-shape[2] // stride), 8)
        assert model(x).shape == expected
        np.testing.assert_allclose(run(x), model(x), atol=1e-5)
    assert layer.rel_height is None and layer.rel_width is None


# resize_model.


@pytest.fixture(scope="module")
def aa_small():
    keras.utils.set_random_seed(0)
    model = small_nets.aa_small_net((32, 32, 3), 2)
    # Non-trivial statistics and biases, so that a weight not carried over would show.
    for variable in model.weights:
        if "moving_variance" in variable.path:
            variable.assign(np.random.default_rng(0).uniform(0.5, 2.0, variable.shape))
    return model


def test_resize_to_the_same_size_gives_identical_outputs(aa_small):
    resized, summary = resize_model(aa_small, (32, 32, 3), return_summary=True)
    x = _images((2, 32, 32, 3))
    np.testing.assert_array_equal(resized(x), aa_small(x))
    assert [c.tables for c in summary.layers] == ["same"] * 3


def test_resize_to_a_smaller_size_matches_the_original_on_that_size(aa_small):
    resized, summary = resize_model(aa_small, (16, 24, 3), return_summary=True)
    x = _images((2, 16, 24, 3))
    np.testing.assert_allclose(resized(x), _run_at(aa_small, x), atol=1e-6)
    assert [(c.layer, c.old_grid, c.new_grid, c.tables) for c in summary.layers] == [
        ("block1_aa", (16, 16), (8, 12), "central rows"),
        ("block2_aa", (8, 8), (4, 6), "central rows"),
        ("block3_aa", (8, 8), (4, 6), "central rows"),
    ]


@pytest.mark.parametrize("method", ["linear", "edge"])
def test_resize_to_a_larger_size_runs_saves_and_loads(aa_small, method, tmp_path):
    resized, summary = resize_model(aa_small, (64, 48, 3), method=method, return_summary=True)
    assert resized.name == aa_small.name and resized.input_shape == (None, 64, 48, 3)
    assert [(c.old_grid, c.new_grid, c.tables) for c in summary.layers][1] == ((8, 8), (16, 12), method)
    table = aa_small.get_layer("block2_aa").rel_width.numpy()
    np.testing.assert_array_equal(
        resized.get_layer("block2_aa").rel_width.numpy(), resample_relative_table(table, 12, method)
    )
    x = _images((2, 64, 48, 3))
    outputs = resized(x)
    assert outputs.shape == (2, 2) and np.all(np.isfinite(outputs))
    resized.save(tmp_path / "resized.keras")
    np.testing.assert_array_equal(keras.saving.load_model(tmp_path / "resized.keras")(x), outputs)


def test_resize_re_estimates_the_batch_norm_statistics_at_the_new_size(aa_small):
    batches = [_images((6, 64, 48, 3), seed=seed) for seed in (2, 3)]
    resized, summary = resize_model(aa_small, (64, 48, 3), batch_norm_data=batches, return_summary=True)
    plain, plain_summary = resize_model(aa_small, (64, 48, 3), return_summary=True)
    assert plain_summary.batch_norm is None and "Re-estimated" not in str(plain_summary)
    assert (summary.batch_norm.images, summary.batch_norm.batches, len(summary.batch_norm.layers)) == (12, 2, 5)
    assert "Re-estimated 5 BatchNormalization layers over 12 images" in str(summary)
    recalibrate_batch_norm(plain, batches)
    for got, want in zip(resized.weights, plain.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=got.path)
    # The source keeps its statistics; the first layer's are its input's moments at 64x48.
    source_bn = [l for l in aa_small.layers if isinstance(l, keras.layers.BatchNormalization)][0]
    new_bn = resized.get_layer(source_bn.name)
    assert not np.allclose(source_bn.moving_mean.numpy(), new_bn.moving_mean.numpy())
    _, summary = resize_model(aa_small, (64, 48, 3), batch_norm_data=batches, batch_norm_steps=1, return_summary=True)
    assert summary.batch_norm.images == 6


def test_resize_keeps_an_unknown_input_size_and_raises_max_size():
    inputs = keras.Input((None, None, 3))
    x = AttentionAugmentation2D(**SMALL, max_size=(8, 8), name="aa1")(inputs)
    outputs = AttentionAugmentation2D(**SMALL, strides=2, max_size=(8, 8), name="aa2")(x)
    model = keras.Model(inputs, outputs)
    resized, summary = resize_model(model, (12, 10, 3), method="edge", return_summary=True)
    assert resized.input_shape == (None, None, None, 3)
    assert [resized.get_layer(n).max_size for n in ("aa1", "aa2")] == [(12, 10), (12, 10)]
    assert [c.new_grid for c in summary.layers] == [(12, 10), (6, 5)]
    x = _images((1, 6, 8, 3))
    np.testing.assert_allclose(resized(x), model(x), atol=1e-6)  # "edge" keeps the rows of the old offsets
    assert resized(_images((1, 12, 10, 3))).shape == (1, 6, 5, 8)


def test_resize_an_augmented_keras_resnet50():
    base = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=5)
    model = augment(base)
    resized, summary = resize_model(model, (96, 96, 3), method="edge", return_summary=True)
    grids = {c.layer: (c.old_grid, c.new_grid) for c in summary.layers}
    assert len(grids) == 13 and grids["conv3_block1_2_conv"] == ((8, 8), (12, 12))
    assert grids["conv5_block3_2_conv"] == ((2, 2), (3, 3))
    assert resized(_images((1, 96, 96, 3))).shape == (1, 5)
    for name in ("conv1_conv", "conv4_block2_2_conv", "predictions"):
        for old, new in zip(model.get_layer(name).weights, resized.get_layer(name).weights):
            if "rel_" not in old.path:
                np.testing.assert_array_equal(old.numpy(), new.numpy())


def test_resize_an_aa_resnet_with_downsampled_attention():
    model = AAResNet(18, input_shape=(64, 64, 3), classes=4)
    resized, summary = resize_model(model, (32, 32, 3), return_summary=True)
    grids = {c.layer: (c.old_grid, c.new_grid) for c in summary.layers}
    assert grids["conv3_block1_1_conv"] == ((4, 4), (2, 2))  # stride 8, then pooled by 2
    assert grids["conv5_block2_1_conv"] == ((2, 2), (1, 1))
    x = _images((1, 32, 32, 3))
    np.testing.assert_allclose(resized(x), _run_at(model, x), atol=1e-5)


def _nested(shape):
    """image -> "backbone" (functional: "stem" -> "stage" (functional: AA "inner") -> AA "middle") ->
    "head" (Sequential: AA "last", pooling): attention layers one and two models deep."""
    stage_inputs = keras.Input((*shape[:2], 4))
    stage = keras.Model(stage_inputs, AttentionAugmentation2D(**SMALL, name="inner")(stage_inputs), name="stage")
    backbone_inputs = keras.Input(shape)
    x = stage(keras.layers.Conv2D(4, 3, padding="same", name="stem")(backbone_inputs))
    x = AttentionAugmentation2D(**SMALL, strides=2, name="middle")(x)
    backbone = keras.Model(backbone_inputs, x, name="backbone")
    head = keras.Sequential(
        [keras.Input((shape[0] // 2, shape[1] // 2, 8)), AttentionAugmentation2D(**SMALL, name="last"),
         keras.layers.GlobalAveragePooling2D()], name="head",
    )  # fmt: skip
    inputs = keras.Input(shape)
    return keras.Model(inputs, head(backbone(inputs)), name="nested")


@pytest.mark.parametrize("method", ["linear", "edge"])
def test_resize_rebuilds_attention_layers_in_nested_models(method, tmp_path):
    keras.utils.set_random_seed(0)
    model = _nested((8, 8, 3))
    same = resize_model(model, (8, 8, 3))
    x = _images((2, 8, 8, 3))
    np.testing.assert_array_equal(same(x), model(x))
    resized, summary = resize_model(model, (12, 16, 3), method=method, return_summary=True)
    assert {c.layer: (c.old_grid, c.new_grid, c.tables) for c in summary.layers} == {
        "inner": ((8, 8), (12, 16), method),
        "middle": ((4, 4), (6, 8), method),
        "last": ((4, 4), (6, 8), method),
    }
    assert resized.get_layer("backbone").get_layer("stage").input.shape == (None, 12, 16, 4)
    table = model.get_layer("backbone").get_layer("stage").get_layer("inner").rel_width.numpy()
    np.testing.assert_array_equal(
        resized.get_layer("backbone").get_layer("stage").get_layer("inner").rel_width.numpy(),
        resample_relative_table(table, 16, method),
    )
    outputs = resized(_images((2, 12, 16, 3)))
    assert outputs.shape == (2, 8) and np.all(np.isfinite(outputs))
    resized.save(tmp_path / "resized.keras")
    np.testing.assert_array_equal(keras.saving.load_model(tmp_path / "resized.keras")(_images((2, 12, 16, 3))), outputs)


def test_resize_a_keras_classifier_with_its_augmented_backbone_nested():
    model = keras_classifier("ResNet50", classes=3, input_shape=(32, 32, 3), weights=None)
    resized, summary = resize_model(model, (64, 64, 3), return_summary=True)
    grids = {c.layer: (c.old_grid, c.new_grid) for c in summary.layers}
    assert len(grids) == 13 and grids["conv4_block6_2_conv"] == ((2, 2), (4, 4))
    assert resized(_images((1, 64, 64, 3))).shape == (1, 3)
    assert resized.get_layer("backbone").input.shape == (None, 64, 64, 3)


def test_resize_rejects_bad_arguments(aa_small):
    with pytest.raises(ValueError, match="input_shape=.64, 64, 1."):
        resize_model(aa_small, (64, 64, 1))
    with pytest.raises(ValueError, match="input_shape=.64, 64."):
        resize_model(aa_small, (64, 64))
    with pytest.raises(ValueError, match="method='nearest'"):
        resize_model(aa_small, (64, 64, 3), method="nearest")
    with pytest.raises(ValueError, match="functional or Sequential"):
        resize_model(AttentionAugmentation2D(**SMALL), (8, 8, 3))
    outer = keras.Sequential([keras.Input((32, 32, 3)), aa_small])
    with pytest.raises(ValueError, match="nested models"):
        resize_model(outer, (64, 64, 3))


def test_transfer_weights_reports_a_head_of_another_shape(aa_small):
    target = small_nets.aa_small_net((48, 48, 3), 5)
    transfer = transfer_weights(aa_small, target)
    assert {p for p, _ in transfer.initialised} == {"logits/kernel", "logits/bias"}
    assert len(transfer.resampled) == 6 and not transfer.unused
    assert len(transfer.loaded) == len(target.weights) - 8


# A classifier's weights in a detector's backbone.


def test_classifier_weights_go_to_the_detector_backbone_at_its_size():
    classifier = build_model("aa_resnet18", (64, 64, 3), 10)
    detector = build_detector("aa_retinanet_r18", (128, 128, 3), 3, backbone=classifier)
    encoder = detector.backbone.image_encoder
    for name in ("conv2_block1_1_conv", "conv4_block1_1_conv"):
        for old, new in zip(classifier.get_layer(name).weights, encoder.get_layer(name).weights):
            expected = old.numpy()
            if "rel_" in old.path:
                expected = resample_relative_table(expected, (new.shape[0] + 1) // 2)
            np.testing.assert_array_equal(new.numpy(), expected)
    assert encoder.get_layer("conv3_block1_1_conv").rel_height.shape[0] == 15  # 128 / 8 / 2 = 8 positions
    with pytest.raises(ValueError, match="another depth"):
        build_detector("aa_retinanet_r18", (128, 128, 3), 3, backbone=AAResNet(34, input_shape=(64, 64, 3)))
    with pytest.raises(ValueError, match="is not"):
        build_detector("retinanet_r18", (128, 128, 3), 3, backbone=classifier)
    with pytest.raises(ValueError, match="num_heads"):
        build_detector("aa_retinanet_r18", (128, 128, 3), 3, backbone=classifier, num_heads=4)


# The trainer's --init_from.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "tfds"
    tfds.builder("glyph_pairs", data_dir=str(path)).download_and_prepare()
    return str(path)


def _recipe(image_size, **overrides):
    return recipes.get_recipe(
        "quick",
        image_size=image_size,
        global_batch_size=16,
        train_split="test[:32]",
        eval_split="test[:32]",
        **{"epochs": 1, **overrides},
    )


def _train(model_dir, data_dir, recipe, steps, **kwargs):
    return classification.train(tf.distribute.get_strategy(), settings_for(
        "classification", "aa_small", str(model_dir), recipe, data_dir=data_dir, steps_per_epoch=steps,
        verbose=False, model_fn=lambda name, shape, classes: small_nets.aa_small_net(shape, classes), **kwargs,
    ))  # fmt: skip


@pytest.fixture(scope="module")
def memorised_run(tmp_path_factory, data_dir):
    """A run that has learned 32 training images by heart at 32x32."""
    model_dir = tmp_path_factory.mktemp("memorised")
    keras.utils.set_random_seed(0)
    _, metrics = _train(model_dir, data_dir, _recipe(32, epochs=15, learning_rate=0.2), steps=2)
    return model_dir, metrics


def _first_loss(model_dir, data_dir, image_size, **options):
    keras.utils.set_random_seed(0)  # The same data order and fresh initialisation in every run.
    _, metrics = _train(model_dir, data_dir, _recipe(image_size), steps=1, **options)
    return metrics["history"][0]["train_loss"]


def test_init_from_starts_from_the_weights_of_another_run(memorised_run, data_dir, tmp_path, capsys):
    source, trained = memorised_run
    assert trained["history"][-1]["train_loss"] < 0.1
    fresh = _first_loss(tmp_path / "fresh32", data_dir, 32)
    same_size = _first_loss(tmp_path / "init32", data_dir, 32, init_from=str(source))
    assert same_size < 0.2 * fresh, (same_size, fresh)
    assert re.search(r"loaded\s+\d+ .*\nresampled\s+0 .*\ninitialised\s+0 ", capsys.readouterr().out)


def test_init_from_another_size_resamples_the_tables(memorised_run, data_dir, tmp_path, capsys):
    """At 40x40 the images are rescaled (memorised images are not recognised at another scale),
    so the check is exact: the run starts where one initialised from `resize_model`'s model does."""
    source, _ = memorised_run
    resized = resize_model(keras.saving.load_model(source / "model.keras"), (40, 40, 3))
    resized.save(tmp_path / "resized.keras")
    fresh = _first_loss(tmp_path / "fresh", data_dir, 40)
    from_resized = _first_loss(tmp_path / "from_resized", data_dir, 40, init_from=str(tmp_path / "resized.keras"))
    capsys.readouterr()
    from_run = _first_loss(tmp_path / "init", data_dir, 40, init_from=str(source))
    assert from_run == pytest.approx(from_resized, abs=1e-6) and abs(from_run - fresh) > 0.05, (from_run, fresh)
    table = capsys.readouterr().out
    assert "aa_small: initialised from" in table
    assert re.search(r"loaded\s+(\d+)", table)[1] == str(len(resized.weights) - 6)
    assert re.search(r"resampled\s+6 .*block1_aa/rel_height \(31, 8\)->\(39, 8\)", table)
    assert re.search(r"initialised\s+0 ", table)
    # Resuming the run: its own checkpoint wins, and it says so.
    _train(tmp_path / "init", data_dir, _recipe(40, epochs=2), steps=1, init_from=str(source))
    assert re.search(r"resuming from .*ckpt-1; --init_from=.* is ignored", capsys.readouterr().out)


def test_init_from_bad_paths_and_incompatible_models(memorised_run, data_dir, tmp_path):
    source, _ = memorised_run
    model = small_nets.aa_small_net((32, 32, 3), 2)
    with pytest.raises(ValueError, match="does not exist"):
        init_from.initialize_from(model, str(tmp_path / "nowhere.keras"))
    with pytest.raises(ValueError, match="holds no model.keras"):
        init_from.initialize_from(model, str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .keras model"):
        init_from.initialize_from(model, str(tmp_path / "notes.txt"))
    (tmp_path / "broken.keras").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot load"):
        init_from.initialize_from(model, str(tmp_path / "broken.keras"))
    resnet = build_model("resnet18", (32, 32, 3), 2)
    with pytest.raises(ValueError, match="'aa_small' .* is another network than 'resnet18': only 0 of its"):
        init_from.initialize_from(resnet, str(source), verbose=False)


def test_init_from_reads_its_model_file_once(memorised_run, monkeypatch):
    """Before: a detection run with --init_from loaded the file to check it, again for its
    detector's attention settings, and again for its weights."""
    source, _ = memorised_run
    reads = []
    load = init_from.load_keras_file
    monkeypatch.setattr(init_from, "load_keras_file", lambda *args, **kwargs: reads.append(args) or load(*args, **kwargs))
    shared = init_from.init_source(str(source))
    assert init_from.init_source(shared) is shared and init_from.init_source("") is None
    assert shared.model.name == "aa_small" and not reads[1:]
    transfer = init_from.initialize_from(small_nets.aa_small_net((32, 32, 3), 2), shared, verbose=False)
    assert transfer.loaded and len(reads) == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--init_from=/nowhere/model.keras"], r"Invalid `init_from`: '/nowhere/model.keras' does not exist"),
        (["--init_from={tmp}", "--model=aa_small,conv_small"], r"Invalid `--init_from`: it initialises one network"),
        (["--init_from={tmp}", "--model=aa_small", "--init_method=cubic"], r"init_method"),
    ],
)
def test_train_cli_init_from_errors(flags, message, tmp_path):
    keras.saving.save_model(small_nets.aa_small_net((32, 32, 3), 2), tmp_path / "model.keras")
    argv = ["train", f"--model_dir={tmp_path / 'run'}", *[f.format(tmp=tmp_path) for f in flags]]
    try:
        with pytest.raises(Exception, match=message):
            train.FLAGS(argv)
            train.run(argv[:1])
    finally:
        train.FLAGS.unparse_flags()
    assert not (tmp_path / "run").exists()
