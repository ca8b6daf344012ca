"""Attention scores and maps: `return_attention_scores`, `aa_keras.visualize` (maps, also of
layers in nested models, pictures, CLI on classifiers and detectors) and the trainer's attention
image summaries."""

import contextlib
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import reference
from aa_keras.applications import keras_classifier, small_nets
from aa_keras.layers import AttentionAugmentation2D, use_attention_implementation
from aa_keras.layers.attention_augmentation import MAX_ATTENTION_SCORES
from aa_keras.visualize import attention_maps, cli, query_cells
from aa_keras.visualize.figure import DPI, PANEL_INCHES
from aa_keras.training import attention_summaries, recipes
from aa_keras.training import classification
from aa_keras.training.settings import settings_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (layer arguments, input (height, width)).
CASES = {
    "square": (dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2), (6, 6)),
    "non_square": (dict(filters=8, kernel_size=3, depth_k=4, depth_v=4, num_heads=2), (4, 7)),
    "strided": (dict(filters=8, kernel_size=3, strides=2, depth_k=4, depth_v=4, num_heads=2), (7, 6)),
    "valid_strided": (
        dict(filters=8, kernel_size=3, strides=2, padding="valid", depth_k=4, depth_v=4, num_heads=2),
        (7, 8),
    ),
    "downsample_attention": (
        dict(filters=8, kernel_size=3, depth_k=6, depth_v=4, num_heads=2, downsample_attention=True),
        (7, 9),
    ),
    "sine": (dict(filters=8, kernel_size=3, depth_k=8, depth_v=4, num_heads=2, position_encoding="sine"), (5, 6)),
}
PATHS = {
    "fused_kernel_default": lambda model: contextlib.nullcontext(),
    "tf_ops": lambda model: use_attention_implementation(model, "tf_ops"),
}


def _images(height, width, channels=3, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, height, width, channels)).astype("float32")


def _attention_grid_input(layer, x):
    """The reference's pooled attention input of `layer` for its input x (float64)."""
    config = layer.get_config()
    kernel_size, strides, padding = tuple(config["kernel_size"]), tuple(config["strides"]), config["padding"]
    if padding == "same" and strides != (1, 1):
        x = reference.avg_pool(x, strides, strides, "same")
    elif padding == "valid":
        x = reference.avg_pool(x, kernel_size, strides, "valid")
    if config["downsample_attention"]:
        x = reference.avg_pool(x, (3, 3), (2, 2), "same")
    return x


@pytest.mark.parametrize("case", CASES)
def test_scores_are_the_float64_references_weights_and_rows_sum_to_one(case):
    arguments, (height, width) = CASES[case]
    layer = AttentionAugmentation2D(**arguments)
    x = _images(height, width)
    plain = layer(x)
    outputs, scores = layer(x, return_attention_scores=True)
    expected = reference.attention_weights(_attention_grid_input(layer, x.astype(np.float64)), layer)
    assert scores.dtype == tf.float32 and scores.shape == expected.shape
    assert expected.shape[2:4] == expected.shape[4:] == layer._attention_size(height, width)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores.numpy().sum(axis=(-2, -1)), 1.0, atol=1e-5)
    # The scores' path gives the plain call's outputs (the fused kernel on this CPU).
    np.testing.assert_allclose(outputs.numpy(), plain.numpy(), atol=1e-5)


def test_scores_are_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = AttentionAugmentation2D(8, 3, depth_k=4, depth_v=4, num_heads=2)
        outputs, scores = layer(_images(5, 6), return_attention_scores=True)
    finally:
        keras.config.set_dtype_policy(previous)
    assert outputs.dtype == tf.bfloat16 and scores.dtype == tf.float32
    np.testing.assert_allclose(scores.numpy().sum(axis=(-2, -1)), 1.0, atol=1e-5)


def test_symbolic_call_gives_the_scores_shape():
    layer = AttentionAugmentation2D(8, 3, strides=2, depth_k=4, depth_v=4, num_heads=2, downsample_attention=True)
    outputs, scores = layer(keras.Input((9, 8, 3)), return_attention_scores=True)
    assert outputs.shape == (None, 5, 4, 8) and scores.shape == (None, 2, 3, 2, 3, 2)
    assert scores.dtype == "float32"
    assert layer(keras.Input((9, 8, 3))).shape == layer.compute_output_shape((None, 9, 8, 3)) == (None, 5, 4, 8)
    dynamic = AttentionAugmentation2D(8, 3, depth_k=4, depth_v=4, num_heads=2, max_size=(6, 6))
    _, scores = dynamic(keras.Input((None, None, 3)), return_attention_scores=True)
    assert scores.shape == (None, 2, None, None, None, None)


def test_scores_larger_than_the_limit_are_refused_with_the_way_to_large_maps():
    layer = AttentionAugmentation2D(8, 1, depth_k=8, depth_v=8, num_heads=8)
    side = int((MAX_ATTENTION_SCORES / 8) ** 0.25) + 1  # 8 * side**4 > the limit
    with pytest.raises(ValueError, match="aa_keras.visualize.attention_maps"):
        layer(np.zeros((1, side, side, 3), np.float32), return_attention_scores=True)
    assert layer(np.zeros((1, side - 1, side - 1, 3), np.float32), return_attention_scores=True)[1].shape[-1] == side - 1


def test_query_pixels_map_to_the_cells_that_hold_them():
    # 8x8 image: a 4x4 grid (stride 2) has 2-pixel cells, a 2x2 grid (downsampled) 4-pixel cells.
    pixels = [(0, 0), (1, 7), (7, 2), (4, 3)]
    np.testing.assert_array_equal(query_cells(pixels, (8, 8), (4, 4)), [(0, 0), (0, 3), (3, 1), (2, 1)])
    np.testing.assert_array_equal(query_cells(pixels, (8, 8), (2, 2)), [(0, 0), (0, 1), (1, 0), (1, 0)])
    np.testing.assert_array_equal(query_cells(pixels, (8, 8), (8, 8)), pixels)
    # A 7-pixel side on a 4-cell grid (stride 2, 'same'): pixel 6 lies in the last cell.
    np.testing.assert_array_equal(query_cells([(6, 5)], (7, 6), (4, 3)), [(3, 2)])


def _two_layer_model(arguments, height, width):
    """image -> the case's AA layer -> a second AA layer, whose input depends on the first's
    attention path."""
    inputs = keras.Input((height, width, 3), name="image")
    first = AttentionAugmentation2D(**arguments, name="first")
    second = AttentionAugmentation2D(8, 3, depth_k=4, depth_v=4, num_heads=2, name="second")
    return keras.Model(inputs, second(first(inputs))), first, second


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", ["square", "non_square", "strided", "downsample_attention"])
def test_attention_maps_are_the_rows_of_the_scores(case, path):
    arguments, (height, width) = CASES[case]
    model, first, second = _two_layer_model(arguments, height, width)
    images = _images(height, width)
    queries = np.array([(0, 0), (height - 1, width - 1), (height // 2, 1)])
    with PATHS[path](model):
        maps = attention_maps(model, images, queries)
        hidden, first_scores = first(images, return_attention_scores=True)
        _, second_scores = second(hidden, return_attention_scores=True)
    assert list(maps) == ["first", "second"]
    for name, scores in (("first", first_scores.numpy()), ("second", second_scores.numpy())):
        cells = query_cells(queries, (height, width), scores.shape[2:4])
        rows = np.stack([scores[:, :, r, c] for r, c in cells], axis=1)  # (B, Q, Nh, Ha, Wa)
        assert maps[name].shape == rows.shape
        np.testing.assert_allclose(maps[name], rows, atol=1e-6)
        np.testing.assert_allclose(maps[name].sum(axis=(-2, -1)), 1.0, atol=1e-5)


def test_attention_maps_take_one_set_of_queries_per_image_and_chosen_layers():
    model, _, _ = _two_layer_model(CASES["square"][0], 6, 6)
    images = _images(6, 6)
    per_image = np.array([[(1, 2)], [(4, 0)]])
    maps = attention_maps(model, images, per_image, layers="second")
    assert list(maps) == ["second"] and maps["second"].shape == (2, 1, 2, 6, 6)
    shared = attention_maps(model, images, [(1, 2), (4, 0)], layers=["second"])["second"]
    np.testing.assert_allclose(maps["second"][0, 0], shared[0, 0], atol=1e-7)
    np.testing.assert_allclose(maps["second"][1, 0], shared[1, 1], atol=1e-7)


def test_attention_maps_errors_say_what_was_wrong():
    model, _, _ = _two_layer_model(CASES["square"][0], 6, 6)
    images = _images(6, 6)
    with pytest.raises(ValueError, match=r"\(y, x\) = \(6, 0\) lies outside the 6x6 image"):
        attention_maps(model, images, [(6, 0)])
    with pytest.raises(ValueError, match="integer"):
        attention_maps(model, images, [(1.5, 2)])
    with pytest.raises(ValueError, match=r"shape \(Q, 2\)"):
        attention_maps(model, images, [1, 2, 3])
    with pytest.raises(ValueError, match=r"\['third'\] are not AttentionAugmentation2D layers"):
        attention_maps(model, images, [(0, 0)], layers=["first", "third"])
    with pytest.raises(ValueError, match=r"Invalid `images`: received shape \(2, 5, 6, 3\)"):
        attention_maps(model, _images(5, 6), [(0, 0)])
    inputs = keras.Input((6, 6, 3))
    conv = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs), name="plain")
    with pytest.raises(ValueError, match="'plain' has no AttentionAugmentation2D layers"):
        attention_maps(conv, images, [(0, 0)])


def _nested_model(height=6, width=6):
    """image -> "backbone" (functional: "stem" conv -> "stage" (functional: "aa_inner")) -> "aa_top":
    attention layers in the top-level graph and two models deep."""
    stage_inputs = keras.Input((height, width, 4))
    stage = keras.Model(stage_inputs, AttentionAugmentation2D(**CASES["strided"][0], name="aa_inner")(stage_inputs),
                        name="stage")  # fmt: skip
    backbone_inputs = keras.Input((height, width, 3))
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem")
    backbone = keras.Model(backbone_inputs, stage(stem(backbone_inputs)), name="backbone")
    inputs = keras.Input((height, width, 3))
    top = AttentionAugmentation2D(8, 3, depth_k=4, depth_v=4, num_heads=2, name="aa_top")
    return keras.Model(inputs, top(backbone(inputs)), name="outer"), stem, stage.get_layer("aa_inner"), top


def _rows(scores, queries, image_size):
    """The rows of `scores` (B, Nh, Ha, Wa, Ha, Wa) of the query pixels: (B, Q, Nh, Ha, Wa)."""
    cells = query_cells(queries, image_size, scores.shape[2:4])
    return np.stack([scores[:, :, r, c] for r, c in cells], axis=1)


def test_attention_maps_search_nested_models_at_any_depth():
    model, stem, inner, top = _nested_model(7, 6)
    images = _images(7, 6)
    queries = np.array([(0, 0), (6, 5), (3, 1)])
    maps = attention_maps(model, images, queries)
    assert list(maps) == ["backbone/stage/aa_inner", "aa_top"]  # graph order, nested layers by path
    hidden, inner_scores = inner(stem(images), return_attention_scores=True)
    _, top_scores = top(hidden, return_attention_scores=True)
    np.testing.assert_allclose(maps["backbone/stage/aa_inner"], _rows(inner_scores.numpy(), queries, (7, 6)), atol=1e-6)
    np.testing.assert_allclose(maps["aa_top"], _rows(top_scores.numpy(), queries, (7, 6)), atol=1e-6)
    chosen = attention_maps(model, images, queries, layers="backbone/stage/aa_inner")
    np.testing.assert_array_equal(chosen["backbone/stage/aa_inner"], maps["backbone/stage/aa_inner"])
    with pytest.raises(ValueError, match=r"\['aa_inner'\] are not .* among \['backbone/stage/aa_inner', 'aa_top'\]"):
        attention_maps(model, images, queries, layers="aa_inner")


@pytest.fixture(scope="module")
def keras_classifier_file(tmp_path_factory):
    """A `keras:ResNet50` classifier (random weights, 32x32): its AA layers in the nested "backbone"."""
    keras.utils.set_random_seed(0)
    model = keras_classifier("ResNet50", classes=2, input_shape=(32, 32, 3), weights=None)
    path = str(tmp_path_factory.mktemp("keras_classifier") / "model.keras")
    model.save(path)
    return path


def test_attention_maps_of_a_keras_classifier_are_those_of_its_backbone(keras_classifier_file):
    model = keras.saving.load_model(keras_classifier_file)
    backbone = model.get_layer("backbone")
    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    maps = attention_maps(model, images, [(5, 30)])
    expected = attention_maps(backbone, model.get_layer("preprocess")(images), [(5, 30)])
    assert list(maps) == [f"backbone/{name}" for name in expected] and len(maps) == 13
    for name, value in expected.items():
        np.testing.assert_allclose(maps[f"backbone/{name}"], value, atol=1e-6)


def test_cli_draws_the_nested_layers_of_a_keras_classifier(tmp_path, keras_classifier_file):
    image = tmp_path / "image.png"
    tf.io.write_file(str(image), tf.io.encode_png(np.full((32, 32, 3), 90, np.uint8)))
    panel = int(PANEL_INCHES * DPI)
    path = _run_cli(f"--model={keras_classifier_file}", f"--image={image}", "--query=3,15", f"--output={tmp_path / 'a.png'}",
                    "--layer=backbone/conv3_block1_2_conv,backbone/conv4_block6_2_conv")  # fmt: skip
    assert _png_size(path) == (2 * panel, (2 + 8) * panel)


def test_importing_aa_keras_does_not_import_the_visualisation_code():
    # (TensorFlow 2.20 itself imports matplotlib where it is installed.)
    code = "import sys, aa_keras, aa_keras.layers, aa_keras.applications; print('aa_keras.visualize' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "False"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """glyph_pairs generated once per session (other test modules find it prepared)."""
    path = tmp_path_factory.getbasetemp() / "tfds"
    tfds.builder("glyph_pairs", data_dir=str(path)).download_and_prepare()
    return str(path)


@pytest.fixture(scope="module")
def two_layer_model_file(tmp_path_factory):
    inputs = keras.Input((16, 16, 3))
    x = AttentionAugmentation2D(8, 3, depth_k=4, depth_v=4, num_heads=2, name="aa1")(inputs)
    x = AttentionAugmentation2D(8, 3, strides=2, depth_k=8, depth_v=8, num_heads=4, name="aa2")(x)
    path = str(tmp_path_factory.mktemp("models") / "two.keras")
    keras.Model(inputs, x).save(path)
    return path


def _run_cli(*flags):
    cli.FLAGS(["aa-visualize", *flags])
    try:
        return cli.run(["aa-visualize"])
    finally:
        cli.FLAGS.unparse_flags()


def _png_size(path):
    """(height, width) of a PNG file."""
    return tuple(tf.io.decode_png(tf.io.read_file(path)).shape[:2])


def test_cli_draws_a_row_per_layer_and_a_panel_per_head(tmp_path, two_layer_model_file, data_dir):
    image = tmp_path / "image.png"
    tf.io.write_file(str(image), tf.io.encode_png(np.full((20, 24, 3), 90, np.uint8)))  # resized to 16x16
    panel = int(PANEL_INCHES * DPI)
    both = _run_cli(f"--model={two_layer_model_file}", f"--image={image}", "--query=3,15", f"--output={tmp_path / 'a.png'}")
    assert _png_size(both) == (2 * panel, (2 + 4) * panel)  # image, 4 heads of aa2, mean
    one = _run_cli(
        f"--model={two_layer_model_file}", "--image=7", f"--data_dir={data_dir}", "--query=0,0", "--layer=aa1",
        f"--output={tmp_path / 'b.png'}",
    )  # fmt: skip
    assert _png_size(one) == (panel, (2 + 2) * panel)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--query=16,2"], r"`--query`: \(y, x\) = \(16, 2\) lies outside the 16x16 image"),
        (["--query=a,b"], "expected Y,X pixel integers"),
        (["--query=3"], "expected Y,X pixel integers"),
        (["--query=1,1", "--layer=aa3"], r"\['aa3'\] are not AttentionAugmentation2D layers"),
        (["--query=1,1", "--image=nothing.png"], "neither an image file nor a dataset index"),
    ],
)
def test_cli_errors_say_what_was_wrong(tmp_path, two_layer_model_file, flags, message):
    image = tmp_path / "image.png"
    tf.io.write_file(str(image), tf.io.encode_png(np.zeros((16, 16, 3), np.uint8)))
    output = tmp_path / "out.png"
    defaults = [f"--model={two_layer_model_file}", f"--image={image}", f"--output={output}"]
    with pytest.raises(ValueError, match=message):
        _run_cli(*defaults, *flags)
    assert not output.exists()


def test_cli_refuses_a_model_without_aa_layers_and_a_non_png_output(tmp_path):
    inputs = keras.Input((8, 8, 3))
    keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs), name="plain").save(tmp_path / "plain.keras")
    image = tmp_path / "image.png"
    tf.io.write_file(str(image), tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(ValueError, match="'plain' has no AttentionAugmentation2D layers"):
        _run_cli(f"--model={tmp_path / 'plain.keras'}", f"--image={image}", "--query=1,1", f"--output={tmp_path / 'o.png'}")
    with pytest.raises(ValueError, match="expected a path ending in .png"):
        _run_cli(f"--model={tmp_path / 'plain.keras'}", f"--image={image}", "--query=1,1", f"--output={tmp_path / 'o.jpg'}")
    assert set(os.listdir(tmp_path)) == {"plain.keras", "image.png"}


def test_cli_draws_the_backbone_maps_of_a_trained_detector(detector_run, tmp_path):
    # In a new process, as a user runs it: only what the command imports registers the detector's classes.
    image = tmp_path / "image.png"
    tf.io.write_file(str(image), tf.io.encode_png(np.full((48, 80, 3), 90, np.uint8)))
    output = tmp_path / "detector.png"
    command = [sys.executable, "-m", "aa_keras.visualize", f"--model={detector_run / 'model.keras'}", f"--image={image}",
               "--query=10,50", f"--output={output}", "--layer=retinanet_backbone/backbone/conv5_block2_1_conv"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(output)
    panel = int(PANEL_INCHES * DPI)
    assert _png_size(str(output)) == (panel, (2 + 8) * panel)  # one layer, 8 heads


def test_attention_maps_of_a_detector_are_those_of_its_image_encoder(detector_run):
    detector = keras.saving.load_model(str(detector_run / "model.keras"), compile=False)
    images = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    maps = attention_maps(detector, images, [(10, 50)])
    expected = attention_maps(detector.backbone.image_encoder, images, [(10, 50)])
    assert list(maps) == [f"retinanet_backbone/backbone/{name}" for name in expected] and len(maps) == 6
    for name, value in expected.items():
        np.testing.assert_allclose(maps[f"retinanet_backbone/backbone/{name}"], value, atol=1e-6)


def test_cli_reads_an_image_index_of_an_image_folder(tmp_path, two_layer_model_file):
    for label, value in (("dark", 20), ("light", 220)):
        os.makedirs(tmp_path / "images" / "test" / label)
        tf.io.write_file(str(tmp_path / "images" / "test" / label / "0.png"), tf.io.encode_png(np.full((16, 16, 3), value, np.uint8)))
    dataset = f"--dataset=image_folder:{tmp_path / 'images'}"
    values = {round(255 * float(cli.load_image(str(i), (16, 16), 3, dataset[10:], "test")[0, 0, 0])) for i in (0, 1)}
    assert values == {20, 220}  # the two images, one per index
    path = _run_cli(f"--model={two_layer_model_file}", "--image=1", dataset, "--query=3,3", f"--output={tmp_path / 'a.png'}")
    assert os.path.isfile(path)
    with pytest.raises(ValueError, match=r"index 2 is past the 2 examples of 'image_folder:.*images' 'test'"):
        _run_cli(f"--model={two_layer_model_file}", "--image=2", dataset, "--query=3,3", f"--output={tmp_path / 'b.png'}")


def test_cli_creates_the_output_folder_and_names_what_it_cannot_write(tmp_path, two_layer_model_file):
    image = tmp_path / "image.png"
    tf.io.write_file(str(image), tf.io.encode_png(np.zeros((16, 16, 3), np.uint8)))
    flags = [f"--model={two_layer_model_file}", f"--image={image}", "--query=1,1"]
    assert _run_cli(*flags, f"--output={tmp_path / 'new' / 'folder' / 'a.png'}") == str(tmp_path / "new" / "folder" / "a.png")
    assert os.listdir(tmp_path / "new" / "folder") == ["a.png"]  # no temporary file left
    with pytest.raises(ValueError, match=r"Invalid `--output`: cannot write .*image.png/a.png. \(File exists: .*image.png.\)"):
        _run_cli(*flags, f"--output={image / 'a.png'}")  # a folder that is a file


def test_cli_says_a_truncated_model_file_is_damaged(tmp_path, two_layer_model_file):
    with open(two_layer_model_file, "rb") as f:
        data = f.read()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"Invalid `--model`: '.*cut.keras' is damaged"):
        _run_cli(f"--model={tmp_path / 'cut.keras'}", "--image=0", "--query=1,1", f"--output={tmp_path / 'a.png'}")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)], ids=["umask_022", "umask_027"])
def test_cli_writes_the_picture_with_the_mode_of_the_umask(tmp_path, two_layer_model_file, umask, mode):
    image = tmp_path / "image.png"
    tf.io.write_file(str(image), tf.io.encode_png(np.zeros((16, 16, 3), np.uint8)))
    previous = os.umask(umask)
    try:
        path = _run_cli(f"--model={two_layer_model_file}", f"--image={image}", "--query=1,1", f"--output={tmp_path / 'a.png'}")
    finally:
        os.umask(previous)
    assert os.stat(path).st_mode & 0o777 == mode


def _summaries(log_dir):
    """{tag: [plugin name, ...]} of the event files under `log_dir`."""
    found = {}
    for name in os.listdir(log_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((value.metadata.plugin_data.plugin_name, value.tensor))
    return found


def test_training_writes_attention_pictures_to_the_eval_log(tmp_path, data_dir):
    recipe = recipes.get_recipe("quick", epochs=1, global_batch_size=16, eval_split="test[:16]")
    classification.train(tf.distribute.get_strategy(), settings_for(
        "classification", "aa_small", str(tmp_path / "aa"), recipe, data_dir=data_dir,
        steps_per_epoch=1, verbose=False,
    ))  # fmt: skip
    summaries = _summaries(tmp_path / "aa" / "logs" / "eval")
    queries = attention_summaries.query_pixels(32)
    tags = [f"attention/image_{i}/query_{y}_{x}" for i in range(attention_summaries.NUM_IMAGES) for y, x in queries]
    assert set(tags) <= set(summaries), sorted(summaries)
    plugin, tensor = summaries[tags[0]][0]
    assert plugin == "images"
    width, height, png = tf.make_ndarray(tensor)
    panel = int(PANEL_INCHES * DPI)
    assert (int(height), int(width)) == (3 * panel, (2 + 2) * panel)  # 3 AA layers of 2 heads
    assert tuple(tf.io.decode_png(png).shape) == (3 * panel, (2 + 2) * panel, 3)
    # A network without AA layers gets no pictures (and its images are not even read).
    with tf.summary.create_file_writer(str(tmp_path / "conv")).as_default(step=0):
        attention_summaries.make_eval_summaries(recipe, data_dir="/nonexistent")(small_nets.conv_small_net())
    assert not _summaries(tmp_path / "conv")


def test_a_damaged_image_file_is_called_damaged(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(tf.io.encode_png(np.zeros((16, 16, 3), np.uint8)).numpy()[:-20])
    with pytest.raises(ValueError, match=r"photo\.png' is a damaged or truncated PNG file"):
        cli.load_image(str(path), (16, 16), 3)
    (tmp_path / "notes.png").write_text("plain text")
    with pytest.raises(ValueError, match=r"notes\.png' is not a PNG, JPEG, BMP or GIF image"):
        cli.load_image(str(tmp_path / "notes.png"), (16, 16), 3)
